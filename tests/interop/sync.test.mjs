// Document sync between stock y-websocket 3 clients (Yjs 13) through the relay.

import assert from 'node:assert/strict'
import { isDeepStrictEqual } from 'node:util'
import { relayTest } from '../js-support/relay-test.mjs'
import { v3Client, waitSynced, waitText, Y } from './clients.mjs'
import { MB, randomAscii } from './helpers.mjs'
import { prng, seedFromEnv } from '../js-support/random.mjs'
import { waitFor } from '../js-support/wait.mjs'

/** The content of the three shared types these tests use (doc.toJSON() lists only the types a doc has asked for). */
const content = doc => ({
  text: doc.getText('text').toString(),
  map: doc.getMap('map').toJSON(),
  array: doc.getArray('array').toJSON()
})

relayTest('two clients editing a Y.Text concurrently converge', { timeout: 60_000 }, async (t, relay, scope) => {
  const seed = seedFromEnv()
  t.diagnostic(`seed ${seed} (replay with TEST_SEED=${seed})`)
  const rand = prng(seed)
  const a = v3Client(scope, relay.url, 'concurrent')
  const b = v3Client(scope, relay.url, 'concurrent')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  const ta = a.doc.getText('text')
  const tb = b.doc.getText('text')

  // Both edit in the same tick: neither can have seen the other's edit yet.
  ta.insert(0, 'alpha ')
  tb.insert(0, 'beta ')
  assert.equal(ta.toString(), 'alpha ')
  assert.equal(tb.toString(), 'beta ')
  await waitFor(() => ta.length === 11 && ta.toString() === tb.toString(), { what: () => `first concurrent edits to converge: a=${JSON.stringify(ta.toString())} b=${JSON.stringify(tb.toString())}` })
  assert.ok(['alpha beta ', 'beta alpha '].includes(ta.toString()), ta.toString())

  // Rounds of random concurrent inserts and deletes on both sides, again in one tick per round.
  const edit = (ytext, tag) => {
    const n = 1 + ((rand() * 4) | 0)
    for (let i = 0; i < n; i++) {
      if (ytext.length > 0 && rand() < 0.35) {
        const pos = (rand() * ytext.length) | 0
        ytext.delete(pos, Math.min(1 + ((rand() * 5) | 0), ytext.length - pos))
      } else {
        ytext.insert((rand() * (ytext.length + 1)) | 0, `${tag}${(rand() * 1000) | 0};`)
      }
    }
  }
  for (let round = 0; round < 30; round++) {
    edit(ta, 'a')
    edit(tb, 'b')
    await waitFor(() => ta.toString() === tb.toString(), { what: () => `round ${round} to converge: a=${JSON.stringify(ta.toString())} b=${JSON.stringify(tb.toString())}` })
  }
  assert.deepEqual(Y.encodeStateVector(a.doc), Y.encodeStateVector(b.doc))
})

relayTest('a late joiner receives everything', { timeout: 60_000 }, async (t, relay, scope) => {
  const a = v3Client(scope, relay.url, 'late')
  const b = v3Client(scope, relay.url, 'late')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  a.doc.getText('text').insert(0, 'written by a. ')
  b.doc.getMap('map').set('from', 'b')
  b.doc.getArray('array').push([1, 2, 3])
  for (let i = 0; i < 50; i++) a.doc.getText('text').insert(a.doc.getText('text').length, `line ${i}\n`)
  a.doc.getText('text').delete(0, 5)
  await waitFor(() => a.doc.getArray('array').length === 3 && isDeepStrictEqual(content(a.doc), content(b.doc)),
    { what: () => `a and b to converge: a=${JSON.stringify(content(a.doc))} b=${JSON.stringify(content(b.doc))}` })
  const expected = content(a.doc)

  const c = v3Client(scope, relay.url, 'late')
  await waitSynced(c.provider)
  // synced means sync step 2 arrived, which holds everything the relay has.
  assert.deepEqual(content(c.doc), expected)
  assert.deepEqual(c.doc.getText('text').toString(), a.doc.getText('text').toString())
  assert.deepEqual(Y.encodeStateVector(c.doc), Y.encodeStateVector(a.doc))
})

relayTest('Y.Map and Y.Array sync, including concurrent writes to one key', { timeout: 60_000 }, async (t, relay, scope) => {
  const a = v3Client(scope, relay.url, 'map-array')
  const b = v3Client(scope, relay.url, 'map-array')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  const ma = a.doc.getMap('map')
  const mb = b.doc.getMap('map')
  const aa = a.doc.getArray('array')
  const ab = b.doc.getArray('array')

  ma.set('number', 42)
  ma.set('nested', { list: [1, 'two', { three: 3 }], flag: true, nothing: null })
  const sub = new Y.Map()
  ma.set('submap', sub)
  sub.set('inner', 'value')
  aa.push(['x', 1, { y: 2 }])
  ab.insert(0, ['from-b'])
  // Same key, same tick on both sides: both must settle on one of the two values.
  ma.set('contested', 'a')
  mb.set('contested', 'b')
  await waitFor(() => aa.length === 4 && ab.length === 4 && mb.get('submap')?.get('inner') === 'value' &&
    isDeepStrictEqual(content(a.doc), content(b.doc)),
  { what: () => `map and array to converge: a=${JSON.stringify(content(a.doc))} b=${JSON.stringify(content(b.doc))}` })
  assert.equal(mb.get('number'), 42)
  assert.deepEqual(mb.get('nested'), { list: [1, 'two', { three: 3 }], flag: true, nothing: null })
  assert.ok(['a', 'b'].includes(mb.get('contested')))
  assert.deepEqual(ab.toJSON().slice().sort(), ['from-b', 'x', 1, { y: 2 }].slice().sort())

  // Deletions travel too.
  mb.delete('number')
  ab.delete(0, 2)
  await waitFor(() => !ma.has('number') && aa.length === 2 && JSON.stringify(aa.toJSON()) === JSON.stringify(ab.toJSON()),
    { what: 'deletions to reach a' })
})

relayTest('a 5 MB update arrives intact at another client', { timeout: 120_000 }, async (t, relay, scope) => {
  const seed = seedFromEnv()
  t.diagnostic(`seed ${seed}`)
  const big = randomAscii(5 * MB, prng(seed))
  const a = v3Client(scope, relay.url, 'big')
  const b = v3Client(scope, relay.url, 'big')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  a.doc.getText('text').insert(0, big) // one update of a bit more than 5 MB
  await waitText(b.doc, big, { timeout: 60_000, who: 'b (live)' })
  assert.ok(b.provider.wsconnected, 'b is still connected')
  assert.ok(a.provider.wsconnected, 'a is still connected')
  assert.deepEqual(a.log.closes, [])
  assert.deepEqual(b.log.closes, [])

  // And through sync step 2 to a late joiner.
  const c = v3Client(scope, relay.url, 'big')
  await waitSynced(c.provider, 60_000)
  await waitText(c.doc, big, { timeout: 60_000, who: 'c (late joiner)' })
})
