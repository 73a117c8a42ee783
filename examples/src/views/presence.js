// The people present in a room, from the awareness states that carry a `user` field. Each tab
// is its own awareness client; the same person in two tabs is shown once.

import { avatar, h } from '../ui.js'

/**
 * The people in a room: one entry per name and colour, you first.
 * @param {import('y-protocols/awareness').Awareness} awareness
 * @returns {Array<{ name: string, color: string, self: boolean, clientIds: number[], state: any }>}
 */
export function peopleIn (awareness) {
  const people = new Map()
  const self = awareness.clientID
  for (const [clientId, state] of awareness.getStates()) {
    const user = state?.user
    if (!user || typeof user.name !== 'string') continue
    const key = `${user.name}\u0000${user.color}`
    const isSelf = clientId === self
    const entry = people.get(key) ?? { name: user.name, color: user.color, self: false, clientIds: [], state }
    entry.self = entry.self || isSelf
    entry.clientIds.push(clientId)
    people.set(key, entry)
  }
  return [...people.values()].sort((a, b) => (b.self - a.self) || a.name.localeCompare(b.name))
}

/**
 * Shows avatars of the people present in `el`, kept up to date.
 * @param {HTMLElement} el
 * @param {import('y-protocols/awareness').Awareness} awareness
 * @returns {() => void} stop
 */
export function mountPresence (el, awareness) {
  const render = () => {
    const people = peopleIn(awareness)
    const shown = people.slice(0, 5)
    el.replaceChildren(...[
      h('ul', { class: 'avatars' },
        ...shown.map(p => h('li', { class: 'person', dataset: { name: p.name } },
          avatar(p, { title: p.self ? `${p.name} (you)` : p.name, extraClass: p.self ? 'self' : '' })))),
      people.length > shown.length && h('span', { class: 'more-people', text: `+${people.length - shown.length}` }),
      h('span', { class: 'presence-count muted', text: people.length === 1 ? 'Only you' : `${people.length} here` })
    ].filter(Boolean))
  }
  awareness.on('change', render)
  render()
  return () => awareness.off('change', render)
}
