//! nats-server memory per room: rooms that each got one acknowledged update, then each
//! server's resident memory and what JetStream holds (messages and subjects of the room streams,
//! entries of the lease bucket).
//!
//! Each room gets one short-lived client on relay `i % 3`: it joins, sends one update and its save
//! request, waits for *saved* and leaves. `checkpoints` are cumulative room counts (e.g. 10,000
//! then 30,000): the figures are taken at each, on the same cluster.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crdt::protocol::{Message, MessageReader, encode_save_request, encode_update};
use futures_util::StreamExt;
use yrs::StateVector;
use yrs::updates::encoder::Encode;

use super::{Cluster, load_average};
use crate::client::{self, EMPTY_UPDATE, MapWriter};
use crate::peers::PeerPaths;
use crate::procfs;
use crate::protocol::Framing;

/// Rooms being written at once.
const CONCURRENCY: usize = 64;

/// The figures at one checkpoint.
#[derive(Debug, Clone)]
pub struct MemoryPoint {
    /// Rooms written so far.
    pub rooms: usize,
    /// Each nats-server's VmRSS, MiB.
    pub rss_mib: Vec<f64>,
    /// Each nats-server's VmRSS before any room, MiB.
    pub rss_before_mib: Vec<f64>,
    /// Messages in the room streams (`YROOMS_*`), as the first server's `/jsz` reports them.
    pub room_messages: u64,
    /// Subjects in the room streams.
    pub room_subjects: u64,
    /// Messages (entries and markers) in the lease bucket's stream.
    pub lease_messages: u64,
    /// Rooms written per second to reach this checkpoint from the previous one.
    pub rooms_per_s: f64,
}

/// Writes rooms up to each checkpoint and measures.
///
/// # Errors
/// When the cluster does not start or a room is not acknowledged within a minute.
pub async fn run(
    paths: &PeerPaths,
    dir: &std::path::Path,
    checkpoints: &[usize],
) -> anyhow::Result<Vec<MemoryPoint>> {
    let cluster = Cluster::start(paths, dir, 3, None).await?;
    let pids = cluster.nats_pids();
    let monitor = cluster.nats.nodes[0].monitor;
    let rss_of = |pids: &[u32]| -> Vec<f64> {
        pids.iter()
            .map(|&p| procfs::memory_kib(p).map_or(0.0, |(rss, _)| rss as f64 / 1024.0))
            .collect()
    };
    let rss_before_mib = rss_of(&pids);
    let addrs: Vec<SocketAddr> = cluster.relays.iter().map(|r| r.addr).collect();
    let tag = client::fresh_client_id() % 1_000_000;
    let mut done = 0;
    let mut points = Vec::new();
    for &target in checkpoints {
        eprintln!(
            "nats-memory: rooms {done}..{target}, load {}",
            load_average()
        );
        let t0 = Instant::now();
        let mut last_print = Instant::now();
        let mut results = futures_util::stream::iter(done..target)
            .map(|i| {
                let url = format!("ws://{}/mem-{tag}-{i}", addrs[i % addrs.len()]);
                async move { one_room(&url).await.with_context(|| url.clone()) }
            })
            .buffer_unordered(CONCURRENCY);
        let mut n = done;
        while let Some(r) = results.next().await {
            r?;
            n += 1;
            if last_print.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "  {n} rooms, {:.0} rooms/s",
                    (n - done) as f64 / t0.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
        }
        let rooms_per_s = (target - done) as f64 / t0.elapsed().as_secs_f64();
        done = target;
        // The first server's replicas may trail the acknowledgements by a moment.
        let settle = Instant::now() + Duration::from_secs(10);
        let (room_messages, room_subjects, lease_messages) = loop {
            let counts = jsz_counts(monitor).await?;
            if counts.0 >= target as u64 || Instant::now() > settle {
                break counts;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let point = MemoryPoint {
            rooms: target,
            rss_mib: rss_of(&pids),
            rss_before_mib: rss_before_mib.clone(),
            room_messages,
            room_subjects,
            lease_messages,
            rooms_per_s,
        };
        eprintln!("  {point:?}, load {}", load_average());
        points.push(point);
    }
    cluster.stop();
    Ok(points)
}

/// One room: join, one update, *saved*, leave.
async fn one_room(url: &str) -> anyhow::Result<()> {
    let mut ws = client::connect(url).await?;
    let empty_sv = StateVector::default().encode_v1();
    client::sync_handshake(
        &mut ws,
        &Framing::Plain,
        &empty_sv,
        &EMPTY_UPDATE,
        Duration::from_secs(60),
    )
    .await?;
    let mut writer = MapWriter::new(0, client::fresh_client_id());
    let (update, clock) = writer.next_update();
    client::send(&mut ws, encode_update(&update)).await?;
    client::send(&mut ws, encode_save_request(u64::from(clock))).await?;
    let wait = async {
        while let Some(message) = ws.next().await {
            let tokio_tungstenite::tungstenite::Message::Binary(frame) = message? else {
                continue;
            };
            for item in MessageReader::new(&frame) {
                if let Ok((Message::Saved(_), _)) = item {
                    return Ok(());
                }
            }
        }
        bail!("closed before saved")
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .context("no saved within 60 s")??;
    let _ = ws.close(None).await;
    Ok(())
}

/// (messages, subjects) of the `YROOMS_*` streams and messages of the lease bucket, from `/jsz`.
async fn jsz_counts(monitor: SocketAddr) -> anyhow::Result<(u64, u64, u64)> {
    let (status, body) = relay_tests::http_get(monitor, "/jsz?streams=true").await?;
    if status != 200 {
        bail!("/jsz: HTTP {status}");
    }
    let jsz: serde_json::Value = serde_json::from_str(&body)?;
    let (mut messages, mut subjects, mut leases) = (0, 0, 0);
    for account in jsz["account_details"].as_array().into_iter().flatten() {
        for stream in account["stream_detail"].as_array().into_iter().flatten() {
            let name = stream["name"].as_str().unwrap_or_default();
            let state = &stream["state"];
            if name.starts_with("YROOMS") {
                messages += state["messages"].as_u64().unwrap_or(0);
                subjects += state["num_subjects"].as_u64().unwrap_or(0);
            } else if name.starts_with("KV_yroom-leases") {
                leases += state["messages"].as_u64().unwrap_or(0);
            }
        }
    }
    Ok((messages, subjects, leases))
}
