//! Bounded structural checks that run before any payload reaches a `yrs` decoder.
//!
//! `yrs` trusts the counts inside an update: it reserves memory for as many clients, blocks or
//! values as a few forged bytes claim, and it decodes nested `Any` values by recursion with no depth
//! limit, so a crafted update can exhaust memory or overflow the stack and abort the process. The
//! walkers here read the same v1 layout `yrs` reads, check every count against the bytes that are
//! left and bound the nesting depth, allocating only in proportion to the bytes actually present
//! (never to a count read from them). A payload that passes is safe to hand to `yrs`; one that
//! fails is refused whole.
//!
//! # Update shapes refused because `yrs` 0.28.1 mishandles them
//!
//! Besides malformed bytes, an update is refused when it takes `yrs` to memory it must not touch
//! (found by reading `Update::decode`, `TransactionMut::apply_update`, `Update::integrate`,
//! `BlockSet::exclude` and `BlockStore::push`, and by running crafted updates and the
//! `apply_update` fuzzer under AddressSanitizer). The first two shapes are ones no Yjs or `yrs`
//! encoder writes; the third is one Yjs would accept and keep pending:
//!
//! - **A client's section repeated** ([`ProtocolError::RepeatedClient`]). Encoders write one
//!   section per client (Yjs' `writeClientsStructs` and `mergeUpdates`, `yrs`' `encode_diff` and
//!   `merge_updates` all walk a map keyed by client). `yrs`' decoder appends a repeated
//!   section's blocks to the first one's, so the client's blocks are no longer in clock order.
//!   `BlockSet::exclude`, which drops the clocks the document already has, assumes that order and
//!   drops nothing; `Update::integrate` then integrates every block at offset 0, and
//!   `BlockStore::push`, taking a block below the client's clock for one that fills a skip,
//!   overwrites whatever block holds that clock. When that is a live item, the item is freed
//!   while the document still links to it: a use after free, which in the relay returned another
//!   document's text through the JSON export
//!   (`crdt/fuzz/regressions/apply_update/crash-yrs-use-after-free-in-to-json-57652a1e`,
//!   and the yrs-only reproduction in `crdt/tests/yrs_use_after_free.rs`). The same happens on an
//!   empty document when the second section overlaps the first. With one section per client
//!   the blocks are in clock order and `exclude` works, so blocks (GC blocks included) that
//!   overlap clocks the document already holds are dropped before integration, as in Yjs. Those
//!   are *not* refused: Yjs sends them whenever a peer re-sends content the relay already has
//!   (a duplicate update, a sync step 2 racing another client's update), and GC blocks for
//!   content the sender collected are normal.
//! - **Clocks past `i32::MAX`** ([`ProtocolError::ClockTooLarge`]), in blocks or in the delete
//!   set. `Update::integrate` computes a block's offset from the client's clock as an `i32`
//!   difference, so past 2^31 the sign flips: a block lands without the skip that should precede
//!   it, or `BlockStore::push` looks for a skip that is not there. The delete set's `clock + len`
//!   is a `u32` addition that wraps. A Yjs client's clock counts the characters and items it
//!   inserted in one session; no session gets near two billion.
//! - **A block past a gap, or across the end of one** ([`ProtocolError::BlockPastGap`],
//!   [`ProtocolError::BlockAcrossGap`]), refused by [`crate::doc::RoomDoc`] because it depends on
//!   what the document holds. Yjs keeps a block whose client's earlier clocks are missing as
//!   pending; `yrs` integrates it when nothing it refers to is missing and records the missing
//!   clocks as a skip. A later block that runs across the end of that skip is split by
//!   `BlockSet::exclude`: an item's left half keeps pointing at the right half it frees, and a GC
//!   block is not shortened at all and lands on clocks the document holds. `RoomDoc`'s source
//!   (`check_gaps`) has the details and what a stock client can see of it.
//!
//! Skip blocks themselves are accepted anywhere: Yjs writes them for gaps in merged updates, and
//! `yrs` never integrates one from an update. What follows one is checked as above.

use crate::error::ProtocolError;
use crate::protocol::Cursor;

/// The deepest nesting of `Any` arrays and maps accepted in an update. `serde_json`, which `yrs`
/// uses for the JSON-encoded contents, stops at 128 itself.
pub const MAX_ANY_DEPTH: usize = 96;

/// Yjs client ids are JavaScript integers, at most 53 bits; `yrs` packs them into 53 bits too.
pub const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// The highest clock (exclusive end of a block or delete range) accepted: `yrs` takes clock
/// differences as `i32` (see the module documentation).
pub const MAX_CLOCK: u32 = i32::MAX as u32;

