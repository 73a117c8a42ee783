// A lone stock client in an idle room must not hit its own liveness timeout: y-websocket closes
// and reopens its socket when it has received no message for 30 s (checked every 3 s).
//
// - With an awareness state, the client renews it every 15 s and the relay echoes the renewal
//   back to the sender, which counts as a message.
// - With `awareness.setLocalState(null)` the client sends nothing at all after the handshake, so
//   the only thing that can keep it alive is the relay's periodic keep-alive (an empty awareness
//   message).
//
// Both cases observe one connection for 40 s, in parallel.

import assert from 'node:assert/strict'
import { describe } from 'node:test'
import { relayTest } from '../js-support/relay-test.mjs'
import { v3Client, waitSynced } from './clients.mjs'
import { waitFor } from '../js-support/wait.mjs'

const OBSERVE_MS = 40_000

/** Watches `client` for OBSERVE_MS and fails as soon as it disconnects. */
async function observeIdle (client) {
  const { provider, log } = client
  const ws = provider.ws
  const arrivals = []
  ws.addEventListener('message', () => arrivals.push(Date.now()))
  const start = Date.now()
  await waitFor(() => {
    if (log.closes.length > 0 || log.statuses.includes('disconnected') || provider.ws !== ws) {
      throw new Error(`the provider lost its connection after ${Date.now() - start} ms ` +
        `(provider events ${JSON.stringify(log.events)}, messages received at +${arrivals.map(a => a - start).join(', +')} ms after the observation started)`)
    }
    return Date.now() - start >= OBSERVE_MS
  }, { timeout: OBSERVE_MS + 10_000, interval: 200, what: 'the observation window to end' })
  // Exactly one connection, never closed, never reopened.
  assert.deepEqual([...log.statuses], ['connecting', 'connected'], `provider events ${JSON.stringify(log.events)}`)
  assert.deepEqual([...log.closes], [])
  assert.equal(provider.ws, ws)
  assert.ok(provider.wsconnected && provider.synced)
  const times = [start, ...arrivals, Date.now()]
  const maxGap = Math.max(...times.slice(1).map((x, i) => x - times[i]))
  return { arrivals: arrivals.map(a => a - start), maxGap }
}

describe('a lone client in an idle room stays connected', { concurrency: true }, () => {
  relayTest('with its awareness state (the relay echoes its renewals)', { timeout: 90_000 }, async (t, relay, scope) => {
    const a = v3Client(scope, relay.url, 'idle-with-awareness')
    await waitSynced(a.provider)
    const { arrivals, maxGap } = await observeIdle(a)
    t.diagnostic(`messages at +${arrivals.join(', +')} ms; longest silence ${maxGap} ms`)
  })

  relayTest('with awareness.setLocalState(null) (only the relay\'s keep-alive helps)', { timeout: 90_000 }, async (t, relay, scope) => {
    const a = v3Client(scope, relay.url, 'idle-without-awareness', { connect: false })
    a.awareness.setLocalState(null)
    a.provider.connect()
    await waitSynced(a.provider)
    const { arrivals, maxGap } = await observeIdle(a)
    t.diagnostic(`messages at +${arrivals.join(', +')} ms; longest silence ${maxGap} ms`)
    assert.ok(arrivals.some(at => at > 25_000), 'the relay sent something during the last 15 s of the observation window')
  })
})
