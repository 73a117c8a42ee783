// The app on a relay with a secret: the demo sign-on (`relay serve --secret ... --demo-sign-on`)
// with its tokens, read-only documents, a token renewed after the relay closed the connection with
// 4401 or refused one made with a token it does not take, offline use with the last token (also
// while the relay is down and the browser online); and the explanation page when the demo sign-on
// is off.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import {
  OFFLINE, SAVED, editorText, openDoc, openPerson, readRoom, waitForSaveText, withRelayAndBrowser
} from './fixtures.mjs'
import { getJson } from '../js-support/http.mjs'
import { mintToken, randomSecret } from '../js-support/token.mjs'
import { waitFor } from '../js-support/wait.mjs'

// The app writes this one itself (examples/src/views/editor.js), not through saveStatusText.
const READ_ONLY_TEXT = 'Read only: you can read this document, not edit it'

/** Every WebSocket the page opens: `{url, room, token}`, in order. */
function watchSockets (page) {
  const sockets = []
  page.on('websocket', ws => {
    const url = new URL(ws.url())
    sockets.push({ url: ws.url(), room: decodeURIComponent(url.pathname.slice(1)), token: url.searchParams.get('token') })
  })
  return sockets
}

/** Every POST /api/demo/token the page sends, with its JSON body. */
function watchTokenRequests (page) {
  const requests = []
  page.on('request', req => {
    if (req.method() === 'POST' && new URL(req.url()).pathname === '/api/demo/token') requests.push(req.postDataJSON())
  })
  return requests
}

/** Every console message of the page (to check that no token is ever logged). */
function watchConsole (page) {
  const lines = []
  page.on('console', msg => lines.push(msg.text()))
  return lines
}

/** The claims of a JWT (not verified: the relay does that). */
function claims (token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'))
}

/** `docs/a/b` as one path segment of the document API. */
const apiName = room => encodeURIComponent(room)

