/**
 * The provider: connects a Yjs document to a room of the relay, keeps it in IndexedDB, syncs it
 * with the other tabs of the browser and tells when the relay has saved the local edits.
 *
 * @module provider
 */

import * as Y from 'yjs'
import { ObservableV2 } from 'lib0/observable'
import * as awarenessProtocol from 'y-protocols/awareness'
import { Backoff } from './backoff.js'
import { CrossTab } from './cross-tab.js'
import { defaultEnvironment } from './environment.js'
import { OfflineStore, deleteStore } from './offline-store.js'
import {
  CLOSE_DOCUMENT_DELETED, CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED, encodeAwareness, encodeSaveRequest, encodeSyncStep1, encodeUpdate,
  readMessages
} from './protocol.js'
import { SaveTracker, snapshotCovers } from './save-status.js'
import { PollingTransport } from './polling.js'
import { SocketTransport } from './transport.js'

/** @typedef {'connecting' | 'connected' | 'disconnected'} ConnectionStatus */
/** @typedef {import('./save-status.js').SaveStatus} SaveStatus */
/** @typedef {import('./transport.js').CloseInfo} CloseInfo */
/** @typedef {import('./transport.js').WebSocketConstructor} WebSocketConstructor */
/** @typedef {import('./polling.js').FetchLike} FetchLike */
/** @typedef {'websocket' | 'polling'} TransportKind */
/** @typedef {SocketTransport | PollingTransport} Transport */

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
 *   'saving' (connected, waiting for the acknowledgement), 'offline-unsaved' (local edits the relay
 *   has not acknowledged, and no connection), 'error' (the relay reported a failed commit, with its
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
const DEFAULT_WEBSOCKET_OPEN_TIMEOUT_MS = 5000
const DEFAULT_WEBSOCKET_RETRY = { initialMs: 60000, maxMs: 600000 }
const TRANSPORT_OPTIONS = ['auto', 'websocket', 'polling']

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
    const option = opts.transport ?? 'auto'
    if (!TRANSPORT_OPTIONS.includes(option)) throw new TypeError(`transport must be one of ${TRANSPORT_OPTIONS.join(', ')} (got ${option})`)
    const g = /** @type {any} */ (globalThis)
    const WebSocketImpl = opts.WebSocketPolyfill ?? g.WebSocket
    const fetchImpl = opts.fetch ?? (typeof g.fetch === 'function' ? g.fetch.bind(g) : undefined)
    const hasWebSocket = option !== 'polling' && typeof WebSocketImpl === 'function'
    const hasFetch = option !== 'websocket' && typeof fetchImpl === 'function'
    if (option === 'websocket' && !hasWebSocket) {
      throw new TypeError('no WebSocket implementation: pass WebSocketPolyfill (in Node: the ws package)')
    }
    if (option === 'polling' && !hasFetch) throw new TypeError('no fetch implementation: pass fetch')
    if (!hasWebSocket && !hasFetch) {
      throw new TypeError('neither a WebSocket nor fetch: pass WebSocketPolyfill (in Node: the ws package) or fetch')
    }
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
    /** @type {WebSocketConstructor | null} */
    this._WebSocket = hasWebSocket ? WebSocketImpl : null
    /** @type {FetchLike | null} */
    this._fetch = hasFetch ? /** @type {FetchLike} */ (fetchImpl) : null
    this._auto = option === 'auto' && hasWebSocket && hasFetch
    /** @type {TransportKind} the transport a connection attempt starts with */
    this._preferred = hasWebSocket ? 'websocket' : 'polling'
    /** @type {Set<TransportKind>} transports tried since the last open or scheduled reconnect */
    this._tried = new Set()
    /** @type {TransportKind | null} the transport of the next attempt when it is not the preferred one */
    this._nextKind = null
    this._websocketOpenTimeoutMs = opts.websocketOpenTimeoutMs ?? DEFAULT_WEBSOCKET_OPEN_TIMEOUT_MS
    /** @type {any} */
    this._openTimer = null
    this._backoff = new Backoff({ ...opts.backoff, random: env.random })
    this._probeBackoff = new Backoff({ ...DEFAULT_WEBSOCKET_RETRY, ...opts.websocketRetry, random: env.random })
    /** @type {any} */
    this._probeTimer = null
    /** @type {SocketTransport | null} a WebSocket being tried while on long-polling */
    this._probe = null
    /** @type {Transport | null} the polling session left for a WebSocket, closed once that synced */
    this._retiring = null
    this._tracker = new SaveTracker()
    this._shouldConnect = false
    /** @type {Transport | null} */
    this._transport = null
    /** whether the current transport has opened */
    this._transportOpened = false
    /** @type {TransportKind} the transport of the current (or last) attempt */
    this._attemptKind = this._preferred
    /** @type {(() => void) | null} */
    this._probeCancel = null
    /** whether our sync step 2 went out on the current connection (save requests wait for it) */
    this._sentStep2 = false
    this._saveRequestQueued = false
    this._persisting = false
    this._persistAgain = false
    /** @type {any} */
    this._reconnectTimer = null
    this._openAfterLoad = false
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
      if (this._transport?.isOpen) this._transport.send(encodeAwareness(this.awareness, [id]))
      this._crossTab?.postAwareness([id])
    }
    this._onDocDestroy = () => this.destroy()
    doc.on('update', this._onDocUpdate)
    doc.on('destroy', this._onDocDestroy)
    this.awareness.on('update', this._onAwarenessUpdate)

    const name = `relay-client:${this.serverUrl}/${encodeURIComponent(room)}`
    /** the name of the IndexedDB database and of the BroadcastChannel */
    this._localName = name
    /** @type {OfflineStore | null} */
    this._store = (opts.offline ?? true) && env.indexedDB !== null
      ? new OfflineStore(name, doc, { indexedDB: env.indexedDB, compactAfter: opts.compactAfter })
      : null
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
      this._listen('online', () => this._online())
      this._listen('offline', () => this._offline())
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
    this._shouldConnect = true
    if (this._reconnectTimer !== null) {
      this._env.timers.clearTimeout(this._reconnectTimer)
      this._reconnectTimer = null
    }
    if (this._transport === null) {
      // A new round: the preferred transport first.
      this._tried.clear()
      this._nextKind = null
    }
    this._open()
  }

  /** Closes the connection to the relay and stops reconnecting. Cross-tab sync goes on. */
  disconnect () {
    this._shouldConnect = false
    if (this._reconnectTimer !== null) {
      this._env.timers.clearTimeout(this._reconnectTimer)
      this._reconnectTimer = null
    }
    const transport = this._transport
    if (transport !== null) {
      transport.close(1000, 'client disconnected')
      this._closed({ code: 1000, reason: 'client disconnected', wasClean: true })
    } else {
      this._setStatus('disconnected')
    }
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
    if (this._transport !== null) this.disconnect()
    this._shouldConnect = false
    if (this._reconnectTimer !== null) {
      this._env.timers.clearTimeout(this._reconnectTimer)
      this._reconnectTimer = null
    }
    this._cancelProbe()
    this._setStatus('disconnected')
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

  _open () {
    if (this.destroyed || !this._shouldConnect || this._transport !== null) return
    if (!this.loaded) {
      // Open once the stored content is in the document, so that sync step 2 carries it.
      this._setStatus('connecting')
      if (!this._openAfterLoad) {
        this._openAfterLoad = true
        this.whenLoaded.then(() => {
          this._openAfterLoad = false
          this._open()
        })
      }
      return
    }
    const kind = this._nextKind ?? this._preferred
    this._nextKind = null
    this._tried.add(kind)
    this._attemptKind = kind
    this._setStatus('connecting')
    this._sentStep2 = false
    this._transportOpened = false
    /** @type {Transport | null} */
    let t = null
    try {
      t = this._createTransport(kind, {
        onOpen: () => { if (t === this._transport) this._opened() },
        onMessage: data => { if (t === this._transport) this._received(data) },
        onClose: event => { if (t === this._transport) this._closed(event) },
        onError: event => { if (t === this._transport) this.emit('connection-error', [event, this]) }
      })
      this._transport = t
    } catch (err) {
      this.emit('connection-error', [err, this])
      this._closed({ code: 1006, reason: `could not open a ${kind === 'websocket' ? 'WebSocket' : 'polling session'}: ${err}`, wasClean: false })
      return
    }
    if (kind === 'websocket' && this._auto) {
      // A WebSocket that neither opens nor fails (a proxy holding the upgrade): long-polling next.
      const ws = t
      this._openTimer = this._env.timers.setTimeout(() => {
        this._openTimer = null
        ws.drop(`the WebSocket did not open within ${this._websocketOpenTimeoutMs} ms`)
      }, this._websocketOpenTimeoutMs)
    }
  }

  /**
   * @param {TransportKind} kind
   * @param {import('./transport.js').TransportHandlers} handlers
   * @returns {Transport}
   */
  _createTransport (kind, handlers) {
    if (kind === 'websocket') {
      return new SocketTransport({
        url: this.url,
        WebSocket: /** @type {WebSocketConstructor} */ (this._WebSocket),
        livenessTimeoutMs: this.livenessTimeoutMs,
        timers: this._env.timers
      }, handlers)
    }
    return new PollingTransport({
      baseUrl: httpUrlOf(this.serverUrl),
      room: this.room,
      params: this.params,
      fetch: /** @type {FetchLike} */ (this._fetch),
      livenessTimeoutMs: this.livenessTimeoutMs,
      timers: this._env.timers
    }, handlers)
  }

  _opened () {
    const transport = this._transport
    if (transport === null) return
    this._clearOpenTimer()
    this._transportOpened = true
    this._tried.clear()
    if (this._auto) this._preferred = transport.kind
    this._backoff.reset()
    this._tracker.connected()
    this._setTransport(transport.kind)
    this._setStatus('connected')
    transport.send(encodeSyncStep1(this.doc))
    this._announceAwareness()
    this._updateSaveStatus()
    if (transport.kind === 'polling' && this._auto) this._scheduleProbe()
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

  /** @param {CloseInfo} event */
  _closed (event) {
    const kind = this._attemptKind
    const opened = this._transportOpened
    this._transport = null
    this._transportOpened = false
    this._clearOpenTimer()
    this._cancelProbe()
    this._closeRetiring()
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
    const deleted = event.code === CLOSE_DOCUMENT_DELETED
    if (event.code === CLOSE_UNAUTHORIZED || event.code === CLOSE_FORBIDDEN || deleted) this._shouldConnect = false
    // With 'auto', an attempt that failed before opening is followed at once by one with the other
    // transport, still 'connecting' (once per round: when both fail, the backoff applies).
    const other = kind === 'websocket' ? 'polling' : 'websocket'
    const fallback = this._shouldConnect && !this.destroyed && this._auto && !opened && !this._tried.has(other)
    this.emit('connection-close', [event, this])
    this._setTransport(null)
    if (!fallback) this._setStatus('disconnected')
    // Before the save status: with unsaved edits it would say 'offline-unsaved' for a moment.
    if (deleted) this._documentDeleted('the relay')
    this._updateSaveStatus()
    if (!this._shouldConnect || this.destroyed) return
    if (fallback) {
      this._nextKind = other
      this._open()
      return
    }
    this._tried.clear()
    this._scheduleReconnect()
  }

  _clearOpenTimer () {
    if (this._openTimer !== null) {
      this._env.timers.clearTimeout(this._openTimer)
      this._openTimer = null
    }
  }

  /** @param {TransportKind | null} kind */
  _setTransport (kind) {
    if (this.transport === kind) return
    this.transport = kind
    this.emit('transport', [{ transport: kind }])
  }

  _scheduleReconnect () {
    if (this._reconnectTimer !== null) return
    const delay = this._backoff.next()
    this._reconnectTimer = this._env.timers.setTimeout(() => {
      this._reconnectTimer = null
      this._open()
    }, delay)
  }

  // --- moving from long-polling to a WebSocket ------------------------------------------------

  /** While connected over long-polling (with 'auto'), tries a WebSocket after the next delay. */
  _scheduleProbe () {
    if (this._probeTimer !== null || this._probe !== null) return
    this._probeTimer = this._env.timers.setTimeout(() => {
      this._probeTimer = null
      this._startProbe()
    }, this._probeBackoff.next())
  }

  _startProbe () {
    const current = this._transport
    if (this.destroyed || current === null || current.kind !== 'polling' || !this._transportOpened) return
    /** @type {SocketTransport | null} */
    let probe = null
    /** @type {any} */
    let timer = null
    const failed = () => {
      if (probe === null || probe !== this._probe) return
      this._env.timers.clearTimeout(timer)
      this._probe = null
      this._probeTimer = null
      this._scheduleProbe()
    }
    try {
      probe = new SocketTransport({
        url: this.url,
        WebSocket: /** @type {WebSocketConstructor} */ (this._WebSocket),
        livenessTimeoutMs: this.livenessTimeoutMs,
        timers: this._env.timers
      }, {
        onOpen: () => {
          if (probe === null || probe !== this._probe) return
          this._env.timers.clearTimeout(timer)
          this._switchTo(probe)
        },
        onMessage: data => { if (probe === this._transport) this._received(data) },
        onClose: event => {
          if (probe === this._transport) this._closed(event)
          else failed()
        },
        onError: event => { if (probe === this._transport) this.emit('connection-error', [event, this]) }
      })
    } catch {
      this._scheduleProbe()
      return
    }
    this._probe = probe
    const p = probe
    timer = this._env.timers.setTimeout(() => p.drop('the WebSocket did not open in time'), this._websocketOpenTimeoutMs)
    this._probeCancel = () => {
      this._env.timers.clearTimeout(timer)
      p.close(1000, 'not needed')
    }
  }

  _cancelProbe () {
    if (this._probeTimer !== null) {
      this._env.timers.clearTimeout(this._probeTimer)
      this._probeTimer = null
    }
    if (this._probe !== null) {
      this._probe = null
      this._probeCancel?.()
    }
    this._probeCancel = null
  }

  /**
   * A WebSocket opened while on long-polling: it becomes the connection, like a reconnect (sync
   * step 1/2, awareness, then a save request) but without a 'disconnected' in between. Remote
   * awareness states are kept (the relay still has them, with the same clocks). The polling
   * session is ended once the WebSocket synced, so that the relay has our awareness state from
   * the WebSocket first and the others see no removal.
   * @param {SocketTransport} socket
   */
  _switchTo (socket) {
    const old = this._transport
    this._probe = null
    this._probeCancel = null
    this._probeBackoff.reset()
    this._retiring = old
    this._transport = socket
    this._attemptKind = 'websocket'
    this._transportOpened = false
    this._sentStep2 = false
    // Save requests sent over the session will not be answered on the socket.
    this._tracker.disconnected()
    if (this.synced) {
      this.synced = false
      this.emit('sync', [false])
    }
    this._opened()
  }

  _closeRetiring () {
    const old = this._retiring
    this._retiring = null
    old?.close(1000, 'moved to a WebSocket')
  }

  _online () {
    // The network is back: try now rather than when the backoff says.
    if (!this._shouldConnect || this._transport !== null) return
    this._backoff.reset()
    this.connect()
  }

  _offline () {
    this._transport?.drop('the browser went offline')
  }

  // --- messages -----------------------------------------------------------------------------

  /** @param {Uint8Array} frame */
  _received (frame) {
    const transport = this._transport
    if (transport === null) return
    try {
      readMessages(frame, this.doc, this, msg => {
        switch (msg.type) {
          case 'sync-step-1':
            // Our step 2 carries everything the relay lacks, edits made offline included; the save
            // request after it covers them.
            transport.send(msg.reply)
            this._sentStep2 = true
            this._sendSaveRequest()
            break
          case 'sync-step-2':
            this._closeRetiring()
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
              transport.send(encodeAwareness(this.awareness, [this.doc.clientID]))
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
    if (this._transport?.isOpen) {
      this._transport.send(encodeUpdate(update))
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
    if (this.destroyed || !this._sentStep2 || !this._transport?.isOpen) return
    const id = this._tracker.request()
    this._transport.send(encodeSaveRequest(id))
  }

  // --- state --------------------------------------------------------------------------------

  /** @param {ConnectionStatus} status */
  _setStatus (status) {
    if (this.status === status) return
    this.status = status
    this.emit('status', [{ status }])
  }

  _updateSaveStatus () {
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
