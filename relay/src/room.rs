//! One task per room: it loads the document, feeds its [`core::RoomCore`] with what connections,
//! the API and the store writer send, and carries out the effects the core answers with
//! (queueing messages, closing connections, handing writes to the store writer, answering
//! requests). All the room's logic is in the core; this is only its loop.
//!
//! Because a single task owns everything about a room, there are no locks on documents: the
//! connections talk to it through a bounded queue of [`RoomCommand`]s, and it talks back through
//! each connection's outbound queue, which never blocks the room (a connection that lets too much
//! pile up is disconnected instead).

pub(crate) mod core;
pub(crate) mod inbound;
pub(crate) mod ledger;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use crdt::store::{Store, StoredRoom};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::core::{ApiUpdateError, CoreSettings, Effect, RoomCore};
use self::inbound::Inbound;
use self::ledger::RequestId;
use crate::auth::{Access, Principal};
use crate::clock::sleep_until_opt;
use crate::close::CloseReason;
use crate::cluster::Cluster;
use crate::cluster::load::LoadError;
use crate::cluster::log::{LogJob, OwnerLog};
use crate::config::Config;
use crate::outbound::{ConnHandle, Delivery};
use crate::persist::{CommitState, PersistJob, PersistMsg, PersistSender};
use crate::telemetry::Metrics;
use crate::webhook::{ChangeFlag, Webhooks};

/// Identifies one connection for the lifetime of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A request to a room's task.
#[derive(Debug)]
pub(crate) enum RoomCommand {
    /// A connection joins.
    Join {
        /// The connection.
        conn: ConnId,
        /// What its token allows.
        access: Access,
        /// Whom it speaks for.
        principal: Principal,
        /// How to reach it.
        handle: ConnHandle,
    },
    /// Messages from a connection, decoded from one frame.
    Messages {
        /// The sender.
        conn: ConnId,
        /// The messages, in order.
        messages: Vec<Inbound>,
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
    /// connection's messages and its leaving, which only come from joined connections).
    pub(crate) fn was_counted(&self) -> bool {
        !matches!(
            self,
            RoomCommand::Messages { .. } | RoomCommand::Leave { .. }
        )
    }
}

/// Limits and timings that apply to every room.
#[derive(Debug, Clone)]
pub(crate) struct RoomSettings {
    /// Bytes a connection may have queued while its writer makes no progress for
    /// `slow_reader_grace`; four times as much in any case.
    pub(crate) outbound_queue_bytes: usize,
    /// How long a connection over its queue limit may go without writing anything.
    pub(crate) slow_reader_grace: Duration,
    /// How long an empty room stays loaded.
    pub(crate) idle_unload: Duration,
    /// The limits the room's logic applies.
    pub(crate) core: CoreSettings,
}

impl RoomSettings {
    /// The rooms' settings, as `config` gives them.
    pub(crate) fn from_config(config: &Config) -> Self {
        RoomSettings {
            outbound_queue_bytes: config.outbound_queue_bytes,
            slow_reader_grace: config.slow_reader_grace(),
            idle_unload: config.idle_unload(),
            core: CoreSettings {
                max_doc_bytes: config.max_doc_bytes,
                compact_entries: config.compact_entries,
                compact_bytes: config.compact_bytes,
                awareness: config.awareness_limits(),
            },
        }
    }
}

/// What every room shares.
pub(crate) struct RoomContext {
    /// The store, for loading.
    pub(crate) store: Arc<Store>,
    /// The store writer's queue.
    pub(crate) persist: PersistSender,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Limits and timings.
    pub(crate) settings: RoomSettings,
    /// Cancelled when the relay shuts down: empty rooms then unload without delay.
    pub(crate) shutdown: CancellationToken,
    /// Where document events go, with `--webhook-url`.
    pub(crate) webhooks: Option<Webhooks>,
    /// Cluster mode (`--nats`): the JetStream log is the authority and the store a cache.
    pub(crate) cluster: Option<Arc<Cluster>>,
}

/// What the registry can see of a running room.
#[derive(Debug, Default)]
pub(crate) struct RoomStatus {
    /// Changes applied but not yet committed.
    pub(crate) unsaved_updates: AtomicU64,
}

/// An API request waiting for its answer.
enum Waiting {
    Update(oneshot::Sender<Result<(), ApiUpdateError>>),
    Delete(oneshot::Sender<()>),
}

/// The room task's side of things: the core, and the I/O handles it needs to carry out effects.
pub(crate) struct Room {
    name: Arc<str>,
    ctx: Arc<RoomContext>,
    core: RoomCore,
    /// How to reach each joined connection (the core knows the same connections by id).
    handles: HashMap<ConnId, ConnHandle>,
    delivery: Delivery,
    /// Where the store writer reports this room's commits, and the room's view of it. Replaced
    /// by a deletion, so commits of the deleted document no longer reach the room.
    commit_notify: Arc<watch::Sender<CommitState>>,
    commits: watch::Receiver<CommitState>,
    waiting: HashMap<RequestId, Waiting>,
    next_request: u64,
    /// Raised while a webhook change report is queued for this room.
    change_flag: ChangeFlag,
    /// Set when the room last became empty.
    empty_since: Option<Instant>,
    status: Arc<RoomStatus>,
    /// Effects being carried out (kept to reuse its allocation).
    effects: Vec<Effect>,
    /// Cluster mode: the owner's log, which takes the room's writes instead of the store writer.
    log: Option<OwnerLog>,
}

impl Room {
    fn new(
        name: Arc<str>,
        ctx: Arc<RoomContext>,
        stored: StoredRoom,
        status: Arc<RoomStatus>,
        log: Option<OwnerLog>,
    ) -> Self {
        let (notify, commits) = watch::channel(CommitState {
            committed_seq: stored.next_seq - 1,
            failure: None,
        });
        let settings = &ctx.settings;
        Room {
            core: RoomCore::new(name.clone(), stored, settings.core),
            delivery: Delivery::new(settings.outbound_queue_bytes, settings.slow_reader_grace),
            name,
            handles: HashMap::new(),
            commit_notify: Arc::new(notify),
            commits,
            waiting: HashMap::new(),
            next_request: 0,
            change_flag: ChangeFlag::default(),
            empty_since: Some(Instant::now()),
            status,
            effects: Vec::new(),
            log,
            ctx,
        }
    }

