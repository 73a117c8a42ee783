//! One WebSocket connection: a reader that passes binary frames to the room, and a writer that
//! drains the connection's outbound queue to the socket, sends keep-alives and closes.
//!
//! The loop is generic over `Sink`/`Stream` of WebSocket messages, so unit tests drive it with
//! in-memory channels.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crdt::protocol::encode_awareness;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_util::sync::CancellationToken;

use crate::close::CloseReason;
use crate::outbound::{ConnHandle, Outbound};
use crate::registry::RoomSender;
use crate::room::inbound::decode_frame;
use crate::room::{ConnId, RoomCommand};
use crate::telemetry::Metrics;

/// Frames written before the writer flushes, when more are queued.
const WRITE_BATCH: usize = 64;

/// Messages longer than this go out as a fragmented WebSocket message: frames of this size, which
/// every client reassembles into the one message. tungstenite copies a frame whole into the
/// connection's write buffer, drains that buffer from the front after each partial write, and
/// keeps its capacity: unfragmented, 150 joiners of a 20 MB document held a 20 MB copy each (a
/// peak of 3.2 GB), and the copies cost more CPU than the sending. In fragments, the buffer stays
/// this small and the message itself is shared by every receiver (the frames are slices of it).
const FRAGMENT_BYTES: usize = 256 * 1024;
/// How long a close frame may take to go out before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Timings of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Silence on the outbound side after which a keep-alive is sent.
    pub keepalive: Duration,
    /// Silence on the inbound side after which the client is considered gone.
    pub client_timeout: Duration,
    /// When the connection's token expires, in seconds since the Unix epoch; the connection is
    /// then closed with 4401.
    pub expires_at: Option<u64>,
    /// How long one batch of frames may take to go out before the client is considered to have
    /// stopped reading.
    pub write_timeout: Duration,
}

/// The connection's side of its outbound queue, created before joining the room.
pub struct Outbox {
    rx: mpsc::UnboundedReceiver<Outbound>,
    handle: ConnHandle,
}

impl Outbox {
    /// A new queue and the handle the room uses to fill it.
    pub fn new() -> Self {
        let (handle, rx) = crate::outbound::queue();
        Outbox { rx, handle }
    }

    /// The handle to give the room.
    pub fn handle(&self) -> ConnHandle {
        self.handle.clone()
    }

    /// The queue's receiving end and the handle, for transports other than a WebSocket.
    pub fn into_parts(self) -> OutboxParts {
        OutboxParts {
            rx: self.rx,
            handle: self.handle,
        }
    }
}

/// The two ends of an [`Outbox`].
pub struct OutboxParts {
    /// What the room queues for the client.
    pub rx: mpsc::UnboundedReceiver<Outbound>,
    /// The room's handle.
    pub handle: ConnHandle,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

/// How a connection ended, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed the connection or the socket failed.
    ClientGone,
    /// The relay closed it with this reason.
    Closed(CloseReason),
    /// The room no longer serves it.
    RoomGone,
}

impl Ended {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::ClientGone => "client_closed",
            Ended::Closed(reason) => reason.as_str(),
            Ended::RoomGone => "room_gone",
        }
    }
}

/// Serves a joined connection until it ends, then tells the room it left.
pub async fn serve<S>(
    socket: S,
    conn: ConnId,
    room: RoomSender,
    outbox: Outbox,
    settings: ConnectionSettings,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Ended
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (sink, stream) = socket.split();
    let Outbox { rx, handle } = outbox;
    let close_tx = handle.tx.clone();
    let expiry_tx = handle.tx.clone();
    let reader = read_loop(stream, conn, &room, close_tx, settings, &metrics);
    let writer = write_loop(sink, rx, &handle, settings, &shutdown, &metrics);
    tokio::pin!(reader, writer);
    let expiry = token_expiry(settings.expires_at);
    tokio::pin!(expiry);
    let ended = tokio::select! {
        ended = &mut writer => ended,
        () = &mut expiry => {
            tracing::info!("token expired; closing");
            let _ = expiry_tx.send(Outbound::Close(CloseReason::TokenExpired));
            tokio::time::timeout(CLOSE_GRACE * 2, &mut writer)
                .await
                .unwrap_or(Ended::Closed(CloseReason::TokenExpired))
        }
        read_end = &mut reader => match read_end {
            // The reader queued a close frame: give the writer a moment to send it.
            Some(reason) => tokio::time::timeout(CLOSE_GRACE * 2, writer)
                .await
                .unwrap_or(Ended::Closed(reason)),
            None => Ended::ClientGone,
        },
    };
    // The room may already be gone at shutdown; then there is nobody to tell.
    let _ = room.send(RoomCommand::Leave { conn }).await;
    metrics.disconnect(ended.as_str());
    ended
}

