/**
 * What the provider takes from its surroundings: timers, the clock, randomness, the window (for
 * `online`/`offline`/`pagehide`/`beforeunload`), BroadcastChannel and IndexedDB. Tests replace
 * parts of it to count handles or to drive events; applications never need to.
 *
 * @module environment
 */

/**
 * @typedef {object} Timers
 * @property {(fn: () => void, ms: number) => any} setTimeout
 * @property {(id: any) => void} clearTimeout
 * @property {(fn: () => void, ms: number) => any} setInterval
 * @property {(id: any) => void} clearInterval
 * @property {() => number} now milliseconds, only differences are used
 */

/**
 * @typedef {object} Environment
 * @property {Timers} timers
 * @property {() => number} random numbers in [0, 1), for the backoff's jitter
 * @property {Pick<EventTarget, 'addEventListener' | 'removeEventListener'> | null} window where
 *   `online`, `offline`, `pagehide` and `beforeunload` arrive; null outside browsers
 * @property {typeof BroadcastChannel | null} BroadcastChannel
 * @property {IDBFactory | null} indexedDB
 */

/** @returns {Environment} the real one of this platform */
export function defaultEnvironment () {
  const g = /** @type {any} */ (globalThis)
  const isBrowser = typeof g.window !== 'undefined' && typeof g.window.addEventListener === 'function'
  return {
    timers: {
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: id => clearTimeout(id),
      setInterval: (fn, ms) => setInterval(fn, ms),
      clearInterval: id => clearInterval(id),
      now: () => Date.now()
    },
    random: Math.random,
    window: isBrowser ? g.window : null,
    BroadcastChannel: typeof g.BroadcastChannel === 'function' ? g.BroadcastChannel : null,
    indexedDB: typeof g.indexedDB === 'object' && g.indexedDB !== null ? g.indexedDB : null
  }
}
