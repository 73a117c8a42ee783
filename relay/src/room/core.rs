//! The room's logic without I/O: a [`RoomCore`] takes inputs (a connection joins, sends a
//! message or leaves; the store reports a commit; the API sends an update or deletes the
//! document; time passes) and answers with [`Effect`]s (send, broadcast, close, persist, answer
//! a request), which the room task carries out. No tokio, no channels, no clocks of its own:
//! time comes in as an argument, so tests drive it by hand.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crdt::awareness::{
    AwarenessLimits, AwarenessTable, OUTDATED_AFTER, encode_awareness_update,
    parse_awareness_update,
};
use crdt::doc::{Applied, RoomDoc};
use crdt::error::{AwarenessError, DocError};
use crdt::protocol::{
    encode_awareness, encode_permission_denied, encode_save_error, encode_saved, encode_sync_step1,
    encode_sync_step2, encode_update,
};
use crdt::store::{StoredRoom, Write};

use super::ConnId;
use super::inbound::Inbound;
use super::ledger::{DELETION_SEQ, Ledger, RequestId, SaveAnswer, Settled};
use crate::auth::{Access, Principal};
use crate::close::CloseReason;

/// How often a room with awareness states looks for out-of-date ones.
pub(crate) const AWARENESS_SWEEP: Duration = Duration::from_secs(10);

/// The reason sent with a refused update from a read-only connection.
pub(crate) const READ_ONLY_REASON: &str = "read-only access: updates are not accepted";

/// The limits a room's logic applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoreSettings {
    /// Largest document, in bytes of stored updates (snapshot and log).
    pub(crate) max_doc_bytes: u64,
    /// Log entries that trigger a compaction (once the log holds half the snapshot's size).
    pub(crate) compact_entries: u64,
    /// Log bytes that trigger a compaction (raised to the snapshot's size).
    pub(crate) compact_bytes: u64,
    /// What the room's awareness may hold.
    pub(crate) awareness: AwarenessLimits,
}

/// Why the HTTP API's update was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApiUpdateError {
    /// It does not decode or apply; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// It would grow the document past `--max-doc-bytes`.
    #[error("the document would grow past --max-doc-bytes")]
    TooLarge,
    /// The document was deleted before the update was committed.
    #[error("the document was deleted")]
    Deleted,
}

/// Something the room task must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Queue one message for one connection.
    Send(ConnId, Bytes),
    /// Queue one message for every connection but `except`.
    Broadcast {
        /// The message.
        frame: Bytes,
        /// The connection that does not get it.
        except: Option<ConnId>,
    },
    /// Queue a Hocuspocus stateless message for every connection that takes them but `except`.
    BroadcastStateless {
        /// The message (type and payload).
        frame: Bytes,
        /// The sender.
        except: ConnId,
    },
    /// Close a connection, which the core has already let go of.
    Close(ConnId, CloseReason),
    /// Start a new commit numbering (after a deletion): commits reported for the old one no
    /// longer concern the room.
    Renumber,
    /// Hand a write to the store; once committed, `seq` (if any) is reported back.
    Persist {
        /// The write.
        write: Write,
        /// The sequence number it completes.
        seq: Option<u64>,
    },
    /// Answer an API request.
    Answer(RequestId, Result<(), ApiUpdateError>),
    /// A webhook event: the document was created (first commit), or deleted.
    Notify(crate::webhook::EventKind),
    /// A webhook event: committed changes (debounced by the task).
    Changed,
    /// Count an update that changed the document, of this many bytes.
    UpdateApplied(usize),
    /// Count an error (something refused, dropped or failed) under this reason label.
    Count(&'static str),
    /// `yrs` panicked on the document, which may now hold part of a bad update: load the
    /// committed state from the store and call [`RoomCore::rebuild`].
    Rebuild,
}

/// What the room knows of a connection.
#[derive(Debug, Clone, Copy)]
struct Member {
    access: Access,
    principal: Principal,
}

/// The size of the stored document, for compaction and the size limit.
#[derive(Debug, Clone, Copy, Default)]
struct StoredSize {
    log_entries: u64,
    log_bytes: u64,
    snapshot_bytes: u64,
}

/// One room's document, awareness, members and ledger.
pub(crate) struct RoomCore {
    doc: RoomDoc,
    awareness: AwarenessTable<ConnId>,
    members: HashMap<ConnId, Member>,
    ledger: Ledger,
    stored: StoredSize,
    /// The sync step 2 answering an empty state vector, cached between changes: a crowd of new
    /// joiners shares one encoding and one buffer.
    full_step2: Option<Bytes>,
    /// Nothing of the room was stored yet: its first commit is reported as a creation.
    created_pending: bool,
    /// When to look for out-of-date awareness states; `None` while there are none.
    awareness_sweep_at: Option<Instant>,
    settings: CoreSettings,
    name: Arc<str>,
    effects: Vec<Effect>,
}

