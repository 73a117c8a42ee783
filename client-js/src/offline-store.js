/**
 * Offline storage of a document in IndexedDB: an update log that is compacted into one entry.
 *
 * Why not y-indexeddb: it writes an entry every time a page loads (the document's state before
 * loading, which is the full document when content arrived first from the relay or another tab)
 * and trims its log only once it holds 500 entries (`scripts/measure-y-indexeddb.mjs` shows it).
 * This store writes nothing on a load unless there is something to compact, and compacts in the
 * same transaction that reads, so a load leaves at most one entry behind.
 *
 * Layout: a database per room URL with two object stores:
 * - `updates`: auto-increment key → Yjs update (v1). The document is the merge of all entries.
 * - `meta`: `'acked'` → encoded Yjs snapshot of the content the relay acknowledged as saved
 *   (see save-status.js). Written by {@link OfflineStore#setAcked}. `'deleted'` → `true` once the
 *   relay deleted the document (close code 4404), so that no later page sends this copy back to
 *   the relay. Written by {@link OfflineStore#setDeleted}; gone with the database ({@link deleteStore}).
 *
 * Several tabs may share the database. Each appends its own updates; a compaction replaces the
 * entries it read by their merge in one transaction, so entries appended meanwhile by another tab
 * (with higher keys) survive, and duplicates are harmless (Yjs updates are idempotent).
 *
 * @module offline-store
 */

import * as Y from 'yjs'
import { mergeSnapshots } from './save-status.js'

const UPDATES = 'updates'
const META = 'meta'
const ACKED_KEY = 'acked'
const DELETED_KEY = 'deleted'
const DB_VERSION = 1

/** Entries appended during a session after which the log is compacted. */
export const DEFAULT_COMPACT_AFTER = 100

/**
 * @typedef {object} LoadResult
 * @property {Y.Snapshot | null} acked the snapshot the relay last acknowledged, if any
 * @property {number} entries entries the log held before loading
 * @property {boolean} deleted whether the relay deleted the document this copy belongs to
 * @property {Error} [error] when IndexedDB failed: nothing was loaded
 */

/**
 * @template T
 * @param {IDBRequest<T>} req
 * @returns {Promise<T>}
 */
function request (req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result)
    req.onerror = () => reject(req.error)
  })
}

/**
 * @param {IDBTransaction} tx
 * @returns {Promise<void>}
 */
function completion (tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve()
    tx.onerror = () => reject(tx.error)
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'))
  })
}

/**
 * Reads every entry of the update log inside `tx`, then calls `then` in the same transaction.
 * @param {IDBObjectStore} store
 * @param {(keys: IDBValidKey[], values: Uint8Array[]) => void} then
 */
function readLog (store, then) {
  /** @type {IDBValidKey[]} */
  const keys = []
  /** @type {Uint8Array[]} */
  const values = []
  const cursorReq = store.openCursor()
  cursorReq.onsuccess = () => {
    const cursor = cursorReq.result
    if (cursor) {
      keys.push(cursor.primaryKey)
      values.push(cursor.value)
      cursor.continue()
    } else {
      then(keys, values)
    }
  }
}

