//! The test command itself, `tests/run-all.sh`: it runs every step even when one fails, does not
//! run a step whose prerequisite failed (and counts it as failed), lists every step in a summary
//! and exits non-zero when any step did not pass.
//!
//! The script runs from a copy in a temporary directory, with `cargo` and `npm` replaced on
//! `PATH` by stubs that log their calls and fail when told to, and a stub
//! `tests/browser/run.sh`. A step that calls another script of the repository needs a stub
//! here too.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A stub program: logs `NAME ARGS` (and its working directory) to `$STUB_LOG`, and exits 1 when
/// that line contains `$STUB_FAIL_<NAME>` (when set).
fn stub(name: &str) -> String {
    format!(
        "#!/usr/bin/env bash\n\
         line=\"{name} $* in $PWD\"\n\
         echo \"$line\" >> \"$STUB_LOG\"\n\
         fail=${{STUB_FAIL_{upper}:-}}\n\
         if [[ -n $fail && $line == *\"$fail\"* ]]; then echo \"{name}: told to fail\" >&2; exit 1; fi\n",
        upper = name.to_uppercase(),
    )
}

fn write_executable(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent directory")).expect("mkdir");
    std::fs::write(path, text).expect("write a stub");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

struct Run {
    /// Where the copy of the repository was (gone now).
    root: String,
    code: Option<i32>,
    stdout: String,
    /// One line per stub call.
    calls: Vec<String>,
}

impl Run {
    fn called(&self, needle: &str) -> bool {
        self.calls.iter().any(|c| c.contains(needle))
    }

    /// The summary line of a step: `NAME   OUTCOME`.
    #[track_caller]
    fn outcome(&self, step: &str) -> &str {
        let summary = self
            .stdout
            .split("=== summary\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no summary in:\n{}", self.stdout));
        summary
            .lines()
            .find_map(|l| {
                l.strip_prefix(step)
                    .filter(|rest| rest.starts_with(' '))
                    .map(str::trim)
            })
            .unwrap_or_else(|| panic!("step {step} is not in the summary:\n{summary}"))
    }
}

/// Runs a copy of tests/run-all.sh with the stubs; `fail` holds (program, pattern) pairs.
fn run_all(fail: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("repo");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("run-all.sh");
    let copy = root.join("tests/run-all.sh");
    write_executable(
        &copy,
        &std::fs::read_to_string(&script).expect("read run-all.sh"),
    );
    for sub in ["tests/interop", "client-js"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    let bin = dir.path().join("bin");
    write_executable(&bin.join("cargo"), &stub("cargo"));
    write_executable(&bin.join("npm"), &stub("npm"));
    write_executable(
        &root.join("tests/browser/run.sh"),
        "#!/usr/bin/env bash\necho \"browser RELAY_BIN=$RELAY_BIN\" >> \"$STUB_LOG\"\n",
    );
    write_executable(
        &root.join("tests/install-nats.sh"),
        "#!/usr/bin/env bash\necho install-nats >> \"$STUB_LOG\"\n",
    );
    write_executable(
        &root.join("crdt/fuzz/asan-regressions.sh"),
        "#!/usr/bin/env bash\necho asan >> \"$STUB_LOG\"\n",
    );
    let log = dir.path().join("calls.log");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(&copy);
    cmd.env("PATH", path).env("STUB_LOG", &log);
    for (program, pattern) in fail {
        cmd.env(format!("STUB_FAIL_{}", program.to_uppercase()), pattern);
    }
    let out = cmd.output().expect("run tests/run-all.sh");
    Run {
        root: root.display().to_string(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        calls: std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect(),
    }
}

#[test]
fn every_step_passes_and_the_command_succeeds() {
    let run = run_all(&[]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert!(run.stdout.contains("all tests passed"), "{}", run.stdout);
    for step in [
        "fmt",
        "clippy",
        "relay-build",
        "nats-install",
        "cargo-test",
        "asan",
        "interop",
        "client-js",
        "browser",
    ] {
        assert_eq!(run.outcome(step), "passed", "{}", run.stdout);
    }
    let root = &run.root;
    for dir in ["tests/interop", "client-js"] {
        for call in ["npm ci --no-audit --no-fund --loglevel=error", "npm test"] {
            let line = format!("{call} in {root}/{dir}");
            assert!(run.calls.contains(&line), "no `{line}` in {:?}", run.calls);
        }
    }
    let browser = format!("browser RELAY_BIN={root}/target/debug/relay");
    assert!(run.calls.contains(&browser), "{:?}", run.calls);
    assert!(run.calls.contains(&"asan".to_owned()), "{:?}", run.calls);
    assert!(
        run.calls.contains(&"install-nats".to_owned()),
        "{:?}",
        run.calls
    );
}

#[test]
fn a_failing_step_does_not_stop_the_others_and_fails_the_command() {
    let run = run_all(&[("cargo", "clippy"), ("npm", "test in")]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        run.outcome("clippy").starts_with("failed"),
        "{}",
        run.stdout
    );
    // Everything after the failed lint still ran.
    assert!(run.called("cargo test --workspace"), "{:?}", run.calls);
    assert!(run.outcome("interop").starts_with("failed"));
    assert!(run.outcome("client-js").starts_with("failed"));
    assert_eq!(run.outcome("browser"), "passed");
    assert!(run.stdout.contains("3 of "), "{}", run.stdout);
}

#[test]
fn steps_that_need_the_relay_binary_do_not_run_without_it() {
    let run = run_all(&[("cargo", "build --locked -p relay")]);
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(run.outcome("relay-build").starts_with("failed"));
    assert_eq!(run.outcome("cargo-test"), "passed");
    for step in ["interop", "client-js", "browser"] {
        assert!(
            run.outcome(step).starts_with("not run: relay-build failed"),
            "{step}: {}",
            run.stdout
        );
    }
    assert!(!run.called("npm "), "{:?}", run.calls);
    assert!(!run.called("browser "), "{:?}", run.calls);
}
