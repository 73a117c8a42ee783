//! Writers that know which of their edits the relay acknowledged as *saved*, for the fault tests
//! and the crash tool: each writer owns keys `"<name>-<n>" = n` of its room's `Y.Map`
//! [`EDITS`], sends a save request numbered `n` after edit `n`, and counts key `n` acknowledged
//! once `saved n` arrives. A writer keeps its document across connections, so its unacknowledged
//! edits reach the relay after a reconnect (it answers the relay's sync step 1 with what the
//! relay lacks, as the stock client does).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crdt::protocol::{
    Message, MessageReader, encode_save_request, encode_sync_step1, encode_sync_step2,
    encode_update,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, Out, ReadTxn, StateVector, Transact, Update};

/// The shared map the writers edit.
pub const EDITS: &str = "edits";

/// How a writer's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterEnd {
    /// The test stopped it.
    Stopped,
    /// The relay closed the connection with this code.
    Closed(Option<u16>),
    /// The connection failed or could not be made.
    Failed(String),
}

/// One writer of a room.
pub struct AckedWriter {
    /// Its room.
    pub room: String,
    /// Its key prefix.
    pub name: String,
    /// Its document (every edit it made, acknowledged or not).
    pub doc: Doc,
    next: u64,
    /// Shared, so that a test reads it while the writer runs in a task.
    acked: Arc<AtomicU64>,
    /// How many times each save request was answered (a retried publish must not answer twice).
    saved_answers: BTreeMap<u64, u32>,
}

impl AckedWriter {
    /// A writer of `room` with keys `"<name>-<n>"`.
    pub fn new(room: &str, name: &str) -> AckedWriter {
        AckedWriter {
            room: room.to_owned(),
            name: name.to_owned(),
            doc: Doc::new(),
            next: 0,
            acked: Arc::new(AtomicU64::new(0)),
            saved_answers: BTreeMap::new(),
        }
    }

    /// How many edits it made (keys `0..sent`).
    pub fn sent(&self) -> u64 {
        self.next
    }

    /// How many edits the relay acknowledged as saved (keys `0..acked`).
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// The acknowledged count, to read while the writer runs elsewhere.
    pub fn acked_handle(&self) -> Arc<AtomicU64> {
        self.acked.clone()
    }

