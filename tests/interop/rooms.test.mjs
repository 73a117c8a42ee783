// Rooms: isolation, and room names with '/', spaces and non-ASCII characters. The stock provider
// builds the URL as serverUrl + '/' + roomname without encoding; the WebSocket client's URL
// parser then percent-encodes spaces and non-ASCII characters, and the relay percent-decodes.

import assert from 'node:assert/strict'
import { relayTest } from '../js-support/relay-test.mjs'
import { rawClient, v3Client, waitSynced, waitText } from './clients.mjs'

const ROOMS = [
  'notes',
  'notes/monday',
  'notes/monday/agenda',
  'notes monday',
  'Grüße/ñandú',
  '日本語のノート',
  'emoji 🦀 room'
]

relayTest('rooms are isolated, including names with "/", spaces and non-ASCII characters', { timeout: 60_000 }, async (t, relay, scope) => {
  // Two clients per room; the writer writes the room's own name.
  const pairs = ROOMS.map(room => ({
    room,
    writer: v3Client(scope, relay.url, room),
    reader: v3Client(scope, relay.url, room)
  }))
  await Promise.all(pairs.flatMap(p => [waitSynced(p.writer.provider), waitSynced(p.reader.provider)]))
  for (const p of pairs) p.writer.doc.getText('text').insert(0, p.room)
  await Promise.all(pairs.map(p => waitText(p.reader.doc, p.room, { who: `reader in room ${JSON.stringify(p.room)}` })))

  // Late joiners get exactly their room's document: nothing from any other room.
  const late = pairs.map(p => ({ room: p.room, c: v3Client(scope, relay.url, p.room) }))
  await Promise.all(late.map(l => waitSynced(l.c.provider)))
  for (const l of late) {
    assert.equal(l.c.doc.getText('text').toString(), l.room, `late joiner of room ${JSON.stringify(l.room)}`)
  }
  // The readers never saw anything from another room either.
  for (const p of pairs) assert.equal(p.reader.doc.getText('text').toString(), p.room)

  // PROTOCOL.md: "/notes%2Fmonday is the room notes/monday".
  const raw = await rawClient(scope, `${relay.url}/notes%2Fmonday`)
  await raw.waitSynced()
  assert.equal(raw.doc.getText('text').toString(), 'notes/monday')
  // An explicitly percent-encoded non-ASCII path is the same room as the provider's.
  const raw2 = await rawClient(scope, `${relay.url}/${encodeURIComponent('Grüße/ñandú')}`)
  await raw2.waitSynced()
  assert.equal(raw2.doc.getText('text').toString(), 'Grüße/ñandú')
})

relayTest('invalid room names get HTTP 400 before the upgrade', { timeout: 30_000 }, async (t, relay, scope) => {
  const expect400 = async (path, why) => {
    await assert.rejects(rawClient(scope, `${relay.url}${path}`), err => {
      assert.equal(err.statusCode, 400, `${why}: expected HTTP 400, got ${err.message}`)
      return true
    }, why)
  }
  await expect400('/' + 'a'.repeat(513), '513-byte room name')
  await expect400('/bad%00name', 'room name with NUL')
  await expect400('/bad%0Aname', 'room name with a newline')
  await expect400('/%FF%FE', 'room name that is not UTF-8')
  // The limits are inclusive: 512 bytes of UTF-8 is fine.
  const ok = await rawClient(scope, `${relay.url}/${encodeURIComponent('ü'.repeat(256))}`)
  await ok.waitSynced()
})

relayTest('GET /healthz answers 200 ok', { timeout: 30_000 }, async (t, relay) => {
  const res = await fetch(`${relay.httpUrl}/healthz`)
  assert.equal(res.status, 200)
  assert.equal((await res.text()).trim(), 'ok')
  // Metrics exist (their names are not part of the contract).
  const metrics = await fetch(`${relay.httpUrl}/metrics`)
  assert.equal(metrics.status, 200)
  await metrics.text()
})
