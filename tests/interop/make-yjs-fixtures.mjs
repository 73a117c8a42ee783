// Writes the Yjs updates of crdt/tests/fixtures/yjs/ (read by crdt/tests/yjs_fixtures.rs): what
// yjs 13.6 writes for ordinary edits, deletions whose content is garbage-collected into GC
// blocks, a merged update with gaps (skip blocks), and a sync step 2, with the document's JSON.
//
//   cd tests/interop && npm ci && node make-yjs-fixtures.mjs
//
// Client ids are fixed, so the output is the same on every run.
import * as Y from 'yjs'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const out = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../crdt/tests/fixtures/yjs')
fs.mkdirSync(out, { recursive: true })
const write = (name, bytes) => fs.writeFileSync(path.join(out, name), Buffer.from(bytes))

const doc = new Y.Doc()
doc.clientID = 1
const updates = []
doc.on('update', (update) => updates.push(update))
const text = doc.getText('text')
const map = doc.getMap('map')
const array = doc.getArray('array')
const xml = doc.getXmlFragment('xml')
text.insert(0, 'hello world') // 0
map.set('k', 1) // 1
array.insert(0, ['x', 2, { nested: [1, 2] }]) // 2
const inner = new Y.Map()
map.set('inner', inner) // 3
inner.set('list', Y.Array.from([1, 2, 3])) // 4
text.insert(5, ' there') // 5
text.delete(0, 3) // 6
map.delete('inner') // 7: the nested map's content is collected (GC blocks in the state)
xml.insert(0, [new Y.XmlElement('p')]) // 8
text.format(0, 3, { bold: true }) // 9
updates.forEach((update, i) => write(`update-${i}.bin`, update))
write('state.bin', Y.encodeStateAsUpdate(doc))
// A peer that has the first update asks for the rest: the sync step 2 it gets.
const peer = new Y.Doc()
Y.applyUpdate(peer, updates[0])
write('sync-step2-after-update-0.bin', Y.encodeStateAsUpdate(doc, Y.encodeStateVector(peer)))
// Updates 0, 1, 2 and 5 merged: skip blocks where 3 and 4 are missing.
write('merged-0-1-2-5.bin', Y.mergeUpdates([updates[0], updates[1], updates[2], updates[5]]))
fs.writeFileSync(path.join(out, 'state.json'), JSON.stringify(doc.toJSON(), null, 2) + '\n')
console.log(`wrote ${updates.length + 3} updates and state.json to ${out}`)
