//! Writers that know which of their edits the relay acknowledged as *saved*, for the fault tests
//! and the crash tool: each writer owns keys `"<name>-<n>" = n` of its room's `Y.Map`
//! [`EDITS`], sends a save request numbered `n` after edit `n` (after every edit, or every k-th:
//! its [`Schedule`]), and counts keys `0..=n` acknowledged once `saved n` arrives. The fault
//! tests, `crashtest` and `crashtest --cluster` all write with it, over the tests' [`Client`]. A writer keeps its document across connections, so its unacknowledged
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
use tokio_util::sync::CancellationToken;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, Out, ReadTxn, StateVector, Transact, Update};

use crate::client::{Client, Event, read_event};
use crate::rng::Rng;

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
        self.run_on(url, &mut Schedule::every(pace), stop).await
    }

    /// Connects to `url` and edits on `schedule` (once the relay's sync step 1 is answered)
    /// until `stop` is cancelled or the connection ends.
    pub async fn run_on(
        &mut self,
        url: &str,
        schedule: &mut Schedule,
        stop: &CancellationToken,
    ) -> WriterEnd {
        self.session(url, Some(schedule), None, stop).await
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

    /// One connection: edits on `schedule` if given; returns `Stopped` once `saved target`
    /// arrives, if given.
    async fn session(
        &mut self,
        url: &str,
        mut schedule: Option<&mut Schedule>,
        target: Option<u64>,
        stop: &CancellationToken,
    ) -> WriterEnd {
        let mut client = match Client::connect_for(url, Duration::from_secs(5)).await {
            Ok(client) => client,
            Err(e) => return WriterEnd::Failed(e),
        };
        let sv = self.doc.transact().state_vector().encode_v1();
        if let Err(e) = client.try_send(encode_sync_step1(&sv)).await {
            return WriterEnd::Failed(e.to_string());
        }
        // The save request for `target` goes after our sync step 2, which carries the edits:
        // sent before it, it would only cover what this connection had sent so far (nothing),
        // and the relay would rightly answer it at once.
        let mut save_request = target.map(encode_save_request);
        let mut next_edit = tokio::time::Instant::now();
        // No edit before the relay's sync step 1 is answered: an incremental update sent
        // earlier may depend on edits the relay has not got yet (they come in our sync step 2).
        let mut synced = false;
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return WriterEnd::Stopped,
                () = tokio::time::sleep_until(next_edit), if schedule.is_some() && synced => {
                    let schedule = schedule.as_deref_mut().expect("guarded by is_some");
                    next_edit = tokio::time::Instant::now() + schedule.pause();
                    let update = self.edit();
                    let mut frames = vec![encode_update(&update)];
                    if self.next.is_multiple_of(schedule.save_every) {
                        // The request is numbered after the last key sent before it.
                        frames.push(encode_save_request(self.next - 1));
                    }
                    for frame in frames {
                        if let Err(e) = client.try_send(frame).await {
                            return WriterEnd::Failed(e.to_string());
                        }
                    }
                    continue;
                }
                event = read_event(&mut client.stream) => event,
            };
            let frame = match event {
                Event::Frame(frame) => frame,
                Event::Close(code) => return WriterEnd::Closed(code),
                Event::Text(_) => continue,
                Event::Ended(e) => return WriterEnd::Failed(e),
            };
            let mut answer = Vec::new();
            for item in MessageReader::new(&frame) {
                match item {
                    Ok((Message::Saved(id), _)) => self.on_saved(id),
                    Ok((Message::SyncStep1(sv), _)) => {
                        if let Ok(sv) = StateVector::decode_v1(sv) {
                            let diff = self.doc.transact().encode_diff_v1(&sv);
                            answer.push(encode_sync_step2(&diff));
                            answer.extend(save_request.take());
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
                if let Err(e) = client.try_send(frame).await {
                    return WriterEnd::Failed(e.to_string());
                }
            }
            if target.is_some_and(|t| self.acked() > t) {
                let _ = client.try_send_close().await;
                return WriterEnd::Stopped;
            }
        }
    }
}

/// When an [`AckedWriter`] edits and how often it asks for a save.
pub struct Schedule {
    pace: Pace,
    save_every: u64,
}

enum Pace {
    Every(Duration),
    /// A seeded random pause, so that a tool's run replays with its seed.
    Random {
        rng: Rng,
        min_ms: u64,
        max_ms: u64,
    },
}

impl Schedule {
    /// An edit every `pace`, each followed by its save request.
    pub fn every(pace: Duration) -> Schedule {
        Schedule {
            pace: Pace::Every(pace),
            save_every: 1,
        }
    }

    /// An edit at once, then one after each random pause of `min_ms` to `max_ms` (both
    /// included) drawn from `rng`; each followed by its save request.
    pub fn random(rng: Rng, min_ms: u64, max_ms: u64) -> Schedule {
        Schedule {
            pace: Pace::Random {
                rng,
                min_ms,
                max_ms,
            },
            save_every: 1,
        }
    }

    /// A save request after every `n`th edit only (edit `n - 1`, `2n - 1`, ...), the others
    /// acknowledged with it.
    pub fn save_every(mut self, n: u64) -> Schedule {
        self.save_every = n.max(1);
        self
    }

    /// The pause before the next edit.
    fn pause(&mut self) -> Duration {
        match &mut self.pace {
            Pace::Every(pace) => *pace,
            Pace::Random {
                rng,
                min_ms,
                max_ms,
            } => Duration::from_millis(rng.between(*min_ms, *max_ms)),
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
    let mut client = Client::connect_for(url, Duration::from_secs(5))
        .await
        .map_err(failed)?;
    client
        .try_send(encode_sync_step1(&[0]))
        .await
        .map_err(|e| failed(e.to_string()))?;
    loop {
        let frame = match read_event(&mut client.stream).await {
            Event::Frame(frame) => frame,
            Event::Close(Some(TRY_AGAIN)) => {
                return Err(ReadEnd::TryAgain(format!("closed with {TRY_AGAIN}")));
            }
            Event::Close(code) => {
                return Err(ReadEnd::Failed(format!(
                    "{url}: closed before sync step 2: {code:?}"
                )));
            }
            Event::Text(_) => continue,
            Event::Ended(e) => return Err(failed(format!("{url}: {e}"))),
        };
        if let Some(Ok((Message::SyncStep2(update), _))) = MessageReader::new(&frame).next() {
            let update = Update::decode_v1(update).map_err(|e| failed(e.to_string()))?;
            client
                .doc
                .transact_mut()
                .apply_update(update)
                .map_err(|e| failed(e.to_string()))?;
            let _ = client.try_send_close().await;
            return Ok(edits_of(&client.doc));
        }
    }
}
