//! One Hocuspocus WebSocket: a reader that decodes each frame once and opens, feeds and closes
//! documents, and a writer that puts every open document's outbound queue on the socket with the
//! document's name in front.
//!
//! Each open document is a connection of its room like any other: admitted through
//! [`crate::admission`] with the token of its Auth message, joined and run by its own
//! [`crate::session::Session`] (token expiry, liveness, shutdown, leaving), with a pump that
//! ends when the client closes the document or the socket ends. A close a session asks for (1001,
//! 4401, 1002, ...) closes the whole socket: the provider reconnects and authenticates every
//! document again, which is also what it does after any close. A document the relay refuses gets
//! PermissionDenied instead, because the provider ignores close codes and would reconnect forever.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SelectAll;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use http::HeaderMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::codec::{
    self, ClientMessage, DocKey, DocMessage, MSG_PING, MSG_PONG, Scope, Translated,
};
use crate::admission::JoinRequest;
use crate::auth::Access;
use crate::close::CloseReason;
use crate::edge::MAX_ROOM_NAME_BYTES;
use crate::outbound::{ConnHandle, Outbound};
use crate::room::inbound::Inbound;
use crate::session::{self, Ended, Forwarded, Link, Timeouts};
use crate::state::AppState;

/// How long a close frame may take to go out before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Messages longer than this go out as two or more frames (the name, then the room's bytes),
/// so a large sync step 2 is not copied to put a name in front of it.
const COPY_LIMIT: usize = 64 * 1024;
/// The PermissionDenied reason for a document deleted through the API.
const DELETED: &str = "the document was deleted";
/// Fragments of a long message, as on the y-websocket endpoint.
const FRAGMENT_BYTES: usize = 256 * 1024;

/// What the socket knows about its client, for admitting each document.
pub(crate) struct Client {
    /// The upgrade request's headers (`Origin`, `Authorization`).
    pub(crate) headers: HeaderMap,
    /// A token from the URL's query or the `Authorization` header, used when an Auth message
    /// carries an empty token.
    pub(crate) url_token: Option<String>,
    /// The client's address.
    pub(crate) peer: Option<SocketAddr>,
    /// The address the connection came in on.
    pub(crate) local: Option<SocketAddr>,
}

/// How the socket ended, for the sessions of its documents.
struct SocketEnd {
    token: CancellationToken,
    ended: OnceLock<Ended>,
}

impl SocketEnd {
    fn finish(&self, ended: Ended) {
        let _ = self.ended.set(ended);
        self.token.cancel();
    }

    fn ended(&self) -> Ended {
        self.ended.get().copied().unwrap_or(Ended::ClientGone)
    }
}

/// What the reader tells the writer.
enum ToWriter {
    /// A document was opened: `authenticated` goes out first, then what its room queues.
    Opened {
        id: u64,
        prefix: Bytes,
        authenticated: Bytes,
        handle: ConnHandle,
        rx: mpsc::UnboundedReceiver<Outbound>,
    },
    /// The client closed a document: what its room still queues is dropped.
    Closed(u64),
    /// A message of the socket's own (PermissionDenied, Authenticated again, Pong).
    Send(Bytes),
    /// Close the socket.
    Close(CloseReason),
    /// The client is a 4.x provider, which answers one-byte pings.
    Pings,
}

/// A document open on the socket, as the reader sees it.
struct OpenDoc {
    id: u64,
    link: Link,
    scope: Scope,
    /// Cancelled when the client closes the document: its session leaves the room.
    leave: CancellationToken,
    /// The id of the next save request, sent after each update so that its answer (once
    /// committed) becomes the SyncStatus the provider counts.
    next_save: u64,
    stateless: RateLimit,
}

