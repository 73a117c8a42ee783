//! The store writer: one thread that turns the rooms' writes into group commits.
//!
//! Rooms send their writes (appended updates, snapshots) through a bounded queue and carry on
//! without waiting. The writer takes everything that is queued, commits it in one redb write
//! transaction with immediate durability, and then tells each room how far its updates are
//! committed through the room's `watch` channel. Writes that arrive while a commit is in
//! progress share the next commit, so the commit rate adapts to the load by itself.
//!
//! A commit appends the batch to the store's journal (one `write`, one `fdatasync`); a second
//! thread, the checkpointer, moves the journal into redb's tables in larger transactions, when
//! `--checkpoint-bytes` are waiting or the oldest waiting write is [`CHECKPOINT_AGE`] old, and
//! once more when the writer stops, so a relay stopped cleanly leaves an empty journal.
//!
//! redb is synchronous, so the writer is a plain thread and never blocks the async runtime.
//! The queue is bounded so that a store that cannot keep up slows the rooms down instead of
//! growing memory without limit.
//!
//! When a commit fails (disk full, I/O error), the writer keeps the batch, tells the rooms, and
//! retries with backoff. It keeps taking new writes in the meantime, holding them in memory, so
//! editing carries on; the first commit that succeeds stores everything in order.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crdt::store::{Store, Write};
use tokio::sync::{mpsc, oneshot, watch};

use crate::telemetry::Metrics;

/// Most writes in one commit.
const MAX_BATCH_WRITES: usize = 8192;
/// Most payload bytes in one commit (a single larger write is still committed alone).
const MAX_BATCH_BYTES: usize = 64 << 20;
/// First retry delay after a failed commit; doubled up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Age of the oldest journaled write that starts a checkpoint, so that a quiet relay's tables
/// catch up too.
pub(crate) const CHECKPOINT_AGE: Duration = Duration::from_secs(10);

/// How far a room's updates are committed, as seen by the room.
#[derive(Debug, Clone, Default)]
pub(crate) struct CommitState {
    /// Every update of the room with a sequence number up to this one is durable.
    pub committed_seq: u64,
    /// Set while commits are failing, to what went wrong (for the clients' save-error
    /// message); cleared by the next successful commit. Each failed attempt notifies again.
    pub failure: Option<Arc<str>>,
}

/// One write and the room to notify once it is committed.
#[derive(Debug)]
pub(crate) struct PersistJob {
    /// What to write.
    pub write: Write,
    /// The room's sequence number that this write completes (an appended update, a deletion),
    /// reported in the room's commit state once it is committed; `None` for a snapshot.
    pub seq: Option<u64>,
    /// The room's commit state.
    pub notify: Arc<watch::Sender<CommitState>>,
}

/// What the writer's queue carries.
#[derive(Debug)]
pub(crate) enum PersistMsg {
    /// A write to commit.
    Job(PersistJob),
    /// Answered once everything queued before it is committed; then the writer exits,
    /// releasing its handle on the store.
    Stop(oneshot::Sender<()>),
}

/// The sending side of the writer's queue.
pub(crate) type PersistSender = mpsc::Sender<PersistMsg>;

/// Starts the writer thread. It runs until every [`PersistSender`] is dropped and everything it
/// was given is committed.
///
/// # Errors
/// Fails only if the operating system cannot start a thread.
pub(crate) fn start(
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    settings: WriterSettings,
) -> std::io::Result<(PersistSender, JoinHandle<()>)> {
    let WriterSettings {
        commit_window,
        checkpoint_bytes,
        queue_len,
    } = settings;
    let (tx, rx) = mpsc::channel(queue_len);
    // One nudge is enough: the checkpointer takes everything journaled when it runs.
    let (nudge, nudged) = std::sync::mpsc::sync_channel(1);
    let checkpointer = {
        let store = store.clone();
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run_checkpoints(&store, &metrics, checkpoint_bytes, &nudged))?
    };
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            Writer::new(store, metrics, commit_window, checkpoint_bytes, nudge).run(rx);
            // The nudge sender is gone: the checkpointer makes its last checkpoint and ends.
            if checkpointer.join().is_err() {
                tracing::error!("the store checkpointer panicked");
            }
        })?;
    Ok((tx, handle))
}

