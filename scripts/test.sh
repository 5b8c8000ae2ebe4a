#!/usr/bin/env bash
# Install what the tests need and run them all: formatting, lints, Rust unit and integration
# tests, then the Python MCP SDK tests against the real binary. One release build serves all.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
JOBS="${GEMBA_TEST_JOBS:-2}"

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
