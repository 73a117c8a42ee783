//! A room's document: a `yrs::Doc` that only ever takes validated input.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use yrs::branch::BranchPtr;
use yrs::types::AsPrelim;
use yrs::types::ToJson;
use yrs::types::text::YChange;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Array, ArrayRef, BranchID, ClientID, Doc, GetString, ID, In, Map, MapRef, Out, ReadTxn,
    StateVector, Text, TextRef, Transact, Update, XmlElementRef, XmlFragment, XmlFragmentRef,
    XmlTextRef,
};

use crate::error::DocError;
use crate::error::ProtocolError;
use crate::validate::{
    BlockKind, ParentRef, UpdateItem, check_state_vector_v1, check_update_v1, update_items_v1,
};

/// The encoding of an update that changes nothing (no clients, empty delete set).
pub const EMPTY_UPDATE_V1: &[u8] = &[0, 0];

/// The deepest nesting of shared types (maps in arrays in maps ...) a document may reach. `yrs`
/// deletes, garbage-collects and exports nested types by recursion, one stack frame per level:
/// deleting the top of a chain 20,000 levels deep (a 120 KB update and an 8-byte one) overflows
/// the stack and aborts the whole process. Real documents nest a few dozen levels at most.
pub const MAX_TYPE_DEPTH: usize = 256;

/// Where an update comes from, for the checks that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A peer, now.
    Peer,
    /// The store: accepted when it was stored.
    Store,
}

/// Whether applying an update changed the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The update added blocks, deletions or pending (not yet integrable) content.
    Changed,
    /// Everything in the update was already known: nothing to store or forward.
    Unchanged,
}

/// The in-memory state of one room's document.
///
/// Every update and state vector is checked by [`crate::validate`] before `yrs` sees it. The full
/// encoded state is cached between changes, so a crowd of joiners with empty state vectors costs
/// one encoding, not one each.
pub struct RoomDoc {
    doc: Doc,
    full_state: Option<Arc<[u8]>>,
    /// An upper bound of the document's nesting depth: exact after a walk, then raised by what
    /// each update could add.
    depth_bound: usize,
    /// Added to the bound for updates whose types hang from parents the document does not have
    /// yet (pending content, which a walk does not see).
    pending_depth: usize,
    /// For each client, the clocks at which a block of an update that reached `yrs` may have
    /// been integrated past a gap in that client's clocks (see `RoomDoc::check_gaps`). Only
    /// out-of-order content adds entries; clocks the document has caught up with are dropped.
    gap_starts: HashMap<u64, BTreeSet<u32>>,
}

impl Default for RoomDoc {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RoomDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomDoc").finish_non_exhaustive()
    }
}

impl RoomDoc {
    /// An empty document.
    pub fn new() -> Self {
        RoomDoc {
            doc: Doc::new(),
            full_state: None,
            depth_bound: 0,
            pending_depth: 0,
            gap_starts: HashMap::new(),
        }
    }

    /// The underlying `yrs` document, for reading (JSON export, tests).
    pub fn yrs(&self) -> &Doc {
        &self.doc
    }

    /// Checks, decodes and applies an update (v1) from a peer.
    ///
    /// Besides the checks of [`crate::validate`], refuses an update that `yrs` 0.28.1 would turn
    /// into a use after free given this document's state (see [`crate::validate`]): one
    /// with a block that would land past a gap in its client's clocks
    /// ([`ProtocolError::BlockPastGap`]), and one with a block that runs across the end of such
    /// a gap left by a stored update ([`ProtocolError::BlockAcrossGap`]).
    ///
    /// # Errors
    /// [`DocError`] when the update is malformed, refused, does not decode or cannot be
    /// integrated. The document is unchanged when a check or the decoding fails; `yrs`
    /// integration errors are only possible for updates that decode, and leave whatever `yrs`
    /// integrated before failing.
    pub fn apply_update_v1(&mut self, update: &[u8]) -> Result<Applied, DocError> {
        self.apply(update, Source::Peer)
    }

    /// Applies an update read back from the store: like [`RoomDoc::apply_update_v1`], except
    /// that a block landing past a gap is accepted (a snapshot holds the gaps of the document it
    /// was taken from, and stores written before that refusal may hold such updates), and
    /// remembered so that later updates cannot run across the gap's end.
    ///
    /// # Errors
    /// As [`RoomDoc::apply_update_v1`].
    pub fn replay_stored_update_v1(&mut self, update: &[u8]) -> Result<Applied, DocError> {
        self.apply(update, Source::Store)
    }

    fn apply(&mut self, update: &[u8], source: Source) -> Result<Applied, DocError> {
        if update == EMPTY_UPDATE_V1 {
            return Ok(Applied::Unchanged);
        }
        let summary = check_update_v1(update)?;
        let decoded = Update::decode_v1(update)?;
        let items = update_items_v1(update)?;
        let gap_starts = self.check_gaps(&items, source)?;
        if summary.type_items > 0 {
            self.check_nesting(&items)?;
        }
        // From here on the update reaches yrs, which may integrate some of it past a gap even if
        // it fails later.
        for (client, clocks) in gap_starts {
            self.gap_starts.entry(client).or_default().extend(clocks);
        }
        let changed = guarded("applying an update", || {
            let mut txn = self.doc.transact_mut();
            let pending_before = pending_len(&txn);
            txn.apply_update(decoded)?;
            Ok::<_, DocError>(
                !txn.insert_set().is_empty()
                    || !txn.delete_set().is_empty()
                    || pending_len(&txn) != pending_before,
            )
        })??;
        if changed {
            self.full_state = None;
            Ok(Applied::Changed)
        } else {
            Ok(Applied::Unchanged)
        }
    }

