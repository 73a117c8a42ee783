//! Durable storage of room documents: a journal file for commits, and one redb file that a
//! checkpoint moves the journal into.
//!
//! # On-disk format, version 2
//!
//! One redb database (by default `<data-dir>/relay.redb`) with four tables:
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `meta` | `&str` | `u64`; `"format_version"` = [`FORMAT_VERSION`]; `"journal_lsn"` = the last journal record a checkpoint moved into the tables (absent: none) |
//! | `snapshots` | room name (`&str`) | 8-byte little-endian sequence number *S*, then a Yjs update (v1) holding the whole document as of update *S* |
//! | `log` | (room name, sequence number) (`(&str, u64)`) | one Yjs update (v1) |
//! | `rooms` | room name (`&str`) | (`u64`, `u64`): when the last update was committed, in milliseconds since the Unix epoch, and the bytes the room's snapshot and log hold |
//!
//! and beside it the journal files `relay.redb.journal.<first LSN>` (format in the `journal`
//! module's docs: one CRC-checked record per group commit).
//!
//! Each room numbers its updates 1, 2, 3, ... A room's document is its snapshot (if any) with every
//! log entry of a higher sequence number applied in order, and then the journal's writes for it
//! after `journal_lsn`, with the same meaning. A compaction writes a snapshot covering
//! *S* and deletes the log entries up to *S* in the same transaction, so entries appended while
//! it was being prepared (numbered above *S*) stay in the log.
//!
//! Version 1 was the same tables without the journal (every commit was a redb transaction). It
//! is read as it is and marked version 2 when opened; a version-1 build refuses a version-2
//! store, whose journal it would not read.
//!
//! # Durability
//!
//! Every [`Store::commit`] appends one record to the journal with one `write` and one
//! `fdatasync`: when it returns `Ok`, the batch survives a crash or power loss (given a disk
//! that honours fsync). A crash during an append leaves a torn record at the end of the file,
//! which fails its CRC and is ignored; nobody was told it was saved. [`Store::checkpoint`] then
//! moves the journal into the tables in one redb write transaction with
//! [`redb::Durability::Immediate`], recording the last record it covers; only after that
//! transaction is durable are the journal files removed. Opening the store does the same with
//! whatever the journal holds beyond `journal_lsn` (after a crash), before anything is read.
//!
//! A commit or checkpoint that returns an error is *not* known to have written nothing: an
//! append may be durable in part, and a redb transaction may be durable although its commit
//! failed (redb then refuses writes until the database is opened again, [`Store::reopen`]). So
//! nobody may be told *saved* for a failed commit; the retry goes to a new journal file that
//! supersedes the failed one from the retried record on; and every write is idempotent:
//! applying a batch again leaves exactly what applying it once leaves (an appended update is
//! stored once and counted once in the room's size, a snapshot or a deletion is simply done
//! again).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::Instant;

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::doc::RoomDoc;
use crate::error::{CommitError, CompactError, JournalError, ListError, LoadError, OpenError};
use crate::journal::{self, Entry, JournalFile};

/// The store format this build writes.
pub const FORMAT_VERSION: u64 = 2;
/// Older formats this build reads, and migrates to [`FORMAT_VERSION`] when it opens them.
const MIGRATED_VERSIONS: [u64; 1] = [1];

const FORMAT_VERSION_KEY: &str = "format_version";
/// The last journal record a checkpoint moved into the tables.
const JOURNAL_LSN_KEY: &str = "journal_lsn";
/// Most bytes journaled and not yet checkpointed that the store holds in memory; past it commits
/// are refused until a checkpoint succeeds (see [`CommitError::Behind`]).
const MAX_UNCHECKPOINTED_BYTES: u64 = 256 << 20;
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
const ROOMS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("rooms");

/// Length of the sequence-number header of a snapshot record.
const SNAPSHOT_HEADER: usize = 8;

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// redb's page cache, in bytes.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 64 << 20,
        }
    }
}

/// One write of a batch passed to [`Store::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Append an update to a room's log under `seq`.
    Append {
        /// The room.
        room: Arc<str>,
        /// The update's sequence number within the room.
        seq: u64,
        /// The update (v1).
        update: Bytes,
    },
    /// Replace a room's snapshot with `state`, which holds every update up to `through_seq`, and
    /// delete those log entries.
    Snapshot {
        /// The room.
        room: Arc<str>,
        /// The highest sequence number the snapshot contains.
        through_seq: u64,
        /// The whole document as one update (v1).
        state: Arc<[u8]>,
    },
    /// Delete everything stored for a room.
    Delete {
        /// The room.
        room: Arc<str>,
    },
}

impl Write {
    /// The room written to.
    pub fn room(&self) -> &str {
        match self {
            Write::Append { room, .. } | Write::Snapshot { room, .. } | Write::Delete { room } => {
                room
            }
        }
    }

    /// Bytes of payload this write carries.
    pub fn payload_len(&self) -> usize {
        match self {
            Write::Append { update, .. } => update.len(),
            Write::Snapshot { state, .. } => state.len(),
            Write::Delete { .. } => 0,
        }
    }
}

/// A room as loaded from the store.
#[derive(Debug)]
pub struct StoredRoom {
    /// The document: snapshot plus log.
    pub doc: RoomDoc,
    /// The sequence number for the room's next update.
    pub next_seq: u64,
    /// Log entries after the snapshot.
    pub log_entries: u64,
    /// Bytes of those log entries.
    pub log_bytes: u64,
    /// Bytes of the snapshot's update (0 without one).
    pub snapshot_bytes: u64,
}

/// The redb store holding every room.
///
/// After an I/O error redb refuses every further operation on the same `Database` until it is
/// opened again, so the store can [`reopen`](Store::reopen) itself in place; meanwhile every
/// operation fails with a storage error.
pub struct Store {
    // An `RwLock` so that a reopen waits for transactions in progress; `None` while the file
    // cannot be opened.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    options: StoreOptions,
    /// The journal file commits append to. Locked for a whole append (write and sync), so
    /// commits are in LSN order; always taken before `unchecked` when both are.
    appender: Mutex<Appender>,
    /// What is journaled and not yet in the tables, for loads and the next checkpoint.
    unchecked: Mutex<Unchecked>,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
}

