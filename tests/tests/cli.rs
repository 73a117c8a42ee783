//! The command line, run as the built binary: `relay token`, `relay docs list|export|import|
//! delete`, `relay compact` and `relay check`, and their refusal while a relay holds the data
//! directory.
//!
//! The binary is `target/<profile>/relay` next to this test's own directory (or `$RELAY_BIN`);
//! build it first with `cargo build -p relay`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use bytes::Bytes;
use crdt::store::{Store, StoreOptions, Write};
use relay::auth::{Access, Keys, now_secs};
use relay_tests::*;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Array, Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update};

const SECRET: &str = "cli-test-secret-0123456789";

#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Output {
    fn stdout_text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    #[track_caller]
    fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what}: exit status {}, stderr: {}",
            self.status,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn assert_failure(&self, what: &str, needle: &str) -> &Self {
        assert!(
            !self.status.success(),
            "{what}: should fail, but exited with {}; stdout {:?}",
            self.status,
            String::from_utf8_lossy(&self.stdout)
        );
        assert!(
            self.stderr.contains(needle),
            "{what}: stderr should mention {needle:?}: {}",
            self.stderr
        );
        self
    }
}

/// Runs the relay binary with `args`, without any `RELAY_*` setting from the environment.
fn relay<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    relay_with_env(args, &[])
}

fn relay_with_env<I, S>(args: I, env: &[(&str, &str)]) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(relay_bin());
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("RELAY_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", relay_bin().display()));
    Output {
        status: output.status,
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `args` followed by `--data-dir dir`.
fn in_dir<'a>(args: &[&'a str], dir: &'a Path) -> Vec<&'a OsStr> {
    let mut all: Vec<&OsStr> = args.iter().map(|s| OsStr::new(*s)).collect();
    all.push(OsStr::new("--data-dir"));
    all.push(dir.as_os_str());
    all
}

fn sample_doc() -> Doc {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let array = doc.get_or_insert_array("a");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, "exported text ✓");
    map.insert(&mut txn, "k", "v");
    map.insert(&mut txn, "n", yrs::any!({"deep": [true, null]}));
    array.push_back(&mut txn, "one");
    array.push_back(&mut txn, "two");
    drop(txn);
    doc
}

fn sample_json() -> serde_json::Value {
    serde_json::json!({
        "t": "exported text ✓",
        "m": {"k": "v", "n": {"deep": [true, null]}},
        "a": ["one", "two"],
    })
}

fn doc_json(doc: &Doc) -> serde_json::Value {
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let array = doc.get_or_insert_array("a");
    let txn = doc.transact();
    serde_json::json!({
        "t": text.get_string(&txn),
        "m": serde_json::to_value(map.to_json(&txn)).expect("JSON"),
        "a": serde_json::to_value(array.to_json(&txn)).expect("JSON"),
    })
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write a file");
    path
}

fn open_store(data_dir: &Path) -> Store {
    Store::open(
        &data_dir.join(relay::config::STORE_FILE),
        &StoreOptions::default(),
    )
    .expect("open the store")
}

