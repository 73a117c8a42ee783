// The document editor in two (or three) browsers: live edits, remote cursors, offline editing
// with a reload served by the service worker, and a saved indicator that waits for the relay.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { copyFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import {
  ARTIFACTS, OFFLINE, REPO, SAVED, caretToEnd, editorText, openDoc, openPerson, readRoom, waitForSaveText,
  withRelayAndBrowser
} from './fixtures.mjs'
import { waitFor } from '../js-support/wait.mjs'

/**
 * Records, with the time, every text the autosave indicator shows (window.__saveLog) and every
 * connection status the page shows (window.__connLog).
 * @param {import('playwright-core').Page} page
 */
async function recordStatus (page) {
  await page.evaluate(() => {
    const watch = (el, read) => {
      const log = [{ at: Date.now(), value: read(el) }]
      new MutationObserver(() => {
        if (log[log.length - 1].value !== read(el)) log.push({ at: Date.now(), value: read(el) })
      }).observe(el, { childList: true, characterData: true, subtree: true, attributes: true })
      return log
    }
    window.__saveLog = watch(document.querySelector('#save-status'), el => el.textContent)
    window.__connLog = watch(document.querySelector('#conn-status'), el => el.dataset.status)
  })
}

/**
 * Selects the first occurrence of `text` in the editor (or puts the caret at its end).
 * @param {import('playwright-core').Page} page
 * @param {string} text
 * @param {{ collapse?: 'end' }} [opts]
 */
async function selectText (page, text, { collapse } = {}) {
  await page.evaluate(([text, collapse]) => {
    const editor = document.querySelector('.ql-editor')
    editor.focus()
    const walker = document.createTreeWalker(editor, NodeFilter.SHOW_TEXT)
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const at = node.textContent.indexOf(text)
      if (at < 0) continue
      const range = document.createRange()
      range.setStart(node, at)
      range.setEnd(node, at + text.length)
      if (collapse === 'end') range.collapse(false)
      const sel = window.getSelection()
      sel.removeAllRanges()
      sel.addRange(range)
      return
    }
    throw new Error(`no text ${JSON.stringify(text)} in the editor`)
  }, [text, collapse])
}

/**
 * Whether the page gets an answer from the relay to a request of its own (GET /healthz, which the
 * service worker leaves to the network).
 * @param {import('playwright-core').Page} page
 */
function canReachRelay (page) {
  return page.evaluate(() => fetch('/healthz', { cache: 'no-store' }).then(res => res.ok, () => false))
}