test('demo sign-on: sign on, create a document, edit it together, "All changes saved"', { timeout: 120000 }, async () => {
  const secret = randomSecret()
  await withRelayAndBrowser('demo sign-on', async ({ relay, browser }) => {
    assert.deepEqual(await getJson(`${relay.httpUrl}/api/demo/config`), { auth: 'demo', read_only_prefix: 'docs/read-only/' })
    assert.equal((await fetch(`${relay.httpUrl}/api/docs`)).status, 401, 'GET /api/docs needs an admin token')

    const dana = await openPerson(browser, relay) // not signed on yet
    const { page } = dana
    const sockets = watchSockets(page)
    const tokenRequests = watchTokenRequests(page)
    const consoleLines = watchConsole(page)
    await page.goto('/')
    // The sign-on says plainly that it is a demo sign-on.
    const note = page.locator('#demo-sign-on-note')
    await note.waitFor({ timeout: 10000 })
    assert.match(await note.textContent(), /^Demo sign-on: anyone can get access to this relay’s demo documents/)
    await page.locator('#display-name').fill('Dana')
    await page.getByRole('button', { name: 'Continue' }).click()
    await page.getByRole('heading', { name: 'Documents' }).waitFor()
    await page.locator('.list-status', { hasText: 'No documents yet' }).waitFor({ timeout: 5000 })

    const name = 'Launch plan'
    await page.locator('#new-doc-name').fill(name)
    await page.getByRole('button', { name: 'New document' }).click()
    await page.waitForURL(url => url.pathname === `/docs/${encodeURIComponent(name)}`)
    await page.locator('.ql-editor[contenteditable="true"]').waitFor({ timeout: 15000 })
    assert.equal(await page.locator('#read-only-badge').isVisible(), false, 'a normal document has no read-only badge')
    await page.keyboard.type('Ship it on Monday.')

    // Someone else (signed on, a separate browser context) sees the edit live.
    const bob = await openPerson(browser, relay, { name: 'Bob', color: '#059669' })
    const bobSockets = watchSockets(bob.page)
    await openDoc(bob.page, name)
    await bob.page.waitForFunction(() => document.querySelector('.ql-editor').textContent.includes('Ship it on Monday.'), null, { timeout: 10000 })
    await page.keyboard.type(' Live from Dana.')
    await bob.page.waitForFunction(() => document.querySelector('.ql-editor').textContent.includes('Live from Dana.'), null, { timeout: 5000 })
    await waitForSaveText(page, SAVED)
    await dana.page.locator('#presence .person[data-name="Bob"]').waitFor({ timeout: 5000 })

    // Each connection carried a token of the demo sign-on for exactly its room, with the name.
    const room = `docs/${name}`
    const danaSocket = sockets.find(s => s.room === room)
    assert.ok(danaSocket?.token, 'Dana connected with a token')
    assert.deepEqual(tokenRequests, [{ room, name: 'Dana' }], 'one token request, for the room, with the display name')
    const granted = claims(danaSocket.token)
    assert.equal(granted.doc, room)
    assert.equal(granted.access, 'write')
    assert.equal(granted.name, 'Dana')
    assert.ok(granted.exp > Date.now() / 1000 + 3000, 'the token lasts about an hour')
    assert.ok(bobSockets.every(s => s.token && claims(s.token).name === 'Bob'), 'Bob connected with his own token')

    // The relay stored it.
    const admin = await mintToken(secret)
    const stored = await getJson(`${relay.httpUrl}/api/docs/${apiName(room)}?format=json&token=${admin}`)
    assert.match(stored.quill, /Ship it on Monday\. Live from Dana\./)

    // The list comes from /api/demo/docs; the document is writable.
    await page.getByRole('link', { name: '← Documents' }).click()
    const item = page.locator(`#doc-list .item[data-name="${name}"]`)
    await item.waitFor({ timeout: 5000 })
    assert.equal(await item.getAttribute('data-access'), 'write')
    assert.equal(await item.locator('.badge.read-only').count(), 0)

    // Chat rooms get their tokens too.
    await page.goto('/chat/general')
    await page.locator('#message:not([disabled])').waitFor({ timeout: 10000 })
    await page.locator('#message').fill('Hello with a token')
    await page.getByRole('button', { name: 'Send' }).click()
    await waitForSaveText(page, SAVED, 10000)
    await page.goto('/chat')
    await page.locator('#chat-list .item[data-name="general"]').waitFor({ timeout: 5000 })
    assert.ok(sockets.some(s => s.room === 'chat/general' && claims(s.token).doc === 'chat/general'))

    // The app never logs a token. (Chromium itself prints the URL of a WebSocket that fails to
    // connect, query string and token included; none fails here.)
    const tokens = [...sockets, ...bobSockets].map(s => s.token)
    assert.deepEqual(consoleLines.filter(line => tokens.some(t => line.includes(t))).map(line => line.replace(/eyJ[\w.-]+/g, '<token>')), [], 'no token in the console')
    assert.deepEqual([...dana.problems, ...bob.problems], [])
  }, { args: ['--secret', secret, '--demo-sign-on'] })
})

