// Unit tests of the app's pure helpers (no browser needed): the autosave texts, addresses, names.
//
//   npm run test:unit

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { listNames, pathFor, safeColor, saveStatusText } from '../src/ui.js'

test('the autosave indicator says exactly what each save status means', () => {
  assert.equal(saveStatusText('saving'), 'Saving…')
  assert.equal(saveStatusText('saved'), 'All changes saved')
  assert.equal(saveStatusText('offline-unsaved'), 'Offline: changes kept on this device')
  assert.equal(saveStatusText('error', 'disk full'), 'Not saved yet: disk full. Retrying…')
  assert.equal(saveStatusText('error'), 'Not saved yet: the relay could not store the changes. Retrying…')
  assert.equal(saveStatusText('deleted'), 'Deleted: nothing here is saved any more')
})

test('addresses hold the percent-encoded name', () => {
  assert.equal(pathFor('docs', 'Q3 plan / draft #1'), '/docs/Q3%20plan%20%2F%20draft%20%231')
  assert.equal(pathFor('chat', '50%'), '/chat/50%25')
})

test('names and colours from other people are shown safely', () => {
  assert.equal(listNames(['Ann']), 'Ann')
  assert.equal(listNames(['Ann', 'Bo']), 'Ann and Bo')
  assert.equal(listNames(['Ann', 'Bo', 'Cy', 'Di']), 'Ann, Bo and 2 others')
  assert.equal(safeColor('#12abEF'), '#12abEF')
  assert.equal(safeColor('red; background: url(x)'), '#6b7280')
})
