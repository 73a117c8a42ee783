//! The timed run shared by fan-out, busy-room and many-rooms: rooms of writers (each at a fixed
//! rate, their ticks spread over one period) and observers, for a fixed time; then every
//! delivery is awaited, every latency recorded, and each room read back. Clients speak the
//! context's protocol: with Hocuspocus, every SyncStatus is awaited too and its latency recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use crdt::protocol::encode_update;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::read::{Hooks, read_loop};
use super::rooms::{check_convergence, create_rooms, join_all, room_names};
use super::{Ctx, Outcome, Pcts, ServerCpu, Size};
use crate::client::{self, MapWriter, Received, SendLog, Ws};
use crate::metric::Metric;
use crate::monitor::Monitor;
use crate::peers::Server;
use crate::protocol::{Framing, Protocol};

/// Rooms × (writers + observers) with a rate per writer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    /// Rooms.
    pub(super) rooms: usize,
    /// Writers per room (each also observes the others).
    pub(super) writers: usize,
    /// Clients per room that only read.
    pub(super) observers: usize,
    /// Updates per second per writer.
    pub(super) rate: f64,
    /// How long the writers write.
    pub(super) seconds: f64,
}

impl Shape {
    pub(super) fn new(
        rooms: usize,
        writers: usize,
        observers: usize,
        rate: f64,
        seconds: f64,
    ) -> Self {
        Shape {
            rooms,
            writers,
            observers,
            rate,
            seconds,
        }
    }

    /// "N room(s), W clients each at R updates/s, S s".
    pub(super) fn describe_rooms(&self) -> String {
        format!(
            "{} room(s), {} clients each at {} updates/s, {} s",
            self.rooms, self.writers, self.rate, self.seconds
        )
    }
}

/// How long a timed preset measures, at `size`.
pub(super) fn seconds(size: Size) -> f64 {
    if size == Size::Full { 20.0 } else { 2.0 }
}

async fn write_loop(
    mut sink: SplitSink<Ws, WsMessage>,
    framing: Framing,
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
            .send(WsMessage::Binary(Bytes::from(
                framing.wrap(encode_update(&update)),
            )))
            .await
            .is_err()
        {
            break;
        }
    }
    (writer, sink)
}

/// Runs `shape` against `server` (for [`Ctx::seconds`] if set, else the shape's time).
pub(super) async fn run(
    server: &Server,
    mut shape: Shape,
    ctx: &Ctx,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    if let Some(s) = ctx.seconds {
        shape.seconds = s;
    }
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
    let conns = join_all(server, ctx.protocol, &client_rooms, 64).await?;
    out.set(Metric::ConnectS, t_connect.elapsed().as_secs_f64());

    let log = Arc::new(SendLog::new(&client_ids));
    let counter = Arc::new(AtomicU64::new(0));
    let sync_statuses = Arc::new(AtomicU64::new(0));
    let acks_expected = ctx.protocol == Protocol::Hocuspocus;
    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = Monitor::start();
    let cpu = ServerCpu::start(server);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(shape.seconds);
    let period = 1.0 / shape.rate;
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let mut idle_sinks = Vec::new();
    for ((ri, w), ws) in specs.iter().copied().zip(conns) {
        let (sink, stream) = ws.split();
        let framing = Framing::new(ctx.protocol, &names[ri]);
        readers.push(tokio::spawn(read_loop(
            stream,
            framing.clone(),
            w,
            log.clone(),
            counter.clone(),
            stop_rx.clone(),
            Hooks {
                sync_statuses: Some(sync_statuses.clone()),
                ..Hooks::default()
            },
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
                        framing,
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
    // Drain: wait for the deliveries (and acknowledgements) still on their way.
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    let drained = || {
        counter.load(Ordering::Relaxed) >= expected
            && (!acks_expected || sync_statuses.load(Ordering::Relaxed) >= sent)
    };
    while !drained() && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (server_cpu, wall, nats_cpu) = cpu.read();
    let (rss, hwm) = cpu.memory_kib();
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
    out.set(Metric::UpdatesSent, sent as f64);
    out.set(Metric::UpdatesPerS, sent as f64 / shape.seconds);
    out.set(Metric::Deliveries, received.deliveries as f64);
    out.set(Metric::DeliveriesExpected, expected as f64);
    out.set(Metric::Echoes, received.echoes as f64);
    out.set(Metric::ServerCpuS, server_cpu);
    cpu.record_nats(
        out,
        nats_cpu,
        received.deliveries,
        Metric::NatsCpuSPer1kDeliveries,
    );
    out.set(Metric::MeasureWallS, wall);
    if received.deliveries > 0 {
        out.set(
            Metric::CpuSPer1kDeliveries,
            server_cpu / received.deliveries as f64 * 1000.0,
        );
    }
    if sent > 0 {
        out.set(Metric::CpuSPer1kUpdates, server_cpu / sent as f64 * 1000.0);
    }
    out.set(Metric::RssSteadyMib, rss as f64 / 1024.0);
    out.set(Metric::RssPeakMib, hwm as f64 / 1024.0);
    out.set(Metric::GenCpuFraction, load.cpu_fraction);
    out.set(Metric::GenLagP99Ms, load.lag_p99_ms);
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
    if acks_expected {
        out.notes.push(format!(
            "clients speak {}; ack = the server's SyncStatus for each update",
            ctx.protocol
        ));
        out.set(Metric::AckedUpdates, received.acks as f64);
        if let Some(acks) = Pcts::of_us(&mut received.ack_latencies_us) {
            out.set(Metric::AckP50Ms, acks.p50);
            out.set(Metric::AckP95Ms, acks.p95);
            out.set(Metric::AckP99Ms, acks.p99);
        }
        if received.acks + received.refusals < sent {
            out.warnings.push(format!(
                "{} of {sent} SyncStatus answers missing",
                sent - received.acks - received.refusals
            ));
        }
        if received.refusals > 0 {
            out.warnings.push(format!(
                "{} updates refused (SyncStatus 0)",
                received.refusals
            ));
        }
    }
    if server.kind.has_state() {
        let writers: Vec<(usize, u64, u32)> = done
            .iter()
            .map(|(ri, w)| (*ri, w.doc().client_id().get(), w.sent()))
            .collect();
        out.converged = Some(check_convergence(server, ctx.protocol, &names, &writers).await?);
    } else {
        out.notes
            .push("no state on the server: convergence not applicable".to_owned());
    }
    drop(idle_sinks);
    drop(streams);
    Ok(())
}
