// Seeded random numbers for the JS test suites, so that a randomized test can be replayed from the
// seed it prints. Plain ESM, no dependencies.

/**
 * mulberry32: a small seeded PRNG.
 * @param {number} seed
 * @returns {() => number} numbers in [0, 1)
 */
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

/** A seed from $TEST_SEED, or from the clock; tests print it. */
export function seedFromEnv () {
  return process.env.TEST_SEED ? Number(process.env.TEST_SEED) : (Date.now() % 1_000_000_007)
}
