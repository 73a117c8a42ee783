// Durability: edits acknowledged with the "saved" extension (type 100) survive a graceful restart
// (SIGTERM) and a crash (SIGKILL right after the acknowledgement).

import assert from 'node:assert/strict'
import { relayTest } from '../js-support/relay-test.mjs'
import { attachSaveTracker, rawClient, v3Client, waitSynced, waitText, Y } from './clients.mjs'
import { waitFor } from '../js-support/wait.mjs'

relayTest('restart: acknowledged edits survive a graceful stop (SIGTERM) and restart', { timeout: 90_000 }, async (t, relay, scope) => {
  const a = v3Client(scope, relay.url, 'restart')
  await waitSynced(a.provider)
  const saves = attachSaveTracker(a.provider)
  const text = a.doc.getText('text')
  text.insert(0, 'before restart')
  a.doc.getMap('map').set('k', 'v')
  // The save request goes out on the provider's own socket, after the updates above.
  const id = await saves.save()
  assert.deepEqual(saves.answers.filter(x => x.id === id).at(-1), { kind: 'saved', id })

  await relay.stop() // SIGTERM; asserts exit code 0
  // The relay closed the client's socket with 1001 (going away) while shutting down.
  await waitFor(() => a.log.closes.length > 0, { what: 'the client to see its connection closed' })
  assert.equal(a.log.closes[0]?.code, 1001, `close code on shutdown: ${JSON.stringify(a.log.closes)}`)
  a.provider.disconnect() // the test connects anew below

  await relay.start()
  const b = v3Client(scope, relay.url, 'restart')
  await waitSynced(b.provider)
  assert.equal(b.doc.getText('text').toString(), 'before restart')
  assert.equal(b.doc.getMap('map').get('k'), 'v')
})

relayTest('restart: the room keeps working after a restart and a second one', { timeout: 90_000 }, async (t, relay, scope) => {
  const a = v3Client(scope, relay.url, 'twice')
  await waitSynced(a.provider)
  const saves = attachSaveTracker(a.provider)
  a.doc.getText('text').insert(0, 'one ')
  await saves.save()
  a.provider.disconnect()
  await relay.restart()

  const b = v3Client(scope, relay.url, 'twice')
  await waitSynced(b.provider)
  assert.equal(b.doc.getText('text').toString(), 'one ')
  const savesB = attachSaveTracker(b.provider)
  b.doc.getText('text').insert(4, 'two')
  await savesB.save()
  b.provider.disconnect()
  await relay.restart()

  const c = v3Client(scope, relay.url, 'twice')
  await waitSynced(c.provider)
  assert.equal(c.doc.getText('text').toString(), 'one two')
})

relayTest('crash: an acknowledged edit survives SIGKILL right after the acknowledgement', { timeout: 90_000 }, async (t, relay, scope) => {
  const writer = await rawClient(scope, `${relay.url}/crash`)
  await writer.waitSynced()
  const text = writer.doc.getText('text')
  // Several updates, one save request after them: the ack covers all of them.
  for (let i = 0; i < 20; i++) text.insert(text.length, `edit ${i}; `)
  writer.doc.getMap('map').set('last', 19)
  const expected = text.toString()
  await writer.save()
  await relay.kill() // SIGKILL, no chance to flush anything

  await relay.start()
  const reader = v3Client(scope, relay.url, 'crash')
  await waitSynced(reader.provider)
  assert.equal(reader.doc.getText('text').toString(), expected)
  assert.equal(reader.doc.getMap('map').get('last'), 19)
  assert.deepEqual(Y.encodeStateVector(reader.doc), Y.encodeStateVector(writer.doc))
})

relayTest('crash: every acknowledged edit of a stream of edits and acks survives SIGKILL', { timeout: 90_000 }, async (t, relay, scope) => {
  const writer = await rawClient(scope, `${relay.url}/crash-stream`)
  await writer.waitSynced()
  const text = writer.doc.getText('text')
  // Requests without waiting, answered in order; kill right after the last answer.
  const pending = []
  for (let i = 0; i < 50; i++) {
    text.insert(text.length, `${i},`)
    pending.push(writer.saves.request().saved)
  }
  await Promise.all(pending)
  const ids = writer.saves.answers.filter(a => a.kind === 'saved').map(a => a.id)
  assert.deepEqual(ids, Array.from({ length: 50 }, (_, i) => i + 1), 'answered once each, in request order')
  const expected = text.toString()
  await relay.kill()

  await relay.start()
  const reader = v3Client(scope, relay.url, 'crash-stream')
  await waitSynced(reader.provider)
  assert.equal(reader.doc.getText('text').toString(), expected)
})

relayTest('a client that reconnects after a crash resends what the relay lacks', { timeout: 90_000 }, async (t, relay, scope) => {
  // An edit that was never acknowledged may be lost by a crash; the stock client's sync step 2 on
  // reconnect brings it back. (Which edits were lost is not asserted: only the end state.)
  const a = v3Client(scope, relay.url, 'resend', { maxBackoffTime: 200 })
  await waitSynced(a.provider)
  a.doc.getText('text').insert(0, 'maybe lost')
  await relay.kill()
  await waitFor(() => a.log.closes.length > 0, { what: 'a to notice the crash' })
  a.provider.disconnect()
  await relay.start()
  // The provider's URL holds the old port: point it at the new one and reconnect.
  a.provider.serverUrl = relay.url
  a.provider.connect()
  await waitFor(() => a.provider.synced, { what: 'a to resync with the restarted relay' })
  const saves = attachSaveTracker(a.provider)
  await saves.save()
  const b = v3Client(scope, relay.url, 'resend')
  await waitSynced(b.provider)
  await waitText(b.doc, 'maybe lost', { who: 'b' })
})
