//! HTTP long-polling: room connections for clients whose network blocks WebSockets.
//!
//! A session is one more kind of connection to a room: it joins with the same checks as a
//! WebSocket ([`crate::admission`]: origin, token, limits) and the room cannot tell the
//! difference. Web pages of other origins are refused, or answered with CORS headers, by the
//! routes' origin gate ([`crate::routes`]) before anything here runs. The client sends
//! message frames with `POST` and receives with a `GET` that the relay holds until something is
//! queued or the hold time passes. Outgoing messages carry sequence numbers; each `GET`
//! acknowledges what the client has, so a response lost on the way is sent again and nothing
//! arrives twice or out of order.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /poll?room=NAME[&token=T]` | `{"session": ID, "hold_ms": N}`: a new session (401/403/429/503 like a WebSocket) |
//! | `POST /poll/ID?n=N` (binary body: one or more messages; `N` numbers the body, the same on a retry) | 204; a body already taken is not applied again; the session is checked before the body is read |
//! | `GET /poll/ID?ack=SEQ` | 200, body: each message after `SEQ` as `varUint length` + bytes; header `x-relay-last-seq` |
//! | `DELETE /poll/ID` | 204: the session ends like a closed socket |
//!
//! A session the relay has ended answers 410 with `{"code", "reason"}` (the WebSocket close code
//! it would have used) once everything before the end was fetched; an unknown or expired
//! session answers 404: open a new one and resync. A session that makes no first poll within
//! `--poll-start-timeout-secs` ends like one that stops polling.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crdt::protocol::write_var_u64;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warp::Filter;
use warp::reply::{Reply, Response};

use crate::admission::{Admitted, ConnectionSlot, JoinRequest, admit};
use crate::api::error;
use crate::body::PendingBody;
use crate::close::CloseReason;
use crate::connection::{Forwarded, forward_frame};
use crate::connection::{Outbox, OutboxParts};
use crate::outbound::{Backlog, Outbound};
use crate::registry::RoomSender;
use crate::room::{ConnId, RoomCommand};
use crate::routes::AppState;
use crate::server::{LocalAddr, PeerAddr};
use crate::upgrade::{request_token, room_name};

/// The response header holding the sequence number of the last message in the body.
pub const LAST_SEQ_HEADER: &str = "x-relay-last-seq";
/// Most bytes of messages in one poll response (a single larger message still goes out alone).
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// The open sessions.
#[derive(Default)]
pub struct PollSessions {
    // A std mutex: held for a lookup or insert only.
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl PollSessions {
    fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.map.lock().expect("sessions lock").get(id).cloned()
    }

    fn insert(&self, id: String, session: Arc<Session>) {
        self.map.lock().expect("sessions lock").insert(id, session);
    }

    fn remove(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(id);
    }
}

struct SessionState {
    /// Messages not yet acknowledged by the client, with their sequence numbers.
    unacked: VecDeque<(u64, Bytes)>,
    /// The sequence number of the next message.
    next_seq: u64,
    /// Set once the relay has ended the session.
    closed: Option<CloseReason>,
    /// When the client last polled or sent.
    last_seen: Instant,
    /// Increases with each poll, so an older poll still waiting gives way to a newer one.
    poll_generation: u64,
    /// The number of the last body taken (`POST /poll/ID?n=N`), so that a retried body whose
    /// first attempt arrived is not applied twice.
    last_body: u64,
}

struct Session {
    conn: ConnId,
    room: RoomSender,
    backlog: Arc<Backlog>,
    state: Mutex<SessionState>,
    /// Woken when a message is queued or the session ends.
    changed: Notify,
    /// Cancelled by a client's DELETE.
    ended_by_client: CancellationToken,
    /// The session's outbound queue, for closing it from the edge (a malformed message).
    outbound: mpsc::UnboundedSender<Outbound>,
}

impl Session {
    fn touch(&self) {
        self.state.lock().expect("session lock").last_seen = Instant::now();
    }
}

/// Query of `POST /poll`.
#[derive(Debug, Deserialize)]
pub struct OpenQuery {
    /// The room.
    pub room: String,
    /// The token, if not in a header.
    pub token: Option<String>,
}

