//! Loading a room in cluster mode: take the lease, read the local cache (snapshot plus the last
//! stream sequence it covers), then replay the subject from there up to the last sequence the
//! stream leader reports. When the cache covers more than the stream holds (a stream that lost
//! acknowledged data, or was recreated), the whole subject is replayed and whatever the cache
//! holds beyond it is handed to the log to publish again.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::object_store::ObjectStore;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bytes::Bytes;
use crdt::doc::{Applied, RoomDoc};
use crdt::store::{Store, StoredRoom};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::Cluster;
use super::lease::{self, Lease, LeaseError};
use super::log::LogStart;
use super::names::{HEADER_DELETED, HEADER_OBJECT, HEADER_ROLLUP, RoomKey};

/// How long a replay may take before the load is given up (the clients retry).
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a room could not be loaded as its owner.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// Another live relay owns it: forward to that node.
    #[error("owned by {0}")]
    OwnedBy(String),
    /// NATS failed (the lease was released again if it was taken).
    #[error("{0}")]
    Nats(String),
    /// The subject holds something that does not decode.
    #[error("stream message {seq} does not apply: {reason}")]
    Corrupt {
        /// Its stream sequence.
        seq: u64,
        /// Why.
        reason: String,
    },
}

impl From<LeaseError> for LoadError {
    fn from(error: LeaseError) -> Self {
        match error {
            LeaseError::OwnedBy(node) => LoadError::OwnedBy(node),
            other => LoadError::Nats(other.to_string()),
        }
    }
}

/// A room loaded by its owner.
pub(crate) struct Owned {
    /// The document, numbered for the room's own ledger (`next_seq` 1).
    pub(crate) stored: StoredRoom,
    /// Where its log task starts.
    pub(crate) log: LogStart,
}

/// Where a room's log is read from: its shard's stream, and the bucket of snapshots too large
/// for one message.
#[derive(Clone, Copy)]
pub(crate) struct LogSource<'a> {
    pub(crate) stream: &'a Stream,
    pub(crate) objects: &'a ObjectStore,
}

/// What a replay of the subject gave.
#[derive(Default)]
pub(crate) struct Replay {
    /// Messages applied.
    pub(crate) entries: u64,
    /// Bytes of messages after the last rollup.
    log_bytes: u64,
    /// Messages after the last rollup.
    log_entries: u64,
    /// Bytes of the last rollup.
    snapshot_bytes: u64,
    snapshot_object: Option<String>,
}

