#!/usr/bin/env bash
# Runs every benchmark scenario against the relay and its peers, and writes BENCHMARKS.md.
#
#   tests/loadgen/bench.sh                      # full run: every scenario, every peer, twice
#                                               # (and the timed ones with Hocuspocus clients)
#   tests/loadgen/bench.sh --smoke --runs 1     # a quick pass with small counts
#   tests/loadgen/bench.sh --scenario fanout-100,durable --peer relay,forwarder
#   tests/loadgen/bench.sh --protocol hocuspocus --peer relay,hocuspocus-server \
#       --scenario busy-room,many-rooms --runs 1 --out hocuspocus.md
#
# Extra arguments go to `loadgen bench` (see `target/release/loadgen bench --help`).
# Environment:
#   RELAY_BIN     relay binary to measure (default: build target/release/relay from this tree)
#   PREBUILT      directory with release builds of relay, loadgen and forwarder (skips building)
#   RELAY_REV     how to name the relay's version in BENCHMARKS.md (default: git HEAD)
#   Y_SWEET_BIN   y-sweet binary (default: y-sweet on PATH, else `cargo install y-sweet --locked`
#                 into target/y-sweet, which takes a while on 2 cores)
#   OUT           markdown to write (default: BENCHMARKS.md)
#   WAIT_QUIET=1  wait (up to 30 minutes) for a 1-minute load average below 0.7 before starting
#
# Servers run on core 0, the generator on core 1 (taskset / sched_setaffinity). Needs Node.js 20
# and npm for @y/websocket-server and @hocuspocus/server (a C++ compiler, make and python3 to
# build better-sqlite3).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

# PREBUILT=DIR: take relay, loadgen and forwarder from DIR instead of building them here.
if [[ -n "${PREBUILT:-}" ]]; then
  release=$PREBUILT
else
  cargo build --release -p loadgen
  release=target/release
fi
if [[ -z "${RELAY_BIN:-}" ]]; then
  [[ -n "${PREBUILT:-}" ]] || cargo build --release -p relay
  RELAY_BIN=$release/relay
fi

# better-sqlite3 (under @hocuspocus/extension-sqlite) downloads a prebuilt binary from outside
# the npm registry unless told to build from source; node-gyp then needs Node's headers, which
# the system's Node ships in /usr/include/node (else node-gyp would download them).
(cd tests/loadgen/peers && {
  [[ -d node_modules/@y/websocket-server && -d node_modules/@hocuspocus/extension-sqlite ]] ||
    npm_config_build_from_source=true npm_config_nodedir="${npm_config_nodedir:-/usr}" \
      npm ci --no-audit --no-fund
})

if [[ -z "${Y_SWEET_BIN:-}" ]]; then
  if command -v y-sweet >/dev/null; then
    Y_SWEET_BIN=$(command -v y-sweet)
  else
    [[ -x target/y-sweet/bin/y-sweet ]] || cargo install y-sweet --version 0.9.1 --locked --root target/y-sweet
    Y_SWEET_BIN=target/y-sweet/bin/y-sweet
  fi
fi

# Private copies: another build in this tree must not swap a binary in the middle of a run.
bin=target/loadgen-bin
mkdir -p "$bin"
cp "$RELAY_BIN" "$bin/relay"
cp "$release/loadgen" "$release/forwarder" "$bin/"
cp "$Y_SWEET_BIN" "$bin/y-sweet"

if [[ "${WAIT_QUIET:-0}" == 1 ]]; then
  for _ in $(seq 30); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    awk -v l="$load" 'BEGIN { exit !(l < 0.7) }' && break
    echo "load average $load: waiting for a quiet machine" >&2
    sleep 60
  done
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

results=target/loadgen-results.jsonl
rm -f "$results"
"$bin/loadgen" bench \
  --runs 2 \
  --protocol y-websocket,hocuspocus \
  --relay-bin "$bin/relay" \
  --forwarder-bin "$bin/forwarder" \
  --y-sweet-bin "$bin/y-sweet" \
  --node-peers tests/loadgen/peers \
  --trace "$root/tests/data/editing-traces/automerge-paper.json.gz" \
  --relay-arg=--max-connections=20000 \
  --json "$results" \
  --out "${OUT:-BENCHMARKS.md}" \
  --reproduce "tests/loadgen/bench.sh${*:+ $*}" \
  "$@"
