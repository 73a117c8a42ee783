//! The awareness states of one room, kept by the relay.
//!
//! The relay needs three things from awareness: the current states (for joiners and for
//! query-awareness), the y-protocols rule for which entry wins, and which connection introduced
//! each client id, so that it can announce their removal when that connection closes. `yrs`'
//! `Awareness` couples the table to a `Doc` and a local client of its own; a relay has no local
//! state, so this table is a small map with exactly the y-protocols rules.
//!
//! Everything a client can make the relay hold here is bounded ([`AwarenessLimits`]): entries per
//! message, the size of one state, live states per connection and per room. And a client id
//! belongs to the connection that introduced it for as long as that connection is open: another
//! connection cannot take it over (to impersonate the client, or to remove its state), unless the
//! caller says it may (the same user's new connection, say).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::error::{AwarenessError, ProtocolError};
use crate::protocol::{Cursor, write_var_bytes, write_var_u64};

/// What one room's awareness may hold, and what one message may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwarenessLimits {
    /// Live states in one room; states of new clients beyond it are not taken (and counted).
    /// Also the most entries one message may list: stock clients send back every state they
    /// apply, so a message may name every client of the room, never more.
    pub max_states_per_room: usize,
    /// Live states one connection may hold. A stock client holds one (its own client id).
    pub max_states_per_connection: usize,
    /// The largest state, in bytes of JSON. A cursor with a user's name and colour is a few
    /// hundred.
    pub max_state_bytes: usize,
}

