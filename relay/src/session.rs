//! One room connection from its admission to its end, the same for every transport.
//!
//! A transport (a WebSocket, a long-polling session) admits a connection
//! ([`crate::admission`]), creates its outbound queue ([`crate::outbound`]) and calls
//! [`join`]; from there the [`Session`] owns what every connection has: the room and its place
//! there, the metrics, the token's expiry, the liveness timeout, the shutdown and the close
//! reason. The transport supplies only its pump: a future that moves messages between the client
//! and the room through the session's [`Link`] until the connection ends.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admitted, ConnectionSlot};
use crate::auth::Access;
use crate::close::CloseReason;
use crate::outbound::ConnHandle;
use crate::registry::{JoinError, Membership, RoomSender};
use crate::room::inbound::{Inbound, decode_frame};
use crate::room::{ConnId, RoomCommand};
use crate::state::AppState;
use crate::telemetry::Metrics;

/// How long a closing connection may take to get its close out before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How a connection ended, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The client closed the connection or the socket failed.
    ClientGone,
    /// The relay closed it with this reason.
    Closed(CloseReason),
    /// The room no longer serves it.
    RoomGone,
}

impl Ended {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Ended::ClientGone => "client_closed",
            Ended::Closed(reason) => reason.as_str(),
            Ended::RoomGone => "room_gone",
        }
    }
}

/// How long a client may stay silent: `start` until its first sign of life (a long-polling
/// client's first poll), `idle` after that.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// Before the first sign of life.
    pub(crate) start: Duration,
    /// Between signs of life.
    pub(crate) idle: Duration,
}

/// When the client was last heard from, on tokio's clock.
#[derive(Debug)]
pub(crate) struct Liveness {
    opened: Instant,
    timeouts: Timeouts,
    /// Milliseconds after `opened` of the last sign of life, plus one; 0 before the first.
    last_seen: AtomicU64,
}

impl Liveness {
    fn new(timeouts: Timeouts) -> Self {
        Liveness {
            opened: Instant::now(),
            timeouts,
            last_seen: AtomicU64::new(0),
        }
    }

    /// The client showed a sign of life.
    pub(crate) fn touch(&self) {
        let since = Instant::now().saturating_duration_since(self.opened);
        self.last_seen
            .store(since.as_millis() as u64 + 1, Ordering::Relaxed);
    }

    /// When the client counts as gone if it stays silent.
    fn deadline(&self) -> Instant {
        match self.last_seen.load(Ordering::Relaxed) {
            0 => self.opened + self.timeouts.start,
            seen => self.opened + Duration::from_millis(seen - 1) + self.timeouts.idle,
        }
    }
}

/// What became of a client's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// Its messages went to the room.
    Taken,
    /// The room no longer serves the connection.
    RoomGone,
    /// A message of it is malformed: the messages before it went to the room, and the
    /// connection is being closed with 1002.
    Malformed,
}

/// What a transport's pump needs of its session: the way to the room and back.
#[derive(Clone)]
pub(crate) struct Link {
    conn: ConnId,
    room: RoomSender,
    handle: ConnHandle,
    liveness: Arc<Liveness>,
    metrics: Arc<Metrics>,
}

impl Link {
    /// The connection's outbound queue, as the room sees it.
    pub(crate) fn handle(&self) -> &ConnHandle {
        &self.handle
    }

    /// The client showed a sign of life.
    pub(crate) fn touch(&self) {
        self.liveness.touch();
    }

    /// Asks the connection to close for `reason` (the pump sends the close and ends).
    pub(crate) fn close(&self, reason: CloseReason) {
        self.handle.close(reason);
    }

