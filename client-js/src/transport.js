/**
 * The socket to the relay: one WebSocket, binary frames, and a liveness check that gives up on a
 * connection over which nothing has arrived for `livenessTimeoutMs` (the relay sends something at
 * least every 10 s: a keep-alive awareness message when nothing else is going on).
 *
 * A transport is used once: after it closed, the connector makes a new one.
 *
 * @module transport
 */

import { CLOSE_ABNORMAL, CLOSE_NORMAL } from './wire.js'

/**
 * The part of the WebSocket API the transport uses; browsers' WebSocket and the `ws` package fit.
 * @typedef {object} WebSocketLike
 * @property {number} readyState
 * @property {string} binaryType
 * @property {((event: any) => void) | null} onopen
 * @property {((event: any) => void) | null} onmessage
 * @property {((event: any) => void) | null} onclose
 * @property {((event: any) => void) | null} onerror
 * @property {(data: Uint8Array) => void} send
 * @property {(code?: number, reason?: string) => void} close
 * @property {() => void} [terminate] `ws` only: drop the connection without a closing handshake
 */

/** @typedef {new (url: string) => WebSocketLike} WebSocketConstructor */

/**
 * What the provider hands to `connection-close` (a CloseEvent, or this when the client itself gave
 * up on the connection).
 * @typedef {{ code: number, reason: string, wasClean: boolean }} CloseInfo
 */

/**
 * @typedef {object} TransportHandlers
 * @property {() => void} onOpen
 * @property {(data: Uint8Array) => void} onMessage
 * @property {(event: CloseInfo) => void} onClose called once, unless `close()` was called first
 * @property {(event: any) => void} onError
 */

const OPEN = 1

export class SocketTransport {
  /**
   * @param {object} opts
   * @param {string} opts.url
   * @param {WebSocketConstructor} opts.WebSocket
   * @param {number} opts.livenessTimeoutMs
   * @param {import('./environment.js').Timers} opts.timers
   * @param {TransportHandlers} handlers
   */
  constructor ({ url, WebSocket, livenessTimeoutMs, timers }, handlers) {
    this.kind = /** @type {const} */ ('websocket')
    this.handlers = handlers
    this.timers = timers
    this.livenessTimeoutMs = livenessTimeoutMs
    this.closed = false
    this.lastActivity = timers.now()
    const ws = new WebSocket(url)
    this.ws = ws
    ws.binaryType = 'arraybuffer'
    ws.onopen = () => {
      this.lastActivity = this.timers.now()
      this.handlers.onOpen()
    }
    ws.onmessage = event => {
      this.lastActivity = this.timers.now()
      const data = event.data
      if (data instanceof ArrayBuffer) this.handlers.onMessage(new Uint8Array(data))
      else if (data instanceof Uint8Array) this.handlers.onMessage(data)
      // text frames are not part of the protocol
    }
    ws.onclose = event => this._finish({ code: event.code, reason: event.reason, wasClean: event.wasClean })
    ws.onerror = event => { if (!this.closed) this.handlers.onError(event) }
    // Checked at a tenth of the timeout, as y-websocket does: a dead connection is noticed between
    // 1 and 1.1 timeouts after the last message.
    const period = Math.max(5, Math.min(livenessTimeoutMs / 10, 3000))
    this.livenessTimer = timers.setInterval(() => {
      if (this.timers.now() - this.lastActivity > this.livenessTimeoutMs) {
        this.drop(`nothing received for ${this.livenessTimeoutMs} ms`)
      }
    }, period)
  }

  get isOpen () {
    return !this.closed && this.ws.readyState === OPEN
  }

  /**
   * Sends one message in one binary frame; dropped when the socket is not open (the sync steps on
   * the next connection carry what was missed).
   * @param {Uint8Array} message
   */
  send (message) {
    if (!this.isOpen) return
    try {
      this.ws.send(message)
    } catch (err) {
      this.drop(`send failed: ${err}`)
    }
  }

  /**
   * Closes the connection with a closing handshake; no `onClose` follows.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close (code = CLOSE_NORMAL, reason = '') {
    if (this.closed) return
    this._detach()
    try {
      this.ws.close(code, reason)
    } catch {
      this._terminate()
    }
  }

  /**
   * Gives up on the connection at once (no closing handshake to wait for) and reports it closed
   * with code 1006 (`CLOSE_ABNORMAL`).
   * @param {string} reason
   */
  drop (reason) {
    if (this.closed) return
    this._detach()
    this._terminate()
    this.handlers.onClose({ code: CLOSE_ABNORMAL, reason, wasClean: false })
  }

  _terminate () {
    try {
      if (typeof this.ws.terminate === 'function') this.ws.terminate()
      else this.ws.close()
    } catch {}
  }

  /** @param {CloseInfo} event */
  _finish (event) {
    if (this.closed) return
    this._detach()
    this.handlers.onClose(event)
  }

  _detach () {
    this.closed = true
    this.timers.clearInterval(this.livenessTimer)
    const noop = () => {}
    // Keep a no-op error handler: `ws` throws an error that has no listener.
    this.ws.onopen = noop
    this.ws.onmessage = noop
    this.ws.onclose = noop
    this.ws.onerror = noop
  }
}
