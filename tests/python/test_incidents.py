"""Anomalies and incidents, judged from outside: running Gemba servers pushed into trouble by real
traffic (`gemba loadtest`), with no test switches. Three trials run side by side:

a) cache thrash: a cache that holds the two workbooks an agent reads, then the agent cycles
   through six → an incident within 2 minutes, top cause `cache_thrash`;
b) saturation: steady light reads, then a burst of concurrent heavy calls (table profiles of a
   100k-row sheet) → top cause `saturation`;
c) steady traffic for 90 s → no incident.

The detector runs with examples/detect/short-windows.toml (2 s windows: a real, documented
setting) so a baseline is learned in a minute instead of 5, and judged for the steady trial's
last minute.
The 30-minute steady claim at the default settings rests on kaizen's seeded simulation
(`cargo test -p kaizen --release detect::sim_tests`, docs/detection.md); this file shows the
wiring finds real trouble and stays quiet on real steady traffic.
"""

import http.server
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request

import anyio
import httpx2
import openpyxl
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import BIN, ROOT, http_server

DETECT = ROOT / "examples" / "detect" / "short-windows.toml"
# Steady traffic everywhere first; a and b learn their baselines (30 windows of 2 s), c is judged
# on it from then on (judging c while a and b are in trouble would judge the machine they share).
STEADY_S = 120
# The bar: an incident opens within 2 minutes of the symptom.
OPEN_BAR_S = 120
# After an incident opens, the symptom goes on this long before the final reading: causes are
# ranked on signals that held a level for three 5 s ticks, and re-ranked as evidence accumulates.
HOLD_S = 20
RATE = "15/s"
# How long trials a and b wait, still steady, for an incident of their learning phase to close
# (30 s without a symptom closes it with examples/detect/short-windows.toml).
QUIET_WAIT_S = 50


class Receiver(http.server.BaseHTTPRequestHandler):
    """An Alertmanager-style webhook: keeps every message, per server (the path)."""
    received = {}

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.setdefault(self.path, []).append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def get_json(url):
    return json.loads(urllib.request.urlopen(url, timeout=10).read().decode())


def metrics(admin):
    return urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()


def sample(text, name, **labels):
    """The value of the series `name{labels...}` in a /metrics text (None when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == name or (want and head.startswith(name + "{") and all(
                f'{k}="{v}"' in head for k, v in labels.items())):
            return float(value)
    return None


def write_book(path, rows, seed):
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("Sales")
    ws.append(["Date", "Region", "Product", "Units", "Price", "Amount"])
    regions = ["North", "South", "East", "West"]
    for i in range(rows):
        units, price = 1 + (i * 7919 + seed) % 500, round(1 + (i * 104729 + seed) % 8900 / 100, 2)
        ws.append([f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}", regions[i % 4], f"P{(i * 31 + seed) % 400:03d}",
                   units, price, round(units * price, 2)])
    wb.save(path)


def scenario(path, books, calls):
    """A loadtest scenario: `books` maps a name to a list_workbooks filter (saved as ${name}),
    `calls` is a list of (tool, args) of equal weight."""
    lines = []
    for name, flt in books.items():
        lines += ["[[setup]]", 'tool = "list_workbooks"', f'args = {{ filter = "{flt}" }}',
                  f'save = {{ {name} = "workbooks.0.workbook_id" }}', ""]
    for tool, args in calls:
        inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in args.items())
        lines += ["[[call]]", f'tool = "{tool}"', f"args = {{ {inline} }}", ""]
    path.write_text("\n".join(lines))
    return path


class Load:
    """A `gemba loadtest` process driving a server until stopped."""

    def __init__(self, url, scen, *args):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([BIN, "loadtest", "--quiet", "--url", url, "--scenario", str(scen), *args],
                                     stdout=subprocess.DEVNULL, stderr=self.log)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def failed(self):
        """The loadtest's own error, if it ended early (a setup call failed...)."""
        if self.proc.poll() not in (None, 0):
            self.log.seek(0)
            return self.log.read().decode(errors="replace")[-2000:]
        return None


