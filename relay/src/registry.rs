//! The registry of loaded rooms: the one entry point that creates room tasks.
//!
//! A joiner looks the room up and, if it is not loaded, starts its task, all under one lock, so
//! two first visitors never load a document twice. A room unloads itself through
//! [`RoomRegistry::remove_if_idle`], under the same lock, and only if no join or API request is
//! on its way: senders count themselves in `pending_joins` under the lock before they send, and
//! the room counts them out as it takes their command.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::Grant;
use crate::close::CloseReason;
use crate::outbound::ConnHandle;
use crate::room::{ConnId, Exit, LoadFailure, Room, RoomCommand, RoomContext, RoomStatus};

/// The queue of a loaded room.
pub(crate) type RoomSender = mpsc::Sender<RoomCommand>;

struct RoomEntry {
    id: u64,
    tx: RoomSender,
    /// Commands counted in before they are sent (joins and API requests); the room counts them
    /// out as it takes them, and may only unload at zero.
    pending: Arc<AtomicUsize>,
    /// Connections joined or joining, each holding a [`Membership`].
    members: Arc<AtomicUsize>,
    status: Arc<RoomStatus>,
}

/// A room that is still loaded, as reported at shutdown.
#[derive(Debug, Clone)]
pub struct LoadedRoom {
    /// The room name.
    pub name: Arc<str>,
    /// Updates it holds that are not committed.
    pub unsaved_updates: u64,
}

/// Why a room cannot be joined.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    /// The room kept going away under the joiner (it fails to load, or the relay is shutting
    /// down).
    #[error("room {0:?} could not be joined")]
    Unavailable(String),
    /// Loading it would go over `--max-rooms`.
    #[error("too many documents are open")]
    TooManyRooms,
    /// It has `--max-room-connections` already.
    #[error("too many connections to this document")]
    RoomFull,
}

impl JoinError {
    /// How a connection that was already accepted is closed for it.
    pub(crate) fn close_reason(&self) -> CloseReason {
        match self {
            JoinError::Unavailable(_) => CloseReason::Internal,
            JoinError::TooManyRooms | JoinError::RoomFull => CloseReason::Overloaded,
        }
    }
}

/// A connection's place in a room, counted against `--max-room-connections` until dropped.
#[derive(Debug)]
pub(crate) struct Membership {
    members: Arc<AtomicUsize>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.members.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A joined connection: the room's queue and its place there.
#[derive(Debug)]
pub(crate) struct Joined {
    /// The room's queue, for the connection's messages and its leaving.
    pub(crate) room: RoomSender,
    /// Its place, given back when dropped (after it has left).
    pub(crate) membership: Membership,
}

/// All loaded rooms.
pub(crate) struct RoomRegistry {
    // A std mutex: it is held for a map lookup or insert only, never across an await.
    rooms: Mutex<HashMap<Arc<str>, RoomEntry>>,
    ctx: Arc<RoomContext>,
    queue_len: usize,
    max_rooms: usize,
    max_room_connections: usize,
    next_entry: AtomicU64,
    tasks: TaskTracker,
}

/// How many rooms and connections the registry admits, and how long rooms' queues are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegistryLimits {
    /// Commands a room's queue holds.
    pub(crate) queue_len: usize,
    /// `--max-rooms`.
    pub(crate) max_rooms: usize,
    /// `--max-room-connections`.
    pub(crate) max_room_connections: usize,
}

impl RoomRegistry {
    /// An empty registry whose rooms share `ctx`.
    pub(crate) fn new(ctx: Arc<RoomContext>, limits: RegistryLimits) -> Arc<Self> {
        Arc::new(RoomRegistry {
            rooms: Mutex::new(HashMap::new()),
            ctx,
            queue_len: limits.queue_len,
            max_rooms: limits.max_rooms,
            max_room_connections: limits.max_room_connections,
            next_entry: AtomicU64::new(1),
            tasks: TaskTracker::new(),
        })
    }

    /// The store the rooms load from.
    pub(crate) fn store(&self) -> &Arc<crdt::store::Store> {
        &self.ctx.store
    }

