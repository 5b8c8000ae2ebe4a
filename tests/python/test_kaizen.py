"""Kaizen: every request measured, exported the standard way (checked by promtool and a real
Prometheus), summarized with window percentiles, remembered across restarts."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
import mcp_types as types
from pydantic import BaseModel, ConfigDict

from conftest import BIN, STRICT, err, http_server, ids, ok, stdio

pytestmark = pytest.mark.anyio
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


class RawResult(BaseModel):
    model_config = ConfigDict(extra="allow")


def series(text: str, name: str, **labels) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def mcp_http(url):
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient()), mode="legacy",
                  read_timeout_seconds=60, cache=None)


async def test_every_request_is_counted_and_exported(workspace):
    with http_server(workspace, admin=True) as srv:
        async with httpx2.AsyncClient() as http:
            assert (await http.get(srv.admin + "/healthz")).status_code == 200
            r = await http.get(srv.admin + "/readyz")
            assert r.status_code == 200, r.text
        async with await mcp_http(srv.url) as c:
            book = await ids(c)
            for _ in range(7):
                await ok(c, "read_table", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales", "limit": 3})
            await err(c, "read_table", {"workbook_id": "nope"})
            await err(c, "read_table", {"workbook_id": book["sales.xlsx"], "limit": "x"})
            await c.list_tools()
            with pytest.raises(MCPError):
                await c.session.send_request(types.Request(method="no/such", params={}), RawResult)
            res = await c.read_resource("kaizen://metrics")
            summary = json.loads(res.contents[0].text)
            rt = next(t for t in summary["tools"] if t["tool"] == "read_table")
            assert rt["outcomes"]["ok"] == 7
        time.sleep(0.5)  # the aggregator drains its queue every few milliseconds
        async with httpx2.AsyncClient() as http:
            text = (await http.get(srv.admin + "/metrics")).text
            js = (await http.get(srv.admin + "/metrics.json")).json()
    assert series(text, "gemba_tool_requests_total", tool="read_table", outcome="ok") == 7
    assert series(text, "gemba_tool_requests_total", tool="read_table", outcome="tool_error") == 1
    assert series(text, "gemba_tool_requests_total", tool="read_table", outcome="invalid_params") == 1
    assert series(text, "gemba_tool_requests_total", tool="tools/list", outcome="ok") >= 1
    assert series(text, "gemba_tool_requests_total", tool="unknown", outcome="invalid_params") == 1
    assert series(text, "gemba_tool_requests_total", tool="resources/read", outcome="ok") == 1
    assert series(text, "gemba_tool_duration_seconds_count", tool="read_table") == 9
    assert series(text, "gemba_tool_duration_seconds_bucket", tool="read_table", le="+Inf") == 9
    assert series(text, "gemba_tool_in_flight", tool="read_table") == 0
    assert series(text, "gemba_cache_misses_total") >= 1 and series(text, "gemba_cache_hits_total") >= 6
    assert series(text, "gemba_cache_bytes") > 0
    assert series(text, "gemba_process_resident_memory_bytes") > 1e6
    assert series(text, "gemba_cache_load_duration_seconds_count") >= 1
    assert series(text, "gemba_tool_stage_seconds_total", tool="read_table", stage="load") > 0
    assert series(text, "mcp_server_operation_duration_seconds_count", mcp_method_name="tools/call",
                  gen_ai_tool_name="read_table", error_type="", network_transport="tcp",
                  mcp_protocol_version="2025-11-25") == 7
    assert "_total_total" not in text
    # SLO thresholds of the seed's tiers are bucket edges.
    for le in ["0.005", "0.01", "0.05", "0.1", "0.5", "1.0", "5.0", "30.0", "60.0"]:
        assert any(line.startswith("gemba_tool_duration_seconds_bucket{") and f'le="{le}"' in line
                   and 'tool="read_table"' in line for line in text.splitlines()), le
    rt = next(t for t in js["tools"] if t["tool"] == "read_table")
    assert rt["windows"]["1m"]["count"] == 9 and rt["windows"]["1m"]["p50_ms"] > 0
    assert set(rt["stages"]) >= {"validate", "load", "extract", "serialize"}
    if STRICT or PROMTOOL:
        assert PROMTOOL, "promtool is needed (scripts/test.sh installs it)"
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, text=True, capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr


async def test_a_panicking_tool_is_internal_and_the_server_goes_on(workspace):
    state = tempfile.mkdtemp()
    async with stdio(workspace, state_dir=state, env={"GEMBA_TEST_PANIC_TOOL": "sheet_statistics"}) as c:
        book = await ids(c)
        msg = await err(c, "sheet_statistics", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales"})
        assert "internal error" in msg and "still running" in msg
        await ok(c, "list_sheets", {"workbook_id": book["sales.xlsx"]})
        res = await c.read_resource("kaizen://metrics")
        summary = json.loads(res.contents[0].text)
        st = next(t for t in summary["tools"] if t["tool"] == "sheet_statistics")
        assert st["outcomes"] == {"internal": 1}
    out = subprocess.run([BIN, "stats", "--state-dir", state, "--since", "1h", "--json"],
                         capture_output=True, text=True, check=True)
    stats = {s["tool"]: s for s in json.loads(out.stdout)}
    assert stats["sheet_statistics"]["errors"] == 1


async def test_request_log_survives_restarts(workspace):
    state = tempfile.mkdtemp()
    for round in range(2):
        async with stdio(workspace, state_dir=state) as c:
            book = await ids(c)
            for _ in range(5):
                await ok(c, "describe_workbook", {"workbook_id": book["budget.xlsx"]})
        # The writer flushes within a moment of each batch.
        deadline = time.time() + 10
        while True:
            out = subprocess.run([BIN, "stats", "--state-dir", state, "--since", "1h", "--json",
                                  "--tool", "describe_workbook"], capture_output=True, text=True)
            rows = json.loads(out.stdout) if out.returncode == 0 else []
            if rows and rows[0]["count"] == 5 * (round + 1):
                break
            assert time.time() < deadline, out.stdout + out.stderr
            time.sleep(0.2)
    assert rows[0]["p50_ms"] > 0 and rows[0]["error_rate"] == 0
    table = subprocess.run([BIN, "stats", "--state-dir", state, "--since", "1h"], capture_output=True,
                           text=True, check=True).stdout
    assert re.search(r"describe_workbook\s+10\s+0.0%", table), table


async def test_readyz_says_why_when_state_is_not_writable(workspace, tmp_path):
    blocker = tmp_path / "state-is-a-file"
    blocker.write_text("not a directory")
    with http_server(workspace, admin=True, state_dir=blocker) as srv:
        async with httpx2.AsyncClient() as http:
            r = await http.get(srv.admin + "/readyz")
            assert r.status_code == 503 and "state database" in r.text
            assert (await http.get(srv.admin + "/healthz")).status_code == 200


@pytest.mark.skipif(not PROMETHEUS, reason="prometheus is not installed (scripts/test.sh installs it)")
async def test_a_real_prometheus_sees_the_same_counts(workspace, tmp_path):
    with http_server(workspace, admin=True) as srv:
        target = srv.admin.removeprefix("http://")
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gemba\n"
                       f"    static_configs:\n      - targets: ['{target}']\n")
        port = 19090 + os.getpid() % 1000
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            calls = 13
            async with await mcp_http(srv.url) as c:
                book = await ids(c)
                for _ in range(calls):
                    await ok(c, "sheet_overview", {"workbook_id": book["budget.xlsx"], "sheet_name": "Budget"})
            query = 'sum(gemba_tool_requests_total{tool="sheet_overview"})'
            deadline = time.time() + 60
            seen = None
            async with httpx2.AsyncClient() as http:
                while time.time() < deadline:
                    try:
                        r = await http.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query})
                        res = r.json()["data"]["result"]
                        if res:
                            seen = float(res[0]["value"][1])
                            if seen == calls:
                                break
                    except (httpx2.HTTPError, KeyError, ValueError):
                        pass
                    time.sleep(1)
            assert seen == calls, f"Prometheus saw {seen}, the test made {calls} calls"
        finally:
            prom.terminate()
            prom.wait(timeout=10)
