//! The routes of the relay and the state they share.
//!
//! `GET /<room>` with `Upgrade: websocket` joins the room named by the percent-decoded path, as
//! the stock y-websocket provider expects (see [`crate::upgrade`]). Every other request goes to
//! the plain HTTP routes, so a room may have any name, `healthz` included.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode};
use hyper::upgrade::OnUpgrade;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;
use warp::path::FullPath;
use warp::reply::{Reply, Response};

use crate::auth::Keys;
use crate::config::Config;
use crate::registry::RoomRegistry;
use crate::room::ConnId;
use crate::server::PeerAddr;
use crate::telemetry::Metrics;
use crate::upgrade::{UpgradeRequest, upgrade};

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
    /// The token keys; `None` runs the relay open.
    pub keys: Option<Arc<Keys>>,
    /// Long-polling sessions.
    pub poll: crate::poll::PollSessions,
    next_conn: AtomicU64,
    pub(crate) open_sockets: Arc<AtomicUsize>,
}

impl AppState {
    /// Shared state for the routes.
    pub fn new(
        config: Arc<Config>,
        registry: Arc<RoomRegistry>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        keys: Option<Arc<Keys>>,
    ) -> Arc<Self> {
        Arc::new(AppState {
            config,
            registry,
            metrics,
            shutdown,
            keys,
            poll: crate::poll::PollSessions::default(),
            sockets: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            open_sockets: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A new connection id.
    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
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
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<PeerAddr>())
        .and(with_state.clone())
        .map(|path, query: String, headers, on_upgrade, peer, state| {
            let request = UpgradeRequest {
                path,
                query: (!query.is_empty()).then_some(query),
                headers,
                on_upgrade,
                peer,
            };
            upgrade(request, state)
        });
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
    let api = crate::api::routes(state.clone());
    let demo = crate::demo::routes(state.clone());
    let poll = crate::poll::routes(state.clone());
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
        .or(api)
        .unify()
        .or(demo)
        .unify()
        .or(poll)
        .unify()
        .or(assets)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            // Every route rejects with its own reason (a missing Upgrade header, a wrong method);
            // what the client needs to hear is that nothing is here, unless a query was bad.
            let response = if rejection.find::<warp::reject::InvalidQuery>().is_some() {
                crate::api::error(StatusCode::BAD_REQUEST, "invalid query parameters")
            } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
                crate::api::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the body is over the size limit",
                )
            } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
                crate::api::error(StatusCode::LENGTH_REQUIRED, "a Content-Length is required")
            } else if rejection
                .find::<warp::reject::UnsupportedMediaType>()
                .is_some()
            {
                crate::api::error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "send JSON with Content-Type: application/json",
                )
            } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
                crate::api::error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}"))
            } else {
                text(StatusCode::NOT_FOUND, "not found\n")
            };
            Ok::<_, Infallible>(response)
        })
        .unify()
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> Response {
    let mut response = warp::reply::with_status(body, status).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