impl Default for AwarenessLimits {
    fn default() -> Self {
        AwarenessLimits {
            max_states_per_room: 4096,
            max_states_per_connection: 8,
            max_state_bytes: 32 << 10,
        }
    }
}

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
/// [`AwarenessError::TooManyEntries`] or [`AwarenessError::StateTooLarge`] past `limits` (checked
/// before anything is allocated for them); [`AwarenessError::Malformed`] with
/// [`ProtocolError::InvalidAwareness`] for invalid JSON, or a codec error for a malformed payload.
pub fn parse_awareness_update<'a>(
    payload: &'a [u8],
    limits: &AwarenessLimits,
) -> Result<Vec<AwarenessEntry<'a>>, AwarenessError> {
    let mut c = Cursor::new(payload);
    // Each entry needs at least a client id, a clock and a string length.
    let count = c.read_count(3)?;
    if count > limits.max_states_per_room {
        return Err(AwarenessError::TooManyEntries {
            count: count as u64,
            max: limits.max_states_per_room,
        });
    }
    // Not pre-sized from the declared count: a few bytes may claim many entries.
    let mut entries = Vec::new();
    for _ in 0..count {
        let client_id = c.read_var_u64()?;
        let clock = c.read_var_u64()?;
        let json = c.read_var_str()?;
        if json.len() > limits.max_state_bytes {
            return Err(AwarenessError::StateTooLarge {
                bytes: json.len(),
                max: limits.max_state_bytes,
            });
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(json).is_err() {
            return Err(ProtocolError::InvalidAwareness.into());
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
    /// Entries not taken: states of another open connection's clients, and new clients past
    /// the room's limit.
    pub ignored: usize,
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
    /// Live entries per owner, so that "does this connection speak for another client" and the
    /// per-connection limit are one lookup, not a scan of the room.
    live_by_owner: HashMap<O, usize>,
    /// Removed client ids, oldest first.
    tombstones: VecDeque<u64>,
    limits: AwarenessLimits,
}

impl<O> Default for AwarenessTable<O> {
    fn default() -> Self {
        Self::with_limits(AwarenessLimits::default())
    }
}

impl<O> AwarenessTable<O> {
    /// An empty table with these limits.
    pub fn with_limits(limits: AwarenessLimits) -> Self {
        AwarenessTable {
            states: HashMap::new(),
            live: 0,
            live_by_owner: HashMap::new(),
            tombstones: VecDeque::new(),
            limits,
        }
    }

    /// The table's limits.
    pub fn limits(&self) -> &AwarenessLimits {
        &self.limits
    }
}

impl<O: Copy + Eq + Hash> AwarenessTable<O> {
    /// An empty table with the default limits.
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
    /// removal at the same clock of a live state. The winner's connection becomes the client
    /// id's owner. Besides:
    /// - a live state belongs to its owner while that connection is open: entries for it from
    ///   any other connection are ignored, whatever their clock (otherwise anyone could take a
    ///   client id over with a higher clock, speak for it, then remove it), unless
    ///   `may_take_over(current owner)` says `owner` may, and `owner` speaks for no other client
    ///   (a client moving to a new connection before its old one closed);
    /// - after the relay itself removed a client (see [`AwarenessTable::remove_owner`]), a state
    ///   at the same clock from a connection that speaks for no other client brings it back, so
    ///   that a client that reconnects is seen at once rather than after its next renewal;
    /// - new clients past the room's limit are ignored.
    ///
    /// # Errors
    /// [`AwarenessError::TooManyStates`] when `owner` would hold more live states than a
    /// connection may; nothing of the message is applied then.
    pub fn apply(
        &mut self,
        entries: &[AwarenessEntry<'_>],
        owner: O,
        now: Instant,
        may_take_over: impl Fn(O) -> bool,
    ) -> Result<AwarenessChanges, AwarenessError> {
        self.check_owner_limit(entries, owner)?;
        let mut changes = AwarenessChanges::default();
        for entry in entries {
            let known = self.states.get(&entry.client_id);
            let current_clock = known.map_or(0, |s| s.clock);
            let was_live = known.is_some_and(|s| s.state.is_some());
            let previous_owner = known.map(|s| s.owner);
            if let Some(current) = known.filter(|s| was_live && s.owner != owner) {
                // Another connection's client: stock clients send back every state they
                // apply, at its clock (so it never wins anyway); a higher clock is a takeover.
                let allowed =
                    may_take_over(current.owner) && !self.owns_other_than(owner, entry.client_id);
                if !allowed {
                    if current_clock < entry.clock {
                        changes.ignored += 1;
                    }
                    continue;
                }
            }
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
            if !was_live && entry.state.is_some() && self.live >= self.limits.max_states_per_room {
                changes.ignored += 1;
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
                    *self.live_by_owner.entry(owner).or_default() += 1;
                    changes.added.push(entry.client_id);
                }
                (true, true) => {
                    if let Some(previous) = previous_owner.filter(|p| *p != owner) {
                        self.owner_lost_one(previous);
                        *self.live_by_owner.entry(owner).or_default() += 1;
                    }
                    changes.updated.push(entry.client_id);
                }
                (true, false) => {
                    self.live -= 1;
                    self.owner_lost_one(previous_owner.unwrap_or(owner));
                    changes.removed.push(entry.client_id);
                    self.remember_tombstone(entry.client_id);
                }
                (false, false) => self.remember_tombstone(entry.client_id),
            }
        }
        Ok(changes)
    }

    /// Refuses a message that would leave `owner` with more live states than a connection may
    /// hold, counting the clients it would add (not yet live, or revived) and remove.
    fn check_owner_limit(
        &self,
        entries: &[AwarenessEntry<'_>],
        owner: O,
    ) -> Result<(), AwarenessError> {
        let max = self.limits.max_states_per_connection;
        let mut held = self.live_by_owner.get(&owner).copied().unwrap_or(0);
        let mut new_ids: Vec<u64> = Vec::new();
        for entry in entries {
            let taken = self
                .states
                .get(&entry.client_id)
                .is_some_and(|s| s.state.is_some());
            if !taken && entry.state.is_some() && !new_ids.contains(&entry.client_id) {
                // `new_ids` stays within `max + 1` entries: the check below ends the loop.
                new_ids.push(entry.client_id);
                held += 1;
                if held > max {
                    return Err(AwarenessError::TooManyStates { max });
                }
            }
        }
        Ok(())
    }

    /// Whether `owner` holds a live state for a client other than `client_id`.
    fn owns_other_than(&self, owner: O, client_id: u64) -> bool {
        let held = self.live_by_owner.get(&owner).copied().unwrap_or(0);
        let holds_this = self
            .states
            .get(&client_id)
            .is_some_and(|s| s.owner == owner && s.state.is_some());
        held > usize::from(holds_this)
    }

    fn owner_lost_one(&mut self, owner: O) {
        if let Some(held) = self.live_by_owner.get_mut(&owner) {
            *held -= 1;
            if *held == 0 {
                self.live_by_owner.remove(&owner);
            }
        }
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
        if !self.live_by_owner.contains_key(&owner) {
            return None;
        }
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
        let mut owners = Vec::new();
        for (&id, s) in self.states.iter_mut() {
            if s.state.is_some() && remove(s) {
                s.state = None;
                s.revivable = true;
                removed.push((id, s.clock));
                owners.push(s.owner);
            }
        }
        if removed.is_empty() {
            return None;
        }
        self.live -= removed.len();
        for owner in owners {
            self.owner_lost_one(owner);
        }
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
        let parsed = parse_awareness_update(&payload, &AwarenessLimits::default()).expect("valid");
        assert_eq!(
            parsed,
            vec![entry(1, 2, Some(r#"{"a":1}"#)), entry(3, 4, None)]
        );

        let bad = encode_awareness_update([entry(1, 2, Some("{not json"))]);
        assert_eq!(
            parse_awareness_update(&bad, &AwarenessLimits::default()),
            Err(AwarenessError::Malformed(ProtocolError::InvalidAwareness))
        );
        // The check skips values without recursion, so deep nesting cannot overflow the stack.
        let deep = "[".repeat(16_000) + &"]".repeat(16_000);
        let nested = encode_awareness_update([entry(1, 2, Some(&deep))]);
        assert_eq!(
            parse_awareness_update(&nested, &AwarenessLimits::default())
                .expect("valid JSON")
                .len(),
            1
        );
    }

    #[test]
    fn higher_clock_wins_and_clock_zero_is_ignored_like_y_protocols() {
        let mut table = AwarenessTable::new();
        let changes = table
            .apply(&[entry(1, 0, Some("{}"))], 'a', t0(), |_| false)
            .expect("within the limits");
        assert_eq!(changes, AwarenessChanges::default());
        let changes = table
            .apply(&[entry(1, 1, Some("{}"))], 'a', t0(), |_| false)
            .expect("within the limits");
        assert_eq!(changes.added, vec![1]);
        let changes = table
            .apply(&[entry(1, 1, Some(r#"{"x":1}"#))], 'a', t0(), |_| false)
            .expect("within the limits");
        assert_eq!(changes, AwarenessChanges::default(), "same clock loses");
        let changes = table
            .apply(&[entry(1, 2, Some(r#"{"x":1}"#))], 'a', t0(), |_| false)
            .expect("within the limits");
        assert_eq!(changes.updated, vec![1]);
        let changes = table
            .apply(&[entry(1, 2, None)], 'a', t0(), |_| false)
            .expect("within the limits");
        assert_eq!(changes.removed, vec![1], "removal at the same clock wins");
        assert!(table.is_empty());
    }

    #[test]
    fn remove_owner_announces_only_its_own_clients() {
        let mut table = AwarenessTable::new();
        table
            .apply(
                &[entry(1, 1, Some("{}")), entry(2, 5, Some("{}"))],
                'a',
                t0(),
                |_| false,
            )
            .expect("within the limits");
        table
            .apply(&[entry(3, 1, Some("{}"))], 'b', t0(), |_| false)
            .expect("within the limits");
        let removal = table.remove_owner('a').expect("a owned clients 1 and 2");
        let mut removed =
            parse_awareness_update(&removal, &AwarenessLimits::default()).expect("valid");
        removed.sort_by_key(|e| e.client_id);
        assert_eq!(removed, vec![entry(1, 1, None), entry(2, 5, None)]);
        assert_eq!(table.len(), 1);
        assert_eq!(table.remove_owner('a'), None);
        let all = table.encode_all().expect("states left");
        assert_eq!(
            parse_awareness_update(&all, &AwarenessLimits::default())
                .expect("valid")
                .len(),
            1
        );
    }

    #[test]
    fn another_connection_cannot_take_a_live_client_over() {
        let mut table = AwarenessTable::new();
        table
            .apply(&[entry(1, 3, Some(r#"{"n":"victim"}"#))], 'a', t0(), |_| {
                false
            })
            .expect("within the limits");
        // A higher clock from another connection: a takeover, ignored, whatever it says.
        let changes = table
            .apply(
                &[entry(1, 1 << 50, Some(r#"{"n":"forged"}"#))],
                'b',
                t0(),
                |_| false,
            )
            .expect("within the limits");
        assert!(changes.is_empty());
        assert_eq!(changes.ignored, 1);
        let changes = table
            .apply(&[entry(1, u64::MAX, None)], 'b', t0(), |_| false)
            .expect("within the limits");
        assert!(changes.is_empty(), "nor can it remove the state");
        assert_eq!(table.remove_owner('b'), None, "b owns nothing");
        // The owner renews at its own next clock, as if nothing happened.
        let changes = table
            .apply(&[entry(1, 4, Some(r#"{"n":"victim"}"#))], 'a', t0(), |_| {
                false
            })
            .expect("within the limits");
        assert_eq!(changes.updated, vec![1]);
        // Once the owner's connection is gone, the client id is free again: a reconnect.
        table.remove_owner('a').expect("a owned client 1");
        let changes = table
            .apply(&[entry(1, 4, Some(r#"{"n":"victim"}"#))], 'c', t0(), |_| {
                false
            })
            .expect("within the limits");
        assert_eq!(changes.added, vec![1]);
    }

    #[test]
    fn the_same_users_new_connection_takes_its_client_over() {
        let mut table = AwarenessTable::new();
        table
            .apply(&[entry(1, 3, Some("{}"))], 'a', t0(), |_| false)
            .expect("within the limits");
        table
            .apply(&[entry(2, 1, Some("{}"))], 'b', t0(), |_| false)
            .expect("within the limits");
        // b speaks for client 2, so it may not take client 1 over, allowed or not.
        let changes = table
            .apply(&[entry(1, 5, Some("{}"))], 'b', t0(), |_| true)
            .expect("within the limits");
        assert_eq!(changes.ignored, 1);
        // c (the same user's new connection, owning nothing) may, with a higher clock.
        let changes = table
            .apply(&[entry(1, 5, Some(r#"{"moved":1}"#))], 'c', t0(), |owner| {
                owner == 'a'
            })
            .expect("within the limits");
        assert_eq!(changes.updated, vec![1]);
        assert_eq!(
            table.remove_owner('a'),
            None,
            "a's leaving removes nothing now"
        );
        assert!(table.remove_owner('c').is_some());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn limits_bound_what_a_message_and_a_connection_can_make_the_table_hold() {
        let limits = AwarenessLimits {
            max_states_per_room: 4,
            max_states_per_connection: 2,
            max_state_bytes: 16,
        };
        let too_many = encode_awareness_update((1..=5).map(|id| entry(id, 1, Some("{}"))));
        assert_eq!(
            parse_awareness_update(&too_many, &limits),
            Err(AwarenessError::TooManyEntries { count: 5, max: 4 })
        );
        // A few bytes claiming a million entries are refused before anything is allocated.
        let mut forged = Vec::new();
        write_var_u64(&mut forged, 1_000_000);
        forged.extend(std::iter::repeat_n(0u8, 3_000_000));
        assert!(matches!(
            parse_awareness_update(&forged, &limits),
            Err(AwarenessError::TooManyEntries { .. })
        ));
        let big = encode_awareness_update([entry(1, 1, Some(r#"{"name":"a long name"}"#))]);
        assert_eq!(
            parse_awareness_update(&big, &limits),
            Err(AwarenessError::StateTooLarge { bytes: 22, max: 16 })
        );

        let mut table = AwarenessTable::with_limits(limits);
        let three: Vec<_> = (1..=3).map(|id| entry(id, 1, Some("{}"))).collect();
        assert_eq!(
            table.apply(&three, 'a', t0(), |_| false),
            Err(AwarenessError::TooManyStates { max: 2 })
        );
        assert!(table.is_empty(), "nothing of a refused message is applied");
        table
            .apply(&three[..2], 'a', t0(), |_| false)
            .expect("two states per connection");
        // Renewals and removals of its own states are always fine.
        table
            .apply(
                &[entry(1, 2, Some("{}")), entry(2, 2, None)],
                'a',
                t0(),
                |_| false,
            )
            .expect("within the limits");
        table
            .apply(
                &[entry(3, 1, Some("{}")), entry(4, 1, Some("{}"))],
                'b',
                t0(),
                |_| false,
            )
            .expect("within the limits");
        assert_eq!(table.len(), 3);
        // The room holds at most four: the fifth client is ignored, not an error.
        table
            .apply(&[entry(2, 3, Some("{}"))], 'a', t0(), |_| false)
            .expect("within the limits");
        let changes = table
            .apply(&[entry(5, 1, Some("{}"))], 'c', t0(), |_| false)
            .expect("within the limits");
        assert_eq!((changes.ignored, table.len()), (1, 4));
    }

    #[test]
    fn an_older_state_sent_back_after_a_removal_stays_removed() {
        let mut table = AwarenessTable::new();
        table
            .apply(&[entry(1, 3, Some(r#"{"n":"a"}"#))], 'a', t0(), |_| false)
            .expect("within the limits");
        table.remove_owner('a').expect("a owned client 1");
        let changes = table
            .apply(&[entry(1, 2, Some(r#"{"n":"old"}"#))], 'b', t0(), |_| false)
            .expect("within the limits");
        assert!(changes.is_empty());
        assert_eq!(table.encode_all(), None);
    }

    #[test]
    fn a_client_that_reconnects_is_back_at_once_with_the_same_clock() {
        let mut table = AwarenessTable::new();
        table
            .apply(&[entry(1, 3, Some(r#"{"n":"a"}"#))], 'a', t0(), |_| false)
            .expect("within the limits");
        table.remove_owner('a').expect("a owned client 1");
        let changes = table
            .apply(&[entry(1, 3, Some(r#"{"n":"a"}"#))], 'c', t0(), |_| false)
            .expect("within the limits");
        assert_eq!(changes.added, vec![1]);
        // Now owned by the new connection.
        assert!(table.remove_owner('a').is_none());
        assert!(table.remove_owner('c').is_some());
    }

    #[test]
    fn another_client_sending_back_a_removed_state_does_not_revive_it() {
        let mut table = AwarenessTable::new();
        table
            .apply(&[entry(1, 3, Some(r#"{"n":"a"}"#))], 'a', t0(), |_| false)
            .expect("within the limits");
        table
            .apply(&[entry(2, 1, Some(r#"{"n":"b"}"#))], 'b', t0(), |_| false)
            .expect("within the limits");
        table.remove_owner('a').expect("a owned client 1");
        let changes = table
            .apply(&[entry(1, 3, Some(r#"{"n":"a"}"#))], 'b', t0(), |_| false)
            .expect("within the limits");
        assert!(changes.is_empty());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_state_the_client_removed_itself_is_not_revived_at_its_old_clock() {
        let mut table = AwarenessTable::new();
        table
            .apply(&[entry(1, 3, Some("{}"))], 'a', t0(), |_| false)
            .expect("within the limits");
        table
            .apply(&[entry(1, 4, None)], 'a', t0(), |_| false)
            .expect("within the limits");
        let changes = table
            .apply(&[entry(1, 4, Some("{}"))], 'b', t0(), |_| false)
            .expect("within the limits");
        assert!(changes.is_empty());
        let changes = table
            .apply(&[entry(1, 3, Some("{}"))], 'b', t0(), |_| false)
            .expect("within the limits");
        assert!(changes.is_empty());
    }

    #[test]
    fn states_not_renewed_go_out_of_date() {
        let mut table = AwarenessTable::new();
        table
            .apply(&[entry(1, 1, Some("{}"))], 'a', t0(), |_| false)
            .expect("within the limits");
        table
            .apply(
                &[entry(2, 1, Some("{}"))],
                'a',
                t0() + Duration::from_secs(20),
                |_| false,
            )
            .expect("within the limits");
        assert_eq!(
            table.remove_outdated(t0() + Duration::from_secs(29), OUTDATED_AFTER),
            None
        );
        let removal = table
            .remove_outdated(t0() + Duration::from_secs(31), OUTDATED_AFTER)
            .expect("client 1 is out of date");
        assert_eq!(
            parse_awareness_update(&removal, &AwarenessLimits::default()).expect("valid"),
            vec![entry(1, 1, None)]
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn tombstones_are_bounded() {
        let mut table = AwarenessTable::new();
        for id in 0..(MAX_TOMBSTONES as u64 * 3) {
            table
                .apply(&[entry(id, 1, Some("{}"))], 'a', t0(), |_| false)
                .expect("within the limits");
            table
                .apply(&[entry(id, 1, None)], 'a', t0(), |_| false)
                .expect("within the limits");
        }
        assert!(table.states.len() <= MAX_TOMBSTONES);
        assert!(table.is_empty());
    }
}
