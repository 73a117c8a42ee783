//! What a connection sends a room, decoded once at the connection's edge.
//!
//! A transport turns each frame into [`Inbound`] messages with [`decode_frame`] before anything
//! reaches the room; the room never parses bytes. The messages keep `Bytes` slices of the frame,
//! so an update or awareness message is forwarded to other connections without a copy.

use bytes::Bytes;
use crdt::error::ProtocolError;
use crdt::protocol::{Message, MessageReader};

/// One message from a client, as the room acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// Sync step 1: the client's state vector (v1).
    SyncStep1(Bytes),
    /// Sync step 2: an update (v1) holding what the room lacked.
    SyncStep2(Bytes),
    /// An update (v1), with the whole encoded message to forward unchanged.
    Update {
        /// The encoded message (type, sub-type, update).
        message: Bytes,
        /// The update inside it.
        update: Bytes,
    },
    /// An awareness update, with the whole encoded message to forward unchanged.
    Awareness {
        /// The encoded message.
        message: Bytes,
        /// The awareness payload inside it.
        payload: Bytes,
    },
    /// A request for every awareness state.
    QueryAwareness,
    /// Extension: a save request with the client's id.
    SaveRequest(u64),
    /// A Hocuspocus stateless message (type and payload, as forwarded to the room's other
    /// Hocuspocus connections); only the Hocuspocus edge produces it.
    Stateless(Bytes),
}

/// The messages of one frame, and the error that ended it early, if any.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// The messages before the end or the error, in order.
    pub(crate) messages: Vec<Inbound>,
    /// A malformed message: the connection must be closed (1002) after the messages before it.
    pub(crate) error: Option<ProtocolError>,
}

/// Decodes every message of a y-websocket frame. Messages a relay sends (permission denied,
/// saved, save error) are ignored when a client sends them; a message of an unknown type ends the
/// frame (its length is unknown), ignored with the rest of it.
pub(crate) fn decode_frame(frame: &Bytes) -> Decoded {
    let mut decoded = Decoded::default();
    for item in MessageReader::new(frame) {
        let (message, range) = match item {
            Ok(parsed) => parsed,
            Err(error) => {
                decoded.error = Some(error);
                break;
            }
        };
        let inbound = match message {
            Message::SyncStep1(state_vector) => Inbound::SyncStep1(frame.slice_ref(state_vector)),
            Message::SyncStep2(update) => Inbound::SyncStep2(frame.slice_ref(update)),
            Message::Update(update) => Inbound::Update {
                message: frame.slice(range),
                update: frame.slice_ref(update),
            },
            Message::Awareness(payload) => Inbound::Awareness {
                message: frame.slice(range),
                payload: frame.slice_ref(payload),
            },
            Message::QueryAwareness => Inbound::QueryAwareness,
            Message::SaveRequest(id) => Inbound::SaveRequest(id),
            Message::AuthDenied(_) | Message::Saved(_) | Message::SaveError(..) => {
                tracing::debug!("ignoring a relay-to-client message sent by a client");
                continue;
            }
            Message::Unknown(tag) => {
                tracing::debug!(tag, "ignoring a message of unknown type");
                continue;
            }
        };
        decoded.messages.push(inbound);
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt::protocol::{
        encode_awareness, encode_save_request, encode_saved, encode_sync_step1, encode_update,
    };

    #[test]
    fn a_frame_becomes_messages_that_share_its_bytes() {
        let update = encode_update(&[1, 2, 3]);
        let frame = Bytes::from(
            [
                update.clone(),
                encode_saved(9),
                encode_sync_step1(&[0]),
                encode_save_request(4),
            ]
            .concat(),
        );
        let decoded = decode_frame(&frame);
        assert_eq!(decoded.error, None);
        assert_eq!(
            decoded.messages,
            vec![
                Inbound::Update {
                    message: Bytes::from(update.clone()),
                    update: Bytes::from_static(&[1, 2, 3]),
                },
                Inbound::SyncStep1(Bytes::from_static(&[0])),
                Inbound::SaveRequest(4),
            ]
        );
        let Inbound::Update { message, .. } = &decoded.messages[0] else {
            unreachable!()
        };
        assert_eq!(message.as_ptr(), frame.as_ptr(), "a slice, not a copy");
    }

    #[test]
    fn a_malformed_message_ends_the_frame_with_an_error() {
        let awareness = encode_awareness(&[0]);
        let frame = Bytes::from([awareness.clone(), vec![0, 7]].concat());
        let decoded = decode_frame(&frame);
        assert_eq!(decoded.messages.len(), 1);
        assert!(decoded.error.is_some());
    }
}
