//! The benchmark scenarios (named presets) and how each is measured.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use crdt::protocol::{
    Message, MessageReader, encode_save_request, encode_sync_step1, encode_update,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, ReadTxn, StateVector, Transact, Update};

use crate::client::{
    self, EMPTY_UPDATE, MAP, MapWriter, Received, SendLog, Ws, doc_from_update, full_state,
};
use crate::monitor::Monitor;
use crate::peers::{ExitUsage, PeerKind, PeerPaths, Server};
use crate::procfs::{self, CpuWatch};
use crate::trace::{self, Trace};

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
    /// The automerge-paper trace through one client, one update per edit.
    LargeDoc,
}

impl Preset {
    /// Every preset, in the issue's order.
    pub const ALL: [Preset; 9] = [
        Preset::Fanout10,
        Preset::Fanout100,
        Preset::Fanout1000,
        Preset::BusyRoom,
        Preset::ManyRooms,
        Preset::Idle,
        Preset::JoinStorm,
        Preset::Durable,
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
            Preset::LargeDoc => "large-doc",
        }
    }

    /// What the preset does, at `size`.
    pub fn describe(self, size: Size) -> String {
        let full = size == Size::Full;
        match self {
            Preset::Fanout10 | Preset::Fanout100 | Preset::Fanout1000 => {
                let s = self.shape(size).expect("fan-out has a shape");
                format!(
                    "1 room, 1 writer at {} updates/s, {} observers, {} s",
                    s.rate, s.observers, s.seconds
                )
            }
            Preset::BusyRoom | Preset::ManyRooms => {
                let s = self.shape(size).expect("has a shape");
                format!(
                    "{} room(s), {} clients each at {} updates/s, {} s",
                    s.rooms, s.writers, s.rate, s.seconds
                )
            }
            Preset::Idle => format!(
                "{} connections in {} rooms, no edits",
                idle_rooms(size),
                idle_rooms(size)
            ),
            Preset::JoinStorm => format!(
                "{} document from real edits, {} clients joining at once after a restart",
                if full { "20 MB" } else { "small" },
                storm_clients(size)
            ),
            Preset::Durable => {
                let d = durable_shape(size);
                format!(
                    "{} rooms, 1 writer + 1 observer each, {} updates in flight per writer, {} s",
                    d.rooms, d.window, d.seconds
                )
            }
            Preset::LargeDoc => format!(
                "automerge-paper trace ({}), one update per edit",
                if full {
                    "259,778 edits".to_owned()
                } else {
                    format!("first {} edits", SMOKE_TRACE_EDITS)
                }
            ),
        }
    }

    fn shape(self, size: Size) -> Option<Shape> {
        let full = size == Size::Full;
        let secs = if full { 20.0 } else { 2.0 };
        let shape = match self {
            Preset::Fanout10 => Shape::new(1, 1, if full { 10 } else { 3 }, 100.0, secs),
            Preset::Fanout100 => Shape::new(1, 1, if full { 100 } else { 5 }, 100.0, secs),
            Preset::Fanout1000 => Shape::new(1, 1, if full { 1000 } else { 10 }, 100.0, secs),
            Preset::BusyRoom => Shape::new(1, if full { 50 } else { 5 }, 0, 5.0, secs),
            Preset::ManyRooms => Shape::new(if full { 1000 } else { 10 }, 4, 0, 1.0, secs),
            _ => return None,
        };
        Some(shape)
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

const SMOKE_TRACE_EDITS: usize = 5_000;

fn idle_rooms(size: Size) -> usize {
    if size == Size::Full { 10_000 } else { 50 }
}

fn storm_clients(size: Size) -> usize {
    if size == Size::Full { 150 } else { 5 }
}

/// Rooms × (writers + observers) with a rate per writer.
#[derive(Debug, Clone, Copy)]
struct Shape {
    rooms: usize,
    writers: usize,
    observers: usize,
    rate: f64,
    seconds: f64,
}

impl Shape {
    fn new(rooms: usize, writers: usize, observers: usize, rate: f64, seconds: f64) -> Self {
        Shape {
            rooms,
            writers,
            observers,
            rate,
            seconds,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct DurableShape {
    rooms: usize,
    window: usize,
    seconds: f64,
}

/// Updates in flight per durable writer: 1 (write, wait for the acknowledgement, write again)
/// unless `LOADGEN_DURABLE_WINDOW` says otherwise.
fn durable_window() -> usize {
    std::env::var("LOADGEN_DURABLE_WINDOW")
        .ok()
        .and_then(|w| w.parse().ok())
        .filter(|w| *w > 0)
        .unwrap_or(1)
}

fn durable_shape(size: Size) -> DurableShape {
    match size {
        Size::Full => DurableShape {
            rooms: 100,
            window: durable_window(),
            seconds: 15.0,
        },
        Size::Smoke => DurableShape {
            rooms: 5,
            window: durable_window(),
            seconds: 2.0,
        },
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
    /// Full or smoke.
    pub size: Size,
    /// Named figures (see the report for their meaning).
    pub metrics: BTreeMap<String, f64>,
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
}

impl Outcome {
    /// An empty outcome.
    pub fn from_parts(preset: Preset, peer: PeerKind, size: Size) -> Self {
        Outcome {
            preset,
            peer,
            size,
            metrics: BTreeMap::new(),
            latency: None,
            converged: None,
            notes: Vec::new(),
            warnings: Vec::new(),
            error: None,
        }
    }

    fn set(&mut self, key: &str, value: f64) {
        self.metrics.insert(key.to_owned(), value);
    }

    /// A named figure.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).copied()
    }

    /// A readable summary, one figure per line.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = format!("{} / {}", self.preset, self.peer);
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
    let data_dir = ctx
        .work_dir
        .join(format!("{}-{}-{tag}", preset.name(), peer.name()));
    let _ = std::fs::remove_dir_all(&data_dir);
    if !peer.has_state() && matches!(preset, Preset::JoinStorm | Preset::LargeDoc) {
        out.notes
            .push("not applicable: the server keeps no document".to_owned());
        return out;
    }
    let result = match preset {
        Preset::JoinStorm => join_storm(launcher, ctx, &data_dir, &mut out).await,
        Preset::LargeDoc => large_doc(launcher, ctx, &data_dir, &mut out).await,
        _ => match launcher.start(&data_dir).await {
            Ok(server) => {
                let result = match preset {
                    Preset::Idle => idle(&server, ctx, &mut out).await,
                    Preset::Durable => durable(&server, ctx, &mut out).await,
                    _ => {
                        let mut shape = preset.shape(ctx.size).expect("timed preset");
                        if let Some(s) = ctx.seconds {
                            shape.seconds = s;
                        }
                        rooms(&server, shape, &mut out).await
                    }
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

// ------------------------------------------------------------------------------------------------
// Connecting
// ------------------------------------------------------------------------------------------------

const HANDSHAKE_LIMIT: Duration = Duration::from_secs(60);

/// Connects to `room` and, on a server with state, completes the sync handshake with an empty
/// document.
async fn join(server: &Server, room: &str) -> anyhow::Result<Ws> {
    let url = server.ws_url(room);
    let mut last = None;
    for attempt in 0..5 {
        match client::connect(&url).await {
            Ok(mut ws) => {
                if server.kind.has_state() {
                    let empty_sv = StateVector::default().encode_v1();
                    client::sync_handshake(&mut ws, &empty_sv, &EMPTY_UPDATE, HANDSHAKE_LIMIT)
                        .await?;
                }
                return Ok(ws);
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Joins every room of `rooms` (one client each, in order), `concurrency` at a time.
async fn join_all(
    server: &Server,
    rooms: &[String],
    concurrency: usize,
) -> anyhow::Result<Vec<Ws>> {
    let results: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(rooms.iter())
        .map(|room| join(server, room))
        .buffered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn create_rooms(server: &Server, rooms: &[String]) -> anyhow::Result<()> {
    if !server.kind.creates_docs_over_http() {
        return Ok(());
    }
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(rooms.iter())
        .map(|room| server.create_room(room))
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

fn room_names(prefix: &str, n: usize) -> Vec<String> {
    let run = client::fresh_client_id() % 1_000_000;
    (0..n).map(|i| format!("{prefix}-{run}-{i}")).collect()
}

/// Reads a fresh copy of `room` (a new client, sync step 1 with an empty state vector).
async fn read_room(server: &Server, room: &str) -> anyhow::Result<Doc> {
    let mut ws = client::connect_with_buffer(&server.ws_url(room), 64 * 1024).await?;
    let empty_sv = StateVector::default().encode_v1();
    let (update, _) =
        client::sync_handshake(&mut ws, &empty_sv, &EMPTY_UPDATE, HANDSHAKE_LIMIT).await?;
    let _ = ws.close(None).await;
    doc_from_update(&update)
}

/// Checks that each room holds exactly what its writers wrote: every writer's clock, and one map
/// entry per update.
async fn check_convergence(
    server: &Server,
    rooms: &[String],
    writers: &[(usize, u64, u32)],
) -> anyhow::Result<bool> {
    let checks: Vec<anyhow::Result<bool>> = futures_util::stream::iter(rooms.iter().enumerate())
        .map(|(ri, room)| async move {
            let doc = read_room(server, room).await?;
            let txn = doc.transact();
            let sv = txn.state_vector();
            let map = txn.get_map(MAP);
            let entries = map.as_ref().map_or(0, |m| m.len(&txn));
            let mut expected = 0;
            for &(room_index, client_id, sent) in writers {
                if room_index != ri {
                    continue;
                }
                expected += sent;
                let got = sv.get(&yrs::ClientID::new(client_id));
                if got != sent {
                    if std::env::var_os("LOADGEN_DEBUG").is_some() {
                        eprintln!("room {room}: writer {client_id} has clock {got}, sent {sent}");
                    }
                    return Ok(false);
                }
            }
            if entries != expected && std::env::var_os("LOADGEN_DEBUG").is_some() {
                eprintln!("room {room}: {entries} map entries, expected {expected}");
            }
            Ok(entries == expected)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut all = true;
    for c in checks {
        all &= c?;
    }
    Ok(all)
}

// ------------------------------------------------------------------------------------------------
// Reading
// ------------------------------------------------------------------------------------------------

/// Where a reader reports acknowledgements (durable writes).
#[derive(Debug, Clone, Default)]
struct Hooks {
    /// "saved" answers (request id) go here.
    saved: Option<mpsc::UnboundedSender<(u64, Instant)>>,
    /// Deliveries of this writer's updates (its highest clock so far) go here.
    delivered_of: Option<(u64, mpsc::UnboundedSender<(u64, Instant)>)>,
}

/// Reads a client's socket until `stop`, accounting every update it receives.
async fn read_loop(
    mut stream: SplitStream<Ws>,
    own: Option<usize>,
    log: Arc<SendLog>,
    counter: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    hooks: Hooks,
) -> (Received, SplitStream<Ws>) {
    let mut got = Received::default();
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            m = stream.next() => m,
        };
        let frame = match message {
            Some(Ok(WsMessage::Binary(frame))) => frame,
            Some(Ok(_)) => continue,
            _ => break,
        };
        for item in MessageReader::new(&frame) {
            let Ok((message, _)) = item else { break };
            match message {
                Message::Update(update) | Message::SyncStep2(update) => {
                    let before = got.deliveries;
                    got.account(update, own, &log);
                    counter.fetch_add(got.deliveries - before, Ordering::Relaxed);
                    if let Some((client, tx)) = &hooks.delivered_of
                        && let Some(clock) = max_clock_of(update, *client)
                    {
                        let _ = tx.send((u64::from(clock), Instant::now()));
                    }
                }
                Message::Saved(id) => {
                    if let Some(tx) = &hooks.saved {
                        let _ = tx.send((id, Instant::now()));
                    }
                }
                _ => {}
            }
        }
    }
    (got, stream)
}

/// The highest clock of `client` that `update` inserts.
fn max_clock_of(update: &[u8], client: u64) -> Option<u32> {
    if let Some((c, clock)) = client::single_item(update) {
        return (c == client).then_some(clock);
    }
    let update = Update::decode_v1(update).ok()?;
    let insertions = update.insertions(true);
    insertions
        .iter()
        .find(|(c, _)| c.get() == client)
        .and_then(|(_, ranges)| ranges.iter().map(|r| r.end).max())
        .and_then(|end| end.checked_sub(1))
}

// ------------------------------------------------------------------------------------------------
// Fan-out, busy room, many rooms
// ------------------------------------------------------------------------------------------------

async fn write_loop(
    mut sink: SplitSink<Ws, WsMessage>,
    mut writer: MapWriter,
    log: Arc<SendLog>,
    rate: f64,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
) -> (MapWriter, SplitSink<Ws, WsMessage>) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut ticks = tokio::time::interval_at(start, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let at = ticks.tick().await;
        if at >= end {
            break;
        }
        let (update, clock) = writer.next_update();
        log.record(writer.index, clock);
        if sink
            .send(WsMessage::Binary(Bytes::from(encode_update(&update))))
            .await
            .is_err()
        {
            break;
        }
    }
    (writer, sink)
}

async fn rooms(server: &Server, shape: Shape, out: &mut Outcome) -> anyhow::Result<()> {
    let names = room_names("r", shape.rooms);
    create_rooms(server, &names).await?;
    let per_room = shape.writers + shape.observers;
    // (room index, writer index) per client, room by room.
    let mut specs = Vec::new();
    let mut client_ids = Vec::new();
    for ri in 0..shape.rooms {
        for _ in 0..shape.writers {
            specs.push((ri, Some(client_ids.len())));
            client_ids.push(client::fresh_client_id());
        }
        for _ in 0..shape.observers {
            specs.push((ri, None));
        }
    }
    let t_connect = Instant::now();
    let client_rooms: Vec<String> = specs.iter().map(|(ri, _)| names[*ri].clone()).collect();
    let conns = join_all(server, &client_rooms, 64).await?;
    out.set("connect_s", t_connect.elapsed().as_secs_f64());

    let log = Arc::new(SendLog::new(&client_ids));
    let counter = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = Monitor::start();
    let cpu = CpuWatch::start(server.pid);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(shape.seconds);
    let period = 1.0 / shape.rate;
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let mut idle_sinks = Vec::new();
    for ((ri, w), ws) in specs.iter().copied().zip(conns) {
        let (sink, stream) = ws.split();
        readers.push(tokio::spawn(read_loop(
            stream,
            w,
            log.clone(),
            counter.clone(),
            stop_rx.clone(),
            Hooks::default(),
        )));
        match w {
            Some(wi) => {
                // Spread the writers' ticks evenly over one period.
                let phase = period * (wi as f64 / client_ids.len() as f64);
                let writer = MapWriter::new(wi, client_ids[wi]);
                writers.push((
                    ri,
                    tokio::spawn(write_loop(
                        sink,
                        writer,
                        log.clone(),
                        shape.rate,
                        start + Duration::from_secs_f64(phase),
                        end,
                    )),
                ));
            }
            None => idle_sinks.push(sink),
        }
    }
    let mut done = Vec::new();
    for (ri, handle) in writers {
        let (writer, sink) = handle.await.context("writer task")?;
        done.push((ri, writer));
        idle_sinks.push(sink);
    }
    let sent = log.total_sent();
    let expected = sent * (per_room as u64 - 1);
    // Drain: wait for the deliveries still on their way.
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while counter.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (server_cpu, wall) = cpu.read();
    let (rss, hwm) = procfs::memory_kib(server.pid).unwrap_or((0, 0));
    let load = monitor.finish();
    let _ = stop_tx.send(true);
    let mut received = Received::default();
    // Keep the connections open until the rooms are checked: a server may unload a room when
    // its last client leaves.
    let mut streams = Vec::new();
    for r in readers {
        let (got, stream) = r.await.context("reader task")?;
        received.merge(got);
        streams.push(stream);
    }
    out.set("updates_sent", sent as f64);
    out.set("updates_per_s", sent as f64 / shape.seconds);
    out.set("deliveries", received.deliveries as f64);
    out.set("deliveries_expected", expected as f64);
    out.set("echoes", received.echoes as f64);
    out.set("server_cpu_s", server_cpu);
    out.set("measure_wall_s", wall);
    if received.deliveries > 0 {
        out.set(
            "cpu_s_per_1k_deliveries",
            server_cpu / received.deliveries as f64 * 1000.0,
        );
    }
    if sent > 0 {
        out.set("cpu_s_per_1k_updates", server_cpu / sent as f64 * 1000.0);
    }
    out.set("rss_steady_mib", rss as f64 / 1024.0);
    out.set("rss_peak_mib", hwm as f64 / 1024.0);
    out.set("gen_cpu_fraction", load.cpu_fraction);
    out.set("gen_lag_p99_ms", load.lag_p99_ms);
    out.warnings.extend(load.warnings());
    let target = shape.rate * (shape.writers * shape.rooms) as f64 * shape.seconds;
    if (sent as f64) < 0.95 * target {
        out.warnings.push(format!(
            "sent {sent} updates, {:.0}% of the {target:.0} planned: the generator fell behind its schedule",
            sent as f64 / target * 100.0
        ));
    }
    if received.deliveries < expected {
        out.warnings.push(format!(
            "{} of {expected} deliveries missing",
            expected - received.deliveries
        ));
    }
    if received.unknown > 0 {
        out.warnings.push(format!(
            "{} received items not in the send log",
            received.unknown
        ));
    }
    if server.kind.echoes() {
        out.notes.push(
            "the server also sends each update back to its sender (echoes, not counted as deliveries)"
                .to_owned(),
        );
    }
    out.latency = Pcts::of_us(&mut received.latencies_us);
    if server.kind.has_state() {
        let writers: Vec<(usize, u64, u32)> = done
            .iter()
            .map(|(ri, w)| (*ri, w.doc().client_id().get(), w.sent()))
            .collect();
        out.converged = Some(check_convergence(server, &names, &writers).await?);
    } else {
        out.notes
            .push("no state on the server: convergence not applicable".to_owned());
    }
    drop(idle_sinks);
    drop(streams);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Idle
// ------------------------------------------------------------------------------------------------

async fn idle(server: &Server, ctx: &Ctx, out: &mut Outcome) -> anyhow::Result<()> {
    let n = idle_rooms(ctx.size);
    let names = room_names("idle", n);
    // Settle the fresh server, then take its baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (base_rss, _) = procfs::memory_kib(server.pid)?;
    let cpu = CpuWatch::start(server.pid);
    create_rooms(server, &names).await?;
    let t = Instant::now();
    let conns = join_all(server, &names, 64).await?;
    let connect_s = t.elapsed().as_secs_f64();
    let (connect_cpu, _) = cpu.read();
    let settle = if ctx.size == Size::Full { 5.0 } else { 1.0 };
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let (rss, hwm) = procfs::memory_kib(server.pid)?;
    out.set("connections", conns.len() as f64);
    out.set("connect_s", connect_s);
    out.set("connect_cpu_s", connect_cpu);
    out.set("rss_before_mib", base_rss as f64 / 1024.0);
    out.set("rss_steady_mib", rss as f64 / 1024.0);
    out.set("rss_peak_mib", hwm as f64 / 1024.0);
    out.set(
        "kib_per_room",
        (rss.saturating_sub(base_rss)) as f64 / conns.len() as f64,
    );
    out.notes.push(format!(
        "memory per idle room with one connection = (VmRSS {settle} s after the last join - VmRSS before) / rooms"
    ));
    for mut ws in conns {
        let _ = ws.close(None).await;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Durable writes
// ------------------------------------------------------------------------------------------------

struct DurableWriterResult {
    writer: MapWriter,
    acked: u64,
    ack_us: Vec<u32>,
}

async fn durable_writer(
    mut sink: SplitSink<Ws, WsMessage>,
    mut acks: mpsc::UnboundedReceiver<(u64, Instant)>,
    mut writer: MapWriter,
    log: Arc<SendLog>,
    window: usize,
    end: Instant,
    save_requests: bool,
) -> anyhow::Result<DurableWriterResult> {
    let mut in_flight: VecDeque<(u32, Instant)> = VecDeque::new();
    let mut acked = 0u64;
    let mut ack_us = Vec::new();
    loop {
        while in_flight.len() < window && Instant::now() < end {
            let (update, clock) = writer.next_update();
            log.record(writer.index, clock);
            let sent = Instant::now();
            sink.feed(WsMessage::Binary(Bytes::from(encode_update(&update))))
                .await?;
            if save_requests {
                sink.feed(WsMessage::Binary(Bytes::from(encode_save_request(
                    u64::from(clock),
                ))))
                .await?;
            }
            in_flight.push_back((clock, sent));
        }
        sink.flush().await?;
        if in_flight.is_empty() {
            break;
        }
        let Ok(Some((id, at))) = tokio::time::timeout(Duration::from_secs(10), acks.recv()).await
        else {
            bail!(
                "no acknowledgement for 10 s ({} in flight)",
                in_flight.len()
            );
        };
        while let Some(&(clock, sent)) = in_flight.front() {
            if u64::from(clock) > id {
                break;
            }
            in_flight.pop_front();
            acked += 1;
            ack_us.push(at.duration_since(sent).as_micros().min(u32::MAX as u128) as u32);
        }
    }
    Ok(DurableWriterResult {
        writer,
        acked,
        ack_us,
    })
}

async fn durable(server: &Server, ctx: &Ctx, out: &mut Outcome) -> anyhow::Result<()> {
    let mut shape = durable_shape(ctx.size);
    if let Some(s) = ctx.seconds {
        shape.seconds = s;
    }
    let names = room_names("durable", shape.rooms);
    create_rooms(server, &names).await?;
    // Writer then observer, room by room.
    let client_rooms: Vec<String> = names.iter().flat_map(|n| [n.clone(), n.clone()]).collect();
    let conns = join_all(server, &client_rooms, 64).await?;
    let client_ids: Vec<u64> = (0..shape.rooms)
        .map(|_| client::fresh_client_id())
        .collect();
    let log = Arc::new(SendLog::new(&client_ids));
    let counter = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let save_requests = server.kind.acks_saves();
    let monitor = Monitor::start();
    let cpu = CpuWatch::start(server.pid);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(shape.seconds);
    let mut conns = conns.into_iter();
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let mut sinks = Vec::new();
    for (wi, &client_id) in client_ids.iter().enumerate() {
        let (wsink, wstream) = conns.next().expect("writer connection").split();
        let (osink, ostream) = conns.next().expect("observer connection").split();
        sinks.push(osink);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (writer_hooks, observer_hooks) = if save_requests {
            (
                Hooks {
                    saved: Some(ack_tx),
                    delivered_of: None,
                },
                Hooks::default(),
            )
        } else {
            (
                Hooks::default(),
                Hooks {
                    saved: None,
                    delivered_of: Some((client_id, ack_tx)),
                },
            )
        };
        readers.push(tokio::spawn(read_loop(
            wstream,
            Some(wi),
            log.clone(),
            counter.clone(),
            stop_rx.clone(),
            writer_hooks,
        )));
        readers.push(tokio::spawn(read_loop(
            ostream,
            None,
            log.clone(),
            counter.clone(),
            stop_rx.clone(),
            observer_hooks,
        )));
        writers.push(tokio::spawn(durable_writer(
            wsink,
            ack_rx,
            MapWriter::new(wi, client_id),
            log.clone(),
            shape.window,
            end,
            save_requests,
        )));
    }
    let mut acked = 0;
    let mut ack_us = Vec::new();
    let mut done = Vec::new();
    let mut failures = Vec::new();
    for (ri, w) in writers.into_iter().enumerate() {
        match w.await.context("writer task")? {
            Ok(r) => {
                acked += r.acked;
                ack_us.extend(r.ack_us);
                done.push((ri, r.writer.doc().client_id().get(), r.writer.sent()));
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (server_cpu, _) = cpu.read();
    let (rss, hwm) = procfs::memory_kib(server.pid).unwrap_or((0, 0));
    let load = monitor.finish();
    let _ = stop_tx.send(true);
    let mut streams = Vec::new();
    for r in readers {
        streams.push(r.await.context("reader task")?.1);
    }
    out.set("updates_sent", log.total_sent() as f64);
    out.set("acked_updates", acked as f64);
    out.set("acked_per_s", acked as f64 / elapsed);
    out.set("server_cpu_s", server_cpu);
    if acked > 0 {
        out.set("cpu_s_per_1k_updates", server_cpu / acked as f64 * 1000.0);
    }
    out.set("rss_steady_mib", rss as f64 / 1024.0);
    out.set("rss_peak_mib", hwm as f64 / 1024.0);
    out.set("gen_cpu_fraction", load.cpu_fraction);
    out.set("gen_lag_p99_ms", load.lag_p99_ms);
    out.warnings.extend(load.warnings());
    out.latency = Pcts::of_us(&mut ack_us);
    if save_requests {
        out.notes.push(
            "acknowledged = the relay's \"saved\" answer (committed and fsynced); latency = update sent to saved received"
                .to_owned(),
        );
    } else {
        out.notes.push(
            "no save acknowledgement: throughput and latency count delivery to the room's observer, not durability"
                .to_owned(),
        );
    }
    if !failures.is_empty() {
        out.warnings.push(format!(
            "{} writers failed, first: {}",
            failures.len(),
            failures[0]
        ));
    }
    if server.kind.has_state() {
        out.converged = Some(check_convergence(server, &names, &done).await?);
    }
    drop(sinks);
    drop(streams);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Join storm
// ------------------------------------------------------------------------------------------------

/// Loads (or builds and caches) the join-storm document: one update per replay of the trace.
fn storm_document(ctx: &Ctx) -> anyhow::Result<(Vec<Vec<u8>>, usize)> {
    let (target, edits) = match ctx.size {
        Size::Full => (20_000_000, None),
        Size::Smoke => (100_000, Some(20_000)),
    };
    let cache = ctx.cache_dir.join(format!("storm-{target}.bin"));
    if let Ok(bytes) = std::fs::read(&cache)
        && let Some(parsed) = parse_chunks(&bytes)
    {
        return Ok(parsed);
    }
    let trace = Trace::load(&ctx.trace_path)?;
    let t = Instant::now();
    let (chunks, size) = trace::large_document(&trace, edits, target);
    eprintln!(
        "built the join-storm document: {} replays, {size} bytes, in {:.1} s",
        chunks.len(),
        t.elapsed().as_secs_f64()
    );
    let mut bytes = (size as u64).to_le_bytes().to_vec();
    for c in &chunks {
        bytes.extend((c.len() as u64).to_le_bytes());
        bytes.extend(c);
    }
    std::fs::create_dir_all(&ctx.cache_dir)?;
    std::fs::write(&cache, bytes)?;
    Ok((chunks, size))
}

fn parse_chunks(mut bytes: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        bytes = rest;
        Some(head)
    };
    let size = u64::from_le_bytes(take(8)?.try_into().ok()?) as usize;
    let mut chunks = Vec::new();
    while let Some(len) = take(8) {
        let len = u64::from_le_bytes(len.try_into().ok()?) as usize;
        chunks.push(take(len)?.to_vec());
    }
    Some((chunks, size))
}

/// Uploads a document into `room` through one client, in `chunks`, and waits until the
/// server has it all (relay: saved; others: a sync step 1 with an empty state vector is answered
/// with the whole document, after everything sent before it).
async fn upload(
    server: &Server,
    room: &str,
    chunks: &[Vec<u8>],
    size: usize,
) -> anyhow::Result<()> {
    let mut ws = join(server, room).await?;
    for c in chunks {
        ws.feed(WsMessage::Binary(Bytes::from(encode_update(c))))
            .await?;
    }
    if server.kind.acks_saves() {
        ws.feed(WsMessage::Binary(Bytes::from(encode_save_request(1))))
            .await?;
    }
    ws.feed(WsMessage::Binary(Bytes::from(encode_sync_step1(
        &StateVector::default().encode_v1(),
    ))))
    .await?;
    ws.flush().await?;
    let mut saved = !server.kind.acks_saves();
    let mut complete = false;
    let wait = async {
        while let Some(m) = ws.next().await {
            let WsMessage::Binary(frame) = m? else {
                continue;
            };
            for item in MessageReader::new(&frame) {
                match item?.0 {
                    Message::Saved(1) => saved = true,
                    Message::SyncStep2(update) if update.len() * 10 >= size * 9 => complete = true,
                    _ => {}
                }
            }
            if saved && complete {
                return Ok(());
            }
        }
        bail!("the connection closed during the upload")
    };
    tokio::time::timeout(Duration::from_secs(300), wait)
        .await
        .context("timed out uploading the document")??;
    let _ = ws.close(None).await;
    Ok(())
}

/// How long to wait after an upload before a restart, for servers that save in the background.
fn background_save_wait(kind: PeerKind) -> Duration {
    match kind {
        // y-leveldb stores each update asynchronously.
        PeerKind::YWebsocketServer => Duration::from_secs(3),
        // y-sweet checkpoints every 10 s by default.
        PeerKind::YSweet => Duration::from_secs(13),
        _ => Duration::ZERO,
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Joiner {
    first_step2_bytes: Option<usize>,
    synced: Option<Duration>,
}

/// Read buffer of clients that receive a whole large document.
const LARGE_READ_BUFFER: usize = 256 * 1024;

async fn storm_joiner(url: String, size: usize, t0: Instant) -> anyhow::Result<Joiner> {
    let mut ws = client::connect_with_buffer(&url, LARGE_READ_BUFFER).await?;
    ws.send(WsMessage::Binary(Bytes::from(encode_sync_step1(
        &StateVector::default().encode_v1(),
    ))))
    .await?;
    let mut joiner = Joiner::default();
    let mut bytes = 0usize;
    while let Some(m) = ws.next().await {
        let WsMessage::Binary(frame) = m? else {
            continue;
        };
        let mut reply = false;
        for item in MessageReader::new(&frame) {
            match item?.0 {
                Message::SyncStep1(_) => reply = true,
                Message::SyncStep2(update) => {
                    joiner.first_step2_bytes.get_or_insert(update.len());
                    bytes += update.len();
                }
                Message::Update(update) => bytes += update.len(),
                _ => {}
            }
        }
        if reply {
            ws.send(WsMessage::Binary(Bytes::from(
                crdt::protocol::encode_sync_step2(&EMPTY_UPDATE),
            )))
            .await?;
        }
        if bytes * 10 >= size * 9 {
            joiner.synced = Some(t0.elapsed());
            break;
        }
    }
    let _ = ws.close(None).await;
    Ok(joiner)
}

async fn join_storm<L: Launcher>(
    launcher: &mut L,
    ctx: &Ctx,
    data_dir: &Path,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let (chunks, size) = storm_document(ctx)?;
    let clients = storm_clients(ctx.size);
    out.set("doc_mib", size as f64 / (1 << 20) as f64);
    out.set("clients", clients as f64);
    let room = room_names("storm", 1).remove(0);
    let server = launcher.start(data_dir).await?;
    server.create_room(&room).await?;
    let t = Instant::now();
    let uploaded = upload(&server, &room, &chunks, size).await;
    out.set("upload_s", t.elapsed().as_secs_f64());
    if let Err(e) = uploaded {
        launcher.stop(server).await;
        return Err(e.context("upload the document"));
    }
    tokio::time::sleep(background_save_wait(server.kind)).await;
    launcher.stop(server).await;
    // Cold start: the room is loaded by the storm itself.
    let server = launcher.start(data_dir).await?;
    let (base_rss, _) = procfs::memory_kib(server.pid).unwrap_or((0, 0));
    let cpu = CpuWatch::start(server.pid);
    let monitor = Monitor::start();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(storm_joiner(server.ws_url(&room), size, t0)))
        .collect();
    let mut joiners = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok(Ok(j))) => joiners.push(j),
            Ok(Ok(Err(e))) => failures.push(format!("{e:#}")),
            Ok(Err(e)) => failures.push(format!("{e}")),
            Err(_) => failures.push("not synced within 120 s".to_owned()),
        }
    }
    let (server_cpu, _) = cpu.read();
    let (rss, hwm) = procfs::memory_kib(server.pid).unwrap_or((0, 0));
    let load = monitor.finish();
    out.set("gen_cpu_fraction", load.cpu_fraction);
    out.set("gen_lag_p99_ms", load.lag_p99_ms);
    out.warnings.extend(load.warnings());
    // One joiner's document, checked in full.
    let check = read_room(&server, &room).await;
    launcher.stop(server).await;
    let mut synced_us: Vec<u32> = joiners
        .iter()
        .filter_map(|j| j.synced)
        .map(|d| d.as_micros().min(u32::MAX as u128) as u32)
        .collect();
    let full_first = joiners
        .iter()
        .filter(|j| j.first_step2_bytes.is_some_and(|b| b * 10 >= size * 9))
        .count();
    out.set("synced", synced_us.len() as f64);
    out.set("first_step2_full", full_first as f64);
    out.set("server_cpu_s", server_cpu);
    out.set("rss_before_mib", base_rss as f64 / 1024.0);
    out.set("rss_steady_mib", rss as f64 / 1024.0);
    out.set("rss_peak_mib", hwm as f64 / 1024.0);
    if let Some(p) = Pcts::of_us(&mut synced_us) {
        out.set("sync_p50_s", p.p50 / 1000.0);
        out.set("sync_max_s", p.max / 1000.0);
        out.latency = Some(p);
    }
    if full_first < clients {
        out.warnings.push(format!(
            "{} of {clients} joiners' first sync step 2 did not carry the document",
            clients - full_first
        ));
    }
    if !failures.is_empty() {
        out.warnings.push(format!(
            "{} joiners failed, first: {}",
            failures.len(),
            failures[0]
        ));
    }
    out.notes.push(
        "synced = the joiner has received (step 2 + updates) at least 90% of the document's encoded size; time from the storm's start"
            .to_owned(),
    );
    match check {
        Ok(doc) => {
            let bytes = full_state(&doc).len();
            out.converged = Some(bytes * 10 >= size * 9);
        }
        Err(e) => {
            out.converged = Some(false);
            out.warnings.push(format!("reading the room back: {e:#}"));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Large document: the editing trace
// ------------------------------------------------------------------------------------------------

/// Edits between two barriers (sync step 1 with the writer's state vector: the answer comes once
/// the server has applied everything sent before it).
const BARRIER_EVERY: usize = 1000;
/// Barriers in flight: bounds the edits the writer is ahead of the server.
const BARRIERS_IN_FLIGHT: usize = 4;

async fn ingest(
    server: &Server,
    room: &str,
    updates: &[Vec<u8>],
    svs: &[Vec<u8>],
    limit: Duration,
    out: &mut Outcome,
) -> anyhow::Result<bool> {
    let ws = join(server, room).await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut answers) = mpsc::unbounded_channel::<(bool, Instant)>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let WsMessage::Binary(frame) = m else {
                continue;
            };
            for item in MessageReader::new(&frame) {
                let Ok((message, _)) = item else { break };
                match message {
                    Message::SyncStep2(_) => {
                        let _ = tx.send((false, Instant::now()));
                    }
                    Message::Saved(_) => {
                        let _ = tx.send((true, Instant::now()));
                    }
                    _ => {}
                }
            }
        }
    });
    let t0 = Instant::now();
    let deadline = t0 + limit;
    let mut barriers_sent = 0usize;
    let mut barriers_answered = 0usize;
    let mut finished = true;
    let mut next = 0usize;
    while next < updates.len() {
        let stop = (next + BARRIER_EVERY).min(updates.len());
        for u in &updates[next..stop] {
            sink.feed(WsMessage::Binary(Bytes::from(encode_update(u))))
                .await?;
        }
        next = stop;
        sink.feed(WsMessage::Binary(Bytes::from(encode_sync_step1(
            &svs[next - 1],
        ))))
        .await?;
        sink.flush().await?;
        barriers_sent += 1;
        while barriers_sent - barriers_answered >= BARRIERS_IN_FLIGHT
            || (next == updates.len() && barriers_answered < barriers_sent)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, answers.recv()).await {
                Ok(Some((false, _))) => barriers_answered += 1,
                Ok(Some((true, _))) => {}
                _ => {
                    finished = false;
                    break;
                }
            }
        }
        if !finished {
            break;
        }
    }
    let applied = (barriers_answered * BARRIER_EVERY).min(updates.len());
    let ingest_s = t0.elapsed().as_secs_f64();
    out.set("edits_applied", applied as f64);
    out.set("ingest_s", ingest_s);
    out.set("ingest_edits_per_s", applied as f64 / ingest_s);
    if finished && server.kind.acks_saves() {
        sink.send(WsMessage::Binary(Bytes::from(encode_save_request(7))))
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(60), answers.recv()).await {
                Ok(Some((true, _))) => break,
                Ok(Some((false, _))) => {}
                _ => bail!("no saved answer for the whole trace within 60 s"),
            }
        }
        out.set("ingest_durable_s", t0.elapsed().as_secs_f64());
    }
    let _ = sink.close().await;
    reader.abort();
    Ok(finished)
}

/// Restarts the server and measures the time from the process start to the first client's
/// sync step 2 (plus updates) holding the whole document.
async fn reload<L: Launcher>(
    launcher: &mut L,
    data_dir: &Path,
    room: &str,
    expected_text: &str,
    out: &mut Outcome,
) -> anyhow::Result<(Server, f64)> {
    let server = launcher.start(data_dir).await?;
    let url = server.ws_url(room);
    let mut ws = client::connect_with_buffer(&url, LARGE_READ_BUFFER).await?;
    ws.send(WsMessage::Binary(Bytes::from(encode_sync_step1(
        &StateVector::default().encode_v1(),
    ))))
    .await?;
    let doc = Doc::new();
    let mut first_full = None;
    let wait = async {
        while let Some(m) = ws.next().await {
            let WsMessage::Binary(frame) = m? else {
                continue;
            };
            for item in MessageReader::new(&frame) {
                match item?.0 {
                    Message::SyncStep2(update) | Message::Update(update) => {
                        let first = first_full.is_none();
                        doc.transact_mut()
                            .apply_update(Update::decode_v1(update)?)?;
                        let whole = trace::text_of(&doc, "t") == expected_text;
                        if first {
                            first_full = Some(whole);
                        }
                        if whole {
                            return Ok(server.started.elapsed());
                        }
                    }
                    Message::SyncStep1(_) => {
                        ws.send(WsMessage::Binary(Bytes::from(
                            crdt::protocol::encode_sync_step2(&EMPTY_UPDATE),
                        )))
                        .await?;
                    }
                    _ => {}
                }
            }
        }
        bail!("the connection closed before the document arrived")
    };
    let took = tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .context("the document did not arrive within 120 s of the restart")??;
    let _ = ws.close(None).await;
    if first_full == Some(false) {
        out.warnings
            .push("after the restart, the first sync step 2 did not carry the document".to_owned());
    }
    Ok((server, took.as_secs_f64()))
}

async fn large_doc<L: Launcher>(
    launcher: &mut L,
    ctx: &Ctx,
    data_dir: &Path,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let trace = Trace::load(&ctx.trace_path)?;
    let limit = match ctx.size {
        Size::Full => None,
        Size::Smoke => Some(SMOKE_TRACE_EDITS),
    };
    // All updates first, so that making them costs nothing during the measurement. The state
    // vector after each barrier's last edit goes into that barrier.
    let doc = Doc::with_client_id(client::fresh_client_id());
    let mut updates = Vec::new();
    let mut svs = Vec::new();
    let mut n = 0usize;
    {
        let text = doc.get_or_insert_text("t");
        for (pos, deleted, inserted) in trace.patches(limit) {
            use yrs::Text;
            let mut txn = doc.transact_mut();
            if *deleted > 0 {
                text.remove_range(&mut txn, *pos as u32, *deleted as u32);
            }
            if !inserted.is_empty() {
                text.insert(&mut txn, *pos as u32, inserted);
            }
            updates.push(txn.encode_update_v1());
            n += 1;
            drop(txn);
            svs.push(if n.is_multiple_of(BARRIER_EVERY) || Some(n) == limit {
                doc.transact().state_vector().encode_v1()
            } else {
                Vec::new()
            });
        }
    }
    // The last update's barrier needs its state vector whatever the count.
    if let Some(last) = svs.last_mut() {
        *last = doc.transact().state_vector().encode_v1();
    }
    let expected_text = trace::text_of(&doc, "t");
    if limit.is_none() && expected_text != trace.end_content {
        bail!("the replayed trace does not give its end content");
    }
    let doc_bytes = full_state(&doc).len();
    let update_bytes: usize = updates.iter().map(Vec::len).sum();
    out.set("edits", updates.len() as f64);
    out.set("doc_bytes", doc_bytes as f64);
    out.set("update_bytes", update_bytes as f64);

    let room = room_names("trace", 1).remove(0);
    let server = launcher.start(data_dir).await?;
    server.create_room(&room).await?;
    let cpu = CpuWatch::start(server.pid);
    let limit = Duration::from_secs(if ctx.size == Size::Full { 180 } else { 60 });
    let finished = match ingest(&server, &room, &updates, &svs, limit, out).await {
        Ok(f) => f,
        Err(e) => {
            launcher.stop(server).await;
            return Err(e);
        }
    };
    let (ingest_cpu, _) = cpu.read();
    out.set("ingest_cpu_s", ingest_cpu);
    let (_, hwm) = procfs::memory_kib(server.pid).unwrap_or((0, 0));
    out.set("rss_peak_mib", hwm as f64 / 1024.0);
    if !finished {
        launcher.stop(server).await;
        out.warnings.push(format!(
            "ingest did not finish within {} s",
            limit.as_secs()
        ));
        return Ok(());
    }
    tokio::time::sleep(background_save_wait(server.kind)).await;
    let mut written = launcher.stop(server).await.written_bytes;
    let mut store_note = "store after the run";
    if let Some(usage) = launcher.compact(data_dir).await? {
        written += usage.written_bytes;
        store_note = "store after `relay compact`";
    }
    let store_after_ingest = procfs::dir_size(data_dir);
    let (server, reload_s) = reload(launcher, data_dir, &room, &expected_text, out).await?;
    out.set("reload_ms", reload_s * 1000.0);
    out.converged = Some(true);
    // Servers that compact on load (y-leveldb) write now; give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    written += launcher.stop(server).await.written_bytes;
    let store_final = procfs::dir_size(data_dir);
    out.set("store_bytes_after_ingest", store_after_ingest as f64);
    out.set("store_bytes", store_final as f64);
    out.set("store_per_doc", store_final as f64 / doc_bytes as f64);
    out.set("written_bytes", written as f64);
    out.set(
        "written_per_update_byte",
        written as f64 / update_bytes as f64,
    );
    out.notes.push(format!(
        "{store_note}; store_bytes measured after the reload (y-leveldb merges on load); written = bytes the server processes wrote to storage over the ingest, compaction and reload (wait4 ru_oublock)"
    ));
    Ok(())
}

/// Mutable access to a map entry count of a document, for tests.
pub fn map_len(doc: &Doc) -> u32 {
    let txn = doc.transact();
    txn.get_map(MAP).map_or(0, |m| m.len(&txn))
}
