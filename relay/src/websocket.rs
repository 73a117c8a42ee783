//! Room connections over WebSockets at `/<room>`: the upgrade, which checks everything before
//! switching protocols (room name, handshake headers, then [`crate::admission`]: origin, token,
//! limits), and the socket's pump, which the connection's [`crate::session`] runs: a reader that
//! hands binary frames to the room, and a writer that drains the outbound queue to the socket and
//! keeps quiet connections alive.
//!
//! The pump is generic over `Sink`/`Stream` of WebSocket messages, so unit tests drive it with
//! in-memory channels.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crdt::protocol::encode_awareness;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::Instrument;
use warp::path::FullPath;
use warp::reply::Response;

use crate::admission::JoinRequest;
use crate::clock::within;
use crate::close::CloseReason;
use crate::edge::{error, request_token, room_name};
use crate::outbound::{ConnHandle, Outbound};
use crate::server::{LocalAddr, PeerAddr};
use crate::session::{self, Ended, Forwarded, Link, Timeouts};
use crate::state::AppState;
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

/// Timings of a WebSocket's pump.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PumpSettings {
    /// Silence on the outbound side after which a keep-alive is sent.
    pub(crate) keepalive: Duration,
    /// How long the socket may take to accept one frame before the client is considered to have
    /// stopped reading.
    pub(crate) slow_reader_grace: Duration,
}

fn header_has_token(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn websocket_config(max_message_bytes: usize) -> WebSocketConfig {
    // Small buffers: an idle connection should cost less than a whole idle room. tungstenite
    // allocates and zero-fills the whole read buffer for every connection, and reads at most
    // that much per system call: 1 KiB instead of 4 KiB saves 3 KiB per idle connection (16.5 to
    // 13.5 KiB per idle room with one connection, loadgen's idle preset, measured). It costs
    // about 4,000 more reads for a 5 MB update: estimated at a few milliseconds beside applying
    // it, not measured. The write buffer is only a threshold: it grows as frames are queued.
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(max_message_bytes + (1 << 20))
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// The parts of an upgrade request the handler needs.
pub(crate) struct UpgradeRequest {
    /// The request path (the room, percent-encoded).
    pub(crate) path: FullPath,
    /// The raw query string.
    pub(crate) query: Option<String>,
    /// The request headers.
    pub(crate) headers: HeaderMap,
    /// hyper's handle on the upgrade.
    pub(crate) on_upgrade: Option<OnUpgrade>,
    /// The peer address.
    pub(crate) peer: Option<PeerAddr>,
    /// The address the connection came in on.
    pub(crate) local: Option<LocalAddr>,
}

/// Answers an upgrade request: 101 and a room connection, or an HTTP error saying why not.
pub(crate) fn upgrade(request: UpgradeRequest, state: Arc<AppState>) -> Response {
    let UpgradeRequest {
        path,
        query,
        headers,
        on_upgrade,
        peer,
        local,
    } = request;
    let room = match room_name(path.as_str()) {
        Ok(room) => room,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let handshake = match Handshake::check(&headers, on_upgrade) {
        Ok(handshake) => handshake,
        Err(refused) => return refused.response(),
    };
    let token = request_token(query.as_deref(), &headers);
    let join = JoinRequest {
        room: &room,
        headers: &headers,
        token: token.as_deref(),
        peer: peer.map(|p| p.0),
        local: local.map(|l| l.0),
    };
    let admitted = match state.admission.admit(&state.registry, &join) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.response(),
    };
    let conn = state.next_conn_id();
    let peer = peer.map(|p| p.0.to_string()).unwrap_or_default();
    let span = tracing::info_span!("conn", conn_id = conn.0, room = %room, peer = %peer);
    let task_state = state.clone();
    handshake.accept(&state, span, move |socket| async move {
        serve_socket(&task_state, conn, &room, admitted, socket).await;
    })
}

/// A checked WebSocket handshake, ready to be accepted.
pub(crate) struct Handshake {
    accept: String,
    on_upgrade: OnUpgrade,
}

/// Why an upgrade request is no valid WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// No `Connection: upgrade`.
    #[error("missing Connection: upgrade")]
    NoConnectionUpgrade,
    /// Not `Sec-WebSocket-Version: 13`.
    #[error("WebSocket version 13 required")]
    Version,
    /// No `Sec-WebSocket-Key`.
    #[error("missing Sec-WebSocket-Key")]
    NoKey,
    /// hyper cannot upgrade this connection.
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl HandshakeError {
    /// The HTTP answer: 400, or 426 with the version the relay speaks.
    pub(crate) fn response(self) -> Response {
        if self == HandshakeError::Version {
            let mut response = error(StatusCode::UPGRADE_REQUIRED, &self.to_string());
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return response;
        }
        error(StatusCode::BAD_REQUEST, &self.to_string())
    }
}

/// The socket of an accepted upgrade.
pub(crate) type UpgradedSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

impl Handshake {
    /// Checks the handshake headers of an upgrade request.
    ///
    /// # Errors
    /// [`HandshakeError`] for a request that is no valid WebSocket handshake.
    pub(crate) fn check(
        headers: &HeaderMap,
        on_upgrade: Option<OnUpgrade>,
    ) -> Result<Handshake, HandshakeError> {
        if !header_has_token(headers, CONNECTION, "upgrade") {
            return Err(HandshakeError::NoConnectionUpgrade);
        }
        if headers
            .get(SEC_WEBSOCKET_VERSION)
            .and_then(|v| v.to_str().ok())
            != Some("13")
        {
            return Err(HandshakeError::Version);
        }
        let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
            return Err(HandshakeError::NoKey);
        };
        let Some(on_upgrade) = on_upgrade else {
            return Err(HandshakeError::NotUpgradable);
        };
        Ok(Handshake {
            accept: derive_accept_key(key.as_bytes()),
            on_upgrade,
        })
    }

    /// Answers 101 and serves the socket with `serve` in a task that shutdown waits for, in
    /// `span`.
    pub(crate) fn accept<F>(
        self,
        state: &AppState,
        span: tracing::Span,
        serve: impl FnOnce(UpgradedSocket) -> F + Send + 'static,
    ) -> Response
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Handshake { accept, on_upgrade } = self;
        let max_message_bytes = state.config.max_message_bytes;
        state.connections.spawn(
            async move {
                let upgraded = match on_upgrade.await {
                    Ok(upgraded) => upgraded,
                    Err(error) => {
                        tracing::debug!(%error, "upgrade failed");
                        return;
                    }
                };
                let config = websocket_config(max_message_bytes);
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                serve(socket).await;
            }
            .instrument(span),
        );
        let mut response = Response::default();
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
        );
        response
    }
}

