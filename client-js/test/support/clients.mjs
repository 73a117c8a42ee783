// Providers for tests: Node's `ws` as the WebSocket, no IndexedDB or cross-tab sync unless a test
// asks for them, and a scope that destroys everything a test created.

import * as Y from 'yjs'
import { WebSocket } from 'ws'
import { RelayProvider } from '../../src/index.js'
import { Scope } from '../../../tests/js-support/relay-test.mjs'
import { waitFor, waitForEvent, withDeadline } from '../../../tests/js-support/wait.mjs'

/**
 * A RelayProvider with a new Doc (unless given), destroyed with the scope.
 * @param {Scope} scope
 * @param {string} url
 * @param {string} room
 * @param {object} [opts] RelayProvider options, plus `doc`
 */
export function provider (scope, url, room, opts = {}) {
  const { doc = new Y.Doc(), ...rest } = opts
  const p = new RelayProvider(url, room, doc, {
    WebSocketPolyfill: WebSocket,
    offline: false,
    crossTab: false,
    ...rest
  })
  scope.defer(() => { p.destroy(); doc.destroy() })
  return p
}

/** Waits until the provider's save status is `status`. */
export function saveStatusIs (p, status, timeout = 10_000) {
  if (p.saveStatus === status) return Promise.resolve()
  return waitForEvent(p, 'save-status', { pred: e => e.status === status, timeout, what: `save status '${status}' (now '${p.saveStatus}')` })
}

/** Reads a room's text `name` through a fresh provider that keeps nothing locally. */
export async function readFromRelay (url, room, name = 'text') {
  const scope = new Scope()
  try {
    const p = provider(scope, url, room)
    await waitFor(() => p.synced, { what: 'a reader to sync with the relay' })
    return p.doc.getText(name).toString()
  } finally {
    await scope.dispose()
  }
}

/** Waits, with a deadline, for the first sync of every provider. */
export function synced (...providers) {
  return withDeadline(Promise.all(providers.map(p => p.whenSynced)), 10_000, 'the providers to sync')
}

/** Waits, with a deadline, until the provider loaded its IndexedDB content. */
export function loaded (p) {
  return withDeadline(p.whenLoaded, 10_000, 'IndexedDB content to load')
}
