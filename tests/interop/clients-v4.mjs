// The stock @y/websocket 4 provider with Yjs 14 (`@y/y`). Yjs 14 has one shared type, `Y.Type`:
// `doc.get(name)` returns it, with text methods (insert/delete/toString), map methods
// (setAttr/getAttr) and array methods (push/insert/toArray).

import * as Y4 from '@y/y'
import { WebsocketProvider as WebsocketProvider4 } from '@y/websocket'
import WebSocket from 'ws'
import { trackProvider } from './clients.mjs'
import { waitFor } from '../js-support/wait.mjs'

export { Y4, WebsocketProvider4 }

/**
 * Creates a stock @y/websocket 4 provider (BroadcastChannel disabled, see v3Client).
 * @param {import('../js-support/relay-test.mjs').Scope} scope
 */
export function v4Client (scope, url, room, { doc = new Y4.Doc(), connect = true, ...opts } = {}) {
  const provider = new WebsocketProvider4(url, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    ...opts,
    connect: false
  })
  const log = trackProvider(provider)
  if (connect) provider.connect()
  scope.defer(() => {
    provider.destroy()
    provider.awareness.destroy()
    doc.destroy()
  })
  return { doc, provider, log, awareness: provider.awareness }
}

/** Waits until the Yjs 14 doc's type `name` has exactly `expected` as its text. */
export function waitText4 (doc, expected, { name = 'text', timeout = 10_000, who = 'v4 client' } = {}) {
  const ytype = doc.get(name)
  return waitFor(() => ytype.length === expected.length && ytype.toString() === expected, {
    timeout,
    what: () => `${who} to have text of length ${expected.length} (has length ${ytype.length}: ${JSON.stringify(ytype.toString().slice(0, 80))})`
  })
}
