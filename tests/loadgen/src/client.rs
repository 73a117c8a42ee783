//! Clients: connecting, the sync handshake, real yrs updates, and matching each received update
//! to the edit that produced it (and, for Hocuspocus clients, each SyncStatus to the update it
//! acknowledges). The protocol's framing is in [`crate::protocol`].
//!
//! Clients are deliberately light so that one process drives thousands of them: an observer
//! keeps no document; it reads the ids (client, clock) of the items an update inserts and looks
//! up when that edit was sent in the shared [`SendLog`]. Each writer edits its own `yrs` document
//! with a fixed client id, one new `Y.Map` key per update (`w<writer>:<seq>`), so its `seq`-th update
//! inserts exactly the item at clock `seq`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use crdt::protocol::{Cursor, Message, MessageReader, encode_sync_step1, encode_sync_step2};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, MapRef, Transact, Update};

use crate::protocol::{Framing, Incoming};

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// The root map every writer edits.
pub const MAP: &str = "m";

/// The encoded state of an empty document (`[0, 0]`), what a fresh client answers to step 1.
pub const EMPTY_UPDATE: [u8; 2] = [0, 0];

/// Opens a WebSocket to `url` (`ws://127.0.0.1:PORT/...`) with TCP_NODELAY and small buffers.
///
/// # Errors
/// When the TCP connection or the WebSocket handshake fails.
pub async fn connect(url: &str) -> anyhow::Result<Ws> {
    connect_with_buffer(url, 4096).await
}

/// Opens a WebSocket like [`connect`], reading the socket `read_buffer` bytes at a time (large
/// documents arrive faster with a large buffer; thousands of idle clients want a small one).
///
/// # Errors
/// When the TCP connection or the WebSocket handshake fails.
pub async fn connect_with_buffer(url: &str, read_buffer: usize) -> anyhow::Result<Ws> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("not a ws:// URL: {url}"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let tcp = TcpStream::connect(host)
        .await
        .with_context(|| format!("connect to {host}"))?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(512 << 20))
        .max_frame_size(Some(512 << 20));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(ws)
}

/// Sends one binary frame.
///
/// # Errors
/// When the socket fails.
pub async fn send(ws: &mut Ws, frame: Vec<u8>) -> anyhow::Result<()> {
    ws.send(WsMessage::Binary(Bytes::from(frame))).await?;
    Ok(())
}

/// The sync handshake of a client: opens the document where the protocol asks for it
/// (Hocuspocus' Auth, with an empty token), sends sync step 1 with `state_vector`, answers the
/// server's step 1 with `answer` (the client's state as an update; [`EMPTY_UPDATE`] for an empty
/// document) and returns the server's sync step 2 (its update payload) and when it came.
///
/// A Hocuspocus server acknowledges the answer with a SyncStatus; the handshake also waits for
/// it, so that every SyncStatus after the handshake answers one of the client's updates, in order.
///
/// # Errors
/// When the socket closes or fails first, the server refuses the document, or after `limit`.
pub async fn sync_handshake(
    ws: &mut Ws,
    framing: &Framing,
    state_vector: &[u8],
    answer: &[u8],
    limit: Duration,
) -> anyhow::Result<(Vec<u8>, Instant)> {
    if let Some(auth) = framing.auth("") {
        send(ws, auth).await?;
    }
    send(ws, framing.wrap(encode_sync_step1(state_vector))).await?;
    let work = async {
        let mut step2 = None;
        let mut unacked = 0usize;
        while let Some(message) = ws.next().await {
            let WsMessage::Binary(frame) = message? else {
                continue;
            };
            let mut replies = Vec::new();
            match framing.read(&frame)? {
                Incoming::Messages(messages) => {
                    for item in MessageReader::new(messages) {
                        match item?.0 {
                            Message::SyncStep1(_) => {
                                replies.push(framing.wrap(encode_sync_step2(answer)));
                                unacked += usize::from(framing.acks_updates());
                            }
                            Message::SyncStep2(update) => {
                                step2 = Some((update.to_vec(), Instant::now()));
                            }
                            _ => {}
                        }
                    }
                }
                Incoming::SyncStatus(_) => unacked = unacked.saturating_sub(1),
                Incoming::PermissionDenied(reason) => {
                    bail!("the server refused the document: {reason}")
                }
                Incoming::Authenticated(_) | Incoming::Ignored => {}
            }
            for reply in replies {
                send(ws, reply).await?;
            }
            if unacked == 0
                && let Some(done) = step2.take()
            {
                return Ok(done);
            }
        }
        bail!("the connection closed before sync step 2")
    };
    tokio::time::timeout(limit, work)
        .await
        .context("timed out waiting for sync step 2")?
}

