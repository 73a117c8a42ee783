//! A connection's outbound queue: what the room queues for one client, whatever the transport.
//!
//! The room puts messages in without ever waiting ([`Delivery::deliver`]); the transport takes
//! them out: a WebSocket's writer drains a channel, a long-polling session's requests read a
//! [`NumberedQueue`] that keeps each message until the client acknowledges it. Either queue is
//! unbounded so the room never waits on a client, and bounded by the [`Backlog`] checks instead:
//! a client that stops reading is dropped as a slow reader rather than allowed to fill memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
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

/// Where a connection's messages go.
#[derive(Debug, Clone)]
enum Sink {
    /// A channel a writer drains (a WebSocket).
    Channel(mpsc::UnboundedSender<Outbound>),
    /// A queue that keeps messages until they are acknowledged (a long-polling session).
    Numbered(Arc<NumberedQueue>),
}

/// The room's handle on a connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    sink: Sink,
    /// What is queued and how the writer is doing.
    pub(crate) backlog: Arc<Backlog>,
    /// Cancelled to drop a connection that fell behind, even in the middle of a blocked write.
    pub(crate) kick: CancellationToken,
    /// Whether the client speaks Hocuspocus and takes its stateless messages (a y-websocket
    /// client would log every one as an unknown message).
    stateless: bool,
}

impl ConnHandle {
    fn with_sink(sink: Sink) -> Self {
        ConnHandle {
            sink,
            backlog: Arc::new(Backlog::default()),
            kick: CancellationToken::new(),
            stateless: false,
        }
    }

    /// The handle of a connection that takes Hocuspocus stateless messages.
    pub(crate) fn taking_stateless(mut self) -> Self {
        self.stateless = true;
        self
    }

    /// Whether the connection takes Hocuspocus stateless messages.
    pub(crate) fn takes_stateless(&self) -> bool {
        self.stateless
    }

    /// Queues a message (the room does it through [`Delivery::deliver`], which accounts for it).
    fn push(&self, frame: Bytes) {
        match &self.sink {
            // A closed channel means the connection is already going away; its leaving follows.
            Sink::Channel(tx) => {
                let _ = tx.send(Outbound::Frame(frame));
            }
            Sink::Numbered(queue) => queue.push(frame),
        }
    }

    /// Asks the connection to close with `reason`: after what is queued, or, for a slow reader
    /// (whose socket takes nothing), at once.
    pub(crate) fn close(&self, reason: CloseReason) {
        if reason == CloseReason::SlowReader {
            self.kick.cancel();
            return;
        }
        match &self.sink {
            Sink::Channel(tx) => {
                let _ = tx.send(Outbound::Close(reason));
            }
            Sink::Numbered(queue) => queue.close(reason),
        }
    }
}

/// A new queue drained by a writer: the handle the room fills, and the receiving end.
pub(crate) fn channel() -> (ConnHandle, mpsc::UnboundedReceiver<Outbound>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ConnHandle::with_sink(Sink::Channel(tx)), rx)
}

/// A new queue that keeps each message until the client acknowledges it.
pub(crate) fn numbered() -> (ConnHandle, Arc<NumberedQueue>) {
    let queue = Arc::new(NumberedQueue::default());
    (ConnHandle::with_sink(Sink::Numbered(queue.clone())), queue)
}

/// What a read of a [`NumberedQueue`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unacked {
    /// Messages after the acknowledged one, each as `varUint length` + bytes, and the number of
    /// the last.
    Messages(Vec<u8>, u64),
    /// Nothing is left and the connection was closed for this reason.
    Closed(CloseReason),
    /// Nothing yet.
    Empty,
}

/// A long-polling session's outbound queue: every message gets a sequence number and stays until
/// the client acknowledges it, so a response lost on the way is sent again and nothing arrives
/// twice or out of order.
#[derive(Debug, Default)]
pub(crate) struct NumberedQueue {
    // A std mutex: held to push, close or copy out, never across an await.
    state: Mutex<NumberedState>,
    /// Woken when a message is queued or the queue is closed.
    changed: Notify,
}

#[derive(Debug, Default)]
struct NumberedState {
    unacked: VecDeque<(u64, Bytes)>,
    /// The number of the last message queued.
    last_seq: u64,
    closed: Option<CloseReason>,
}

impl NumberedQueue {
    fn push(&self, frame: Bytes) {
        let mut state = self.state.lock().expect("queue lock");
        if state.closed.is_some() {
            return;
        }
        state.last_seq += 1;
        let seq = state.last_seq;
        state.unacked.push_back((seq, frame));
        drop(state);
        self.changed.notify_waiters();
    }

