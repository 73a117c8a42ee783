// The Tiptap demo: a rich-text editor on `@hocuspocus/provider`, Tiptap's own network client,
// talking to the relay unchanged (the relay speaks the Hocuspocus protocol at its root path).
//
// Open /tiptap.html?doc=NAME: it edits the room `docs/NAME`, the room of the Quill demo's document
// NAME (/docs/NAME). Both see each other in the room (presence, names and colours), but not each
// other's text: Tiptap keeps its content in a `Y.XmlFragment` (named `default`), Quill in a
// `Y.Text` (named `quill`), and neither editor can show the other's type. See README.md.
//
// "All changes saved" means what it says: the relay sends Hocuspocus' SyncStatus only once an
// edit is committed to disk, so the provider's `unsyncedChanges` reaches 0 only then.

import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import { HocuspocusProvider } from '@hocuspocus/provider'
import * as Y from 'yjs'
import { fetchToken, loadConfig, needsRefresh, storedToken } from './auth.js'
import { COLORS, currentUser } from './identity.js'

const name = new URLSearchParams(location.search).get('doc') || 'welcome'
const room = `docs/${name}`
const user = currentUser() ?? {
  name: `Guest ${Math.floor(Math.random() * 900) + 100}`,
  color: COLORS[Math.floor(Math.random() * COLORS.length)]
}

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))
$('title').textContent = name
const quillLink = /** @type {HTMLAnchorElement} */ ($('quill-link'))
quillLink.href = `/docs/${encodeURIComponent(name)}`

const configLoaded = loadConfig()

/** The token for this room: none on an open relay, the demo sign-on's otherwise. */
async function token () {
  const config = await configLoaded
  if (config.auth !== 'demo') return ''
  const stored = storedToken(room)
  if (stored && !needsRefresh(stored)) return stored.token
  return (await fetchToken(room, user.name)).token
}

const doc = new Y.Doc()
const provider = new HocuspocusProvider({
  url: `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}`,
  name: room,
  document: doc,
  token
})

const editor = new Editor({
  element: $('editor'),
  extensions: [
    // Collaboration brings its own undo (of one's own edits only).
    StarterKit.configure({ undoRedo: false }),
    Collaboration.configure({ document: doc }),
    CollaborationCaret.configure({ provider, user })
  ]
})

const status = $('status')
function showStatus () {
  if (provider.authorizedScope === 'readonly') {
    status.textContent = 'Read only'
  } else if (!provider.isSynced) {
    status.textContent = 'Connecting…'
  } else {
    status.textContent = provider.hasUnsyncedChanges ? 'Saving…' : 'All changes saved'
  }
}
provider.on('synced', showStatus)
provider.on('unsyncedChanges', showStatus)
provider.on('authenticated', ({ scope }) => {
  editor.setEditable(scope !== 'readonly')
  showStatus()
})
provider.on('authenticationFailed', ({ reason }) => {
  status.textContent = `Not allowed: ${reason}`
})
provider.on('awarenessChange', ({ states }) => {
  const people = $('people')
  people.replaceChildren(...states.filter(s => s.user).map(s => {
    const el = document.createElement('span')
    el.className = 'person'
    el.textContent = s.user.name
    el.style.background = s.user.color
    return el
  }))
})
showStatus()

// For the browser tests.
Object.assign(window, { tiptapDemo: { editor, provider, doc } })
