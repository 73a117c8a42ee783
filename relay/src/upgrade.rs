//! The WebSocket upgrade at `/<room>`: checks everything before switching protocols (room name,
//! handshake headers, then [`crate::admission`]: origin, token, limits), then runs the socket as
//! a room connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use http::header::{
    AUTHORIZATION, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::Instrument;
use warp::path::FullPath;
use warp::reply::Response;

use crate::admission::{Admitted, JoinRequest, admit};
use crate::auth::Grant;
use crate::connection::{self, ConnectionSettings, Outbox};
use crate::room::ConnId;
use crate::routes::{AppState, text};
use crate::server::{LocalAddr, PeerAddr};

/// Longest room name, in bytes (after percent-decoding).
pub const MAX_ROOM_NAME_BYTES: usize = 512;

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

/// The token of a request: the `token` query parameter (how the stock y-websocket provider passes
/// `params`) or an `Authorization: Bearer` header.
pub fn request_token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == "token").then(|| {
                percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    });
    from_query.or_else(|| {
        headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned())
    })
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
pub struct UpgradeRequest {
    /// The request path (the room, percent-encoded).
    pub path: FullPath,
    /// The raw query string.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// hyper's handle on the upgrade.
    pub on_upgrade: Option<OnUpgrade>,
    /// The peer address.
    pub peer: Option<PeerAddr>,
    /// The address the connection came in on.
    pub local: Option<LocalAddr>,
}

/// Answers an upgrade request: 101 and a room connection, or an HTTP error saying why not.
pub fn upgrade(request: UpgradeRequest, state: Arc<AppState>) -> Response {
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
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
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
    let token = request_token(query.as_deref(), &headers);
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
    let accept = derive_accept_key(key.as_bytes());
    let conn = state.next_conn_id();
    let peer = peer.map(|p| p.0.to_string()).unwrap_or_default();
    let span = tracing::info_span!("conn", conn_id = conn.0, room = %room, peer = %peer);
    let task_state = state.clone();
    state.sockets.spawn(
        async move {
            let _slot = slot;
            match on_upgrade.await {
                Ok(upgraded) => {
                    let config = websocket_config(task_state.config.max_message_bytes);
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    run_socket(task_state, conn, room, grant, socket).await;
                }
                Err(error) => tracing::debug!(%error, "upgrade failed"),
            }
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

async fn run_socket<S>(
    state: Arc<AppState>,
    conn: ConnId,
    room: String,
    grant: Grant,
    mut socket: S,
) where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Unpin,
{
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    metrics.connections_total.inc();
    let outbox = Outbox::new();
    match state
        .registry
        .join(&room, conn, grant.access, outbox.handle())
        .await
    {
        Ok(joined) => {
            tracing::info!(access = grant.access.as_str(), "connected");
            let settings = ConnectionSettings {
                keepalive: state.config.keepalive(),
                client_timeout: state.config.client_timeout(),
                expires_at: grant.expires_at,
                write_timeout: Duration::from_millis(state.config.slow_reader_grace_ms),
            };
            let ended = connection::serve(
                socket,
                conn,
                joined.room,
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
            let reason = error.close_reason();
            let frame = CloseFrame {
                code: reason.code().into(),
                reason: reason.as_str().into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
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

    #[test]
    fn token_comes_from_the_query_or_the_bearer_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            request_token(Some("a=1&token=abc%2Edef"), &headers).as_deref(),
            Some("abc.def")
        );
        assert_eq!(request_token(Some("a=1"), &headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer xyz"));
        assert_eq!(request_token(None, &headers).as_deref(), Some("xyz"));
        assert_eq!(
            request_token(Some("token=q"), &headers).as_deref(),
            Some("q")
        );
    }
}
