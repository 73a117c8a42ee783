// Sign on: pick the display name that labels your cursor and your presence. With the relay's demo
// sign-on (`demo`), a note says plainly that this is no authentication: the relay gives anyone
// access to its demo documents.

import { signOn } from '../identity.js'
import { h } from '../ui.js'

/**
 * @param {HTMLElement} root
 * @param {{ user: {name: string}|null, demo?: boolean, onDone: () => void, onCancel: (() => void)|null }} opts
 */
export function mountSignOn (root, { user, demo = false, onDone, onCancel }) {
  const input = /** @type {HTMLInputElement} */ (h('input', {
    id: 'display-name',
    name: 'name',
    type: 'text',
    required: true,
    maxlength: 40,
    autocomplete: 'nickname',
    placeholder: 'e.g. Ada Lovelace',
    value: user?.name ?? ''
  }))
  const error = h('p', { class: 'form-error', role: 'alert' })
  const form = h('form', {
    class: 'card sign-on',
    onsubmit: (event) => {
      event.preventDefault()
      try {
        signOn(input.value)
        onDone()
      } catch (err) {
        error.textContent = 'Please enter a name.'
        input.focus()
      }
    }
  },
  h('h1', { text: user ? 'Change your name' : 'Welcome' }),
  h('p', { class: 'muted', text: 'Your name is shown next to your cursor and in the list of people present. It stays on this device.' }),
  demo && h('p', { class: 'demo-note', id: 'demo-sign-on-note', role: 'note' },
    h('strong', { text: 'Demo sign-on: ' }),
    'anyone can get access to this relay’s demo documents. There is no password and no account; ' +
    'your name is only a label. Do not put anything private here.'),
  h('label', { for: 'display-name', text: 'Display name' }),
  input,
  error,
  h('div', { class: 'form-actions' },
    onCancel && h('button', { type: 'button', class: 'button secondary', onclick: onCancel }, 'Cancel'),
    h('button', { type: 'submit', class: 'button primary' }, user ? 'Save' : 'Continue')))
  root.append(form)
  input.focus()
  return () => {}
}
