//! Relays in cluster mode: a [`NatsCluster`] and relay binaries ([`ChildRelay`]) started with
//! `--nats`, `--nats-monitor`, `--node-name` and `--lease-secs`, each on its own data directory
//! (its redb cache) that survives a kill, so a test restarts the same node.
//!
//! A node can reach NATS through its own [`TcpProxy`]s (one per server), so that a test cuts it
//! off from NATS while its clients stay connected.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use tempfile::TempDir;

use tokio::sync::watch;

use crate::acked::{AckedWriter, RelayAddrs, edits_of, read_edits};
use crate::child_relay::ChildRelay;
use crate::client::{Client, Event, abbreviate};
use crate::http::ws_url;
use crate::jetstream::{lease_owner, replay_room};
use crate::nats::NatsCluster;
use crate::protocol::decode_one;
use crate::proxy::{Link, TcpProxy};
use crate::wait::{DEADLINE, within_for};

/// How a relay node reaches NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsPath {
    /// Straight to the servers.
    Direct,
    /// Through a [`TcpProxy`] per server, which the test can blackhole.
    Proxied,
}

/// The options of every relay of a [`RelayCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `--lease-secs` (short, so takeovers are quick in tests).
    pub lease_secs: u64,
    /// Extra arguments for every relay (e.g. `--secret`).
    pub extra_args: Vec<String>,
    /// `RUST_LOG` of the relays.
    pub log: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            lease_secs: 3,
            extra_args: Vec::new(),
            log: std::env::var("RELAY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        }
    }
}

/// One relay of a cluster: its node name, data directory and (while it runs) its process.
pub struct RelayNode {
    /// `--node-name`.
    pub name: String,
    data: TempDir,
    relay: Option<ChildRelay>,
    proxies: Vec<TcpProxy>,
    args: Vec<String>,
    log_filter: String,
    /// The log of the previous runs (a killed relay's last words).
    past_logs: String,
}