    /// Save requests answered more than once, with the count.
    pub fn repeated_answers(&self) -> Vec<(u64, u32)> {
        self.saved_answers
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (*id, *n))
            .collect()
    }

    /// The key of edit `n`.
    pub fn key(&self, n: u64) -> String {
        format!("{}-{n}", self.name)
    }

    /// The first key in `0..upto` that `content` lacks or holds with another value.
    pub fn first_missing(&self, content: &BTreeMap<String, f64>, upto: u64) -> Option<u64> {
        first_missing(&self.name, content, upto)
    }

    /// Makes the next edit in the writer's document only (the relay gets it on the next sync);
    /// returns its update.
    pub fn edit(&mut self) -> Vec<u8> {
        let map = self.doc.get_or_insert_map(EDITS);
        let before = self.doc.transact().state_vector();
        let n = self.next;
        self.next += 1;
        map.insert(&mut self.doc.transact_mut(), self.key(n), n as f64);
        self.doc.transact().encode_diff_v1(&before)
    }

    fn on_saved(&mut self, id: u64) {
        *self.saved_answers.entry(id).or_default() += 1;
        // Request n answers for keys 0..=n.
        self.acked.fetch_max(id + 1, Ordering::AcqRel);
    }

    /// Connects to `url` and edits every `pace` (each edit followed by its save request) until
    /// `stop` is cancelled or the connection ends.
    pub async fn run(&mut self, url: &str, pace: Duration, stop: &CancellationToken) -> WriterEnd {
        self.session(url, Some(pace), None, stop).await
    }

    /// Connects to `url`, syncs (sending the relay whatever it lacks), asks for a save of
    /// everything and waits for the answer: afterwards every edit is acknowledged. Retries on a
    /// new connection when the relay closes it (a lease moving), until `limit`.
    ///
    /// # Errors
    /// When it is not acknowledged within `limit`; the last connection's end.
    pub async fn settle(&mut self, url: &str, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        let stop = CancellationToken::new();
        let mut last = WriterEnd::Stopped;
        while tokio::time::Instant::now() < deadline {
            if self.next == 0 {
                return Ok(());
            }
            let target = self.next - 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let session = self.session(url, None, Some(target), &stop);
            match tokio::time::timeout(left, session).await {
                Ok(WriterEnd::Stopped) if self.acked() == self.next => return Ok(()),
                Ok(end) => last = end,
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "writer {} of room {:?}: {} of {} edits acknowledged after {limit:?} (last connection: {last:?})",
            self.name,
            self.room,
            self.acked(),
            self.next
        ))
    }

    /// One connection: edits every `pace` if given; returns `Stopped` once `saved target`
    /// arrives, if given.
    async fn session(
        &mut self,
        url: &str,
        pace: Option<Duration>,
        target: Option<u64>,
        stop: &CancellationToken,
    ) -> WriterEnd {
        let connect = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        );
        let ws = match connect.await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return WriterEnd::Failed(e.to_string()),
            Err(_) => return WriterEnd::Failed("connect timed out".into()),
        };
        let (mut sink, mut stream) = ws.split();
        let sv = self.doc.transact().state_vector().encode_v1();
        let mut outgoing = vec![encode_sync_step1(&sv)];
        if let Some(target) = target {
            outgoing.push(encode_save_request(target));
        }
        for frame in outgoing {
            if let Err(e) = sink.send(WsMessage::Binary(frame.into())).await {
                return WriterEnd::Failed(e.to_string());
            }
        }
        let mut ticker = tokio::time::interval(pace.unwrap_or(Duration::from_secs(3600)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // No edit before the relay's sync step 1 is answered: an incremental update sent
        // earlier may depend on edits the relay has not got yet (they come in our sync step 2).
        let mut synced = false;
        loop {
            let frame = tokio::select! {
                () = stop.cancelled() => return WriterEnd::Stopped,
                _ = ticker.tick(), if pace.is_some() && synced => {
                    let update = self.edit();
                    let request = self.next - 1;
                    for frame in [encode_update(&update), encode_save_request(request)] {
                        if let Err(e) = sink.send(WsMessage::Binary(frame.into())).await {
                            return WriterEnd::Failed(e.to_string());
                        }
                    }
                    continue;
                }
                message = stream.next() => message,
            };
            let frame = match frame {
                Some(Ok(WsMessage::Binary(frame))) => frame,
                Some(Ok(WsMessage::Close(close))) => {
                    return WriterEnd::Closed(close.map(|c| u16::from(c.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return WriterEnd::Failed(e.to_string()),
                None => return WriterEnd::Failed("end of stream".into()),
            };
            let mut answer = Vec::new();
            for item in MessageReader::new(&frame) {
                match item {
                    Ok((Message::Saved(id), _)) => self.on_saved(id),
                    Ok((Message::SyncStep1(sv), _)) => {
                        if let Ok(sv) = StateVector::decode_v1(sv) {
                            let diff = self.doc.transact().encode_diff_v1(&sv);
                            answer.push(encode_sync_step2(&diff));
                            synced = true;
                        }
                    }
                    Ok((Message::SyncStep2(u) | Message::Update(u), _)) => {
                        if let Ok(update) = Update::decode_v1(u) {
                            let _ = self.doc.transact_mut().apply_update(update);
                        }
                    }
                    _ => {}
                }
            }
            for frame in answer {
                if let Err(e) = sink.send(WsMessage::Binary(frame.into())).await {
                    return WriterEnd::Failed(e.to_string());
                }
            }
            if target.is_some_and(|t| self.acked() > t) {
                let _ = sink.send(WsMessage::Close(None)).await;
                return WriterEnd::Stopped;
            }
        }
    }
}

/// The first key `"<name>-<n>"`, `n` in `0..upto`, that `content` lacks or holds with another
/// value.
pub fn first_missing(name: &str, content: &BTreeMap<String, f64>, upto: u64) -> Option<u64> {
    (0..upto).find(|&n| content.get(&format!("{name}-{n}")).copied() != Some(n as f64))
}

/// Each relay's current address, `None` while it is down: where a [`WriterPool`]'s writers
/// connect. The test updates it as it kills and restarts relays.
pub type RelayAddrs = watch::Sender<Vec<Option<SocketAddr>>>;

/// Writers editing in background tasks, each reconnecting (to its preferred relay, else the next
/// one up) whenever its connection ends, until stopped.
pub struct WriterPool {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<AckedWriter>>,
    /// Each writer's room and name, in order.
    pub members: Vec<(String, String)>,
    acked: Vec<Arc<AtomicU64>>,
    /// Every connection end other than a stop, with the writer's name.
    pub ends: Arc<std::sync::Mutex<Vec<(String, WriterEnd)>>>,
}

impl WriterPool {
    /// Starts each writer on its preferred relay (an index into `addrs`), editing every `pace`.
    pub fn start(
        writers: Vec<(AckedWriter, usize)>,
        addrs: &RelayAddrs,
        pace: Duration,
    ) -> WriterPool {
        let stop = CancellationToken::new();
        let ends = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut pool = WriterPool {
            stop: stop.clone(),
            tasks: Vec::new(),
            members: Vec::new(),
            acked: Vec::new(),
            ends: ends.clone(),
        };
        for (mut writer, preferred) in writers {
            pool.members
                .push((writer.room.clone(), writer.name.clone()));
            pool.acked.push(writer.acked_handle());
            let mut addrs = addrs.subscribe();
            let stop = stop.clone();
            let ends = ends.clone();
            pool.tasks.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let addr = {
                        let current = addrs.borrow_and_update();
                        let n = current.len();
                        (0..n).find_map(|k| current[(preferred + k) % n])
                    };
                    let Some(addr) = addr else {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            _ = addrs.changed() => continue,
                        }
                    };
                    let url = crate::http::ws_url(addr, &writer.room);
                    let end = writer.run(&url, pace, &stop).await;
                    if end == WriterEnd::Stopped {
                        break;
                    }
                    ends.lock()
                        .expect("not poisoned")
                        .push((writer.name.clone(), end));
                    // A client's reconnect delay, not a wait for a condition.
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                writer
            }));
        }
        pool
    }

    /// Each writer's acknowledged count now.
    pub fn acked(&self) -> Vec<u64> {
        self.acked
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect()
    }

    /// The sum of [`WriterPool::acked`].
    pub fn total_acked(&self) -> u64 {
        self.acked().iter().sum()
    }

    /// Waits up to `limit` until every writer has `more` acknowledgements beyond its count now;
    /// how long it took.
    ///
    /// # Errors
    /// When some writer does not get there in time (which one, and the counts).
    pub async fn wait_progress(&self, more: u64, limit: Duration) -> Result<Duration, String> {
        self.wait_progress_of(|_| true, more, limit).await
    }

    /// Like [`WriterPool::wait_progress`], for the writers (by index) that `which` selects.
    ///
    /// # Errors
    /// As [`WriterPool::wait_progress`].
    pub async fn wait_progress_of(
        &self,
        which: impl Fn(usize) -> bool,
        more: u64,
        limit: Duration,
    ) -> Result<Duration, String> {
        let start = tokio::time::Instant::now();
        let goal: Vec<u64> = self.acked().iter().map(|a| a + more).collect();
        loop {
            let now = self.acked();
            if (0..now.len()).all(|i| !which(i) || now[i] >= goal[i]) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                let ends = self.ends.lock().expect("not poisoned");
                let recent = &ends[ends.len().saturating_sub(20)..];
                return Err(format!(
                    "no progress within {limit:?}: acknowledged {now:?}, wanted {goal:?}; the last {} of {} connection ends: {recent:?}",
                    recent.len(),
                    ends.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks that every edit acknowledged so far is in its room's subject, replayed straight
    /// from JetStream; returns how many were checked.
    ///
    /// # Errors
    /// The first acknowledged edit missing, with `when`.
    pub async fn check_stored(&self, js: &jetstream::Context, when: &str) -> Result<u64, String> {
        // Read the counts first: everything acknowledged before the replay starts must be in it.
        let acked = self.acked();
        check_stored(js, &self.members, &acked, when).await
    }

    /// Stops every writer and returns them.
    pub async fn stop(self) -> Vec<AckedWriter> {
        self.stop.cancel();
        let mut writers = Vec::new();
        for task in self.tasks {
            writers.push(task.await.expect("a writer task panicked"));
        }
        writers
    }
}

/// Checks that, for each (room, name) of `members`, keys `0..acked[i]` are in the room's subject
/// replayed from JetStream; returns the number checked.
///
/// # Errors
/// The first one missing, with `when`.
pub async fn check_stored(
    js: &jetstream::Context,
    members: &[(String, String)],
    acked: &[u64],
    when: &str,
) -> Result<u64, String> {
    let mut replays: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    for (room, _) in members {
        if !replays.contains_key(room.as_str()) {
            let replay = crate::jetstream::replay_room(js, room).await;
            replays.insert(room, edits_of(&replay.doc));
        }
    }
    for ((room, name), &upto) in members.iter().zip(acked) {
        if let Some(n) = first_missing(name, &replays[room.as_str()], upto) {
            return Err(format!(
                "{when}: {name}-{n} of room {room:?} was acknowledged as saved ({upto} keys) but is not in the stream"
            ));
        }
    }
    Ok(acked.iter().sum())
}

/// The [`EDITS`] map of a document.
pub fn edits_of(doc: &Doc) -> BTreeMap<String, f64> {
    let map = doc.get_or_insert_map(EDITS);
    let txn = doc.transact();
    map.iter(&txn)
        .filter_map(|(k, v)| match v {
            Out::Any(yrs::Any::Number(n)) => n.as_f64().map(|n| (k.to_owned(), n)),
            _ => None,
        })
        .collect()
}

/// The close code that asks a client to come back (a lease moving, an overloaded relay).
pub const TRY_AGAIN: u16 = 1013;

/// Reads a room through `url` with a fresh client (sync step 1 from an empty document, then the
/// relay's sync step 2) and returns its [`EDITS`] map. A close with [`TRY_AGAIN`] is retried, as
/// a client would, until `limit`.
///
/// # Errors
/// When it cannot connect, is closed otherwise, or no sync step 2 arrives within `limit`.
pub async fn read_edits(url: &str, limit: Duration) -> Result<BTreeMap<String, f64>, String> {
    let mut last = String::from("no attempt");
    let attempts = async {
        loop {
            match read_edits_once(url).await {
                // A client reconnects after these; so does the reader.
                Err(ReadEnd::TryAgain(e)) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(ReadEnd::Failed(e)) => return Err(e),
                Ok(edits) => return Ok(edits),
            }
        }
    };
    match tokio::time::timeout(limit, attempts).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{url}: no sync step 2 within {limit:?}; last attempt: {last}"
        )),
    }
}

enum ReadEnd {
    /// Closed with [`TRY_AGAIN`], or the connection failed or ended.
    TryAgain(String),
    /// Closed with another code.
    Failed(String),
}

async fn read_edits_once(url: &str) -> Result<BTreeMap<String, f64>, ReadEnd> {
    let failed = ReadEnd::TryAgain;
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| failed(format!("connect to {url}: {e}")))?;
    let (mut sink, mut stream) = ws.split();
    sink.send(WsMessage::Binary(encode_sync_step1(&[0]).into()))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let doc = Doc::new();
    loop {
        let frame = match stream.next().await {
            Some(Ok(WsMessage::Binary(frame))) => frame,
            Some(Ok(WsMessage::Close(Some(close)))) if u16::from(close.code) == TRY_AGAIN => {
                return Err(ReadEnd::TryAgain(format!("closed: {close:?}")));
            }
            Some(Ok(WsMessage::Close(close))) => {
                return Err(ReadEnd::Failed(format!(
                    "{url}: closed before sync step 2: {close:?}"
                )));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(failed(format!("{url}: {e}"))),
            None => return Err(failed(format!("{url}: ended before sync step 2"))),
        };
        if let Some(Ok((Message::SyncStep2(update), _))) = MessageReader::new(&frame).next() {
            let update = Update::decode_v1(update).map_err(|e| failed(e.to_string()))?;
            doc.transact_mut()
                .apply_update(update)
                .map_err(|e| failed(e.to_string()))?;
            let _ = sink.send(WsMessage::Close(None)).await;
            return Ok(edits_of(&doc));
        }
    }
}