/// The appending side of the journal.
#[derive(Debug)]
struct Appender {
    /// The file being appended to; `None` when the next commit starts a new one (after a
    /// checkpoint retired the files, or after an append failed half way).
    file: Option<JournalFile>,
    /// The LSN of the next record.
    next_lsn: u64,
    /// Journal files holding records not yet checkpointed (the current one included).
    files: Vec<PathBuf>,
    /// Reused encoding buffer.
    buffer: Vec<u8>,
}

/// Journaled writes not yet in the tables, in LSN order.
#[derive(Debug, Default)]
struct Unchecked {
    entries: VecDeque<Entry>,
    bytes: u64,
    /// When the oldest of them was committed.
    since: Option<Instant>,
}

/// How much is journaled and waiting for a checkpoint, from [`Store::journal_backlog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalBacklog {
    /// Writes waiting.
    pub writes: usize,
    /// Their payload and record bytes.
    pub bytes: u64,
    /// When the oldest of them was committed; `None` when nothing waits.
    pub since: Option<Instant>,
}

/// A read lock on the store's open database.
struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0.as_ref().expect("checked when the guard was made")
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// What a file's `meta` table says about its format.
enum StoredFormat {
    /// No tables at all: a new file, to be initialised.
    Empty,
    /// Tables, but no format version: another application's database.
    Foreign,
    /// The format version found.
    Version(u64),
}

impl StoredFormat {
    /// The error for a file this build refuses.
    fn refusal(self, path: &Path) -> OpenError {
        match self {
            StoredFormat::Version(found) => OpenError::UnsupportedVersion {
                path: path.to_owned(),
                found,
                expected: FORMAT_VERSION,
            },
            StoredFormat::Empty | StoredFormat::Foreign => OpenError::Foreign {
                path: path.to_owned(),
            },
        }
    }
}

fn stored_format_version(read: &redb::ReadTransaction) -> Result<StoredFormat, redb::Error> {
    if read.list_tables()?.next().is_none() {
        return Ok(StoredFormat::Empty);
    }
    match read.open_table(META) {
        Ok(meta) => Ok(match meta.get(FORMAT_VERSION_KEY)? {
            Some(version) => StoredFormat::Version(version.value()),
            None => StoredFormat::Foreign,
        }),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(StoredFormat::Foreign),
        Err(e) => Err(e.into()),
    }
}