    /// Whether applying `update` would change the document: whether it holds blocks or deletions
    /// the document does not have. Does not apply it. Stock Yjs clients answer a greeting with a
    /// sync step 2 that always carries their whole delete set, so "not empty" is not "a change".
    ///
    /// # Errors
    /// [`DocError`] when the update is malformed or does not decode.
    pub fn would_change(&self, update: &[u8]) -> Result<bool, DocError> {
        if update == EMPTY_UPDATE_V1 {
            return Ok(false);
        }
        check_update_v1(update)?;
        let decoded = Update::decode_v1(update)?;
        guarded("checking an update", || {
            self.would_change_unguarded(&decoded)
        })
    }

    fn would_change_unguarded(&self, decoded: &Update) -> bool {
        let txn = self.doc.transact();
        // Any block past what the document has is new, also one that cannot be integrated yet
        // (it would be kept as pending).
        let known = txn.state_vector();
        let inserts_new = decoded
            .insertions(true)
            .iter()
            .any(|(client, ranges)| ranges.iter().any(|r| r.end > known.get(client)));
        if inserts_new {
            return true;
        }
        let mut new_deletions = decoded.delete_set().clone();
        new_deletions.diff_with(&txn.snapshot().delete_set);
        new_deletions
            .iter()
            .any(|(_, ranges)| ranges.iter().next().is_some())
    }

    /// Refuses the updates that `yrs` 0.28.1 would make read or write freed memory given this
    /// document's gaps, and returns the clocks where the update's blocks may land past a gap
    /// (only an update from the store may have any), to be remembered once it is applied.
    ///
    /// Yjs keeps a block whose client's earlier clocks are missing as pending until they arrive.
    /// `yrs` integrates it at once when nothing it refers to is missing, and records the missing
    /// clocks as a skip: the document then has a gap. When a later update (or pending content
    /// retried later) brings a block that starts before the end of that gap and runs past it,
    /// `BlockSet::exclude` splits the block at the gap's end to drop the clocks the document
    /// has, and both ways of splitting go wrong: an item's left half keeps pointing at the right
    /// half it frees (a use after free when the left half is integrated), and a GC block is not
    /// shortened at all (`Block::splice` returns the right half but leaves the block whole), so
    /// it is integrated over clocks the document holds and `BlockStore::push` corrupts the
    /// client's block list (a later block then overwrites a live item). Both are reproduced with
    /// `yrs` alone in `crdt/tests/yrs_use_after_free.rs`.
    ///
    /// So, per client, a *gap start* is a clock where a block may land past a gap: the first
    /// block of the client's section, or one after a skip block, that starts past what the
    /// document holds of the client and does not continue the clock before it (a GC block, or an
    /// item whose origin is not the previous clock; an item whose origin is missing waits as
    /// pending, as in Yjs, and fills the gap before it is integrated). Then:
    ///
    /// - an update from a peer with a gap start is refused ([`ProtocolError::BlockPastGap`]),
    ///   so a document fed by peers never has a gap. Yjs clients send their updates in order;
    ///   the one case known to send such a block is a client that reconnects with offline edits
    ///   and types somewhere else before its sync step 2 (which holds the offline edits) has
    ///   gone out. It is closed with 1002, reconnects, and its sync step 2 carries both.
    /// - a block that runs across a remembered gap start (from a stored update), in the update,
    ///   or in pending content when the update adds gap starts, is refused
    ///   ([`ProtocolError::BlockAcrossGap`]), and so is an item that starts at one with the
    ///   previous clock as its origin (pending, `yrs` would merge it with the item before it into
    ///   one that runs across). An item running across a gap start cannot come from Yjs: in
    ///   every peer a clock's origin is the clock before it exactly when the clock is inside an
    ///   item, and the block at the gap start has another origin.
    fn check_gaps(
        &mut self,
        items: &[UpdateItem],
        source: Source,
    ) -> Result<HashMap<u64, BTreeSet<u32>>, DocError> {
        let txn = self.doc.transact();
        let known = txn.state_vector();
        let holds = |client: u64| known.get(&ClientID::new(client));
        // Forget the gap starts the document has caught up with: it holds every clock below
        // its state vector's.
        for item in items {
            if let Some(starts) = self.gap_starts.get_mut(&item.client) {
                let kept = starts.split_off(&(holds(item.client).saturating_add(1)));
                *starts = kept;
                if starts.is_empty() {
                    self.gap_starts.remove(&item.client);
                }
            }
        }
        let new_starts = gap_starts_of(items, holds);
        if source == Source::Peer
            && let Some((&client, clocks)) = new_starts.iter().next()
        {
            let clock = *clocks.first().expect("no empty entries");
            return Err(ProtocolError::BlockPastGap { client, clock }.into());
        }
        let across = |item: &UpdateItem, starts: &BTreeSet<u32>| {
            // Strictly inside the block (nothing for blocks of length 0 or 1, which `yrs` drops
            // or cannot split).
            let inside = item.clock.saturating_add(1)..item.clock.saturating_add(item.len);
            (!inside.is_empty() && starts.range(inside).next().is_some())
                || (item.kind == BlockKind::Item
                    && item.clock > 0
                    && item.origin == Some((item.client, item.clock - 1))
                    && starts.contains(&item.clock))
        };
        let refused = |item: &UpdateItem| ProtocolError::BlockAcrossGap {
            client: item.client,
            clock: item.clock,
        };
        for item in items.iter().filter(|i| i.kind != BlockKind::Skip) {
            for starts in [
                self.gap_starts.get(&item.client),
                new_starts.get(&item.client),
            ]
            .into_iter()
            .flatten()
            {
                if across(item, starts) {
                    return Err(refused(item).into());
                }
            }
        }
        // Pending content was checked against the gap starts known when it arrived; check it
        // against the new ones (it is retried when this update lands).
        if !new_starts.is_empty()
            && let Some(pending) = txn.store().pending_update()
        {
            let encoded = guarded("encoding pending content", || pending.update.encode_v1())?;
            let pending_items = update_items_v1(&encoded)?;
            for item in pending_items.iter().filter(|i| i.kind != BlockKind::Skip) {
                if new_starts
                    .get(&item.client)
                    .is_some_and(|starts| across(item, starts))
                {
                    return Err(refused(item).into());
                }
            }
        }
        Ok(new_starts)
    }