    /// Decodes a client's frame at the edge and hands its messages to the room; closes the
    /// connection (1002) on a malformed message.
    pub(crate) async fn forward(&self, frame: &Bytes) -> Forwarded {
        self.metrics.frames_in.inc();
        self.metrics.bytes_in.inc_by(frame.len() as u64);
        self.touch();
        let decoded = decode_frame(frame);
        if self.send_messages(decoded.messages).await == Forwarded::RoomGone {
            return Forwarded::RoomGone;
        }
        match decoded.error {
            None => Forwarded::Taken,
            Some(error) => {
                tracing::warn!(%error, "malformed message; closing the connection");
                self.metrics.error("malformed_message");
                self.close(CloseReason::ProtocolError);
                Forwarded::Malformed
            }
        }
    }
}

impl Link {
    /// Hands messages a transport decoded itself to the room (the frame is counted by the
    /// transport with [`Link::count_frame`]).
    pub(crate) async fn send_messages(&self, messages: Vec<Inbound>) -> Forwarded {
        if messages.is_empty() {
            return Forwarded::Taken;
        }
        let command = RoomCommand::Messages {
            conn: self.conn,
            messages,
        };
        match self.room.send(command).await {
            Ok(()) => Forwarded::Taken,
            Err(_) => Forwarded::RoomGone,
        }
    }

    /// Counts a client's frame of `len` bytes in the metrics.
    pub(crate) fn count_frame(&self, len: usize) {
        self.metrics.frames_in.inc();
        self.metrics.bytes_in.inc_by(len as u64);
    }
}

/// A joined room connection.
pub(crate) struct Session {
    link: Link,
    access: Access,
    /// When the token expires (Unix seconds); the connection is then closed with 4401.
    expires_at: Option<u64>,
    shutdown: CancellationToken,
    /// Given back when the session ends: the place in the room, the connection slots.
    membership: Option<Membership>,
    slot: Option<ConnectionSlot>,
}

/// Joins `room` as connection `conn`, admitted, whose messages go to `handle`.
///
/// # Errors
/// [`JoinError`] when the room cannot take it; the connection slots are given back.
pub(crate) async fn join(
    state: &AppState,
    conn: ConnId,
    room: &str,
    admitted: Admitted,
    handle: ConnHandle,
    timeouts: Timeouts,
) -> Result<Session, JoinError> {
    let Admitted { grant, slot } = admitted;
    let joined = match state
        .registry
        .join(room, conn, &grant, handle.clone())
        .await
    {
        Ok(joined) => joined,
        Err(error) => {
            // Counted here, once for every transport, like every other way a session ends.
            state.metrics.disconnect("room_unavailable");
            return Err(error);
        }
    };
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    metrics.connections_total.inc();
    Ok(Session {
        link: Link {
            conn,
            room: joined.room,
            handle,
            liveness: Arc::new(Liveness::new(timeouts)),
            metrics,
        },
        access: grant.access,
        expires_at: grant.expires_at,
        shutdown: state.shutdown.clone(),
        membership: Some(joined.membership),
        slot: Some(slot),
    })
}

impl Session {
    /// The way to the room and back, for the transport's pump.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// Serves the connection with the transport's `pump` until it ends, then leaves the room.
    /// The session ends it too: at shutdown (1001), when the token expires (4401), when the
    /// client stays silent past its timeout (1001), and at once when it fell behind (the pump is
    /// dropped: a slow reader's socket takes no close frame).
    pub(crate) async fn run(mut self, pump: impl Future<Output = Ended>) -> Ended {
        tracing::info!(access = self.access.as_str(), "connected");
        tokio::pin!(pump);
        let expiry = token_expiry(self.expires_at);
        tokio::pin!(expiry);
        let kick = self.link.handle.kick.clone();
        let ended = loop {
            let silent_at = self.link.liveness.deadline();
            let reason = tokio::select! {
                ended = &mut pump => break ended,
                () = kick.cancelled() => break Ended::Closed(CloseReason::SlowReader),
                () = self.shutdown.cancelled() => CloseReason::Shutdown,
                () = &mut expiry => CloseReason::TokenExpired,
                () = tokio::time::sleep_until(silent_at) => {
                    if self.link.liveness.deadline() > Instant::now() {
                        continue;
                    }
                    CloseReason::ClientTimeout
                }
            };
            tracing::info!(reason = reason.as_str(), "closing");
            self.link.close(reason);
            // The pump sends what is queued, then the close, and ends.
            break tokio::time::timeout(CLOSE_GRACE, &mut pump)
                .await
                .unwrap_or(Ended::Closed(reason));
        };
        if ended == Ended::Closed(CloseReason::SlowReader) {
            // A long-polling client learns it on its next poll.
            self.link.close(CloseReason::SlowReader);
        }
        // The room may already be gone at shutdown; then there is nobody to tell.
        let _ = self
            .link
            .room
            .send(RoomCommand::Leave {
                conn: self.link.conn,
            })
            .await;
        drop(self.membership.take());
        drop(self.slot.take());
        let metrics = &self.link.metrics;
        metrics.connections.dec();
        metrics.disconnect(ended.as_str());
        tracing::info!(reason = ended.as_str(), "disconnected");
        ended
    }
}

