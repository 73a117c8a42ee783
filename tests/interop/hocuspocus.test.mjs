// Unmodified `@hocuspocus/provider` 4.x and 3.x against the relay's root path: every test runs
// once per version. Convergence, late joiners, awareness, three documents on one websocket,
// read-only and expired tokens, Hocuspocus and y-websocket clients in one document, SyncStatus
// only after the commit, and durability across a restart and a crash.

import assert from 'node:assert/strict'
import { isDeepStrictEqual } from 'node:util'
import { relayTest } from '../js-support/relay-test.mjs'
import { mintToken } from '../js-support/token.mjs'
import { v3Client, waitSynced } from './clients.mjs'
import { VERSIONS, hocusClient, hocusSocket, waitAllSaved, waitFor, waitHocusSynced } from './clients-hocuspocus.mjs'

const SECRET = 'hocuspocus-interop-secret-0123456789'

/** A token for one document, signed by the relay's own `relay token` command. */
function token (doc, access, ttl = '1h') {
  return mintToken(SECRET, { doc, access, ttl })
}

const texts = (...clients) => clients.map(c => c.doc.getText('text').toString())

for (const version of Object.keys(VERSIONS)) {
  relayTest(`hocuspocus ${version}: two providers converge on text, map and array`, { timeout: 60_000 }, async (t, relay, scope) => {
    const a = hocusClient(scope, version, relay.url, 'converge')
    const b = hocusClient(scope, version, relay.url, 'converge')
    await Promise.all([waitHocusSynced(a.provider), waitHocusSynced(b.provider)])
    assert.deepEqual([a.log.authenticated, b.log.authenticated], [['read-write'], ['read-write']])
    // Same tick: neither has seen the other's edit.
    a.doc.getText('text').insert(0, 'alpha ')
    b.doc.getText('text').insert(0, 'beta ')
    a.doc.getMap('map').set('a', 1)
    b.doc.getMap('map').set('b', 2)
    a.doc.getArray('array').push(['x'])
    b.doc.getArray('array').push(['y'])
    await waitFor(() => {
      const [ta, tb] = texts(a, b)
      return ta.length === 11 && ta === tb &&
        isDeepStrictEqual(a.doc.getMap('map').toJSON(), b.doc.getMap('map').toJSON()) &&
        a.doc.getArray('array').length === 2 &&
        isDeepStrictEqual(a.doc.getArray('array').toJSON(), b.doc.getArray('array').toJSON())
    }, { what: () => `convergence: ${JSON.stringify(texts(a, b))}` })
    assert.deepEqual(a.doc.getMap('map').toJSON(), { a: 1, b: 2 })
    await Promise.all([waitAllSaved(a.provider), waitAllSaved(b.provider)])
  })

  relayTest(`hocuspocus ${version}: a late joiner gets everything`, { timeout: 60_000 }, async (t, relay, scope) => {
    const a = hocusClient(scope, version, relay.url, 'late')
    await waitHocusSynced(a.provider)
    a.doc.getText('text').insert(0, 'written before')
    a.doc.getMap('map').set('k', 'v')
    a.doc.getArray('array').push([1, 2, 3])
    await waitAllSaved(a.provider)
    const b = hocusClient(scope, version, relay.url, 'late')
    await waitHocusSynced(b.provider)
    assert.equal(b.doc.getText('text').toString(), 'written before')
    assert.equal(b.doc.getMap('map').get('k'), 'v')
    assert.deepEqual(b.doc.getArray('array').toArray(), [1, 2, 3])
  })

  relayTest(`hocuspocus ${version}: awareness both ways, with a Hocuspocus and a y-websocket client`, { timeout: 60_000 }, async (t, relay, scope) => {
    const a = hocusClient(scope, version, relay.url, 'aw')
    const b = hocusClient(scope, version, relay.url, 'aw')
    const y = v3Client(scope, relay.url, 'aw')
    await Promise.all([waitHocusSynced(a.provider), waitHocusSynced(b.provider), waitSynced(y.provider)])
    a.awareness.setLocalStateField('user', { name: 'alice' })
    b.awareness.setLocalStateField('user', { name: 'bob' })
    y.provider.awareness.setLocalStateField('user', { name: 'yann' })
    const ids = { alice: a.awareness.clientID, bob: b.awareness.clientID, yann: y.provider.awareness.clientID }
    const sees = (awareness, name) => awareness.getStates().get(ids[name])?.user?.name === name
    await waitFor(() => sees(a.awareness, 'bob') && sees(a.awareness, 'yann') &&
      sees(b.awareness, 'alice') && sees(b.awareness, 'yann') &&
      sees(y.provider.awareness, 'alice') && sees(y.provider.awareness, 'bob'),
    { what: 'every client to see the other two' })
    b.provider.destroy()
    await waitFor(() => !a.awareness.getStates().has(ids.bob) && !y.provider.awareness.getStates().has(ids.bob),
      { what: 'bob to disappear after destroy' })
  })

  relayTest(`hocuspocus ${version}: three documents on one websocket`, { timeout: 60_000 }, async (t, relay, scope) => {
    const socket = hocusSocket(scope, version, relay.url)
    const docs = ['one', 'two', 'three'].map(name => hocusClient(scope, version, relay.url, name, { websocketProvider: socket }))
    await Promise.all(docs.map(d => waitHocusSynced(d.provider, `${d.provider.configuration.name} to sync`)))
    docs.forEach((d, i) => d.doc.getText('text').insert(0, `text of ${i}`))
    await Promise.all(docs.map(d => waitAllSaved(d.provider)))
    // Separate sockets read each document back: each holds its own text only.
    for (const [i, name] of ['one', 'two', 'three'].entries()) {
      const reader = hocusClient(scope, version, relay.url, name)
      await waitHocusSynced(reader.provider)
      assert.equal(reader.doc.getText('text').toString(), `text of ${i}`)
    }
  })

  relayTest(`hocuspocus ${version}: a read-only token is answered readonly and its edits are refused`, { timeout: 60_000, relay: { args: ['--secret', SECRET] } }, async (t, relay, scope) => {
    const writer = hocusClient(scope, version, relay.url, 'ro', { token: await token('ro', 'write') })
    await waitHocusSynced(writer.provider)
    writer.doc.getText('text').insert(0, 'by the writer')
    await waitAllSaved(writer.provider)
    const reader = hocusClient(scope, version, relay.url, 'ro', { token: await token('ro', 'read') })
    await waitHocusSynced(reader.provider)
    assert.deepEqual(reader.log.authenticated, ['readonly'])
    assert.equal(reader.provider.authorizedScope, 'readonly')
    await waitAllSaved(reader.provider, 'the reader\'s sync step 2 to be taken')
    reader.doc.getText('text').insert(0, 'refused ')
    // Refused: SyncStatus 0 keeps the change counted as unsynced, as on a Hocuspocus server.
    const late = hocusClient(scope, version, relay.url, 'ro', { token: await token('ro', 'read') })
    await waitHocusSynced(late.provider)
    assert.equal(late.doc.getText('text').toString(), 'by the writer')
    assert.equal(writer.doc.getText('text').toString(), 'by the writer')
    assert.ok(reader.provider.unsyncedChanges > 0, 'the refused edit stays unsynced')
    assert.deepEqual(reader.log.denied, [], 'no PermissionDenied for an edit')
    // A token for another document: PermissionDenied, and the provider stays unauthenticated.
    const wrong = hocusClient(scope, version, relay.url, 'ro', { token: await token('elsewhere', 'write') })
    await waitFor(() => wrong.log.denied.length > 0, { what: 'PermissionDenied' })
    assert.match(wrong.log.denied[0], /not valid for this document/)
    assert.equal(wrong.provider.isAuthenticated, false)
  })

  relayTest(`hocuspocus ${version}: an expired token closes the socket with 4401`, { timeout: 60_000, relay: { args: ['--secret', SECRET] } }, async (t, relay, scope) => {
    const closes = []
    const socket = hocusSocket(scope, version, relay.url, { onClose: ({ event }) => closes.push(event.code) })
    const a = hocusClient(scope, version, relay.url, 'exp', { token: await token('exp', 'write', '2s'), websocketProvider: socket })
    await waitHocusSynced(a.provider)
    await waitFor(() => closes.length > 0, { what: 'the socket to be closed' })
    assert.equal(closes[0], 4401)
    // The provider reconnects with the same, now expired, token: refused, not closed again.
    await waitFor(() => a.log.denied.length > 0, { what: 'PermissionDenied for the expired token' })
    assert.match(a.log.denied[0], /expired/)
  })

  relayTest(`hocuspocus ${version}: Hocuspocus and y-websocket clients converge in one document`, { timeout: 60_000 }, async (t, relay, scope) => {
    const h = hocusClient(scope, version, relay.url, 'mixed')
    const y = v3Client(scope, relay.url, 'mixed')
    await Promise.all([waitHocusSynced(h.provider), waitSynced(y.provider)])
    h.doc.getText('text').insert(0, 'hocus ')
    y.doc.getText('text').insert(0, 'ws ')
    h.doc.getMap('map').set('h', true)
    y.doc.getArray('array').push(['y'])
    await waitFor(() => {
      const [th, ty] = texts(h, y)
      return th.length === 9 && th === ty && y.doc.getMap('map').get('h') === true && h.doc.getArray('array').length === 1
    }, { what: () => `convergence: ${JSON.stringify(texts(h, y))}` })
  })

  // Each test below waits for every provider to be back on the relay before it ends. The 3.x
  // provider schedules a reconnect one `delay` (1 s) after its socket closes and destroy() does
  // not cancel it: a provider destroyed inside that second starts connecting again, forever, and
  // keeps Node alive (found by logging connect() after destroy(): the timer in its onClose). Apps
  // hit the same; the relay cannot help it.
  /** Waits until the provider authenticated `count` times in all (once per connection). */
  const reconnected = (client, count, what) =>
    waitFor(() => client.log.authenticated.length >= count, { timeout: 30_000, what })

  relayTest(`hocuspocus ${version}: unsyncedChanges stays above 0 until the commit`, { timeout: 60_000, relay: { args: ['--commit-window-ms', '1500'] } }, async (t, relay, scope) => {
    const a = hocusClient(scope, version, relay.url, 'unsynced')
    const b = hocusClient(scope, version, relay.url, 'unsynced')
    await Promise.all([waitHocusSynced(a.provider), waitHocusSynced(b.provider)])
    await waitAllSaved(a.provider, 'the first sync to be committed')
    const counts = []
    a.provider.on('unsyncedChanges', ({ number }) => counts.push(number))
    a.doc.getText('text').insert(0, 'held back')
    // b has the edit (fanned out at once) while a still counts it unsynced: not on disk yet.
    await waitFor(() => b.doc.getText('text').toString() === 'held back', { what: 'b to get the edit' })
    assert.ok(a.provider.unsyncedChanges > 0, `unsynced at b's receipt: ${a.provider.unsyncedChanges}`)
    assert.equal(a.provider.hasUnsyncedChanges, true)
    await waitAllSaved(a.provider)
    // The commit is on disk now: a crash right after must keep it.
    await relay.kill()
    await relay.start()
    const c = hocusClient(scope, version, relay.url, 'unsynced')
    await waitHocusSynced(c.provider)
    assert.equal(c.doc.getText('text').toString(), 'held back')
    await Promise.all([reconnected(a, 2, 'a to reconnect'), reconnected(b, 2, 'b to reconnect')])
    assert.deepEqual(counts.slice(0, 2), [1, 0], `counts: ${JSON.stringify(counts)}`)
  })

  relayTest(`hocuspocus ${version}: synced edits survive a restart and a crash, and providers reconnect`, { timeout: 90_000 }, async (t, relay, scope) => {
    const a = hocusClient(scope, version, relay.url, 'durable')
    await waitHocusSynced(a.provider)
    a.doc.getText('text').insert(0, 'before restart')
    await waitAllSaved(a.provider)
    await relay.restart() // SIGTERM, same port: the provider reconnects by itself
    await reconnected(a, 2, 'the provider to authenticate again')
    a.doc.getText('text').insert(0, 'after restart, ')
    await waitAllSaved(a.provider)
    await relay.kill() // SIGKILL right after SyncStatus
    await relay.start()
    const b = hocusClient(scope, version, relay.url, 'durable')
    await waitHocusSynced(b.provider)
    assert.equal(b.doc.getText('text').toString(), 'after restart, before restart')
    await reconnected(a, 3, 'a to reconnect after the crash')
  })
}

relayTest('hocuspocus 4.x: sessionAwareness puts two providers of one document on one websocket', { timeout: 60_000 }, async (t, relay, scope) => {
  const socket = hocusSocket(scope, '4.x', relay.url)
  const a = hocusClient(scope, '4.x', relay.url, 'sessions', { websocketProvider: socket, sessionAwareness: true })
  const b = hocusClient(scope, '4.x', relay.url, 'sessions', { websocketProvider: socket, sessionAwareness: true })
  await Promise.all([waitHocusSynced(a.provider), waitHocusSynced(b.provider)])
  a.doc.getText('text').insert(0, 'from session a')
  await waitFor(() => b.doc.getText('text').toString() === 'from session a', { what: 'b to get a\'s edit' })
  a.awareness.setLocalStateField('user', { name: 'a' })
  await waitFor(() => b.awareness.getStates().get(a.awareness.clientID)?.user?.name === 'a', { what: 'b to see a' })
  await waitAllSaved(a.provider)
  // The room is the name before the session id.
  const reader = v3Client(scope, relay.url, 'sessions')
  await waitSynced(reader.provider)
  assert.equal(reader.doc.getText('text').toString(), 'from session a')
})
