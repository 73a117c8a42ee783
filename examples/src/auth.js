// How the app gets access to the relay's rooms: the mode from GET /api/demo/config, and the demo
// sign-on's tokens from POST /api/demo/token.
//
//   open   the relay has no secret: rooms open without tokens, GET /api/docs lists them.
//   demo   the relay has a secret and runs with --demo-sign-on: the app asks the relay for a
//          token per room (POST /api/demo/token, with the display name) and lists the demo rooms
//          with GET /api/demo/docs. Rooms under `read_only_prefix` get read-only tokens.
//          This is NOT authentication: anyone who can reach the relay gets such a token. A real
//          application mints tokens in its own backend (POST /api/tokens, `relay token`).
//   token  the relay has a secret but no demo sign-on: tokens come from an application, so the
//          demo cannot open anything.
//
// The mode is cached by the service worker and, as a last resort, in localStorage (so the app
// opens offline in the mode it last saw). Tokens are kept in memory and in sessionStorage (this
// tab only, gone when it closes), never in localStorage, and never logged.

/** @typedef {'open' | 'demo' | 'token'} AuthMode */
/** @typedef {{ auth: AuthMode, readOnlyPrefix: string | null }} DemoConfig */
/** @typedef {{ token: string, access: 'read' | 'write', expiresAtMs: number, lifetimeMs: number }} RoomToken */

const CONFIG_KEY = 'relay-demo:config'
const TOKEN_KEY_PREFIX = 'relay-demo:token:'
/** Ask for a new token this long before the current one expires (at most a fifth of its lifetime). */
export const REFRESH_MARGIN_MS = 5 * 60 * 1000

/** @type {DemoConfig} */
const OPEN = { auth: 'open', readOnlyPrefix: null }
/** @type {DemoConfig} */
let current = OPEN

/**
 * Reads the answer of GET /api/demo/config; anything unexpected counts as `open`.
 * @param {any} body
 * @returns {DemoConfig}
 */
export function parseConfig (body) {
  const auth = body?.auth
  if (auth === 'demo') {
    const prefix = typeof body.read_only_prefix === 'string' && body.read_only_prefix ? body.read_only_prefix : null
    return { auth: 'demo', readOnlyPrefix: prefix }
  }
  if (auth === 'token') return { auth: 'token', readOnlyPrefix: null }
  return OPEN
}

/** The mode the app runs in (set by loadConfig). */
export function demoConfig () {
  return current
}

/**
 * Asks the relay how the app connects. Offline (and when the service worker has no copy either)
 * the last mode seen in this browser, or `open`.
 * @returns {Promise<DemoConfig>}
 */
export async function loadConfig () {
  try {
    const res = await fetch('/api/demo/config', { headers: { accept: 'application/json' } })
    if (res.status === 404) {
      // A relay from before the demo sign-on: open.
      current = OPEN
    } else if (!res.ok) {
      throw new Error(`GET /api/demo/config: HTTP ${res.status}`)
    } else {
      current = parseConfig(await res.json())
    }
    try { localStorage.setItem(CONFIG_KEY, JSON.stringify(current)) } catch {}
  } catch {
    current = lastKnownConfig()
  }
  return current
}

function lastKnownConfig () {
  try {
    const saved = JSON.parse(localStorage.getItem(CONFIG_KEY) || 'null')
    if (saved) return parseConfig({ auth: saved.auth, read_only_prefix: saved.readOnlyPrefix })
  } catch {}
  return OPEN
}

/**
 * Whether a room is read-only by its name alone (demo mode: under `read_only_prefix`). The token
 * has the last word (its `access`); this is what the app assumes before it has one.
 * @param {string} room
 * @param {DemoConfig} [config]
 */
export function isReadOnlyRoom (room, config = current) {
  return config.auth === 'demo' && config.readOnlyPrefix !== null && room.startsWith(config.readOnlyPrefix)
}

/**
 * When to ask for the next token: REFRESH_MARGIN_MS before it expires, or a fifth of its
 * lifetime before for short-lived tokens; never in the past.
 * @param {RoomToken} token
 * @param {number} [now]
 * @returns {number} milliseconds from now
 */