impl RoomCore {
    /// The core of a room loaded from the store.
    pub(crate) fn new(name: Arc<str>, stored: StoredRoom, settings: CoreSettings) -> Self {
        RoomCore {
            created_pending: stored.next_seq == 1 && stored.snapshot_bytes == 0,
            ledger: Ledger::new(stored.next_seq),
            stored: StoredSize {
                log_entries: stored.log_entries,
                log_bytes: stored.log_bytes,
                snapshot_bytes: stored.snapshot_bytes,
            },
            doc: stored.doc,
            awareness: AwarenessTable::with_limits(settings.awareness),
            members: HashMap::new(),
            full_step2: None,
            awareness_sweep_at: None,
            settings,
            name,
            effects: Vec::new(),
        }
    }

    /// Moves the effects produced so far into `out` (which should be empty).
    pub(crate) fn take_effects(&mut self, out: &mut Vec<Effect>) {
        std::mem::swap(&mut self.effects, out);
    }

    /// Connections joined.
    pub(crate) fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Changes applied but not committed.
    pub(crate) fn uncommitted(&self) -> u64 {
        self.ledger.uncommitted_count()
    }

    /// Whether the room may unload: nobody is joined and everything is committed.
    pub(crate) fn is_idle(&self) -> bool {
        self.members.is_empty() && self.ledger.is_settled()
    }

    /// When [`RoomCore::sweep_awareness`] should next run.
    pub(crate) fn next_sweep(&self) -> Option<Instant> {
        self.awareness_sweep_at
    }

    /// The whole document as one update (v1).
    pub(crate) fn export_v1(&mut self) -> Arc<[u8]> {
        self.doc.encode_state_v1()
    }

    /// The document's root types as JSON.
    pub(crate) fn export_json(&self) -> serde_json::Value {
        self.doc.to_json()
    }

    /// A connection joins: it is greeted with sync step 1 and the awareness states.
    pub(crate) fn join(&mut self, conn: ConnId, access: Access, principal: Principal) {
        tracing::debug!(%conn, "connection joined");
        self.members.insert(conn, Member { access, principal });
        self.ledger.join(conn);
        self.effects.push(Effect::Send(
            conn,
            encode_sync_step1(&self.doc.state_vector_v1()).into(),
        ));
        if let Some(states) = self.awareness.encode_all() {
            self.effects
                .push(Effect::Send(conn, encode_awareness(&states).into()));
        }
    }

    /// A connection is gone: by itself (`reason` `None`), or closed by the room task for
    /// `reason` (a slow reader). The removal of its awareness states is announced.
    pub(crate) fn leave(&mut self, conn: ConnId, reason: Option<CloseReason>) {
        if self.members.remove(&conn).is_none() {
            return;
        }
        self.ledger.leave(conn);
        match reason {
            Some(reason) => self.effects.push(Effect::Close(conn, reason)),
            None => tracing::debug!(%conn, "connection left"),
        }
        if let Some(removal) = self.awareness.remove_owner(conn) {
            self.effects.push(Effect::Broadcast {
                frame: encode_awareness(&removal).into(),
                except: None,
            });
        }
    }

    /// A message from a joined connection.
    pub(crate) fn receive(&mut self, conn: ConnId, message: Inbound, now: Instant) {
        let Some(member) = self.members.get(&conn).copied() else {
            // Closed for an earlier message of the same frame, or as a slow reader.
            return;
        };
        match message {
            Inbound::SyncStep1(state_vector) => self.on_sync_step1(conn, &state_vector),
            Inbound::SyncStep2(update) => self.on_update(conn, member, update, None),
            Inbound::Update { message, update } => {
                self.on_update(conn, member, update, Some(message));
            }
            Inbound::Awareness { message, payload } => {
                self.on_awareness(conn, member.principal, &payload, message, now);
            }
            Inbound::QueryAwareness => {
                let states = self.awareness.encode_all().unwrap_or_else(|| vec![0]);
                self.effects
                    .push(Effect::Send(conn, encode_awareness(&states).into()));
            }
            Inbound::Stateless(frame) => {
                // Application messages: not stored, not part of the document, so read-only
                // connections may send them too (as on a Hocuspocus server).
                self.effects.push(Effect::BroadcastStateless {
                    frame,
                    except: conn,
                });
            }
            Inbound::SaveRequest(request_id) => {
                if let Some(answer) = self.ledger.save_request(conn, request_id) {
                    self.effects
                        .push(Effect::Send(conn, encode_save_answer(request_id, &answer)));
                }
            }
        }
    }

