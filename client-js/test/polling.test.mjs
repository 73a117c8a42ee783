// Long-polling against the real relay binary: a polling provider in a room with WebSocket ones
// (and a stock y-websocket provider), 'auto' falling back to long-polling and moving back to a
// WebSocket, order and exactly-once delivery while responses are lost, a session that stops
// polling, and the relay's 410 answers.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { performance } from 'node:perf_hooks'
import * as Y from 'yjs'
import { WebSocket } from 'ws'
import { WebsocketProvider } from 'y-websocket'
import { relayTest, Scope } from '../../tests/js-support/relay-test.mjs'
import { provider, saveStatusIs, synced } from './support/clients.mjs'
import { countingTimers } from './support/env.mjs'
import { waitFor, waitForEvent, withDeadline } from '../../tests/js-support/wait.mjs'
import { prng, seedFromEnv } from '../../tests/js-support/random.mjs'
import { splitMessages } from '../src/polling.js'

const fast = { initialMs: 20, maxMs: 200 }
const poll = { transport: 'polling' }

/** Resolves with `performance.now()` once `pred(doc)` holds, checked after every update. */
function when (doc, pred, what, timeout = 5000) {
  let check
  const p = new Promise(resolve => {
    check = () => { if (pred(doc)) resolve(performance.now()) }
    doc.on('update', check)
    check()
  })
  return withDeadline(p, timeout, what).finally(() => doc.off('update', check))
}

const text = p => p.doc.getText('text').toString()

function stats (ms) {
  const s = [...ms].sort((a, b) => a - b)
  const q = f => s[Math.min(s.length - 1, Math.floor(f * s.length))]
  return { median: +q(0.5).toFixed(2), p90: +q(0.9).toFixed(2), max: +s[s.length - 1].toFixed(2) }
}

/** WebSocket implementations that never get through, the three ways a blocked upgrade looks. */
const failingWebSockets = {
  // The constructor throws (no WebSocket in this page, or a blocked URL).
  throws: class { constructor () { throw new Error('WebSocket blocked') } },
  // The upgrade is refused: the socket closes without opening.
  refused: class {
    constructor () {
      this.readyState = 0
      this.onopen = this.onmessage = this.onclose = this.onerror = null
      setImmediate(() => {
        this.readyState = 3
        this.onerror?.({ type: 'error' })
        this.onclose?.({ code: 1006, reason: '', wasClean: false })
      })
    }

    send () {}
    close () {}
  },
  // The upgrade is never answered (a proxy holding it).
  hangs: class {
    constructor () {
      this.readyState = 0
      this.onopen = this.onmessage = this.onclose = this.onerror = null
    }

    send () {}
    close () {}
  }
}

