// The relay fixture of every JS test suite (client-js/test, tests/interop, tests/browser, and the
// client-js scripts): the real relay binary as a child process on 127.0.0.1, on a temporary data
// directory, with the flags a test gives. Plain ESM with Node's built-ins only, imported by
// relative path, so that each suite's own `npm ci` is all it needs.
//
// - `startRelay({args, env})` starts one on 127.0.0.1:0 and waits for its `listening on` line;
// - `relay.url` (ws://), `relay.httpUrl`, `relay.port`, `relay.pid`, `relay.dataDir`;
// - `stop()`: SIGTERM, and SIGKILL when it does not exit in time; expects exit code 0;
// - `kill()`: SIGKILL; `freeze()`/`thaw()`: SIGSTOP/SIGCONT (sockets stay open);
// - `start()` again, or `restart()`: the same data directory and the same port, so that clients
//   reconnect by themselves (and a browser page keeps its origin);
// - `dispose()`: kills it and removes the data directory; a dying test process kills it too;
// - `stderr`: what it logged, every run headed by its command line (a `--secret` hidden).
//
// The binary is $RELAY_BIN, or target/debug/relay of this repository (`cargo build -p relay`).

import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { withDeadline } from './wait.mjs'

const here = dirname(fileURLToPath(import.meta.url))

export const RELAY_BIN = process.env.RELAY_BIN
  ? resolve(process.env.RELAY_BIN)
  : resolve(here, '../../target/debug/relay')

/** How long the relay may take to print its address (a debug build opens redb first). */
const START_DEADLINE_MS = 20_000
/** How long a graceful stop may take (drain timeout plus the final commit). */
const STOP_DEADLINE_MS = 20_000
/** Keep this much of the relay's stderr (the end of it). */
const STDERR_KEEP = 2 * 1024 * 1024
/** Flags whose value is not shown in `stderr`'s run headers. */
const SECRET_FLAGS = new Set(['--secret'])

/** Every relay still running, killed if the test process exits first. */
const running = new Set()
process.on('exit', () => {
  for (const child of running) {
    try {
      child.kill('SIGCONT')
      child.kill('SIGKILL')
    } catch {}
  }
})

export class Relay {
  /**
   * @param {object} opts
   * @param {string} opts.dataDir
   * @param {boolean} [opts.ownsDataDir] remove `dataDir` on `dispose()`
   * @param {string[]} [opts.args] more flags of `relay serve` (e.g. `--secret`, `--poll-hold-secs`)
   * @param {Record<string, string>} [opts.env] more environment variables
   * @param {string[]} [opts.launcher] a command that runs the relay (e.g. `['taskset', '-c', '0']`)
   * @param {string} [opts.bin] the relay binary (default {@link RELAY_BIN})
   */
  constructor ({ dataDir, ownsDataDir = false, args = [], env = {}, launcher = [], bin = RELAY_BIN }) {
    this.bin = bin
    this.dataDir = dataDir
    this.ownsDataDir = ownsDataDir
    this.args = args
    this.env = env
    this.launcher = launcher
    /** 0 until the first start, then the port it got: later starts take the same one */
    this.port = 0
    /** number of the current run: 1 for the first start, 2 after the first restart, ... */
    this.run = 0
    /** @type {import('node:child_process').ChildProcess | null} */
    this.child = null
    /** @type {{code: number | null, signal: string | null} | null} how the last run ended */
    this.exitInfo = null
    /** @type {Promise<{code: number | null, signal: string | null}> | null} */
    this._exited = null
    this.stderr = ''
  }

  get url () { return `ws://127.0.0.1:${this.port}` }
  get httpUrl () { return `http://127.0.0.1:${this.port}` }
  get pid () { return this.child?.pid }
  get running () { return this.child !== null }

