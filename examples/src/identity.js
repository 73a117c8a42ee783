// Who you are: a display name and a colour, kept in localStorage. They name your cursor in
// documents and your presence in chat rooms (the awareness field `user`).

const KEY = 'relay-demo:user'

/** Colours that stay readable with white text on them. */
export const COLORS = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#db2777', '#0891b2', '#4d7c0f']

/** @typedef {{ name: string, color: string }} User */

const listeners = new Set()

/** @returns {User|null} */
export function currentUser () {
  try {
    const user = JSON.parse(localStorage.getItem(KEY) || 'null')
    if (user && typeof user.name === 'string' && user.name.trim() && typeof user.color === 'string') {
      return { name: user.name, color: user.color }
    }
  } catch {}
  return null
}

/**
 * Signs on with a display name. Keeps the colour of an earlier sign-on.
 * @param {string} name
 * @returns {User}
 */
export function signOn (name) {
  const clean = name.trim().replace(/\s+/g, ' ').slice(0, 40)
  if (!clean) throw new Error('a display name is required')
  const color = currentUser()?.color ?? COLORS[Math.floor(Math.random() * COLORS.length)]
  const user = { name: clean, color }
  localStorage.setItem(KEY, JSON.stringify(user))
  for (const fn of listeners) fn(user)
  return user
}

export function signOut () {
  localStorage.removeItem(KEY)
  for (const fn of listeners) fn(null)
}

/**
 * Calls fn with the new user (or null) whenever it changes, in this tab or another one.
 * @returns {() => void} unsubscribe
 */
export function onUserChange (fn) {
  listeners.add(fn)
  return () => listeners.delete(fn)
}

window.addEventListener('storage', (event) => {
  if (event.key !== KEY) return
  const user = currentUser()
  for (const fn of listeners) fn(user)
})
