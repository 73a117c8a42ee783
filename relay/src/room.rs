//! One task per room: it owns the document and the awareness states, applies what connections
//! send, fans updates out, hands them to the store writer and acknowledges saves.
//!
//! Because a single task owns everything about a room, there are no locks on documents: the
//! connections talk to it through a bounded queue of [`RoomCommand`]s, and it talks back through
//! each connection's outbound queue, which never blocks the room (a connection that lets too much
//! pile up is disconnected instead).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use crdt::awareness::{AwarenessLimits, AwarenessTable, OUTDATED_AFTER, parse_awareness_update};
use crdt::doc::{Applied, RoomDoc};
use crdt::error::AwarenessError;
use crdt::protocol::{
    Message, MessageReader, encode_awareness, encode_permission_denied, encode_save_error,
    encode_saved, encode_sync_step1, encode_sync_step2, encode_update,
};
use crdt::store::{Store, StoredRoom, Write};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::Access;
use crate::persist::{CommitState, PersistJob, PersistMsg, PersistSender};
use crate::registry::RoomRegistry;
use crate::telemetry::Metrics;
use crate::webhook::{ChangeFlag, EventKind, Webhooks};

/// How often a room with awareness states looks for out-of-date ones.
const AWARENESS_SWEEP: Duration = Duration::from_secs(10);

/// The reason sent with a refused update from a read-only connection.
const READ_ONLY_REASON: &str = "read-only access: updates are not accepted";

/// Identifies one connection for the lifetime of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Why the relay closes a connection; each maps to a WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The relay is shutting down (1001).
    Shutdown,
    /// The client said nothing, not even a pong, for too long (1001).
    ClientTimeout,
    /// The client ended its long-polling session (1000).
    ClientClosed,
    /// The connection's token expired (4401): get a new token before reconnecting.
    TokenExpired,
    /// The document was deleted (4404): do not reconnect to it.
    DocumentDeleted,
    /// A malformed message, or an update or state vector that does not decode (1002).
    ProtocolError,
    /// A text frame (1003).
    TextFrame,
    /// A frame or message over the size limit (1009).
    TooBig,
    /// The relay failed internally, e.g. it could not load the room (1011).
    Internal,
    /// The connection fell too far behind (1013).
    SlowReader,
    /// An update would grow the document past its size limit (1009).
    DocumentTooLarge,
    /// An awareness message over a limit: too many entries, a state too large, or more client
    /// ids than one connection may hold (1008).
    AwarenessLimit,
}

impl CloseReason {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ClientClosed => 1000,
            CloseReason::Shutdown | CloseReason::ClientTimeout => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::TextFrame => 1003,
            CloseReason::AwarenessLimit => 1008,
            CloseReason::TooBig | CloseReason::DocumentTooLarge => 1009,
            CloseReason::Internal => 1011,
            CloseReason::SlowReader => 1013,
            CloseReason::TokenExpired => 4401,
            CloseReason::DocumentDeleted => 4404,
        }
    }

    /// The close frame's reason text, and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "shutdown",
            CloseReason::ClientTimeout => "client_timeout",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TextFrame => "text_frame",
            CloseReason::TooBig => "too_big",
            CloseReason::DocumentTooLarge => "document_too_large",
            CloseReason::AwarenessLimit => "awareness_limit",
            CloseReason::Internal => "internal_error",
            CloseReason::SlowReader => "slow_reader",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::DocumentDeleted => "document_deleted",
        }
    }
}

/// What a room sends to a connection's writer.
#[derive(Debug)]
pub enum Outbound {
    /// One binary frame holding exactly one message.
    Frame(Bytes),
    /// Close the connection with this reason.
    Close(CloseReason),
}

/// Milliseconds on a process-wide clock; never 0.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// What a connection has queued for its socket, shared by the room (which adds) and the
/// connection's writer (which takes away).
#[derive(Debug, Default)]
pub struct Backlog {
    queued: AtomicUsize,
    /// When the writer last wrote something, or when work arrived at an empty queue
    /// ([`clock_ms`]).
    last_progress_ms: AtomicU64,
}

impl Backlog {
    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Records `bytes` queued.
    pub fn add(&self, bytes: usize) {
        if self.queued.fetch_add(bytes, Ordering::Relaxed) == 0 {
            self.last_progress_ms.store(clock_ms(), Ordering::Relaxed);
        }
    }

    /// Records `bytes` written to the socket.
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
        self.last_progress_ms.store(clock_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the writer last made progress with a non-empty queue.
    fn stalled_ms(&self) -> u64 {
        clock_ms().saturating_sub(self.last_progress_ms.load(Ordering::Relaxed))
    }
}

/// The room's handle on a connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// The connection's outbound queue. Unbounded so the room never waits on a client; its size
    /// is bounded by the backlog checks instead.
    pub tx: mpsc::UnboundedSender<Outbound>,
    /// What is queued and how the writer is doing.
    pub backlog: Arc<Backlog>,
    /// Cancelled to drop a connection that fell behind, even in the middle of a blocked write.
    pub kick: CancellationToken,
}

