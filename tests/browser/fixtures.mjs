// Fixtures of the browser tests: the real relay binary on a loopback port with a fresh data
// directory, Debian's Chromium through playwright-core, people (browser contexts) signed on to the
// demo app, a plain Node client to read what the relay stored, and condition waits with deadlines.
//
// The relay binary comes from $RELAY_BIN, or target/debug/relay. It serves the demo app from the
// examples/dist it was compiled with: rebuild it (`cargo build -p relay`) after `npm run build`.

import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const here = dirname(fileURLToPath(import.meta.url))
export const REPO = resolve(here, '../..')
export const RELAY_BIN = process.env.RELAY_BIN ? resolve(process.env.RELAY_BIN) : join(REPO, 'target/debug/relay')
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium'
/** Where tests leave screenshots of failures and the editor screenshot. */
export const ARTIFACTS = join(here, 'artifacts')

const START_DEADLINE_MS = 20000
const STOP_DEADLINE_MS = 20000

/** Every relay still running, killed if the test process exits first. */
const children = new Set()
process.on('exit', () => {
  for (const child of children) {
    try { child.kill('SIGKILL') } catch {}
  }
})

/**
 * Resolves with the promise's value, or rejects after ms with a message naming what was awaited.
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {string} what
 * @returns {Promise<T>}
 */
export function withDeadline (promise, ms, what) {
  let timer
  const deadline = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
  })
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}

/**
 * Polls fn until it returns a truthy value (returned) or the deadline passes (throws, with the
 * last value or error). For conditions outside the browser; in pages use waitForFunction.
 * @template T
 * @param {() => T | Promise<T>} fn
 * @param {{ timeout?: number, interval?: number, message: string }} opts
 * @returns {Promise<T>}
 */
export async function waitUntil (fn, { timeout = 10000, interval = 50, message }) {
  const end = Date.now() + timeout
  let last
  for (;;) {
    try {
      last = await fn()
      if (last) return last
    } catch (err) {
      last = err
    }
    if (Date.now() > end) {
      throw new Error(`timed out after ${timeout} ms waiting for ${message} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`)
    }
    await new Promise(resolve => setTimeout(resolve, interval))
  }
}

/** A free TCP port on 127.0.0.1 (free when asked; the relay binds it right after). */
export function freePort () {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** The relay binary on a fixed loopback port, restartable on the same data directory and port. */
export class Relay {
  /**
   * @param {{ port: number, dataDir: string, args?: string[] }} opts `args`: more flags for
   *   `relay serve` (e.g. `--secret`, `--demo-sign-on`)
   */
  constructor ({ port, dataDir, args = [] }) {
    this.port = port
    this.dataDir = dataDir
    this.args = args
    this.child = null
    this.stderr = ''
    this.exited = null
  }

  get httpUrl () { return `http://127.0.0.1:${this.port}` }
  get wsUrl () { return `ws://127.0.0.1:${this.port}` }
  get running () { return this.child !== null }

  /** Starts the relay and waits until it prints `listening on http://127.0.0.1:PORT`. */
  async start () {
    if (this.child) throw new Error('relay already running')
    if (!existsSync(RELAY_BIN)) throw new Error(`no relay binary at ${RELAY_BIN}: run \`cargo build -p relay\``)
    const shown = this.args.map((arg, i) => this.args[i - 1] === '--secret' ? '<secret>' : arg)
    this.stderr += `----- ${RELAY_BIN} serve --listen 127.0.0.1:${this.port} --data-dir ${this.dataDir} ${shown.join(' ')}\n`
    const child = spawn(RELAY_BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir, ...this.args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' }
    })
    this.child = child
    children.add(child)
    this.exited = new Promise(resolve => child.once('exit', (code, signal) => {
      children.delete(child)
      if (this.child === child) this.child = null
      resolve({ code, signal })
    }))
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', chunk => { this.stderr = (this.stderr + chunk).slice(-1_000_000) })
    child.stdout.setEncoding('utf8')
    let out = ''
    const listening = new Promise((resolve, reject) => {
      child.stdout.on('data', chunk => {
        out += chunk
        if (out.includes(`listening on http://127.0.0.1:${this.port}`)) resolve()
      })
      child.once('error', reject)
      this.exited.then(({ code, signal }) => reject(new Error(`relay exited before listening (code ${code}, signal ${signal})\n${this.stderr}`)))
    })
    await withDeadline(listening, START_DEADLINE_MS, 'the relay to listen')
    return this
  }

  /** Graceful stop (SIGTERM): the relay closes its sockets with 1001, commits and exits 0. */
  async stop () {
    const child = this.child
    if (!child) return
    child.kill('SIGTERM')
    const { code, signal } = await withDeadline(this.exited, STOP_DEADLINE_MS, 'the relay to exit after SIGTERM')
    if (code !== 0) throw new Error(`relay exited with code ${code} (signal ${signal}) after SIGTERM\n${this.stderr}`)
  }

  /** Hard stop (SIGKILL): whatever was not committed is lost. */
  async kill () {
    const child = this.child
    if (!child) return
    child.kill('SIGKILL')
    await withDeadline(this.exited, STOP_DEADLINE_MS, 'the relay to exit after SIGKILL')
  }

  async dispose () {
    await this.kill()
    await rm(this.dataDir, { recursive: true, force: true })
  }
}

/**
 * Starts a relay on a free port with a fresh data directory.
 * @param {{ args?: string[] }} [opts] more flags for `relay serve`
 */
export async function startRelay ({ args = [] } = {}) {
  const dataDir = await mkdtemp(join(tmpdir(), 'relay-browser-'))
  const relay = new Relay({ port: await freePort(), dataDir, args })
  try {
    await relay.start()
  } catch (err) {
    await relay.dispose()
    throw err
  }
  return relay
}

