//! Error types, one enum per operation family.

use thiserror::Error;

/// A message, update, state vector or awareness payload that is not well formed.
///
/// Returned by the codec in [`crate::protocol`] and the checks in [`crate::validate`] and
/// [`crate::awareness`]. Nothing has been applied or stored when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The input ended in the middle of a message.
    #[error("message truncated")]
    Truncated,
    /// A variable-length integer does not fit its type.
    #[error("variable-length integer overflows")]
    VarIntOverflow,
    /// A count claims more items than the remaining bytes could hold.
    #[error("count {count} exceeds what the remaining bytes can hold")]
    CountTooLarge {
        /// The count that was read.
        count: u64,
    },
    /// A string is not UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A sync message with an unknown sub-type.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    /// An auth message with an unknown sub-type.
    #[error("unknown auth message type {0}")]
    UnknownAuthType(u64),
    /// A save message with an unknown sub-type.
    #[error("unknown save message type {0}")]
    UnknownSaveType(u64),
    /// An update item with an unknown content kind.
    #[error("unknown item content kind {0}")]
    UnknownContent(u8),
    /// An `Any` value with an unknown type tag.
    #[error("unknown value tag {0}")]
    UnknownAny(u8),
    /// Values nested deeper than [`crate::validate::MAX_ANY_DEPTH`].
    #[error("values nested too deeply")]
    TooDeep,
    /// A client id beyond the 53 bits Yjs client ids have.
    #[error("client id {0} is larger than 53 bits")]
    ClientIdTooLarge(u64),
    /// An update with two sections for the same client, which no encoder writes and which makes
    /// `yrs` free items the document still uses (see [`crate::validate`]).
    #[error("client {0} has more than one section in the update")]
    RepeatedClient(u64),
    /// A block or delete range that ends past [`crate::validate::MAX_CLOCK`].
    #[error(
        "client {client}'s clocks reach {end}, past {}",
        crate::validate::MAX_CLOCK
    )]
    ClockTooLarge {
        /// The client whose clock it is.
        client: u64,
        /// The end of the range (exclusive).
        end: u64,
    },
    /// A block that would land past a gap in its client's clocks: it does not continue the
    /// clock before it, which the document does not have yet. Yjs would keep it pending; `yrs`
    /// integrates it and leaves a gap that later updates can turn into a use after free (see
    /// [`crate::doc::RoomDoc::apply_update_v1`]).
    #[error("client {client}'s block at clock {clock} comes before the clocks ahead of it")]
    BlockPastGap {
        /// The block's client.
        client: u64,
        /// The block's first clock.
        clock: u32,
    },
    /// A block that runs across the end of a gap the document may have (from a stored update),
    /// which `yrs` splits into freed memory or a corrupt block list.
    #[error("client {client}'s block at clock {clock} runs across the end of a gap")]
    BlockAcrossGap {
        /// The block's client.
        client: u64,
        /// The block's first clock.
        clock: u32,
    },
    /// Shared types nested deeper than [`crate::doc::MAX_TYPE_DEPTH`].
    #[error(
        "shared types nested more than {} levels deep",
        crate::doc::MAX_TYPE_DEPTH
    )]
    TypesTooDeep,
    /// An awareness state that is not valid JSON.
    #[error("awareness state is not valid JSON")]
    InvalidAwareness,
}