    /// Connections joined or joining `room` now (0 when it is not loaded).
    pub(crate) fn connections(&self, room: &str) -> usize {
        let rooms = self.rooms.lock().expect("registry lock is never poisoned");
        rooms
            .get(room)
            .map_or(0, |e| e.members.load(Ordering::Relaxed))
    }

    /// The room tasks, for waiting on them at shutdown.
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Joins `conn` to `room` with what `grant` allows, loading the room if needed.
    ///
    /// # Errors
    /// [`JoinError::RoomFull`] at `--max-room-connections` (counted under the registry's lock,
    /// so a storm of joiners cannot pass it), [`JoinError::TooManyRooms`] at `--max-rooms`, and
    /// [`JoinError::Unavailable`] if the room unloads under the joiner three times in a row (it
    /// fails to load, or the relay is shutting down).
    pub(crate) async fn join(
        self: &Arc<Self>,
        room: &str,
        conn: ConnId,
        grant: &Grant,
        handle: ConnHandle,
    ) -> Result<Joined, JoinError> {
        let mut command = RoomCommand::Join {
            conn,
            access: grant.access,
            principal: grant.principal,
            handle,
        };
        for _ in 0..3 {
            let (tx, pending, membership) = self.entry_for(room, true)?;
            let membership = membership.expect("asked for a membership");
            match tx.send(command).await {
                Ok(()) => {
                    return Ok(Joined {
                        room: tx,
                        membership,
                    });
                }
                Err(mpsc::error::SendError(returned)) => {
                    pending.fetch_sub(1, Ordering::AcqRel);
                    command = returned;
                }
            }
        }
        Err(JoinError::Unavailable(room.to_owned()))
    }

