// The IndexedDB store (fake-indexeddb): no growth on reloads, compaction, content made offline.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { IDBFactory } from 'fake-indexeddb'
import { logStats } from '../src/index.js'
import { loaded, provider } from './support/clients.mjs'
import { Scope } from '../../tests/js-support/relay-test.mjs'
import { waitFor } from '../../tests/js-support/wait.mjs'

// Nothing listens there: these providers never connect (connect: false).
const SERVER = 'ws://127.0.0.1:9'
const dbName = room => `relay-client:${SERVER}/${encodeURIComponent(room)}`

/** Simulates page loads: a new Doc and provider on the same IndexedDB each time. */
async function reload (idb, room, opts, fn) {
  const scope = new Scope()
  try {
    const p = provider(scope, SERVER, room, { connect: false, offline: true, env: { indexedDB: idb }, ...opts })
    await loaded(p)
    return await fn(p)
  } finally {
    await scope.dispose()
  }
}

test('20 reloads without edits write nothing; with one edit each the log stays at two entries', async () => {
  const idb = new IDBFactory()
  await reload(idb, 'r', {}, p => p.doc.getText('t').insert(0, 'x'.repeat(1000)))
  const first = await logStats(idb, dbName('r'))
  assert.equal(first.entries, 1)
  for (let i = 0; i < 20; i++) {
    await reload(idb, 'r', {}, p => assert.equal(p.doc.getText('t').length, 1000))
    assert.deepEqual(await logStats(idb, dbName('r')), first, `after reload ${i + 1}`)
  }

  const sizes = []
  for (let i = 0; i < 20; i++) {
    await reload(idb, 'r', {}, p => {
      assert.equal(p.doc.getText('t').length, 1000 + i)
      p.doc.getText('t').insert(0, 'y')
    })
    const stats = await logStats(idb, dbName('r'))
    assert.ok(stats.entries <= 2, `reload ${i + 1}: ${stats.entries} entries`)
    sizes.push(stats.bytes)
  }
  // Each reload compacts what the previous one appended: the size follows the content (one byte
  // per edit, plus a little per client), not the number of loads.
  assert.ok(sizes[19] < first.bytes + 20 * 40, `sizes: ${sizes}`)
})

test('content already in the document before loading is stored once, not once per load', async () => {
  const idb = new IDBFactory()
  const remote = new Y.Doc()
  remote.getText('t').insert(0, 'r'.repeat(10_000))
  const update = Y.encodeStateAsUpdate(remote)
  const sizes = []
  for (let i = 0; i < 20; i++) {
    // e.g. content that came from another tab or the relay before IndexedDB was read
    const doc = new Y.Doc()
    Y.applyUpdate(doc, update)
    await reload(idb, 'pre', { doc }, p => assert.equal(p.doc.getText('t').length, 10_000))
    const stats = await logStats(idb, dbName('pre'))
    assert.equal(stats.entries, 1)
    sizes.push(stats.bytes)
  }
  assert.ok(Math.max(...sizes) < 10_100, `sizes: ${sizes}`)
})

test('the log is compacted during a session and the content survives it', async () => {
  const idb = new IDBFactory()
  const compactAfter = 10
  await reload(idb, 'c', { compactAfter }, async p => {
    for (let i = 0; i < 95; i++) p.doc.getText('t').insert(i, String(i % 10))
    const stats = await waitFor(async () => {
      const s = await logStats(idb, dbName('c'))
      return s.entries <= compactAfter && s
    }, { what: 'the log to be compacted' })
    assert.ok(stats.entries <= compactAfter)
  })
  await reload(idb, 'c', {}, async p => {
    assert.equal(p.doc.getText('t').length, 95)
    assert.equal(p.doc.getText('t').toString().slice(0, 12), '012345678901')
    assert.equal((await logStats(idb, dbName('c'))).entries, 1)
  })
})

test('rooms and servers have separate databases', async () => {
  const idb = new IDBFactory()
  await reload(idb, 'one', {}, p => p.doc.getText('t').insert(0, 'one'))
  await reload(idb, 'two', {}, p => assert.equal(p.doc.getText('t').length, 0))
  await reload(idb, 'one', {}, p => assert.equal(p.doc.getText('t').toString(), 'one'))
})

test('offline, "kept on this device" is claimed only once IndexedDB has committed the edit', async () => {
  const idb = new IDBFactory()
  await reload(idb, 'kept', {}, async p => {
    const seen = []
    p.on('save-status', ({ status }) => {
      // Read the log the moment the status changes: what the status claims must be stored.
      seen.push(logStats(idb, dbName('kept')).then(stats => ({ status, entries: stats.entries })))
    })
    p.doc.getText('t').insert(0, 'typed offline')
    assert.equal(p.saveStatus, 'saving', 'still being written to IndexedDB')
    await waitFor(() => p.saveStatus === 'offline-unsaved', { what: 'the write to IndexedDB' })
    const states = await Promise.all(seen)
    assert.deepEqual(states.map(s => s.status), ['saving', 'offline-unsaved'])
    assert.equal(states[1].entries, 1, 'the edit is in IndexedDB when offline-unsaved is claimed')
  })
  await reload(idb, 'kept', {}, p => assert.equal(p.doc.getText('t').toString(), 'typed offline'))
})
