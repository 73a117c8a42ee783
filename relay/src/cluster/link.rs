//! The cluster hop's contract: how a relay that does not own a room reaches the owner, over core
//! NATS subjects under `yrelay.node.<node>.` (node names made into subject tokens). Both sides
//! use these names: [`crate::cluster_remote`] (the forwarding relay) and
//! [`crate::cluster_owner`] (the owner).
//!
//! Subjects of node `N` (`P` = `yrelay.node.<N>`):
//! - `P.ping`: answered with the node name (start-up refuses a second relay with the same name).
//! - `P.open`: a forwarding relay opens a link (headers: room, link id, its node, access,
//!   principal, and `Relay-Stateless` when the client takes Hocuspocus stateless messages);
//!   answered once the connection joined the room, or with `Relay-Error`.
//! - `P.in.<link>`: frames of the client and its Hocuspocus stateless messages, numbered
//!   together in order (`Relay-Seq` 1, 2, ...), its leaving, pings.
//! - `P.link.<link>`: frames of the room for the client, in order, the close, pings (on the
//!   forwarding relay's prefix).
//! - `P.api`: a document API request for a room `N` owns.
//!
//! Pings carry the number of messages their sender has sent (`Relay-Seq`): core NATS may drop a
//! message, and a lost last message has no successor to reveal the gap, so a ping that counts
//! more than arrived is a gap too ([`missed_messages`]).
//!
//! A gap in either direction's sequence, or a link silent past [`LinkTimes::silence`], closes the
//! client's connection with 1013 so that it resyncs on reconnect: a frame is never dropped
//! silently.

use std::time::Duration;

use async_nats::HeaderMap;

use super::names::node_prefix;

/// How often each side of a link says it is alive ([`LinkTimes::ping`]) and how long a silent
/// link lives ([`LinkTimes::silence`]); past that its client is closed (1013), or, on the owner,
/// it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkTimes {
    pub(crate) ping: Duration,
    pub(crate) silence: Duration,
}

impl LinkTimes {
    /// The silence allowed is the room lease (`--lease-secs`), within 3 to 10 s, with three
    /// pings in it. An owner that died loses its rooms when its lease lapses; the forwarding
    /// relay notices within the same time, so a client is not held on a dead link after another
    /// relay could have taken the room (with a 3 s lease, a 10 s silence was the longest part
    /// of a takeover).
    pub(crate) fn for_lease(lease: Duration) -> Self {
        let silence = lease.clamp(Duration::from_secs(3), Duration::from_secs(10));
        LinkTimes {
            ping: silence / 3,
            silence,
        }
    }
}
/// How long opening a link or an API request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) const H_ROOM: &str = "Relay-Room";
pub(crate) const H_LINK: &str = "Relay-Link";
pub(crate) const H_FROM: &str = "Relay-From";
pub(crate) const H_ACCESS: &str = "Relay-Access";
pub(crate) const H_PRINCIPAL: &str = "Relay-Principal";
pub(crate) const H_SEQ: &str = "Relay-Seq";
pub(crate) const H_CTL: &str = "Relay-Ctl";
pub(crate) const H_CLOSE: &str = "Relay-Close";
pub(crate) const H_API: &str = "Relay-Api";
pub(crate) const H_ERROR: &str = "Relay-Error";
/// On an open: the client speaks Hocuspocus and takes the room's stateless messages.
pub(crate) const H_STATELESS: &str = "Relay-Stateless";

/// What a link message is (header [`H_CTL`]).
pub(crate) const CTL_FRAME: &str = "frame";
/// A Hocuspocus stateless message of the client (the payload is what the room broadcasts: its
/// type and string), numbered with the frames.
pub(crate) const CTL_STATELESS: &str = "stateless";
pub(crate) const CTL_LEAVE: &str = "leave";
pub(crate) const CTL_CLOSE: &str = "close";
pub(crate) const CTL_PING: &str = "ping";

/// The headers of one link message: what it is, its sequence number (frames only) and, for a
/// close, why (a close reason's name).
pub(crate) fn link_headers(ctl: &'static str, seq: Option<u64>, close: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(H_CTL, ctl);
    if let Some(seq) = seq {
        headers.insert(H_SEQ, seq.to_string().as_str());
    }
    if let Some(reason) = close {
        headers.insert(H_CLOSE, reason);
    }
    headers
}

/// Whether a ping saying its sender has sent `sent` messages reveals that some never arrived,
/// `expected` being the number of the next message this side waits for. Both sides publish
/// frames and pings from one connection to one subject, which NATS delivers in order, so
/// everything counted by the ping has arrived before it unless it was lost.
pub(crate) fn missed_messages(sent: Option<u64>, expected: u64) -> bool {
    sent.is_some_and(|sent| sent >= expected)
}

/// A header's value, if the message has it.
pub(crate) fn header<'a>(headers: &'a Option<HeaderMap>, name: &str) -> Option<&'a str> {
    headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// Where a forwarding relay asks node `owner` to open a link.
pub(crate) fn open_subject(owner: &str) -> String {
    format!("{}.open", node_prefix(owner))
}

/// Where the client's frames of `link` go, on the owner `owner`.
pub(crate) fn to_owner_subject(owner: &str, link: &str) -> String {
    format!("{}.in.{link}", node_prefix(owner))
}

/// Where the room's frames of `link` go, on the forwarding relay `forwarder`.
pub(crate) fn to_forwarder_subject(forwarder: &str, link: &str) -> String {
    format!("{}.link.{link}", node_prefix(forwarder))
}

/// Where document API requests for rooms of `owner` go.
pub(crate) fn api_subject(owner: &str) -> String {
    format!("{}.api", node_prefix(owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_counting_more_than_arrived_is_a_gap() {
        // Nothing sent, nothing expected beyond the first.
        assert!(!missed_messages(Some(0), 1));
        // Three sent, three arrived (the next expected is 4).
        assert!(!missed_messages(Some(3), 4));
        // Three sent, two arrived: the third was lost.
        assert!(missed_messages(Some(3), 3));
        // A ping without a count (an older relay) proves nothing.
        assert!(!missed_messages(None, 1));
    }

    #[test]
    fn a_link_may_be_silent_as_long_as_the_lease_within_bounds() {
        let secs = Duration::from_secs;
        assert_eq!(LinkTimes::for_lease(secs(3)).silence, secs(3));
        assert_eq!(LinkTimes::for_lease(secs(3)).ping, secs(1));
        assert_eq!(LinkTimes::for_lease(secs(2)).silence, secs(3));
        assert_eq!(LinkTimes::for_lease(secs(6)).silence, secs(6));
        assert_eq!(LinkTimes::for_lease(secs(10)).silence, secs(10));
        assert_eq!(LinkTimes::for_lease(secs(60)).silence, secs(10));
    }
}