    /// Sends a request (an API command) to `room`, loading the room if needed.
    ///
    /// # Errors
    /// As [`RoomRegistry::join`], but for [`JoinError::RoomFull`].
    pub(crate) async fn request(
        self: &Arc<Self>,
        room: &str,
        mut command: RoomCommand,
    ) -> Result<(), JoinError> {
        for _ in 0..3 {
            let (tx, pending, _) = self.entry_for(room, false)?;
            match tx.send(command).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(returned)) => {
                    pending.fetch_sub(1, Ordering::AcqRel);
                    command = returned;
                }
            }
        }
        Err(JoinError::Unavailable(room.to_owned()))
    }

    /// Updates `room` holds that are not committed yet (0 when it is not loaded).
    pub(crate) fn unsaved_updates(&self, room: &str) -> u64 {
        let rooms = self.rooms.lock().expect("registry lock is never poisoned");
        rooms
            .get(room)
            .map_or(0, |e| e.status.unsaved_updates.load(Ordering::Relaxed))
    }

    /// Finds or starts the room, counts a pending command and, for a connection, takes a
    /// membership; all under the lock, where the room and connection limits are enforced.
    #[allow(clippy::type_complexity)]
    fn entry_for(
        self: &Arc<Self>,
        room: &str,
        member: bool,
    ) -> Result<(RoomSender, Arc<AtomicUsize>, Option<Membership>), JoinError> {
        let mut rooms = self.rooms.lock().expect("registry lock is never poisoned");
        let entry = match rooms.get(room) {
            Some(entry) => entry,
            None => {
                if rooms.len() >= self.max_rooms {
                    return Err(JoinError::TooManyRooms);
                }
                let name: Arc<str> = room.into();
                let entry = self.start(name.clone());
                rooms.entry(name).or_insert(entry)
            }
        };
        let membership = if member {
            if entry.members.load(Ordering::Acquire) >= self.max_room_connections {
                return Err(JoinError::RoomFull);
            }
            entry.members.fetch_add(1, Ordering::AcqRel);
            Some(Membership {
                members: entry.members.clone(),
            })
        } else {
            None
        };
        entry.pending.fetch_add(1, Ordering::AcqRel);
        Ok((entry.tx.clone(), entry.pending.clone(), membership))
    }

    /// Starts a room's task (called under the lock).
    fn start(self: &Arc<Self>, name: Arc<str>) -> RoomEntry {
        let (tx, rx) = mpsc::channel(self.queue_len);
        let entry = RoomEntry {
            id: self.next_entry.fetch_add(1, Ordering::Relaxed),
            tx,
            pending: Arc::new(AtomicUsize::new(0)),
            members: Arc::new(AtomicUsize::new(0)),
            status: Arc::new(RoomStatus::default()),
        };
        let span = tracing::info_span!("room", room = %name);
        self.tasks.spawn(
            run_entry(
                self.clone(),
                name,
                entry.id,
                rx,
                entry.pending.clone(),
                entry.status.clone(),
            )
            .instrument(span),
        );
        entry
    }

    /// Whether a request for `room` can be served without going over `--max-rooms`: the room is
    /// loaded, or there is room for one more. A quick check before a WebSocket upgrade; the
    /// registry enforces the limit again when it creates the room.
    pub(crate) fn admits(&self, room: &str) -> bool {
        let rooms = self.rooms.lock().expect("registry lock is never poisoned");
        rooms.contains_key(room) || rooms.len() < self.max_rooms
    }

    /// Removes the room's entry if no command is on its way to it.
    pub(crate) fn remove_if_idle(&self, room: &str, entry_id: u64, pending: &AtomicUsize) -> bool {
        let mut rooms = self.rooms.lock().expect("registry lock is never poisoned");
        if pending.load(Ordering::Acquire) != 0 {
            return false;
        }
        if rooms.get(room).is_some_and(|e| e.id == entry_id) {
            rooms.remove(room);
        }
        true
    }

    /// Removes the room's entry unconditionally (after a failed load, or a panic).
    pub(crate) fn remove(&self, room: &str, entry_id: u64) {
        let mut rooms = self.rooms.lock().expect("registry lock is never poisoned");
        if rooms.get(room).is_some_and(|e| e.id == entry_id) {
            rooms.remove(room);
        }
    }

    /// Rooms still loaded, with how much each holds uncommitted.
    pub(crate) fn loaded(&self) -> Vec<LoadedRoom> {
        let rooms = self.rooms.lock().expect("registry lock is never poisoned");
        rooms
            .iter()
            .map(|(name, entry)| LoadedRoom {
                name: name.clone(),
                unsaved_updates: entry.status.unsaved_updates.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// One entry of the registry, as a remote room (served by [`crate::cluster_remote`]) sees it.
struct Entry<'a> {
    registry: &'a RoomRegistry,
    name: &'a str,
    entry_id: u64,
    pending: &'a AtomicUsize,
}

impl crate::cluster_remote::RegistryEntry for Entry<'_> {
    fn remove_if_idle(&self) -> bool {
        self.registry
            .remove_if_idle(self.name, self.entry_id, self.pending)
    }

    fn remove(&self) {
        self.registry.remove(self.name, self.entry_id);
    }
}

/// A room's entry, from loading to unloading: serves the room until it is idle, then takes it
/// out of the registry unless a command is on its way (then it serves on).
async fn run_entry(
    registry: Arc<RoomRegistry>,
    name: Arc<str>,
    entry_id: u64,
    mut rx: mpsc::Receiver<RoomCommand>,
    pending: Arc<AtomicUsize>,
    status: Arc<RoomStatus>,
) {
    let mut room = match Room::load(name.clone(), registry.ctx.clone(), status).await {
        Ok(room) => room,
        Err(LoadFailure::Remote(owner)) => {
            let cluster = registry
                .ctx
                .cluster
                .clone()
                .expect("only cluster mode has owners");
            let entry = Entry {
                registry: &registry,
                name: &name,
                entry_id,
                pending: &pending,
            };
            let settings = &registry.ctx.settings;
            crate::cluster_remote::serve_remote(
                cluster, settings, &entry, &name, owner, &mut rx, &pending,
            )
            .await;
            // Leaving the registry happened in there; whoever is still queued retries.
            refuse_all(&registry, &name, entry_id, rx, CloseReason::OwnerChanged).await;
            return;
        }
        Err(LoadFailure::Failed) => {
            refuse_all(&registry, &name, entry_id, rx, CloseReason::Internal).await;
            return;
        }
        Err(LoadFailure::Unavailable) => {
            refuse_all(&registry, &name, entry_id, rx, CloseReason::Overloaded).await;
            return;
        }
    };
    // If anything in the room panics, its task ends: take it out of the registry, so the next
    // connection loads the document again instead of finding a dead queue forever.
    let mut unregister = UnregisterOnPanic {
        registry: &registry,
        name: &name,
        entry_id,
        armed: true,
    };
    loop {
        match room.serve(&mut rx, &pending).await {
            Exit::Idle => {
                if registry.remove_if_idle(&name, entry_id, &pending) {
                    rx.close();
                    break;
                }
                // A command is on its way; it will arrive through the queue.
                room.stay();
            }
            Exit::QueueClosed => break,
            Exit::Lost => {
                tracing::warn!("the room is no longer ours; closing its connections (1013)");
                room.close_all_moved();
                unregister.armed = false;
                room.unloaded();
                refuse_all(&registry, &name, entry_id, rx, CloseReason::OwnerChanged).await;
                return;
            }
        }
    }
    unregister.armed = false;
    room.unloaded();
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
            tracing::error!(room = %self.name, "the room's task panicked; the next request loads it again");
            self.registry.remove(self.name, self.entry_id);
        }
    }
}

