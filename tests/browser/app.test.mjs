// The app around the editor: signing on, the document list from /api/docs, creating a document
// by name, shareable addresses, and the layout on a phone.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { ARTIFACTS, SAVED, openDoc, openPerson, waitForSaveText, withRelayAndBrowser } from './fixtures.mjs'
import { getJson } from '../js-support/http.mjs'

test('sign on, create a document by name, find it in the list, open it by its address', { timeout: 120000 }, async () => {
  await withRelayAndBrowser('doc list', async ({ relay, browser }) => {
    const dana = await openPerson(browser, relay) // not signed on yet
    const { page } = dana
    await page.goto('/')
    await page.locator('#display-name').fill('  Dana   Scully ')
    await page.getByRole('button', { name: 'Continue' }).click()
    await page.locator('#me .me-name', { hasText: 'Dana Scully' }).waitFor({ timeout: 5000 })
    await page.getByRole('heading', { name: 'Documents' }).waitFor()
    await page.locator('.list-status', { hasText: 'No documents yet' }).waitFor({ timeout: 5000 })

    // A new document: its address holds its percent-encoded name.
    const name = 'Q3 plan / draft #1'
    await page.locator('#new-doc-name').fill(name)
    await page.getByRole('button', { name: 'New document' }).click()
    await page.waitForURL(url => url.pathname === `/docs/${encodeURIComponent(name)}`)
    await page.locator('.ql-editor[contenteditable="true"]').waitFor()
    assert.equal(await page.locator('h1.doc-title').textContent(), name)
    await page.keyboard.type('Goals for the quarter.')
    await waitForSaveText(page, SAVED, 10000)

    // The relay lists it (room `docs/<name>`), and so does the app.
    const api = await getJson(`${relay.httpUrl}/api/docs`)
    assert.ok(api.docs.some(d => d.name === `docs/${name}`), `GET /api/docs lists it: ${JSON.stringify(api)}`)
    await page.getByRole('link', { name: '← Documents' }).click()
    const item = page.locator(`#doc-list .item[data-name="${name}"]`)
    await item.waitFor({ timeout: 5000 })
    assert.match(await item.textContent(), /Edited just now/)

    // Someone else opens the shared link and sees the content; the list shows it open.
    const eve = await openPerson(browser, relay, { name: 'Eve', color: '#7c3aed' })
    await openDoc(eve.page, name)
    await eve.page.waitForFunction(() => document.querySelector('.ql-editor').textContent.includes('Goals for the quarter.'), null, { timeout: 5000 })
    await page.reload()
    await page.locator(`#doc-list .item[data-name="${name}"] .badge.live`, { hasText: '1 open' }).waitFor({ timeout: 5000 })

    // The name survives a reload, and can be changed; the editor's presence follows.
    await item.click()
    await page.locator('.ql-editor[contenteditable="true"]').waitFor()
    await eve.page.locator('#presence .person[data-name="Dana Scully"]').waitFor({ timeout: 5000 })
    await page.getByRole('button', { name: 'Change' }).click()
    await page.locator('#display-name').fill('Dana')
    await page.getByRole('button', { name: 'Save' }).click()
    await page.locator('.ql-editor[contenteditable="true"]').waitFor()
    await eve.page.locator('#presence .person[data-name="Dana"]').waitFor({ timeout: 5000 })

    // An address that is no page of the app.
    await page.goto('/docs')
    await page.evaluate(() => { history.pushState(null, '', '/nowhere'); dispatchEvent(new PopStateEvent('popstate')) })
    await page.getByRole('heading', { name: 'Nothing here' }).waitFor()
    assert.deepEqual([...dana.problems, ...eve.problems], [])
  })
})

test('on a phone: the editor and the chat fit the screen', { timeout: 120000 }, async () => {
  await withRelayAndBrowser('phone', async ({ relay, browser }) => {
    const viewport = { width: 390, height: 760 }
    const fox = await openPerson(browser, relay, { name: 'Fox', color: '#d97706', viewport })
    const { page } = fox
    await openDoc(page, 'Groceries')
    await page.locator('.ql-editor').click()
    await page.keyboard.type('Milk, eggs, and a very long line of text that has to wrap on a narrow screen.')
    await waitForSaveText(page, SAVED, 10000)
    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth)
    assert.equal(await overflow(), 0, 'the editor page does not scroll sideways')
    await mkdir(ARTIFACTS, { recursive: true })
    await page.screenshot({ path: join(ARTIFACTS, 'phone-editor.png') })

    await page.goto('/chat/phones')
    await page.locator('#message').fill('Hello from a phone')
    await page.getByRole('button', { name: 'Send' }).click()
    await page.locator('#messages .message', { hasText: 'Hello from a phone' }).waitFor()
    assert.equal(await overflow(), 0, 'the chat page does not scroll sideways')
    const composer = await page.locator('.composer').boundingBox()
    assert.ok(composer.y + composer.height <= viewport.height, `the message box is on screen (bottom at ${composer.y + composer.height})`)
    await page.screenshot({ path: join(ARTIFACTS, 'phone-chat.png') })
    assert.deepEqual(fox.problems, [])
  })
})
