//! Heap use-after-free in yrs 0.28.1, reached by updates of 7 to 20 bytes. This file uses yrs
//! alone, so that it can be sent upstream as it is; the AddressSanitizer reports it gives are
//! beside it (`yrs_use_after_free.asan.txt`). Four tests, two bugs.
//!
//! # 1. A client's section repeated in one update
//!
//! A v1 update is a list of client sections, each a run of consecutive blocks of one client. Yjs
//! writes at most one section per client, but `Update::decode` accepts the same client twice and
//! appends the second section's blocks to the first's, so the client's block list is no longer
//! sorted by clock. Then, in `TransactionMut::apply_update`:
//!
//! 1. `BlockSet::exclude` trims the blocks the document already has. It assumes the list is
//!    sorted (it looks at the first block's start and the last block's end), so with the list
//!    `[GC 11..12, GC 1..2]` it sees the range 11..2 and trims nothing.
//! 2. `Update::integrate` integrates every block at offset 0, whatever the local clock, trusting
//!    step 1 to have removed known clocks.
//! 3. `BlockStore::push` takes a block that does not start at the client's clock as one that
//!    fills a skip: it finds the block that holds that clock and overwrites it, without checking
//!    that it is a `Block::Skip`. Here it is the item holding "hello world", which is dropped
//!    while the text's linked list (`Branch::start`, its neighbours) still points at it.
//!
//! Reading the text afterwards reads the freed item (and, once the allocator reuses the memory,
//! whatever was written there since: in a server holding several documents, another document's
//! text). The same happens when the second section overlaps blocks of the first one, on an empty
//! document. (`repeated_client_section_frees_a_live_item`)
//!
//! # 2. A block running across the end of a skip
//!
//! Unlike Yjs, which keeps a block whose client's earlier clocks are missing as pending, yrs
//! integrates it when nothing it refers to is missing and records the missing clocks as a skip.
//! When a later update brings a block that starts in the skip and runs past its end,
//! `BlockSet::exclude` splits it at the end of the skip (the clocks after it are known) with
//! `Block::splice`, and drops the right half:
//!
//! - for an item, `ItemPtr::splice` sets the left half's `right` to the new right half, which
//!   is then dropped; `TransactionMut::integrate_item` reads it through `item.right` when the
//!   left half has no right origin (`item_split_at_the_end_of_a_skip_frees_its_right_half`).
//!   The same happens when the item waited as pending and is retried after a later update made
//!   the skip (`pending_item_split_at_the_end_of_a_later_skip_frees_its_right_half`).
//! - for a GC block, `Block::splice` returns the right half but does not shorten the block
//!   itself (it takes `&self`), so the whole block is integrated over clocks the document holds,
//!   `BlockStore::push` underflows `skip.next_clock() - block.next_clock()` (a panic in a debug
//!   build; in a release build it inserts a skip of length ~2^32), and overwrites the skip with
//!   the GC block while the item after it still holds some of its clocks; the item's memory is
//!   then freed while the text links to it
//!   (`gc_block_across_the_end_of_a_skip_is_integrated_whole`).
//!
//! # Running it
//!
//! Without a memory checker the reads go unnoticed (the tests may even pass), so they are ignored
//! in a normal run. Under AddressSanitizer each reports `heap-use-after-free` (one test per run:
//! the first report ends the process; the fourth needs a release build's arithmetic, as with
//! `--release`, since a debug build panics on the underflow first):
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 RUSTFLAGS=-Zsanitizer=address cargo test --release -p crdt \
//!     --target x86_64-unknown-linux-gnu --test yrs_use_after_free -- --ignored --exact TEST
//! ```
//!
//! `crdt/fuzz/asan-regressions.sh` runs them that way and expects those reports: the day yrs
//! fixes a bug, the script says so, and the refusal in `crdt` that works around it is no longer
//! needed for memory safety (`crdt::validate` refuses repeated sections; `crdt::doc::RoomDoc`
//! refuses blocks that would leave a skip, and blocks running across one).

use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// Two sections for client 1: a GC block at clock 11 (just past what the document holds), then a
/// GC block at clock 1, inside the item "hello world" (clocks 0..11).
const UPDATE: [u8; 12] = [
    2, // two client sections
    1, 1, 11, // one block, client 1, from clock 11
    0, 1, // GC, length 1
    1, 1, 1, // one block, client 1, from clock 1
    0, 1, // GC, length 1
    0, // empty delete set
];

