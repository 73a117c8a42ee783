//! The document API (HTTP, JSON errors). Every request needs an `admin` token (the `token` query
//! parameter or `Authorization: Bearer`), unless the relay runs without a secret.
//!
//! | request | what |
//! | --- | --- |
//! | `GET /api/docs?limit=&after=` | documents with size, last change and live connections, in pages |
//! | `GET /api/docs/{name}` | the state as one binary Yjs update; `?format=json`: the root types as JSON |
//! | `POST /api/docs/{name}/update` | apply a binary update; 200 once it is committed |
//! | `DELETE /api/docs/{name}` | disconnect its clients (4404) and delete it |
//! | `POST /api/tokens` | mint a client token |
//!
//! `{name}` is one path segment: encode a `/` in a name as `%2F`. Bodies are taken unread
//! ([`crate::body`]) and read only once the token is checked. Web pages of origins that are not
//! allowed never reach these routes (see [`crate::routes`]).

// The helpers return the finished error response itself, which every caller sends as is; boxing
// it would only add an allocation to each refused request.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use warp::Filter;
use warp::path::Tail;
use warp::reply::{Reply, Response};

use crate::auth::{Access, AuthError, Claims, Grant, authorize, now_secs};
use crate::body::PendingBody;
use crate::edge::{error, request_token, room_name};
use crate::room::RoomCommand;
use crate::room::core::ApiUpdateError;
use crate::state::AppState;

/// Most documents one page lists.
pub(crate) const MAX_PAGE: usize = 500;
/// Longest lifetime of a minted token: 30 days.
pub(crate) const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;
/// How long an update request waits for its commit before answering 503.
const COMMIT_WAIT: Duration = Duration::from_secs(30);

/// Query of `GET /api/docs`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    /// Documents per page (default 100, at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
    /// List documents whose name sorts after this one (the previous page's `next_after`).
    pub after: Option<String>,
    /// The token, if not in a header.
    pub token: Option<String>,
}

/// Query of the per-document requests.
#[derive(Debug, Deserialize)]
pub(crate) struct DocQuery {
    /// `json` for `GET /api/docs/{name}` as JSON.
    pub format: Option<String>,
    /// The token, if not in a header.
    pub token: Option<String>,
}

