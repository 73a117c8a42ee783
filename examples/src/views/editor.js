// The editor (/docs/<name>): Quill 2 bound to the Y.Text `quill` of the room `docs/<name>` with
// y-quill, remote cursors and selections with quill-cursors, the people present from awareness,
// and the autosave indicator driven by the client's `save-status` events.
//
// A read-only document (the demo sign-on's `read` tokens) is shown with the editor disabled, a
// "Read only" badge next to the title and no toolbar; the indicator then says that it is
// read-only instead of anything about saving, since nothing typed here would be kept.
//
// A document deleted on the relay while it is open (or before, if this device still had a copy):
// the editor is disabled, a notice says so, and the indicator says that nothing is saved any more.

import * as Y from 'yjs'
import Quill from 'quill'
import QuillCursorsModule from 'quill-cursors/core'
import { QuillBinding } from 'y-quill'
import { openRoom } from '../connect.js'
import { onUserChange } from '../identity.js'
import { mountPresence } from './presence.js'
import { connectionText, deletedNotice, h, saveStatusText } from '../ui.js'

// quill-cursors is CommonJS with `exports.default`; imported from an ES module package (Node's
// rules, which esbuild follows here) its default import is the whole `exports` object.
const QuillCursors = QuillCursorsModule.default ?? QuillCursorsModule
Quill.register('modules/cursors', QuillCursors)

const PLACEHOLDER = 'Start writing…'

const TOOLBAR = [
  [{ header: [1, 2, 3, false] }],
  ['bold', 'italic', 'underline', 'strike'],
  [{ list: 'ordered' }, { list: 'bullet' }, { list: 'check' }],
  ['blockquote', 'code-block', 'link'],
  ['clean']
]

/**
 * @param {HTMLElement} root
 * @param {{ name: string, user: {name: string, color: string} }} ctx
 */
export function mountEditor (root, { name, user }) {
  document.title = `${name} · Relay`
  const saveEl = h('span', { class: 'save-status', id: 'save-status', role: 'status', 'aria-live': 'polite' })
  const connEl = h('span', { class: 'conn-status', id: 'conn-status' })
  const shareButton = h('button', { type: 'button', class: 'button secondary share', title: 'Copy the link to this document' }, 'Share')
  const presenceEl = h('div', { class: 'presence', id: 'presence', 'aria-label': 'People in this document' })
  const editorEl = h('div', { class: 'editor-body' })
  const readOnlyBadge = h('span', {
    class: 'badge read-only',
    id: 'read-only-badge',
    title: 'You can read this document and see who is here, but not edit it',
    hidden: true
  }, h('span', { class: 'lock', 'aria-hidden': 'true' }), ' Read only')
  const page = h('section', { class: 'page editor-page' },
    h('div', { class: 'doc-head' },
      h('a', { href: '/docs', 'data-link': true, class: 'back' }, '← Documents'),
      h('div', { class: 'doc-title-row' },
        h('h1', { class: 'doc-title', text: name, title: name }),
        readOnlyBadge,
        h('div', { class: 'doc-actions' }, presenceEl, shareButton)),
      h('div', { class: 'doc-status' }, saveEl, connEl)),
    h('div', { class: 'card editor-card' }, editorEl))
  root.append(page)

  const doc = new Y.Doc()
  const room = openRoom(`docs/${name}`, doc, user)
  const provider = room.provider
  const awareness = provider.awareness
  awareness.setLocalStateField('user', { name: user.name, color: user.color })

  const quill = new Quill(editorEl, {
    theme: 'snow',
    placeholder: PLACEHOLDER,
    modules: {
      toolbar: TOOLBAR,
      cursors: { transformOnTextChange: true },
      // Undo only your own changes, never other people's.
      history: { userOnly: true }
    }
  })
  // Typing before the local copy is read would be merged correctly, but the page would jump.
  quill.disable()
  page.classList.add('loading')
  const binding = new QuillBinding(doc.getText('quill'), quill, awareness)

  let ready = false
  let destroyed = false
  let readOnly = room.access === 'read'
  let problem = null
  let deleted = false
  const enable = () => {
    if (ready || destroyed) return
    ready = true
    page.classList.remove('loading')
    applyAccess()
    if (!readOnly && !isTouch()) quill.focus()
  }
  // Editable once loaded, unless read-only.
  const applyAccess = () => {
    page.classList.toggle('read-only', readOnly)
    readOnlyBadge.hidden = !readOnly
    quill.root.setAttribute('aria-readonly', String(readOnly))
    quill.root.dataset.placeholder = readOnly ? '' : PLACEHOLDER
    if (ready && !readOnly && !deleted) quill.enable()
    else quill.disable()
    showSave(provider.saveStatus, provider.saveError)
    showConn(provider.status)
  }
  // Whichever comes first: the copy in IndexedDB, or the relay's.
  Promise.race([provider.whenLoaded, provider.whenSynced]).then(enable, (err) => {
    console.warn('document not loaded:', err)
    enable()
  })

  const showSave = (status, error) => {
    if (readOnly && status !== 'deleted') {
      // Nothing is edited here: no claim about saving (nor about unsaved edits).
      saveEl.dataset.status = 'read-only'
      saveEl.textContent = 'Read only: you can read this document, not edit it'
      return
    }
    saveEl.dataset.status = status
    saveEl.textContent = saveStatusText(status, error)
  }
  const showConn = (status) => {
    if (problem !== null) {
      connEl.dataset.status = 'refused'
      connEl.textContent = `No access: ${problem}`
      return
    }
    connEl.dataset.status = status
    connEl.textContent = connectionText(status)
  }
  const onSave = ({ status, error }) => showSave(status, error)
  const onStatus = ({ status }) => showConn(status)
  provider.on('save-status', onSave)
  provider.on('status', onStatus)
  const offAccess = room.onAccess((state) => {
    readOnly = state.access === 'read'
    problem = state.problem
    applyAccess()
  })

  const offDeleted = room.onDeleted((event) => {
    if (destroyed) return
    deleted = true
    page.classList.add('deleted')
    page.querySelector('.doc-head')?.after(deletedNotice('document', event, '/docs'))
    applyAccess()
  })

  const unmountPresence = mountPresence(presenceEl, awareness)

  shareButton.addEventListener('click', async () => {
    const url = location.href
    try {
      if (navigator.share && isTouch()) {
        await navigator.share({ title: name, url })
      } else {
        await navigator.clipboard.writeText(url)
        flash(shareButton, 'Link copied')
      }
    } catch {
      window.prompt('Copy this link:', url)
    }
  })

  let me = { name: user.name, color: user.color }
  const offUser = onUserChange((u) => {
    if (!u) return
    me = { name: u.name, color: u.color }
    awareness.setLocalStateField('user', me)
  })
  // The client clears our awareness state on `pagehide`; a page restored from the back/forward
  // cache announces itself again.
  const onPageShow = (event) => {
    if (event.persisted && awareness.getLocalState() === null) awareness.setLocalState({ user: me })
  }
  window.addEventListener('pageshow', onPageShow)

  return () => {
    destroyed = true
    offAccess()
    offDeleted()
    offUser()
    window.removeEventListener('pageshow', onPageShow)
    unmountPresence()
    provider.off('save-status', onSave)
    provider.off('status', onStatus)
    binding.destroy()
    room.close()
  }
}

function isTouch () {
  return window.matchMedia('(pointer: coarse)').matches
}

function flash (button, text) {
  const before = button.textContent
  button.textContent = text
  setTimeout(() => { button.textContent = before }, 1500)
}