test('two people edit one document: edits appear within a second, with cursors and presence', { timeout: 120000 }, async () => {
  await withRelayAndBrowser('live editing', async ({ relay, browser }) => {
    const alice = await openPerson(browser, relay, { name: 'Alice', color: '#dc2626' })
    const bob = await openPerson(browser, relay, { name: 'Bob', color: '#2563eb' })
    const doc = 'Team plan'
    await openDoc(alice.page, doc)
    await openDoc(bob.page, doc)

    // Each sees the other in the presence list.
    await alice.page.locator('#presence .person[data-name="Bob"]').waitFor({ timeout: 10000 })
    await bob.page.locator('#presence .person[data-name="Alice"]').waitFor({ timeout: 10000 })

    // Edit-to-appearance delay, measured in the browsers: Alice's insertion (one input event)
    // until Bob's editor shows it. Both pages read the same system clock.
    await alice.page.locator('.ql-editor').click()
    const delays = []
    for (let i = 0; i < 5; i++) {
      const marker = `word${i}x${Date.now() % 100000}`
      await bob.page.evaluate(m => {
        window.__seen = new Promise(resolve => {
          const editor = document.querySelector('.ql-editor')
          const check = () => { if (editor.textContent.includes(m)) { observer.disconnect(); resolve(Date.now()) } }
          const observer = new MutationObserver(check)
          observer.observe(editor, { childList: true, characterData: true, subtree: true })
          check()
        })
      }, marker)
      const sentAt = await alice.page.evaluate(() => Date.now())
      await alice.page.keyboard.insertText(`${marker} `)
      const seenAt = await bob.page.evaluate(() => Promise.race([
        window.__seen,
        new Promise((resolve, reject) => setTimeout(() => reject(new Error('not seen within 5 s')), 5000))
      ]))
      delays.push(seenAt - sentAt)
    }
    const sorted = [...delays].sort((a, b) => a - b)
    console.log(`edit-to-appearance delay (ms), 5 edits: ${delays.join(', ')}; median ${sorted[2]}, max ${sorted[4]}`)
    for (const d of delays) assert.ok(d < 1000, `an edit took ${d} ms to appear in the other browser (limit 1000 ms)`)

    // Typing with the keyboard, both ways, converges.
    await alice.page.keyboard.type('Alice writes this. ')
    await bob.page.locator('.ql-editor').click()
    await caretToEnd(bob.page)
    await bob.page.keyboard.type('Bob adds that.')
    await waitFor(async () => {
      const [a, b] = [await editorText(alice.page), await editorText(bob.page)]
      return a === b && a.includes('Alice writes this.') && a.includes('Bob adds that.') && a
    }, { timeout: 5000, what: 'both editors to show the same text' })

    // Bob sees Alice's cursor with her name and colour, Alice sees Bob's.
    const aliceCursor = bob.page.locator('.ql-cursor', { has: bob.page.locator('.ql-cursor-name', { hasText: 'Alice' }) })
    await aliceCursor.locator('.ql-cursor-caret').waitFor({ timeout: 5000 })
    const color = await aliceCursor.locator('.ql-cursor-caret').evaluate(el => getComputedStyle(el).backgroundColor)
    assert.equal(color, 'rgb(220, 38, 38)', 'Alice\'s cursor has her colour')
    await alice.page.locator('.ql-cursor-name', { hasText: 'Bob' }).waitFor({ timeout: 5000 })

    // A selection shows as a highlighted range on the other side.
    await selectText(alice.page, 'Alice writes')
    await aliceCursor.locator('.ql-cursor-selection-block').first().waitFor({ timeout: 5000 })

    // Both wait for the relay's acknowledgement.
    await waitForSaveText(alice.page, SAVED)
    await waitForSaveText(bob.page, SAVED)
    assert.deepEqual([...alice.problems, ...bob.problems], [])
  })
})

test('screenshot: the editor with two other people\'s cursors', { timeout: 120000 }, async () => {
  await withRelayAndBrowser('screenshot', async ({ relay, browser }) => {
    const viewport = { width: 1000, height: 620 }
    const alice = await openPerson(browser, relay, { name: 'Alice', color: '#dc2626', viewport })
    const bob = await openPerson(browser, relay, { name: 'Bob', color: '#2563eb', viewport })
    const carol = await openPerson(browser, relay, { name: 'Carol', color: '#059669', viewport })
    const doc = 'Launch checklist'
    await openDoc(alice.page, doc)
    await openDoc(bob.page, doc)
    await openDoc(carol.page, doc)

    await alice.page.locator('.ql-editor').click()
    // "- " at the start of a line starts a bulleted list (Quill's keyboard shortcut).
    await alice.page.keyboard.type('Launch checklist')
    await alice.page.keyboard.press('Enter')
    await alice.page.keyboard.type('Everything we need before Friday. Edit freely: changes are saved as you type.')
    await alice.page.keyboard.press('Enter')
    await alice.page.keyboard.type('- Write the release notes')
    await alice.page.keyboard.press('Enter')
    await alice.page.keyboard.type('Check the offline mode on phones')
    await alice.page.keyboard.press('Enter')
    await alice.page.keyboard.type('Announce it in #general')
    await carol.page.waitForFunction(() => document.querySelector('.ql-editor').textContent.includes('Announce it in #general'), null, { timeout: 10000 })
    // The first line as a heading, with the toolbar.
    await carol.page.locator('.ql-editor p').first().click()
    await carol.page.locator('.ql-toolbar .ql-header .ql-picker-label').click()
    await carol.page.locator('.ql-toolbar .ql-header .ql-picker-item[data-value="1"]').click()
    await alice.page.locator('.ql-editor h1').waitFor({ timeout: 5000 })

    // Bob selects "release notes"; Alice's caret rests after "phones".
    await selectText(bob.page, 'release notes')
    await selectText(alice.page, 'phones', { collapse: 'end' })
    // Carol's view: both cursors with names, her own caret elsewhere.
    await carol.page.locator('.ql-editor p').first().click()
    await carol.page.locator('.ql-cursor-name', { hasText: 'Alice' }).waitFor({ state: 'visible', timeout: 5000 })
    await carol.page.locator('.ql-cursor-name', { hasText: 'Bob' }).waitFor({ state: 'visible', timeout: 5000 })
    await carol.page.locator('.ql-cursor', { has: carol.page.locator('.ql-cursor-name', { hasText: 'Bob' }) })
      .locator('.ql-cursor-selection-block').first().waitFor({ timeout: 5000 })
    await waitForSaveText(carol.page, SAVED)
    await carol.page.evaluate(() => document.activeElement?.blur())
    await mkdir(ARTIFACTS, { recursive: true })
    const path = join(ARTIFACTS, 'screenshot-editor.png')
    await carol.page.screenshot({ path })
    console.log(`editor screenshot: ${path}`)
    if (process.env.UPDATE_SCREENSHOTS === '1') {
      await copyFile(path, join(REPO, 'examples/screenshot-editor.png'))
      console.log('copied to examples/screenshot-editor.png')
    }
  })
})