    /// Refuses an update whose shared types could take the document past [`MAX_TYPE_DEPTH`],
    /// before it is applied. The update's own types can only nest as deep as its longest chain of
    /// types, each hanging from the previous one; added to the document's depth that bounds the
    /// result. When the quick bound is too high, the document's real depth is measured first.
    fn check_nesting(&mut self, items: &[UpdateItem]) -> Result<(), DocError> {
        let chain = {
            let txn = self.doc.transact();
            let known = txn.state_vector();
            type_chain(
                items,
                |id| BranchID::get_nested(&txn, &id).is_some(),
                |id| id.clock < known.get(&id.client),
            )
        };
        // A root is depth 1 even before the update creates it; what hangs from a root or an
        // existing type is at most one deeper than the document's deepest type.
        let fits = |doc: &RoomDoc| {
            doc.depth_bound.max(1) + doc.pending_depth + chain.longest <= MAX_TYPE_DEPTH
        };
        if !fits(self) {
            self.depth_bound = self.measure_depth();
            let txn = self.doc.transact();
            if txn.store().pending_update().is_none() && txn.store().pending_ds().is_none() {
                self.pending_depth = 0;
            }
            drop(txn);
            if !fits(self) {
                return Err(ProtocolError::TypesTooDeep.into());
            }
        }
        self.depth_bound = self.depth_bound.max(1) + chain.longest;
        if chain.unresolved {
            self.pending_depth += chain.longest;
        }
        Ok(())
    }

    /// The document's nesting depth of shared types, by walking them with an explicit stack
    /// (no recursion, so any depth is safe to measure).
    pub fn measure_depth(&self) -> usize {
        // If walking fails, assume the worst: nothing more may nest.
        guarded("measuring the nesting depth", || {
            self.measure_depth_unguarded()
        })
        .unwrap_or(MAX_TYPE_DEPTH)
    }

    fn measure_depth_unguarded(&self) -> usize {
        let txn = self.doc.transact();
        let mut stack: Vec<(Out, usize)> = txn.root_refs().map(|(_, out)| (out, 1)).collect();
        let mut deepest = 0;
        while let Some((out, depth)) = stack.pop() {
            deepest = deepest.max(depth);
            let mut push = |child: Out| {
                if is_shared_type(&child) {
                    stack.push((child, depth + 1));
                }
            };
            match out {
                Out::YMap(map) => map.iter(&txn).for_each(|(_, v)| push(v)),
                Out::YArray(array) => array.iter(&txn).for_each(&mut push),
                Out::YText(text) => text
                    .diff(&txn, YChange::identity)
                    .into_iter()
                    .for_each(|d| push(d.insert)),
                Out::YXmlText(text) => text
                    .diff(&txn, YChange::identity)
                    .into_iter()
                    .for_each(|d| push(d.insert)),
                Out::YXmlFragment(fragment) => fragment.children(&txn).for_each(|c| push(c.into())),
                Out::YXmlElement(element) => element.children(&txn).for_each(|c| push(c.into())),
                Out::UndefinedRef(branch) => {
                    // A root only updates declared: look at it as a map and as a sequence.
                    MapRef::from(branch).iter(&txn).for_each(|(_, v)| push(v));
                    TextRef::from(branch)
                        .diff(&txn, YChange::identity)
                        .into_iter()
                        .for_each(|d| push(d.insert));
                }
                _ => {}
            }
        }
        deepest
    }

    /// The document's state vector, encoded (v1).
    pub fn state_vector_v1(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// Everything the document holds that a peer with `remote_state_vector` lacks, as an update
    /// (v1). Content still waiting for missing dependencies is included, so nothing the relay
    /// holds is withheld.
    ///
    /// # Errors
    /// [`DocError`] when the state vector is malformed.
    pub fn diff_v1(&mut self, remote_state_vector: &[u8]) -> Result<Arc<[u8]>, DocError> {
        check_state_vector_v1(remote_state_vector)?;
        let sv = StateVector::decode_v1(remote_state_vector)?;
        if sv.is_empty() {
            return Ok(self.encode_state_v1());
        }
        Ok(self.encode_with_pending(&sv).0.into())
    }

    /// What the document holds beyond `sv`, pending content included. `yrs` panics while merging
    /// pending content in some states a crafted update can produce; then the pending content is
    /// left out (a peer gets it once it can be integrated), and the panic is logged.
    /// Also says whether the pending content is in.
    fn encode_with_pending(&self, sv: &StateVector) -> (Vec<u8>, bool) {
        match guarded("encoding the state", || {
            self.doc.transact().encode_state_as_update_v1(sv)
        }) {
            Ok(state) => (state, true),
            Err(_) => {
                let without = guarded("encoding the state without pending content", || {
                    self.doc.transact().encode_diff_v1(sv)
                });
                (without.unwrap_or_else(|_| EMPTY_UPDATE_V1.to_vec()), false)
            }
        }
    }

    /// The whole document, pending content included, for a snapshot that replaces the log; `None`
    /// when it cannot be encoded with the pending content (the log is then kept as it is).
    pub fn try_snapshot_v1(&mut self) -> Option<Arc<[u8]>> {
        if let Some(state) = &self.full_state {
            return Some(state.clone());
        }
        let state: Arc<[u8]> = guarded("encoding a snapshot", || {
            self.doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default())
        })
        .ok()?
        .into();
        self.full_state = Some(state.clone());
        Some(state)
    }

