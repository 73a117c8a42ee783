//! The benchmark scenarios (named presets) and how each is measured.
//!
//! One module per preset says what it does and what it measures: `fanout` (fanout-10, -100 and
//! -1000), `busy_room` and `many_rooms` (these three share the timed run of `timed`), `idle`,
//! `join_storm`, `durable` and `large_doc`. `rooms` and `read` hold what several of them share:
//! joining rooms and reading them back, and the receive loop that accounts every delivery. Every
//! figure a preset records is a [`Metric`]; [`run`] runs one preset against one server.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::metric::Metric;
use crate::peers::{ExitUsage, PeerKind, PeerPaths, Server};
use crate::procfs::{self, GroupCpuWatch};
use crate::protocol::Protocol;

mod busy_room;
mod durable;
mod fanout;
mod idle;
mod join_storm;
mod large_doc;
mod many_rooms;
mod read;
mod rooms;
mod timed;

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Size {
    /// The counts of the issue.
    Full,
    /// A few seconds, small counts: keeps the benchmark from rotting.
    Smoke,
}

/// A named scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Preset {
    /// One room, one writer at 100 updates/s, 10 observers.
    Fanout10,
    /// One room, one writer at 100 updates/s, 100 observers.
    Fanout100,
    /// One room, one writer at 100 updates/s, 1,000 observers.
    Fanout1000,
    /// One room, 50 clients each editing 5 times a second.
    BusyRoom,
    /// 1,000 rooms, 4 clients each, 1 update/s per client.
    ManyRooms,
    /// 10,000 connections in 10,000 rooms, no edits.
    Idle,
    /// A 20 MB document, 150 clients joining at once (after a restart: the room is cold).
    JoinStorm,
    /// 100 rooms writing as fast as saves are acknowledged.
    Durable,
    /// The same with 1,000 rooms.
    Durable1000,
    /// The automerge-paper trace through one client, one update per edit.
    LargeDoc,
}

impl Preset {
    /// Every preset, in the order.
    pub const ALL: [Preset; 10] = [
        Preset::Fanout10,
        Preset::Fanout100,
        Preset::Fanout1000,
        Preset::BusyRoom,
        Preset::ManyRooms,
        Preset::Idle,
        Preset::JoinStorm,
        Preset::Durable,
        Preset::Durable1000,
        Preset::LargeDoc,
    ];

    /// The name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Fanout10 => "fanout-10",
            Preset::Fanout100 => "fanout-100",
            Preset::Fanout1000 => "fanout-1000",
            Preset::BusyRoom => "busy-room",
            Preset::ManyRooms => "many-rooms",
            Preset::Idle => "idle",
            Preset::JoinStorm => "join-storm",
            Preset::Durable => "durable",
            Preset::Durable1000 => "durable-1000",
            Preset::LargeDoc => "large-doc",
        }
    }

    /// Whether its clients can speak `protocol`: y-websocket everywhere; Hocuspocus in the timed
    /// presets (fan-out, busy-room, many-rooms), whose clients only write and read updates. The
    /// others use the relay's save extension or their own handshakes.
    pub fn supports(self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::YWebsocket => true,
            Protocol::Hocuspocus => matches!(
                self,
                Preset::Fanout10
                    | Preset::Fanout100
                    | Preset::Fanout1000
                    | Preset::BusyRoom
                    | Preset::ManyRooms
            ),
        }
    }

    /// What the preset does, at `size` (the heading of its table).
    pub fn describe(self, size: Size) -> String {
        match self {
            Preset::Fanout10 | Preset::Fanout100 | Preset::Fanout1000 => {
                fanout::describe(self, size)
            }
            Preset::BusyRoom => busy_room::describe(size),
            Preset::ManyRooms => many_rooms::describe(size),
            Preset::Idle => idle::describe(size),
            Preset::JoinStorm => join_storm::describe(size),
            Preset::Durable | Preset::Durable1000 => durable::describe(self, size),
            Preset::LargeDoc => large_doc::describe(size),
        }
    }
}

impl Serialize for Preset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Preset::ALL.iter().map(|p| p.name()).collect();
                format!("unknown scenario {s:?}; one of: {}", names.join(", "))
            })
    }
}

/// Everything a scenario run needs besides the server.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Full or smoke counts.
    pub size: Size,
    /// Where data directories go (one per run).
    pub work_dir: PathBuf,
    /// The editing trace (`automerge-paper.json.gz`).
    pub trace_path: PathBuf,
    /// Where built documents are cached between runs.
    pub cache_dir: PathBuf,
    /// Overrides the measurement time of the timed scenarios.
    pub seconds: Option<f64>,
    /// The clients' protocol.
    pub protocol: Protocol,
}

