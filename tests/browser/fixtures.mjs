// Fixtures of the browser tests: Debian's Chromium through playwright-core, people (browser
// contexts) signed on to the demo app, a plain Node client to read what the relay stored, and the
// app's autosave texts. The relay process, tokens and the waits with deadlines are the fixtures
// every JS suite shares (../js-support); the relay starts again on the same port, so that the
// pages keep their origin.
//
// The relay binary comes from $RELAY_BIN, or target/debug/relay. It serves the demo app from the
// examples/dist it was compiled with: rebuild it (`cargo build -p relay`) after `npm run build`.

import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { saveStatusText } from '../../examples/src/ui.js'
import { startRelay } from '../js-support/relay.mjs'
import { withDeadline } from '../js-support/wait.mjs'

const here = dirname(fileURLToPath(import.meta.url))
export const REPO = resolve(here, '../..')
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium'
/** Where tests leave screenshots of failures and the editor screenshot. */
export const ARTIFACTS = join(here, 'artifacts')

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
 * @param {import('../js-support/relay.mjs').Relay} relay
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

// The autosave indicator's texts, from the app's own mapping (examples/src/ui.js has no imports,
// so Node loads it as it is), so that a reworded status fails here only if the app changed it.
/** `#save-status` once the relay has committed every edit. */
export const SAVED = saveStatusText('saved')
/** `#save-status` while edits are kept only on this device (offline, or the relay is down). */
export const OFFLINE = saveStatusText('offline-unsaved')

/**
 * Waits until the page's autosave indicator (`#save-status`) shows exactly `text`.
 * @param {import('playwright-core').Page} page
 * @param {string} text
 * @param {number} [timeout] ms
 */
export function waitForSaveText (page, text, timeout = 15000) {
  return page.waitForFunction(t => document.querySelector('#save-status')?.textContent === t, text, { timeout })
}

/**
 * Moves the caret to the end of the editor's text.
 * @param {import('playwright-core').Page} page
 */
export async function caretToEnd (page) {
  await page.evaluate(() => {
    const editor = document.querySelector('.ql-editor')
    editor.focus()
    const range = document.createRange()
    range.selectNodeContents(editor.lastElementChild ?? editor)
    range.collapse(false)
    const sel = window.getSelection()
    sel.removeAllRanges()
    sel.addRange(range)
  })
}

/** The text of the editor (Quill's own view of it, without the trailing newline). */
export function editorText (page) {
  return page.evaluate(() => document.querySelector('.ql-editor').innerText.replace(/\n+$/, ''))
}

/**
 * Reads a room from the relay with a plain Node client (y-websocket, not the browser) and returns
 * the doc once it synced. The caller destroys it.
 * @param {import('../js-support/relay.mjs').Relay} relay
 * @param {string} room
 * @param {{ token?: string }} [opts] a token, for a relay with a secret
 */
export async function readRoom (relay, room, { token } = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(relay.url, encodeURIComponent(room), doc, {
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
 * @param {(env: {relay: import('../js-support/relay.mjs').Relay, browser: import('playwright-core').Browser}) => Promise<void>} fn
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
