// Connection handling against small fake servers: liveness timeout, 4401/4403/4404, a stock server that
// never answers save requests, save errors, and the browser's online/offline/pagehide/beforeunload.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { fakeServer, fakeYjsServer } from './support/fake-relay.mjs'
import { provider, saveStatusIs, synced } from './support/clients.mjs'
import { Scope } from '../../tests/js-support/relay-test.mjs'
import { CountingWindow, countingTimers } from './support/env.mjs'
import { waitFor, waitForEvent, withDeadline } from '../../tests/js-support/wait.mjs'
import * as Y from 'yjs'
import { protocol } from '../src/index.js'

/** @param {(scope: Scope) => Promise<void>} fn */
async function scoped (fn) {
  const scope = new Scope()
  try {
    await fn(scope)
  } finally {
    await scope.dispose()
  }
}

test('liveness: a connection over which nothing arrives is closed and reopened', () => scoped(async scope => {
  const silent = await fakeServer() // accepts, then says nothing
  scope.defer(() => silent.close())
  const p = provider(scope, silent.url, 'room', { livenessTimeoutMs: 300, backoff: { initialMs: 10, maxMs: 20 } })
  await waitForEvent(p, 'status', { pred: e => e.status === 'connected', what: 'the first connection' })
  const openedAt = Date.now()
  const [close] = await waitForEvent(p, 'connection-close', { timeout: 5000 })
  const after = Date.now() - openedAt
  assert.equal(close.code, 1006)
  assert.match(close.reason, /nothing received for 300 ms/)
  assert.ok(after >= 290, `closed after ${after} ms, before the timeout`)
  await waitFor(() => silent.connections.length >= 2, { what: 'a reconnect' })
  // The server sees the dropped socket go away.
  await waitFor(() => silent.connections[0].ws.readyState === 3, { what: 'the first socket to be gone' })
}))

test('liveness: traffic keeps the connection open past the timeout', () => scoped(async scope => {
  let sent = 0
  const chatty = await fakeServer(ws => {
    // An empty awareness message every 50 ms, like the relay's keep-alive.
    const timer = setInterval(() => { ws.send(new Uint8Array([1, 1, 0])); sent++ }, 50)
    ws.on('close', () => clearInterval(timer))
  })
  scope.defer(() => chatty.close())
  const p = provider(scope, chatty.url, 'room', { livenessTimeoutMs: 400 })
  const closes = []
  p.on('connection-close', e => closes.push(e))
  await waitFor(() => sent >= 30, { what: '30 keep-alives (1.5 s, almost four timeouts)' })
  assert.deepEqual(closes, [])
  assert.equal(p.status, 'connected')
  assert.equal(chatty.connections.length, 1)
}))

for (const code of [4401, 4403]) {
  test(`close code ${code}: no retry until connect() is called, with new params`, () => scoped(async scope => {
    const server = await fakeServer((ws, req) => {
      if (!req.url.includes('token=good')) ws.close(code, 'no')
    })
    scope.defer(() => server.close())
    const clock = countingTimers()
    const p = provider(scope, server.url, 'room', {
      params: { token: 'bad' },
      backoff: { initialMs: 1, maxMs: 1 },
      env: { timers: clock.timers }
    })
    const [close] = await waitForEvent(p, 'connection-close')
    assert.equal(close.code, code)
    assert.equal(p.status, 'disconnected')
    // Nothing is scheduled: no timer can ever reconnect (with a 1 ms backoff it would be at once).
    assert.equal(clock.pending, 0)
    assert.equal(server.connections.length, 1)
    assert.equal(server.connections[0].url, '/room?token=bad')

    p.params = { token: 'good' }
    p.connect()
    await waitFor(() => p.status === 'connected', { what: 'the connection with the new token' })
    assert.equal(server.connections.length, 2)
    assert.equal(server.connections[1].url, '/room?token=good')
  }))
}

test('a connection-close listener that connects again at once (a renewed token): connecting, never disconnected, nothing else scheduled', () => scoped(async scope => {
  // The relay closes the first connection with 4401; the application answers with a new token
  // from its 'connection-close' listener, as examples/src/connect.js does.
  const server = await fakeServer((ws, req) => {
    if (req.url.includes('token=old')) setImmediate(() => ws.close(protocol.CLOSE_UNAUTHORIZED, 'token expired'))
  })
  scope.defer(() => server.close())
  const clock = countingTimers()
  const p = provider(scope, server.url, 'room', {
    transport: 'websocket',
    params: { token: 'old' },
    env: { timers: clock.timers }
  })
  const statuses = []
  p.on('status', e => statuses.push(e.status))
  p.on('connection-close', event => {
    if (event.code !== protocol.CLOSE_UNAUTHORIZED) return
    p.params = { token: 'new' }
    p.connect()
  })
  await waitFor(() => server.connections.length === 2 && p.status === 'connected', { what: 'the connection with the new token' })
  assert.deepEqual(statuses, ['connected', 'connecting', 'connected'], 'the status followed the connection')
  assert.deepEqual(server.connections.map(c => c.url), ['/room?token=old', '/room?token=new'])
  // Only the liveness check runs: no reconnect left over from the close.
  assert.equal(clock.timeouts.size, 0)
}))

