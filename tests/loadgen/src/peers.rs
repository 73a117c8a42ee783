//! The servers under test: how to start each one, its URLs, and what it supports.
//!
//! Every server is started by the generator as a child process pinned to its own core
//! (`taskset -c CORE`), on a free loopback port and a fresh data directory, and stopped with
//! SIGTERM. [`Server::attach`] instead measures a server that runs already (the smoke test runs
//! the relay in-process).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpStream;

use crate::cluster::ClusterRoutes;
use crate::procfs;
use crate::protocol::Protocol;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKind {
    /// This repository's relay (`relay serve`).
    Relay,
    /// `@y/websocket-server` from npm, under Node, with LevelDB persistence (`YPERSISTENCE`).
    YWebsocketServer,
    /// `y-sweet serve` (filesystem store).
    YSweet,
    /// The bare forwarder (`forwarder`, in this crate): no CRDT, no disk.
    Forwarder,
    /// `@hocuspocus/server` from npm, under Node, with `@hocuspocus/extension-sqlite`
    /// (`peers/hocuspocus-server.mjs`). Speaks only the Hocuspocus protocol.
    HocuspocusServer,
}

impl PeerKind {
    /// Every peer, the relay first.
    pub const ALL: [PeerKind; 5] = [
        PeerKind::Relay,
        PeerKind::YWebsocketServer,
        PeerKind::YSweet,
        PeerKind::Forwarder,
        PeerKind::HocuspocusServer,
    ];

    /// The short name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Relay => "relay",
            PeerKind::YWebsocketServer => "y-websocket-server",
            PeerKind::YSweet => "y-sweet",
            PeerKind::Forwarder => "forwarder",
            PeerKind::HocuspocusServer => "hocuspocus-server",
        }
    }

    /// Every peer whose clients can speak `protocol`, the relay first.
    pub fn speaking(protocol: Protocol) -> Vec<PeerKind> {
        PeerKind::ALL
            .into_iter()
            .filter(|p| p.speaks(protocol))
            .collect()
    }

    /// Whether the server serves clients of `protocol`: y-websocket everywhere but on the
    /// Hocuspocus server, Hocuspocus only on the relay (at its root path) and the Hocuspocus
    /// server.
    pub fn speaks(self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::YWebsocket => self != PeerKind::HocuspocusServer,
            Protocol::Hocuspocus => matches!(self, PeerKind::Relay | PeerKind::HocuspocusServer),
        }
    }

    /// Whether the server keeps documents (answers sync step 1 with its state). The bare
    /// forwarder does not: its clients skip the handshake and there is nothing to converge.
    pub fn has_state(self) -> bool {
        self != PeerKind::Forwarder
    }

    /// Whether the server answers the save request extension (type 100) with "saved".
    pub fn acks_saves(self) -> bool {
        self == PeerKind::Relay
    }

    /// Whether a document must be created over HTTP before clients join.
    pub fn creates_docs_over_http(self) -> bool {
        self == PeerKind::YSweet
    }

    /// Whether the server sends a client's own updates back to it.
    pub fn echoes(self) -> bool {
        matches!(
            self,
            PeerKind::YWebsocketServer | PeerKind::YSweet | PeerKind::HocuspocusServer
        )
    }
}

impl serde::Serialize for PeerKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PeerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PeerKind::ALL
            .into_iter()
            .find(|p| {
                p.name() == s
                    || (s == "yws" && *p == PeerKind::YWebsocketServer)
                    || (s == "hocuspocus" && *p == PeerKind::HocuspocusServer)
            })
            .ok_or_else(|| {
                format!(
                    "unknown peer {s:?}: relay, y-websocket-server (yws), y-sweet, forwarder, \
                     hocuspocus-server (hocuspocus)"
                )
            })
    }
}

