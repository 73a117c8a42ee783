/**
 * The relay protocol's numbers and the messages built from plain values: message types, the save
 * extension's sub-types (type 100, PROTOCOL.md), the close codes with what the client does after
 * each, and the encoders and the save-message reader that need no Yjs document. Imports lib0 only,
 * never `yjs`: a test suite with its own copy of Yjs (tests/interop) imports this module by path,
 * and a second Yjs in one process breaks Yjs. `protocol.js` re-exports all of it, next to the
 * messages that need a document.
 *
 * @module wire
 */

import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

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
 * @param {Uint8Array} update an awareness update, as y-protocols' `encodeAwarenessUpdate` makes it
 * @returns {Uint8Array} an awareness message carrying it
 */
export function encodeAwarenessMessage (update) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_AWARENESS)
  encoding.writeVarUint8Array(encoder, update)
  return encoding.toUint8Array(encoder)
}

/** @returns {Uint8Array} a query awareness message */
export function encodeQueryAwareness () {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_QUERY_AWARENESS)
  return encoding.toUint8Array(encoder)
}

/**
 * A message of the save extension, as {@link readSaveMessage} reads it.
 * @typedef {{ type: 'save-request', id: number }
 *   | { type: 'saved', id: number }
 *   | { type: 'save-error', id: number, reason: string }} SaveMessage
 */

/** The sub-type byte of each {@link SaveMessage} type, the inverse of {@link readSaveMessage}. */
const SAVE_SUB_TYPES = { 'save-request': SAVE_REQUEST, saved: SAVED, 'save-error': SAVE_ERROR }

/**
 * Encodes a message of the save extension: `[100, sub-type, id]`, plus the reason of a
 * *save error*. The relay sends *saved* and *save error*; they are encoded here for tests and fakes.
 * @param {SaveMessage} message
 * @returns {Uint8Array}
 */
export function encodeSaveMessage (message) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SAVE)
  encoding.writeVarUint(encoder, SAVE_SUB_TYPES[message.type])
  encoding.writeVarUint(encoder, message.id)
  if (message.type === 'save-error') encoding.writeVarString(encoder, message.reason)
  return encoding.toUint8Array(encoder)
}

/**
 * @param {number} id request id, chosen by the client
 * @returns {Uint8Array} a *save request* `[100, 0, id]`
 */
export function encodeSaveRequest (id) {
  return encodeSaveMessage({ type: 'save-request', id })
}

/**
 * Reads the body of a save-extension message (what follows the message type {@link MESSAGE_SAVE}).
 * @param {decoding.Decoder} decoder positioned after the message type
 * @returns {SaveMessage | null} null for an unknown sub-type: its length is unknown, so the rest
 *   of the frame cannot be read
 */
export function readSaveMessage (decoder) {
  const sub = decoding.readVarUint(decoder)
  switch (sub) {
    case SAVE_REQUEST:
      return { type: 'save-request', id: decoding.readVarUint(decoder) }
    case SAVED:
      return { type: 'saved', id: decoding.readVarUint(decoder) }
    case SAVE_ERROR: {
      const id = decoding.readVarUint(decoder)
      return { type: 'save-error', id, reason: decoding.readVarString(decoder) }
    }
    default:
      return null
  }
}
