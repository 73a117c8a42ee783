import { readFile } from 'node:fs/promises'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
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
  assert.deepEqual([...protocol.encodeSaveMessage({ type: 'saved', id: 7 })], [100, 1, 7])
  assert.deepEqual([...protocol.encodeSaveMessage({ type: 'save-error', id: 7, reason: 'no' })], [100, 2, 7, 2, 110, 111])
  assert.deepEqual(read(protocol.encodeSaveMessage({ type: 'saved', id: 300 })), [{ type: 'saved', id: 300 }])
  assert.deepEqual(read(protocol.encodeSaveMessage({ type: 'save-error', id: 1, reason: 'disk full' })), [{ type: 'save-error', id: 1, reason: 'disk full' }])
  // readSaveMessage, which the fake relay and tests/interop use, reads all three after the type.
  const body = frame => {
    const decoder = decoding.createDecoder(frame)
    assert.equal(decoding.readVarUint(decoder), protocol.MESSAGE_SAVE)
    return protocol.readSaveMessage(decoder)
  }
  assert.deepEqual(body(protocol.encodeSaveRequest(300)), { type: 'save-request', id: 300 })
  assert.deepEqual(body(protocol.encodeSaveMessage({ type: 'saved', id: 7 })), { type: 'saved', id: 7 })
  assert.deepEqual(body(protocol.encodeSaveMessage({ type: 'save-error', id: 7, reason: 'no' })), { type: 'save-error', id: 7, reason: 'no' })
  assert.equal(body(new Uint8Array([100, 9, 7])), null, 'an unknown sub-type')
})

test('every message of a frame is read, updates applied with the origin', () => {
  const source = new Y.Doc()
  source.getText('t').insert(0, 'abc')
  const doc = new Y.Doc()
  const origins = []
  doc.on('update', (_u, origin) => origins.push(origin))
  const frame = concat(
    protocol.encodeUpdate(Y.encodeStateAsUpdate(source)),
    protocol.encodeSaveMessage({ type: 'saved', id: 1 }),
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
  const seen = read(concat(protocol.encodeSaveMessage({ type: 'saved', id: 1 }), unknown, protocol.encodeSaveMessage({ type: 'saved', id: 2 })))
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

// PROTOCOL.md against protocol.js: a change on one side without the other fails here.

const PROTOCOL_MD = new URL('../../PROTOCOL.md', import.meta.url)

/**
 * The first table under the heading `title` of PROTOCOL.md, as objects keyed by the header cells.
 * @param {string} title e.g. '## Closing'
 * @returns {Promise<Array<Record<string, string>>>}
 */
async function tableUnder (title) {
  const lines = (await readFile(PROTOCOL_MD, 'utf8')).split('\n')
  const at = lines.indexOf(title)
  assert.ok(at >= 0, `PROTOCOL.md has a "${title}" section`)
  const start = lines.findIndex((line, i) => i > at && line.startsWith('|'))
  assert.ok(start > at, `a table under "${title}"`)
  const rows = []
  for (let i = start; i < lines.length && lines[i].startsWith('|'); i++) {
    rows.push(lines[i].slice(1, -1).split('|').map(cell => cell.trim()))
  }
  const [header, , ...body] = rows
  return body.map(cells => Object.fromEntries(header.map((name, i) => [name, cells[i] ?? ''])))
}

test('every close code the client knows is in PROTOCOL.md\'s "Closing" table, and every row says what the client does', async () => {
  const table = await tableUnder('## Closing')
  const rows = new Map()
  for (const row of table) {
    const code = Number(row.code)
    assert.ok(Number.isInteger(code), `a code: ${row.code}`)
    assert.ok(!rows.has(code), `${code} is in the table once`)
    rows.set(code, row)
  }
  const known = Object.entries(protocol).filter(([name]) => name.startsWith('CLOSE_'))
  assert.ok(known.length >= 6, `close codes of protocol.js: ${known.map(([name]) => name)}`)
  for (const [name, code] of known) {
    assert.ok(rows.has(code), `${name} (${code}) is in PROTOCOL.md's "Closing" table`)
  }
  for (const [code, row] of rows) {
    assert.equal(row.client.replace(/[*_`]/g, '').toLowerCase(), protocol.closeAction(code), `what the client does after ${code}`)
  }
  // The codes after which the client does not simply reconnect, as the provider documents them.
  assert.equal(protocol.closeAction(protocol.CLOSE_UNAUTHORIZED), 'reconnect with new credentials')
  assert.equal(protocol.closeAction(protocol.CLOSE_FORBIDDEN), 'reconnect with new credentials')
  assert.equal(protocol.closeAction(protocol.CLOSE_DOCUMENT_DELETED), 'do not reconnect')
})

test('the save extension has PROTOCOL.md\'s type, sub-types and names', async () => {
  const title = (await readFile(PROTOCOL_MD, 'utf8')).split('\n').find(line => line.startsWith('## Saved acknowledgements'))
  assert.match(title ?? '', new RegExp(`type ${protocol.MESSAGE_SAVE}\\)`))
  const table = await tableUnder(title)
  const names = new Map(table.map(row => [Number(row['sub-type']), /^\*([^*]+)\*/.exec(row.meaning)?.[1]]))
  assert.deepEqual(names, new Map([
    [protocol.SAVE_REQUEST, 'save request'],
    [protocol.SAVED, 'saved'],
    [protocol.SAVE_ERROR, 'save error']
  ]))
  // The messages the client reads are named alike.
  assert.deepEqual(read(protocol.encodeSaveMessage({ type: 'saved', id: 1 })), [{ type: 'saved', id: 1 }])
  assert.deepEqual(read(protocol.encodeSaveMessage({ type: 'save-error', id: 1, reason: 'x' })), [{ type: 'save-error', id: 1, reason: 'x' }])
})