def incidents_of(admin):
    return get_json(admin + "/incidents.json")["incidents"]


def new_incident(admin, before):
    """The oldest incident not among `before` (ids), if any."""
    fresh = [i for i in incidents_of(admin) if i["id"] not in before]
    return fresh[-1] if fresh else None


def read_table(book):
    return ("read_table", {"workbook_id": f"${{{book}}}", "sheet_name": "Sales", "limit": 20})


@pytest.fixture(scope="module")
def trials(bench_workspace, tmp_path_factory):
    """Runs the three trials at once and returns what each measured."""
    tmp = tmp_path_factory.mktemp("incidents")
    # a) six copies of a 10,000-row workbook (about 0.49 MB each in the cache since workbooks let go
    #    of their file image); a 2 MiB cache holds the two read first but not the six.
    thrash_ws = tmp / "thrash"
    thrash_ws.mkdir()
    write_book(thrash_ws / "thrash_1.xlsx", 10_000, 1)
    for i in range(2, 7):
        shutil.copy(thrash_ws / "thrash_1.xlsx", thrash_ws / f"thrash_{i}.xlsx")
    # b) a small workbook for the steady reads and the benchmark's 100k-row one for heavy calls.
    sat_ws = tmp / "saturation"
    sat_ws.mkdir()
    for name in ("small.xlsx", "sales_100k.xlsx"):
        shutil.copy(bench_workspace / name, sat_ws / name)
    # c) the same small workbook, read steadily.
    steady_ws = tmp / "steady"
    steady_ws.mkdir()
    shutil.copy(bench_workspace / "small.xlsx", steady_ws / "small.xlsx")

    Receiver.received = {}
    hook = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{hook.server_port}"

    s = lambda name, books, calls: scenario(tmp / f"{name}.toml", books, calls)  # noqa: E731
    two = s("two", {"b1": "thrash_1", "b2": "thrash_2"}, [read_table("b1"), read_table("b2")])
    six = s("six", {f"b{i}": f"thrash_{i}" for i in range(1, 7)}, [read_table(f"b{i}") for i in range(1, 7)])
    light = s("light", {"small": "small"}, [read_table("small")])
    heavy = s("heavy", {"big": "sales_100k"},
              [("table_profile", {"workbook_id": "${big}", "sheet_name": "Sales"})])
    # b's steady traffic opens the big workbook once in its setup, so the burst finds it cached.
    warm_big = tmp / "light-warm.toml"
    warm_big.write_text(light.read_text() + "\n" + "\n".join([
        "[[setup]]", 'tool = "list_workbooks"', 'args = { filter = "sales_100k" }',
        'save = { big = "workbooks.0.workbook_id" }', "",
        "[[setup]]", 'tool = "read_table"', 'args = { workbook_id = "${big}", sheet_name = "Sales", limit = 1 }', ""]))

    states = {k: tmp / f"state-{k}" for k in "abc"}
    common = ["--detect", str(DETECT)]
    out = {"states": states, "webhook": Receiver.received}
    with http_server(thrash_ws, [*common, "--cache-mb", "2", "--alert-webhook", hook_url + "/a"],
                     state_dir=states["a"], admin=True) as a, \
            http_server(sat_ws, [*common, "--alert-webhook", hook_url + "/b"], state_dir=states["b"],
                        admin=True) as b, \
            http_server(steady_ws, common, state_dir=states["c"], admin=True) as c:
        loads = {
            "a": Load(a.url, two, "--rate", RATE, "--duration", "300s"),
            "b": Load(b.url, warm_big, "--rate", RATE, "--duration", "300s"),
            "c": Load(c.url, light, "--rate", RATE, "--duration", f"{STEADY_S}s"),
        }
        try:
            time.sleep(STEADY_S)
            for k, load in loads.items():
                assert not load.failed(), f"{k}'s steady traffic stopped: {load.failed()}"
            # c: judged on its steady traffic.
            loads["c"].proc.wait(timeout=30)
            text = metrics(c.admin)
            out["c"] = {
                "incidents": get_json(c.admin + "/incidents.json")["incidents"],
                "incidents_total": sample(text, "gemba_incidents_total"),
                "watched": sample(text, "gemba_anomaly_open", tool="read_table", signal="latency"),
                "calls": sample(text, "gemba_tool_requests_total", tool="read_table", outcome="ok"),
            }
            # a and b: the trouble starts. Their steady phase only teaches the baselines (c is the
            # judge of steady traffic); an incident that opened in it (a neighbour's load on a
            # shared host slows millisecond calls for real) is reported and set aside once closed:
            # the steady traffic goes on until it closes (at most QUIET_WAIT_S), since one still
            # open would swallow the trouble.
            deadline = time.monotonic() + QUIET_WAIT_S
            while time.monotonic() < deadline and any(
                    "closed" not in i for srv in (a, b) for i in incidents_of(srv.admin)):
                time.sleep(1)
            early = {}
            for k, srv in (("a", a), ("b", b)):
                early[k] = {i["id"] for i in incidents_of(srv.admin)}
                for i in incidents_of(srv.admin):
                    print(f"\n{k}: incident while learning (set aside): {describe(i)}")
                    assert "closed" in i, f"{k} has an incident open at the start of the trouble: {describe(i)}"
            out["early"] = early
            started = time.monotonic()
            loads["a"].stop()
            loads["a"] = Load(a.url, six, "--rate", RATE, "--duration", "300s")
            loads["burst"] = Load(b.url, heavy, "--closed", "--concurrency", "32", "--duration", "300s")
            symptom = {"a": started, "b": started}
            opened = {}
            while len(opened) < 2 and time.monotonic() - started < OPEN_BAR_S + 10:
                time.sleep(1)
                for k, srv in (("a", a), ("b", b)):
                    if k not in opened and (inc := new_incident(srv.admin, early[k])) is not None:
                        opened[k] = (time.monotonic() - symptom[k], inc)
                for k, load in loads.items():
                    assert not load.failed(), f"{k}'s load stopped: {load.failed()}"
            time.sleep(HOLD_S)
            for k, srv in (("a", a), ("b", b)):
                text = metrics(srv.admin)
                out[k] = {
                    "opened": opened.get(k),
                    "final": new_incident(srv.admin, early[k]),
                    "early": len(early[k]),
                    "incidents_total": sample(text, "gemba_incidents_total"),
                    "latency_open": sample(text, "gemba_anomaly_open", tool="read_table", signal="latency"),
                    "errors_open": sample(text, "gemba_anomaly_open", tool="read_table", signal="error_ratio"),
                }
            out["a"]["resource"] = anyio.run(read_resource, a.url)
        finally:
            for load in loads.values():
                load.stop()
    hook.shutdown()
    return out


