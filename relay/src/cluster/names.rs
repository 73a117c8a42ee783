//! The NATS names of cluster mode, stated once (the contract of issue 13): streams, subjects,
//! buckets, headers, and how a room name and a node name become subject tokens.

use sha2::{Digest, Sha256};

/// Streams the rooms are sharded over (`YROOMS_0` .. `YROOMS_3`), so that stream leaders spread
/// over the servers.
pub(crate) const SHARDS: u8 = 4;
/// Replicas of every stream and bucket: the log survives the loss of any one server.
pub(crate) const REPLICAS: usize = 3;
/// The lease bucket.
pub(crate) const LEASE_BUCKET: &str = "yroom-leases";
/// The Object Store bucket for snapshots too large for one message.
pub(crate) const SNAPSHOT_BUCKET: &str = "yroom-snapshots";
/// How long a `Nats-Msg-Id` is remembered: a retried publish inside it is stored once.
pub(crate) const DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);
/// Payloads larger than this go to the Object Store (`max_payload` is 1 MiB with headers).
pub(crate) const MAX_INLINE_PAYLOAD: usize = 900 << 10;

/// Header naming the room a message belongs to.
pub(crate) const HEADER_ROOM: &str = "Relay-Room";
/// Header pointing at an Object Store object that holds the payload.
pub(crate) const HEADER_OBJECT: &str = "Relay-Object";
/// Header on a deletion's rollup: the document starts over from it (a replay from a cached copy
/// must not keep what the deletion removed).
pub(crate) const HEADER_DELETED: &str = "Relay-Deleted";
/// JetStream's rollup header; `sub` replaces the subject's earlier messages.
pub(crate) const HEADER_ROLLUP: &str = "Nats-Rollup";
/// JetStream's per-message TTL header (whole seconds).
pub(crate) const HEADER_TTL: &str = "Nats-TTL";
/// KV operation header (`DEL`, `PURGE`) on delete markers.
pub(crate) const HEADER_KV_OPERATION: &str = "KV-Operation";
/// Header the server puts on markers it writes itself (a TTL that expired, a purge).
pub(crate) const HEADER_MARKER_REASON: &str = "Nats-Marker-Reason";

/// The stream name of a shard.
pub(crate) fn stream_name(shard: u8) -> String {
    format!("YROOMS_{shard}")
}

/// The subjects of a shard's stream: one per room, `yroom.<shard>.<key>`.
pub(crate) fn shard_subjects(shard: u8) -> String {
    format!("yroom.{shard}.*")
}

/// Where a room lives in NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomKey {
    /// First 32 hex characters of the SHA-256 of the room name.
    pub(crate) key: String,
    /// First byte of the hash modulo [`SHARDS`].
    pub(crate) shard: u8,
}

impl RoomKey {
    /// The key of `room`.
    pub(crate) fn of(room: &str) -> Self {
        let hash = Sha256::digest(room.as_bytes());
        let key = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        RoomKey {
            key,
            shard: hash[0] % SHARDS,
        }
    }

    /// The subject of the room's log.
    pub(crate) fn subject(&self) -> String {
        format!("yroom.{}.{}", self.shard, self.key)
    }

    /// The subject the lease key is written to.
    pub(crate) fn lease_subject(&self) -> String {
        format!("$KV.{LEASE_BUCKET}.{}", self.key)
    }
}

/// A node name made into one subject token: every character outside `[A-Za-z0-9_-]` becomes
/// `_`, so `host:8080` and `host.lan` are safe under `yrelay.node.`.
pub(crate) fn node_token(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The subject prefix under which a node receives forwarded traffic.
pub(crate) fn node_prefix(node: &str) -> String {
    format!("yrelay.node.{}", node_token(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_key_is_the_hash_prefix_and_its_shard_the_first_byte() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        let key = RoomKey::of("abc");
        assert_eq!(key.key, "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(key.shard, 0xba % 4);
        assert_eq!(key.subject(), "yroom.2.ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(stream_name(key.shard), "YROOMS_2");
        assert_eq!(
            key.lease_subject(),
            "$KV.yroom-leases.ba7816bf8f01cfea414140de5dae2223"
        );
    }

    #[test]
    fn node_names_become_one_subject_token() {
        assert_eq!(node_token("host.lan:8080"), "host_lan_8080");
        assert_eq!(node_prefix("a b*>"), "yrelay.node.a_b__");
    }
}
