// The Hocuspocus server that loadgen measures the relay's Hocuspocus endpoint against:
// @hocuspocus/server with @hocuspocus/extension-sqlite (a file in DATA_DIR), every other setting
// at its default, so it behaves as an application that takes the documented setup would.
// That means: SyncStatus is sent once an update is applied in memory, and a document is stored
// (the whole state, one SQLite upsert) 2 s after its last change, at most 10 s after the first.
//
//   node hocuspocus-server.mjs PORT DATA_DIR
//
// It listens on 127.0.0.1:PORT; SIGTERM stores pending documents and exits (the server's own
// signal handling).

import { mkdirSync } from 'node:fs'
import { join } from 'node:path'

import { Server } from '@hocuspocus/server'
import { SQLite } from '@hocuspocus/extension-sqlite'

const [port, dataDir] = process.argv.slice(2)
if (!port || !dataDir) {
  console.error('usage: node hocuspocus-server.mjs PORT DATA_DIR')
  process.exit(2)
}
mkdirSync(dataDir, { recursive: true })

const server = new Server({
  address: '127.0.0.1',
  port: Number(port),
  quiet: true,
  extensions: [new SQLite({ database: join(dataDir, 'hocuspocus.sqlite') })],
})
await server.listen()