/** Headless Chromium from Debian; playwright-core gives it a fresh temporary profile. */
export function launchBrowser () {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium`)
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']
  })
}

/**
 * A person using the app: an isolated browser context (own storage, IndexedDB, service worker)
 * with their display name already signed on, and one page. Page errors and Yjs' warning about
 * a second copy of itself are collected in `problems`, the types of dialogs shown in `dialogs`
 * (a beforeunload dialog is accepted: the tests mean to leave).
 * @param {import('playwright-core').Browser} browser
 * @param {Relay} relay
 * @param {{ name?: string, color?: string, viewport?: {width: number, height: number} }} [opts]
 */
export async function openPerson (browser, relay, { name, color = '#2563eb', viewport = { width: 1100, height: 760 } } = {}) {
  const context = await browser.newContext({ baseURL: relay.httpUrl, viewport })
  if (name) {
    await context.addInitScript(([key, user]) => {
      // about:blank (a new tab) has no localStorage
      if (location.protocol.startsWith('http') && !localStorage.getItem(key)) localStorage.setItem(key, user)
    }, ['relay-demo:user', JSON.stringify({ name, color })])
  }
  const page = await context.newPage()
  const problems = []
  const dialogs = []
  watchPage(page, problems, dialogs)
  context.on('page', p => watchPage(p, problems, dialogs))
  return { context, page, problems, dialogs, name }
}

function watchPage (page, problems, dialogs) {
  page.on('pageerror', err => problems.push(`page error: ${err.message}`))
  page.on('console', msg => {
    if (/Yjs was already imported/.test(msg.text())) problems.push(`console: ${msg.text()}`)
  })
  // Leaving a page with unsaved edits asks first (beforeunload); the tests mean to leave.
  page.on('dialog', dialog => {
    dialogs.push(dialog.type())
    return dialog.type() === 'beforeunload' ? dialog.accept() : dialog.dismiss()
  })
}

/**
 * Opens a document in the editor and waits until it can be edited.
 * @param {import('playwright-core').Page} page
 * @param {string} name
 */
export async function openDoc (page, name) {
  await page.goto(`/docs/${encodeURIComponent(name)}`)
  await page.locator('.ql-editor[contenteditable="true"]').waitFor({ timeout: 15000 })
}

/** The text of the editor (Quill's own view of it, without the trailing newline). */
export function editorText (page) {
  return page.evaluate(() => document.querySelector('.ql-editor').innerText.replace(/\n+$/, ''))
}

/**
 * Reads a room from the relay with a plain Node client (y-websocket, not the browser) and returns
 * the doc once it synced. The caller destroys it.
 * @param {Relay} relay
 * @param {string} room
 * @param {{ token?: string }} [opts] a token, for a relay with a secret
 */
export async function readRoom (relay, room, { token } = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(relay.wsUrl, encodeURIComponent(room), doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    params: token ? { token } : {}
  })
  try {
    await withDeadline(new Promise(resolve => {
      if (provider.synced) resolve()
      provider.on('sync', synced => { if (synced) resolve() })
    }), 10000, `a Node client to sync ${room}`)
  } catch (err) {
    provider.destroy()
    throw err
  }
  return { doc, destroy: () => { provider.destroy(); doc.destroy() } }
}

/** Saves a screenshot of every page of a failed test under artifacts/. */
export async function screenshotAll (label, pages) {
  await mkdir(ARTIFACTS, { recursive: true })
  for (const [i, page] of pages.entries()) {
    await page.screenshot({ path: join(ARTIFACTS, `${label.replace(/[^a-z0-9]+/gi, '-')}-${i}.png`) }).catch(() => {})
  }
}

/**
 * Runs fn with a fresh relay and browser, cleaning both up; on failure prints the relay's log and
 * keeps screenshots of the pages in artifacts/.
 * @param {string} label
 * @param {(env: {relay: Relay, browser: import('playwright-core').Browser}) => Promise<void>} fn
 * @param {{ args?: string[] }} [opts] more flags for `relay serve`
 */
export async function withRelayAndBrowser (label, fn, { args = [] } = {}) {
  const relay = await startRelay({ args })
  let browser
  try {
    browser = await launchBrowser()
    await fn({ relay, browser })
  } catch (err) {
    if (browser) await screenshotAll(label, browser.contexts().flatMap(c => c.pages()))
    process.stderr.write(`\n===== relay log of "${label}" =====\n${relay.stderr.slice(-20000)}\n===== end =====\n`)
    throw err
  } finally {
    await browser?.close().catch(() => {})
    await relay.dispose()
  }
}

/** A random relay secret: 32 hex digits. */
export function randomSecret () {
  return randomBytes(16).toString('hex')
}

/**
 * Mints a token with the relay binary (`relay token`), e.g. an admin token for the document API.
 * @param {string} secret the relay's --secret
 * @param {{ access?: 'read' | 'write' | 'admin', ttl?: string, doc?: string }} [opts]
 * @returns {Promise<string>}
 */
export function mintToken (secret, { access = 'admin', ttl = '10m', doc } = {}) {
  const args = ['token', '--access', access, '--ttl', ttl, ...(doc ? ['--doc', doc] : [])]
  return new Promise((resolve, reject) => {
    // The secret goes through the environment, not the command line.
    execFile(RELAY_BIN, args, { env: { ...process.env, RELAY_SECRET: secret }, timeout: 10000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`relay token failed: ${err.message}\n${stderr}`))
      else resolve(stdout.trim())
    })
  })
}
