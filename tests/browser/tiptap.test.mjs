// The Tiptap demo (examples/src/tiptap.js, /tiptap.html?doc=NAME): Tiptap on an unmodified
// @hocuspocus/provider against the relay, in two browsers, beside the Quill demo of the same room.
// Content is not shared with Quill (Y.XmlFragment against Y.Text); presence is.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { SAVED, openDoc, openPerson, readRoom, withRelayAndBrowser } from './fixtures.mjs'
import { waitFor } from '../js-support/wait.mjs'

/** Opens the Tiptap demo of document `name` and waits until it can be edited. */
async function openTiptap (page, name) {
  await page.goto(`/tiptap.html?doc=${encodeURIComponent(name)}`)
  await page.locator('.tiptap[contenteditable="true"]').waitFor({ timeout: 15000 })
  await page.waitForFunction(() => window.tiptapDemo?.provider.isSynced, null, { timeout: 15000 })
}

// The editor's own text (the DOM also holds the other carets' name labels).
const tiptapText = page => page.evaluate(() => window.tiptapDemo.editor.getText())

test('tiptap: two browsers edit one document live, see each other, and it is saved on the relay', async () => {
  await withRelayAndBrowser('tiptap', async ({ relay, browser }) => {
    const alice = await openPerson(browser, relay, { name: 'Alice', color: '#dc2626' })
    const bob = await openPerson(browser, relay, { name: 'Bob', color: '#059669' })
    await openTiptap(alice.page, 'together')
    await openTiptap(bob.page, 'together')

    await alice.page.locator('.tiptap').click()
    await alice.page.keyboard.type('Hello from Tiptap')
    await waitFor(async () => (await tiptapText(bob.page)) === 'Hello from Tiptap', { timeout: 15000, what: "Alice's text at Bob's" })
    await bob.page.locator('.tiptap').click()
    await bob.page.keyboard.press('End')
    await bob.page.keyboard.type(', and Bob')
    await waitFor(async () => (await tiptapText(alice.page)) === 'Hello from Tiptap, and Bob', { timeout: 15000, what: "Bob's text at Alice's" })

    // Carets with names: each sees the other's.
    await bob.page.locator('.collaboration-carets__label', { hasText: 'Alice' }).waitFor({ timeout: 15000 })
    await alice.page.locator('.collaboration-carets__label', { hasText: 'Bob' }).waitFor({ timeout: 15000 })

    // "All changes saved" only once the relay committed: then a plain client reads it back.
    // The Tiptap page's own indicator (#status, examples/src/tiptap.js) words it like the editor's.
    await alice.page.waitForFunction(saved => document.querySelector('#status').textContent === saved, SAVED, { timeout: 15000 })
    const stored = await readRoom(relay, 'docs/together')
    try {
      assert.match(stored.doc.getXmlFragment('default').toString(), /Hello from Tiptap, and Bob/)
      assert.equal(stored.doc.getText('quill').toString(), '', 'Quill\'s text is another type')
    } finally {
      stored.destroy()
    }

    // The Quill demo of the same room: its presence lists the Tiptap users.
    const carol = await openPerson(browser, relay, { name: 'Carol', color: '#2563eb' })
    await openDoc(carol.page, 'together')
    for (const name of ['Alice', 'Bob']) {
      await carol.page.locator(`li.person[data-name="${name}"]`).waitFor({ timeout: 15000 })
    }
    await alice.page.locator('.person', { hasText: 'Carol' }).waitFor({ timeout: 15000 })
    assert.deepEqual([...alice.problems, ...bob.problems, ...carol.problems], [])
  })
})