#[test]
fn token_prints_the_token_alone_and_it_verifies() {
    let before = now_secs();
    let output = relay([
        "token", "--doc", "d", "--access", "write", "--ttl", "1h", "--secret", SECRET,
    ]);
    output.assert_success("relay token");
    let stdout = output.stdout_text();
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "exactly one line on stdout: {stdout:?}"
    );
    let token = stdout.trim_end_matches('\n');
    assert!(
        !token.is_empty() && !token.contains(char::is_whitespace),
        "{token:?}"
    );
    let claims = Keys::parse(&[SECRET.to_owned()])
        .expect("keys")
        .verify(token)
        .expect("the printed token verifies with the secret");
    assert_eq!(claims.doc.as_deref(), Some("d"));
    assert_eq!(claims.doc_prefix, None);
    assert_eq!(claims.access, Access::Write);
    assert!(
        (before + 3600..=now_secs() + 3600).contains(&claims.exp),
        "expires in an hour: exp {}, now {before}",
        claims.exp
    );

    // The secret from the environment, as `serve` takes it; rotated keys sign with the first.
    let output = relay_with_env(
        [
            "token",
            "--doc-prefix",
            "team/",
            "--access",
            "read",
            "--ttl",
            "30s",
            "--name",
            "Ada",
        ],
        &[(
            "RELAY_SECRET",
            "new:new-secret-0123456789,old:old-secret-0123456789",
        )],
    );
    output.assert_success("relay token with RELAY_SECRET");
    let token = output.stdout_text().trim_end().to_owned();
    let claims = Keys::parse(&["new:new-secret-0123456789".to_owned()])
        .expect("keys")
        .verify(&token)
        .expect("signed with the first key");
    assert_eq!(
        (
            claims.doc_prefix.as_deref(),
            claims.access,
            claims.name.as_deref()
        ),
        (Some("team/"), Access::Read, Some("Ada"))
    );
    assert!(
        Keys::parse(&["old:old-secret-0123456789".to_owned()])
            .expect("keys")
            .verify(&token)
            .is_err(),
        "not signed with the second key"
    );

    for (what, args, needle) in [
        ("no secret", vec!["token", "--doc", "d"], "secret"),
        (
            "a short secret",
            vec!["token", "--doc", "d", "--secret", "short"],
            "secret",
        ),
        (
            "a write token without a document",
            vec!["token", "--access", "write", "--secret", SECRET],
            "--doc",
        ),
        (
            "an unknown access",
            vec![
                "token", "--doc", "d", "--access", "owner", "--secret", SECRET,
            ],
            "owner",
        ),
        (
            "a bad lifetime",
            vec!["token", "--doc", "d", "--ttl", "soon", "--secret", SECRET],
            "soon",
        ),
    ] {
        let output = relay(args);
        output.assert_failure(what, needle);
        assert!(output.stdout.is_empty(), "{what}: nothing on stdout");
    }
}

#[test]
fn docs_import_list_export_and_delete_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let source = sample_doc();
    let update = source
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let file = write_file(dir.path(), "doc.bin", &update);
    let file = file.to_str().expect("UTF-8 path");

    relay(in_dir(&["docs", "list"], &data)).assert_failure("list without a store", "no store");
    relay(in_dir(&["docs", "import", "notes/a", file], &data)).assert_success("import");
    let other = write_file(dir.path(), "other.bin", &text_update("other doc"));
    relay(in_dir(
        &["docs", "import", "b", other.to_str().expect("UTF-8")],
        &data,
    ))
    .assert_success("import b");
    // The same file again changes nothing.
    let again = relay(in_dir(&["docs", "import", "notes/a", file], &data));
    again.assert_success("import again");
    assert!(again.stderr.contains("already had"), "{}", again.stderr);

    let list = relay(in_dir(&["docs", "list"], &data));
    list.assert_success("list");
    let listing = list.stdout_text();
    let rows: Vec<Vec<&str>> = listing.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{listing}");
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        vec!["b", "notes/a"],
        "name order: {listing}"
    );
    for row in &rows {
        assert_eq!(row.len(), 3, "name, bytes, last change: {listing}");
        assert!(row[1].parse::<u64>().is_ok_and(|n| n > 0), "{listing}");
        assert!(row[2].ends_with('Z') && row[2].contains('T'), "{listing}");
    }

    // Binary export: one update that gives the same document.
    let export = relay(in_dir(&["docs", "export", "notes/a"], &data));
    export.assert_success("export");
    let copy = Doc::new();
    copy.transact_mut()
        .apply_update(Update::decode_v1(&export.stdout).expect("a v1 update"))
        .expect("applies");
    assert_eq!(doc_json(&copy), sample_json());
    assert_eq!(
        copy.transact().state_vector(),
        source.transact().state_vector()
    );
    // JSON export.
    let export = relay(in_dir(&["docs", "export", "notes/a", "--json"], &data));
    export.assert_success("export --json");
    let json: serde_json::Value =
        serde_json::from_slice(&export.stdout).expect("export --json prints JSON");
    assert_eq!(json, sample_json());

    // Refused imports write nothing.
    let garbage = write_file(dir.path(), "garbage.bin", &[0xde, 0xad, 0xbe, 0xef, 0x13]);
    relay(in_dir(
        &["docs", "import", "c", garbage.to_str().expect("UTF-8")],
        &data,
    ))
    .assert_failure("import of a file that is not an update", "not a Yjs update");
    relay(in_dir(&["docs", "import", "bad\nname", file], &data))
        .assert_failure("import under an invalid name", "control");
    relay(in_dir(
        &["docs", "import", "d", "/nonexistent/file.bin"],
        &data,
    ))
    .assert_failure("import of a missing file", "cannot read");
    let listing = relay(in_dir(&["docs", "list"], &data)).stdout_text();
    assert_eq!(listing.lines().count(), 2, "{listing}");

    relay(in_dir(&["docs", "delete", "notes/a"], &data)).assert_success("delete");
    let listing = relay(in_dir(&["docs", "list"], &data)).stdout_text();
    assert!(
        listing.starts_with("b\t") && listing.lines().count() == 1,
        "{listing}"
    );
    relay(in_dir(&["docs", "export", "notes/a"], &data))
        .assert_failure("export of a deleted document", "no document named");
    relay(in_dir(&["docs", "delete", "notes/a"], &data))
        .assert_failure("delete again", "no document named");
    let store = open_store(&data);
    assert_eq!(store.room_info("notes/a").expect("read"), None);
    assert_eq!(store.room_info("c").expect("read"), None);
}

