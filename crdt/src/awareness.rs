//! The awareness states of one room, kept by the relay.
//!
//! The relay needs three things from awareness: the current states (for joiners and for
//! query-awareness), the y-protocols rule for which entry wins, and which connection introduced
//! each client id, so that it can announce their removal when that connection closes. `yrs`'
//! `Awareness` couples the table to a `Doc` and a local client of its own; a relay has no local
//! state, so this table is a small map with exactly the y-protocols rules.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::error::ProtocolError;
use crate::protocol::{Cursor, write_var_bytes, write_var_u64};

/// The JSON text of a removed state.
const NULL_STATE: &str = "null";

/// One entry of an awareness update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry<'a> {
    /// The Yjs client id.
    pub client_id: u64,
    /// The entry's clock; a higher clock wins.
    pub clock: u64,
    /// The state as JSON text; `None` when the client was removed (`null`).
    pub state: Option<&'a str>,
}

/// Parses an awareness update payload, checking that every state is valid JSON, so nothing
/// malformed is kept or forwarded to clients that would choke on it. The check skips over values
/// without building them (and without recursion), so its cost is linear in the input.
///
/// # Errors
/// [`ProtocolError::InvalidAwareness`] for invalid JSON, or a codec error for a malformed
/// payload.
pub fn parse_awareness_update(payload: &[u8]) -> Result<Vec<AwarenessEntry<'_>>, ProtocolError> {
    let mut c = Cursor::new(payload);
    // Each entry needs at least a client id, a clock and a string length.
    let count = c.read_count(3)?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let client_id = c.read_var_u64()?;
        let clock = c.read_var_u64()?;
        let json = c.read_var_str()?;
        if serde_json::from_str::<serde::de::IgnoredAny>(json).is_err() {
            return Err(ProtocolError::InvalidAwareness);
        }
        let state = (json != NULL_STATE).then_some(json);
        entries.push(AwarenessEntry {
            client_id,
            clock,
            state,
        });
    }
    Ok(entries)
}

/// Encodes an awareness update payload (without the message header).
pub fn encode_awareness_update<'a>(
    entries: impl IntoIterator<Item = AwarenessEntry<'a>>,
) -> Vec<u8> {
    let entries: Vec<_> = entries.into_iter().collect();
    let mut out = Vec::with_capacity(1 + entries.len() * 24);
    write_var_u64(&mut out, entries.len() as u64);
    for e in entries {
        write_var_u64(&mut out, e.client_id);
        write_var_u64(&mut out, e.clock);
        write_var_bytes(&mut out, e.state.unwrap_or(NULL_STATE).as_bytes());
    }
    out
}

#[derive(Debug, Clone)]
struct ClientState<O> {
    clock: u64,
    /// `None` for a removed client, kept as a tombstone with its clock.
    state: Option<Box<str>>,
    owner: O,
    /// When the entry last won.
    updated_at: Instant,
    /// The relay removed it (its connection closed, or it went silent), not the client: the
    /// same clock brings it back, so a client that reconnects is visible at once.
    revivable: bool,
}

/// How long a state lives without a renewal, as in y-protocols (clients renew every 15 s).
pub const OUTDATED_AFTER: Duration = Duration::from_secs(30);

/// How many removed clients keep their clock. Stock providers send every awareness change they
/// apply back to the relay, so a removed client's old state can come back from another
/// connection after the removal; the tombstone's higher clock is what makes the relay ignore it.
/// Beyond this many, the oldest tombstones are forgotten.
const MAX_TOMBSTONES: usize = 1024;

/// What applying an awareness update changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AwarenessChanges {
    /// Client ids seen for the first time.
    pub added: Vec<u64>,
    /// Client ids whose state was replaced.
    pub updated: Vec<u64>,
    /// Client ids that were removed.
    pub removed: Vec<u64>,
}

