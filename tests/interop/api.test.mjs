// The document API against stock clients: a document written by a y-websocket 3 provider (Yjs 13)
// comes back identical from `GET /api/docs/{name}` (a binary update) and, with `?format=json`,
// equal to the writer's `doc.toJSON()`. The fixture runs the relay without a secret, so the API
// needs no token.

import assert from 'node:assert/strict'
import { relayTest } from '../js-support/relay-test.mjs'
import { attachSaveTracker, v3Client, waitSynced, Y } from './clients.mjs'
import { getJson, request, requestOk } from '../js-support/http.mjs'
import { waitFor, waitForEvent } from '../js-support/wait.mjs'

/** The state of a document from the API, applied to a fresh Y.Doc. */
async function fetchDoc (relay, name) {
  const response = await requestOk(`${relay.httpUrl}/api/docs/${encodeURIComponent(name)}`)
  assert.equal(response.headers.get('content-type'), 'application/octet-stream')
  const update = new Uint8Array(await response.arrayBuffer())
  const copy = new Y.Doc()
  Y.applyUpdate(copy, update)
  return copy
}

/** Writes with a stock provider and waits until the relay has committed it. */
async function writeAndSave (relay, scope, room, write) {
  const writer = v3Client(scope, relay.url, room)
  await waitSynced(writer.provider)
  const saves = attachSaveTracker(writer.provider)
  write(writer.doc)
  // The save request goes out on the provider's socket after the updates above.
  await saves.save()
  return writer
}

relayTest('API: a document written by a stock client comes back identical, as binary and as JSON', { timeout: 60_000 }, async (t, relay, scope) => {
  const room = 'api-roundtrip'
  const writer = await writeAndSave(relay, scope, room, doc => {
    const text = doc.getText('text')
    text.insert(0, 'Hello wörld, ')
    text.insert(13, 'grüße 🎉 and more')
    text.delete(0, 6) // deletions too: the export must carry the delete set
    const map = doc.getMap('map')
    map.set('title', 'Notes')
    map.set('count', 42)
    map.set('ratio', 0.25)
    map.set('big', 2 ** 40)
    map.set('negative', -7)
    map.set('done', false)
    map.set('nothing', null)
    map.set('nested', { tags: ['a', 'b'], deep: { level: 2, list: [1, { x: 'y' }] } })
    const sub = new Y.Map()
    map.set('sub', sub)
    sub.set('inner', 'value')
    const subList = new Y.Array()
    sub.set('list', subList)
    subList.push(['p', 'q'])
    map.set('removed', 'soon gone')
    map.delete('removed')
    const array = doc.getArray('array')
    array.push(['first', 2, 3.5, true, null, { k: [1, 2] }, ['x', 'y']])
    const inArray = new Y.Map()
    array.push([inArray])
    inArray.set('key', 'in an array')
    array.delete(1, 1) // drop 2
  })
  const expected = writer.doc.toJSON()
  t.diagnostic(`writer's doc.toJSON(): ${JSON.stringify(expected)}`)
  assert.deepEqual(Object.keys(expected).sort(), ['array', 'map', 'text'])

  // Binary: a fresh Y.Doc gets the same content and the same state.
  const copy = await fetchDoc(relay, room)
  assert.equal(copy.getText('text').toString(), writer.doc.getText('text').toString())
  assert.deepEqual(copy.getMap('map').toJSON(), writer.doc.getMap('map').toJSON())
  assert.deepEqual(copy.getArray('array').toJSON(), writer.doc.getArray('array').toJSON())
  assert.deepEqual(copy.toJSON(), expected)
  assert.deepEqual(Y.encodeStateVector(copy), Y.encodeStateVector(writer.doc))
  // Nothing missing either way: each has every struct and deletion of the other.
  assert.deepEqual(Y.encodeStateAsUpdate(writer.doc, Y.encodeStateVector(copy)), Y.encodeStateAsUpdate(copy, Y.encodeStateVector(writer.doc)))

  // JSON: the root types as doc.toJSON() gives them.
  const response = await requestOk(`${relay.httpUrl}/api/docs/${room}?format=json`)
  assert.match(response.headers.get('content-type') ?? '', /^application\/json/)
  assert.deepEqual(await response.json(), expected)

  // A room name with a slash: one path segment in the API, `%2F`.
  const slashed = await writeAndSave(relay, scope, 'team/notes', doc => {
    doc.getText('text').insert(0, 'under a prefix')
    doc.getMap('map').set('owner', 'team')
  })
  const jsonSlashed = await getJson(`${relay.httpUrl}/api/docs/${encodeURIComponent('team/notes')}?format=json`)
  assert.deepEqual(jsonSlashed, slashed.doc.toJSON())
  const copySlashed = await fetchDoc(relay, 'team/notes')
  assert.equal(copySlashed.getText('text').toString(), 'under a prefix')

  // The listing has both, with their sizes.
  const list = await getJson(`${relay.httpUrl}/api/docs`)
  assert.deepEqual(list.docs.map(d => d.name), ['api-roundtrip', 'team/notes'])
  for (const doc of list.docs) assert.ok(doc.size_bytes > 0, JSON.stringify(doc))
})

