//! Test documents: a `yrs` document whose shared text [`TEXT`] the tests edit, and the updates
//! (v1) that carry those edits.

use crdt::doc::RoomDoc;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// The name of the shared text every test document edits.
pub const TEXT: &str = "t";

/// The text of a document's shared text [`TEXT`].
pub fn doc_text(doc: &Doc) -> String {
    let text = doc.get_or_insert_text(TEXT);
    text.get_string(&doc.transact())
}

/// Appends `s` to the document's text and returns the update (v1) that holds the change.
pub fn append(doc: &Doc, s: &str) -> Vec<u8> {
    let text = doc.get_or_insert_text(TEXT);
    let before = doc.transact().state_vector();
    {
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
    }
    doc.transact().encode_diff_v1(&before)
}

/// Applies an update (v1) to a document.
pub fn apply(doc: &Doc, update: &[u8]) {
    let update = Update::decode_v1(update).expect("the relay sent a decodable update");
    doc.transact_mut()
        .apply_update(update)
        .expect("the update applies");
}

/// The document's state vector (v1).
pub fn state_vector(doc: &Doc) -> Vec<u8> {
    doc.transact().state_vector().encode_v1()
}

/// The whole document as one update (v1).
pub fn full_state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// The text a single update produces on an empty document.
pub fn text_of_update(update: &[u8]) -> String {
    let doc = Doc::new();
    apply(&doc, update);
    doc_text(&doc)
}

/// An update inserting `s` into an empty document of a new client.
pub fn text_update(s: &str) -> Vec<u8> {
    append(&Doc::new(), s)
}

/// The document's root types as JSON, the way the relay exports them ([`RoomDoc::to_json`]).
pub fn exported_json(doc: &Doc) -> serde_json::Value {
    let mut room = RoomDoc::new();
    room.apply_update_v1(&full_state(doc))
        .expect("a client's state applies");
    room.to_json()
}