impl Store {
    /// Opens the store at `path`, creating it if the file does not exist.
    ///
    /// A new file gets the tables and the format version. An existing file must be a relay store
    /// of [`FORMAT_VERSION`]: a file that is not a redb database, or a redb database without our
    /// format version, is refused and left untouched.
    ///
    /// # Errors
    /// [`OpenError`] says why; the file is not modified in any error case.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, OpenError> {
        Self::refuse_foreign_file(path, options)?;
        let db = Self::open_database(path, options)?;
        let store = Store {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
            options: options.clone(),
            appender: Mutex::new(Appender {
                file: None,
                next_lsn: 1,
                files: Vec::new(),
                buffer: Vec::new(),
            }),
            unchecked: Mutex::new(Unchecked::default()),
            checkpointing: Mutex::new(()),
        };
        store.check_or_init_format()?;
        store.recover_journal()?;
        Ok(store)
    }

    /// Moves what the journal holds beyond the last checkpoint into the tables, in one
    /// transaction, and removes the journal files. Commits then start a new file.
    fn recover_journal(&self) -> Result<(), OpenError> {
        let checkpointed = {
            let db = self.db()?;
            let read = db.begin_read().map_err(redb::Error::from)?;
            let meta = read.open_table(META).map_err(redb::Error::from)?;
            let lsn = meta.get(JOURNAL_LSN_KEY).map_err(redb::Error::from)?;
            lsn.map_or(0, |v| v.value())
        };
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let files = journal::list_files(&self.path).map_err(io)?;
        let entries = journal::recover(&files, checkpointed)?;
        let last = entries.last().map_or(checkpointed, |e| e.lsn);
        if !entries.is_empty() {
            tracing::info!(
                records = entries.len(),
                from = checkpointed + 1,
                through = last,
                "moving the journal's records into the store"
            );
            self.apply(&entries, last)
                .map_err(|e| OpenError::Recovery(Box::new(e)))?;
        }
        for (_, file) in files {
            // A file left behind is harmless: its records are at or below the checkpoint.
            if let Err(error) = std::fs::remove_file(&file) {
                tracing::warn!(%error, file = %file.display(), "cannot remove a journal file");
            }
        }
        self.lock_appender().next_lsn = last + 1;
        Ok(())
    }

    fn lock_appender(&self) -> MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_unchecked(&self) -> MutexGuard<'_, Unchecked> {
        self.unchecked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks an existing file's format through a read-only open, before the read-write open that
    /// would write to it (redb updates its header and allocator state when it opens and closes a
    /// file). A file that is not ours is refused without a byte of it changed.
    ///
    /// A file that needs crash recovery cannot be opened read-only; it is left to the read-write
    /// open, which recovers it, and [`Store::check_or_init_format`] checks it afterwards.
    fn refuse_foreign_file(path: &Path, options: &StoreOptions) -> Result<(), OpenError> {
        let is_empty_or_missing = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
        if is_empty_or_missing {
            return Ok(());
        }
        let database = |source| OpenError::Database {
            path: path.to_owned(),
            source,
        };
        let db = match Database::builder()
            .set_cache_size(options.cache_bytes)
            .open_read_only(path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) => return Ok(()),
            Err(e) => return Err(database(e)),
        };
        let read = db.begin_read().map_err(redb::Error::from)?;
        match stored_format_version(&read)? {
            StoredFormat::Empty | StoredFormat::Version(FORMAT_VERSION) => Ok(()),
            StoredFormat::Version(old) if MIGRATED_VERSIONS.contains(&old) => Ok(()),
            other => Err(other.refusal(path)),
        }
    }

    fn open_database(path: &Path, options: &StoreOptions) -> Result<Database, OpenError> {
        Database::builder()
            .set_cache_size(options.cache_bytes)
            // Verify every page's checksum when opening, not only after a crash: a file altered
            // outside redb (bit rot, a stray write) is refused instead of served, where a plain
            // open trusts it and may even panic. It reads the whole file once at start-up.
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|source| OpenError::Database {
                path: path.to_owned(),
                source,
            })
    }

    /// Closes the database and opens it again, after an I/O error (redb refuses everything on a
    /// database that had one). Waits for transactions in progress. redb rolls back anything not
    /// committed, so the file is as of the last successful commit.
    ///
    /// # Errors
    /// [`OpenError`] when the file cannot be opened again (the disk is still full, say); the
    /// store then refuses every operation until a later `reopen` succeeds.
    pub fn reopen(&self) -> Result<(), OpenError> {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // The old handle holds the file lock: drop it before opening again.
        *db = None;
        *db = Some(Self::open_database(&self.path, &self.options)?);
        Ok(())
    }

    /// The open database, held so that a reopen waits; `DatabaseClosed` while there is none.
    fn db(&self) -> Result<DbGuard<'_>, redb::Error> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            return Err(redb::StorageError::DatabaseClosed.into());
        }
        Ok(DbGuard(guard))
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_or_init_format(&self) -> Result<(), OpenError> {
        let db = self.db()?;
        let read = db.begin_read().map_err(redb::Error::from)?;
        match stored_format_version(&read)? {
            StoredFormat::Version(FORMAT_VERSION) => return Ok(()),
            StoredFormat::Empty => {}
            // Format 1 is format 2 without a journal: only the version changes.
            StoredFormat::Version(old) if MIGRATED_VERSIONS.contains(&old) => {
                tracing::info!(
                    from = old,
                    to = FORMAT_VERSION,
                    "migrating the store format"
                );
            }
            other => return Err(other.refusal(&self.path)),
        }
        drop(read);
        let write = db.begin_write().map_err(redb::Error::from)?;
        {
            let mut meta = write.open_table(META).map_err(redb::Error::from)?;
            meta.insert(FORMAT_VERSION_KEY, FORMAT_VERSION)
                .map_err(redb::Error::from)?;
            write.open_table(SNAPSHOTS).map_err(redb::Error::from)?;
            write.open_table(LOG).map_err(redb::Error::from)?;
            write.open_table(ROOMS).map_err(redb::Error::from)?;
        }
        write.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Loads a room: its snapshot with every later log entry applied. A room that was never
    /// written loads as an empty document with `next_seq` 1.
    ///
    /// # Errors
    /// [`LoadError`] when redb fails or a stored record does not decode; the store is unchanged.
    pub fn load(&self, room: &str) -> Result<StoredRoom, LoadError> {
        let storage = |source: redb::Error| LoadError::Storage {
            room: room.to_owned(),
            source,
        };
        // Taken before the tables are read: a checkpoint running meanwhile removes these
        // entries only after they are in the tables, so between the two nothing is missed
        // (and an entry seen in both is the same write twice, which changes nothing).
        let journaled: Vec<Write> = self
            .lock_unchecked()
            .entries
            .iter()
            .filter(|e| e.write.room() == room)
            .map(|e| e.write.clone())
            .collect();
        let db = self.db().map_err(storage)?;
        let read = db.begin_read().map_err(|e| storage(e.into()))?;
        let snapshots = read.open_table(SNAPSHOTS).map_err(|e| storage(e.into()))?;
        let log = read.open_table(LOG).map_err(|e| storage(e.into()))?;

        let mut snapshot: Option<(u64, Arc<[u8]>)> = None;
        if let Some(record) = snapshots.get(room).map_err(|e| storage(e.into()))? {
            let record = record.value();
            if record.len() < SNAPSHOT_HEADER {
                return Err(LoadError::Truncated {
                    room: room.to_owned(),
                });
            }
            let (header, state) = record.split_at(SNAPSHOT_HEADER);
            let through = u64::from_le_bytes(header.try_into().expect("header is 8 bytes"));
            snapshot = Some((through, state.into()));
        }
        let through = snapshot.as_ref().map_or(0, |s| s.0);
        let mut entries: BTreeMap<u64, Bytes> = BTreeMap::new();
        let range = log
            .range((room, through + 1)..=(room, u64::MAX))
            .map_err(|e| storage(e.into()))?;
        for entry in range {
            let (key, value) = entry.map_err(|e| storage(e.into()))?;
            entries.insert(key.value().1, Bytes::copy_from_slice(value.value()));
        }
        drop((log, snapshots, read, db));

        // The journal's writes on top, with the tables' meaning (see `apply`).
        for write in journaled {
            match write {
                Write::Append { seq, update, .. } => {
                    entries.insert(seq, update);
                }
                Write::Snapshot {
                    through_seq, state, ..
                } => {
                    entries.retain(|seq, _| *seq > through_seq);
                    snapshot = Some((through_seq, state));
                }
                Write::Delete { .. } => {
                    entries.clear();
                    snapshot = None;
                }
            }
        }

        let mut doc = RoomDoc::new();
        let through = snapshot.as_ref().map_or(0, |s| s.0);
        let mut snapshot_bytes = 0;
        if let Some((_, state)) = &snapshot {
            snapshot_bytes = state.len() as u64;
            doc.replay_stored_update_v1(state)
                .map_err(|source| LoadError::Corrupt {
                    room: room.to_owned(),
                    seq: 0,
                    source,
                })?;
        }
        let mut last_seq = through;
        let mut log_entries = 0;
        let mut log_bytes = 0;
        for (seq, update) in entries.range(through + 1..) {
            doc.replay_stored_update_v1(update)
                .map_err(|source| LoadError::Corrupt {
                    room: room.to_owned(),
                    seq: *seq,
                    source,
                })?;
            last_seq = *seq;
            log_entries += 1;
            log_bytes += update.len() as u64;
        }
        Ok(StoredRoom {
            doc,
            next_seq: last_seq + 1,
            log_entries,
            log_bytes,
            snapshot_bytes,
        })
    }

    /// Makes a batch durable: appends it to the journal with one `write` and one `fdatasync` (a
    /// group commit). A later [`Store::checkpoint`] moves it into the tables; loads see it at
    /// once.
    ///
    /// # Errors
    /// [`CommitError::Journal`] when the journal cannot be written or synced: the batch may be
    /// durable in part or whole, or not at all. Commit the same batch again: the next commit
    /// starts a new journal file that supersedes the failed one's tail, and every write is
    /// idempotent. [`CommitError::Behind`] when checkpoints have fallen too far behind; nothing
    /// was written.
    pub fn commit<'a>(
        &self,
        writes: impl IntoIterator<Item = &'a Write>,
    ) -> Result<(), CommitError> {
        let time_ms = now_ms();
        let mut appender = self.lock_appender();
        let backlog = self.lock_unchecked().bytes;
        if backlog > MAX_UNCHECKPOINTED_BYTES {
            return Err(CommitError::Behind { bytes: backlog });
        }
        let first_lsn = appender.next_lsn;
        let entries: Vec<Entry> = writes
            .into_iter()
            .zip(first_lsn..)
            .map(|(write, lsn)| Entry {
                lsn,
                time_ms,
                write: compact_copy(write),
            })
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let appender = &mut *appender;
        let mut buffer = std::mem::take(&mut appender.buffer);
        buffer.clear();
        journal::encode(&entries, &mut buffer);
        let result = self.append_records(appender, first_lsn, &buffer);
        // Keep the buffer's capacity for the next batch, unless one large write grew it.
        if buffer.capacity() <= 1 << 20 {
            appender.buffer = buffer;
        }
        result?;
        appender.next_lsn = first_lsn + entries.len() as u64;
        let mut unchecked = self.lock_unchecked();
        unchecked.bytes += buffer_len_of(&entries);
        unchecked.since.get_or_insert_with(Instant::now);
        unchecked.entries.extend(entries);
        Ok(())
    }

    /// Appends encoded records starting at `first_lsn`, starting a new journal file first if
    /// there is none. On failure the file is dropped, so the retry starts a new one at the same
    /// LSN, superseding whatever part of this append reached the old one.
    fn append_records(
        &self,
        appender: &mut Appender,
        first_lsn: u64,
        records: &[u8],
    ) -> Result<(), JournalError> {
        if appender.file.is_none() {
            let file =
                JournalFile::create(&self.path, first_lsn).map_err(|source| JournalError::Io {
                    path: journal::file_path(&self.path, first_lsn),
                    source,
                })?;
            if !appender.files.iter().any(|f| f == file.path()) {
                appender.files.push(file.path().to_owned());
            }
            appender.file = Some(file);
        }
        let file = appender.file.as_mut().expect("created above");
        if let Err(source) = file.append(records) {
            let path = file.path().to_owned();
            appender.file = None;
            return Err(JournalError::Io { path, source });
        }
        Ok(())
    }

    /// How much is journaled and not yet checkpointed.
    pub fn journal_backlog(&self) -> JournalBacklog {
        let unchecked = self.lock_unchecked();
        JournalBacklog {
            writes: unchecked.entries.len(),
            bytes: unchecked.bytes,
            since: unchecked.since,
        }
    }

    /// Moves everything journaled so far into the tables in one redb write transaction with
    /// immediate durability, then removes the journal files it covered. Commits go on
    /// meanwhile, into a new journal file. Returns the number of writes moved.
    ///
    /// # Errors
    /// [`CommitError`] when the transaction fails: the journal keeps everything, and the next
    /// checkpoint tries again (after [`Store::reopen`] for an I/O error).
    pub fn checkpoint(&self) -> Result<usize, CommitError> {
        let _one = self
            .checkpointing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (entries, retired) = {
            let mut appender = self.lock_appender();
            let unchecked = self.lock_unchecked();
            if unchecked.entries.is_empty() {
                return Ok(0);
            }
            // Every record in these files is in `unchecked` (commits add to both under the
            // appender's lock); later commits go to a new file.
            appender.file = None;
            let retired = std::mem::take(&mut appender.files);
            (
                unchecked.entries.iter().cloned().collect::<Vec<_>>(),
                retired,
            )
        };
        let last = entries.last().expect("not empty").lsn;
        if let Err(error) = self.apply(&entries, last) {
            let mut appender = self.lock_appender();
            let newer = std::mem::replace(&mut appender.files, retired);
            appender.files.extend(newer);
            return Err(error);
        }
        {
            let mut unchecked = self.lock_unchecked();
            let done = unchecked
                .entries
                .iter()
                .take_while(|e| e.lsn <= last)
                .count();
            let removed: Vec<Entry> = unchecked.entries.drain(..done).collect();
            unchecked.bytes = unchecked.bytes.saturating_sub(buffer_len_of(&removed));
            unchecked.since = if unchecked.entries.is_empty() {
                None
            } else {
                Some(Instant::now())
            };
        }
        for file in retired {
            // A file left behind is harmless: its records are at or below the checkpoint.
            if let Err(error) = std::fs::remove_file(&file) {
                tracing::warn!(%error, file = %file.display(), "cannot remove a journal file");
            }
        }
        Ok(entries.len())
    }

    /// The room table is kept by checkpoints: bring it up to date before reading it. A failing
    /// checkpoint (a full disk) leaves it as of the last one, which is still worth listing.
    fn checkpoint_for_reading(&self) {
        if self.journal_backlog().writes == 0 {
            return;
        }
        if let Err(error) = self.checkpoint() {
            tracing::warn!(%error, "listing rooms as of the last checkpoint");
        }
    }

    /// Writes journaled entries into the tables in one transaction with immediate durability,
    /// and records `through_lsn` as checkpointed.
    ///
    /// Every write is idempotent, so a batch (or a journal replayed at open) that is already
    /// in the tables, wholly or in part, leaves exactly what one application leaves: an
    /// appended update is stored once and counted once in the room's size, a snapshot or a
    /// deletion is simply done again.
    fn apply(&self, entries: &[Entry], through_lsn: u64) -> Result<(), CommitError> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut log = txn.open_table(LOG)?;
            let mut snapshots = txn.open_table(SNAPSHOTS)?;
            let mut rooms = txn.open_table(ROOMS)?;
            let mut meta = txn.open_table(META)?;
            let superseded = superseded_in_batch(entries);
            // Rooms with appends skipped as covered by a later snapshot, and their latest
            // commit time: the room's row must still say when it last changed.
            let mut covered_appends: BTreeMap<Arc<str>, u64> = BTreeMap::new();
            for (Entry { time_ms, write, .. }, superseded) in entries.iter().zip(superseded) {
                let now_ms = *time_ms;
                if superseded {
                    // A later write of this batch undoes it (a snapshot covering an append, a
                    // deletion): only an append's commit time is kept, set once per room below.
                    if let Write::Append { room, .. } = write {
                        let latest = covered_appends.entry(room.clone()).or_insert(0);
                        *latest = (*latest).max(now_ms);
                    }
                    continue;
                }
                match write {
                    Write::Append { room, seq, update } => {
                        // The same entry again (a retry after a commit that failed but was
                        // durable) replaces itself and must not count twice.
                        let replaced = log
                            .insert((&**room, *seq), &**update)?
                            .map_or(0, |old| old.value().len() as u64);
                        let bytes = rooms.get(&**room)?.map_or(0, |info| info.value().1);
                        let bytes = bytes.saturating_sub(replaced) + update.len() as u64;
                        rooms.insert(&**room, (now_ms, bytes))?;
                    }
                    Write::Snapshot {
                        room,
                        through_seq,
                        state,
                    } => {
                        let mut record = Vec::with_capacity(SNAPSHOT_HEADER + state.len());
                        record.extend_from_slice(&through_seq.to_le_bytes());
                        record.extend_from_slice(state);
                        snapshots.insert(&**room, record.as_slice())?;
                        log.retain_in((&**room, 0)..=(&**room, *through_seq), |_, _| false)?;
                        // Few entries follow a snapshot: the compaction just removed the rest.
                        let mut bytes = state.len() as u64;
                        for entry in log.range((&**room, *through_seq + 1)..=(&**room, u64::MAX))? {
                            bytes += entry?.1.value().len() as u64;
                        }
                        let updated = rooms.get(&**room)?.map_or(now_ms, |info| info.value().0);
                        rooms.insert(&**room, (updated, bytes))?;
                    }
                    Write::Delete { room } => {
                        snapshots.remove(&**room)?;
                        log.retain_in((&**room, 0)..=(&**room, u64::MAX), |_, _| false)?;
                        rooms.remove(&**room)?;
                    }
                }
            }
            for (room, time_ms) in covered_appends {
                // A room deleted later in the batch has no row, and gets none.
                let row = rooms.get(&*room)?.map(|info| info.value());
                if let Some((updated, bytes)) = row
                    && updated < time_ms
                {
                    rooms.insert(&*room, (time_ms, bytes))?;
                }
            }
            meta.insert(JOURNAL_LSN_KEY, through_lsn)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Compacts the file, giving the space of deleted pages back to the file system. Needs the
    /// store to itself (no other transaction open).
    ///
    /// # Errors
    /// [`CompactError`] when redb cannot compact; the file is then as before.
    pub fn compact_file(&mut self) -> Result<(), CompactError> {
        self.checkpoint()?;
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        db.as_mut().ok_or(CompactError::Unavailable)?.compact()?;
        Ok(())
    }

    /// What is stored about one room, or `None` if nothing is.
    ///
    /// # Errors
    /// [`ListError`] when redb fails to read.
    pub fn room_info(&self, room: &str) -> Result<Option<RoomInfo>, ListError> {
        self.checkpoint_for_reading();
        let db = self.db()?;
        let read = db.begin_read().map_err(redb::Error::from)?;
        let rooms = read.open_table(ROOMS).map_err(redb::Error::from)?;
        let info = rooms.get(room).map_err(redb::Error::from)?;
        Ok(info.map(|info| {
            let (updated_ms, stored_bytes) = info.value();
            RoomInfo {
                name: room.to_owned(),
                updated_ms,
                stored_bytes,
            }
        }))
    }

    /// Lists stored rooms in name order, starting after `after`, at most `limit` of them.
    ///
    /// # Errors
    /// [`ListError`] when redb fails to read; the store is unchanged.
    pub fn list_rooms(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomInfo>, ListError> {
        self.checkpoint_for_reading();
        let db = self.db()?;
        let read = db.begin_read().map_err(redb::Error::from)?;
        let rooms = read.open_table(ROOMS).map_err(redb::Error::from)?;
        let range = match after {
            Some(after) => rooms.range::<&str>((Bound::Excluded(after), Bound::Unbounded)),
            None => rooms.range::<&str>(..),
        }
        .map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (name, info) = entry.map_err(redb::Error::from)?;
            let (updated_ms, stored_bytes) = info.value();
            out.push(RoomInfo {
                name: name.value().to_owned(),
                updated_ms,
                stored_bytes,
            });
        }
        Ok(out)
    }
}

