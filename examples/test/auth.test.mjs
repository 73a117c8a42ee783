// Unit tests of the demo sign-on helpers (no browser, no relay): the modes of GET /api/demo/config,
// read-only rooms, token expiry and renewal times.
//
//   npm run test:unit

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { REFRESH_MARGIN_MS, isReadOnlyRoom, needsRefresh, parseConfig, parseToken, refreshDelay } from '../src/auth.js'
import { newDocProblem } from '../src/views/doc-list.js'

const DEMO = parseConfig({ auth: 'demo', read_only_prefix: 'docs/read-only/' })

test('the modes of GET /api/demo/config; anything unexpected is open', () => {
  assert.deepEqual(parseConfig({ auth: 'open' }), { auth: 'open', readOnlyPrefix: null })
  assert.deepEqual(DEMO, { auth: 'demo', readOnlyPrefix: 'docs/read-only/' })
  assert.deepEqual(parseConfig({ auth: 'token' }), { auth: 'token', readOnlyPrefix: null })
  assert.deepEqual(parseConfig(null), { auth: 'open', readOnlyPrefix: null })
  assert.deepEqual(parseConfig({ auth: 'something new' }), { auth: 'open', readOnlyPrefix: null })
  assert.deepEqual(parseConfig({ auth: 'demo' }), { auth: 'demo', readOnlyPrefix: null })
})

test('read-only rooms: only under the prefix, only with the demo sign-on', () => {
  assert.equal(isReadOnlyRoom('docs/read-only/welcome', DEMO), true)
  assert.equal(isReadOnlyRoom('docs/read-only', DEMO), false)
  assert.equal(isReadOnlyRoom('docs/notes', DEMO), false)
  assert.equal(isReadOnlyRoom('chat/read-only/x', DEMO), false)
  assert.equal(isReadOnlyRoom('docs/read-only/welcome', parseConfig({ auth: 'open' })), false)
})

test('a new document under the read-only prefix is refused with a reason', () => {
  assert.match(newDocProblem('read-only/mine', DEMO), /read-only in this demo/)
  assert.equal(newDocProblem('read-only', DEMO), null)
  assert.equal(newDocProblem('notes', DEMO), null)
  assert.equal(newDocProblem('read-only/mine', parseConfig({ auth: 'open' })), null)
})

test('tokens: expiry on the browser clock, renewed before they expire', () => {
  const now = 1_800_000_000_000
  const body = { token: 'x.y.z', access: 'write', expires_at: now / 1000 + 3600 }
  const token = parseToken(body, { now })
  assert.equal(token.access, 'write')
  assert.equal(token.expiresAtMs, now + 3600_000)
  assert.equal(token.lifetimeMs, 3600_000)
  assert.equal(refreshDelay(token, now), 3600_000 - REFRESH_MARGIN_MS)
  assert.equal(needsRefresh(token, now), false)
  assert.equal(needsRefresh(token, now + 3600_000 - REFRESH_MARGIN_MS), true)
  assert.equal(needsRefresh(null, now), true)

  // A browser clock 10 minutes behind the relay's: the Date header corrects it.
  const behind = now - 600_000
  const skewed = parseToken(body, { now: behind, serverDate: new Date(now).toUTCString() })
  assert.equal(skewed.expiresAtMs, behind + 3600_000)
  assert.equal(skewed.lifetimeMs, 3600_000)

  // A short-lived token is renewed a fifth of its lifetime early.
  const short = parseToken({ ...body, expires_at: now / 1000 + 60 }, { now })
  assert.equal(refreshDelay(short, now), 48_000)

  // Anything but `write` is read-only; no token is an error.
  assert.equal(parseToken({ ...body, access: 'admin?' }, { now }).access, 'read')
  assert.throws(() => parseToken({ access: 'read', expires_at: 1 }), /no token/)
})
