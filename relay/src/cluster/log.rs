//! The owner's log: one task per owned room that turns the room's writes into JetStream
//! publishes, keeps the lease alive, and reports "committed through N" back to the room only
//! after JetStream acknowledged the publish that covers N.
//!
//! - **Group commits.** While one publish is in flight, the room's updates queue up; the next
//!   publish carries all of them merged into one update.
//! - **Fencing.** Every publish carries `Nats-Expected-Last-Subject-Sequence` (the last sequence
//!   this owner knows). A refusal (`WrongLastSequence`) means another relay has appended: this
//!   relay no longer owns the room, and [`OwnerLog::lost`] fires.
//! - **Retries.** A publish that times out or finds no stream leader is retried with the same
//!   `Nats-Msg-Id` and the same expected sequence, so it is stored once (JetStream answers a
//!   duplicate with the original sequence).
//! - **Compaction and deletion** are rollups (`Nats-Rollup: sub`) with the expected sequence, so a
//!   snapshot never erases an edit it does not contain. A payload over [`MAX_INLINE_PAYLOAD`]
//!   goes to the Object Store, with an empty message pointing at it.
//! - **The lease** is renewed every third of its time. Past two thirds without a renewal the
//!   task holds back commit reports (no *saved*); at its end the room is lost.
//! - **The cache.** Each acknowledged publish is written to the local store under its stream
//!   sequence, so the cache never holds less than "acknowledged through its last key".

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use crdt::store::Write;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Cluster;
use super::lease::{self, Lease, LeaseError};
use super::names::{
    HEADER_DELETED, HEADER_OBJECT, HEADER_ROLLUP, HEADER_ROOM, MAX_INLINE_PAYLOAD, RoomKey,
};
use crate::clock::sleep_until_opt;
use crate::persist::{CommitState, PersistJob, PersistMsg, PersistSender};

/// Most room writes merged into one publish.
const MAX_BATCH_WRITES: usize = 512;
/// First delay before retrying a failed publish; doubled up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Delay before retrying a failed renewal.
const RENEW_RETRY_DELAY: Duration = Duration::from_millis(300);
/// The state of an empty document (v1): what a deletion rolls the subject up to.
const EMPTY_STATE_V1: &[u8] = &[0, 0];

/// One write of the room, as the store writer would get it.
#[derive(Debug)]
pub(crate) struct LogJob {
    /// The write (sequence numbers are the room's own).
    pub(crate) write: Write,
    /// The room sequence number it completes.
    pub(crate) seq: Option<u64>,
    /// Where that number is reported once acknowledged.
    pub(crate) notify: Arc<watch::Sender<CommitState>>,
}

/// Where the owner's log starts.
pub(crate) struct LogStart {
    /// The lease, and when the request that acquired it was sent.
    pub(crate) lease: Lease,
    pub(crate) lease_since: Instant,
    /// The subject's last stream sequence.
    pub(crate) last_seq: u64,
    /// What the cache held that the stream lacks.
    pub(crate) republish: Option<Bytes>,
    /// The object holding the current snapshot.
    pub(crate) snapshot_object: Option<String>,
    /// A snapshot for the cache to catch up to the stream (stream sequence, state).
    pub(crate) cache_snapshot: Option<(u64, Arc<[u8]>)>,
}

/// The room's handle on its log task. Dropping it ends the task, which then gives the lease up.
pub(crate) struct OwnerLog {
    tx: mpsc::Sender<LogJob>,
    lost: CancellationToken,
}