/// What [`check_update_v1`] learned about an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpdateSummary {
    /// Items holding a shared type (map, array, text, XML): the only items that can nest.
    pub type_items: usize,
}

/// Where an item of an update hangs in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentRef {
    /// A root type, by name.
    Root,
    /// The shared type held by the item with this id (client, clock).
    Item(u64, u32),
    /// The same parent as the item with this id: its left or right neighbour.
    SameAs(u64, u32),
    /// Not an item (deleted-content or skip range).
    None,
}

/// What kind of block an [`UpdateItem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Content a peer garbage-collected: only its clock range is left.
    Gc,
    /// A gap in a merged update: clocks the update does not carry.
    Skip,
    /// An item (deleted content included).
    Item,
}

/// One block of an update: its id range and where it hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateItem {
    /// The client that made it.
    pub client: u64,
    /// Its first clock.
    pub clock: u32,
    /// How many clocks it covers.
    pub len: u32,
    /// GC, skip or item.
    pub kind: BlockKind,
    /// Whether it holds a shared type.
    pub is_type: bool,
    /// Its left origin (client, clock): the item it was inserted after, if any.
    pub origin: Option<(u64, u32)>,
    /// Its parent.
    pub parent: ParentRef,
}

/// Checks that `update` is a structurally sound Yjs update (v1) that `yrs` can decode without
/// unbounded allocation or recursion.
///
/// # Errors
/// A [`ProtocolError`] naming the first defect found; nothing is allocated in proportion to any
/// count read from the input.
pub fn check_update_v1(update: &[u8]) -> Result<UpdateSummary, ProtocolError> {
    let mut summary = UpdateSummary::default();
    walk_update_v1(update, |item| {
        summary.type_items += usize::from(item.is_type)
    })?;
    Ok(summary)
}

/// The blocks of an update, for reasoning about where its items go (see
/// [`crate::doc::RoomDoc`]'s nesting limit). Call it on updates [`check_update_v1`] accepted.
///
/// # Errors
/// As [`check_update_v1`].
pub fn update_items_v1(update: &[u8]) -> Result<Vec<UpdateItem>, ProtocolError> {
    let mut items = Vec::new();
    walk_update_v1(update, |item| items.push(item))?;
    Ok(items)
}

fn walk_update_v1(update: &[u8], mut on_item: impl FnMut(UpdateItem)) -> Result<(), ProtocolError> {
    let mut c = Cursor::new(update);
    // Each client section needs at least three bytes: block count, client id and clock.
    let clients = c.read_count(3)?;
    // One entry per section actually present (a section takes at least three bytes).
    let mut seen = std::collections::HashSet::with_capacity(clients);
    for _ in 0..clients {
        // Each block needs at least two bytes (info and a length or content).
        let blocks = c.read_count(2)?;
        let client = read_client_id(&mut c)?;
        if !seen.insert(client) {
            return Err(ProtocolError::RepeatedClient(client));
        }
        let mut clock = c.read_var_u32()?;
        check_clock_end(client, clock.into())?;
        for _ in 0..blocks {
            let block = check_block(&mut c)?;
            let end = u64::from(clock) + u64::from(block.len);
            check_clock_end(client, end)?;
            on_item(UpdateItem {
                client,
                clock,
                len: block.len,
                kind: block.kind,
                is_type: block.is_type,
                origin: block.origin,
                parent: block.parent,
            });
            clock = end as u32; // at most MAX_CLOCK
        }
    }
    check_id_set(&mut c)
}

/// Refuses a block or delete range of `client` that ends past [`MAX_CLOCK`].
fn check_clock_end(client: u64, end: u64) -> Result<(), ProtocolError> {
    if end > u64::from(MAX_CLOCK) {
        return Err(ProtocolError::ClockTooLarge { client, end });
    }
    Ok(())
}

fn read_client_id(c: &mut Cursor<'_>) -> Result<u64, ProtocolError> {
    let client = c.read_var_u64()?;
    if client > MAX_CLIENT_ID {
        return Err(ProtocolError::ClientIdTooLarge(client));
    }
    Ok(client)
}

/// Checks an encoded state vector (v1): a count, then that many client id / clock pairs.
///
/// # Errors
/// [`ProtocolError`] when the count does not fit the bytes or a varint is malformed.
pub fn check_state_vector_v1(state_vector: &[u8]) -> Result<(), ProtocolError> {
    let mut c = Cursor::new(state_vector);
    let entries = c.read_count(2)?;
    for _ in 0..entries {
        read_client_id(&mut c)?;
        c.read_var_u32()?;
    }
    Ok(())
}

