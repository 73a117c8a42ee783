/**
 * The messages the client speaks: y-protocols sync and awareness as y-websocket frames them, the
 * relay's save extension (type 100: *save request*, *saved*, *save error*, see PROTOCOL.md), and
 * the close codes with what the client does after each. Every message type, sub-type and close
 * code is defined here once.
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
/** The relay's save extension: save requests and their answers (PROTOCOL.md, type 100). */
export const MESSAGE_SAVE = 100

/** Save sub-type, client → relay: *save request*, tell me when everything I sent before this is committed. */
export const SAVE_REQUEST = 0
/** Save sub-type, relay → client: *saved*, everything sent before the request with this id is committed. */
export const SAVED = 1
/** Save sub-type, relay → client: *save error*, a commit failed; the relay retries and sends *saved* later. */
export const SAVE_ERROR = 2

// Close codes the client acts on or reports itself (for a connection that ended without a close
// frame, or for an HTTP answer of long-polling). PROTOCOL.md's "Closing" table lists every code;
// after those not named here the client reconnects.

/** The client ended the connection (`disconnect()`), or its long-polling session. */
export const CLOSE_NORMAL = 1000
/**
 * Not sent by anyone: the connection ended without a close frame. The client reports it when it
 * gives up on a connection itself (liveness timeout, the `offline` event, a WebSocket that does
 * not open in time) and for a long-polling session that failed or that the relay no longer knows.
 */
export const CLOSE_ABNORMAL = 1006
/** A frame or message over the size limit (over long-polling: the relay answered 413). */
export const CLOSE_TOO_BIG = 1009
/**
 * The token expired (over long-polling also: the relay refused to open a session with HTTP 401).
 * The client does not reconnect until `connect()`, e.g. with a new token in `params`.
 */
export const CLOSE_UNAUTHORIZED = 4401
/**
 * Not sent by the relay over a WebSocket (a refused upgrade is an HTTP 403 that browsers report as
 * 1006): the client reports it when the relay refuses to open a long-polling session with HTTP 403
 * (the token does not give access to the document, or the page's origin is not allowed). The
 * client does not reconnect until `connect()`.
 */
export const CLOSE_FORBIDDEN = 4403
/**
 * The relay deleted the document (`DELETE /api/docs/NAME`; over long-polling the 410 answer
 * carries this code). The client never connects to that document again: its local copy would
 * bring the deleted content back.
 */
export const CLOSE_DOCUMENT_DELETED = 4404

/**
 * What the client does after a close: 'reconnect' (after the backoff delay, and resync),
 * 'reconnect with new credentials' (nothing until `connect()` is called, e.g. with a new token),
 * 'do not reconnect' (never again, for this document). The words are those of the "client"
 * column of PROTOCOL.md's "Closing" table, which a test compares with {@link closeAction}.
 * @typedef {'reconnect' | 'reconnect with new credentials' | 'do not reconnect'} CloseAction
 */

/** @type {ReadonlyMap<number, CloseAction>} the codes after which the client does not simply reconnect */
const CLOSE_ACTIONS = new Map([
  [CLOSE_UNAUTHORIZED, 'reconnect with new credentials'],
  [CLOSE_FORBIDDEN, 'reconnect with new credentials'],
  [CLOSE_DOCUMENT_DELETED, 'do not reconnect']
])

/**
 * What the client does after a connection closed with `code`.
 * @param {number} code
 * @returns {CloseAction}
 */
export function closeAction (code) {
  return CLOSE_ACTIONS.get(code) ?? 'reconnect'
}

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
 * @returns {Uint8Array} a *save request* `[100, 0, id]`
 */
export function encodeSaveRequest (id) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SAVE)
  encoding.writeVarUint(encoder, SAVE_REQUEST)
  encoding.writeVarUint(encoder, id)
  return encoding.toUint8Array(encoder)
}

/**
 * A *saved* answer, as the relay sends it (for tests and fakes).
 * @param {number} id the id of the save request it answers
 * @returns {Uint8Array} `[100, 1, id]`
 */
export function encodeSaved (id) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SAVE)
  encoding.writeVarUint(encoder, SAVED)
  encoding.writeVarUint(encoder, id)
  return encoding.toUint8Array(encoder)
}

/**
 * A *save error* answer, as the relay sends it (for tests and fakes).
 * @param {number} id the id of the save request it answers
 * @param {string} reason
 * @returns {Uint8Array} `[100, 2, id, reason]`
 */
export function encodeSaveError (id, reason) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SAVE)
  encoding.writeVarUint(encoder, SAVE_ERROR)
  encoding.writeVarUint(encoder, id)
  encoding.writeVarString(encoder, reason)
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
      case MESSAGE_SAVE: {
        const sub = decoding.readVarUint(decoder)
        if (sub === SAVED) {
          onMessage({ type: 'saved', id: decoding.readVarUint(decoder) })
        } else if (sub === SAVE_ERROR) {
          const id = decoding.readVarUint(decoder)
          onMessage({ type: 'save-error', id, reason: decoding.readVarString(decoder) })
        } else if (sub === SAVE_REQUEST) {
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