  /** @param {string} text */
  _log (text) {
    // eslint-disable-next-line no-control-regex
    this.stderr += text.replace(/\x1b\[[0-9;]*m/g, '')
    if (this.stderr.length > STDERR_KEEP) {
      this.stderr = '[... earlier stderr dropped ...]\n' + this.stderr.slice(-STDERR_KEEP)
    }
  }

  /**
   * Starts the relay and waits for its `listening on http://127.0.0.1:PORT` line: on port 0 the
   * first time, then on the port it got (retried while the old process's port is still taken).
   * @returns {Promise<this>}
   */
  async start () {
    if (this.running) throw new Error('relay already running')
    if (!existsSync(this.bin)) {
      throw new Error(`relay binary not found at ${this.bin} (build it with \`cargo build -p relay\` or set RELAY_BIN)`)
    }
    this.run++
    const end = Date.now() + START_DEADLINE_MS
    for (;;) {
      const args = ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir, ...this.args]
      const shown = args.map((arg, i) => SECRET_FLAGS.has(args[i - 1]) ? '<hidden>' : arg)
      this._log(`----- relay run ${this.run}: ${[...this.launcher, this.bin, ...shown].join(' ')} -----\n`)
      try {
        await this._spawn(args)
        return this
      } catch (err) {
        // The port of the previous run can be taken for a moment (by a connection of another
        // test, say): try again until the deadline. Anything else is a real failure.
        if (!err.portTaken || Date.now() >= end) throw err
      }
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  }

  /** @param {string[]} args */
  async _spawn (args) {
    const [command, ...prefix] = this.launcher.length > 0 ? this.launcher : [this.bin]
    const argv = this.launcher.length > 0 ? [...prefix, this.bin, ...args] : args
    const child = spawn(command, argv, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1', ...this.env }
    })
    this.child = child
    this.exitInfo = null
    running.add(child)
    let runStderr = ''
    const exited = new Promise(resolve => {
      child.once('exit', (code, signal) => {
        running.delete(child)
        if (this.child === child) this.child = null
        this.exitInfo = { code, signal }
        resolve({ code, signal })
      })
    })
    this._exited = exited
    // Always drain both pipes: a full pipe would block the relay.
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', chunk => {
      runStderr = (runStderr + chunk).slice(-10_000)
      this._log(chunk)
    })
    child.stdout.setEncoding('utf8')
    let stdout = ''
    const listening = new Promise((resolve, reject) => {
      child.stdout.on('data', chunk => {
        stdout += chunk
        let nl
        while ((nl = stdout.indexOf('\n')) >= 0) {
          const line = stdout.slice(0, nl).trim()
          stdout = stdout.slice(nl + 1)
          const m = /^listening on http:\/\/127\.0\.0\.1:(\d+)$/.exec(line)
          if (m) resolve(Number(m[1]))
          else if (line) this._log(`[relay stdout] ${line}\n`)
        }
      })
      child.once('error', reject)
      exited.then(({ code, signal }) => {
        const err = new Error(`relay exited before listening (code ${code}, signal ${signal})\n${runStderr}`)
        reject(Object.assign(err, { portTaken: /address already in use/i.test(runStderr) }))
      })
    })
    try {
      this.port = await withDeadline(listening, START_DEADLINE_MS, 'the relay to print "listening on http://127.0.0.1:PORT"')
    } catch (err) {
      await this.kill().catch(() => {})
      throw err
    }
  }

  /**
   * Graceful stop: SIGTERM, and SIGKILL when it has not exited within the deadline (then this
   * throws). Expects exit code 0. Does nothing when the relay is not running.
   */
  async stop () {
    const child = this.child
    if (child === null) return this.exitInfo
    child.kill('SIGCONT') // a frozen relay cannot handle SIGTERM
    child.kill('SIGTERM')
    let info
    try {
      info = await withDeadline(this._exited, STOP_DEADLINE_MS, 'the relay to exit after SIGTERM')
    } catch (err) {
      await this.kill()
      throw err
    }
    if (info.code !== 0) {
      throw new Error(`relay exited with code ${info.code}, signal ${info.signal} after SIGTERM (expected code 0)\n${this.stderr.slice(-20_000)}`)
    }
    return info
  }

  /** Hard stop: SIGKILL (whatever was not committed is lost). */
  async kill () {
    const child = this.child
    if (child === null) return this.exitInfo
    child.kill('SIGCONT')
    child.kill('SIGKILL')
    return withDeadline(this._exited, STOP_DEADLINE_MS, 'the relay to exit after SIGKILL')
  }

  /** Stops the relay (gracefully) if it runs, and starts it again: same data directory, same port. */
  async restart () {
    await this.stop()
    return this.start()
  }

  /** Freezes the relay (SIGSTOP): its sockets stay open, nothing is answered. */
  freeze () { this.child?.kill('SIGSTOP') }
  /** Lets a frozen relay go on (SIGCONT). */
  thaw () { this.child?.kill('SIGCONT') }

  /**
   * The value of one sample of `/metrics` (e.g. `relay_connections`), or undefined.
   * @param {string} sample
   */
  async metric (sample) {
    const res = await fetch(`${this.httpUrl}/metrics`)
    const text = await res.text()
    for (const line of text.split('\n')) {
      if (line.startsWith('#')) continue
      const at = line.lastIndexOf(' ')
      if (line.slice(0, at) === sample) return Number(line.slice(at + 1))
    }
    return undefined
  }

  /** Resident set size of the relay process in bytes, from /proc/PID/status (Linux). */
  async rss () {
    const status = await readFile(`/proc/${this.pid}/status`, 'utf8')
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status)
    if (!m) throw new Error(`no VmRSS in /proc/${this.pid}/status`)
    return Number(m[1]) * 1024
  }

  /** Kills the relay if it runs and removes the data directory it created. */
  async dispose () {
    try {
      await this.kill()
    } finally {
      if (this.ownsDataDir) await rm(this.dataDir, { recursive: true, force: true })
    }
  }
}

/**
 * Starts a relay on 127.0.0.1:0 with a fresh temporary data directory.
 * @param {{args?: string[], env?: Record<string, string>, launcher?: string[], bin?: string}} [opts] see {@link Relay}
 * @returns {Promise<Relay>}
 */
export async function startRelay (opts = {}) {
  const dataDir = await mkdtemp(join(tmpdir(), 'relay-test-'))
  const relay = new Relay({ dataDir, ownsDataDir: true, ...opts })
  try {
    await relay.start()
  } catch (err) {
    await relay.dispose()
    throw err
  }
  return relay
}