/// A request to a room's task.
#[derive(Debug)]
pub enum RoomCommand {
    /// A connection joins.
    Join {
        /// The connection.
        conn: ConnId,
        /// What its token allows.
        access: Access,
        /// How to reach it.
        handle: ConnHandle,
    },
    /// A binary frame from a connection, holding one or more messages.
    Frame {
        /// The sender.
        conn: ConnId,
        /// The frame.
        frame: Bytes,
    },
    /// A connection is gone.
    Leave {
        /// The connection.
        conn: ConnId,
    },
    /// The HTTP API asks for the document: its whole state as one update (v1).
    Export {
        /// Where the state goes.
        reply: oneshot::Sender<Arc<[u8]>>,
    },
    /// The HTTP API asks for the document's root types as JSON.
    ExportJson {
        /// Where the JSON goes.
        reply: oneshot::Sender<serde_json::Value>,
    },
    /// The HTTP API applies an update. Answered once it (and everything before it) is
    /// committed, or at once with the reason it was refused.
    ApplyUpdate {
        /// The update (v1).
        update: Bytes,
        /// The outcome.
        reply: oneshot::Sender<Result<(), ApiUpdateError>>,
    },
    /// The HTTP API deletes the document: its connections are closed with 4404 and its storage
    /// removed; answered once the deletion is committed.
    Delete {
        /// Answered when done.
        reply: oneshot::Sender<()>,
    },
}

impl RoomCommand {
    /// Whether the registry counted this command as pending when it was sent (everything but a
    /// connection's frames and its leaving, which only come from joined connections).
    fn was_counted(&self) -> bool {
        !matches!(self, RoomCommand::Frame { .. } | RoomCommand::Leave { .. })
    }
}

/// Limits and timings that apply to every room.
#[derive(Debug, Clone)]
pub struct RoomSettings {
    /// Bytes a connection may have queued while its writer makes no progress for
    /// `slow_reader_grace`; four times as much in any case.
    pub outbound_queue_bytes: usize,
    /// How long a connection over its queue limit may go without writing anything.
    pub slow_reader_grace: Duration,
    /// Log entries that trigger a compaction.
    pub compact_entries: u64,
    /// Log bytes that trigger a compaction (raised to the snapshot size).
    pub compact_bytes: u64,
    /// How long an empty room stays loaded.
    pub idle_unload: Duration,
    /// Largest document, in bytes of stored updates (snapshot and log).
    pub max_doc_bytes: u64,
    /// What a room's awareness may hold.
    pub awareness: AwarenessLimits,
}

/// Why the HTTP API's update was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiUpdateError {
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

/// What every room shares.
pub struct RoomContext {
    /// The store, for loading.
    pub store: Arc<Store>,
    /// The store writer's queue.
    pub persist: PersistSender,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Limits and timings.
    pub settings: RoomSettings,
    /// Cancelled when the relay shuts down: empty rooms then unload without delay.
    pub shutdown: CancellationToken,
    /// Where document events go, with `--webhook-url`.
    pub webhooks: Option<Webhooks>,
}

/// What the registry can see of a running room.
#[derive(Debug, Default)]
pub struct RoomStatus {
    /// Updates applied but not yet committed.
    pub unsaved_updates: AtomicU64,
    /// Connections joined now.
    pub connections: AtomicUsize,
}

/// A save request waiting for its commit.
#[derive(Debug)]
struct PendingSave {
    request_id: u64,
    /// The request is answered once this sequence number is committed.
    seq: u64,
    /// Whether a save error was already sent for it.
    error_sent: bool,
}

/// A connection as the room sees it.
#[derive(Debug)]
struct ConnState {
    handle: ConnHandle,
    /// Read-only connections get everything but may not change the document.
    access: Access,
    /// Whether an update from it was refused (read-only access).
    refused_updates: bool,
    /// Sequence number of the last update this connection contributed.
    last_seq: u64,
    /// Save requests waiting for a commit, in request order.
    saves: VecDeque<PendingSave>,
}

/// How many times the queue limit a connection may hold even while it makes progress.
const HARD_LIMIT_FACTOR: usize = 4;

/// Everything [`Delivery::deliver`] needs, split from the connection map so both can be
/// borrowed.
struct Delivery<'a> {
    limit: usize,
    grace_ms: u64,
    metrics: &'a Metrics,
    /// Set when a queue went over the limit: the room then yields, so writers get to run.
    lagging: &'a AtomicBool,
}

