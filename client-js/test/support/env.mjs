// Environments for tests: timers that count what is pending, a window that counts its listeners,
// a BroadcastChannel that counts open channels, an IndexedDB factory that counts open databases.

import { IDBFactory } from 'fake-indexeddb'

export function countingTimers () {
  const timeouts = new Set()
  const intervals = new Set()
  return {
    timeouts,
    intervals,
    get pending () { return timeouts.size + intervals.size },
    timers: {
      setTimeout: (fn, ms) => {
        const id = setTimeout(() => { timeouts.delete(id); fn() }, ms)
        timeouts.add(id)
        return id
      },
      clearTimeout: id => { timeouts.delete(id); clearTimeout(id) },
      setInterval: (fn, ms) => {
        const id = setInterval(fn, ms)
        intervals.add(id)
        return id
      },
      clearInterval: id => { intervals.delete(id); clearInterval(id) },
      now: () => Date.now()
    }
  }
}

export class CountingWindow extends EventTarget {
  constructor () {
    super()
    /** @type {Map<string, number>} */
    this.listeners = new Map()
  }

  get listenerCount () {
    let n = 0
    for (const c of this.listeners.values()) n += c
    return n
  }

  addEventListener (type, fn, opts) {
    this.listeners.set(type, (this.listeners.get(type) ?? 0) + 1)
    super.addEventListener(type, fn, opts)
  }

  removeEventListener (type, fn, opts) {
    this.listeners.set(type, (this.listeners.get(type) ?? 0) - 1)
    super.removeEventListener(type, fn, opts)
  }
}

export function countingBroadcastChannel () {
  const open = new Set()
  class Counting extends BroadcastChannel {
    constructor (name) {
      super(name)
      open.add(this)
    }

    close () {
      open.delete(this)
      super.close()
    }
  }
  return { BroadcastChannel: Counting, open }
}

export function countingIndexedDB (factory = new IDBFactory()) {
  const state = { open: 0, factory }
  state.indexedDB = {
    open (name, version) {
      const req = factory.open(name, version)
      req.addEventListener('success', () => {
        state.open++
        const db = req.result
        const close = db.close.bind(db)
        let closed = false
        db.close = () => {
          if (!closed) { closed = true; state.open-- }
          close()
        }
      })
      return req
    },
    deleteDatabase: name => factory.deleteDatabase(name),
    cmp: (a, b) => factory.cmp(a, b)
  }
  return state
}

/**
 * Timers on a clock that moves only when the test says (`advance`): what a timer does happens at
 * a known moment, without waiting. `delays` records the delay of every timeout set.
 */
export function manualClock () {
  let now = 0
  let nextId = 1
  /** @type {Map<number, {at: number, fn: () => void, every: number | null}>} */
  const due = new Map()
  const delays = []
  const add = (fn, ms, every) => {
    const id = nextId++
    due.set(id, { at: now + Math.max(0, ms), fn, every })
    return id
  }
  return {
    delays,
    get now () { return now },
    /** timers and intervals waiting */
    get pending () { return due.size },
    timers: {
      setTimeout: (fn, ms) => { delays.push(ms); return add(fn, ms, null) },
      clearTimeout: id => { due.delete(id) },
      setInterval: (fn, ms) => add(fn, ms, Math.max(1, ms)),
      clearInterval: id => { due.delete(id) },
      now: () => now
    },
    /** Moves the clock `ms` on, running every timer that falls due, in order. */
    advance (ms) {
      const end = now + ms
      for (;;) {
        let first = null
        for (const [id, t] of due) if (t.at <= end && (first === null || t.at < due.get(first).at)) first = id
        if (first === null) break
        const t = due.get(first)
        now = t.at
        if (t.every === null) due.delete(first)
        else t.at += t.every
        t.fn()
      }
      now = end
    }
  }
}
