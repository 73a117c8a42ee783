// The provider against the real relay binary.

import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { WebSocket } from 'ws'
import { WebsocketProvider } from 'y-websocket'
import { IDBFactory } from 'fake-indexeddb'
import { relayTest } from '../../tests/js-support/relay-test.mjs'
import { loaded, provider, readFromRelay, saveStatusIs, synced } from './support/clients.mjs'
import { waitFor, waitForEvent } from '../../tests/js-support/wait.mjs'
import { prng, seedFromEnv } from '../../tests/js-support/random.mjs'

const fast = { initialMs: 20, maxMs: 200 }

relayTest('two providers converge, late joiners get everything, awareness comes and goes', {}, async (t, relay, scope) => {
  const seed = seedFromEnv()
  t.diagnostic(`seed ${seed}`)
  const rand = prng(seed)
  const room = 'notes/monday 50%'
  const a = provider(scope, relay.url, room)
  const b = provider(scope, relay.url, room)
  await synced(a, b)
  for (let i = 0; i < 200; i++) {
    const p = rand() < 0.5 ? a : b
    const text = p.doc.getText('text')
    if (text.length > 0 && rand() < 0.3) {
      const at = Math.floor(rand() * text.length)
      text.delete(at, Math.min(text.length - at, 1 + Math.floor(rand() * 3)))
    } else {
      text.insert(Math.floor(rand() * (text.length + 1)), String.fromCharCode(97 + Math.floor(rand() * 26)))
    }
    if (rand() < 0.1) p.doc.getMap('map').set(`k${i % 5}`, i)
  }
  const state = p => JSON.stringify([p.doc.getText('text').toString(), Object.entries(p.doc.getMap('map').toJSON()).sort()])
  await waitFor(() => state(a) === state(b), { what: () => `a and b to converge: ${state(a)} | ${state(b)}` })
  await Promise.all([saveStatusIs(a, 'saved'), saveStatusIs(b, 'saved')])
  assert.equal(a.saveStatus, 'saved')
  const late = provider(scope, relay.url, room)
  await synced(late)
  assert.equal(late.doc.getText('text').toString(), a.doc.getText('text').toString())
  assert.deepEqual(late.doc.getMap('map').toJSON(), a.doc.getMap('map').toJSON())

  a.awareness.setLocalStateField('user', { name: 'alice' })
  await waitFor(() => b.awareness.getStates().get(a.doc.clientID)?.user?.name === 'alice', { what: 'b to see alice' })
  a.destroy()
  await waitFor(() => !b.awareness.getStates().has(a.doc.clientID), { what: 'b to drop alice after destroy' })
})

relayTest('the local awareness state is visible again right after a reconnect', {}, async (t, relay, scope) => {
  const a = provider(scope, relay.url, 'awareness')
  const b = provider(scope, relay.url, 'awareness')
  await synced(a, b)
  a.awareness.setLocalStateField('user', 'a')
  await waitFor(() => b.awareness.getStates().get(a.doc.clientID)?.user === 'a', { what: 'b to see a' })
  for (let i = 0; i < 3; i++) {
    a.disconnect()
    // The relay announces a's removal (with a's clock + 1) and remembers that clock.
    await waitFor(() => !b.awareness.getStates().has(a.doc.clientID), { what: 'b to drop a' })
    assert.equal(a.awareness.getStates().size, 1, 'a dropped the remote states')
    a.connect()
    // Well before the 15 s renewal of the awareness protocol.
    await waitFor(() => b.awareness.getStates().get(a.doc.clientID)?.user === 'a', { timeout: 5000, what: `b to see a again (round ${i})` })
    await waitFor(() => a.awareness.getStates().has(b.doc.clientID), { timeout: 5000, what: 'a to see b again' })
  }
})