/// Why an update or state vector could not be used by a [`crate::doc::RoomDoc`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DocError {
    /// The bytes are not a well-formed update or state vector.
    #[error("malformed: {0}")]
    Malformed(#[from] ProtocolError),
    /// `yrs` could not decode the bytes.
    #[error("does not decode: {0}")]
    Decode(#[from] yrs::encoding::read::Error),
    /// `yrs` refused to integrate the update.
    #[error("cannot be applied: {0}")]
    Apply(#[from] yrs::error::UpdateError),
    /// `yrs` panicked (a bug in it that this input reaches); the document may hold part of it.
    #[error("{0}")]
    Internal(String),
}

/// Opening the store failed; nothing was written to the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// redb could not open the file (in use, corrupted, or not a redb file).
    #[error("cannot open the store at {path}: {source}")]
    Database {
        /// The store file.
        path: std::path::PathBuf,
        /// The redb error.
        #[source]
        source: redb::DatabaseError,
    },
    /// The file is a redb database but not one of ours.
    #[error("{path} is not a relay store (it has no format version); refusing to touch it")]
    Foreign {
        /// The store file.
        path: std::path::PathBuf,
    },
    /// The file was written by a format version this build does not read.
    #[error("{path} has store format version {found}; this relay reads version {expected}")]
    UnsupportedVersion {
        /// The store file.
        path: std::path::PathBuf,
        /// The version in the file.
        found: u64,
        /// The version this build reads and writes.
        expected: u64,
    },
    /// Reading or initialising the store's metadata failed.
    #[error("cannot initialise the store: {0}")]
    Storage(#[from] redb::Error),
    /// The journal could not be read back into the store.
    #[error("cannot recover the store's journal: {0}")]
    Journal(#[from] JournalError),
    /// The journal's records could not be moved into the store.
    #[error("cannot recover the store's journal: {0}")]
    Recovery(#[source] Box<CommitError>),
}

/// Loading a room failed; the store is unchanged.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// redb failed to read.
    #[error("cannot read room {room:?}: {source}")]
    Storage {
        /// The room being loaded.
        room: String,
        /// The redb error.
        #[source]
        source: redb::Error,
    },
    /// A stored snapshot or update does not decode.
    #[error("room {room:?} has a stored update that does not decode (seq {seq}): {source}")]
    Corrupt {
        /// The room being loaded.
        room: String,
        /// The sequence number of the bad record (0 for the snapshot).
        seq: u64,
        /// What is wrong with it.
        #[source]
        source: DocError,
    },
    /// A stored record is shorter than its header.
    #[error("room {room:?} has a truncated record")]
    Truncated {
        /// The room being loaded.
        room: String,
    },
}

/// Compacting the file failed; the file is as before.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CompactError {
    /// redb could not compact.
    #[error("cannot compact the store: {0}")]
    Storage(#[from] redb::CompactionError),
    /// The journal could not be moved into the tables first.
    #[error("cannot compact the store: {0}")]
    Checkpoint(#[from] CommitError),
    /// The store is not open (a reopen after an I/O error failed).
    #[error("the store is not open")]
    Unavailable,
}

/// Listing rooms failed; the store is unchanged.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ListError {
    /// redb failed to read.
    #[error("cannot list rooms: {0}")]
    Storage(#[from] redb::Error),
}

/// A write transaction failed. The batch is on disk wholly or not at all (redb transactions are
/// atomic), but which is not known: redb's commit can fail after the transaction became durable.
/// The caller still owns everything it asked to write and retries it (the writes are idempotent);
/// it must not report any of it as saved until a commit succeeds.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CommitError {
    /// redb failed to write or commit.
    #[error("commit failed: {0}")]
    Storage(#[from] redb::Error),
    /// The journal could not be written or synced.
    #[error("commit failed: {0}")]
    Journal(#[from] JournalError),
    /// More is journaled than redb has taken in than the store holds in memory: checkpoints
    /// are failing (the disk is full, say). Nothing of the batch was written.
    #[error("commit refused: {bytes} bytes are journaled and not yet checkpointed into the store")]
    Behind {
        /// Bytes journaled and waiting for a checkpoint.
        bytes: u64,
    },
}

/// The journal in front of the store could not be written or read back.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A journal file could not be created, written, synced or read.
    #[error("journal file {path}: {source}")]
    Io {
        /// The journal file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A journal file's records do not continue the ones before: a file is missing or damaged
    /// before its end, so what was acknowledged cannot all be recovered.
    #[error("journal file {path} continues at record {found}, but record {expected} is missing")]
    Gap {
        /// The journal file.
        path: std::path::PathBuf,
        /// The record that should come next.
        expected: u64,
        /// The record found instead.
        found: u64,
    },
}

impl From<redb::TransactionError> for CommitError {
    fn from(e: redb::TransactionError) -> Self {
        CommitError::Storage(e.into())
    }
}
impl From<redb::TableError> for CommitError {
    fn from(e: redb::TableError) -> Self {
        CommitError::Storage(e.into())
    }
}
impl From<redb::StorageError> for CommitError {
    fn from(e: redb::StorageError) -> Self {
        CommitError::Storage(e.into())
    }
}
impl From<redb::CommitError> for CommitError {
    fn from(e: redb::CommitError) -> Self {
        CommitError::Storage(e.into())
    }
}
impl From<redb::SetDurabilityError> for CommitError {
    fn from(e: redb::SetDurabilityError) -> Self {
        CommitError::Storage(e.into())
    }
}

/// An awareness message the relay does not take: malformed, or over one of the limits of
/// [`crate::awareness::AwarenessLimits`]. Nothing of the message was applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AwarenessError {
    /// The payload is malformed, or a state is not JSON.
    #[error(transparent)]
    Malformed(#[from] ProtocolError),
    /// The message lists more entries than a room may hold states.
    #[error("awareness message with {count} entries (at most {max})")]
    TooManyEntries {
        /// Entries the message declares.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// One state is larger than the limit.
    #[error("awareness state of {bytes} bytes (at most {max})")]
    StateTooLarge {
        /// The state's JSON length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The connection would hold more live states (client ids) than it may.
    #[error("a connection may hold at most {max} awareness states")]
    TooManyStates {
        /// The limit.
        max: usize,
    },
}