/// After a failed load (or a lost room): leave the registry, then close every connection that
/// tried to join with `reason`.
async fn refuse_all(
    registry: &RoomRegistry,
    name: &str,
    entry_id: u64,
    mut rx: mpsc::Receiver<RoomCommand>,
    reason: CloseReason,
) {
    registry.remove(name, entry_id);
    rx.close();
    while let Some(command) = rx.recv().await {
        if let RoomCommand::Join { handle, .. } = command {
            // Counted in the metrics by the connection when it ends.
            handle.close(reason);
        }
    }
}

#[cfg(test)]
mod tests {

    use crdt::store::{Store, StoreOptions};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::Config;
    use crate::room::RoomSettings;
    use crate::telemetry::Metrics;

    fn registry(dir: &std::path::Path, limits: RegistryLimits) -> Arc<RoomRegistry> {
        let store = Arc::new(
            Store::open(&dir.join("relay.redb"), &StoreOptions::default()).expect("open a store"),
        );
        let metrics = Arc::new(Metrics::new());
        let settings = crate::persist::WriterSettings::from_config(&Config::default());
        let (persist, _writer) = crate::persist::start(store.clone(), metrics.clone(), settings)
            .expect("start the store writer");
        let ctx = Arc::new(RoomContext {
            store,
            persist,
            metrics,
            settings: RoomSettings::from_config(&Config::default()),
            shutdown: CancellationToken::new(),
            webhooks: None,
            cluster: None,
        });
        RoomRegistry::new(ctx, limits)
    }

    /// The admission pre-check can be passed by many joiners at once; the limits hold because
    /// the registry counts members and rooms again under its lock, here without any pre-check.
    #[tokio::test]
    async fn joins_past_the_room_and_relay_limits_are_refused_under_the_lock() {
        let dir = tempfile::tempdir().expect("a directory");
        let registry = registry(
            dir.path(),
            RegistryLimits {
                queue_len: 8,
                max_rooms: 1,
                max_room_connections: 2,
            },
        );
        let (_, _, first) = registry.entry_for("r", true).expect("first member");
        let (_, _, second) = registry.entry_for("r", true).expect("second member");
        assert!(matches!(
            registry.entry_for("r", true),
            Err(JoinError::RoomFull)
        ));
        assert_eq!(registry.connections("r"), 2);
        // A request that is no connection (the document API) is not counted against the room.
        assert!(registry.entry_for("r", false).is_ok());
        assert!(matches!(
            registry.entry_for("other", true),
            Err(JoinError::TooManyRooms)
        ));
        // A member leaving frees its place.
        drop(second);
        assert_eq!(registry.connections("r"), 1);
        assert!(registry.entry_for("r", true).is_ok());
        drop(first);
    }
}