/// A token bucket: `per_second` messages a second, in bursts of as many.
struct RateLimit {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        RateLimit {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Serves a Hocuspocus socket until it ends.
pub(crate) async fn serve<S>(state: Arc<AppState>, client: Client, socket: S)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (sink, stream) = socket.split();
    let end = Arc::new(SocketEnd {
        token: CancellationToken::new(),
        ended: OnceLock::new(),
    });
    let (to_writer, from_reader) = mpsc::unbounded_channel();
    let (deleted_tx, deleted) = mpsc::unbounded_channel();
    let mut reader = Reader {
        state: state.clone(),
        client,
        docs: HashMap::new(),
        to_writer,
        deleted,
        end: end.clone(),
    };
    let writer = write_loop(sink, from_reader, &deleted_tx, &state, &end);
    let reading = reader.read_loop(stream);
    tokio::pin!(writer, reading);
    let ended = tokio::select! {
        ended = &mut writer => ended,
        read_end = &mut reading => match read_end {
            // The reader asked for a close: give the writer a moment to send it.
            Some(reason) => tokio::time::timeout(CLOSE_GRACE * 2, writer)
                .await
                .unwrap_or(Ended::Closed(reason)),
            None => Ended::ClientGone,
        },
    };
    // Every open document's session ends with the socket.
    end.finish(ended);
    tracing::debug!(reason = ended.as_str(), "socket ended");
}

struct Reader {
    state: Arc<AppState>,
    client: Client,
    /// Open documents by the key the client uses.
    docs: HashMap<String, OpenDoc>,
    to_writer: mpsc::UnboundedSender<ToWriter>,
    /// Documents the writer found deleted (by connection id): no longer open.
    deleted: mpsc::UnboundedReceiver<u64>,
    end: Arc<SocketEnd>,
}

impl Reader {
    /// Reads frames until the client leaves or the socket ends. Returns the reason it asked the
    /// writer to close with, if the client broke a rule.
    async fn read_loop<St>(&mut self, mut stream: St) -> Option<CloseReason>
    where
        St: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let silence = self.state.config.client_timeout();
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(silence, stream.next()) => next,
                () = self.end.token.cancelled() => return None,
                Some(id) = self.deleted.recv() => {
                    // Its session leaves the room (which has let go of it already).
                    self.docs.retain(|_, doc| {
                        if doc.id == id {
                            doc.leave.cancel();
                        }
                        doc.id != id
                    });
                    continue;
                }
            };
            let reason = match next {
                Err(_) => Some(CloseReason::ClientTimeout),
                Ok(Some(Ok(Message::Binary(frame)))) => {
                    self.touch();
                    self.on_frame(frame).await
                }
                Ok(Some(Ok(Message::Text(_)))) => {
                    tracing::warn!("text frame; closing (the protocol is binary)");
                    self.state.metrics.error("text_frame");
                    Some(CloseReason::TextFrame)
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {
                    self.touch();
                    None
                }
                Ok(Some(Ok(Message::Close(_))) | None) => return None,
                Ok(Some(Err(WsError::Capacity(_)))) => {
                    tracing::warn!("frame over the size limit; closing");
                    self.state.metrics.error("too_big");
                    Some(CloseReason::TooBig)
                }
                Ok(Some(Err(error))) => {
                    tracing::debug!(%error, "socket error");
                    return None;
                }
            };
            if let Some(reason) = reason {
                let _ = self.to_writer.send(ToWriter::Close(reason));
                return Some(reason);
            }
        }
    }

    /// Every open document's session hears that the client is alive.
    fn touch(&self) {
        for doc in self.docs.values() {
            doc.link.touch();
        }
    }

    fn send(&self, message: ToWriter) {
        // The writer only stops when the socket ends, and the reader then stops too.
        let _ = self.to_writer.send(message);
    }

    /// Acts on one frame; returns a reason to close the socket.
    async fn on_frame(&mut self, frame: Bytes) -> Option<CloseReason> {
        let message = match codec::decode(&frame) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "malformed message; closing the connection");
                self.state.metrics.error("malformed_message");
                return Some(CloseReason::ProtocolError);
            }
        };
        let (key, message) = match message {
            ClientMessage::Ping => {
                self.send(ToWriter::Send(Bytes::from_static(&[MSG_PONG])));
                return None;
            }
            ClientMessage::Pong => return None,
            ClientMessage::Doc(key, message) => (key, message),
        };
        match message {
            DocMessage::Auth { token, version } => {
                if version.is_some() {
                    self.send(ToWriter::Pings);
                }
                self.open(key, token).await;
                None
            }
            DocMessage::Close => {
                if let Some(doc) = self.docs.remove(&key.key) {
                    tracing::debug!(conn = doc.id, "the client closed a document");
                    doc.leave.cancel();
                    self.send(ToWriter::Closed(doc.id));
                }
                None
            }
            DocMessage::Room(inbound) => {
                let Some(doc) = self.docs.get_mut(&key.key) else {
                    // Not authorised (refused, or sent before its Auth): Hocuspocus' server
                    // drops these too.
                    tracing::debug!("message for a document that is not open; ignored");
                    return None;
                };
                doc.link.count_frame(frame.len());
                let ack = matches!(inbound, Inbound::SyncStep2(_) | Inbound::Update { .. });
                let mut messages = vec![inbound];
                if ack {
                    doc.next_save += 1;
                    messages.push(Inbound::SaveRequest(doc.next_save));
                }
                if doc.link.send_messages(messages).await == Forwarded::RoomGone {
                    self.forget(&key.key);
                }
                None
            }
            DocMessage::Stateless {
                message,
                payload_len,
            } => {
                let limit = self.state.config.max_stateless_bytes;
                // Not open: ignored, as any message for it.
                let doc = self.docs.get_mut(&key.key)?;
                if payload_len > limit {
                    tracing::warn!(payload_len, limit, "stateless message over the limit");
                    self.state.metrics.error("stateless_limit");
                    return Some(CloseReason::StatelessLimit);
                }
                if !doc.stateless.take() {
                    tracing::debug!("stateless message over the rate limit; dropped");
                    self.state.metrics.error("stateless_dropped");
                    return None;
                }
                doc.link.count_frame(frame.len());
                let messages = vec![Inbound::Stateless(message)];
                if doc.link.send_messages(messages).await == Forwarded::RoomGone {
                    self.forget(&key.key);
                }
                None
            }
            DocMessage::Ignored(kind) => {
                tracing::debug!(kind, "ignoring a message type the relay does not act on");
                None
            }
        }
    }

    /// A document whose room no longer serves it.
    fn forget(&mut self, key: &str) {
        if let Some(doc) = self.docs.remove(key) {
            doc.leave.cancel();
            self.send(ToWriter::Closed(doc.id));
        }
    }

    fn deny(&self, key: &DocKey, reason: &str) {
        tracing::info!(room = %key.room, reason, "document refused");
        self.send(ToWriter::Send(codec::encode_permission_denied(
            &key.prefix(),
            reason,
        )));
    }

    /// Authorises and opens a document: Authenticated then the room's greeting, or
    /// PermissionDenied.
    async fn open(&mut self, key: DocKey, token: String) {
        if let Some(doc) = self.docs.get(&key.key) {
            // Asked again on an open document: the same answer.
            let authenticated = codec::encode_authenticated(&key.prefix(), doc.scope);
            self.send(ToWriter::Send(authenticated));
            return;
        }
        if let Err(reason) = check_name(&key.room) {
            self.state.metrics.error("invalid_document_name");
            return self.deny(&key, reason);
        }
        if self.docs.len() >= self.state.config.max_documents_per_connection {
            self.state.metrics.error("too_many_documents");
            return self.deny(&key, "too many documents on this connection");
        }
        let token = Some(token)
            .filter(|t| !t.is_empty())
            .or_else(|| self.client.url_token.clone());
        let request = JoinRequest {
            room: &key.room,
            headers: &self.client.headers,
            token: token.as_deref(),
            peer: self.client.peer,
            local: self.client.local,
        };
        let state = &self.state;
        let admitted = match state.admission.admit(&state.registry, &request) {
            Ok(admitted) => admitted,
            Err(refusal) => return self.deny(&key, &refusal.to_string()),
        };
        let scope = if admitted.grant.access >= Access::Write {
            Scope::ReadWrite
        } else {
            Scope::ReadOnly
        };
        let conn = state.next_conn_id();
        let peer = self.client.peer.map(|p| p.to_string()).unwrap_or_default();
        let span = tracing::info_span!("conn", conn_id = conn.0, room = %key.room, peer = %peer);
        let (handle, rx) = crate::outbound::channel();
        let handle = handle.taking_stateless();
        let client_timeout = state.config.client_timeout();
        let timeouts = Timeouts {
            start: client_timeout,
            idle: client_timeout,
        };
        let joined = session::join(state, conn, &key.room, admitted, handle.clone(), timeouts)
            .instrument(span.clone())
            .await;
        let session = match joined {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(%error, room = %key.room, "cannot join the room");
                return self.deny(&key, &error.to_string());
            }
        };
        let prefix = key.prefix();
        self.send(ToWriter::Opened {
            id: conn.0,
            authenticated: codec::encode_authenticated(&prefix, scope),
            prefix,
            handle,
            rx,
        });
        let leave = CancellationToken::new();
        let link = session.link().clone();
        let end = self.end.clone();
        let pump = {
            let leave = leave.clone();
            let end = end.clone();
            async move {
                tokio::select! {
                    () = leave.cancelled() => Ended::ClientGone,
                    () = end.token.cancelled() => end.ended(),
                }
            }
        };
        state.connections.spawn(
            async move {
                if session.run(pump).await == Ended::Closed(CloseReason::SlowReader) {
                    // The socket is shared: a document whose queue fell behind means the
                    // client stopped reading all of them.
                    end.finish(Ended::Closed(CloseReason::SlowReader));
                }
            }
            .instrument(span),
        );
        self.docs.insert(
            key.key,
            OpenDoc {
                id: conn.0,
                link,
                scope,
                leave,
                next_save: 0,
                stateless: RateLimit::new(state.config.max_stateless_per_second),
            },
        );
    }
}

