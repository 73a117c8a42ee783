//! `relay cluster export`: the way back to one node. In cluster mode the relays' redb stores are
//! caches that may lack recent edits; the authority is the streams. This reads every room's log
//! from JetStream (what it acknowledged, whichever relay wrote it) and writes each document as
//! one snapshot into a fresh store, which a relay started without `--nats` then serves.
//!
//! It only reads: the cluster may keep running, and a room edited meanwhile is exported as of
//! the moment its log was read.

use std::path::{Path, PathBuf};

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bytes::Bytes;
use crdt::doc::RoomDoc;
use crdt::store::{Store, StoreOptions, Write};
use futures_util::TryStreamExt;

use super::ClusterError;
use super::load::{LoadError, LogSource, replay};
use super::names::{
    HEADER_DELETED, HEADER_ROOM, SHARDS, SNAPSHOT_BUCKET, shard_subjects, stream_name,
};
use crate::config::STORE_FILE;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// NATS cannot be reached or used.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The target already has a store: an export does not merge into documents it did not write.
    #[error(
        "{0} exists; export into a new data directory (a relay's cache there may lack acknowledged edits)"
    )]
    NotFresh(PathBuf),
    /// The cluster's streams are missing: no relay ever ran on these servers.
    #[error(
        "stream {0} does not exist on these NATS servers: no relay has run in cluster mode on them"
    )]
    NoStream(String),
    /// A room's log could not be read.
    #[error("room {room:?} (subject {subject}): {reason}")]
    Room {
        /// The room's name, or its subject when no message names it.
        room: String,
        /// Its subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// NATS failed while listing the rooms.
    #[error("listing the rooms of {stream}: {reason}")]
    List {
        /// The stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error("the store: {0}")]
    Store(String),
}

/// What an export wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Documents written.
    pub documents: usize,
    /// Rooms whose log ends with a deletion (not written).
    pub deleted: usize,
    /// Bytes of the snapshots written.
    pub bytes: u64,
}

/// Exports every room of the cluster at `servers` into a new store in `data_dir`.
///
/// # Errors
/// [`ExportError`]; a failed export leaves an incomplete store behind, which is safe to delete.
pub async fn export(servers: &[String], data_dir: &Path) -> Result<ExportReport, ExportError> {
    let path = data_dir.join(STORE_FILE);
    if path.exists() {
        return Err(ExportError::NotFresh(path));
    }
    std::fs::create_dir_all(data_dir).map_err(|e| ExportError::Store(e.to_string()))?;
    let (_client, js) = super::connect(servers, "relay cluster export").await?;
    let objects = js
        .get_object_store(SNAPSHOT_BUCKET)
        .await
        .map_err(|_| ExportError::NoStream(format!("OBJ_{SNAPSHOT_BUCKET}")))?;
    let store = Store::open(&path, &StoreOptions::default())
        .map_err(|e| ExportError::Store(e.to_string()))?;
    let mut report = ExportReport::default();
    for shard in 0..SHARDS {
        let name = stream_name(shard);
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|_| ExportError::NoStream(name.clone()))?;
        let subjects = room_subjects(&mut stream, shard).await?;
        for subject in subjects {
            let source = LogSource {
                stream: &stream,
                objects: &objects,
            };
            if let Some(doc) = read_room(source, &subject).await? {
                let Some((room, state)) = doc else {
                    report.deleted += 1;
                    continue;
                };
                report.bytes += state.len() as u64;
                store
                    .commit(&[Write::Append {
                        room: room.as_str().into(),
                        seq: 1,
                        update: state,
                    }])
                    .map_err(|e| ExportError::Store(format!("writing {room:?}: {e}")))?;
                report.documents += 1;
                tracing::info!(room = %room, "exported");
            }
        }
    }
    Ok(report)
}

/// The subjects of `stream` that hold messages.
async fn room_subjects(stream: &mut Stream, shard: u8) -> Result<Vec<String>, ExportError> {
    let list_error = |e: &dyn std::fmt::Display| ExportError::List {
        stream: stream_name(shard),
        reason: e.to_string(),
    };
    let mut subjects = Vec::new();
    let mut pages = stream
        .info_with_subjects(shard_subjects(shard))
        .await
        .map_err(|e| list_error(&e))?;
    while let Some((subject, count)) = pages.try_next().await.map_err(|e| list_error(&e))? {
        if count > 0 {
            subjects.push(subject);
        }
    }
    subjects.sort();
    Ok(subjects)
}

/// A room's name and state as its log ends: `None` if the subject emptied meanwhile,
/// `Some(None)` when the document was deleted.
async fn read_room(
    source: LogSource<'_>,
    subject: &str,
) -> Result<Option<Option<(String, Bytes)>>, ExportError> {
    let failed = |room: &str, error: LoadError| ExportError::Room {
        room: room.to_owned(),
        subject: subject.to_owned(),
        reason: error.to_string(),
    };
    let last = match source.stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => message,
        // Purged since it was listed: nothing to export.
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        // Anything else would leave the document out of the export without a word.
        Err(error) => return Err(failed(subject, LoadError::Nats(error.to_string()))),
    };
    // Every message of a room names it (the subject is only a hash of the name).
    let room = last
        .headers
        .get(HEADER_ROOM)
        .map(|v| v.as_str().to_owned())
        .ok_or_else(|| failed(subject, LoadError::Nats("no Relay-Room header".into())))?;
    // The leader's answer: the replay must reach it.
    let through = last.sequence;
    if last.headers.get(HEADER_DELETED).is_some() {
        return Ok(Some(None));
    }
    let mut doc = RoomDoc::new();
    replay(source, subject, 1, through, &mut doc)
        .await
        .map_err(|e| failed(&room, e))?;
    // Updates still waiting for missing ones are kept too: a relay loading this store keeps
    // them pending exactly as the owner did.
    let state = doc.encode_state_v1();
    Ok(Some(Some((room, Bytes::copy_from_slice(&state)))))
}
