// The document list (/docs): every room named `docs/<name>` on the relay, from GET /api/docs
// (GET /api/demo/docs with the demo sign-on), and a form to create a document (it is stored once
// someone writes in it). With the demo sign-on, documents under the read-only prefix carry a lock
// and cannot be created from here.

import { formatBytes, h, pathFor, relativeTime } from '../ui.js'
import { demoConfig, isReadOnlyRoom } from '../auth.js'
import { listRooms } from '../rooms.js'

/**
 * Why a new document of this name cannot be created here, or null if it can.
 * @param {string} name without `docs/`
 * @param {import('../auth.js').DemoConfig} [config]
 */
export function newDocProblem (name, config = demoConfig()) {
  if (!isReadOnlyRoom(`docs/${name}`, config)) return null
  const folder = config.readOnlyPrefix.slice('docs/'.length)
  return `Documents under “${folder}” are read-only in this demo: you could not write in it. Pick another name.`
}

/**
 * @param {HTMLElement} root
 * @param {{ navigate: (path: string) => void }} ctx
 */
export function mountDocList (root, { navigate }) {
  document.title = 'Documents · Relay'
  const input = /** @type {HTMLInputElement} */ (h('input', {
    id: 'new-doc-name',
    type: 'text',
    required: true,
    maxlength: 200,
    placeholder: 'Name of a new document',
    'aria-label': 'Name of a new document',
    autocomplete: 'off'
  }))
  const form = h('form', {
    class: 'new-item',
    onsubmit: (event) => {
      event.preventDefault()
      const name = input.value.trim()
      if (!name) return
      const problem = newDocProblem(name)
      formError.textContent = problem ?? ''
      if (problem) {
        input.focus()
        return
      }
      navigate(pathFor('docs', name))
    }
  }, input, h('button', { type: 'submit', class: 'button primary' }, 'New document'))
  const formError = h('p', { class: 'form-error new-item-error', id: 'new-doc-error', role: 'alert' })
  input.addEventListener('input', () => { formError.textContent = '' })
  const list = h('ul', { class: 'item-list', id: 'doc-list', 'aria-label': 'Documents' })
  const status = h('p', { class: 'list-status muted', role: 'status' }, 'Loading documents…')
  const more = /** @type {HTMLButtonElement} */ (h('button', { type: 'button', class: 'button secondary more', hidden: true }, 'Show more'))
  root.append(h('section', { class: 'page doc-list-page' },
    h('div', { class: 'page-head' },
      h('h1', { text: 'Documents' }),
      h('p', { class: 'muted', text: 'Open a document to edit it with everyone who has its link.' })),
    form,
    formError,
    h('div', { class: 'card' }, list, status, more)))

  let destroyed = false
  /** @type {string|undefined} */
  let nextAfter
  let generation = 0

  async function load ({ append = false } = {}) {
    const mine = ++generation
    try {
      const page = await listRooms('docs/', { after: append ? nextAfter : undefined })
      if (destroyed || mine !== generation) return
      if (!append) list.replaceChildren()
      for (const doc of page.rooms) list.append(row(doc))
      nextAfter = page.nextAfter
      more.hidden = !nextAfter
      status.textContent = list.children.length === 0
        ? 'No documents yet. Give the first one a name above.'
        : page.fromCache ? 'You are offline: this list may be out of date.' : ''
    } catch (err) {
      if (destroyed || mine !== generation) return
      status.textContent = navigator.onLine
        ? 'Cannot reach the relay to list the documents. Documents you opened before still open.'
        : 'You are offline. Documents you opened before still open.'
    }
  }

  function row (doc) {
    const name = doc.name.slice('docs/'.length)
    const readOnly = isReadOnlyRoom(doc.name)
    return h('li', { class: 'item', dataset: { name, access: readOnly ? 'read' : 'write' } },
      h('a', { href: pathFor('docs', name), 'data-link': true, class: 'item-link' },
        h('span', { class: readOnly ? 'item-icon doc-icon locked' : 'item-icon doc-icon', 'aria-hidden': 'true' }),
        h('span', { class: 'item-main' },
          h('span', { class: 'item-title', text: name }),
          h('span', { class: 'item-sub muted', text: `Edited ${relativeTime(doc.updated_at_ms)} · ${formatBytes(doc.size_bytes)}` })),
        readOnly && h('span', { class: 'badge read-only', title: 'You can read this document, not edit it' }, h('span', { class: 'lock', 'aria-hidden': 'true' }), ' Read only'),
        doc.connections > 0 && h('span', { class: 'badge live', text: `${doc.connections} open` })))
  }

  more.addEventListener('click', () => load({ append: true }))
  const refresh = () => { if (document.visibilityState === 'visible' && !nextAfter) load() }
  const timer = setInterval(refresh, 15000)
  document.addEventListener('visibilitychange', refresh)
  window.addEventListener('online', refresh)
  load()
  return () => {
    destroyed = true
    clearInterval(timer)
    document.removeEventListener('visibilitychange', refresh)
    window.removeEventListener('online', refresh)
  }
}