test('a read-only document: content shown, "Read only" badge, typing changes nothing', { timeout: 120000 }, async () => {
  const secret = randomSecret()
  await withRelayAndBrowser('read-only', async ({ relay, browser }) => {
    // Content first, through the document API with an admin token: the Y.Text the editor binds.
    const room = 'docs/read-only/welcome'
    const admin = await mintToken(secret)
    const seed = new Y.Doc()
    seed.getText('quill').insert(0, 'Welcome to the demo.\nThis page is for reading.\n')
    const res = await fetch(`${relay.httpUrl}/api/docs/${apiName(room)}/update?token=${admin}`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: Y.encodeStateAsUpdate(seed)
    })
    assert.equal(res.status, 200, `seeding the document: HTTP ${res.status} ${await res.text()}`)
    const jsonUrl = `${relay.httpUrl}/api/docs/${apiName(room)}?format=json&token=${admin}`
    const before = await getJson(jsonUrl)
    assert.equal(before.quill, 'Welcome to the demo.\nThis page is for reading.\n')

    const rita = await openPerson(browser, relay, { name: 'Rita', color: '#7c3aed' })
    const { page } = rita
    const sockets = watchSockets(page)

    // The list marks it.
    await page.goto('/docs')
    const item = page.locator('#doc-list .item[data-name="read-only/welcome"]')
    await item.waitFor({ timeout: 10000 })
    assert.equal(await item.getAttribute('data-access'), 'read')
    assert.match(await item.locator('.badge.read-only').textContent(), /Read only/)

    // A new document under read-only/ is refused, kindly, without leaving the list.
    await page.locator('#new-doc-name').fill('read-only/my notes')
    await page.getByRole('button', { name: 'New document' }).click()
    await page.locator('#new-doc-error', { hasText: 'read-only in this demo' }).waitFor({ timeout: 5000 })
    assert.equal(new URL(page.url()).pathname, '/docs')

    // Open it: content, badge, a disabled editor, no claim about saving.
    await item.click()
    await page.waitForURL(url => url.pathname === '/docs/read-only%2Fwelcome')
    await page.waitForFunction(() => document.querySelector('.ql-editor')?.textContent.includes('This page is for reading.'), null, { timeout: 15000 })
    await page.locator('#read-only-badge', { hasText: 'Read only' }).waitFor({ state: 'visible', timeout: 5000 })
    await page.locator('#conn-status[data-status="connected"]').waitFor({ state: 'attached', timeout: 10000 })
    assert.equal(await page.locator('.ql-editor').getAttribute('contenteditable'), 'false', 'the editor is disabled')
    assert.equal(await page.locator('.ql-toolbar').isVisible(), false, 'no toolbar')
    await waitForSaveText(page, READ_ONLY_TEXT)
    assert.equal(claims(sockets.find(s => s.room === room).token).access, 'read')

    // The relay counts the connection: the page is really connected (with its read token).
    await waitFor(async () => {
      const list = await getJson(`${relay.httpUrl}/api/demo/docs?prefix=docs/`)
      return list.docs.find(d => d.name === room)?.connections === 1
    }, { what: 'the relay to count the read-only connection' })

    // Typing (and deleting, and formatting keys) changes nothing.
    const textBefore = await editorText(page)
    await page.locator('.ql-editor').click()
    await page.keyboard.type('Vandalism!')
    await page.keyboard.press('Backspace')
    await page.keyboard.press('Enter')
    await page.keyboard.press('Control+b')
    assert.equal(await editorText(page), textBefore)
    assert.equal(await page.locator('#save-status').textContent(), READ_ONLY_TEXT)
    assert.deepEqual(rita.dialogs, [])

    // The relay's copy is unchanged, and so is what another reader gets from it.
    assert.deepEqual(await getJson(jsonUrl), before)
    const reader = await readRoom(relay, room, { token: admin })
    try {
      assert.equal(reader.doc.getText('quill').toString(), before.quill)
    } finally {
      reader.destroy()
    }

    // Leaving does not ask about unsaved edits (there are none).
    await page.goto('/docs')
    assert.deepEqual(rita.dialogs, [])
    assert.deepEqual(rita.problems, [])
  }, { args: ['--secret', secret, '--demo-sign-on'] })
})

