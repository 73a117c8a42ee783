//! Writes `crdt/tests/data/store-format-1.redb`, the store of format 1 that every later build must
//! load (`crdt/tests/store_format.rs` checks it). It was run once, with the format-1 code; do not
//! run it again over the committed file: a new format gets a new file and a new generator.
//!
//! ```sh
//! cargo run -p crdt --example store_format_1 -- /tmp/store-format-1.redb
//! ```
//!
//! It prints each room it wrote. The rooms, written the way the relay writes them (updates
//! appended under increasing sequence numbers in group commits, a compaction writing a snapshot
//! and deleting the log entries it covers, a deletion):
//!
//! - `notes/2024/été ☃`: two clients (ids 1 and 2) editing a text with formatting and a
//!   replaced word, a map (scalars, an array, a nested map, an overwritten key) and an array;
//!   updates 1 to 6, a snapshot through 3 and log entries 4 to 6 after it (4 was appended before
//!   the snapshot was written, as happens while a compaction is prepared);
//! - `plain`: three text updates of client 3, log entries only;
//! - `snapshot-only/ü`: an XML fragment of client 4, two updates both covered by a snapshot, no
//!   log entries;
//! - `deleted`: one update, then deleted: nothing stored.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use crdt::doc::RoomDoc;
use crdt::store::{Store, StoreOptions, Write};
use yrs::types::Attrs;
use yrs::types::xml::{XmlElementPrelim, XmlFragment, XmlTextPrelim};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayPrelim, Doc, Map, MapPrelim, ReadTxn, Text, Transact, TransactionMut, Update,
};

/// The room with snapshot and log, a `/` and non-ASCII in its name.
pub const NOTES: &str = "notes/2024/été ☃";
/// The room with log entries only.
pub const PLAIN: &str = "plain";
/// The room with a snapshot only.
pub const SNAPSHOT_ONLY: &str = "snapshot-only/ü";
/// The room written, then deleted.
pub const DELETED: &str = "deleted";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: store_format_1 PATH (a file that does not exist yet)")?;
    let path = Path::new(&path);
    if path.exists() {
        return Err(format!(
            "{} exists: the generator writes a new file only",
            path.display()
        )
        .into());
    }
    write_store(path)?;
    let store = Store::open(path, &StoreOptions::default())?;
    for room in store.list_rooms(None, 100)? {
        println!("{}: {} bytes stored", room.name, room.stored_bytes);
    }
    Ok(())
}

/// A document of a client with a fixed id, so that the content (and each update) is the same on
/// every run.
fn client(id: u64) -> Doc {
    Doc::with_client_id(id)
}

/// Runs `edit` in one transaction of `doc` and returns the update (v1) it made. (The root types
/// are looked up before: `get_or_insert_*` waits for the transaction.)
fn edit(doc: &Doc, edit: impl FnOnce(&mut TransactionMut)) -> Bytes {
    let before = doc.transact().state_vector();
    {
        let mut txn = doc.transact_mut();
        edit(&mut txn);
    }
    Bytes::from(doc.transact().encode_diff_v1(&before))
}

/// Applies an update made by another client (what the relay forwards).
fn receive(doc: &Doc, update: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    doc.transact_mut()
        .apply_update(Update::decode_v1(update)?)?;
    Ok(())
}

/// A room as the relay keeps it: its document, and the next sequence number.
struct Room {
    name: Arc<str>,
    doc: RoomDoc,
    next_seq: u64,
}

impl Room {
    fn new(name: &str) -> Self {
        Room {
            name: name.into(),
            doc: RoomDoc::new(),
            next_seq: 1,
        }
    }

    /// Applies `update` and returns the write that appends it.
    fn append(&mut self, update: &Bytes) -> Result<Write, Box<dyn std::error::Error>> {
        self.doc.apply_update_v1(update)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Write::Append {
            room: self.name.clone(),
            seq,
            update: update.clone(),
        })
    }

    /// The snapshot of the document as it is now, covering updates up to `through_seq`.
    fn snapshot(&mut self, through_seq: u64) -> Write {
        Write::Snapshot {
            room: self.name.clone(),
            through_seq,
            state: self.doc.encode_state_v1(),
        }
    }
}