async def read_resource(url):
    client = Client(streamable_http_client(url, http_client=httpx2.AsyncClient()), mode="legacy",
                    read_timeout_seconds=60, cache=None)
    async with client as c:
        listed = [str(r.uri) for r in (await c.list_resources()).resources]
        assert "kaizen://incidents" in listed
        res = await c.read_resource("kaizen://incidents")
        return json.loads(res.contents[0].text)


def describe(inc):
    return json.dumps(inc, indent=1)[:3000]


def check_trouble(result, cause, webhook_path):
    assert result["opened"], f"no incident within {OPEN_BAR_S} s of the symptom"
    delay, inc = result["opened"]
    final = result["final"]
    top = final["causes"][0]
    print(f"\n{cause}: incident {inc['id']} seen {delay:.0f} s after the symptom began "
          f"(causes then: {[c['cause'] for c in inc['causes']]}); {HOLD_S} s later top cause "
          f"{top['cause']} ({top['score']}): {top['evidence']}")
    print("  causes:", [(c["cause"], c["score"]) for c in final["causes"]])
    assert delay <= OPEN_BAR_S
    assert final["id"] == inc["id"] and top["cause"] == cause, describe(final)
    assert "read_table" in final["tools"], final["tools"]
    # The timeline is in time order and starts with the symptom (or a signal that moved first).
    times = [e["at"] for e in final["timeline"]]
    assert times == sorted(times) and any(e["signal"].startswith("read_table/") for e in final["timeline"])
    assert result["incidents_total"] == 1 + result["early"]
    # Delivered as one opening alert (held back until a cause was ranked), with the top cause in
    # its summary and its runbook section.
    alerts = [a for m in Receiver.received.get(webhook_path, []) for a in m["alerts"]
              if a["labels"]["alertname"] == "GembaIncident" and a["status"] == "firing"
              and f"incident {final['id']} " in a["annotations"]["summary"]]
    assert alerts, f"no GembaIncident alert reached the webhook: {Receiver.received.get(webhook_path)}"
    assert " opened " in alerts[0]["annotations"]["summary"], alerts[0]
    assert f"likely {cause}" in alerts[0]["annotations"]["summary"], alerts[0]
    assert alerts[0]["annotations"]["runbook_url"].endswith("#incident-" + cause.replace("_", "-"))
    return final


