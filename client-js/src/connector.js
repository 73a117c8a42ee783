/**
 * The connector: keeps one connection to the relay, over whichever transport gets through, and
 * knows nothing of Yjs. It owns
 * - the choice of transport: with both allowed ('auto'), a WebSocket first, and long-polling at once
 *   when the WebSocket cannot be made, fails before it opens, or does not open within
 *   `websocketOpenTimeoutMs` (once per round: when both fail, the backoff applies). The transport
 *   that opened is tried first the next time;
 * - the probe: while on long-polling, a WebSocket is tried now and then (`websocketRetry` delays);
 * - the switch: a probe that opens becomes the connection at once, and the long-polling session it
 *   replaces stays until the caller says the new connection has synced (`synced()`), so that the
 *   relay never sees this client gone in between;
 * - reconnecting with backoff (reset by an open), and the close codes after which it waits for
 *   `connect()` (see `closeAction` in wire.js).
 *
 * It tells its owner (the provider) through handlers, synchronously, like a transport does.
 * Transports come from a factory, so that tests can drive the connector with fakes.
 *
 * @module connector
 */

import { Backoff } from './backoff.js'
import { CLOSE_ABNORMAL, CLOSE_NORMAL, closeAction } from './wire.js'

/** @typedef {'websocket' | 'polling'} TransportKind */
/** @typedef {import('./transport.js').CloseInfo} CloseInfo */
/** @typedef {import('./transport.js').TransportHandlers} TransportHandlers */
/** @typedef {import('./backoff.js').BackoffOptions} BackoffOptions */

/**
 * What the connector needs of a transport; `SocketTransport` and `PollingTransport` fit. A
 * transport is used once: the connector makes a new one for every attempt.
 * @typedef {object} Transport
 * @property {TransportKind} kind
 * @property {boolean} isOpen
 * @property {(message: Uint8Array) => void} send dropped unless open
 * @property {(code?: number, reason?: string) => void} close ends it; no `onClose` follows
 * @property {(reason: string) => void} drop gives up on it; `onClose` with 1006 follows
 */

/**
 * @typedef {object} ConnectorHandlers
 * @property {() => void} onConnecting an attempt starts (also the one with the other transport
 *   right after a failed one)
 * @property {(kind: TransportKind, switched: boolean) => void} onOpen a connection opened.
 *   `switched`: a WebSocket took over from the open long-polling session, without a close in
 *   between; what was sent on the session and not answered will not be answered on the socket
 * @property {(data: Uint8Array) => void} onMessage a message from the connection
 * @property {(event: CloseInfo, next: {fallback: boolean}) => void} onClose the connection, or an
 *   attempt, closed. `fallback`: an attempt with the other transport follows at once (the owner
 *   stays 'connecting'); otherwise a reconnect is scheduled, unless the close code or
 *   `disconnect()` says not to
 * @property {(event: any) => void} onError a transport reported an error (a close follows)
 */

/**
 * @typedef {object} ConnectorOptions
 * @property {TransportKind[]} kinds the transports it may use, the preferred first; both is 'auto'
 * @property {(kind: TransportKind, handlers: TransportHandlers) => Transport} createTransport
 *   starts an attempt; may throw (then the attempt failed)
 * @property {import('./environment.js').Timers} timers
 * @property {() => number} [random] for the backoffs' jitter
 * @property {BackoffOptions} [backoff] reconnect delays (default 500 ms doubling up to 30 s)
 * @property {BackoffOptions} [websocketRetry] with 'auto', while on long-polling: delays between
 *   WebSocket attempts (default 60 s doubling up to 10 min)
 * @property {number} [websocketOpenTimeoutMs] with 'auto', how long a WebSocket may take to open
 *   (default 5000)
 */

/** The values of the provider's `transport` option. */
export const TRANSPORT_OPTIONS = Object.freeze(['auto', 'websocket', 'polling'])

/**
 * The transports that the provider's `transport` option allows where the platform has them.
 * @param {string} option 'auto', 'websocket' or 'polling'
 * @param {{webSocket: boolean, fetch: boolean}} available whether there is a WebSocket and a fetch
 * @returns {TransportKind[]} the preferred first
 * @throws {TypeError} for another option, or when what it asks for is not there
 */
export function transportKinds (option, available) {
  if (!TRANSPORT_OPTIONS.includes(option)) throw new TypeError(`transport must be one of ${TRANSPORT_OPTIONS.join(', ')} (got ${option})`)
  const webSocket = option !== 'polling' && available.webSocket
  const fetch = option !== 'websocket' && available.fetch
  if (option === 'websocket' && !webSocket) {
    throw new TypeError('no WebSocket implementation: pass WebSocketPolyfill (in Node: the ws package)')
  }
  if (option === 'polling' && !fetch) throw new TypeError('no fetch implementation: pass fetch')
  if (!webSocket && !fetch) {
    throw new TypeError('neither a WebSocket nor fetch: pass WebSocketPolyfill (in Node: the ws package) or fetch')
  }
  /** @type {TransportKind[]} */
  const kinds = []
  if (webSocket) kinds.push('websocket')
  if (fetch) kinds.push('polling')
  return kinds
}