    fn on_sync_step1(&mut self, conn: ConnId, state_vector: &[u8]) {
        let reply = if state_vector == [0] {
            // An empty state vector asks for everything.
            match &self.full_step2 {
                Some(cached) => cached.clone(),
                None => {
                    let message = Bytes::from(encode_sync_step2(&self.doc.encode_state_v1()));
                    self.full_step2 = Some(message.clone());
                    message
                }
            }
        } else {
            match self.doc.diff_v1(state_vector) {
                Ok(diff) => encode_sync_step2(&diff).into(),
                Err(error) => {
                    tracing::warn!(%conn, %error, "bad state vector; closing the connection");
                    self.refuse(conn, "invalid_state_vector", CloseReason::ProtocolError);
                    return;
                }
            }
        };
        self.effects.push(Effect::Send(conn, reply));
    }

    /// Closes `conn` for a refused message, counted under `label`.
    fn refuse(&mut self, conn: ConnId, label: &'static str, reason: CloseReason) {
        self.effects.push(Effect::Count(label));
        self.leave(conn, Some(reason));
    }

    /// Applies an update from `conn`. `message` is the original update message when it can be
    /// forwarded as is (a sync step 2 is re-encoded as an update).
    fn on_update(&mut self, conn: ConnId, member: Member, update: Bytes, message: Option<Bytes>) {
        if member.access < Access::Write {
            // Every client answers the greeting with a sync step 2 (with its whole delete set):
            // only refuse one that would change something.
            if self.doc.would_change(&update).unwrap_or(true) {
                tracing::debug!(%conn, "refused an update from a read-only connection");
                self.effects.push(Effect::Count("read_only_update"));
                self.ledger.refused(conn, &READ_ONLY_REASON.into());
                self.effects.push(Effect::Send(
                    conn,
                    encode_permission_denied(READ_ONLY_REASON).into(),
                ));
            } else {
                self.ledger.relies_on_everything(conn);
            }
            return;
        }
        if self.would_exceed_size(update.len()) {
            tracing::warn!(%conn, "update would grow the document past --max-doc-bytes; closing");
            self.refuse(conn, "document_too_large", CloseReason::DocumentTooLarge);
            return;
        }
        match self.doc.apply_update_v1(&update) {
            Err(error) => {
                tracing::warn!(%conn, %error, "update does not apply; closing the connection");
                self.refuse(conn, "invalid_update", CloseReason::ProtocolError);
                self.rebuild_if_broken(&error);
            }
            Ok(Applied::Unchanged) => self.ledger.relies_on_everything(conn),
            Ok(Applied::Changed) => {
                let message = message.unwrap_or_else(|| Bytes::from(encode_update(&update)));
                // Fan out at once, without waiting for the disk. No echo to the sender: it has
                // the update, and no stock client counts an echo as confirmation (`@y/websocket`
                // 4.0.0-3 was checked); save requests do that.
                self.effects.push(Effect::Broadcast {
                    frame: message,
                    except: Some(conn),
                });
                self.record_change(Some(conn), update);
            }
        }
    }

    /// Numbers an applied change, persists it and compacts when due.
    fn record_change(&mut self, conn: Option<ConnId>, update: Bytes) -> u64 {
        self.full_step2 = None;
        self.effects.push(Effect::UpdateApplied(update.len()));
        self.stored.log_entries += 1;
        self.stored.log_bytes += update.len() as u64;
        let seq = self.ledger.append(conn, update.clone());
        self.effects.push(Effect::Persist {
            write: Write::Append {
                room: self.name.clone(),
                seq,
                update,
            },
            seq: Some(seq),
        });
        self.maybe_compact();
        seq
    }

    /// After `yrs` failed in the middle of integrating an update (it panicked, or refused a block
    /// after taking the ones before it), the document may hold part of the update: ask for a
    /// rebuild. Updates refused before `yrs` saw them (malformed, refused shapes) changed nothing.
    fn rebuild_if_broken(&mut self, error: &DocError) {
        if matches!(error, DocError::Internal(_) | DocError::Apply(_)) {
            tracing::error!(%error, "yrs failed half-way on this room's document; rebuilding it");
            self.effects.push(Effect::Rebuild);
        }
    }

    /// Replaces the document after a [`Effect::Rebuild`]: the committed state `stored` (read
    /// from the store after the panic) with every change applied since that the store does not
    /// hold yet. While a deletion is uncommitted, the store still holds the deleted document, so
    /// the rebuild starts from an empty one.
    pub(crate) fn rebuild(&mut self, stored: StoredRoom) {
        let (mut doc, from) = if self.ledger.deletion_pending() {
            (RoomDoc::new(), 0)
        } else {
            (stored.doc, stored.next_seq)
        };
        for update in self.ledger.uncommitted_from(from) {
            if let Err(error) = doc.apply_update_v1(update) {
                // It applied before; losing it here would lose an edit some client was told
                // about. Log loudly: the clients still have it and send it again on reconnect.
                tracing::error!(%error, "an uncommitted update does not apply to the rebuilt document");
            }
        }
        self.doc = doc;
        self.full_step2 = None;
        tracing::info!("room rebuilt from the store after a yrs panic");
    }