impl Delivery<'_> {
    /// Queues a frame for a connection. Returns false if the connection has fallen too far
    /// behind and must be dropped: its queue is over the limit and its writer has not written
    /// anything for the grace period (the client stopped reading), or its queue is over four
    /// times the limit. A slow but live client (a big document over a slow link) keeps making
    /// progress and stays; a frame is always accepted by an empty queue, so a single large
    /// update reaches everyone who keeps up.
    fn deliver(&self, handle: &ConnHandle, frame: Bytes) -> bool {
        let len = frame.len();
        let backlog = &handle.backlog;
        let queued = backlog.queued();
        if queued > 0 && queued + len > self.limit {
            let stalled = backlog.stalled_ms() > self.grace_ms;
            if stalled || queued + len > self.limit * HARD_LIMIT_FACTOR {
                self.metrics.error("outbound_queue_full");
                return false;
            }
            self.lagging.store(true, Ordering::Relaxed);
        }
        backlog.add(len);
        // A closed queue means the connection is already going away; its Leave will follow.
        let _ = handle.tx.send(Outbound::Frame(frame));
        true
    }
}

/// The state of one loaded room.
pub struct Room {
    name: Arc<str>,
    ctx: Arc<RoomContext>,
    doc: RoomDoc,
    awareness: AwarenessTable<ConnId>,
    conns: HashMap<ConnId, ConnState>,
    /// Sequence number for the next update.
    next_seq: u64,
    /// Every update up to this one is committed.
    committed_seq: u64,
    log_entries: u64,
    log_bytes: u64,
    snapshot_bytes: u64,
    /// The sync step 2 answering an empty state vector, cached between changes: a crowd of new
    /// joiners shares one encoding and one buffer.
    full_step2: Option<Bytes>,
    commit_notify: Arc<watch::Sender<CommitState>>,
    /// The room's view of `commit_notify`.
    commits: watch::Receiver<CommitState>,
    /// Updates applied through the HTTP API, answered once this sequence number is committed.
    api_waiters: VecDeque<(u64, oneshot::Sender<Result<(), ApiUpdateError>>)>,
    /// Set when the room last became empty.
    empty_since: Option<Instant>,
    /// Set by a delivery that left a queue over its limit.
    lagging: AtomicBool,
    /// When to look for out-of-date awareness states; `None` while there are none.
    awareness_sweep_at: Option<Instant>,
    /// Raised while a webhook change report is queued for this room.
    change_flag: ChangeFlag,
    /// Nothing of the room was stored yet: its first commit is reported as a creation.
    created_pending: bool,
    /// The first sequence number of an update in the current numbering: 1, or 2 after a
    /// deletion (whose own commit is number 1 and is not a change to report).
    first_update_seq: u64,
    status: Arc<RoomStatus>,
}

impl Room {
    fn new(
        name: Arc<str>,
        ctx: Arc<RoomContext>,
        stored: StoredRoom,
        status: Arc<RoomStatus>,
    ) -> Self {
        let committed = stored.next_seq - 1;
        let awareness_limits = ctx.settings.awareness;
        let (notify, commits) = watch::channel(CommitState {
            committed_seq: committed,
            failure: None,
        });
        Room {
            name,
            ctx,
            doc: stored.doc,
            awareness: AwarenessTable::with_limits(awareness_limits),
            conns: HashMap::new(),
            next_seq: stored.next_seq,
            committed_seq: committed,
            log_entries: stored.log_entries,
            log_bytes: stored.log_bytes,
            snapshot_bytes: stored.snapshot_bytes,
            full_step2: None,
            commit_notify: Arc::new(notify),
            commits,
            api_waiters: VecDeque::new(),
            empty_since: Some(Instant::now()),
            lagging: AtomicBool::new(false),
            awareness_sweep_at: None,
            change_flag: ChangeFlag::default(),
            created_pending: stored.next_seq == 1 && stored.snapshot_bytes == 0,
            first_update_seq: 1,
            status,
        }
    }