test('a token closed by the relay (4401) is replaced and the connection comes back', { timeout: 120000 }, async () => {
  const secret = randomSecret()
  await withRelayAndBrowser('token renewal', async ({ relay, browser }) => {
    const room = 'docs/Renewed'
    // A token that expires in 2 s, which the app believes good for an hour (as if the browser's
    // clock were wrong): the relay closes the connection with 4401 when it expires.
    const short = await mintToken(secret, { access: 'write', ttl: '2s', doc: room })
    const ana = await openPerson(browser, relay, { name: 'Ana', color: '#dc2626' })
    await ana.context.addInitScript(([key, value]) => {
      if (location.protocol.startsWith('http') && !sessionStorage.getItem(key)) sessionStorage.setItem(key, value)
    }, [`relay-demo:token:${room}`, JSON.stringify({ token: short, access: 'write', expiresAtMs: Date.now() + 3600_000, lifetimeMs: 3600_000 })])
    const { page } = ana
    const sockets = watchSockets(page)
    const tokenRequests = watchTokenRequests(page)
    await openDoc(page, 'Renewed')
    assert.equal(sockets[0]?.token, short, 'the stored token is used at once')

    await waitFor(() => sockets.length >= 2, { timeout: 20000, what: 'a second connection after the 4401' })
    assert.notEqual(sockets[1].token, short, 'with a new token')
    assert.deepEqual(tokenRequests, [{ room, name: 'Ana' }])
    await page.locator('#conn-status[data-status="connected"]').waitFor({ state: 'attached', timeout: 10000 })
    await page.locator('.ql-editor').click()
    await page.keyboard.type('Still here after the token expired.')
    await waitForSaveText(page, SAVED)
    const stored = await getJson(`${relay.httpUrl}/api/docs/${apiName(room)}?format=json&token=${await mintToken(secret)}`)
    assert.match(stored.quill, /Still here after the token expired\./)
    assert.deepEqual(ana.problems, [])
  }, { args: ['--secret', secret, '--demo-sign-on'] })
})

test('a token about to expire is renewed ahead, and the connection moves to it when the relay closes the old one', { timeout: 120000 }, async () => {
  const secret = randomSecret()
  await withRelayAndBrowser('token renewed ahead', async ({ relay, browser }) => {
    const room = 'docs/Ahead'
    // A real 6-second token, stored as this tab's: the app renews it a fifth of its lifetime
    // before it expires, while the connection made with it stays open until the relay closes it
    // with 4401; then the new token is used at once, without asking again.
    const short = await mintToken(secret, { access: 'write', ttl: '6s', doc: room })
    const expiresAtMs = claims(short).exp * 1000
    const ben = await openPerson(browser, relay, { name: 'Ben', color: '#4d7c0f' })
    await ben.context.addInitScript(([key, value]) => {
      if (location.protocol.startsWith('http') && !sessionStorage.getItem(key)) sessionStorage.setItem(key, value)
    }, [`relay-demo:token:${room}`, JSON.stringify({ token: short, access: 'write', expiresAtMs, lifetimeMs: 6000 })])
    const { page } = ben
    const sockets = watchSockets(page)
    const tokenRequests = watchTokenRequests(page)
    await openDoc(page, 'Ahead')
    assert.equal(sockets[0]?.token, short, 'the stored token is used at once')
    assert.equal(tokenRequests.length, 0)

    await waitFor(() => tokenRequests.length === 1, { timeout: 15000, what: 'the token to be renewed ahead' })
    assert.equal(sockets.length, 1, 'the open connection stays')
    await waitFor(() => sockets.length >= 2, { timeout: 15000, what: 'a new connection once the relay closed the old one' })
    assert.notEqual(sockets[1].token, short)
    assert.equal(claims(sockets[1].token).doc, room)
    assert.equal(tokenRequests.length, 1, 'the renewed token was used, not a third one')
    await page.locator('#conn-status[data-status="connected"]').waitFor({ state: 'attached', timeout: 10000 })
    await page.locator('.ql-editor').click()
    await page.keyboard.type('Renewed in time.')
    await waitForSaveText(page, SAVED)
    assert.deepEqual(ben.problems, [])
  }, { args: ['--secret', secret, '--demo-sign-on'] })
})

