// Lists the relay's rooms under one prefix (`docs/` or `chat/`): with GET /api/docs on an open
// relay, with GET /api/demo/docs (the demo rooms, same answer) when the demo sign-on is on.
//
// GET /api/docs lists every room in name order and pages with `after`, so starting after the
// prefix itself and stopping at the first name without it reads exactly the rooms under the
// prefix. GET /api/demo/docs takes the prefix and does that itself.

import { demoConfig } from './auth.js'

const PAGE = 100

/**
 * @param {string} prefix
 * @param {{ after?: string }} [opts] continue after this room (a previous `nextAfter`)
 * @returns {Promise<{ rooms: Array<{name: string, size_bytes: number, updated_at_ms: number, connections: number}>, nextAfter?: string, fromCache: boolean }>}
 */
export async function listRooms (prefix, { after } = {}) {
  const demo = demoConfig().auth === 'demo'
  const params = demo
    ? new URLSearchParams({ prefix, limit: String(PAGE), ...(after ? { after } : {}) })
    : new URLSearchParams({ limit: String(PAGE), after: after ?? prefix })
  const path = demo ? '/api/demo/docs' : '/api/docs'
  const res = await fetch(`${path}?${params}`, { headers: { accept: 'application/json' } })
  if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`)
  const body = await res.json()
  const all = Array.isArray(body.docs) ? body.docs : []
  const rooms = all.filter(d => typeof d.name === 'string' && d.name.startsWith(prefix) && d.name.length > prefix.length)
  const past = rooms.length < all.length
  return {
    rooms,
    nextAfter: !past && body.next_after ? body.next_after : undefined,
    // set by the service worker when it answered from its cache
    fromCache: res.headers.get('x-served-from') === 'cache'
  }
}
