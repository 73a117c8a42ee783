// Lists the relay's rooms under one prefix (`docs/` or `chat/`) with GET /api/docs.
//
// The relay lists every room in name order and pages with `after`, so starting after the prefix
// itself and stopping at the first name without it reads exactly the rooms under the prefix.

const PAGE = 100

/**
 * @param {string} prefix
 * @param {{ after?: string }} [opts] continue after this room (a previous `nextAfter`)
 * @returns {Promise<{ rooms: Array<{name: string, size_bytes: number, updated_at_ms: number, connections: number}>, nextAfter?: string, fromCache: boolean }>}
 */
export async function listRooms (prefix, { after } = {}) {
  const params = new URLSearchParams({ limit: String(PAGE), after: after ?? prefix })
  const res = await fetch(`/api/docs?${params}`, { headers: { accept: 'application/json' } })
  if (!res.ok) throw new Error(`GET /api/docs: HTTP ${res.status}`)
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
