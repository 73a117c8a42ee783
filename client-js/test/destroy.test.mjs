// destroy() leaves nothing behind.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import * as Y from 'yjs'
import { Awareness } from 'y-protocols/awareness'
import { startRelay } from '../../tests/js-support/relay.mjs'
import { loaded, provider, saveStatusIs, synced } from './support/clients.mjs'
import { Scope } from '../../tests/js-support/relay-test.mjs'
import { CountingWindow, countingBroadcastChannel, countingIndexedDB, countingTimers } from './support/env.mjs'
import { waitFor, withDeadline } from '../../tests/js-support/wait.mjs'

for (const transport of ['auto', 'polling']) {
  test(`after destroy() the process exits by itself (transport '${transport}')`, async () => {
    const relay = await startRelay()
    try {
      const child = spawn(process.execPath, [fileURLToPath(new URL('./fixtures/destroy-and-exit.mjs', import.meta.url)), relay.url, transport], {
        stdio: ['ignore', 'pipe', 'inherit']
      })
      let out = ''
      child.stdout.setEncoding('utf8').on('data', d => { out += d })
      const exited = new Promise(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
      try {
        await withDeadline(waitFor(() => out.includes('destroyed'), { timeout: 20_000, what: 'the child to destroy its provider' }), 21_000, 'destroyed')
        // Generous against a slow machine, far below the 30 s of a liveness interval or a ws close timeout.
        const { code } = await withDeadline(exited, 5000, 'the child to exit after destroy()')
        assert.equal(code, 0)
      } finally {
        child.kill('SIGKILL')
      }
    } finally {
      await relay.dispose()
    }
  })
}

test('destroy() removes every timer, listener, channel and database handle it created', async () => {
  const relay = await startRelay()
  const scope = new Scope()
  try {
    const clock = countingTimers()
    const win = new CountingWindow()
    const bc = countingBroadcastChannel()
    const idb = countingIndexedDB()
    const doc = new Y.Doc()
    const awareness = new Awareness(doc)
    scope.defer(() => awareness.destroy())
    const docObservers = [...doc._observers.keys()].map(k => [k, doc._observers.get(k).size])
    const env = { timers: clock.timers, window: win, BroadcastChannel: bc.BroadcastChannel, indexedDB: idb.indexedDB }
    const p = provider(scope, relay.url, 'destroy', { doc, awareness, crossTab: true, offline: true, env })
    const watcher = provider(scope, relay.url, 'destroy')
    await synced(p, watcher)
    await loaded(p)
    awareness.setLocalStateField('user', 'x')
    await waitFor(() => watcher.awareness.getStates().has(doc.clientID), { what: 'the watcher to see the state' })
    doc.getText('t').insert(0, 'text')
    assert.ok(win.listeners.get('beforeunload') === 1, 'beforeunload while unsaved')
    await saveStatusIs(p, 'saved')
    assert.ok(clock.pending > 0, 'the liveness check runs')
    assert.ok(win.listenerCount > 0)
    assert.equal(bc.open.size, 1)
    assert.equal(idb.open, 1)

    p.destroy()
    assert.equal(clock.pending, 0, 'timers and intervals')
    assert.equal(win.listenerCount, 0, 'window listeners')
    assert.equal(bc.open.size, 0, 'BroadcastChannels')
    assert.equal(p.status, 'disconnected')
    await waitFor(() => idb.open === 0, { what: 'the IndexedDB connection to close' })
    assert.equal(awareness.getLocalState(), null, 'local awareness state cleared')
    assert.equal(awareness._observers.get('update')?.size ?? 0, 0, 'awareness listeners')
    assert.deepEqual([...doc._observers.keys()].map(k => [k, doc._observers.get(k).size]), docObservers, 'document listeners')
    await waitFor(() => !watcher.awareness.getStates().has(doc.clientID), { what: 'the watcher to see the state removed' })
    // Edits after destroy go nowhere and change nothing.
    doc.getText('t').insert(0, 'after ')
    assert.equal(p.saveStatus, 'saved')
    await withDeadline(p.whenSaved(), 1000, 'whenSaved() to resolve at once while saved')
  } finally {
    await scope.dispose()
    await relay.dispose()
  }
})

test('a document destroyed by the application destroys its provider', async () => {
  const scope = new Scope()
  try {
    const clock = countingTimers()
    const doc = new Y.Doc()
    const p = provider(scope, 'ws://127.0.0.1:9', 'gone', { doc, env: { timers: clock.timers }, backoff: { initialMs: 60_000, maxMs: 60_000 } })
    await waitFor(() => p.status === 'disconnected' && clock.pending === 1, { what: 'a reconnect to be scheduled' })
    doc.destroy()
    assert.equal(p.destroyed, true)
    assert.equal(clock.pending, 0)
  } finally {
    await scope.dispose()
  }
})