/// Completes when the token expires (never without an expiry): at the start of its `exp` second,
/// from which on it would be refused. The wall clock is read once; the wait runs on tokio's clock.
pub(crate) async fn token_expiry(expires_at: Option<u64>) {
    let deadline = expires_at
        .and_then(|exp| crate::auth::until_expiry(exp, std::time::SystemTime::now()))
        .and_then(|left| Instant::now().checked_add(left));
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What became of a client's frame.
pub(crate) enum Forwarded {
    /// Its messages went to the room.
    Taken,
    /// The room no longer serves the connection.
    RoomGone,
    /// A message of it is malformed: the messages before it went to the room, and the
    /// connection must be closed with 1002.
    Malformed,
}

/// Decodes a client's frame at the edge and hands its messages to the room.
pub(crate) async fn forward_frame(
    room: &RoomSender,
    conn: ConnId,
    frame: &Bytes,
    metrics: &Metrics,
) -> Forwarded {
    let decoded = decode_frame(frame);
    if !decoded.messages.is_empty() {
        let command = RoomCommand::Messages {
            conn,
            messages: decoded.messages,
        };
        if room.send(command).await.is_err() {
            return Forwarded::RoomGone;
        }
    }
    match decoded.error {
        None => Forwarded::Taken,
        Some(error) => {
            tracing::warn!(%conn, %error, "malformed message; closing the connection");
            metrics.error("malformed_message");
            Forwarded::Malformed
        }
    }
}

/// Reads frames until the client leaves. Returns the close reason it queued for the writer, if
/// the client broke a rule.
async fn read_loop<St>(
    mut stream: St,
    conn: ConnId,
    room: &RoomSender,
    close_tx: mpsc::UnboundedSender<Outbound>,
    settings: ConnectionSettings,
    metrics: &Metrics,
) -> Option<CloseReason>
where
    St: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let close = |reason: CloseReason| {
        let _ = close_tx.send(Outbound::Close(reason));
        Some(reason)
    };
    loop {
        let next = match tokio::time::timeout(settings.client_timeout, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                tracing::info!("client silent for too long; closing");
                return close(CloseReason::ClientTimeout);
            }
        };
        match next {
            Some(Ok(Message::Binary(frame))) => {
                metrics.frames_in.inc();
                metrics.bytes_in.inc_by(frame.len() as u64);
                match forward_frame(room, conn, &frame, metrics).await {
                    Forwarded::Taken => {}
                    Forwarded::RoomGone => return None,
                    Forwarded::Malformed => return close(CloseReason::ProtocolError),
                }
            }
            Some(Ok(Message::Text(_))) => {
                tracing::warn!("text frame; closing (the protocol is binary)");
                metrics.error("text_frame");
                return close(CloseReason::TextFrame);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(_))) | None => return None,
            Some(Err(WsError::Capacity(error))) => {
                let limit = match error {
                    CapacityError::MessageTooLong { max_size, .. } => max_size,
                    CapacityError::TooManyHeaders => 0,
                };
                tracing::warn!(limit, "frame over the size limit; closing");
                metrics.error("too_big");
                return close(CloseReason::TooBig);
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "socket error");
                return None;
            }
        }
    }
}

