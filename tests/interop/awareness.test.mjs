// Awareness between stock y-websocket 3 clients through the relay.
//
// The stock Awareness drops a remote state by itself after 30 s without renewal, so every
// deadline here for a removal is well below 30 s: a removal seen in time came from the network.

import assert from 'node:assert/strict'
import { relayTest } from '../js-support/relay-test.mjs'
import { MESSAGE_AWARENESS, awarenessStates, encodeQueryAwareness, rawClient, v3Client, waitSynced } from './clients.mjs'
import { waitFor } from '../js-support/wait.mjs'

const REMOVAL_DEADLINE = 10_000

/** Records the origin of every removal of `clientID` seen by `awareness`. */
function watchRemoval (awareness, clientID) {
  const origins = []
  awareness.on('change', ({ removed }, origin) => {
    if (removed.includes(clientID)) origins.push(origin)
  })
  return origins
}

relayTest('awareness: a remote state appears, reaches late joiners, and disappears when its provider is destroyed', { timeout: 60_000 }, async (t, relay, scope) => {
  const a = v3Client(scope, relay.url, 'aw')
  const b = v3Client(scope, relay.url, 'aw')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  const aid = a.doc.clientID
  a.awareness.setLocalStateField('user', { name: 'alice', color: '#ff0000' })
  await waitFor(() => b.awareness.getStates().get(aid)?.user?.name === 'alice', { what: 'alice to appear at b' })

  // A later client gets the room's awareness states on connect.
  const c = v3Client(scope, relay.url, 'aw')
  await waitSynced(c.provider)
  await waitFor(() => c.awareness.getStates().get(aid)?.user?.name === 'alice', { what: 'alice to appear at late joiner c' })

  // Changes travel too.
  a.awareness.setLocalStateField('user', { name: 'alice', color: '#00ff00' })
  await waitFor(() => b.awareness.getStates().get(aid)?.user?.color === '#00ff00', { what: 'alice\'s new color at b' })

  const removedAtB = watchRemoval(b.awareness, aid)
  const removedAtC = watchRemoval(c.awareness, aid)
  a.provider.destroy()
  await waitFor(() => !b.awareness.getStates().has(aid) && !c.awareness.getStates().has(aid),
    { timeout: REMOVAL_DEADLINE, what: 'alice to disappear at b and c' })
  assert.ok(!removedAtB.includes('timeout') && !removedAtC.includes('timeout'), 'removed by a message, not by the local 30 s timeout')
})

relayTest('awareness: the relay broadcasts the removal when a connection drops without saying goodbye', { timeout: 60_000 }, async (t, relay, scope) => {
  const a = v3Client(scope, relay.url, 'aw-drop')
  const b = v3Client(scope, relay.url, 'aw-drop')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  const aid = a.doc.clientID
  // (A fresh Awareness has clock 0, which peers never apply: give every state a clock of at least 1.)
  a.awareness.setLocalStateField('user', { name: 'alice' })
  b.awareness.setLocalStateField('user', { name: 'bob' })
  await waitFor(() => b.awareness.getStates().get(aid)?.user?.name === 'alice', { what: 'alice to appear at b' })

  const removedAtB = watchRemoval(b.awareness, aid)
  // Drop the TCP connection: the client sends no awareness removal of its own, and does not reconnect.
  a.provider.shouldConnect = false
  a.provider.ws.terminate()
  await waitFor(() => !b.awareness.getStates().has(aid), { timeout: REMOVAL_DEADLINE, what: 'the relay to broadcast alice\'s removal to b' })
  assert.ok(removedAtB.length > 0 && !removedAtB.includes('timeout'), `removal came from the relay (origins: ${removedAtB.map(String)})`)

  // A new client gets bob's state from the relay, but not alice's.
  const c = v3Client(scope, relay.url, 'aw-drop')
  await waitSynced(c.provider)
  await waitFor(() => c.awareness.getStates().get(b.doc.clientID)?.user?.name === 'bob', { what: 'bob to appear at c' })
  assert.ok(!c.awareness.getStates().has(aid), 'late joiner must not see the departed client')
})

relayTest('query awareness is answered with every known state', { timeout: 30_000 }, async (t, relay, scope) => {
  const a = v3Client(scope, relay.url, 'aw-query')
  const b = v3Client(scope, relay.url, 'aw-query')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  a.awareness.setLocalStateField('name', 'a')
  b.awareness.setLocalStateField('name', 'b')
  await waitFor(() => a.awareness.getStates().get(b.doc.clientID)?.name === 'b' && b.awareness.getStates().get(a.doc.clientID)?.name === 'a',
    { what: 'a and b to see each other' })

  const raw = await rawClient(scope, `${relay.url}/aw-query`)
  const holdsAandB = m => {
    if (m.type !== MESSAGE_AWARENESS) return false
    const names = [...awarenessStates(m.payload).values()].map(state => state?.name)
    return names.includes('a') && names.includes('b')
  }
  // On connect the relay sends every known state...
  await waitFor(() => raw.received.find(holdsAandB), { what: 'the initial awareness message holding a and b' })
  await raw.waitSynced()
  // ...and again when asked.
  const before = raw.received.length
  raw.ws.send(encodeQueryAwareness())
  await waitFor(() => raw.received.slice(before).find(holdsAandB), { what: 'an answer to query awareness holding the states of a and b' })
})

// Stock providers re-send every awareness change they apply, remote ones included
// (y-websocket's _awarenessUpdateHandler ignores the origin). A relay that forwarded every
// awareness message it receives would turn one change in a room of N clients into about N*N
// messages. Applying with the y-protocols rules and forwarding only what changed avoids that.
relayTest('awareness: re-sent states that change nothing are not forwarded (no N² echo storm)', { timeout: 60_000 }, async (t, relay, scope) => {
  const N = 20
  process.setMaxListeners(N * 2 + 20)
  const clients = Array.from({ length: N }, () => v3Client(scope, relay.url, 'aw-storm'))
  await Promise.all(clients.map(c => waitSynced(c.provider)))
  const watcher = clients[0]
  let awarenessMessages = 0
  watcher.provider.ws.addEventListener('message', ev => {
    if (new Uint8Array(ev.data)[0] === MESSAGE_AWARENESS) awarenessMessages++
  })
  const changer = clients[1]
  changer.awareness.setLocalStateField('name', 'changed')
  await waitFor(() => clients.every(c => c.awareness.getStates().get(changer.doc.clientID)?.name === 'changed'),
    { what: 'every client to see the change' })
  // Barrier: every client has re-sent the state (synchronously, on applying it) before this edit,
  // and the relay handles a connection's messages in order, so once the watcher has every edit it
  // has also got whatever the relay forwarded of the re-sent states.
  clients.forEach((c, i) => { if (c !== watcher) c.doc.getMap('barrier').set(String(i), true) })
  await waitFor(() => watcher.doc.getMap('barrier').size === N - 1, { what: 'the watcher to receive every barrier edit' })
  t.diagnostic(`one awareness change in a room of ${N}: the watcher got ${awarenessMessages} awareness message(s)`)
  assert.ok(awarenessMessages <= 2, `expected the change once (maybe plus a keep-alive), got ${awarenessMessages} awareness messages`)
})