/// Checks a document name as the y-websocket endpoint checks a room name (there it comes
/// percent-encoded in the path; here as it is).
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the document name is empty");
    }
    if name.len() > MAX_ROOM_NAME_BYTES {
        return Err("the document name is longer than 512 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("the document name contains control characters");
    }
    Ok(())
}

/// A document as the writer sees it.
struct WriterDoc {
    prefix: Bytes,
    handle: ConnHandle,
}

type DocStream = std::pin::Pin<Box<dyn Stream<Item = (u64, Outbound)> + Send>>;

fn doc_stream(id: u64, mut rx: mpsc::UnboundedReceiver<Outbound>) -> DocStream {
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(move |item| (id, item)))
}

/// Writes what the reader and the documents' rooms queue, and keeps a quiet socket alive.
async fn write_loop<Si>(
    mut sink: Si,
    mut from_reader: mpsc::UnboundedReceiver<ToWriter>,
    deleted: &mpsc::UnboundedSender<u64>,
    state: &AppState,
    end: &SocketEnd,
) -> Ended
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    let keepalive = state.config.keepalive();
    let grace = state.config.slow_reader_grace();
    let metrics = &state.metrics;
    let mut docs: HashMap<u64, WriterDoc> = HashMap::new();
    let mut streams: SelectAll<DocStream> = SelectAll::new();
    let mut pings = false;
    let mut ticks = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wrote_since_tick = false;
    loop {
        let written = tokio::select! {
            biased;
            () = end.token.cancelled() => return end.ended(),
            () = state.shutdown.cancelled(), if docs.is_empty() => {
                // Documents' sessions close the socket themselves; one without any closes here.
                return close(&mut sink, CloseReason::Shutdown).await;
            }
            command = from_reader.recv() => match command {
                None => return Ended::ClientGone,
                Some(ToWriter::Opened { id, prefix, authenticated, handle, rx }) => {
                    docs.insert(id, WriterDoc { prefix, handle });
                    streams.push(doc_stream(id, rx));
                    write(&mut sink, Message::Binary(authenticated), grace).await
                }
                Some(ToWriter::Closed(id)) => {
                    docs.remove(&id);
                    Ok(false)
                }
                Some(ToWriter::Send(message)) => write(&mut sink, Message::Binary(message), grace).await,
                Some(ToWriter::Close(reason)) => return close(&mut sink, reason).await,
                Some(ToWriter::Pings) => {
                    pings = true;
                    Ok(false)
                }
            },
            Some((id, item)) = streams.next(), if !streams.is_empty() => {
                let Some(doc) = docs.get(&id) else {
                    // A document the client closed: nothing of it goes out any more.
                    continue;
                };
                match item {
                    Outbound::Close(CloseReason::DocumentDeleted) => {
                        // Closing the socket would not stop a provider: it ignores close codes,
                        // reconnects at once and its sync step 2 would bring the deleted content
                        // back. Refusing the document leaves it unauthenticated instead (until it
                        // reconnects for another reason); the socket's other documents go on.
                        let denied = codec::encode_permission_denied(&doc.prefix, DELETED);
                        docs.remove(&id);
                        let _ = deleted.send(id);
                        write(&mut sink, Message::Binary(denied), grace).await
                    }
                    Outbound::Close(reason) => return close(&mut sink, reason).await,
                    Outbound::Frame(message) => {
                        let len = message.len();
                        let result = match codec::translate(&doc.prefix, &message) {
                            Translated::Prefixed => {
                                write_prefixed(&mut sink, &doc.prefix, message, grace).await
                            }
                            Translated::Own(own) => write(&mut sink, Message::Binary(own), grace).await,
                            Translated::Dropped => Ok(false),
                        };
                        doc.handle.backlog.written(len);
                        metrics.frames_out.inc();
                        metrics.bytes_out.inc_by(len as u64);
                        result
                    }
                }
            }
            _ = ticks.tick() => {
                let quiet = !std::mem::take(&mut wrote_since_tick);
                let mut result = Ok(false);
                if quiet {
                    // Traffic for the provider's 30-second message timeout: a 4.x provider
                    // answers a one-byte ping; a 3.x provider would throw on it, so it gets an
                    // awareness update with no entries for one of its documents.
                    if pings {
                        result = write(&mut sink, Message::Binary(Bytes::from_static(&[MSG_PING])), grace).await;
                    } else if let Some(doc) = docs.values().next() {
                        let frame = [doc.prefix.as_ref(), &crdt::protocol::encode_awareness(&[0])].concat();
                        result = write(&mut sink, Message::Binary(frame.into()), grace).await;
                    }
                }
                if matches!(result, Ok(false)) {
                    result = write(&mut sink, Message::Ping(Bytes::new()), grace).await;
                }
                result.map(|_| false)
            }
        };
        match written {
            Ok(wrote) => wrote_since_tick |= wrote,
            Err(Stop::Slow) => {
                tracing::warn!("socket took no data for the grace period; disconnecting");
                metrics.error("outbound_queue_full");
                return Ended::Closed(CloseReason::SlowReader);
            }
            Err(Stop::Gone) => return Ended::ClientGone,
        }
    }
}