test('offline: edits are kept, the page reloads from the service worker, and both converge online', { timeout: 120000 }, async () => {
  await withRelayAndBrowser('offline', async ({ relay, browser }) => {
    const alice = await openPerson(browser, relay, { name: 'Alice', color: '#dc2626' })
    const bob = await openPerson(browser, relay, { name: 'Bob', color: '#2563eb' })
    const doc = 'Field notes'
    await openDoc(alice.page, doc)
    await openDoc(bob.page, doc)
    await alice.page.locator('.ql-editor').click()
    await alice.page.keyboard.type('Shared start. ')
    await bob.page.waitForFunction(() => document.querySelector('.ql-editor').textContent.includes('Shared start.'), null, { timeout: 5000 })
    await waitForSaveText(alice.page, SAVED)

    // The service worker controls the page and has the shell cached.
    await alice.page.waitForFunction(async () => {
      if (!navigator.serviceWorker.controller) return false
      const keys = await caches.keys()
      return keys.some(k => k.startsWith('relay-shell-'))
    }, null, { timeout: 15000 })

    await alice.context.setOffline(true)
    await alice.page.waitForFunction(() => document.querySelector('#conn-status')?.dataset.status !== 'connected', null, { timeout: 10000 })
    await caretToEnd(alice.page)
    await alice.page.keyboard.type('Written offline.')
    await waitForSaveText(alice.page, OFFLINE)

    // Meanwhile Bob keeps writing online.
    await bob.page.locator('.ql-editor').click()
    await caretToEnd(bob.page)
    await bob.page.keyboard.type(' Bob, online.')
    await waitForSaveText(bob.page, SAVED)
    assert.ok(!(await editorText(bob.page)).includes('Written offline.'), 'offline edits do not reach Bob while Alice is offline')

    // Reload while offline: the service worker serves the app, IndexedDB the document. The page
    // asks before leaving with unsaved edits.
    const response = await alice.page.reload()
    assert.deepEqual(alice.dialogs, ['beforeunload'], 'leaving with unsaved edits asks first')
    assert.ok(response, 'the reload got a response')
    assert.ok(response.fromServiceWorker(), 'the reloaded page came from the service worker')
    assert.equal(await response.headerValue('x-served-from'), 'cache', 'the service worker answered from its cache, not the network')
    // Still offline: the page's own requests fail. (Not `navigator.onLine`: Chromium 148 reads it
    // as true in a document loaded while the context is offline, and lets the service worker out
    // to the network again after the reload; the page's requests stay offline.)
    assert.equal(await canReachRelay(alice.page), false, 'the page still cannot reach the relay')
    await alice.page.locator('.ql-editor[contenteditable="true"]').waitFor({ timeout: 15000 })
    await alice.page.waitForFunction(() => document.querySelector('.ql-editor').textContent.includes('Written offline.'), null, { timeout: 10000 })
    await recordStatus(alice.page)
    await waitForSaveText(alice.page, OFFLINE)

    // Back online: both converge and the indicator turns to saved.
    await alice.context.setOffline(false)
    await waitForSaveText(alice.page, SAVED, 30000)
    await waitFor(async () => {
      const [a, b] = [await editorText(alice.page), await editorText(bob.page)]
      return a === b && a.includes('Written offline.') && a.includes('Bob, online.') && a
    }, { timeout: 10000, what: 'Alice and Bob to converge' })
    const log = await alice.page.evaluate(() => window.__saveLog.map(e => e.value))
    assert.equal(log[0], OFFLINE)
    assert.equal(log[log.length - 1], SAVED)
    console.log(`indicator after the offline reload: ${log.join(' → ')}`)

    // The relay has it (a Node client, not a browser).
    const reader = await readRoom(relay, `docs/${doc}`)
    try {
      const stored = reader.doc.getText('quill').toString()
      assert.ok(stored.includes('Written offline.') && stored.includes('Bob, online.'), `relay has both edits: ${JSON.stringify(stored)}`)
    } finally {
      reader.destroy()
    }
    assert.deepEqual([...alice.problems, ...bob.problems], [])
  })
})