test('a new connection sends the awareness state before sync step 1 (the relay\'s step 2 then means it took the state)', () => scoped(async scope => {
  // The relay handles a connection's messages in order. Moving from long-polling to a WebSocket
  // ends the session when the socket's sync step 2 arrives: the awareness state must be on the
  // socket by then, or the others see this client leave (and come back).
  const firstMessages = []
  const server = await fakeServer(ws => {
    const kinds = []
    firstMessages.push(kinds)
    ws.on('message', data => {
      const bytes = new Uint8Array(data)
      kinds.push(bytes[0] === protocol.MESSAGE_SYNC ? `sync ${bytes[1]}` : bytes[0] === protocol.MESSAGE_AWARENESS ? 'awareness' : String(bytes[0]))
    })
  })
  scope.defer(() => server.close())
  const p = provider(scope, server.url, 'room', { transport: 'websocket', connect: false, backoff: { initialMs: 1, maxMs: 1 } })
  p.awareness.setLocalStateField('user', 'me')
  p.connect()
  await waitFor(() => firstMessages[0]?.length >= 2, { what: 'the first messages' })
  // Again on the next connection.
  server.connections[0].ws.close(1001, 'going away')
  await waitFor(() => firstMessages[1]?.length >= 2, { what: 'the first messages of the second connection' })
  for (const kinds of firstMessages) assert.deepEqual(kinds.slice(0, 2), ['awareness', 'sync 0'])
}))

test('close code 4404 with unsaved edits: deleted (never offline-unsaved), whenSaved rejects, no reconnect, connect() does nothing', () => scoped(async scope => {
  // A stock-like server never answers save requests: the edit stays unsaved until the close.
  const server = await fakeYjsServer()
  scope.defer(() => server.close())
  const clock = countingTimers()
  const p = provider(scope, server.url, 'room', { backoff: { initialMs: 1, maxMs: 1 }, env: { timers: clock.timers } })
  await synced(p)
  p.doc.getText('text').insert(0, 'never saved')
  assert.equal(p.saveStatus, 'saving')
  const waiting = p.whenSaved()
  const statuses = []
  p.on('save-status', e => statuses.push(e.status))
  const deleted = waitForEvent(p, 'deleted')
  server.connections[0].ws.close(protocol.CLOSE_DOCUMENT_DELETED, 'document deleted')
  const [event] = await deleted
  assert.deepEqual(event, { unsaved: true })
  assert.deepEqual(statuses, ['deleted'], 'no moment of offline-unsaved: those edits will never be saved')
  await assert.rejects(waiting, /deleted/)
  assert.equal(clock.pending, 0, 'no reconnect scheduled (with a 1 ms backoff it would be at once)')
  p.connect()
  assert.equal(p.status, 'disconnected')
  assert.equal(server.connections.length, 1)
}))

test('reconnect delays grow while the server is unreachable and start again after an open', () => scoped(async scope => {
  // A port where nothing listens (yet).
  const probe = await fakeServer()
  const port = Number(new URL(probe.url).port)
  await probe.close()
  const clock = countingTimers()
  const delays = []
  const timers = { ...clock.timers, setTimeout: (fn, ms) => { delays.push(ms); return clock.timers.setTimeout(fn, ms) } }
  provider(scope, `ws://127.0.0.1:${port}`, 'room', {
    // WebSocket only: with 'auto' each round also tries long-polling, and sets an open timer.
    transport: 'websocket',
    backoff: { initialMs: 8, maxMs: 64 },
    env: { timers, random: () => 0.5 }
  })
  await waitFor(() => delays.length >= 6, { what: 'six failed attempts' })
  assert.deepEqual(delays.slice(0, 6), [6, 12, 24, 48, 48, 48], 'doubling, 3/4 of the base with random 0.5, capped at 64')

  // The server comes up: the next attempt opens, and the backoff starts again.
  const server = await fakeServer(ws => ws.close(1013, 'try later'), { port })
  scope.defer(() => server.close())
  await waitFor(() => server.connections.length >= 3, { what: 'attempts against the server that closes at once' })
  const afterOpen = delays.slice(delays.findIndex((d, i) => i > 0 && d < delays[i - 1]))
  assert.equal(afterOpen[0], 6, `after a successful open the delay is back to the first one: ${delays}`)
}))

test('a stock server that never answers save requests: edits sync, the status stays saving', () => scoped(async scope => {
  const server = await fakeYjsServer()
  scope.defer(() => server.close())
  const a = provider(scope, server.url, 'room')
  const b = provider(scope, server.url, 'room')
  await synced(a, b)
  assert.equal(a.saveStatus, 'saved', 'nothing to save yet')
  a.doc.getText('text').insert(0, 'hello')
  await waitFor(() => b.doc.getText('text').toString() === 'hello', { what: 'b to get the edit through the stock server' })
  await waitFor(() => server.saveRequests.length >= 3, { what: 'the server to drop our save requests' })
  assert.equal(server.doc.getText('text').toString(), 'hello')
  assert.equal(a.saveStatus, 'saving')
  assert.equal(b.saveStatus, 'saved', 'b made no edit')
}))