test('demo sign-on offline: the page reloads in demo mode and reuses the last token', { timeout: 120000 }, async () => {
  const secret = randomSecret()
  await withRelayAndBrowser('demo offline', async ({ relay, browser }) => {
    const olga = await openPerson(browser, relay, { name: 'Olga', color: '#0891b2' })
    const { page } = olga
    const sockets = watchSockets(page)
    const tokenRequests = watchTokenRequests(page)
    await openDoc(page, 'Trip')
    await page.keyboard.type('Online first. ')
    await waitForSaveText(page, SAVED)
    await page.waitForFunction(async () => {
      if (!navigator.serviceWorker.controller) return false
      const keys = await caches.keys()
      return keys.some(k => k.startsWith('relay-shell-'))
    }, null, { timeout: 15000 })

    await olga.context.setOffline(true)
    await page.waitForFunction(() => document.querySelector('#conn-status')?.dataset.status !== 'connected', null, { timeout: 10000 })
    await page.keyboard.type('Then offline.')
    await waitForSaveText(page, OFFLINE)
    const response = await page.reload()
    assert.ok(response?.fromServiceWorker(), 'the reloaded page came from the service worker')
    await page.locator('.ql-editor[contenteditable="true"]').waitFor({ timeout: 15000 })
    await page.waitForFunction(() => document.querySelector('.ql-editor').textContent.includes('Then offline.'), null, { timeout: 10000 })
    await waitForSaveText(page, OFFLINE)
    assert.equal(await page.evaluate(() => document.body.dataset.auth), 'demo', 'offline, the app still knows the demo sign-on')

    await olga.context.setOffline(false)
    await waitForSaveText(page, SAVED, 30000)
    const first = sockets[0].token
    assert.ok(sockets.every(s => s.token === first), 'every connection used the one token of this tab')
    assert.deepEqual(tokenRequests, [{ room: 'docs/Trip', name: 'Olga' }], 'no new token while the last one is good')
    const stored = await getJson(`${relay.httpUrl}/api/docs/${apiName('docs/Trip')}?format=json&token=${await mintToken(secret)}`)
    assert.match(stored.quill, /Online first\. Then offline\./)
    assert.deepEqual(olga.problems, [])
  }, { args: ['--secret', secret, '--demo-sign-on'] })
})

test('the relay down while the browser is online: the app keeps its valid token and reconnects with it', { timeout: 120000 }, async () => {
  const secret = randomSecret()
  await withRelayAndBrowser('relay down, token kept', async ({ relay, browser }) => {
    const pia = await openPerson(browser, relay, { name: 'Pia', color: '#9333ea' })
    const { page } = pia
    const sockets = watchSockets(page)
    const tokenRequests = watchTokenRequests(page)
    await openDoc(page, 'Outage')
    await page.keyboard.type('Before the outage. ')
    await waitForSaveText(page, SAVED)
    assert.equal(await page.evaluate(() => navigator.onLine), true, 'the browser is online')

    // The relay goes away; the network stays (navigator.onLine stays true). Connections fail to
    // open, which says nothing about the token: no new one may be asked for.
    await relay.stop()
    await page.waitForFunction(() => document.querySelector('#conn-status')?.dataset.status !== 'connected', null, { timeout: 10000 })
    await page.keyboard.type('During the outage.')
    await waitForSaveText(page, OFFLINE)
    const before = sockets.length
    await waitFor(() => sockets.length >= before + 3, { timeout: 30000, what: 'three failed reconnection attempts' })
    assert.deepEqual(tokenRequests, [{ room: 'docs/Outage', name: 'Pia' }], 'no new token while the relay is down')

    await relay.start() // same data directory, same port, same secret: the token is still good
    await waitForSaveText(page, SAVED, 60000)
    assert.ok(sockets.every(s => s.token === sockets[0].token), 'every connection used the one token')
    assert.deepEqual(tokenRequests, [{ room: 'docs/Outage', name: 'Pia' }], 'no new token after the relay came back')
    const stored = await getJson(`${relay.httpUrl}/api/docs/${apiName('docs/Outage')}?format=json&token=${await mintToken(secret)}`)
    assert.match(stored.quill, /Before the outage\. During the outage\./)
    assert.deepEqual(pia.problems, [])
  }, { args: ['--secret', secret, '--demo-sign-on'] })
})