test('"All changes saved" waits for the relay: never while it is down, and the edit is durable once shown', { timeout: 120000 }, async () => {
  await withRelayAndBrowser('saved needs the relay', async ({ relay, browser }) => {
    const alice = await openPerson(browser, relay, { name: 'Alice', color: '#dc2626' })
    const doc = 'Durable'
    await openDoc(alice.page, doc)
    await alice.page.locator('.ql-editor').click()
    await alice.page.keyboard.type('Before the outage. ')
    await waitForSaveText(alice.page, SAVED)
    await recordStatus(alice.page)

    await relay.stop()
    await alice.page.waitForFunction(() => document.querySelector('#conn-status')?.dataset.status !== 'connected', null, { timeout: 10000 })
    const editedAt = await alice.page.evaluate(() => Date.now())
    await alice.page.keyboard.type('During the outage.')
    await waitForSaveText(alice.page, OFFLINE)
    // Let the client try to reconnect and fail at least once while the relay is down.
    await alice.page.waitForFunction(since => {
      const log = window.__connLog
      const i = log.findIndex(e => e.at >= since && e.value === 'connecting')
      return i >= 0 && log.slice(i + 1).some(e => e.value === 'disconnected')
    }, editedAt, { timeout: 20000 })
    assert.equal(await alice.page.locator('#save-status').textContent(), OFFLINE)

    await relay.start() // same data directory, same port
    const restartedAt = Date.now()
    await waitForSaveText(alice.page, SAVED, 60000)
    const [saveLog, connLog] = await alice.page.evaluate(() => [window.__saveLog, window.__connLog])
    const t0 = saveLog[0].at
    console.log(`indicator: ${saveLog.map(e => `${e.value} (+${e.at - t0} ms)`).join(' → ')}`)
    console.log(`connection: ${connLog.map(e => `${e.value} (+${e.at - t0} ms)`).join(' → ')}; relay listening again at +${restartedAt - t0} ms`)
    const early = saveLog.filter(e => e.value === SAVED && e.at >= editedAt && e.at < restartedAt)
    assert.deepEqual(early, [], 'the indicator said saved while the relay was down')
    assert.ok(saveLog.findLast(e => e.value === SAVED).at >= restartedAt, 'saved is shown only after the relay is back')

    // Close the browser's side first, so that nothing could resend the edit, then kill the relay
    // hard: what was acknowledged must be on disk.
    await alice.context.close()
    await relay.kill()
    await relay.start()
    const reader = await readRoom(relay, `docs/${doc}`)
    try {
      assert.equal(reader.doc.getText('quill').toString().replace(/\n$/, ''), 'Before the outage. During the outage.')
    } finally {
      reader.destroy()
    }
    assert.deepEqual(alice.problems, [])
  })
})

