// Opens a room on the relay that served this page, with the browser client from client-js.
//
// The client keeps the document in IndexedDB (so it opens offline), syncs other tabs of this
// browser through BroadcastChannel, reconnects by itself and reports whether the relay has
// acknowledged every edit as saved (`save-status`).
//
// With the demo sign-on (auth.js) each room needs a token: the provider is created at once (the
// copy in IndexedDB loads meanwhile) and connects once a token is there. A token is renewed before
// it expires, and when the relay says it does not take it: it closes the connection with 4401
// (expired), or refuses to open one (HTTP 401/403, which the client reports as 4401/4403 from its
// long-polling attempt; a refused WebSocket shows only 1006). The new token goes into
// `provider.params` and `provider.connect()` opens with it. While the relay cannot be reached
// (offline, or the relay is down), the last token of the room is used as long as it is valid: a
// connection that fails to open says nothing about the token, and `navigator.onLine` cannot tell
// whether the relay is reachable (it reads true on a network without the relay, and in some
// browsers in a page loaded offline).
//
// A room deleted on the relay (close code 4404, the client's `deleted` event): the client stops
// for good, and the copy kept on this device is dropped, so that nothing brings the room back;
// the views say that it was deleted.

import { RelayProvider, protocol } from '@relay/client'
import { AccessRefused, demoConfig, fetchToken, isReadOnlyRoom, needsRefresh, refreshDelay, storedToken } from './auth.js'