/// One document in a listing.
#[derive(Debug, Serialize)]
pub(crate) struct DocSummary {
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
pub(crate) struct DocList {
    /// The documents, in name order.
    pub docs: Vec<DocSummary>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Body of `POST /api/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    /// The document the token is for.
    pub doc: Option<String>,
    /// Or a prefix of the documents it is for.
    pub doc_prefix: Option<String>,
    /// `read`, `write` or `admin`.
    pub access: Access,
    /// Lifetime in seconds (default 3600, at most 30 days); cut to the expiry of the token that
    /// mints it.
    pub ttl_secs: Option<u64>,
    /// The user's id.
    pub sub: Option<String>,
    /// The user's display name.
    pub name: Option<String>,
}

/// Answer of `POST /api/tokens`.
#[derive(Debug, Serialize)]
pub(crate) struct TokenResponse {
    /// The signed token.
    pub token: String,
    /// Its expiry, in seconds since the Unix epoch: `ttl_secs` from now, or the expiry of the
    /// token that minted it if that comes first.
    pub expires_at: u64,
}

/// Every route of the document API.
pub(crate) fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let max_body = state.config.max_message_bytes as u64;
    let with_state = warp::any().map(move || state.clone());
    let list = warp::path!("api" / "docs")
        .and(warp::get())
        .and(warp::query::<ListQuery>())
        .and(warp::header::headers_cloned())
        .and(with_state.clone())
        .then(list_docs);
    let get = warp::path("api")
        .and(warp::path("docs"))
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::query::<DocQuery>())
        .and(warp::header::headers_cloned())
        .and(with_state.clone())
        .then(get_doc);
    let update = warp::path("api")
        .and(warp::path("docs"))
        .and(warp::path::tail())
        .and(warp::post())
        .and(warp::query::<DocQuery>())
        .and(warp::header::headers_cloned())
        .and(with_state.clone())
        // Refused with 413 from the Content-Length alone; read only once the token is checked.
        .and(crate::body::pending(max_body))
        .then(post_update);
    let delete = warp::path("api")
        .and(warp::path("docs"))
        .and(warp::path::tail())
        .and(warp::delete())
        .and(warp::query::<DocQuery>())
        .and(warp::header::headers_cloned())
        .and(with_state.clone())
        .then(delete_doc);
    let tokens = warp::path!("api" / "tokens")
        .and(warp::post())
        .and(warp::query::<DocQuery>())
        .and(warp::header::headers_cloned())
        .and(crate::body::pending(64 * 1024))
        .and(with_state)
        .then(mint_token);
    list.or(get)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .or(tokens)
        .unify()
}

/// Checks that the request carries admin access for `room` (or for every document), and returns
/// the grant.
fn admin(
    state: &AppState,
    token: Option<&str>,
    headers: &HeaderMap,
    room: Option<&str>,
) -> Result<Grant, Response> {
    let token = token
        .map(str::to_owned)
        .or_else(|| request_token(None, headers));
    authorize(
        state.admission.keys(),
        token.as_deref(),
        room,
        Access::Admin,
    )
    .map_err(|e| refused(state, &e))
}

/// The answer to a request whose token does not allow it, counted.
fn refused(state: &AppState, e: &AuthError) -> Response {
    state.metrics.error("auth_refused");
    error(e.status(), &e.to_string())
}

/// Splits `{name}` or `{name}/{action}` out of the path after `/api/docs/`.
fn doc_path(tail: &Tail) -> Result<(String, Option<&str>), Response> {
    let mut parts = tail.as_str().splitn(2, '/');
    let raw = parts.next().unwrap_or_default();
    let action = parts.next();
    let name = room_name(raw).map_err(|m| error(StatusCode::BAD_REQUEST, m))?;
    Ok((name, action))
}

/// Whether a document exists: stored, or loaded with updates not committed yet.
async fn exists(state: &AppState, name: &str) -> Result<bool, Response> {
    if state.registry.unsaved_updates(name) > 0 {
        return Ok(true);
    }
    if state.config.nats.iter().any(|s| !s.is_empty()) {
        // Cluster mode: the local store is only this relay's cache. The room (here or at its
        // owner) knows: a document exists when its state is not empty.
        let state_update = ask(state, name, |reply| RoomCommand::Export { reply }).await?;
        return Ok(*state_update != *crdt::doc::EMPTY_UPDATE_V1);
    }
    let store = state.registry.store().clone();
    let owned = name.to_owned();
    match tokio::task::spawn_blocking(move || store.room_info(&owned)).await {
        Ok(Ok(info)) => Ok(info.is_some()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the store");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the store",
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, "store read panicked");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the store",
            ))
        }
    }
}

/// Sends a command to a room and waits for its answer.
async fn ask<T>(
    state: &AppState,
    name: &str,
    make: impl FnOnce(oneshot::Sender<T>) -> RoomCommand,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    if state.registry.request(name, make(tx)).await.is_err() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the document is unavailable",
        ));
    }
    rx.await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the document is unavailable",
        )
    })
}

fn unwrap(result: Result<Response, Response>) -> Response {
    result.unwrap_or_else(|response| response)
}

/// `GET /api/docs?limit=&after=`.
pub(crate) async fn list_docs(
    query: ListQuery,
    headers: HeaderMap,
    state: Arc<AppState>,
) -> Response {
    unwrap(
        async {
            admin(&state, query.token.as_deref(), &headers, None)?;
            let limit = query.limit.unwrap_or(100).clamp(1, MAX_PAGE);
            let store = state.registry.store().clone();
            let after = query.after.clone();
            let rooms = match tokio::task::spawn_blocking(move || {
                store.list_rooms(after.as_deref(), limit)
            })
            .await
            {
                Ok(Ok(rooms)) => rooms,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot list documents");
                    return Err(error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot read the store",
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %e, "listing documents panicked");
                    return Err(error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot read the store",
                    ));
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
            Ok(warp::reply::json(&DocList { docs, next_after }).into_response())
        }
        .await,
    )
}

/// `GET /api/docs/{name}[?format=json]`.
pub(crate) async fn get_doc(
    tail: Tail,
    query: DocQuery,
    headers: HeaderMap,
    state: Arc<AppState>,
) -> Response {
    unwrap(
        async {
            let (name, action) = doc_path(&tail)?;
            if action.is_some() {
                return Err(error(StatusCode::NOT_FOUND, "not found"));
            }
            admin(&state, query.token.as_deref(), &headers, Some(&name))?;
            if !exists(&state, &name).await? {
                return Err(error(StatusCode::NOT_FOUND, "no such document"));
            }
            match query.format.as_deref() {
                None | Some("binary") => {
                    let state_update =
                        ask(&state, &name, |reply| RoomCommand::Export { reply }).await?;
                    let mut response = Response::new(state_update.to_vec().into());
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    Ok(response)
                }
                Some("json") => {
                    let json =
                        ask(&state, &name, |reply| RoomCommand::ExportJson { reply }).await?;
                    Ok(warp::reply::json(&json).into_response())
                }
                Some(_) => Err(error(
                    StatusCode::BAD_REQUEST,
                    "format must be json or binary",
                )),
            }
        }
        .await,
    )
}

/// `POST /api/docs/{name}/update` with a binary update as the body.
pub(crate) async fn post_update(
    tail: Tail,
    query: DocQuery,
    headers: HeaderMap,
    state: Arc<AppState>,
    body: PendingBody,
) -> Response {
    unwrap(
        async {
            let (name, action) = doc_path(&tail)?;
            if action != Some("update") {
                return Err(error(StatusCode::NOT_FOUND, "not found"));
            }
            admin(&state, query.token.as_deref(), &headers, Some(&name))?;
            if body.declared_len() == 0 {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "the body must be a binary Yjs update (v1)",
                ));
            }
            let body = body
                .read(state.config.body_timeout())
                .await
                .map_err(|e| e.response(&state.metrics))?;
            let outcome = ask(&state, &name, |reply| RoomCommand::ApplyUpdate {
                update: body,
                reply,
            });
            match tokio::time::timeout(COMMIT_WAIT, outcome).await {
                Ok(Ok(Ok(()))) => Ok(
                    warp::reply::json(&serde_json::json!({ "committed": true })).into_response()
                ),
                Ok(Ok(Err(ApiUpdateError::TooLarge))) => Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the update would grow the document past --max-doc-bytes; nothing changed",
                )),
                Ok(Ok(Err(ApiUpdateError::Deleted))) => Err(error(
                    StatusCode::CONFLICT,
                    "the document was deleted while the update was being saved",
                )),
                Ok(Ok(Err(ApiUpdateError::Invalid(reason)))) => Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("the update was refused and changed nothing: {reason}"),
                )),
                Ok(Err(response)) => Err(response),
                Err(_) => Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the update is applied but not committed yet; the relay keeps retrying",
                )),
            }
        }
        .await,
    )
}

/// `DELETE /api/docs/{name}`.
pub(crate) async fn delete_doc(
    tail: Tail,
    query: DocQuery,
    headers: HeaderMap,
    state: Arc<AppState>,
) -> Response {
    unwrap(
        async {
            let (name, action) = doc_path(&tail)?;
            if action.is_some() {
                return Err(error(StatusCode::NOT_FOUND, "not found"));
            }
            admin(&state, query.token.as_deref(), &headers, Some(&name))?;
            if !exists(&state, &name).await? {
                return Err(error(StatusCode::NOT_FOUND, "no such document"));
            }
            ask(&state, &name, |reply| RoomCommand::Delete { reply }).await?;
            tracing::info!(room = %name, "document deleted through the API");
            Ok(warp::reply::json(&serde_json::json!({ "deleted": name })).into_response())
        }
        .await,
    )
}

/// `POST /api/tokens` with a [`TokenRequest`] body.
pub(crate) async fn mint_token(
    query: DocQuery,
    headers: HeaderMap,
    body: PendingBody,
    state: Arc<AppState>,
) -> Response {
    unwrap(async {
        let Some(keys) = state.admission.keys() else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "this relay runs without --secret: it has no key to sign tokens, and needs none",
            ));
        };
        // The body is read only for a valid admin token; whether it covers the documents the
        // body names is checked once the body is known.
        let token = query
            .token
            .clone()
            .or_else(|| request_token(None, &headers));
        token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)
            .and_then(|t| keys.verify(t))
            .and_then(|claims| {
                if claims.access < Access::Admin {
                    Err(AuthError::Insufficient("administration"))
                } else {
                    Ok(())
                }
            })
            .map_err(|e| refused(&state, &e))?;
        let request: TokenRequest = body
            .read_json(state.config.body_timeout())
            .await
            .map_err(|e| e.response(&state.metrics))?;
        if request.doc.is_some() && request.doc_prefix.is_some() {
            return Err(error(StatusCode::BAD_REQUEST, "give doc or doc_prefix, not both"));
        }
        if let Some(doc) = &request.doc {
            room_name(doc).map_err(|m| error(StatusCode::BAD_REQUEST, m))?;
        }
        // The caller's admin token must cover everything the new token would: a single document
        // it covers, or (for a prefix or every document) it must cover every document.
        let scope = request.doc.as_deref();
        let grant = admin(&state, query.token.as_deref(), &headers, scope)?;
        let ttl = request.ttl_secs.unwrap_or(3600);
        if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
            return Err(error(StatusCode::BAD_REQUEST, "ttl_secs must be between 1 and 2592000"));
        }
        if request.doc.is_none() && request.doc_prefix.is_none() && request.access != Access::Admin {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "a read or write token must name a doc or a doc_prefix",
            ));
        }
        let now = now_secs();
        // A minted token never outlives the token that minted it: otherwise a short-lived admin
        // token could renew itself for 30 days, again and again.
        let exp = grant.expires_at.map_or(now + ttl, |limit| limit.min(now + ttl));
        let claims = Claims {
            doc: request.doc,
            doc_prefix: request.doc_prefix,
            access: request.access,
            exp,
            nbf: None,
            iat: Some(now),
            sub: request.sub,
            name: request.name,
        };
        let token = keys.mint(&claims);
        Ok(warp::reply::json(&TokenResponse {
            token,
            expires_at: claims.exp,
        })
        .into_response())
    }
    .await)
}
