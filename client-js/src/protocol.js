/**
 * The messages the client speaks: y-protocols sync and awareness as y-websocket frames them, the
 * relay's save extension (type 100: *save request*, *saved*, *save error*, see PROTOCOL.md), and
 * the close codes with what the client does after each. Every message type, sub-type and close
 * code is defined once, in `wire.js`, and re-exported here; this module adds the messages that
 * need a Yjs document (sync steps, updates, awareness states) and the reader of incoming frames.
 *
 * @module protocol
 */

import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import {
  MESSAGE_AUTH, MESSAGE_AWARENESS, MESSAGE_QUERY_AWARENESS, MESSAGE_SAVE, MESSAGE_SYNC,
  encodeAwarenessMessage, readSaveMessage
} from './wire.js'

// The numbers of the protocol and the messages that need no document live in wire.js (no Yjs
// there, for the test suites that bring their own); they are part of this module's interface.
export * from './wire.js'

/**
 * @param {import('yjs').Doc} doc
 * @returns {Uint8Array} sync step 1 with the document's state vector
 */
export function encodeSyncStep1 (doc) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SYNC)
  syncProtocol.writeSyncStep1(encoder, doc)
  return encoding.toUint8Array(encoder)
}

/**
 * @param {import('yjs').Doc} doc
 * @param {Uint8Array} [stateVector] what the other side has (default: nothing, the full state)
 * @returns {Uint8Array} sync step 2 with what the other side lacks
 */
export function encodeSyncStep2 (doc, stateVector) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SYNC)
  syncProtocol.writeSyncStep2(encoder, doc, stateVector)
  return encoding.toUint8Array(encoder)
}

/**
 * @param {Uint8Array} update a Yjs update (format v1)
 * @returns {Uint8Array} a sync update message
 */
export function encodeUpdate (update) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SYNC)
  syncProtocol.writeUpdate(encoder, update)
  return encoding.toUint8Array(encoder)
}

/**
 * @param {awarenessProtocol.Awareness} awareness
 * @param {number[]} clients the client ids whose entries to send
 * @returns {Uint8Array} an awareness message
 */
export function encodeAwareness (awareness, clients) {
  return encodeAwarenessMessage(awarenessProtocol.encodeAwarenessUpdate(awareness, clients))
}

/**
 * What {@link readMessages} reports to its caller, one call per message of a frame.
 * Sync messages are applied to the document by y-protocols (with `origin`) before the callback.
 *
 * @typedef {{ type: 'sync-step-1', reply: Uint8Array }
 *   | { type: 'sync-step-2' }
 *   | { type: 'sync-update' }
 *   | { type: 'awareness', update: Uint8Array }
 *   | { type: 'query-awareness' }
 *   | { type: 'auth-denied', reason: string }
 *   | { type: 'saved', id: number }
 *   | { type: 'save-error', id: number, reason: string }} IncomingMessage
 */

/**
 * Reads every message of a frame. Sync messages are applied to `doc` with `origin`; the answer to a
 * sync step 1 (a sync step 2) is handed to `onMessage` as `reply`. An unknown message type ends the
 * frame: its length is unknown, so the rest cannot be read (the relay does the same).
 *
 * @param {Uint8Array} frame
 * @param {import('yjs').Doc} doc
 * @param {any} origin transaction origin for updates applied to `doc`
 * @param {(msg: IncomingMessage) => void} onMessage
 */
export function readMessages (frame, doc, origin, onMessage) {
  const decoder = decoding.createDecoder(frame)
  while (decoding.hasContent(decoder)) {
    const type = decoding.readVarUint(decoder)
    switch (type) {
      case MESSAGE_SYNC: {
        const sub = decoding.readVarUint(decoder)
        if (sub === syncProtocol.messageYjsSyncStep1) {
          const encoder = encoding.createEncoder()
          encoding.writeVarUint(encoder, MESSAGE_SYNC)
          syncProtocol.readSyncStep1(decoder, encoder, doc)
          onMessage({ type: 'sync-step-1', reply: encoding.toUint8Array(encoder) })
        } else if (sub === syncProtocol.messageYjsSyncStep2) {
          syncProtocol.readSyncStep2(decoder, doc, origin)
          onMessage({ type: 'sync-step-2' })
        } else if (sub === syncProtocol.messageYjsUpdate) {
          syncProtocol.readUpdate(decoder, doc, origin)
          onMessage({ type: 'sync-update' })
        } else {
          return // unknown sync sub-type: its length is unknown, the rest of the frame is unreadable
        }
        break
      }
      case MESSAGE_AWARENESS:
        onMessage({ type: 'awareness', update: decoding.readVarUint8Array(decoder) })
        break
      case MESSAGE_QUERY_AWARENESS:
        onMessage({ type: 'query-awareness' })
        break
      case MESSAGE_AUTH: {
        const sub = decoding.readVarUint(decoder)
        if (sub !== 0) return // only "permission denied" (0) is defined
        onMessage({ type: 'auth-denied', reason: decoding.readVarString(decoder) })
        break
      }
      case MESSAGE_SAVE: {
        const msg = readSaveMessage(decoder)
        if (msg === null) return
        // A request sent to us is not ours to answer.
        if (msg.type !== 'save-request') onMessage(msg)
        break
      }
      default:
        return
    }
  }
}
