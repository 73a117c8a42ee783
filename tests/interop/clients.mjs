// Clients for the tests: the stock y-websocket 3 provider (Yjs 13), a raw client built from
// y-protocols + lib0 on a plain `ws` socket, and the save extension (type 100: save request,
// saved, save error).
//
// The protocol's numbers and the save extension's messages come from the client's wire.js, which
// imports lib0 only (from client-js/node_modules: run `npm ci` in client-js first). Not from
// protocol.js: that one imports y-protocols and so client-js's own copy of yjs, and two copies of
// Yjs in one process break Yjs. What stock clients send goes through y-protocols from this suite.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import WebSocket from 'ws'
import {
  MESSAGE_AUTH, MESSAGE_AWARENESS, MESSAGE_QUERY_AWARENESS, MESSAGE_SAVE, MESSAGE_SYNC,
  encodeQueryAwareness, encodeSaveRequest, readSaveMessage
} from '../../client-js/src/wire.js'
import { withDeadline, waitFor } from '../js-support/wait.mjs'

export { Y, WebSocket }
export { MESSAGE_AUTH, MESSAGE_AWARENESS, MESSAGE_QUERY_AWARENESS, MESSAGE_SAVE, MESSAGE_SYNC, encodeQueryAwareness }

/**
 * Records what a provider (v3 or v4, same events) reports: status changes, closes with their
 * codes, and sync changes.
 */
export function trackProvider (provider) {
  const log = { statuses: [], closes: [], syncs: [], events: [] }
  const t0 = Date.now()
  provider.on('status', ({ status }) => { log.statuses.push(status); log.events.push(`+${Date.now() - t0}ms ${status}`) })
  provider.on('connection-close', event => {
    const info = event ? { code: event.code, reason: event.reason } : null
    log.closes.push(info)
    log.events.push(`+${Date.now() - t0}ms connection-close ${JSON.stringify(info)}`)
  })
  provider.on('sync', state => log.syncs.push(state))
  return log
}

/**
 * Creates a stock y-websocket 3 provider. BroadcastChannel is disabled: in Node every provider
 * of a room in one process would otherwise sync with the others through it, past the relay.
 * @param {import('../js-support/relay-test.mjs').Scope} scope destroys the provider and its document
 */
export function v3Client (scope, url, room, { doc = new Y.Doc(), connect = true, ...opts } = {}) {
  const provider = new WebsocketProvider(url, room, doc, {
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

/** Waits until the provider has received sync step 2 from the relay. */
export function waitSynced (provider, timeout = 10_000) {
  return waitFor(() => provider.synced, { timeout, what: `provider for room "${provider.roomname}" to be synced` })
}

/** Waits until `doc`'s Y.Text `name` has exactly `expected` as its content. */
export function waitText (doc, expected, { name = 'text', timeout = 10_000, who = 'client' } = {}) {
  const ytext = doc.getText(name)
  return waitFor(() => ytext.length === expected.length && ytext.toString() === expected, {
    timeout,
    what: () => `${who} to have text of length ${expected.length} (has length ${ytext.length})`
  })
}

// ---------------------------------------------------------------------------------------------
// The "saved" extension (PROTOCOL.md, type 100).

/**
 * Tracks save requests of one connection. `handle` reads a type-100 message body (after the
 * message type) from a lib0 decoder.
 */
export class SaveTracker {
  /** @param {(buf: Uint8Array) => void} send */
  constructor (send) {
    this.send = send
    this.nextId = 1
    /** @type {Map<number, {resolve: Function, reject: Function}>} */
    this.pending = new Map()
    /** every answer in arrival order: {kind: 'saved'|'error', id, reason?} */
    this.answers = []
  }

  /**
   * Sends a save request and returns the request id and a promise that resolves when the relay
   * answers *saved* for it.
   */
  request () {
    const id = this.nextId++
    const saved = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }))
    this.send(encodeSaveRequest(id))
    return { id, saved }
  }

  /** Sends a save request and waits for *saved*. */
  async save (timeout = 10_000) {
    const { id, saved } = this.request()
    await withDeadline(saved, timeout, `"saved" acknowledgement for request ${id}`)
    return id
  }

  handle (decoder) {
    const msg = readSaveMessage(decoder)
    if (msg?.type === 'saved') {
      this.answers.push({ kind: 'saved', id: msg.id })
      const p = this.pending.get(msg.id)
      if (p) { this.pending.delete(msg.id); p.resolve(msg.id) }
    } else if (msg?.type === 'save-error') {
      this.answers.push({ kind: 'error', id: msg.id, reason: msg.reason })
    } else {
      throw new Error(`unexpected saved-extension message from the relay: ${JSON.stringify(msg)}`)
    }
  }

  /** Rejects every pending request (the connection closed: no answer will come). */
  failAll (reason) {
    for (const [id, p] of this.pending) p.reject(new Error(`save request ${id}: ${reason}`))
    this.pending.clear()
  }
}

/**
 * Adds the saved extension to a stock provider without modifying it: y-websocket keeps a
 * per-instance `messageHandlers` table for exactly this, and the request goes out on the
 * provider's own socket, after the updates the provider has already sent on it.
 */
export function attachSaveTracker (provider) {
  const tracker = new SaveTracker(buf => {
    if (!provider.wsconnected || provider.ws === null) throw new Error('provider is not connected')
    provider.ws.send(buf)
  })
  provider.messageHandlers[MESSAGE_SAVE] = (_encoder, decoder) => tracker.handle(decoder)
  provider.on('connection-close', () => tracker.failAll('connection closed'))
  return tracker
}

