//! HTTP routes, and the WebSocket upgrade that turns a request into a room connection.
//!
//! `GET /<room>` with `Upgrade: websocket` joins the room named by the percent-decoded path, as
//! the stock y-websocket provider expects. Every other request goes to the plain HTTP routes, so
//! a room may have any name, `healthz` included.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::header::{
    CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{HeaderMap, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use warp::Filter;
use warp::path::FullPath;
use warp::reply::{Reply, Response};

use crate::config::Config;
use crate::connection::{self, ConnectionSettings, Outbox};
use crate::registry::RoomRegistry;
use crate::room::ConnId;
use crate::server::PeerAddr;
use crate::telemetry::Metrics;

/// Longest room name, in bytes (after percent-decoding).
pub const MAX_ROOM_NAME_BYTES: usize = 512;

/// Everything the routes need.
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The loaded rooms.
    pub registry: Arc<RoomRegistry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// Upgraded sockets, which hyper no longer tracks: shutdown waits on these.
    pub sockets: TaskTracker,
    next_conn: AtomicU64,
    open_sockets: Arc<AtomicUsize>,
}

impl AppState {
    /// Shared state for the routes.
    pub fn new(
        config: Arc<Config>,
        registry: Arc<RoomRegistry>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(AppState {
            config,
            registry,
            metrics,
            shutdown,
            sockets: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            open_sockets: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn websocket_config(&self) -> WebSocketConfig {
        // Small buffers: an idle connection should cost less than a whole idle room. They grow
        // as needed for large messages.
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(self.config.max_message_bytes + (1 << 20))
            .max_message_size(Some(self.config.max_message_bytes))
            .max_frame_size(Some(self.config.max_message_bytes))
    }

    /// Takes a connection slot, or `None` at the limit.
    fn reserve_socket(&self) -> Option<SocketSlot> {
        let open = &self.open_sockets;
        let mut current = open.load(Ordering::Relaxed);
        loop {
            if current >= self.config.max_connections {
                return None;
            }
            match open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(SocketSlot(open.clone())),
                Err(actual) => current = actual,
            }
        }
    }
}

/// A connection slot, given back when dropped.
struct SocketSlot(Arc<AtomicUsize>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All routes of the relay.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let websocket = warp::get()
        .and(warp::header::exact_ignore_case("upgrade", "websocket"))
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<PeerAddr>())
        .and(with_state.clone())
        .map(upgrade);
    let healthz = warp::path!("healthz")
        .and(warp::get().or(warp::head()).unify())
        .map(|| text(StatusCode::OK, "ok\n"));
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: Arc<AppState>| {
            let mut response = state.metrics.encode().into_response();
            response.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        });
    let list_docs = warp::path!("api" / "docs")
        .and(warp::get())
        .and(warp::query::<crate::api::ListQuery>())
        .and(with_state.clone())
        .then(crate::api::list_docs);
    let assets = warp::get()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and_then(|path: FullPath, headers: HeaderMap| async move {
            crate::assets::serve(path.as_str(), &headers).ok_or_else(warp::reject::not_found)
        });
    websocket
        .or(healthz)
        .unify()
        .or(metrics)
        .unify()
        .or(list_docs)
        .unify()
        .or(assets)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            // Every route rejects with its own reason (a missing Upgrade header, a wrong method);
            // what the client needs to hear is that nothing is here, unless a query was bad.
            let response = if rejection.find::<warp::reject::InvalidQuery>().is_some() {
                crate::api::error(StatusCode::BAD_REQUEST, "invalid query parameters")
            } else {
                text(StatusCode::NOT_FOUND, "not found\n")
            };
            Ok::<_, Infallible>(response)
        })
        .unify()
}

/// A plain-text response.
fn text(status: StatusCode, body: &'static str) -> Response {
    let mut response = warp::reply::with_status(body, status).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Decodes and checks a room name taken from a request path.
///
/// # Errors
/// A message for the client when the name is empty, too long, not UTF-8 or holds control
/// characters.
pub fn room_name(path: &str) -> Result<String, &'static str> {
    let raw = path.strip_prefix('/').unwrap_or(path);
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "room name is not valid UTF-8\n")?;
    if name.is_empty() {
        return Err("missing room name: connect to /<room>\n");
    }
    if name.len() > MAX_ROOM_NAME_BYTES {
        return Err("room name is longer than 512 bytes\n");
    }
    if name.chars().any(char::is_control) {
        return Err("room name contains control characters\n");
    }
    Ok(name.into_owned())
}

fn header_has_token(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn upgrade(
    path: FullPath,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
    state: Arc<AppState>,
) -> Response {
    let room = match room_name(path.as_str()) {
        Ok(room) => room,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    if !header_has_token(&headers, CONNECTION, "upgrade") {
        return text(StatusCode::BAD_REQUEST, "missing Connection: upgrade\n");
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut response = text(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 required\n",
        );
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, http::HeaderValue::from_static("13"));
        return response;
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let Some(on_upgrade) = on_upgrade else {
        return text(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded\n",
        );
    };
    let Some(slot) = state.reserve_socket() else {
        state.metrics.error("too_many_connections");
        tracing::warn!("connection limit reached; refusing an upgrade");
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
    let peer = peer.map(|p| p.0.to_string()).unwrap_or_default();
    let span = tracing::info_span!("conn", conn_id = conn.0, room = %room, peer = %peer);
    let task_state = state.clone();
    state.sockets.spawn(
        async move {
            let _slot = slot;
            match on_upgrade.await {
                Ok(upgraded) => {
                    let config = task_state.websocket_config();
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    run_socket(task_state, conn, room, socket).await;
                }
                Err(error) => tracing::debug!(%error, "upgrade failed"),
            }
        }
        .instrument(span),
    );
    let mut response = Response::default();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, http::HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, http::HeaderValue::from_static("websocket"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        http::HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    response
}

async fn run_socket<S>(state: Arc<AppState>, conn: ConnId, room: String, mut socket: S)
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + futures_util::Sink<
            tokio_tungstenite::tungstenite::Message,
            Error = tokio_tungstenite::tungstenite::Error,
        > + Unpin,
{
    use futures_util::SinkExt;
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    metrics.connections_total.inc();
    let outbox = Outbox::new();
    match state.registry.join(&room, conn, outbox.handle()).await {
        Ok(room_tx) => {
            tracing::info!("connected");
            let settings = ConnectionSettings {
                keepalive: state.config.keepalive(),
                client_timeout: state.config.client_timeout(),
            };
            let ended = connection::serve(
                socket,
                conn,
                room_tx,
                outbox,
                settings,
                state.shutdown.clone(),
                metrics.clone(),
            )
            .await;
            tracing::info!(reason = ended.as_str(), "disconnected");
        }
        Err(error) => {
            tracing::warn!(%error, "cannot join the room");
            let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1011.into(),
                reason: "room unavailable".into(),
            };
            let _ = socket
                .send(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))
                .await;
            metrics.disconnect("room_unavailable");
        }
    }
    metrics.connections.dec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_percent_decoded_and_checked() {
        assert_eq!(room_name("/notes%2Fmonday").as_deref(), Ok("notes/monday"));
        assert_eq!(room_name("/a/b c").as_deref(), Ok("a/b c"));
        assert_eq!(room_name("/caf%C3%A9").as_deref(), Ok("café"));
        assert!(room_name("/").is_err());
        assert!(room_name("/%FF").is_err());
        assert!(room_name("/a%00b").is_err());
        assert!(room_name(&format!("/{}", "x".repeat(513))).is_err());
        assert!(room_name(&format!("/{}", "x".repeat(512))).is_ok());
    }
}
