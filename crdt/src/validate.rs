//! Bounded structural checks that run before any payload reaches a `yrs` decoder.
//!
//! `yrs` trusts the counts inside an update: it reserves memory for as many clients, blocks or
//! values as a few forged bytes claim, and it decodes nested `Any` values by recursion with no depth
//! limit, so a crafted update can exhaust memory or overflow the stack and abort the process. The
//! walkers here read the same v1 layout `yrs` reads, check every count against the bytes that are
//! left and bound the nesting depth, allocating nothing. A payload that passes is safe to hand to
//! `yrs`; one that fails is refused whole.

use crate::error::ProtocolError;
use crate::protocol::Cursor;

/// The deepest nesting of `Any` arrays and maps accepted in an update. `serde_json`, which `yrs`
/// uses for the JSON-encoded contents, stops at 128 itself.
pub const MAX_ANY_DEPTH: usize = 96;

/// Yjs client ids are JavaScript integers, at most 53 bits; `yrs` packs them into 53 bits too.
pub const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

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

/// One block of an update: its id range and where it hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateItem {
    /// The client that made it.
    pub client: u64,
    /// Its first clock.
    pub clock: u32,
    /// How many clocks it covers.
    pub len: u32,
    /// Whether it holds a shared type.
    pub is_type: bool,
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
    for _ in 0..clients {
        // Each block needs at least two bytes (info and a length or content).
        let blocks = c.read_count(2)?;
        let client = read_client_id(&mut c)?;
        let mut clock = c.read_var_u32()?;
        for _ in 0..blocks {
            let (len, is_type, parent) = check_block(&mut c)?;
            on_item(UpdateItem {
                client,
                clock,
                len,
                is_type,
                parent,
            });
            // yrs adds lengths in u32; an update that overflows them cannot be a real one.
            clock = clock
                .checked_add(len)
                .ok_or(ProtocolError::VarIntOverflow)?;
        }
    }
    check_id_set(&mut c)
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

/// Checks one block and returns its length in clocks, whether it holds a shared type, and its
/// parent.
fn check_block(c: &mut Cursor<'_>) -> Result<(u32, bool, ParentRef), ProtocolError> {
    let info = c.read_u8()?;
    if info == BLOCK_GC || info == BLOCK_SKIP {
        return Ok((c.read_var_u32()?, false, ParentRef::None));
    }
    let mut parent = ParentRef::None;
    if info & HAS_ORIGIN != 0 {
        let (client, clock) = check_id(c)?;
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
    let kind = info & 0b1111;
    let len = check_content(c, kind)?;
    Ok((len, kind == CONTENT_TYPE, parent))
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
        read_client_id(c)?;
        let ranges = c.read_count(2)?;
        for _ in 0..ranges {
            c.read_var_u32()?; // clock
            c.read_var_u32()?; // length
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