/// A stored room, as listed by [`Store::list_rooms`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room name.
    pub name: String,
    /// When its last update was committed, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// Bytes its snapshot and log hold.
    pub stored_bytes: u64,
}

/// Which writes of a batch a later write of the same batch makes moot: anything before a
/// deletion of its room, an append that a later snapshot covers, a snapshot that a later one
/// covering as much replaces. Skipping them leaves the tables exactly as applying them all
/// would (the room's commit time aside, which the caller keeps), and spares a checkpoint most
/// of the log at full speed, when compactions follow each other within one checkpoint.
fn superseded_in_batch(entries: &[Entry]) -> Vec<bool> {
    #[derive(Default, Clone, Copy)]
    struct Later {
        deleted: bool,
        snapshot_through: Option<u64>,
    }
    let mut later: std::collections::HashMap<&str, Later> = std::collections::HashMap::new();
    let mut superseded = vec![false; entries.len()];
    for (i, entry) in entries.iter().enumerate().rev() {
        let state = later.entry(entry.write.room()).or_default();
        let covered = |seq: u64| state.snapshot_through.is_some_and(|t| t >= seq);
        superseded[i] = state.deleted
            || match &entry.write {
                Write::Append { seq, .. } => covered(*seq),
                Write::Snapshot { through_seq, .. } => covered(*through_seq),
                Write::Delete { .. } => false,
            };
        match &entry.write {
            Write::Delete { .. } => state.deleted = true,
            Write::Snapshot { through_seq, .. } => {
                state.snapshot_through = state.snapshot_through.max(Some(*through_seq));
            }
            Write::Append { .. } => {}
        }
    }
    superseded
}

