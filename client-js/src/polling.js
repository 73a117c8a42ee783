/**
 * The long-polling transport: the same messages as over the WebSocket, over plain HTTP (for
 * networks that block the WebSocket upgrade). See PROTOCOL.md, "Long-polling".
 *
 * - open: `POST /poll?room=NAME&PARAMS` answers `{session, hold_ms}`;
 * - receive: `GET /poll/ID?ack=SEQ` in a loop; the relay holds it until something is queued (or
 *   `hold_ms` passed) and answers every message after `SEQ`, each as `varUint length` + bytes,
 *   with the sequence number of the last one in `x-relay-last-seq`. The next `GET` acknowledges
 *   it. A response lost on the way (a network error, a body cut off) is asked for again with the
 *   same `ack`: the relay sends the same messages again, so nothing is lost or seen twice;
 * - send: `POST /poll/ID`, strictly one at a time and in order; what is queued meanwhile goes
 *   out together in the next body (the relay reads a body like a WebSocket frame holding several
 *   messages);
 * - end: `DELETE /poll/ID` on `close()` and when the client gives up on the session.
 *
 * The relay's answers map to the WebSocket's closes: 410 `{code, reason}` is a close with that
 * code (reported once the `GET` reaches it, so messages queued before the end still arrive); 404
 * (the relay forgot the session, e.g. after a restart) is 1006; 413 is 1009; an open refused with
 * 401/403 is 4401/4403 (the token, or the origin: a WebSocket could only tell 1006). Network
 * errors and other statuses are retried a few times with the same `ack` or the same body, then
 * the transport gives up (1006).
 *
 * Liveness: every answer of the relay counts as traffic, an empty poll answer included. Since an
 * idle poll is held for `hold_ms`, the check allows at least `hold_ms` + 5 s.
 *
 * Like the WebSocket transport, it is used once.
 *
 * @module polling
 */

import * as decoding from 'lib0/decoding'
import { CLOSE_ABNORMAL, CLOSE_FORBIDDEN, CLOSE_TOO_BIG, CLOSE_UNAUTHORIZED } from './wire.js'

/** The response header with the sequence number of the last message in the body. */
export const LAST_SEQ_HEADER = 'x-relay-last-seq'
/** Most bytes of queued messages put into one POST body (a larger single message goes alone). */
const MAX_BATCH_BYTES = 1 << 20
/** Waits before retrying after the 1st, 2nd, 3rd failure in a row; the next failure gives up. */
const RETRY_DELAYS_MS = [0, 250, 1000]
/** Beyond the relay's hold time, how long a poll may take before the connection counts as dead. */
const HOLD_MARGIN_MS = 5000

/** @typedef {import('./transport.js').TransportHandlers} TransportHandlers */
/** @typedef {import('./transport.js').CloseInfo} CloseInfo */

/**
 * The part of `fetch` the transport uses (browsers' and Node's fit).
 * @typedef {(url: string, init: {method: string, body?: Uint8Array, signal?: AbortSignal, cache?: string, keepalive?: boolean}) => Promise<Response>} FetchLike
 */

/** Thrown inside the transport when it was closed while a request was in flight. */
class Closed extends Error {}

/**
 * Splits a poll response body into its messages (`varUint length` + bytes, repeated).
 * @param {Uint8Array} body
 * @returns {Uint8Array[]}
 */
export function splitMessages (body) {
  const decoder = decoding.createDecoder(body)
  const messages = []
  while (decoding.hasContent(decoder)) {
    const length = decoding.readVarUint(decoder)
    if (length > body.length - decoder.pos) throw new Error('truncated poll response')
    messages.push(decoding.readUint8Array(decoder, length))
  }
  return messages
}

/**
 * @param {Uint8Array[]} parts
 * @returns {Uint8Array}
 */