impl AwarenessChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// The awareness states of a room, with the owner (a connection id) that last set each one.
#[derive(Debug, Clone)]
pub struct AwarenessTable<O> {
    states: HashMap<u64, ClientState<O>>,
    /// Live (non-tombstone) entries.
    live: usize,
    /// Removed client ids, oldest first.
    tombstones: VecDeque<u64>,
}

impl<O> Default for AwarenessTable<O> {
    fn default() -> Self {
        AwarenessTable {
            states: HashMap::new(),
            live: 0,
            tombstones: VecDeque::new(),
        }
    }
}

impl<O: Copy + PartialEq> AwarenessTable<O> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live states.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether there are no live states.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Applies parsed entries from `owner` at time `now` with the y-protocols rules: an entry wins
    /// when its clock is higher than the known one (0 for unknown clients), or when it is a
    /// removal at the same clock of a live state. One addition: after the relay itself removed a
    /// client (see [`AwarenessTable::remove_owner`]), a state at the same clock from a connection
    /// that speaks for no other client brings it back, so that a client that reconnects is seen
    /// at once rather than after its next renewal. The winner's connection becomes the client
    /// id's owner.
    pub fn apply(
        &mut self,
        entries: &[AwarenessEntry<'_>],
        owner: O,
        now: Instant,
    ) -> AwarenessChanges {
        let mut changes = AwarenessChanges::default();
        for entry in entries {
            let known = self.states.get(&entry.client_id);
            let current_clock = known.map_or(0, |s| s.clock);
            let was_live = known.is_some_and(|s| s.state.is_some());
            // Only a connection that speaks for no other client may revive one: a reconnecting
            // client's first message, not another client sending back what it had applied.
            let revives = known.is_some_and(|s| s.revivable && s.state.is_none())
                && entry.state.is_some()
                && !self.owns_other_than(owner, entry.client_id);
            let wins = current_clock < entry.clock
                || (current_clock == entry.clock && entry.state.is_none() && was_live)
                || (current_clock == entry.clock && revives);
            if !wins {
                continue;
            }
            self.states.insert(
                entry.client_id,
                ClientState {
                    clock: entry.clock,
                    state: entry.state.map(Into::into),
                    owner,
                    updated_at: now,
                    revivable: false,
                },
            );
            match (was_live, entry.state.is_some()) {
                (false, true) => {
                    self.live += 1;
                    changes.added.push(entry.client_id);
                }
                (true, true) => changes.updated.push(entry.client_id),
                (true, false) => {
                    self.live -= 1;
                    changes.removed.push(entry.client_id);
                    self.remember_tombstone(entry.client_id);
                }
                (false, false) => self.remember_tombstone(entry.client_id),
            }
        }
        changes
    }

    /// Whether `owner` holds a live state for a client other than `client_id`.
    fn owns_other_than(&self, owner: O, client_id: u64) -> bool {
        self.states
            .iter()
            .any(|(&id, s)| id != client_id && s.owner == owner && s.state.is_some())
    }

    fn remember_tombstone(&mut self, client_id: u64) {
        self.tombstones.push_back(client_id);
        while self.tombstones.len() > MAX_TOMBSTONES {
            let oldest = self.tombstones.pop_front().expect("not empty");
            // It may have come back to life since; only forget it if it is still removed.
            if self.states.get(&oldest).is_some_and(|s| s.state.is_none()) {
                self.states.remove(&oldest);
            }
        }
    }

    /// Encodes every live state as one awareness update payload, or `None` if there is none.
    pub fn encode_all(&self) -> Option<Vec<u8>> {
        if self.live == 0 {
            return None;
        }
        Some(encode_awareness_update(self.states.iter().filter_map(
            |(&id, s)| {
                s.state.as_deref().map(|state| AwarenessEntry {
                    client_id: id,
                    clock: s.clock,
                    state: Some(state),
                })
            },
        )))
    }

    /// Removes every live state that `owner` set last and returns the awareness update payload
    /// that announces the removals, or `None` if it owned nothing. The removal keeps the state's
    /// clock, as y-protocols does for remote clients: receivers apply a removal at the clock they
    /// know.
    pub fn remove_owner(&mut self, owner: O) -> Option<Vec<u8>> {
        self.remove_where(|s| s.owner == owner)
    }

    /// Removes every live state not renewed since `now - max_age` (a client that went away
    /// without a word on a connection that is still open, or a state some other client sent
    /// back after its owner left) and returns the payload announcing the removals.
    pub fn remove_outdated(&mut self, now: Instant, max_age: Duration) -> Option<Vec<u8>> {
        self.remove_where(|s| now.saturating_duration_since(s.updated_at) > max_age)
    }

    fn remove_where(&mut self, mut remove: impl FnMut(&ClientState<O>) -> bool) -> Option<Vec<u8>> {
        let mut removed = Vec::new();
        for (&id, s) in self.states.iter_mut() {
            if s.state.is_some() && remove(s) {
                s.state = None;
                s.revivable = true;
                removed.push((id, s.clock));
            }
        }
        if removed.is_empty() {
            return None;
        }
        self.live -= removed.len();
        for &(id, _) in &removed {
            self.remember_tombstone(id);
        }
        Some(encode_awareness_update(removed.into_iter().map(
            |(client_id, clock)| AwarenessEntry {
                client_id,
                clock,
                state: None,
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now)
    }

    fn entry(client_id: u64, clock: u64, state: Option<&str>) -> AwarenessEntry<'_> {
        AwarenessEntry {
            client_id,
            clock,
            state,
        }
    }

    #[test]
    fn parse_round_trips_and_checks_json() {
        let payload = encode_awareness_update([entry(1, 2, Some(r#"{"a":1}"#)), entry(3, 4, None)]);
        let parsed = parse_awareness_update(&payload).expect("valid");
        assert_eq!(
            parsed,
            vec![entry(1, 2, Some(r#"{"a":1}"#)), entry(3, 4, None)]
        );

        let bad = encode_awareness_update([entry(1, 2, Some("{not json"))]);
        assert_eq!(
            parse_awareness_update(&bad),
            Err(ProtocolError::InvalidAwareness)
        );
        // The check skips values without recursion, so deep nesting cannot overflow the stack.
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let nested = encode_awareness_update([entry(1, 2, Some(&deep))]);
        assert_eq!(
            parse_awareness_update(&nested).expect("valid JSON").len(),
            1
        );
    }

    #[test]
    fn higher_clock_wins_and_clock_zero_is_ignored_like_y_protocols() {
        let mut table = AwarenessTable::new();
        let changes = table.apply(&[entry(1, 0, Some("{}"))], 'a', t0());
        assert_eq!(changes, AwarenessChanges::default());
        let changes = table.apply(&[entry(1, 1, Some("{}"))], 'a', t0());
        assert_eq!(changes.added, vec![1]);
        let changes = table.apply(&[entry(1, 1, Some(r#"{"x":1}"#))], 'a', t0());
        assert_eq!(changes, AwarenessChanges::default(), "same clock loses");
        let changes = table.apply(&[entry(1, 2, Some(r#"{"x":1}"#))], 'a', t0());
        assert_eq!(changes.updated, vec![1]);
        let changes = table.apply(&[entry(1, 2, None)], 'a', t0());
        assert_eq!(changes.removed, vec![1], "removal at the same clock wins");
        assert!(table.is_empty());
    }

    #[test]
    fn remove_owner_announces_only_its_own_clients() {
        let mut table = AwarenessTable::new();
        table.apply(
            &[entry(1, 1, Some("{}")), entry(2, 5, Some("{}"))],
            'a',
            t0(),
        );
        table.apply(&[entry(3, 1, Some("{}"))], 'b', t0());
        // Client 2 moved to connection b (a reconnect racing the old socket's close).
        table.apply(&[entry(2, 6, Some("{}"))], 'b', t0());
        let removal = table.remove_owner('a').expect("a owned client 1");
        assert_eq!(
            parse_awareness_update(&removal).expect("valid"),
            vec![entry(1, 1, None)]
        );
        assert_eq!(table.len(), 2);
        assert_eq!(table.remove_owner('a'), None);
        let all = table.encode_all().expect("states left");
        assert_eq!(parse_awareness_update(&all).expect("valid").len(), 2);
    }

    #[test]
    fn an_older_state_sent_back_after_a_removal_stays_removed() {
        let mut table = AwarenessTable::new();
        table.apply(&[entry(1, 3, Some(r#"{"n":"a"}"#))], 'a', t0());
        table.remove_owner('a').expect("a owned client 1");
        let changes = table.apply(&[entry(1, 2, Some(r#"{"n":"old"}"#))], 'b', t0());
        assert!(changes.is_empty());
        assert_eq!(table.encode_all(), None);
    }

    #[test]
    fn a_client_that_reconnects_is_back_at_once_with_the_same_clock() {
        let mut table = AwarenessTable::new();
        table.apply(&[entry(1, 3, Some(r#"{"n":"a"}"#))], 'a', t0());
        table.remove_owner('a').expect("a owned client 1");
        let changes = table.apply(&[entry(1, 3, Some(r#"{"n":"a"}"#))], 'c', t0());
        assert_eq!(changes.added, vec![1]);
        // Now owned by the new connection.
        assert!(table.remove_owner('a').is_none());
        assert!(table.remove_owner('c').is_some());
    }

    #[test]
    fn another_client_sending_back_a_removed_state_does_not_revive_it() {
        let mut table = AwarenessTable::new();
        table.apply(&[entry(1, 3, Some(r#"{"n":"a"}"#))], 'a', t0());
        table.apply(&[entry(2, 1, Some(r#"{"n":"b"}"#))], 'b', t0());
        table.remove_owner('a').expect("a owned client 1");
        let changes = table.apply(&[entry(1, 3, Some(r#"{"n":"a"}"#))], 'b', t0());
        assert!(changes.is_empty());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_state_the_client_removed_itself_is_not_revived_at_its_old_clock() {
        let mut table = AwarenessTable::new();
        table.apply(&[entry(1, 3, Some("{}"))], 'a', t0());
        table.apply(&[entry(1, 4, None)], 'a', t0());
        let changes = table.apply(&[entry(1, 4, Some("{}"))], 'b', t0());
        assert!(changes.is_empty());
        let changes = table.apply(&[entry(1, 3, Some("{}"))], 'b', t0());
        assert!(changes.is_empty());
    }

    #[test]
    fn states_not_renewed_go_out_of_date() {
        let mut table = AwarenessTable::new();
        table.apply(&[entry(1, 1, Some("{}"))], 'a', t0());
        table.apply(
            &[entry(2, 1, Some("{}"))],
            'a',
            t0() + Duration::from_secs(20),
        );
        assert_eq!(
            table.remove_outdated(t0() + Duration::from_secs(29), OUTDATED_AFTER),
            None
        );
        let removal = table
            .remove_outdated(t0() + Duration::from_secs(31), OUTDATED_AFTER)
            .expect("client 1 is out of date");
        assert_eq!(
            parse_awareness_update(&removal).expect("valid"),
            vec![entry(1, 1, None)]
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn tombstones_are_bounded() {
        let mut table = AwarenessTable::new();
        for id in 0..(MAX_TOMBSTONES as u64 * 3) {
            table.apply(&[entry(id, 1, Some("{}"))], 'a', t0());
            table.apply(&[entry(id, 1, None)], 'a', t0());
        }
        assert!(table.states.len() <= MAX_TOMBSTONES);
        assert!(table.is_empty());
    }
}
