// Tabs of one browser: providers in one process share BroadcastChannels as tabs do.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { loaded, provider, saveStatusIs, synced } from './support/clients.mjs'
import { Scope } from '../../tests/js-support/relay-test.mjs'
import { startRelay } from '../../tests/js-support/relay.mjs'
import { waitFor } from '../../tests/js-support/wait.mjs'

const NOWHERE = 'ws://127.0.0.1:9' // no relay: the tabs are offline

test('edits and awareness reach the other tab without a relay', async () => {
  const scope = new Scope()
  try {
    const a = provider(scope, NOWHERE, 'tabs', { connect: false, crossTab: true })
    a.doc.getText('t').insert(0, 'written before the other tab opened. ')
    const b = provider(scope, NOWHERE, 'tabs', { connect: false, crossTab: true })
    const elsewhere = provider(scope, NOWHERE, 'another room', { connect: false, crossTab: true })
    await Promise.all([loaded(a), loaded(b), loaded(elsewhere)])
    await waitFor(() => b.doc.getText('t').toString() === 'written before the other tab opened. ', { what: 'b to get what a had' })
    b.doc.getText('t').insert(b.doc.getText('t').length, 'from b.')
    await waitFor(() => a.doc.getText('t').toString() === 'written before the other tab opened. from b.', { what: 'a to get b\'s edit' })
    // Edits that came from another tab are not saved either: this tab cannot vouch for them.
    assert.equal(a.saveStatus, 'offline-unsaved')

    a.awareness.setLocalStateField('cursor', 3)
    await waitFor(() => b.awareness.getStates().get(a.doc.clientID)?.cursor === 3, { what: 'b to see a\'s cursor' })
    a.destroy()
    await waitFor(() => !b.awareness.getStates().has(a.doc.clientID), { what: 'b to drop a after destroy' })
    assert.equal(elsewhere.doc.getText('t').length, 0, 'another room hears nothing')
  } finally {
    await scope.dispose()
  }
})

test('a tab that is offline gets edits through a tab that is online, and both end up saved', async () => {
  const relay = await startRelay()
  const scope = new Scope()
  try {
    const online = provider(scope, relay.url, 'tabs', { crossTab: true })
    await synced(online)
    const offline = provider(scope, relay.url, 'tabs', { crossTab: true, connect: false })
    await loaded(offline)
    offline.doc.getText('t').insert(0, 'typed offline')
    await waitFor(() => online.doc.getText('t').toString() === 'typed offline', { what: 'the online tab to get it' })
    await saveStatusIs(online, 'saved')
    const reader = provider(scope, relay.url, 'tabs')
    await waitFor(() => reader.doc.getText('t').toString() === 'typed offline', { what: 'the relay to have it' })
    assert.equal(offline.saveStatus, 'offline-unsaved')
    offline.connect()
    await saveStatusIs(offline, 'saved')
  } finally {
    await scope.dispose()
    await relay.dispose()
  }
})

test('tabs share one IndexedDB: what one tab wrote loads in the next', async () => {
  const { IDBFactory } = await import('fake-indexeddb')
  const idb = new IDBFactory()
  const scope = new Scope()
  try {
    const opts = { connect: false, crossTab: true, offline: true, env: { indexedDB: idb } }
    const a = provider(scope, NOWHERE, 'shared-idb', opts)
    const b = provider(scope, NOWHERE, 'shared-idb', opts)
    await Promise.all([loaded(a), loaded(b)])
    a.doc.getText('t').insert(0, 'a')
    b.doc.getText('t').insert(0, 'b')
    await waitFor(() => a.doc.getText('t').toString() === b.doc.getText('t').toString() && a.doc.getText('t').length === 2)
    const expected = a.doc.getText('t').toString()
    a.destroy()
    b.destroy()
    const c = provider(scope, NOWHERE, 'shared-idb', { ...opts, doc: new Y.Doc() })
    await loaded(c)
    assert.equal(c.doc.getText('t').toString(), expected)
    assert.equal(c.saveStatus, 'offline-unsaved')
  } finally {
    await scope.dispose()
  }
})
