//! Which protocol the clients speak, and how each one frames the y-websocket messages.
//!
//! - **y-websocket**: the room is in the URL (`ws://HOST:PORT/ROOM`) and every frame holds bare
//!   messages (sync, awareness, the relay's save extension).
//! - **Hocuspocus** (`@hocuspocus/provider`): one URL for every document (`ws://HOST:PORT/`), and
//!   every message starts with the document name (`varString`). After the name, sync (0) and
//!   awareness (1) are y-websocket's; Hocuspocus adds Auth (2: the client sends sub-type Token 0
//!   with its token and, from 4.x on, its version; the server answers PermissionDenied 1 with a
//!   reason or Authenticated 2 with a scope) and SyncStatus (8: one `varInt`, 1 when the server
//!   took an update or sync step 2, 0 when it refused it). One message per frame, one document
//!   per socket here (the provider may multiplex several; a benchmark client has no need to).
//!
//! The relay serves both (Hocuspocus at its root path), `@hocuspocus/server` only Hocuspocus,
//! the other peers only y-websocket.

use std::fmt;
use std::str::FromStr;

use crdt::error::ProtocolError;
use crdt::protocol::{Cursor, MSG_AUTH, write_var_bytes, write_var_u64};

/// Hocuspocus' SyncStatus: the server's acknowledgement of an update or sync step 2.
pub const MSG_SYNC_STATUS: u64 = 8;
/// Auth sub-type of the client's token.
const AUTH_TOKEN: u64 = 0;
/// Auth sub-type of a refusal (with a reason).
const AUTH_PERMISSION_DENIED: u64 = 1;
/// Auth sub-type of an acceptance (with the scope).
const AUTH_AUTHENTICATED: u64 = 2;
/// The version a client announces in its Auth message, as a 4.x provider does with its own
/// (the servers only read it to tell 4.x providers from 3.x ones).
pub const PROVIDER_VERSION: &str = "4.7.0";

/// The protocol of the clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// y-websocket: the room in the URL, bare messages.
    #[default]
    YWebsocket,
    /// `@hocuspocus/provider`'s: one URL, messages prefixed by the document name.
    Hocuspocus,
}

impl Protocol {
    /// Both, y-websocket first.
    pub const ALL: [Protocol; 2] = [Protocol::YWebsocket, Protocol::Hocuspocus];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::YWebsocket => "y-websocket",
            Protocol::Hocuspocus => "hocuspocus",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown protocol {s:?}: y-websocket or hocuspocus"))
    }
}

impl serde::Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// How one client's messages are framed on its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// y-websocket: messages go as they are.
    Plain,
    /// Hocuspocus: every message starts with `prefix`, the document name as a `varString`.
    Hocuspocus {
        /// The document name, length-prefixed.
        prefix: Vec<u8>,
    },
}