#[test]
#[ignore = "reads freed memory; run under AddressSanitizer by crdt/fuzz/asan-regressions.sh"]
fn repeated_client_section_frees_a_live_item() {
    // Client 1 writes "hello world"; the document receives it as one item, clocks 0..11.
    let author = Doc::with_client_id(1);
    author
        .get_or_insert_text("text")
        .insert(&mut author.transact_mut(), 0, "hello world");
    let hello = author
        .transact()
        .encode_state_as_update_v1(&StateVector::default());

    let doc = Doc::with_client_id(2);
    let text = doc.get_or_insert_text("text");
    doc.transact_mut()
        .apply_update(Update::decode_v1(&hello).expect("a yrs update"))
        .expect("applies");
    assert_eq!(text.get_string(&doc.transact()), "hello world");

    let update = Update::decode_v1(&UPDATE).expect("yrs decodes it");
    // yrs accepts it.
    doc.transact_mut().apply_update(update).expect("applies");
    // Reads the item `BlockStore::push` freed.
    let after = text.get_string(&doc.transact());
    println!("text after the update: {after:?}");
}

#[test]
#[ignore = "reads freed memory; run under AddressSanitizer by crdt/fuzz/asan-regressions.sh"]
fn item_split_at_the_end_of_a_skip_frees_its_right_half() {
    let doc = Doc::with_client_id(2);
    let text = doc.get_or_insert_text("text");
    // Client 5's clocks 5..10 as a GC block, before its clocks 0..5: yrs integrates it at once
    // and records 0..5 as a skip.
    let gc_past_a_gap = [1, 1, 5, 5, 0, 5, 0];
    doc.transact_mut()
        .apply_update(Update::decode_v1(&gc_past_a_gap).expect("decodes"))
        .expect("applies");
    // Client 5's text "abcd" at clocks 3..7, as the first item of the root "text": it starts in
    // the skip and ends in the GC block.
    let straddling = [
        1, 1, 5, 3, 4, 1, 4, b't', b'e', b'x', b't', 4, b'a', b'b', b'c', b'd', 0,
    ];
    doc.transact_mut()
        .apply_update(Update::decode_v1(&straddling).expect("decodes"))
        .expect("applies");
    println!(
        "text after the update: {:?}",
        text.get_string(&doc.transact())
    );
}

#[test]
#[ignore = "reads freed memory; run under AddressSanitizer by crdt/fuzz/asan-regressions.sh"]
fn pending_item_split_at_the_end_of_a_later_skip_frees_its_right_half() {
    let doc = Doc::with_client_id(2);
    let text = doc.get_or_insert_text("text");
    let apply = |update: &[u8]| {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).expect("decodes"))
            .expect("applies");
    };
    // Client 5's text "abcd" at clocks 3..7, inserted after client 7's clock 0, which the
    // document does not have: it waits as pending.
    apply(&[1, 1, 5, 3, 0x84, 7, 0, 4, b'a', b'b', b'c', b'd', 0]);
    // Client 5's clocks 5..10 as a GC block: integrated at once, past a skip of clocks 0..5.
    apply(&[1, 1, 5, 5, 0, 5, 0]);
    // Client 7's clock 0 arrives; the pending item is retried, split at clock 5, and its right
    // half dropped while the left half still points at it.
    apply(&[1, 1, 7, 0, 4, 1, 4, b't', b'e', b'x', b't', 1, b'x', 0]);
    println!(
        "text after the updates: {:?}",
        text.get_string(&doc.transact())
    );
}

#[test]
#[ignore = "reads freed memory; run under AddressSanitizer by crdt/fuzz/asan-regressions.sh"]
fn gc_block_across_the_end_of_a_skip_is_integrated_whole() {
    let doc = Doc::with_client_id(2);
    let text = doc.get_or_insert_text("text");
    let apply = |update: &[u8]| {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).expect("decodes"))
            .expect("applies");
    };
    // Client 1's text "mgqi" at clocks 12..16, after a skip block: integrated past a skip of
    // clocks 0..12.
    apply(&[
        1, 2, 1, 0, 10, 12, 4, 1, 4, b't', b'e', b'x', b't', 4, b'm', b'g', b'q', b'i', 0,
    ]);
    // Client 1's clocks 13..16 deleted: the item is split, "m" stays.
    apply(&[0, 1, 1, 1, 13, 3]);
    // Client 1's clocks 10..21 as a GC block, across the end of the skip: integrated whole over
    // clocks the document holds (a debug build panics on the underflow in `BlockStore::push`).
    apply(&[1, 1, 1, 10, 0, 11, 0]);
    println!(
        "text after the updates: {:?}",
        text.get_string(&doc.transact())
    );
}