/// Joins the room for an upgraded socket and runs it until it ends.
async fn serve_socket<S>(
    state: &AppState,
    conn: crate::room::ConnId,
    room: &str,
    admitted: crate::admission::Admitted,
    mut socket: S,
) where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (handle, rx) = crate::outbound::channel();
    let client_timeout = state.config.client_timeout();
    let timeouts = Timeouts {
        start: client_timeout,
        idle: client_timeout,
    };
    let session = match session::join(state, conn, room, admitted, handle, timeouts).await {
        Ok(session) => session,
        Err(error) => {
            tracing::warn!(%error, "cannot join the room");
            let reason = error.close_reason();
            let frame = CloseFrame {
                code: CloseCode::from(reason.code()),
                reason: reason.as_str().into(),
            };
            let _ =
                tokio::time::timeout(CLOSE_GRACE, socket.send(Message::Close(Some(frame)))).await;
            return;
        }
    };
    let settings = PumpSettings {
        keepalive: state.config.keepalive(),
        slow_reader_grace: state.config.slow_reader_grace(),
    };
    let link = session.link().clone();
    session
        .run(pump(socket, link, rx, settings, state.metrics.clone()))
        .await;
}

/// A WebSocket's pump: reads frames into the room and writes the outbound queue to the socket,
/// until either side ends.
pub(crate) async fn pump<S>(
    socket: S,
    link: Link,
    rx: mpsc::UnboundedReceiver<Outbound>,
    settings: PumpSettings,
    metrics: Arc<Metrics>,
) -> Ended
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (sink, stream) = socket.split();
    let reader = read_loop(stream, &link, &metrics);
    let writer = write_loop(sink, rx, link.handle(), settings, &metrics);
    tokio::pin!(reader, writer);
    tokio::select! {
        ended = &mut writer => ended,
        read_end = &mut reader => match read_end {
            // The reader asked for a close: give the writer a moment to send it.
            Some(reason) => tokio::time::timeout(CLOSE_GRACE * 2, writer)
                .await
                .unwrap_or(Ended::Closed(reason)),
            None => Ended::ClientGone,
        },
    }
}

