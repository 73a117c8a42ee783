// A node:test test with its own relay and a clean-up scope, for the JS test suites. Plain ESM,
// Node's built-ins only.

import { test } from 'node:test'
import { startRelay } from './relay.mjs'

/** Collects clean-up functions and runs them in reverse order, all of them, even when some fail. */
export class Scope {
  constructor () {
    /** @type {Array<() => any>} */
    this.fns = []
  }

  /**
   * @template {() => any} F
   * @param {F} fn
   * @returns {F}
   */
  defer (fn) {
    this.fns.push(fn)
    return fn
  }

  async dispose () {
    const errors = []
    while (this.fns.length > 0) {
      const fn = this.fns.pop()
      try { await fn() } catch (err) { errors.push(err) }
    }
    if (errors.length > 0) throw new AggregateError(errors, 'clean-up failed')
  }
}

/**
 * Declares a test that gets a fresh relay and a clean-up scope. Clients go first (the scope), then
 * the relay and its data directory. When the test fails, the relay's stderr is printed under it.
 *
 * @param {string} name
 * @param {object} opts node:test options (timeout, skip, ...) plus `relay`: the options of
 *   `startRelay` (`args`: more flags of `relay serve`, `env`)
 * @param {(t: import('node:test').TestContext, relay: import('./relay.mjs').Relay, scope: Scope) => Promise<void>} fn
 */
export function relayTest (name, opts, fn) {
  const { relay: relayOpts, ...testOpts } = opts
  return test(name, testOpts, async t => {
    const relay = await startRelay(relayOpts)
    const scope = new Scope()
    let failed = false
    try {
      await fn(t, relay, scope)
    } catch (err) {
      failed = true
      throw err
    } finally {
      try {
        await scope.dispose()
      } finally {
        await relay.dispose()
        if (failed) {
          process.stderr.write(`\n===== relay stderr for failed test "${name}" (data dir ${relay.dataDir}) =====\n${relay.stderr}\n===== end of relay stderr =====\n`)
        }
      }
    }
  })
}
