#!/usr/bin/env bash
# Browser end-to-end tests of the demo app, installing what a fresh machine lacks.
#
#   tests/browser/run.sh
#
# 1. Debian's Chromium (apt-get install chromium) when /usr/bin/chromium is missing;
# 2. npm ci in client-js (if present), examples and tests/browser;
# 3. examples: lint and check that the committed examples/dist is what the sources build to;
# 4. cargo build -p relay (the binary embeds examples/dist);
# 5. lint and run the tests in tests/browser (headless Chromium against the relay binary).
#
# Set RELAY_BIN to test another relay binary (then step 4 is skipped), CHROMIUM_BIN for another
# Chromium. UPDATE_SCREENSHOTS=1 also writes examples/screenshot-editor.png.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n=== %s\n' "$*"; }

if [ -z "${CHROMIUM_BIN:-}" ] && [ ! -x /usr/bin/chromium ]; then
  step "installing Chromium (apt-get)"
  SUDO=
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "Chromium is missing and this is not root: apt-get install chromium" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
"${CHROMIUM_BIN:-/usr/bin/chromium}" --version 2>/dev/null

npm_ci() {
  (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
}

if [ -f client-js/package.json ]; then
  step "npm ci in client-js"
  npm_ci client-js
fi
step "npm ci in examples"
npm_ci examples
step "npm ci in tests/browser"
npm_ci tests/browser

step "examples: lint, and examples/dist up to date"
(cd examples && npm test)

if [ -z "${RELAY_BIN:-}" ]; then
  step "cargo build -p relay (embeds examples/dist)"
  cargo build --locked -p relay
fi

step "browser tests"
(
  cd tests/browser
  npm run lint
  npm test
)