impl OwnerLog {
    /// Starts the log task of `room` (its lease and position in `start`).
    pub(crate) fn start(
        cluster: Arc<Cluster>,
        persist: PersistSender,
        room: Arc<str>,
        start: LogStart,
    ) -> OwnerLog {
        let (tx, rx) = mpsc::channel(1024);
        let lost = CancellationToken::new();
        let key = RoomKey::of(&room);
        let (cache_notify, _) = watch::channel(CommitState::default());
        let mut pending = VecDeque::new();
        if let Some(update) = start.republish {
            pending.push_back(LogJob {
                write: Write::Append {
                    room: room.clone(),
                    seq: 0,
                    update,
                },
                seq: None,
                notify: Arc::new(watch::channel(CommitState::default()).0),
            });
        }
        let task = LogTask {
            subject: key.subject(),
            key,
            cluster: cluster.clone(),
            persist,
            room: room.clone(),
            lease: start.lease,
            renewed_at: start.lease_since,
            last_seq: start.last_seq,
            pending,
            held: Vec::new(),
            counter: 0,
            snapshot_object: start.snapshot_object,
            objects_since_rollup: Vec::new(),
            lost: lost.clone(),
            cache_notify: Arc::new(cache_notify),
        };
        if let Some((through_seq, state)) = start.cache_snapshot {
            task.cache(Write::Snapshot {
                room: room.clone(),
                through_seq,
                state,
            });
        }
        let span = tracing::info_span!("room_log", room = %room);
        cluster.tasks.spawn(task.run(rx).instrument(span));
        OwnerLog { tx, lost }
    }

    /// Hands a write to the log.
    ///
    /// # Errors
    /// The job back when the log task has ended (the room was lost).
    pub(crate) async fn send(&self, job: LogJob) -> Result<(), LogJob> {
        self.tx.send(job).await.map_err(|e| e.0)
    }

    /// Cancelled when the room is lost: its lease was taken or expired, or an append was
    /// refused because someone else appended.
    pub(crate) fn lost(&self) -> &CancellationToken {
        &self.lost
    }
}

/// One publish, retried unchanged until acknowledged.
struct Batch {
    /// The update (or whole state, for a rollup).
    payload: Bytes,
    rollup: bool,
    /// A deletion: the rollup resets the document.
    deletion: bool,
    msg_id: String,
    /// Room sequence numbers it completes, and where to report them.
    covers: Vec<(Arc<watch::Sender<CommitState>>, u64)>,
    attempts: u32,
}

/// Why a publish failed.
enum PublishFailure {
    /// Someone else appended: the room is lost.
    Fenced,
    /// Anything else: retry the same publish.
    Retry(String),
}

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct LogTask {
    cluster: Arc<Cluster>,
    persist: PersistSender,
    room: Arc<str>,
    key: RoomKey,
    subject: String,
    lease: Lease,
    /// When the request of the last successful acquisition or renewal was sent.
    renewed_at: Instant,
    /// The subject's last sequence as this owner knows it.
    last_seq: u64,
    pending: VecDeque<LogJob>,
    /// Commit reports held back while the lease is overdue.
    held: Vec<(Arc<watch::Sender<CommitState>>, u64)>,
    /// Publishes of this ownership, for message ids.
    counter: u64,
    snapshot_object: Option<String>,
    /// Objects of large non-rollup publishes, deleted once a rollup covers them.
    objects_since_rollup: Vec<String>,
    lost: CancellationToken,
    /// The cache writes' commit reports (nobody waits on them).
    cache_notify: Arc<watch::Sender<CommitState>>,
}

