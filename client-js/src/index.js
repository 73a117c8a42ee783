/**
 * `@relay/client`: a Yjs provider for the relay.
 *
 * Modules, in the order an edit passes them:
 * - `provider.js`: {@link RelayProvider}, the public API and the Yjs side (sync, awareness, save
 *   status, IndexedDB and the other tabs);
 * - `protocol.js`: the y-protocols messages, the relay's save extension (type 100) and the close
 *   codes with what the client does after each (the numbers and the messages that need no Yjs
 *   document are in `wire.js`, which it re-exports);
 * - `connector.js`: one connection at a time: WebSocket first, long-polling when it cannot open,
 *   back to a WebSocket when one opens, reconnects with backoff;
 * - `transport.js`: the WebSocket and its liveness check;
 * - `polling.js`: HTTP long-polling, the fallback where WebSockets are blocked;
 * - `backoff.js`: reconnect delays;
 * - `save-status.js`: local versions against acknowledged ones;
 * - `offline-store.js`: IndexedDB storage with compaction;
 * - `cross-tab.js`: BroadcastChannel sync between tabs;
 * - `environment.js`: timers, window, BroadcastChannel and IndexedDB (replaceable in tests).
 *
 * ```js
 * import * as Y from 'yjs'
 * import { RelayProvider } from '@relay/client'
 *
 * const doc = new Y.Doc()
 * const provider = new RelayProvider('ws://127.0.0.1:8080', 'my-document', doc)
 * provider.on('save-status', ({ status }) => console.log(status))
 * doc.getText('content').insert(0, 'Hello!') // 'saving', then 'saved' once the relay committed it
 * ```
 *
 * @module @relay/client
 */

export { RelayProvider, normalizeServerUrl } from './provider.js'
export { Backoff } from './backoff.js'
export { Connector } from './connector.js'
export { SaveTracker, snapshotCovers, mergeSnapshots } from './save-status.js'
export { OfflineStore, logStats } from './offline-store.js'
export { CrossTab } from './cross-tab.js'
export { SocketTransport } from './transport.js'
export { PollingTransport } from './polling.js'
export { defaultEnvironment } from './environment.js'
export * as protocol from './protocol.js'
