//! The Hocuspocus wire format, decoded once at the edge and encoded here only.
//!
//! Every message starts with the document name (`varString`) and the message type (`varUint`).
//! After the name, the sync, awareness and query-awareness messages are exactly y-websocket's, so
//! a client's message becomes the room's [`Inbound`] by slicing, and a room's message goes out as
//! the name followed by the room's bytes. The rest is Hocuspocus' own:
//!
//! | type | name | layout after the type |
//! | --- | --- | --- |
//! | 0 | Sync | y-protocols sync step 1 / step 2 / update |
//! | 1 | Awareness | `varUint8Array` awareness update |
//! | 2 | Auth | sub-type: Token 0 + `varString` token (4.x adds a `varString` version), PermissionDenied 1 + `varString` reason, Authenticated 2 + `varString` scope |
//! | 3 | QueryAwareness | nothing |
//! | 5 | Stateless | `varString` payload |
//! | 7 | CLOSE | nothing from a client |
//! | 8 | SyncStatus | `varInt` 1 when an update was taken, 0 when not |
//! | 9, 10 | Ping, Pong (4.x) | one byte, no document name |
//!
//! One message per WebSocket frame: a 4.x Auth message carries the provider's version after the
//! token, and reading on would take that version for the next message's document name.

use bytes::Bytes;
use crdt::error::ProtocolError;
use crdt::protocol::{
    Cursor, MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SAVE, MSG_SYNC, Message,
    MessageReader, write_var_bytes, write_var_u64,
};

use crate::room::inbound::Inbound;

/// Hocuspocus message types the relay reads or writes.
pub(crate) const MSG_STATELESS: u64 = 5;
/// A client leaves one document.
pub(crate) const MSG_CLOSE: u64 = 7;
/// The server's acknowledgement of an update or sync step 2.
pub(crate) const MSG_SYNC_STATUS: u64 = 8;
/// A one-byte keep-alive, 4.x only.
pub(crate) const MSG_PING: u8 = 9;
/// The answer to a ping.
pub(crate) const MSG_PONG: u8 = 10;

/// Auth sub-types. `Token` from the server would ask the provider for its token again.
const AUTH_TOKEN: u64 = 0;
const AUTH_PERMISSION_DENIED: u64 = 1;
const AUTH_AUTHENTICATED: u64 = 2;

/// The separator of a 4.x `sessionAwareness` routing key (`name\0sessionId`).
const SESSION_SEPARATOR: char = '\0';

/// What a client's token allows, in Hocuspocus' words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// `read-write`.
    ReadWrite,
    /// `readonly`.
    ReadOnly,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::ReadWrite => "read-write",
            Scope::ReadOnly => "readonly",
        }
    }
}

/// The document a message is for: the key the client uses (the reply prefix) and the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DocKey {
    /// The name as the client sent it (with a `\0sessionId` suffix under `sessionAwareness`);
    /// every reply starts with it.
    pub(crate) key: String,
    /// The document (room) name: the key up to a `\0`.
    pub(crate) room: String,
}

impl DocKey {
    fn new(key: &str) -> Self {
        let room = key.split(SESSION_SEPARATOR).next().unwrap_or(key);
        DocKey {
            key: key.to_owned(),
            room: room.to_owned(),
        }
    }

    /// The reply prefix: the key as a `varString`.
    pub(crate) fn prefix(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.key.len() + 2);
        write_var_bytes(&mut out, self.key.as_bytes());
        out.into()
    }
}

/// A message from a Hocuspocus client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientMessage {
    /// A message for one document.
    Doc(DocKey, DocMessage),
    /// A 4.x ping (answered with a pong).
    Ping,
    /// A 4.x pong.
    Pong,
}

/// What a client says about one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DocMessage {
    /// Auth with a token; `version` is the provider's, sent by 4.x only.
    Auth {
        /// The token (may be empty).
        token: String,
        /// The provider's version string (4.x).
        version: Option<String>,
    },
    /// A sync, awareness or query-awareness message, as the room takes it.
    Room(Inbound),
    /// A stateless message: the bytes after the document name (type and payload), the layout
    /// the room forwards to other Hocuspocus connections.
    Stateless {
        /// Type 5 and the `varString` payload.
        message: Bytes,
        /// The payload's length in bytes.
        payload_len: usize,
    },
    /// The client leaves the document.
    Close,
    /// A type the relay does not act on (SyncStatus from a client, a newer extension).
    Ignored(u64),
}

