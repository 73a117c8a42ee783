// Waiting with deadlines. No fixed sleeps anywhere: every wait is an awaited condition that fails
// with a message when its deadline passes.

/**
 * Resolves with the promise's value, or rejects when `ms` pass first.
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {string} what
 * @returns {Promise<T>}
 */
export function withDeadline (promise, ms, what) {
  let timer
  const deadline = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
  })
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}

/**
 * Polls `cond` until it returns a truthy value (returned) or the deadline passes.
 * @template T
 * @param {() => T | Promise<T>} cond
 * @param {{timeout?: number, interval?: number, what?: string | (() => string)}} [opts]
 * @returns {Promise<T>}
 */
export async function waitFor (cond, { timeout = 10_000, interval = 5, what = 'condition' } = {}) {
  const end = Date.now() + timeout
  for (;;) {
    const v = await cond()
    if (v) return v
    if (Date.now() >= end) {
      throw new Error(`timed out after ${timeout} ms waiting for ${typeof what === 'function' ? what() : what}`)
    }
    await new Promise(resolve => setTimeout(resolve, interval))
  }
}

/**
 * Waits until `emitter` emits `event` with arguments for which `pred` holds; resolves with them.
 * Works with lib0 observables and Node emitters.
 */
export function waitForEvent (emitter, event, { pred = () => true, timeout = 10_000, what } = {}) {
  let handler
  const p = new Promise(resolve => {
    handler = (...args) => { if (pred(...args)) resolve(args) }
    emitter.on(event, handler)
  })
  return withDeadline(p, timeout, what ?? `event "${event}"`).finally(() => emitter.off(event, handler))
}

/** mulberry32: a small seeded PRNG. */
export function prng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
