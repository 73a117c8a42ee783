// Runs the provider in headless Chromium against the real relay: real WebSocket, IndexedDB,
// BroadcastChannel and window events. Not part of `npm test` (it needs a Chromium binary).
//
//   node scripts/browser-smoke.mjs [path/to/chromium]     (default: $CHROMIUM or /usr/bin/chromium)
//
// Prints what the page saw and exits 0 when it matches the expectations.
import { spawn } from 'node:child_process'
import { createServer } from 'node:http'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import assert from 'node:assert/strict'
import * as esbuild from 'esbuild'
import { WebSocket } from 'ws'
import { startRelay } from '../../tests/js-support/relay.mjs'
import { waitFor, withDeadline } from '../../tests/js-support/wait.mjs'

const chromiumPath = process.argv[2] ?? process.env.CHROMIUM ?? '/usr/bin/chromium'
const bundle = await esbuild.build({
  entryPoints: [fileURLToPath(new URL('./browser-smoke/page.js', import.meta.url))],
  bundle: true,
  format: 'esm',
  write: false,
  logLevel: 'warning'
})
const script = bundle.outputFiles[0].text
const html = '<!doctype html><html><body><pre id="out"></pre><script type="module" src="/page.js"></script></body></html>'
const server = createServer((req, res) => {
  const isScript = req.url === '/page.js'
  res.writeHead(200, { 'content-type': isScript ? 'text/javascript' : 'text/html' })
  res.end(isScript ? script : html)
})
await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
// The page comes from another origin than the relay's: allow it, as an application beside its
// relay would.
const relay = await startRelay({ args: ['--allowed-origin', `http://127.0.0.1:${server.address().port}`] })
const profile = await mkdtemp(join(tmpdir(), 'relay-client-chromium-'))
const pageUrl = `http://127.0.0.1:${server.address().port}/?relay=${encodeURIComponent(relay.url)}`
const chromium = spawn(chromiumPath, [
  '--headless=new', '--no-sandbox', '--disable-gpu', `--user-data-dir=${profile}`,
  '--remote-debugging-address=127.0.0.1', '--remote-debugging-port=0', pageUrl
], { stdio: ['ignore', 'ignore', 'pipe'] })
let stderr = ''
chromium.stderr.setEncoding('utf8').on('data', d => { stderr += d })
const exited = new Promise(resolve => chromium.once('exit', resolve))

try {
  const devtools = await waitFor(() => /DevTools listening on (ws:\/\/127\.0\.0\.1:\d+)\//.exec(stderr)?.[1], { timeout: 20_000, what: 'Chromium to start' })
  const port = new URL(devtools).port
  const targets = await waitFor(async () => {
    const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()
    return list.find(t => t.type === 'page' && t.url.startsWith('http://127.0.0.1')) ?? null
  }, { what: 'the page target' })
  const cdp = new WebSocket(targets.webSocketDebuggerUrl)
  await new Promise((resolve, reject) => { cdp.once('open', resolve); cdp.once('error', reject) })
  let nextId = 0
  const evaluate = expression => new Promise(resolve => {
    const id = ++nextId
    const onMessage = data => {
      const msg = JSON.parse(data)
      if (msg.id === id) { cdp.off('message', onMessage); resolve(msg.result?.result?.value) }
    }
    cdp.on('message', onMessage)
    cdp.send(JSON.stringify({ id, method: 'Runtime.evaluate', params: { expression } }))
  })
  const text = await waitFor(async () => {
    const v = await evaluate("document.getElementById('out')?.textContent ?? ''")
    return v && (v.includes('"done"') || v.includes('"error"')) ? v : null
  }, { timeout: 30_000, interval: 100, what: 'the page to finish' })
  cdp.close()
  const seen = JSON.parse(text)
  console.log(seen)
  assert.equal(seen.error, undefined)
  assert.deepEqual(seen, {
    afterEdit: 'saving',
    afterAck: 'saved',
    secondLoaded: 'hello from the browser',
    secondStatus: 'saved',
    crossTab: '[2] hello from the browser',
    afterOffline: 'disconnected',
    offlineEdit: 'offline-unsaved',
    afterOnline: 'saved',
    reloaded: '+[2] hello from the browser',
    reloadedStatus: 'saved',
    done: true
  })
  console.log('browser smoke test passed')
} finally {
  chromium.kill('SIGKILL')
  await withDeadline(exited, 10_000, 'Chromium to exit')
  await relay.dispose()
  server.close()
  await rm(profile, { recursive: true, force: true })
}
