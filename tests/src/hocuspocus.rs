//! A Hocuspocus test client: a WebSocket to the relay's root path on which every message starts
//! with a document name, as `@hocuspocus/provider` writes them. Sync and awareness messages
//! after the name are y-websocket's, decoded with the relay's own codec ([`decode_one`]).

use std::net::SocketAddr;

use bytes::Bytes;
use crdt::protocol::{Cursor, encode_sync_step1, encode_update, write_var_bytes, write_var_u64};
use yrs::Doc;

use crate::client::{Client, Event};
use crate::doc::{append, apply};
use crate::protocol::{Msg, decode_one};
use crate::wait::DEADLINE;

/// What a Hocuspocus server sends, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HMsg {
    /// A sync, awareness or query-awareness message (y-websocket's layout).
    Room(Msg),
    /// Auth: PermissionDenied with its reason.
    Denied(String),
    /// Auth: Authenticated with its scope (`read-write` or `readonly`).
    Authenticated(String),
    /// Auth: the server asks for the token again (sub-type 0).
    TokenRequest,
    /// SyncStatus: whether an update was taken.
    SyncStatus(bool),
    /// A stateless message.
    Stateless(String),
    /// Any other type.
    Other(u64),
}

/// The one-byte ping a 4.x provider answers with a pong.
pub const HOCUS_PING: u8 = 9;
/// The answer to a ping.
pub const HOCUS_PONG: u8 = 10;

/// A frame: the document name, then `body`.
pub fn hocus_frame(doc: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_var_bytes(&mut out, doc.as_bytes());
    out.extend_from_slice(body);
    out
}

/// An Auth message with `token`; `version` is what a 4.x provider adds after it.
pub fn hocus_auth(doc: &str, token: &str, version: Option<&str>) -> Vec<u8> {
    let mut body = vec![2, 0];
    write_var_bytes(&mut body, token.as_bytes());
    if let Some(version) = version {
        write_var_bytes(&mut body, version.as_bytes());
    }
    hocus_frame(doc, &body)
}

/// A stateless message with `payload`.
pub fn hocus_stateless(doc: &str, payload: &str) -> Vec<u8> {
    let mut body = Vec::new();
    write_var_u64(&mut body, 5);
    write_var_bytes(&mut body, payload.as_bytes());
    hocus_frame(doc, &body)
}

/// Decodes a Hocuspocus server frame: the document name (empty for a one-byte ping) and the
/// message.
pub fn decode_hocus(frame: &[u8]) -> (String, HMsg) {
    if frame == [HOCUS_PING] {
        return (String::new(), HMsg::Other(u64::from(HOCUS_PING)));
    }
    let mut c = Cursor::new(frame);
    let name = c.read_var_str().expect("a document name").to_owned();
    let body = &frame[c.position()..];
    let kind = c.read_var_u64().expect("a message type");
    let message = match kind {
        0 | 1 | 3 => HMsg::Room(decode_one(body)),
        2 => match c.read_var_u64().expect("an auth sub-type") {
            0 => HMsg::TokenRequest,
            1 => HMsg::Denied(c.read_var_str().expect("a reason").to_owned()),
            2 => HMsg::Authenticated(c.read_var_str().expect("a scope").to_owned()),
            other => panic!("unknown auth sub-type {other}"),
        },
        5 => HMsg::Stateless(c.read_var_str().expect("a payload").to_owned()),
        8 => HMsg::SyncStatus(c.read_u8().expect("a varInt") == 1),
        other => HMsg::Other(other),
    };
    (name, message)
}

/// A Hocuspocus connection: one socket, documents by name, each with its own `yrs` document.
pub struct HocusClient {
    /// The socket (its `doc` is unused).
    pub ws: Client,
    /// The documents, by name.
    pub docs: std::collections::HashMap<String, Doc>,
}

impl HocusClient {
    /// Connects to the relay's root path.
    pub async fn connect(addr: SocketAddr) -> HocusClient {
        HocusClient {
            ws: Client::connect(&format!("ws://{addr}/")).await,
            docs: Default::default(),
        }
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: impl Into<Bytes>) {
        self.ws.send(frame).await;
    }

    /// The next frame, decoded; fails the test on anything else.
    pub async fn recv(&mut self) -> (String, HMsg) {
        let frame = self.ws.recv_frame().await;
        decode_hocus(&frame)
    }

    /// Reads until a message for `doc` satisfies `wanted`, applying the sync messages of every
    /// document on the way; returns it.
    pub async fn recv_until(
        &mut self,
        what: &str,
        mut wanted: impl FnMut(&str, &HMsg) -> bool,
    ) -> HMsg {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = tokio::time::timeout(left, self.ws.next_event()).await;
            let frame = match event {
                Ok(Event::Frame(frame)) => frame,
                Ok(other) => panic!("waiting for {what}: got {other:?}"),
                Err(_) => panic!("timed out waiting for {what}"),
            };
            let (name, message) = decode_hocus(&frame);
            if let HMsg::Room(Msg::SyncStep2(update) | Msg::Update(update)) = &message {
                apply(self.doc(&name), update);
            }
            if wanted(&name, &message) {
                return message;
            }
        }
    }

    /// The document `name` (created empty on first use).
    pub fn doc(&mut self, name: &str) -> &Doc {
        self.docs.entry(name.to_owned()).or_default()
    }

    /// Opens `doc` as a provider does (Auth, then sync step 1 at once, without waiting) and reads
    /// until the relay's sync step 2 answering it; returns the scope it was authenticated with.
    pub async fn open(&mut self, doc: &str, token: &str) -> String {
        self.send(hocus_auth(doc, token, Some("4.8.0"))).await;
        let sv = crate::doc::state_vector(self.doc(doc));
        self.send(hocus_frame(doc, &encode_sync_step1(&sv))).await;
        let answer = self
            .recv_until(&format!("the auth answer for {doc}"), |name, m| {
                name == doc && matches!(m, HMsg::Authenticated(_) | HMsg::Denied(_))
            })
            .await;
        let HMsg::Authenticated(scope) = answer else {
            panic!("expected Authenticated for {doc}, got {answer:?}")
        };
        self.recv_until(&format!("sync step 2 of {doc}"), |name, m| {
            name == doc && matches!(m, HMsg::Room(Msg::SyncStep2(_)))
        })
        .await;
        scope
    }

    /// Appends `s` to the text of `doc` and sends the update; returns it.
    pub async fn edit(&mut self, doc: &str, s: &str) -> Vec<u8> {
        let update = append(self.doc(doc), s);
        self.send(hocus_frame(doc, &encode_update(&update))).await;
        update
    }

    /// The text of `doc`.
    pub fn text(&mut self, doc: &str) -> String {
        crate::doc::doc_text(self.doc(doc))
    }
}
