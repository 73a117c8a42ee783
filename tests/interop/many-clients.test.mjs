// 100 stock clients in one room, all in this Node process, each with its own document.

import assert from 'node:assert/strict'
import { relayTest } from '../js-support/relay-test.mjs'
import { v3Client, waitSynced, Y } from './clients.mjs'
import { prng, seedFromEnv } from '../js-support/random.mjs'
import { waitFor } from '../js-support/wait.mjs'

const CLIENTS = 100
const EDITS_PER_CLIENT = 5

relayTest(`${CLIENTS} clients in one room converge`, { timeout: 120_000 }, async (t, relay, scope) => {
  // Each provider adds a process 'exit' listener.
  process.setMaxListeners(CLIENTS * 2 + 20)
  const seed = seedFromEnv()
  t.diagnostic(`seed ${seed}`)
  const rand = prng(seed)
  const clients = []
  for (let i = 0; i < CLIENTS; i++) clients.push(v3Client(scope, relay.url, 'crowd'))
  await Promise.all(clients.map(c => waitSynced(c.provider, 60_000)))

  // Everyone edits at once, without waiting for anyone else.
  for (let round = 0; round < EDITS_PER_CLIENT; round++) {
    clients.forEach((c, i) => {
      const text = c.doc.getText('text')
      text.insert((rand() * (text.length + 1)) | 0, `<${i}.${round}>`)
      c.doc.getMap('map').set(`client-${i}`, round)
      c.doc.getArray('array').push([i])
    })
  }
  const expectedLength = clients.reduce((n, _c, i) => {
    let len = 0
    for (let r = 0; r < EDITS_PER_CLIENT; r++) len += `<${i}.${r}>`.length
    return n + len
  }, 0)

  const first = clients[0]
  await waitFor(() => {
    const ref = first.doc.getText('text')
    if (ref.length !== expectedLength) return false
    const s = ref.toString()
    return clients.every(c => c.doc.getText('text').length === expectedLength && c.doc.getText('text').toString() === s)
  }, {
    timeout: 60_000,
    interval: 50,
    what: () => {
      const lengths = clients.map(c => c.doc.getText('text').length)
      const behind = lengths.filter(l => l !== expectedLength).length
      return `all ${CLIENTS} texts to reach length ${expectedLength} and be equal (${behind} clients not at that length)`
    }
  })
  await waitFor(() => clients.every(c => c.doc.getArray('array').length === CLIENTS * EDITS_PER_CLIENT && c.doc.getMap('map').size === CLIENTS),
    { timeout: 30_000, interval: 50, what: 'every map and array to be complete' })

  const refJson = first.doc.toJSON()
  const refSv = Y.encodeStateVector(first.doc)
  for (const [i, c] of clients.entries()) {
    assert.deepEqual(c.doc.toJSON(), refJson, `client ${i} document`)
    assert.deepEqual(Y.encodeStateVector(c.doc), refSv, `client ${i} state vector`)
    assert.deepEqual(c.log.closes, [], `client ${i} was never disconnected`)
  }
  for (let i = 0; i < CLIENTS; i++) assert.equal(first.doc.getMap('map').get(`client-${i}`), EDITS_PER_CLIENT - 1)
})