impl LogTask {
    async fn run(mut self, mut rx: mpsc::Receiver<LogJob>) {
        let lease_time = self.cluster.lease;
        let mut batch: Option<Batch> = None;
        let mut publishing: Option<Pending<Result<PublishAck, PublishFailure>>> = None;
        let mut retry_at: Option<Instant> = None;
        let mut renewing: Option<Pending<(Instant, Result<Lease, LeaseError>)>> = None;
        let mut renew_at = self.renewed_at + lease_time / 3;
        let mut open = true;
        loop {
            // Checked before anything else (a process that was paused past its lease wakes up
            // with timers and jobs all ready): never start a publish on an expired lease.
            if Instant::now() >= self.renewed_at + lease_time {
                tracing::warn!("the lease expired without a renewal");
                self.lose();
                return;
            }
            if batch.is_none() {
                batch = self.next_batch();
            }
            if let Some(current) = &batch
                && publishing.is_none()
                && retry_at.is_none()
            {
                publishing = Some(self.publish(current));
            }
            if !open && batch.is_none() {
                break;
            }
            let expires_at = self.renewed_at + lease_time;
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(expires_at) => {
                    tracing::warn!("the lease expired without a renewal");
                    self.lose();
                    return;
                }
                result = async { publishing.as_mut().expect("guarded").await }, if publishing.is_some() => {
                    publishing = None;
                    let mut done = batch.take().expect("a publish has its batch");
                    match result {
                        Ok(ack) => self.acknowledged(done, ack),
                        Err(PublishFailure::Fenced) => {
                            tracing::warn!(expected = self.last_seq, "another relay appended to the room's log: it is no longer ours");
                            self.lose();
                            return;
                        }
                        Err(PublishFailure::Retry(reason)) => {
                            done.attempts += 1;
                            let delay = FIRST_RETRY_DELAY
                                .saturating_mul(1 << done.attempts.min(5))
                                .min(MAX_RETRY_DELAY);
                            tracing::warn!(%reason, attempts = done.attempts, "publish failed; retrying it unchanged");
                            self.cluster.metrics.error("cluster_publish_retry");
                            retry_at = Some(Instant::now() + delay);
                            batch = Some(done);
                        }
                    }
                }
                () = sleep_until_opt(retry_at), if retry_at.is_some() => retry_at = None,
                () = tokio::time::sleep_until(renew_at), if renewing.is_none() => {
                    renewing = Some(self.renew());
                }
                (sent, result) = async { renewing.as_mut().expect("guarded").await }, if renewing.is_some() => {
                    renewing = None;
                    match result {
                        Ok(lease) => {
                            self.lease = lease;
                            self.renewed_at = sent;
                            renew_at = sent + lease_time / 3;
                            for (notify, seq) in std::mem::take(&mut self.held) {
                                report(&notify, seq);
                            }
                        }
                        Err(LeaseError::Nats(reason)) => {
                            tracing::warn!(%reason, "cannot renew the lease; retrying");
                            self.cluster.metrics.error("cluster_lease_renewal_failed");
                            renew_at = Instant::now() + RENEW_RETRY_DELAY;
                        }
                        Err(_) => {
                            tracing::warn!("the lease was taken over");
                            self.lose();
                            return;
                        }
                    }
                }
                // Last: with `biased`, a flood of writes must not starve the acknowledgements and
                // renewals above.
                job = rx.recv(), if open => match job {
                    Some(job) => self.pending.push_back(job),
                    None => open = false,
                },
            }
        }
        // A renewal in flight changes the revision the release must expect.
        if let Some(renewing) = renewing
            && let (_, Ok(lease)) = renewing.await
        {
            self.lease = lease;
        }
        // The room unloaded with everything acknowledged: hand the room over at once.
        match lease::release(&self.cluster, &self.key, self.lease).await {
            Ok(()) => tracing::debug!("lease released"),
            Err(error) => tracing::warn!(%error, "cannot release the lease; it expires by itself"),
        }
    }

    fn lose(&mut self) {
        self.cluster.metrics.error("cluster_room_lost");
        self.lost.cancel();
    }

    /// Whether the lease is fresh enough to answer *saved* (less than two thirds of it used).
    fn lease_is_fresh(&self) -> bool {
        Instant::now() < self.renewed_at + self.cluster.lease * 2 / 3
    }

    /// The next publish from the queued writes (see [`take_batch`]).
    fn next_batch(&mut self) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        self.counter += 1;
        let msg_id = format!("{}.{}.{}", self.key.key, self.lease.epoch, self.counter);
        take_batch(&mut self.pending, &self.room, msg_id)
    }

    /// The publish of `batch` (object upload first when it is large), as a future.
    fn publish(&self, batch: &Batch) -> Pending<Result<PublishAck, PublishFailure>> {
        let cluster = self.cluster.clone();
        let subject = self.subject.clone();
        let room = self.room.clone();
        let expected = self.last_seq;
        let payload = batch.payload.clone();
        let msg_id = batch.msg_id.clone();
        let rollup = batch.rollup;
        let deletion = batch.deletion;
        Box::pin(async move {
            let mut message = PublishMessage::build()
                .message_id(&msg_id)
                .expected_last_subject_sequence(expected)
                .header(HEADER_ROOM, &*room);
            if rollup {
                message = message.header(HEADER_ROLLUP, "sub");
            }
            if deletion {
                message = message.header(HEADER_DELETED, "1");
            }
            if payload.len() > MAX_INLINE_PAYLOAD {
                let mut reader = payload.as_ref();
                cluster
                    .objects
                    .put(msg_id.as_str(), &mut reader)
                    .await
                    .map_err(|e| PublishFailure::Retry(format!("object store: {e}")))?;
                message = message
                    .header(HEADER_OBJECT, msg_id.as_str())
                    .payload(Bytes::new());
            } else {
                message = message.payload(payload);
            }
            let classify = |kind: PublishErrorKind, reason: String| match kind {
                PublishErrorKind::WrongLastSequence => PublishFailure::Fenced,
                _ => PublishFailure::Retry(reason),
            };
            let ack = cluster
                .js
                .send_publish(subject, message)
                .await
                .map_err(|e| classify(e.kind(), e.to_string()))?;
            ack.await.map_err(|e| classify(e.kind(), e.to_string()))
        })
    }

    /// A publish was acknowledged: remember the sequence, write the cache, report commits.
    fn acknowledged(&mut self, batch: Batch, ack: PublishAck) {
        if ack.duplicate {
            tracing::debug!(
                seq = ack.sequence,
                "a retried publish had been stored already"
            );
        }
        self.last_seq = ack.sequence;
        let large = batch.payload.len() > MAX_INLINE_PAYLOAD;
        if batch.rollup {
            if batch.deletion {
                self.cache(Write::Delete {
                    room: self.room.clone(),
                });
            }
            self.cache(Write::Snapshot {
                room: self.room.clone(),
                through_seq: ack.sequence,
                state: Arc::from(batch.payload.as_ref()),
            });
            // Objects the rollup replaced are no longer referenced.
            let mut stale = std::mem::take(&mut self.objects_since_rollup);
            stale.extend(self.snapshot_object.take());
            if large {
                self.snapshot_object = Some(batch.msg_id.clone());
            }
            if !stale.is_empty() {
                let objects = self.cluster.objects.clone();
                self.cluster.tasks.spawn(async move {
                    for name in stale {
                        if let Err(error) = objects.delete(&name).await {
                            tracing::debug!(%error, name, "cannot delete a replaced snapshot object");
                        }
                    }
                });
            }
        } else {
            if large {
                self.objects_since_rollup.push(batch.msg_id.clone());
            }
            self.cache(Write::Append {
                room: self.room.clone(),
                seq: ack.sequence,
                update: batch.payload.clone(),
            });
        }
        let fresh = self.lease_is_fresh();
        for (notify, seq) in batch.covers {
            if fresh {
                report(&notify, seq);
            } else {
                self.held.push((notify, seq));
            }
        }
        if !fresh {
            tracing::warn!("lease overdue: holding back *saved* until it is renewed");
        }
    }

    /// Queues a write of the local cache (keyed by stream sequence).
    fn cache(&self, write: Write) {
        let job = PersistJob {
            write,
            seq: None,
            notify: self.cache_notify.clone(),
        };
        // The cache is a second copy: when the writer is busy, skipping a write only makes the
        // next load replay more of the stream.
        if let Err(error) = self.persist.try_send(PersistMsg::Job(job)) {
            tracing::debug!(%error, "cache write skipped");
        }
    }

    /// The renewal of the lease, as a future giving when its request was sent.
    fn renew(&self) -> Pending<(Instant, Result<Lease, LeaseError>)> {
        let cluster = self.cluster.clone();
        let key = self.key.clone();
        let current = self.lease;
        Box::pin(async move {
            let sent = Instant::now();
            (sent, lease::renew(&cluster, &key, current).await)
        })
    }
}

