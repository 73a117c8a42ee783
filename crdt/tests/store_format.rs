//! Backward compatibility of the store: `tests/data/store-format-1.redb`, written once by the
//! format-1 code (`examples/store_format_1.rs`; see `tests/data/README.md`), must load in every
//! later build with every room exactly as it was written, and stay writable. A build that changes
//! the format must keep reading this file (migrating it, if need be) and add a file of its own
//! format beside it.
//!
//! The checks below are literal: the content each room holds, its state vector, and the
//! layout the format-1 writer left (sequence numbers, log entries, snapshot and byte counts,
//! commit times). Only the content and the layout are checked against a store the generator
//! writes with this build, as byte counts may change with the `yrs` encoder.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use crdt::store::{RoomInfo, Store, StoreOptions, StoredRoom, Write};
use redb::{ReadableDatabase, TableDefinition};
use serde_json::json;
use tempfile::TempDir;
use yrs::types::ToJson;
use yrs::types::text::YChange;
use yrs::updates::decoder::Decode;
use yrs::{Any, Doc, GetString, Out, ReadTxn, StateVector, Text, Transact, Update};

// The generators, to check that this build still writes what the committed files hold. Format
// 2's includes format 1's (a file may be loaded as a module only once).
#[path = "../examples/store_format_2.rs"]
#[allow(dead_code)] // its `main`
#[allow(unreachable_pub)] // The generator is an example binary too: its items are `pub` there.
mod generator_2;

use generator_2::format_1 as generator;

use generator::{DELETED, NOTES, PLAIN, SNAPSHOT_ONLY};

/// The committed store of format 1.
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/store-format-1.redb"
);

/// The format the committed file is written in.
const FIXTURE_FORMAT: u64 = 1;

/// A copy of the committed file in a temporary directory: opening a store may write to it.
fn fixture_copy() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("relay.redb");
    std::fs::copy(FIXTURE, &path).expect("copy the committed store");
    (dir, path)
}

fn open(path: &Path) -> Store {
    Store::open(path, &StoreOptions::default())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn load(store: &Store, room: &str) -> StoredRoom {
    store
        .load(room)
        .unwrap_or_else(|e| panic!("load {room:?}: {e}"))
}

/// Where a room's updates are: its next sequence number, its log entries after the snapshot,
/// and whether it has a snapshot.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    next_seq: u64,
    log_entries: u64,
    snapshot: bool,
}

fn layout(stored: &StoredRoom) -> Layout {
    Layout {
        next_seq: stored.next_seq,
        log_entries: stored.log_entries,
        snapshot: stored.snapshot_bytes > 0,
    }
}

/// Each client's clock in a document.
fn clocks(doc: &Doc) -> Vec<(u64, u32)> {
    let sv = doc.transact().state_vector();
    let mut clocks: Vec<(u64, u32)> = sv.iter().map(|(c, k)| (c.get(), *k)).collect();
    clocks.sort_unstable();
    clocks
}

/// A text as (chunk, bold) pairs: its content with the only formatting the fixture uses.
fn formatted_text(doc: &Doc, name: &str) -> Vec<(String, bool)> {
    let text = doc.get_or_insert_text(name);
    let txn = doc.transact();
    text.diff(&txn, YChange::identity)
        .into_iter()
        .map(|chunk| {
            let Out::Any(Any::String(s)) = &chunk.insert else {
                panic!("a text chunk that is not a string: {:?}", chunk.insert);
            };
            let bold = match chunk.attributes.as_deref() {
                None => false,
                Some(attrs) => {
                    assert_eq!(attrs.len(), 1, "only bold is used: {attrs:?}");
                    attrs.get("bold") == Some(&Any::Bool(true))
                }
            };
            (s.to_string(), bold)
        })
        .collect()
}

fn map_json(doc: &Doc, name: &str) -> serde_json::Value {
    let map = doc.get_or_insert_map(name);
    let any = map.to_json(&doc.transact());
    serde_json::to_value(&any).expect("JSON")
}

fn array_json(doc: &Doc, name: &str) -> serde_json::Value {
    let array = doc.get_or_insert_array(name);
    let any = array.to_json(&doc.transact());
    serde_json::to_value(&any).expect("JSON")
}

