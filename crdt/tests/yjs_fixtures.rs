//! Updates written by Yjs itself (`crdt/tests/fixtures/yjs/`, made by
//! `tests/interop/make-yjs-fixtures.mjs` with yjs 13.6) pass the relay's checks and give the
//! document Yjs had: ordinary edits in order, a state with GC blocks (applied to an empty document
//! and over clocks the document holds as live items), a sync step 2, and a merged update with
//! skips over clocks the document has. The one refusal is deliberate: a merged update whose
//! blocks after a skip would land past a gap (see `RoomDoc::apply_update_v1`).

use crdt::doc::{Applied, RoomDoc};
use crdt::error::{DocError, ProtocolError};
use crdt::validate::{BlockKind, update_items_v1};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/yjs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn update(i: usize) -> Vec<u8> {
    fixture(&format!("update-{i}.bin"))
}

/// The document's JSON as Yjs gave it (`doc.toJSON()`).
fn yjs_json() -> serde_json::Value {
    serde_json::from_slice(&fixture("state.json")).expect("JSON")
}

/// A document holding updates `0..n`, each applied as a change.
fn doc_with_updates(n: usize) -> RoomDoc {
    let mut doc = RoomDoc::new();
    for i in 0..n {
        assert_eq!(
            doc.apply_update_v1(&update(i)).expect("Yjs wrote it"),
            Applied::Changed,
            "update {i}"
        );
    }
    doc
}

#[test]
fn edits_in_order_give_the_document_yjs_had() {
    let mut doc = doc_with_updates(10);
    assert_eq!(doc.to_json(), yjs_json());
    for i in 0..10 {
        assert_eq!(
            doc.apply_update_v1(&update(i)).expect("again"),
            Applied::Unchanged
        );
    }
}

#[test]
fn a_state_with_gc_blocks_applies_to_an_empty_document_and_over_live_items() {
    let state = fixture("state.bin");
    let blocks = update_items_v1(&state).expect("valid");
    assert!(
        blocks.iter().any(|b| b.kind == BlockKind::Gc),
        "the collected nested map is GC blocks: {blocks:?}"
    );
    let mut empty = RoomDoc::new();
    assert_eq!(
        empty.apply_update_v1(&state).expect("valid"),
        Applied::Changed
    );
    assert_eq!(empty.to_json(), yjs_json());
    // A document that still holds the nested map's content as live items (updates 0..7, before
    // the deletion): the GC blocks overlap clocks it holds, and the delete set deletes them.
    let mut live = doc_with_updates(7);
    assert_eq!(
        live.apply_update_v1(&state).expect("valid"),
        Applied::Changed
    );
    assert_eq!(live.to_json(), yjs_json());
}

#[test]
fn a_sync_step2_completes_a_peer() {
    let mut doc = doc_with_updates(1);
    doc.apply_update_v1(&fixture("sync-step2-after-update-0.bin"))
        .expect("valid");
    assert_eq!(doc.to_json(), yjs_json());
}

#[test]
fn a_merged_update_with_skips_applies_where_the_skipped_clocks_are_known() {
    let merged = fixture("merged-0-1-2-5.bin");
    let blocks = update_items_v1(&merged).expect("valid");
    assert!(
        blocks.iter().any(|b| b.kind == BlockKind::Skip),
        "updates 3 and 4 are skipped: {blocks:?}"
    );
    let mut doc = doc_with_updates(5);
    doc.apply_update_v1(&merged).expect("valid");
    let text = doc.to_json()["text"].clone();
    assert_eq!(text, "hello there world");
    // Without updates 3 and 4, update 5's text (inserted after clock 4, not after the clock
    // before it) would land past a gap: refused, where Yjs would keep it pending.
    let mut fresh = RoomDoc::new();
    assert!(matches!(
        fresh.apply_update_v1(&merged),
        Err(DocError::Malformed(ProtocolError::BlockPastGap {
            client: 1,
            ..
        }))
    ));
}