/// Takes the next publish from the queued writes: a rollup if a compaction or deletion is
/// queued (it covers everything before it), else the queued updates merged (up to the inline
/// payload size). Updates that cannot be merged are published one by one.
fn take_batch(pending: &mut VecDeque<LogJob>, room: &Arc<str>, msg_id: String) -> Option<Batch> {
    if pending.is_empty() {
        return None;
    }
    let last_reset = pending
        .iter()
        .rposition(|job| matches!(job.write, Write::Snapshot { .. } | Write::Delete { .. }));
    if let Some(index) = last_reset {
        let mut covers = Vec::new();
        let mut drained: Vec<LogJob> = pending.drain(..=index).collect();
        let reset = drained.pop().expect("drained through the index");
        // Updates before a compaction are in its snapshot: they are committed with it.
        for job in drained {
            if let Some(seq) = job.seq {
                covers.push((job.notify, seq));
            }
        }
        let (payload, deletion, seq) = match reset.write {
            Write::Snapshot {
                through_seq, state, ..
            } => (Bytes::from_owner(state), false, Some(through_seq)),
            Write::Delete { .. } => (Bytes::from_static(EMPTY_STATE_V1), true, reset.seq),
            Write::Append { .. } => unreachable!("found as a snapshot or deletion"),
        };
        if let Some(seq) = seq.or(reset.seq) {
            covers.push((reset.notify, seq));
        }
        return Some(Batch {
            payload,
            rollup: true,
            deletion,
            msg_id,
            covers,
            attempts: 0,
        });
    }
    let mut updates = Vec::new();
    let mut bytes = 0;
    let mut covers = Vec::new();
    while let Some(job) = pending.front() {
        let Write::Append { update, .. } = &job.write else {
            break;
        };
        if !updates.is_empty()
            && (bytes + update.len() > MAX_INLINE_PAYLOAD || updates.len() >= MAX_BATCH_WRITES)
        {
            break;
        }
        bytes += update.len();
        updates.push(update.clone());
        let job = pending.pop_front().expect("peeked");
        if let Some(seq) = job.seq {
            covers.push((job.notify, seq));
        }
    }
    let payload = match crdt::doc::merge_updates_v1(&updates) {
        Ok(merged) => Bytes::from(merged),
        Err(error) => {
            // Publish them one at a time instead: put all but the first back.
            tracing::warn!(%error, "cannot merge updates; publishing them one by one");
            let first = updates[0].clone();
            let first_cover = covers.first().cloned();
            for (update, cover) in updates.into_iter().zip(covers).skip(1).rev() {
                pending.push_front(LogJob {
                    write: Write::Append {
                        room: room.clone(),
                        seq: cover.1,
                        update,
                    },
                    seq: Some(cover.1),
                    notify: cover.0,
                });
            }
            covers = first_cover.into_iter().collect();
            first
        }
    };
    Some(Batch {
        payload,
        rollup: false,
        deletion: false,
        msg_id,
        covers,
        attempts: 0,
    })
}