    fn on_awareness(
        &mut self,
        conn: ConnId,
        principal: Principal,
        payload: &[u8],
        message: Bytes,
        now: Instant,
    ) {
        let limits = *self.awareness.limits();
        // A client id another connection holds may move here only from a connection of the same
        // user (the same client reconnecting, or moving from long-polling to a WebSocket).
        let members = &self.members;
        let same_user = |owner: ConnId| members.get(&owner).map(|m| m.principal) == Some(principal);
        let applied = parse_awareness_update(payload, &limits)
            .and_then(|entries| self.awareness.apply(&entries, conn, now, same_user));
        let changes = match applied {
            Ok(changes) => changes,
            Err(AwarenessError::Malformed(error)) => {
                tracing::warn!(%conn, %error, "bad awareness update; closing the connection");
                self.refuse(conn, "invalid_awareness", CloseReason::ProtocolError);
                return;
            }
            Err(error) => {
                tracing::warn!(%conn, %error, "awareness over a limit; closing the connection");
                self.refuse(conn, "awareness_limit", CloseReason::AwarenessLimit);
                return;
            }
        };
        if changes.ignored > 0 {
            tracing::debug!(%conn, ignored = changes.ignored, "awareness entries not taken");
            self.effects.push(Effect::Count("awareness_ignored"));
        }
        if self.awareness_sweep_at.is_none() && !self.awareness.is_empty() {
            self.awareness_sweep_at = Some(now + AWARENESS_SWEEP);
        }
        if changes.is_empty() {
            return;
        }
        // Everyone gets it, the sender too: its own renewals coming back are what keep a lone
        // stock client from timing out. When some entries were not taken, only those that were
        // go out: a takeover or a state past the room's limit must not reach anyone.
        let frame = if changes.ignored == 0 {
            message
        } else {
            let changed: std::collections::HashSet<u64> = (changes.added.iter())
                .chain(&changes.updated)
                .chain(&changes.removed)
                .copied()
                .collect();
            let taken: Vec<_> = parse_awareness_update(payload, &limits)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| changed.contains(&e.client_id))
                .collect();
            encode_awareness(&encode_awareness_update(taken)).into()
        };
        self.effects.push(Effect::Broadcast {
            frame,
            except: None,
        });
    }

    /// Removes awareness states their clients stopped renewing (a client that vanished on a
    /// connection still open, or a state another client sent back after its owner left) and
    /// announces their removal, as y-protocols clients do after 30 seconds.
    pub(crate) fn sweep_awareness(&mut self, now: Instant) {
        if let Some(removal) = self.awareness.remove_outdated(now, OUTDATED_AFTER) {
            tracing::debug!("removing out-of-date awareness states");
            self.effects.push(Effect::Broadcast {
                frame: encode_awareness(&removal).into(),
                except: None,
            });
        }
        self.awareness_sweep_at = (!self.awareness.is_empty()).then(|| now + AWARENESS_SWEEP);
    }

    /// The store committed the room's changes through `committed`, or failed (`failure`):
    /// answers the save and API requests that this settles.
    pub(crate) fn commit_progress(&mut self, committed: u64, failure: Option<Arc<str>>) {
        let Settled {
            saves,
            requests,
            updates_committed,
        } = self.ledger.commit(committed, failure);
        if updates_committed {
            if std::mem::take(&mut self.created_pending) {
                self.effects
                    .push(Effect::Notify(crate::webhook::EventKind::Created));
            }
            self.effects.push(Effect::Changed);
        }
        for save in saves {
            self.effects.push(Effect::Send(
                save.conn,
                encode_save_answer(save.request_id, &save.answer),
            ));
        }
        for request in requests {
            self.effects.push(Effect::Answer(request, Ok(())));
        }
    }

    /// Applies an update from the HTTP API: like one from a connection, but every connection
    /// receives it, and the answer waits for the commit that holds it.
    pub(crate) fn api_update(&mut self, request: RequestId, update: Bytes) {
        if self.would_exceed_size(update.len()) {
            self.effects
                .push(Effect::Answer(request, Err(ApiUpdateError::TooLarge)));
            return;
        }
        let seq = match self.doc.apply_update_v1(&update) {
            Err(error) => {
                self.effects.push(Effect::Answer(
                    request,
                    Err(ApiUpdateError::Invalid(error.to_string())),
                ));
                self.rebuild_if_broken(&error);
                return;
            }
            Ok(Applied::Unchanged) => None,
            Ok(Applied::Changed) => {
                self.effects.push(Effect::Broadcast {
                    frame: encode_update(&update).into(),
                    except: None,
                });
                Some(self.record_change(None, update))
            }
        };
        if self.ledger.wait_for(seq, request) {
            self.effects.push(Effect::Answer(request, Ok(())));
        }
    }

    /// Deletes the document: closes every connection with 4404, forgets the document and its
    /// awareness, and removes its storage; `request` is answered once that is committed. The
    /// room then goes on as a new, empty document.
    pub(crate) fn delete(&mut self, request: RequestId) {
        tracing::info!(connections = self.members.len(), "deleting the document");
        let members: Vec<ConnId> = self.members.keys().copied().collect();
        for conn in members {
            self.members.remove(&conn);
            self.effects
                .push(Effect::Close(conn, CloseReason::DocumentDeleted));
        }
        self.awareness = AwarenessTable::with_limits(self.settings.awareness);
        self.awareness_sweep_at = None;
        self.doc = RoomDoc::new();
        self.full_step2 = None;
        self.stored = StoredSize::default();
        // Waiting API updates were committed or are about to be, and are deleted right after.
        for waiting in self.ledger.delete() {
            self.effects
                .push(Effect::Answer(waiting, Err(ApiUpdateError::Deleted)));
        }
        self.effects
            .push(Effect::Notify(crate::webhook::EventKind::Deleted));
        self.created_pending = true;
        self.effects.push(Effect::Renumber);
        self.effects.push(Effect::Persist {
            write: Write::Delete {
                room: self.name.clone(),
            },
            seq: Some(DELETION_SEQ),
        });
        let committed = self.ledger.wait_for(Some(DELETION_SEQ), request);
        debug_assert!(
            !committed,
            "a deletion is committed only once the store says so"
        );
    }

    /// Whether `bytes` more would take the document past `--max-doc-bytes`, counted as the
    /// stored snapshot plus every update since (an overestimate until the next compaction).
    fn would_exceed_size(&self, bytes: usize) -> bool {
        self.stored.snapshot_bytes + self.stored.log_bytes + bytes as u64
            > self.settings.max_doc_bytes
    }

    fn maybe_compact(&mut self) {
        let settings = &self.settings;
        let stored = &mut self.stored;
        // A compaction rewrites the whole snapshot, so it must be paid for by log bytes: past the
        // byte threshold (at least the snapshot's size), or past the entry threshold once the
        // log holds at least half the snapshot's size. Many tiny updates to a large document
        // (typing) otherwise rewrote the snapshot every 1,000 keystrokes: replaying the
        // automerge-paper trace wrote 26 bytes per byte of updates, half of them snapshots.
        let byte_threshold = settings.compact_bytes.max(stored.snapshot_bytes);
        let by_bytes = stored.log_bytes >= byte_threshold;
        let by_entries = stored.log_entries >= settings.compact_entries
            && stored.log_bytes >= stored.snapshot_bytes / 2;
        if !by_bytes && !by_entries {
            return;
        }
        let Some(state) = self.doc.try_snapshot_v1() else {
            // The log still holds every update: keep it, and try again after more updates.
            tracing::error!("cannot encode a snapshot; keeping the log as it is");
            self.effects.push(Effect::Count("snapshot_failed"));
            stored.log_entries = 0;
            stored.log_bytes = 0;
            return;
        };
        let through_seq = self.ledger.last_seq();
        tracing::info!(
            through_seq,
            log_entries = stored.log_entries,
            log_bytes = stored.log_bytes,
            snapshot_bytes = state.len(),
            "compacting"
        );
        stored.snapshot_bytes = state.len() as u64;
        stored.log_entries = 0;
        stored.log_bytes = 0;
        self.effects.push(Effect::Persist {
            write: Write::Snapshot {
                room: self.name.clone(),
                through_seq,
                state,
            },
            seq: None,
        });
    }
}

