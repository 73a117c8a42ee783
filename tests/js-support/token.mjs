// Tokens for the JS test suites, signed by the relay binary's own `relay token` command, so that
// no suite carries a second JWT implementation. Plain ESM, Node's built-ins only.

import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { RELAY_BIN } from './relay.mjs'

/** How long `relay token` may take (a debug build on a busy machine). */
const MINT_DEADLINE_MS = 10_000

/** A random relay secret: 32 hex digits. */
export function randomSecret () {
  return randomBytes(16).toString('hex')
}

/**
 * Mints a token with `relay token` (an admin token for the document API by default).
 * @param {string} secret the relay's --secret
 * @param {{ access?: 'read' | 'write' | 'admin', ttl?: string, doc?: string }} [opts]
 *   `ttl` as `relay token --ttl` takes it (`10m`, `2s`); `doc`: the only document it opens
 * @returns {Promise<string>}
 */
export function mintToken (secret, { access = 'admin', ttl = '10m', doc } = {}) {
  const args = ['token', '--access', access, '--ttl', ttl, ...(doc ? ['--doc', doc] : [])]
  return new Promise((resolve, reject) => {
    // The secret goes through the environment, not the command line.
    execFile(RELAY_BIN, args, { env: { ...process.env, RELAY_SECRET: secret }, timeout: MINT_DEADLINE_MS }, (err, stdout, stderr) => {
      if (err) reject(new Error(`relay token failed: ${err.message}\n${stderr}`))
      else resolve(stdout.trim())
    })
  })
}
