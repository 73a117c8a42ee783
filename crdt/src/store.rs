//! Durable storage of room documents in one redb file.
//!
//! # On-disk format, version 1
//!
//! One redb database (by default `<data-dir>/relay.redb`) with four tables:
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `meta` | `&str` | `u64`; `"format_version"` = [`FORMAT_VERSION`] |
//! | `snapshots` | room name (`&str`) | 8-byte little-endian sequence number *S*, then a Yjs update (v1) holding the whole document as of update *S* |
//! | `log` | (room name, sequence number) (`(&str, u64)`) | one Yjs update (v1) |
//! | `rooms` | room name (`&str`) | (`u64`, `u64`): when the last update was committed, in milliseconds since the Unix epoch, and the bytes the room's snapshot and log hold |
//!
//! Each room numbers its updates 1, 2, 3, ... A room's document is its snapshot (if any) with every
//! log entry of a higher sequence number applied in order. A compaction writes a snapshot covering
//! *S* and deletes the log entries up to *S* in the same transaction, so entries appended while
//! it was being prepared (numbered above *S*) stay in the log.
//!
//! # Durability
//!
//! Every [`Store::commit`] is one redb write transaction with [`redb::Durability::Immediate`]:
//! when it returns `Ok`, the data and its checksums are fsynced and survive a crash or power loss
//! (given a disk that honours fsync). A crash during a commit leaves the previous commit; redb
//! rolls the torn one back on the next open. Nothing is written outside a commit.
//!
//! A commit that returns an error is *not* known to be rolled back: redb applies a transaction
//! atomically, all or nothing, but an error after it began writing (an `fsync` that failed, say)
//! may leave the whole batch durable, and redb then refuses writes until the database is opened
//! again ([`Store::reopen`]). So nobody may be told *saved* for a failed commit, and every write
//! is idempotent: committing the same batch again after a failure that was in fact durable
//! leaves exactly what one successful commit leaves (an appended update is stored once and
//! counted once in the room's size, a snapshot or a deletion is simply done again).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::doc::RoomDoc;
use crate::error::{CommitError, CompactError, ListError, LoadError, OpenError};

/// The store format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

const FORMAT_VERSION_KEY: &str = "format_version";
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
        };
        store.check_or_init_format()?;
        Ok(store)
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
        let db = self.db().map_err(storage)?;
        let read = db.begin_read().map_err(|e| storage(e.into()))?;
        let snapshots = read.open_table(SNAPSHOTS).map_err(|e| storage(e.into()))?;
        let log = read.open_table(LOG).map_err(|e| storage(e.into()))?;

        let mut doc = RoomDoc::new();
        let mut through = 0;
        let mut snapshot_bytes = 0;
        if let Some(record) = snapshots.get(room).map_err(|e| storage(e.into()))? {
            let record = record.value();
            if record.len() < SNAPSHOT_HEADER {
                return Err(LoadError::Truncated {
                    room: room.to_owned(),
                });
            }
            let (header, state) = record.split_at(SNAPSHOT_HEADER);
            through = u64::from_le_bytes(header.try_into().expect("header is 8 bytes"));
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
        let entries = log
            .range((room, through + 1)..=(room, u64::MAX))
            .map_err(|e| storage(e.into()))?;
        for entry in entries {
            let (key, value) = entry.map_err(|e| storage(e.into()))?;
            let seq = key.value().1;
            let update = value.value();
            doc.replay_stored_update_v1(update)
                .map_err(|source| LoadError::Corrupt {
                    room: room.to_owned(),
                    seq,
                    source,
                })?;
            last_seq = seq;
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

    /// Writes a batch in one write transaction with immediate durability (a group commit).
    ///
    /// # Errors
    /// [`CommitError`] when any part fails. The batch is then either wholly on disk or not at
    /// all, and which one is not known (redb's `WriteTransaction::commit` may fail after the
    /// transaction became durable); call [`Store::reopen`], then commit the same batch again:
    /// every write is idempotent, so a retry of a batch that was durable changes nothing.
    pub fn commit<'a>(
        &self,
        writes: impl IntoIterator<Item = &'a Write>,
    ) -> Result<(), CommitError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut log = txn.open_table(LOG)?;
            let mut snapshots = txn.open_table(SNAPSHOTS)?;
            let mut rooms = txn.open_table(ROOMS)?;
            for write in writes {
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
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        db.as_mut().ok_or(CompactError::Unavailable)?.compact()?;
        Ok(())
    }

    /// What is stored about one room, or `None` if nothing is.
    ///
    /// # Errors
    /// [`ListError`] when redb fails to read.
    pub fn room_info(&self, room: &str) -> Result<Option<RoomInfo>, ListError> {
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
            matches!(err, OpenError::UnsupportedVersion { found: 2, .. }),
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
}