export const DEFAULT_WEBSOCKET_OPEN_TIMEOUT_MS = 5000
export const DEFAULT_WEBSOCKET_RETRY = Object.freeze({ initialMs: 60000, maxMs: 600000 })

export class Connector {
  /**
   * @param {ConnectorOptions} opts
   * @param {ConnectorHandlers} handlers
   */
  constructor (opts, handlers) {
    if (opts.kinds.length === 0) throw new TypeError('the connector needs at least one transport')
    this.handlers = handlers
    this.timers = opts.timers
    this.createTransport = opts.createTransport
    /** @type {TransportKind[]} */
    this.kinds = [...opts.kinds]
    /** whether both transports may be used */
    this.auto = this.kinds.length > 1
    /** @type {TransportKind} the transport an attempt starts with: the first, then the last that opened */
    this.preferred = this.kinds[0]
    this.openTimeoutMs = opts.websocketOpenTimeoutMs ?? DEFAULT_WEBSOCKET_OPEN_TIMEOUT_MS
    const random = opts.random ?? Math.random
    this.backoff = new Backoff({ ...opts.backoff, random })
    this.probeBackoff = new Backoff({ ...DEFAULT_WEBSOCKET_RETRY, ...opts.websocketRetry, random })
    /** whether to keep a connection: from `connect()` until `disconnect()` or a close code that says stop */
    this.shouldConnect = false
    /** @type {Transport | null} the connection, or the attempt at one */
    this.transport = null
    /** whether `transport` has opened */
    this.opened = false
    /** @type {TransportKind} the transport of the current (or last) attempt */
    this.attemptKind = this.preferred
    /** @type {Set<TransportKind>} transports tried since the last open or scheduled reconnect */
    this.tried = new Set()
    /** @type {TransportKind | null} the transport of the next attempt, when not the preferred one */
    this.nextKind = null
    /** @type {any} the WebSocket attempt's open timeout */
    this.openTimer = null
    /** @type {any} */
    this.reconnectTimer = null
    /** @type {any} the delay before the next probe */
    this.probeTimer = null
    /** @type {{transport: Transport, timer: any} | null} a WebSocket being tried while on long-polling */
    this.probe = null
    /** @type {Transport | null} the long-polling session a WebSocket took over from, until `synced()` */
    this.retiring = null
  }

  /** Whether a connection is open (messages sent now go out). */
  get isOpen () {
    return this.transport?.isOpen ?? false
  }

  /** Whether a connection is open or being attempted. */
  get active () {
    return this.transport !== null
  }

  /**
   * Keeps a connection from now on: opens one now unless one is open or being opened. Also the
   * way to go on after a close code that waits for `connect()`; starts again with the preferred
   * transport, without waiting for a scheduled reconnect.
   */
  connect () {
    this.shouldConnect = true
    this._clearReconnectTimer()
    if (this.transport === null) {
      // A new round: the preferred transport first.
      this.tried.clear()
      this.nextKind = null
    }
    this._open()
  }

  /**
   * Closes the connection (reported through `onClose` with 1000) and stops reconnecting.
   * @returns {boolean} whether there was a connection or an attempt to close
   */
  disconnect () {
    this.shouldConnect = false
    this._clearReconnectTimer()
    const transport = this.transport
    if (transport === null) return false
    transport.close(CLOSE_NORMAL, 'client disconnected')
    this._closed({ code: CLOSE_NORMAL, reason: 'client disconnected', wasClean: true })
    return true
  }

  /**
   * Sends one message on the open connection; dropped when none is open (the sync steps of the
   * next connection carry what was missed).
   * @param {Uint8Array} message
   */
  send (message) {
    if (this.transport?.isOpen) this.transport.send(message)
  }

  /**
   * The open connection synced: the long-polling session it took over from is not needed any more.
   * Ending it only now keeps the relay from announcing this client's awareness as gone.
   */
  synced () {
    this._closeRetiring()
  }

  /** The network is back (the browser's `online`): try now rather than when the backoff says. */
  wake () {
    if (!this.shouldConnect || this.transport !== null) return
    this.backoff.reset()
    this.connect()
  }

  /**
   * Gives up on the connection at once (the browser's `offline`): closed with 1006, then the
   * usual reconnect.
   * @param {string} reason
   */
  drop (reason) {
    this.transport?.drop(reason)
  }

  // --- attempts -----------------------------------------------------------------------------

  _open () {
    if (!this.shouldConnect || this.transport !== null) return
    const kind = this.nextKind ?? this.preferred
    this.nextKind = null
    this.tried.add(kind)
    this.attemptKind = kind
    this.opened = false
    this.handlers.onConnecting()
    /** @type {Transport | null} */
    let t = null
    try {
      t = this.createTransport(kind, {
        onOpen: () => { if (t !== null && t === this.transport) this._opened(t, false) },
        onMessage: data => { if (t === this.transport) this.handlers.onMessage(data) },
        onClose: event => { if (t === this.transport) this._closed(event) },
        onError: event => { if (t === this.transport) this.handlers.onError(event) }
      })
      this.transport = t
    } catch (err) {
      this.handlers.onError(err)
      this._closed({ code: CLOSE_ABNORMAL, reason: `could not open a ${kind === 'websocket' ? 'WebSocket' : 'polling session'}: ${err}`, wasClean: false })
      return
    }
    if (kind === 'websocket' && this.auto) {
      // A WebSocket that neither opens nor fails (a proxy holding the upgrade): long-polling next.
      const ws = t
      this.openTimer = this.timers.setTimeout(() => {
        this.openTimer = null
        ws.drop(`the WebSocket did not open within ${this.openTimeoutMs} ms`)
      }, this.openTimeoutMs)
    }
  }