/// Why a client's message was refused (the connection is closed with 1002).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// It does not parse.
    #[error(transparent)]
    Malformed(#[from] ProtocolError),
    /// An auth sub-type a client may not send (only Token is).
    #[error("unexpected auth message type {0}")]
    AuthType(u64),
    /// Bytes after the end of the message.
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
}

/// Decodes the one message of a client's frame.
///
/// # Errors
/// [`DecodeError`] when it is malformed.
pub(crate) fn decode(frame: &Bytes) -> Result<ClientMessage, DecodeError> {
    // A one-byte frame cannot hold a document name and a type: it is a connection-level ping
    // or pong (a name of length 9 or 10 would need more bytes).
    match frame.as_ref() {
        [MSG_PING] => return Ok(ClientMessage::Ping),
        [MSG_PONG] => return Ok(ClientMessage::Pong),
        _ => {}
    }
    let mut c = Cursor::new(frame);
    let key = DocKey::new(c.read_var_str()?);
    let start = c.position();
    let body = frame.slice(start..);
    let message = match c.read_var_u64()? {
        MSG_SYNC | MSG_AWARENESS | MSG_QUERY_AWARENESS => {
            let mut reader = MessageReader::new(&body);
            let (message, range) = reader.next().ok_or(ProtocolError::Truncated)??;
            if range.end != body.len() {
                return Err(DecodeError::Trailing(body.len() - range.end));
            }
            let inbound = match message {
                Message::SyncStep1(sv) => Inbound::SyncStep1(body.slice_ref(sv)),
                Message::SyncStep2(update) => Inbound::SyncStep2(body.slice_ref(update)),
                Message::Update(update) => Inbound::Update {
                    message: body.clone(),
                    update: body.slice_ref(update),
                },
                Message::Awareness(payload) => Inbound::Awareness {
                    message: body.clone(),
                    payload: body.slice_ref(payload),
                },
                _ => Inbound::QueryAwareness,
            };
            return Ok(ClientMessage::Doc(key, DocMessage::Room(inbound)));
        }
        MSG_AUTH => match c.read_var_u64()? {
            AUTH_TOKEN => {
                let token = c.read_var_str()?.to_owned();
                // 4.x: the provider's version follows. Whatever is left belongs to this message.
                let version = if c.is_empty() {
                    None
                } else {
                    Some(c.read_var_str()?.to_owned())
                };
                DocMessage::Auth { token, version }
            }
            other => return Err(DecodeError::AuthType(other)),
        },
        MSG_STATELESS => {
            let payload_len = c.read_var_str()?.len();
            DocMessage::Stateless {
                message: body.slice(..c.position() - start),
                payload_len,
            }
        }
        MSG_CLOSE => DocMessage::Close,
        other => return Ok(ClientMessage::Doc(key, DocMessage::Ignored(other))),
    };
    if !c.is_empty() {
        return Err(DecodeError::Trailing(c.remaining()));
    }
    Ok(ClientMessage::Doc(key, message))
}

/// `Authenticated` with `scope`, for the document of `prefix`.
pub(crate) fn encode_authenticated(prefix: &[u8], scope: Scope) -> Bytes {
    let mut out = prefix.to_vec();
    write_var_u64(&mut out, MSG_AUTH);
    write_var_u64(&mut out, AUTH_AUTHENTICATED);
    write_var_bytes(&mut out, scope.as_str().as_bytes());
    out.into()
}

/// `PermissionDenied` with `reason`, for the document of `prefix`.
pub(crate) fn encode_permission_denied(prefix: &[u8], reason: &str) -> Bytes {
    let mut out = prefix.to_vec();
    write_var_u64(&mut out, MSG_AUTH);
    write_var_u64(&mut out, AUTH_PERMISSION_DENIED);
    write_var_bytes(&mut out, reason.as_bytes());
    out.into()
}

