//! The accept loop: TCP connections served by hyper with the warp routes.
//!
//! warp's own server can neither set `TCP_NODELAY` (without it, small WebSocket frames wait for
//! delayed ACKs and deliveries show 40 ms steps) nor give the routes the peer address in a form
//! we can read, so the relay accepts connections itself and hands each to hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use warp::Filter;
use warp::reply::Response;

use crate::telemetry::Metrics;

/// The peer address of a request, inserted into its extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

/// The local address a request's connection came in on, inserted into its extensions (the
/// relay's own origin on an unspecified listen address, see [`crate::origin`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalAddr(pub SocketAddr);

/// How long a client may take to send request headers; also how long an idle keep-alive
/// connection is kept (hyper starts the timer when it waits for the next request).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one warning per this period while connections are refused at the limit.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Limits of the accept loop.
#[derive(Clone)]
pub(crate) struct ServerLimits {
    /// Most HTTP connections at once (`--max-http-connections`); a connection over it is closed
    /// as soon as it is accepted.
    pub max_http_connections: usize,
    /// Where refusals are counted, and the `relay_http_connections` gauge.
    pub metrics: Arc<Metrics>,
}

/// Accepts connections until `shutdown` is cancelled. HTTP connections are tracked by
/// `http_tasks` and finish their current request during shutdown; upgraded WebSockets are
/// tracked elsewhere. At most `limits.max_http_connections` are served at once: each holds a slot
/// until it closes or is upgraded to a WebSocket (which `--max-connections` bounds instead).
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    routes: F,
    shutdown: CancellationToken,
    http_tasks: TaskTracker,
    limits: ServerLimits,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
    F::Future: Send,
{
    let service = warp::service(routes);
    let slots = Arc::new(Semaphore::new(limits.max_http_connections));
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the limit, the connection is closed before anything is read from it: holding
        // it (or reading its request to answer 503) would cost what the limit bounds.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            limits.metrics.error("too_many_http_connections");
            let now = tokio::time::Instant::now();
            if last_warning.is_none_or(|at| now.duration_since(at) >= LIMIT_WARNING_EVERY) {
                last_warning = Some(now);
                tracing::warn!(
                    limit = limits.max_http_connections,
                    %peer,
                    "HTTP connection limit reached; closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let local = stream.local_addr().ok();
        let service = service.clone();
        let shutdown = shutdown.clone();
        let gauge = limits.metrics.http_connections.clone();
        gauge.inc();
        http_tasks.spawn(async move {
            let _slot = slot;
            let hyper_service =
                hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer));
                    if let Some(local) = local {
                        request.extensions_mut().insert(LocalAddr(local));
                    }
                    let mut service = service.clone();
                    async move { service.call(request).await }
                });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), hyper_service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "HTTP connection ended with an error");
            }
            // Ends with the connection, or as soon as it is upgraded: hyper then hands the
            // socket to the WebSocket task and this future completes.
            gauge.dec();
        });
    }
}