    /// When the room may unload: it is idle (empty, everything committed) for the idle delay,
    /// or at once during a shutdown.
    fn unload_deadline(&self) -> Option<Instant> {
        if !self.core.is_idle() {
            return None;
        }
        let since = self.empty_since?;
        if self.ctx.shutdown.is_cancelled() {
            return Some(Instant::now());
        }
        Some(since + self.ctx.settings.idle_unload)
    }

    fn request_id(&mut self, waiting: Waiting) -> RequestId {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        self.waiting.insert(id, waiting);
        id
    }

    /// Feeds one command to the core.
    fn handle(&mut self, command: RoomCommand) {
        let now = Instant::now().into_std();
        match command {
            RoomCommand::Join {
                conn,
                access,
                principal,
                handle,
            } => {
                self.handles.insert(conn, handle);
                self.core.join(conn, access, principal);
            }
            RoomCommand::Messages { conn, messages } => {
                for message in messages {
                    self.core.receive(conn, message, now);
                }
            }
            RoomCommand::Leave { conn } => {
                self.handles.remove(&conn);
                self.core.leave(conn, None);
            }
            RoomCommand::Export { reply } => {
                let _ = reply.send(self.core.export_v1());
            }
            RoomCommand::ExportJson { reply } => {
                let _ = reply.send(self.core.export_json());
            }
            RoomCommand::ApplyUpdate { update, reply } => {
                let request = self.request_id(Waiting::Update(reply));
                self.core.api_update(request, update);
            }
            RoomCommand::Delete { reply } => {
                let request = self.request_id(Waiting::Delete(reply));
                self.core.delete(request);
            }
        }
    }

    /// Carries out the core's effects, and those they lead to (a slow reader dropped while
    /// queueing is a connection leaving, with its awareness removal to announce).
    async fn execute(&mut self) {
        loop {
            let mut effects = std::mem::take(&mut self.effects);
            self.core.take_effects(&mut effects);
            if effects.is_empty() {
                self.effects = effects;
                break;
            }
            for effect in effects.drain(..) {
                self.execute_one(effect).await;
            }
            self.effects = effects;
        }
        self.status
            .unsaved_updates
            .store(self.core.uncommitted(), Ordering::Relaxed);
        if self.core.member_count() == 0 {
            self.empty_since.get_or_insert_with(Instant::now);
        } else {
            self.empty_since = None;
        }
    }