/// When each writer sent each of its updates, shared by all clients of a scenario.
#[derive(Debug)]
pub struct SendLog {
    epoch: Instant,
    writers: HashMap<u64, usize>,
    // Per writer, the send time (µs since `epoch`) of its update at each clock.
    times: Vec<Mutex<Vec<u64>>>,
}

impl SendLog {
    /// A log for writers with these client ids (writer `i` has `client_ids[i]`).
    pub fn new(client_ids: &[u64]) -> Self {
        SendLog {
            epoch: Instant::now(),
            writers: client_ids
                .iter()
                .enumerate()
                .map(|(i, &c)| (c, i))
                .collect(),
            times: client_ids.iter().map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Microseconds since the log was made.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Records that `writer` sends its update with this clock now.
    pub fn record(&self, writer: usize, clock: u32) {
        let now = self.now_us();
        let mut times = self.times[writer].lock().expect("send log lock");
        debug_assert_eq!(
            times.len(),
            clock as usize,
            "updates are recorded in clock order"
        );
        times.push(now);
    }

    /// When `writer` sent its update at `clock` (µs since the log was made).
    pub fn sent_at(&self, writer: usize, clock: u32) -> Option<u64> {
        self.times
            .get(writer)?
            .lock()
            .expect("send log lock")
            .get(clock as usize)
            .copied()
    }

    /// The writer that owns `client` and when it sent the update at `clock`.
    pub fn lookup(&self, client: u64, clock: u32) -> Option<(usize, u64)> {
        let writer = *self.writers.get(&client)?;
        let sent = *self.times[writer]
            .lock()
            .expect("send log lock")
            .get(clock as usize)?;
        Some((writer, sent))
    }

    /// Updates sent so far, over all writers.
    pub fn total_sent(&self) -> u64 {
        self.times
            .iter()
            .map(|t| t.lock().expect("send log lock").len() as u64)
            .sum()
    }
}

/// What one client received.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Edits of other clients received (one per inserted item).
    pub deliveries: u64,
    /// The client's own edits sent back to it.
    pub echoes: u64,
    /// Items the send log does not know.
    pub unknown: u64,
    /// Update or step 2 messages received.
    pub messages: u64,
    /// Edit-to-delivery times of `deliveries`, in µs.
    pub latencies_us: Vec<u32>,
    /// The client's updates the server acknowledged as taken (Hocuspocus' SyncStatus 1).
    pub acks: u64,
    /// The client's updates the server said it did not take (SyncStatus 0).
    pub refusals: u64,
    /// Send-to-acknowledgement times of `acks`, in µs.
    pub ack_latencies_us: Vec<u32>,
}

impl Received {
    /// Adds another client's figures.
    pub fn merge(&mut self, other: Received) {
        self.deliveries += other.deliveries;
        self.echoes += other.echoes;
        self.unknown += other.unknown;
        self.messages += other.messages;
        self.latencies_us.extend(other.latencies_us);
        self.acks += other.acks;
        self.refusals += other.refusals;
        self.ack_latencies_us.extend(other.ack_latencies_us);
    }

    /// Accounts one SyncStatus received by the client that is writer `own`. The server answers
    /// each update once, in the order sent (after the handshake's own answer, which
    /// [`sync_handshake`] consumes), so the n-th SyncStatus answers the update at clock n.
    pub fn account_ack(&mut self, taken: bool, own: Option<usize>, log: &SendLog) {
        let clock = u32::try_from(self.acks + self.refusals).unwrap_or(u32::MAX);
        if !taken {
            self.refusals += 1;
            return;
        }
        self.acks += 1;
        if let Some(sent) = own.and_then(|writer| log.sent_at(writer, clock)) {
            let now = log.now_us();
            self.ack_latencies_us
                .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
        }
    }

