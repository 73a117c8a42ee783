//! join-storm: a 20 MB document made of real edits, and 150 clients joining at once after a
//! restart (the room is cold): how long until each holds the document, and the server's peak
//! memory meanwhile.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use crdt::protocol::{
    Message, MessageReader, encode_save_request, encode_sync_step1, encode_update,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::StateVector;
use yrs::updates::encoder::Encode;

use super::rooms::{LARGE_READ_BUFFER, background_save_wait, join, read_room, room_names};
use super::{Ctx, Launcher, Outcome, Pcts, Size};
use crate::client::{self, EMPTY_UPDATE, full_state};
use crate::metric::Metric;
use crate::monitor::Monitor;
use crate::peers::Server;
use crate::procfs::{self, CpuWatch};
use crate::protocol::Protocol;
use crate::trace::{self, Trace};

/// Clients joining at once.
fn storm_clients(size: Size) -> usize {
    if size == Size::Full { 150 } else { 5 }
}

/// What the preset does, at `size`.
pub(super) fn describe(size: Size) -> String {
    format!(
        "{} document from real edits, {} clients joining at once after a restart",
        if size == Size::Full { "20 MB" } else { "small" },
        storm_clients(size)
    )
}

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
    let mut ws = join(server, Protocol::YWebsocket, room).await?;
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

#[derive(Debug, Default, Clone, Copy)]
struct Joiner {
    first_step2_bytes: Option<usize>,
    synced: Option<Duration>,
}

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

/// Runs the preset: uploads the document, restarts the server, and lets the storm in.
pub(super) async fn run<L: Launcher>(
    launcher: &mut L,
    ctx: &Ctx,
    data_dir: &Path,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let (chunks, size) = storm_document(ctx)?;
    let clients = storm_clients(ctx.size);
    out.set(Metric::DocMib, size as f64 / (1 << 20) as f64);
    out.set(Metric::Clients, clients as f64);
    let room = room_names("storm", 1).remove(0);
    let server = launcher.start(data_dir).await?;
    server.create_room(&room).await?;
    let t = Instant::now();
    let uploaded = upload(&server, &room, &chunks, size).await;
    out.set(Metric::UploadS, t.elapsed().as_secs_f64());
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
    out.set(Metric::GenCpuFraction, load.cpu_fraction);
    out.set(Metric::GenLagP99Ms, load.lag_p99_ms);
    out.warnings.extend(load.warnings());
    // One joiner's document, checked in full.
    let check = read_room(&server, Protocol::YWebsocket, &room).await;
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
    out.set(Metric::Synced, synced_us.len() as f64);
    out.set(Metric::FirstStep2Full, full_first as f64);
    out.set(Metric::ServerCpuS, server_cpu);
    out.set(Metric::RssBeforeMib, base_rss as f64 / 1024.0);
    out.set(Metric::RssSteadyMib, rss as f64 / 1024.0);
    out.set(Metric::RssPeakMib, hwm as f64 / 1024.0);
    if let Some(p) = Pcts::of_us(&mut synced_us) {
        out.set(Metric::SyncP50S, p.p50 / 1000.0);
        out.set(Metric::SyncMaxS, p.max / 1000.0);
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
