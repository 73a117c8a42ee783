// Cluster mode (issue 13, test 10): the stock y-websocket 3 and @y/websocket 4 clients against a
// relay that does not own their room. Three nats-servers (tests/js-support/nats.mjs) and two
// relays: a client on relay A loads the room first, so A takes its lease; the clients under test
// are on relay B, which forwards their traffic to A. Needs tests/install-nats.sh.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { startNatsCluster } from '../js-support/nats.mjs'
import { startRelay } from '../js-support/relay.mjs'
import { Scope } from '../js-support/relay-test.mjs'
import { v3Client, waitSynced, waitText } from './clients.mjs'
import { v4Client, waitText4 } from './clients-v4.mjs'
import { waitFor } from '../js-support/wait.mjs'

/**
 * Runs `fn` with a NATS cluster and two relays on it; prints their logs when it fails.
 * @param {(a: import('../js-support/relay.mjs').Relay, b: import('../js-support/relay.mjs').Relay, scope: Scope) => Promise<void>} fn
 */
async function withCluster (fn) {
  const nats = await startNatsCluster()
  const scope = new Scope()
  const relays = []
  try {
    relays.push(await startRelay({ args: nats.relayArgs('a') }))
    relays.push(await startRelay({ args: nats.relayArgs('b') }))
    await fn(relays[0], relays[1], scope)
  } catch (err) {
    const logs = relays.map(r => `--- relay ${r.args[r.args.indexOf('--node-name') + 1]} ---\n${r.stderr}`).join('\n')
    process.stderr.write(`\n${logs}\n${await nats.logs()}\n`)
    throw err
  } finally {
    try {
      await scope.dispose()
    } finally {
      for (const relay of relays) await relay.dispose()
      await nats.dispose()
    }
  }
}

test('stock y-websocket 3 clients work through a relay that does not own their room', { timeout: 90_000 }, async () => {
  await withCluster(async (a, b, scope) => {
    const room = 'cluster-v3'
    const owner = v3Client(scope, a.url, room)
    await waitSynced(owner.provider)
    owner.doc.getText('text').insert(0, 'from the owner. ')

    const x = v3Client(scope, b.url, room)
    const y = v3Client(scope, b.url, room)
    await Promise.all([waitSynced(x.provider), waitSynced(y.provider)])
    await waitText(x.doc, 'from the owner. ', { who: 'x on the forwarding relay' })
    x.doc.getText('text').insert(16, 'from x. ')
    await waitText(owner.doc, 'from the owner. from x. ', { who: 'the client on the owner' })
    await waitText(y.doc, 'from the owner. from x. ', { who: 'y on the forwarding relay' })

    // Awareness both ways.
    x.provider.awareness.setLocalStateField('user', 'x')
    await waitFor(() => owner.provider.awareness.getStates().get(x.doc.clientID)?.user === 'x', { what: "x's awareness on the owner" })
    owner.provider.awareness.setLocalStateField('user', 'o')
    await waitFor(() => x.provider.awareness.getStates().get(owner.doc.clientID)?.user === 'o', { what: "the owner's awareness on x" })

    // A late joiner on the forwarding relay gets everything in its first sync.
    const z = v3Client(scope, b.url, room)
    await waitSynced(z.provider)
    assert.equal(z.doc.getText('text').toString(), 'from the owner. from x. ')
    for (const c of [owner, x, y, z]) {
      assert.deepEqual(c.log.closes.filter(e => e !== null && e.code !== 1000), [], 'no client was closed')
    }
    // The premise: B did not own the room but forwarded it (relay/src/cluster/forward.rs logs
    // this line at info; update it here if that message changes).
    assert.match(b.stderr, /another relay owns the room; forwarding to it/, 'relay B forwarded the room to A')
  })
})

test('stock @y/websocket 4 clients work through a relay that does not own their room', { timeout: 90_000 }, async () => {
  await withCluster(async (a, b, scope) => {
    const room = 'cluster-v4'
    const owner = v4Client(scope, a.url, room)
    await waitSynced(owner.provider)
    owner.doc.get('text').insert(0, 'owner;')
    const x = v4Client(scope, b.url, room)
    await waitSynced(x.provider)
    await waitText4(x.doc, 'owner;', { who: 'v4 x on the forwarding relay' })
    x.doc.get('text').insert(6, 'x;')
    await waitText4(owner.doc, 'owner;x;', { who: 'the v4 client on the owner' })
  })
})
