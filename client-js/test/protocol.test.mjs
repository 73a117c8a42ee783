import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import { protocol } from '../src/index.js'

function concat (...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let off = 0
  for (const p of parts) { out.set(p, off); off += p.length }
  return out
}

function read (frame, doc = new Y.Doc()) {
  const seen = []
  protocol.readMessages(frame, doc, 'origin', msg => seen.push(msg))
  return seen
}

test('save requests and answers have the layout of PROTOCOL.md', () => {
  assert.deepEqual([...protocol.encodeSaveRequest(7)], [100, 0, 7])
  assert.deepEqual([...protocol.encodeSaveRequest(300)], [100, 0, 0xac, 0x02])
  assert.deepEqual([...protocol.encodeSaveAnswer(7)], [100, 1, 7])
  assert.deepEqual([...protocol.encodeSaveAnswer(7, 'no')], [100, 2, 7, 2, 110, 111])
  assert.deepEqual(read(protocol.encodeSaveAnswer(300)), [{ type: 'saved', id: 300 }])
  assert.deepEqual(read(protocol.encodeSaveAnswer(1, 'disk full')), [{ type: 'save-error', id: 1, reason: 'disk full' }])
})

test('every message of a frame is read, updates applied with the origin', () => {
  const source = new Y.Doc()
  source.getText('t').insert(0, 'abc')
  const doc = new Y.Doc()
  const origins = []
  doc.on('update', (_u, origin) => origins.push(origin))
  const frame = concat(
    protocol.encodeUpdate(Y.encodeStateAsUpdate(source)),
    protocol.encodeSaveAnswer(1),
    protocol.encodeSyncStep1(source),
    protocol.encodeQueryAwareness()
  )
  const seen = read(frame, doc)
  assert.deepEqual(seen.map(m => m.type), ['sync-update', 'saved', 'sync-step-1', 'query-awareness'])
  assert.equal(doc.getText('t').toString(), 'abc')
  assert.deepEqual(origins, ['origin'])
})

test('an unknown message type ends the frame without an error', () => {
  const unknown = new Uint8Array([42, 1, 2, 3])
  const seen = read(concat(protocol.encodeSaveAnswer(1), unknown, protocol.encodeSaveAnswer(2)))
  assert.deepEqual(seen, [{ type: 'saved', id: 1 }])
  // Unknown sync and save sub-types too.
  assert.deepEqual(read(new Uint8Array([0, 9, 1, 2])), [])
  assert.deepEqual(read(new Uint8Array([100, 9, 1])), [])
  // A permission-denied auth message is reported.
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, protocol.MESSAGE_AUTH)
  encoding.writeVarUint(enc, 0)
  encoding.writeVarString(enc, 'read-only')
  assert.deepEqual(read(encoding.toUint8Array(enc)), [{ type: 'auth-denied', reason: 'read-only' }])
})