    fn delivery(&self) -> Delivery<'_> {
        Delivery {
            limit: self.ctx.settings.outbound_queue_bytes,
            grace_ms: self.ctx.settings.slow_reader_grace.as_millis() as u64,
            metrics: &self.ctx.metrics,
            lagging: &self.lagging,
        }
    }

    /// When the room may unload: it is empty and everything it holds is committed.
    fn unload_deadline(&self) -> Option<Instant> {
        let since = self.empty_since?;
        if self.committed_seq + 1 != self.next_seq {
            return None;
        }
        if self.ctx.shutdown.is_cancelled() {
            return Some(Instant::now());
        }
        Some(since + self.ctx.settings.idle_unload)
    }

    fn join(&mut self, conn: ConnId, access: Access, handle: ConnHandle) {
        tracing::debug!(%conn, "connection joined");
        let delivery = self.delivery();
        // Greeting: sync step 1, then the awareness states, each in its own frame.
        let mut ok = delivery.deliver(
            &handle,
            encode_sync_step1(&self.doc.state_vector_v1()).into(),
        );
        if let Some(states) = self.awareness.encode_all() {
            ok &= delivery.deliver(&handle, encode_awareness(&states).into());
        }
        self.conns.insert(
            conn,
            ConnState {
                handle,
                access,
                refused_updates: false,
                // The greeting's state vector covers everything applied so far, so the client
                // leaves that out of its sync step 2 even if it holds the same edits (after a
                // reconnect, say): its save requests must wait for their commit too.
                last_seq: self.next_seq - 1,
                saves: VecDeque::new(),
            },
        );
        self.empty_since = None;
        self.status
            .connections
            .store(self.conns.len(), Ordering::Relaxed);
        if !ok {
            self.remove_conns(vec![(conn, Some(CloseReason::SlowReader))]);
        }
    }

    async fn on_frame(&mut self, conn: ConnId, frame: Bytes) {
        for item in MessageReader::new(&frame) {
            if !self.conns.contains_key(&conn) {
                // Dropped (for an earlier message, or as a slow reader): ignore the rest.
                return;
            }
            let (message, range) = match item {
                Ok(parsed) => parsed,
                Err(error) => {
                    tracing::warn!(%conn, %error, "malformed message; closing the connection");
                    self.ctx.metrics.error("malformed_message");
                    self.remove_conns(vec![(conn, Some(CloseReason::ProtocolError))]);
                    return;
                }
            };
            match message {
                Message::SyncStep1(state_vector) => self.on_sync_step1(conn, state_vector),
                Message::SyncStep2(update) => self.on_update(conn, &frame, update, None).await,
                Message::Update(update) => {
                    self.on_update(conn, &frame, update, Some(frame.slice(range)))
                        .await
                }
                Message::Awareness(payload) => self.on_awareness(conn, payload, frame.slice(range)),
                Message::QueryAwareness => {
                    let states = self.awareness.encode_all().unwrap_or_else(|| vec![0]);
                    self.send(conn, encode_awareness(&states).into());
                }
                Message::SaveRequest(request_id) => self.on_save_request(conn, request_id),
                Message::AuthDenied(_) | Message::Saved(_) | Message::SaveError(..) => {
                    tracing::debug!(%conn, "ignoring a relay-to-client message sent by a client");
                }
                Message::Unknown(tag) => {
                    tracing::debug!(%conn, tag, "ignoring a message of unknown type");
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
                    self.ctx.metrics.error("invalid_state_vector");
                    self.remove_conns(vec![(conn, Some(CloseReason::ProtocolError))]);
                    return;
                }
            }
        };
        self.send(conn, reply);
    }

    /// Applies an update from `conn`. `as_sent` is the original update message when it can be
    /// forwarded as is (a sync step 2 is re-encoded as an update).
    async fn on_update(
        &mut self,
        conn: ConnId,
        frame: &Bytes,
        update: &[u8],
        as_sent: Option<Bytes>,
    ) {
        let read_only = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.access < Access::Write);
        if read_only {
            // Every client answers the greeting with a sync step 2 (with its whole delete set):
            // only refuse one that would change something.
            if self.doc.would_change(update).unwrap_or(true) {
                tracing::debug!(%conn, "refused an update from a read-only connection");
                self.ctx.metrics.error("read_only_update");
                if let Some(state) = self.conns.get_mut(&conn) {
                    state.refused_updates = true;
                }
                self.send(conn, encode_permission_denied(READ_ONLY_REASON).into());
            } else {
                self.depends_on_everything_applied(conn);
            }
            return;
        }
        if self.would_exceed_size(update.len()) {
            tracing::warn!(%conn, "update would grow the document past --max-doc-bytes; closing");
            self.ctx.metrics.error("document_too_large");
            self.remove_conns(vec![(conn, Some(CloseReason::DocumentTooLarge))]);
            return;
        }
        match self.doc.apply_update_v1(update) {
            Err(error) => {
                tracing::warn!(%conn, %error, "update does not apply; closing the connection");
                self.ctx.metrics.error("invalid_update");
                self.remove_conns(vec![(conn, Some(CloseReason::ProtocolError))]);
            }
            Ok(Applied::Unchanged) => self.depends_on_everything_applied(conn),
            Ok(Applied::Changed) => {
                self.full_step2 = None;
                self.ctx.metrics.updates_in.inc();
                self.ctx.metrics.update_bytes_in.inc_by(update.len() as u64);
                let (message, payload) = match as_sent {
                    Some(message) => (message, frame.slice_ref(update)),
                    None => {
                        let message = Bytes::from(encode_update(update));
                        let payload = message.slice(message.len() - update.len()..);
                        (message, payload)
                    }
                };
                // Fan out at once, without waiting for the disk.
                let delivery = self.delivery();
                let mut slow = Vec::new();
                for (&id, state) in &self.conns {
                    if id != conn && !delivery.deliver(&state.handle, message.clone()) {
                        slow.push((id, Some(CloseReason::SlowReader)));
                    }
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                // No echo to the sender: it has the update, and no stock client counts an echo
                // as confirmation (`@y/websocket` 4.0.0-3 was checked); save requests do that.
                if let Some(state) = self.conns.get_mut(&conn) {
                    state.last_seq = seq;
                }
                self.log_entries += 1;
                self.log_bytes += payload.len() as u64;
                self.status.unsaved_updates.fetch_add(1, Ordering::Relaxed);
                self.persist(Write::Append {
                    room: self.name.clone(),
                    seq,
                    update: payload,
                })
                .await;
                self.remove_conns(slow);
                self.maybe_compact().await;
            }
        }
    }

    /// Records that `conn` sent an update the room already had. Its content came in with some
    /// update the room applied before (from this connection, another one, or the API), which
    /// may still be waiting for its commit: the connection's next save request must wait for
    /// everything applied so far, or a reconnecting client re-sending an uncommitted update in
    /// its sync step 2 would be told *saved* before the update is on disk.
    fn depends_on_everything_applied(&mut self, conn: ConnId) {
        let applied = self.next_seq - 1;
        if let Some(state) = self.conns.get_mut(&conn) {
            state.last_seq = state.last_seq.max(applied);
        }
    }

    fn on_awareness(&mut self, conn: ConnId, payload: &[u8], message: Bytes) {
        let limits = *self.awareness.limits();
        let applied = parse_awareness_update(payload, &limits).and_then(|entries| {
            self.awareness
                .apply(&entries, conn, std::time::Instant::now())
        });
        let changes = match applied {
            Ok(changes) => changes,
            Err(AwarenessError::Malformed(error)) => {
                tracing::warn!(%conn, %error, "bad awareness update; closing the connection");
                self.ctx.metrics.error("invalid_awareness");
                self.remove_conns(vec![(conn, Some(CloseReason::ProtocolError))]);
                return;
            }
            Err(error) => {
                tracing::warn!(%conn, %error, "awareness over a limit; closing the connection");
                self.ctx.metrics.error("awareness_limit");
                self.remove_conns(vec![(conn, Some(CloseReason::AwarenessLimit))]);
                return;
            }
        };
        if changes.ignored > 0 {
            tracing::debug!(%conn, ignored = changes.ignored, "awareness entries not taken");
            self.ctx.metrics.error("awareness_ignored");
        }
        if self.awareness_sweep_at.is_none() && !self.awareness.is_empty() {
            self.awareness_sweep_at = Some(Instant::now() + AWARENESS_SWEEP);
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
            let entries = parse_awareness_update(payload, &limits).unwrap_or_default();
            let changed: std::collections::HashSet<u64> = (changes.added.iter())
                .chain(&changes.updated)
                .chain(&changes.removed)
                .copied()
                .collect();
            let taken: Vec<_> = entries
                .into_iter()
                .filter(|e| changed.contains(&e.client_id))
                .collect();
            encode_awareness(&crdt::awareness::encode_awareness_update(taken)).into()
        };
        self.broadcast(frame, None);
    }

    fn on_save_request(&mut self, conn: ConnId, request_id: u64) {
        let committed = self.committed_seq;
        let failure = self.commit_notify.borrow().failure.clone();
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        let reply = if state.refused_updates {
            // Something it sent was refused, so "everything sent before this" is not saved and
            // never will be: say so instead of "saved".
            Some(encode_save_error(request_id, READ_ONLY_REASON))
        } else if state.last_seq <= committed {
            Some(encode_saved(request_id))
        } else {
            let error = failure
                .as_ref()
                .map(|f| encode_save_error(request_id, &f.reason));
            state.saves.push_back(PendingSave {
                request_id,
                seq: state.last_seq,
                error_sent: error.is_some(),
            });
            error
        };
        if let Some(reply) = reply {
            self.send(conn, reply.into());
        }
    }

    /// Reacts to the store writer's progress: answers save requests that are now covered; on a
    /// failed commit, tells each waiting request once.
    fn on_commit(&mut self, state: CommitState) {
        if state.committed_seq > self.committed_seq
            && state.committed_seq >= self.first_update_seq
            && let Some(webhooks) = &self.ctx.webhooks
        {
            if std::mem::take(&mut self.created_pending) {
                webhooks.notify(EventKind::Created, &self.name);
            }
            webhooks.changed(&self.name, &self.change_flag);
        }
        self.committed_seq = state.committed_seq;
        let unsaved = (self.next_seq - 1).saturating_sub(self.committed_seq);
        self.status
            .unsaved_updates
            .store(unsaved, Ordering::Relaxed);
        let delivery = Delivery {
            limit: self.ctx.settings.outbound_queue_bytes,
            grace_ms: self.ctx.settings.slow_reader_grace.as_millis() as u64,
            metrics: &self.ctx.metrics,
            lagging: &self.lagging,
        };
        let mut slow = Vec::new();
        for (&id, conn) in self.conns.iter_mut() {
            let mut ok = true;
            while let Some(save) = conn.saves.front() {
                if save.seq > self.committed_seq {
                    break;
                }
                let save = conn.saves.pop_front().expect("front exists");
                ok &= delivery.deliver(&conn.handle, encode_saved(save.request_id).into());
            }
            if let Some(failure) = &state.failure {
                for save in conn.saves.iter_mut().filter(|s| !s.error_sent) {
                    save.error_sent = true;
                    ok &= delivery.deliver(
                        &conn.handle,
                        encode_save_error(save.request_id, &failure.reason).into(),
                    );
                }
            }
            if !ok {
                slow.push((id, Some(CloseReason::SlowReader)));
            }
        }
        while self
            .api_waiters
            .front()
            .is_some_and(|(seq, _)| *seq <= self.committed_seq)
        {
            let (_, reply) = self.api_waiters.pop_front().expect("front exists");
            let _ = reply.send(Ok(()));
        }
        self.remove_conns(slow);
    }

    /// Applies an update from the HTTP API: like one from a connection, but every connection
    /// receives it, and the answer waits for the commit that holds it.
    async fn on_api_update(
        &mut self,
        update: Bytes,
        reply: oneshot::Sender<Result<(), ApiUpdateError>>,
    ) {
        if self.would_exceed_size(update.len()) {
            let _ = reply.send(Err(ApiUpdateError::TooLarge));
            return;
        }
        match self.doc.apply_update_v1(&update) {
            Err(error) => {
                let _ = reply.send(Err(ApiUpdateError::Invalid(error.to_string())));
            }
            Ok(Applied::Unchanged) => self.wait_for_commit(self.next_seq - 1, reply),
            Ok(Applied::Changed) => {
                self.full_step2 = None;
                self.ctx.metrics.updates_in.inc();
                self.ctx.metrics.update_bytes_in.inc_by(update.len() as u64);
                let message = Bytes::from(encode_update(&update));
                self.broadcast(message, None);
                let seq = self.next_seq;
                self.next_seq += 1;
                self.log_entries += 1;
                self.log_bytes += update.len() as u64;
                self.status.unsaved_updates.fetch_add(1, Ordering::Relaxed);
                self.persist(Write::Append {
                    room: self.name.clone(),
                    seq,
                    update,
                })
                .await;
                self.wait_for_commit(seq, reply);
                self.maybe_compact().await;
            }
        }
    }

    /// Whether `bytes` more would take the document past `--max-doc-bytes`, counted as the
    /// stored snapshot plus every update since (an overestimate until the next compaction).
    fn would_exceed_size(&self, bytes: usize) -> bool {
        self.snapshot_bytes + self.log_bytes + bytes as u64 > self.ctx.settings.max_doc_bytes
    }

    fn wait_for_commit(&mut self, seq: u64, reply: oneshot::Sender<Result<(), ApiUpdateError>>) {
        if seq <= self.committed_seq {
            let _ = reply.send(Ok(()));
        } else {
            self.api_waiters.push_back((seq, reply));
        }
    }

    /// Removes awareness states their clients stopped renewing (a client that vanished on a
    /// connection still open, or a state another client sent back after its owner left) and
    /// announces their removal, as y-protocols clients do after 30 seconds.
    fn sweep_awareness(&mut self) {
        if let Some(removal) = self
            .awareness
            .remove_outdated(std::time::Instant::now(), OUTDATED_AFTER)
        {
            tracing::debug!("removing out-of-date awareness states");
            self.broadcast(encode_awareness(&removal).into(), None);
        }
        self.awareness_sweep_at =
            (!self.awareness.is_empty()).then(|| Instant::now() + AWARENESS_SWEEP);
    }

    /// Deletes the document: closes every connection with 4404, forgets the document and its
    /// awareness, and removes its storage; `reply` is answered once that is committed. The room
    /// then goes on as a new, empty document.
    async fn delete(&mut self, reply: oneshot::Sender<()>) {
        tracing::info!(connections = self.conns.len(), "deleting the document");
        let conns: Vec<_> = self
            .conns
            .keys()
            .map(|&id| (id, Some(CloseReason::DocumentDeleted)))
            .collect();
        self.remove_conns(conns);
        self.awareness = AwarenessTable::with_limits(self.ctx.settings.awareness);
        self.doc = RoomDoc::new();
        self.full_step2 = None;
        self.log_entries = 0;
        self.log_bytes = 0;
        self.snapshot_bytes = 0;
        // Waiting API updates were committed or are about to be, and are deleted right after.
        for (_, waiter) in self.api_waiters.drain(..) {
            let _ = waiter.send(Err(ApiUpdateError::Deleted));
        }
        // A new numbering and a new commit watch: writes queued for the old document still
        // report to the old one. The deletion itself is number 1 of the new numbering, so the
        // room counts it as uncommitted (and cannot unload, leaving a joiner to load the old
        // document from the store) until it is on disk.
        const DELETION_SEQ: u64 = 1;
        self.next_seq = DELETION_SEQ + 1;
        self.first_update_seq = DELETION_SEQ + 1;
        self.committed_seq = 0;
        let (notify, commits) = watch::channel(CommitState::default());
        self.commit_notify = Arc::new(notify);
        self.commits = commits;
        self.status.unsaved_updates.store(1, Ordering::Relaxed);
        if let Some(webhooks) = &self.ctx.webhooks {
            webhooks.notify(EventKind::Deleted, &self.name);
        }
        self.created_pending = true;
        // A change report queued for the old document is dropped with it; the new one starts
        // with a fresh flag, so its first change is reported.
        self.change_flag = ChangeFlag::default();
        let job = PersistJob {
            write: Write::Delete {
                room: self.name.clone(),
            },
            seq: Some(DELETION_SEQ),
            notify: self.commit_notify.clone(),
            done: Some(reply),
        };
        if self.ctx.persist.send(PersistMsg::Job(job)).await.is_err() {
            tracing::error!("the store writer has stopped; the deletion is not saved");
        }
    }

    async fn maybe_compact(&mut self) {
        let settings = &self.ctx.settings;
        // A compaction rewrites the whole snapshot, so it must be paid for by log bytes: past the
        // byte threshold (at least the snapshot's size), or past the entry threshold once the
        // log holds at least half the snapshot's size. Many tiny updates to a large document
        // (typing) otherwise rewrote the snapshot every 1,000 keystrokes: replaying the
        // automerge-paper trace wrote 26 bytes per byte of updates, half of them snapshots.
        let byte_threshold = settings.compact_bytes.max(self.snapshot_bytes);
        let by_bytes = self.log_bytes >= byte_threshold;
        let by_entries = self.log_entries >= settings.compact_entries
            && self.log_bytes >= self.snapshot_bytes / 2;
        if !by_bytes && !by_entries {
            return;
        }
        let Some(state) = self.doc.try_snapshot_v1() else {
            // The log still holds every update: keep it, and try again after more updates.
            tracing::error!("cannot encode a snapshot; keeping the log as it is");
            self.ctx.metrics.error("snapshot_failed");
            self.log_entries = 0;
            self.log_bytes = 0;
            return;
        };
        let through_seq = self.next_seq - 1;
        tracing::info!(
            through_seq,
            log_entries = self.log_entries,
            log_bytes = self.log_bytes,
            snapshot_bytes = state.len(),
            "compacting"
        );
        self.snapshot_bytes = state.len() as u64;
        self.log_entries = 0;
        self.log_bytes = 0;
        self.persist(Write::Snapshot {
            room: self.name.clone(),
            through_seq,
            state,
        })
        .await;
    }

    async fn persist(&self, write: Write) {
        let seq = match &write {
            Write::Append { seq, .. } => Some(*seq),
            Write::Snapshot { .. } | Write::Delete { .. } => None,
        };
        let job = PersistJob {
            write,
            seq,
            notify: self.commit_notify.clone(),
            done: None,
        };
        if self.ctx.persist.send(PersistMsg::Job(job)).await.is_err() {
            // The writer only stops after every room is gone, so this is a bug.
            tracing::error!("the store writer has stopped; this update is not saved");
            self.ctx.metrics.error("store_writer_gone");
        }
    }

    /// Sends a frame to one connection, dropping it if it has fallen behind.
    fn send(&mut self, conn: ConnId, frame: Bytes) {
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        if !self.delivery().deliver(&state.handle, frame) {
            self.remove_conns(vec![(conn, Some(CloseReason::SlowReader))]);
        }
    }

    /// Sends a frame to every connection but `except`, dropping those that have fallen behind.
    fn broadcast(&mut self, frame: Bytes, except: Option<ConnId>) {
        let delivery = self.delivery();
        let slow: Vec<_> = self
            .conns
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter(|(_, state)| !delivery.deliver(&state.handle, frame.clone()))
            .map(|(id, _)| (*id, Some(CloseReason::SlowReader)))
            .collect();
        self.remove_conns(slow);
    }

    /// Removes connections, closing them with the given reason (or not at all, for a connection
    /// that left by itself), and announces the removal of the awareness states they introduced.
    /// Removal announcements can reveal more slow readers; those are removed in turn.
    fn remove_conns(&mut self, mut work: Vec<(ConnId, Option<CloseReason>)>) {
        while let Some((conn, reason)) = work.pop() {
            let Some(state) = self.conns.remove(&conn) else {
                continue;
            };
            match reason {
                Some(CloseReason::SlowReader) => {
                    // Counted in the metrics by the connection when it ends.
                    tracing::warn!(%conn, "connection fell behind; disconnecting it");
                    state.handle.kick.cancel();
                }
                Some(reason) => {
                    let _ = state.handle.tx.send(Outbound::Close(reason));
                }
                None => tracing::debug!(%conn, "connection left"),
            }
            if let Some(removal) = self.awareness.remove_owner(conn) {
                let frame = Bytes::from(encode_awareness(&removal));
                let delivery = self.delivery();
                for (&id, other) in &self.conns {
                    if !delivery.deliver(&other.handle, frame.clone()) {
                        work.push((id, Some(CloseReason::SlowReader)));
                    }
                }
            }
        }
        self.status
            .connections
            .store(self.conns.len(), Ordering::Relaxed);
        if self.conns.is_empty() && self.empty_since.is_none() {
            self.empty_since = Some(Instant::now());
        }
    }
}