relayTest('API: an update posted to the API reaches a stock client, and the client\'s edits reach the API', { timeout: 60_000 }, async (t, relay, scope) => {
  const room = 'api-post'
  const reader = v3Client(scope, relay.url, room)
  await waitSynced(reader.provider)
  const source = new Y.Doc()
  source.getText('text').insert(0, 'from the backend')
  source.getMap('map').set('by', 'api')
  const response = await requestOk(`${relay.httpUrl}/api/docs/${room}/update`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream' },
    body: Y.encodeStateAsUpdate(source)
  })
  assert.deepEqual(await response.json(), { committed: true })
  // The live stock client receives it.
  const text = reader.doc.getText('text')
  await waitFor(() => text.toString() === 'from the backend', { what: () => `the client to receive the posted update (has ${JSON.stringify(text.toString())})` })
  assert.equal(reader.doc.getMap('map').get('by'), 'api')
  // And its own edit comes back through the API.
  const saves = attachSaveTracker(reader.provider)
  text.insert(text.length, ', edited by a client')
  await saves.save()
  const json = await getJson(`${relay.httpUrl}/api/docs/${room}?format=json`)
  assert.deepEqual(json, reader.doc.toJSON())
  assert.equal(json.text, 'from the backend, edited by a client')
})

relayTest('API: formatted text and XML come back as doc.toJSON() gives them', { timeout: 60_000 }, async (t, relay, scope) => {
  const room = 'api-rich'
  const writer = await writeAndSave(relay, scope, room, doc => {
    const text = doc.getText('text')
    text.insert(0, 'plain ')
    text.insert(6, 'bold', { bold: true })
    text.insert(10, ' and a link', { link: 'https://example.com' })
    const xml = doc.getXmlFragment('xml')
    const p = new Y.XmlElement('p')
    p.setAttribute('class', 'lead')
    p.insert(0, [new Y.XmlText('hello ')])
    const em = new Y.XmlElement('em')
    em.insert(0, [new Y.XmlText('world')])
    p.insert(1, [em])
    xml.insert(0, [p])
  })
  const expected = writer.doc.toJSON()
  t.diagnostic(`writer's doc.toJSON(): ${JSON.stringify(expected)}`)
  const copy = await fetchDoc(relay, room)
  assert.deepEqual(copy.getText('text').toDelta(), writer.doc.getText('text').toDelta(), 'formatting survives the binary export')
  assert.equal(copy.getXmlFragment('xml').toString(), writer.doc.getXmlFragment('xml').toString())
  const json = await getJson(`${relay.httpUrl}/api/docs/${room}?format=json`)
  assert.deepEqual(json, expected)
})

relayTest('API: DELETE closes stock clients with 4404, and they stay away instead of restoring the document', { timeout: 60_000 }, async (t, relay, scope) => {
  const room = 'api-delete'
  const a = await writeAndSave(relay, scope, room, doc => doc.getText('text').insert(0, 'to be deleted'))
  const closed = waitForEvent(a.provider, 'closed', { what: 'the provider\'s terminal "closed" event' })
  await requestOk(`${relay.httpUrl}/api/docs/${room}`, { method: 'DELETE' })
  const [info] = await closed
  assert.equal(info.code, 4404, `close: ${JSON.stringify(info)}`)
  assert.deepEqual(a.log.closes.map(c => c?.code), [4404])
  assert.equal(a.provider.shouldConnect, false, 'a stock provider does not reconnect after 4404')

  const gone = await request(`${relay.httpUrl}/api/docs/${room}`)
  assert.equal(gone.status, 404, await gone.text())
  // A new client finds an empty document; the old client still has its copy, but keeps it.
  const b = v3Client(scope, relay.url, room)
  await waitSynced(b.provider)
  assert.equal(b.doc.getText('text').toString(), '')
  assert.equal(a.doc.getText('text').toString(), 'to be deleted')
  const saves = attachSaveTracker(b.provider)
  await saves.save()
  const list = await getJson(`${relay.httpUrl}/api/docs`)
  assert.deepEqual(list.docs.map(d => d.name), [], 'nothing brought the document back')
})
