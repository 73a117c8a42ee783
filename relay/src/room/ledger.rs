//! The room's ledger: the one owner of its sequence numbers, of what is committed, and of who is
//! waiting for which commit.
//!
//! Every change to the document (an update from a connection or from the API, a deletion) gets
//! the next sequence number when it is applied. The store writer commits in order and reports
//! "committed through N"; the ledger then says which save requests and API requests that makes
//! true. A save request is answered *saved* only once everything its connection relies on is
//! committed: the updates it sent (new to the room or not), and everything the room had applied
//! when it joined (its sync step 2 leaves out what the greeting's state vector covers, even if
//! the client holds those edits itself).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::ConnId;

/// Identifies a request from the HTTP API (an update, a deletion) for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RequestId(pub(crate) u64);

/// The answer to a save request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SaveAnswer {
    /// Everything the connection relies on is committed.
    Saved,
    /// It is not, and may never be: a commit failed (`reason`), or an update of the
    /// connection's was refused.
    Error(Arc<str>),
}

/// A save answer for one connection's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SaveReply {
    /// The connection that asked.
    pub(crate) conn: ConnId,
    /// Its request id.
    pub(crate) request_id: u64,
    /// The answer.
    pub(crate) answer: SaveAnswer,
}

/// What a commit (or a failed one) made true.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    /// Save requests answered, in request order per connection.
    pub(crate) saves: Vec<SaveReply>,
    /// API requests whose change is committed.
    pub(crate) requests: Vec<RequestId>,
    /// Whether updates (not only a deletion) were newly committed.
    pub(crate) updates_committed: bool,
}

#[derive(Debug)]
struct PendingSave {
    request_id: u64,
    /// Answered once this sequence number is committed.
    seq: u64,
    /// Whether a save error was already sent for it (sent once per request).
    error_sent: bool,
}

#[derive(Debug, Default)]
struct ConnLedger {
    /// The highest sequence number the connection relies on.
    relies_on: u64,
    /// Save requests waiting for their commit, in request order.
    saves: VecDeque<PendingSave>,
    /// An update of the connection's was refused: "everything it sent" can never be saved.
    refused: Option<Arc<str>>,
}

/// Sequence numbers, commits and waiters of one room.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// The number the next change gets.
    next_seq: u64,
    /// Every change up to this one is committed.
    committed: u64,
    /// The first number of an update in the current numbering: 1, or 2 after a deletion
    /// (whose own commit is number 1).
    first_update_seq: u64,
    /// Set while commits fail; cleared by the next commit.
    failure: Option<Arc<str>>,
    conns: HashMap<ConnId, ConnLedger>,
    /// API requests waiting for a commit, in sequence order.
    requests: VecDeque<(u64, RequestId)>,
    /// The updates applied but not committed, in order, so that a document `yrs` broke can be
    /// rebuilt from the store and these.
    uncommitted: VecDeque<(u64, Bytes)>,
}

/// The sequence number a deletion takes in the numbering it starts.
pub(crate) const DELETION_SEQ: u64 = 1;

impl Ledger {
    /// A ledger for a room whose store holds changes up to `next_seq - 1`, all committed.
    pub(crate) fn new(next_seq: u64) -> Self {
        Ledger {
            next_seq,
            committed: next_seq - 1,
            first_update_seq: 1,
            failure: None,
            conns: HashMap::new(),
            requests: VecDeque::new(),
            uncommitted: VecDeque::new(),
        }
    }

    /// The highest sequence number given out.
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Changes applied but not yet committed.
    pub(crate) fn uncommitted_count(&self) -> u64 {
        self.last_seq() - self.committed
    }

    /// Whether everything applied is committed.
    pub(crate) fn is_settled(&self) -> bool {
        self.committed == self.last_seq()
    }

    /// Whether a deletion is applied but not yet committed (the store still holds the deleted
    /// document then).
    pub(crate) fn deletion_pending(&self) -> bool {
        self.first_update_seq > DELETION_SEQ && self.committed < DELETION_SEQ
    }

    /// The uncommitted updates with a sequence number of at least `from`, in order.
    pub(crate) fn uncommitted_from(&self, from: u64) -> impl Iterator<Item = &Bytes> {
        self.uncommitted
            .iter()
            .filter(move |(seq, _)| *seq >= from)
            .map(|(_, update)| update)
    }

    /// A connection joins: it relies on everything applied so far.
    pub(crate) fn join(&mut self, conn: ConnId) {
        self.conns.insert(
            conn,
            ConnLedger {
                relies_on: self.last_seq(),
                ..ConnLedger::default()
            },
        );
    }