/// The checkpointer's loop: waits for a nudge or [`CHECKPOINT_AGE`], checkpoints when enough is
/// waiting, and retries failed checkpoints with backoff. Ends after a last checkpoint when the
/// writer is gone.
fn run_checkpoints(
    store: &Store,
    metrics: &Metrics,
    checkpoint_bytes: u64,
    nudged: &std::sync::mpsc::Receiver<()>,
) {
    let span = tracing::info_span!("store_checkpoint", path = %store.path().display());
    let _entered = span.enter();
    let mut failed_attempts = 0u64;
    loop {
        let wait = if failed_attempts > 0 {
            retry_delay(failed_attempts)
        } else {
            CHECKPOINT_AGE / 4
        };
        let stopping = matches!(
            nudged.recv_timeout(wait),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
        let backlog = store.journal_backlog();
        let due = backlog.writes > 0
            && (stopping
                || failed_attempts > 0
                || backlog.bytes >= checkpoint_bytes
                || backlog.since.is_some_and(|t| t.elapsed() >= CHECKPOINT_AGE));
        if due {
            failed_attempts = checkpoint_once(store, metrics, failed_attempts);
        }
        // A last checkpoint that failed leaves the journal to the next start, which moves it.
        if stopping {
            break;
        }
    }
}

/// One checkpoint; returns the failed attempts in a row after it (0 when it succeeded).
fn checkpoint_once(store: &Store, metrics: &Metrics, failed_attempts: u64) -> u64 {
    let started = Instant::now();
    match store.checkpoint() {
        Ok(writes) => {
            metrics
                .checkpoint_seconds
                .observe(started.elapsed().as_secs_f64());
            if failed_attempts > 0 {
                tracing::info!(
                    attempts = failed_attempts,
                    "checkpoint succeeded after failures"
                );
            }
            tracing::debug!(writes, "checkpoint");
            0
        }
        Err(error) => {
            metrics.checkpoint_failures.inc();
            tracing::error!(
                %error,
                attempt = failed_attempts + 1,
                "checkpoint failed; the journal keeps every write and it is retried"
            );
            if let Err(error) = store.reopen() {
                tracing::error!(%error, "cannot reopen the store; will retry");
            }
            failed_attempts + 1
        }
    }
}

/// How the writer and its checkpointer work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterSettings {
    /// Extra wait to gather more writes into one commit.
    pub commit_window: Duration,
    /// Journaled bytes that start a checkpoint: bounds the journal on disk and in memory, and
    /// what a start after a crash replays.
    pub checkpoint_bytes: u64,
    /// Writes the queue holds before rooms wait.
    pub queue_len: usize,
}

impl WriterSettings {
    /// The settings `config` gives (the writer's queue holds 4,096 writes).
    pub(crate) fn from_config(config: &crate::config::Config) -> Self {
        WriterSettings {
            commit_window: Duration::from_millis(config.commit_window_ms),
            checkpoint_bytes: config.checkpoint_bytes,
            queue_len: 4096,
        }
    }
}

struct Writer {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    commit_window: Duration,
    checkpoint_bytes: u64,
    failed_attempts: u64,
    /// Wakes the checkpointer when enough is journaled.
    nudge: std::sync::mpsc::SyncSender<()>,
}

