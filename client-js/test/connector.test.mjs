// The connector alone, with fake transports and a clock that moves only when a test says: the
// fallback to long-polling, the open timeout, the probe back to a WebSocket and the switch,
// backoff, the close codes that stop it, disconnect(), wake() and drop(). No relay, no sockets.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Connector, transportKinds } from '../src/connector.js'
import { protocol } from '../src/index.js'
import { manualClock } from './support/env.mjs'

/** A transport that does what the test tells it to, and records what the connector did to it. */
class FakeTransport {
  constructor (kind, handlers) {
    this.kind = kind
    this.handlers = handlers
    /** 'connecting' | 'open' | 'closed' */
    this.state = 'connecting'
    this.sent = []
    /** how the connector ended it (`close()`), or null */
    this.closedWith = null
  }

  get isOpen () { return this.state === 'open' }
  send (message) { if (this.isOpen) this.sent.push(message) }
  close (code, reason) {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.closedWith = { code, reason }
  }

  drop (reason) {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.handlers.onClose({ code: protocol.CLOSE_ABNORMAL, reason, wasClean: false })
  }

  // What the other side does:
  open () { this.state = 'open'; this.handlers.onOpen() }
  receive (data) { this.handlers.onMessage(data) }
  closeFromRelay (code, reason = '') {
    this.state = 'closed'
    this.handlers.onClose({ code, reason, wasClean: true })
  }
}

const WEBSOCKET_OPEN_TIMEOUT_MS = 1000
const RETRY = { initialMs: 100, maxMs: 800 }
const PROBE = { initialMs: 10_000, maxMs: 40_000 }

/**
 * A connector on fake transports. `blocked[kind]`: making that transport throws (no WebSocket in
 * the page, a blocked URL). The log holds what the connector told its owner, in order.
 */
function setup ({ kinds = ['websocket', 'polling'], blocked = {} } = {}) {
  const clock = manualClock()
  /** @type {FakeTransport[]} */
  const made = []
  const log = []
  const handlers = {
    onConnecting: () => log.push('connecting'),
    onOpen: (kind, switched) => log.push(`open ${kind}${switched ? ' (switched)' : ''}`),
    onMessage: data => log.push(`message ${new TextDecoder().decode(data)}`),
    onClose: (event, { fallback }) => log.push(`close ${event.code}${fallback ? ' (fallback)' : ''}`),
    onError: () => log.push('error')
  }
  const connector = new Connector({
    kinds,
    createTransport: (kind, h) => {
      if (blocked[kind]) throw new Error(`${kind} blocked`)
      const t = new FakeTransport(kind, h)
      made.push(t)
      return t
    },
    timers: clock.timers,
    random: () => 1, // no jitter: the delays are the base delays
    backoff: RETRY,
    websocketRetry: PROBE,
    websocketOpenTimeoutMs: WEBSOCKET_OPEN_TIMEOUT_MS
  }, handlers)
  return { connector, clock, made, log, handlers, last: () => made[made.length - 1] }
}

const bytes = s => new TextEncoder().encode(s)

test('auto: a WebSocket that cannot be made falls back to long-polling at once, which is tried first next time', () => {
  const blocked = { websocket: true }
  const { connector, clock, made, log, last } = setup({ blocked })
  connector.connect()
  assert.deepEqual(log, ['connecting', 'error', 'close 1006 (fallback)', 'connecting'])
  assert.equal(last().kind, 'polling')
  last().open()
  assert.equal(log.at(-1), 'open polling')
  assert.equal(connector.isOpen, true)

  // The next connection starts with long-polling: no WebSocket attempt (and no open timeout) first.
  log.length = 0
  last().closeFromRelay(1001)
  assert.deepEqual(log, ['close 1001'])
  clock.advance(RETRY.initialMs)
  assert.deepEqual(log, ['close 1001', 'connecting'])
  assert.equal(last().kind, 'polling')
  assert.equal(made.filter(t => t.kind === 'websocket').length, 0)
})

test('auto: a WebSocket that neither opens nor fails is given up after the open timeout, then long-polling', () => {
  const { connector, clock, log, made, last } = setup()
  connector.connect()
  assert.equal(last().kind, 'websocket')
  clock.advance(WEBSOCKET_OPEN_TIMEOUT_MS - 1)
  assert.deepEqual(log, ['connecting'], 'still waiting for the WebSocket')
  clock.advance(1)
  assert.deepEqual(log, ['connecting', 'close 1006 (fallback)', 'connecting'])
  assert.equal(made[0].state, 'closed')
  assert.equal(last().kind, 'polling')
  last().open()
  assert.deepEqual(log.slice(3), ['open polling'])
})

test('a WebSocket that opens in time stays: no open timer, no long-polling', () => {
  const { connector, clock, made, log, last } = setup()
  connector.connect()
  last().open()
  assert.deepEqual(log, ['connecting', 'open websocket'])
  assert.equal(clock.pending, 0, 'the open timeout is cleared, and no probe is scheduled over a WebSocket')
  connector.send(bytes('x'))
  assert.deepEqual(made[0].sent, [bytes('x')])
  made[0].receive(bytes('hello'))
  assert.deepEqual(log.slice(2), ['message hello'])
})