impl RelayNode {
    /// Starts a relay node on `nats`.
    pub async fn start(
        nats: &NatsCluster,
        name: &str,
        path: NatsPath,
        options: &ClusterOptions,
    ) -> Result<RelayNode, String> {
        let mut proxies = Vec::new();
        let urls = match path {
            NatsPath::Direct => nats.urls(),
            NatsPath::Proxied => {
                for node in &nats.nodes {
                    proxies.push(TcpProxy::start(node.client).await);
                }
                proxies
                    .iter()
                    .map(|p| format!("nats://{}", p.addr()))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        let mut args = vec![
            "--nats".to_owned(),
            urls,
            "--nats-monitor".to_owned(),
            nats.monitor_urls(),
            "--node-name".to_owned(),
            name.to_owned(),
            "--lease-secs".to_owned(),
            options.lease_secs.to_string(),
        ];
        args.extend(options.extra_args.iter().cloned());
        let mut node = RelayNode {
            name: name.to_owned(),
            data: tempfile::tempdir().map_err(|e| e.to_string())?,
            relay: None,
            proxies,
            args,
            log_filter: options.log.clone(),
            past_logs: String::new(),
        };
        node.restart().await?;
        Ok(node)
    }

    /// Starts the relay again on the same data directory and node name (after [`RelayNode::kill`]).
    pub async fn restart(&mut self) -> Result<(), String> {
        assert!(self.relay.is_none(), "restart a relay that is not running");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let filter = self.log_filter.clone();
        let relay = ChildRelay::start(self.data.path(), &args, |command| {
            command.env("RUST_LOG", filter);
        })
        .await
        .map_err(|e| format!("relay {}: {e}", self.name))?;
        self.relay = Some(relay);
        Ok(())
    }

    /// Whether the relay process is running.
    pub fn is_running(&self) -> bool {
        self.relay.is_some()
    }

    fn running(&self) -> &ChildRelay {
        self.relay
            .as_ref()
            .unwrap_or_else(|| panic!("relay {} is not running", self.name))
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.running().addr()
    }

    /// The WebSocket URL of a room on this relay.
    pub fn ws_url(&self, room: &str) -> String {
        ws_url(self.addr(), room)
    }

    /// Joins `room` on this relay, retrying while the room's old owner still holds it (the relay
    /// then closes at once, with 1013), until the client's text is `expected`. Fails the test,
    /// with the relay's log, after `limit`.
    pub async fn join_with_text(&self, room: &str, expected: &str, limit: Duration) -> Client {
        let joined = tokio::time::timeout(limit, async {
            loop {
                // Not `Client::join`: a relay that cannot serve the room yet closes at once.
                let mut client = Client::connect(&self.ws_url(room)).await;
                client.send_step1().await;
                // Shorter than `next_event`'s own deadline, which fails the test.
                let reached = tokio::time::timeout(DEADLINE * 3 / 4, async {
                    loop {
                        match client.next_event().await {
                            Event::Frame(frame) => {
                                client.absorb(&decode_one(&frame));
                                if client.text() == expected {
                                    return true;
                                }
                            }
                            _ => return false,
                        }
                    }
                })
                .await;
                if reached == Ok(true) {
                    return client;
                }
                // A client's reconnect delay, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        joined.unwrap_or_else(|_| {
            panic!(
                "{room} did not serve {:?} within {limit:?}; relay {}'s log:\n{}",
                abbreviate(expected),
                self.name,
                self.log()
            )
        })
    }

    /// Its data directory (the redb cache).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Kills it with SIGKILL (a crash).
    pub async fn kill(&mut self) {
        let mut relay = self.relay.take().expect("the relay is running");
        relay.kill().await.expect("kill the relay");
        self.past_logs.push_str(&relay.log());
    }

    /// Stops it with SIGTERM (a graceful shutdown) and returns whether it exited with status 0.
    pub async fn stop(&mut self) -> bool {
        let mut relay = self.relay.take().expect("the relay is running");
        let status = relay.stop().await;
        self.past_logs.push_str(&relay.log());
        status.success()
    }

    /// Pauses it (SIGSTOP): its sockets stay open, it does nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Pauses it (SIGSTOP) and waits until the kernel reports it stopped (state `T` in
    /// `/proc/PID/stat`): kill(2) returns before the process has stopped, and a test that sends
    /// something "while it is paused" must not reach a still running relay.
    pub async fn pause_until_stopped(&self) {
        self.pause();
        let stat = format!("/proc/{}/stat", self.running().pid());
        within_for(
            Duration::from_secs(5),
            &format!("relay {} to stop", self.name),
            async {
                while !std::fs::read_to_string(&stat)
                    .unwrap_or_default()
                    .rsplit(") ")
                    .next()
                    .is_some_and(|rest| rest.starts_with('T'))
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        )
        .await;
    }

    /// Resumes it (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with the pid of a child the fixture has not reaped.
        let rc = unsafe { libc::kill(self.running().pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "signal {signal} to relay {}", self.name);
    }

    /// Sets the link between this relay and every NATS server (only for [`NatsPath::Proxied`]).
    pub fn set_nats_link(&self, link: Link) {
        assert!(
            !self.proxies.is_empty(),
            "relay {} was started without proxies (NatsPath::Proxied)",
            self.name
        );
        for proxy in &self.proxies {
            proxy.set_link(link);
        }
    }

    /// Its proxies (empty for [`NatsPath::Direct`]).
    pub fn proxies(&self) -> &[TcpProxy] {
        &self.proxies
    }

    /// Everything it logged, across restarts.
    pub fn log(&self) -> String {
        let current = self.relay.as_ref().map(ChildRelay::log).unwrap_or_default();
        format!("{}{current}", self.past_logs)
    }

    /// Fails the test, with its log, if the relay died.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(relay) = self.relay.as_mut() {
            relay.assert_running(what);
        }
    }
}

/// Three NATS servers and `n` relays named `r0`, `r1`, ...
pub struct RelayCluster {
    /// The relays (declared first: dropped before the servers they use).
    pub relays: Vec<RelayNode>,
    /// The NATS servers.
    pub nats: NatsCluster,
    /// A JetStream context on the servers, for reading what was stored.
    pub js: jetstream::Context,
    /// The options every relay got.
    pub options: ClusterOptions,
}

impl RelayCluster {
    /// Starts three NATS servers and `n` relays, all on `path`.
    pub async fn start(n: usize, path: NatsPath, options: ClusterOptions) -> RelayCluster {
        let nats = NatsCluster::start().await;
        let mut relays = Vec::new();
        for i in 0..n {
            let relay = RelayNode::start(&nats, &format!("r{i}"), path, &options)
                .await
                .unwrap_or_else(|e| panic!("{e}\nNATS logs:\n{}", nats.logs()));
            relays.push(relay);
        }
        let js = jetstream::new(nats.client().await);
        RelayCluster {
            relays,
            nats,
            js,
            options,
        }
    }

    /// The lease time of the relays.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.options.lease_secs)
    }

    /// The index of the relay holding a room's lease, if any.
    pub async fn owner(&self, room: &str) -> Option<usize> {
        let name = lease_owner(&self.js, room).await?;
        self.relays.iter().position(|r| r.name == name)
    }

    /// Waits up to `limit` for a room's lease to be held by a relay that `accept`s; its index.
    pub async fn wait_owner(
        &self,
        room: &str,
        limit: Duration,
        mut accept: impl FnMut(usize) -> bool,
    ) -> usize {
        within_for(limit, &format!("an owner of room {room:?}"), async {
            loop {
                if let Some(i) = self.owner(room).await
                    && accept(i)
                {
                    return i;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }

    /// The running relays' addresses, for a [`WriterPool`]; update it on kills and restarts.
    pub fn addrs(&self) -> RelayAddrs {
        watch::Sender::new(
            self.relays
                .iter()
                .map(|r| r.is_running().then(|| r.addr()))
                .collect(),
        )
    }

    /// Publishes the running relays' addresses to `addrs`.
    pub fn update_addrs(&self, addrs: &RelayAddrs) {
        addrs.send_replace(
            self.relays
                .iter()
                .map(|r| r.is_running().then(|| r.addr()))
                .collect(),
        );
    }

    /// The end of every fault test: each writer reconnects (to a running relay), sends what the
    /// relay lacks and waits for *saved* of everything; then each room's subject, replayed from
    /// JetStream, must hold every writer's every edit, no message twice (by `Nats-Msg-Id` or by
    /// payload), each message naming its room; and a fresh client on every running relay must
    /// see exactly that.
    ///
    /// # Errors
    /// What differs, with `when`.
    pub async fn settle_and_verify(
        &self,
        writers: &mut [AckedWriter],
        when: &str,
    ) -> Result<(), String> {
        let running: Vec<&RelayNode> = self.relays.iter().filter(|r| r.is_running()).collect();
        assert!(!running.is_empty(), "{when}: no relay is running");
        let limit = self.lease() * 2 + Duration::from_secs(20);
        let settles = writers.iter_mut().enumerate().map(|(i, writer)| {
            let url = running[i % running.len()].ws_url(&writer.room);
            async move { writer.settle(&url, limit).await }
        });
        for result in futures_util::future::join_all(settles).await {
            result.map_err(|e| format!("{when}: {e}"))?;
        }
        let mut rooms: Vec<&str> = writers.iter().map(|w| w.room.as_str()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        for room in rooms {
            let replay = replay_room(&self.js, room).await;
            let stored = edits_of(&replay.doc);
            for writer in writers.iter().filter(|w| w.room == room) {
                if let Some(n) = writer.first_missing(&stored, writer.sent()) {
                    return Err(format!(
                        "{when}: {} was acknowledged as saved but is not in the stream of room {room:?}",
                        writer.key(n)
                    ));
                }
            }
            let twice = replay.duplicate_msg_ids();
            if !twice.is_empty() {
                return Err(format!(
                    "{when}: room {room:?}: message ids stored twice: {twice:?}"
                ));
            }
            let twice = replay.duplicate_payloads();
            if !twice.is_empty() {
                return Err(format!(
                    "{when}: room {room:?}: the same update stored again at sequences {twice:?}"
                ));
            }
            if let Some(m) = replay
                .messages
                .iter()
                .find(|m| m.room.as_deref() != Some(room))
            {
                return Err(format!(
                    "{when}: room {room:?}: message {} has Relay-Room {:?}",
                    m.seq, m.room
                ));
            }
            for relay in &running {
                let seen = read_edits(&relay.ws_url(room), Duration::from_secs(20)).await?;
                if seen != stored {
                    return Err(format!(
                        "{when}: room {room:?}: relay {} serves {} keys, the stream holds {} (divergence)",
                        relay.name,
                        seen.len(),
                        stored.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every relay's log, for a failure message.
    pub fn logs(&self) -> String {
        self.relays
            .iter()
            .map(|r| format!("--- relay {} ---\n{}", r.name, r.log()))
            .collect()
    }
}

/// Serialises the cluster tests of one test binary: each starts 3 nats-servers and 3 relays with
/// lease timers, which two at once on a 2-core machine would starve into flaky takeovers.
pub async fn one_cluster_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