test('a document deleted on the relay while open: the pages say so, typing stops, the copy on the device goes, nothing comes back', { timeout: 120000 }, async () => {
  await withRelayAndBrowser('deleted while open', async ({ relay, browser }) => {
    const alice = await openPerson(browser, relay, { name: 'Alice', color: '#dc2626' })
    const bob = await openPerson(browser, relay, { name: 'Bob', color: '#2563eb' })
    const doc = 'Doomed'
    await openDoc(alice.page, doc)
    await openDoc(bob.page, doc)
    await alice.page.locator('.ql-editor').click()
    await alice.page.keyboard.type('Soon gone.')
    await bob.page.waitForFunction(() => document.querySelector('.ql-editor').textContent.includes('Soon gone.'), null, { timeout: 5000 })
    await waitForSaveText(alice.page, SAVED)
    const database = `relay-client:${relay.url}/${encodeURIComponent(`docs/${doc}`)}`
    const databases = page => page.evaluate(async () => (await indexedDB.databases()).map(d => d.name))
    assert.ok((await databases(alice.page)).includes(database), 'the copy on the device is there')

    const res = await fetch(`${relay.httpUrl}/api/docs/${encodeURIComponent(`docs/${doc}`)}`, { method: 'DELETE' })
    assert.equal(res.status, 200)
    for (const { page } of [alice, bob]) {
      const notice = page.locator('#deleted-notice')
      await notice.waitFor({ timeout: 10000 })
      assert.match(await notice.textContent(), /^This document was deleted on the relay\. Its copy on this device has been removed\./)
      await waitForSaveText(page, 'Deleted: nothing here is saved any more')
      assert.equal(await page.locator('.ql-editor').getAttribute('contenteditable'), 'false', 'the editor is disabled')
      await waitFor(async () => !(await databases(page)).includes(database), { timeout: 10000, what: 'the copy on the device to be removed' })
    }
    assert.equal((await fetch(`${relay.httpUrl}/api/docs/${encodeURIComponent(`docs/${doc}`)}`)).status, 404, 'the relay did not get it back')

    // Opening the address again starts an empty document: nothing of the old one is sent.
    await openDoc(alice.page, doc)
    await alice.page.locator('#conn-status[data-status="connected"]').waitFor({ state: 'attached', timeout: 10000 })
    assert.equal(await editorText(alice.page), '')
    const reader = await readRoom(relay, `docs/${doc}`)
    try {
      assert.equal(reader.doc.getText('quill').toString(), '', 'the relay has nothing of the deleted document')
    } finally {
      reader.destroy()
    }
    assert.deepEqual([...alice.problems, ...bob.problems], [])
  })
})

test('two tabs of one browser share edits without the network (BroadcastChannel)', { timeout: 120000 }, async () => {
  await withRelayAndBrowser('tabs', async ({ relay, browser }) => {
    const alice = await openPerson(browser, relay, { name: 'Alice', color: '#dc2626' })
    const doc = 'Two tabs'
    await openDoc(alice.page, doc)
    const tab2 = await alice.context.newPage()
    await openDoc(tab2, doc)
    await alice.context.setOffline(true)
    for (const page of [alice.page, tab2]) {
      await page.waitForFunction(() => document.querySelector('#conn-status')?.dataset.status !== 'connected', null, { timeout: 10000 })
    }
    await alice.page.locator('.ql-editor').click()
    await alice.page.keyboard.type('From the first tab.')
    await tab2.waitForFunction(() => document.querySelector('.ql-editor').textContent.includes('From the first tab.'), null, { timeout: 5000 })
    await waitForSaveText(tab2, OFFLINE)
    await alice.context.setOffline(false)
    await waitForSaveText(alice.page, SAVED, 30000)
    await waitForSaveText(tab2, SAVED, 30000)
    const reader = await readRoom(relay, `docs/${doc}`)
    try {
      assert.equal(reader.doc.getText('quill').toString().replace(/\n$/, ''), 'From the first tab.')
    } finally {
      reader.destroy()
    }
    assert.deepEqual(alice.problems, [])
  })
})
