// A document deleted on the relay (DELETE /api/docs/NAME, close code 4404) against the real relay
// binary, over a WebSocket and over long-polling: the provider stops for good, says so, and never
// sends its copy (in memory or in IndexedDB) back to the relay, which would bring it back.

import assert from 'node:assert/strict'
import { WebSocket } from 'ws'
import { IDBFactory } from 'fake-indexeddb'
import { relayTest } from '../../tests/js-support/relay-test.mjs'
import { loaded, provider, readFromRelay, saveStatusIs, synced } from './support/clients.mjs'
import { CountingWindow, countingTimers } from './support/env.mjs'
import { waitFor, waitForEvent } from '../../tests/js-support/wait.mjs'

const fast = { initialMs: 20, maxMs: 200 }

/** The HTTP status of a document API request to the relay. */
async function api (relay, method, room) {
  const res = await fetch(`${relay.httpUrl}/api/docs/${encodeURIComponent(room)}`, { method })
  await res.arrayBuffer()
  return res.status
}

/**
 * A browser's worth of environment for providers: one IndexedDB, counted timers and window
 * listeners, and counts of every WebSocket and HTTP request the providers make.
 */
function browser () {
  const counts = { sockets: 0, requests: 0 }
  class CountingWebSocket extends WebSocket {
    constructor (...args) {
      super(...args)
      counts.sockets++
    }
  }
  return {
    counts,
    timers: countingTimers(),
    window: new CountingWindow(),
    indexedDB: new IDBFactory(),
    /** Options for a provider of this browser. */
    opts (transport) {
      return {
        transport,
        offline: true,
        backoff: fast,
        WebSocketPolyfill: CountingWebSocket,
        fetch: (url, init) => { counts.requests++; return fetch(url, init) },
        env: { indexedDB: this.indexedDB, timers: this.timers.timers, window: this.window }
      }
    }
  }
}

for (const transport of ['websocket', 'polling']) {
  relayTest(`a document deleted while connected over ${transport === 'websocket' ? 'a WebSocket' : 'long-polling'}: no reconnect, nothing sent back, not even from IndexedDB after a reload`, {}, async (t, relay, scope) => {
    const room = `notes/deleted over ${transport}`
    const tab = browser()
    const a = provider(scope, relay.url, room, tab.opts(transport))
    await synced(a)
    a.doc.getText('text').insert(0, 'doomed')
    await saveStatusIs(a, 'saved')
    assert.equal(await api(relay, 'GET', room), 200)

    const closes = []
    a.on('connection-close', e => closes.push(e.code))
    const statuses = []
    a.on('save-status', e => statuses.push(e.status))
    const deleted = waitForEvent(a, 'deleted', { what: 'the deleted event' })
    assert.equal(await api(relay, 'DELETE', room), 200)
    const [event] = await deleted
    assert.deepEqual(event, { unsaved: false })
    assert.deepEqual(closes, [4404])
    assert.equal(a.deleted, true)
    assert.equal(a.status, 'disconnected')
    assert.deepEqual(statuses, ['deleted'])
    assert.equal(a.saveStatus, 'deleted')
    await assert.rejects(a.whenSaved(), /deleted/)
    // No reconnect is scheduled: every timer the provider made is gone.
    assert.equal(tab.timers.pending, 0, 'no timer left (a reconnect needs one)')

    // Edits go on locally; nothing brings the connection back: not the edit, not the network
    // coming back, not connect().
    const sockets = tab.counts.sockets
    const requests = tab.counts.requests
    a.doc.getText('text').insert(6, ' and edited after')
    tab.window.dispatchEvent(new Event('online'))
    a.connect()
    assert.equal(a.status, 'disconnected')
    assert.equal(a.saveStatus, 'deleted')
    assert.equal(tab.timers.pending, 0)
    assert.deepEqual([tab.counts.sockets, tab.counts.requests], [sockets, requests], 'no connection attempt')
    assert.equal(await api(relay, 'GET', room), 404, 'the relay did not get the document back')
    a.destroy()

    // A reload: the IndexedDB copy loads, records the deletion, and is not sent.
    const reload = provider(scope, relay.url, room, tab.opts(transport))
    const [again] = await waitForEvent(reload, 'deleted', { what: 'the reloaded provider to see the deletion' })
    assert.deepEqual(again, { unsaved: true }, 'the edit made after the deletion was never saved')
    assert.equal(reload.doc.getText('text').toString(), 'doomed and edited after')
    assert.equal(reload.status, 'disconnected')
    assert.equal(reload.saveStatus, 'deleted')
    assert.deepEqual([tab.counts.sockets, tab.counts.requests], [sockets, requests], 'the reload opened no connection')
    assert.equal(await api(relay, 'GET', room), 404)

    // Once the application lets the copy go, the room can be written anew, without the old content.
    await reload.clearLocalCopy()
    reload.destroy()
    const fresh = provider(scope, relay.url, room, tab.opts(transport))
    await loaded(fresh)
    assert.equal(fresh.doc.getText('text').toString(), '')
    await synced(fresh)
    fresh.doc.getText('text').insert(0, 'a new start')
    await saveStatusIs(fresh, 'saved')
    assert.equal(await readFromRelay(relay.url, room), 'a new start')
  })
}

relayTest('a deletion heard by one tab stops the other tabs of the browser, connected or not', {}, async (t, relay, scope) => {
  const room = 'notes/deleted in two tabs'
  const idb = new IDBFactory()
  const opts = { offline: true, crossTab: true, backoff: fast, env: { indexedDB: idb } }
  const online = provider(scope, relay.url, room, opts)
  // The other tab has no connection (e.g. it could not reach the relay), only the shared copy.
  const idle = provider(scope, relay.url, room, { ...opts, connect: false })
  await synced(online)
  await loaded(idle)
  online.doc.getText('text').insert(0, 'shared')
  await waitFor(() => idle.doc.getText('text').toString() === 'shared', { what: 'the other tab to get the edit' })
  await saveStatusIs(online, 'saved')

  const heard = waitForEvent(idle, 'deleted', { what: 'the other tab to hear of the deletion' })
  assert.equal(await api(relay, 'DELETE', room), 200)
  await heard
  assert.equal(online.deleted, true)
  assert.equal(idle.saveStatus, 'deleted')
  idle.connect()
  assert.equal(idle.status, 'disconnected', 'the other tab does not connect')
  assert.equal(await api(relay, 'GET', room), 404)
})