/// Where the peers' programs are.
#[derive(Debug, Clone)]
pub struct PeerPaths {
    /// The relay binary (`target/release/relay`).
    pub relay: PathBuf,
    /// The forwarder binary (`target/release/forwarder`).
    pub forwarder: PathBuf,
    /// The y-sweet binary.
    pub y_sweet: PathBuf,
    /// The directory holding `node_modules/@y/websocket-server`, `node_modules/@hocuspocus` and
    /// `hocuspocus-server.mjs` (`tests/loadgen/peers`).
    pub node_peers: PathBuf,
    /// The CPU core the servers are pinned to (`None`: not pinned).
    pub server_core: Option<usize>,
    /// Extra arguments for `relay serve`.
    pub relay_args: Vec<String>,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Which server.
    pub kind: PeerKind,
    /// Its loopback address.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// Its data directory (store).
    pub data_dir: PathBuf,
    child: Option<std::process::Child>,
    /// When the process was spawned.
    pub started: Instant,
    /// In cluster mode: every relay and nats-server of the cluster, and which relay each room's
    /// clients connect to. This server is then the cluster's first relay.
    pub cluster: Option<Arc<ClusterRoutes>>,
}

/// What a stopped child process used over its life (from `wait4`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExitUsage {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Bytes written to storage (`ru_oublock` × 512).
    pub written_bytes: u64,
    /// Peak resident memory, KiB.
    pub max_rss_kib: u64,
}