/// The CPU time of the server under test: its one process, or every relay of a cluster, and the
/// cluster's nats-servers apart.
pub(super) struct ServerCpu {
    relays: GroupCpuWatch,
    nats: GroupCpuWatch,
    relay_pids: Vec<u32>,
    nats_pids: Vec<u32>,
}

impl ServerCpu {
    pub(super) fn start(server: &Server) -> Self {
        let relay_pids = server.relay_pids();
        let nats_pids = server.nats_pids();
        ServerCpu {
            relays: GroupCpuWatch::start(&relay_pids),
            nats: GroupCpuWatch::start(&nats_pids),
            relay_pids,
            nats_pids,
        }
    }

    /// (server CPU seconds, wall seconds, the nats-servers' CPU seconds) since the start; in
    /// cluster mode the server is every relay, and the nats-servers are read at the same moment.
    pub(super) fn read(&self) -> (f64, f64, Option<f64>) {
        let (cpu, wall) = self.relays.read();
        let nats = (!self.nats.is_empty()).then(|| self.nats.read().0);
        (cpu, wall, nats)
    }

    /// (VmRSS, VmHWM) of the server, summed over a cluster's relays, KiB.
    pub(super) fn memory_kib(&self) -> (u64, u64) {
        procfs::memory_kib_sum(&self.relay_pids)
    }

    /// In cluster mode, records the nats-servers' CPU (in total and per `per` deliveries or
    /// updates, as `per_metric`) and their memory.
    pub(super) fn record_nats(
        &self,
        out: &mut Outcome,
        nats_cpu: Option<f64>,
        per: u64,
        per_metric: Metric,
    ) {
        let Some(cpu) = nats_cpu else {
            return;
        };
        out.set(Metric::NatsCpuS, cpu);
        if per > 0 {
            out.set(per_metric, cpu / per as f64 * 1000.0);
        }
        let (rss, _) = procfs::memory_kib_sum(&self.nats_pids);
        out.set(Metric::NatsRssMib, rss as f64 / 1024.0);
    }
}

/// Starts and stops one kind of server.
pub trait Launcher {
    /// Which server.
    fn kind(&self) -> PeerKind;
    /// Starts it on `data_dir` (kept across a restart) and waits until it listens.
    fn start(&mut self, data_dir: &Path) -> impl Future<Output = anyhow::Result<Server>>;
    /// Stops it (gracefully, then by force) and says what it used.
    fn stop(&mut self, server: Server) -> impl Future<Output = ExitUsage>;
    /// Compacts the stopped server's store offline, where the server has a command for it.
    fn compact(
        &mut self,
        data_dir: &Path,
    ) -> impl Future<Output = anyhow::Result<Option<ExitUsage>>>;
}

/// Launches servers as child processes pinned to their core.
#[derive(Debug, Clone)]
pub struct ProcessLauncher {
    /// Which server.
    pub kind: PeerKind,
    /// Where the programs are.
    pub paths: PeerPaths,
}

impl Launcher for ProcessLauncher {
    fn kind(&self) -> PeerKind {
        self.kind
    }

    async fn start(&mut self, data_dir: &Path) -> anyhow::Result<Server> {
        Server::start(self.kind, &self.paths, data_dir).await
    }

    async fn stop(&mut self, server: Server) -> ExitUsage {
        server.stop(Duration::from_secs(60)).await
    }

    async fn compact(&mut self, data_dir: &Path) -> anyhow::Result<Option<ExitUsage>> {
        if self.kind != PeerKind::Relay {
            return Ok(None);
        }
        let mut cmd = std::process::Command::new(&self.paths.relay);
        cmd.arg("compact")
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(std::process::Stdio::null());
        crate::peers::run_to_end(cmd).await.map(Some)
    }
}

/// Percentiles of a distribution, in ms.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Pcts {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
    /// How many samples.
    pub count: usize,
}

impl Pcts {
    /// Nearest-rank percentiles of samples in µs (sorts them).
    pub fn of_us(samples: &mut [u32]) -> Option<Pcts> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let pick = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            f64::from(samples[i]) / 1000.0
        };
        Some(Pcts {
            p50: pick(0.5),
            p95: pick(0.95),
            p99: pick(0.99),
            max: pick(1.0),
            count: samples.len(),
        })
    }
}

