//! The awareness states of one room, kept by the relay.
//!
//! The relay needs three things from awareness: the current states (for joiners and for
//! query-awareness), the y-protocols rule for which entry wins, and which connection introduced
//! each client id, so that it can announce their removal when that connection closes. `yrs`'
//! `Awareness` couples the table to a `Doc` and a local client of its own; a relay has no local
//! state, so this table is a small map with exactly the y-protocols rules.

use std::collections::HashMap;

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
    state: Box<str>,
    owner: O,
}

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

/// The live awareness states of a room, with the owner (a connection id) that last set each one.
#[derive(Debug, Clone)]
pub struct AwarenessTable<O> {
    states: HashMap<u64, ClientState<O>>,
}

impl<O> Default for AwarenessTable<O> {
    fn default() -> Self {
        AwarenessTable {
            states: HashMap::new(),
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
        self.states.len()
    }

    /// Whether there are no live states.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Applies parsed entries from `owner` with the y-protocols rules: an entry wins when its clock
    /// is higher than the known one (0 for unknown clients), or when it is a removal at the same
    /// clock. Removed clients are forgotten at once: the relay has no use for their clocks once
    /// the removal has been forwarded.
    pub fn apply(&mut self, entries: &[AwarenessEntry<'_>], owner: O) -> AwarenessChanges {
        let mut changes = AwarenessChanges::default();
        for entry in entries {
            let known = self.states.get(&entry.client_id);
            let current_clock = known.map_or(0, |s| s.clock);
            let wins = current_clock < entry.clock
                || (current_clock == entry.clock && entry.state.is_none() && known.is_some());
            if !wins {
                continue;
            }
            match entry.state {
                None => {
                    if self.states.remove(&entry.client_id).is_some() {
                        changes.removed.push(entry.client_id);
                    }
                }
                Some(json) => {
                    let previous = self.states.insert(
                        entry.client_id,
                        ClientState {
                            clock: entry.clock,
                            state: json.into(),
                            owner,
                        },
                    );
                    match previous {
                        None => changes.added.push(entry.client_id),
                        Some(_) => changes.updated.push(entry.client_id),
                    }
                }
            }
        }
        changes
    }

    /// Encodes every live state as one awareness update payload, or `None` if there is none.
    pub fn encode_all(&self) -> Option<Vec<u8>> {
        if self.states.is_empty() {
            return None;
        }
        Some(encode_awareness_update(self.states.iter().map(
            |(&id, s)| AwarenessEntry {
                client_id: id,
                clock: s.clock,
                state: Some(&s.state),
            },
        )))
    }

    /// Removes every state that `owner` set last and returns the awareness update payload that
    /// announces the removals (clock + 1, state `null`), or `None` if it owned nothing.
    pub fn remove_owner(&mut self, owner: O) -> Option<Vec<u8>> {
        let mut removed = Vec::new();
        self.states.retain(|&id, s| {
            if s.owner == owner {
                removed.push((id, s.clock + 1));
                false
            } else {
                true
            }
        });
        if removed.is_empty() {
            return None;
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
        let changes = table.apply(&[entry(1, 0, Some("{}"))], 'a');
        assert_eq!(changes, AwarenessChanges::default());
        let changes = table.apply(&[entry(1, 1, Some("{}"))], 'a');
        assert_eq!(changes.added, vec![1]);
        let changes = table.apply(&[entry(1, 1, Some(r#"{"x":1}"#))], 'a');
        assert_eq!(changes, AwarenessChanges::default(), "same clock loses");
        let changes = table.apply(&[entry(1, 2, Some(r#"{"x":1}"#))], 'a');
        assert_eq!(changes.updated, vec![1]);
        let changes = table.apply(&[entry(1, 2, None)], 'a');
        assert_eq!(changes.removed, vec![1], "removal at the same clock wins");
        assert!(table.is_empty());
    }

    #[test]
    fn remove_owner_announces_only_its_own_clients() {
        let mut table = AwarenessTable::new();
        table.apply(&[entry(1, 1, Some("{}")), entry(2, 5, Some("{}"))], 'a');
        table.apply(&[entry(3, 1, Some("{}"))], 'b');
        // Client 2 moved to connection b (a reconnect racing the old socket's close).
        table.apply(&[entry(2, 6, Some("{}"))], 'b');
        let removal = table.remove_owner('a').expect("a owned client 1");
        assert_eq!(
            parse_awareness_update(&removal).expect("valid"),
            vec![entry(1, 2, None)]
        );
        assert_eq!(table.len(), 2);
        assert_eq!(table.remove_owner('a'), None);
        let all = table.encode_all().expect("states left");
        assert_eq!(parse_awareness_update(&all).expect("valid").len(), 2);
    }
}