    /// A connection leaves; its waiting save requests go with it.
    pub(crate) fn leave(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// Records an update applied to the document (sent by `conn`, or by the API when `None`)
    /// and returns its sequence number.
    pub(crate) fn append(&mut self, conn: Option<ConnId>, update: Bytes) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.uncommitted.push_back((seq, update));
        if let Some(state) = conn.and_then(|c| self.conns.get_mut(&c)) {
            state.relies_on = seq;
        }
        seq
    }

    /// `conn` sent something the room already had: its content came with changes applied
    /// before, which may still be uncommitted.
    pub(crate) fn relies_on_everything(&mut self, conn: ConnId) {
        let last = self.last_seq();
        if let Some(state) = self.conns.get_mut(&conn) {
            state.relies_on = state.relies_on.max(last);
        }
    }

    /// An update of `conn`'s was refused for `reason`: its later save requests get an error.
    pub(crate) fn refused(&mut self, conn: ConnId, reason: &Arc<str>) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.refused = Some(reason.clone());
        }
    }

    /// A save request from `conn`: answered now, or `None` once its commit comes (a commit
    /// failure in the meantime is reported once).
    pub(crate) fn save_request(&mut self, conn: ConnId, request_id: u64) -> Option<SaveAnswer> {
        let committed = self.committed;
        let failure = self.failure.clone();
        let state = self.conns.get_mut(&conn)?;
        if let Some(reason) = &state.refused {
            return Some(SaveAnswer::Error(reason.clone()));
        }
        if state.relies_on <= committed {
            return Some(SaveAnswer::Saved);
        }
        state.saves.push_back(PendingSave {
            request_id,
            seq: state.relies_on,
            error_sent: failure.is_some(),
        });
        failure.map(SaveAnswer::Error)
    }

    /// An API request for the change `seq` (or, for an update the room already had, for
    /// everything applied so far when `seq` is `None`): `true` when it is already committed,
    /// otherwise it is answered by a later [`Ledger::commit`].
    pub(crate) fn wait_for(&mut self, seq: Option<u64>, request: RequestId) -> bool {
        let seq = seq.unwrap_or(self.last_seq());
        if seq <= self.committed {
            return true;
        }
        self.requests.push_back((seq, request));
        false
    }

    /// The store committed everything up to `committed` (`failure`: the last attempt failed,
    /// with this reason; `None`: it succeeded).
    pub(crate) fn commit(&mut self, committed: u64, failure: Option<Arc<str>>) -> Settled {
        let mut settled = Settled::default();
        if committed > self.committed {
            settled.updates_committed = committed >= self.first_update_seq;
            self.committed = committed;
            while self
                .uncommitted
                .front()
                .is_some_and(|(s, _)| *s <= committed)
            {
                self.uncommitted.pop_front();
            }
        }
        let new_failure = failure.is_some();
        self.failure = failure;
        for (&conn, state) in &mut self.conns {
            while let Some(save) = state.saves.front() {
                if save.seq > self.committed {
                    break;
                }
                let save = state.saves.pop_front().expect("front exists");
                settled.saves.push(SaveReply {
                    conn,
                    request_id: save.request_id,
                    answer: SaveAnswer::Saved,
                });
            }
            if let Some(reason) = &self.failure.clone().filter(|_| new_failure) {
                for save in state.saves.iter_mut().filter(|s| !s.error_sent) {
                    save.error_sent = true;
                    settled.saves.push(SaveReply {
                        conn,
                        request_id: save.request_id,
                        answer: SaveAnswer::Error(reason.clone()),
                    });
                }
            }
        }
        while let Some(&(seq, request)) = self.requests.front() {
            if seq > self.committed {
                break;
            }
            self.requests.pop_front();
            settled.requests.push(request);
        }
        settled
    }

    /// The document is deleted: a new numbering starts, in which the deletion is number
    /// [`DELETION_SEQ`], uncommitted until the store reports it. Returns the API requests that
    /// were waiting for changes of the deleted document (answered as deleted). Connections are
    /// expected to be gone (the room closes them).
    pub(crate) fn delete(&mut self) -> Vec<RequestId> {
        self.conns.clear();
        self.uncommitted.clear();
        self.failure = None;
        self.next_seq = DELETION_SEQ + 1;
        self.first_update_seq = DELETION_SEQ + 1;
        self.committed = 0;
        self.requests.drain(..).map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);

    fn update() -> Bytes {
        Bytes::from_static(&[0, 0])
    }

    fn saved(conn: ConnId, request_id: u64) -> SaveReply {
        SaveReply {
            conn,
            request_id,
            answer: SaveAnswer::Saved,
        }
    }

    #[test]
    fn a_save_is_answered_when_the_commit_covering_the_connections_updates_comes() {
        let mut ledger = Ledger::new(1);
        ledger.join(A);
        assert_eq!(
            ledger.save_request(A, 1),
            Some(SaveAnswer::Saved),
            "nothing sent"
        );
        assert_eq!(ledger.append(Some(A), update()), 1);
        assert_eq!(ledger.append(Some(A), update()), 2);
        assert_eq!(ledger.save_request(A, 2), None);
        assert_eq!(ledger.uncommitted_count(), 2);
        assert!(
            ledger.commit(1, None).saves.is_empty(),
            "update 2 is not committed"
        );
        let settled = ledger.commit(2, None);
        assert_eq!(settled.saves, vec![saved(A, 2)]);
        assert!(settled.updates_committed);
        assert!(ledger.is_settled());
    }

    #[test]
    fn a_duplicate_or_a_join_relies_on_everything_applied() {
        let mut ledger = Ledger::new(1);
        ledger.join(A);
        ledger.append(Some(A), update());
        // B joins after update 1 was applied: its sync step 2 leaves it out.
        ledger.join(B);
        assert_eq!(ledger.save_request(B, 7), None);
        ledger.append(Some(A), update());
        // A sends something the room already had (update 2, say, from another tab).
        ledger.leave(B);
        ledger.join(B);
        ledger.relies_on_everything(B);
        assert_eq!(ledger.save_request(B, 8), None);
        assert!(ledger.commit(1, None).saves.is_empty());
        assert_eq!(ledger.commit(2, None).saves, vec![saved(B, 8)]);
    }

    #[test]
    fn a_failed_commit_is_reported_once_then_the_retry_saves() {
        let mut ledger = Ledger::new(1);
        ledger.join(A);
        ledger.append(Some(A), update());
        assert_eq!(ledger.save_request(A, 1), None);
        let failed = ledger.commit(0, Some("disk full".into()));
        assert_eq!(
            failed.saves,
            vec![SaveReply {
                conn: A,
                request_id: 1,
                answer: SaveAnswer::Error("disk full".into()),
            }]
        );
        assert!(ledger.commit(0, Some("disk full".into())).saves.is_empty());
        // A request while commits fail gets the error at once, and its answer later.
        assert_eq!(
            ledger.save_request(A, 2),
            Some(SaveAnswer::Error("disk full".into()))
        );
        assert_eq!(ledger.commit(1, None).saves, vec![saved(A, 1), saved(A, 2)]);
    }

    #[test]
    fn a_refused_update_makes_every_later_save_an_error() {
        let mut ledger = Ledger::new(1);
        ledger.join(A);
        ledger.refused(A, &"read-only".into());
        assert_eq!(
            ledger.save_request(A, 1),
            Some(SaveAnswer::Error("read-only".into()))
        );
    }

    #[test]
    fn api_requests_wait_for_their_change_and_are_dropped_by_a_deletion() {
        let mut ledger = Ledger::new(5);
        let seq = ledger.append(None, update());
        assert_eq!(seq, 5);
        assert!(!ledger.wait_for(Some(seq), RequestId(1)));
        assert!(
            !ledger.wait_for(None, RequestId(2)),
            "an unchanged update waits too"
        );
        assert!(ledger.commit(4, None).requests.is_empty());
        assert_eq!(
            ledger.commit(5, None).requests,
            vec![RequestId(1), RequestId(2)]
        );
        assert!(ledger.wait_for(None, RequestId(3)), "everything committed");

        ledger.append(None, update());
        assert!(!ledger.wait_for(Some(6), RequestId(4)));
        assert_eq!(ledger.delete(), vec![RequestId(4)]);
    }

    #[test]
    fn a_deletion_is_uncommitted_until_the_store_reports_it() {
        let mut ledger = Ledger::new(10);
        ledger.join(A);
        ledger.append(Some(A), update());
        ledger.delete();
        assert!(ledger.deletion_pending());
        assert!(!ledger.is_settled());
        assert_eq!(ledger.uncommitted_count(), 1);
        assert_eq!(
            ledger.uncommitted_from(0).count(),
            0,
            "the old updates are gone"
        );
        // The old numbering's commit reports go to the old document, not here; the deletion's
        // own commit is number 1 and is no update.
        let settled = ledger.commit(DELETION_SEQ, None);
        assert!(!settled.updates_committed);
        assert!(ledger.is_settled() && !ledger.deletion_pending());
        ledger.join(B);
        assert_eq!(ledger.append(Some(B), update()), 2);
        assert!(ledger.commit(2, None).updates_committed);
    }

    #[test]
    fn uncommitted_updates_are_kept_until_their_commit() {
        let mut ledger = Ledger::new(1);
        for _ in 0..3 {
            ledger.append(None, update());
        }
        ledger.commit(2, None);
        assert_eq!(ledger.uncommitted_from(0).count(), 1);
        assert_eq!(ledger.uncommitted_from(4).count(), 0);
    }
}
