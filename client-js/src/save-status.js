/**
 * Save status: counts local versions against the versions the relay acknowledged as saved.
 *
 * Every local change (an update that did not come from the relay) raises the local version. A save
 * request sent on a connection records the local version at that moment; when the relay answers
 * *saved* for it, everything up to that version is durable. The status is 'saved' when the acked
 * version has caught up with the local one, whatever timers say: there is no timer here at all.
 *
 * Across reloads the version counter is gone, so the provider persists a Yjs snapshot (state vector
 * plus delete set) of the document as it was when the relay last acked everything; after a reload
 * the content loaded from IndexedDB is unsaved unless that snapshot covers it
 * ({@link snapshotCovers}).
 *
 * @module save-status
 */

import * as Y from 'yjs'

/** @typedef {'saved' | 'saving' | 'offline-unsaved' | 'error' | 'deleted'} SaveStatus */

export class SaveTracker {
  constructor () {
    /** version of the latest local change */
    this.localVersion = 0
    /** highest local version the relay acknowledged as saved */
    this.ackedVersion = 0
    /**
     * Save requests sent on the current connection and not answered yet: id → local version.
     * @type {Map<number, number>}
     */
    this.pending = new Map()
    /** whether a connection to the relay is open */
    this.online = false
    /** whether some local change is still being written to this device's offline storage */
    this.storing = false
    /**
     * Reason of the last save error, until a later *saved*.
     * @type {string | null}
     */
    this.error = null
    /** whether the relay deleted the document: nothing is saved any more, not even what was */
    this.deleted = false
    this._nextId = 1
  }

  /** Whether some local change is not acknowledged yet. */
  get unsaved () {
    return this.localVersion > this.ackedVersion
  }

  /** @returns {SaveStatus} */
  get status () {
    if (this.deleted) return 'deleted'
    if (!this.unsaved) return 'saved'
    // 'offline-unsaved' tells the user the edits are kept on this device: only once they are.
    if (!this.online) return this.storing ? 'saving' : 'offline-unsaved'
    if (this.error !== null) return 'error'
    return 'saving'
  }

  /** Records a local change. */
  change () {
    this.localVersion++
  }

  /**
   * Records a save request about to be sent on the current connection.
   * @returns {number} its id
   */
  request () {
    const id = this._nextId++
    this.pending.set(id, this.localVersion)
    return id
  }

  /**
   * The relay answered *saved* for `id`.
   * @param {number} id
   * @returns {boolean} whether the id was one of ours on this connection
   */
  saved (id) {
    const version = this.pending.get(id)
    if (version === undefined) return false
    // The relay answers in request order: older requests are answered too.
    for (const other of this.pending.keys()) {
      if (other <= id) this.pending.delete(other)
    }
    if (version > this.ackedVersion) this.ackedVersion = version
    this.error = null
    return true
  }

  /**
   * The relay answered *save error* for `id` (it retries and sends *saved* later).
   * @param {number} id
   * @param {string} reason
   * @returns {boolean} whether the id was one of ours on this connection
   */
  failed (id, reason) {
    if (!this.pending.has(id)) return false
    this.error = reason
    return true
  }

  /** A connection opened. */
  connected () {
    this.online = true
  }

  /** The connection closed: requests sent on it will never be answered. */
  disconnected () {
    this.online = false
    this.pending.clear()
  }
}

/**
 * Whether every item and every deletion described by `inner` is also in `outer`.
 * @param {Y.Snapshot} outer
 * @param {Y.Snapshot} inner
 * @returns {boolean}
 */
export function snapshotCovers (outer, inner) {
  for (const [client, clock] of inner.sv) {
    if ((outer.sv.get(client) ?? 0) < clock) return false
  }
  for (const [client, deletions] of inner.ds.clients) {
    const covering = [...(outer.ds.clients.get(client) ?? [])].sort((a, b) => a.clock - b.clock)
    for (const { clock, len } of deletions) {
      if (!rangeCovered(covering, clock, clock + len)) return false
    }
  }
  return true
}

/**
 * @param {Array<{clock: number, len: number}>} sorted ranges sorted by clock
 * @param {number} start
 * @param {number} end exclusive
 */
function rangeCovered (sorted, start, end) {
  let pos = start
  for (const r of sorted) {
    if (pos >= end) break
    if (r.clock > pos) return false
    pos = Math.max(pos, r.clock + r.len)
  }
  return pos >= end
}

/**
 * Union of two snapshots of the same document (both acknowledged by the relay, so the relay has
 * everything in the union).
 * @param {Y.Snapshot} a
 * @param {Y.Snapshot} b
 * @returns {Y.Snapshot}
 */
export function mergeSnapshots (a, b) {
  /** @type {Map<number, number>} */
  const sv = new Map(a.sv)
  for (const [client, clock] of b.sv) sv.set(client, Math.max(clock, sv.get(client) ?? 0))
  return Y.createSnapshot(Y.mergeDeleteSets([a.ds, b.ds]), sv)
}