/// The result of one run of one preset against one server.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Which preset.
    pub preset: Preset,
    /// Which server.
    pub peer: PeerKind,
    /// The clients' protocol.
    pub protocol: Protocol,
    /// Full or smoke.
    pub size: Size,
    /// The figures measured.
    pub metrics: BTreeMap<Metric, f64>,
    /// Edit-to-delivery (or edit-to-acknowledgement) percentiles.
    pub latency: Option<Pcts>,
    /// Whether every room converged (`None`: not checked, e.g. the bare forwarder).
    pub converged: Option<bool>,
    /// Remarks on how the figures were obtained.
    pub notes: Vec<String>,
    /// Warnings: generator saturation, missed deliveries.
    pub warnings: Vec<String>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// How the server ran, when not as one process (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

impl Outcome {
    /// An empty outcome (of y-websocket clients; set [`Outcome::protocol`] for others).
    pub fn from_parts(preset: Preset, peer: PeerKind, size: Size) -> Self {
        Outcome {
            preset,
            peer,
            protocol: Protocol::YWebsocket,
            size,
            metrics: BTreeMap::new(),
            latency: None,
            converged: None,
            notes: Vec::new(),
            warnings: Vec::new(),
            error: None,
            layout: None,
        }
    }

    fn set(&mut self, metric: Metric, value: f64) {
        self.metrics.insert(metric, value);
    }

    /// A figure, if this run measured it.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.metrics.get(&metric).copied()
    }

    /// A readable summary, one figure per line.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "{} / {} ({} clients)",
            self.preset, self.peer, self.protocol
        );
        if let Some(layout) = &self.layout {
            let _ = write!(s, " ({layout})");
        }
        if let Some(e) = &self.error {
            let _ = write!(s, "\n  FAILED: {e}");
        }
        for (k, v) in &self.metrics {
            let _ = write!(s, "\n  {k:<28} {v:.4}");
        }
        if let Some(l) = &self.latency {
            let _ = write!(
                s,
                "\n  latency ms                   median {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  (n={})",
                l.p50, l.p95, l.p99, l.max, l.count
            );
        }
        if let Some(c) = self.converged {
            let _ = write!(s, "\n  converged                    {c}");
        }
        for n in &self.notes {
            let _ = write!(s, "\n  note: {n}");
        }
        for w in &self.warnings {
            let _ = write!(s, "\n  WARNING: {w}");
        }
        s
    }
}

/// Runs `preset` once against the server `launcher` starts, in a fresh data directory.
pub async fn run<L: Launcher>(preset: Preset, launcher: &mut L, ctx: &Ctx, tag: &str) -> Outcome {
    let peer = launcher.kind();
    let mut out = Outcome::from_parts(preset, peer, ctx.size);
    out.protocol = ctx.protocol;
    let data_dir = ctx
        .work_dir
        .join(format!("{}-{}-{tag}", preset.name(), peer.name()));
    let _ = std::fs::remove_dir_all(&data_dir);
    if !peer.speaks(ctx.protocol) || !preset.supports(ctx.protocol) {
        out.error = Some(format!(
            "{preset} against {peer} cannot run with {} clients",
            ctx.protocol
        ));
        return out;
    }
    if !peer.has_state() && matches!(preset, Preset::JoinStorm | Preset::LargeDoc) {
        out.notes
            .push("not applicable: the server keeps no document".to_owned());
        return out;
    }
    let result = match preset {
        // These two stop and start the server themselves.
        Preset::JoinStorm => join_storm::run(launcher, ctx, &data_dir, &mut out).await,
        Preset::LargeDoc => large_doc::run(launcher, ctx, &data_dir, &mut out).await,
        _ => match launcher.start(&data_dir).await {
            Ok(server) => {
                let result = match preset {
                    Preset::Fanout10 | Preset::Fanout100 | Preset::Fanout1000 => {
                        timed::run(&server, fanout::shape(preset, ctx.size), ctx, &mut out).await
                    }
                    Preset::BusyRoom => {
                        timed::run(&server, busy_room::shape(ctx.size), ctx, &mut out).await
                    }
                    Preset::ManyRooms => {
                        timed::run(&server, many_rooms::shape(ctx.size), ctx, &mut out).await
                    }
                    Preset::Idle => idle::run(&server, ctx, &mut out).await,
                    Preset::Durable | Preset::Durable1000 => {
                        durable::run(preset, &server, ctx, &mut out).await
                    }
                    Preset::JoinStorm | Preset::LargeDoc => unreachable!("matched above"),
                };
                launcher.stop(server).await;
                result
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        out.error = Some(format!("{e:#}"));
    }
    out
}