/// Runs a room until it unloads: loads it, serves its commands and commit notifications, and
/// unloads it once it has been empty for the idle delay with everything committed.
pub(crate) async fn run_room(
    name: Arc<str>,
    mut rx: mpsc::Receiver<RoomCommand>,
    ctx: Arc<RoomContext>,
    registry: Arc<RoomRegistry>,
    entry_id: u64,
    pending_joins: Arc<AtomicUsize>,
    status: Arc<RoomStatus>,
) {
    let span = tracing::info_span!("room", room = %name);
    async move {
        let store = ctx.store.clone();
        let load_name = name.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load(&load_name)).await;
        let stored = match loaded {
            Ok(Ok(stored)) => stored,
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot load the room; refusing its connections");
                ctx.metrics.error("room_load_failed");
                refuse_all(&registry, &name, entry_id, rx).await;
                return;
            }
            Err(error) => {
                tracing::error!(%error, "room loading panicked; refusing its connections");
                ctx.metrics.error("room_load_failed");
                refuse_all(&registry, &name, entry_id, rx).await;
                return;
            }
        };
        tracing::info!(
            next_seq = stored.next_seq,
            log_entries = stored.log_entries,
            snapshot_bytes = stored.snapshot_bytes,
            "room loaded"
        );
        ctx.metrics.rooms_loaded.inc();
        let mut room = Room::new(name.clone(), ctx.clone(), stored, status);
        // If anything in the room panics, its task ends: take it out of the registry, so the next
        // connection loads the document again instead of finding a dead queue forever.
        let mut unregister = UnregisterOnPanic {
            registry: &registry,
            name: &name,
            entry_id,
            armed: true,
        };
        loop {
            let deadline = room.unload_deadline();
            tokio::select! {
                command = rx.recv() => {
                    if command.as_ref().is_some_and(RoomCommand::was_counted) {
                        pending_joins.fetch_sub(1, Ordering::AcqRel);
                    }
                    match command {
                    Some(RoomCommand::Join { conn, access, handle }) => room.join(conn, access, handle),
                    Some(RoomCommand::Frame { conn, frame }) => {
                        room.on_frame(conn, frame).await;
                        if room.lagging.swap(false, Ordering::Relaxed) {
                            // Some writer has a backlog: let it run before producing more, so
                            // scheduling delays are not mistaken for a slow client.
                            tokio::task::yield_now().await;
                        }
                    }
                    Some(RoomCommand::Leave { conn }) => room.remove_conns(vec![(conn, None)]),
                    Some(RoomCommand::Export { reply }) => {
                        let _ = reply.send(room.doc.encode_state_v1());
                    }
                    Some(RoomCommand::ExportJson { reply }) => {
                        let _ = reply.send(room.doc.to_json());
                    }
                    Some(RoomCommand::ApplyUpdate { update, reply }) => {
                        room.on_api_update(update, reply).await;
                    }
                    Some(RoomCommand::Delete { reply }) => room.delete(reply).await,
                    None => break,
                    }
                }
                changed = room.commits.changed() => {
                    if changed.is_ok() {
                        let state = room.commits.borrow_and_update().clone();
                        room.on_commit(state);
                    }
                }
                () = sleep_until_opt(room.awareness_sweep_at), if room.awareness_sweep_at.is_some() => {
                    room.sweep_awareness();
                }
                () = sleep_until_opt(deadline), if deadline.is_some() => {
                    if registry.remove_if_idle(&name, entry_id, &pending_joins) {
                        rx.close();
                        break;
                    }
                    // A join is on its way; it will arrive through the queue.
                    room.empty_since = Some(Instant::now());
                }
                () = ctx.shutdown.cancelled(), if !ctx.shutdown.is_cancelled() => {}
            }
        }
        unregister.armed = false;
        ctx.metrics.rooms_loaded.dec();
        tracing::info!("room unloaded");
    }
    .instrument(span)
    .await
}

/// Removes a room's registry entry when its task unwinds from a panic.
struct UnregisterOnPanic<'a> {
    registry: &'a RoomRegistry,
    name: &'a str,
    entry_id: u64,
    armed: bool,
}

impl Drop for UnregisterOnPanic<'_> {
    fn drop(&mut self) {
        if self.armed {
            tracing::error!(room = %self.name, "the room's task panicked; it will be loaded again");
            self.registry.remove(self.name, self.entry_id);
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// After a failed load: leave the registry, then close every connection that tried to join.
async fn refuse_all(
    registry: &RoomRegistry,
    name: &str,
    entry_id: u64,
    mut rx: mpsc::Receiver<RoomCommand>,
) {
    registry.remove(name, entry_id);
    rx.close();
    while let Some(command) = rx.recv().await {
        if let RoomCommand::Join { handle, .. } = command {
            // Counted in the metrics by the connection when it ends.
            let _ = handle.tx.send(Outbound::Close(CloseReason::Internal));
        }
    }
}
