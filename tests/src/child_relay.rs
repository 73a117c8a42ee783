//! The relay binary as a child process, for the tests and tools that must watch it from outside:
//! its memory alone, a crash (SIGKILL) that must not take the test down, resource limits, exit
//! codes, a restart on the same data directory.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::http::ws_url;
use crate::wait::{DEADLINE, within_for};

/// How long a relay may take to print its `listening on` line (it opens its store first).
const START_LIMIT: Duration = Duration::from_secs(30);

/// The first line `relay serve` prints on standard output, once its store is open; the address
/// follows it.
const LISTENING_PREFIX: &str = "listening on http://";

/// The relay binary of this build: `$RELAY_BIN` if set, else `target/<profile>/relay` beside the
/// running executable (a test in `target/<profile>/deps`, or a tool in `target/<profile>`).
///
/// # Panics
/// If it is missing: `cargo build -p relay` first (`tests/run-all.sh` does).
pub fn relay_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("RELAY_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the running executable");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("relay{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p relay` first (tests/run-all.sh does), or set RELAY_BIN",
        bin.display()
    );
    bin
}

/// A relay binary running as a child process on a loopback port. Killed when dropped.
pub struct ChildRelay {
    child: Child,
    addr: std::net::SocketAddr,
    stderr_path: PathBuf,
    // Holds the file standard error goes to.
    _logs: TempDir,
}

impl ChildRelay {
    /// Runs the relay of this build ([`relay_bin`]); see [`ChildRelay::start_bin`].
    ///
    /// # Errors
    /// As [`ChildRelay::start_bin`].
    pub async fn start(
        data_dir: &Path,
        args: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Result<ChildRelay, String> {
        Self::start_bin(&relay_bin(), data_dir, args, prepare).await
    }

    /// Runs `BIN serve --listen 127.0.0.1:0 --data-dir DATA_DIR ARGS...` with `RUST_LOG=warn`
    /// and standard error in a log file ([`ChildRelay::log`]), lets `prepare` adjust the command
    /// (an environment variable, a resource limit, standard error inherited by a tool), and waits
    /// for its `listening on` line.
    ///
    /// # Errors
    /// When it cannot be spawned, exits before listening (with its standard error), prints
    /// something else first, or does not listen within 30 s.
    pub async fn start_bin(
        bin: &Path,
        data_dir: &Path,
        args: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Result<ChildRelay, String> {
        let logs = tempfile::tempdir().map_err(|e| format!("a directory for the log: {e}"))?;
        let stderr_path = logs.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| format!("create {}: {e}", stderr_path.display()))?;
        let mut command = Command::new(bin);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        prepare(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_LIMIT, lines.next_line())
            .await
            .map_err(|_| format!("the relay did not start within {START_LIMIT:?}"))?
            .map_err(|e| e.to_string())?;
        let Some(line) = line else {
            let status = child.wait().await.map_err(|e| e.to_string())?;
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            return Err(format!(
                "the relay exited ({status}) before listening:\n{log}"
            ));
        };
        let addr = line
            .strip_prefix(LISTENING_PREFIX)
            .and_then(|a| a.trim().parse().ok())
            .ok_or(format!("unexpected first line: {line}"))?;
        Ok(ChildRelay {
            child,
            addr,
            stderr_path,
            _logs: logs,
        })
    }

    /// Its address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the relay has not been waited for")
    }

    /// The WebSocket URL of a room.
    pub fn ws_url(&self, room: &str) -> String {
        ws_url(self.addr, room)
    }

    /// What it wrote to standard error so far (nothing if `prepare` redirected it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for the relay to exit; its status if it did.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Fails the test, with its log, if the relay has exited.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.exited() {
            panic!(
                "{what}: the relay process died ({status}); its log:\n{}",
                self.log()
            );
        }
    }

    /// Sends SIGTERM and waits for it to exit (within its drain timeout and [`DEADLINE`]).
    pub async fn stop(&mut self) -> ExitStatus {
        // SAFETY: kill(2) with the pid of a child this fixture has not reaped yet.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, libc::SIGTERM);
        }
        within_for(
            Duration::from_secs(10) + DEADLINE,
            "the relay to exit after SIGTERM",
            self.child.wait(),
        )
        .await
        .expect("wait for the relay")
    }

    /// Kills it with SIGKILL (a crash: it gets no chance to flush or commit anything) and waits
    /// for it to exit.
    ///
    /// # Errors
    /// When the signal cannot be sent or the process cannot be waited for.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }
}
