// The demo app: shared documents and chat rooms on the relay, in one page.
//
//   cd examples && npm ci && npm run build && cd .. && cargo run -p relay -- serve
//   open http://127.0.0.1:8080/
//
// You pick a display name, then see the documents stored on the relay (/docs). /docs/<name> is a
// rich-text editor that everyone with the link edits together, with their cursors and an autosave
// indicator; /chat/<name> is a chat room. Pages keep working offline: the service worker (sw.js)
// serves the app and the client keeps the documents in IndexedDB.
//
// Addresses: /docs/<name> and /chat/<name> hold the percent-encoded name; the rooms on the relay
// are `docs/<name>` and `chat/<name>`.
//
// On a relay with a secret the app needs tokens (auth.js): with `relay serve --demo-sign-on` it
// gets them from the relay's demo sign-on; without it, it explains that the relay expects tokens
// from an application and opens nothing.

import { demoConfig, forgetTokens, loadConfig } from './auth.js'
import { currentUser, onUserChange, signOut } from './identity.js'
import { avatar, h } from './ui.js'
import { mountSignOn } from './views/sign-on.js'
import { mountTokensRequired } from './views/tokens-required.js'
import { mountDocList } from './views/doc-list.js'
import { mountEditor } from './views/editor.js'
import { mountChatLobby } from './views/chat-lobby.js'
import { mountChat } from './views/chat.js'

/** @typedef {{ view: string, name?: string, section: string }} Route */

/** Decodes a path segment, keeping it as is when it is not valid percent-encoding. */
function decode (segment) {
  try {
    return decodeURIComponent(segment)
  } catch {
    return segment
  }
}

/**
 * @param {string} pathname
 * @returns {Route}
 */
export function parseRoute (pathname) {
  const path = pathname.replace(/\/+$/, '') || '/'
  if (path === '/' || path === '/docs') return { view: 'docs', section: 'docs' }
  if (path.startsWith('/docs/')) return { view: 'editor', name: decode(path.slice('/docs/'.length)), section: 'docs' }
  if (path === '/chat') return { view: 'chat-lobby', section: 'chat' }
  if (path.startsWith('/chat/')) return { view: 'chat', name: decode(path.slice('/chat/'.length)), section: 'chat' }
  return { view: 'not-found', section: '' }
}

const viewEl = /** @type {HTMLElement} */ (document.getElementById('view'))
const meEl = /** @type {HTMLElement} */ (document.getElementById('me'))
/** @type {(() => void) | null} */
let unmount = null
let editingName = false
/** Nothing is shown before the mode is known (loadConfig). */
let configured = false

function render () {
  if (!configured) return
  if (unmount) {
    try { unmount() } catch (err) { console.error(err) }
    unmount = null
  }
  viewEl.replaceChildren()
  const route = parseRoute(location.pathname)
  for (const a of document.querySelectorAll('.tabs a')) {
    a.classList.toggle('active', a.getAttribute('data-section') === route.section)
  }
  if (demoConfig().auth === 'token') {
    // No way to get a token here: explain, and open nothing.
    renderMe()
    unmount = mountTokensRequired(viewEl)
    return
  }
  renderMe()
  const user = currentUser()
  if (!user || editingName) {
    document.title = 'Sign on · Relay'
    unmount = mountSignOn(viewEl, {
      user,
      demo: demoConfig().auth === 'demo',
      onDone: () => { editingName = false; render() },
      onCancel: user ? () => { editingName = false; render() } : null
    })
    return
  }
  const ctx = { user, navigate }
  switch (route.view) {
    case 'docs': unmount = mountDocList(viewEl, ctx); break
    case 'editor': unmount = mountEditor(viewEl, { ...ctx, name: route.name }); break
    case 'chat-lobby': unmount = mountChatLobby(viewEl, ctx); break
    case 'chat': unmount = mountChat(viewEl, { ...ctx, name: route.name }); break
    default:
      document.title = 'Not found · Relay'
      viewEl.append(h('section', { class: 'card empty-state' },
        h('h1', { text: 'Nothing here' }),
        h('p', {}, 'This address is not a document or a chat room. ', h('a', { href: '/docs', 'data-link': true, text: 'See all documents' }), '.')))
  }
}

function renderMe () {
  const user = currentUser()
  if (!user || !configured || demoConfig().auth === 'token') {
    meEl.replaceChildren()
    return
  }
  meEl.replaceChildren(
    avatar(user),
    h('span', { class: 'me-name', text: user.name }),
    h('button', {
      type: 'button',
      class: 'link-button',
      title: 'Change your display name',
      onclick: () => { editingName = true; render() }
    }, 'Change'),
    h('button', {
      type: 'button',
      class: 'link-button',
      title: 'Forget your name on this device',
      onclick: () => { signOut() }
    }, 'Sign out')
  )
}

/** Goes to a path of the app without reloading the page. */
export function navigate (path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path)
  else history.pushState(null, '', path)
  render()
  window.scrollTo(0, 0)
}

document.addEventListener('click', (event) => {
  const a = /** @type {HTMLElement} */ (event.target).closest?.('a[data-link]')
  if (!a || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return
  event.preventDefault()
  const href = a.getAttribute('href')
  if (href !== location.pathname) navigate(href)
})

window.addEventListener('popstate', render)

onUserChange((user) => {
  // Signing out (here or in another tab) shows the sign-on form and forgets this tab's tokens; a
  // new name is passed to the open view through its own listener.
  if (!user) forgetTokens()
  if (!user || editingName) render()
  else renderMe()
})

if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('/sw.js').catch((err) => console.warn('service worker not registered:', err))
}

// The mode comes first: it decides whether rooms need tokens. Offline it is the last one seen.
loadConfig().finally(() => {
  configured = true
  document.body.dataset.auth = demoConfig().auth
  render()
})
