// Deterministic random data for the interop tests. Deadlines and waits are in ../js-support/wait.mjs,
// the seeded PRNG in ../js-support/random.mjs, the relay fixture in ../js-support/relay.mjs.

const ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;-'

/** A printable ASCII string of `n` characters from `rand`. */
export function randomAscii (n, rand) {
  const parts = []
  const CHUNK = 8192
  for (let done = 0; done < n; done += CHUNK) {
    const len = Math.min(CHUNK, n - done)
    let s = ''
    for (let i = 0; i < len; i++) s += ALPHABET[(rand() * ALPHABET.length) | 0]
    parts.push(s)
  }
  return parts.join('')
}

export const MB = 1024 * 1024