    /// Accounts one received update (v1) for the client that is writer `own` (if any).
    pub fn account(&mut self, update: &[u8], own: Option<usize>, log: &SendLog) {
        self.messages += 1;
        let now = log.now_us();
        let mut one = |client: u64, clock: u32| match log.lookup(client, clock) {
            Some((writer, _)) if Some(writer) == own => self.echoes += 1,
            Some((_, sent)) => {
                self.deliveries += 1;
                self.latencies_us
                    .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
            }
            None => {
                if self.unknown == 0 && std::env::var_os("LOADGEN_DEBUG").is_some() {
                    eprintln!("unknown item {client}:{clock} in update {update:?}");
                }
                self.unknown += 1
            }
        };
        if let Some((client, clock)) = single_item(update) {
            one(client, clock);
            return;
        }
        let Ok(update) = Update::decode_v1(update) else {
            return;
        };
        for (client, ranges) in update.insertions(true).iter() {
            for range in ranges.iter() {
                for clock in range.clone() {
                    one(client.get(), clock);
                }
            }
        }
    }
}

/// The (client, clock) of an update that holds exactly one struct of one client: the shape of
/// every update a writer sends. `None` for anything else (then the update is decoded in full).
/// Writers insert one map entry per update, a struct of length 1.
pub fn single_item(update: &[u8]) -> Option<(u64, u32)> {
    let mut c = Cursor::new(update);
    if c.read_var_u64().ok()? != 1 {
        return None;
    }
    if c.read_var_u64().ok()? != 1 {
        return None;
    }
    let client = c.read_var_u64().ok()?;
    let clock = u32::try_from(c.read_var_u64().ok()?).ok()?;
    // The first byte of a struct is its info byte: 0 is a GC struct and 10 a skip, both of
    // which may be longer than 1; an item (anything else) from a writer has length 1.
    match c.read_u8().ok()? {
        0 | 10 => None,
        _ => Some((client, clock)),
    }
}

/// A writer: a yrs document with a fixed client id that makes one `Y.Map` entry per update.
#[derive(Debug)]
pub struct MapWriter {
    doc: Doc,
    map: MapRef,
    /// This writer's index in the [`SendLog`].
    pub index: usize,
    seq: u32,
}

impl MapWriter {
    /// A writer with this index and client id.
    pub fn new(index: usize, client_id: u64) -> Self {
        let doc = Doc::with_client_id(client_id);
        let map = doc.get_or_insert_map(MAP);
        MapWriter {
            doc,
            map,
            index,
            seq: 0,
        }
    }

    /// The next edit as an update (v1) and its clock: sets `w<index>:<seq>` to `seq`.
    pub fn next_update(&mut self) -> (Vec<u8>, u32) {
        let clock = self.seq;
        self.seq += 1;
        let mut txn = self.doc.transact_mut();
        self.map.insert(
            &mut txn,
            format!("w{}:{clock}", self.index),
            f64::from(clock),
        );
        (txn.encode_update_v1(), clock)
    }

    /// Updates made so far.
    pub fn sent(&self) -> u32 {
        self.seq
    }

    /// The writer's document.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }
}

/// A random client id (32 bits, as Yjs makes them: y-sweet's yrs 0.19 reads client ids as
/// 32-bit numbers) different for each call in this process.
pub fn fresh_client_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    // splitmix64 of seed + n: unique per n, spread over the id space.
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z & 0xFFFF_FFFF) | 1
}

/// The document obtained by applying `update` (v1) to an empty document.
///
/// # Errors
/// When the update does not decode or apply.
pub fn doc_from_update(update: &[u8]) -> anyhow::Result<Doc> {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        txn.apply_update(Update::decode_v1(update)?)?;
    }
    Ok(doc)
}

/// The full state of a document as one update, and its state vector (v1): the tests' own
/// helpers, not a second copy.
pub use relay_tests::{full_state, state_vector};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_item_matches_a_full_decode() {
        let mut writer = MapWriter::new(0, 4242);
        for expected in 0..300u32 {
            let (update, clock) = writer.next_update();
            assert_eq!(clock, expected);
            assert_eq!(single_item(&update), Some((4242, expected)));
            let decoded = Update::decode_v1(&update).expect("decodes");
            let ids: Vec<(u64, u32)> = decoded
                .insertions(true)
                .iter()
                .flat_map(|(c, r)| {
                    let c = c.get();
                    r.iter()
                        .flat_map(move |r| r.clone().map(move |k| (c, k)))
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(ids, vec![(4242, expected)]);
        }
    }

    #[test]
    fn accounting_counts_deliveries_echoes_and_merged_updates() {
        let mut a = MapWriter::new(0, 11);
        let mut b = MapWriter::new(1, 22);
        let log = SendLog::new(&[11, 22]);
        let mut updates = Vec::new();
        for _ in 0..3 {
            let (u, clock) = a.next_update();
            log.record(0, clock);
            updates.push(u);
        }
        let (ub, clock) = b.next_update();
        log.record(1, clock);
        let merged = yrs::merge_updates_v1(updates.iter().map(Vec::as_slice)).expect("merge");
        let mut got = Received::default();
        got.account(&merged, Some(1), &log);
        got.account(&ub, Some(1), &log);
        assert_eq!((got.deliveries, got.echoes, got.unknown), (3, 1, 0));
        assert_eq!(got.latencies_us.len(), 3);
    }

    #[test]
    fn the_nth_sync_status_answers_the_nth_update() {
        let log = SendLog::new(&[11]);
        log.record(0, 0);
        log.record(0, 1);
        let mut got = Received::default();
        got.account_ack(true, Some(0), &log);
        got.account_ack(false, Some(0), &log);
        // Nothing was sent at clock 2: counted, but no latency.
        got.account_ack(true, Some(0), &log);
        assert_eq!((got.acks, got.refusals), (2, 1));
        assert_eq!(got.ack_latencies_us.len(), 1);
    }
}
