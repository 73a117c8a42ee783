//! What the cluster stored, read straight from JetStream (never through a relay): a room's
//! subject replayed from the start into a fresh document, and the current lease owner. The
//! names follow the cluster contract (issue 13): streams `YROOMS_<shard>`, subjects
//! `yroom.<shard>.<key>`, lease bucket `yroom-leases`, snapshot objects in `yroom-snapshots`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use yrs::Doc;

use crate::doc::apply;
use crate::wait::within_for;

/// The number of room streams.
pub const SHARDS: u8 = 4;
/// The lease bucket.
pub const LEASE_BUCKET: &str = "yroom-leases";
/// The Object Store bucket of large snapshots.
pub const SNAPSHOT_BUCKET: &str = "yroom-snapshots";
/// The header naming the room on every message.
pub const ROOM_HEADER: &str = "Relay-Room";
/// The header of a message whose snapshot is in the Object Store.
pub const OBJECT_HEADER: &str = "Relay-Object";

/// Where a room's updates live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSubject {
    /// First 32 hex characters of SHA-256 of the room name.
    pub key: String,
    /// First byte of that hash modulo [`SHARDS`].
    pub shard: u8,
}

impl RoomSubject {
    /// The subject of `room`.
    pub fn of(room: &str) -> RoomSubject {
        let hash = Sha256::digest(room.as_bytes());
        let key: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        RoomSubject {
            key,
            shard: hash[0] % SHARDS,
        }
    }

    /// `YROOMS_<shard>`.
    pub fn stream(&self) -> String {
        format!("YROOMS_{}", self.shard)
    }

    /// `yroom.<shard>.<key>`.
    pub fn subject(&self) -> String {
        format!("yroom.{}.{}", self.shard, self.key)
    }

    /// `$KV.yroom-leases.<key>`.
    pub fn lease_subject(&self) -> String {
        format!("$KV.{LEASE_BUCKET}.{}", self.key)
    }
}

/// One message of a room's subject.
#[derive(Debug, Clone)]
pub struct StoredUpdate {
    /// Its stream sequence.
    pub seq: u64,
    /// Its `Nats-Msg-Id`, if any.
    pub msg_id: Option<String>,
    /// Whether it is a rollup (`Nats-Rollup`).
    pub rollup: bool,
    /// Its `Relay-Room` header.
    pub room: Option<String>,
    /// The update (read from the Object Store when the message points there).
    pub update: Vec<u8>,
}

/// A room's subject replayed from its first message.
pub struct Replay {
    /// Every message, in order.
    pub messages: Vec<StoredUpdate>,
    /// A fresh document with every message applied.
    pub doc: Doc,
}

impl Replay {
    /// Message ids that occur more than once (a retried publish stored twice).
    pub fn duplicate_msg_ids(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.messages
            .iter()
            .filter_map(|m| m.msg_id.clone())
            .filter(|id| !seen.insert(id.clone()))
            .collect()
    }

    /// Sequences of messages whose update bytes equal an earlier message's (the same group
    /// commit stored twice, whatever its id).
    pub fn duplicate_payloads(&self) -> Vec<u64> {
        let mut seen = std::collections::HashSet::new();
        self.messages
            .iter()
            .filter(|m| !m.update.is_empty() && !seen.insert(m.update.clone()))
            .map(|m| m.seq)
            .collect()
    }
}

fn header(headers: Option<&async_nats::HeaderMap>, name: &str) -> Option<String> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
}

/// Reads a room's subject from the start up to its last message (the last sequence read from
/// the stream leader, so nothing acknowledged before the call is missed) and applies each
/// update to a fresh document. A room never written gives an empty replay.
///
/// # Panics
/// When the stream or a snapshot object cannot be read within 30 s.
pub async fn replay_room(js: &jetstream::Context, room: &str) -> Replay {
    let subject = RoomSubject::of(room);
    within_for(
        Duration::from_secs(30),
        &format!("a replay of room {room:?}"),
        async {
            loop {
                match try_replay(js, room, &subject).await {
                    Ok(replay) => return replay,
                    // A stream without a leader for a moment (a server just restarted): retry.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        },
    )
    .await
}

async fn try_replay(
    js: &jetstream::Context,
    room: &str,
    subject: &RoomSubject,
) -> Result<Replay, async_nats::Error> {
    let doc = Doc::new();
    let mut messages = Vec::new();
    let stream = js.get_stream(subject.stream()).await?;
    let last = match stream
        .get_last_raw_message_by_subject(&subject.subject())
        .await
    {
        Ok(message) => message.sequence,
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            return Ok(Replay { messages, doc });
        }
        Err(e) => return Err(e.into()),
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.subject(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut delivered = consumer.messages().await?;
    let objects = js.get_object_store(SNAPSHOT_BUCKET).await.ok();
    while let Some(message) = delivered.next().await {
        let message = message?;
        let seq = message.info()?.stream_sequence;
        let headers = message.headers.as_ref();
        let update = match header(headers, OBJECT_HEADER) {
            Some(object) => {
                let store = objects
                    .as_ref()
                    .ok_or(format!("room {room:?}: no bucket {SNAPSHOT_BUCKET}"))?;
                let mut reader = store.get(&object).await?;
                let mut bytes = Vec::new();
                reader.read_to_end(&mut bytes).await?;
                bytes
            }
            None => message.payload.to_vec(),
        };
        if !update.is_empty() {
            apply(&doc, &update);
        }
        messages.push(StoredUpdate {
            seq,
            msg_id: header(headers, "Nats-Msg-Id"),
            rollup: header(headers, "Nats-Rollup").is_some(),
            room: header(headers, ROOM_HEADER),
            update,
        });
        if seq >= last {
            break;
        }
    }
    Ok(Replay { messages, doc })
}

/// The node name holding a room's lease, read from the lease stream's leader (a KV `get` may be
/// stale); `None` when the key is absent, deleted or expired.
pub async fn lease_owner(js: &jetstream::Context, room: &str) -> Option<String> {
    let subject = RoomSubject::of(room);
    let stream = js.get_stream(format!("KV_{LEASE_BUCKET}")).await.ok()?;
    let message = stream
        .get_last_raw_message_by_subject(&subject.lease_subject())
        .await
        .ok()?;
    let headers = Some(&message.headers);
    let deleted = header(headers, "KV-Operation").is_some_and(|op| op == "DEL" || op == "PURGE")
        || header(headers, "Nats-Marker-Reason").is_some();
    if deleted || message.payload.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(&message.payload).into_owned())
}