relayTest('a polling and a WebSocket provider (and a stock y-websocket one) edit together: converge, awareness, saved', {}, async (t, relay, scope) => {
  const seed = seedFromEnv()
  t.diagnostic(`seed ${seed}`)
  const rand = prng(seed)
  const room = 'poll/mixed room'
  const polling = provider(scope, relay.url, room, poll)
  const socket = provider(scope, relay.url, room, { transport: 'websocket' })
  const transports = []
  polling.on('transport', e => transports.push(e.transport))
  await synced(polling, socket)
  assert.equal(polling.transport, 'polling')
  assert.equal(socket.transport, 'websocket')
  assert.deepEqual(transports, ['polling'])

  // Concurrent edits on both sides, without waiting for each other.
  for (let i = 0; i < 300; i++) {
    const p = rand() < 0.5 ? polling : socket
    const t = p.doc.getText('text')
    if (t.length > 0 && rand() < 0.3) {
      const at = Math.floor(rand() * t.length)
      t.delete(at, Math.min(t.length - at, 1 + Math.floor(rand() * 3)))
    } else {
      t.insert(Math.floor(rand() * (t.length + 1)), String.fromCharCode(97 + Math.floor(rand() * 26)))
    }
    if (rand() < 0.1) await new Promise(resolve => setImmediate(resolve))
  }
  await waitFor(() => text(polling) === text(socket), { what: () => `convergence: ${text(polling)} | ${text(socket)}` })
  await Promise.all([saveStatusIs(polling, 'saved'), saveStatusIs(socket, 'saved')])

  // A stock y-websocket 3 provider joins the room.
  const stockDoc = new Y.Doc()
  const stock = new WebsocketProvider(relay.url, encodeURIComponent(room), stockDoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  scope.defer(() => { stock.destroy(); stockDoc.destroy() })
  await waitFor(() => stock.synced, { what: 'the stock provider to sync' })
  assert.equal(stockDoc.getText('text').toString(), text(polling))

  // Awareness, all ways.
  polling.awareness.setLocalStateField('user', 'poller')
  socket.awareness.setLocalStateField('user', 'socket')
  stock.awareness.setLocalStateField('user', 'stock')
  await waitFor(() => socket.awareness.getStates().get(polling.doc.clientID)?.user === 'poller', { what: 'the socket to see the poller' })
  await waitFor(() => stock.awareness.getStates().get(polling.doc.clientID)?.user === 'poller', { what: 'the stock provider to see the poller' })
  await waitFor(() => polling.awareness.getStates().get(socket.doc.clientID)?.user === 'socket', { what: 'the poller to see the socket' })
  await waitFor(() => polling.awareness.getStates().get(stockDoc.clientID)?.user === 'stock', { what: 'the poller to see the stock provider' })

  // Edit-to-delivery delay, one edit at a time: to a polling and to a WebSocket receiver, and
  // from the poller to a WebSocket receiver.
  const toPoll = []
  const toSocket = []
  const fromPoll = []
  for (let i = 0; i < 30; i++) {
    const marker = `<${i}>`
    const a = when(polling.doc, d => d.getText('text').toString().includes(marker), `the poller to get ${marker}`)
    const b = when(stockDoc, d => d.getText('text').toString().includes(marker), `the stock provider to get ${marker}`)
    const start = performance.now()
    socket.doc.getText('text').insert(0, marker)
    toPoll.push(await a - start)
    toSocket.push(await b - start)
    const back = `[${i}]`
    const c = when(socket.doc, d => d.getText('text').toString().includes(back), `the socket to get ${back}`)
    const start2 = performance.now()
    polling.doc.getText('text').insert(0, back)
    fromPoll.push(await c - start2)
  }
  const report = `edit-to-delivery (ms, 30 edits, loopback, debug relay): WebSocket→polling ${JSON.stringify(stats(toPoll))}, ` +
    `WebSocket→WebSocket ${JSON.stringify(stats(toSocket))}, polling→WebSocket ${JSON.stringify(stats(fromPoll))}`
  t.diagnostic(report)
  await Promise.all([saveStatusIs(polling, 'saved'), saveStatusIs(socket, 'saved')])
  assert.equal(text(polling), text(socket))

  // Leaving removes the poller's presence for the others.
  polling.destroy()
  await waitFor(() => !socket.awareness.getStates().has(polling.doc.clientID), { what: 'the socket to drop the poller' })
  await waitFor(() => !stock.awareness.getStates().has(polling.doc.clientID), { what: 'the stock provider to drop the poller' })
})

for (const [how, FailingWebSocket] of Object.entries(failingWebSockets)) {
  relayTest(`auto: a WebSocket that ${how === 'throws' ? 'cannot be made' : how === 'refused' ? 'is refused' : 'never opens'} falls back to long-polling`, {}, async (t, relay, scope) => {
    const room = `auto/${how}`
    const other = provider(scope, relay.url, room)
    const p = provider(scope, relay.url, room, {
      WebSocketPolyfill: FailingWebSocket,
      websocketOpenTimeoutMs: 300,
      websocketRetry: { initialMs: 60_000, maxMs: 60_000 }
    })
    const closes = []
    p.on('connection-close', e => closes.push(e.code))
    await synced(p, other)
    assert.equal(p.transport, 'polling')
    assert.equal(other.transport, 'websocket')
    assert.deepEqual(closes, [1006], 'the failed WebSocket attempt is reported once')
    p.doc.getText('text').insert(0, 'over HTTP')
    await waitFor(() => text(other) === 'over HTTP', { what: 'the edit to reach the WebSocket provider' })
    await saveStatusIs(p, 'saved')
  })
}

relayTest('auto moves back to a WebSocket once one opens, without the others seeing it leave', {}, async (t, relay, scope) => {
  const room = 'auto/upgrade'
  let blocked = true
  let attempts = 0
  class SometimesWebSocket extends WebSocket {
    constructor (url) {
      attempts++
      if (blocked) throw new Error('WebSocket blocked')
      super(url)
    }
  }
  const watcher = provider(scope, relay.url, room)
  const p = provider(scope, relay.url, room, {
    WebSocketPolyfill: SometimesWebSocket,
    websocketRetry: { initialMs: 50, maxMs: 100 }
  })
  const transports = []
  const statuses = []
  const closes = []
  p.on('transport', e => transports.push(e.transport))
  p.on('status', e => statuses.push(e.status))
  p.on('connection-close', e => closes.push(e.code))
  p.awareness.setLocalStateField('user', 'mover')
  await synced(p, watcher)
  await waitFor(() => watcher.awareness.getStates().get(p.doc.clientID)?.user === 'mover', { what: 'the watcher to see the poller' })
  const removals = []
  watcher.awareness.on('change', ({ removed }) => { if (removed.includes(p.doc.clientID)) removals.push(Date.now()) })
  assert.equal(p.transport, 'polling')
  p.doc.getText('text').insert(0, 'polled. ')
  await saveStatusIs(p, 'saved')
  // The WebSocket is tried again now and then, and still fails.
  await waitFor(() => attempts >= 3, { what: 'WebSocket attempts while on long-polling' })
  assert.equal(p.transport, 'polling')
  assert.equal(await relay.metric('relay_connections'), 2)

  blocked = false
  await waitFor(() => p.transport === 'websocket', { what: 'the move to a WebSocket' })
  assert.deepEqual(transports, ['polling', 'websocket'])
  assert.deepEqual(statuses, ['connected'], 'connecting during the fallback, connected throughout the move')
  assert.deepEqual(closes, [1006], 'only the first WebSocket attempt is reported as a close')
  await waitFor(() => p.synced, { what: 'the sync over the WebSocket' })
  // The polling session is ended: one connection each.
  await waitFor(async () => await relay.metric('relay_connections') === 2, { what: 'two connections' })
  p.doc.getText('text').insert(0, 'socket. ')
  await saveStatusIs(p, 'saved')
  await waitFor(() => text(watcher) === 'socket. polled. ', { what: 'the watcher to get both edits' })
  assert.deepEqual(removals, [], 'the watcher never saw the mover leave')
  assert.equal(watcher.awareness.getStates().get(p.doc.clientID)?.user, 'mover')
  // After the move, no more attempts are made.
  const made = attempts
  p.awareness.setLocalStateField('user', 'moved')
  await waitFor(() => watcher.awareness.getStates().get(p.doc.clientID)?.user === 'moved', { what: 'awareness over the WebSocket' })
  assert.equal(attempts, made)
})

/**
 * A fetch for the poller that loses responses now and then: it waits until the relay answered,
 * then aborts the request (a GET's body is then unreadable; a POST fails), never two GETs or two
 * POSTs in a row (more failures in a row end the session, by design).
 * Records every GET that got through: its `ack`, the `x-relay-last-seq` and the messages.
 */
function lossyFetch (rand, rate) {
  const log = { opens: 0, delivered: [], lostGets: [], lostPosts: 0, acks: [] }
  const lastLost = { GET: false, POST: false }
  const lossy = async (url, init = {}) => {
    const method = init.method ?? 'GET'
    const session = /\/poll\/[0-9a-f]+(\?|$)/.test(url)
    if (!session) {
      if (method === 'POST') log.opens++
      return fetch(url, init)
    }
    if (method === 'DELETE') return fetch(url, init)
    const controller = new AbortController()
    const outer = init.signal
    if (outer?.aborted) controller.abort()
    outer?.addEventListener('abort', () => controller.abort(), { once: true })
    const ack = method === 'GET' ? Number(new URL(url).searchParams.get('ack')) : null
    if (method === 'GET') log.acks.push(ack)
    const res = await fetch(url, { ...init, signal: controller.signal })
    const hasMessages = method === 'GET' && res.status === 200 && res.headers.get('content-length') !== '0'
    const candidate = hasMessages || (method === 'POST' && res.status === 204)
    if (candidate && !lastLost[method] && rand() < rate) {
      lastLost[method] = true
      controller.abort() // the relay answered; the answer is lost on the way
      if (method === 'GET') {
        log.lostGets.push({ ack, last: Number(res.headers.get('x-relay-last-seq')) })
        return res // reading its body fails
      }
      log.lostPosts++
      throw new DOMException('the answer was lost', 'AbortError')
    }
    if (candidate) lastLost[method] = false
    if (hasMessages) {
      const last = Number(res.headers.get('x-relay-last-seq'))
      const body = new Uint8Array(await res.clone().arrayBuffer())
      log.delivered.push({ ack, last, messages: splitMessages(body) })
    }
    return res
  }
  return { fetch: lossy, log }
}

relayTest('order and exactly-once delivery across many polls: 3 writers × 200 edits, responses lost now and then', {}, async (t, relay, scope) => {
  const seed = seedFromEnv()
  t.diagnostic(`seed ${seed}`)
  const rand = prng(seed)
  const room = 'poll/exactly-once'
  const lossy = lossyFetch(rand, 0.15)
  const poller = provider(scope, relay.url, room, { ...poll, fetch: lossy.fetch })
  const closes = []
  poller.on('connection-close', e => closes.push(e))
  const writers = [0, 1, 2].map(() => provider(scope, relay.url, room, { transport: 'websocket' }))
  await synced(poller, ...writers)

  const arrived = (w) => Y.decodeStateVector(Y.encodeStateVector(poller.doc)).get(w.doc.clientID) ?? 0
  await Promise.all(writers.map(async (w, wi) => {
    for (let i = 0; i < 200; i++) {
      const t = w.doc.getText('text')
      t.insert(Math.floor(rand() * (t.length + 1)), `${'xyz'[wi]}${i};`)
      const clock = Y.getState(w.doc.store, w.doc.clientID)
      await when(poller.doc, () => arrived(w) >= clock, `writer ${wi} edit ${i} to reach the poller`)
      if (wi === 0 && i % 2 === 0) {
        const pt = poller.doc.getText('text')
        pt.insert(Math.floor(rand() * (pt.length + 1)), `p${i};`)
      }
    }
  }))
  const all = [poller, ...writers]
  await waitFor(() => all.every(p => text(p) === text(poller)), { what: 'every document to be the same' })
  await Promise.all(all.map(p => saveStatusIs(p, 'saved')))
  const log = lossy.log
  t.diagnostic(`${log.acks.length} polls, ${log.delivered.length} delivered with messages, ${log.lostGets.length} GET and ${log.lostPosts} POST answers lost`)
  assert.deepEqual(closes, [], 'the session survived every loss')
  assert.equal(log.opens, 1, 'one session')
  assert.ok(log.lostGets.length >= 10 && log.lostPosts >= 3, 'answers were lost')

  // Transport level: each delivered response starts right after the previous one and holds
  // exactly the messages after its ack, up to x-relay-last-seq.
  let seq = 0
  for (const { ack, last, messages } of log.delivered) {
    assert.equal(ack, seq, 'each poll acknowledges what the previous delivered response brought')
    assert.equal(messages.length, last - ack, `response after ${ack} holds ${last - ack} messages`)
    seq = last
  }
  // A lost response is asked for again with the same ack.
  for (const lost of log.lostGets) {
    const i = log.acks.indexOf(lost.ack)
    assert.ok(i >= 0 && log.acks.filter(a => a === lost.ack).length >= 2, `the poll after ${lost.ack} was repeated`)
  }
  // Yjs level: every writer's items reached the poller exactly once, none missing.
  const seen = new Map() // client → sorted [clock, length]
  for (const { messages } of log.delivered) {
    for (const m of messages) {
      if (m[0] !== 0 || m[1] === 0) continue // only sync step 2 and updates carry content
      const update = m.subarray(2 + varUintSize(m, 2)) // type, sub-type, varUint length
      for (const s of Y.decodeUpdate(update).structs) {
        if (s.constructor.name === 'Skip') continue
        const list = seen.get(s.id.client) ?? []
        list.push([s.id.clock, s.length])
        seen.set(s.id.client, list)
      }
    }
  }
  for (const w of writers) {
    const ranges = (seen.get(w.doc.clientID) ?? []).sort((a, b) => a[0] - b[0])
    let next = 0
    for (const [clock, length] of ranges) {
      assert.equal(clock, next, `writer ${w.doc.clientID}: items from clock ${clock} ${clock < next ? 'delivered twice' : `after a gap from ${next}`}`)
      next = clock + length
    }
    assert.equal(next, Y.getState(w.doc.store, w.doc.clientID), 'every item of the writer was delivered')
  }
  assert.ok(!seen.has(poller.doc.clientID), 'the relay sent none of the poller\'s own edits back')
})

/** Bytes of the varUint at `at`. */
function varUintSize (bytes, at) {
  let n = 0
  while (bytes[at + n] & 0x80) n++
  return n + 1
}

relayTest('a session that stops polling expires: its awareness is removed and the connection count goes down', {
  relay: { args: ['--client-timeout-secs', '3', '--keepalive-secs', '1', '--poll-hold-secs', '1'] }
}, async (t, relay, scope) => {
  const room = 'poll/expiry'
  let cut = false
  let idlePolls = 0
  const pending = new Set()
  // After `cut`, requests go nowhere (a machine that lost its network or went to sleep).
  const cuttable = async (url, init = {}) => {
    if (cut) return new Promise(resolve => pending.add(resolve))
    const res = await fetch(url, init)
    if ((init.method ?? 'GET') === 'GET' && res.headers.get('content-length') === '0') idlePolls++
    return res
  }
  scope.defer(() => { for (const r of pending) r(new Response(null, { status: 599 })) })
  const watcher = provider(scope, relay.url, room, { transport: 'websocket' })
  const p = provider(scope, relay.url, room, { ...poll, fetch: cuttable })
  p.awareness.setLocalStateField('user', 'vanishing')
  await synced(p, watcher)
  await waitFor(() => watcher.awareness.getStates().get(p.doc.clientID)?.user === 'vanishing', { what: 'the watcher to see the poller' })
  // Idle polls come back empty after the hold time (1 s); the session stays past the client
  // timeout (3 s).
  const idleBefore = idlePolls
  await waitFor(() => idlePolls >= idleBefore + 4, { timeout: 8000, what: 'four idle polls' })
  assert.equal(p.status, 'connected')
  assert.equal(await relay.metric('relay_connections'), 2)
  assert.ok(watcher.awareness.getStates().has(p.doc.clientID))

  cut = true
  const cutAt = Date.now()
  p.destroy() // its DELETE is lost too
  await waitFor(() => !watcher.awareness.getStates().has(p.doc.clientID), { timeout: 8000, what: 'the watcher to see the poller removed' })
  const after = Date.now() - cutAt
  t.diagnostic(`awareness removed ${after} ms after the client stopped (client timeout 3 s)`)
  assert.ok(after >= 1500, `removed after ${after} ms: before the session could have expired`)
  await waitFor(async () => await relay.metric('relay_connections') === 1, { timeout: 5000, what: 'relay_connections to go back to 1' })
  assert.ok(await relay.metric('relay_disconnects_total{reason="client_timeout"}') >= 1)
})

relayTest('the relay ends a session (malformed message): 410 with 1002, then a new session and a resync', {}, async (t, relay, scope) => {
  const room = 'poll/ended'
  const other = provider(scope, relay.url, room, { transport: 'websocket' })
  const p = provider(scope, relay.url, room, { ...poll, backoff: fast })
  await synced(p, other)
  p.doc.getText('text').insert(0, 'first. ')
  await saveStatusIs(p, 'saved')
  const closed = waitForEvent(p, 'connection-close')
  p._connector.send(new Uint8Array([0, 9])) // an unknown sync message type: a protocol error
  const [event] = await closed
  assert.equal(event.code, 1002)
  assert.equal(event.reason, 'protocol_error')
  await waitFor(() => p.synced && p.transport === 'polling', { what: 'a new session' })
  p.doc.getText('text').insert(7, 'second.')
  await saveStatusIs(p, 'saved')
  await waitFor(() => text(other) === 'first. second.', { what: 'the other provider to get both edits' })
})

test('an open refused with 401 or 403 is close 4401/4403: no retry until connect()', async () => {
  for (const status of [401, 403]) {
    const scope = new Scope()
    try {
      const urls = []
      const refusing = async url => {
        urls.push(url)
        return new Response(JSON.stringify({ error: 'no' }), { status, headers: { 'content-type': 'application/json' } })
      }
      const clock = countingTimers()
      const p = provider(scope, 'http://127.0.0.1:9', 'room/a', {
        ...poll,
        fetch: refusing,
        params: { token: 'bad' },
        backoff: { initialMs: 1, maxMs: 1 },
        env: { timers: clock.timers }
      })
      const [close] = await waitForEvent(p, 'connection-close')
      assert.equal(close.code, status + 4000)
      assert.match(close.reason, new RegExp(`HTTP ${status}: no`))
      assert.equal(p.status, 'disconnected')
      assert.equal(clock.pending, 0, 'nothing scheduled')
      assert.deepEqual(urls, ['http://127.0.0.1:9/poll?token=bad&room=room%2Fa'])
    } finally {
      await scope.dispose()
    }
  }
})

test('destroy() of a polling provider leaves no timer behind and ends the session', async () => {
  const scope = new Scope()
  try {
    const requests = []
    let polls = 0
    const fake = async (url, init = {}) => {
      const method = init.method ?? 'GET'
      requests.push(`${method} ${new URL(url).pathname}`)
      if (method === 'POST' && url.includes('/poll?')) return Response.json({ session: 'abc', hold_ms: 25000 })
      if (method === 'GET') {
        // The first poll brings nothing new; the next ones are held until aborted.
        if (polls++ === 0) return new Response(new Uint8Array(0), { headers: { 'x-relay-last-seq': '0' } })
        return new Promise((resolve, reject) => init.signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError'))))
      }
      return new Response(null, { status: 204 })
    }
    const clock = countingTimers()
    const p = provider(scope, 'http://127.0.0.1:9', 'room', { ...poll, fetch: fake, env: { timers: clock.timers } })
    await waitFor(() => p.status === 'connected' && polls >= 2, { what: 'the session to open and poll' })
    p.destroy()
    assert.equal(clock.pending, 0, 'timers and intervals')
    assert.equal(requests.at(-1), 'DELETE /poll/abc')
  } finally {
    await scope.dispose()
  }
})
