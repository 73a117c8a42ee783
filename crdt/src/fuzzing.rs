//! Entry points shared by the fuzz targets (`crdt/fuzz`) and the regression test that replays
//! the inputs they found (`crdt/tests/fuzz_regressions.rs`). Each must never panic, whatever the
//! input.

use crate::awareness::{AwarenessLimits, parse_awareness_update};
use crate::doc::RoomDoc;
use crate::protocol::{Message, MessageReader};
use crate::validate::{check_state_vector_v1, check_update_v1};

/// The relay's default message limit; larger inputs are refused before decoding, as the relay
/// does.
pub const MAX_INPUT: usize = 64 << 20;

/// Reads every message of a frame, and checks every payload the way the relay would.
pub fn decode_messages(frame: &[u8]) {
    if frame.len() > MAX_INPUT {
        return;
    }
    for item in MessageReader::new(frame) {
        let Ok((message, range)) = item else {
            return;
        };
        assert!(range.end <= frame.len());
        match message {
            Message::SyncStep1(sv) => {
                let _ = check_state_vector_v1(sv);
            }
            Message::SyncStep2(update) | Message::Update(update) => {
                let _ = check_update_v1(update);
            }
            Message::Awareness(payload) => {
                let _ = parse_awareness_update(payload, &AwarenessLimits::default());
            }
            _ => {}
        }
    }
}

/// Applies an update to an empty document and to one with content, then reads the results back
/// as a joiner and the JSON export would.
///
/// When the input also reads as a sequence of updates, each a lib0 `varUint8Array` (a length,
/// then that many bytes; at least two, and nothing left over), they are applied in turn to both
/// documents as well, with the same reads after each: that reaches states one update cannot
/// make (pending content, content another update already collected). They are applied twice:
/// all as from a peer, then all but the last as read back from the store (which lets a document
/// have gaps a peer cannot give it) and the last as from a peer. [`sequence_input`] builds such
/// an input.
pub fn apply_update(update: &[u8]) {
    if update.len() > MAX_INPUT {
        return;
    }
    let mut empty = RoomDoc::new();
    if empty.apply_update_v1(update).is_ok() {
        read_back(&mut empty);
    }
    let mut seeded = seeded_doc();
    if seeded.apply_update_v1(update).is_ok() {
        read_back(&mut seeded);
    }
    if let Some(updates) = split_sequence(update) {
        let (last, stored) = updates.split_last().expect("at least two");
        for from_store in [false, true] {
            for mut doc in [RoomDoc::new(), seeded_doc()] {
                for part in stored {
                    let applied = if from_store {
                        doc.replay_stored_update_v1(part)
                    } else {
                        doc.apply_update_v1(part)
                    };
                    if applied.is_ok() {
                        read_back(&mut doc);
                    }
                }
                if doc.apply_update_v1(last).is_ok() {
                    read_back(&mut doc);
                }
            }
        }
    }
}

/// The most updates one sequence input is read as.
const MAX_SEQUENCE: usize = 16;

/// An input that [`apply_update`] reads as `updates`, applied in turn.
pub fn sequence_input(updates: &[&[u8]]) -> Vec<u8> {
    let mut input = Vec::new();
    for update in updates {
        crate::protocol::write_var_bytes(&mut input, update);
    }
    input
}

fn split_sequence(input: &[u8]) -> Option<Vec<&[u8]>> {
    let mut c = crate::protocol::Cursor::new(input);
    let mut parts = Vec::new();
    while !c.is_empty() && parts.len() < MAX_SEQUENCE {
        parts.push(c.read_var_bytes().ok()?);
    }
    (c.is_empty() && parts.len() >= 2).then_some(parts)
}

/// What a joiner, a compaction and the JSON export read from a document.
fn read_back(doc: &mut RoomDoc) {
    let _ = doc.encode_state_v1();
    let _ = doc.state_vector_v1();
    // A peer that has the first five clocks of client 1 (the seeded document's author).
    let _ = doc.diff_v1(&[1, 1, 5]);
    let _ = doc.to_json();
}

/// A document with a little of every root type, so updates can refer to existing items.
fn seeded_doc() -> RoomDoc {
    use yrs::{Array, Doc, Map, ReadTxn, StateVector, Text, Transact, XmlFragment};
    let source = Doc::with_client_id(1);
    let text = source.get_or_insert_text("text");
    let map = source.get_or_insert_map("map");
    let array = source.get_or_insert_array("array");
    let xml = source.get_or_insert_xml_fragment("xml");
    {
        let mut txn = source.transact_mut();
        text.insert(&mut txn, 0, "hello world");
        map.insert(&mut txn, "k", 1);
        array.insert(&mut txn, 0, "x");
        xml.insert(&mut txn, 0, yrs::XmlElementPrelim::empty("p"));
    }
    let update = source
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let mut doc = RoomDoc::new();
    doc.apply_update_v1(&update).expect("a valid seed");
    doc
}