relayTest('interop with a stock y-websocket 3 provider in the same room', {}, async (t, relay, scope) => {
  const room = 'shared/room #1'
  const ours = provider(scope, relay.url, room)
  const stockDoc = new Y.Doc()
  // The stock provider does not encode the room name: pass it encoded (see PROTOCOL.md).
  const stock = new WebsocketProvider(relay.url, encodeURIComponent(room), stockDoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  scope.defer(() => { stock.destroy(); stockDoc.destroy() })
  await synced(ours)
  await waitFor(() => stock.synced, { what: 'the stock provider to sync' })
  ours.doc.getText('text').insert(0, 'from ours. ')
  await waitFor(() => stockDoc.getText('text').toString() === 'from ours. ', { what: 'stock to get our edit' })
  stockDoc.getText('text').insert(stockDoc.getText('text').length, 'from stock.')
  await waitFor(() => ours.doc.getText('text').toString() === 'from ours. from stock.', { what: 'ours to get the stock edit' })
  await saveStatusIs(ours, 'saved')
  ours.awareness.setLocalStateField('user', 'ours')
  stock.awareness.setLocalStateField('user', 'stock')
  await waitFor(() => stock.awareness.getStates().get(ours.doc.clientID)?.user === 'ours', { what: 'stock to see our awareness' })
  await waitFor(() => ours.awareness.getStates().get(stockDoc.clientID)?.user === 'stock', { what: 'ours to see the stock awareness' })
  assert.equal(await readFromRelay(relay.url, room), 'from ours. from stock.')
})

relayTest('saving turns into saved only after the relay acknowledged it: never while the relay is frozen', {}, async (t, relay, scope) => {
  const room = 'frozen'
  const a = provider(scope, relay.url, room, { livenessTimeoutMs: 1000, backoff: fast })
  await synced(a)
  a.doc.getText('text').insert(0, 'before.')
  assert.equal(a.saveStatus, 'saving')
  await saveStatusIs(a, 'saved')
  const seen = []
  a.on('save-status', e => seen.push(e.status))

  relay.freeze() // SIGSTOP: sockets stay open, nothing is read, committed or answered
  a.doc.getText('text').insert(7, ' during.')
  assert.equal(a.saveStatus, 'saving')
  // Nothing arrives any more: the liveness timeout gives up on the connection...
  const [close] = await waitForEvent(a, 'connection-close', { timeout: 10_000 })
  assert.equal(close.code, 1006)
  assert.equal(a.saveStatus, 'offline-unsaved')
  // ... and on the next attempts too (the upgrade is never answered).
  await waitForEvent(a, 'connection-close', { timeout: 10_000, what: 'a second attempt to time out' })
  assert.ok(!seen.includes('saved'), `statuses while frozen: ${seen}`)
  assert.deepEqual(seen, ['saving', 'offline-unsaved'])

  relay.thaw()
  await saveStatusIs(a, 'saved', 20_000)
  // The acknowledgement means "on disk": kill the relay hard and read the room back.
  await relay.kill()
  await relay.restart()
  assert.equal(await readFromRelay(relay.url, room), 'before. during.')
})

relayTest('offline edits: offline-unsaved, then merged with remote edits and saved after reconnecting', {}, async (t, relay, scope) => {
  const room = 'offline-merge'
  const a = provider(scope, relay.url, room, { backoff: fast })
  const b = provider(scope, relay.url, room, { backoff: fast })
  await synced(a, b)
  a.doc.getText('text').insert(0, 'base')
  await waitFor(() => b.doc.getText('text').toString() === 'base')
  await Promise.all([saveStatusIs(a, 'saved'), saveStatusIs(b, 'saved')])

  await relay.stop()
  await waitFor(() => a.status !== 'connected' && b.status !== 'connected', { what: 'both to notice the stop' })
  assert.equal(a.synced, false)
  a.doc.getText('text').insert(4, ' +a')
  b.doc.getText('text').insert(0, 'b+ ')
  assert.equal(a.saveStatus, 'offline-unsaved')
  assert.equal(b.saveStatus, 'offline-unsaved')

  await relay.restart() // same port: the providers come back by themselves
  await Promise.all([saveStatusIs(a, 'saved', 20_000), saveStatusIs(b, 'saved', 20_000)])
  await waitFor(() => a.doc.getText('text').toString() === 'b+ base +a' && b.doc.getText('text').toString() === 'b+ base +a',
    { what: () => `merge (a: ${a.doc.getText('text')}, b: ${b.doc.getText('text')})` })
  assert.equal(await readFromRelay(relay.url, room), 'b+ base +a')
})

relayTest('the unsaved marker survives a reload while the relay is down; a reload of saved content says saved', {}, async (t, relay, scope) => {
  const room = 'reload'
  const idb = new IDBFactory()
  const opts = { offline: true, env: { indexedDB: idb }, backoff: fast }
  const first = provider(scope, relay.url, room, opts)
  await synced(first)
  first.doc.getText('text').insert(0, 'saved part')
  await saveStatusIs(first, 'saved')
  await relay.stop()
  await waitFor(() => first.status === 'disconnected')
  first.doc.getText('text').insert(10, ', offline part')
  await saveStatusIs(first, 'offline-unsaved') // once IndexedDB has it
  first.destroy()

  // Reload with the relay down: the content is there and still unsaved.
  const second = provider(scope, relay.url, room, opts)
  await loaded(second)
  assert.equal(second.doc.getText('text').toString(), 'saved part, offline part')
  assert.equal(second.saveStatus, 'offline-unsaved')
  second.destroy()

  // Once more, with a delete-only edit (no new items: only the delete set shows it).
  const third = provider(scope, relay.url, room, opts)
  await loaded(third)
  assert.equal(third.saveStatus, 'offline-unsaved')
  await relay.restart()
  await saveStatusIs(third, 'saved', 20_000)
  assert.equal(await readFromRelay(relay.url, room), 'saved part, offline part')
  await relay.stop()
  await waitFor(() => third.status === 'disconnected')
  third.doc.getText('text').delete(0, 6) // "part, offline part"
  await saveStatusIs(third, 'offline-unsaved')
  third.destroy()

  const fourth = provider(scope, relay.url, room, opts)
  await loaded(fourth)
  assert.equal(fourth.doc.getText('text').toString(), 'part, offline part')
  assert.equal(fourth.saveStatus, 'offline-unsaved', 'a deletion made offline is unsaved after a reload')
  await relay.restart()
  await saveStatusIs(fourth, 'saved', 20_000)
  fourth.destroy()

  // Everything acknowledged: a reload with the relay down says 'saved'.
  await relay.stop()
  const fifth = provider(scope, relay.url, room, opts)
  await loaded(fifth)
  assert.equal(fifth.doc.getText('text').toString(), 'part, offline part')
  assert.equal(fifth.saveStatus, 'saved')
  await relay.restart()
  assert.equal(await readFromRelay(relay.url, room), 'part, offline part')
})
