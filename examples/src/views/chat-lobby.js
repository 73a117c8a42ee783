// The chat rooms (/chat): rooms named `chat/<name>` on the relay, and a form to join one.

import { h, pathFor, relativeTime } from '../ui.js'
import { listRooms } from '../rooms.js'

/**
 * @param {HTMLElement} root
 * @param {{ navigate: (path: string) => void }} ctx
 */
export function mountChatLobby (root, { navigate }) {
  document.title = 'Chat · Relay'
  const input = /** @type {HTMLInputElement} */ (h('input', {
    id: 'chat-room-name',
    type: 'text',
    required: true,
    maxlength: 100,
    placeholder: 'general',
    'aria-label': 'Room name',
    autocomplete: 'off'
  }))
  const list = h('ul', { class: 'item-list', id: 'chat-list', 'aria-label': 'Chat rooms' })
  const status = h('p', { class: 'list-status muted', role: 'status' }, 'Loading rooms…')
  root.append(h('section', { class: 'page' },
    h('div', { class: 'page-head' },
      h('h1', { text: 'Chat rooms' }),
      h('p', { class: 'muted', text: 'Join a room by name, or create one: it exists as soon as someone writes in it.' })),
    h('form', {
      class: 'new-item',
      onsubmit: (event) => {
        event.preventDefault()
        navigate(pathFor('chat', input.value.trim() || 'general'))
      }
    }, input, h('button', { type: 'submit', class: 'button primary' }, 'Join room')),
    h('div', { class: 'card' }, list, status)))

  let destroyed = false
  listRooms('chat/').then((page) => {
    if (destroyed) return
    for (const room of page.rooms) {
      const name = room.name.slice('chat/'.length)
      list.append(h('li', { class: 'item', dataset: { name } },
        h('a', { href: pathFor('chat', name), 'data-link': true, class: 'item-link' },
          h('span', { class: 'item-icon chat-icon', 'aria-hidden': 'true', text: '#' }),
          h('span', { class: 'item-main' },
            h('span', { class: 'item-title', text: name }),
            h('span', { class: 'item-sub muted', text: `Last message ${relativeTime(room.updated_at_ms)}` })),
          room.connections > 0 && h('span', { class: 'badge live', text: `${room.connections} online` }))))
    }
    status.textContent = list.children.length === 0 ? 'No rooms yet. Start with “general”.' : ''
  }, () => {
    if (!destroyed) status.textContent = 'Cannot reach the relay to list the rooms.'
  })
  return () => { destroyed = true }
}
