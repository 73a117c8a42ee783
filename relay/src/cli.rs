//! The administration commands that work on a data directory directly (`relay docs ...`,
//! `relay compact`, `relay check`) and the token command.
//!
//! They open the store themselves, so they refuse, politely, while a relay holds it: redb allows
//! one writer process, and the HTTP API is the way to change documents of a running relay.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use crdt::doc::{Applied, RoomDoc};
use crdt::error::OpenError;
use crdt::store::{RoomInfo, Store, StoreOptions, Write};

use crate::auth::{Access, Claims, KeyError, Keys, now_secs};
use crate::config::STORE_FILE;
use crate::edge::room_name;

/// Why a command failed, with what the user should do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A running relay holds the store.
    #[error(
        "{0} is in use by a running relay; stop it first, or use the HTTP API (/api/docs) to change documents while it runs"
    )]
    InUse(PathBuf),
    /// There is no store at the path.
    #[error("there is no store at {0}; check --data-dir")]
    NoStore(PathBuf),
    /// The store cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A store operation failed.
    #[error("{0}")]
    Store(String),
    /// A document does not exist.
    #[error("no document named {0:?}")]
    NoSuchDocument(String),
    /// Bad input from the user.
    #[error("{0}")]
    Invalid(String),
    /// The secret cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn store_err(e: impl std::fmt::Display) -> CliError {
    CliError::Store(e.to_string())
}

/// Opens the store of `data_dir`. With `create`, a missing store is created.
///
/// # Errors
/// [`CliError::InUse`] while a relay runs on it, [`CliError::NoStore`] when there is none (and
/// `create` is false), or why it cannot be opened.
pub fn open_store(data_dir: &Path, create: bool) -> Result<Store, CliError> {
    let path = data_dir.join(STORE_FILE);
    if !create && !path.exists() {
        return Err(CliError::NoStore(path));
    }
    if create {
        std::fs::create_dir_all(data_dir).map_err(store_err)?;
    }
    match Store::open(&path, &StoreOptions::default()) {
        Ok(store) => Ok(store),
        Err(OpenError::Database {
            source: redb::DatabaseError::DatabaseAlreadyOpen,
            ..
        }) => Err(CliError::InUse(path)),
        Err(e) => Err(e.into()),
    }
}

/// Every stored room, in name order.
///
/// # Errors
/// When the store cannot be read.
pub fn all_rooms(store: &Store) -> Result<Vec<RoomInfo>, CliError> {
    let mut rooms = Vec::new();
    loop {
        let after = rooms.last().map(|r: &RoomInfo| r.name.clone());
        let page = store
            .list_rooms(after.as_deref(), 1000)
            .map_err(store_err)?;
        let done = page.len() < 1000;
        rooms.extend(page);
        if done {
            return Ok(rooms);
        }
    }
}

/// `relay docs list`: one line per document: name, bytes, last change (UTC).
///
/// # Errors
/// When the store cannot be read.
pub fn list(store: &Store) -> Result<String, CliError> {
    let mut out = String::new();
    for room in all_rooms(store)? {
        let when = UNIX_EPOCH + Duration::from_millis(room.updated_ms);
        out.push_str(&format!(
            "{}\t{}\t{}\n",
            room.name,
            room.stored_bytes,
            humantime::format_rfc3339_seconds(when)
        ));
    }
    Ok(out)
}

fn load(store: &Store, name: &str) -> Result<RoomDoc, CliError> {
    if store.room_info(name).map_err(store_err)?.is_none() {
        return Err(CliError::NoSuchDocument(name.to_owned()));
    }
    Ok(store.load(name).map_err(store_err)?.doc)
}

/// `relay docs export NAME [--json]`: the document as one binary update, or its JSON.
///
/// # Errors
/// When the document does not exist or does not load.
pub fn export(store: &Store, name: &str, json: bool) -> Result<Vec<u8>, CliError> {
    let mut doc = load(store, name)?;
    if json {
        let mut text = serde_json::to_vec_pretty(&doc.to_json()).map_err(store_err)?;
        text.push(b'\n');
        Ok(text)
    } else {
        Ok(doc.encode_state_v1().to_vec())
    }
}

/// `relay docs import NAME FILE`: merges a binary update into a document (creating it).
/// Returns whether it changed anything.
///
/// # Errors
/// [`CliError::Invalid`] for a bad name or an update that does not decode (nothing is written),
/// or when the store fails.
pub fn import(store: &Store, name: &str, update: Vec<u8>) -> Result<bool, CliError> {
    room_name(name).map_err(|m| CliError::Invalid(m.to_owned()))?;
    let mut stored = store.load(name).map_err(store_err)?;
    let applied = stored
        .doc
        .apply_update_v1(&update)
        .map_err(|e| CliError::Invalid(format!("the file is not a Yjs update: {e}")))?;
    if applied == Applied::Unchanged {
        return Ok(false);
    }
    store
        .commit(&[Write::Append {
            room: name.into(),
            seq: stored.next_seq,
            update: Bytes::from(update),
        }])
        .map_err(store_err)?;
    Ok(true)
}

/// `relay docs delete NAME`.
///
/// # Errors
/// When the document does not exist or the store fails.
pub fn delete(store: &Store, name: &str) -> Result<(), CliError> {
    if store.room_info(name).map_err(store_err)?.is_none() {
        return Err(CliError::NoSuchDocument(name.to_owned()));
    }
    store
        .commit(&[Write::Delete { room: name.into() }])
        .map_err(store_err)
}

/// What `relay compact` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Rooms whose log was folded into a snapshot.
    pub rooms_compacted: usize,
    /// Log entries folded.
    pub entries_folded: u64,
}

