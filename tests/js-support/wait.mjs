// Waiting with deadlines, for every JS test suite (client-js/test, tests/interop, tests/browser).
// No fixed sleeps anywhere: every wait is an awaited condition or event that fails with a message
// naming what it waited for when its deadline passes. Plain ESM, Node's built-ins only.

/**
 * Resolves with the promise's value, or rejects when `ms` pass first.
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {string} what what is awaited (for the error message)
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
 * Checks `condition` until it returns a truthy value, which is returned, or the deadline passes.
 * A condition that throws counts as not met yet (a page in the middle of a navigation, a relay
 * restarting); the last error is in the timeout's message and its `cause`.
 * @template T
 * @param {() => T | Promise<T>} condition
 * @param {{timeout?: number, interval?: number, what?: string | (() => string)}} [opts]
 *   `timeout` in ms (default 10 s); `interval` between checks (default 10 ms); `what` is awaited
 *   (a function is called for the message, to show the state at the deadline)
 * @returns {Promise<T>}
 */
export async function waitFor (condition, { timeout = 10_000, interval = 10, what = 'a condition' } = {}) {
  const end = Date.now() + timeout
  let lastError
  for (;;) {
    try {
      const value = await condition()
      if (value) return value
      lastError = undefined
    } catch (err) {
      lastError = err
    }
    if (Date.now() >= end) {
      const desc = typeof what === 'function' ? what() : what
      const last = lastError === undefined ? '' : ` (last error: ${lastError?.message ?? lastError})`
      throw new Error(`timed out after ${timeout} ms waiting for ${desc}${last}`, { cause: lastError })
    }
    await new Promise(resolve => setTimeout(resolve, interval))
  }
}

/**
 * Waits until `emitter` emits `event` with arguments for which `pred` holds; resolves with them.
 * Works with lib0 observables (`on`/`off`) and Node emitters.
 * @param {{on: Function, off: Function}} emitter
 * @param {string} event
 * @param {{pred?: (...args: any[]) => boolean, timeout?: number, what?: string}} [opts]
 * @returns {Promise<any[]>}
 */
export function waitForEvent (emitter, event, { pred = () => true, timeout = 10_000, what } = {}) {
  let handler
  const p = new Promise(resolve => {
    handler = (...args) => { if (pred(...args)) resolve(args) }
    emitter.on(event, handler)
  })
  return withDeadline(p, timeout, what ?? `event "${event}"`).finally(() => emitter.off(event, handler))
}
