// Test fixture: runs the real relay binary as a child process on 127.0.0.1:0 with a fresh data
// directory, and cleans up after itself even when a test fails.
//
// The binary comes from $RELAY_BIN, or ../../target/debug/relay relative to this file.

import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'
import { withDeadline } from './helpers.mjs'

const here = dirname(fileURLToPath(import.meta.url))

export const RELAY_BIN = process.env.RELAY_BIN
  ? resolve(process.env.RELAY_BIN)
  : resolve(here, '../../target/debug/relay')

/** How long the relay may take to print its address. A debug build opens redb first. */
const START_DEADLINE_MS = 20_000
/** How long a graceful stop may take (drain timeout plus final commit). */
const STOP_DEADLINE_MS = 20_000
/** Keep at most this much of the relay's stderr (the end of it). */
const STDERR_KEEP = 2 * 1024 * 1024

/** Every child still running, so that a dying test process does not leave relays behind. */
const running = new Set()
process.on('exit', () => {
  for (const child of running) {
    try { child.kill('SIGKILL') } catch {}
  }
})

export class Relay {
  /**
   * @param {object} opts
   * @param {string} opts.dataDir
   * @param {boolean} opts.ownsDataDir remove dataDir on dispose
   * @param {string[]} opts.extraArgs
   * @param {Record<string,string>} opts.env
   */
  constructor ({ dataDir, ownsDataDir, extraArgs = [], env = {} }) {
    this.dataDir = dataDir
    this.ownsDataDir = ownsDataDir
    this.extraArgs = extraArgs
    this.env = env
    /** stderr of every run so far, each run headed by a marker line */
    this.stderr = ''
    /** number of the current run (1 for the first start, 2 after the first restart, ...) */
    this.run = 0
    this.child = null
    this.port = null
    this.exitInfo = null
  }

  get url () { return `ws://127.0.0.1:${this.port}` }
  get httpUrl () { return `http://127.0.0.1:${this.port}` }
  get pid () { return this.child?.pid }
  get running () { return this.child !== null && this.exitInfo === null }

  _appendStderr (text) {
    // eslint-disable-next-line no-control-regex
    this.stderr += text.replace(/\x1b\[[0-9;]*m/g, '')
    if (this.stderr.length > STDERR_KEEP) {
      this.stderr = '[... earlier stderr dropped ...]\n' + this.stderr.slice(-STDERR_KEEP)
    }
  }

  /** Starts the relay and waits for its `listening on http://127.0.0.1:PORT` line. */
  async start () {
    if (this.running) throw new Error('relay already running')
    if (!existsSync(RELAY_BIN)) {
      throw new Error(`relay binary not found at ${RELAY_BIN} (build it with \`cargo build -p relay\` or set RELAY_BIN)`)
    }
    this.run++
    this._appendStderr(`----- relay run ${this.run}: ${RELAY_BIN} serve --listen 127.0.0.1:0 --data-dir ${this.dataDir} -----\n`)
    const child = spawn(RELAY_BIN, ['serve', '--listen', '127.0.0.1:0', '--data-dir', this.dataDir, ...this.extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1', ...this.env }
    })
    this.child = child
    this.exitInfo = null
    this.port = null
    running.add(child)
    const exited = new Promise(resolve => {
      child.once('exit', (code, signal) => {
        running.delete(child)
        this.exitInfo = { code, signal }
        resolve({ code, signal })
      })
    })
    this._exited = exited
    child.stderr.setEncoding('utf8')
    // Always drain both pipes: a full pipe would block the relay.
    child.stderr.on('data', chunk => this._appendStderr(chunk))
    child.stdout.setEncoding('utf8')
    let stdoutBuf = ''
    const listening = new Promise((resolve, reject) => {
      child.stdout.on('data', chunk => {
        stdoutBuf += chunk
        let nl
        while ((nl = stdoutBuf.indexOf('\n')) >= 0) {
          const line = stdoutBuf.slice(0, nl).trim()
          stdoutBuf = stdoutBuf.slice(nl + 1)
          const m = /^listening on http:\/\/127\.0\.0\.1:(\d+)$/.exec(line)
          if (m) resolve(Number(m[1]))
          else if (line) this._appendStderr(`[relay stdout] ${line}\n`)
        }
      })
      child.once('error', reject)
      exited.then(({ code, signal }) => reject(new Error(`relay exited before listening (code ${code}, signal ${signal})`)))
    })
    try {
      this.port = await withDeadline(listening, START_DEADLINE_MS, 'relay to print "listening on http://127.0.0.1:PORT"')
    } catch (err) {
      await this.kill().catch(() => {})
      err.message += `\n--- relay stderr ---\n${this.stderr}`
      throw err
    }
    return this
  }

  /** Graceful stop: SIGTERM, wait for the exit, expect exit code 0. */
  async stop () {
    if (!this.running) throw new Error('relay is not running')
    this.child.kill('SIGTERM')
    let info
    try {
      info = await withDeadline(this._exited, STOP_DEADLINE_MS, 'relay to exit after SIGTERM')
    } catch (err) {
      await this.kill()
      throw err
    }
    if (info.code !== 0) {
      throw new Error(`relay exited with code ${info.code}, signal ${info.signal} after SIGTERM (expected code 0)`)
    }
    return info
  }

  /** Hard stop: SIGKILL, wait for the exit. */
  async kill () {
    if (!this.running) return this.exitInfo
    this.child.kill('SIGKILL')
    return withDeadline(this._exited, STOP_DEADLINE_MS, 'relay to exit after SIGKILL')
  }

  /** Starts the relay again on the same data directory (a new port). Stops it first if it runs. */
  async restart () {
    if (this.running) await this.stop()
    return this.start()
  }

  /** Resident set size of the relay process in bytes, from /proc/PID/status. */
  async rss () {
    const status = await readFile(`/proc/${this.pid}/status`, 'utf8')
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status)
    if (!m) throw new Error(`no VmRSS in /proc/${this.pid}/status`)
    return Number(m[1]) * 1024
  }

  /** Kills the relay if it still runs and removes the data directory it created. */
  async dispose () {
    try {
      await this.kill()
    } finally {
      if (this.ownsDataDir) await rm(this.dataDir, { recursive: true, force: true })
    }
  }
}

/**
 * Starts a relay on a fresh temporary data directory.
 * @param {{extraArgs?: string[], env?: Record<string,string>}} [opts]
 */
export async function startRelay (opts = {}) {
  const dataDir = await mkdtemp(join(tmpdir(), 'relay-interop-'))
  const relay = new Relay({ dataDir, ownsDataDir: true, ...opts })
  try {
    await relay.start()
  } catch (err) {
    await relay.dispose()
    throw err
  }
  return relay
}

/** Collects clean-up functions and runs them in reverse order. */
export class Scope {
  constructor () { this.fns = [] }
  /** @param {() => any} fn */
  defer (fn) { this.fns.push(fn) }
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
 * Declares a test that gets its own fresh relay and a clean-up scope. On failure the relay's
 * stderr is printed under the test. Clients go first, then the relay, then its data directory.
 *
 * @param {string} name
 * @param {object} opts node:test options (timeout, concurrency, todo, ...) plus `relay` (startRelay options)
 * @param {(t: import('node:test').TestContext, relay: Relay, scope: Scope) => Promise<void>} fn
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