    /// The document's root types as JSON, as Yjs' `doc.toJSON()` gives them: text and XML as
    /// strings, maps as objects, arrays as arrays. Root types that only updates created (the
    /// relay never declares types) are recognised by their content; an empty or wholly deleted
    /// one may come out as `{}` or `[]` where the client that made it would say `""`.
    pub fn to_json(&self) -> serde_json::Value {
        guarded("exporting JSON", || self.to_json_unguarded()).unwrap_or(serde_json::Value::Null)
    }

    fn to_json_unguarded(&self) -> serde_json::Value {
        let txn = self.doc.transact();
        let mut roots = serde_json::Map::new();
        for (name, value) in txn.root_refs() {
            let json = match value {
                Out::UndefinedRef(branch) => undefined_root_json(branch, &txn),
                other => any_to_json(&other.to_json(&txn)),
            };
            roots.insert(name.to_owned(), json);
        }
        serde_json::Value::Object(roots)
    }

    /// The whole document as one update (v1), cached until the next change.
    pub fn encode_state_v1(&mut self) -> Arc<[u8]> {
        if let Some(state) = &self.full_state {
            return state.clone();
        }
        let (state, complete) = self.encode_with_pending(&StateVector::default());
        let state: Arc<[u8]> = state.into();
        // Only a complete encoding may stand for the document (snapshots reuse the cache).
        if complete {
            self.full_state = Some(state.clone());
        }
        state
    }
}

/// Merges updates (v1) into one update (v1) holding all of them, in the way a group commit needs:
/// the relay's cluster log publishes several updates, already applied to a room, as one message.
///
/// # Errors
/// [`DocError`] when an update does not decode or `yrs` panics; the caller then publishes them
/// one by one instead.
pub fn merge_updates_v1<B: AsRef<[u8]>>(updates: &[B]) -> Result<Vec<u8>, DocError> {
    if let [single] = updates {
        return Ok(single.as_ref().to_vec());
    }
    Ok(guarded("merging updates", || {
        yrs::merge_updates_v1(updates.iter().map(AsRef::as_ref))
    })??)
}

/// Runs a `yrs` operation, turning a panic inside it (a bug a crafted update can reach) into an
/// error, so one document cannot take the relay down.
fn guarded<T>(what: &str, operation: impl FnOnce() -> T) -> Result<T, DocError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(operation)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(message, "yrs panicked while {what}");
        DocError::Internal(format!("yrs panicked while {what}: {message}"))
    })
}

/// JSON of a root type whose kind the document does not know (it was created by an update, not
/// by this process), inferred from its content the way `yrs` does, plus XML fragments.
fn undefined_root_json<T: ReadTxn>(branch: BranchPtr, txn: &T) -> serde_json::Value {
    let string = serde_json::Value::String;
    match Out::UndefinedRef(branch).as_prelim(txn) {
        In::Text(_) => string(TextRef::from(branch).get_string(txn)),
        In::XmlText(_) => string(XmlTextRef::from(branch).get_string(txn)),
        In::XmlElement(_) => string(XmlElementRef::from(branch).get_string(txn)),
        In::Array(_) => {
            let array = ArrayRef::from(branch);
            let is_xml = matches!(
                array.iter(txn).next(),
                Some(Out::YXmlElement(_) | Out::YXmlText(_))
            );
            if is_xml {
                string(XmlFragmentRef::from(branch).get_string(txn))
            } else {
                any_to_json(&array.to_json(txn))
            }
        }
        _ => any_to_json(&MapRef::from(branch).to_json(txn)),
    }
}

fn any_to_json(any: &yrs::Any) -> serde_json::Value {
    serde_json::to_value(any).unwrap_or(serde_json::Value::Null)
}

fn is_shared_type(out: &Out) -> bool {
    matches!(
        out,
        Out::YMap(_)
            | Out::YArray(_)
            | Out::YText(_)
            | Out::YXmlText(_)
            | Out::YXmlFragment(_)
            | Out::YXmlElement(_)
            | Out::UndefinedRef(_)
    )
}

/// How deep an update's own shared types nest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct TypeChain {
    /// The longest chain of the update's types, each hanging from the previous one (1 for
    /// types that all hang from existing types or roots, 0 without types).
    longest: usize,
    /// Whether some chain hangs from a parent the document does not have yet.
    unresolved: bool,
}

/// Where an item's parent was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    /// A type item of this update (index).
    InUpdate(usize),
    /// A root, or an item of the document.
    Known,
    /// An item neither the update nor the document has (pending), or a malformed cycle.
    Unknown,
}

