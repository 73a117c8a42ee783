#!/usr/bin/env bash
# Replays the fuzz regression corpus, and the crafted update shapes of crdt/tests/update_shapes.rs,
# under AddressSanitizer, so that an input that makes yrs read or write freed memory fails the test
# command instead of counting as "accepted". Then checks that yrs itself still has the use after
# free crdt::validate works around (crdt/tests/yrs_use_after_free.rs): the day it does not, this
# script says the workaround can go.
#
#   crdt/fuzz/asan-regressions.sh
#
# Needs nothing beyond the stable toolchain: RUSTC_BOOTSTRAP=1 unlocks -Zsanitizer, as for the
# fuzz build. --target keeps build scripts and proc macros uninstrumented; target/asan keeps this
# build apart from the normal one. The arithmetic is the release build's (no overflow checks, no
# debug assertions), because that is what the relay ships: a yrs overflow that panics (and is
# contained) in a debug build wraps silently in a release build, and can go on to touch memory.
# The first run builds crdt and its dependencies once (about 2 minutes on 2 cores); later runs
# take seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."

target=x86_64-unknown-linux-gnu
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=address"
export CARGO_PROFILE_DEV_DEBUG_ASSERTIONS=false
export CARGO_PROFILE_DEV_OVERFLOW_CHECKS=false
export CARGO_PROFILE_TEST_DEBUG_ASSERTIONS=false
export CARGO_PROFILE_TEST_OVERFLOW_CHECKS=false
# Leaks are not memory errors, and yrs leaks what it held when a contained panic unwound.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0"
asan_test() {
  cargo test --locked -p crdt --target "$target" --target-dir target/asan "$@"
}

echo "--- fuzz regressions and crafted update shapes under AddressSanitizer"
asan_test --test fuzz_regressions --test update_shapes

# yrs alone, with each update shape crdt refuses: AddressSanitizer must report each. One test per
# run, since the first report ends the process.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for test in \
  repeated_client_section_frees_a_live_item \
  item_split_at_the_end_of_a_skip_frees_its_right_half \
  pending_item_split_at_the_end_of_a_later_skip_frees_its_right_half \
  gc_block_across_the_end_of_a_skip_is_integrated_whole; do
  echo "--- yrs alone: $test (AddressSanitizer must report heap-use-after-free)"
  if asan_test --test yrs_use_after_free -- --ignored --exact "$test" >"$log" 2>&1; then
    cat "$log"
    echo "yrs no longer reads freed memory in crdt/tests/yrs_use_after_free.rs $test:"
    echo "the refusal crdt makes for that shape (see the test's comments) is no longer needed"
    echo "for memory safety. Remove it (and this check, and the README's mention), or keep it"
    echo "as a plain refusal and drop the test from this list."
    exit 1
  fi
  if ! grep -q "ERROR: AddressSanitizer: heap-use-after-free" "$log"; then
    cat "$log"
    echo "expected AddressSanitizer to report heap-use-after-free for $test"
    exit 1
  fi
done
echo "yrs still frees live items for the shapes crdt refuses, as expected"
