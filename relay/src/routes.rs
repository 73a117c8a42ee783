//! The routes of the relay and the state they share.
//!
//! `GET /<room>` with `Upgrade: websocket` joins the room named by the percent-decoded path, as
//! the stock y-websocket provider expects (see [`crate::websocket`]); at `/`, whose empty name
//! is no room, it serves Hocuspocus providers instead (see [`crate::hocuspocus`]). Every other request goes to
//! the plain HTTP routes, so a room may have any name, `healthz` included.
//!
//! Requests to `/api/...` and `/poll/...` from web pages pass an origin gate first (see
//! [`crate::origin`]): a page of an origin that is not allowed gets 403 before any route runs, a
//! CORS preflight from an allowed one is answered here, and answers to allowed pages carry the
//! CORS headers.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, CONTENT_TYPE, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use hyper::upgrade::OnUpgrade;
use warp::Filter;
use warp::path::FullPath;
use warp::reply::{Reply, Response};

use crate::admission::Refusal;
use crate::edge::{error, text};
use crate::origin::OriginCheck;
use crate::server::{LocalAddr, PeerAddr};
use crate::state::AppState;
use crate::websocket::{UpgradeRequest, upgrade};

/// All routes of the relay.
pub(crate) fn routes(
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
        .and(warp::ext::optional::<LocalAddr>())
        .and(with_state.clone())
        .map(
            |path, query: String, headers, on_upgrade, peer, local, state| {
                let request = UpgradeRequest {
                    path,
                    query: (!query.is_empty()).then_some(query),
                    headers,
                    on_upgrade,
                    peer,
                    local,
                };
                if request.path.as_str() == crate::hocuspocus::PATH {
                    crate::hocuspocus::upgrade(request, state)
                } else {
                    upgrade(request, state)
                }
            },
        );
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
    let poll = crate::polling::routes(state.clone());
    let assets = warp::get()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and_then(|path: FullPath, headers: HeaderMap| async move {
            crate::assets::serve(path.as_str(), &headers).ok_or_else(warp::reject::not_found)
        });
    let access = browser_access(state.clone());
    let gate = {
        let state = state.clone();
        access.clone().and_then(move |access: BrowserAccess| {
            let state = state.clone();
            async move {
                match access {
                    BrowserAccess::Refused => {
                        let refusal = Refusal::Origin;
                        state.metrics.error(refusal.metric());
                        tracing::warn!(reason = %refusal, "refused a request from a web page");
                        Ok(refusal.response())
                    }
                    BrowserAccess::Preflight(origin) => Ok(preflight(origin)),
                    BrowserAccess::Other | BrowserAccess::Page(_) => Err(warp::reject::not_found()),
                }
            }
        })
    };
    let routes = gate
        .or(websocket)
        .unify()
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
                error(StatusCode::BAD_REQUEST, "invalid query parameters")
            } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the body is over the size limit",
                )
            } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
                error(StatusCode::LENGTH_REQUIRED, "a Content-Length is required")
            } else if rejection
                .find::<warp::reject::UnsupportedMediaType>()
                .is_some()
            {
                error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "send JSON with Content-Type: application/json",
                )
            } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
                error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}"))
            } else {
                text(StatusCode::NOT_FOUND, "not found\n")
            };
            Ok::<_, Infallible>(response)
        })
        .unify();
    access
        .and(routes)
        .map(|access: BrowserAccess, mut response: Response| {
            if let BrowserAccess::Page(origin) = access {
                allow_origin(response.headers_mut(), origin);
                response.headers_mut().insert(
                    ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static(crate::polling::LAST_SEQ_HEADER),
                );
            }
            response
        })
}

/// What the origin rules say about a request, for the routes that web pages of other origins may
/// call (`/api/...` and `/poll/...`; WebSocket upgrades are checked on admission).
#[derive(Debug, Clone)]
enum BrowserAccess {
    /// Another path, or a request without `Origin`: the rules do not apply.
    Other,
    /// A page of an origin that is not allowed: 403 before any handler runs.
    Refused,
    /// A CORS preflight from an allowed origin.
    Preflight(HeaderValue),
    /// A request from a page of an allowed origin (its own included).
    Page(HeaderValue),
}

/// Whether web pages of other origins may reach `path` at all (with CORS).
fn guarded(path: &str) -> bool {
    ["/api", "/poll"].iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

fn browser_access(
    state: Arc<AppState>,
) -> impl Filter<Extract = (BrowserAccess,), Error = Infallible> + Clone + Send + Sync + 'static {
    let origin = warp::header::value(ORIGIN.as_str())
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
    warp::path::full()
        .and(warp::method())
        .and(origin)
        .and(warp::ext::optional::<LocalAddr>())
        .map(
            move |path: FullPath,
                  method: Method,
                  origin: Option<HeaderValue>,
                  local: Option<LocalAddr>| {
                if !guarded(path.as_str()) {
                    return BrowserAccess::Other;
                }
                match (
                    state
                        .admission
                        .origins()
                        .check(origin.as_ref(), local.map(|l| l.0)),
                    origin,
                ) {
                    (OriginCheck::Refused, _) => BrowserAccess::Refused,
                    (OriginCheck::Same | OriginCheck::Allowed, Some(origin)) => {
                        if method == Method::OPTIONS {
                            BrowserAccess::Preflight(origin)
                        } else {
                            BrowserAccess::Page(origin)
                        }
                    }
                    _ => BrowserAccess::Other,
                }
            },
        )
}

fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    // The answer depends on the Origin: caches must not give it to another page.
    headers.append(VARY, HeaderValue::from_static("origin"));
}

/// The answer to a CORS preflight from an allowed origin.
fn preflight(origin: HeaderValue) -> Response {
    let mut response = Response::default();
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    allow_origin(headers, origin);
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, authorization"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}