test('when both fail, the backoff applies; each round starts with the WebSocket; an open resets the delays', () => {
  const { connector, clock, made, log, last } = setup()
  connector.connect()
  for (let round = 0; round < 4; round++) {
    assert.equal(last().kind, 'websocket', `round ${round} starts with the WebSocket`)
    last().closeFromRelay(1006)
    assert.equal(last().kind, 'polling')
    last().closeFromRelay(1006)
    assert.equal(connector.active, false)
    clock.advance(clock.delays.at(-1))
  }
  const reconnectDelays = clock.delays.filter(d => d !== WEBSOCKET_OPEN_TIMEOUT_MS)
  assert.deepEqual(reconnectDelays, [100, 200, 400, 800], 'doubling up to the cap')
  assert.deepEqual(log.slice(0, 5), ['connecting', 'close 1006 (fallback)', 'connecting', 'close 1006', 'connecting'])

  last().open() // the WebSocket of round 5
  last().closeFromRelay(1013)
  assert.equal(clock.delays.at(-1), RETRY.initialMs, 'back to the first delay after an open')
  assert.equal(made.length, 9)
})

test('only one transport: a failed attempt is not followed by another kind, and no open timeout is set', () => {
  for (const kind of ['websocket', 'polling']) {
    const { connector, clock, made, log, last } = setup({ kinds: [kind] })
    connector.connect()
    assert.equal(clock.pending, 0, `${kind}: no open timeout`)
    last().closeFromRelay(1006)
    assert.deepEqual(log, ['connecting', 'close 1006'])
    clock.advance(RETRY.initialMs)
    assert.deepEqual(made.map(t => t.kind), [kind, kind])
  }
})

test('while on long-polling a WebSocket is tried now and then; failures are not reported and the delay grows', () => {
  const { connector, clock, made, log } = setup()
  connector.connect()
  made[0].closeFromRelay(1006) // the WebSocket fails
  const session = made[1]
  session.open()
  log.length = 0
  clock.advance(PROBE.initialMs - 1)
  assert.equal(made.length, 2, 'no probe before its delay')
  clock.advance(1)
  assert.equal(made.length, 3)
  assert.equal(made[2].kind, 'websocket')
  made[2].closeFromRelay(1006) // refused
  clock.advance(PROBE.initialMs * 2 - 1)
  assert.equal(made.length, 3, 'the next probe waits twice as long')
  clock.advance(1)
  assert.equal(made.length, 4)
  // A probe that hangs is given up after the open timeout.
  clock.advance(WEBSOCKET_OPEN_TIMEOUT_MS)
  assert.equal(made[3].state, 'closed')
  clock.advance(PROBE.initialMs * 4)
  assert.equal(made.length, 5)
  assert.deepEqual(log, [], 'the owner hears nothing of failed probes')
  assert.equal(session.state, 'open')
  assert.equal(connector.transport, session)
})

test('a probe that opens takes over: switched, no close in between, the session ends once synced', () => {
  const { connector, clock, made, log } = setup()
  connector.connect()
  made[0].closeFromRelay(1006)
  const session = made[1]
  session.open()
  clock.advance(PROBE.initialMs)
  const socket = made[2]
  log.length = 0
  socket.open()
  assert.deepEqual(log, ['open websocket (switched)'])
  assert.equal(connector.transport, socket)
  // The session stays until the socket synced; what it still brings is not passed on.
  assert.equal(session.state, 'open')
  session.receive(bytes('late'))
  socket.receive(bytes('fresh'))
  connector.send(bytes('out'))
  assert.deepEqual(socket.sent, [bytes('out')])
  assert.deepEqual(session.sent, [])
  connector.synced()
  assert.deepEqual(session.closedWith, { code: 1000, reason: 'moved to a WebSocket' })
  assert.deepEqual(log, ['open websocket (switched)', 'message fresh'])
  assert.equal(clock.pending, 0, 'no more probes over a WebSocket')
  // The next connection starts with the WebSocket again.
  socket.closeFromRelay(1001)
  clock.advance(RETRY.initialMs)
  assert.equal(made.at(-1).kind, 'websocket')
})

test('a socket that closes before it synced takes the session it replaced with it', () => {
  const { connector, clock, made, log } = setup()
  connector.connect()
  made[0].closeFromRelay(1006)
  made[1].open()
  clock.advance(PROBE.initialMs)
  made[2].open()
  made[2].closeFromRelay(1011)
  assert.equal(made[1].state, 'closed')
  assert.equal(log.at(-1), 'close 1011')
  assert.equal(connector.active, false)
})

