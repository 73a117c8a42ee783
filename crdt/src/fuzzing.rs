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
pub fn apply_update(update: &[u8]) {
    if update.len() > MAX_INPUT {
        return;
    }
    let mut empty = RoomDoc::new();
    if empty.apply_update_v1(update).is_ok() {
        let _ = empty.encode_state_v1();
        let _ = empty.state_vector_v1();
        let _ = empty.to_json();
    }
    let mut seeded = seeded_doc();
    if seeded.apply_update_v1(update).is_ok() {
        let _ = seeded.diff_v1(&[0]);
        let _ = seeded.to_json();
    }
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