/// Query of `POST /poll/ID`.
#[derive(Debug, Deserialize)]
pub struct SendQuery {
    /// The body's number, counting from 1 and the same when it is sent again. A body whose number
    /// is not above the last one taken was taken already: 204, and it is not applied again (a
    /// duplicated sync step 1 would get a second sync step 2, with content the client also gets
    /// as updates). Without it, every body is applied.
    pub n: Option<u64>,
}

/// Query of `GET /poll/ID`.
#[derive(Debug, Deserialize)]
pub struct PollQuery {
    /// The last sequence number the client has (0 before the first message).
    #[serde(default)]
    pub ack: u64,
}

#[derive(Debug, Serialize)]
struct Opened {
    session: String,
    hold_ms: u64,
}

#[derive(Debug, Serialize)]
struct Ended {
    code: u16,
    reason: &'static str,
}

fn ended(reason: CloseReason) -> Response {
    let mut response = warp::reply::with_status(
        warp::reply::json(&Ended {
            code: reason.code(),
            reason: reason.as_str(),
        }),
        StatusCode::GONE,
    )
    .into_response();
    no_cache(&mut response);
    response
}

fn no_cache(response: &mut Response) {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The long-polling routes.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let max_body = state.config.max_message_bytes as u64;
    let with_state = warp::any().map(move || state.clone());
    let open = warp::path!("poll")
        .and(warp::post())
        .and(warp::query::<OpenQuery>())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::ext::optional::<LocalAddr>())
        .and(with_state.clone())
        .then(open_session);
    let send = warp::path!("poll" / String)
        .and(warp::post())
        .and(warp::query::<SendQuery>())
        // Taken unread: the session is checked before the body is read.
        .and(crate::body::pending(max_body))
        .and(with_state.clone())
        .then(send);
    let receive = warp::path!("poll" / String)
        .and(warp::get())
        .and(warp::query::<PollQuery>())
        .and(with_state.clone())
        .then(receive);
    let close = warp::path!("poll" / String)
        .and(warp::delete())
        .and(with_state)
        .map(close);
    // Pages of other origins are refused, or answered with CORS headers, by the routes' origin
    // gate (crate::routes) before these run.
    open.or(send).unify().or(receive).unify().or(close).unify()
}

fn session_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).expect("the operating system provides random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn open_session(
    query: OpenQuery,
    headers: HeaderMap,
    peer: Option<PeerAddr>,
    local: Option<LocalAddr>,
    state: Arc<AppState>,
) -> Response {
    let room = match room_name(&query.room) {
        Ok(room) => room,
        Err(message) => return error(StatusCode::BAD_REQUEST, message.trim_end()),
    };
    let token = query.token.or_else(|| request_token(None, &headers));
    let join = JoinRequest {
        room: &room,
        headers: &headers,
        token: token.as_deref(),
        peer: peer.map(|p| p.0),
        local: local.map(|l| l.0),
    };
    let Admitted { grant, slot } = match admit(&state, &join) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.response(),
    };
    let conn = state.next_conn_id();
    let outbox = Outbox::new();
    let joined = match state
        .registry
        .join(&room, conn, grant.access, outbox.handle())
        .await
    {
        Ok(joined) => joined,
        Err(e) => {
            tracing::warn!(error = %e, "cannot join the room for a poll session");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the document is unavailable",
            );
        }
    };
    let OutboxParts { rx, handle } = outbox.into_parts();
    let id = session_id();
    let session = Arc::new(Session {
        conn,
        room: joined.room,
        backlog: handle.backlog.clone(),
        state: Mutex::new(SessionState {
            unacked: VecDeque::new(),
            next_seq: 1,
            closed: None,
            last_seen: Instant::now(),
            poll_generation: 0,
            last_body: 0,
        }),
        changed: Notify::new(),
        ended_by_client: CancellationToken::new(),
        outbound: handle.tx.clone(),
    });
    state.poll.insert(id.clone(), session.clone());
    state.metrics.connections.inc();
    state.metrics.connections_total.inc();
    let span = tracing::info_span!("poll", conn_id = conn.0, room = %room);
    let pump_state = state.clone();
    let pump_id = id.clone();
    state.sockets.spawn(
        async move {
            tracing::info!(access = grant.access.as_str(), "poll session opened");
            let reason = pump(
                &pump_state,
                &session,
                rx,
                handle.kick,
                grant.expires_at,
                slot,
            )
            .await;
            tracing::info!(reason = reason.as_str(), "poll session ended");
            let _ = session
                .room
                .send(RoomCommand::Leave { conn: session.conn })
                .await;
            drop(joined.membership);
            pump_state.metrics.connections.dec();
            pump_state.metrics.disconnect(reason.as_str());
            // Keep the ended session a while, so its client learns why on its next poll (not
            // during a shutdown, which waits for this task).
            tokio::select! {
                () = tokio::time::sleep(pump_state.config.client_timeout()) => {}
                () = pump_state.shutdown.cancelled() => {}
            }
            pump_state.poll.remove(&pump_id);
        }
        .instrument(span),
    );
    let mut response = warp::reply::json(&Opened {
        session: id,
        hold_ms: state.config.poll_hold_secs * 1000,
    })
    .into_response();
    no_cache(&mut response);
    response
}