/// Finds the longest chain of nested types among an update's items. `type_exists` tells whether
/// the document has a shared type held by the item with an id; `item_exists` whether it has the
/// item at all. Iterative throughout: items are untrusted and may form long or cyclic chains.
fn type_chain(
    items: &[UpdateItem],
    type_exists: impl Fn(ID) -> bool,
    item_exists: impl Fn(ID) -> bool,
) -> TypeChain {
    // Index the items by client and clock.
    let mut by_client: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        by_client.entry(item.client).or_default().push(i);
    }
    for list in by_client.values_mut() {
        list.sort_by_key(|&i| items[i].clock);
    }
    let find = |client: u64, clock: u32| -> Option<usize> {
        let list = by_client.get(&client)?;
        let pos = list.partition_point(|&i| items[i].clock <= clock);
        let i = *list.get(pos.checked_sub(1)?)?;
        (clock < items[i].clock.saturating_add(items[i].len)).then_some(i)
    };
    let id = |client: u64, clock: u32| ID::new(ClientID::new(client), clock);

    // The parent of each item, following neighbours to the item that names its parent.
    let mut parent: Vec<Option<Parent>> = vec![None; items.len()];
    let mut visiting = vec![false; items.len()];
    for start in 0..items.len() {
        let mut path = Vec::new();
        let mut current = start;
        let resolved = loop {
            if let Some(known) = parent[current] {
                break known;
            }
            if visiting[current] {
                break Parent::Unknown; // a cycle of neighbours
            }
            visiting[current] = true;
            path.push(current);
            match items[current].parent {
                ParentRef::Root | ParentRef::None => break Parent::Known,
                ParentRef::Item(client, clock) => {
                    break match find(client, clock) {
                        Some(j) if items[j].is_type => Parent::InUpdate(j),
                        Some(_) => Parent::Known,
                        None if type_exists(id(client, clock)) => Parent::Known,
                        None => Parent::Unknown,
                    };
                }
                ParentRef::SameAs(client, clock) => match find(client, clock) {
                    Some(j) => current = j,
                    None if item_exists(id(client, clock)) => break Parent::Known,
                    None => break Parent::Unknown,
                },
            }
        };
        for i in path {
            parent[i] = Some(resolved);
        }
    }

    // The level of each type: one more than its parent's, if that is a type of this update.
    let mut level: Vec<usize> = vec![0; items.len()];
    let mut unresolved = vec![false; items.len()];
    let mut chain = TypeChain::default();
    for start in (0..items.len()).filter(|&i| items[i].is_type) {
        let mut path = Vec::new();
        let mut current = start;
        let mut seen = 0;
        let (base, base_unresolved) = loop {
            if level[current] > 0 {
                break (level[current], unresolved[current]);
            }
            path.push(current);
            seen += 1;
            match parent[current].unwrap_or(Parent::Unknown) {
                Parent::InUpdate(p) if seen <= items.len() => current = p,
                Parent::InUpdate(_) | Parent::Unknown => break (0, true),
                Parent::Known => break (0, false),
            }
        };
        for (n, &i) in path.iter().rev().enumerate() {
            level[i] = base + n + 1;
            unresolved[i] = base_unresolved;
        }
        chain.longest = chain.longest.max(level[start]);
        chain.unresolved |= unresolved[start];
    }
    chain
}

/// The gap starts of an update's blocks (see `RoomDoc::check_gaps`), by client; `holds` gives
/// how many clocks of a client the document holds without a gap. Blocks come section by section,
/// one section per client.
fn gap_starts_of(items: &[UpdateItem], holds: impl Fn(u64) -> u32) -> HashMap<u64, BTreeSet<u32>> {
    let mut starts: HashMap<u64, BTreeSet<u32>> = HashMap::new();
    let mut previous: Option<&UpdateItem> = None;
    for item in items {
        let first_or_after_skip =
            previous.is_none_or(|p| p.client != item.client || p.kind == BlockKind::Skip);
        previous = Some(item);
        let continues = item.clock > 0 && item.origin == Some((item.client, item.clock - 1));
        if first_or_after_skip
            && item.kind != BlockKind::Skip
            && !continues
            && item.clock > holds(item.client)
        {
            starts.entry(item.client).or_default().insert(item.clock);
        }
    }
    starts
}