// Block kinds as `yrs` matches them on the whole info byte.
const BLOCK_GC: u8 = 0;
const BLOCK_SKIP: u8 = 10;
// Item info flags.
const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;
// Item content kinds (low four bits of the info byte, as `yrs` masks them).
const CONTENT_DELETED: u8 = 1;
const CONTENT_JSON: u8 = 2;
const CONTENT_BINARY: u8 = 3;
const CONTENT_STRING: u8 = 4;
const CONTENT_EMBED: u8 = 5;
const CONTENT_FORMAT: u8 = 6;
const CONTENT_TYPE: u8 = 7;
const CONTENT_ANY: u8 = 8;
const CONTENT_DOC: u8 = 9;
// The one type reference that carries a name.
const TYPE_REF_XML_ELEMENT: u8 = 3;

fn check_id(c: &mut Cursor<'_>) -> Result<(u64, u32), ProtocolError> {
    Ok((read_client_id(c)?, c.read_var_u32()?))
}

/// What [`check_block`] learned about a block.
struct Block {
    len: u32,
    kind: BlockKind,
    is_type: bool,
    origin: Option<(u64, u32)>,
    parent: ParentRef,
}

/// Checks one block and returns its length in clocks, its kind, whether it holds a shared type,
/// its origin and its parent.
fn check_block(c: &mut Cursor<'_>) -> Result<Block, ProtocolError> {
    let info = c.read_u8()?;
    if info == BLOCK_GC || info == BLOCK_SKIP {
        return Ok(Block {
            len: c.read_var_u32()?,
            kind: if info == BLOCK_GC {
                BlockKind::Gc
            } else {
                BlockKind::Skip
            },
            is_type: false,
            origin: None,
            parent: ParentRef::None,
        });
    }
    let mut parent = ParentRef::None;
    let mut origin = None;
    if info & HAS_ORIGIN != 0 {
        let (client, clock) = check_id(c)?;
        origin = Some((client, clock));
        parent = ParentRef::SameAs(client, clock);
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        let (client, clock) = check_id(c)?;
        if parent == ParentRef::None {
            parent = ParentRef::SameAs(client, clock);
        }
    }
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        if c.read_var_u32()? == 1 {
            c.read_var_bytes()?; // parent type name
            parent = ParentRef::Root;
        } else {
            let (client, clock) = check_id(c)?; // parent item id
            parent = ParentRef::Item(client, clock);
        }
        if info & HAS_PARENT_SUB != 0 {
            c.read_var_bytes()?; // map key
        }
    }
    let content = info & 0b1111;
    Ok(Block {
        len: check_content(c, content)?,
        kind: BlockKind::Item,
        is_type: content == CONTENT_TYPE,
        origin,
        parent,
    })
}

/// Checks an item's content and returns its length in clocks (UTF-16 units for strings, as Yjs
/// counts them).
fn check_content(c: &mut Cursor<'_>, kind: u8) -> Result<u32, ProtocolError> {
    let len = match kind {
        CONTENT_DELETED => c.read_var_u32()?,
        CONTENT_JSON => {
            // `yrs` reads one string more than the count says (it loops while `remaining >= 0`),
            // and treats a count above `i32::MAX` as negative. Mirror it exactly.
            let count = c.read_var_u32()?;
            let count = i32::try_from(count).map_err(|_| ProtocolError::CountTooLarge {
                count: count.into(),
            })?;
            let strings = count as usize + 1;
            if strings > c.remaining() {
                return Err(ProtocolError::CountTooLarge {
                    count: strings as u64,
                });
            }
            for _ in 0..strings {
                c.read_var_bytes()?;
            }
            strings as u32
        }
        CONTENT_STRING => {
            let text = c.read_var_str()?;
            u32::try_from(text.encode_utf16().count()).map_err(|_| ProtocolError::VarIntOverflow)?
        }
        CONTENT_BINARY | CONTENT_EMBED => {
            c.read_var_bytes()?;
            1
        }
        CONTENT_FORMAT => {
            c.read_var_bytes()?; // key
            c.read_var_bytes()?; // JSON value
            1
        }
        CONTENT_TYPE => {
            if c.read_u8()? == TYPE_REF_XML_ELEMENT {
                c.read_var_bytes()?; // element name
            }
            1
        }
        CONTENT_ANY => {
            let values = c.read_count(1)?;
            for _ in 0..values {
                check_any(c, 0)?;
            }
            values as u32
        }
        CONTENT_DOC => {
            // Sub-document options are one `Any` value (a map).
            check_any(c, 0)?;
            1
        }
        other => return Err(ProtocolError::UnknownContent(other)),
    };
    Ok(len)
}

