/**
 * The provider: connects a Yjs document to a room of the relay, keeps it in IndexedDB, syncs it
 * with the other tabs of the browser and tells when the relay has saved the local edits.
 *
 * @module provider
 */

import * as Y from 'yjs'
import { ObservableV2 } from 'lib0/observable'
import * as awarenessProtocol from 'y-protocols/awareness'
import { Connector, transportKinds } from './connector.js'
import { CrossTab } from './cross-tab.js'
import { defaultEnvironment } from './environment.js'
import { OfflineStore, deleteStore } from './offline-store.js'
import {
  CLOSE_DOCUMENT_DELETED, encodeAwareness, encodeSaveRequest, encodeSyncStep1, encodeUpdate, readMessages
} from './protocol.js'
import { SaveTracker, snapshotCovers } from './save-status.js'
import { PollingTransport } from './polling.js'
import { SocketTransport } from './transport.js'

/** @typedef {'connecting' | 'connected' | 'disconnected'} ConnectionStatus */
/** @typedef {import('./save-status.js').SaveStatus} SaveStatus */
/** @typedef {import('./transport.js').CloseInfo} CloseInfo */
/** @typedef {import('./transport.js').WebSocketConstructor} WebSocketConstructor */
/** @typedef {import('./polling.js').FetchLike} FetchLike */
/** @typedef {import('./connector.js').TransportKind} TransportKind */

/**
 * The events of a {@link RelayProvider} (lib0 `ObservableV2`: `provider.on(name, fn)`,
 * `provider.off(name, fn)`). The first four have y-websocket's names and arguments.
 *
 * @typedef {object} RelayProviderEvents
 * @property {(event: {status: ConnectionStatus}) => void} status
 *   The connection to the relay changed: 'connecting' (a socket is being opened), 'connected' (it
 *   is open), 'disconnected' (no socket; a reconnect may be scheduled). A switch from long-polling
 *   to a WebSocket keeps 'connected'.
 * @property {(event: {transport: TransportKind | null}) => void} transport
 *   The transport of the open connection changed (`provider.transport`): 'websocket' or 'polling'
 *   when a connection opens or the provider moves from long-polling to a WebSocket, null when it
 *   closes (emitted before the matching 'status').
 * @property {(synced: boolean) => void} sync
 *   `true` when the relay's sync step 2 arrived on the current connection (the document has
 *   everything the relay had), `false` when that connection closed.
 * @property {(event: CloseInfo, provider: RelayProvider) => void} connection-close
 *   A connection closed: the socket's CloseEvent, or `{code: 1006, reason, wasClean: false}` when
 *   the client gave up on it (liveness timeout, `offline` event), or `{code: 1000, ...}` after
 *   `disconnect()`. After code 4401 or 4403 the provider does not reconnect until `connect()`;
 *   after 4404 (the document was deleted) it never does, and 'deleted' follows.
 *   Over long-polling: the code of the relay's 410 answer, 1006 when the session is lost, and
 *   4401/4403 when the relay refuses to open one (HTTP 401/403). Each failed attempt reports its
 *   close, also the WebSocket attempt that `transport: 'auto'` falls back from.
 * @property {(event: any, provider: RelayProvider) => void} connection-error
 *   The socket reported an error (a close follows).
 * @property {(event: {status: SaveStatus, error?: string}) => void} save-status
 *   The save status changed: 'saved' (the relay acknowledged every local edit as durable),
 *   'saving' (connected, waiting for the acknowledgement; or, with no connection, while local edits
 *   are still being written to IndexedDB), 'offline-unsaved' (local edits the relay has not
 *   acknowledged, no connection, and every one of them committed to IndexedDB when offline storage
 *   is on), 'error' (the relay reported a failed commit, with its
 *   reason in `error`; it retries, and 'saved' follows once a retry commits), 'deleted' (the relay
 *   deleted the document: nothing is saved any more, and what was saved is gone; final).
 * @property {(event: {unsaved: boolean}) => void} deleted
 *   The relay deleted the document (`DELETE /api/docs/NAME`, close code 4404; or, when the
 *   provider loads, its IndexedDB copy records that; or another tab heard it). Emitted once. The
 *   provider stops connecting for good and never sends the document, its IndexedDB copy included,
 *   back to the relay: that would bring the deleted content back. `provider.deleted` is true,
 *   `saveStatus` is 'deleted', `whenSaved()` rejects. `unsaved`: whether the document holds local
 *   edits the relay never saved (kept only in this document and its IndexedDB copy). The local
 *   copy stays until `clearLocalCopy()`; as long as it is there, providers for this room in this
 *   browser do not connect. Writing the document anew takes a provider over a new `Y.Doc` once the
 *   copy is cleared.
 * @property {() => void} loaded
 *   The content stored in IndexedDB is in the document (emitted once, also when offline storage is
 *   off, then at once).
 */