    async fn execute_one(&mut self, effect: Effect) {
        let metrics = &self.ctx.metrics;
        match effect {
            Effect::Send(conn, frame) => {
                if let Some(handle) = self.handles.get(&conn)
                    && !self.delivery.deliver(handle, frame)
                {
                    self.drop_slow_reader(conn);
                }
            }
            Effect::Broadcast { frame, except } => {
                let slow: Vec<ConnId> = self
                    .handles
                    .iter()
                    .filter(|(id, _)| Some(**id) != except)
                    .filter(|(_, handle)| !self.delivery.deliver(handle, frame.clone()))
                    .map(|(id, _)| *id)
                    .collect();
                for conn in slow {
                    self.drop_slow_reader(conn);
                }
            }
            Effect::BroadcastStateless { frame, except } => {
                let slow: Vec<ConnId> = self
                    .handles
                    .iter()
                    .filter(|(id, handle)| **id != except && handle.takes_stateless())
                    .filter(|(_, handle)| !self.delivery.deliver(handle, frame.clone()))
                    .map(|(id, _)| *id)
                    .collect();
                for conn in slow {
                    self.drop_slow_reader(conn);
                }
            }
            Effect::Close(conn, reason) => {
                if let Some(handle) = self.handles.remove(&conn) {
                    handle.close(reason);
                }
            }
            Effect::Renumber => {
                let (notify, commits) = watch::channel(CommitState::default());
                self.commit_notify = Arc::new(notify);
                self.commits = commits;
                // A change report queued for the old document is dropped with it; the new one
                // starts with a fresh flag, so its first change is reported.
                self.change_flag = ChangeFlag::default();
            }
            Effect::Persist { write, seq } if self.log.is_some() => {
                let log = self.log.as_ref().expect("guarded");
                let job = LogJob {
                    write,
                    seq,
                    notify: self.commit_notify.clone(),
                };
                if log.send(job).await.is_err() {
                    // The log task ended: the room is lost, and `serve` ends it next.
                    tracing::debug!("the room's log has ended; this change is not saved here");
                }
            }
            Effect::Persist { write, seq } => {
                let job = PersistJob {
                    write,
                    seq,
                    notify: self.commit_notify.clone(),
                };
                if self.ctx.persist.send(PersistMsg::Job(job)).await.is_err() {
                    // The writer only stops after every room is gone, so this is a bug.
                    tracing::error!("the store writer has stopped; this change is not saved");
                    metrics.error("store_writer_gone");
                }
            }
            Effect::Answer(request, result) => match self.waiting.remove(&request) {
                Some(Waiting::Update(reply)) => {
                    let _ = reply.send(result);
                }
                Some(Waiting::Delete(reply)) => {
                    let _ = reply.send(());
                }
                None => {}
            },
            Effect::Notify(kind) => {
                if let Some(webhooks) = &self.ctx.webhooks {
                    webhooks.notify(kind, &self.name);
                }
            }
            Effect::Changed => {
                if let Some(webhooks) = &self.ctx.webhooks {
                    webhooks.changed(&self.name, &self.change_flag);
                }
            }
            Effect::UpdateApplied(bytes) => {
                metrics.updates_in.inc();
                metrics.update_bytes_in.inc_by(bytes as u64);
            }
            Effect::Count(label) => metrics.error(label),
            Effect::Rebuild if self.log.is_some() => {
                // In cluster mode the stream is the authority: give the room up, and let the
                // next connection load it again from the stream (clients resend what is not
                // acknowledged).
                tracing::error!("yrs failed on the document; reloading the room from the stream");
                if let Some(log) = &self.log {
                    log.lost().cancel();
                }
            }
            Effect::Rebuild => self.rebuild().await,
        }
    }

    /// Drops a connection that fell behind; the core announces its leaving.
    fn drop_slow_reader(&mut self, conn: ConnId) {
        // Counted in the metrics by the connection when it ends.
        tracing::warn!(%conn, "connection fell behind; disconnecting it");
        self.ctx.metrics.error("outbound_queue_full");
        self.core.leave(conn, Some(CloseReason::SlowReader));
    }

    /// Reloads the committed document for the core to rebuild from, after `yrs` panicked.
    async fn rebuild(&mut self) {
        let store = self.ctx.store.clone();
        let name = self.name.clone();
        match tokio::task::spawn_blocking(move || store.load(&name)).await {
            Ok(Ok(stored)) => self.core.rebuild(stored),
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot reload the room to rebuild it; keeping it as it is");
            }
            Err(error) => {
                tracing::error!(%error, "reloading the room panicked; keeping it as it is");
            }
        }
    }
}

/// Why [`Room::serve`] returned.
pub(crate) enum Exit {
    /// The room has been idle (no connections, everything committed) for the idle delay, or the
    /// relay is shutting down: it may unload, unless a command is on its way.
    Idle,
    /// Its queue is closed: nothing more can arrive.
    QueueClosed,
    /// Cluster mode: the room is no longer ours (lease lost, append fenced): close its
    /// connections (1013) and unload at once.
    Lost,
}

/// Why a room did not load.
pub(crate) enum LoadFailure {
    /// Cluster mode: another live relay owns it.
    Remote(String),
    /// It cannot be loaded now (logged and counted).
    Failed,
    /// Cluster mode: NATS did not answer in time; the clients should retry (1013).
    Unavailable,
}