/// What a server's frame holds, for a client of one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// y-websocket messages (read them with `crdt::protocol::MessageReader`).
    Messages(&'a [u8]),
    /// Hocuspocus' SyncStatus: whether the server took the update (or step 2) it answers.
    SyncStatus(bool),
    /// Hocuspocus' Authenticated, with the scope (`read-write` or `readonly`).
    Authenticated(&'a str),
    /// Hocuspocus' PermissionDenied, with the reason.
    PermissionDenied(&'a str),
    /// Nothing for this client: another document, a one-byte ping, a stateless message.
    Ignored,
}

impl Framing {
    /// The framing of a client of `room` speaking `protocol`.
    pub fn new(protocol: Protocol, room: &str) -> Self {
        match protocol {
            Protocol::YWebsocket => Framing::Plain,
            Protocol::Hocuspocus => {
                let mut prefix = Vec::with_capacity(room.len() + 2);
                write_var_bytes(&mut prefix, room.as_bytes());
                Framing::Hocuspocus { prefix }
            }
        }
    }

    /// Whether the server acknowledges each update and sync step 2 (Hocuspocus' SyncStatus).
    pub fn acks_updates(&self) -> bool {
        matches!(self, Framing::Hocuspocus { .. })
    }

    /// `message` (one y-websocket message) as this client sends it.
    pub fn wrap(&self, message: Vec<u8>) -> Vec<u8> {
        match self {
            Framing::Plain => message,
            Framing::Hocuspocus { prefix } => {
                let mut out = Vec::with_capacity(prefix.len() + message.len());
                out.extend_from_slice(prefix);
                out.extend_from_slice(&message);
                out
            }
        }
    }

    /// The Auth message a Hocuspocus client opens its document with (`None` for y-websocket,
    /// where the token goes in the URL): Token, `token` (may be empty on an open server) and
    /// [`PROVIDER_VERSION`].
    pub fn auth(&self, token: &str) -> Option<Vec<u8>> {
        let Framing::Hocuspocus { prefix } = self else {
            return None;
        };
        let mut out = prefix.clone();
        write_var_u64(&mut out, MSG_AUTH);
        write_var_u64(&mut out, AUTH_TOKEN);
        write_var_bytes(&mut out, token.as_bytes());
        write_var_bytes(&mut out, PROVIDER_VERSION.as_bytes());
        Some(out)
    }

    /// Reads a server's frame.
    ///
    /// # Errors
    /// When a Hocuspocus frame does not parse (a y-websocket frame is returned as it is, for
    /// `MessageReader` to judge).
    pub fn read<'a>(&self, frame: &'a [u8]) -> Result<Incoming<'a>, ProtocolError> {
        let Framing::Hocuspocus { prefix } = self else {
            return Ok(Incoming::Messages(frame));
        };
        // One byte is a 4.x keep-alive ping (9) or pong (10): no document name fits in it. The
        // relay sends pings on a quiet socket and does not require an answer.
        if frame.len() <= 1 {
            return Ok(Incoming::Ignored);
        }
        let Some(body) = frame.strip_prefix(prefix.as_slice()) else {
            // Another document (a longer name that starts like ours included): the name does
            // not match byte for byte, so it is not this client's.
            return Ok(Incoming::Ignored);
        };
        let mut c = Cursor::new(body);
        Ok(match c.read_var_u64()? {
            MSG_SYNC_STATUS => Incoming::SyncStatus(c.read_var_u64()? == 1),
            MSG_AUTH => match c.read_var_u64()? {
                AUTH_AUTHENTICATED => Incoming::Authenticated(c.read_var_str()?),
                AUTH_PERMISSION_DENIED => Incoming::PermissionDenied(c.read_var_str()?),
                other => return Err(ProtocolError::UnknownAuthType(other)),
            },
            crdt::protocol::MSG_SYNC | crdt::protocol::MSG_AWARENESS => Incoming::Messages(body),
            _ => Incoming::Ignored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt::protocol::{Message, MessageReader, encode_update};

    fn hocuspocus(room: &str) -> Framing {
        Framing::new(Protocol::Hocuspocus, room)
    }

    #[test]
    fn plain_framing_leaves_messages_alone() {
        let plain = Framing::new(Protocol::YWebsocket, "r");
        let update = encode_update(&[0, 0]);
        assert_eq!(plain.wrap(update.clone()), update);
        assert_eq!(plain.read(&update), Ok(Incoming::Messages(&update[..])));
        assert_eq!(plain.auth(""), None);
        assert!(!plain.acks_updates());
    }

    #[test]
    fn hocuspocus_messages_start_with_the_document_name() {
        let framing = hocuspocus("doc");
        let frame = framing.wrap(encode_update(&[0, 0]));
        assert_eq!(&frame[..4], &[3, b'd', b'o', b'c']);
        let Ok(Incoming::Messages(body)) = framing.read(&frame) else {
            panic!("an update")
        };
        let messages: Vec<_> = MessageReader::new(body).map(|m| m.map(|m| m.0)).collect();
        assert_eq!(messages, vec![Ok(Message::Update(&[0, 0]))]);
        assert!(framing.acks_updates());
    }

    #[test]
    fn auth_carries_the_token_and_the_provider_version() {
        let auth = hocuspocus("d").auth("tok").expect("hocuspocus");
        let mut expected = vec![1, b'd', 2, 0, 3, b't', b'o', b'k'];
        write_var_bytes(&mut expected, PROVIDER_VERSION.as_bytes());
        assert_eq!(auth, expected);
    }

    #[test]
    fn server_messages_of_hocuspocus() {
        let framing = hocuspocus("d");
        assert_eq!(
            framing.read(&[1, b'd', 8, 1]),
            Ok(Incoming::SyncStatus(true))
        );
        assert_eq!(
            framing.read(&[1, b'd', 8, 0]),
            Ok(Incoming::SyncStatus(false))
        );
        assert_eq!(
            framing.read(&[1, b'd', 2, 2, 2, b'r', b'w']),
            Ok(Incoming::Authenticated("rw"))
        );
        assert_eq!(
            framing.read(&[1, b'd', 2, 1, 2, b'n', b'o']),
            Ok(Incoming::PermissionDenied("no"))
        );
        // A ping, another document, a stateless message.
        assert_eq!(framing.read(&[9]), Ok(Incoming::Ignored));
        assert_eq!(framing.read(&[2, b'd', b'x', 8, 1]), Ok(Incoming::Ignored));
        assert_eq!(framing.read(&[1, b'd', 5, 1, b'x']), Ok(Incoming::Ignored));
        assert!(framing.read(&[1, b'd', 8]).is_err(), "truncated");
    }

    #[test]
    fn protocols_parse_by_name() {
        for p in Protocol::ALL {
            assert_eq!(p.name().parse::<Protocol>(), Ok(p));
        }
        assert!("hocus".parse::<Protocol>().is_err());
    }
}
