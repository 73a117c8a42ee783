//! A self-hostable real-time relay for Yjs documents.
//!
//! The modules in the order an edit passes through them (README's "How it works" follows the
//! same path):
//!
//! 1. [`config`]: the settings of `relay serve`, built once into a [`config::Config`].
//! 2. `server`: the accept loop (TCP_NODELAY, hyper, the HTTP connection limit, graceful
//!    shutdown).
//! 3. `routes`: every route, behind the origin rules of `origin`; the plain HTTP side is
//!    `api` (the document API), `demo` and `assets` (the demo apps), reading bodies through
//!    `body` only once a request is authorized. `edge` holds what every route reads (room
//!    name, token) and its error answers; `state` what the routes share.
//! 4. `websocket` (the upgrade at `/<room>` and the socket's pump), `polling` (HTTP
//!    long-polling) or `hocuspocus` (Hocuspocus providers at `/`, several documents on one
//!    socket): a transport. Each admits the connection through `admission` (origin,
//!    token, limits), creates its outbound queue (`outbound`) and runs it as a `session`.
//! 5. `session`: one connection's lifecycle, the same for every transport: join, decode each
//!    frame once into messages (`room::inbound`), token expiry, liveness, close reason, leave.
//! 6. `registry`: the one place that creates room tasks and counts their connections.
//! 7. `room`: one task per document; its `room::core::RoomCore` (no I/O) applies what comes
//!    in and answers with effects, and its `room::ledger::Ledger` owns the sequence numbers and
//!    who waits for which commit. The task carries the effects out: messages into the
//!    connections' `outbound` queues, writes to `persist`.
//! 8. `persist`: the store writer thread and its group commits; it reports "committed through
//!    N" back to each room, which only then answers *saved*.
//! 9. `close`: the one table of close reasons and codes; [`telemetry`]: logging and metrics;
//!    [`webhook`]: document events.
//!
//! `main.rs` parses the command line and calls [`run`]; [`cli`] holds the commands that work on
//! a data directory directly.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), relay::RunError> {
//! let config = relay::config::Config::default();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! // Runs until `shutdown` is cancelled, then closes sockets and commits everything.
//! relay::run(config, listener, shutdown).await
//! # }
//! ```

pub(crate) mod admission;
pub(crate) mod api;
pub(crate) mod assets;
pub mod auth;
pub(crate) mod body;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod close;
pub mod cluster;
pub(crate) mod cluster_owner;
pub(crate) mod cluster_remote;
pub mod config;
pub(crate) mod demo;
pub(crate) mod edge;
pub(crate) mod hocuspocus;
pub(crate) mod origin;
pub(crate) mod outbound;
pub(crate) mod persist;
pub(crate) mod polling;
pub(crate) mod registry;
pub(crate) mod room;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod state;
pub mod telemetry;
pub mod webhook;
pub(crate) mod websocket;

use std::sync::Arc;
use std::time::Duration;

use crdt::store::{Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::Config;
use crate::origin::OriginPolicy;
use crate::persist::PersistMsg;
use crate::registry::{LoadedRoom, RegistryLimits, RoomRegistry};
use crate::room::{RoomContext, RoomSettings};
use crate::server::ServerLimits;
use crate::state::AppState;
use crate::telemetry::Metrics;

/// Why the relay could not start or could not shut down cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting cannot work.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A secret cannot be used.
    #[error(transparent)]
    Secret(#[from] auth::KeyError),
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] crdt::error::OpenError),
    /// Cluster mode cannot start (NATS unreachable, too old, misconfigured).
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// A thread or task could not be started.
    #[error("cannot start: {0}")]
    Spawn(String),
    /// The shutdown ran out of time with rooms still holding uncommitted updates.
    #[error("shutdown timed out with unsaved rooms: {}", describe(.0))]
    Unsaved(Vec<LoadedRoom>),
}