export class OfflineStore {
  /**
   * Opens (or creates) the database `name` and applies its content to `doc`, with this store as
   * the transaction origin. From then on every update of `doc` not from this store is appended.
   *
   * @param {string} name database name
   * @param {Y.Doc} doc
   * @param {object} opts
   * @param {IDBFactory} opts.indexedDB
   * @param {number} [opts.compactAfter] appended entries after which the log is compacted
   */
  constructor (name, doc, { indexedDB, compactAfter = DEFAULT_COMPACT_AFTER }) {
    this.name = name
    this.doc = doc
    this.compactAfter = compactAfter
    /** @type {IDBDatabase | null} */
    this.db = null
    this.destroyed = false
    /** IndexedDB failed or was taken away (another tab upgrading it): updates are no longer kept */
    this.unavailable = false
    /** entries in the log, as far as this tab knows */
    this.entries = 0
    /** @type {Uint8Array[]} updates made before the database was open */
    this._queue = []
    /**
     * Updates handed to this store whose IndexedDB transaction has not completed (or failed) yet:
     * until it drops to 0, a reload could lose them.
     */
    this.pendingWrites = 0
    /** @type {(() => void) | null} called each time {@link OfflineStore#pendingWrites} drops to 0 */
    this.onWritesSettled = null
    this._compacting = false
    /** whether the document had content before this store saw it: it is written at load */
    this._preexisting = doc.store.clients.size > 0
    /**
     * @param {Uint8Array} update
     * @param {any} origin
     */
    this._onUpdate = (update, origin) => {
      if (origin === this) return
      this.pendingWrites++
      this._append(update)
    }
    doc.on('update', this._onUpdate)

    /** @type {Promise<IDBDatabase>} */
    this._dbPromise = new Promise((resolve, reject) => {
      const req = indexedDB.open(name, DB_VERSION)
      req.onupgradeneeded = () => {
        const db = req.result
        if (!db.objectStoreNames.contains(UPDATES)) db.createObjectStore(UPDATES, { autoIncrement: true })
        if (!db.objectStoreNames.contains(META)) db.createObjectStore(META)
      }
      req.onsuccess = () => resolve(req.result)
      req.onerror = () => reject(req.error)
    })

    /** @type {Promise<LoadResult>} resolves once the stored content is in `doc` */
    this.whenLoaded = this._dbPromise.then(db => {
      if (this.destroyed) {
        db.close()
        return { acked: null, entries: 0, deleted: false }
      }
      this.db = db
      // Another tab upgrading the database: let it.
      db.onversionchange = () => { db.close(); this._giveUp() }
      return this._load(db)
    }).catch(err => {
      this._giveUp()
      return { acked: null, entries: 0, deleted: false, error: /** @type {Error} */ (err) }
    })
  }

  /**
   * @param {IDBDatabase} db
   * @returns {Promise<LoadResult>}
   */
  async _load (db) {
    const tx = db.transaction([UPDATES, META], 'readwrite')
    const done = completion(tx)
    const updates = tx.objectStore(UPDATES)
    const ackedReq = request(tx.objectStore(META).get(ACKED_KEY))
    const deletedReq = request(tx.objectStore(META).get(DELETED_KEY))
    /** @type {number} */
    let before = 0
    readLog(updates, (keys, values) => {
      before = values.length
      if (this.destroyed) return
      if (values.length > 0) {
        Y.applyUpdate(this.doc, values.length === 1 ? values[0] : Y.mergeUpdates(values), this)
      }
      if (values.length > 1 || this._preexisting) {
        // Replace what was read by one entry holding the whole document, in this transaction.
        for (const key of keys) updates.delete(key)
        updates.add(Y.encodeStateAsUpdate(this.doc))
        this.entries = 1
      } else {
        this.entries = values.length
      }
    })
    const ackedBytes = await ackedReq
    const deleted = (await deletedReq) === true
    await done
    const queued = this._queue
    this._queue = []
    for (const update of queued) this._append(update)
    return { acked: ackedBytes instanceof Uint8Array ? Y.decodeSnapshot(ackedBytes) : null, entries: before, deleted }
  }

  _giveUp () {
    this.unavailable = true
    this.db = null
    const dropped = this._queue.length
    this._queue = []
    this._settled(dropped)
  }

  /**
   * `count` pending writes ended (committed, failed, or dropped).
   * @param {number} count
   */
  _settled (count) {
    if (count === 0 || this.pendingWrites === 0) return
    this.pendingWrites = Math.max(0, this.pendingWrites - count)
    if (this.pendingWrites === 0 && !this.destroyed) this.onWritesSettled?.()
  }

  /**
   * Writes one update counted in {@link OfflineStore#pendingWrites}; settles it exactly once.
   * @param {Uint8Array} update
   */
  _append (update) {
    if (this.destroyed || this.unavailable) return this._settled(1)
    if (this.db === null) {
      this._queue.push(update)
      return
    }
    try {
      const tx = this.db.transaction([UPDATES], 'readwrite')
      tx.objectStore(UPDATES).add(update)
      completion(tx)
        .catch(err => console.warn('relay-client: could not store an update in IndexedDB', err))
        .finally(() => this._settled(1))
      // Ask for the commit now rather than at the end of the task: the sooner it is on disk, the
      // smaller the window in which a reload or a closed tab loses it.
      if (typeof tx.commit === 'function') tx.commit()
    } catch (err) {
      console.warn('relay-client: could not store an update in IndexedDB', err)
      return this._settled(1)
    }
    if (++this.entries >= this.compactAfter) this.compact()
  }

