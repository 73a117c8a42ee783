// A slow reader must neither stall its room nor make the relay buffer without bound.
//
// A raw `ws` client joins the room and stops reading (its TCP socket is paused, so the kernel
// buffers fill and the relay can no longer write to it). Meanwhile two stock clients keep
// editing and updating their awareness in the same room. The relay must keep serving the two,
// drop the slow reader (PROTOCOL.md: close code 1013 when its outbound queue overflows), and keep
// its memory bounded.
//
// Why awareness too: the edits alone are a few MB, far too little for a memory limit to mean
// anything. A relay that buffered everything for the slow reader would hold all of the traffic
// below, about TRAFFIC_MB; the RSS limit is well below that, and well above what the relay needs
// for the room (a document of a few MB, and only the latest awareness state of each client).
// Awareness is not persisted, so this volume does not depend on the store's cache.

import assert from 'node:assert/strict'
import { relayTest } from '../js-support/relay-test.mjs'
import { MESSAGE_SYNC, WebSocket, encoding, syncProtocol, v3Client, waitSynced, Y } from './clients.mjs'
import { MB, randomAscii } from './helpers.mjs'
import { prng, seedFromEnv } from '../js-support/random.mjs'
import { waitFor, withDeadline } from '../js-support/wait.mjs'

const ROUNDS = 1700
const BLOB = 256 * 1024 // awareness payload per round
const EDIT = 2 * 1024 // each of the two clients inserts this much per round
const TRAFFIC_MB = Math.round(ROUNDS * (BLOB + 2 * EDIT) / MB)
const RSS_LIMIT = 300 * MB
const ROUND_DEADLINE = 5_000

// The awareness blob is the bulk of the traffic (it does not grow the document); it is over the
// relay's default state size limit (32 KiB), which this test raises.
const RELAY_ARGS = ['--max-awareness-state-bytes', String(BLOB + 1024)]

relayTest(`slow reader: the room keeps going, the reader is dropped, RSS stays below ${RSS_LIMIT / MB} MB (~${TRAFFIC_MB} MB of traffic)`, { timeout: 170_000, relay: { args: RELAY_ARGS } }, async (t, relay, scope) => {
  const seed = seedFromEnv()
  t.diagnostic(`seed ${seed}`)
  const rand = prng(seed)
  const a = v3Client(scope, relay.url, 'slow')
  const b = v3Client(scope, relay.url, 'slow')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])

  // The slow reader: joins, sends sync step 1 like any client, reads the relay's first message, then stops reading.
  const slow = new WebSocket(`${relay.url}/slow`)
  scope.defer(() => slow.terminate())
  let slowBytes = 0
  let slowClose = null
  const slowErrors = []
  slow.on('error', err => slowErrors.push(err.message))
  const slowClosed = new Promise(resolve => slow.on('close', (code, reason) => { slowClose = { code, reason: reason.toString() }; resolve(slowClose) }))
  await withDeadline(new Promise((resolve, reject) => {
    slow.once('open', () => {
      const e = encoding.createEncoder()
      encoding.writeVarUint(e, MESSAGE_SYNC)
      syncProtocol.writeSyncStep1(e, new Y.Doc())
      slow.send(encoding.toUint8Array(e))
    })
    slow.once('message', () => resolve())
    slow.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)))
  }), 10_000, 'the slow reader to join')
  slow.on('message', data => { slowBytes += data.length })
  slow._socket.pause()

  // Sample the relay's RSS for the whole run.
  const baselineRss = await relay.rss()
  let maxRss = baselineRss
  let sampling = true
  const sampler = (async () => {
    while (sampling) {
      try { maxRss = Math.max(maxRss, await relay.rss()) } catch { break }
      await new Promise(resolve => setTimeout(resolve, 100))
    }
  })()
  scope.defer(async () => { sampling = false; await sampler })

  const blob = randomAscii(BLOB, rand)
  const ta = a.doc.getText('text')
  const tb = b.doc.getText('text')
  let expectedLength = 0
  let slowestRound = 0
  const started = Date.now()
  for (let round = 0; round < ROUNDS; round++) {
    const t0 = Date.now()
    a.awareness.setLocalStateField('blob', blob)
    ta.insert(ta.length, randomAscii(EDIT, rand))
    tb.insert(0, randomAscii(EDIT, rand))
    expectedLength += 2 * EDIT
    await waitFor(() => ta.length === expectedLength && tb.length === expectedLength, {
      timeout: ROUND_DEADLINE,
      interval: 1,
      what: () => `round ${round}: a and b to see each other's edits (lengths ${ta.length}, ${tb.length}, expected ${expectedLength}; relay RSS so far ${(maxRss / MB).toFixed(0)} MB)`
    })
    slowestRound = Math.max(slowestRound, Date.now() - t0)
    if (round % 200 === 199) assert.equal(ta.toString(), tb.toString(), `a and b converged after round ${round}`)
  }
  const elapsed = Date.now() - started
  assert.equal(ta.toString(), tb.toString())
  assert.deepEqual(a.log.closes, [], 'a was never disconnected')
  assert.deepEqual(b.log.closes, [], 'b was never disconnected')
  sampling = false
  await sampler
  maxRss = Math.max(maxRss, await relay.rss())
  t.diagnostic(`${ROUNDS} rounds in ${elapsed} ms, slowest round ${slowestRound} ms; relay RSS ${(baselineRss / MB).toFixed(1)} MB at start, max ${(maxRss / MB).toFixed(1)} MB`)
  assert.ok(maxRss < RSS_LIMIT, `relay RSS peaked at ${(maxRss / MB).toFixed(1)} MB (limit ${RSS_LIMIT / MB} MB, ~${TRAFFIC_MB} MB sent to the slow reader)`)

  // The slow reader reads again: it finds what the kernel buffered, then the end of its connection.
  slow._socket.resume()
  const close = await withDeadline(slowClosed, 30_000,
    `the slow reader's connection to end (it has read ${(slowBytes / MB).toFixed(1)} MB so far; a relay that dropped it would have closed it)`)
  t.diagnostic(`slow reader closed with ${JSON.stringify(close)} after reading ${(slowBytes / MB).toFixed(1)} MB; errors ${JSON.stringify(slowErrors)}`)
  assert.ok(slowBytes < TRAFFIC_MB * MB / 2, `the slow reader got only part of the traffic (${(slowBytes / MB).toFixed(1)} MB)`)
  // 1013 if the close frame got through; 1006 if the relay had to drop the TCP connection without one.
  assert.ok([1013, 1006].includes(close.code), `close code ${close.code} (expected 1013, or 1006 when no close frame could be delivered)`)
})