/// Checks every room's content and layout (what any build that writes these rooms must give),
/// and that the store lists exactly `listed`.
fn check_rooms(store: &Store, listed: &[&str]) {
    let notes = load(store, NOTES);
    assert_eq!(
        layout(&notes),
        Layout {
            next_seq: 7,
            log_entries: 3,
            snapshot: true
        },
        "{NOTES}: snapshot through 3, log entries 4 to 6"
    );
    let doc = notes.doc.yrs();
    assert_eq!(clocks(doc), [(1, 29), (2, 11)], "{NOTES}: state vector");
    assert_eq!(
        formatted_text(doc, "t"),
        [
            ("» ".to_owned(), false),
            ("Hello".to_owned(), true),
            (", wörld! 👋".to_owned(), false),
        ],
        "{NOTES}: text"
    );
    assert_eq!(
        map_json(doc, "m"),
        json!({"title": "Plan", "count": 4, "done": false, "tags": ["a", "b"], "nested": {"k": "v"}}),
        "{NOTES}: map"
    );
    assert_eq!(
        array_json(doc, "a"),
        json!([1, "two", true, null, {"x": 1.5}]),
        "{NOTES}: array"
    );

    let plain = load(store, PLAIN);
    assert_eq!(
        layout(&plain),
        Layout {
            next_seq: 4,
            log_entries: 3,
            snapshot: false
        },
        "{PLAIN}: log only"
    );
    assert_eq!(clocks(plain.doc.yrs()), [(3, 13)], "{PLAIN}: state vector");
    assert_eq!(
        formatted_text(plain.doc.yrs(), "t"),
        [("one two three".to_owned(), false)],
        "{PLAIN}: text"
    );

    let snapshot_only = load(store, SNAPSHOT_ONLY);
    assert_eq!(
        layout(&snapshot_only),
        Layout {
            next_seq: 3,
            log_entries: 0,
            snapshot: true
        },
        "{SNAPSHOT_ONLY}: snapshot through 2, no log"
    );
    let doc = snapshot_only.doc.yrs();
    assert_eq!(clocks(doc), [(4, 5)], "{SNAPSHOT_ONLY}: state vector");
    let fragment = doc.get_or_insert_xml_fragment("x");
    assert_eq!(
        fragment.get_string(&doc.transact()),
        "<p>hi</p><hr></hr>",
        "{SNAPSHOT_ONLY}: XML"
    );

    let deleted = load(store, DELETED);
    assert_eq!(
        layout(&deleted),
        Layout {
            next_seq: 1,
            log_entries: 0,
            snapshot: false
        },
        "{DELETED}: nothing stored"
    );
    assert_eq!(
        deleted
            .doc
            .yrs()
            .transact()
            .encode_state_as_update_v1(&StateVector::default()),
        crdt::doc::EMPTY_UPDATE_V1,
        "{DELETED}: an empty document"
    );
    assert_eq!(store.room_info(DELETED).expect("read"), None);

    let names: Vec<String> = store
        .list_rooms(None, 100)
        .expect("list")
        .into_iter()
        .map(|room| room.name)
        .collect();
    assert_eq!(names, listed, "the stored rooms");
}

/// The format-1 rooms, as listed.
const FORMAT_1_ROOMS: [&str; 3] = [NOTES, PLAIN, SNAPSHOT_ONLY];

/// A value of the `meta` table, read with redb alone (opening a [`Store`] would migrate the file
/// and move its journal in).
fn meta_value(path: &Path, key: &str) -> Option<u64> {
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let db = redb::Database::open(path).expect("a redb database");
    let read = db.begin_read().expect("read");
    let meta = read.open_table(META).expect("the meta table");
    meta.get(key).expect("read").map(|v| v.value())
}

#[test]
fn the_committed_store_is_format_1_and_small() {
    let (_dir, path) = fixture_copy();
    assert_eq!(meta_value(&path, "format_version"), Some(FIXTURE_FORMAT));
    // A fixture in the repository must stay small (it is 64 KiB).
    let size = std::fs::metadata(FIXTURE)
        .expect("the committed file")
        .len();
    assert!(size <= 128 << 10, "{FIXTURE} is {size} bytes");
}

#[test]
fn every_room_of_the_format_1_store_loads_exactly() {
    let (_dir, path) = fixture_copy();
    let store = open(&path);
    check_rooms(&store, &FORMAT_1_ROOMS);
    // What the format-1 writer recorded, to the byte and the millisecond.
    let room = |name: &str, updated_ms, stored_bytes| RoomInfo {
        name: name.to_owned(),
        updated_ms,
        stored_bytes,
    };
    assert_eq!(
        store.list_rooms(None, 100).expect("list"),
        [
            room(NOTES, 1_796_233_794_849, 224),
            room(PLAIN, 1_796_233_794_860, 41),
            room(SNAPSHOT_ONLY, 1_796_233_794_865, 31),
        ]
    );
    let bytes = |stored: StoredRoom| (stored.snapshot_bytes, stored.log_bytes);
    assert_eq!(bytes(load(&store, NOTES)), (121, 103));
    assert_eq!(bytes(load(&store, PLAIN)), (0, 41));
    assert_eq!(bytes(load(&store, SNAPSHOT_ONLY)), (31, 0));
}