/** ws://host or wss://host of the relay that served the page. */
export function relayUrl () {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}`
}

/** How long a closed page's provider may stay connected to get its last edits acknowledged. */
const LINGER_MS = 10000
/**
 * Close codes: those after which the client waits for `connect()`, the one after which it never
 * connects again, and the one of our own `disconnect()`.
 */
const { CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_DOCUMENT_DELETED, CLOSE_NORMAL } = protocol
/** Tokens asked for in a row without a connection opening, before giving up until `online`. */
const MAX_RENEWALS_WITHOUT_OPEN = 3
/** Retry delays for the token request when the relay cannot be reached. */
const TOKEN_RETRY_MIN_MS = 2000
const TOKEN_RETRY_MAX_MS = 60000

/**
 * @typedef {object} RoomAccess
 * @property {'read' | 'write'} access what this person may do in the room
 * @property {string | null} problem why the room cannot be opened (the relay refused a token), or null
 */

/**
 * A room opened by the app: the provider, and what the person may do in it.
 *
 * `access` is `write` everywhere without the demo sign-on; with it, the name of the room gives a
 * first answer (rooms under the read-only prefix) and each token the final one. Listeners of
 * `onAccess` hear every change.
 */
export class Room {
  /**
   * @param {string} room e.g. `docs/meeting notes` or `chat/general`
   * @param {import('yjs').Doc} doc
   * @param {{ name: string }} user whose display name goes into the demo tokens
   */
  constructor (room, doc, user) {
    this.room = room
    this.doc = doc
    this.userName = user.name
    this.demo = demoConfig().auth === 'demo'
    const stored = this.demo ? storedToken(room) : null
    /** @type {'read' | 'write'} */
    this.access = stored?.access ?? (isReadOnlyRoom(room) ? 'read' : 'write')
    /** @type {string | null} */
    this.problem = null
    /** @type {Set<(state: RoomAccess) => void>} */
    this._listeners = new Set()
    /** @type {{ unsaved: boolean } | null} the client's `deleted` event, once it came */
    this.deleted = null
    /** @type {Set<(event: { unsaved: boolean }) => void>} */
    this._deletedListeners = new Set()
    this._destroyed = false
    this._refreshTimer = null
    this._retryTimer = null
    this._retryDelay = TOKEN_RETRY_MIN_MS
    this._renewalsWithoutOpen = 0
    this._started = false
    this._renewing = false
    /** @type {string | undefined} */
    this._attemptToken = undefined

    // With the demo sign-on, connect once the listeners below are on: at once with a still-valid
    // token from earlier in this tab, otherwise after the token request.
    const ready = stored !== null && !needsRefresh(stored)
    this.provider = new RelayProvider(relayUrl(), room, doc, {
      connect: !this.demo,
      params: stored ? { token: stored.token } : {},
      offline: true,
      crossTab: true,
      // Nothing typed in a read-only document is ever sent: no reason to hold the page.
      warnBeforeUnload: this.access === 'write'
    })
    this._onDeleted = (event) => this._wasDeleted(event)
    this.provider.on('deleted', this._onDeleted)
    if (!this.demo) return

    this._onClose = (event) => this._closed(event)
    this._onStatus = ({ status }) => {
      // The token a connection attempt opens with.
      if (status === 'connecting') this._attemptToken = this.provider.params.token
      if (status !== 'connected') return
      this._renewalsWithoutOpen = 0
      this._setProblem(null)
    }
    this._onOnline = () => {
      this._renewalsWithoutOpen = 0
      if (needsRefresh(storedToken(this.room)) || this.problem !== null || this._retryTimer !== null) this._renew()
    }
    this.provider.on('connection-close', this._onClose)
    this.provider.on('status', this._onStatus)
    window.addEventListener('online', this._onOnline)
    if (ready) this._use(stored)
    else this._renew()
  }

  /**
   * Calls fn with `{access, problem}` now and after every change.
   * @param {(state: RoomAccess) => void} fn
   * @returns {() => void} unsubscribe
   */
  onAccess (fn) {
    this._listeners.add(fn)
    fn({ access: this.access, problem: this.problem })
    return () => this._listeners.delete(fn)
  }

  /**
   * Calls fn once the relay deleted the room (at once if it did already).
   * @param {(event: { unsaved: boolean }) => void} fn
   * @returns {() => void} unsubscribe
   */
  onDeleted (fn) {
    if (this.deleted !== null) fn(this.deleted)
    else this._deletedListeners.add(fn)
    return () => this._deletedListeners.delete(fn)
  }

  /** @param {{ unsaved: boolean }} event */
  _wasDeleted (event) {
    if (this._destroyed || this.deleted !== null) return
    this.deleted = event
    clearTimeout(this._refreshTimer)
    clearTimeout(this._retryTimer)
    this._refreshTimer = null
    this._retryTimer = null
    // The copy on this device belongs to a document that no longer exists; kept, it would only
    // say "deleted" again on every visit.
    this.provider.clearLocalCopy().catch(err => console.warn('could not remove the local copy of a deleted room', err))
    const listeners = [...this._deletedListeners]
    this._deletedListeners.clear()
    for (const fn of listeners) fn(event)
  }

  /** @param {{ code: number }} event */
  _closed (event) {
    // Deleted: the client never connects again, and no token would change that.
    if (this._destroyed || event.code === CLOSE_DOCUMENT_DELETED) return
    if (event.code === CLOSE_UNAUTHORIZED || event.code === CLOSE_FORBIDDEN) {
      // The client waits for connect(). The token renewed before this one expired is there
      // already; otherwise a new token first.
      const next = storedToken(this.room)
      if (event.code === CLOSE_UNAUTHORIZED && next !== null && !needsRefresh(next) && next.token !== this._attemptToken) {
        this.provider.params = { ...this.provider.params, token: next.token }
        this.provider.connect()
      } else {
        this._renew()
      }
      return
    }
    // disconnect() (ours), or the relay is unreachable and a token request is already waiting
    // to be retried: the client's own backoff goes on.
    if (event.code === CLOSE_NORMAL || this._retryTimer !== null) return
    // An expired token is refused before the connection opens: ask for a new one rather than
    // retrying with it. A valid one stays: the relay refusing it arrives as 4401/4403 above.
    if (needsRefresh(storedToken(this.room))) this._renew()
  }

  /** Gets a new token and connects with it. */
  async _renew () {
    if (this._destroyed || this._renewing || this.deleted !== null) return
    if (this._renewalsWithoutOpen >= MAX_RENEWALS_WITHOUT_OPEN) {
      // Fresh tokens, and still no connection: stop asking until the network changes.
      this._setProblem('the relay refuses the connection')
      return
    }
    this._renewalsWithoutOpen++
    this._renewing = true
    clearTimeout(this._retryTimer)
    this._retryTimer = null
    try {
      const token = await fetchToken(this.room, this.userName)
      if (this._destroyed) return
      this._retryDelay = TOKEN_RETRY_MIN_MS
      this._setProblem(null)
      this._use(token)
    } catch (err) {
      if (this._destroyed) return
      if (err instanceof AccessRefused) {
        // The relay said no (e.g. the demo sign-on was turned off): say so, try again when the
        // network comes back or the page is opened again.
        this._setProblem(err.message)
        this.provider.disconnect()
        return
      }
      // No network: use the last token of this room (the client reconnects when online), and ask
      // again later.
      this._renewalsWithoutOpen--
      const last = storedToken(this.room)
      if (last !== null && !this._started) this._use(last, { schedule: false })
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null
        this._renew()
      }, this._retryDelay)
      this._retryDelay = Math.min(this._retryDelay * 2, TOKEN_RETRY_MAX_MS)
    } finally {
      this._renewing = false
    }
  }

  /**
   * Connects with a token (or keeps the open connection, which then uses it next time).
   * @param {import('./auth.js').RoomToken} token
   */
  _use (token, { schedule = true } = {}) {
    this._started = true
    this.provider.params = { ...this.provider.params, token: token.token }
    if (token.access !== this.access) {
      this.access = token.access
      this._emit()
    }
    clearTimeout(this._refreshTimer)
    this._refreshTimer = null
    if (schedule) {
      this._refreshTimer = setTimeout(() => {
        this._refreshTimer = null
        this._renewalsWithoutOpen = 0
        this._renew()
      }, refreshDelay(token))
    }
    this.provider.connect()
  }

  /** @param {string | null} problem */
  _setProblem (problem) {
    if (problem === this.problem) return
    this.problem = problem
    this._emit()
  }

  _emit () {
    const state = { access: this.access, problem: this.problem }
    for (const fn of this._listeners) fn(state)
  }

  /**
   * Leaves the room. Our presence goes at once; the connection stays until the relay has
   * acknowledged the last edits (at most LINGER_MS), so that leaving a document right after
   * typing does not leave it "saving".
   */
  close () {
    this._destroyed = true
    this._listeners.clear()
    this._deletedListeners.clear()
    this.provider.off('deleted', this._onDeleted)
    clearTimeout(this._refreshTimer)
    clearTimeout(this._retryTimer)
    if (this.demo) {
      this.provider.off('connection-close', this._onClose)
      this.provider.off('status', this._onStatus)
      window.removeEventListener('online', this._onOnline)
    }
    closeRoom(this.provider, this.doc)
  }
}

/**
 * Connects a Y.Doc to a room.
 * @param {string} room e.g. `docs/meeting notes` or `chat/general`
 * @param {import('yjs').Doc} doc
 * @param {{ name: string }} user
 * @returns {Room}
 */
export function openRoom (room, doc, user) {
  return new Room(room, doc, user)
}

/**
 * Closes a provider when its page is left inside the app (see Room.close).
 * @param {RelayProvider} provider
 * @param {import('yjs').Doc} doc
 */
function closeRoom (provider, doc) {
  provider.awareness.setLocalState(null)
  const done = () => {
    provider.destroy()
    doc.destroy()
  }
  if (provider.saveStatus !== 'saving') {
    done()
    return
  }
  let timer
  Promise.race([
    provider.whenSaved(),
    new Promise(resolve => { timer = setTimeout(resolve, LINGER_MS) })
  ]).catch(() => {}).finally(() => {
    clearTimeout(timer)
    done()
  })
}