/// Opens the store. In cluster mode it is only a cache of the stream: one that cannot be opened
/// is moved aside and started afresh (rooms then load from the stream).
fn open_store(
    path: &std::path::Path,
    options: &StoreOptions,
    is_cache: bool,
) -> Result<Store, crdt::error::OpenError> {
    use crdt::error::OpenError;
    // Only an unreadable file is a cache to start afresh; one that another relay has open, a
    // foreign database or a newer format is refused as in single-node mode.
    let unreadable = |error: &OpenError| match error {
        OpenError::Database { source, .. } => {
            !matches!(source, redb::DatabaseError::DatabaseAlreadyOpen)
        }
        OpenError::Storage(_) => true,
        _ => false,
    };
    match Store::open(path, options) {
        Err(error) if is_cache && path.exists() && unreadable(&error) => {
            let aside = path.with_extension(format!(
                "redb.unreadable-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            ));
            tracing::warn!(%error, aside = %aside.display(), "the cache store cannot be opened; moving it aside and loading rooms from the stream");
            if let Err(rename) = std::fs::rename(path, &aside) {
                tracing::error!(%rename, "cannot move the unreadable store aside");
                return Err(error);
            }
            Store::open(path, options)
        }
        other => other,
    }
}

fn describe(rooms: &[LoadedRoom]) -> String {
    rooms
        .iter()
        .map(|r| format!("{:?} ({} updates)", r.name, r.unsaved_updates))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the relay on `listener` until `shutdown` is cancelled, then stops accepting, closes every
/// socket with 1001, lets the rooms commit and unload, and returns.
///
/// # Errors
/// [`RunError`] when the relay cannot start (bad settings, data directory, store), or when the
/// shutdown's drain timeout passes with updates still uncommitted.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    run_with_ready(config, listener, shutdown, |_| {}).await
}

/// [`run`], calling `ready` with the listening address once the store is open and the relay is
/// about to accept connections (the binary prints its `listening on` line there, so that a
/// script never sees it from a relay that then refuses its store).
///
/// # Errors
/// As [`run`].
pub async fn run_with_ready(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), RunError> {
    config.validate()?;
    let keys = if config.secrets.is_empty() {
        tracing::warn!(
            "no --secret given: the relay is OPEN, anyone who can reach it may read, edit and delete every document; set RELAY_SECRET before exposing it"
        );
        None
    } else {
        let secrets: Vec<String> = config.secrets.iter().map(|s| s.0.clone()).collect();
        Some(Arc::new(auth::Keys::parse(&secrets)?))
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|source| RunError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let metrics = Arc::new(Metrics::new());
    let port = listener
        .local_addr()
        .map_or(config.listen.port(), |a| a.port());
    let cluster = match cluster::ClusterSettings::from_config(&config, port) {
        Some(settings) => Some(cluster::Cluster::start(settings, metrics.clone()).await?),
        None => None,
    };
    let store_path = config.store_path();
    let options = StoreOptions {
        cache_bytes: config.store_cache_mb << 20,
    };
    let is_cache = cluster.is_some();
    let store = tokio::task::spawn_blocking(move || open_store(&store_path, &options, is_cache))
        .await
        .map_err(|e| RunError::Spawn(e.to_string()))??;
    let store = Arc::new(store);
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        store = %store.path().display(),
        max_message_bytes = config.max_message_bytes,
        max_connections = config.max_connections,
        max_connections_per_token = config.max_connections_per_token,
        max_http_connections = config.max_http_connections,
        body_timeout_secs = config.body_timeout_secs,
        outbound_queue_bytes = config.outbound_queue_bytes,
        commit_window_ms = config.commit_window_ms,
        checkpoint_bytes = config.checkpoint_bytes,
        compact_entries = config.compact_entries,
        compact_bytes = config.compact_bytes,
        idle_unload_secs = config.idle_unload_secs,
        keepalive_secs = config.keepalive_secs,
        "relay starting"
    );

    let (persist, writer) = persist::start(
        store.clone(),
        metrics.clone(),
        persist::WriterSettings::from_config(&config),
    )
    .map_err(|e| RunError::Spawn(e.to_string()))?;
    let webhooks = match &config.webhook_url {
        None => None,
        Some(url) => {
            // The first --secret's secret, without its `KID:` (the key id is public: it is in
            // every token's header).
            let secret = config
                .webhook_secret
                .as_ref()
                .map(|s| s.0.as_str())
                .or_else(|| config.secrets.first().map(|s| auth::split_key_spec(&s.0).1))
                .map(|s| s.as_bytes().to_vec())
                .ok_or_else(|| config::ConfigError {
                    name: "--webhook-url",
                    reason: "webhooks are signed: give --webhook-secret or --secret".into(),
                })?;
            let sizes = store.clone();
            let size_of: webhook::SizeOf = Arc::new(move |room: &str| {
                sizes
                    .room_info(room)
                    .ok()
                    .flatten()
                    .map_or(0, |info| info.stored_bytes)
            });
            tracing::info!(url = %url, "sending document events to the webhook");
            Some(
                webhook::start(url.clone(), secret, size_of, metrics.clone())
                    .map_err(|e| RunError::Spawn(e.to_string()))?,
            )
        }
    };
    let ctx = Arc::new(RoomContext {
        store,
        persist: persist.clone(),
        metrics: metrics.clone(),
        settings: RoomSettings::from_config(&config),
        shutdown: shutdown.clone(),
        webhooks,
        cluster: cluster.clone(),
    });
    let registry = RoomRegistry::new(
        ctx,
        RegistryLimits {
            queue_len: config.room_queue,
            max_rooms: config.max_rooms,
            max_room_connections: config.max_room_connections,
        },
    );
    let drain_timeout = config.drain_timeout();
    let config = Arc::new(config);
    let listen = listener.local_addr().unwrap_or(config.listen);
    let origins = OriginPolicy::new(listen, &config.public_urls, &config.allowed_origins);
    tracing::info!(
        same_origin = %origins.describe_same_origin(),
        allowed_origins = %origins.describe_allowed(),
        "web pages of these origins may connect"
    );
    let limits = ServerLimits {
        max_http_connections: config.max_http_connections,
        metrics: metrics.clone(),
    };
    let admission = Admission::new(origins, keys, config.clone(), metrics.clone());
    let state = AppState::new(
        config,
        registry.clone(),
        admission,
        metrics,
        shutdown.clone(),
    );
    let http_tasks = TaskTracker::new();

    if let Some(cluster) = &cluster {
        let _ = cluster.shutdown.set(shutdown.clone());
        cluster_owner::start(cluster.clone(), registry.clone(), shutdown.clone());
    }
    if let Ok(addr) = listener.local_addr() {
        ready(addr);
    }
    server::accept_loop(
        listener,
        routes::routes(state.clone()),
        shutdown,
        http_tasks.clone(),
        limits,
    )
    .await;

    tracing::info!("shutting down: closing connections and committing");
    let deadline = tokio::time::Instant::now() + drain_timeout;
    http_tasks.close();
    state.connections.close();
    registry.tasks().close();
    let drained = tokio::time::timeout_at(deadline, async {
        state.connections.wait().await;
        registry.tasks().wait().await;
    })
    .await;
    if let Some(cluster) = &cluster {
        // The owners' log tasks give their leases up as their rooms unload.
        cluster.stopped.cancel();
        cluster.tasks.close();
        let _ =
            tokio::time::timeout_at(deadline + Duration::from_secs(2), cluster.tasks.wait()).await;
    }
    // HTTP requests in flight get what is left of the drain time, but never hold up the exit.
    let _ = tokio::time::timeout_at(deadline, http_tasks.wait()).await;
    if drained.is_err() {
        let unsaved: Vec<_> = registry
            .loaded()
            .into_iter()
            .filter(|r| r.unsaved_updates > 0)
            .collect();
        if !unsaved.is_empty() {
            tracing::error!(rooms = %describe(&unsaved), "shutdown timed out before everything was committed");
            return Err(RunError::Unsaved(unsaved));
        }
        tracing::warn!("shutdown timed out waiting for connections; everything is committed");
    }
    // Every room has unloaded, so nothing new can be queued: stop the writer once it has
    // committed what it holds (compaction snapshots, at most), and wait for its thread, so that
    // the store file is closed when `run` returns.
    let (stopped, stop) = oneshot::channel();
    if persist.send(PersistMsg::Stop(stopped)).await.is_ok() {
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(5), stop).await;
    }
    let store = registry.store().clone();
    drop((persist, state, registry));
    if tokio::task::spawn_blocking(move || writer.join())
        .await
        .is_err()
    {
        tracing::error!("the store writer thread panicked");
    }
    if Arc::try_unwrap(store).is_err() {
        tracing::warn!(
            "the store is still in use after shutdown; it closes when the process exits"
        );
    }
    tracing::info!("shutdown complete");
    Ok(())
}
