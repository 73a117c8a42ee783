//! What the routes and the connections share: the configuration, the rooms, the admission rules,
//! the metrics, the shutdown signal and the tracker of open connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::Config;
use crate::registry::RoomRegistry;
use crate::room::ConnId;
use crate::telemetry::Metrics;

/// Everything the routes need.
pub(crate) struct AppState {
    /// The configuration.
    pub(crate) config: Arc<Config>,
    /// The loaded rooms.
    pub(crate) registry: Arc<RoomRegistry>,
    /// Who may open a connection, and the connection slots.
    pub(crate) admission: Admission,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled at shutdown.
    pub(crate) shutdown: CancellationToken,
    /// Room connections (WebSockets, which hyper no longer tracks once upgraded, and
    /// long-polling sessions): shutdown waits on these.
    pub(crate) connections: TaskTracker,
    next_conn: AtomicU64,
}

impl AppState {
    /// Shared state for the routes.
    pub(crate) fn new(
        config: Arc<Config>,
        registry: Arc<RoomRegistry>,
        admission: Admission,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(AppState {
            config,
            registry,
            admission,
            metrics,
            shutdown,
            connections: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// A new connection id.
    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }
}
