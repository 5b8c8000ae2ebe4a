"""SLOs judged in process: total failure pages within a minute (delivered to a webhook),
the status shows on /slo.json, /metrics and kaizen://slo, and survives a restart."""

import http.server
import json
import re
import subprocess
import tempfile
import threading
import time

import httpx2
import pytest

from conftest import BIN, err, http_server, ids, stdio

pytestmark = pytest.mark.anyio


class Receiver(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((time.monotonic(), json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def webhook():
    Receiver.received = []
    srv = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/alerts"
    srv.shutdown()


def paged(slo):
    for at, msg in Receiver.received:
        for a in msg["alerts"]:
            if (a["labels"]["alertname"] == "GembaSLOBurnRatePage" and a["labels"]["slo"] == slo
                    and a["status"] == "firing"):
                return at, a
    return None


async def test_total_failure_pages_within_a_minute(workspace, webhook):
    state = tempfile.mkdtemp()
    slo = "sheet_statistics-availability"
    with http_server(workspace, ["--alert-webhook", webhook], state_dir=state, admin=True,
                     env={"GEMBA_TEST_PANIC_TOOL": "sheet_statistics"}) as srv:
        from test_kaizen import mcp_http
        async with await mcp_http(srv.url) as c:
            book = await ids(c)
            started = time.monotonic()
            for _ in range(15):
                await err(c, "sheet_statistics", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales"})
            hit = None
            while hit is None and time.monotonic() - started < 70:
                time.sleep(0.5)
                hit = paged(slo)
            assert hit, f"no page within 70 s; webhook got {Receiver.received}"
            delay = hit[0] - started
            print(f"page delivered {delay:.1f} s after the first failing call")
            assert delay <= 60
            assert hit[1]["annotations"]["runbook_url"].endswith("#slo-burn-rate")
            res = await c.read_resource("kaizen://slo")
            objs = {o["slo"]: o for o in json.loads(res.contents[0].text)["objectives"]}
            assert objs[slo]["state"] == "page" and objs[slo]["error_budget_remaining"] < 0
        async with httpx2.AsyncClient() as http:
            js = (await http.get(srv.admin + "/slo.json")).json()
            text = (await http.get(srv.admin + "/metrics")).text
    st = {o["slo"]: o for o in js["objectives"]}[slo]
    assert st["requests_period"] == 15 and st["sli"] == 0
    assert f'gemba_slo_alert_firing{{slo="{slo}",tool="sheet_statistics",severity="page"}} 1' in text
    m = re.search(r'gemba_slo_burn_rate\{slo="sheet_statistics-availability",tool="sheet_statistics",window="5m"\} (\S+)', text)
    assert m and abs(float(m.group(1)) - 1000) < 1e-6, m and m.group(1)
    # The budget survives a restart: the status command reads the saved minutes.
    out = subprocess.run([BIN, "slo", "status", "--state-dir", state, "--json"], capture_output=True, text=True,
                         check=True).stdout
    saved = {o["slo"]: o for o in json.loads(out)}[slo]
    assert saved["requests_period"] == 15 and saved["state"] == "page"
    async with stdio(workspace, state_dir=state) as c:
        res = await c.read_resource("kaizen://slo")
        objs = {o["slo"]: o for o in json.loads(res.contents[0].text)["objectives"]}
        assert objs[slo]["requests_period"] == 15
    table = subprocess.run([BIN, "slo", "status", "--state-dir", state], capture_output=True, text=True,
                           check=True).stdout
    assert "sheet_statistics-availability" in table and "page" in table


def test_slo_config_round_trips_and_bad_files_are_refused(tmp_path):
    cfg = subprocess.run([BIN, "slo", "config"], capture_output=True, text=True, check=True).stdout
    assert "[tiers.metadata]" in cfg and "timeout_ms = 500" in cfg
    good = tmp_path / "slo.toml"
    good.write_text(cfg)
    subprocess.run([BIN, "slo", "--slo", str(good), "rules"], capture_output=True, text=True, check=True)
    bad = tmp_path / "bad.toml"
    bad.write_text('[tools.read_table]\ntier = "nope"\n')
    res = subprocess.run([BIN, "slo", "--slo", str(bad), "rules"], capture_output=True, text=True)
    assert res.returncode != 0 and "no tier 'nope'" in res.stderr