/// Why the writer stops.
enum Stop {
    /// The socket took nothing for the grace period.
    Slow,
    /// The socket failed.
    Gone,
}

/// Sends one message; `Ok(true)` when it went out.
async fn write<Si>(sink: &mut Si, message: Message, grace: Duration) -> Result<bool, Stop>
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    match crate::clock::within(grace, sink.send(message)).await {
        Some(Ok(())) => Ok(true),
        Some(Err(_)) => Err(Stop::Gone),
        None => Err(Stop::Slow),
    }
}

/// Sends `prefix` + `message` as one WebSocket message: copied together when short, else as
/// fragments (the prefix, then slices of the shared message).
async fn write_prefixed<Si>(
    sink: &mut Si,
    prefix: &Bytes,
    message: Bytes,
    grace: Duration,
) -> Result<bool, Stop>
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    if message.len() <= COPY_LIMIT {
        let frame = [prefix.as_ref(), message.as_ref()].concat();
        return write(sink, Message::Binary(frame.into()), grace).await;
    }
    let first = Frame::message(prefix.clone(), OpCode::Data(Data::Binary), false);
    write(sink, Message::Frame(first), grace).await?;
    let mut start = 0;
    while start < message.len() {
        let end = (start + FRAGMENT_BYTES).min(message.len());
        let fragment = Frame::message(
            message.slice(start..end),
            OpCode::Data(Data::Continue),
            end == message.len(),
        );
        write(sink, Message::Frame(fragment), grace).await?;
        start = end;
    }
    Ok(true)
}

/// Sends a close frame with `reason` (none to a slow reader) and ends.
async fn close<Si>(sink: &mut Si, reason: CloseReason) -> Ended
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    if reason != CloseReason::SlowReader {
        let frame = CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: reason.as_str().into(),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
    }
    Ended::Closed(reason)
}
