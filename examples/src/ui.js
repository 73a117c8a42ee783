// Small DOM helpers shared by the views. No framework: each view builds its DOM once and updates
// the parts that change.

/**
 * Creates an element. `attrs` keys starting with "on" add event listeners; `class`, `text` and
 * `dataset` are handled specially; everything else is set as an attribute.
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...(Node|string|null|undefined|false)} children
 * @returns {HTMLElement}
 */
export function h (tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value)
    } else if (key === 'class') {
      el.className = value
    } else if (key === 'text') {
      el.textContent = value
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value)
    } else {
      el.setAttribute(key, value === true ? '' : String(value))
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue
    el.append(child)
  }
  return el
}

/** A round badge with the person's initials in their colour. */
export function avatar (user, { title, extraClass = '' } = {}) {
  const name = user?.name || '?'
  const initials = name.trim().split(/\s+/).slice(0, 2).map(w => w[0]).join('').toUpperCase() || '?'
  return h('span', {
    class: `avatar ${extraClass}`.trim(),
    style: `--user-color: ${safeColor(user?.color)}`,
    title: title ?? name,
    'aria-label': title ?? name
  }, initials)
}

/** Only accept #rgb / #rrggbb colours from other people's awareness states. */
export function safeColor (color) {
  return typeof color === 'string' && /^#[0-9a-f]{3}([0-9a-f]{3})?$/i.test(color) ? color : '#6b7280'
}

/** "just now", "5 min ago", "yesterday", or a date. */
export function relativeTime (ms, now = Date.now()) {
  if (!ms) return ''
  const s = Math.round((now - ms) / 1000)
  if (s < 45) return 'just now'
  const m = Math.round(s / 60)
  if (m < 60) return `${m} min ago`
  const hrs = Math.round(m / 60)
  if (hrs < 24) return `${hrs} h ago`
  const days = Math.round(hrs / 24)
  if (days === 1) return 'yesterday'
  if (days < 7) return `${days} days ago`
  return new Date(ms).toLocaleDateString()
}

/** "12 B", "3.4 KB", "1.2 MB". */
export function formatBytes (n) {
  if (n < 1000) return `${n} B`
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} KB`
  return `${(n / 1e6).toFixed(1)} MB`
}

/** "Alice", "Alice and Bob", "Alice, Bob and 2 others". */
export function listNames (names) {
  if (names.length === 0) return ''
  if (names.length === 1) return names[0]
  if (names.length === 2) return `${names[0]} and ${names[1]}`
  if (names.length === 3) return `${names[0]}, ${names[1]} and ${names[2]}`
  return `${names[0]}, ${names[1]} and ${names.length - 2} others`
}

/** The text of the autosave indicator for a provider `save-status` event. */
export function saveStatusText (status, error) {
  switch (status) {
    case 'saving': return 'Saving…'
    case 'saved': return 'All changes saved'
    case 'offline-unsaved': return 'Offline: changes kept on this device'
    case 'error': return `Not saved yet: ${error?.message || error || 'the relay could not store the changes'}. Retrying…`
    case 'deleted': return 'Deleted: nothing here is saved any more'
    default: return ''
  }
}

/** The text for the provider's connection `status`. */
export function connectionText (status) {
  switch (status) {
    case 'connected': return 'Connected'
    case 'connecting': return 'Connecting…'
    default: return 'Offline'
  }
}

/**
 * The notice shown in a document or chat room that was deleted on the relay (the client's
 * `deleted` event). `unsaved`: whether it held edits the relay never saved, which are gone with
 * the copy on this device.
 * @param {'document' | 'chat room'} what
 * @param {{ unsaved: boolean }} event
 * @param {string} back where the link back leads (`/docs`, `/chat`)
 */
export function deletedNotice (what, { unsaved }, back) {
  return h('p', { class: 'deleted-notice', id: 'deleted-notice', role: 'alert' },
    `This ${what} was deleted on the relay. ` +
      (unsaved ? 'Changes made here that it had not saved are lost with it. ' : '') +
      'Its copy on this device has been removed. ',
    h('a', { href: back, 'data-link': true }, what === 'document' ? 'Back to the documents' : 'Back to the rooms'))
}

/** The address of a document (`docs`) or chat room (`chat`) in the app. */
export function pathFor (section, name) {
  return `/${section}/${encodeURIComponent(name)}`
}