/// `relay compact`: folds every room's log into a snapshot, then compacts the file.
///
/// # Errors
/// When a room does not load or the store fails; rooms compacted before stay compacted.
pub fn compact(mut store: Store) -> Result<CompactReport, CliError> {
    let mut report = CompactReport::default();
    for room in all_rooms(&store)? {
        let mut stored = store.load(&room.name).map_err(store_err)?;
        if stored.log_entries == 0 {
            continue;
        }
        let Some(state) = stored.doc.try_snapshot_v1() else {
            return Err(CliError::Store(format!(
                "{}: cannot encode a snapshot; its log is kept as it is",
                room.name
            )));
        };
        store
            .commit(&[Write::Snapshot {
                room: room.name.as_str().into(),
                through_seq: stored.next_seq - 1,
                state,
            }])
            .map_err(store_err)?;
        report.rooms_compacted += 1;
        report.entries_folded += stored.log_entries;
    }
    store.compact_file().map_err(store_err)?;
    Ok(report)
}

/// `relay check`: loads every room. Returns the rooms that do not load, with why.
///
/// # Errors
/// When the store cannot be read at all.
pub fn check(store: &Store) -> Result<(usize, Vec<String>), CliError> {
    let rooms = all_rooms(store)?;
    let broken = rooms
        .iter()
        .filter_map(|room| store.load(&room.name).err().map(|e| e.to_string()))
        .collect();
    Ok((rooms.len(), broken))
}

/// What `relay token` signs.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The document.
    pub doc: Option<String>,
    /// Or a document prefix.
    pub doc_prefix: Option<String>,
    /// The access.
    pub access: Access,
    /// The lifetime.
    pub ttl: Duration,
    /// The user id.
    pub sub: Option<String>,
    /// The display name.
    pub name: Option<String>,
}

/// `relay token`: a signed token for the request.
///
/// # Errors
/// [`CliError::Key`] for an unusable secret, [`CliError::Invalid`] for a token that would
/// cover nothing or last no time.
pub fn token(secrets: &[String], request: TokenRequest) -> Result<String, CliError> {
    let keys = Keys::parse(secrets)?;
    if request.doc.is_none() && request.doc_prefix.is_none() && request.access != Access::Admin {
        return Err(CliError::Invalid(
            "a read or write token needs --doc or --doc-prefix".into(),
        ));
    }
    if request.ttl.as_secs() == 0 {
        return Err(CliError::Invalid(
            "--ttl must be at least one second".into(),
        ));
    }
    let now = now_secs();
    Ok(keys.mint(&Claims {
        doc: request.doc,
        doc_prefix: request.doc_prefix,
        access: request.access,
        exp: now + request.ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        sub: request.sub,
        name: request.name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, ReadTxn, StateVector, Text, Transact};

    fn update(content: &str) -> Vec<u8> {
        let doc = yrs::Doc::new();
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, content);
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn import_export_list_compact_check_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            open_store(dir.path(), false),
            Err(CliError::NoStore(_))
        ));
        let store = open_store(dir.path(), true).expect("create");
        assert!(import(&store, "notes/a", update("hello")).expect("import"));
        assert!(import(&store, "notes/a", update(" world")).expect("import"));
        assert!(matches!(
            import(&store, "x", vec![0xff, 0xff, 0xff]),
            Err(CliError::Invalid(_))
        ));
        assert!(list(&store).expect("list").starts_with("notes/a\t"));

        let exported = export(&store, "notes/a", false).expect("export");
        let copy = yrs::Doc::new();
        copy.transact_mut()
            .apply_update(yrs::updates::decoder::Decode::decode_v1(&exported).expect("decodes"))
            .expect("applies");
        let text = copy.get_or_insert_text("t").get_string(&copy.transact());
        assert_eq!(text.len(), "hello world".len());
        let json = String::from_utf8(export(&store, "notes/a", true).expect("json")).expect("utf8");
        assert!(json.contains("\"t\""), "{json}");

        assert_eq!(check(&store).expect("check"), (1, vec![]));
        let report = compact(store).expect("compact");
        assert_eq!(
            report,
            CompactReport {
                rooms_compacted: 1,
                entries_folded: 2
            }
        );
        let store = open_store(dir.path(), false).expect("reopen");
        assert_eq!(store.load("notes/a").expect("load").log_entries, 0);
        assert_eq!(
            export(&store, "notes/a", false).expect("export").len(),
            exported.len()
        );

        delete(&store, "notes/a").expect("delete");
        assert!(matches!(
            delete(&store, "notes/a"),
            Err(CliError::NoSuchDocument(_))
        ));
        assert!(matches!(
            export(&store, "notes/a", false),
            Err(CliError::NoSuchDocument(_))
        ));
    }

    #[test]
    fn refuses_politely_while_the_store_is_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = open_store(dir.path(), true).expect("create");
        let err = open_store(dir.path(), false).expect_err("in use");
        assert!(matches!(err, CliError::InUse(_)), "{err}");
        assert!(err.to_string().contains("running relay"));
    }

    #[test]
    fn token_needs_a_scope_and_verifies() {
        let secrets = vec!["a-secret-of-enough-length".to_string()];
        let request = TokenRequest {
            doc: Some("d".into()),
            doc_prefix: None,
            access: Access::Write,
            ttl: Duration::from_secs(3600),
            sub: None,
            name: Some("Ada".into()),
        };
        let token = token(&secrets, request.clone()).expect("token");
        let claims = Keys::parse(&secrets)
            .expect("keys")
            .verify(&token)
            .expect("valid");
        assert_eq!(
            (claims.doc.as_deref(), claims.access),
            (Some("d"), Access::Write)
        );
        let unscoped = TokenRequest {
            doc: None,
            ..request
        };
        assert!(matches!(
            super::token(&secrets, unscoped),
            Err(CliError::Invalid(_))
        ));
    }
}