fn encode_save_answer(request_id: u64, answer: &SaveAnswer) -> Bytes {
    match answer {
        SaveAnswer::Saved => encode_saved(request_id).into(),
        SaveAnswer::Error(reason) => encode_save_error(request_id, reason).into(),
    }
}

#[cfg(test)]
mod tests {
    //! The room's logic driven by hand, the way yrs tests its `sync::Protocol`: inputs in,
    //! effects out, no runtime, no channels, time passed as an argument.

    use super::*;
    use crdt::awareness::AwarenessEntry;
    use crdt::protocol::{MessageReader, encode_save_error};
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);
    const NAME: &str = "room";

    fn settings() -> CoreSettings {
        CoreSettings {
            max_doc_bytes: 1 << 20,
            compact_entries: 1000,
            compact_bytes: 1 << 20,
            awareness: AwarenessLimits::default(),
        }
    }

    fn empty_room() -> StoredRoom {
        StoredRoom {
            doc: RoomDoc::new(),
            next_seq: 1,
            log_entries: 0,
            log_bytes: 0,
            snapshot_bytes: 0,
        }
    }

    fn core() -> RoomCore {
        RoomCore::new(NAME.into(), empty_room(), settings())
    }

    fn effects(core: &mut RoomCore) -> Vec<Effect> {
        let mut out = Vec::new();
        core.take_effects(&mut out);
        out
    }

    fn now() -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now)
    }

    /// A client's edit: appends `s` to its text "t" and returns the update.
    fn edit(doc: &Doc, s: &str) -> Bytes {
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
        Bytes::from(txn.encode_update_v1())
    }

    fn update_message(update: &Bytes) -> Inbound {
        Inbound::Update {
            message: Bytes::from(encode_update(update)),
            update: update.clone(),
        }
    }

    fn text_of(core: &mut RoomCore) -> String {
        let doc = Doc::new();
        let state = core.export_v1();
        let mut txn = doc.transact_mut();
        txn.apply_update(yrs::Update::decode_v1(&state).expect("decodes"))
            .expect("applies");
        drop(txn);
        doc.get_or_insert_text("t").get_string(&doc.transact())
    }

    /// The one message of an encoded frame.
    fn message_kind(frame: &[u8]) -> String {
        let (message, _) = MessageReader::new(frame)
            .next()
            .expect("a message")
            .expect("well formed");
        format!("{message:?}")
    }

    fn saved(conn: ConnId, id: u64) -> Effect {
        Effect::Send(conn, encode_saved(id).into())
    }

    #[test]
    fn a_joiner_is_greeted_with_sync_step_1_and_the_awareness_states() {
        let mut core = core();
        core.join(A, Access::Write, Principal::ANYONE);
        assert_eq!(
            effects(&mut core),
            vec![Effect::Send(A, encode_sync_step1(&[0]).into())],
            "an empty room's state vector, and no awareness message without states"
        );
        let state = crdt::awareness::encode_awareness_update([AwarenessEntry {
            client_id: 7,
            clock: 1,
            state: Some("{}"),
        }]);
        let message = Bytes::from(encode_awareness(&state));
        core.receive(
            A,
            Inbound::Awareness {
                message: message.clone(),
                payload: Bytes::from(state.clone()),
            },
            now(),
        );
        assert_eq!(
            effects(&mut core),
            vec![Effect::Broadcast {
                frame: message.clone(),
                except: None
            }],
            "awareness goes to everyone, the sender too"
        );
        core.join(B, Access::Read, Principal::ANYONE);
        let greeting = effects(&mut core);
        assert_eq!(greeting.len(), 2);
        assert_eq!(greeting[1], Effect::Send(B, message));
    }

    #[test]
    fn sync_step_1_is_answered_with_what_the_client_lacks() {
        let mut core = core();
        core.join(A, Access::Write, Principal::ANYONE);
        let client = Doc::with_client_id(5);
        let first = edit(&client, "hello");
        core.receive(A, update_message(&first), now());
        effects(&mut core);
        core.join(B, Access::Write, Principal::ANYONE);
        effects(&mut core);
        // B already has "hello": its step 1 gets only what came after.
        let b_doc = Doc::with_client_id(6);
        b_doc
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&first).expect("decodes"))
            .expect("applies");
        let second = edit(&client, " world");
        core.receive(A, update_message(&second), now());
        effects(&mut core);
        let sv = b_doc.transact().state_vector().encode_v1();
        core.receive(B, Inbound::SyncStep1(Bytes::from(sv.clone())), now());
        let reply = effects(&mut core);
        let [Effect::Send(to, frame)] = reply.as_slice() else {
            panic!("one reply: {reply:?}")
        };
        assert_eq!(*to, B);
        let expected = client
            .transact()
            .encode_diff_v1(&StateVector::decode_v1(&sv).expect("a state vector"));
        assert_eq!(frame.as_ref(), encode_sync_step2(&expected).as_slice());
        // An empty state vector asks for everything.
        core.receive(B, Inbound::SyncStep1(Bytes::from_static(&[0])), now());
        let reply = effects(&mut core);
        assert!(
            message_kind(match &reply[0] {
                Effect::Send(_, frame) => frame,
                other => panic!("{other:?}"),
            })
            .starts_with("SyncStep2")
        );
        assert_eq!(text_of(&mut core), "hello world");
    }

    #[test]
    fn an_update_goes_to_the_others_at_once_and_is_acknowledged_at_its_commit() {
        let mut core = core();
        core.join(A, Access::Write, Principal::ANYONE);
        core.join(B, Access::Write, Principal::ANYONE);
        effects(&mut core);
        let update = edit(&Doc::with_client_id(5), "typed");
        let message = Bytes::from(encode_update(&update));
        core.receive(
            A,
            Inbound::Update {
                message: message.clone(),
                update: update.clone(),
            },
            now(),
        );
        core.receive(A, Inbound::SaveRequest(9), now());
        assert_eq!(
            effects(&mut core),
            vec![
                Effect::Broadcast {
                    frame: message,
                    except: Some(A)
                },
                Effect::UpdateApplied(update.len()),
                Effect::Persist {
                    write: Write::Append {
                        room: NAME.into(),
                        seq: 1,
                        update,
                    },
                    seq: Some(1),
                },
            ],
            "forwarded before the disk, persisted as change 1, and the save request waits"
        );
        assert_eq!(core.uncommitted(), 1);
        assert!(!core.is_idle());
        core.commit_progress(1, None);
        assert_eq!(
            effects(&mut core),
            vec![
                Effect::Notify(crate::webhook::EventKind::Created),
                Effect::Changed,
                saved(A, 9)
            ]
        );
        assert_eq!(core.uncommitted(), 0);
    }

    #[test]
    fn a_stateless_message_goes_to_the_others_and_changes_nothing() {
        let mut core = core();
        core.join(A, Access::Read, Principal::ANYONE);
        core.join(B, Access::Write, Principal::ANYONE);
        effects(&mut core);
        let frame = Bytes::from_static(&[5, 2, b'h', b'i']);
        core.receive(A, Inbound::Stateless(frame.clone()), now());
        assert_eq!(
            effects(&mut core),
            vec![Effect::BroadcastStateless { frame, except: A }],
            "read-only connections may send them too; nothing is stored"
        );
        assert_eq!(core.uncommitted(), 0);
    }

    #[test]
    fn a_read_only_connection_cannot_change_the_document() {
        let mut core = core();
        core.join(A, Access::Read, Principal::ANYONE);
        effects(&mut core);
        // The usual answer to the greeting: an empty step 2, accepted silently.
        core.receive(A, Inbound::SyncStep2(Bytes::from_static(&[0, 0])), now());
        core.receive(A, Inbound::SaveRequest(1), now());
        assert_eq!(effects(&mut core), vec![saved(A, 1)]);
        let update = edit(&Doc::with_client_id(5), "not allowed");
        core.receive(A, update_message(&update), now());
        core.receive(A, Inbound::SaveRequest(2), now());
        assert_eq!(
            effects(&mut core),
            vec![
                Effect::Count("read_only_update"),
                Effect::Send(A, encode_permission_denied(READ_ONLY_REASON).into()),
                Effect::Send(A, encode_save_error(2, READ_ONLY_REASON).into()),
            ]
        );
        assert_eq!(text_of(&mut core), "");
    }

    #[test]
    fn an_update_past_the_size_limit_closes_the_connection_and_changes_nothing() {
        let mut core = RoomCore::new(
            NAME.into(),
            empty_room(),
            CoreSettings {
                max_doc_bytes: 64,
                ..settings()
            },
        );
        core.join(A, Access::Write, Principal::ANYONE);
        effects(&mut core);
        let update = edit(&Doc::with_client_id(5), &"x".repeat(100));
        core.receive(A, update_message(&update), now());
        assert_eq!(
            effects(&mut core),
            vec![
                Effect::Count("document_too_large"),
                Effect::Close(A, CloseReason::DocumentTooLarge),
            ]
        );
        assert_eq!(core.member_count(), 0);
        assert_eq!(text_of(&mut core), "");
    }

    #[test]
    fn a_save_error_is_told_once_and_the_retry_saves() {
        let mut core = core();
        core.join(A, Access::Write, Principal::ANYONE);
        effects(&mut core);
        let update = edit(&Doc::with_client_id(5), "x");
        core.receive(A, update_message(&update), now());
        core.receive(A, Inbound::SaveRequest(1), now());
        effects(&mut core);
        core.commit_progress(0, Some("disk full".into()));
        assert_eq!(
            effects(&mut core),
            vec![Effect::Send(A, encode_save_error(1, "disk full").into())]
        );
        core.commit_progress(0, Some("disk full".into()));
        assert_eq!(effects(&mut core), vec![], "told once");
        core.commit_progress(1, None);
        let after = effects(&mut core);
        assert_eq!(after.last(), Some(&saved(A, 1)), "{after:?}");
    }

    #[test]
    fn a_duplicate_update_then_a_save_request_waits_for_the_original_commit() {
        let mut core = core();
        core.join(A, Access::Write, Principal::ANYONE);
        core.join(B, Access::Write, Principal::ANYONE);
        effects(&mut core);
        let update = edit(&Doc::with_client_id(5), "once");
        core.receive(A, update_message(&update), now());
        effects(&mut core);
        // B sends it again (a second tab, a reconnect's step 2): nothing to forward or store,
        // but B's save request must wait for the commit of A's copy.
        core.receive(B, update_message(&update), now());
        core.receive(B, Inbound::SaveRequest(4), now());
        assert_eq!(effects(&mut core), vec![]);
        core.commit_progress(1, None);
        let after = effects(&mut core);
        assert_eq!(after.last(), Some(&saved(B, 4)), "{after:?}");
    }

    #[test]
    fn a_deletion_closes_everyone_answers_waiters_and_counts_until_committed() {
        let mut core = core();
        core.join(A, Access::Write, Principal::ANYONE);
        effects(&mut core);
        core.receive(
            A,
            update_message(&edit(&Doc::with_client_id(5), "x")),
            now(),
        );
        core.receive(A, Inbound::SaveRequest(1), now());
        core.api_update(RequestId(1), edit(&Doc::with_client_id(6), "y"));
        effects(&mut core);
        core.delete(RequestId(2));
        let out = effects(&mut core);
        assert_eq!(out[0], Effect::Close(A, CloseReason::DocumentDeleted));
        assert!(out.contains(&Effect::Answer(RequestId(1), Err(ApiUpdateError::Deleted))));
        let renumber = out.iter().position(|e| *e == Effect::Renumber);
        let persist = out.iter().position(|e| {
            matches!(
                e,
                Effect::Persist {
                    write: Write::Delete { .. },
                    seq: Some(1)
                }
            )
        });
        assert!(renumber < persist && persist.is_some(), "{out:?}");
        // A's save request went with A; the deletion is not committed yet.
        assert!(!core.is_idle(), "an uncommitted deletion keeps the room");
        assert_eq!(text_of(&mut core), "");
        core.commit_progress(DELETION_SEQ, None);
        assert_eq!(
            effects(&mut core),
            vec![Effect::Answer(RequestId(2), Ok(()))],
            "no change report for the deletion itself"
        );
        assert!(core.is_idle());
    }

    #[test]
    fn awareness_expires_by_the_clock_it_is_given() {
        let mut core = core();
        core.join(A, Access::Write, Principal::ANYONE);
        effects(&mut core);
        let state = crdt::awareness::encode_awareness_update([AwarenessEntry {
            client_id: 7,
            clock: 1,
            state: Some("{}"),
        }]);
        core.receive(
            A,
            Inbound::Awareness {
                message: Bytes::from(encode_awareness(&state)),
                payload: Bytes::from(state),
            },
            now(),
        );
        effects(&mut core);
        assert_eq!(core.next_sweep(), Some(now() + AWARENESS_SWEEP));
        core.sweep_awareness(now() + Duration::from_secs(20));
        assert_eq!(effects(&mut core), vec![], "renewed 20 s ago: still fresh");
        core.sweep_awareness(now() + Duration::from_secs(31));
        let removal = effects(&mut core);
        assert_eq!(removal.len(), 1, "{removal:?}");
        assert_eq!(core.next_sweep(), None, "nothing left to expire");
    }

    /// An update yrs integrates in part before it refuses a block (its second block names a
    /// string item, not a type, as its parent): the first block ("ok") lands in the document.
    const PARTLY_APPLIED: [u8; 18] = [
        1, 2, 2, 0, 4, 1, 1, b't', 2, b'o', b'k', 4, 0, 1, 0, 1, b'x', 0,
    ];

    #[test]
    fn an_update_yrs_applies_in_part_is_refused_and_the_document_rebuilt() {
        let mut core = core();
        core.join(A, Access::Write, Principal::ANYONE);
        core.join(B, Access::Write, Principal::ANYONE);
        effects(&mut core);
        let hello = edit(&Doc::with_client_id(1), "hello");
        core.receive(A, update_message(&hello), now());
        core.commit_progress(1, None);
        effects(&mut core);
        core.receive(
            B,
            update_message(&Bytes::from_static(&PARTLY_APPLIED)),
            now(),
        );
        let out = effects(&mut core);
        assert_eq!(
            out,
            vec![
                Effect::Count("invalid_update"),
                Effect::Close(B, CloseReason::ProtocolError),
                Effect::Rebuild,
            ],
            "refused, not forwarded or stored, and a rebuild asked for"
        );
        assert_eq!(text_of(&mut core), "hellook", "yrs took the first block");
        let mut stored = empty_room();
        stored.doc.apply_update_v1(&hello).expect("applies");
        stored.next_seq = 2;
        core.rebuild(stored);
        assert_eq!(text_of(&mut core), "hello");
    }

    #[test]
    fn a_rebuild_takes_the_stored_document_and_the_uncommitted_changes() {
        let mut core = core();
        core.join(A, Access::Write, Principal::ANYONE);
        effects(&mut core);
        let client = Doc::with_client_id(5);
        let first = edit(&client, "committed ");
        let second = edit(&client, "pending");
        core.receive(A, update_message(&first), now());
        core.commit_progress(1, None);
        core.receive(A, update_message(&second), now());
        effects(&mut core);
        // The store holds the first update only.
        let mut stored = empty_room();
        stored.doc.apply_update_v1(&first).expect("applies");
        stored.next_seq = 2;
        core.rebuild(stored);
        assert_eq!(text_of(&mut core), "committed pending");
    }
}
