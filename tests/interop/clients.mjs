// Clients for the tests: the stock y-websocket 3 provider (Yjs 13), a raw client built from
// y-protocols + lib0 on a plain `ws` socket, and the save extension (type 100: save request,
// saved, save error).

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import WebSocket from 'ws'
import { withDeadline, waitFor } from '../js-support/wait.mjs'

export { Y, WebSocket }

export const MSG_SYNC = 0
export const MSG_AWARENESS = 1
export const MSG_AUTH = 2
export const MSG_QUERY_AWARENESS = 3
export const MSG_SAVE = 100
export const SAVE_REQUEST = 0
export const SAVED = 1
export const SAVE_ERROR = 2

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

export function encodeSaveRequest (requestId) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MSG_SAVE)
  encoding.writeVarUint(encoder, SAVE_REQUEST)
  encoding.writeVarUint(encoder, requestId)
  return encoding.toUint8Array(encoder)
}

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
    const sub = decoding.readVarUint(decoder)
    const id = decoding.readVarUint(decoder)
    if (sub === SAVED) {
      this.answers.push({ kind: 'saved', id })
      const p = this.pending.get(id)
      if (p) { this.pending.delete(id); p.resolve(id) }
    } else if (sub === SAVE_ERROR) {
      const reason = decoding.readVarString(decoder)
      this.answers.push({ kind: 'error', id, reason })
    } else {
      throw new Error(`unexpected saved-extension sub-type ${sub} from the relay`)
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
  provider.messageHandlers[MSG_SAVE] = (_encoder, decoder) => tracker.handle(decoder)
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
      if (type === MSG_SYNC) {
        const sub = decoding.readVarUint(decoder)
        const payload = decoding.readVarUint8Array(decoder)
        this.received.push({ type, sub, payload })
        if (sub === syncProtocol.messageYjsSyncStep1) {
          const encoder = encoding.createEncoder()
          encoding.writeVarUint(encoder, MSG_SYNC)
          syncProtocol.writeSyncStep2(encoder, this.doc, payload)
          this.ws.send(encoding.toUint8Array(encoder))
        } else {
          this.syncUpdates.push({ sub, update: payload })
          Y.applyUpdate(this.doc, payload, this)
          if (sub === syncProtocol.messageYjsSyncStep2) this.gotStep2 = true
        }
      } else if (type === MSG_AWARENESS) {
        const payload = decoding.readVarUint8Array(decoder)
        this.received.push({ type, payload })
      } else if (type === MSG_SAVE) {
        this.received.push({ type })
        this.saves.handle(decoder)
      } else if (type === MSG_AUTH) {
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
    encoding.writeVarUint(encoder, MSG_SYNC)
    syncProtocol.writeSyncStep1(encoder, this.doc)
    this.ws.send(encoding.toUint8Array(encoder))
  }

  sendUpdate (update) {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MSG_SYNC)
    syncProtocol.writeUpdate(encoder, update)
    this.ws.send(encoding.toUint8Array(encoder))
  }

  /** Sends an awareness update for `states` ({clientID: [clock, stateOrNull]}). */
  sendAwareness (entries) {
    const inner = encoding.createEncoder()
    encoding.writeVarUint(inner, entries.length)
    for (const { clientID, clock, state } of entries) {
      encoding.writeVarUint(inner, clientID)
      encoding.writeVarUint(inner, clock)
      encoding.writeVarString(inner, JSON.stringify(state))
    }
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MSG_AWARENESS)
    encoding.writeVarUint8Array(encoder, encoding.toUint8Array(inner))
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

/** Decodes an awareness message payload into [{clientID, clock, state}]. */
export function decodeAwareness (payload) {
  const decoder = decoding.createDecoder(payload)
  const n = decoding.readVarUint(decoder)
  const out = []
  for (let i = 0; i < n; i++) {
    const clientID = decoding.readVarUint(decoder)
    const clock = decoding.readVarUint(decoder)
    const state = JSON.parse(decoding.readVarString(decoder))
    out.push({ clientID, clock, state })
  }
  return out
}

/** Connects a raw client and registers it with the scope. */
export async function rawClient (scope, url, opts) {
  const client = new RawClient(url, opts)
  scope.defer(() => { client.close(); client.doc.destroy() })
  await client.opened
  return client
}

export { awarenessProtocol, syncProtocol, encoding, decoding }