fn check_any(c: &mut Cursor<'_>, depth: usize) -> Result<(), ProtocolError> {
    if depth > MAX_ANY_DEPTH {
        return Err(ProtocolError::TooDeep);
    }
    match c.read_u8()? {
        // undefined, null, false, true
        127 | 126 | 121 | 120 => {}
        // integer
        125 => c.skip_var_i64()?,
        // float32
        124 => {
            c.read_exact(4)?;
        }
        // float64, bigint
        123 | 122 => {
            c.read_exact(8)?;
        }
        // string, buffer
        119 | 116 => {
            c.read_var_bytes()?;
        }
        // map: count, then key and value
        118 => {
            let entries = c.read_count(2)?;
            for _ in 0..entries {
                c.read_var_bytes()?;
                check_any(c, depth + 1)?;
            }
        }
        // array
        117 => {
            let values = c.read_count(1)?;
            for _ in 0..values {
                check_any(c, depth + 1)?;
            }
        }
        other => return Err(ProtocolError::UnknownAny(other)),
    }
    Ok(())
}

fn check_id_set(c: &mut Cursor<'_>) -> Result<(), ProtocolError> {
    // Each client needs a client id and a range count.
    let clients = c.read_count(2)?;
    for _ in 0..clients {
        let client = read_client_id(c)?;
        let ranges = c.read_count(2)?;
        for _ in 0..ranges {
            let clock = c.read_var_u32()?;
            let len = c.read_var_u32()?;
            check_clock_end(client, u64::from(clock) + u64::from(len))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::write_var_u64;
    use yrs::updates::decoder::Decode;
    use yrs::{Any, Array, Doc, Map, ReadTxn, StateVector, Text, Transact, Update, XmlFragment};

    fn rich_update() -> Vec<u8> {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("text");
        let map = doc.get_or_insert_map("map");
        let array = doc.get_or_insert_array("array");
        let xml = doc.get_or_insert_xml_fragment("xml");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello wörld");
            text.remove_range(&mut txn, 1, 2);
            map.insert(&mut txn, "n", 1.5);
            map.insert(&mut txn, "i", 42);
            map.insert(&mut txn, "b", true);
            map.insert(&mut txn, "s", "str");
            map.insert(&mut txn, "nested", Any::from(vec![Any::from(1), Any::Null]));
            array.insert(&mut txn, 0, vec![1, 2, 3]);
            array.insert(&mut txn, 0, yrs::MapPrelim::default());
            array.insert(&mut txn, 1, Any::Buffer(vec![1u8, 2, 3].into()));
            xml.insert(&mut txn, 0, yrs::XmlElementPrelim::empty("p"));
        }
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn accepts_what_yrs_encodes() {
        let update = rich_update();
        check_update_v1(&update).expect("valid update");
        Update::decode_v1(&update).expect("yrs decodes it too");
    }

    #[test]
    fn accepts_the_empty_update() {
        check_update_v1(&[0, 0]).expect("empty update");
    }

    #[test]
    fn refuses_every_truncation() {
        let update = rich_update();
        for cut in 0..update.len() {
            assert!(check_update_v1(&update[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn refuses_forged_client_count() {
        let mut update = Vec::new();
        write_var_u64(&mut update, u32::MAX as u64);
        update.extend([0; 8]);
        assert!(matches!(
            check_update_v1(&update),
            Err(ProtocolError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn refuses_forged_state_vector_length() {
        let mut sv = Vec::new();
        write_var_u64(&mut sv, 2_000_000_000);
        sv.extend([1, 1]);
        assert!(check_state_vector_v1(&sv).is_err());
        let good = Doc::with_client_id(3);
        good.get_or_insert_text("t")
            .insert(&mut good.transact_mut(), 0, "x");
        let sv = yrs::updates::encoder::Encode::encode_v1(&good.transact().state_vector());
        check_state_vector_v1(&sv).expect("real state vector");
    }

    #[test]
    fn refuses_deeply_nested_any() {
        // One item with Any content: [[[[...]]]] nested deeper than the limit.
        let mut update = vec![1, 1, 5, 0]; // 1 client, 1 block, client 5, clock 0
        update.push(CONTENT_ANY); // info: no origins, any content
        update.push(1); // parent is a named root type
        write_var_u64(&mut update, 1);
        update.push(b'a');
        update.push(1); // one value
        for _ in 0..10_000 {
            update.extend([117, 1]); // array of one
        }
        update.push(126);
        update.extend([0]); // empty delete set
        assert_eq!(check_update_v1(&update), Err(ProtocolError::TooDeep));
    }

    /// The 16-byte update the `apply_update` fuzzer found (two sections for client 1: a GC block
    /// at clock 160, then one at clock 1), which freed a live item of a document holding client
    /// 1's text.
    const REPEATED_SECTION: [u8; 16] = [
        0x02, 0x01, 0x01, 0xa0, 0x01, 0x00, 0x41, 0x01, 0x01, 0x01, 0x00, 0x01, 0x00, 0x0c, 0x00,
        0x41,
    ];

    #[test]
    fn refuses_a_repeated_client_section() {
        assert_eq!(
            check_update_v1(&REPEATED_SECTION),
            Err(ProtocolError::RepeatedClient(1))
        );
        // Two sections of one client, even in order and without overlap.
        let in_order = [2, 1, 7, 0, 4, 1, 1, b'a', 1, b'x', 1, 7, 1, 0, 1, 0];
        assert_eq!(
            check_update_v1(&in_order),
            Err(ProtocolError::RepeatedClient(7))
        );
        // The same blocks in one section pass.
        let one_section = [1, 2, 7, 0, 4, 1, 1, b'a', 1, b'x', 0, 1, 0];
        check_update_v1(&one_section).expect("one section per client");
        Update::decode_v1(&one_section).expect("yrs decodes it");
    }

    #[test]
    fn refuses_clocks_past_i32_max() {
        // One GC block of client 3 from clock `clock`, length `len`.
        let gc = |clock: u64, len: u64| {
            let mut update = vec![1, 1, 3];
            write_var_u64(&mut update, clock);
            update.push(BLOCK_GC);
            write_var_u64(&mut update, len);
            update.push(0);
            update
        };
        check_update_v1(&gc(u64::from(MAX_CLOCK) - 1, 1)).expect("ends at MAX_CLOCK");
        assert_eq!(
            check_update_v1(&gc(u64::from(MAX_CLOCK), 1)),
            Err(ProtocolError::ClockTooLarge {
                client: 3,
                end: u64::from(MAX_CLOCK) + 1
            })
        );
        assert!(matches!(
            check_update_v1(&gc(1 << 31, 1)),
            Err(ProtocolError::ClockTooLarge { .. })
        ));
        // A delete range of client 3 from `clock`, length `len`.
        let delete = |clock: u64, len: u64| {
            let mut update = vec![0, 1, 3, 1];
            write_var_u64(&mut update, clock);
            write_var_u64(&mut update, len);
            update
        };
        check_update_v1(&delete(10, 5)).expect("an ordinary delete range");
        // u32::MAX + 1: yrs' `clock + len` would wrap.
        assert!(matches!(
            check_update_v1(&delete(u64::from(u32::MAX), 1)),
            Err(ProtocolError::ClockTooLarge { .. })
        ));
        assert!(matches!(
            check_update_v1(&delete(0, 1 << 31)),
            Err(ProtocolError::ClockTooLarge { .. })
        ));
    }

    #[test]
    fn accepts_skips_and_gc_blocks_yrs_writes() {
        // Deleting a nested type collects its content into GC blocks.
        let doc = Doc::with_client_id(4);
        let map = doc.get_or_insert_map("m");
        map.insert(
            &mut doc.transact_mut(),
            "list",
            yrs::ArrayPrelim::from(vec![1, 2, 3]),
        );
        map.remove(&mut doc.transact_mut(), "list");
        let collected = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        // Two updates with a gap between them merge into one with a skip.
        let text = doc.get_or_insert_text("t");
        let sv = doc.transact().state_vector();
        text.insert(&mut doc.transact_mut(), 0, "abc");
        let sv2 = doc.transact().state_vector();
        text.insert(&mut doc.transact_mut(), 3, "def");
        let last = doc.transact().encode_diff_v1(&sv2);
        let merged =
            yrs::merge_updates_v1([collected.as_slice(), last.as_slice()]).expect("merges");
        let middle = doc.transact().encode_diff_v1(&sv);
        for update in [&collected, &merged, &middle] {
            check_update_v1(update).expect("yrs wrote it");
        }
        for update in [&collected, &merged] {
            let blocks = update_items_v1(update).expect("valid");
            assert!(
                blocks.iter().any(|b| b.parent == ParentRef::None),
                "a GC or skip block: {blocks:?}"
            );
        }
    }

    #[test]
    fn accepts_moderately_nested_any() {
        let mut value = Any::Null;
        for _ in 0..50 {
            value = Any::from(vec![value]);
        }
        let doc = Doc::new();
        doc.get_or_insert_map("m")
            .insert(&mut doc.transact_mut(), "deep", value);
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        check_update_v1(&update).expect("50 levels are fine");
    }
}
