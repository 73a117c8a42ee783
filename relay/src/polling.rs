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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warp::Filter;
use warp::reply::{Reply, Response};

use crate::admission::JoinRequest;
use crate::body::PendingBody;
use crate::close::CloseReason;
use crate::edge::{error, request_token, room_name};
use crate::outbound::{NumberedQueue, Unacked};
use crate::server::{LocalAddr, PeerAddr};
use crate::session::{self, Ended, Forwarded, Link, Timeouts};
use crate::state::AppState;

/// The response header holding the sequence number of the last message in the body.
pub(crate) const LAST_SEQ_HEADER: &str = "x-relay-last-seq";
/// Most bytes of messages in one poll response (a single larger message still goes out alone).
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// The open sessions, by id.
#[derive(Default)]
struct PollSessions {
    // A std mutex: held for a lookup or insert only.
    map: Mutex<HashMap<String, Arc<PollSession>>>,
}

impl PollSessions {
    fn get(&self, id: &str) -> Option<Arc<PollSession>> {
        self.map.lock().expect("sessions lock").get(id).cloned()
    }

    fn insert(&self, id: String, session: Arc<PollSession>) {
        self.map.lock().expect("sessions lock").insert(id, session);
    }

    fn remove(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(id);
    }
}

/// What the requests of one long-polling session share. Its one queue is the connection's
/// outbound queue: the room puts messages in, polls read them out.
struct PollSession {
    link: Link,
    queue: Arc<NumberedQueue>,
    /// Increases with each poll, so an older poll still waiting gives way to a newer one.
    poll_generation: AtomicU64,
    /// The number of the last body taken (`POST /poll/ID?n=N`), so that a retried body whose
    /// first attempt arrived is not applied twice.
    last_body: Mutex<u64>,
    /// Cancelled by a client's DELETE.
    ended_by_client: CancellationToken,
}

/// Query of `POST /poll`.
#[derive(Debug, Deserialize)]
pub(crate) struct OpenQuery {
    /// The room.
    pub room: String,
    /// The token, if not in a header.
    pub token: Option<String>,
}

/// Query of `POST /poll/ID`.
#[derive(Debug, Deserialize)]
pub(crate) struct SendQuery {
    /// The body's number, counting from 1 and the same when it is sent again. A body whose number
    /// is not above the last one taken was taken already: 204, and it is not applied again (a
    /// duplicated sync step 1 would get a second sync step 2, with content the client also gets
    /// as updates). Without it, every body is applied.
    pub n: Option<u64>,
}

/// Query of `GET /poll/ID`.
#[derive(Debug, Deserialize)]
pub(crate) struct PollQuery {
    /// The last sequence number the client has (0 before the first message).
    #[serde(default)]
    pub ack: u64,
}

#[derive(Debug, Serialize)]
struct Opened {
    session: String,
    hold_ms: u64,
}

/// The body of 410: how the session ended, as the WebSocket close it stands for.
#[derive(Debug, Serialize)]
struct EndedBody {
    code: u16,
    reason: &'static str,
}