/// Completes when the token expires (never without an expiry): at the start of its `exp` second,
/// from which on it would be refused. The wall clock is read once; the wait runs on tokio's clock.
async fn token_expiry(expires_at: Option<u64>) {
    let deadline = expires_at
        .and_then(|exp| crate::auth::until_expiry(exp, std::time::SystemTime::now()))
        .and_then(|left| Instant::now().checked_add(left));
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A session without a registry or an admission, for the transports' unit tests: the room
    //! is a channel the test reads.

    use super::*;
    use tokio::sync::mpsc;

    /// A session on `handle` whose room commands arrive on the returned receiver.
    pub(crate) fn session(
        handle: ConnHandle,
        timeouts: Timeouts,
        expires_at: Option<u64>,
        shutdown: CancellationToken,
    ) -> (Session, mpsc::Receiver<RoomCommand>) {
        let (room, room_rx) = mpsc::channel(16);
        let session = Session {
            link: Link {
                conn: ConnId(1),
                room,
                handle,
                liveness: Arc::new(Liveness::new(timeouts)),
                metrics: Arc::new(Metrics::new()),
            },
            access: Access::Write,
            expires_at,
            shutdown,
            membership: None,
            slot: None,
        };
        (session, room_rx)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::session;
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        start: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn a_client_silent_past_its_timeout_is_closed_and_leaves_the_room() {
        let (handle, mut rx) = crate::outbound::channel();
        let (session, mut room) = session(handle, TIMEOUTS, None, CancellationToken::new());
        let link = session.link().clone();
        let pump = async move {
            // The transport's pump: it ends when asked to close.
            loop {
                match rx.recv().await {
                    Some(crate::outbound::Outbound::Close(reason)) => {
                        return Ended::Closed(reason);
                    }
                    Some(_) => {}
                    None => return Ended::RoomGone,
                }
            }
        };
        let task = tokio::spawn(session.run(pump));
        // A sign of life at 9 s: the idle timeout (60 s) counts from there.
        tokio::time::sleep(Duration::from_secs(9)).await;
        link.touch();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!task.is_finished(), "alive until 69 s");
        let ended = task.await.expect("the session");
        assert_eq!(ended, Ended::Closed(CloseReason::ClientTimeout));
        assert!(matches!(room.recv().await, Some(RoomCommand::Leave { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_shows_life_is_closed_at_the_start_timeout() {
        let (handle, _rx) = crate::outbound::channel();
        let (session, _room) = session(handle, TIMEOUTS, None, CancellationToken::new());
        let started = Instant::now();
        let ended = session.run(std::future::pending()).await;
        assert_eq!(ended, Ended::Closed(CloseReason::ClientTimeout));
        assert_eq!(started.elapsed(), TIMEOUTS.start + CLOSE_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_dropped_at_once() {
        let (handle, _rx) = crate::outbound::channel();
        let kick = handle.kick.clone();
        let (session, _room) = session(handle, TIMEOUTS, None, CancellationToken::new());
        kick.cancel();
        let ended = session.run(std::future::pending()).await;
        assert_eq!(ended, Ended::Closed(CloseReason::SlowReader));
    }
}
