//! large-doc: the automerge-paper editing trace through one client, one update per edit: ingest
//! rate, bytes stored and written per byte of updates, and the reload time after a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use crdt::protocol::{
    Message, MessageReader, encode_save_request, encode_sync_step1, encode_update,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use super::rooms::{LARGE_READ_BUFFER, background_save_wait, join, room_names};
use super::{Ctx, Launcher, Outcome, Size};
use crate::client::{self, EMPTY_UPDATE, full_state};
use crate::metric::Metric;
use crate::peers::Server;
use crate::procfs::{self, CpuWatch};
use crate::protocol::Protocol;
use crate::trace::{self, Trace};

/// The edits of a smoke run.
const SMOKE_TRACE_EDITS: usize = 5_000;

/// What the preset does, at `size`.
pub(super) fn describe(size: Size) -> String {
    format!(
        "automerge-paper trace ({}), one update per edit",
        if size == Size::Full {
            "259,778 edits".to_owned()
        } else {
            format!("first {} edits", SMOKE_TRACE_EDITS)
        }
    )
}

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
    let ws = join(server, Protocol::YWebsocket, room).await?;
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
    out.set(Metric::EditsApplied, applied as f64);
    out.set(Metric::IngestS, ingest_s);
    out.set(Metric::IngestEditsPerS, applied as f64 / ingest_s);
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
        out.set(Metric::IngestDurableS, t0.elapsed().as_secs_f64());
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

/// Runs the preset: builds the updates, ingests them, compacts, restarts and reloads.
pub(super) async fn run<L: Launcher>(
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
    out.set(Metric::Edits, updates.len() as f64);
    out.set(Metric::DocBytes, doc_bytes as f64);
    out.set(Metric::UpdateBytes, update_bytes as f64);

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
    out.set(Metric::IngestCpuS, ingest_cpu);
    let (_, hwm) = procfs::memory_kib(server.pid).unwrap_or((0, 0));
    out.set(Metric::RssPeakMib, hwm as f64 / 1024.0);
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
    out.set(Metric::ReloadMs, reload_s * 1000.0);
    out.converged = Some(true);
    // Servers that compact on load (y-leveldb) write now; give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    written += launcher.stop(server).await.written_bytes;
    let store_final = procfs::dir_size(data_dir);
    out.set(Metric::StoreBytesAfterIngest, store_after_ingest as f64);
    out.set(Metric::StoreBytes, store_final as f64);
    out.set(Metric::StorePerDoc, store_final as f64 / doc_bytes as f64);
    out.set(Metric::WrittenBytes, written as f64);
    out.set(
        Metric::WrittenPerUpdateByte,
        written as f64 / update_bytes as f64,
    );
    out.notes.push(format!(
        "{store_note}; store_bytes measured after the reload (y-leveldb merges on load); written = bytes the server processes wrote to storage over the ingest, compaction and reload (wait4 ru_oublock)"
    ));
    Ok(())
}
