#!/bin/bash
# Needs a release build and the benchmark workloads: cargo build --release && target/release/gemba workloads --set bench --out target/gemba-bench
# 30 s flood at 10x the slots (closed loop, 640 workers on 64 slots), RSS sampled, recovery timed.
cd "$(dirname "$0")/.."
./target/release/gemba serve --http 127.0.0.1:18080 --workspace target/gemba-bench --state-dir "${TMPDIR:-/tmp}/gemba-flood-state" > "${TMPDIR:-/tmp}/gemba-flood-server.log" 2>&1 &
SP=$!
sleep 1.5
( maxrss=0; for i in $(seq 1 70); do r=$(grep VmRSS /proc/$SP/status | awk '{print $2}'); [ "$r" -gt "$maxrss" ] && maxrss=$r; sleep 0.5; done; echo "max RSS during flood: $((maxrss/1024)) MB" ) &
timeout 120 ./target/release/gemba loadtest --url http://127.0.0.1:18080/mcp --scenario examples/loadtest/read-table-100.toml --closed --concurrency 640 --duration 30s --quiet --json "${TMPDIR:-/tmp}/gemba-flood.json" 2>&1 | grep -E "TOTAL|read_table"
t0=$(date +%s.%N)
for i in $(seq 1 100); do
  if timeout 5 ./target/release/gemba loadtest --url http://127.0.0.1:18080/mcp --scenario examples/loadtest/read-table-100.toml --rate 10/s --duration 0.3s --quiet --json "${TMPDIR:-/tmp}/gemba-flood-after.json" >/dev/null 2>&1; then break; fi
done
t1=$(date +%s.%N)
echo "healthy again after: $(echo "$t1 - $t0" | bc) s"
python3 -c "import json; d=json.load(open('"${TMPDIR:-/tmp}/gemba-flood-after.json"')); print('after:', d['result']['total'])"
wait
kill $SP