    /// Closes the queue for `reason` (the first reason stays); what is queued can still be read.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.state
            .lock()
            .expect("queue lock")
            .closed
            .get_or_insert(reason);
        self.changed.notify_waiters();
    }

    /// Why the queue was closed, if it was.
    pub(crate) fn closed(&self) -> Option<CloseReason> {
        self.state.lock().expect("queue lock").closed
    }

    /// Woken when a message is queued or the queue is closed.
    pub(crate) fn changed(&self) -> &Notify {
        &self.changed
    }

    /// Drops what the client acknowledged (everything up to `ack`), accounting for it in
    /// `backlog`, and returns what comes after: at most `max_bytes` of messages (a single larger
    /// message still goes out alone).
    pub(crate) fn read(&self, ack: u64, max_bytes: usize, backlog: &Backlog) -> Unacked {
        let mut state = self.state.lock().expect("queue lock");
        let mut acked_bytes = 0;
        while state.unacked.front().is_some_and(|(seq, _)| *seq <= ack) {
            let (_, frame) = state.unacked.pop_front().expect("front exists");
            acked_bytes += frame.len();
        }
        if acked_bytes > 0 {
            backlog.written(acked_bytes);
        }
        if state.unacked.is_empty() {
            return state.closed.map_or(Unacked::Empty, Unacked::Closed);
        }
        let mut body = Vec::new();
        let mut last = ack;
        for (seq, frame) in &state.unacked {
            if !body.is_empty() && body.len() + frame.len() > max_bytes {
                break;
            }
            crdt::protocol::write_var_u64(&mut body, frame.len() as u64);
            body.extend_from_slice(frame);
            last = *seq;
        }
        Unacked::Messages(body, last)
    }
}

/// How many times the queue limit a connection may hold even while it makes progress.
const HARD_LIMIT_FACTOR: usize = 4;

/// The room's rule for queuing: how much a connection may hold, and for how long.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// Bytes a connection may have queued while its writer makes no progress for `slow_reader_grace`.
    limit: usize,
    slow_reader_grace_ms: u64,
    /// Set when a queue went over the limit: the room then yields, so writers get to run.
    lagging: AtomicBool,
}

impl Delivery {
    /// The rule for `limit` bytes and `slow_reader_grace`.
    pub(crate) fn new(limit: usize, slow_reader_grace: Duration) -> Self {
        Delivery {
            limit,
            slow_reader_grace_ms: slow_reader_grace.as_millis() as u64,
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
            let stalled = backlog.stalled_ms() > self.slow_reader_grace_ms;
            if stalled || queued + len > self.limit * HARD_LIMIT_FACTOR {
                return false;
            }
            self.lagging.store(true, Ordering::Relaxed);
        }
        backlog.add(len);
        handle.push(frame);
        true
    }

    /// Whether some queue went over the limit since the last call.
    pub(crate) fn take_lagging(&self) -> bool {
        self.lagging.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_numbered_queue_keeps_messages_until_they_are_acknowledged() {
        let (handle, queue) = numbered();
        let delivery = Delivery::new(1 << 20, Duration::from_secs(30));
        assert_eq!(queue.read(0, 100, &handle.backlog), Unacked::Empty);
        assert!(delivery.deliver(&handle, Bytes::from_static(b"ab")));
        assert!(delivery.deliver(&handle, Bytes::from_static(b"cde")));
        let both = Unacked::Messages(b"\x02ab\x03cde".to_vec(), 2);
        assert_eq!(queue.read(0, 100, &handle.backlog), both);
        assert_eq!(
            queue.read(0, 100, &handle.backlog),
            both,
            "a lost answer is sent again"
        );
        assert_eq!(handle.backlog.queued(), 5);
        assert_eq!(
            queue.read(1, 100, &handle.backlog),
            Unacked::Messages(b"\x03cde".to_vec(), 2)
        );
        assert_eq!(handle.backlog.queued(), 3, "acknowledged bytes are written");
        handle.close(CloseReason::DocumentDeleted);
        handle.close(CloseReason::Shutdown);
        assert!(delivery.deliver(&handle, Bytes::from_static(b"late")));
        assert_eq!(
            queue.read(1, 100, &handle.backlog),
            Unacked::Messages(b"\x03cde".to_vec(), 2),
            "what was queued before the close is still read; nothing after it is queued"
        );
        assert_eq!(
            queue.read(2, 100, &handle.backlog),
            Unacked::Closed(CloseReason::DocumentDeleted),
            "the first reason stays"
        );
    }

    #[test]
    fn a_read_stops_at_the_size_limit_but_takes_one_large_message() {
        let (handle, queue) = numbered();
        let delivery = Delivery::new(1 << 20, Duration::from_secs(30));
        delivery.deliver(&handle, Bytes::from(vec![1; 300]));
        delivery.deliver(&handle, Bytes::from(vec![2; 10]));
        let Unacked::Messages(body, last) = queue.read(0, 100, &handle.backlog) else {
            panic!("messages")
        };
        assert_eq!((body.len(), last), (302, 1));
    }
}