#[test]
fn compact_folds_the_log_and_check_finds_undecodable_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let source = Doc::new();
    for (i, part) in ["one ", "two ", "three"].iter().enumerate() {
        let file = write_file(dir.path(), &format!("{i}.bin"), &append(&source, part));
        relay(in_dir(
            &["docs", "import", "c", file.to_str().expect("UTF-8")],
            &data,
        ))
        .assert_success("import");
    }
    {
        let store = open_store(&data);
        let loaded = store.load("c").expect("load");
        assert_eq!(loaded.log_entries, 3, "test premise: three log entries");
    }
    relay(in_dir(&["check"], &data)).assert_success("check of a good store");

    relay(in_dir(&["compact"], &data)).assert_success("compact");
    {
        let store = open_store(&data);
        let loaded = store.load("c").expect("load");
        assert_eq!(loaded.log_entries, 0, "the log is folded into the snapshot");
        assert!(loaded.snapshot_bytes > 0);
        assert_eq!(doc_text(loaded.doc.yrs()), "one two three");
        // An undecodable log entry, as a damaged store would hold.
        store
            .commit(&[Write::Append {
                room: "broken".into(),
                seq: 1,
                update: Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            }])
            .expect("commit");
    }
    let check = relay(in_dir(&["check"], &data));
    check.assert_failure("check with an undecodable document", "broken");
    assert!(check.stderr.contains("1 of 2"), "{}", check.stderr);
    // The good document still exports.
    let export = relay(in_dir(&["docs", "export", "c", "--json"], &data));
    export.assert_success("export");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&export.stdout).expect("JSON"),
        serde_json::json!({"t": "one two three"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_commands_refuse_while_a_relay_holds_the_data_directory() {
    let _ = relay_bin(); // fail early and clearly if the binary is missing
    let mut running = TestRelay::start().await;
    let mut client = running.join("live").await;
    client.edit("held by the relay").await;
    client.save(1).await;
    let data = running.data_dir().to_owned();
    let file = write_file(
        data.parent().expect("the fixture's directory"),
        "import.bin",
        &text_update("IMPORTED"),
    );
    let file = file.to_str().expect("UTF-8").to_owned();

    let commands: Vec<Vec<String>> = [
        vec!["docs", "list"],
        vec!["docs", "export", "live"],
        vec!["docs", "export", "live", "--json"],
        vec!["docs", "import", "live", file.as_str()],
        vec!["docs", "import", "new-doc", file.as_str()],
        vec!["docs", "delete", "live"],
        vec!["compact"],
        vec!["check"],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(str::to_owned).collect())
    .collect();
    for args in commands {
        let dir = data.clone();
        let what = args.join(" ");
        let output = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            relay(in_dir(&args, &dir))
        })
        .await
        .expect("the command ran");
        output.assert_failure(&format!("relay {what}"), "running relay");
        assert!(output.stdout.is_empty(), "relay {what}: nothing on stdout");
    }

    // The relay did not notice.
    running.assert_healthy().await;
    let mut reader = running.join("live").await;
    reader.sync().await;
    assert_eq!(reader.text(), "held by the relay");
    drop((client, reader));
    running.stop().await;

    // Nothing was written, and once the relay is gone the same commands work.
    {
        let store = running.open_store();
        assert_eq!(store.room_info("new-doc").expect("read"), None);
    }
    assert_eq!(running.stored_text("live"), "held by the relay");
    let list = relay(in_dir(&["docs", "list"], &data));
    list.assert_success("list after the relay stopped");
    assert!(
        list.stdout_text().starts_with("live\t"),
        "{}",
        list.stdout_text()
    );
}