/// Reads frames until the client leaves. Returns the reason it asked the writer to close with,
/// if the client broke a rule.
async fn read_loop<St>(mut stream: St, link: &Link, metrics: &Metrics) -> Option<CloseReason>
where
    St: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let close = |reason: CloseReason| {
        link.close(reason);
        Some(reason)
    };
    loop {
        let next = stream.next().await;
        link.touch();
        match next {
            Some(Ok(Message::Binary(frame))) => match link.forward(&frame).await {
                Forwarded::Taken => {}
                // The room ended under the connection. In cluster mode it was lost and queued
                // a 1013 close before going: let the writer send it. Otherwise (a room task that
                // panicked) the close it gets is this 1011.
                Forwarded::RoomGone => return close(CloseReason::Internal),
                Forwarded::Malformed => return Some(CloseReason::ProtocolError),
            },
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
/// alive. Ends on a close request (from the room, the reader or the session).
async fn write_loop<Si>(
    mut sink: Si,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    handle: &ConnHandle,
    settings: PumpSettings,
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
                        settings.slow_reader_grace,
                        metrics,
                    );
                    match write.await {
                        Ok(None) => { wrote_since_tick = true; None }
                        Ok(Some(reason)) => Some(reason),
                        Err(_) => return Ended::ClientGone,
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
    slow_reader_grace: Duration,
    metrics: &Metrics,
) -> Result<Option<CloseReason>, WsError>
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    let mut next = Some(first);
    let mut written = 0;
    let mut written_bytes = 0;
    let mut close = None;
    while let Some(frame) = next.take() {
        let len = frame.len();
        if feed_message(sink, frame, slow_reader_grace).await? == Fed::TimedOut {
            return Ok(Some(CloseReason::SlowReader));
        }
        written += 1;
        if len >= FRAGMENT_BYTES {
            // A large message may take a while: its progress counts at once, so a client that
            // reads slowly but steadily is not taken for a stalled one.
            handle.backlog.written(len);
            metrics.bytes_out.inc_by(len as u64);
        } else {
            written_bytes += len;
        }
        if written < WRITE_BATCH {
            match rx.try_recv() {
                Ok(Outbound::Frame(frame)) => next = Some(frame),
                Ok(Outbound::Close(reason)) => close = Some(reason),
                Err(_) => {}
            }
        }
    }
    match within(slow_reader_grace, sink.flush()).await {
        Some(flushed) => flushed?,
        None => {
            tracing::warn!("socket took no data for the grace period; disconnecting");
            return Ok(Some(CloseReason::SlowReader));
        }
    }
    // Small frames are accounted once per batch (one clock read), after the flush.
    if written_bytes > 0 {
        handle.backlog.written(written_bytes);
    }
    metrics.frames_out.inc_by(written as u64);
    metrics.bytes_out.inc_by(written_bytes as u64);
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
/// `slow_reader_grace`, not the whole batch: a client that reads slowly but steadily is not cut off
/// because a long batch or a large document takes a while.
async fn feed_message<Si>(
    sink: &mut Si,
    message: Bytes,
    slow_reader_grace: Duration,
) -> Result<Fed, WsError>
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    let mut feed = async |item: Message| -> Result<Fed, WsError> {
        match within(slow_reader_grace, sink.feed(item)).await {
            Some(fed) => fed.map(|()| Fed::Done),
            None => {
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
    use crate::room::{ConnId, RoomCommand};
    use futures_channel::mpsc as fmpsc;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio_util::sync::CancellationToken;

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

    /// A socket's pump run by a session, as a joined connection's is.
    fn start(expires_at: Option<u64>, shutdown: CancellationToken) -> Harness {
        let (to_relay, incoming) = fmpsc::unbounded();
        let (outgoing, from_relay) = fmpsc::unbounded();
        let (handle, rx) = crate::outbound::channel();
        let timeouts = Timeouts {
            start: CLIENT_TIMEOUT,
            idle: CLIENT_TIMEOUT,
        };
        let (session, room_rx) =
            session::testing::session(handle.clone(), timeouts, expires_at, shutdown);
        let link = session.link().clone();
        let socket = FakeSocket { incoming, outgoing };
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(session.run(pump(socket, link, rx, SETTINGS, metrics)));
        Harness {
            to_relay,
            from_relay,
            room_rx,
            handle,
            task,
        }
    }

    const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
    const SETTINGS: PumpSettings = PumpSettings {
        keepalive: Duration::from_secs(10),
        slow_reader_grace: Duration::from_secs(10),
    };

    /// Queues a message as the room does.
    fn queue(handle: &ConnHandle, frame: Bytes) {
        let delivery = crate::outbound::Delivery::new(1 << 30, Duration::from_secs(30));
        assert!(delivery.deliver(handle, frame));
    }

    fn close_code(message: &Message) -> Option<u16> {
        match message {
            Message::Close(Some(frame)) => Some(frame.code.into()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn binary_frames_go_to_the_room_and_queued_frames_to_the_socket() {
        let mut h = start(None, CancellationToken::new());
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
        queue(&h.handle, Bytes::from_static(&[1, 2, 3]));
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
        let mut h = start(None, CancellationToken::new());
        let message: Bytes = (0..FRAGMENT_BYTES * 2 + 10).map(|i| i as u8).collect();
        queue(&h.handle, message.clone());
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
        let mut h = start(None, CancellationToken::new());
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
        let mut h = start(None, CancellationToken::new());
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
        let mut h = start(None, CancellationToken::new());
        h.handle.close(CloseReason::ProtocolError);
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
        let mut h = start(None, shutdown.clone());
        shutdown.cancel();
        let sent = h.from_relay.next().await.expect("close frame");
        assert_eq!(close_code(&sent), Some(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_token_closes_with_4401() {
        let started = Instant::now();
        let mut h = start(Some(crate::auth::now_secs() + 5), CancellationToken::new());
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
        let h = start(None, CancellationToken::new());
        h.handle.kick.cancel();
        assert_eq!(
            h.task.await.expect("task"),
            Ended::Closed(CloseReason::SlowReader)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connection_still_gets_pings_but_no_awareness_keepalive() {
        let mut h = start(None, CancellationToken::new());
        let data = Bytes::from_static(&[0, 2, 2, 0, 0]);
        let mut saw_ping = false;
        for _ in 0..40 {
            queue(&h.handle, data.clone());
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
        let mut h = start(None, CancellationToken::new());
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
