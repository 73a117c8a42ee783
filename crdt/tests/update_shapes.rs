//! Updates built block by block, in the shapes that reach `yrs`' integration code: GC blocks,
//! skips, text items and deleted content at any clock, over clocks the document already holds,
//! in one or several sections per client, applied alone and in sequences (so that the document
//! holds pending content and skips when the next update arrives). Each goes through
//! `crdt::fuzzing::apply_update`, the entry point of the `apply_update` fuzzer: validation, then
//! `yrs`, then every read the relay makes.
//!
//! In a normal run this checks that nothing panics out of `crdt`. Its real use is under
//! AddressSanitizer (`crdt/fuzz/asan-regressions.sh`), where a read of freed memory fails it:
//! before repeated client sections were refused, it found the use after free of
//! `yrs_use_after_free.rs` within its first cases. `PROPTEST_CASES=N` runs more cases.

use crdt::fuzzing::{apply_update, sequence_input};
use crdt::protocol::{write_var_bytes, write_var_u64};
use proptest::prelude::*;

/// One block of a section.
#[derive(Debug, Clone)]
enum Block {
    Gc(u32),
    Skip(u32),
    /// Text inserted into the root "text" after `origin`, or at its start.
    Text {
        origin: Option<(u64, u32)>,
        text: String,
    },
    /// An item whose content was deleted, `len` clocks long, after `origin`.
    Deleted {
        origin: (u64, u32),
        len: u32,
    },
}

/// A client section: client, first clock, blocks.
type Section = (u64, u32, Vec<Block>);

/// Client 1 is the author of the text of the seeded document `apply_update` also uses.
fn client() -> impl Strategy<Value = u64> {
    1..4u64
}

fn id() -> impl Strategy<Value = (u64, u32)> {
    (client(), 0..40u32)
}

fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        (1..20u32).prop_map(Block::Gc),
        (1..20u32).prop_map(Block::Skip),
        (proptest::option::of(id()), "[a-z]{1,5}")
            .prop_map(|(origin, text)| Block::Text { origin, text }),
        (id(), 1..10u32).prop_map(|(origin, len)| Block::Deleted { origin, len }),
    ]
}

fn section() -> impl Strategy<Value = Section> {
    (client(), 0..40u32, proptest::collection::vec(block(), 1..5))
}

/// An update: sections (a client may repeat), and delete ranges.
fn update() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(section(), 1..4),
        proptest::collection::vec((client(), 0..40u32, 1..20u32), 0..3),
    )
        .prop_map(|(sections, deletes)| encode(&sections, &deletes))
}

fn write_id(out: &mut Vec<u8>, (client, clock): (u64, u32)) {
    write_var_u64(out, client);
    write_var_u64(out, clock.into());
}

/// Writes the sections and delete ranges in the v1 update layout.
fn encode(sections: &[Section], deletes: &[(u64, u32, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_var_u64(&mut out, sections.len() as u64);
    for (client, clock, blocks) in sections {
        write_var_u64(&mut out, blocks.len() as u64);
        write_var_u64(&mut out, *client);
        write_var_u64(&mut out, (*clock).into());
        for block in blocks {
            match block {
                Block::Gc(len) => {
                    out.push(0);
                    write_var_u64(&mut out, (*len).into());
                }
                Block::Skip(len) => {
                    out.push(10);
                    write_var_u64(&mut out, (*len).into());
                }
                Block::Text { origin, text } => match origin {
                    Some(origin) => {
                        out.push(0x80 | 4); // has an origin; string content
                        write_id(&mut out, *origin);
                        write_var_bytes(&mut out, text.as_bytes());
                    }
                    None => {
                        out.push(4); // string content; the parent follows
                        out.push(1); // a root type, by name
                        write_var_bytes(&mut out, b"text");
                        write_var_bytes(&mut out, text.as_bytes());
                    }
                },
                Block::Deleted { origin, len } => {
                    out.push(0x80 | 1); // has an origin; deleted content
                    write_id(&mut out, *origin);
                    write_var_u64(&mut out, (*len).into());
                }
            }
        }
    }
    // The delete set, one entry per range (a client may repeat here too).
    write_var_u64(&mut out, deletes.len() as u64);
    for (client, clock, len) in deletes {
        write_var_u64(&mut out, *client);
        out.push(1);
        write_var_u64(&mut out, (*clock).into());
        write_var_u64(&mut out, (*len).into());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(400),
        // A failure here is a memory error or a panic out of `crdt`: the input is what matters,
        // and shrinking under AddressSanitizer would only repeat the report.
        max_shrink_iters: 0,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn crafted_updates_never_touch_freed_memory(
        updates in proptest::collection::vec(update(), 1..4),
    ) {
        // AddressSanitizer ends the process at the first error, before proptest can print the
        // case: UPDATE_SHAPES_LAST=path keeps the case being run in that file (as a sequence
        // input for the `apply_update` fuzzer, ready for crdt/fuzz/regressions/apply_update/).
        if let Some(path) = std::env::var_os("UPDATE_SHAPES_LAST") {
            let parts: Vec<&[u8]> = updates.iter().map(Vec::as_slice).collect();
            std::fs::write(path, sequence_input(&parts)).expect("write the case");
        }
        for update in &updates {
            apply_update(update);
        }
        if updates.len() > 1 {
            let parts: Vec<&[u8]> = updates.iter().map(Vec::as_slice).collect();
            apply_update(&sequence_input(&parts));
        }
    }
}
