import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { SaveTracker, snapshotCovers, mergeSnapshots } from '../src/index.js'

test('the status follows acknowledged versions, not requests', () => {
  const t = new SaveTracker()
  assert.equal(t.status, 'saved')
  t.change()
  assert.equal(t.status, 'offline-unsaved')
  t.connected()
  assert.equal(t.status, 'saving')
  const first = t.request()
  t.change() // an edit after the request: the answer to `first` does not cover it
  assert.equal(t.saved(first), true)
  assert.equal(t.status, 'saving')
  const second = t.request()
  assert.equal(t.failed(second, 'disk full'), true)
  assert.equal(t.status, 'error')
  assert.equal(t.error, 'disk full')
  assert.equal(t.saved(second), true)
  assert.equal(t.status, 'saved')
  assert.equal(t.error, null)
})

test('answers to requests of a closed connection or of nobody are ignored', () => {
  const t = new SaveTracker()
  t.connected()
  t.change()
  const id = t.request()
  t.disconnected()
  assert.equal(t.status, 'offline-unsaved')
  assert.equal(t.saved(id), false, 'a request from the previous connection')
  assert.equal(t.saved(12345), false)
  assert.equal(t.failed(12345, 'x'), false)
  assert.equal(t.status, 'offline-unsaved')
  t.connected()
  t.saved(t.request())
  assert.equal(t.status, 'saved')
})

test('an answer also settles the earlier requests (the relay answers in order)', () => {
  const t = new SaveTracker()
  t.connected()
  t.change()
  const a = t.request()
  t.change()
  const b = t.request()
  assert.equal(t.saved(b), true)
  assert.equal(t.status, 'saved')
  assert.equal(t.saved(a), false, 'already settled')
  assert.equal(t.pending.size, 0)
})

test('snapshotCovers sees new items and deletions the snapshot lacks', () => {
  const doc = new Y.Doc()
  const text = doc.getText('t')
  text.insert(0, 'hello world')
  const acked = Y.snapshot(doc)
  assert.ok(snapshotCovers(acked, Y.snapshot(doc)))
  // A deletion adds no item: the state vector stays the same, only the delete set differs.
  text.delete(0, 6)
  assert.deepEqual(Y.snapshot(doc).sv, acked.sv)
  assert.ok(!snapshotCovers(acked, Y.snapshot(doc)), 'delete-only change')
  const afterDelete = Y.snapshot(doc)
  text.insert(0, 'new ')
  assert.ok(!snapshotCovers(afterDelete, Y.snapshot(doc)), 'insertion')
  assert.ok(snapshotCovers(Y.snapshot(doc), afterDelete), 'a later snapshot covers an earlier one')
  // Round trip through the encoding kept in IndexedDB.
  const decoded = Y.decodeSnapshot(Y.encodeSnapshot(Y.snapshot(doc)))
  assert.ok(snapshotCovers(decoded, Y.snapshot(doc)))
})

test('mergeSnapshots covers both sides', () => {
  const a = new Y.Doc()
  const b = new Y.Doc()
  a.getText('t').insert(0, 'from a, deleted later')
  Y.applyUpdate(b, Y.encodeStateAsUpdate(a))
  a.getText('t').delete(0, 5)
  b.getText('t').insert(0, 'from b ')
  const merged = mergeSnapshots(Y.snapshot(a), Y.snapshot(b))
  assert.ok(snapshotCovers(merged, Y.snapshot(a)))
  assert.ok(snapshotCovers(merged, Y.snapshot(b)))
  assert.ok(!snapshotCovers(Y.snapshot(a), Y.snapshot(b)))
})
