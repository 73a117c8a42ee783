//! The journal: an append-only file that makes a batch of writes durable with one `write` and one
//! `fdatasync`, in front of the redb file that holds the same writes in tables.
//!
//! A redb transaction with immediate durability rewrites several B-tree pages, its allocator
//! state and its header, and syncs them: at typing rates, one such transaction per update cost
//! more CPU than everything else the relay does with it. The journal appends the batch's
//! records to the end of one file and syncs that file; [`crate::store::Store::checkpoint`]
//! later moves everything journaled into redb in one larger transaction and retires the files
//! it covered.
//!
//! # Files
//!
//! `<store file>.journal.<first LSN>` beside the store file (`relay.redb.journal.00000000000000000001`),
//! the first LSN zero-padded to 20 digits so that names sort like numbers. Each file holds
//! records numbered consecutively from the one its name gives. A new file is started after each
//! checkpoint and after a failed append (the failed file's tail is then in an unknown state; its
//! records from the new file's first LSN on are superseded).
//!
//! # Record
//!
//! One record per group commit, holding the batch's writes:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | payload length *n*, u32 little-endian |
//! | 4 | CRC-32 (IEEE) of the next 8 + *n* bytes |
//! | 8 | LSN of the batch's first write, u64 little-endian; the others follow it one by one |
//! | *n* | payload |
//!
//! The payload, in lib0 variable-length integers (`var`): the commit time (milliseconds since
//! the Unix epoch, `var`), the number of distinct rooms the batch writes to (`var`) and their
//! names (`var` length, UTF-8 each), the number of writes (`var`), then each write: a tag byte
//! (1 append, 2 snapshot, 3 delete), the room's index in that list (`var`), and for an append
//! its sequence number (`var`) and the update (`var` length, bytes), for a snapshot the sequence
//! number it covers (`var`) and the state (`var` length, bytes). (Naming each room once per
//! record keeps a busy room's name from costing more than its keystrokes.)
//!
//! A record that is cut short, fails its CRC or does not decode ends the file: it is the torn
//! tail of an append that was never reported durable.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{JournalError, ProtocolError};
use crate::protocol::{Cursor, write_var_bytes, write_var_u64};
use crate::store::Write;

const HEADER: usize = 16;
const TAG_APPEND: u8 = 1;
const TAG_SNAPSHOT: u8 = 2;
const TAG_DELETE: u8 = 3;
/// Digits of the LSN in a file name.
const LSN_DIGITS: usize = 20;

/// One journaled write with its place in the journal and its commit time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Log sequence number: journal-wide, consecutive, never reused for another write.
    pub lsn: u64,
    /// When it was committed (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// What was written.
    pub write: Write,
}

/// The suffix that marks a journal file of `store`, up to the LSN.
fn prefix(store: &Path) -> String {
    let name = store
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
    format!("{name}.journal.")
}

/// The path of the journal file of `store` whose first record is `first_lsn`.
pub(crate) fn file_path(store: &Path, first_lsn: u64) -> PathBuf {
    store.with_file_name(format!("{}{first_lsn:0LSN_DIGITS$}", prefix(store)))
}

/// The journal files of `store` and their first LSNs, in LSN order.
pub(crate) fn list_files(store: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match store.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let prefix = prefix(store);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(lsn) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|digits| digits.len() == LSN_DIGITS)
            .and_then(|digits| digits.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((lsn, entry.path()));
    }
    files.sort();
    Ok(files)
}

