import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Backoff } from '../src/index.js'
import { prng } from '../../tests/js-support/random.mjs'

test('delays grow exponentially within their jitter window and stop at the cap', () => {
  const b = new Backoff({ initialMs: 100, maxMs: 5000, random: prng(42) })
  const delays = Array.from({ length: 12 }, () => b.next())
  let base = 100
  for (const [i, d] of delays.entries()) {
    assert.ok(d >= base / 2 && d <= base, `attempt ${i}: ${d} ms not in [${base / 2}, ${base}]`)
    base = Math.min(5000, base * 2)
  }
  // The lower bound of attempt n+1 is the upper bound of attempt n: each delay is >= the previous
  // one's lower bound doubled, so the sequence grows even with the worst draws.
  assert.ok(delays[3] > delays[0])
  assert.ok(delays.slice(7).every(d => d <= 5000 && d >= 2500), `capped: ${delays.slice(7)}`)
})

test('delays are jittered: the random source decides where in the window they fall', () => {
  const low = new Backoff({ initialMs: 1000, maxMs: 60_000, random: () => 0 })
  const high = new Backoff({ initialMs: 1000, maxMs: 60_000, random: () => 0.999999 })
  assert.deepEqual([low.next(), low.next(), low.next()], [500, 1000, 2000])
  assert.deepEqual([high.next(), high.next(), high.next()], [1000, 2000, 4000])
  // Many clients losing the relay at the same moment do not come back together.
  const rand = prng(7)
  const firsts = Array.from({ length: 20 }, () => new Backoff({ initialMs: 1000, random: rand }).next())
  assert.ok(new Set(firsts).size >= 15, `first delays of 20 clients: ${firsts}`)
  // The same seed gives the same delays.
  const a = new Backoff({ random: prng(99) })
  const b = new Backoff({ random: prng(99) })
  assert.deepEqual([a.next(), a.next(), a.next()], [b.next(), b.next(), b.next()])
})

test('reset starts again from the initial delay', () => {
  const b = new Backoff({ initialMs: 200, maxMs: 10_000, random: () => 0.5 })
  for (let i = 0; i < 6; i++) b.next()
  assert.equal(b.attempt, 6)
  assert.ok(b.next() > 4000)
  b.reset()
  assert.equal(b.attempt, 0)
  assert.equal(b.next(), 150)
  assert.equal(b.next(), 300)
})

test('defaults are 500 ms doubling to 30 s; nonsense options are refused', () => {
  const b = new Backoff({ random: () => 0.999999 })
  const delays = Array.from({ length: 10 }, () => b.next())
  assert.equal(delays[0], 500)
  assert.equal(Math.max(...delays), 30_000)
  assert.throws(() => new Backoff({ initialMs: 0 }), RangeError)
  assert.throws(() => new Backoff({ initialMs: 1000, maxMs: 10 }), RangeError)
  assert.throws(() => new Backoff({ jitter: 2 }), RangeError)
})
