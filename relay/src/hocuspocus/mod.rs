//! Hocuspocus clients (`@hocuspocus/provider` 3.x and 4.x, Tiptap's collaboration) at the root
//! path, `ws://HOST:PORT/`.
//!
//! One WebSocket carries several documents, each message starting with the document's name
//! ([`codec`]). The upgrade checks only the handshake and the origin; each document is then
//! admitted with the token of its Auth message, exactly as a y-websocket connection with that
//! token, and becomes a connection of its room ([`socket`]), so Hocuspocus and y-websocket
//! clients share documents and awareness.
//!
//! Differences from a Hocuspocus server: no server-side hooks (use webhooks and the document
//! API), SyncStatus is sent once an update is committed to disk rather than applied in memory,
//! and stateless messages go to the document's other Hocuspocus connections.

pub(crate) mod codec;
mod socket;

use std::sync::Arc;

use warp::reply::Response;

use crate::edge::request_token;
use crate::state::AppState;
use crate::websocket::{Handshake, UpgradeRequest};

/// The path Hocuspocus providers connect to (their `url` is the relay's address).
pub(crate) const PATH: &str = "/";

/// Answers an upgrade request at [`PATH`]: 101 and a Hocuspocus socket, or an HTTP error (403
/// for an origin that is not allowed, 429/503 at a connection limit, 400 for a bad handshake).
pub(crate) fn upgrade(request: UpgradeRequest, state: Arc<AppState>) -> Response {
    let UpgradeRequest {
        path: _,
        query,
        headers,
        on_upgrade,
        peer,
        local,
    } = request;
    let peer = peer.map(|p| p.0);
    let local = local.map(|l| l.0);
    let url_token = request_token(query.as_deref(), &headers);
    // The socket itself takes a connection slot (besides one per open document), so that sockets
    // without documents cannot pile up.
    let slot = match state
        .admission
        .admit_carrier(&headers, url_token.as_deref(), peer, local)
    {
        Ok(slot) => slot,
        Err(refusal) => return refusal.response(),
    };
    let handshake = match Handshake::check(&headers, on_upgrade) {
        Ok(handshake) => handshake,
        Err(refused) => return refused.response(),
    };
    let client = socket::Client {
        url_token,
        headers,
        peer,
        local,
    };
    let span = tracing::info_span!(
        "hocuspocus",
        peer = %peer.map(|p| p.to_string()).unwrap_or_default()
    );
    let task_state = state.clone();
    handshake.accept(&state, span, move |ws| async move {
        socket::serve(task_state, client, ws).await;
        drop(slot);
    })
}