def test_cache_thrash_opens_an_incident_with_its_cause(trials):
    final = check_trouble(trials["a"], "cache_thrash", "/a")
    a = trials["a"]
    assert a["latency_open"] == 1 or a["errors_open"] == 1, a
    evidence = final["causes"][0]["evidence"]
    assert "cache_hit_ratio" in evidence or "cache_evictions" in evidence, evidence
    # The same incident on the MCP resource, and in the state database for `gemba incidents`.
    assert final["id"] in [i["id"] for i in a["resource"]["incidents"]]
    r = subprocess.run([BIN, "incidents", "--state-dir", str(trials["states"]["a"]), "--json"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    saved = json.loads(r.stdout)["incidents"]
    assert [i for i in saved if i["id"] == final["id"]][0]["causes"][0]["cause"] == "cache_thrash", saved
    r = subprocess.run([BIN, "incidents", "--state-dir", str(trials["states"]["a"])],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and final["id"] in r.stdout and "cache_thrash" in r.stdout, r.stdout


def test_a_burst_of_heavy_calls_opens_an_incident_of_saturation(trials):
    final = check_trouble(trials["b"], "saturation", "/b")
    listed = [c["cause"] for c in final["causes"]]
    assert "cache_thrash" not in listed, final["causes"]


def test_steady_traffic_opens_no_incident(trials):
    c = trials["c"]
    print(f"\nsteady: {c['calls']:.0f} read_table calls in {STEADY_S} s, incidents {c['incidents']}")
    # The detector was judging (past its warm-up), not just learning.
    assert c["watched"] == 0, c
    assert c["calls"] >= STEADY_S * 10
    assert c["incidents"] == [] and c["incidents_total"] == 0, c


def start_and_stop(workspace, state_dir, *extra):
    """Starts a server, returns what it logged up to listening, stops it."""
    proc = subprocess.Popen([BIN, "serve", "--http", "127.0.0.1:0", "--workspace", str(workspace),
                             "--state-dir", str(state_dir), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GEMBA_LOG": "info"})
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                break
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert any("listening on" in line for line in lines), "".join(lines)
    return "".join(lines)


def test_a_changed_setting_is_noted_at_start_as_a_possible_cause(bench_workspace, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(bench_workspace / "small.xlsx", ws / "small.xlsx")
    state = tmp_path / "state"
    assert "since the last run" not in start_and_stop(ws, state, "--cache-mb", "64")
    log = start_and_stop(ws, state, "--cache-mb", "32")
    assert f"since the last run: cache_bytes {64 << 20} → {32 << 20}" in log, log
    assert "since the last run" not in start_and_stop(ws, state, "--cache-mb", "32")
    r = subprocess.run([BIN, "incidents", "--workspace", str(tmp_path / "nothing-here")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "no state database" in r.stderr and "gemba serve" in r.stderr, r.stderr