/**
 * @typedef {object} RelayProviderOptions
 * @property {awarenessProtocol.Awareness} [awareness] default `new Awareness(doc)` (destroyed with the provider)
 * @property {Record<string, string>} [params] query parameters for the URL (e.g. `{ token }`); can be
 *   replaced later through `provider.params` before calling `connect()`
 * @property {boolean} [connect] connect at once (default true)
 * @property {boolean} [offline] keep the document in IndexedDB (default true; off when there is no indexedDB)
 * @property {boolean} [crossTab] sync with other tabs through a BroadcastChannel (default true; off when there is none)
 * @property {{initialMs?: number, maxMs?: number, factor?: number, jitter?: number}} [backoff]
 *   reconnect delays (default 500 ms doubling up to 30 s, half of each delay random)
 * @property {number} [livenessTimeoutMs] close and reconnect when nothing arrived for this long (default 30000)
 * @property {boolean} [warnBeforeUnload] in browsers, ask before leaving the page while edits are unsaved (default true)
 * @property {WebSocketConstructor} [WebSocketPolyfill] WebSocket implementation (Node: `ws`)
 * @property {'auto' | 'websocket' | 'polling'} [transport] 'auto' (default): a WebSocket, and
 *   HTTP long-polling when the WebSocket cannot be made, fails before it opens or does not open
 *   within `websocketOpenTimeoutMs`; while on long-polling, a WebSocket is tried again now and
 *   then (`websocketRetry`) and taken over once it opens. 'websocket' or 'polling': only that one.
 * @property {FetchLike} [fetch] fetch implementation for long-polling (default `globalThis.fetch`)
 * @property {number} [websocketOpenTimeoutMs] with 'auto', how long a WebSocket may take to open
 *   before long-polling is tried (default 5000)
 * @property {{initialMs?: number, maxMs?: number, factor?: number, jitter?: number}} [websocketRetry]
 *   with 'auto', while on long-polling: delays between WebSocket attempts (default 60 s doubling
 *   up to 10 min)
 * @property {Partial<import('./environment.js').Environment>} [env] replaces parts of the
 *   environment (timers, window, BroadcastChannel, indexedDB, random); for tests
 * @property {number} [compactAfter] IndexedDB entries appended in a session before the log is compacted
 */

const DEFAULT_LIVENESS_TIMEOUT_MS = 30000

/**
 * `ws(s)://host` → `http(s)://host`.
 * @param {string} wsUrl a normalized server URL
 * @returns {string}
 */
function httpUrlOf (wsUrl) {
  return wsUrl.replace(/^ws/i, 'http')
}

/**
 * Turns `http(s)://` into `ws(s)://` and drops trailing slashes.
 * @param {string} serverUrl
 * @returns {string}
 */