/// `write`, with an update in an allocation of its own, to be held until the next checkpoint. An
/// update is often a slice of the buffer its frame was read into, which a large message grew:
/// keeping the slice keeps the whole buffer. Two clients each sending 2 KiB edits between
/// 256 KiB awareness messages (`tests/interop/slow-reader.test.mjs`) took the relay to 612 MB
/// without the copy; 147 MB with it, as before the journal (146 MB).
fn compact_copy(write: &Write) -> Write {
    match write {
        Write::Append { room, seq, update } => Write::Append {
            room: room.clone(),
            seq: *seq,
            update: Bytes::copy_from_slice(update),
        },
        other => other.clone(),
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes that `entries` take in the journal and in memory, roughly: their payloads.
fn buffer_len_of(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| e.write.payload_len() as u64 + e.write.room().len() as u64 + 32)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

    fn edit(doc: &Doc, content: &str) -> Bytes {
        let text = doc.get_or_insert_text("t");
        let before = doc.transact().state_vector();
        let len = text.len(&doc.transact());
        text.insert(&mut doc.transact_mut(), len, content);
        Bytes::from(doc.transact().encode_diff_v1(&before))
    }

    fn text_of(room: &StoredRoom) -> String {
        let doc = room.doc.yrs();
        doc.get_or_insert_text("t").get_string(&doc.transact())
    }

    fn append(room: &str, seq: u64, update: Bytes) -> Write {
        Write::Append {
            room: room.into(),
            seq,
            update,
        }
    }

    #[test]
    fn committing_a_batch_again_changes_nothing() {
        // What the relay's writer does after a commit that failed but was in fact durable.
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open(&dir.path().join("relay.redb"), &StoreOptions::default()).expect("open");
        let source = Doc::new();
        let first = append("a", 1, edit(&source, "hello"));
        let second = append("a", 2, edit(&source, " world"));
        store.commit(std::slice::from_ref(&first)).expect("commit");
        let once = store.room_info("a").expect("info").expect("stored");
        store
            .commit(std::slice::from_ref(&first))
            .expect("the same batch again");
        assert_eq!(
            store
                .room_info("a")
                .expect("info")
                .expect("stored")
                .stored_bytes,
            once.stored_bytes,
            "an update stored twice is counted once"
        );
        store
            .commit(&[first, second.clone(), second])
            .expect("a retry with later writes");
        let room = store.load("a").expect("load");
        assert_eq!(text_of(&room), "hello world");
        assert_eq!((room.next_seq, room.log_entries), (3, 2));
        assert_eq!(
            store
                .room_info("a")
                .expect("info")
                .expect("stored")
                .stored_bytes,
            room.log_bytes,
            "the room's size is its log's"
        );
    }

    #[test]
    fn log_round_trips_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.redb");
        let source = Doc::new();
        {
            let store = Store::open(&path, &StoreOptions::default()).expect("open");
            store
                .commit(&[
                    append("a", 1, edit(&source, "hello")),
                    append("a", 2, edit(&source, " world")),
                    append(
                        "b",
                        1,
                        Bytes::from(
                            Doc::new()
                                .transact()
                                .encode_state_as_update_v1(&StateVector::default()),
                        ),
                    ),
                ])
                .expect("commit");
        }
        let store = Store::open(&path, &StoreOptions::default()).expect("reopen");
        let a = store.load("a").expect("load a");
        assert_eq!(text_of(&a), "hello world");
        assert_eq!((a.next_seq, a.log_entries), (3, 2));
        let missing = store.load("never-written").expect("load empty");
        assert_eq!((missing.next_seq, missing.log_entries), (1, 0));
        assert_eq!(text_of(&missing), "");
    }

    #[test]
    fn snapshot_replaces_covered_log_entries_and_keeps_later_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open(&dir.path().join("s.redb"), &StoreOptions::default()).expect("open");
        let source = Doc::new();
        store
            .commit(&[
                append("r", 1, edit(&source, "a")),
                append("r", 2, edit(&source, "b")),
            ])
            .expect("commit");
        let state_through_2: Arc<[u8]> = source
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
            .into();
        // An update that arrives while the snapshot is prepared gets seq 3.
        store
            .commit(&[append("r", 3, edit(&source, "c"))])
            .expect("commit");
        store
            .commit(&[Write::Snapshot {
                room: "r".into(),
                through_seq: 2,
                state: state_through_2,
            }])
            .expect("compact");
        let room = store.load("r").expect("load");
        assert_eq!(text_of(&room), "abc");
        assert_eq!((room.log_entries, room.next_seq), (1, 4));
        assert!(room.snapshot_bytes > 0);
    }

    #[test]
    fn rooms_are_listed_in_pages_with_their_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open(&dir.path().join("l.redb"), &StoreOptions::default()).expect("open");
        let source = Doc::new();
        let first = edit(&source, "abc");
        let first_len = first.len() as u64;
        store
            .commit(&[
                append("b", 1, first),
                append("a", 1, edit(&Doc::new(), "x")),
                append("c", 1, edit(&Doc::new(), "y")),
            ])
            .expect("commit");
        let second = edit(&source, "def");
        let second_len = second.len() as u64;
        store.commit(&[append("b", 2, second)]).expect("commit");
        let page = store.list_rooms(None, 2).expect("list");
        assert_eq!(
            page.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(page[1].stored_bytes, first_len + second_len);
        assert!(page[1].updated_ms > 0);
        let rest = store.list_rooms(Some("b"), 2).expect("list");
        assert_eq!(
            rest.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["c"]
        );

        // After a compaction the size is the snapshot's.
        let state: Arc<[u8]> = source
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
            .into();
        let state_len = state.len() as u64;
        store
            .commit(&[Write::Snapshot {
                room: "b".into(),
                through_seq: 2,
                state,
            }])
            .expect("compact");
        let b = store.list_rooms(Some("a"), 1).expect("list");
        assert_eq!(b[0].stored_bytes, state_len);
        assert_eq!(b[0].updated_ms, page[1].updated_ms);
    }

    #[test]
    fn delete_removes_snapshot_log_and_listing_of_one_room_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open(&dir.path().join("d.redb"), &StoreOptions::default()).expect("open");
        let source = Doc::new();
        let state: Arc<[u8]> = {
            edit(&source, "abc");
            source
                .transact()
                .encode_state_as_update_v1(&StateVector::default())
                .into()
        };
        store
            .commit(&[
                append("gone", 1, edit(&source, "d")),
                Write::Snapshot {
                    room: "gone".into(),
                    through_seq: 1,
                    state,
                },
                append("gone", 2, edit(&source, "e")),
                append("kept", 1, edit(&Doc::new(), "k")),
            ])
            .expect("commit");
        store
            .commit(&[Write::Delete {
                room: "gone".into(),
            }])
            .expect("delete");
        let gone = store.load("gone").expect("load");
        assert_eq!(
            (gone.next_seq, gone.log_entries, gone.snapshot_bytes),
            (1, 0, 0)
        );
        assert_eq!(store.room_info("gone").expect("info"), None);
        assert_eq!(text_of(&store.load("kept").expect("load")), "k");
        assert!(store.room_info("kept").expect("info").is_some());
    }

    #[test]
    fn foreign_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.redb");
        let foreign = b"this is somebody's spreadsheet, not a database".repeat(100);
        std::fs::write(&path, &foreign).expect("write");
        let err = Store::open(&path, &StoreOptions::default()).expect_err("must refuse");
        assert!(matches!(err, OpenError::Database { .. }), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), foreign);
    }

    #[test]
    fn redb_file_of_another_application_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("other.redb");
        {
            let db = Database::create(&path).expect("create");
            let w = db.begin_write().expect("write");
            {
                let mut t = w
                    .open_table(TableDefinition::<&str, &str>::new("users"))
                    .expect("table");
                t.insert("alice", "admin").expect("insert");
            }
            w.commit().expect("commit");
        }
        let err = Store::open(&path, &StoreOptions::default()).expect_err("must refuse");
        assert!(matches!(err, OpenError::Foreign { .. }), "{err}");
    }

    #[test]
    fn other_format_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("future.redb");
        {
            let db = Database::create(&path).expect("create");
            let w = db.begin_write().expect("write");
            w.open_table(META)
                .expect("meta")
                .insert(FORMAT_VERSION_KEY, FORMAT_VERSION + 1)
                .expect("insert");
            w.commit().expect("commit");
        }
        let err = Store::open(&path, &StoreOptions::default()).expect_err("must refuse");
        assert!(
            matches!(err, OpenError::UnsupportedVersion { found, .. } if found == FORMAT_VERSION + 1),
            "{err}"
        );
    }

    #[test]
    fn corrupt_stored_update_is_reported_with_its_room_and_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open(&dir.path().join("c.redb"), &StoreOptions::default()).expect("open");
        store
            .commit(&[append(
                "bad",
                1,
                Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            )])
            .expect("commit");
        let err = store.load("bad").expect_err("corrupt");
        assert!(matches!(err, LoadError::Corrupt { seq: 1, .. }), "{err}");
    }

    fn journal_files(dir: &Path) -> usize {
        journal::list_files(&dir.join("relay.redb"))
            .expect("list")
            .len()
    }

    #[test]
    fn a_commit_is_read_back_before_and_after_its_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open(&dir.path().join("relay.redb"), &StoreOptions::default()).expect("open");
        let source = Doc::new();
        store
            .commit(&[append("a", 1, edit(&source, "hello"))])
            .expect("commit");
        store
            .commit(&[append("a", 2, edit(&source, " world"))])
            .expect("commit");
        assert_eq!(store.journal_backlog().writes, 2);
        assert_eq!(journal_files(dir.path()), 1, "one file for both commits");
        let before = store.load("a").expect("load");
        assert_eq!(text_of(&before), "hello world");
        assert_eq!(store.checkpoint().expect("checkpoint"), 2);
        assert_eq!(store.journal_backlog(), JournalBacklog::default());
        assert_eq!(
            journal_files(dir.path()),
            0,
            "the checkpoint retires the file"
        );
        let after = store.load("a").expect("load");
        assert_eq!(text_of(&after), "hello world");
        assert_eq!((after.next_seq, after.log_entries), (3, 2));
        // The next commit starts a new file.
        store
            .commit(&[append("a", 3, edit(&source, "!"))])
            .expect("commit");
        assert_eq!(journal_files(dir.path()), 1);
        assert_eq!(text_of(&store.load("a").expect("load")), "hello world!");
    }

    #[test]
    fn journaled_writes_survive_a_reopen_without_a_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.redb");
        let source = Doc::new();
        {
            let store = Store::open(&path, &StoreOptions::default()).expect("open");
            store
                .commit(&[append("a", 1, edit(&source, "kept"))])
                .expect("commit");
            store.checkpoint().expect("checkpoint");
            store
                .commit(&[append("a", 2, edit(&source, " in the journal"))])
                .expect("commit");
            // Dropped without a checkpoint: as after a crash, only the journal has seq 2.
        }
        assert_eq!(journal_files(dir.path()), 1);
        let store = Store::open(&path, &StoreOptions::default()).expect("reopen");
        assert_eq!(
            journal_files(dir.path()),
            0,
            "recovery moves the journal into redb"
        );
        let a = store.load("a").expect("load");
        assert_eq!(text_of(&a), "kept in the journal");
        assert_eq!(a.next_seq, 3);
        // Numbering goes on after the recovered records, so a later start does not take a
        // new file for an old one.
        store
            .commit(&[append("a", 3, edit(&source, "."))])
            .expect("commit");
        drop(store);
        let store = Store::open(&path, &StoreOptions::default()).expect("reopen");
        assert_eq!(
            text_of(&store.load("a").expect("load")),
            "kept in the journal."
        );
    }

    #[test]
    fn a_load_applies_journaled_snapshots_and_deletions_over_the_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open(&dir.path().join("relay.redb"), &StoreOptions::default()).expect("open");
        let source = Doc::new();
        store
            .commit(&[
                append("r", 1, edit(&source, "a")),
                append("r", 2, edit(&source, "b")),
                append("r", 3, edit(&source, "c")),
            ])
            .expect("commit");
        store.checkpoint().expect("checkpoint");
        // A snapshot covering 2 may hold more (the relay's compaction runs while updates
        // arrive): here it holds 3 too, and entry 3 stays in the log.
        let state: Arc<[u8]> = store.load("r").expect("load").doc.encode_state_v1();
        store
            .commit(&[
                Write::Snapshot {
                    room: "r".into(),
                    through_seq: 2,
                    state,
                },
                append("r", 4, edit(&source, "d")),
            ])
            .expect("commit");
        let room = store.load("r").expect("load");
        assert_eq!(text_of(&room), "abcd");
        // Entry 3 from the tables and 4 from the journal follow the journaled snapshot.
        assert_eq!((room.next_seq, room.log_entries), (5, 2));
        assert!(room.snapshot_bytes > 0);
        store
            .commit(&[Write::Delete { room: "r".into() }])
            .expect("commit");
        let gone = store.load("r").expect("load");
        assert_eq!((text_of(&gone), gone.next_seq), (String::new(), 1));
        store.checkpoint().expect("checkpoint");
        assert_eq!(store.room_info("r").expect("info"), None);
    }

    #[test]
    fn commits_during_checkpoints_all_survive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.redb");
        let store = Arc::new(Store::open(&path, &StoreOptions::default()).expect("open"));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpoints = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut runs = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.checkpoint().expect("checkpoint");
                    runs += 1;
                }
                runs
            })
        };
        let source = Doc::new();
        for seq in 1..=200 {
            store
                .commit(&[append("r", seq, edit(&source, "x"))])
                .expect("commit");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(checkpoints.join().expect("no panic") > 0);
        assert_eq!(text_of(&store.load("r").expect("load")), "x".repeat(200));
        drop(store);
        let store = Store::open(&path, &StoreOptions::default()).expect("reopen");
        let room = store.load("r").expect("load");
        assert_eq!(text_of(&room), "x".repeat(200));
        assert_eq!((room.next_seq, room.log_entries), (201, 200));
    }

    #[test]
    fn a_checkpoint_skipping_covered_writes_leaves_what_applying_each_leaves() {
        let source = Doc::new();
        let updates: Vec<Bytes> = ["a", "b", "c", "d"]
            .iter()
            .map(|t| edit(&source, t))
            .collect();
        let upto = |n: usize| -> Arc<[u8]> {
            let doc = Doc::new();
            for update in &updates[..n] {
                let update = <yrs::Update as yrs::updates::decoder::Decode>::decode_v1(update)
                    .expect("decodes");
                doc.transact_mut().apply_update(update).expect("applies");
            }
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default())
                .into()
        };
        let snapshot = |through_seq: u64| Write::Snapshot {
            room: "r".into(),
            through_seq,
            state: upto(through_seq as usize),
        };
        let batch = vec![
            append("gone", 1, updates[0].clone()),
            append("r", 1, updates[0].clone()),
            append("r", 2, updates[1].clone()),
            snapshot(2),
            append("r", 3, updates[2].clone()),
            snapshot(3),
            append("r", 4, updates[3].clone()),
            Write::Delete {
                room: "gone".into(),
            },
        ];
        let entries: Vec<Entry> = batch
            .iter()
            .zip(1..)
            .map(|(write, lsn)| Entry {
                lsn,
                time_ms: 5,
                write: write.clone(),
            })
            .collect();
        assert_eq!(
            superseded_in_batch(&entries),
            [true, true, true, true, true, false, false, false]
        );
        let read = |one_by_one: bool| {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(&dir.path().join("relay.redb"), &StoreOptions::default())
                .expect("open");
            if one_by_one {
                for write in &batch {
                    store.commit(std::slice::from_ref(write)).expect("commit");
                    store.checkpoint().expect("checkpoint");
                }
            } else {
                store.commit(&batch).expect("commit");
                store.checkpoint().expect("checkpoint");
            }
            let room = store.load("r").expect("load");
            (
                text_of(&room),
                (room.next_seq, room.log_entries, room.snapshot_bytes),
                // Commit times differ between the two ways; sizes and names must not.
                store
                    .list_rooms(None, 10)
                    .expect("list")
                    .into_iter()
                    .map(|info| (info.name, info.stored_bytes))
                    .collect::<Vec<_>>(),
            )
        };
        let (text, layout, listed) = read(false);
        assert_eq!(text, "abcd");
        assert_eq!(layout.0, 5);
        assert_eq!((text, layout, listed), read(true));
    }
}
