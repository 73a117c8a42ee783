//! Why the relay closes a connection, and the close code each reason maps to: the one table of
//! close codes (PROTOCOL.md's "Closing" section says the same, for clients).

/// Why the relay closes a connection; each maps to a WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The relay is shutting down (1001).
    Shutdown,
    /// The client said nothing, not even a pong, for too long (1001).
    ClientTimeout,
    /// The client ended its long-polling session (1000).
    ClientClosed,
    /// The connection's token expired (4401): get a new token before reconnecting.
    TokenExpired,
    /// The document was deleted (4404): do not reconnect to it.
    DocumentDeleted,
    /// A malformed message, or an update or state vector that does not decode (1002).
    ProtocolError,
    /// A text frame (1003).
    TextFrame,
    /// A frame or message over the size limit (1009).
    TooBig,
    /// The relay failed internally, e.g. it could not load the room (1011).
    Internal,
    /// The connection fell too far behind (1013).
    SlowReader,
    /// The relay or the document is at a limit (`--max-rooms`, `--max-room-connections`) after
    /// the connection was accepted (1013): try again later.
    Overloaded,
    /// Cluster mode: this relay no longer owns the document (its lease was lost or taken, or a
    /// forwarded connection's link to the owner broke) (1013): reconnect and resync.
    OwnerChanged,
    /// An update would grow the document past its size limit (1009).
    DocumentTooLarge,
    /// An awareness message over a limit: too many entries, a state too large, or more client
    /// ids than one connection may hold (1008).
    AwarenessLimit,
    /// A Hocuspocus stateless message over `--max-stateless-bytes` (1008).
    StatelessLimit,
}

impl CloseReason {
    /// Every reason, once. The test `every_variant_is_in_all` fails to compile when a variant
    /// is added, as a reminder to list it here too.
    pub(crate) const ALL: [CloseReason; 15] = [
        CloseReason::Shutdown,
        CloseReason::ClientTimeout,
        CloseReason::ClientClosed,
        CloseReason::TokenExpired,
        CloseReason::DocumentDeleted,
        CloseReason::ProtocolError,
        CloseReason::TextFrame,
        CloseReason::TooBig,
        CloseReason::Internal,
        CloseReason::SlowReader,
        CloseReason::Overloaded,
        CloseReason::OwnerChanged,
        CloseReason::DocumentTooLarge,
        CloseReason::AwarenessLimit,
        CloseReason::StatelessLimit,
    ];

    /// The WebSocket close code.
    pub(crate) fn code(self) -> u16 {
        match self {
            CloseReason::ClientClosed => 1000,
            CloseReason::Shutdown | CloseReason::ClientTimeout => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::TextFrame => 1003,
            CloseReason::AwarenessLimit | CloseReason::StatelessLimit => 1008,
            CloseReason::TooBig | CloseReason::DocumentTooLarge => 1009,
            CloseReason::Internal => 1011,
            CloseReason::SlowReader | CloseReason::Overloaded | CloseReason::OwnerChanged => 1013,
            CloseReason::TokenExpired => 4401,
            CloseReason::DocumentDeleted => 4404,
        }
    }

    /// The reason whose [`CloseReason::as_str`] is `name` (a close forwarded between relays).
    pub(crate) fn from_name(name: &str) -> Option<CloseReason> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }

    /// The close frame's reason text, and the metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "shutdown",
            CloseReason::ClientTimeout => "client_timeout",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TextFrame => "text_frame",
            CloseReason::TooBig => "too_big",
            CloseReason::DocumentTooLarge => "document_too_large",
            CloseReason::AwarenessLimit => "awareness_limit",
            CloseReason::StatelessLimit => "stateless_limit",
            CloseReason::Internal => "internal_error",
            CloseReason::SlowReader => "slow_reader",
            CloseReason::Overloaded => "overloaded",
            CloseReason::OwnerChanged => "owner_changed",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::DocumentDeleted => "document_deleted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_in_all() {
        for reason in CloseReason::ALL {
            // Exhaustive: a new variant stops this from compiling until it is added here and
            // to `ALL`.
            match reason {
                CloseReason::Shutdown
                | CloseReason::ClientTimeout
                | CloseReason::ClientClosed
                | CloseReason::TokenExpired
                | CloseReason::DocumentDeleted
                | CloseReason::ProtocolError
                | CloseReason::TextFrame
                | CloseReason::TooBig
                | CloseReason::Internal
                | CloseReason::SlowReader
                | CloseReason::Overloaded
                | CloseReason::OwnerChanged
                | CloseReason::DocumentTooLarge
                | CloseReason::AwarenessLimit
                | CloseReason::StatelessLimit => {}
            }
        }
        let mut names: Vec<_> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            CloseReason::ALL.len(),
            "each reason once, with its own name"
        );
    }

    /// The codes of PROTOCOL.md's "Closing" table, with their row text.
    fn protocol_table() -> Vec<(u16, String)> {
        let protocol = include_str!("../../PROTOCOL.md");
        let section = protocol
            .split("## Closing")
            .nth(1)
            .expect("PROTOCOL.md has a Closing section");
        section
            .lines()
            .take_while(|line| !line.starts_with("## "))
            .filter_map(|line| {
                let mut cells = line.split('|').map(str::trim).skip(1);
                let code = cells.next()?.parse().ok()?;
                Some((code, line.to_owned()))
            })
            .collect()
    }

    #[test]
    fn every_reason_is_found_by_its_name() {
        for reason in CloseReason::ALL {
            assert_eq!(CloseReason::from_name(reason.as_str()), Some(reason));
        }
        assert_eq!(CloseReason::from_name("nonsense"), None);
    }

    #[test]
    fn protocol_md_lists_every_close_code_the_relay_sends_and_no_other() {
        let table = protocol_table();
        for reason in CloseReason::ALL {
            assert!(
                table.iter().any(|(code, _)| *code == reason.code()),
                "PROTOCOL.md's Closing table has no row for {} ({reason:?})",
                reason.code()
            );
        }
        for (code, row) in &table {
            let sent = CloseReason::ALL.iter().any(|r| r.code() == *code);
            assert!(
                sent || row.contains("never sent"),
                "PROTOCOL.md lists {code}, which the relay never sends, without saying so: {row}"
            );
        }
    }
}
