import { test } from 'node:test'
import { startRelay } from './relay.mjs'
import { Scope } from './clients.mjs'

/**
 * A test with its own relay and clean-up scope. Clients go first, then the relay and its data.
 * `opts.relayArgs`: more command-line options of the relay; the other options go to `test`.
 * On failure the relay's stderr is printed.
 */
export function relayTest (name, opts, fn) {
  const { relayArgs = [], ...testOpts } = opts
  return test(name, testOpts, async t => {
    const relay = await startRelay(relayArgs)
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
        if (failed) process.stderr.write(`\n--- relay stderr for "${name}" ---\n${relay.stderr}\n---\n`)
      }
    }
  })
}
