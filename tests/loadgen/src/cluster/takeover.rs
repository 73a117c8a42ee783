//! Takeover after a crash: how long a room is without an owner when its owner relay dies.
//!
//! Each repetition starts a fresh relay (the victim), makes it the owner of a new room (a client
//! joins there first and stays), and puts a writer on a surviving relay, whose traffic is
//! forwarded to the victim. The writer keeps one update in flight: it sends an update and its
//! save request, waits for *saved*, pauses `PACE` and sends the next; when its connection closes
//! or fails it reconnects after `RETRY` (the relay closes at once with 1013 while the dead
//! owner's lease lasts) and sends what the relay lacks in its sync step 2. Once the writer has
//! been acknowledged a few times, the victim gets SIGKILL. Takeover time = from just before the
//! kill until the writer receives *saved* for an update it sent after the kill. Also recorded:
//! when the forwarded connection ended after the kill (how the surviving relay noticed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use crdt::protocol::{Message, MessageReader, encode_save_request, encode_update};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact};

use super::{Cluster, load_average};
use crate::client::{self, EMPTY_UPDATE, MapWriter, Ws};
use crate::peers::PeerPaths;
use crate::protocol::Framing;

/// The writer's pause between an acknowledgement and its next update.
const PACE: Duration = Duration::from_millis(20);
/// The writer's pause before reconnecting (a client's reconnect delay, kept short so that it
/// adds little to the figure).
const RETRY: Duration = Duration::from_millis(50);
/// Acknowledged updates through the victim before it is killed.
const WARM_UP: u64 = 5;

/// One repetition's figures.
#[derive(Debug, Clone, Copy)]
pub struct Takeover {
    /// From the kill to the writer's next *saved* (of an update sent after the kill).
    pub saved_after: Duration,
    /// From the kill to the first *saved* of a client that starts connecting to the other
    /// survivor right after the kill (retrying every `RETRY`): when the room serves new
    /// connections again.
    pub fresh_saved_after: Duration,
    /// From the kill to the end of the writer's forwarded connection (`None`: it did not end
    /// before the next *saved*).
    pub closed_after: Option<Duration>,
}

/// What the writer task shares with the measurement.
#[derive(Default)]
struct Shared {
    acked: AtomicU64,
    /// Microseconds after `base` of the kill (0: not yet).
    kill_us: AtomicU64,
    /// Microseconds after `base` of the first connection end after the kill (0: none).
    closed_us: AtomicU64,
}

