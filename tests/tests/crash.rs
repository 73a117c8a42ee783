//! The crash test, bounded: a few SIGKILLs of the relay binary under load; every edit the relay
//! acknowledged as saved must survive. `cargo run -p relay-tests --bin crashtest -- --kills 100`
//! is the long run.

use std::process::Command;

use relay_tests::relay_bin;

#[test]
fn acknowledged_edits_survive_sigkill() {
    let output = Command::new(env!("CARGO_BIN_EXE_crashtest"))
        .args([
            "--kills",
            "3",
            "--rooms",
            "2",
            "--writers",
            "3",
            "--seed",
            "7",
        ])
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