test('4401, 4403 and 4404 stop reconnecting until connect(), which starts a new round with the preferred transport', () => {
  for (const code of [protocol.CLOSE_UNAUTHORIZED, protocol.CLOSE_FORBIDDEN, protocol.CLOSE_DOCUMENT_DELETED]) {
    const { connector, clock, made, log, last } = setup()
    connector.connect()
    last().closeFromRelay(code) // before it opened: no fallback to long-polling either
    assert.deepEqual(log, ['connecting', `close ${code}`])
    assert.equal(clock.pending, 0, `${code}: nothing scheduled`)
    clock.advance(60_000)
    assert.equal(made.length, 1)
    connector.connect()
    assert.equal(made.length, 2)
    assert.equal(last().kind, 'websocket')
  }
})

test('disconnect() closes the connection, a probe and the timers, and reports a close with 1000', () => {
  const { connector, clock, made, log } = setup()
  assert.equal(connector.disconnect(), false, 'nothing to close')
  connector.connect()
  made[0].closeFromRelay(1006)
  made[1].open()
  clock.advance(PROBE.initialMs)
  assert.equal(made[2].state, 'connecting', 'a probe under way')
  log.length = 0
  assert.equal(connector.disconnect(), true)
  assert.deepEqual(log, ['close 1000'])
  assert.deepEqual(made[1].closedWith, { code: 1000, reason: 'client disconnected' })
  assert.deepEqual(made[2].closedWith, { code: 1000, reason: 'not needed' })
  assert.equal(clock.pending, 0)
  clock.advance(3_600_000)
  assert.equal(made.length, 3)

  // Also while waiting to reconnect.
  connector.connect()
  made[3].closeFromRelay(1006)
  made[4].closeFromRelay(1006)
  assert.equal(clock.pending, 1, 'the reconnect')
  assert.equal(connector.disconnect(), false)
  assert.equal(clock.pending, 0)
})

test('wake() reconnects at once with the first delay; drop() closes with 1006 and reconnects', () => {
  const { connector, clock, made, log, last } = setup({ kinds: ['websocket'] })
  connector.connect()
  for (let i = 0; i < 3; i++) {
    last().closeFromRelay(1006)
    clock.advance(clock.delays.at(-1))
  }
  last().closeFromRelay(1006)
  assert.equal(clock.delays.at(-1), 800)
  const before = made.length
  connector.wake()
  assert.equal(made.length, before + 1, 'at once')
  last().closeFromRelay(1006)
  assert.equal(clock.delays.at(-1), RETRY.initialMs, 'the backoff starts again')
  clock.advance(RETRY.initialMs)
  last().open()
  connector.wake()
  assert.equal(made.length, before + 2, 'nothing to do while connected')

  log.length = 0
  connector.drop('the browser went offline')
  assert.deepEqual(log, ['close 1006'])
  assert.equal(clock.pending, 1, 'a reconnect is scheduled')
  connector.disconnect()
  connector.wake()
  assert.equal(made.length, before + 2, 'nor after disconnect()')
})

test('the owner may call connect() or disconnect() from onClose: one attempt, no stray timer', () => {
  const s = setup({ kinds: ['websocket'] })
  s.handlers.onClose = event => {
    s.log.push(`close ${event.code}`)
    if (event.code === protocol.CLOSE_UNAUTHORIZED) s.connector.connect() // e.g. with a new token
  }
  s.connector.connect()
  s.last().open()
  s.last().closeFromRelay(protocol.CLOSE_UNAUTHORIZED)
  assert.equal(s.made.length, 2, 'the new attempt')
  assert.equal(s.clock.pending, 0, 'and nothing scheduled besides')
  s.last().open()
  assert.deepEqual(s.log, ['connecting', 'open websocket', 'close 4401', 'connecting', 'open websocket'])

  const t = setup({ kinds: ['websocket', 'polling'] })
  t.handlers.onClose = () => t.connector.disconnect()
  t.connector.connect()
  t.last().closeFromRelay(1006)
  assert.equal(t.made.length, 1, 'no fallback after disconnect()')
  assert.equal(t.clock.pending, 0)
})

test('the transport option: what it allows where the platform has it, and what it refuses', () => {
  const both = { webSocket: true, fetch: true }
  assert.deepEqual(transportKinds('auto', both), ['websocket', 'polling'])
  assert.deepEqual(transportKinds('auto', { webSocket: false, fetch: true }), ['polling'])
  assert.deepEqual(transportKinds('auto', { webSocket: true, fetch: false }), ['websocket'])
  assert.deepEqual(transportKinds('websocket', both), ['websocket'])
  assert.deepEqual(transportKinds('polling', both), ['polling'])
  assert.throws(() => transportKinds('carrier-pigeon', both), /transport must be one of auto, websocket, polling/)
  assert.throws(() => transportKinds('websocket', { webSocket: false, fetch: true }), /no WebSocket implementation/)
  assert.throws(() => transportKinds('polling', { webSocket: true, fetch: false }), /no fetch implementation/)
  assert.throws(() => transportKinds('auto', { webSocket: false, fetch: false }), /neither a WebSocket nor fetch/)
})
