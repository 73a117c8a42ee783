// Small WebSocket servers on 127.0.0.1 built with `ws`, for what the real relay cannot be made to
// do: say nothing, refuse with 4401/4403, never answer save requests (like a stock y-websocket
// server), or answer them with a save error.

import { WebSocketServer } from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import { protocol } from '../../src/index.js'

/**
 * Starts a server; `onConnection(ws, req)` runs for every connection.
 * @returns {Promise<{url: string, connections: Array<{ws: import('ws').WebSocket, url: string}>, close: () => Promise<void>}>}
 */
export async function fakeServer (onConnection = () => {}, { port = 0 } = {}) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port })
  await new Promise((resolve, reject) => { wss.once('listening', resolve); wss.once('error', reject) })
  const connections = []
  wss.on('connection', (ws, req) => {
    connections.push({ ws, url: req.url })
    onConnection(ws, req)
  })
  return {
    url: `ws://127.0.0.1:${wss.address().port}`,
    connections,
    close: () => new Promise(resolve => {
      for (const { ws } of connections) ws.terminate()
      wss.close(() => resolve())
    })
  }
}

/**
 * A minimal y-websocket-style server for one room: sync step 1 on connect, answers sync step 1,
 * applies and forwards updates, forwards awareness. Save requests go to `onSaveRequest(ws, id)`;
 * without it they are ignored, as a stock server does.
 * @param {{onSaveRequest?: (ws: import('ws').WebSocket, id: number) => void}} [opts]
 */
export async function fakeYjsServer ({ onSaveRequest } = {}) {
  const doc = new Y.Doc()
  const saveRequests = []
  const server = await fakeServer(ws => {
    const send = data => { if (ws.readyState === 1) ws.send(data) }
    send(protocol.encodeSyncStep1(doc))
    ws.on('message', data => {
      const decoder = decoding.createDecoder(new Uint8Array(data))
      while (decoding.hasContent(decoder)) {
        const type = decoding.readVarUint(decoder)
        if (type === protocol.MESSAGE_SYNC) {
          const encoder = encoding.createEncoder()
          encoding.writeVarUint(encoder, protocol.MESSAGE_SYNC)
          const sub = syncProtocol.readSyncMessage(decoder, encoder, doc, ws)
          if (sub === syncProtocol.messageYjsSyncStep1) send(encoding.toUint8Array(encoder))
        } else if (type === protocol.MESSAGE_AWARENESS) {
          const message = protocol.encodeAwarenessMessage(decoding.readVarUint8Array(decoder))
          for (const { ws: other } of server.connections) if (other.readyState === 1) other.send(message)
        } else if (type === protocol.MESSAGE_SAVE && onSaveRequest) {
          const msg = protocol.readSaveMessage(decoder)
          if (msg?.type !== 'save-request') return
          saveRequests.push(msg.id)
          onSaveRequest(ws, msg.id)
        } else {
          if (type === protocol.MESSAGE_SAVE) saveRequests.push(-1)
          return // stock servers drop what they do not know
        }
      }
    })
  })
  doc.on('update', (update, origin) => {
    for (const { ws } of server.connections) {
      if (ws !== origin && ws.readyState === 1) ws.send(protocol.encodeUpdate(update))
    }
  })
  return { ...server, doc, saveRequests }
}
