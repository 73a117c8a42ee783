// Opens a room on the relay that served this page, with the browser client from client-js.
//
// The client keeps the document in IndexedDB (so it opens offline), syncs other tabs of this
// browser through BroadcastChannel, reconnects by itself and reports whether the relay has
// acknowledged every edit as saved (`save-status`).

import { RelayProvider } from '@relay/client'

/** ws://host or wss://host of the relay that served the page. */
export function relayUrl () {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}`
}

/**
 * Connects a Y.Doc to a room.
 * @param {string} room e.g. `docs/meeting notes` or `chat/general`
 * @param {import('yjs').Doc} doc
 */
export function openRoom (room, doc) {
  return new RelayProvider(relayUrl(), room, doc, {
    connect: true,
    offline: true,
    crossTab: true,
    warnBeforeUnload: true
  })
}

/** How long a closed page's provider may stay connected to get its last edits acknowledged. */
const LINGER_MS = 10000

/**
 * Closes a room when its page is left inside the app. Our presence goes at once; the connection
 * stays until the relay has acknowledged the last edits (at most LINGER_MS), so that leaving a
 * document right after typing does not leave it "saving".
 * @param {RelayProvider} provider
 * @param {import('yjs').Doc} doc
 */
export function closeRoom (provider, doc) {
  provider.awareness.setLocalState(null)
  const done = () => {
    provider.destroy()
    doc.destroy()
  }
  if (provider.saveStatus !== 'saving') {
    done()
    return
  }
  let timer
  Promise.race([
    provider.whenSaved(),
    new Promise(resolve => { timer = setTimeout(resolve, LINGER_MS) })
  ]).catch(() => {}).finally(() => {
    clearTimeout(timer)
    done()
  })
}
