//! A connection's outbound queue: what the room queues for one client, whatever the transport.
//!
//! The room puts messages in without ever waiting ([`Delivery::deliver`]); the transport's writer
//! (a WebSocket, or a long-polling session) takes them out. The queue is unbounded so the room
//! never waits on a client, and bounded by the [`Backlog`] checks instead: a client that stops
//! reading is dropped as a slow reader rather than allowed to fill memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::close::CloseReason;

/// What a room sends to a connection's writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// One binary frame holding exactly one message.
    Frame(Bytes),
    /// Close the connection with this reason.
    Close(CloseReason),
}

/// Milliseconds on tokio's clock since the first call (so tests can pause and advance it);
/// never 0.
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .saturating_duration_since(start)
        .as_millis() as u64
        + 1
}

/// What a connection has queued for its socket, shared by the room (which adds) and the
/// connection's writer (which takes away).
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    queued: AtomicUsize,
    /// When the writer last wrote something, or when work arrived at an empty queue
    /// ([`clock_ms`]).
    last_progress_ms: AtomicU64,
}

impl Backlog {
    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Records `bytes` queued.
    pub(crate) fn add(&self, bytes: usize) {
        if self.queued.fetch_add(bytes, Ordering::Relaxed) == 0 {
            self.last_progress_ms.store(clock_ms(), Ordering::Relaxed);
        }
    }

    /// Records `bytes` written to the socket.
    pub(crate) fn written(&self, bytes: usize) {
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
pub(crate) struct ConnHandle {
    /// The connection's outbound queue.
    pub(crate) tx: mpsc::UnboundedSender<Outbound>,
    /// What is queued and how the writer is doing.
    pub(crate) backlog: Arc<Backlog>,
    /// Cancelled to drop a connection that fell behind, even in the middle of a blocked write.
    pub(crate) kick: CancellationToken,
}

impl ConnHandle {
    /// Asks the connection to close with `reason`: a close frame after what is queued, or, for
    /// a slow reader (whose socket takes nothing), at once.
    pub(crate) fn close(&self, reason: CloseReason) {
        if reason == CloseReason::SlowReader {
            self.kick.cancel();
        } else {
            // A closed queue means the connection is already going away.
            let _ = self.tx.send(Outbound::Close(reason));
        }
    }
}

/// A new outbound queue: the handle the room fills, and the receiving end the transport drains.
pub(crate) fn queue() -> (ConnHandle, mpsc::UnboundedReceiver<Outbound>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = ConnHandle {
        tx,
        backlog: Arc::new(Backlog::default()),
        kick: CancellationToken::new(),
    };
    (handle, rx)
}

/// How many times the queue limit a connection may hold even while it makes progress.
const HARD_LIMIT_FACTOR: usize = 4;

/// The room's rule for queuing: how much a connection may hold, and for how long.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// Bytes a connection may have queued while its writer makes no progress for `grace`.
    limit: usize,
    grace_ms: u64,
    /// Set when a queue went over the limit: the room then yields, so writers get to run.
    lagging: AtomicBool,
}

impl Delivery {
    /// The rule for `limit` bytes and a `grace` period.
    pub(crate) fn new(limit: usize, grace: Duration) -> Self {
        Delivery {
            limit,
            grace_ms: grace.as_millis() as u64,
            lagging: AtomicBool::new(false),
        }
    }

    /// Queues a frame for a connection. Returns false if the connection has fallen too far
    /// behind and must be dropped: its queue is over the limit and its writer has not written
    /// anything for the grace period (the client stopped reading), or its queue is over four
    /// times the limit. A slow but live client (a big document over a slow link) keeps making
    /// progress and stays; a frame is always accepted by an empty queue, so a single large
    /// update reaches everyone who keeps up.
    pub(crate) fn deliver(&self, handle: &ConnHandle, frame: Bytes) -> bool {
        let len = frame.len();
        let backlog = &handle.backlog;
        let queued = backlog.queued();
        if queued > 0 && queued + len > self.limit {
            let stalled = backlog.stalled_ms() > self.grace_ms;
            if stalled || queued + len > self.limit * HARD_LIMIT_FACTOR {
                return false;
            }
            self.lagging.store(true, Ordering::Relaxed);
        }
        backlog.add(len);
        // A closed queue means the connection is already going away; its leaving will follow.
        let _ = handle.tx.send(Outbound::Frame(frame));
        true
    }

    /// Whether some queue went over the limit since the last call.
    pub(crate) fn take_lagging(&self) -> bool {
        self.lagging.swap(false, Ordering::Relaxed)
    }
}