/// `SyncStatus`: whether the update was taken (lib0 `varInt` 1 or 0, one byte either way).
pub(crate) fn encode_sync_status(prefix: &[u8], taken: bool) -> Bytes {
    let mut out = prefix.to_vec();
    write_var_u64(&mut out, MSG_SYNC_STATUS);
    out.push(u8::from(taken));
    out.into()
}

/// A room's stateless message, type 5 and the `varString` payload, as the core forwards it.
#[cfg(test)]
pub(crate) fn encode_stateless_body(payload: &str) -> Vec<u8> {
    let mut out = Vec::new();
    write_var_u64(&mut out, MSG_STATELESS);
    write_var_bytes(&mut out, payload.as_bytes());
    out
}

/// What a message the room queued becomes for a Hocuspocus client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Translated {
    /// The document prefix followed by the room's bytes unchanged.
    Prefixed,
    /// A message of its own (a SyncStatus for a save answer).
    Own(Bytes),
    /// Nothing: the message has no Hocuspocus form.
    Dropped,
}

/// Translates a message the room queued (in y-websocket's layout) for the document of `prefix`.
/// Sync, awareness and stateless messages keep their bytes; a save answer (the relay's type 100,
/// which a 3.x provider would throw on) becomes a SyncStatus; a permission-denied for a
/// read-only edit is dropped, as Hocuspocus' server answers that with SyncStatus 0 only (sent
/// for the refused save request), not with an auth message that would mark the provider
/// unauthenticated.
pub(crate) fn translate(prefix: &[u8], message: &[u8]) -> Translated {
    let mut c = Cursor::new(message);
    match c.read_var_u64() {
        Ok(MSG_SYNC | MSG_AWARENESS | MSG_QUERY_AWARENESS | MSG_STATELESS) => Translated::Prefixed,
        Ok(MSG_SAVE) => match MessageReader::new(message).next() {
            Some(Ok((Message::Saved(_), _))) => Translated::Own(encode_sync_status(prefix, true)),
            Some(Ok((Message::SaveError(..), _))) => {
                Translated::Own(encode_sync_status(prefix, false))
            }
            _ => Translated::Dropped,
        },
        _ => Translated::Dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt::protocol::{
        encode_awareness, encode_permission_denied as ws_denied, encode_save_error, encode_saved,
        encode_sync_step1, encode_update,
    };

    fn with_name(name: &str, body: &[u8]) -> Bytes {
        let mut out = Vec::new();
        write_var_bytes(&mut out, name.as_bytes());
        out.extend_from_slice(body);
        out.into()
    }

    /// An Auth message as the providers write it: 3.x without, 4.x with the version.
    fn auth(name: &str, token: &str, version: Option<&str>) -> Bytes {
        let mut body = Vec::new();
        write_var_u64(&mut body, MSG_AUTH);
        write_var_u64(&mut body, AUTH_TOKEN);
        write_var_bytes(&mut body, token.as_bytes());
        if let Some(version) = version {
            write_var_bytes(&mut body, version.as_bytes());
        }
        with_name(name, &body)
    }

    #[test]
    fn auth_of_3x_and_4x_providers() {
        assert_eq!(
            decode(&auth("doc", "tok", None)),
            Ok(ClientMessage::Doc(
                DocKey::new("doc"),
                DocMessage::Auth {
                    token: "tok".into(),
                    version: None
                }
            ))
        );
        // The version is part of the Auth message, not the name of a next one.
        assert_eq!(
            decode(&auth("doc", "", Some("4.8.0"))),
            Ok(ClientMessage::Doc(
                DocKey::new("doc"),
                DocMessage::Auth {
                    token: String::new(),
                    version: Some("4.8.0".into())
                }
            ))
        );
        let mut denied = Vec::new();
        write_var_u64(&mut denied, MSG_AUTH);
        write_var_u64(&mut denied, AUTH_PERMISSION_DENIED);
        write_var_bytes(&mut denied, b"no");
        assert_eq!(
            decode(&with_name("doc", &denied)),
            Err(DecodeError::AuthType(1))
        );
    }

    #[test]
    fn room_messages_are_slices_of_the_frame() {
        let update = encode_update(&[1, 2, 3]);
        let frame = with_name("notes", &update);
        let Ok(ClientMessage::Doc(key, DocMessage::Room(Inbound::Update { message, update }))) =
            decode(&frame)
        else {
            panic!("an update")
        };
        assert_eq!(key.room, "notes");
        assert_eq!(update.as_ref(), &[1, 2, 3]);
        assert_eq!(message.as_ref(), encode_update(&[1, 2, 3]).as_slice());
        assert_eq!(message.as_ptr(), frame[6..].as_ptr(), "no copy");
        assert!(matches!(
            decode(&with_name("notes", &encode_sync_step1(&[0]))),
            Ok(ClientMessage::Doc(
                _,
                DocMessage::Room(Inbound::SyncStep1(_))
            ))
        ));
        assert!(matches!(
            decode(&with_name("notes", &encode_awareness(&[0]))),
            Ok(ClientMessage::Doc(
                _,
                DocMessage::Room(Inbound::Awareness { .. })
            ))
        ));
    }

    #[test]
    fn session_awareness_keys_name_the_room_before_the_separator() {
        let frame = with_name("notes\0abc123", &[3]);
        let Ok(ClientMessage::Doc(key, DocMessage::Room(Inbound::QueryAwareness))) = decode(&frame)
        else {
            panic!("query awareness")
        };
        assert_eq!(key.room, "notes");
        assert_eq!(key.key, "notes\0abc123");
        assert_eq!(key.prefix().as_ref(), &frame[..13]);
    }

    #[test]
    fn pings_stateless_close_and_unknown_types() {
        assert_eq!(decode(&Bytes::from_static(&[9])), Ok(ClientMessage::Ping));
        assert_eq!(decode(&Bytes::from_static(&[10])), Ok(ClientMessage::Pong));
        let body = encode_stateless_body("hi");
        let Ok(ClientMessage::Doc(
            _,
            DocMessage::Stateless {
                message,
                payload_len,
            },
        )) = decode(&with_name("d", &body))
        else {
            panic!("stateless")
        };
        assert_eq!((message.as_ref(), payload_len), (body.as_slice(), 2));
        assert_eq!(
            decode(&with_name("d", &[7])),
            Ok(ClientMessage::Doc(DocKey::new("d"), DocMessage::Close))
        );
        assert_eq!(
            decode(&with_name("d", &[8, 1])),
            Ok(ClientMessage::Doc(DocKey::new("d"), DocMessage::Ignored(8)))
        );
    }

    #[test]
    fn malformed_and_trailing_bytes_are_refused() {
        assert!(decode(&Bytes::new()).is_err());
        assert!(
            decode(&Bytes::from_static(&[5, b'a'])).is_err(),
            "short name"
        );
        assert!(
            decode(&with_name("d", &[0, 2, 5, 1])).is_err(),
            "short update"
        );
        assert_eq!(
            decode(&with_name(
                "d",
                &[[0, 2, 2, 0, 0].as_slice(), &[1]].concat()
            )),
            Err(DecodeError::Trailing(1)),
            "one message per frame"
        );
        assert!(
            decode(&with_name("d", &[0, 9, 0])).is_err(),
            "sync sub-type"
        );
        assert!(
            decode(&Bytes::from_static(&[1, 0xff, 0])).is_err(),
            "name not UTF-8"
        );
    }

    #[test]
    fn room_messages_translate_for_a_hocuspocus_client() {
        let prefix = DocKey::new("d").prefix();
        assert_eq!(
            translate(&prefix, &encode_update(&[0, 0])),
            Translated::Prefixed
        );
        assert_eq!(
            translate(&prefix, &encode_awareness(&[0])),
            Translated::Prefixed
        );
        assert_eq!(
            translate(&prefix, &encode_saved(3)),
            Translated::Own(with_name("d", &[8, 1]))
        );
        assert_eq!(
            translate(&prefix, &encode_save_error(3, "x")),
            Translated::Own(with_name("d", &[8, 0]))
        );
        assert_eq!(translate(&prefix, &ws_denied("ro")), Translated::Dropped);
        assert_eq!(
            encode_authenticated(&prefix, Scope::ReadOnly),
            with_name(
                "d",
                &[2, 2, 8, b'r', b'e', b'a', b'd', b'o', b'n', b'l', b'y']
            )
        );
        assert_eq!(
            encode_permission_denied(&prefix, "no"),
            with_name("d", &[2, 1, 2, b'n', b'o'])
        );
    }
}
