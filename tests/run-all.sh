#!/usr/bin/env bash
# Runs every test of the project, installing what a fresh machine lacks.
#
#   tests/run-all.sh
#
# 1. formatting and lints of the Rust code,
# 2. Rust unit tests and the integration tests in tests/ (real relay on a loopback port),
# 3. the Node interoperability tests in tests/interop (unmodified yjs / y-websocket clients from
#    npm against the relay binary),
# 4. the browser client's tests in client-js (lint, type check, unit tests against the relay),
# 5. the demo apps and the browser tests (tests/browser/run.sh: installs Debian's chromium when
#    it is missing, checks that examples/dist is built from its sources, drives headless
#    Chromium against the relay).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (the relay binary the Node tests run)"
cargo build --locked -p relay

step "cargo test"
cargo test --workspace --locked

step "fuzz regressions under AddressSanitizer (crdt/fuzz/asan-regressions.sh)"
crdt/fuzz/asan-regressions.sh

step "Node interoperability tests"
(
  cd tests/interop
  npm ci --no-audit --no-fund --loglevel=error
  npm test
)

step "client-js: lint, types, unit tests"
(
  cd client-js
  npm ci --no-audit --no-fund --loglevel=error
  npm test
)

step "demo apps and browser tests"
RELAY_BIN="$PWD/target/debug/relay" tests/browser/run.sh

printf '\nall tests passed\n'
