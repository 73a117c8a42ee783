// Chat rooms in two browsers: messages, the online list and the typing indicator.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { SAVED, openPerson, readRoom, waitForSaveText, withRelayAndBrowser } from './fixtures.mjs'

/** The names in the online list of a page. */
function onlineNames (page) {
  return page.locator('#online .person').evaluateAll(els => els.map(el => el.dataset.name).sort())
}

test('chat: messages, who is online, and who is typing', { timeout: 120000 }, async () => {
  await withRelayAndBrowser('chat', async ({ relay, browser }) => {
    const alice = await openPerson(browser, relay, { name: 'Alice', color: '#dc2626' })
    const bob = await openPerson(browser, relay, { name: 'Bob', color: '#2563eb' })
    const room = 'general'

    // Alice joins through the lobby, Bob by the room's address.
    await alice.page.goto('/chat')
    await alice.page.locator('#chat-room-name').fill(room)
    await alice.page.getByRole('button', { name: 'Join room' }).click()
    await alice.page.waitForURL('**/chat/general')
    await bob.page.goto(`/chat/${room}`)

    // Both online, on both sides.
    for (const { page } of [alice, bob]) {
      await page.waitForFunction(() => {
        const names = [...document.querySelectorAll('#online .person')].map(el => el.dataset.name)
        return names.includes('Alice') && names.includes('Bob')
      }, null, { timeout: 10000 })
    }
    assert.deepEqual(await onlineNames(alice.page), ['Alice', 'Bob'])

    // Alice types: Bob sees that she is typing, and it stops when she sends.
    await alice.page.locator('#message').click()
    await alice.page.keyboard.type('Hi Bob, the release is on Friday')
    await bob.page.locator('#typing', { hasText: 'Alice is typing…' }).waitFor({ timeout: 5000 })
    assert.equal(await alice.page.locator('#typing').textContent(), '', 'you do not see yourself typing')
    await alice.page.keyboard.press('Enter')
    await bob.page.locator('#messages .message', { hasText: 'Hi Bob, the release is on Friday' }).waitFor({ timeout: 5000 })
    await bob.page.waitForFunction(() => document.querySelector('#typing').textContent === '', null, { timeout: 5000 })

    // Bob answers with the Send button.
    await bob.page.locator('#message').fill('Great, I will write the notes')
    await bob.page.getByRole('button', { name: 'Send' }).click()
    await alice.page.locator('#messages .message', { hasText: 'Great, I will write the notes' }).waitFor({ timeout: 5000 })

    // Same messages, in the same order, with their authors, on both sides.
    const read = page => page.locator('#messages .message').evaluateAll(els => els.map(el => `${el.dataset.author}: ${el.querySelector('.text').textContent}`))
    const expected = ['Alice: Hi Bob, the release is on Friday', 'Bob: Great, I will write the notes']
    assert.deepEqual(await read(alice.page), expected)
    assert.deepEqual(await read(bob.page), expected)
    assert.equal(await alice.page.locator('#messages .message.mine').count(), 1, 'Alice\'s own message is marked as hers')

    // Both messages are saved on the relay.
    await waitForSaveText(bob.page, SAVED, 10000)
    await waitForSaveText(alice.page, SAVED, 10000)
    const reader = await readRoom(relay, `chat/${room}`)
    try {
      assert.deepEqual(reader.doc.getArray('messages').toArray().map(m => `${m.author}: ${m.text}`), expected)
    } finally {
      reader.destroy()
    }

    // Bob leaves: Alice's online list drops him.
    await bob.context.close()
    await alice.page.waitForFunction(() => {
      const names = [...document.querySelectorAll('#online .person')].map(el => el.dataset.name)
      return names.length === 1 && names[0] === 'Alice'
    }, null, { timeout: 10000 })

    // The room is in the lobby's list.
    await alice.page.getByRole('link', { name: '← Rooms' }).click()
    await alice.page.locator('#chat-list .item[data-name="general"]').waitFor({ timeout: 5000 })
    assert.deepEqual(alice.problems, [])
  })
})
