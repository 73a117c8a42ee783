// Details of the wire contract (PROTOCOL.md) checked with a raw client built from y-protocols and
// lib0 on a plain `ws` socket.

import assert from 'node:assert/strict'
import { relayTest } from '../js-support/relay-test.mjs'
import { MESSAGE_AWARENESS, MESSAGE_SYNC, awarenessStates, encoding, rawClient, syncProtocol, v3Client, waitSynced, waitText, Y } from './clients.mjs'
import { waitFor } from '../js-support/wait.mjs'

/** Does `update` hold client `clientID`'s structs up to `clock`? */
function updateCovers (update, clientID, clock) {
  const sv = Y.decodeStateVector(Y.encodeStateVectorFromUpdate(update))
  return (sv.get(clientID) ?? 0) >= clock
}

relayTest('on connect the relay sends sync step 1, then the awareness states', { timeout: 30_000 }, async (t, relay, scope) => {
  // An empty room: step 1 and no awareness message.
  const empty = await rawClient(scope, `${relay.url}/hello`, { syncOnOpen: false })
  await waitFor(() => empty.received.length >= 1, { what: 'a first message' })
  assert.deepEqual([empty.received[0].type, empty.received[0].sub], [MESSAGE_SYNC, syncProtocol.messageYjsSyncStep1])
  empty.close()

  const a = v3Client(scope, relay.url, 'hello')
  const b = v3Client(scope, relay.url, 'hello')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  a.doc.getText('text').insert(0, 'x')
  a.awareness.setLocalStateField('name', 'a')
  // Once b has a's awareness state and text, the relay has them too.
  await waitFor(() => b.awareness.getStates().get(a.doc.clientID)?.name === 'a' && b.doc.getText('text').length === 1, { what: 'b to see a' })

  const raw = await rawClient(scope, `${relay.url}/hello`, { syncOnOpen: false })
  await waitFor(() => raw.received.length >= 2, { what: 'two messages' })
  assert.deepEqual(raw.received.slice(0, 2).map(m => [m.type, m.sub]), [[MESSAGE_SYNC, syncProtocol.messageYjsSyncStep1], [MESSAGE_AWARENESS, undefined]])
  // The state vector in step 1 is the room's.
  const sv = Y.decodeStateVector(raw.received[0].payload)
  assert.equal(sv.get(a.doc.clientID), 1)
  const states = awarenessStates(raw.received[1].payload)
  assert.equal(states.get(a.doc.clientID)?.name, 'a', JSON.stringify([...states]))
})

relayTest('updates are broadcast to the others but not echoed to their sender', { timeout: 30_000 }, async (t, relay, scope) => {
  const other = v3Client(scope, relay.url, 'echo')
  await waitSynced(other.provider)
  const raw = await rawClient(scope, `${relay.url}/echo`)
  await raw.waitSynced()
  const before = raw.syncUpdates.length
  raw.doc.getText('text').insert(0, 'echo me')
  const clock = Y.getState(raw.doc.store, raw.doc.clientID)
  await waitText(other.doc, 'echo me', { who: 'the other client' })
  // The saved answer comes after the commit that holds the update, so an echo sent at or before
  // the commit would have arrived first.
  await raw.save()
  const echo = raw.syncUpdates.slice(before).find(u => updateCovers(u.update, raw.doc.clientID, clock))
  assert.equal(echo, undefined, 'the sender must not get its own update back')
})

relayTest('a frame holding several messages is read in full', { timeout: 30_000 }, async (t, relay, scope) => {
  const other = v3Client(scope, relay.url, 'multi')
  await waitSynced(other.provider)
  const raw = await rawClient(scope, `${relay.url}/multi`)
  await raw.waitSynced()
  // Build three updates on a scratch document and send them in one frame.
  const scratch = new Y.Doc()
  const updates = []
  scratch.on('update', u => updates.push(u))
  scratch.getText('text').insert(0, 'one ')
  scratch.getText('text').insert(4, 'two ')
  scratch.getMap('map').set('three', 3)
  const e = encoding.createEncoder()
  for (const u of updates) {
    encoding.writeVarUint(e, MESSAGE_SYNC)
    syncProtocol.writeUpdate(e, u)
  }
  raw.ws.send(encoding.toUint8Array(e))
  await waitText(other.doc, 'one two ', { who: 'the other client' })
  await waitFor(() => other.doc.getMap('map').get('three') === 3, { what: 'the third message of the frame' })
})

relayTest('unknown message types are ignored with the rest of their frame', { timeout: 30_000 }, async (t, relay, scope) => {
  const other = v3Client(scope, relay.url, 'unknown')
  await waitSynced(other.provider)
  const raw = await rawClient(scope, `${relay.url}/unknown`)
  await raw.waitSynced()
  raw.ws.send(Uint8Array.from([42, 1, 2, 3, 0xff, 0xff]))
  raw.doc.getText('text').insert(0, 'still here')
  await waitText(other.doc, 'still here', { who: 'the other client' })
  assert.equal(raw.closeInfo, null)
})

relayTest('a text frame closes the connection with 1003', { timeout: 30_000 }, async (t, relay, scope) => {
  const raw = await rawClient(scope, `${relay.url}/text-frame`)
  await raw.waitSynced()
  raw.ws.send('hello')
  const info = await raw.closed
  assert.equal(info.code, 1003)
})

relayTest('a truncated message closes the connection with 1002', { timeout: 30_000 }, async (t, relay, scope) => {
  const raw = await rawClient(scope, `${relay.url}/truncated`)
  await raw.waitSynced()
  // sync update announcing 100 bytes, carrying 2
  raw.ws.send(Uint8Array.from([0, 2, 100, 1, 2]))
  const info = await raw.closed
  assert.equal(info.code, 1002)
})

relayTest('saved acknowledgements: in order, once each, also with nothing to save and for duplicates', { timeout: 30_000 }, async (t, relay, scope) => {
  const raw = await rawClient(scope, `${relay.url}/acks`)
  await raw.waitSynced()
  // Nothing sent yet: answered at once.
  await raw.save()
  const text = raw.doc.getText('text')
  text.insert(0, 'abc')
  const full = Y.encodeStateAsUpdate(raw.doc)
  await raw.save()
  // A duplicate update needs no commit.
  raw.sendUpdate(full)
  await raw.save()
  const ids = raw.saves.answers.filter(a => a.kind === 'saved').map(a => a.id)
  assert.deepEqual(ids, [1, 2, 3])
  const reader = v3Client(scope, relay.url, 'acks')
  await waitSynced(reader.provider)
  assert.equal(reader.doc.getText('text').toString(), 'abc')
})