/// Runs `relay serve` on a free loopback port without any `RELAY_*` setting or `RUST_LOG` from
/// the environment, until it listens; returns its standard error lines up to "relay starting"
/// (logged before the `listening on` line). The child is killed afterwards.
async fn serve_until_started(extra: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = ChildRelay::start(dir.path(), extra, |command| {
        command.env("NO_COLOR", "1").env_remove("RUST_LOG");
        for (key, _) in std::env::vars() {
            if key.starts_with("RELAY_") {
                command.env_remove(key);
            }
        }
    })
    .await
    .unwrap_or_else(|problem| panic!("relay serve {extra:?}: {problem}"));
    let log = relay.log();
    relay.kill().await.expect("kill the relay");
    let mut lines = Vec::new();
    for line in log.lines() {
        lines.push(line.to_owned());
        if line.contains("relay starting") {
            return lines;
        }
    }
    panic!(
        "relay serve {extra:?}: no \"relay starting\" line before it listened; stderr: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_a_secret_says_loudly_that_the_relay_is_open() {
    assert!(
        relay::config::Config::default().listen.ip().is_loopback(),
        "listens on loopback by default"
    );
    let open = serve_until_started(&[]).await;
    assert!(
        open.iter()
            .any(|l| l.contains("WARN") && l.contains("OPEN")),
        "a warning that the relay is open: {open:#?}"
    );
    let secured = serve_until_started(&["--secret", SECRET]).await;
    assert!(
        !secured.iter().any(|l| l.contains("OPEN")),
        "no such warning with a secret: {secured:#?}"
    );
}

/// A relay whose standard error nobody reads any more (a log pipe that died) still logs without
/// harm and stops on SIGTERM. Before, the first log line after the reader left panicked the task
/// that wrote it (tracing-subscriber's fallback `eprintln!`), the signal handler's included, and
/// the relay kept serving after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_on_sigterm_after_its_log_reader_is_gone() {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(relay_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the relay");
    let stdout = child.stdout.take().expect("piped");
    let line = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .expect("read standard output")
        .expect("a listening line");
    let addr: std::net::SocketAddr = line
        .rsplit("http://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // The log's reader goes away; the relay logs a connection after that.
    drop(child.stderr.take());
    let (status, _) = http_get(addr, "/healthz").await.expect("healthz");
    assert_eq!(status, 200);
    let mut client = Client::join(&ws_url(addr, "logged")).await;
    client.edit("still served").await;
    client.save(1).await;
    let pid = child.id().expect("running") as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(std::time::Duration::from_secs(15), child.wait())
        .await
        .expect("the relay did not stop within 15 s of SIGTERM")
        .expect("wait for the relay");
    assert!(status.success(), "exit status {status}");
}
