//! The HTTP API for documents (JSON), used by the demo's document list.

use std::sync::Arc;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use warp::reply::{Reply, Response};

use crate::routes::AppState;

/// Most documents one page lists.
pub const MAX_PAGE: usize = 500;

/// Query of `GET /api/docs`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Documents per page (default 100, at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
    /// List documents whose name sorts after this one (the previous page's `next_after`).
    pub after: Option<String>,
}

/// One document in a listing.
#[derive(Debug, Serialize)]
pub struct DocSummary {
    /// The document (room) name.
    pub name: String,
    /// Bytes stored for it (snapshot and log).
    pub size_bytes: u64,
    /// When its last update was committed, in milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
    /// Connections open to it now.
    pub connections: usize,
}

/// A page of `GET /api/docs`.
#[derive(Debug, Serialize)]
pub struct DocList {
    /// The documents, in name order.
    pub docs: Vec<DocSummary>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// A JSON error response.
pub fn error(status: StatusCode, message: &str) -> Response {
    warp::reply::with_status(warp::reply::json(&ErrorBody { error: message }), status)
        .into_response()
}

/// `GET /api/docs?limit=&after=`: stored documents with size, last change and live connections.
pub async fn list_docs(query: ListQuery, state: Arc<AppState>) -> Response {
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let store = state.registry.store().clone();
    let after = query.after.clone();
    let listed =
        tokio::task::spawn_blocking(move || store.list_rooms(after.as_deref(), limit)).await;
    let rooms = match listed {
        Ok(Ok(rooms)) => rooms,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot list documents");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the store");
        }
        Err(e) => {
            tracing::error!(error = %e, "listing documents panicked");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the store");
        }
    };
    let next_after = (rooms.len() == limit)
        .then(|| rooms.last().map(|r| r.name.clone()))
        .flatten();
    let docs = rooms
        .into_iter()
        .map(|room| DocSummary {
            connections: state.registry.connections(&room.name),
            name: room.name,
            size_bytes: room.stored_bytes,
            updated_at_ms: room.updated_ms,
        })
        .collect();
    warp::reply::json(&DocList { docs, next_after }).into_response()
}
