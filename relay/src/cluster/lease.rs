//! Room ownership: a lease in the `yroom-leases` bucket, keyed by the room key, holding the
//! owner's node name.
//!
//! Every write is a raw publish to `$KV.yroom-leases.<key>` with
//! `Nats-Expected-Last-Subject-Sequence` (never a blind write) and `Nats-TTL` (the client's
//! `create_with_ttl` silently drops the TTL over a delete or expiry marker, and `update` has no
//! TTL at all). Reads are leader-served (`get_last_raw_message_by_subject`): a direct get may be
//! stale right after a write. The revision (stream sequence) of the lease is its fencing token
//! for renewals; the log's expected-last-sequence header is what fences appends.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;

use super::Cluster;
use super::names::{HEADER_KV_OPERATION, HEADER_MARKER_REASON, HEADER_TTL, RoomKey};

/// What the lease key holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// Nobody holds it; a write must expect this sequence (0: the key was never written).
    Free {
        /// The key's last revision (a delete or expiry marker), or 0.
        revision: u64,
    },
    /// `node` holds it at `revision`.
    Held {
        /// The owner.
        node: String,
        /// The lease's revision.
        revision: u64,
    },
}

/// A lease this relay holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    /// Its current revision (changes at each renewal).
    pub(crate) revision: u64,
    /// The revision it was acquired at: names this ownership (in message ids).
    pub(crate) epoch: u64,
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    /// Another node holds the lease.
    #[error("the room is owned by {0}")]
    OwnedBy(String),
    /// Someone else wrote the key since our revision: the lease is gone.
    #[error("the lease was taken over")]
    Lost,
    /// NATS did not answer or refused for another reason; retry.
    #[error("lease request failed: {0}")]
    Nats(String),
}

/// Reads the lease of `key` from the stream leader.
///
/// # Errors
/// [`LeaseError::Nats`] when the read fails.
pub(crate) async fn read(cluster: &Cluster, key: &RoomKey) -> Result<LeaseState, LeaseError> {
    match cluster
        .lease_stream()
        .get_last_raw_message_by_subject(&key.lease_subject())
        .await
    {
        Ok(message) => {
            let marker = message.headers.get(HEADER_KV_OPERATION).is_some()
                || message.headers.get(HEADER_MARKER_REASON).is_some();
            if marker {
                Ok(LeaseState::Free {
                    revision: message.sequence,
                })
            } else {
                Ok(LeaseState::Held {
                    node: String::from_utf8_lossy(&message.payload).into_owned(),
                    revision: message.sequence,
                })
            }
        }
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
            Ok(LeaseState::Free { revision: 0 })
        }
        Err(error) => Err(LeaseError::Nats(error.to_string())),
    }
}

/// Writes the lease value over `expected`, with the TTL.
async fn write(
    cluster: &Cluster,
    key: &RoomKey,
    expected: u64,
    publish: PublishMessage,
) -> Result<u64, LeaseError> {
    let publish = publish.expected_last_subject_sequence(expected);
    let ack = cluster
        .js
        .send_publish(key.lease_subject(), publish)
        .await
        .map_err(|e| LeaseError::Nats(e.to_string()))?
        .await;
    match ack {
        Ok(ack) => Ok(ack.sequence),
        Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => Err(LeaseError::Lost),
        Err(error) => Err(LeaseError::Nats(error.to_string())),
    }
}

fn lease_message(cluster: &Cluster) -> PublishMessage {
    PublishMessage::build()
        .payload(Bytes::copy_from_slice(cluster.node.as_bytes()))
        .header(HEADER_TTL, ttl_value(cluster.lease))
}

/// The `Nats-TTL` value: whole seconds.
fn ttl_value(lease: Duration) -> String {
    lease.as_secs().max(1).to_string()
}

/// Takes the lease of `key` if nobody else holds it. A lease left by an earlier run of this
/// node (same name, so it is dead: two live relays cannot share a name) is taken over.
///
/// # Errors
/// [`LeaseError::OwnedBy`] when another node holds it, [`LeaseError::Nats`] when NATS fails.
pub(crate) async fn acquire(cluster: &Cluster, key: &RoomKey) -> Result<Lease, LeaseError> {
    // A race with another acquirer ends in one of them reading the other's lease.
    for _ in 0..4 {
        let expected = match read(cluster, key).await? {
            LeaseState::Held { node, .. } if *node != *cluster.node => {
                return Err(LeaseError::OwnedBy(node));
            }
            LeaseState::Held { revision, .. } | LeaseState::Free { revision } => revision,
        };
        match write(cluster, key, expected, lease_message(cluster)).await {
            Ok(revision) => {
                return Ok(Lease {
                    revision,
                    epoch: revision,
                });
            }
            Err(LeaseError::Lost) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(LeaseError::Nats("the lease kept changing under us".into()))
}

/// Renews `lease` by compare-and-swap on its revision; returns the renewed lease.
///
/// # Errors
/// [`LeaseError::Lost`] when someone else wrote the key (the lease expired and was taken),
/// [`LeaseError::Nats`] when NATS fails (retry while the lease lasts).
pub(crate) async fn renew(
    cluster: &Cluster,
    key: &RoomKey,
    lease: Lease,
) -> Result<Lease, LeaseError> {
    let revision = write(cluster, key, lease.revision, lease_message(cluster)).await?;
    Ok(Lease { revision, ..lease })
}

/// Gives the lease up at once (a delete marker over its revision), so that another relay can
/// take the room without waiting for the TTL.
///
/// # Errors
/// [`LeaseError`] when it was already lost or NATS fails; the TTL then frees it.
pub(crate) async fn release(
    cluster: &Cluster,
    key: &RoomKey,
    lease: Lease,
) -> Result<(), LeaseError> {
    let publish = PublishMessage::build()
        .payload(Bytes::new())
        .header(HEADER_KV_OPERATION, "DEL");
    write(cluster, key, lease.revision, publish)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttl_is_whole_seconds_and_never_zero() {
        assert_eq!(ttl_value(Duration::from_secs(10)), "10");
        assert_eq!(ttl_value(Duration::from_millis(500)), "1");
    }
}
