#!/bin/bash
# A flood at 10x capacity, by arrival rate, for 30 s (issue 6's bar):
#   1. start gemba serve --http on CPU 0 and the load generator on CPU 1, so the generator's own
#      work does not decide the server's figures;
#   2. step mode finds the server's capacity on a heavy read (examples/loadtest/filter-scan.toml:
#      every call scans 100,000 rows), p99 <= 50 ms;
#   3. open loop at 10x that rate for FLOOD_SECONDS (30), RSS sampled every 0.25 s;
#   4. then plain calls until one succeeds: the recovery time.
# It fails (exit 1) if any call got no answer (a transport error or a client timeout rather than a
# result or a refusal), if RSS passed FLOOD_RSS_LIMIT_MB (256), or if recovery took over 5 s.
# Needs a release build; generates the benchmark workloads if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=./target/release/gemba
WS=target/gemba-bench
SECONDS_FLOOD="${FLOOD_SECONDS:-30}"
RSS_LIMIT_MB="${FLOOD_RSS_LIMIT_MB:-256}"
PORT="${FLOOD_PORT:-18080}"
OUT="${TMPDIR:-/tmp}/gemba-flood"
mkdir -p "$OUT"
[ -f "$WS/sales_100k.xlsx" ] || "$BIN" workloads --set bench --out "$WS"
URL="http://127.0.0.1:$PORT/mcp"
SCENARIO=examples/loadtest/filter-scan.toml

taskset -c 0 "$BIN" serve --http "127.0.0.1:$PORT" --workspace "$WS" --state-dir "$OUT/state" >"$OUT/server.log" 2>&1 &
SP=$!
trap 'kill $SP 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null && break
  sleep 0.1
done

echo "== capacity (step mode, server on CPU 0, generator on CPU 1)"
taskset -c 1 "$BIN" loadtest --url "$URL" --scenario "$SCENARIO" --rate 25/s --step 25/s --duration 4s \
  --max-p99-ms 50 --quiet --json "$OUT/step.json" | tail -3
CAP=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['capacity']['rate'])" "$OUT/step.json")
RATE=$(python3 -c "print(int(float('$CAP') * 10))")
echo "capacity ${CAP}/s; flooding at ${RATE}/s for ${SECONDS_FLOOD}s"

echo "== flood"
: >"$OUT/rss.txt"
( while kill -0 $SP 2>/dev/null; do awk '/VmRSS/{print $2}' /proc/$SP/status >>"$OUT/rss.txt"; sleep 0.25; done ) &
SAMPLER=$!
taskset -c 1 "$BIN" loadtest --url "$URL" --scenario "$SCENARIO" --rate "${RATE}/s" --duration "${SECONDS_FLOOD}s" \
  --concurrency 4000 --timeout 30s --quiet --json "$OUT/flood.json" | tail -3
T0=$(date +%s.%N)
for _ in $(seq 1 200); do
  if "$BIN" loadtest --url "$URL" --scenario examples/loadtest/read-table-100.toml --rate 10/s --duration 0.2s \
    --quiet --json "$OUT/after.json" >/dev/null 2>&1 \
    && python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['result']['total']; sys.exit(0 if t['ok'] == t['count'] > 0 else 1)" "$OUT/after.json"; then
    break
  fi
done
T1=$(date +%s.%N)
kill $SAMPLER 2>/dev/null || true

python3 - "$OUT" "$RSS_LIMIT_MB" "$T0" "$T1" <<'EOF'
import json, sys
out, limit, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
r = json.load(open(f"{out}/flood.json"))["result"]["total"]
errors = r.get("errors", {})
refused = errors.get("refused", 0)
unanswered = sum(v for k, v in errors.items() if k in ("transport_error", "timeout", "protocol_error"))
rss = [int(x) for x in open(f"{out}/rss.txt").read().split() if x.strip()]
max_rss = max(rss) / 1024 if rss else float("nan")
recovery = t1 - t0
print(f"sent {r['count']}, served {r['ok']}, refused {refused}, unanswered {unanswered}; "
      f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms")
print(f"max RSS {max_rss:.0f} MB (limit {limit:.0f} MB); healthy again {recovery:.2f} s after the flood")
ok = unanswered == 0 and max_rss < limit and recovery < 5
print("PASS flood" if ok else "FAIL flood")
sys.exit(0 if ok else 1)
EOF