/// A free loopback port (bound and released at once).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Server {
    /// Starts `kind` on a free port with `data_dir` (created if missing; it should be empty for a
    /// fresh store), and waits until it accepts connections.
    ///
    /// # Errors
    /// When it cannot be spawned or does not listen within 30 s.
    pub async fn start(kind: PeerKind, paths: &PeerPaths, data_dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        Self::start_on(kind, paths, data_dir, port).await
    }

    /// Starts `kind` on `port` (see [`Server::start`]).
    ///
    /// # Errors
    /// When it cannot be spawned or does not listen within 30 s.
    pub async fn start_on(
        kind: PeerKind,
        paths: &PeerPaths,
        data_dir: &Path,
        port: u16,
    ) -> anyhow::Result<Self> {
        let mut server = Self::spawn(kind, paths, data_dir, port)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(server.addr).await.is_ok() {
                break;
            }
            if let Some(child) = server.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{kind} exited at start ({status}); see {}",
                    server.log_path().display()
                );
            }
            if Instant::now() > deadline {
                bail!("{kind} does not listen on {} after 30 s", server.addr);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(server)
    }

    /// Spawns the process without waiting for it to listen.
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn spawn(
        kind: PeerKind,
        paths: &PeerPaths,
        data_dir: &Path,
        port: u16,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = match paths.server_core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string());
                c
            }
            None => Command::new("env"),
        };
        match kind {
            PeerKind::Relay => {
                cmd.arg(&paths.relay)
                    .arg("serve")
                    .arg("--listen")
                    .arg(addr.to_string())
                    .arg("--data-dir")
                    .arg(data_dir)
                    .args(&paths.relay_args)
                    .env("RUST_LOG", "warn");
            }
            PeerKind::Forwarder => {
                cmd.arg(&paths.forwarder)
                    .arg("--listen")
                    .arg(addr.to_string());
            }
            PeerKind::YSweet => {
                cmd.arg(&paths.y_sweet)
                    .arg("serve")
                    .arg(data_dir)
                    .arg("--host")
                    .arg("127.0.0.1")
                    .arg("--port")
                    .arg(port.to_string())
                    .env("RUST_LOG", "warn");
            }
            PeerKind::YWebsocketServer => {
                let script = paths
                    .node_peers
                    .join("node_modules/@y/websocket-server/src/server.js");
                cmd.arg("node")
                    .arg(script)
                    .env("HOST", "127.0.0.1")
                    .env("PORT", port.to_string())
                    .env("YPERSISTENCE", data_dir.join("leveldb"))
                    .current_dir(&paths.node_peers);
            }
            PeerKind::HocuspocusServer => {
                cmd.arg("node")
                    .arg(paths.node_peers.join("hocuspocus-server.mjs"))
                    .arg(port.to_string())
                    .arg(data_dir)
                    .current_dir(&paths.node_peers);
            }
        }
        let log = std::fs::File::create(data_dir.with_extension("log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {kind} ({cmd:?})"))?;
        Ok(Server {
            kind,
            addr,
            // `taskset -c N prog` and `env prog` exec the program: same pid.
            pid: child.id(),
            data_dir: data_dir.to_owned(),
            child: Some(child),
            started,
            cluster: None,
        })
    }

    /// A server that runs already (not a child of the generator).
    pub fn attach(kind: PeerKind, addr: SocketAddr, pid: u32, data_dir: &Path) -> Self {
        Server {
            kind,
            addr,
            pid,
            data_dir: data_dir.to_owned(),
            child: None,
            started: Instant::now(),
            cluster: None,
        }
    }

    /// The processes that serve clients: this server, or every relay of its cluster.
    pub fn relay_pids(&self) -> Vec<u32> {
        match &self.cluster {
            Some(c) => c.relay_pids(),
            None => vec![self.pid],
        }
    }

    /// The cluster's nats-servers (none for a single server).
    pub fn nats_pids(&self) -> Vec<u32> {
        self.cluster
            .as_ref()
            .map(|c| c.nats_pids.clone())
            .unwrap_or_default()
    }

    /// Kills the process with SIGKILL (a crash: no graceful hand-over) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where its output goes.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    /// The WebSocket URL of `room` for y-websocket clients.
    pub fn ws_url(&self, room: &str) -> String {
        if let Some(cluster) = &self.cluster {
            return format!("ws://{}/{room}", cluster.addr_for(room));
        }
        match self.kind {
            PeerKind::YSweet => format!("ws://{}/d/{room}/ws/{room}", self.addr),
            _ => format!("ws://{}/{room}", self.addr),
        }
    }

    /// The WebSocket URL a client of `room` speaking `protocol` connects to: for Hocuspocus the
    /// server's root, the same for every document (the relay's Hocuspocus endpoint, and where
    /// `@hocuspocus/server` listens).
    pub fn client_url(&self, protocol: Protocol, room: &str) -> String {
        match protocol {
            Protocol::YWebsocket => self.ws_url(room),
            Protocol::Hocuspocus => format!("ws://{}/", self.addr),
        }
    }

    /// Creates `room` where the server needs it (y-sweet: `POST /doc/new`).
    ///
    /// # Errors
    /// When the request fails.
    pub async fn create_room(&self, room: &str) -> anyhow::Result<()> {
        if !self.kind.creates_docs_over_http() {
            return Ok(());
        }
        let body = format!("{{\"docId\":\"{room}\"}}");
        // The tests' one HTTP client (relay_tests::http_request), not a second one here.
        let reply = relay_tests::http_request(
            self.addr,
            "POST",
            "/doc/new",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
        .with_context(|| format!("POST /doc/new {room}"))?;
        if reply.status != 200 {
            bail!(
                "POST /doc/new {room}: HTTP {}: {}",
                reply.status,
                reply.text()
            );
        }
        Ok(())
    }

    /// Bytes of the store on disk.
    pub fn store_bytes(&self) -> u64 {
        procfs::dir_size(&self.data_dir)
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Stops the server: SIGTERM, then SIGKILL after `grace`. Returns what it used over its
    /// life.
    pub async fn stop(mut self, grace: Duration) -> ExitUsage {
        let Some(child) = self.child.take() else {
            return ExitUsage::default();
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Some(usage) = reap(pid) {
                return usage;
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                return reap(pid).unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reaps `pid` if it has exited, with its resource usage.
fn reap(pid: libc::pid_t) -> Option<ExitUsage> {
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child without blocking.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    if r != pid {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(ExitUsage {
        cpu_seconds: secs(usage.ru_utime) + secs(usage.ru_stime),
        written_bytes: usage.ru_oublock as u64 * 512,
        max_rss_kib: usage.ru_maxrss as u64,
    })
}

/// Runs a command to completion and returns what it used (wait4).
///
/// # Errors
/// When it cannot be spawned or exits with a failure.
pub async fn run_to_end(mut cmd: Command) -> anyhow::Result<ExitUsage> {
    let child = cmd
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status = 0;
        // SAFETY: as in `reap`.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child without blocking.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                bail!("{cmd:?} failed (status {status})");
            }
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return Ok(ExitUsage {
                cpu_seconds: secs(usage.ru_utime) + secs(usage.ru_stime),
                written_bytes: usage.ru_oublock as u64 * 512,
                max_rss_kib: usage.ru_maxrss as u64,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