/// When a session that hears nothing more from its client ends.
struct Deadlines {
    opened: Instant,
    /// `--poll-start-timeout-secs`: for the first poll.
    start: Duration,
    /// `--client-timeout-secs`: after the last poll or send.
    idle: Duration,
}

impl Deadlines {
    /// A session that never polled holds its slot for the start timeout only: it receives
    /// nothing, so it is no client (one token could otherwise keep many of them open for free).
    fn end(&self, s: &SessionState) -> Instant {
        if s.poll_generation == 0 {
            self.opened + self.start
        } else {
            s.last_seen + self.idle
        }
    }
}

/// Moves what the room sends into the session's buffer until the session ends, and returns why.
async fn pump(
    state: &AppState,
    session: &Session,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    kick: CancellationToken,
    expires_at: Option<u64>,
    _slot: ConnectionSlot,
) -> CloseReason {
    let deadlines = Deadlines {
        opened: Instant::now(),
        start: state.config.poll_start_timeout(),
        idle: state.config.client_timeout(),
    };
    let expiry = crate::connection::token_expiry(expires_at);
    tokio::pin!(expiry);
    let reason = loop {
        let idle_deadline = deadlines.end(&session.state.lock().expect("session lock"));
        tokio::select! {
            item = rx.recv() => match item {
                Some(Outbound::Frame(frame)) => {
                    let mut s = session.state.lock().expect("session lock");
                    let seq = s.next_seq;
                    s.next_seq += 1;
                    s.unacked.push_back((seq, frame));
                    drop(s);
                    session.changed.notify_waiters();
                }
                Some(Outbound::Close(reason)) => break reason,
                None => break CloseReason::Internal,
            },
            () = kick.cancelled() => break CloseReason::SlowReader,
            () = session.ended_by_client.cancelled() => break CloseReason::ClientClosed,
            () = state.shutdown.cancelled() => break CloseReason::Shutdown,
            () = &mut expiry => break CloseReason::TokenExpired,
            () = tokio::time::sleep_until(idle_deadline) => {
                let end = deadlines.end(&session.state.lock().expect("session lock"));
                if end <= Instant::now() {
                    break CloseReason::ClientTimeout;
                }
            }
        }
    };
    session.state.lock().expect("session lock").closed = Some(reason);
    session.changed.notify_waiters();
    reason
}

