// Test fixture: runs the real relay binary (target/debug/relay, or $RELAY_BIN) on 127.0.0.1 with a
// fresh data directory. Unlike tests/interop/relay.mjs, a restart keeps the port, so that a
// provider reconnects by itself and its IndexedDB (named after the server URL) stays the same.
// SIGSTOP/SIGCONT freeze the relay with its sockets open.

import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { withDeadline, waitFor } from './wait.mjs'

const here = dirname(fileURLToPath(import.meta.url))

export const RELAY_BIN = process.env.RELAY_BIN
  ? resolve(process.env.RELAY_BIN)
  : resolve(here, '../../../target/debug/relay')

const START_DEADLINE_MS = 20_000
const STOP_DEADLINE_MS = 20_000

const running = new Set()
process.on('exit', () => {
  for (const child of running) {
    try { child.kill('SIGKILL') } catch {}
  }
})

export class Relay {
  /**
   * @param {string} dataDir
   * @param {string[]} [args] more command-line options of `relay serve`
   */
  constructor (dataDir, args = []) {
    this.dataDir = dataDir
    this.args = args
    this.port = 0
    this.child = null
    this.stderr = ''
    this.exited = null
  }

  get url () { return `ws://127.0.0.1:${this.port}` }
  get httpUrl () { return `http://127.0.0.1:${this.port}` }
  get running () { return this.child !== null }

  /** Starts the relay (on the port of the previous run, if any) and waits until it listens. */
  async start () {
    if (this.child) throw new Error('relay already running')
    if (!existsSync(RELAY_BIN)) {
      throw new Error(`relay binary not found at ${RELAY_BIN} (build it with \`cargo build -p relay\` or set RELAY_BIN)`)
    }
    const child = spawn(RELAY_BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir, ...this.args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' }
    })
    this.child = child
    running.add(child)
    this.exited = new Promise(resolve => child.once('exit', (code, signal) => {
      running.delete(child)
      if (this.child === child) this.child = null
      resolve({ code, signal })
    }))
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', chunk => { this.stderr = (this.stderr + chunk).slice(-200_000) })
    child.stdout.setEncoding('utf8')
    let buf = ''
    const listening = new Promise((resolve, reject) => {
      child.stdout.on('data', chunk => {
        buf += chunk
        const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(buf)
        if (m) resolve(Number(m[1]))
      })
      child.once('error', reject)
      this.exited.then(({ code, signal }) => reject(new Error(`relay exited before listening (code ${code}, signal ${signal})\n${this.stderr}`)))
    })
    this.port = await withDeadline(listening, START_DEADLINE_MS, 'the relay to listen')
    return this
  }

  /** Graceful stop (SIGTERM); expects exit code 0. */
  async stop () {
    const child = this.child
    if (!child) throw new Error('relay is not running')
    child.kill('SIGTERM')
    const { code, signal } = await withDeadline(this.exited, STOP_DEADLINE_MS, 'the relay to exit after SIGTERM')
    if (code !== 0) throw new Error(`relay exited with code ${code}, signal ${signal}\n${this.stderr}`)
  }

  /** Starts again on the same port (the port can be busy for a moment after the stop). */
  async restart () {
    if (this.child) await this.stop()
    await waitFor(async () => {
      try {
        await this.start()
        return true
      } catch (err) {
        if (this.child) throw err
        return false
      }
    }, { timeout: 20_000, interval: 50, what: 'the relay to start again on its port' })
  }

  /** Hard stop: SIGKILL. */
  async kill () {
    const child = this.child
    if (!child) return
    child.kill('SIGCONT')
    child.kill('SIGKILL')
    await withDeadline(this.exited, STOP_DEADLINE_MS, 'the relay to exit after SIGKILL')
  }

  freeze () { this.child.kill('SIGSTOP') }
  thaw () { this.child.kill('SIGCONT') }

  /** The value of one sample of `/metrics` (e.g. `relay_connections`), or undefined. */
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

  async dispose () {
    await this.kill()
    await rm(this.dataDir, { recursive: true, force: true })
  }
}

/**
 * Starts a relay on a fresh data directory.
 * @param {string[]} [args] more command-line options of `relay serve`
 */
export async function startRelay (args = []) {
  const relay = new Relay(await mkdtemp(join(tmpdir(), 'relay-client-js-')), args)
  try {
    await relay.start()
  } catch (err) {
    await relay.dispose()
    throw err
  }
  return relay
}