  /**
   * Replaces every entry of the log by their merge, in one transaction.
   * @returns {Promise<void>}
   */
  async compact () {
    const db = this.db
    if (db === null || this._compacting || this.destroyed) return
    this._compacting = true
    // Entries appended from now on are not in this compaction (their transactions come later).
    const before = this.entries
    try {
      const tx = db.transaction([UPDATES], 'readwrite')
      const done = completion(tx)
      const updates = tx.objectStore(UPDATES)
      readLog(updates, (keys, values) => {
        if (values.length <= 1) return
        for (const key of keys) updates.delete(key)
        updates.add(Y.mergeUpdates(values))
      })
      await done
      this.entries = 1 + this.entries - before
    } catch (err) {
      console.warn('relay-client: IndexedDB compaction failed', err)
      return
    } finally {
      this._compacting = false
    }
    if (this.entries >= this.compactAfter) this.compact()
  }

  /**
   * Records that the relay acknowledged everything in `snapshot` (merged with what was recorded).
   * @param {Y.Snapshot} snapshot
   * @returns {Promise<void>}
   */
  async setAcked (snapshot) {
    const db = this.db
    if (db === null || this.destroyed) return
    const tx = db.transaction([META], 'readwrite')
    const done = completion(tx)
    const meta = tx.objectStore(META)
    const getReq = meta.get(ACKED_KEY)
    getReq.onsuccess = () => {
      const prev = getReq.result
      const merged = prev instanceof Uint8Array ? mergeSnapshots(Y.decodeSnapshot(prev), snapshot) : snapshot
      meta.put(Y.encodeSnapshot(merged), ACKED_KEY)
    }
    await done
  }

  /**
   * Records that the relay deleted the document: a store opened later reports `deleted` (and the
   * provider then does not connect), until the copy is cleared.
   * @returns {Promise<void>}
   */
  async setDeleted () {
    const db = this.db
    if (db === null || this.destroyed) return
    const tx = db.transaction([META], 'readwrite')
    const done = completion(tx)
    tx.objectStore(META).put(true, DELETED_KEY)
    await done
  }

  /** Stops writing and closes the database (after the transactions already started). */
  destroy () {
    if (this.destroyed) return
    this.destroyed = true
    this.doc.off('update', this._onUpdate)
    this._queue = []
    this.pendingWrites = 0
    if (this.db !== null) {
      this.db.close()
      this.db = null
    }
    // Still opening: whenLoaded closes it once open.
  }
}

/**
 * Deletes a store's database. Other pages that have it open close it (their stores stop keeping
 * updates), after which the deletion goes through.
 * @param {IDBFactory} indexedDB
 * @param {string} name database name
 * @returns {Promise<void>}
 */
export function deleteStore (indexedDB, name) {
  return new Promise((resolve, reject) => {
    const req = indexedDB.deleteDatabase(name)
    req.onsuccess = () => resolve()
    req.onerror = () => reject(req.error)
  })
}

/**
 * Counts the entries and bytes of a store's update log (for tests and diagnostics).
 * @param {IDBFactory} indexedDB
 * @param {string} name database name
 * @returns {Promise<{entries: number, bytes: number}>}
 */
export async function logStats (indexedDB, name) {
  const db = await request(indexedDB.open(name, DB_VERSION))
  try {
    if (!db.objectStoreNames.contains(UPDATES)) return { entries: 0, bytes: 0 }
    const tx = db.transaction([UPDATES], 'readonly')
    const values = /** @type {Uint8Array[]} */ (await request(tx.objectStore(UPDATES).getAll()))
    return { entries: values.length, bytes: values.reduce((n, v) => n + v.byteLength, 0) }
  } finally {
    db.close()
  }
}
