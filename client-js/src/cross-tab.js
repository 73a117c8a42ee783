/**
 * Cross-tab sync: tabs of the same browser editing the same room exchange updates and awareness
 * over a BroadcastChannel named after the room URL, with the same messages as the relay (like
 * y-websocket's `bc` option). An edit in one tab reaches the others even when the relay is out of
 * reach. One more message, not a Yjs one: {@link DELETED_NOTICE}, when a tab learns that the relay
 * deleted the document, so that tabs without a connection at that moment do not send it back.
 *
 * @module cross-tab
 */

import * as awarenessProtocol from 'y-protocols/awareness'
import {
  encodeAwareness, encodeQueryAwareness, encodeSyncStep1, encodeSyncStep2, encodeUpdate, readMessages
} from './protocol.js'

/** Posted (as a string, beside the binary Yjs messages) when the relay deleted the document. */
export const DELETED_NOTICE = 'relay-client:document-deleted'

export class CrossTab {
  /**
   * Joins the channel and syncs with the tabs already in it: sends sync step 1, the full state
   * (sync step 2), a query for their awareness states and the local awareness state.
   *
   * Updates and awareness states from other tabs are applied with this object as the origin.
   *
   * @param {string} name channel name
   * @param {import('yjs').Doc} doc
   * @param {awarenessProtocol.Awareness} awareness
   * @param {typeof BroadcastChannel} BroadcastChannelImpl
   * @param {{ onDeleted?: () => void }} [handlers] `onDeleted`: another tab posted {@link DELETED_NOTICE}
   */
  constructor (name, doc, awareness, BroadcastChannelImpl, handlers = {}) {
    this.doc = doc
    this.awareness = awareness
    this.onDeleted = handlers.onDeleted ?? (() => {})
    this.channel = new BroadcastChannelImpl(name)
    this.closed = false
    /** @param {MessageEvent} event */
    this._onMessage = event => this._receive(event.data)
    this.channel.addEventListener('message', this._onMessage)
    this.post(encodeSyncStep1(doc))
    this.post(encodeSyncStep2(doc))
    this.post(encodeQueryAwareness())
    if (awareness.getLocalState() !== null) this.post(encodeAwareness(awareness, [doc.clientID]))
  }

  /** @param {Uint8Array} message */
  post (message) {
    if (!this.closed) this.channel.postMessage(message)
  }

  /** @param {Uint8Array} update */
  postUpdate (update) {
    this.post(encodeUpdate(update))
  }

  /** @param {number[]} clients */
  postAwareness (clients) {
    this.post(encodeAwareness(this.awareness, clients))
  }

  /** Tells the other tabs that the relay deleted the document. */
  postDeleted () {
    if (!this.closed) this.channel.postMessage(DELETED_NOTICE)
  }

  /** Asks the other tabs for their awareness states (after they were dropped). */
  queryAwareness () {
    this.post(encodeQueryAwareness())
  }

  /** @param {unknown} data */
  _receive (data) {
    if (this.closed) return
    if (data === DELETED_NOTICE) {
      this.onDeleted()
      return
    }
    const frame = data instanceof Uint8Array ? data : data instanceof ArrayBuffer ? new Uint8Array(data) : null
    if (frame === null) return
    try {
      readMessages(frame, this.doc, this, msg => {
        switch (msg.type) {
          case 'sync-step-1':
            this.post(msg.reply)
            break
          case 'awareness':
            awarenessProtocol.applyAwarenessUpdate(this.awareness, msg.update, this)
            break
          case 'query-awareness':
            if (this.awareness.getLocalState() !== null) this.postAwareness([this.doc.clientID])
            break
        }
      })
    } catch (err) {
      console.error('relay-client: bad message from another tab', err)
    }
  }

  /** Leaves the channel. */
  destroy () {
    if (this.closed) return
    this.closed = true
    this.channel.removeEventListener('message', this._onMessage)
    this.channel.close()
  }
}
