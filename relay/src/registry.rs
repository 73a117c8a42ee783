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

use crate::auth::Access;
use crate::outbound::ConnHandle;
use crate::room::{ConnId, RoomCommand, RoomContext, RoomStatus, run_room};

/// The queue of a loaded room.
pub type RoomSender = mpsc::Sender<RoomCommand>;

struct RoomEntry {
    id: u64,
    tx: RoomSender,
    pending_joins: Arc<AtomicUsize>,
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
pub enum JoinError {
    /// The room kept going away under the joiner (it fails to load, or the relay is shutting
    /// down).
    #[error("room {0:?} could not be joined")]
    Unavailable(String),
    /// Loading it would go over `--max-rooms`.
    #[error("too many documents are open")]
    TooManyRooms,
}

/// All loaded rooms.
pub struct RoomRegistry {
    // A std mutex: it is held for a map lookup or insert only, never across an await.
    rooms: Mutex<HashMap<Arc<str>, RoomEntry>>,
    ctx: Arc<RoomContext>,
    queue_len: usize,
    max_rooms: usize,
    next_entry: AtomicU64,
    tasks: TaskTracker,
}

impl RoomRegistry {
    /// An empty registry whose rooms share `ctx`, have queues of `queue_len` commands, and are
    /// at most `max_rooms` at once.
    pub fn new(ctx: Arc<RoomContext>, queue_len: usize, max_rooms: usize) -> Arc<Self> {
        Arc::new(RoomRegistry {
            rooms: Mutex::new(HashMap::new()),
            ctx,
            queue_len,
            max_rooms,
            next_entry: AtomicU64::new(1),
            tasks: TaskTracker::new(),
        })
    }

    /// The store the rooms load from.
    pub fn store(&self) -> &Arc<crdt::store::Store> {
        &self.ctx.store
    }

    /// Connections open to `room` now (0 when it is not loaded).
    pub fn connections(&self, room: &str) -> usize {
        let rooms = self.rooms.lock().expect("registry lock is never poisoned");
        rooms
            .get(room)
            .map_or(0, |e| e.status.connections.load(Ordering::Relaxed))
    }

    /// The room tasks, for waiting on them at shutdown.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Joins `conn` to `room` with `access`, loading the room if needed. Returns the room's queue
    /// for the connection's frames.
    ///
    /// # Errors
    /// [`JoinError`] if the room unloads under the joiner three times in a row (it fails to
    /// load, or the relay is shutting down).
    pub async fn join(
        self: &Arc<Self>,
        room: &str,
        conn: ConnId,
        access: Access,
        handle: ConnHandle,
    ) -> Result<RoomSender, JoinError> {
        let command = RoomCommand::Join {
            conn,
            access,
            handle,
        };
        self.send(room, command).await
    }

    /// Sends a request (an API command) to `room`, loading the room if needed.
    ///
    /// # Errors
    /// As [`RoomRegistry::join`].
    pub async fn request(
        self: &Arc<Self>,
        room: &str,
        command: RoomCommand,
    ) -> Result<(), JoinError> {
        self.send(room, command).await.map(|_| ())
    }

    /// Sends a counted command, retrying if the room unloads in between.
    async fn send(
        self: &Arc<Self>,
        room: &str,
        mut command: RoomCommand,
    ) -> Result<RoomSender, JoinError> {
        for _ in 0..3 {
            let (tx, pending) = self.entry_for(room)?;
            match tx.send(command).await {
                Ok(()) => return Ok(tx),
                Err(mpsc::error::SendError(returned)) => {
                    pending.fetch_sub(1, Ordering::AcqRel);
                    command = returned;
                }
            }
        }
        Err(JoinError::Unavailable(room.to_owned()))
    }

    /// Updates `room` holds that are not committed yet (0 when it is not loaded).
    pub fn unsaved_updates(&self, room: &str) -> u64 {
        let rooms = self.rooms.lock().expect("registry lock is never poisoned");
        rooms
            .get(room)
            .map_or(0, |e| e.status.unsaved_updates.load(Ordering::Relaxed))
    }

    /// Finds or starts the room and counts a pending join, under the lock.
    fn entry_for(
        self: &Arc<Self>,
        room: &str,
    ) -> Result<(RoomSender, Arc<AtomicUsize>), JoinError> {
        let mut rooms = self.rooms.lock().expect("registry lock is never poisoned");
        if let Some(entry) = rooms.get(room) {
            entry.pending_joins.fetch_add(1, Ordering::AcqRel);
            return Ok((entry.tx.clone(), entry.pending_joins.clone()));
        }
        if rooms.len() >= self.max_rooms {
            return Err(JoinError::TooManyRooms);
        }
        let name: Arc<str> = room.into();
        let (tx, rx) = mpsc::channel(self.queue_len);
        let id = self.next_entry.fetch_add(1, Ordering::Relaxed);
        let pending_joins = Arc::new(AtomicUsize::new(1));
        let status = Arc::new(RoomStatus::default());
        rooms.insert(
            name.clone(),
            RoomEntry {
                id,
                tx: tx.clone(),
                pending_joins: pending_joins.clone(),
                status: status.clone(),
            },
        );
        self.tasks.spawn(run_room(
            name,
            rx,
            self.ctx.clone(),
            self.clone(),
            id,
            pending_joins.clone(),
            status,
        ));
        Ok((tx, pending_joins))
    }

    /// Whether a request for `room` can be served without going over `--max-rooms`: the room is
    /// loaded, or there is room for one more. A quick check before a WebSocket upgrade; the
    /// registry enforces the limit again when it creates the room.
    pub fn admits(&self, room: &str) -> bool {
        let rooms = self.rooms.lock().expect("registry lock is never poisoned");
        rooms.contains_key(room) || rooms.len() < self.max_rooms
    }

    /// Removes the room's entry if no join is on its way. Called by the room itself.
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

    /// Removes the room's entry unconditionally (after a failed load).
    pub(crate) fn remove(&self, room: &str, entry_id: u64) {
        let mut rooms = self.rooms.lock().expect("registry lock is never poisoned");
        if rooms.get(room).is_some_and(|e| e.id == entry_id) {
            rooms.remove(room);
        }
    }

    /// Rooms still loaded, with how much each holds uncommitted.
    pub fn loaded(&self) -> Vec<LoadedRoom> {
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
