//! The crash test, bounded: a few SIGKILLs of the relay binary under load; every edit the relay
//! acknowledged as saved must survive. `cargo run -p relay-tests --bin crashtest -- --kills 100`
//! is the long run.

use std::process::Command;

use relay_tests::relay_bin;

/// Runs the crash test with `args`; asserts it passed having acknowledged something.
fn crashtest(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_crashtest"))
        .args(args)
        .arg("--relay-bin")
        .arg(relay_bin())
        .output()
        .expect("run crashtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "crashtest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("crashtest passed"))
        .expect("summary line");
    // The run must have acknowledged something, or it proves nothing.
    let acked: u64 = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" acknowledged edits"))
        .and_then(|n| n.parse().ok())
        .expect("acknowledged count");
    assert!(acked > 0, "{summary}");
    assert!(summary.contains(" 0 lost"), "{summary}");
}

#[test]
fn acknowledged_edits_survive_sigkill() {
    crashtest(&[
        "--kills",
        "3",
        "--rooms",
        "2",
        "--writers",
        "3",
        "--seed",
        "7",
    ]);
}

/// The same with a checkpoint every few KiB of journal, so that kills land in the middle of
/// checkpoints (journal files being retired, redb transactions being written) too.
#[test]
fn acknowledged_edits_survive_sigkill_during_checkpoints() {
    crashtest(&[
        "--kills",
        "4",
        "--rooms",
        "2",
        "--writers",
        "3",
        "--seed",
        "11",
        "--checkpoint-bytes",
        "4096",
    ]);
}

/// The fixture the cluster and crash tests trust: `AckedWriter::settle` returns only once the
/// relay has committed every edit. Commits are held back 400 ms and the relay is killed the moment
/// `settle` returns; a settle answered before the edits reached the relay (its save request
/// used to go out ahead of the sync step 2 that carries them) loses them here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_writer_s_edits_survive_sigkill() {
    use std::time::Duration;

    use relay_tests::{AckedWriter, ChildRelay, read_edits};

    let data = tempfile::tempdir().expect("a data directory");
    let args = ["--commit-window-ms", "400"];
    let mut relay = ChildRelay::start(data.path(), &args, |_| {})
        .await
        .expect("start the relay");
    let mut writer = AckedWriter::new("crash/settle", "w");
    for _ in 0..5 {
        writer.edit();
    }
    writer
        .settle(&relay.ws_url("crash/settle"), Duration::from_secs(20))
        .await
        .expect("settled");
    relay.kill().await.expect("SIGKILL the relay");
    let relay = ChildRelay::start(data.path(), &args, |_| {})
        .await
        .expect("restart the relay");
    let seen = read_edits(&relay.ws_url("crash/settle"), Duration::from_secs(20))
        .await
        .expect("read the room back");
    assert_eq!(
        writer.first_missing(&seen, writer.sent()),
        None,
        "after SIGKILL the relay serves {seen:?}\n{}",
        relay.log()
    );
}
