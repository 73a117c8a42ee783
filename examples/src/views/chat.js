// A chat room (/chat/<name>): the messages are a Y.Array `messages` in the room `chat/<name>`;
// who is online and who is typing come from awareness (`user` and `typing` fields).

import * as Y from 'yjs'
import { openRoom } from '../connect.js'
import { onUserChange } from '../identity.js'
import { peopleIn } from './presence.js'
import { avatar, connectionText, deletedNotice, h, listNames, safeColor, saveStatusText } from '../ui.js'

/** Longest message, in characters. */
const MAX_MESSAGE = 2000
/** Messages rendered at most (the newest). */
const MAX_SHOWN = 500
/** How long "is typing" lasts after the last key press. */
const TYPING_MS = 4000

/**
 * @typedef {{ id: string, author: string, color: string, text: string, at: number }} Message
 */

/**
 * @param {HTMLElement} root
 * @param {{ name: string, user: {name: string, color: string} }} ctx
 */
export function mountChat (root, { name, user }) {
  document.title = `#${name} · Relay`
  const messagesEl = h('ol', { class: 'messages', id: 'messages', 'aria-label': 'Messages' })
  const scroller = h('div', { class: 'messages-scroll' }, messagesEl)
  const emptyEl = h('p', { class: 'empty muted', text: 'No messages yet. Say hello!' })
  const typingEl = h('p', { class: 'typing', id: 'typing', 'aria-live': 'polite' })
  const onlineEl = h('ul', { class: 'online-list', id: 'online', 'aria-label': 'Online' })
  const onlineCount = h('span', { class: 'online-count muted' })
  const saveEl = h('span', { class: 'save-status', id: 'save-status', role: 'status' })
  const connEl = h('span', { class: 'conn-status', id: 'conn-status' })
  const input = /** @type {HTMLInputElement} */ (h('input', {
    id: 'message',
    type: 'text',
    maxlength: MAX_MESSAGE,
    placeholder: `Message #${name}`,
    'aria-label': 'Message',
    autocomplete: 'off',
    enterkeyhint: 'send'
  }))
  const form = h('form', { class: 'composer' }, input, h('button', { type: 'submit', class: 'button primary' }, 'Send'))
  root.append(h('section', { class: 'page chat-page' },
    h('div', { class: 'doc-head' },
      h('a', { href: '/chat', 'data-link': true, class: 'back' }, '← Rooms'),
      h('div', { class: 'doc-title-row' }, h('h1', { class: 'doc-title', text: `# ${name}`, title: name })),
      h('div', { class: 'doc-status' }, saveEl, connEl)),
    h('div', { class: 'chat-layout' },
      h('div', { class: 'card chat-main' }, scroller, emptyEl, typingEl, form),
      h('aside', { class: 'card online' }, h('h2', {}, 'Online ', onlineCount), onlineEl))))

  const doc = new Y.Doc()
  /** @type {Y.Array<Message>} */
  const messages = doc.getArray('messages')
  const room = openRoom(`chat/${name}`, doc, user)
  const provider = room.provider
  const awareness = provider.awareness
  let me = { name: user.name, color: user.color }
  awareness.setLocalStateField('user', me)
  awareness.setLocalStateField('typing', false)

  // --- messages
  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' })
  let rendered = 0
  const renderMessage = (m) => {
    if (!m || typeof m.text !== 'string') return h('li', { class: 'message invalid' })
    const mine = m.author === me.name && m.color === me.color
    return h('li', { class: mine ? 'message mine' : 'message', dataset: { author: m.author } },
      avatar({ name: m.author, color: m.color }),
      h('div', { class: 'bubble', style: `--user-color: ${safeColor(m.color)}` },
        h('div', { class: 'message-meta' },
          h('span', { class: 'author', text: m.author }),
          h('time', { datetime: new Date(m.at).toISOString(), text: timeFormat.format(m.at) })),
        h('p', { class: 'text', text: m.text })))
  }
  const renderMessages = (event) => {
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60
    const all = messages.toArray()
    if (isAppend(event?.changes.delta) && all.length <= MAX_SHOWN) {
      for (const m of all.slice(rendered)) messagesEl.append(renderMessage(m))
    } else {
      messagesEl.replaceChildren(...all.slice(-MAX_SHOWN).map(renderMessage))
    }
    rendered = all.length
    emptyEl.hidden = all.length > 0
    const lastMine = all.length > 0 && all[all.length - 1].author === me.name
    if (atBottom || lastMine) scroller.scrollTop = scroller.scrollHeight
  }
  // Most changes append messages at the end: render only those.
  const isAppend = (delta) => {
    if (!delta) return false
    if (rendered === 0) return delta.length === 1 && delta[0].insert !== undefined
    return delta.length === 2 && delta[0].retain === rendered && delta[1].insert !== undefined
  }
  messages.observe(renderMessages)
  renderMessages()

  let counter = 0
  form.addEventListener('submit', (event) => {
    event.preventDefault()
    const text = input.value.trim().slice(0, MAX_MESSAGE)
    if (!text) return
    messages.push([{ id: `${doc.clientID}-${Date.now()}-${counter++}`, author: me.name, color: me.color, text, at: Date.now() }])
    input.value = ''
    setTyping(false)
    input.focus()
  })

  // --- typing indicator
  let typingTimer = null
  const setTyping = (typing) => {
    clearTimeout(typingTimer)
    if (typing) typingTimer = setTimeout(() => setTyping(false), TYPING_MS)
    if (awareness.getLocalState()?.typing !== typing) awareness.setLocalStateField('typing', typing)
  }
  input.addEventListener('input', () => setTyping(input.value.trim().length > 0))
  input.addEventListener('blur', () => setTyping(false))

  // --- online list and who is typing
  const renderPresence = () => {
    const people = peopleIn(awareness)
    onlineCount.textContent = `(${people.length})`
    onlineEl.replaceChildren(...people.map(p => h('li', { class: 'person', dataset: { name: p.name } },
      avatar(p),
      h('span', { class: 'person-name', text: p.name }),
      p.self && h('span', { class: 'muted', text: ' (you)' }))))
    const typing = people.filter(p => !p.self && p.clientIds.some(id => awareness.getStates().get(id)?.typing === true))
    typingEl.textContent = typing.length === 0
      ? ''
      : `${listNames(typing.map(p => p.name))} ${typing.length === 1 ? 'is' : 'are'} typing…`
  }
  awareness.on('change', renderPresence)
  renderPresence()

  // --- save and connection status
  const onSave = ({ status, error }) => {
    saveEl.dataset.status = status
    saveEl.textContent = saveStatusText(status, error)
  }
  // Why the room cannot be opened (the relay refused a token), or null.
  let problem = null
  const onStatus = ({ status }) => {
    connEl.dataset.status = problem !== null ? 'refused' : status
    connEl.textContent = problem !== null ? `No access: ${problem}` : connectionText(status)
  }
  provider.on('save-status', onSave)
  provider.on('status', onStatus)
  onSave({ status: provider.saveStatus })
  onStatus({ status: provider.status })

  const offUser = onUserChange((u) => {
    if (!u) return
    me = { name: u.name, color: u.color }
    awareness.setLocalStateField('user', me)
  })

  // The client clears our awareness state on `pagehide`; a page restored from the back/forward
  // cache announces itself again.
  const onPageShow = (event) => {
    if (event.persisted && awareness.getLocalState() === null) awareness.setLocalState({ user: me, typing: false })
  }
  window.addEventListener('pageshow', onPageShow)

  // Messages can be sent once the copy kept on this device (or the relay's) is loaded.
  const sendButton = form.querySelector('button')
  input.disabled = true
  sendButton.disabled = true
  let destroyed = false
  let loaded = false
  let readOnly = room.access === 'read'
  let deleted = false
  const applyAccess = () => {
    input.disabled = !loaded || readOnly || deleted
    sendButton.disabled = !loaded || readOnly || deleted
    input.placeholder = deleted ? 'This room was deleted' : readOnly ? 'This room is read-only' : `Message #${name}`
  }
  const enable = () => {
    if (destroyed) return
    loaded = true
    applyAccess()
    if (!readOnly && !window.matchMedia('(pointer: coarse)').matches) input.focus()
  }
  const offAccess = room.onAccess((state) => {
    readOnly = state.access === 'read'
    problem = state.problem
    applyAccess()
    onStatus({ status: provider.status })
  })
  // Deleted on the relay: say so, and take nothing more.
  const offDeleted = room.onDeleted((event) => {
    if (destroyed) return
    deleted = true
    form.before(deletedNotice('chat room', event, '/chat'))
    applyAccess()
  })
  Promise.race([provider.whenLoaded, provider.whenSynced]).then(enable, (err) => {
    console.warn('chat room not loaded:', err)
    enable()
  })

  return () => {
    destroyed = true
    offAccess()
    offDeleted()
    clearTimeout(typingTimer)
    offUser()
    window.removeEventListener('pageshow', onPageShow)
    awareness.off('change', renderPresence)
    messages.unobserve(renderMessages)
    provider.off('save-status', onSave)
    provider.off('status', onStatus)
    room.close()
  }
}