fn ended(reason: CloseReason) -> Response {
    let mut response = warp::reply::with_status(
        warp::reply::json(&EndedBody {
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
/// The long-polling routes.
pub(crate) fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let max_body = state.config.max_message_bytes as u64;
    let sessions = Arc::new(PollSessions::default());
    let with_state = warp::any().map(move || state.clone());
    let with_sessions = warp::any().map(move || sessions.clone());
    let open = warp::path!("poll")
        .and(warp::post())
        .and(warp::query::<OpenQuery>())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::ext::optional::<LocalAddr>())
        .and(with_state.clone())
        .and(with_sessions.clone())
        .then(open_session);
    let send = warp::path!("poll" / String)
        .and(warp::post())
        .and(warp::query::<SendQuery>())
        .and(crate::body::pending(max_body))
        .and(with_state.clone())
        .and(with_sessions.clone())
        .then(send);
    let receive = warp::path!("poll" / String)
        .and(warp::get())
        .and(warp::query::<PollQuery>())
        .and(with_state)
        .and(with_sessions.clone())
        .then(receive);
    let close = warp::path!("poll" / String)
        .and(warp::delete())
        .and(with_sessions)
        .map(close);
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
    sessions: Arc<PollSessions>,
) -> Response {
    let room = match room_name(&query.room) {
        Ok(room) => room,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let token = query.token.or_else(|| request_token(None, &headers));
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
    let span = tracing::info_span!("poll", conn_id = conn.0, room = %room);
    let (handle, queue) = crate::outbound::numbered();
    // A session that never polls ends sooner than one that stops polling.
    let timeouts = Timeouts {
        start: state.config.poll_start_timeout(),
        idle: state.config.client_timeout(),
    };
    let joined = session::join(&state, conn, &room, admitted, handle, timeouts)
        .instrument(span.clone())
        .await;
    let session = match joined {
        Ok(session) => session,
        Err(e) => {
            tracing::warn!(error = %e, "cannot join the room for a poll session");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the document is unavailable",
            );
        }
    };
    let id = session_id();
    let entry = Arc::new(PollSession {
        link: session.link().clone(),
        queue,
        poll_generation: AtomicU64::new(0),
        last_body: Mutex::new(0),
        ended_by_client: CancellationToken::new(),
    });
    sessions.insert(id.clone(), entry.clone());
    let task_state = state.clone();
    let task_id = id.clone();
    state.connections.spawn(
        async move {
            session.run(pump(&entry)).await;
            // Keep the ended session a while, so its client learns why on its next poll (not
            // during a shutdown, which waits for this task).
            tokio::select! {
                () = tokio::time::sleep(task_state.config.client_timeout()) => {}
                () = task_state.shutdown.cancelled() => {}
            }
            sessions.remove(&task_id);
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

/// A long-polling session's pump: the requests move the messages, so it only waits for the
/// session to be closed (by the room or the session) or ended by the client.
async fn pump(entry: &PollSession) -> Ended {
    loop {
        let changed = entry.queue.changed().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(reason) = entry.queue.closed() {
            return Ended::Closed(reason);
        }
        tokio::select! {
            () = &mut changed => {}
            () = entry.ended_by_client.cancelled() => {
                entry.queue.close(CloseReason::ClientClosed);
                return Ended::Closed(CloseReason::ClientClosed);
            }
        }
    }
}

async fn send(
    id: String,
    query: SendQuery,
    body: PendingBody,
    state: Arc<AppState>,
    sessions: Arc<PollSessions>,
) -> Response {
    let Some(session) = sessions.get(&id) else {
        return error(StatusCode::NOT_FOUND, "no such session: open a new one");
    };
    if let Some(reason) = session.queue.closed() {
        return ended(reason);
    }
    if body.declared_len() == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must hold one or more messages",
        );
    }
    session.link.touch();
    let body = match body.read(state.config.body_timeout()).await {
        Ok(body) => body,
        Err(e) => return e.response(&state.metrics),
    };
    if let Some(n) = query.n {
        let mut last = session.last_body.lock().expect("session lock");
        if n <= *last {
            // A retry of a body that arrived: taken already.
            return no_content();
        }
        *last = n;
    }
    if session.link.forward(&body).await == Forwarded::RoomGone {
        if let Some(n) = query.n {
            // Not taken after all: a retry may try again.
            let mut last = session.last_body.lock().expect("session lock");
            if *last == n {
                *last = n - 1;
            }
        }
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the document is unavailable",
        );
    }
    // A malformed message closed the session; the client learns it on its next poll.
    no_content()
}

fn no_content() -> Response {
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

async fn receive(
    id: String,
    query: PollQuery,
    state: Arc<AppState>,
    sessions: Arc<PollSessions>,
) -> Response {
    let Some(session) = sessions.get(&id) else {
        return error(StatusCode::NOT_FOUND, "no such session: open a new one");
    };
    session.link.touch();
    let generation = session.poll_generation.fetch_add(1, Ordering::AcqRel) + 1;
    // An older poll still waiting gives way to this one.
    session.queue.changed().notify_waiters();
    let hold = tokio::time::sleep(Duration::from_secs(state.config.poll_hold_secs));
    tokio::pin!(hold);
    let backlog = &session.link.handle().backlog;
    let found = loop {
        let changed = session.queue.changed().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match session.queue.read(query.ack, MAX_RESPONSE_BYTES, backlog) {
            Unacked::Messages(body, last) => break Found::Messages(body, last),
            Unacked::Closed(reason) => break Found::Ended(reason),
            Unacked::Empty => {
                if session.poll_generation.load(Ordering::Acquire) != generation {
                    break Found::Nothing(query.ack);
                }
            }
        }
        tokio::select! {
            () = &mut changed => {}
            () = &mut hold => break Found::Nothing(query.ack),
        }
    };
    session.link.touch();
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

fn close(id: String, sessions: Arc<PollSessions>) -> Response {
    if let Some(session) = sessions.get(&id) {
        session.ended_by_client.cancel();
    }
    no_content()
}
