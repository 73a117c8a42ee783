// Unmodified `@hocuspocus/provider` 4.x and 3.x (npm aliases `hocuspocus-provider-4` and
// `hocuspocus-provider-3`, both on Yjs 13), connected to the relay's root path.

import * as Y from 'yjs'
import WebSocket from 'ws'
import * as v4 from 'hocuspocus-provider-4'
import * as v3 from 'hocuspocus-provider-3'
import { waitFor, withDeadline } from '../js-support/wait.mjs'

export { Y }

/** Both provider versions, by name, for tests that run against each. */
export const VERSIONS = { '4.x': v4, '3.x': v3 }

/**
 * Records what a provider reports: authentication, its scope, refusals, syncs, closes.
 * @param {any} provider
 */
function track (provider) {
  const log = { authenticated: [], denied: [], closes: [], stateless: [], synced: 0 }
  provider.on('authenticated', ({ scope }) => log.authenticated.push(scope))
  provider.on('authenticationFailed', ({ reason }) => log.denied.push(reason))
  provider.on('close', ({ event }) => log.closes.push(event?.code))
  provider.on('stateless', ({ payload }) => log.stateless.push(payload))
  provider.on('synced', () => { log.synced++ })
  return log
}

/**
 * A provider websocket to the relay's root path: several providers can share it.
 * @param {import('../js-support/relay-test.mjs').Scope} scope destroys it
 * @param {string} version '4.x' or '3.x'
 * @param {string} url the relay's ws:// address
 */
export function hocusSocket (scope, version, url, opts = {}) {
  const { HocuspocusProviderWebsocket } = VERSIONS[version]
  const socket = new HocuspocusProviderWebsocket({ url, WebSocketPolyfill: WebSocket, ...opts })
  scope.defer(() => socket.destroy())
  return socket
}

/**
 * A Hocuspocus provider for document `name`, on its own websocket or on `websocketProvider`.
 * @param {import('../js-support/relay-test.mjs').Scope} scope destroys it and its document
 * @param {string} version '4.x' or '3.x'
 */
export function hocusClient (scope, version, url, name, { doc = new Y.Doc(), token = '', websocketProvider, ...opts } = {}) {
  const { HocuspocusProvider } = VERSIONS[version]
  const provider = websocketProvider
    ? new HocuspocusProvider({ websocketProvider, name, document: doc, token, ...opts })
    : new HocuspocusProvider({ url, WebSocketPolyfill: WebSocket, name, document: doc, token, ...opts })
  // A provider on a shared websocket attaches only when asked to (both versions).
  if (websocketProvider) provider.attach()
  const log = track(provider)
  scope.defer(() => {
    provider.destroy()
    doc.destroy()
  })
  return { provider, doc, awareness: provider.awareness, log }
}

/** Resolves when the provider has its first sync step 2 from the relay. */
export function waitHocusSynced (provider, what = 'the Hocuspocus provider to sync') {
  return waitFor(() => provider.isSynced || provider.synced, { timeout: 20_000, what })
}

/** Resolves when the provider's unsynced changes are 0 (every update acknowledged). */
export function waitAllSaved (provider, what = 'unsyncedChanges to reach 0') {
  return waitFor(() => provider.unsyncedChanges === 0, { timeout: 20_000, what: () => `${what} (now ${provider.unsyncedChanges})` })
}

export { waitFor, withDeadline }