/// Takes the lease of `room` and loads it.
///
/// # Errors
/// [`LoadError::OwnedBy`] when another node holds the lease; otherwise the lease is released
/// again before the error is returned.
pub(crate) async fn load(
    cluster: &Cluster,
    store: &Arc<Store>,
    room: &Arc<str>,
) -> Result<Owned, LoadError> {
    let key = RoomKey::of(room);
    // A busy or recovering cluster may time a request out: try a few times before giving up.
    let mut attempt = 0;
    let (lease, lease_since) = loop {
        let since = Instant::now();
        match lease::acquire(cluster, &key).await {
            Ok(lease) => break (lease, since),
            Err(LeaseError::Nats(reason)) if attempt < 2 => {
                attempt += 1;
                tracing::debug!(%reason, attempt, "taking the lease failed; trying again");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    match tokio::time::timeout(
        REPLAY_TIMEOUT,
        load_owned(cluster, store, room, &key, lease, lease_since),
    )
    .await
    {
        Ok(Ok(mut owned)) => {
            // A long replay used part of the lease: renew it before the log starts counting.
            if owned.log.lease_since.elapsed() > cluster.lease / 3 {
                let sent = Instant::now();
                owned.log.lease = lease::renew(cluster, &key, owned.log.lease).await?;
                owned.log.lease_since = sent;
            }
            Ok(owned)
        }
        failed => {
            let error = match failed {
                Ok(Err(error)) => error,
                _ => LoadError::Nats("the replay timed out".into()),
            };
            if let Err(release) = lease::release(cluster, &key, lease).await {
                tracing::warn!(%release, "cannot release the lease after a failed load; it expires");
            }
            Err(error)
        }
    }
}

async fn load_owned(
    cluster: &Cluster,
    store: &Arc<Store>,
    room: &Arc<str>,
    key: &RoomKey,
    lease: Lease,
    lease_since: Instant,
) -> Result<Owned, LoadError> {
    let cache = {
        let store = store.clone();
        let room = room.clone();
        tokio::task::spawn_blocking(move || store.load(&room))
            .await
            .map_err(|e| LoadError::Nats(e.to_string()))?
    };
    let (mut doc, covered) = match cache {
        Ok(stored) => (stored.doc, stored.next_seq - 1),
        Err(error) => {
            tracing::warn!(%error, "the cached copy does not load; replaying the stream alone");
            (RoomDoc::new(), 0)
        }
    };
    let last_seq = last_sequence(cluster.stream(key), &key.subject()).await?;
    let mut republish = None;
    let replay = if covered > 0 && last_seq < covered {
        // The cache covers more than the stream has: the stream lost acknowledged messages (or
        // was recreated). Rebuild from the stream alone, then publish what only the cache has.
        tracing::warn!(
            cached_through = covered,
            stream_last = last_seq,
            "the stream holds less than the cached copy; republishing the difference"
        );
        let mut from_stream = RoomDoc::new();
        let replay = replay(
            cluster.log_source(key),
            &key.subject(),
            1,
            last_seq,
            &mut from_stream,
        )
        .await?;
        let missing =
            doc.diff_v1(&from_stream.state_vector_v1())
                .map_err(|e| LoadError::Corrupt {
                    seq: 0,
                    reason: e.to_string(),
                })?;
        if let Ok(Applied::Changed) = from_stream.apply_update_v1(&missing) {
            republish = Some(Bytes::copy_from_slice(&missing));
        }
        doc = from_stream;
        replay
    } else {
        replay(
            cluster.log_source(key),
            &key.subject(),
            covered + 1,
            last_seq,
            &mut doc,
        )
        .await?
    };
    tracing::info!(
        cached_through = covered,
        stream_last = last_seq,
        replayed = replay.entries,
        republish = republish.is_some(),
        lease_revision = lease.revision,
        "room loaded as owner"
    );
    // Bring the cache up to the stream, so the next load replays less.
    let cache_snapshot = if replay.entries > 0 {
        doc.try_snapshot_v1().map(|state| (last_seq, state))
    } else {
        None
    };
    Ok(Owned {
        stored: StoredRoom {
            doc,
            next_seq: 1,
            log_entries: replay.log_entries,
            log_bytes: replay.log_bytes,
            snapshot_bytes: replay.snapshot_bytes,
        },
        log: LogStart {
            lease,
            lease_since,
            last_seq,
            republish,
            snapshot_object: replay.snapshot_object,
            cache_snapshot,
        },
    })
}

/// The subject's last sequence, from the stream leader (0 when it holds no message).
pub(crate) async fn last_sequence(stream: &Stream, subject: &str) -> Result<u64, LoadError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(message.sequence),
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(error) => Err(LoadError::Nats(error.to_string())),
    }
}

/// Applies the subject's messages with sequences `from..=through` to `doc`, through an ordered
/// consumer (one request, messages in order without gaps for the filter).
pub(crate) async fn replay(
    source: LogSource<'_>,
    subject: &str,
    from: u64,
    through: u64,
    doc: &mut RoomDoc,
) -> Result<Replay, LoadError> {
    let mut replay = Replay::default();
    if through < from {
        return Ok(replay);
    }
    let nats = |e: &dyn std::fmt::Display| LoadError::Nats(e.to_string());
    let consumer = source
        .stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| nats(&e))?;
    let mut reached = false;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| nats(&e))?;
        let seq = message.info().map_err(|e| nats(&e))?.stream_sequence;
        let payload = payload_of(source.objects, &message.headers, message.payload.clone()).await?;
        let has = |name: &str| {
            message
                .headers
                .as_ref()
                .is_some_and(|h| h.get(name).is_some())
        };
        if has(HEADER_DELETED) {
            // The document was deleted here: what came before (in the cache too) is gone.
            *doc = RoomDoc::new();
        }
        doc.replay_stored_update_v1(&payload)
            .map_err(|e| LoadError::Corrupt {
                seq,
                reason: e.to_string(),
            })?;
        replay.entries += 1;
        if has(HEADER_ROLLUP) {
            replay.snapshot_bytes = payload.len() as u64;
            replay.log_bytes = 0;
            replay.log_entries = 0;
            replay.snapshot_object = object_name(&message.headers);
        } else {
            replay.log_bytes += payload.len() as u64;
            replay.log_entries += 1;
        }
        if seq >= through {
            reached = true;
            break;
        }
    }
    if !reached {
        // Serving a partial replay would show (and later compact) a document without edits the
        // stream acknowledged: refuse the load instead; its connections retry.
        return Err(LoadError::Nats(format!(
            "the replay ended before sequence {through}"
        )));
    }
    Ok(replay)
}

fn object_name(headers: &Option<async_nats::HeaderMap>) -> Option<String> {
    headers
        .as_ref()
        .and_then(|h| h.get(HEADER_OBJECT))
        .map(|v| v.as_str().to_owned())
}

/// A message's update: its payload, or the object its `Relay-Object` header names.
pub(crate) async fn payload_of(
    objects: &ObjectStore,
    headers: &Option<async_nats::HeaderMap>,
    payload: Bytes,
) -> Result<Bytes, LoadError> {
    let Some(name) = object_name(headers) else {
        return Ok(payload);
    };
    let mut object = objects
        .get(&name)
        .await
        .map_err(|e| LoadError::Nats(format!("snapshot object {name}: {e}")))?;
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| LoadError::Nats(format!("snapshot object {name}: {e}")))?;
    Ok(bytes.into())
}