export function refreshDelay (token, now = Date.now()) {
  const margin = Math.min(REFRESH_MARGIN_MS, Math.max(0, token.lifetimeMs) / 5)
  return Math.max(0, token.expiresAtMs - margin - now)
}

/**
 * Whether a token is expired or about to be (within its refresh margin).
 * @param {RoomToken | null | undefined} token
 * @param {number} [now]
 */
export function needsRefresh (token, now = Date.now()) {
  return !token || refreshDelay(token, now) === 0
}

/**
 * Turns the answer of POST /api/demo/token into a RoomToken. `expires_at` is the relay's clock (seconds);
 * the `Date` header of the answer corrects for a browser clock that is off.
 * @param {any} body
 * @param {{ now?: number, serverDate?: string | null }} [opts]
 * @returns {RoomToken}
 */
export function parseToken (body, { now = Date.now(), serverDate = null } = {}) {
  if (!body || typeof body.token !== 'string' || !body.token || typeof body.expires_at !== 'number') {
    throw new Error('the relay sent no token')
  }
  const server = serverDate ? Date.parse(serverDate) : NaN
  // The Date header has whole seconds: only correct offsets larger than that.
  const skew = Number.isFinite(server) && Math.abs(server - now) > 2000 ? server - now : 0
  const expiresAtMs = body.expires_at * 1000 - skew
  return {
    token: body.token,
    access: body.access === 'write' ? 'write' : 'read',
    expiresAtMs,
    lifetimeMs: Math.max(0, expiresAtMs - now)
  }
}

/** A refusal from the relay (an HTTP error), as opposed to no network. */
export class AccessRefused extends Error {
  /**
   * @param {string} message
   * @param {number} status
   */
  constructor (message, status) {
    super(message)
    this.name = 'AccessRefused'
    this.status = status
  }
}

/** @type {Map<string, RoomToken>} */
const tokens = new Map()
/** @type {Map<string, Promise<RoomToken>>} */
const pending = new Map()

/**
 * The last token this tab got for a room (also an expired one), or null.
 * @param {string} room
 * @returns {RoomToken | null}
 */
export function storedToken (room) {
  const inMemory = tokens.get(room)
  if (inMemory) return inMemory
  try {
    const saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY_PREFIX + room) || 'null')
    if (saved && typeof saved.token === 'string' && typeof saved.expiresAtMs === 'number') {
      const token = { token: saved.token, access: saved.access === 'write' ? 'write' : 'read', expiresAtMs: saved.expiresAtMs, lifetimeMs: saved.lifetimeMs || 0 }
      tokens.set(room, token)
      return token
    }
  } catch {}
  return null
}

/**
 * Asks the relay's demo sign-on for a token for a room. Concurrent calls for a room share one
 * request. Rejects with AccessRefused when the relay says no, with a TypeError without network.
 * @param {string} room
 * @param {string} name the display name, carried in the token
 * @returns {Promise<RoomToken>}
 */
export function fetchToken (room, name) {
  const inFlight = pending.get(room)
  if (inFlight) return inFlight
  const request = (async () => {
    const res = await fetch('/api/demo/token', {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ room, name }),
      cache: 'no-store'
    })
    if (!res.ok) {
      let message = `HTTP ${res.status}`
      try {
        const body = await res.json()
        if (typeof body?.error === 'string') message = body.error
      } catch {}
      throw new AccessRefused(message, res.status)
    }
    const token = parseToken(await res.json(), { serverDate: res.headers.get('date') })
    tokens.set(room, token)
    try { sessionStorage.setItem(TOKEN_KEY_PREFIX + room, JSON.stringify(token)) } catch {}
    return token
  })()
  pending.set(room, request)
  const done = () => { if (pending.get(room) === request) pending.delete(room) }
  request.then(done, done)
  return request
}

/** Forgets every token of this tab (on sign-out). */
export function forgetTokens () {
  tokens.clear()
  try {
    for (let i = sessionStorage.length - 1; i >= 0; i--) {
      const key = sessionStorage.key(i)
      if (key?.startsWith(TOKEN_KEY_PREFIX)) sessionStorage.removeItem(key)
    }
  } catch {}
}
