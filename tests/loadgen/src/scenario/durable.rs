//! durable (100 rooms) and durable-1000 (1,000 rooms): each room with one writer and one observer; a writer sends an update, waits for
//! its acknowledgement (the relay's *saved*: committed and fsynced; for peers without it,
//! delivery to the observer) and sends the next: acknowledged updates per second and the time to
//! each acknowledgement.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use crdt::protocol::{encode_save_request, encode_update};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::read::{Hooks, read_loop};
use super::rooms::{check_convergence, create_rooms, join_all, room_names};
use super::{Ctx, Outcome, Pcts, Preset, ServerCpu, Size};
use crate::client::{self, MapWriter, SendLog, Ws};
use crate::metric::Metric;
use crate::monitor::Monitor;
use crate::peers::Server;
use crate::protocol::{Framing, Protocol};

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

fn durable_shape(preset: Preset, size: Size) -> DurableShape {
    match size {
        Size::Full => DurableShape {
            rooms: if preset == Preset::Durable1000 {
                1000
            } else {
                100
            },
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
/// What the preset does, at `size`.
pub(super) fn describe(preset: Preset, size: Size) -> String {
    let d = durable_shape(preset, size);
    format!(
        "{} rooms, 1 writer + 1 observer each, {} updates in flight per writer, {} s",
        d.rooms, d.window, d.seconds
    )
}

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

/// Runs the preset against `server`.
pub(super) async fn run(
    preset: Preset,
    server: &Server,
    ctx: &Ctx,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let mut shape = durable_shape(preset, ctx.size);
    if let Some(s) = ctx.seconds {
        shape.seconds = s;
    }
    let names = room_names("durable", shape.rooms);
    create_rooms(server, &names).await?;
    // Writer then observer, room by room.
    let client_rooms: Vec<String> = names.iter().flat_map(|n| [n.clone(), n.clone()]).collect();
    let conns = join_all(server, Protocol::YWebsocket, &client_rooms, 64).await?;
    let client_ids: Vec<u64> = (0..shape.rooms)
        .map(|_| client::fresh_client_id())
        .collect();
    let log = Arc::new(SendLog::new(&client_ids));
    let counter = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let save_requests = server.kind.acks_saves();
    let monitor = Monitor::start();
    let cpu = ServerCpu::start(server);
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
                    ..Hooks::default()
                },
                Hooks::default(),
            )
        } else {
            (
                Hooks::default(),
                Hooks {
                    delivered_of: Some((client_id, ack_tx)),
                    ..Hooks::default()
                },
            )
        };
        readers.push(tokio::spawn(read_loop(
            wstream,
            Framing::Plain,
            Some(wi),
            log.clone(),
            counter.clone(),
            stop_rx.clone(),
            writer_hooks,
        )));
        readers.push(tokio::spawn(read_loop(
            ostream,
            Framing::Plain,
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
    let (server_cpu, _, nats_cpu) = cpu.read();
    let (rss, hwm) = cpu.memory_kib();
    let load = monitor.finish();
    let _ = stop_tx.send(true);
    let mut streams = Vec::new();
    for r in readers {
        streams.push(r.await.context("reader task")?.1);
    }
    out.set(Metric::UpdatesSent, log.total_sent() as f64);
    out.set(Metric::AckedUpdates, acked as f64);
    out.set(Metric::AckedPerS, acked as f64 / elapsed);
    out.set(Metric::ServerCpuS, server_cpu);
    cpu.record_nats(out, nats_cpu, acked, Metric::NatsCpuSPer1kUpdates);
    if acked > 0 {
        out.set(Metric::CpuSPer1kUpdates, server_cpu / acked as f64 * 1000.0);
    }
    out.set(Metric::RssSteadyMib, rss as f64 / 1024.0);
    out.set(Metric::RssPeakMib, hwm as f64 / 1024.0);
    out.set(Metric::GenCpuFraction, load.cpu_fraction);
    out.set(Metric::GenLagP99Ms, load.lag_p99_ms);
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
        out.converged = Some(check_convergence(server, Protocol::YWebsocket, &names, &done).await?);
    }
    drop(sinks);
    drop(streams);
    Ok(())
}