/// A cheap fingerprint of the pending (not yet integrable) content: how many clients it waits on
/// and whether a pending delete set exists.
fn pending_len<T: ReadTxn>(txn: &T) -> (usize, bool) {
    let store = txn.store();
    let missing = store.pending_update().map_or(0, |p| p.missing.len());
    (missing, store.pending_ds().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Map, Text};

    fn text_update(client: u64, content: &str) -> Vec<u8> {
        let doc = Doc::with_client_id(client);
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, content);
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn text_of(doc: &RoomDoc) -> String {
        let text = doc.yrs().get_or_insert_text("t");
        text.get_string(&doc.yrs().transact())
    }

    #[test]
    fn merged_updates_apply_as_all_of_them() {
        let updates = [
            text_update(1, "a"),
            text_update(2, "b"),
            text_update(3, "c"),
        ];
        let merged = merge_updates_v1(&updates).expect("merges");
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(&merged).expect("applies");
        let mut each = RoomDoc::new();
        for update in &updates {
            each.apply_update_v1(update).expect("applies");
        }
        assert_eq!(text_of(&doc).len(), 3);
        assert_eq!(text_of(&doc), text_of(&each));
        assert_eq!(merge_updates_v1(&updates[..1]).expect("one"), updates[0]);
        assert!(
            merge_updates_v1(&[vec![0xff, 0xff, 0xff]]).is_ok(),
            "one update is passed through"
        );
        assert!(merge_updates_v1(&[vec![0xff, 0xff], vec![1]]).is_err());
    }

    #[test]
    fn applies_once_and_reports_duplicates_as_unchanged() {
        let mut doc = RoomDoc::new();
        let update = text_update(1, "hello");
        assert_eq!(
            doc.apply_update_v1(&update).expect("valid"),
            Applied::Changed
        );
        assert_eq!(
            doc.apply_update_v1(&update).expect("valid"),
            Applied::Unchanged
        );
        assert_eq!(
            doc.apply_update_v1(EMPTY_UPDATE_V1).expect("valid"),
            Applied::Unchanged
        );
        assert_eq!(text_of(&doc), "hello");
    }

    #[test]
    fn out_of_order_update_is_kept_as_pending_and_counts_as_a_change() {
        let source = Doc::with_client_id(9);
        let text = source.get_or_insert_text("t");
        text.insert(&mut source.transact_mut(), 0, "ab");
        let sv_after_first = source.transact().state_vector();
        text.insert(&mut source.transact_mut(), 2, "cd");
        let second = source.transact().encode_diff_v1(&sv_after_first);
        let first = source
            .transact()
            .encode_state_as_update_v1(&StateVector::default());

        let mut doc = RoomDoc::new();
        assert_eq!(
            doc.apply_update_v1(&second).expect("decodes"),
            Applied::Changed
        );
        assert_eq!(text_of(&doc), "");
        // The pending part is part of the state a joiner receives.
        let full = doc.encode_state_v1();
        assert!(full.len() > EMPTY_UPDATE_V1.len());
        assert_eq!(
            doc.apply_update_v1(&first).expect("decodes"),
            Applied::Changed
        );
        assert_eq!(text_of(&doc), "abcd");
    }

    #[test]
    fn diff_holds_only_what_the_peer_lacks() {
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(&text_update(1, "one")).expect("valid");
        let peer = Doc::new();
        let peer_update = doc.diff_v1(&[0]).expect("empty sv");
        peer.transact_mut()
            .apply_update(Update::decode_v1(&peer_update).expect("decodes"))
            .expect("applies");
        doc.apply_update_v1(&text_update(2, "two")).expect("valid");
        let sv = peer.transact().state_vector().encode_v1();
        let diff = doc.diff_v1(&sv).expect("valid sv");
        assert!(diff.len() < doc.encode_state_v1().len());
        peer.transact_mut()
            .apply_update(Update::decode_v1(&diff).expect("decodes"))
            .expect("applies");
        let peer_text = peer.get_or_insert_text("t");
        assert_eq!(peer_text.get_string(&peer.transact()).len(), 6);
    }

    #[test]
    fn malformed_input_is_refused_and_changes_nothing() {
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(&text_update(1, "keep")).expect("valid");
        let update = text_update(2, "garbage");
        assert!(doc.apply_update_v1(&update[..update.len() - 3]).is_err());
        assert!(
            doc.apply_update_v1(&[0xff, 0xff, 0xff, 0xff, 0x0f])
                .is_err()
        );
        assert!(doc.diff_v1(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1]).is_err());
        assert_eq!(text_of(&doc), "keep");
    }

    /// The update of `crdt/tests/yrs_use_after_free.rs` (two sections for client 1, the second
    /// inside the item "hello world"), which makes yrs 0.28.1 free that item while the text still
    /// links to it. That test runs yrs alone under AddressSanitizer; this one checks that the
    /// relay's documents never let the update reach yrs.
    const YRS_USE_AFTER_FREE: [u8; 12] = [2, 1, 1, 11, 0, 1, 1, 1, 1, 0, 1, 0];

    #[test]
    fn refuses_the_update_that_makes_yrs_free_a_live_item() {
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(&text_update(1, "hello world"))
            .expect("valid");
        let before = doc.encode_state_v1();
        let fuzzed = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/regressions/apply_update/crash-yrs-use-after-free-in-to-json-57652a1e"
        ))
        .expect("the fuzzer's input");
        for update in [&YRS_USE_AFTER_FREE[..], &fuzzed] {
            assert!(matches!(
                doc.apply_update_v1(update),
                Err(DocError::Malformed(ProtocolError::RepeatedClient(1)))
            ));
            assert!(matches!(
                doc.would_change(update),
                Err(DocError::Malformed(ProtocolError::RepeatedClient(1)))
            ));
        }
        assert_eq!(text_of(&doc), "hello world");
        assert_eq!(doc.encode_state_v1(), before);
    }

    /// Client 5's clocks 5..10 as a GC block, before its clocks 0..5 (yrs integrates it past a
    /// gap), and client 5's text "abcdefg" at clocks 0..7, as the first item of the root "text",
    /// running from the gap into the GC block; as in `crdt/tests/yrs_use_after_free.rs`.
    const GC_PAST_A_GAP: [u8; 7] = [1, 1, 5, 5, 0, 5, 0];
    const ITEM_ACROSS_THE_GAP: [u8; 20] = [
        1, 1, 5, 0, 4, 1, 4, b't', b'e', b'x', b't', 7, b'a', b'b', b'c', b'd', b'e', b'f', b'g', 0,
    ];

    #[test]
    fn refuses_a_block_that_would_land_past_a_gap() {
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(&text_update(1, "keep")).expect("valid");
        let before = doc.encode_state_v1();
        assert!(matches!(
            doc.apply_update_v1(&GC_PAST_A_GAP),
            Err(DocError::Malformed(ProtocolError::BlockPastGap {
                client: 5,
                clock: 5
            }))
        ));
        // After a skip block, too.
        let after_skip = [1, 2, 5, 0, 10, 5, 0, 5, 0];
        assert!(matches!(
            doc.apply_update_v1(&after_skip),
            Err(DocError::Malformed(ProtocolError::BlockPastGap {
                client: 5,
                clock: 5
            }))
        ));
        assert_eq!(doc.encode_state_v1(), before);
    }

    #[test]
    fn refuses_a_block_running_across_the_end_of_a_stored_gap() {
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(&text_update(1, "keep")).expect("valid");
        // A store written before the refusal above may hold it.
        assert_eq!(
            doc.replay_stored_update_v1(&GC_PAST_A_GAP)
                .expect("a GC block past a gap"),
            Applied::Changed
        );
        let before = doc.encode_state_v1();
        let gc_across = [1, 1, 5, 0, 0, 7, 0];
        for update in [&ITEM_ACROSS_THE_GAP[..], &gc_across] {
            assert!(matches!(
                doc.apply_update_v1(update),
                Err(DocError::Malformed(ProtocolError::BlockAcrossGap {
                    client: 5,
                    clock: 0
                }))
            ));
        }
        assert_eq!(doc.encode_state_v1(), before);
        assert_eq!(text_of(&doc), "keep");
        // A document rebuilt from its state finds the gap again (the encoded state holds it as
        // a skip). An item that fills the gap exactly is fine.
        let fill = [
            1, 1, 5, 0, 4, 1, 1, b't', 5, b'a', b'b', b'c', b'd', b'e', 0,
        ];
        let mut reloaded = RoomDoc::new();
        reloaded
            .replay_stored_update_v1(&before)
            .expect("the stored state");
        assert!(matches!(
            reloaded.apply_update_v1(&ITEM_ACROSS_THE_GAP),
            Err(DocError::Malformed(ProtocolError::BlockAcrossGap { .. }))
        ));
        for doc in [&mut doc, &mut reloaded] {
            doc.apply_update_v1(&fill).expect("fills the gap");
            assert_eq!(text_of(doc), "keepabcde");
            // Once the gap is filled, those clocks are simply known.
            assert_eq!(
                doc.apply_update_v1(&ITEM_ACROSS_THE_GAP)
                    .expect("only clocks the document has"),
                Applied::Unchanged
            );
        }
    }

    #[test]
    fn refuses_a_stored_gap_that_pending_content_would_run_across() {
        // "abcd" at client 5's clocks 3..7, after client 7's clock 0: from a peer, refused
        // (it would land past a gap once client 7's clock 0 arrives); from the store, pending.
        let pending = [1, 1, 5, 3, 0x84, 7, 0, 4, b'a', b'b', b'c', b'd', 0];
        let mut doc = RoomDoc::new();
        assert!(matches!(
            doc.apply_update_v1(&pending),
            Err(DocError::Malformed(ProtocolError::BlockPastGap {
                client: 5,
                clock: 3
            }))
        ));
        assert_eq!(
            doc.replay_stored_update_v1(&pending).expect("valid"),
            Applied::Changed
        );
        assert!(matches!(
            doc.replay_stored_update_v1(&GC_PAST_A_GAP),
            Err(DocError::Malformed(ProtocolError::BlockAcrossGap {
                client: 5,
                clock: 3
            }))
        ));
        // Client 7's clock 0 arrives; the pending item is integrated without touching freed
        // memory.
        let seven = [1, 1, 7, 0, 4, 1, 1, b't', 1, b'x', 0];
        doc.apply_update_v1(&seven).expect("valid");
        assert_eq!(text_of(&doc), "xabcd");
    }

    #[test]
    fn out_of_order_edits_wait_as_pending_or_are_refused_before_they_leave_a_gap() {
        let client = Doc::with_client_id(8);
        let text = client.get_or_insert_text("t");
        text.insert(&mut client.transact_mut(), 0, "world");
        let synced = client.transact().state_vector();
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(
            &client
                .transact()
                .encode_state_as_update_v1(&StateVector::default()),
        )
        .expect("valid");
        // Offline edits, then, before the sync step 2 that carries them, an edit that continues
        // them: it waits as pending, and the sync step 2 fills the gap before it.
        text.insert(&mut client.transact_mut(), 5, "!!");
        let offline = client.transact().state_vector();
        text.insert(&mut client.transact_mut(), 7, "?");
        let continues = client.transact().encode_diff_v1(&offline);
        assert_eq!(
            doc.apply_update_v1(&continues).expect("valid"),
            Applied::Changed
        );
        assert_eq!(text_of(&doc), "world");
        let step2 = client.transact().encode_diff_v1(&synced);
        doc.apply_update_v1(&step2).expect("valid");
        assert_eq!(text_of(&doc), "world!!?");
        // The same with an edit elsewhere: yrs would integrate it past the gap, so it is refused
        // (the client reconnects, and its sync step 2 carries everything, in order).
        let synced = client.transact().state_vector();
        text.insert(&mut client.transact_mut(), 8, "..");
        let offline = client.transact().state_vector();
        text.insert(&mut client.transact_mut(), 0, "hello ");
        let elsewhere = client.transact().encode_diff_v1(&offline);
        assert!(matches!(
            doc.apply_update_v1(&elsewhere),
            Err(DocError::Malformed(ProtocolError::BlockPastGap {
                client: 8,
                ..
            }))
        ));
        assert_eq!(text_of(&doc), "world!!?");
        let step2 = client.transact().encode_diff_v1(&synced);
        doc.apply_update_v1(&step2).expect("valid");
        assert_eq!(text_of(&doc), "hello world!!?..");
    }

    #[test]
    fn json_export_recognises_the_root_types_of_a_client() {
        let client = Doc::with_client_id(5);
        // Root types are declared before the transaction: declaring one takes its own.
        let text = client.get_or_insert_text("text");
        let map = client.get_or_insert_map("map");
        let array = client.get_or_insert_array("array");
        let xml = client.get_or_insert_xml_fragment("xml");
        {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, "hello");
            map.insert(&mut txn, "k", 1);
            yrs::Array::insert(&array, &mut txn, 0, "x");
            yrs::XmlFragment::insert(&xml, &mut txn, 0, yrs::XmlElementPrelim::empty("p"));
        }
        let update = client
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(&update).expect("valid");
        assert_eq!(
            doc.to_json(),
            serde_json::json!({"text": "hello", "map": {"k": 1}, "array": ["x"], "xml": "<p></p>"})
        );
    }

    #[test]
    fn would_change_sees_new_blocks_and_new_deletions_only() {
        let client = Doc::with_client_id(3);
        let text = client.get_or_insert_text("t");
        text.insert(&mut client.transact_mut(), 0, "hello");
        text.remove_range(&mut client.transact_mut(), 0, 1);
        let full = client
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut doc = RoomDoc::new();
        assert!(doc.would_change(&full).expect("valid"));
        doc.apply_update_v1(&full).expect("valid");
        // What a synced stock client sends back: no blocks, but its whole delete set.
        let sv = doc.yrs().transact().state_vector();
        let echo = client.transact().encode_diff_v1(&sv);
        assert_ne!(echo, EMPTY_UPDATE_V1);
        assert!(!doc.would_change(&echo).expect("valid"));
        // Blocks the document cannot integrate yet (a gap before them) are a change too.
        text.insert(&mut client.transact_mut(), 0, "gap");
        let sv_gap = client.transact().state_vector();
        text.insert(&mut client.transact_mut(), 0, "after");
        let after_gap = client.transact().encode_diff_v1(&sv_gap);
        assert!(doc.would_change(&after_gap).expect("valid"));
        // A new deletion of known content is a change: a fresh client deletes from the synced
        // document and sends only that.
        let deleter = Doc::with_client_id(4);
        deleter
            .transact_mut()
            .apply_update(Update::decode_v1(&full).expect("decodes"))
            .expect("applies");
        let deleter_sv = deleter.transact().state_vector();
        deleter
            .get_or_insert_text("t")
            .remove_range(&mut deleter.transact_mut(), 0, 1);
        let delete = deleter.transact().encode_diff_v1(&deleter_sv);
        assert!(doc.would_change(&delete).expect("valid"));
        assert_eq!(text_of(&doc), "ello");
    }

    #[test]
    fn full_state_cache_is_invalidated_by_changes() {
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(&text_update(1, "a")).expect("valid");
        let first = doc.encode_state_v1();
        assert!(Arc::ptr_eq(&first, &doc.encode_state_v1()));
        doc.apply_update_v1(&text_update(2, "b")).expect("valid");
        assert!(!Arc::ptr_eq(&first, &doc.encode_state_v1()));
    }

    /// Builds, on a big stack (the client side recurses as deep as the relay would), a chain of
    /// `levels` nested arrays and then an update deleting its top.
    fn nested_arrays(levels: usize) -> (Vec<u8>, Vec<u8>) {
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn(move || {
                use yrs::ArrayPrelim;
                let client = Doc::with_client_id(9);
                let root = client.get_or_insert_array("a");
                {
                    let mut txn = client.transact_mut();
                    let mut current: ArrayRef = root.insert(&mut txn, 0, ArrayPrelim::default());
                    for _ in 1..levels {
                        current = current.insert(&mut txn, 0, ArrayPrelim::default());
                    }
                }
                let full = client
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                let sv = client.transact().state_vector();
                root.remove(&mut client.transact_mut(), 0);
                (full, client.transact().encode_diff_v1(&sv))
            })
            .expect("spawn")
            .join()
            .expect("client side")
    }

    #[test]
    fn deep_nesting_is_refused_before_it_can_overflow_the_stack() {
        // Without the limit, applying `delete` after `full` aborts the process.
        let (full, delete) = nested_arrays(20_000);
        let mut doc = RoomDoc::new();
        assert!(matches!(
            doc.apply_update_v1(&full),
            Err(DocError::Malformed(ProtocolError::TypesTooDeep))
        ));
        doc.apply_update_v1(&delete).expect("harmless now");
        assert_eq!(doc.measure_depth(), 0);
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted_and_can_be_deleted() {
        let (full, delete) = nested_arrays(MAX_TYPE_DEPTH - 1);
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(&full).expect("within the limit");
        assert_eq!(doc.measure_depth(), MAX_TYPE_DEPTH);
        doc.apply_update_v1(&delete).expect("deletes");
        assert_eq!(doc.to_json(), serde_json::json!({"a": []}));
    }

    #[test]
    fn nesting_built_one_level_per_update_stops_at_the_limit() {
        use yrs::ArrayPrelim;
        let client = Doc::with_client_id(5);
        let mut doc = RoomDoc::new();
        let mut current: ArrayRef = client.get_or_insert_array("a");
        let mut refused = None;
        for level in 1..=MAX_TYPE_DEPTH + 5 {
            let sv = client.transact().state_vector();
            current = current.insert(&mut client.transact_mut(), 0, ArrayPrelim::default());
            let update = client.transact().encode_diff_v1(&sv);
            if doc.apply_update_v1(&update).is_err() {
                refused = Some(level);
                break;
            }
        }
        // The root counts as level 1, so the 256th nested array is the first too many.
        assert_eq!(refused, Some(MAX_TYPE_DEPTH));
        assert!(doc.measure_depth() <= MAX_TYPE_DEPTH);
    }

    #[test]
    fn many_flat_types_in_one_update_are_fine() {
        let client = Doc::with_client_id(6);
        let array = client.get_or_insert_array("items");
        {
            let mut txn = client.transact_mut();
            for i in 0..5_000 {
                let map = array.push_back(&mut txn, yrs::MapPrelim::default());
                map.insert(&mut txn, "n", i);
            }
        }
        let update = client
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(&update)
            .expect("5,000 maps side by side nest two deep");
        assert_eq!(doc.measure_depth(), 2);
    }
}
