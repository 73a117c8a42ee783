/* eslint-env browser */
// The page of scripts/browser-smoke.mjs: runs the provider in a real browser (WebSocket,
// IndexedDB, BroadcastChannel, window events) and writes what it saw into <pre id="out"> as JSON.
import * as Y from 'yjs'
import { RelayProvider } from '../../src/index.js'

const out = {}
const log = (key, value) => {
  out[key] = value
  document.getElementById('out').textContent = JSON.stringify(out)
}
const until = (cond, what, ms = 10_000) => new Promise((resolve, reject) => {
  const start = Date.now()
  const tick = () => {
    if (cond()) resolve()
    else if (Date.now() - start > ms) reject(new Error(`timed out waiting for ${what}`))
    else setTimeout(tick, 10)
  }
  tick()
})

async function main () {
  const relay = new URLSearchParams(location.search).get('relay')
  const room = `browser ${Math.random()}`
  const doc1 = new Y.Doc()
  const p1 = new RelayProvider(relay, room, doc1)
  await p1.whenLoaded
  await p1.whenSynced
  doc1.getText('t').insert(0, 'hello from the browser')
  log('afterEdit', p1.saveStatus)
  await p1.whenSaved()
  log('afterAck', p1.saveStatus)

  // A second provider in the same page stands for a second tab: same IndexedDB, BroadcastChannel.
  const doc2 = new Y.Doc()
  const p2 = new RelayProvider(relay, room, doc2, { connect: false })
  await p2.whenLoaded
  log('secondLoaded', doc2.getText('t').toString())
  log('secondStatus', p2.saveStatus)
  doc2.getText('t').insert(0, '[2] ')
  await until(() => doc1.getText('t').toString().startsWith('[2] '), 'the first provider to get the edit')
  log('crossTab', doc1.getText('t').toString())
  await until(() => p1.saveStatus === 'saved', 'saved')

  window.dispatchEvent(new Event('offline'))
  log('afterOffline', p1.status)
  doc1.getText('t').insert(0, '+')
  log('offlineEdit', p1.saveStatus)
  window.dispatchEvent(new Event('online'))
  await until(() => p1.saveStatus === 'saved', 'saved after online')
  log('afterOnline', p1.saveStatus)
  p1.destroy()
  p2.destroy()

  // A reload: the http:// form of the URL names the same database.
  const doc3 = new Y.Doc()
  const p3 = new RelayProvider(relay.replace(/^ws:/, 'http:'), room, doc3, { connect: false })
  await p3.whenLoaded
  log('reloaded', doc3.getText('t').toString())
  log('reloadedStatus', p3.saveStatus)
  p3.destroy()
  log('done', true)
}

main().catch(err => log('error', String(err?.stack ?? err)))