impl Writer {
    fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        commit_window: Duration,
        checkpoint_bytes: u64,
        nudge: std::sync::mpsc::SyncSender<()>,
    ) -> Self {
        Writer {
            store,
            metrics,
            commit_window,
            checkpoint_bytes,
            failed_attempts: 0,
            nudge,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<PersistMsg>) {
        let span = tracing::info_span!("store_writer", path = %self.store.path().display());
        let _entered = span.enter();
        let mut pending: Vec<PersistJob> = Vec::new();
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut stopping = false;
        loop {
            if pending.is_empty() {
                for flush in flushes.drain(..) {
                    let _ = flush.send(());
                }
                if stopping {
                    break;
                }
                match rx.blocking_recv() {
                    Some(PersistMsg::Job(job)) => pending.push(job),
                    Some(PersistMsg::Stop(flush)) => {
                        flushes.push(flush);
                        stopping = true;
                        continue;
                    }
                    None => break,
                }
                if !self.commit_window.is_zero() {
                    std::thread::sleep(self.commit_window);
                }
            }
            let mut bytes: usize = pending.iter().map(|j| j.write.payload_len()).sum();
            // A flush ends the batch, so its answer covers exactly what was queued before it.
            while flushes.is_empty() && pending.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES
            {
                match rx.try_recv() {
                    Ok(PersistMsg::Job(job)) => {
                        bytes += job.write.payload_len();
                        pending.push(job);
                    }
                    Ok(PersistMsg::Stop(flush)) => {
                        flushes.push(flush);
                        stopping = true;
                    }
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            match self.store.commit(pending.iter().map(|j| &j.write)) {
                Ok(()) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics
                        .commit_batch_writes
                        .observe(pending.len() as f64);
                    if self.failed_attempts > 0 {
                        tracing::info!(
                            attempts = self.failed_attempts,
                            writes = pending.len(),
                            "store commit succeeded after failures"
                        );
                        self.failed_attempts = 0;
                    }
                    notify_committed(&pending, &self.metrics);
                    pending.clear();
                    if self.store.journal_backlog().bytes >= self.checkpoint_bytes {
                        // Full means a nudge is already waiting.
                        let _ = self.nudge.try_send(());
                    }
                }
                Err(error) => {
                    self.failed_attempts += 1;
                    self.metrics.commit_failures.inc();
                    tracing::error!(
                        %error,
                        attempt = self.failed_attempts,
                        writes = pending.len(),
                        "store commit failed; edits are kept in memory and retried"
                    );
                    notify_failed(&pending, &error.to_string());
                    std::thread::sleep(retry_delay(self.failed_attempts));
                    // The failed batch may be on disk in part or not at all; the retry goes to
                    // a new journal file that supersedes the failed one's tail, every write is
                    // idempotent, and nobody hears *saved* for it before a commit succeeds.
                }
            }
        }
        tracing::debug!("store writer finished");
    }
}

fn retry_delay(attempt: u64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16) as u32;
    FIRST_RETRY_DELAY
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_RETRY_DELAY)
}

fn notify_committed(jobs: &[PersistJob], metrics: &Metrics) {
    for job in jobs {
        if let Write::Snapshot { .. } = job.write {
            metrics.compactions.inc();
        }
        let seq = job.seq;
        job.notify.send_if_modified(|state| {
            let mut changed = state.failure.take().is_some();
            if let Some(seq) = seq
                && seq > state.committed_seq
            {
                state.committed_seq = seq;
                changed = true;
            }
            changed
        });
    }
}

fn notify_failed(jobs: &[PersistJob], reason: &str) {
    let reason: Arc<str> = reason.into();
    let mut notified: Vec<*const watch::Sender<CommitState>> = Vec::new();
    for job in jobs {
        let key = Arc::as_ptr(&job.notify);
        if notified.contains(&key) {
            continue;
        }
        notified.push(key);
        job.notify.send_modify(|state| {
            state.failure = Some(reason.clone());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use crdt::store::StoreOptions;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(1), FIRST_RETRY_DELAY);
        assert_eq!(retry_delay(2), FIRST_RETRY_DELAY * 2);
        assert_eq!(retry_delay(60), MAX_RETRY_DELAY);
    }

    #[tokio::test]
    async fn commits_and_reports_the_highest_sequence_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            Store::open(&dir.path().join("p.redb"), &StoreOptions::default()).expect("open"),
        );
        let metrics = Arc::new(Metrics::new());
        let settings = WriterSettings {
            commit_window: Duration::ZERO,
            checkpoint_bytes: 16 << 20,
            queue_len: 16,
        };
        let (tx, handle) = start(store.clone(), metrics, settings).expect("start");
        let (notify, mut state) = watch::channel(CommitState::default());
        let notify = Arc::new(notify);
        for seq in 1..=3 {
            tx.send(PersistMsg::Job(PersistJob {
                write: Write::Append {
                    room: "r".into(),
                    seq,
                    update: Bytes::from_static(&[0, 0]),
                },
                seq: Some(seq),
                notify: notify.clone(),
            }))
            .await
            .expect("writer running");
        }
        state
            .wait_for(|s| s.committed_seq == 3)
            .await
            .expect("writer running");
        let (stopped, stop) = oneshot::channel();
        tx.send(PersistMsg::Stop(stopped))
            .await
            .expect("writer running");
        stop.await.expect("stop answered");
        drop(tx);
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .expect("join")
            .expect("writer did not panic");
        assert_eq!(store.load("r").expect("load").next_seq, 4);
    }
}