  /**
   * @param {Transport} transport
   * @param {boolean} switched
   */
  _opened (transport, switched) {
    this._clearOpenTimer()
    this.opened = true
    this.tried.clear()
    if (this.auto) this.preferred = transport.kind
    this.backoff.reset()
    this.handlers.onOpen(transport.kind, switched)
    // The handler sends; a send that failed may have closed the connection already.
    if (transport === this.transport && transport.kind !== 'websocket' && this.auto) this._scheduleProbe()
  }

  /** @param {CloseInfo} event */
  _closed (event) {
    const kind = this.attemptKind
    const opened = this.opened
    this.transport = null
    this.opened = false
    this._clearOpenTimer()
    this._cancelProbe()
    this._closeRetiring()
    if (closeAction(event.code) !== 'reconnect') this.shouldConnect = false
    // With 'auto', an attempt that failed before opening is followed at once by one with the other
    // transport (once per round).
    const other = this.kinds.find(k => k !== kind)
    const fallback = other !== undefined && this.shouldConnect && !opened && !this.tried.has(other)
    this.handlers.onClose(event, { fallback })
    // The handler may have called disconnect(), or connect() (which opened or scheduled already).
    if (!this.shouldConnect || this.transport !== null || this.reconnectTimer !== null) return
    if (fallback) {
      this.nextKind = /** @type {TransportKind} */ (other)
      this._open()
      return
    }
    this.tried.clear()
    this._scheduleReconnect()
  }

  _scheduleReconnect () {
    const delay = this.backoff.next()
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = null
      this._open()
    }, delay)
  }

  _clearReconnectTimer () {
    if (this.reconnectTimer !== null) {
      this.timers.clearTimeout(this.reconnectTimer)
      this.reconnectTimer = null
    }
  }

  _clearOpenTimer () {
    if (this.openTimer !== null) {
      this.timers.clearTimeout(this.openTimer)
      this.openTimer = null
    }
  }

  // --- moving from long-polling to a WebSocket ----------------------------------------------

  /** While connected over long-polling (with 'auto'), tries a WebSocket after the next delay. */
  _scheduleProbe () {
    if (this.probeTimer !== null || this.probe !== null) return
    this.probeTimer = this.timers.setTimeout(() => {
      this.probeTimer = null
      this._startProbe()
    }, this.probeBackoff.next())
  }

  _startProbe () {
    const current = this.transport
    if (current === null || current.kind === 'websocket' || !this.opened) return
    /** @type {Transport | null} */
    let t = null
    const isProbe = () => t !== null && this.probe?.transport === t
    try {
      t = this.createTransport('websocket', {
        onOpen: () => { if (isProbe()) this._switchTo(/** @type {Transport} */ (t)) },
        onMessage: data => { if (t === this.transport) this.handlers.onMessage(data) },
        onClose: event => {
          if (t === this.transport) this._closed(event)
          else if (isProbe()) this._probeFailed()
        },
        onError: event => { if (t === this.transport) this.handlers.onError(event) }
      })
    } catch {
      this._scheduleProbe()
      return
    }
    const probe = t
    const timer = this.timers.setTimeout(() => probe.drop('the WebSocket did not open in time'), this.openTimeoutMs)
    this.probe = { transport: probe, timer }
  }

  _probeFailed () {
    const probe = this.probe
    if (probe === null) return
    this.timers.clearTimeout(probe.timer)
    this.probe = null
    this._scheduleProbe()
  }

  _cancelProbe () {
    if (this.probeTimer !== null) {
      this.timers.clearTimeout(this.probeTimer)
      this.probeTimer = null
    }
    const probe = this.probe
    if (probe !== null) {
      this.probe = null
      this.timers.clearTimeout(probe.timer)
      probe.transport.close(CLOSE_NORMAL, 'not needed')
    }
  }

  /**
   * A WebSocket opened while on long-polling: it becomes the connection, like a reconnect but
   * without a close in between. The session stays open until `synced()`.
   * @param {Transport} socket
   */
  _switchTo (socket) {
    const probe = /** @type {{transport: Transport, timer: any}} */ (this.probe)
    this.timers.clearTimeout(probe.timer)
    this.probe = null
    this.probeBackoff.reset()
    this.retiring = this.transport
    this.transport = socket
    this.attemptKind = socket.kind
    this._opened(socket, true)
  }

  _closeRetiring () {
    const old = this.retiring
    this.retiring = null
    old?.close(CLOSE_NORMAL, 'moved to a WebSocket')
  }
}
