//! Messages as the tests see them: an owned copy of each decoded message, decoded and encoded
//! with the relay's own codec ([`crdt::protocol`], [`crdt::awareness`]), never a second one.

use crdt::awareness::{AwarenessEntry, encode_awareness_update, parse_awareness_update};
use crdt::protocol::{Message, MessageReader, encode_awareness, encode_update};

use crate::doc::text_update;

/// An owned copy of a decoded [`crdt::protocol::Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Sync step 1 with a state vector.
    SyncStep1(Vec<u8>),
    /// Sync step 2 with an update.
    SyncStep2(Vec<u8>),
    /// A sync update.
    Update(Vec<u8>),
    /// An awareness update payload.
    Awareness(Vec<u8>),
    /// Permission denied.
    AuthDenied(String),
    /// Query awareness.
    QueryAwareness,
    /// Save request.
    SaveRequest(u64),
    /// Saved.
    Saved(u64),
    /// Save error.
    SaveError(u64, String),
    /// Unknown type.
    Unknown(u64),
}

impl From<Message<'_>> for Msg {
    fn from(message: Message<'_>) -> Self {
        match message {
            Message::SyncStep1(sv) => Msg::SyncStep1(sv.to_vec()),
            Message::SyncStep2(u) => Msg::SyncStep2(u.to_vec()),
            Message::Update(u) => Msg::Update(u.to_vec()),
            Message::Awareness(a) => Msg::Awareness(a.to_vec()),
            Message::AuthDenied(r) => Msg::AuthDenied(r.to_owned()),
            Message::QueryAwareness => Msg::QueryAwareness,
            Message::SaveRequest(id) => Msg::SaveRequest(id),
            Message::Saved(id) => Msg::Saved(id),
            Message::SaveError(id, r) => Msg::SaveError(id, r.to_owned()),
            Message::Unknown(tag) => Msg::Unknown(tag),
        }
    }
}

impl Msg {
    /// A short name for failure messages (payloads can be large).
    pub fn kind(&self) -> String {
        match self {
            Msg::SyncStep1(p) => format!("sync step 1 ({} bytes)", p.len()),
            Msg::SyncStep2(p) => format!("sync step 2 ({} bytes)", p.len()),
            Msg::Update(p) => format!("update ({} bytes)", p.len()),
            Msg::Awareness(p) => format!("awareness {:?}", awareness_entries(p)),
            other => format!("{other:?}"),
        }
    }
}

/// Decodes every message of a frame; fails the test on a malformed frame.
pub fn decode_all(frame: &[u8]) -> Vec<Msg> {
    MessageReader::new(frame)
        .map(|item| Msg::from(item.expect("the relay sent a well-formed message").0))
        .collect()
}

/// Decodes a frame that must hold exactly one message (the relay sends one per frame).
pub fn decode_one(frame: &[u8]) -> Msg {
    let mut messages = decode_all(frame);
    assert_eq!(
        messages.len(),
        1,
        "expected exactly one message in the frame, got {messages:?}"
    );
    messages.pop().expect("one")
}

/// One entry of an awareness update, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessState {
    /// Client id.
    pub client_id: u64,
    /// Clock.
    pub clock: u64,
    /// JSON state, `None` when removed.
    pub state: Option<String>,
}

/// Parses an awareness update payload with the relay's parser.
pub fn awareness_entries(payload: &[u8]) -> Vec<AwarenessState> {
    // No limits: the test reads whatever the relay sends.
    let limits = crdt::awareness::AwarenessLimits {
        max_states_per_room: usize::MAX,
        max_states_per_connection: usize::MAX,
        max_state_bytes: usize::MAX,
    };
    parse_awareness_update(payload, &limits)
        .expect("well-formed awareness update")
        .into_iter()
        .map(|e| AwarenessState {
            client_id: e.client_id,
            clock: e.clock,
            state: e.state.map(str::to_owned),
        })
        .collect()
}

/// An awareness message (type 1) setting one client's state (`None` removes it).
pub fn awareness_message(client_id: u64, clock: u64, state: Option<&str>) -> Vec<u8> {
    awareness_message_of([(client_id, clock, state)])
}

/// An awareness message (type 1) with one entry per (client id, clock, state) (a `None` state
/// removes the client).
pub fn awareness_message_of<'a>(
    entries: impl IntoIterator<Item = (u64, u64, Option<&'a str>)>,
) -> Vec<u8> {
    encode_awareness(&encode_awareness_update(entries.into_iter().map(
        |(client_id, clock, state)| AwarenessEntry {
            client_id,
            clock,
            state,
        },
    )))
}

/// An update message (type 0, sync update) of exactly `len` bytes, and the text it inserts into
/// an empty document (`fill` repeated, its length adjusted until the encoding fits).
pub fn update_message_of_len(len: usize, fill: &str) -> (Vec<u8>, String) {
    let mut n = len;
    for _ in 0..10 {
        let text: String = fill.chars().cycle().take(n).collect();
        let message = encode_update(&text_update(&text));
        if message.len() == len {
            return (message, text);
        }
        n = (n + len)
            .checked_sub(message.len())
            .expect("a positive length");
    }
    panic!("cannot build an update message of exactly {len} bytes");
}

/// Concatenates messages into one frame.
pub fn pack(messages: &[&[u8]]) -> Vec<u8> {
    messages.concat()
}