/// Appends one record holding `entries` (consecutive LSNs, one commit time) to `out`.
pub(crate) fn encode(entries: &[Entry], out: &mut Vec<u8>) {
    let Some(first) = entries.first() else {
        return;
    };
    let start = out.len();
    out.extend_from_slice(&[0; 8]); // length and CRC, filled in below
    out.extend_from_slice(&first.lsn.to_le_bytes());
    write_var_u64(out, first.time_ms);
    // The batch's rooms in order of first appearance; a batch names few, so a linear search
    // is fine (and keeps the order the same for the same batch).
    let mut rooms: Vec<&str> = Vec::new();
    let index: Vec<usize> = entries
        .iter()
        .map(|entry| {
            let room = entry.write.room();
            rooms.iter().position(|r| *r == room).unwrap_or_else(|| {
                rooms.push(room);
                rooms.len() - 1
            })
        })
        .collect();
    write_var_u64(out, rooms.len() as u64);
    for room in &rooms {
        write_var_bytes(out, room.as_bytes());
    }
    write_var_u64(out, entries.len() as u64);
    for (entry, room) in entries.iter().zip(index) {
        debug_assert_eq!(entry.time_ms, first.time_ms, "one commit time per record");
        let room = room as u64;
        match &entry.write {
            Write::Append { seq, update, .. } => {
                out.push(TAG_APPEND);
                write_var_u64(out, room);
                write_var_u64(out, *seq);
                write_var_bytes(out, update);
            }
            Write::Snapshot {
                through_seq, state, ..
            } => {
                out.push(TAG_SNAPSHOT);
                write_var_u64(out, room);
                write_var_u64(out, *through_seq);
                write_var_bytes(out, state);
            }
            Write::Delete { .. } => {
                out.push(TAG_DELETE);
                write_var_u64(out, room);
            }
        }
    }
    let payload_len = (out.len() - start - HEADER) as u32;
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the records at the start of `bytes`, stopping at the first one that is cut short, fails
/// its CRC or does not decode (the torn tail of an append that was never reported durable).
pub(crate) fn decode_all(bytes: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut rest = bytes;
    while let Some(used) = decode_one(rest, &mut entries) {
        rest = &rest[used..];
    }
    entries
}

/// Decodes one record into `into`; returns its length, or `None` (adding nothing) if it is
/// not a whole, intact record.
fn decode_one(bytes: &[u8], into: &mut Vec<Entry>) -> Option<usize> {
    let header = bytes.get(..HEADER)?;
    let payload_len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let first_lsn = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let end = HEADER.checked_add(payload_len)?;
    let record = bytes.get(..end)?;
    if crc32fast::hash(&record[8..]) != crc {
        return None;
    }
    let decoded = decode_payload(&record[HEADER..], first_lsn).ok()?;
    into.extend(decoded);
    Some(end)
}

fn decode_payload(payload: &[u8], first_lsn: u64) -> Result<Vec<Entry>, ProtocolError> {
    let mut cursor = Cursor::new(payload);
    let time_ms = cursor.read_var_u64()?;
    // Each room name takes at least one byte (its length), each write two (tag and index).
    let room_count = cursor.read_count(1)?;
    let mut rooms: Vec<Arc<str>> = Vec::with_capacity(room_count);
    for _ in 0..room_count {
        rooms.push(cursor.read_var_str()?.into());
    }
    let count = cursor.read_count(2)?;
    let mut entries = Vec::with_capacity(count);
    for lsn in (first_lsn..).take(count) {
        let tag = cursor.read_u8()?;
        let room = usize::try_from(cursor.read_var_u64()?)
            .ok()
            .and_then(|i| rooms.get(i))
            .ok_or(ProtocolError::Truncated)?
            .clone();
        let write = match tag {
            TAG_APPEND => Write::Append {
                room,
                seq: cursor.read_var_u64()?,
                update: Bytes::copy_from_slice(cursor.read_var_bytes()?),
            },
            TAG_SNAPSHOT => Write::Snapshot {
                room,
                through_seq: cursor.read_var_u64()?,
                state: cursor.read_var_bytes()?.into(),
            },
            TAG_DELETE => Write::Delete { room },
            _ => return Err(ProtocolError::Truncated),
        };
        entries.push(Entry {
            lsn,
            time_ms,
            write,
        });
    }
    if !cursor.is_empty() {
        return Err(ProtocolError::Truncated);
    }
    Ok(entries)
}

/// The journaled entries of `files` (as [`list_files`] returns them) after `checkpointed`, in
/// order: each file's records up to the next file's first LSN, which supersedes the rest.
///
/// # Errors
/// [`JournalError::Io`] reading a file, or [`JournalError::Gap`] when the records found do not continue
/// `checkpointed` without a gap (a journal file missing or damaged before its end): the
/// caller must not open the store over a hole in what it acknowledged.
pub(crate) fn recover(
    files: &[(u64, PathBuf)],
    checkpointed: u64,
) -> Result<Vec<Entry>, JournalError> {
    let mut recovered: Vec<Entry> = Vec::new();
    let mut expected = checkpointed + 1;
    for (i, (first_lsn, path)) in files.iter().enumerate() {
        let superseded_from = files.get(i + 1).map_or(u64::MAX, |(next, _)| *next);
        if superseded_from <= checkpointed + 1 {
            continue;
        }
        let bytes = std::fs::read(path).map_err(|source| JournalError::Io {
            path: path.clone(),
            source,
        })?;
        // A file's records number on from its name; one that does not is not of this file.
        for (in_order, entry) in (*first_lsn..).zip(decode_all(&bytes)) {
            if entry.lsn != in_order || entry.lsn >= superseded_from {
                break;
            }
            if entry.lsn < expected {
                continue;
            }
            if entry.lsn > expected {
                return Err(JournalError::Gap {
                    path: path.clone(),
                    expected,
                    found: entry.lsn,
                });
            }
            expected += 1;
            recovered.push(entry);
        }
    }
    Ok(recovered)
}

/// The journal file being appended to.
#[derive(Debug)]
pub(crate) struct JournalFile {
    file: File,
    path: PathBuf,
    /// Bytes appended so far.
    pub len: u64,
}

impl JournalFile {
    /// Creates (or empties) the journal file of `store` starting at `first_lsn`, and makes its
    /// name durable (syncs the directory), so that records synced into it survive a crash.
    pub(crate) fn create(store: &Path, first_lsn: u64) -> std::io::Result<JournalFile> {
        let path = file_path(store, first_lsn);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.sync_all()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(JournalFile { file, path, len: 0 })
    }

    /// Appends already encoded records and syncs their data: one `write` (a loop only if the
    /// kernel takes part of it) and one `fdatasync`.
    pub(crate) fn append(&mut self, records: &[u8]) -> std::io::Result<()> {
        self.file.write_all(records)?;
        self.file.sync_data()?;
        self.len += records.len() as u64;
        Ok(())
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(lsn: u64, seq: u64) -> Entry {
        Entry {
            lsn,
            time_ms: 1_700_000_000_000 + lsn,
            write: Write::Append {
                room: "notes/a".into(),
                seq,
                update: Bytes::from(vec![lsn as u8; 5]),
            },
        }
    }

    fn write_file(store: &Path, first: u64, entries: &[Entry]) -> PathBuf {
        let mut bytes = Vec::new();
        for entry in entries {
            encode(std::slice::from_ref(entry), &mut bytes);
        }
        let path = file_path(store, first);
        std::fs::write(&path, bytes).expect("write journal");
        path
    }

    #[test]
    fn every_kind_of_write_round_trips() {
        let entries = vec![
            append(1, 1),
            Entry {
                lsn: 2,
                time_ms: 1_700_000_000_001,
                write: Write::Snapshot {
                    room: "ö".into(),
                    through_seq: 9,
                    state: vec![1, 2, 3].into(),
                },
            },
            Entry {
                lsn: 3,
                time_ms: 1_700_000_000_001,
                write: Write::Delete { room: "".into() },
            },
        ];
        let mut bytes = Vec::new();
        encode(&entries[..1], &mut bytes);
        encode(&entries[1..], &mut bytes);
        assert_eq!(decode_all(&bytes), entries);
        // One batch writing to two rooms, the first again after the second.
        let mut again = entries[0].clone();
        again.lsn = 4;
        again.time_ms = entries[1].time_ms;
        let batch = vec![entries[1].clone(), entries[2].clone(), again];
        let mut bytes = Vec::new();
        encode(&batch, &mut bytes);
        assert_eq!(decode_all(&bytes), batch);
    }

    #[test]
    fn a_torn_or_altered_record_ends_the_file() {
        let mut bytes = Vec::new();
        encode(&[append(1, 1)], &mut bytes);
        let whole = bytes.len();
        encode(&[append(2, 2)], &mut bytes);
        for cut in whole..bytes.len() {
            assert_eq!(decode_all(&bytes[..cut]).len(), 1, "cut at {cut}");
        }
        let mut altered = bytes.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(decode_all(&altered), vec![append(1, 1)]);
    }

    #[test]
    fn recovery_skips_what_is_checkpointed_and_what_a_later_file_supersedes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("relay.redb");
        // File 1 holds 1..=4, but its 3 and 4 were a failed append retried in file 3.
        write_file(
            &store,
            1,
            &[append(1, 1), append(2, 2), append(3, 3), append(4, 4)],
        );
        write_file(&store, 3, &[append(3, 30), append(4, 40), append(5, 50)]);
        std::fs::write(dir.path().join("relay.redb.journal.x"), b"not ours").expect("write");
        let files = list_files(&store).expect("list");
        assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), vec![1, 3]);
        let seqs = |entries: Vec<Entry>| -> Vec<u64> {
            entries
                .iter()
                .map(|e| match e.write {
                    Write::Append { seq, .. } => seq,
                    _ => unreachable!(),
                })
                .collect()
        };
        assert_eq!(
            seqs(recover(&files, 0).expect("recover")),
            vec![1, 2, 30, 40, 50]
        );
        assert_eq!(seqs(recover(&files, 3).expect("recover")), vec![40, 50]);
        assert_eq!(
            seqs(recover(&files, 5).expect("recover")),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn a_missing_record_refuses_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("relay.redb");
        write_file(&store, 4, &[append(4, 4)]);
        let files = list_files(&store).expect("list");
        assert!(matches!(
            recover(&files, 2),
            Err(JournalError::Gap {
                expected: 3,
                found: 4,
                ..
            })
        ));
    }
}
