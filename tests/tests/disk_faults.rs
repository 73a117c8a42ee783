//! Disk faults, against the relay binary (`target/<profile>/relay`) as a child process:
//!
//! - **Full disk.** The data directory is a 2 MiB tmpfs mounted by the test (it runs as root
//!   here). Where mounting is not permitted, the relay instead runs with a 2 MiB file size limit
//!   (`RLIMIT_FSIZE`, with `SIGXFSZ` ignored, so writes past it fail with `EFBIG`), raised
//!   afterwards with `prlimit(2)`; `RELAY_TEST_DISK_FAULTS=rlimit` forces that path. Once commits
//!   fail, save requests get *save error*, live editing and reads carry on; once there is room
//!   again (`mount -o remount,size=64m`), the held edits are committed, the pending requests are
//!   answered *saved*, and after a restart everything acknowledged is there and `relay check`
//!   passes.
//! - **Read-only data directory.** Linux refuses `mount -o remount,ro` (EBUSY) while a file on
//!   the filesystem is open for writing, as the store always is while the relay runs. The test
//!   tries it anyway; when it is refused (always, so far), it makes the filesystem read-only
//!   under the relay the way ext4 does after an I/O error (`errors=remount-ro`): every write to
//!   the store fails with `EROFS`, through a small `LD_PRELOAD` library built by the test with
//!   `cc`, switched on and off by a flag file. Saves fail with errors, live editing goes on, and
//!   once writes work again it recovers.
//! - **A corrupted or foreign file at the store path.** The relay refuses to start, says why and
//!   where, exits non-zero, and leaves the file byte for byte as it was.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use relay_tests::*;

/// Size of the small filesystem (or file size limit) the data directory gets.
const SMALL: u64 = 2 << 20;