impl Room {
    /// Loads a room's document from the store.
    ///
    /// # Errors
    /// When the store cannot load it (logged and counted here), or, in cluster mode, when
    /// another relay owns it.
    pub(crate) async fn load(
        name: Arc<str>,
        ctx: Arc<RoomContext>,
        status: Arc<RoomStatus>,
    ) -> Result<Room, LoadFailure> {
        if let Some(cluster) = ctx.cluster.clone() {
            return match crate::cluster::load::load(&cluster, &ctx.store, &name).await {
                Ok(owned) => {
                    let log =
                        OwnerLog::start(cluster, ctx.persist.clone(), name.clone(), owned.log);
                    ctx.metrics.rooms_loaded.inc();
                    Ok(Room::new(name, ctx, owned.stored, status, Some(log)))
                }
                Err(LoadError::OwnedBy(owner)) => Err(LoadFailure::Remote(owner)),
                Err(error @ LoadError::Nats(_)) => {
                    tracing::warn!(%error, "cannot load the room from the cluster now; its connections retry");
                    ctx.metrics.error("room_load_unavailable");
                    Err(LoadFailure::Unavailable)
                }
                Err(error) => {
                    tracing::error!(%error, "cannot load the room from the cluster; refusing its connections");
                    ctx.metrics.error("room_load_failed");
                    Err(LoadFailure::Failed)
                }
            };
        }
        let store = ctx.store.clone();
        let load_name = name.clone();
        let stored = match tokio::task::spawn_blocking(move || store.load(&load_name)).await {
            Ok(Ok(stored)) => stored,
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot load the room; refusing its connections");
                ctx.metrics.error("room_load_failed");
                return Err(LoadFailure::Failed);
            }
            Err(error) => {
                tracing::error!(%error, "room loading panicked; refusing its connections");
                ctx.metrics.error("room_load_failed");
                return Err(LoadFailure::Failed);
            }
        };
        tracing::info!(
            next_seq = stored.next_seq,
            log_entries = stored.log_entries,
            snapshot_bytes = stored.snapshot_bytes,
            "room loaded"
        );
        ctx.metrics.rooms_loaded.inc();
        Ok(Room::new(name, ctx, stored, status, None))
    }

    /// Serves the room's commands, commit reports and timers until it is idle. `pending` counts
    /// the commands the registry let in that the room has not taken yet.
    pub(crate) async fn serve(
        &mut self,
        rx: &mut mpsc::Receiver<RoomCommand>,
        pending: &AtomicUsize,
    ) -> Exit {
        let lost = self.log.as_ref().map(|log| log.lost().clone());
        loop {
            let unload_at = self.unload_deadline();
            let sweep_at = self.core.next_sweep().map(Instant::from_std);
            // A lost room stops at once, before taking anything more in.
            if lost.as_ref().is_some_and(CancellationToken::is_cancelled) {
                return Exit::Lost;
            }
            tokio::select! {
                command = rx.recv() => {
                    let Some(command) = command else { return Exit::QueueClosed };
                    if command.was_counted() {
                        pending.fetch_sub(1, Ordering::AcqRel);
                    }
                    self.handle(command);
                }
                changed = self.commits.changed() => {
                    if changed.is_ok() {
                        let state = self.commits.borrow_and_update().clone();
                        self.core.commit_progress(state.committed_seq, state.failure);
                    }
                }
                () = sleep_until_opt(sweep_at), if sweep_at.is_some() => {
                    self.core.sweep_awareness(Instant::now().into_std());
                }
                () = sleep_until_opt(unload_at), if unload_at.is_some() => return Exit::Idle,
                () = self.ctx.shutdown.cancelled(), if !self.ctx.shutdown.is_cancelled() => {}
                () = cancelled_opt(lost.as_ref()), if lost.is_some() => return Exit::Lost,
            }
            self.execute().await;
            if self.delivery.take_lagging() {
                // Some writer has a backlog: let it run before producing more, so scheduling
                // delays are not mistaken for a slow client.
                tokio::task::yield_now().await;
            }
        }
    }

    /// The room did not unload after all (a command is on its way): the idle delay starts over.
    pub(crate) fn stay(&mut self) {
        self.empty_since = Some(Instant::now());
    }

    /// The room is no longer ours (cluster mode): every connection is closed with 1013, so its
    /// client reconnects and reaches the new owner.
    pub(crate) fn close_all_moved(&mut self) {
        for (_, handle) in self.handles.drain() {
            handle.close(CloseReason::OwnerChanged);
        }
    }

    /// The room is out of the registry and its queue is closed.
    pub(crate) fn unloaded(self) {
        self.ctx.metrics.rooms_loaded.dec();
        tracing::info!("room unloaded");
    }
}

async fn cancelled_opt(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}