// ---------------------------------------------------------------------------------------------
// A raw client: a plain `ws` socket speaking the protocol with y-protocols and a Yjs 13 document.

export class RawClient {
  /**
   * Connects to `url` (which includes the room path, already encoded as wanted) and resolves once
   * the socket is open.
   * @param {string} url
   * @param {{doc?: Y.Doc, syncOnOpen?: boolean}} [opts] syncOnOpen: send sync step 1 (default true)
   */
  static async connect (url, opts = {}) {
    const client = new RawClient(url, opts)
    await client.opened
    return client
  }

  constructor (url, { doc = new Y.Doc(), syncOnOpen = true } = {}) {
    this.url = url
    this.doc = doc
    this.ws = new WebSocket(url)
    /** everything received, in order: {type, sub?, payload?} */
    this.received = []
    /** updates received as sync messages (step 2 and update) */
    this.syncUpdates = []
    this.gotStep2 = false
    this.closeInfo = null
    this.errors = []
    this.saves = new SaveTracker(buf => this.ws.send(buf))
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => {
        if (syncOnOpen) this.sendSyncStep1()
        resolve()
      })
      this.ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode} instead of a WebSocket upgrade`), { statusCode: res.statusCode })))
      this.ws.once('error', reject)
    })
    this.closed = new Promise(resolve => {
      this.ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() }
        this.saves.failAll('connection closed')
        resolve(this.closeInfo)
      })
    })
    this.ws.on('error', err => this.errors.push(err))
    this.ws.on('message', (data, isBinary) => this._onMessage(data, isBinary))
    this._onUpdate = (update, origin) => {
      if (origin !== this && this.ws.readyState === WebSocket.OPEN) this.sendUpdate(update)
    }
    doc.on('update', this._onUpdate)
  }

  _onMessage (data, isBinary) {
    if (!isBinary) {
      this.received.push({ type: 'text', payload: data.toString() })
      return
    }
    const buf = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    const decoder = decoding.createDecoder(buf)
    // The relay sends one message per frame, but read all of them to be safe.
    while (decoding.hasContent(decoder)) {
      const type = decoding.readVarUint(decoder)
      if (type === MESSAGE_SYNC) {
        const sub = decoding.readVarUint(decoder)
        const payload = decoding.readVarUint8Array(decoder)
        this.received.push({ type, sub, payload })
        if (sub === syncProtocol.messageYjsSyncStep1) {
          const encoder = encoding.createEncoder()
          encoding.writeVarUint(encoder, MESSAGE_SYNC)
          syncProtocol.writeSyncStep2(encoder, this.doc, payload)
          this.ws.send(encoding.toUint8Array(encoder))
        } else {
          this.syncUpdates.push({ sub, update: payload })
          Y.applyUpdate(this.doc, payload, this)
          if (sub === syncProtocol.messageYjsSyncStep2) this.gotStep2 = true
        }
      } else if (type === MESSAGE_AWARENESS) {
        const payload = decoding.readVarUint8Array(decoder)
        this.received.push({ type, payload })
      } else if (type === MESSAGE_SAVE) {
        this.received.push({ type })
        this.saves.handle(decoder)
      } else if (type === MESSAGE_AUTH) {
        const sub = decoding.readVarUint(decoder)
        const reason = sub === 0 ? decoding.readVarString(decoder) : ''
        this.received.push({ type, sub, reason })
      } else {
        this.received.push({ type })
        break // unknown: the rest of the frame cannot be read
      }
    }
  }

  sendSyncStep1 () {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MESSAGE_SYNC)
    syncProtocol.writeSyncStep1(encoder, this.doc)
    this.ws.send(encoding.toUint8Array(encoder))
  }

  sendUpdate (update) {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MESSAGE_SYNC)
    syncProtocol.writeUpdate(encoder, update)
    this.ws.send(encoding.toUint8Array(encoder))
  }

  waitSynced (timeout = 10_000) {
    return waitFor(() => this.gotStep2, { timeout, what: `raw client on ${this.url} to receive sync step 2` })
  }

  /** Sends a save request and waits for *saved*. */
  save (timeout = 10_000) { return this.saves.save(timeout) }

  close () {
    this.doc.off('update', this._onUpdate)
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.terminate()
    }
  }
}

/**
 * The states an awareness message's payload carries, by client id, read by y-protocols into a
 * scratch Awareness (whose own state is left out). Listed are the states y-protocols applies to an
 * Awareness that has seen nothing: not removals (null states), and not a client's first state at
 * clock 0 (a stock client's empty state before its first setLocalState/setLocalStateField).
 * @param {Uint8Array} payload
 * @returns {Map<number, any>}
 */
export function awarenessStates (payload) {
  const scratch = new Y.Doc()
  const awareness = new awarenessProtocol.Awareness(scratch)
  try {
    awareness.setLocalState(null)
    awarenessProtocol.applyAwarenessUpdate(awareness, payload, 'relay')
    return new Map(awareness.getStates())
  } finally {
    awareness.destroy()
    scratch.destroy()
  }
}

/** Connects a raw client and registers it with the scope. */
export async function rawClient (scope, url, opts) {
  const client = new RawClient(url, opts)
  scope.defer(() => { client.close(); client.doc.destroy() })
  await client.opened
  return client
}

export { awarenessProtocol, syncProtocol, encoding, decoding }