async fn send(id: String, query: SendQuery, body: PendingBody, state: Arc<AppState>) -> Response {
    // The session id is the credential: an unknown or ended session is refused before its body
    // is read.
    let Some(session) = state.poll.get(&id) else {
        return error(StatusCode::NOT_FOUND, "no such session: open a new one");
    };
    if let Some(reason) = session.state.lock().expect("session lock").closed {
        return ended(reason);
    }
    if body.declared_len() == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must hold one or more messages",
        );
    }
    session.touch();
    let body = match body.read(state.config.body_timeout()).await {
        Ok(body) => body,
        Err(e) => return e.response(&state.metrics),
    };
    session.touch();
    if let Some(n) = query.n {
        let mut s = session.state.lock().expect("session lock");
        if n <= s.last_body {
            // A retry of a body that arrived: taken already.
            let mut response = Response::default();
            *response.status_mut() = StatusCode::NO_CONTENT;
            return response;
        }
        s.last_body = n;
    }
    state.metrics.frames_in.inc();
    state.metrics.bytes_in.inc_by(body.len() as u64);
    let forwarded = forward_frame(&session.room, session.conn, &body, &state.metrics).await;
    if let Forwarded::Malformed = forwarded {
        // The messages before the malformed one were taken; the session ends like a socket.
        let _ = session
            .outbound
            .send(Outbound::Close(CloseReason::ProtocolError));
    }
    if let Forwarded::RoomGone = forwarded {
        if let Some(n) = query.n {
            // Not taken after all: a retry may try again.
            let mut s = session.state.lock().expect("session lock");
            if s.last_body == n {
                s.last_body = n - 1;
            }
        }
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the document is unavailable",
        );
    }
    let mut response = Response::default();
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// What a poll found.
enum Found {
    Messages(Vec<u8>, u64),
    Ended(CloseReason),
    Nothing(u64),
}

/// Drops what the client acknowledged and takes what it has not seen yet.
fn take(session: &Session, ack: u64, generation: u64) -> Option<Found> {
    let mut s = session.state.lock().expect("session lock");
    let mut acked_bytes = 0;
    while s.unacked.front().is_some_and(|(seq, _)| *seq <= ack) {
        let (_, frame) = s.unacked.pop_front().expect("front exists");
        acked_bytes += frame.len();
    }
    if acked_bytes > 0 {
        session.backlog.written(acked_bytes);
    }
    if !s.unacked.is_empty() {
        let mut body = Vec::new();
        let mut last = ack;
        for (seq, frame) in &s.unacked {
            if !body.is_empty() && body.len() + frame.len() > MAX_RESPONSE_BYTES {
                break;
            }
            write_var_u64(&mut body, frame.len() as u64);
            body.extend_from_slice(frame);
            last = *seq;
        }
        return Some(Found::Messages(body, last));
    }
    if let Some(reason) = s.closed {
        return Some(Found::Ended(reason));
    }
    if s.poll_generation != generation {
        // A newer poll took over: this one answers empty.
        return Some(Found::Nothing(ack));
    }
    None
}

async fn receive(id: String, query: PollQuery, state: Arc<AppState>) -> Response {
    let Some(session) = state.poll.get(&id) else {
        return error(StatusCode::NOT_FOUND, "no such session: open a new one");
    };
    let generation = {
        let mut s = session.state.lock().expect("session lock");
        s.last_seen = Instant::now();
        s.poll_generation += 1;
        s.poll_generation
    };
    // A poll that supersedes an older one wakes it.
    session.changed.notify_waiters();
    let hold = tokio::time::sleep(Duration::from_secs(state.config.poll_hold_secs));
    tokio::pin!(hold);
    let found = loop {
        let changed = session.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(found) = take(&session, query.ack, generation) {
            break found;
        }
        tokio::select! {
            () = &mut changed => {}
            () = &mut hold => break Found::Nothing(query.ack),
        }
    };
    session.touch();
    let mut response = match found {
        Found::Ended(reason) => return ended(reason),
        Found::Nothing(last) => {
            let mut r = Response::new(Vec::new().into());
            r.headers_mut()
                .insert(LAST_SEQ_HEADER, HeaderValue::from(last));
            r
        }
        Found::Messages(body, last) => {
            state.metrics.frames_out.inc();
            state.metrics.bytes_out.inc_by(body.len() as u64);
            let mut r = Response::new(body.into());
            r.headers_mut()
                .insert(LAST_SEQ_HEADER, HeaderValue::from(last));
            r
        }
    };
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    no_cache(&mut response);
    response
}

fn close(id: String, state: Arc<AppState>) -> Response {
    if let Some(session) = state.poll.get(&id) {
        session.ended_by_client.cancel();
    }
    let mut response = Response::default();
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}