#[test]
fn a_format_1_store_is_migrated_to_the_current_format_and_stays_writable() {
    let (_dir, path) = fixture_copy();
    {
        let store = open(&path);
        // Append to a room that has only a log, compact the room with a snapshot and a log, and
        // delete the room that has only a snapshot, as the relay would.
        // Client 3 again, with the stored document, appends a word.
        let more = Doc::with_client_id(3);
        let text = more.get_or_insert_text("t");
        let stored = load(&store, PLAIN).doc.encode_state_v1();
        let stored = Update::decode_v1(&stored).expect("the stored state decodes");
        more.transact_mut().apply_update(stored).expect("applies");
        let before = more.transact().state_vector();
        text.insert(&mut more.transact_mut(), 13, " four");
        let update = more.transact().encode_diff_v1(&before);
        let mut notes = load(&store, NOTES);
        store
            .commit(&[
                Write::Append {
                    room: PLAIN.into(),
                    seq: 4,
                    update: Bytes::from(update),
                },
                Write::Snapshot {
                    room: NOTES.into(),
                    through_seq: 6,
                    state: notes.doc.encode_state_v1(),
                },
                Write::Delete {
                    room: SNAPSHOT_ONLY.into(),
                },
            ])
            .expect("commit");
    }
    // Reopened, it holds what was written, and says it is of this build's format (which a
    // format-1 build refuses: it would not read the journal).
    assert_eq!(
        meta_value(&path, "format_version"),
        Some(crdt::store::FORMAT_VERSION)
    );
    const { assert!(crdt::store::FORMAT_VERSION > FIXTURE_FORMAT) };
    let store = open(&path);
    let plain = load(&store, PLAIN);
    assert_eq!(
        formatted_text(plain.doc.yrs(), "t"),
        [("one two three four".to_owned(), false)]
    );
    assert_eq!(plain.next_seq, 5);
    let notes = load(&store, NOTES);
    assert_eq!(
        layout(&notes),
        Layout {
            next_seq: 7,
            log_entries: 0,
            snapshot: true
        }
    );
    assert_eq!(
        formatted_text(notes.doc.yrs(), "t"),
        [
            ("» ".to_owned(), false),
            ("Hello".to_owned(), true),
            (", wörld! 👋".to_owned(), false),
        ]
    );
    assert_eq!(store.room_info(SNAPSHOT_ONLY).expect("read"), None);
}

#[test]
fn the_generator_writes_the_same_rooms_with_this_build() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("relay.redb");
    generator::write_store(&path).expect("the generator runs");
    check_rooms(&open(&path), &FORMAT_1_ROOMS);
}

// Format 2: format 1's tables plus the journal. The committed directory holds `relay.redb` and
// one journal file with a write that no checkpoint moved into the tables (as a crash leaves it).

/// The committed store of format 2.
const FIXTURE_2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/store-format-2");

/// The files of a store directory, by name.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A copy of the committed directory in a temporary one: opening a store writes to it.
fn fixture_2_copy() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for name in file_names(Path::new(FIXTURE_2)) {
        std::fs::copy(Path::new(FIXTURE_2).join(&name), dir.path().join(&name))
            .expect("copy a committed file");
    }
    let path = dir.path().join("relay.redb");
    (dir, path)
}

/// Checks the format-2 rooms: format 1's, and the one only the journal holds.
fn check_format_2_rooms(store: &Store) {
    check_rooms(
        store,
        &[generator_2::JOURNAL_ONLY, NOTES, PLAIN, SNAPSHOT_ONLY],
    );
    let journal_only = load(store, generator_2::JOURNAL_ONLY);
    assert_eq!(
        layout(&journal_only),
        Layout {
            next_seq: 2,
            log_entries: 1,
            snapshot: false
        }
    );
    assert_eq!(
        formatted_text(journal_only.doc.yrs(), "t"),
        [("only in the journal".to_owned(), false)]
    );
}

#[test]
fn the_committed_store_of_format_2_has_a_journal_not_yet_checkpointed() {
    let names = file_names(Path::new(FIXTURE_2));
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0], "relay.redb");
    assert!(names[1].starts_with("relay.redb.journal."), "{names:?}");
    // Read without the store (which would move the journal in): format 2 in `meta`, and the
    // journal-only room absent from the tables.
    const ROOMS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("rooms");
    let (_dir, path) = fixture_2_copy();
    assert_eq!(meta_value(&path, "format_version"), Some(2));
    assert_eq!(meta_value(&path, "journal_lsn"), Some(15));
    assert!(names[1].ends_with(".00000000000000000016"), "{names:?}");
    let db = redb::Database::open(&path).expect("a redb database");
    let read = db.begin_read().expect("read");
    let rooms = read.open_table(ROOMS).expect("the rooms table");
    assert!(
        rooms
            .get(generator_2::JOURNAL_ONLY)
            .expect("read")
            .is_none()
    );
    let size: u64 = names
        .iter()
        .map(|n| {
            std::fs::metadata(Path::new(FIXTURE_2).join(n))
                .expect("a file")
                .len()
        })
        .sum();
    assert!(size <= 160 << 10, "{FIXTURE_2} holds {size} bytes");
}

#[test]
fn every_room_of_the_format_2_store_loads_exactly_and_its_journal_is_moved_in() {
    let (dir, path) = fixture_2_copy();
    {
        let store = open(&path);
        check_format_2_rooms(&store);
    }
    assert_eq!(
        file_names(dir.path()),
        ["relay.redb"],
        "the journal was moved in"
    );
    check_format_2_rooms(&open(&path));
}

#[test]
fn the_format_2_generator_writes_the_same_rooms_with_this_build() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    generator_2::write_store(dir.path()).expect("the generator runs");
    check_format_2_rooms(&open(&dir.path().join("relay.redb")));
}