test('a stored token the relay does not take (another secret) is replaced: the refusal comes over long-polling as 4401', { timeout: 120000 }, async () => {
  const secret = randomSecret()
  await withRelayAndBrowser('token of another secret', async ({ relay, browser }) => {
    const room = 'docs/Rekeyed'
    // A token signed with another secret (as after the relay's secret changed), which the app
    // believes good for an hour. The WebSocket is refused before it opens (the page sees 1006),
    // the long-polling attempt that follows gets HTTP 401 (4401): that is what says "new token".
    const foreign = await mintToken(randomSecret(), { access: 'write', ttl: '1h', doc: room })
    const eva = await openPerson(browser, relay, { name: 'Eva', color: '#be123c' })
    await eva.context.addInitScript(([key, value]) => {
      if (location.protocol.startsWith('http') && !sessionStorage.getItem(key)) sessionStorage.setItem(key, value)
    }, [`relay-demo:token:${room}`, JSON.stringify({ token: foreign, access: 'write', expiresAtMs: Date.now() + 3600_000, lifetimeMs: 3600_000 })])
    const { page } = eva
    const sockets = watchSockets(page)
    const tokenRequests = watchTokenRequests(page)
    await openDoc(page, 'Rekeyed')
    assert.equal(sockets[0]?.token, foreign, 'the stored token is tried first')
    await page.locator('#conn-status[data-status="connected"]').waitFor({ state: 'attached', timeout: 20000 })
    assert.deepEqual(tokenRequests, [{ room, name: 'Eva' }], 'one new token')
    assert.notEqual(sockets[sockets.length - 1].token, foreign, 'the connection uses the new token')
    await page.locator('.ql-editor').click()
    await page.keyboard.type('With the new secret.')
    await waitForSaveText(page, SAVED)
    assert.deepEqual(eva.problems, [])
  }, { args: ['--secret', secret, '--demo-sign-on'] })
})

test('a secret without the demo sign-on: the app explains, and opens no WebSocket', { timeout: 120000 }, async () => {
  const secret = randomSecret()
  await withRelayAndBrowser('tokens required', async ({ relay, browser }) => {
    assert.deepEqual(await getJson(`${relay.httpUrl}/api/demo/config`), { auth: 'token' })
    assert.equal((await fetch(`${relay.httpUrl}/api/demo/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ room: 'docs/x', name: 'X' })
    })).status, 404, 'no demo tokens without --demo-sign-on')

    for (const name of [undefined, 'Tom']) {
      const person = await openPerson(browser, relay, { name })
      const { page } = person
      const sockets = watchSockets(page)
      const tokenRequests = watchTokenRequests(page)
      for (const path of ['/', '/docs/Some%20document', '/chat/general']) {
        await page.goto(path)
        const notice = page.locator('#tokens-required')
        await notice.waitFor({ timeout: 10000 })
        const text = await notice.textContent()
        assert.match(text, /needs a token/)
        assert.match(text, /tokens come from the application/)
        assert.match(text, /demo sign-on is off/)
        assert.match(text, /--demo-sign-on/)
        assert.equal(await page.locator('#display-name').count(), 0, 'no sign-on form')
        assert.equal(await page.locator('.ql-editor').count(), 0, 'no editor')
      }
      // The app has started completely (its service worker too): still no WebSocket.
      await page.evaluate(() => navigator.serviceWorker.ready)
      assert.deepEqual(sockets, [], 'no WebSocket was attempted')
      assert.deepEqual(tokenRequests, [])
      assert.deepEqual(person.problems, [])
    }
    assert.doesNotMatch(relay.stderr, /refused a connection/)
  }, { args: ['--secret', secret] })
})
