// Measures how y-indexeddb's store grows over page loads, in Node with fake-indexeddb.
//
//   node scripts/measure-y-indexeddb.mjs
//
// Prints, after each simulated page load, the number of entries and bytes in y-indexeddb's
// `updates` object store, for three patterns: loads without edits, one small edit per load, and
// loads where the document already had content (from the relay or another tab) before IndexedDB
// was read. This is why the client ships its own store (src/offline-store.js).
/* global indexedDB */
import 'fake-indexeddb/auto'
import * as Y from 'yjs'
import { IndexeddbPersistence } from 'y-indexeddb'

/** @param {string} name */
function count (name) {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(name)
    req.onerror = () => reject(req.error)
    req.onsuccess = () => {
      const db = req.result
      const tx = db.transaction(['updates'], 'readonly')
      const all = tx.objectStore('updates').getAll()
      all.onsuccess = () => {
        const values = /** @type {Uint8Array[]} */ (all.result)
        db.close()
        resolve({ entries: values.length, bytes: values.reduce((n, v) => n + v.byteLength, 0) })
      }
      all.onerror = () => reject(all.error)
    }
  })
}

/**
 * @param {string} name
 * @param {number} loads
 * @param {(doc: Y.Doc, i: number) => void} before runs before IndexedDB is read
 * @param {(doc: Y.Doc, i: number) => void} after runs once the content is loaded
 */
async function scenario (name, loads, before, after) {
  const rows = []
  for (let i = 0; i < loads; i++) {
    const doc = new Y.Doc()
    before(doc, i)
    const p = new IndexeddbPersistence(name, doc)
    await p.whenSynced
    after(doc, i)
    // let the update's write land before "closing the tab"
    await new Promise(resolve => setTimeout(resolve, 20))
    await p.destroy()
    doc.destroy()
    rows.push(await count(name))
  }
  return rows
}

const seed = new Y.Doc()
seed.getText('t').insert(0, 'x'.repeat(10_000))
const seedUpdate = Y.encodeStateAsUpdate(seed)

const results = {
  'no edits': await scenario('a', 20, () => {}, (doc, i) => { if (i === 0) doc.getText('t').insert(0, 'hello') }),
  'one edit per load': await scenario('b', 20, () => {}, (doc, i) => doc.getText('t').insert(0, String(i))),
  'content before load (10 kB)': await scenario('c', 20, doc => Y.applyUpdate(doc, seedUpdate), () => {})
}
for (const [name, rows] of Object.entries(results)) {
  console.log(`${name}: ` + rows.map((r, i) => `${i + 1}:${r.entries}/${r.bytes}B`).join(' '))
}