/// Reports room sequence `seq` as committed.
fn report(notify: &watch::Sender<CommitState>, seq: u64) {
    notify.send_if_modified(|state| {
        let before = (state.committed_seq, state.failure.is_some());
        state.committed_seq = state.committed_seq.max(seq);
        state.failure = None;
        before != (state.committed_seq, false)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdt::doc::RoomDoc;
    use yrs::{GetString, ReadTxn, Text, Transact};

    fn room() -> Arc<str> {
        "room".into()
    }

    fn append(notify: &Arc<watch::Sender<CommitState>>, seq: u64, update: Bytes) -> LogJob {
        LogJob {
            write: Write::Append {
                room: room(),
                seq,
                update,
            },
            seq: Some(seq),
            notify: notify.clone(),
        }
    }

    /// Edits of one client, each as its own update.
    fn edits(words: &[&str]) -> (yrs::Doc, Vec<Bytes>) {
        let doc = yrs::Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        let updates = words
            .iter()
            .map(|word| {
                let mut txn = doc.transact_mut();
                let len = text.len(&txn);
                text.insert(&mut txn, len, word);
                Bytes::from(txn.encode_update_v1())
            })
            .collect();
        (doc, updates)
    }

    fn text_of(update: &[u8]) -> String {
        let mut doc = RoomDoc::new();
        doc.apply_update_v1(update).expect("applies");
        doc.yrs()
            .get_or_insert_text("t")
            .get_string(&doc.yrs().transact())
    }

    #[test]
    fn queued_updates_become_one_merged_publish_that_covers_the_last_sequence() {
        let notify = Arc::new(watch::channel(CommitState::default()).0);
        let (_, updates) = edits(&["a", "b", "c"]);
        let mut pending: VecDeque<LogJob> = (1..=3)
            .map(|seq| append(&notify, seq, updates[seq as usize - 1].clone()))
            .collect();
        let batch = take_batch(&mut pending, &room(), "id".into()).expect("a batch");
        assert!(pending.is_empty());
        assert!(!batch.rollup);
        assert_eq!(text_of(&batch.payload), "abc");
        let covered: Vec<u64> = batch.covers.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(covered, vec![1, 2, 3]);
    }

    #[test]
    fn a_queued_compaction_replaces_the_updates_before_it_with_a_rollup() {
        let notify = Arc::new(watch::channel(CommitState::default()).0);
        let (doc, updates) = edits(&["a", "b", "c"]);
        let state: Arc<[u8]> = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default())
            .into();
        let mut pending = VecDeque::from([
            append(&notify, 1, updates[0].clone()),
            append(&notify, 2, updates[1].clone()),
            LogJob {
                write: Write::Snapshot {
                    room: room(),
                    through_seq: 2,
                    state,
                },
                seq: None,
                notify: notify.clone(),
            },
            append(&notify, 3, updates[2].clone()),
        ]);
        let rollup = take_batch(&mut pending, &room(), "one".into()).expect("a rollup");
        assert!(rollup.rollup && !rollup.deletion);
        assert_eq!(text_of(&rollup.payload), "abc", "the snapshot's state");
        assert_eq!(rollup.covers.last().map(|(_, seq)| *seq), Some(2));
        let rest = take_batch(&mut pending, &room(), "two".into()).expect("the update after");
        assert!(!rest.rollup);
        assert_eq!(
            rest.covers.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            vec![3]
        );
        assert!(take_batch(&mut pending, &room(), "three".into()).is_none());
    }

    #[test]
    fn a_deletion_rolls_up_to_an_empty_document_in_the_new_numbering() {
        let old = Arc::new(watch::channel(CommitState::default()).0);
        let new = Arc::new(watch::channel(CommitState::default()).0);
        let (_, updates) = edits(&["gone"]);
        let mut pending = VecDeque::from([
            append(&old, 5, updates[0].clone()),
            LogJob {
                write: Write::Delete { room: room() },
                seq: Some(1),
                notify: new.clone(),
            },
        ]);
        let batch = take_batch(&mut pending, &room(), "id".into()).expect("a rollup");
        assert!(batch.rollup && batch.deletion);
        assert_eq!(&batch.payload[..], EMPTY_STATE_V1);
        let (notify, seq) = batch.covers.last().expect("covers the deletion");
        assert!(Arc::ptr_eq(notify, &new));
        assert_eq!(*seq, 1);
    }

    #[test]
    fn a_batch_stops_at_the_inline_payload_size() {
        let notify = Arc::new(watch::channel(CommitState::default()).0);
        let big = "x".repeat(MAX_INLINE_PAYLOAD / 2 + 1);
        let (_, updates) = edits(&[&big, &big, "y"]);
        let mut pending: VecDeque<LogJob> = (1..=3)
            .map(|seq| append(&notify, seq, updates[seq as usize - 1].clone()))
            .collect();
        let first = take_batch(&mut pending, &room(), "a".into()).expect("a batch");
        assert_eq!(first.covers.len(), 1);
        let second = take_batch(&mut pending, &room(), "b".into()).expect("a batch");
        assert_eq!(
            second.covers.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn a_commit_report_only_moves_forward_and_clears_a_failure() {
        let (notify, state) = watch::channel(CommitState {
            committed_seq: 4,
            failure: Some("down".into()),
        });
        report(&notify, 3);
        assert_eq!(state.borrow().committed_seq, 4);
        assert!(state.borrow().failure.is_none());
        report(&notify, 9);
        assert_eq!(state.borrow().committed_seq, 9);
    }
}
