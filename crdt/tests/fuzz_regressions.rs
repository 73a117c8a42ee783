//! Replays the inputs kept in `crdt/fuzz/regressions/<target>/` (crashes the fuzzers found, and
//! seeds) through the fuzz targets' entry points, so a fixed crash stays fixed without a fuzzer.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    // FUZZ_REPLAY_DIR=crdt/fuzz/artifacts replays what a fuzzing run found, to check a fix.
    let base = std::env::var_os("FUZZ_REPLAY_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions"),
        std::path::PathBuf::from,
    );
    let dir = base.join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions directory") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let input = std::fs::read(&path).expect("read input");
            run(&input);
            count += 1;
        }
    }
    count
}

#[test]
fn decode_messages_regressions() {
    assert!(replay("decode_messages", crdt::fuzzing::decode_messages) > 0);
}

#[test]
fn apply_update_regressions() {
    assert!(replay("apply_update", crdt::fuzzing::apply_update) > 0);
}
