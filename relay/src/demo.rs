//! The demo apps' sign-on: how the demo served at `/` gets tokens on a relay that has a secret.
//!
//! A real application mints tokens in its own backend (see `POST /api/tokens` and
//! `relay token`). The demo has no backend, so with `--demo-sign-on` (never on by default) the
//! relay itself hands anyone a token for a demo room: write access to `docs/...` and `chat/...`,
//! read-only access under [`READ_ONLY_PREFIX`], and a listing of the demo rooms. Without the flag
//! these endpoints answer 404, except `GET /api/demo/config`, which tells the app how to connect.
//!
//! | request | what |
//! | --- | --- |
//! | `GET /api/demo/config` | `{"auth": "open" \| "demo" \| "token", "read_only_prefix"?}` |
//! | `POST /api/demo/token` `{"room", "name"}` | `{"token", "access", "expires_at"}` |
//! | `GET /api/demo/docs?prefix=&limit=&after=` | like `GET /api/docs`, demo rooms only |

use std::sync::Arc;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use warp::Filter;
use warp::reply::{Reply, Response};

use crate::api::{DocList, DocSummary};
use crate::auth::{Access, Claims, now_secs};
use crate::body::PendingBody;
use crate::edge::{error, room_name};
use crate::state::AppState;

/// Demo documents under this prefix get read-only tokens.
pub(crate) const READ_ONLY_PREFIX: &str = "docs/read-only/";
/// The prefixes of the demo's rooms.
pub(crate) const DEMO_PREFIXES: &[&str] = &["docs/", "chat/"];
/// Lifetime of a demo token; the app asks for a new one when it expires.
pub(crate) const DEMO_TOKEN_TTL_SECS: u64 = 3600;

/// How the demo app connects.
#[derive(Debug, Serialize)]
pub(crate) struct DemoConfig {
    /// `open`: no tokens; `demo`: ask `POST /api/demo/token`; `token`: tokens come from the
    /// application that embeds the relay, the demo cannot sign on.
    pub auth: &'static str,
    /// Rooms under this prefix are read-only (only in `demo` mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only_prefix: Option<&'static str>,
}

/// Body of `POST /api/demo/token`.
#[derive(Debug, Deserialize)]
pub(crate) struct DemoTokenRequest {
    /// The room.
    pub room: String,
    /// The display name, carried in the token.
    pub name: Option<String>,
}

/// Answer of `POST /api/demo/token`.
#[derive(Debug, Serialize)]
pub(crate) struct DemoToken {
    /// The token.
    pub token: String,
    /// `read` or `write`.
    pub access: Access,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Query of `GET /api/demo/docs`.
#[derive(Debug, Deserialize)]
pub(crate) struct DemoListQuery {
    /// `docs/` or `chat/` (default `docs/`).
    pub prefix: Option<String>,
    /// Page size (default 100, at most 500).
    pub limit: Option<usize>,
    /// Continue after this name.
    pub after: Option<String>,
}

fn mode(state: &AppState) -> &'static str {
    match (state.admission.keys(), state.config.demo_sign_on) {
        (None, _) => "open",
        (Some(_), true) => "demo",
        (Some(_), false) => "token",
    }
}

/// The demo routes.
pub(crate) fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let with_state = warp::any().map(move || state.clone());
    let config = warp::path!("api" / "demo" / "config")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: Arc<AppState>| {
            let auth = mode(&state);
            warp::reply::json(&DemoConfig {
                auth,
                read_only_prefix: (auth == "demo").then_some(READ_ONLY_PREFIX),
            })
            .into_response()
        });
    let token = warp::path!("api" / "demo" / "token")
        .and(warp::post())
        .and(crate::body::pending(4096))
        .and(with_state.clone())
        .then(demo_token);
    let docs = warp::path!("api" / "demo" / "docs")
        .and(warp::get())
        .and(warp::query::<DemoListQuery>())
        .and(with_state)
        .then(demo_docs);
    config.or(token).unify().or(docs).unify()
}

async fn demo_token(body: PendingBody, state: Arc<AppState>) -> Response {
    let (Some(keys), true) = (state.admission.keys(), state.config.demo_sign_on) else {
        return error(
            StatusCode::NOT_FOUND,
            "the demo sign-on is off (relay serve --demo-sign-on)",
        );
    };
    let request: DemoTokenRequest = match body.read_json(state.config.body_timeout()).await {
        Ok(request) => request,
        Err(e) => return e.response(&state.metrics),
    };
    if room_name(&request.room).is_err()
        || !DEMO_PREFIXES.iter().any(|p| request.room.starts_with(p))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "demo tokens are for rooms named docs/... or chat/...",
        );
    }
    let access = if request.room.starts_with(READ_ONLY_PREFIX) {
        Access::Read
    } else {
        Access::Write
    };
    let now = now_secs();
    let name = request.name.map(|n| n.chars().take(64).collect::<String>());
    let claims = Claims {
        doc: Some(request.room),
        doc_prefix: None,
        access,
        exp: now + DEMO_TOKEN_TTL_SECS,
        nbf: None,
        iat: Some(now),
        sub: Some("demo".into()),
        name,
    };
    warp::reply::json(&DemoToken {
        token: keys.mint(&claims),
        access,
        expires_at: claims.exp,
    })
    .into_response()
}

async fn demo_docs(query: DemoListQuery, state: Arc<AppState>) -> Response {
    if mode(&state) != "demo" {
        return error(
            StatusCode::NOT_FOUND,
            "the demo sign-on is off (relay serve --demo-sign-on)",
        );
    }
    let prefix = query.prefix.unwrap_or_else(|| "docs/".into());
    if !DEMO_PREFIXES.contains(&prefix.as_str()) {
        return error(StatusCode::BAD_REQUEST, "prefix must be docs/ or chat/");
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 500);
    // Start at the prefix (or after the last name of the previous page) and stop at its end.
    let after = query.after.unwrap_or_else(|| prefix.clone());
    let store = state.registry.store().clone();
    let listed = tokio::task::spawn_blocking(move || store.list_rooms(Some(&after), limit)).await;
    let Ok(Ok(rooms)) = listed else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the store");
    };
    let full_page = rooms.len() == limit;
    let docs: Vec<DocSummary> = rooms
        .into_iter()
        .take_while(|r| r.name.starts_with(&prefix))
        .map(|r| DocSummary {
            connections: state.registry.connections(&r.name),
            name: r.name,
            size_bytes: r.stored_bytes,
            updated_at_ms: r.updated_ms,
        })
        .collect();
    let next_after = (full_page && docs.len() == limit)
        .then(|| docs.last().map(|d| d.name.clone()))
        .flatten();
    warp::reply::json(&DocList { docs, next_after }).into_response()
}
