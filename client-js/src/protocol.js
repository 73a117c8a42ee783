/**
 * The messages the client speaks: y-protocols sync and awareness as y-websocket frames them, and
 * the relay's *saved* acknowledgement extension (type 100, see PROTOCOL.md). Every message type
 * and sub-type is defined here once.
 *
 * @module protocol
 */

import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'

export const MESSAGE_SYNC = 0
export const MESSAGE_AWARENESS = 1
export const MESSAGE_AUTH = 2
export const MESSAGE_QUERY_AWARENESS = 3
/** The relay's extension: save requests and their answers. */
export const MESSAGE_SAVED = 100

/** client → relay: tell me when everything I sent before this is committed */
export const SAVED_REQUEST = 0
/** relay → client: everything sent before the request with this id is committed */
export const SAVED_OK = 1
/** relay → client: a commit failed; the relay retries and sends SAVED_OK later */
export const SAVED_ERROR = 2

/** Close codes after which the client does not retry until `connect()` is called again. */
export const CLOSE_UNAUTHORIZED = 4401
export const CLOSE_FORBIDDEN = 4403
/**
 * The relay deleted the document (`DELETE /api/docs/NAME`; over long-polling the 410 answer
 * carries this code). The client never connects to that document again: its local copy would
 * bring the deleted content back.
 */
export const CLOSE_DOCUMENT_DELETED = 4404

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
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_AWARENESS)
  encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(awareness, clients))
  return encoding.toUint8Array(encoder)
}

/** @returns {Uint8Array} a query awareness message */
export function encodeQueryAwareness () {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_QUERY_AWARENESS)
  return encoding.toUint8Array(encoder)
}

/**
 * @param {number} id request id, chosen by the client
 * @returns {Uint8Array} a save request `[100, 0, id]`
 */
export function encodeSaveRequest (id) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SAVED)
  encoding.writeVarUint(encoder, SAVED_REQUEST)
  encoding.writeVarUint(encoder, id)
  return encoding.toUint8Array(encoder)
}

/**
 * Encodes a *saved* or *save error* answer, as the relay sends it (used by tests and fakes).
 * @param {number} id
 * @param {string} [errorReason] when given, a save error `[100, 2, id, reason]`, else `[100, 1, id]`
 * @returns {Uint8Array}
 */
export function encodeSaveAnswer (id, errorReason) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SAVED)
  encoding.writeVarUint(encoder, errorReason === undefined ? SAVED_OK : SAVED_ERROR)
  encoding.writeVarUint(encoder, id)
  if (errorReason !== undefined) encoding.writeVarString(encoder, errorReason)
  return encoding.toUint8Array(encoder)
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
      case MESSAGE_SAVED: {
        const sub = decoding.readVarUint(decoder)
        if (sub === SAVED_OK) {
          onMessage({ type: 'saved', id: decoding.readVarUint(decoder) })
        } else if (sub === SAVED_ERROR) {
          const id = decoding.readVarUint(decoder)
          onMessage({ type: 'save-error', id, reason: decoding.readVarString(decoder) })
        } else if (sub === SAVED_REQUEST) {
          decoding.readVarUint(decoder) // a request sent to us: not ours to answer
        } else {
          return
        }
        break
      }
      default:
        return
    }
  }
}
