// The stock @y/websocket 4 provider (Yjs 14, `@y/y`), alone and together with y-websocket 3
// (Yjs 13) in one room.

import assert from 'node:assert/strict'
import { relayTest } from '../js-support/relay-test.mjs'
import { v3Client, waitSynced, waitText } from './clients.mjs'
import { v4Client, waitText4 } from './clients-v4.mjs'
import { waitFor } from '../js-support/wait.mjs'

relayTest('v4: two clients editing concurrently converge', { timeout: 60_000 }, async (t, relay, scope) => {
  const a = v4Client(scope, relay.url, 'v4-concurrent')
  const b = v4Client(scope, relay.url, 'v4-concurrent')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  const ta = a.doc.get('text')
  const tb = b.doc.get('text')
  // Same tick: neither has seen the other's edit.
  ta.insert(0, 'alpha ')
  tb.insert(0, 'beta ')
  await waitFor(() => ta.length === 11 && ta.toString() === tb.toString(),
    { what: () => `v4 clients to converge: a=${JSON.stringify(ta.toString())} b=${JSON.stringify(tb.toString())}` })
  for (let i = 0; i < 20; i++) {
    ta.insert(i % (ta.length + 1), `a${i}`)
    tb.delete(0, 1)
    tb.insert(tb.length, `b${i}`)
    await waitFor(() => ta.toString() === tb.toString(), { what: () => `round ${i}: a=${JSON.stringify(ta.toString())} b=${JSON.stringify(tb.toString())}` })
  }
})

relayTest('v4: a late joiner receives everything', { timeout: 60_000 }, async (t, relay, scope) => {
  const a = v4Client(scope, relay.url, 'v4-late')
  await waitSynced(a.provider)
  a.doc.get('text').insert(0, 'hello from v4')
  a.doc.get('map').setAttr('k', 'v')
  a.doc.get('array').push([1, 2, 3])
  const b = v4Client(scope, relay.url, 'v4-late')
  await waitSynced(b.provider)
  // b's sync step 2 may have been answered before a's edits reached the relay: wait for them.
  await waitText4(b.doc, 'hello from v4', { who: 'b' })
  await waitFor(() => b.doc.get('array').length === 3 && b.doc.get('map').getAttr('k') === 'v', { what: 'map and array at b' })
  const c = v4Client(scope, relay.url, 'v4-late')
  await waitSynced(c.provider)
  assert.equal(c.doc.get('text').toString(), 'hello from v4')
  assert.equal(c.doc.get('map').getAttr('k'), 'v')
  assert.deepEqual(c.doc.get('array').toArray(), [1, 2, 3])
})

relayTest('v4: awareness appears, and disappears on destroy and on a dropped connection', { timeout: 60_000 }, async (t, relay, scope) => {
  const a = v4Client(scope, relay.url, 'v4-aw')
  const b = v4Client(scope, relay.url, 'v4-aw')
  const c = v4Client(scope, relay.url, 'v4-aw')
  await Promise.all([a, b, c].map(x => waitSynced(x.provider)))
  a.awareness.setLocalStateField('user', { name: 'alice' })
  b.awareness.setLocalStateField('user', { name: 'bob' })
  const aid = a.awareness.clientID
  const bid = b.awareness.clientID
  await waitFor(() => c.awareness.getStates().get(aid)?.user?.name === 'alice' && c.awareness.getStates().get(bid)?.user?.name === 'bob',
    { what: 'alice and bob at c' })
  a.provider.destroy()
  await waitFor(() => !c.awareness.getStates().has(aid), { timeout: 10_000, what: 'alice to disappear at c after destroy' })
  b.provider.shouldConnect = false
  b.provider.ws.terminate()
  await waitFor(() => !c.awareness.getStates().has(bid), { timeout: 10_000, what: 'the relay to broadcast bob\'s removal after his connection dropped' })
})

relayTest('v3 (Yjs 13) and v4 (Yjs 14) clients exchange edits and awareness in one room', { timeout: 60_000 }, async (t, relay, scope) => {
  const old = v3Client(scope, relay.url, 'mixed')
  const neu = v4Client(scope, relay.url, 'mixed')
  await Promise.all([waitSynced(old.provider), waitSynced(neu.provider)])

  old.doc.getText('text').insert(0, 'from v3. ')
  await waitText4(neu.doc, 'from v3. ', { who: 'the v4 client (text from v3)' })
  neu.doc.get('text').insert(neu.doc.get('text').length, 'from v4.')
  await waitText(old.doc, 'from v3. from v4.', { who: 'the v3 client (text from v4)' })

  // Concurrent edits from both sides in one tick.
  old.doc.getText('text').insert(0, '[3]')
  neu.doc.get('text').insert(0, '[4]')
  await waitFor(() => old.doc.getText('text').toString() === neu.doc.get('text').toString() && old.doc.getText('text').length === 23,
    { what: () => `concurrent v3/v4 edits to converge: v3=${JSON.stringify(old.doc.getText('text').toString())} v4=${JSON.stringify(neu.doc.get('text').toString())}` })

  // Maps and arrays: Y.Map/Y.Array in Yjs 13 are the attributes/children of Y.Type in Yjs 14.
  old.doc.getMap('map').set('v3', 13)
  neu.doc.get('map').setAttr('v4', 14)
  old.doc.getArray('array').push(['x'])
  neu.doc.get('array').push(['y'])
  await waitFor(() => old.doc.getMap('map').get('v4') === 14 && neu.doc.get('map').getAttr('v3') === 13 &&
    old.doc.getArray('array').length === 2 && neu.doc.get('array').length === 2 &&
    JSON.stringify(old.doc.getArray('array').toArray()) === JSON.stringify(neu.doc.get('array').toArray()),
  { what: 'maps and arrays to converge across v3 and v4' })

  // A late v3 joiner and a late v4 joiner get the same state from the relay.
  const old2 = v3Client(scope, relay.url, 'mixed')
  const neu2 = v4Client(scope, relay.url, 'mixed')
  await Promise.all([waitSynced(old2.provider), waitSynced(neu2.provider)])
  assert.equal(old2.doc.getText('text').toString(), old.doc.getText('text').toString())
  assert.equal(neu2.doc.get('text').toString(), old.doc.getText('text').toString())

  // Awareness both ways.
  old.awareness.setLocalStateField('name', 'v3 user')
  neu.awareness.setLocalStateField('name', 'v4 user')
  await waitFor(() => neu.awareness.getStates().get(old.awareness.clientID)?.name === 'v3 user' &&
    old.awareness.getStates().get(neu.awareness.clientID)?.name === 'v4 user',
  { what: 'awareness across v3 and v4' })
})