/// Writes what the room queues, batching frames into one flush, and keeps quiet connections
/// alive. Ends on a close request, a kick, or shutdown.
async fn write_loop<Si>(
    mut sink: Si,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    handle: &ConnHandle,
    settings: ConnectionSettings,
    shutdown: &CancellationToken,
    metrics: &Metrics,
) -> Ended
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    // An awareness message with no entries: a no-op for every client, but it counts as traffic
    // for the stock client's 30-second liveness check.
    let keepalive_frame = Bytes::from(encode_awareness(&[0]));
    // Pings go out on every tick, busy or not: a passive client (no awareness renewals) only
    // proves it is alive with its pongs. The awareness keep-alive is only needed when the
    // connection was otherwise quiet since the last tick.
    let mut ticks =
        tokio::time::interval_at(Instant::now() + settings.keepalive, settings.keepalive);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wrote_since_tick = false;
    loop {
        let reason = tokio::select! {
            biased;
            () = handle.kick.cancelled() => Some(CloseReason::SlowReader),
            () = shutdown.cancelled() => Some(CloseReason::Shutdown),
            item = rx.recv() => match item {
                None => return Ended::RoomGone,
                Some(Outbound::Close(reason)) => Some(reason),
                Some(Outbound::Frame(first)) => {
                    // The batch gives up when the socket takes nothing for the grace period
                    // (the client has stopped reading). Checked here too, because a room that
                    // has gone quiet delivers nothing more that could notice.
                    let write = write_batch(
                        &mut sink,
                        first,
                        &mut rx,
                        handle,
                        settings.write_timeout,
                        metrics,
                    );
                    tokio::select! {
                        biased;
                        () = handle.kick.cancelled() => Some(CloseReason::SlowReader),
                        result = write => match result {
                            Ok(None) => { wrote_since_tick = true; None }
                            Ok(Some(reason)) => Some(reason),
                            Err(_) => return Ended::ClientGone,
                        },
                    }
                }
            },
            _ = ticks.tick() => {
                let quiet = !std::mem::take(&mut wrote_since_tick);
                let ping = async {
                    if quiet {
                        sink.feed(Message::Binary(keepalive_frame.clone())).await?;
                    }
                    sink.feed(Message::Ping(Bytes::new())).await?;
                    sink.flush().await
                };
                match tokio::time::timeout(settings.keepalive, ping).await {
                    Ok(Ok(())) => None,
                    Ok(Err(_)) => return Ended::ClientGone,
                    // Cannot even send a keep-alive: the client is not reading.
                    Err(_) => Some(CloseReason::SlowReader),
                }
            }
        };
        if let Some(reason) = reason {
            if reason != CloseReason::SlowReader {
                let frame = CloseFrame {
                    code: CloseCode::from(reason.code()),
                    reason: reason.as_str().into(),
                };
                let _ =
                    tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
            }
            return Ended::Closed(reason);
        }
    }
}

/// Writes `first` and whatever else is queued (up to [`WRITE_BATCH`] frames), then flushes once.
/// Returns a close reason if one was found in the queue after the frames.
async fn write_batch<Si>(
    sink: &mut Si,
    first: Bytes,
    rx: &mut mpsc::UnboundedReceiver<Outbound>,
    handle: &ConnHandle,
    write_timeout: Duration,
    metrics: &Metrics,
) -> Result<Option<CloseReason>, WsError>
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    let mut next = Some(first);
    let mut written = 0;
    let mut close = None;
    while let Some(frame) = next.take() {
        let len = frame.len();
        if feed_message(sink, frame, write_timeout).await? == Fed::TimedOut {
            return Ok(Some(CloseReason::SlowReader));
        }
        handle.backlog.written(len);
        metrics.frames_out.inc();
        metrics.bytes_out.inc_by(len as u64);
        written += 1;
        if written < WRITE_BATCH {
            match rx.try_recv() {
                Ok(Outbound::Frame(frame)) => next = Some(frame),
                Ok(Outbound::Close(reason)) => close = Some(reason),
                Err(_) => {}
            }
        }
    }
    match tokio::time::timeout(write_timeout, sink.flush()).await {
        Ok(flushed) => flushed?,
        Err(_) => {
            tracing::warn!("socket took no data for the grace period; disconnecting");
            return Ok(Some(CloseReason::SlowReader));
        }
    }
    Ok(close)
}

/// Whether a write went out in time.
#[derive(Debug, PartialEq, Eq)]
enum Fed {
    Done,
    /// The socket took nothing for the grace period.
    TimedOut,
}