/// A tmpfs mounted by the test; lazily unmounted when dropped (even if the relay still holds a
/// file on it, as after a failed test).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes at `path`; `Err` with mount's message if not permitted.
    fn mount(path: &Path, size: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if output.status.success() {
            Ok(Tmpfs {
                path: path.to_owned(),
            })
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }

    /// `mount -o remount,OPTIONS`.
    fn remount(&self, options: &str) -> Result<(), String> {
        let output = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// How the data directory is kept small.
enum Small {
    /// A tmpfs of [`SMALL`] bytes, grown by remounting.
    Tmpfs(Tmpfs),
    /// The relay's file size limit is [`SMALL`], raised with `prlimit(2)`.
    FileSizeLimit,
}

fn forced_fallback() -> bool {
    std::env::var("RELAY_TEST_DISK_FAULTS").as_deref() == Ok("rlimit")
}

/// Makes `data` small: a tmpfs if it can be mounted, else a file size limit for the relay.
fn small_data_dir(data: &Path) -> Small {
    if forced_fallback() {
        std::fs::create_dir_all(data).expect("create the data directory");
        eprintln!("RELAY_TEST_DISK_FAULTS=rlimit: using a file size limit");
        return Small::FileSizeLimit;
    }
    match Tmpfs::mount(data, SMALL) {
        Ok(tmpfs) => Small::Tmpfs(tmpfs),
        Err(error) => {
            eprintln!(
                "cannot mount a tmpfs ({error}); falling back to a file size limit (RLIMIT_FSIZE)"
            );
            Small::FileSizeLimit
        }
    }
}

impl Small {
    /// The relay's file size limit, in the fallback mode.
    fn file_size_limit(&self) -> Option<u64> {
        match self {
            Small::Tmpfs(_) => None,
            Small::FileSizeLimit => Some(SMALL),
        }
    }
}

/// Starts the relay on `data`, with `extra_env`, and with a file size limit if given.
async fn start_relay(
    data: &Path,
    file_size_limit: Option<u64>,
    extra_env: &[(&str, String)],
) -> ChildRelay {
    let env: Vec<(String, String)> = extra_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    ChildRelay::start(data, &["--store-cache-mb", "1"], move |command| {
        command.envs(env);
        if let Some(bytes) = file_size_limit {
            // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let limit = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: libc::RLIM_INFINITY,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("start the relay: {e}"))
}

/// Gives the relay room again: grows the tmpfs, or lifts its file size limit.
fn make_room(small: &Small, relay: &ChildRelay) {
    match small {
        Small::Tmpfs(tmpfs) => tmpfs
            .remount("size=64m")
            .unwrap_or_else(|e| panic!("grow the tmpfs: {e}")),
        Small::FileSizeLimit => {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: prlimit(2) on our child with a valid pointer; no old value is read.
            let result = unsafe {
                libc::prlimit(
                    relay.pid() as libc::pid_t,
                    libc::RLIMIT_FSIZE,
                    &unlimited,
                    std::ptr::null_mut(),
                )
            };
            assert_eq!(
                result,
                0,
                "prlimit --pid {} --fsize=unlimited: {}",
                relay.pid(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Sends a save request and reads until its answer: `Ok` for *saved*, `Err(reason)` for a
/// *save error*.
async fn save_outcome(client: &mut Client, id: u64) -> Result<(), String> {
    client.request_save(id).await;
    match client
        .recv_until(
            &format!("the answer to save request {id}"),
            |m| matches!(m, Msg::Saved(i) | Msg::SaveError(i, _) if *i == id),
        )
        .await
    {
        Msg::Saved(_) => Ok(()),
        Msg::SaveError(_, reason) => Err(reason),
        _ => unreachable!(),
    }
}

async fn metric(relay: &ChildRelay, sample: &str) -> Option<f64> {
    let (_, body) = within("GET /metrics", http_get(relay.addr(), "/metrics"))
        .await
        .expect("GET /metrics");
    metric_value(&body, sample)
}

/// Stops the relay, runs `relay check` on the data directory, restarts the relay and returns the
/// room's text as a fresh client reads it.
async fn restart_and_read(
    relay: &mut ChildRelay,
    data: &Path,
    small: &Small,
    room: &str,
) -> (ChildRelay, String) {
    let status = relay.stop().await;
    assert!(status.success(), "graceful stop: {status}\n{}", relay.log());
    let check = Command::new(relay_bin())
        .args(["check", "--data-dir"])
        .arg(data)
        .output()
        .expect("run relay check");
    assert!(
        check.status.success(),
        "relay check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let relay = start_relay(data, small.file_size_limit(), &[]).await;
    let mut reader = Client::join(&relay.ws_url(room)).await;
    reader.sync().await;
    let text = reader.text();
    (relay, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_holds_edits_and_commits_them_when_space_returns() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let small = small_data_dir(&data);
    let mut relay = start_relay(&data, small.file_size_limit(), &[]).await;
    let room = "filling";
    let mut a = Client::join(&relay.ws_url(room)).await;
    let mut b = Client::join(&relay.ws_url(room)).await;
    a.edit("first").await;
    b.wait_for_text("first").await;
    a.save(1).await;

    // Fill it: 32 KiB edits until a save request is answered with an error.
    let mut id = 10;
    let reason = loop {
        assert!(id < 400, "the disk never filled up");
        a.edit(&format!("<{id:03}{}>", "f".repeat(32 << 10))).await;
        b.wait_for_text(&a.text()).await;
        id += 1;
        if let Err(reason) = save_outcome(&mut a, id).await {
            break reason;
        }
    };
    let a_pending = id;
    eprintln!("save error after {} KiB: {reason}", (id - 10) * 32);
    relay.assert_running("with a full disk");

    // Live editing carries on, both ways; every save request gets an error.
    b.edit(" [b while full]").await;
    a.wait_for_text(&b.text()).await;
    a.edit(" [a while full]").await;
    b.wait_for_text(&a.text()).await;
    let b_pending = 500;
    assert!(
        save_outcome(&mut b, b_pending).await.is_err(),
        "B's save request while the disk is full"
    );
    // Reads carry on: a newcomer gets everything, so does the API, and /healthz answers.
    let mut c = Client::join(&relay.ws_url(room)).await;
    c.sync().await;
    assert_eq!(c.text(), a.text(), "a newcomer while the disk is full");
    let response = http_request(relay.addr(), "GET", "/api/docs/filling", &[], b"")
        .await
        .expect("GET the document");
    assert_eq!(response.status, 200);
    assert_eq!(text_of_update(&response.body), a.text());
    let (status, _) = http_get(relay.addr(), "/healthz").await.expect("/healthz");
    assert_eq!(status, 200);
    assert!(
        metric(&relay, "relay_commit_failures_total").await >= Some(1.0),
        "commit failures are counted"
    );

    // Room again: the held edits are committed and the waiting requests answered *saved*.
    make_room(&small, &relay);
    within("A's pending save", a.save_answer(a_pending)).await;
    within("B's pending save", b.save_answer(b_pending)).await;
    a.edit(" [after]").await;
    a.save(600).await;
    let expected = a.text();
    b.wait_for_text(&expected).await;
    drop((a, b, c));

    // Everything acknowledged survives a restart; the store checks out.
    let (mut relay, text) = restart_and_read(&mut relay, &data, &small, room).await;
    assert_eq!(text, expected, "after a restart");
    assert!(relay.stop().await.success());
    drop(small);
}

/// Waiting for a *saved* answer to a request sent earlier.
trait SaveAnswer {
    async fn save_answer(&mut self, id: u64);
}

impl SaveAnswer for Client {
    async fn save_answer(&mut self, id: u64) {
        self.recv_until(&format!("saved {id}"), |m| *m == Msg::Saved(id))
            .await;
    }
}

/// The `LD_PRELOAD` library that makes the store's filesystem read-only on demand: while the
/// file named by `RELAY_TEST_READONLY_FLAG` exists, opening for writing, writing, syncing and
/// resizing any file under `RELAY_TEST_READONLY_DIR` fail with `EROFS`.
const READONLY_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int flagged(void) {
    const char *flag = getenv("RELAY_TEST_READONLY_FLAG");
    return flag && access(flag, F_OK) == 0;
}

static int under_dir(const char *path) {
    const char *dir = getenv("RELAY_TEST_READONLY_DIR");
    return dir && path && strncmp(path, dir, strlen(dir)) == 0;
}

static int fd_readonly(int fd) {
    if (!flagged()) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return under_dir(path);
}

#define REFUSE_FD(fd) do { if (fd_readonly(fd)) { errno = EROFS; return -1; } } while (0)
#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *b, size_t n) { REAL(write); REFUSE_FD(fd); return real(fd, b, n); }
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) { REAL(pwrite); REFUSE_FD(fd); return real(fd, b, n, o); }
ssize_t pwrite64(int fd, const void *b, size_t n, off64_t o) { REAL(pwrite64); REFUSE_FD(fd); return real(fd, b, n, o); }
int fsync(int fd) { REAL(fsync); REFUSE_FD(fd); return real(fd); }
int fdatasync(int fd) { REAL(fdatasync); REFUSE_FD(fd); return real(fd); }
int ftruncate(int fd, off_t l) { REAL(ftruncate); REFUSE_FD(fd); return real(fd, l); }
int ftruncate64(int fd, off64_t l) { REAL(ftruncate64); REFUSE_FD(fd); return real(fd, l); }
int fallocate(int fd, int m, off_t o, off_t l) { REAL(fallocate); REFUSE_FD(fd); return real(fd, m, o, l); }
int fallocate64(int fd, int m, off64_t o, off64_t l) { REAL(fallocate64); REFUSE_FD(fd); return real(fd, m, o, l); }

static int refuse_open(const char *path, int flags) {
    if ((flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) && flagged()) {
        char full[4096];
        if (path[0] != '/' && getcwd(full, sizeof full)) {
            strncat(full, "/", sizeof full - strlen(full) - 1);
            strncat(full, path, sizeof full - strlen(full) - 1);
            path = full;
        }
        if (under_dir(path)) { errno = EROFS; return 1; }
    }
    return 0;
}

#define OPEN_MODE(flags) mode_t mode = 0; if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
int open(const char *p, int flags, ...) { OPEN_MODE(flags) REAL(open); if (refuse_open(p, flags)) return -1; return real(p, flags, mode); }
int open64(const char *p, int flags, ...) { OPEN_MODE(flags) REAL(open64); if (refuse_open(p, flags)) return -1; return real(p, flags, mode); }
int openat(int d, const char *p, int flags, ...) { OPEN_MODE(flags) REAL(openat); if (refuse_open(p, flags)) return -1; return real(d, p, flags, mode); }
int openat64(int d, const char *p, int flags, ...) { OPEN_MODE(flags) REAL(openat64); if (refuse_open(p, flags)) return -1; return real(d, p, flags, mode); }
"#;

/// Builds [`READONLY_SHIM`] into `dir`; fails the test, saying what is missing, if it cannot.
fn build_readonly_shim(dir: &Path) -> PathBuf {
    let source = dir.join("readonly.c");
    let library = dir.join("readonly.so");
    std::fs::write(&source, READONLY_SHIM).expect("write the shim's source");
    let output = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "a read-only data directory cannot be simulated: `mount -o remount,ro` is refused \
                 while the store is open, and the C compiler `cc` (needed for the LD_PRELOAD \
                 library that fails writes with EROFS) cannot be run: {e}"
            )
        });
    assert!(
        output.status.success(),
        "cc failed to build the read-only shim: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    library
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_data_directory_fails_saves_and_recovers() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    // A tmpfs when possible, for the real remount; otherwise a plain directory.
    let tmpfs = if forced_fallback() {
        None
    } else {
        Tmpfs::mount(&data, 64 << 20).ok()
    };
    std::fs::create_dir_all(&data).expect("the data directory");
    let shim = build_readonly_shim(dir.path());
    let flag = dir.path().join("read-only");
    let canonical = std::fs::canonicalize(&data).expect("canonical data directory");
    let env = [
        ("LD_PRELOAD", shim.display().to_string()),
        ("RELAY_TEST_READONLY_FLAG", flag.display().to_string()),
        (
            "RELAY_TEST_READONLY_DIR",
            format!("{}/", canonical.display()),
        ),
    ];
    let mut relay = start_relay(&data, None, &env).await;
    let room = "read-only";
    let mut a = Client::join(&relay.ws_url(room)).await;
    let mut b = Client::join(&relay.ws_url(room)).await;
    a.edit("written").await;
    b.wait_for_text("written").await;
    a.save(1).await;

    // The filesystem becomes read-only.
    let real_remount = match &tmpfs {
        Some(tmpfs) => match tmpfs.remount("ro") {
            Ok(()) => true,
            Err(error) => {
                eprintln!(
                    "mount -o remount,ro refused while the relay holds the store open ({error}); \
                     failing its writes with EROFS instead"
                );
                false
            }
        },
        None => false,
    };
    if !real_remount {
        std::fs::write(&flag, b"").expect("raise the read-only flag");
    }
    a.edit(" [while read-only]").await;
    b.wait_for_text(&a.text()).await;
    let reason = save_outcome(&mut a, 2)
        .await
        .expect_err("a save on a read-only filesystem fails");
    eprintln!("save error: {reason}");
    relay.assert_running("with a read-only data directory");
    // Live editing goes on, both ways, and the loaded document can be read.
    b.edit(" [b]").await;
    a.wait_for_text(&b.text()).await;
    let b_pending = 3;
    assert!(save_outcome(&mut b, b_pending).await.is_err());
    let mut c = Client::join(&relay.ws_url(room)).await;
    c.sync().await;
    assert_eq!(c.text(), a.text());
    let (status, _) = http_get(relay.addr(), "/healthz").await.expect("/healthz");
    assert_eq!(status, 200);
    // A document not in memory: loaded if the store can still be read, else refused with 1011.
    let mut elsewhere = Client::connect(&relay.ws_url("not loaded")).await;
    match elsewhere.next_event().await {
        Event::Close(code) => assert_eq!(code, Some(1011), "a document that cannot be loaded"),
        Event::Frame(frame) => eprintln!(
            "a document not in memory was still loaded: {}",
            decode_one(&frame).kind()
        ),
        other => panic!("joining a document not in memory: {other:?}"),
    }
    drop(elsewhere);

    // Writable again: it recovers.
    if real_remount {
        tmpfs
            .as_ref()
            .expect("mounted")
            .remount("rw")
            .expect("remount,rw");
    } else {
        std::fs::remove_file(&flag).expect("lower the read-only flag");
    }
    within("A's pending save", a.save_answer(2)).await;
    within("B's pending save", b.save_answer(b_pending)).await;
    a.edit(" [after]").await;
    a.save(4).await;
    let expected = a.text();
    drop((a, b, c));
    let status = relay.stop().await;
    assert!(status.success(), "graceful stop: {status}\n{}", relay.log());
    let mut relay = start_relay(&data, None, &[]).await;
    let mut reader = Client::join(&relay.ws_url(room)).await;
    reader.sync().await;
    assert_eq!(reader.text(), expected, "after a restart");
    drop(reader);
    assert!(relay.stop().await.success());
    drop(tmpfs);
}

/// Starts the relay on a data directory holding `store` as its store file, and expects a refusal:
/// a non-zero exit and a message naming the file (else the test fails at once), and the file
/// unchanged (else `Err` says how it changed).
async fn assert_refused(what: &str, store: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("the data directory");
    let path = data.join("relay.redb");
    std::fs::write(&path, store).expect("write the store file");
    let output = within_for(
        Duration::from_secs(30),
        "the relay to refuse to start",
        tokio::process::Command::new(relay_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run the relay");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{what}: the relay started ({stdout}); it must refuse"
    );
    let message = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{what}: no error message on standard error:\n{stderr}"));
    assert!(
        message.contains(&path.display().to_string()),
        "{what}: the message names the file: {message}"
    );
    eprintln!("{what}: exit {}, {message}", output.status);
    let after = std::fs::read(&path).expect("the store file is still there");
    if after != store {
        let changed: Vec<usize> = (0..store.len().min(after.len()))
            .filter(|&i| store[i] != after[i])
            .collect();
        return Err(format!(
            "{what}: the relay refused to start but modified the file: {} bytes before, {} after, \
             {} bytes differ, at offsets {:?}{}",
            store.len(),
            after.len(),
            changed.len(),
            &changed[..changed.len().min(16)],
            if changed.len() > 16 { " ..." } else { "" }
        ));
    }
    Ok(())
}

/// A real store with one document, as the relay leaves it after a clean shutdown.
async fn real_store() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut relay = ChildRelay::start(dir.path(), &[], |_| {})
        .await
        .expect("start the relay");
    let mut a = Client::join(&relay.ws_url("doc")).await;
    a.edit("precious").await;
    a.save(1).await;
    drop(a);
    assert!(relay.stop().await.success());
    std::fs::read(dir.path().join("relay.redb")).expect("the store file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_or_foreign_store_file_is_refused_and_left_alone() {
    let store = real_store().await;
    let mut header = store.clone();
    header[..64].fill(0xab);
    let mut outcomes = Vec::new();
    outcomes.push(assert_refused("a store whose header is overwritten", &header).await);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..64 << 10)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as u8
        })
        .collect();
    outcomes.push(assert_refused("a file of random bytes", &random).await);
    outcomes.push(
        assert_refused(
            "a text file",
            b"these are somebody's notes, not a database\n",
        )
        .await,
    );
    // Another application's redb database: a valid redb file without the relay's format version.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let foreign_path = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&foreign_path).expect("create a redb database");
        let write = db.begin_write().expect("begin");
        {
            const SETTINGS: redb::TableDefinition<&str, &str> =
                redb::TableDefinition::new("settings");
            let mut table = write.open_table(SETTINGS).expect("open table");
            table.insert("theme", "dark").expect("insert");
        }
        write.commit().expect("commit");
    }
    let foreign = std::fs::read(&foreign_path).expect("read it");
    outcomes.push(assert_refused("another application's redb database", &foreign).await);
    // A store written by a future format version of the relay.
    let future_path = dir.path().join("future.redb");
    {
        let db = redb::Database::create(&future_path).expect("create a redb database");
        let write = db.begin_write().expect("begin");
        {
            const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let mut table = write.open_table(META).expect("open table");
            table
                .insert("format_version", crdt::store::FORMAT_VERSION + 1)
                .expect("insert");
        }
        write.commit().expect("commit");
    }
    let future = std::fs::read(&future_path).expect("read it");
    outcomes.push(assert_refused("a store of a newer format version", &future).await);
    let failures: Vec<String> = outcomes.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A store whose document was altered on disk (its text overwritten in place, the header and
/// every other page intact), as bit rot or a stray write would. redb checks pages when it reads
/// them, not when it opens the file, so the relay may start; but it must never serve the altered
/// document: it refuses to start, or refuses the document (1011), and serves the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_document_in_the_store_is_never_served() {
    let store = real_store().await;
    let at = store
        .windows(8)
        .position(|w| w == b"precious")
        .expect("the document's text is in the file");
    let mut altered = store.clone();
    altered[at..at + 8].copy_from_slice(b"tampered");
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("relay.redb"), &altered).expect("write the store");
    let mut relay = match ChildRelay::start(dir.path(), &[], |_| {}).await {
        Err(refusal) => {
            eprintln!("refused to start: {refusal}");
            let after = std::fs::read(dir.path().join("relay.redb")).expect("the file");
            assert!(after == altered, "the refused file was modified");
            return;
        }
        Ok(relay) => relay,
    };
    let mut reader = Client::connect(&relay.ws_url("doc")).await;
    let mut text = None;
    let outcome = loop {
        match reader.next_event().await {
            Event::Frame(frame) => match decode_one(&frame) {
                Msg::SyncStep1(_) => {
                    reader.send_step1().await;
                }
                message @ Msg::SyncStep2(_) => {
                    reader.absorb(&message);
                    text = Some(reader.text());
                    break None;
                }
                _ => {}
            },
            Event::Close(code) => break code,
            other => panic!("reading the altered document: {other:?}"),
        }
    };
    assert_ne!(
        text.as_deref(),
        Some("tampered"),
        "the relay started on a store whose document was altered on disk and served the altered \
         text: redb verifies page checksums when it recovers from a crash (or in \
         check_integrity), not on a clean open, and the relay checks nothing more"
    );
    assert_eq!(
        outcome,
        Some(1011),
        "the altered document is refused with 1011"
    );
    relay.assert_running("after refusing the altered document");
    let mut other = Client::join(&relay.ws_url("another")).await;
    other.edit("fine").await;
    other.save(1).await;
    drop((reader, other));
    relay.stop().await;
}