function concat (parts) {
  if (parts.length === 1) return parts[0]
  let size = 0
  for (const p of parts) size += p.length
  const out = new Uint8Array(size)
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

/**
 * @param {{status: number, body: Uint8Array}} res
 * @returns {any} the JSON body, or null
 */
function json (res) {
  try {
    return JSON.parse(new TextDecoder().decode(res.body))
  } catch {
    return null
  }
}

export class PollingTransport {
  /**
   * @param {object} opts
   * @param {string} opts.baseUrl `http(s)://host:port` of the relay
   * @param {string} opts.room
   * @param {Record<string, string>} opts.params query parameters of the open request (e.g. the token)
   * @param {FetchLike} opts.fetch
   * @param {number} opts.livenessTimeoutMs
   * @param {import('./environment.js').Timers} opts.timers
   * @param {TransportHandlers} handlers
   */
  constructor ({ baseUrl, room, params, fetch, livenessTimeoutMs, timers }, handlers) {
    this.kind = /** @type {const} */ ('polling')
    this.handlers = handlers
    this.timers = timers
    this.fetch = fetch
    this.baseUrl = baseUrl
    this.openUrl = `${baseUrl}/poll?${new URLSearchParams({ ...params, room })}`
    this.livenessTimeoutMs = livenessTimeoutMs
    this.closed = false
    this.opened = false
    /** @type {string | null} */
    this.sessionUrl = null
    this.holdMs = 0
    /** the sequence number of the last message received */
    this.ack = 0
    /** the number of the last body sent (`?n=`), the same on a retry */
    this.bodies = 0
    /** @type {Uint8Array[]} messages waiting to be sent */
    this.queue = []
    this.sending = false
    /** set after a POST was answered 410: the GET reports the end, nothing more is sent */
    this.sendEnded = false
    /** @type {any} */
    /** A flush is queued as a microtask. */
    this.flushQueued = false
    /** @type {Set<AbortController>} */
    this.inFlight = new Set()
    /** @type {Set<() => void>} cancels the retry waits */
    this.waits = new Set()
    this.lastActivity = timers.now()
    const period = Math.max(5, Math.min(livenessTimeoutMs / 10, 3000))
    this.livenessTimer = timers.setInterval(() => {
      if (this.timers.now() - this.lastActivity > this.livenessLimitMs) {
        this.drop(`nothing received for ${this.livenessLimitMs} ms`)
      }
    }, period)
    // Asynchronous like a WebSocket: no handler runs inside the constructor.
    Promise.resolve().then(() => this._open())
  }

  /** How long nothing may arrive: the liveness timeout, but at least a poll's hold time and 5 s. */
  get livenessLimitMs () {
    return this.holdMs > 0 ? Math.max(this.livenessTimeoutMs, this.holdMs + HOLD_MARGIN_MS) : this.livenessTimeoutMs
  }

  get isOpen () {
    return !this.closed && this.opened
  }

  /**
   * Queues one message; it goes out with whatever else is queued in the next POST. Dropped when
   * the session is not open (the sync steps on the next connection carry what was missed).
   * @param {Uint8Array} message
   */
  send (message) {
    if (!this.isOpen || this.sendEnded) return
    this.queue.push(message)
    // Wait for the end of this tick (a microtask, not a timer: a zero timeout is at least a
    // millisecond, on every edit), so that what the same tick queues (an update and its save
    // request) shares a body. `_flush` does nothing once the session is closed.
    if (!this.sending && !this.flushQueued) {
      this.flushQueued = true
      queueMicrotask(() => {
        this.flushQueued = false
        this._flush()
      })
    }
  }

  /**
   * Ends the session (`DELETE`); no `onClose` follows.
   * @param {number} [_code]
   * @param {string} [_reason]
   */
  close (_code, _reason) {
    if (this.closed) return
    this._shutdown(true)
  }

  /**
   * Gives up on the session at once and reports it closed with code 1006.
   * @param {string} reason
   */
  drop (reason) {
    this._fail({ code: CLOSE_ABNORMAL, reason, wasClean: false }, true)
  }

  // --- internals -----------------------------------------------------------------------------

  /**
   * @param {CloseInfo} event
   * @param {boolean} endSession whether to tell the relay (the session may still be alive)
   */
  _fail (event, endSession) {
    if (this.closed) return
    this._shutdown(endSession)
    this.handlers.onClose(event)
  }

  /** @param {boolean} endSession */
  _shutdown (endSession) {
    this.closed = true
    this.timers.clearInterval(this.livenessTimer)
    for (const cancel of [...this.waits]) cancel()
    for (const controller of [...this.inFlight]) controller.abort()
    this.queue = []
    if (endSession && this.sessionUrl !== null) {
      // Fire and forget; `keepalive` lets it outlive a page being closed.
      this.fetch(this.sessionUrl, { method: 'DELETE', keepalive: true }).then(res => res.arrayBuffer()).catch(() => {})
    }
  }

  /**
   * One request; the body is read in full (a response cut off is a failed request).
   * @param {string} url
   * @param {{method: string, body?: Uint8Array, cache?: string}} init
   * @returns {Promise<{status: number, headers: Headers, body: Uint8Array}>}
   */
  async _request (url, init) {
    if (this.closed) throw new Closed()
    const controller = new AbortController()
    this.inFlight.add(controller)
    try {
      const res = await this.fetch(url, { ...init, signal: controller.signal })
      const body = new Uint8Array(await res.arrayBuffer())
      if (this.closed) throw new Closed()
      // Any answer of the relay is a sign of life.
      this.lastActivity = this.timers.now()
      return { status: res.status, headers: res.headers, body }
    } catch (err) {
      if (this.closed) throw new Closed()
      throw err
    } finally {
      this.inFlight.delete(controller)
    }
  }

  /**
   * Waits before retry number `failures`.
   * @param {number} failures failures in a row so far
   * @returns {Promise<boolean>} false when it is time to give up (or the transport closed)
   */
  async _retry (failures) {
    if (this.closed || failures > RETRY_DELAYS_MS.length) return false
    const ms = RETRY_DELAYS_MS[failures - 1]
    await new Promise(resolve => {
      const finish = () => {
        this.waits.delete(finish)
        this.timers.clearTimeout(timer)
        resolve(undefined)
      }
      const timer = this.timers.setTimeout(finish, ms)
      this.waits.add(finish)
    })
    return !this.closed
  }

  async _open () {
    if (this.closed) return
    let res
    try {
      res = await this._request(this.openUrl, { method: 'POST', cache: 'no-store' })
    } catch (err) {
      if (err instanceof Closed) return
      this.handlers.onError(err)
      this._fail({ code: CLOSE_ABNORMAL, reason: `could not open a polling session: ${err}`, wasClean: false }, false)
      return
    }
    const body = json(res)
    if (res.status === 200 && typeof body?.session === 'string') {
      this.sessionUrl = `${this.baseUrl}/poll/${encodeURIComponent(body.session)}`
      this.holdMs = Number(body.hold_ms) > 0 ? Number(body.hold_ms) : 0
      this.opened = true
      this.handlers.onOpen()
      this._receive()
      return
    }
    const why = `HTTP ${res.status}${typeof body?.error === 'string' ? `: ${body.error}` : ''}`
    // A WebSocket can only report 1006 here; over HTTP the refusal is known.
    const code = res.status === 401 ? CLOSE_UNAUTHORIZED : res.status === 403 ? CLOSE_FORBIDDEN : CLOSE_ABNORMAL
    this._fail({ code, reason: `the relay refused the polling session (${why})`, wasClean: false }, false)
  }

  /** The receive loop: one GET after the other, each acknowledging what the previous one brought. */
  async _receive () {
    let failures = 0
    while (!this.closed) {
      const url = `${this.sessionUrl}?ack=${this.ack}`
      /** @type {{status: number, headers: Headers, body: Uint8Array}} */
      let res
      /** @type {Uint8Array[]} */
      let messages = []
      let last = this.ack
      try {
        res = await this._request(url, { method: 'GET', cache: 'no-store' })
        if (res.status === 200) {
          messages = splitMessages(res.body)
          const header = res.headers.get(LAST_SEQ_HEADER)
          last = header === null ? this.ack + messages.length : Number(header)
          if (!Number.isSafeInteger(last) || last < this.ack) throw new Error(`bad ${LAST_SEQ_HEADER}: ${header}`)
        }
      } catch (err) {
        if (err instanceof Closed) return
        // Lost on the way: ask again with the same ack, the relay sends the same messages.
        if (await this._retry(++failures)) continue
        if (!this.closed) this._fail({ code: CLOSE_ABNORMAL, reason: `polling failed: ${err}`, wasClean: false }, true)
        return
      }
      if (res.status === 200) {
        failures = 0
        this.ack = last
        for (const message of messages) {
          if (this.closed) return
          this.handlers.onMessage(message)
        }
      } else if (res.status === 410) {
        const body = json(res)
        const code = Number.isInteger(body?.code) ? body.code : CLOSE_ABNORMAL
        this._fail({ code, reason: typeof body?.reason === 'string' ? body.reason : '', wasClean: true }, false)
        return
      } else if (res.status === 404) {
        this._fail({ code: CLOSE_ABNORMAL, reason: 'the relay no longer knows the polling session', wasClean: false }, false)
        return
      } else if (!(await this._retry(++failures))) {
        // A proxy's 502/504 or the like, more than a few times in a row.
        this._fail({ code: CLOSE_ABNORMAL, reason: `polling failed: HTTP ${res.status}`, wasClean: false }, true)
        return
      }
    }
  }

  /** The send loop: one POST at a time, in order; a failed one is sent again before anything after it. */
  async _flush () {
    if (this.sending || !this.isOpen) return
    this.sending = true
    try {
      let failures = 0
      while (!this.closed && !this.sendEnded && this.queue.length > 0) {
        let size = 0
        let n = 0
        while (n < this.queue.length && (n === 0 || size + this.queue[n].length <= MAX_BATCH_BYTES)) {
          size += this.queue[n].length
          n++
        }
        const body = concat(this.queue.slice(0, n))
        // Numbered, so that the relay takes a body only once: a retry after a lost answer may
        // repeat one that arrived, and a repeated sync step 1 would bring a second sync step 2.
        const url = `${this.sessionUrl}?n=${++this.bodies}`
        for (;;) {
          let res
          try {
            res = await this._request(url, { method: 'POST', body })
          } catch (err) {
            if (err instanceof Closed) return
            // Maybe it arrived, maybe not: send it again (with the same number, so the relay
            // takes it once); losing it is not an option.
            if (await this._retry(++failures)) continue
            if (!this.closed) this._fail({ code: CLOSE_ABNORMAL, reason: `sending failed: ${err}`, wasClean: false }, true)
            return
          }
          if (res.status >= 200 && res.status < 300) {
            failures = 0
            this.queue.splice(0, n)
            break
          }
          if (res.status === 410) {
            // The relay ended the session: the GET reports why once it fetched what came before.
            this.sendEnded = true
            this.queue = []
            return
          }
          if (res.status === 404) {
            this._fail({ code: CLOSE_ABNORMAL, reason: 'the relay no longer knows the polling session', wasClean: false }, false)
            return
          }
          if (res.status === 413) {
            this._fail({ code: CLOSE_TOO_BIG, reason: 'a message is over the relay\'s size limit', wasClean: false }, true)
            return
          }
          if (!(await this._retry(++failures))) {
            if (!this.closed) this._fail({ code: CLOSE_ABNORMAL, reason: `sending failed: HTTP ${res.status}`, wasClean: false }, true)
            return
          }
        }
      }
    } finally {
      this.sending = false
    }
  }
}