/// Runs `reps` takeovers on a fresh cluster of two surviving relays and one victim per
/// repetition, with `lease_secs` (`None`: the relay's default).
///
/// # Errors
/// When the cluster does not start, the victim does not become the owner, or a writer gets no
/// *saved* within three leases plus 30 s of the kill.
pub async fn run(
    paths: &PeerPaths,
    dir: &std::path::Path,
    lease_secs: Option<u64>,
    reps: usize,
) -> anyhow::Result<Vec<Takeover>> {
    let cluster = Cluster::start(paths, dir, 2, lease_secs).await?;
    let js = async_nats::jetstream::new(cluster.nats.client().await);
    let lease = Duration::from_secs(lease_secs.unwrap_or(10));
    let tag = client::fresh_client_id() % 1_000_000;
    let mut results = Vec::new();
    for rep in 0..reps {
        eprintln!(
            "takeover rep {}/{reps} (lease {lease:?}), load {}",
            rep + 1,
            load_average()
        );
        let mut victim = cluster.start_relay(&format!("victim{rep}")).await?;
        let room = format!("takeover-{tag}-{rep}");
        // The first client makes the victim the owner; it stays connected until the kill.
        let mut owner_client = client::connect(&format!("ws://{}/{room}", victim.addr)).await?;
        let empty_sv = StateVector::default().encode_v1();
        client::sync_handshake(
            &mut owner_client,
            &Framing::Plain,
            &empty_sv,
            &EMPTY_UPDATE,
            Duration::from_secs(20),
        )
        .await
        .context("join the victim")?;
        let owner = relay_tests::lease_owner(&js, &room).await;
        if owner.as_deref() != Some(&format!("victim{rep}")) {
            bail!("room {room}: the lease is held by {owner:?}, not by the victim");
        }
        let survivor = &cluster.relays[rep % cluster.relays.len()];
        let url = format!("ws://{}/{room}", survivor.addr);
        let base = Instant::now();
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let writer = tokio::spawn(write(url, base, shared.clone(), stop_rx.clone()));
        let warm = tokio::time::timeout(Duration::from_secs(20), async {
            while shared.acked.load(Ordering::Acquire) < WARM_UP {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if warm.is_err() {
            let _ = stop_tx.send(true);
            bail!("the writer on a survivor got no {WARM_UP} saves through the victim in 20 s");
        }
        let kill_at = Instant::now();
        shared
            .kill_us
            .store(micros(kill_at - base).max(1), Ordering::Release);
        victim.kill();
        let fresh_shared = Arc::new(Shared::default());
        fresh_shared
            .kill_us
            .store(shared.kill_us.load(Ordering::Acquire), Ordering::Release);
        let other = &cluster.relays[(rep + 1) % cluster.relays.len()];
        let fresh = tokio::spawn(write(
            format!("ws://{}/{room}", other.addr),
            base,
            fresh_shared,
            stop_rx.clone(),
        ));
        let limit = lease * 3 + Duration::from_secs(30);
        let (saved, fresh_saved) = match tokio::time::timeout(limit, async {
            let (a, b) = tokio::join!(writer, fresh);
            (a, b)
        })
        .await
        {
            Ok(joined) => joined,
            Err(_) => {
                let _ = stop_tx.send(true);
                bail!("no saved within {limit:?} of killing the owner");
            }
        };
        let saved_at = saved.context("writer task")??;
        let fresh_saved_at = fresh_saved.context("fresh writer task")??;
        let closed = shared.closed_us.load(Ordering::Acquire);
        let t = Takeover {
            saved_after: saved_at - kill_at,
            fresh_saved_after: fresh_saved_at - kill_at,
            closed_after: (closed > 0).then(|| base + Duration::from_micros(closed) - kill_at),
        };
        eprintln!(
            "  saved {:.2} s after the kill (a new client: {:.2} s); forwarded connection ended after {}",
            t.saved_after.as_secs_f64(),
            t.fresh_saved_after.as_secs_f64(),
            t.closed_after.map_or("(never)".to_owned(), |d| format!(
                "{:.2} s",
                d.as_secs_f64()
            ))
        );
        results.push(t);
        drop(owner_client);
    }
    cluster.stop();
    Ok(results)
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// The writer: returns when it receives *saved* for an update sent after the kill.
async fn write(
    url: String,
    base: Instant,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Instant> {
    let mut writer = MapWriter::new(0, client::fresh_client_id());
    loop {
        if *stop.borrow() {
            bail!("stopped");
        }
        if let Some(at) = session(&url, &mut writer, base, &shared).await {
            return Ok(at);
        }
        let kill = shared.kill_us.load(Ordering::Acquire);
        if kill > 0 && shared.closed_us.load(Ordering::Acquire) == 0 {
            let _ = shared.closed_us.compare_exchange(
                0,
                micros(base.elapsed()).max(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One connection; `Some(when)` once an update sent after the kill is acknowledged, `None` when
/// the connection ends first.
async fn session(
    url: &str,
    writer: &mut MapWriter,
    base: Instant,
    shared: &Shared,
) -> Option<Instant> {
    let mut ws = client::connect(url).await.ok()?;
    let (sv, state) = {
        let txn = writer.doc().transact();
        (
            txn.state_vector().encode_v1(),
            txn.encode_state_as_update_v1(&StateVector::default()),
        )
    };
    // The relay's sync step 1 is answered with everything this writer made, so an update lost
    // with the old owner arrives again.
    client::sync_handshake(
        &mut ws,
        &Framing::Plain,
        &sv,
        &state,
        Duration::from_secs(30),
    )
    .await
    .ok()?;
    loop {
        let sent_at = Instant::now();
        let (update, clock) = writer.next_update();
        send(&mut ws, encode_update(&update)).await?;
        send(&mut ws, encode_save_request(u64::from(clock))).await?;
        let saved_at = wait_saved(&mut ws, u64::from(clock)).await?;
        shared.acked.fetch_add(1, Ordering::AcqRel);
        let kill = shared.kill_us.load(Ordering::Acquire);
        if kill > 0 && sent_at >= base + Duration::from_micros(kill) {
            let _ = ws.close(None).await;
            return Some(saved_at);
        }
        tokio::time::sleep(PACE).await;
    }
}

async fn send(ws: &mut Ws, frame: Vec<u8>) -> Option<()> {
    ws.send(WsMessage::Binary(Bytes::from(frame))).await.ok()
}

/// Reads until *saved* of `id` or later; `None` when the connection ends (or a minute passes).
async fn wait_saved(ws: &mut Ws, id: u64) -> Option<Instant> {
    let wait = async {
        while let Some(Ok(message)) = ws.next().await {
            let WsMessage::Binary(frame) = message else {
                if matches!(message, WsMessage::Close(_)) {
                    return None;
                }
                continue;
            };
            for item in MessageReader::new(&frame) {
                if let Ok((Message::Saved(got), _)) = item
                    && got >= id
                {
                    return Some(Instant::now());
                }
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .ok()
        .flatten()
}

/// Median and maximum of the figures, seconds.
pub fn median_max(values: &[Duration]) -> (f64, f64) {
    let mut v: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (median, v[v.len() - 1])
}
