// Long-polling in the browser: a page without WebSocket (removed by an init script) opens the
// same document as a normal page. The client falls back to HTTP long-polling by itself; both edit,
// converge within a second or two, see each other's cursor and presence, and the polling page's
// indicator reaches "All changes saved".

import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  SAVED, caretToEnd, editorText, openDoc, openPerson, readRoom, waitForSaveText, withRelayAndBrowser
} from './fixtures.mjs'
import { waitFor } from '../js-support/wait.mjs'

/**
 * Types `marker` in `from` and returns how long until `to` shows it (both pages read the same
 * system clock).
 */
async function delivery (from, to, marker) {
  await to.evaluate(m => {
    window.__seen = new Promise(resolve => {
      const editor = document.querySelector('.ql-editor')
      const check = () => { if (editor.textContent.includes(m)) { observer.disconnect(); resolve(Date.now()) } }
      const observer = new MutationObserver(check)
      observer.observe(editor, { childList: true, characterData: true, subtree: true })
      check()
    })
  }, marker)
  await caretToEnd(from)
  const sentAt = await from.evaluate(() => Date.now())
  await from.keyboard.insertText(` ${marker}`)
  const seenAt = await to.evaluate(() => Promise.race([
    window.__seen,
    new Promise((resolve, reject) => setTimeout(() => reject(new Error('not seen within 5 s')), 5000))
  ]))
  return seenAt - sentAt
}

/** Records the WebSocket and /poll requests of a person's pages. */
function watchNetwork (person) {
  const seen = { websockets: 0, polls: [] }
  const watch = page => {
    page.on('websocket', () => { seen.websockets++ })
    page.on('request', req => {
      const url = new URL(req.url())
      if (url.pathname === '/poll' || url.pathname.startsWith('/poll/')) seen.polls.push(`${req.method()} ${url.pathname === '/poll' ? '/poll' : '/poll/ID'}`)
    })
  }
  watch(person.page)
  person.context.on('page', watch)
  return seen
}

test('a page without WebSocket edits with a WebSocket page over long-polling: live edits, cursors, presence, saved', { timeout: 60000 }, async () => {
  await withRelayAndBrowser('long-polling', async ({ relay, browser }) => {
    const alice = await openPerson(browser, relay, { name: 'Alice', color: '#dc2626' })
    const bob = await openPerson(browser, relay, { name: 'Bob', color: '#2563eb' })
    // Carol, with a WebSocket like Alice, only for comparing delays.
    const carol = await openPerson(browser, relay, { name: 'Carol', color: '#16a34a' })
    // Bob's network blocks WebSockets: his pages have none.
    await bob.context.addInitScript(() => { delete window.WebSocket })
    const aliceNet = watchNetwork(alice)
    const bobNet = watchNetwork(bob)
    const doc = 'Polling plan'
    await openDoc(alice.page, doc)
    await openDoc(bob.page, doc)
    await openDoc(carol.page, doc)
    assert.equal(await bob.page.evaluate(() => typeof window.WebSocket), 'undefined')

    // Presence both ways.
    await alice.page.locator('#presence .person[data-name="Bob"]').waitFor({ timeout: 10000 })
    await bob.page.locator('#presence .person[data-name="Alice"]').waitFor({ timeout: 10000 })

    // Edit-to-appearance delays, both ways.
    await alice.page.locator('.ql-editor').click()
    await bob.page.locator('.ql-editor').click()
    await carol.page.locator('#presence .person[data-name="Alice"]').waitFor({ timeout: 10000 })
    const toBob = []
    const toAlice = []
    const toCarol = []
    for (let i = 0; i < 5; i++) {
      toBob.push(await delivery(alice.page, bob.page, `a${i}x${Date.now() % 100000}`))
      toAlice.push(await delivery(bob.page, alice.page, `b${i}x${Date.now() % 100000}`))
      toCarol.push(await delivery(alice.page, carol.page, `c${i}x${Date.now() % 100000}`))
    }
    const median = ds => [...ds].sort((a, b) => a - b)[2]
    console.log(`edit-to-appearance delay (ms), 5 edits each: WebSocket page → polling page ${toBob.join(', ')} (median ${median(toBob)}); ` +
      `polling page → WebSocket page ${toAlice.join(', ')} (median ${median(toAlice)}); ` +
      `WebSocket page → WebSocket page ${toCarol.join(', ')} (median ${median(toCarol)})`)
    for (const d of [...toBob, ...toAlice]) assert.ok(d < 2000, `an edit took ${d} ms to appear in the other browser (limit 2000 ms)`)

    // Both type at the same time and converge.
    await caretToEnd(alice.page)
    await caretToEnd(bob.page)
    await Promise.all([
      alice.page.keyboard.type(' Alice types this.'),
      bob.page.keyboard.type(' Bob types that.')
    ])
    const text = await waitFor(async () => {
      const [a, b] = [await editorText(alice.page), await editorText(bob.page)]
      return a === b && a.includes('Alice types this.') && a.includes('Bob types that.') && a
    }, { timeout: 5000, what: 'both editors to show the same text' })

    // Each sees the other's cursor with the name.
    await alice.page.locator('.ql-cursor-name', { hasText: 'Bob' }).waitFor({ timeout: 5000 })
    await bob.page.locator('.ql-cursor-name', { hasText: 'Alice' }).waitFor({ timeout: 5000 })

    // The polling page's indicator, and the WebSocket page's, reach saved.
    await waitForSaveText(bob.page, SAVED)
    await waitForSaveText(alice.page, SAVED)

    // What the relay has is what both show.
    const reader = await readRoom(relay, `docs/${doc}`)
    try {
      const stored = reader.doc.getText('quill').toString().replace(/\n+$/, '')
      assert.equal(stored, text)
    } finally {
      reader.destroy()
    }

    // Bob did it all over HTTP; Alice over a WebSocket.
    assert.equal(bobNet.websockets, 0, 'no WebSocket in the polling page')
    assert.ok(bobNet.polls.includes('POST /poll'), `a session was opened: ${bobNet.polls.slice(0, 5)}`)
    assert.ok(bobNet.polls.filter(r => r === 'GET /poll/ID').length >= 5, 'polled')
    assert.ok(bobNet.polls.filter(r => r === 'POST /poll/ID').length >= 5, 'sent')
    assert.ok(aliceNet.websockets >= 1)
    assert.deepEqual(aliceNet.polls, [])
    assert.deepEqual(bob.problems, [])
    assert.deepEqual(alice.problems, [])
  })
})