export function normalizeServerUrl (serverUrl) {
  let url = serverUrl.trim().replace(/\/+$/, '')
  if (/^http:\/\//i.test(url)) url = 'ws://' + url.slice(7)
  else if (/^https:\/\//i.test(url)) url = 'wss://' + url.slice(8)
  if (!/^wss?:\/\//i.test(url)) throw new TypeError(`relay URL must start with ws://, wss://, http:// or https:// (got ${serverUrl})`)
  return url
}

/**
 * Connects a Yjs document to a room of the relay.
 *
 * ```js
 * const provider = new RelayProvider('wss://relay.example', 'notes/monday', doc, { params: { token } })
 * provider.on('save-status', ({ status }) => { indicator.textContent = status })
 * await provider.whenSynced
 * ```
 *
 * What each state means (three different things):
 * - *loaded*: the content kept in IndexedDB is in the document (`whenLoaded`, 'loaded');
 * - *synced*: the document has everything the relay had when this connection opened (`synced`,
 *   `whenSynced`, 'sync');
 * - *saved*: the relay has committed every local edit to disk (`saveStatus`, `whenSaved()`,
 *   'save-status'). Local edits are edits made in this tab or received from another tab, and
 *   content loaded from IndexedDB that the relay never acknowledged.
 *
 * @extends {ObservableV2<RelayProviderEvents>}
 */
export class RelayProvider extends ObservableV2 {
  /**
   * @param {string} serverUrl `ws(s)://host:port` or `http(s)://host:port`
   * @param {string} room the room (document) name; any string, percent-encoded into the URL
   * @param {Y.Doc} doc
   * @param {RelayProviderOptions} [opts]
   */
  constructor (serverUrl, room, doc, opts = {}) {
    super()
    const env = { ...defaultEnvironment(), ...opts.env }
    const g = /** @type {any} */ (globalThis)
    const WebSocketImpl = opts.WebSocketPolyfill ?? g.WebSocket
    const fetchImpl = opts.fetch ?? (typeof g.fetch === 'function' ? g.fetch.bind(g) : undefined)
    const kinds = transportKinds(opts.transport ?? 'auto', {
      webSocket: typeof WebSocketImpl === 'function',
      fetch: typeof fetchImpl === 'function'
    })
    this.serverUrl = normalizeServerUrl(serverUrl)
    this.room = room
    this.doc = doc
    /** @type {Record<string, string>} query parameters of the next connection */
    this.params = { ...opts.params }
    this._ownAwareness = opts.awareness === undefined
    this.awareness = opts.awareness ?? new awarenessProtocol.Awareness(doc)
    /** @type {ConnectionStatus} */
    this.status = 'disconnected'
    /** @type {TransportKind | null} the transport of the open connection */
    this.transport = null
    this.synced = false
    /** @type {SaveStatus} */
    this.saveStatus = 'saved'
    /** @type {string | null} reason of the last save error, while saveStatus is 'error' */
    this.saveError = null
    this.loaded = false
    /** whether the relay deleted the document (see the 'deleted' event) */
    this.deleted = false
    this.destroyed = false
    this.livenessTimeoutMs = opts.livenessTimeoutMs ?? DEFAULT_LIVENESS_TIMEOUT_MS
    this._env = env
    this._connector = new Connector({
      kinds,
      createTransport: (kind, handlers) => kind === 'websocket'
        ? new SocketTransport({ url: this.url, WebSocket: WebSocketImpl, livenessTimeoutMs: this.livenessTimeoutMs, timers: env.timers }, handlers)
        : new PollingTransport({
          baseUrl: httpUrlOf(this.serverUrl),
          room: this.room,
          params: this.params,
          fetch: /** @type {FetchLike} */ (fetchImpl),
          livenessTimeoutMs: this.livenessTimeoutMs,
          timers: env.timers
        }, handlers),
      timers: env.timers,
      random: env.random,
      backoff: opts.backoff,
      websocketRetry: opts.websocketRetry,
      websocketOpenTimeoutMs: opts.websocketOpenTimeoutMs
    }, {
      onConnecting: () => this._connecting(),
      onOpen: (kind, switched) => this._opened(kind, switched),
      onMessage: data => this._received(data),
      onClose: (event, { fallback }) => this._closed(event, fallback),
      onError: event => this.emit('connection-error', [event, this])
    })
    this._tracker = new SaveTracker()
    /** whether to connect once the IndexedDB content is loaded (`connect()` came before) */
    this._connectOnLoad = false
    /** whether our sync step 2 went out on the current connection (save requests wait for it) */
    this._sentStep2 = false
    this._saveRequestQueued = false
    this._persisting = false
    this._persistAgain = false
    /** @type {CrossTab | null} */
    this._crossTab = null
    /** @type {Array<{resolve: () => void, reject: (err: Error) => void}>} */
    this._savedWaiters = []
    this._warnBeforeUnload = opts.warnBeforeUnload ?? true
    this._beforeUnloadInstalled = false

    // Content that was in the document before the provider saw it is not known to be saved.
    if (doc.store.clients.size > 0) this._tracker.change()

    /** @type {(update: Uint8Array, origin: any) => void} */
    this._onDocUpdate = (update, origin) => this._docUpdated(update, origin)
    /** @type {(changes: {added: number[], updated: number[], removed: number[]}, origin: any) => void} */
    this._onAwarenessUpdate = ({ added, updated, removed }, _origin) => {
      // Only the local client's entry: every other client speaks for itself.
      const id = this.doc.clientID
      if (!added.includes(id) && !updated.includes(id) && !removed.includes(id)) return
      this._connector.send(encodeAwareness(this.awareness, [id]))
      this._crossTab?.postAwareness([id])
    }
    this._onDocDestroy = () => this.destroy()
    doc.on('destroy', this._onDocDestroy)
    this.awareness.on('update', this._onAwarenessUpdate)

    const name = `relay-client:${this.serverUrl}/${encodeURIComponent(room)}`
    /** the name of the IndexedDB database and of the BroadcastChannel */
    this._localName = name
    /** @type {OfflineStore | null} */
    this._store = (opts.offline ?? true) && env.indexedDB !== null
      ? new OfflineStore(name, doc, { indexedDB: env.indexedDB, compactAfter: opts.compactAfter })
      : null
    // After the store's own listener: when _docUpdated judges the save status, the store already
    // counts the update among its pending writes, so 'offline-unsaved' ("kept on this device") is
    // never claimed before IndexedDB has committed it.
    doc.on('update', this._onDocUpdate)
    if (this._store !== null) this._store.onWritesSettled = () => this._updateSaveStatus()
    /** @type {Promise<void>} the content kept in IndexedDB is in the document */
    this.whenLoaded = (this._store !== null ? this._store.whenLoaded : Promise.resolve(null)).then(result => {
      if (this.destroyed) return
      if (result?.error) console.warn('relay-client: could not load the document from IndexedDB', result.error)
      // Loaded content counts as unsaved unless the relay acknowledged all of it before.
      if (result !== null && result.entries > 0) {
        const current = Y.snapshot(doc)
        if (result.acked === null || !snapshotCovers(result.acked, current)) this._tracker.change()
      }
      this.loaded = true
      if ((opts.crossTab ?? true) && env.BroadcastChannel !== null) {
        this._crossTab = new CrossTab(name, doc, this.awareness, env.BroadcastChannel, {
          onDeleted: () => this._documentDeleted('another tab')
        })
      }
      this._updateSaveStatus()
      this.emit('loaded', [])
      // Before the first connection (which waits for this load): a copy of a deleted document.
      if (result?.deleted) this._documentDeleted('the local copy')
    })
    /** @type {() => void} */
    let resolveSynced = () => {}
    /** @type {Promise<void>} the first sync with the relay */
    this.whenSynced = new Promise(resolve => { resolveSynced = resolve })
    this._resolveSynced = resolveSynced

    /** @type {Array<[string, (event: any) => void]>} */
    this._windowListeners = []
    if (env.window !== null) {
      // The network is back: try now rather than when the backoff says.
      this._listen('online', () => this._connector.wake())
      this._listen('offline', () => this._connector.drop('the browser went offline'))
      this._listen('pagehide', () => this._clearLocalAwareness('page hidden'))
    }
    /** @param {any} event */
    this._onBeforeUnload = event => {
      if (!this._tracker.unsaved) return
      event.preventDefault()
      // Older browsers show the dialog only when returnValue is set.
      try { event.returnValue = '' } catch {}
      return ''
    }
    this._updateSaveStatus()
    if (opts.connect ?? true) this.connect()
  }

  /** The room's URL without the query parameters. */
  get roomUrl () {
    return `${this.serverUrl}/${encodeURIComponent(this.room)}`
  }

  /** The URL the next connection opens: the room's URL with `params` as the query string. */
  get url () {
    const query = new URLSearchParams(this.params).toString()
    return query.length > 0 ? `${this.roomUrl}?${query}` : this.roomUrl
  }

  /**
   * Resolves the next time the save status is 'saved' (at once if it is); rejects if the
   * provider is destroyed first or the relay deleted the document.
   * @returns {Promise<void>}
   */
  whenSaved () {
    if (this.saveStatus === 'saved') return Promise.resolve()
    if (this.destroyed) return Promise.reject(new Error('provider destroyed'))
    if (this.deleted) return Promise.reject(new Error('the relay deleted the document'))
    return new Promise((resolve, reject) => this._savedWaiters.push({ resolve, reject }))
  }

  /**
   * Connects to the relay (after the IndexedDB content is loaded) and keeps reconnecting until
   * `disconnect()`. Also the way to retry after 4401/4403, e.g. with new `params`. Does nothing
   * once the relay deleted the document (`deleted`).
   */
  connect () {
    if (this.destroyed || this.deleted) return
    if (this.loaded) {
      this._connector.connect()
      return
    }
    // Open once the stored content is in the document, so that sync step 2 carries it.
    this._setStatus('connecting')
    if (this._connectOnLoad) return
    this._connectOnLoad = true
    this.whenLoaded.then(() => {
      if (!this._connectOnLoad) return
      this._connectOnLoad = false
      this.connect()
    })
  }

  /** Closes the connection to the relay and stops reconnecting. Cross-tab sync goes on. */
  disconnect () {
    this._connectOnLoad = false
    // The connector reports the close of an open connection ('connection-close', then the status).
    if (!this._connector.disconnect()) this._setStatus('disconnected')
  }

  /**
   * Disconnects and releases everything the provider created: the socket, timers, window
   * listeners, the BroadcastChannel, the IndexedDB connection, its listeners on the document and
   * the awareness, and the awareness itself if the provider created it. The local awareness state
   * is cleared first (the removal goes out to the relay and the other tabs).
   */
  destroy () {
    if (this.destroyed) return
    this._clearLocalAwareness('provider destroyed')
    this.disconnect()
    this.destroyed = true
    this.doc.off('update', this._onDocUpdate)
    this.doc.off('destroy', this._onDocDestroy)
    this.awareness.off('update', this._onAwarenessUpdate)
    if (this._ownAwareness) this.awareness.destroy()
    for (const [type, fn] of this._windowListeners) this._env.window?.removeEventListener(type, fn)
    this._windowListeners = []
    this._setBeforeUnload(false)
    this._crossTab?.destroy()
    this._crossTab = null
    this._store?.destroy()
    const waiters = this._savedWaiters
    this._savedWaiters = []
    for (const w of waiters) w.reject(new Error('provider destroyed'))
    super.destroy()
  }

  /**
   * Deletes the copy of the document kept in IndexedDB (with its record of a deletion by the
   * relay); from then on the provider keeps nothing there. Meant for after 'deleted', when the
   * application lets the copy go. Other pages that have the copy open stop keeping updates in it.
   * @returns {Promise<void>}
   */
  async clearLocalCopy () {
    const store = this._store
    if (store === null) return
    this._store = null
    store.destroy()
    // A store exists only where there is an indexedDB.
    await deleteStore(/** @type {IDBFactory} */ (this._env.indexedDB), this._localName)
  }

  /**
   * The relay deleted the document, as `source` tells: stop connecting for good, never send the
   * document back, keep the record in IndexedDB and tell the other tabs (unless that is where it
   * comes from), and tell the application.
   * @param {'the relay' | 'the local copy' | 'another tab'} source
   */
  _documentDeleted (source) {
    if (this.deleted || this.destroyed) return
    const unsaved = this._tracker.unsaved
    this.deleted = true
    this._tracker.deleted = true
    // A connection of this tab that is still open (this tab heard it from elsewhere) goes too.
    this.disconnect()
    if (source !== 'the local copy') {
      this._store?.setDeleted().catch(err => console.warn('relay-client: could not record the deletion in IndexedDB', err))
    }
    if (source !== 'another tab') this._crossTab?.postDeleted()
    this._updateSaveStatus()
    const waiters = this._savedWaiters
    this._savedWaiters = []
    for (const w of waiters) w.reject(new Error('the relay deleted the document'))
    this.emit('deleted', [{ unsaved }])
  }

  // --- connection ---------------------------------------------------------------------------

  _connecting () {
    this._sentStep2 = false
    this._setStatus('connecting')
  }

  /**
   * A connection opened: our awareness state, sync step 1, and (after the relay's step 1 and our
   * step 2) a save request. A WebSocket that took over from long-polling (`switched`) starts the
   * same way, without a 'disconnected' in between; remote awareness states are kept (the relay
   * still has them, with the same clocks).
   * @param {TransportKind} kind
   * @param {boolean} switched
   */
  _opened (kind, switched) {
    if (switched) {
      this._sentStep2 = false
      // Save requests sent over the session will not be answered on the socket.
      this._tracker.disconnected()
      if (this.synced) {
        this.synced = false
        this.emit('sync', [false])
      }
    }
    this._tracker.connected()
    this._setTransport(kind)
    this._setStatus('connected')
    // Awareness before sync step 1: the relay handles a connection's messages in order, so its
    // sync step 2 comes after it took our awareness state. After a switch, that answer ends the
    // long-polling session (`synced()`); had the state not moved to the socket by then, the
    // session's end would show everyone this client leaving.
    this._announceAwareness()
    this._connector.send(encodeSyncStep1(this.doc))
    this._updateSaveStatus()
  }

  /**
   * Sends the local awareness state on a new connection. When the previous connection closed, the
   * relay announced our removal with our clock + 1 and keeps that clock, so the state is sent with
   * a clock 2 higher than the last one: with the same or the next clock it would be ignored until
   * the renewal after next (30 s later). The 'update' event sends it (see `_onAwarenessUpdate`).
   */
  _announceAwareness () {
    const state = this.awareness.getLocalState()
    if (state === null) return
    const meta = this.awareness.meta.get(this.doc.clientID)
    if (meta !== undefined) meta.clock++
    this.awareness.setLocalState(state)
  }

  /**
   * @param {CloseInfo} event
   * @param {boolean} fallback whether an attempt with the other transport follows at once
   */
  _closed (event, fallback) {
    this._sentStep2 = false
    this._tracker.disconnected()
    // Remote awareness states are stale without the relay; other tabs announce theirs again. Their
    // clocks are forgotten too: the relay sends the same states, with the same clocks, on the next
    // connection, and a known clock would make this client ignore them.
    const remote = [...this.awareness.meta.keys()].filter(id => id !== this.doc.clientID)
    const live = remote.filter(id => this.awareness.states.has(id))
    if (live.length > 0) awarenessProtocol.removeAwarenessStates(this.awareness, live, this)
    for (const id of remote) this.awareness.meta.delete(id)
    this._crossTab?.queryAwareness()
    if (this.synced) {
      this.synced = false
      this.emit('sync', [false])
    }
    this.emit('connection-close', [event, this])
    this._setTransport(null)
    // A listener of 'connection-close' may have called connect(): then an attempt is under way.
    if (!fallback && !this._connector.active) this._setStatus('disconnected')
    // Before the save status: with unsaved edits it would say 'offline-unsaved' for a moment.
    if (event.code === CLOSE_DOCUMENT_DELETED) this._documentDeleted('the relay')
    this._updateSaveStatus()
  }

  /** @param {TransportKind | null} kind */
  _setTransport (kind) {
    if (this.transport === kind) return
    this.transport = kind
    this.emit('transport', [{ transport: kind }])
  }

  // --- messages -----------------------------------------------------------------------------

  /** @param {Uint8Array} frame */
  _received (frame) {
    try {
      readMessages(frame, this.doc, this, msg => {
        switch (msg.type) {
          case 'sync-step-1':
            // Our step 2 carries everything the relay lacks, edits made offline included; the save
            // request after it covers them.
            this._connector.send(msg.reply)
            this._sentStep2 = true
            this._sendSaveRequest()
            break
          case 'sync-step-2':
            this._connector.synced()
            if (!this.synced) {
              this.synced = true
              this.emit('sync', [true])
              this._resolveSynced()
            }
            break
          case 'awareness':
            awarenessProtocol.applyAwarenessUpdate(this.awareness, msg.update, this)
            break
          case 'query-awareness':
            if (this.awareness.getLocalState() !== null) {
              this._connector.send(encodeAwareness(this.awareness, [this.doc.clientID]))
            }
            break
          case 'auth-denied':
            console.warn(`relay-client: the relay refused a message: ${msg.reason}`)
            break
          case 'saved':
            if (this._tracker.saved(msg.id)) {
              this._updateSaveStatus()
              this._persistAcked()
            }
            break
          case 'save-error':
            if (this._tracker.failed(msg.id, msg.reason)) this._updateSaveStatus()
            break
        }
      })
    } catch (err) {
      console.error('relay-client: could not read a message from the relay', err)
    }
  }

  /**
   * @param {Uint8Array} update
   * @param {any} origin
   */
  _docUpdated (update, origin) {
    if (origin === this) return // from the relay
    if (this._store !== null && origin === this._store) return // loaded: judged against the acked snapshot
    this._tracker.change()
    if (this._crossTab !== null && origin !== this._crossTab) this._crossTab.postUpdate(update)
    // Updates from other tabs go to the relay too: a save request covers only what this
    // connection sent. The relay neither stores nor broadcasts an update it already has.
    if (this._connector.isOpen) {
      this._connector.send(encodeUpdate(update))
      this._queueSaveRequest()
    }
    this._updateSaveStatus()
  }

  /**
   * Everything in the document is on the relay now: remember it across reloads, as a snapshot in
   * IndexedDB. At most one write is in flight; one more follows if the relay acked again meanwhile
   * (a snapshot is only taken while nothing is unsaved).
   */
  _persistAcked () {
    const store = this._store
    if (store === null || this._tracker.unsaved) return
    if (this._persisting) {
      this._persistAgain = true
      return
    }
    this._persisting = true
    this._persistAgain = false
    store.setAcked(Y.snapshot(this.doc)).catch(err => {
      console.warn('relay-client: could not record the saved state in IndexedDB', err)
    }).finally(() => {
      this._persisting = false
      if (this._persistAgain && !this.destroyed) this._persistAcked()
    })
  }

  /** One save request for all updates sent in the same tick. */
  _queueSaveRequest () {
    if (this._saveRequestQueued) return
    this._saveRequestQueued = true
    queueMicrotask(() => {
      this._saveRequestQueued = false
      this._sendSaveRequest()
    })
  }

  _sendSaveRequest () {
    // Before our sync step 2 went out, a request would claim edits made offline that were not sent.
    if (this.destroyed || !this._sentStep2 || !this._connector.isOpen) return
    const id = this._tracker.request()
    this._connector.send(encodeSaveRequest(id))
  }

  // --- state --------------------------------------------------------------------------------

  /** @param {ConnectionStatus} status */
  _setStatus (status) {
    if (this.status === status) return
    this.status = status
    this.emit('status', [{ status }])
  }

  _updateSaveStatus () {
    this._tracker.storing = this._store !== null && this._store.pendingWrites > 0
    const status = this._tracker.status
    this.saveError = status === 'error' ? this._tracker.error : null
    if (status !== this.saveStatus) {
      this.saveStatus = status
      this.emit('save-status', [this.saveError !== null ? { status, error: this.saveError } : { status }])
    }
    // After a deletion nothing more can be saved: staying on the page would not help.
    this._setBeforeUnload(!this.destroyed && !this.deleted && this._tracker.unsaved && this._warnBeforeUnload)
    if (status === 'saved' && this._savedWaiters.length > 0) {
      const waiters = this._savedWaiters
      this._savedWaiters = []
      for (const w of waiters) w.resolve()
    }
  }

  /**
   * Installs the beforeunload listener only while something is unsaved: a permanent one would
   * keep browsers from putting the page into the back/forward cache.
   * @param {boolean} on
   */
  _setBeforeUnload (on) {
    const win = this._env.window
    if (win === null || on === this._beforeUnloadInstalled) return
    if (on) win.addEventListener('beforeunload', this._onBeforeUnload)
    else win.removeEventListener('beforeunload', this._onBeforeUnload)
    this._beforeUnloadInstalled = on
  }

  /**
   * @param {string} type
   * @param {(event: any) => void} fn
   */
  _listen (type, fn) {
    this._env.window?.addEventListener(type, fn)
    this._windowListeners.push([type, fn])
  }

  /** @param {string} why */
  _clearLocalAwareness (why) {
    if (this.awareness.getLocalState() !== null) {
      awarenessProtocol.removeAwarenessStates(this.awareness, [this.doc.clientID], why)
    }
  }
}
