/**
 * Reconnect delays: exponential growth with jitter, capped, reset after a successful open.
 *
 * The delay before attempt `n` (counting from 0 since the last reset) is drawn from
 * `[base * (1 - jitter), base]` with `base = min(maxMs, initialMs * factor ** n)`. Keeping a lower
 * bound above zero ("equal jitter") makes the delays grow on average while still spreading the
 * reconnects of many clients that lost the relay at the same moment.
 *
 * @module backoff
 */

/**
 * @typedef {object} BackoffOptions
 * @property {number} [initialMs] base delay of the first attempt (default 500)
 * @property {number} [maxMs] cap of every delay (default 30000)
 * @property {number} [factor] growth per attempt (default 2)
 * @property {number} [jitter] fraction of the base that is random, 0 to 1 (default 0.5)
 * @property {() => number} [random] source of numbers in [0, 1) (default Math.random); tests inject a seeded one
 */

export const DEFAULT_INITIAL_MS = 500
export const DEFAULT_MAX_MS = 30000

export class Backoff {
  /** @param {BackoffOptions} [opts] */
  constructor ({ initialMs = DEFAULT_INITIAL_MS, maxMs = DEFAULT_MAX_MS, factor = 2, jitter = 0.5, random = Math.random } = {}) {
    if (!(initialMs > 0) || !(maxMs >= initialMs)) {
      throw new RangeError(`backoff needs 0 < initialMs <= maxMs (got ${initialMs}, ${maxMs})`)
    }
    if (!(factor >= 1)) throw new RangeError(`backoff factor must be >= 1 (got ${factor})`)
    if (!(jitter >= 0 && jitter <= 1)) throw new RangeError(`backoff jitter must be in [0, 1] (got ${jitter})`)
    this.initialMs = initialMs
    this.maxMs = maxMs
    this.factor = factor
    this.jitter = jitter
    this.random = random
    /** attempts since the last reset */
    this.attempt = 0
  }

  /** The base (largest possible) delay of the next attempt. */
  get nextBaseMs () {
    return Math.min(this.maxMs, this.initialMs * Math.pow(this.factor, this.attempt))
  }

  /**
   * The delay to wait before the next attempt, in milliseconds; counts the attempt.
   * @returns {number}
   */
  next () {
    const base = this.nextBaseMs
    this.attempt++
    const r = Math.min(Math.max(this.random(), 0), 1)
    return Math.round(base * (1 - this.jitter) + base * this.jitter * r)
  }

  /** Starts again from `initialMs` (after a successful open). */
  reset () {
    this.attempt = 0
  }
}