test('a save error gives error until a later saved', () => scoped(async scope => {
  const held = []
  const server = await fakeYjsServer({
    onSaveRequest: (ws, id) => {
      ws.send(protocol.encodeSaveMessage({ type: 'save-error', id, reason: 'disk full' }))
      held.push(() => ws.send(protocol.encodeSaveMessage({ type: 'saved', id })))
    }
  })
  scope.defer(() => server.close())
  const p = provider(scope, server.url, 'room')
  await synced(p)
  const errored = waitForEvent(p, 'save-status', { pred: e => e.status === 'error' })
  p.doc.getText('text').insert(0, 'x')
  const [event] = await errored
  assert.deepEqual(event, { status: 'error', error: 'disk full' })
  // Both requests (after sync step 2, after the edit) got their save error.
  await waitFor(() => held.length >= 2, { what: 'the save request for the edit' })
  assert.equal(p.saveStatus, 'error')
  assert.equal(p.saveError, 'disk full')
  const waiting = withDeadline(p.whenSaved(), 10_000, 'saved')
  for (const answer of held.splice(0)) answer()
  await waiting
  assert.equal(p.saveStatus, 'saved')
  assert.equal(p.saveError, null)
}))

test('window events: offline drops the connection, online reconnects at once, pagehide clears awareness', () => scoped(async scope => {
  const server = await fakeYjsServer({ onSaveRequest: (ws, id) => ws.send(protocol.encodeSaveMessage({ type: 'saved', id })) })
  scope.defer(() => server.close())
  const win = new CountingWindow()
  // A backoff far longer than the test's deadlines: only the online event can bring it back.
  const p = provider(scope, server.url, 'room', { env: { window: win }, backoff: { initialMs: 120_000, maxMs: 120_000 } })
  const other = provider(scope, server.url, 'room')
  await synced(p, other)
  p.awareness.setLocalStateField('user', 'p')
  await waitFor(() => other.awareness.getStates().has(p.doc.clientID), { what: 'other to see p' })

  win.dispatchEvent(new Event('offline'))
  assert.equal(p.status, 'disconnected')
  assert.equal(p.synced, false)
  p.doc.getText('text').insert(0, 'offline edit')
  assert.equal(p.saveStatus, 'offline-unsaved')
  const unload = new Event('beforeunload', { cancelable: true })
  win.dispatchEvent(unload)
  assert.equal(unload.defaultPrevented, true, 'warns before unload while unsaved')

  win.dispatchEvent(new Event('online'))
  await saveStatusIs(p, 'saved', 5000)
  assert.equal(server.doc.getText('text').toString(), 'offline edit')
  const unload2 = new Event('beforeunload', { cancelable: true })
  win.dispatchEvent(unload2)
  assert.equal(unload2.defaultPrevented, false, 'no warning once saved')
  assert.equal(win.listeners.get('beforeunload'), 0, 'the listener is only there while unsaved')

  await waitFor(() => other.awareness.getStates().has(p.doc.clientID), { what: 'other to see p again' })
  win.dispatchEvent(new Event('pagehide'))
  assert.equal(p.awareness.getLocalState(), null)
  await waitFor(() => !other.awareness.getStates().has(p.doc.clientID), { what: 'other to drop p after pagehide' })
}))

test('save requests go out only after sync step 2: edits made offline are never claimed saved early', () => scoped(async scope => {
  // A server that sends its sync step 1 only after the client's first update, answers every save
  // request at once, and logs what it received in order.
  const log = []
  const serverDoc = new Y.Doc()
  const server = await fakeServer(ws => {
    ws.on('message', data => {
      const bytes = new Uint8Array(data)
      const kind = bytes[0] === 0 ? ['step1', 'step2', 'update'][bytes[1]] : bytes[0] === 100 ? 'save-request' : 'awareness'
      log.push(kind)
      if (kind === 'update' && !log.includes('sent-step1')) {
        log.push('sent-step1')
        ws.send(protocol.encodeSyncStep1(serverDoc))
      }
      if (kind === 'save-request') ws.send(protocol.encodeSaveMessage({ type: 'saved', id: bytes[2] }))
    })
  })
  scope.defer(() => server.close())
  const p = provider(scope, server.url, 'room', { connect: false })
  p.doc.getText('t').insert(0, 'made offline')
  const seen = []
  p.on('save-status', e => seen.push(e.status))
  p.connect()
  await waitFor(() => p.status === 'connected', { what: 'the connection' })
  p.doc.getText('t').insert(0, 'made online, ')
  await saveStatusIs(p, 'saved')
  const step2 = log.indexOf('step2')
  assert.ok(step2 > 0, `log: ${log}`)
  assert.ok(log.indexOf('save-request') > step2, `a save request before sync step 2: ${log}`)
  assert.deepEqual(seen, ['saving', 'saved'])
}))