/// Writes the rooms listed in this file's documentation into a new store at `path`.
///
/// # Errors
/// When the store cannot be created or written, or an update does not apply.
pub fn write_store(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(path, &StoreOptions::default())?;

    // notes/2024/été ☃: client 1 writes updates 1 to 3.
    let mut notes = Room::new(NOTES);
    let one = client(1);
    let (text1, map1, array1) = (
        one.get_or_insert_text("t"),
        one.get_or_insert_map("m"),
        one.get_or_insert_array("a"),
    );
    let u1 = edit(&one, |txn| text1.insert(txn, 0, "Hello, world!"));
    let u2 = edit(&one, |txn| {
        map1.insert(txn, "title", "Plan");
        map1.insert(txn, "count", 3);
        map1.insert(txn, "done", false);
        map1.insert(txn, "tags", ArrayPrelim::from(["a", "b"]));
        map1.insert(txn, "nested", MapPrelim::from_iter([("k", "v")]));
    });
    let u3 = edit(&one, |txn| {
        array1.insert_range(
            txn,
            0,
            [Any::from(1), Any::from("two"), Any::from(true), Any::Null],
        );
    });
    store.commit(&[notes.append(&u1)?])?;
    store.commit(&[notes.append(&u2)?, notes.append(&u3)?])?;

    // Client 2 joins, makes "Hello" bold, replaces "world" by "wörld" (a deletion: tombstones)
    // and, after the compaction, appends a wave and sets the count to 4.
    let two = client(2);
    let (text2, map2) = (two.get_or_insert_text("t"), two.get_or_insert_map("m"));
    for update in [&u1, &u2, &u3] {
        receive(&two, update)?;
    }
    let u4 = edit(&two, |txn| {
        let bold: Attrs = [(Arc::from("bold"), Any::from(true))].into_iter().collect();
        text2.format(txn, 0, 5, bold);
        text2.remove_range(txn, 7, 5);
        text2.insert(txn, 7, "wörld");
    });
    // A compaction prepared through 3 while update 4 arrives: the snapshot covers 1 to 3, and
    // 4 stays in the log.
    let snapshot = notes.snapshot(3);
    store.commit(&[notes.append(&u4)?])?;
    store.commit(&[snapshot])?;
    let u5 = edit(&two, |txn| {
        let len = text2.len(txn);
        text2.insert(txn, len, " 👋");
        map2.insert(txn, "count", 4);
    });
    // Client 1, concurrently (before it receives 4 and 5): a prefix and an array element.
    let u6 = edit(&one, |txn| {
        text1.insert(txn, 0, "» ");
        let mut point = MapPrelim::default();
        point.insert(Arc::from("x"), 1.5.into());
        array1.push_back(txn, point);
    });
    store.commit(&[notes.append(&u5)?, notes.append(&u6)?])?;

    // plain: three updates of client 3, one commit each, no compaction.
    let mut plain = Room::new(PLAIN);
    let three = client(3);
    let text3 = three.get_or_insert_text("t");
    for word in ["one", " two", " three"] {
        let update = edit(&three, |txn| {
            let len = text3.len(txn);
            text3.insert(txn, len, word);
        });
        store.commit(&[plain.append(&update)?])?;
    }

    // snapshot-only/ü: two updates of client 4, then a snapshot covering both.
    let mut snapshot_only = Room::new(SNAPSHOT_ONLY);
    let four = client(4);
    let fragment = four.get_or_insert_xml_fragment("x");
    let x1 = edit(&four, |txn| {
        let paragraph = fragment.push_back(txn, XmlElementPrelim::empty("p"));
        paragraph.push_back(txn, XmlTextPrelim::new("hi"));
    });
    let x2 = edit(&four, |txn| {
        fragment.push_back(txn, XmlElementPrelim::empty("hr"));
    });
    store.commit(&[snapshot_only.append(&x1)?, snapshot_only.append(&x2)?])?;
    store.commit(&[snapshot_only.snapshot(2)])?;

    // deleted: written, then deleted.
    let mut deleted = Room::new(DELETED);
    let five = client(5);
    let text5 = five.get_or_insert_text("t");
    let gone = edit(&five, |txn| text5.insert(txn, 0, "gone"));
    store.commit(&[deleted.append(&gone)?])?;
    store.commit(&[Write::Delete {
        room: deleted.name.clone(),
    }])?;

    // Small on disk: give the pages freed by the snapshot and the deletion back.
    let mut store = store;
    store.compact_file()?;
    Ok(())
}