/// Queues one binary message on the socket, in fragments of [`FRAGMENT_BYTES`] when it is longer.
/// Nothing else is written between the fragments: this connection's writer is their only source
/// (control frames may come between, as RFC 6455 allows). Each frame must be taken within
/// `write_timeout`, not the whole batch: a client that reads slowly but steadily is not cut off
/// because a long batch or a large document takes a while.
async fn feed_message<Si>(
    sink: &mut Si,
    message: Bytes,
    write_timeout: Duration,
) -> Result<Fed, WsError>
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    let mut feed = async |item: Message| -> Result<Fed, WsError> {
        match tokio::time::timeout(write_timeout, sink.feed(item)).await {
            Ok(fed) => fed.map(|()| Fed::Done),
            Err(_) => {
                tracing::warn!("socket took no data for the grace period; disconnecting");
                Ok(Fed::TimedOut)
            }
        }
    };
    if message.len() <= FRAGMENT_BYTES {
        return feed(Message::Binary(message)).await;
    }
    let mut start = 0;
    while start < message.len() {
        let end = (start + FRAGMENT_BYTES).min(message.len());
        let opcode = if start == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fragment = Frame::message(message.slice(start..end), opcode, end == message.len());
        if feed(Message::Frame(fragment)).await? == Fed::TimedOut {
            return Ok(Fed::TimedOut);
        }
        start = end;
    }
    Ok(Fed::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_channel::mpsc as fmpsc;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A socket made of two in-memory channels.
    struct FakeSocket {
        incoming: fmpsc::UnboundedReceiver<Result<Message, WsError>>,
        outgoing: fmpsc::UnboundedSender<Message>,
    }

    impl Stream for FakeSocket {
        type Item = Result<Message, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Pin::new(&mut self.incoming).poll_next(cx)
        }
    }

    impl Sink<Message> for FakeSocket {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            self.outgoing
                .unbounded_send(item)
                .map_err(|_| WsError::ConnectionClosed)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Harness {
        to_relay: fmpsc::UnboundedSender<Result<Message, WsError>>,
        from_relay: fmpsc::UnboundedReceiver<Message>,
        room_rx: mpsc::Receiver<RoomCommand>,
        handle: ConnHandle,
        task: tokio::task::JoinHandle<Ended>,
    }

    fn start(settings: ConnectionSettings, shutdown: CancellationToken) -> Harness {
        let (to_relay, incoming) = fmpsc::unbounded();
        let (outgoing, from_relay) = fmpsc::unbounded();
        let (room_tx, room_rx) = mpsc::channel(8);
        let outbox = Outbox::new();
        let handle = outbox.handle();
        let task = tokio::spawn(serve(
            FakeSocket { incoming, outgoing },
            ConnId(1),
            room_tx,
            outbox,
            settings,
            shutdown,
            Arc::new(Metrics::new()),
        ));
        Harness {
            to_relay,
            from_relay,
            room_rx,
            handle,
            task,
        }
    }

    const SETTINGS: ConnectionSettings = ConnectionSettings {
        keepalive: Duration::from_secs(10),
        client_timeout: Duration::from_secs(60),
        expires_at: None,
        write_timeout: Duration::from_secs(10),
    };

    fn close_code(message: &Message) -> Option<u16> {
        match message {
            Message::Close(Some(frame)) => Some(frame.code.into()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn binary_frames_go_to_the_room_and_queued_frames_to_the_socket() {
        let mut h = start(SETTINGS, CancellationToken::new());
        h.to_relay
            .unbounded_send(Ok(Message::Binary(Bytes::from_static(&[0, 2, 2, 0, 0]))))
            .expect("send");
        match h.room_rx.recv().await {
            Some(RoomCommand::Messages { conn, messages }) => {
                assert_eq!(conn, ConnId(1));
                assert_eq!(
                    messages,
                    vec![crate::room::inbound::Inbound::Update {
                        message: Bytes::from_static(&[0, 2, 2, 0, 0]),
                        update: Bytes::from_static(&[0, 0]),
                    }],
                    "decoded at the edge"
                );
            }
            other => panic!("expected the frame's messages, got {other:?}"),
        }
        h.handle.backlog.add(3);
        h.handle
            .tx
            .send(Outbound::Frame(Bytes::from_static(&[1, 2, 3])))
            .expect("queue");
        let sent = h.from_relay.next().await.expect("a frame");
        assert_eq!(sent, Message::Binary(Bytes::from_static(&[1, 2, 3])));
        assert_eq!(h.handle.backlog.queued(), 0);
        drop(h.to_relay);
        assert_eq!(h.task.await.expect("task"), Ended::ClientGone);
        assert!(matches!(
            h.room_rx.recv().await,
            Some(RoomCommand::Leave { .. })
        ));
    }

    #[tokio::test]
    async fn long_messages_go_out_in_fragments_of_the_shared_bytes() {
        let mut h = start(SETTINGS, CancellationToken::new());
        let message: Bytes = (0..FRAGMENT_BYTES * 2 + 10).map(|i| i as u8).collect();
        h.handle.backlog.add(message.len());
        h.handle
            .tx
            .send(Outbound::Frame(message.clone()))
            .expect("queue");
        let mut reassembled = Vec::new();
        let mut opcodes = Vec::new();
        loop {
            let Message::Frame(frame) = h.from_relay.next().await.expect("a fragment") else {
                panic!("a long message goes out as raw frames");
            };
            let is_final = frame.header().is_final;
            opcodes.push(frame.header().opcode);
            // Each fragment is a slice of the queued message, not a copy.
            assert!(message.as_ptr_range().contains(&frame.payload().as_ptr()));
            reassembled.extend_from_slice(frame.payload());
            if is_final {
                break;
            }
        }
        assert_eq!(
            opcodes,
            [
                OpCode::Data(Data::Binary),
                OpCode::Data(Data::Continue),
                OpCode::Data(Data::Continue)
            ]
        );
        assert_eq!(reassembled, message);
        assert_eq!(h.handle.backlog.queued(), 0);
    }

    #[tokio::test]
    async fn text_frame_is_closed_with_1003() {
        let mut h = start(SETTINGS, CancellationToken::new());
        h.to_relay
            .unbounded_send(Ok(Message::Text("hello".into())))
            .expect("send");
        let sent = h.from_relay.next().await.expect("close frame");
        assert_eq!(close_code(&sent), Some(1003));
        assert_eq!(
            h.task.await.expect("task"),
            Ended::Closed(CloseReason::TextFrame)
        );
    }

    #[tokio::test]
    async fn oversize_message_is_closed_with_1009() {
        let mut h = start(SETTINGS, CancellationToken::new());
        h.to_relay
            .unbounded_send(Err(WsError::Capacity(CapacityError::MessageTooLong {
                size: 100,
                max_size: 10,
            })))
            .expect("send");
        let sent = h.from_relay.next().await.expect("close frame");
        assert_eq!(close_code(&sent), Some(1009));
    }

    #[tokio::test]
    async fn room_close_request_sends_the_code() {
        let mut h = start(SETTINGS, CancellationToken::new());
        h.handle
            .tx
            .send(Outbound::Close(CloseReason::ProtocolError))
            .expect("queue");
        let sent = h.from_relay.next().await.expect("close frame");
        assert_eq!(close_code(&sent), Some(1002));
        assert_eq!(
            h.task.await.expect("task"),
            Ended::Closed(CloseReason::ProtocolError)
        );
    }

    #[tokio::test]
    async fn shutdown_closes_with_1001() {
        let shutdown = CancellationToken::new();
        let mut h = start(SETTINGS, shutdown.clone());
        shutdown.cancel();
        let sent = h.from_relay.next().await.expect("close frame");
        assert_eq!(close_code(&sent), Some(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_token_closes_with_4401() {
        let settings = ConnectionSettings {
            expires_at: Some(crate::auth::now_secs() + 5),
            ..SETTINGS
        };
        let started = Instant::now();
        let mut h = start(settings, CancellationToken::new());
        let mut code = None;
        while let Some(message) = h.from_relay.next().await {
            if let Some(c) = close_code(&message) {
                code = Some(c);
                break;
            }
        }
        assert_eq!(code, Some(4401));
        // At `exp`, not later: `exp` is 4 to 5 seconds away (now_secs rounds down).
        let waited = started.elapsed();
        assert!(
            waited > Duration::from_secs(4) && waited <= Duration::from_secs(5),
            "closed after {waited:?}"
        );
        assert_eq!(
            h.task.await.expect("task"),
            Ended::Closed(CloseReason::TokenExpired)
        );
    }

    #[tokio::test]
    async fn kick_ends_the_connection() {
        let h = start(SETTINGS, CancellationToken::new());
        h.handle.kick.cancel();
        assert_eq!(
            h.task.await.expect("task"),
            Ended::Closed(CloseReason::SlowReader)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connection_still_gets_pings_but_no_awareness_keepalive() {
        let mut h = start(SETTINGS, CancellationToken::new());
        let data = Bytes::from_static(&[0, 2, 2, 0, 0]);
        let mut saw_ping = false;
        for _ in 0..40 {
            h.handle.backlog.add(data.len());
            h.handle
                .tx
                .send(Outbound::Frame(data.clone()))
                .expect("queue");
            loop {
                match h.from_relay.next().await.expect("message") {
                    Message::Ping(_) => saw_ping = true,
                    Message::Binary(frame) => {
                        assert_eq!(frame, data, "no keep-alive frame while busy");
                        break;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Answer like a live client would, so the client timeout does not fire.
            h.to_relay
                .unbounded_send(Ok(Message::Pong(Bytes::new())))
                .expect("pong");
        }
        assert!(saw_ping, "a busy connection must still be pinged");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_connection_gets_keepalives_and_silent_client_is_dropped() {
        let mut h = start(SETTINGS, CancellationToken::new());
        let first = h.from_relay.next().await.expect("keep-alive");
        assert_eq!(first, Message::Binary(Bytes::from_static(&[1, 1, 0])));
        assert!(matches!(h.from_relay.next().await, Some(Message::Ping(_))));
        // The client never answers: after the client timeout it is closed.
        let mut closed = None;
        while let Some(message) = h.from_relay.next().await {
            if let Some(code) = close_code(&message) {
                closed = Some(code);
                break;
            }
        }
        assert_eq!(closed, Some(1001));
        assert_eq!(
            h.task.await.expect("task"),
            Ended::Closed(CloseReason::ClientTimeout)
        );
    }
}
