//! Writes `crdt/tests/data/store-format-2/`, the store of format 2 that every later build must
//! load (`crdt/tests/store_format.rs` checks it). It was run once, with the format-2 code; do not
//! run it again over the committed files: a new format gets a new directory and a new generator.
//!
//! ```sh
//! cargo run -p crdt --example store_format_2 -- /tmp/store-format-2
//! ```
//!
//! Format 2 is format 1's tables plus the journal, so the store holds the rooms of format 1's
//! generator, written the same way (through the journal, then checkpointed and compacted into
//! `relay.redb`), and one more write left in the journal, as a crash leaves it: the first
//! update of `journal-only/ß` (client 6, a text "only in the journal"), in
//! `relay.redb.journal.<first record>` and not in the tables.

use std::path::Path;

use bytes::Bytes;
use crdt::store::{Store, StoreOptions, Write};
use yrs::{Doc, ReadTxn, StateVector, Text, Transact};

/// Format 1's generator, whose rooms this store holds too.
#[path = "store_format_1.rs"]
#[allow(dead_code)] // its `main`
#[allow(unreachable_pub)] // The generator is an example binary too: its items are `pub` there.
pub mod format_1;

/// The room whose only update is in the journal.
pub const JOURNAL_ONLY: &str = "journal-only/ß";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: store_format_2 DIR (a directory that does not exist yet)")?;
    let dir = Path::new(&dir);
    if dir.exists() {
        return Err(format!(
            "{} exists: the generator writes a new one only",
            dir.display()
        )
        .into());
    }
    std::fs::create_dir_all(dir)?;
    write_store(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        println!(
            "{}: {} bytes",
            entry.file_name().to_string_lossy(),
            entry.metadata()?.len()
        );
    }
    Ok(())
}

/// Writes the store into `dir` (`relay.redb` and one journal file).
pub fn write_store(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let path = dir.join("relay.redb");
    // Format 1's rooms, written through this build's store: journaled, then checkpointed and
    // compacted into the tables by `Store::compact_file`.
    format_1::write_store(&path)?;
    let store = Store::open(&path, &StoreOptions::default())?;
    let doc = Doc::with_client_id(6);
    doc.get_or_insert_text("t")
        .insert(&mut doc.transact_mut(), 0, "only in the journal");
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    store.commit(&[Write::Append {
        room: JOURNAL_ONLY.into(),
        seq: 1,
        update: Bytes::from(update),
    }])?;
    // Dropped without a checkpoint: the journal keeps the write, as after a crash.
    Ok(())
}
