"""Traces over OTLP, judged by a real receiver: Arize Phoenix (an OTLP/HTTP protobuf receiver
with a REST API to read spans back; offline, SQLite, loopback). MCP SDK clients send a W3C
`traceparent` in `params._meta` and as an HTTP header; Phoenix must show Gemba's spans under the
client's trace with the MCP semantic-convention names, attributes and the stage children. A
receiver that is down costs the calls nothing but counted drops; OpenMetrics buckets carry
exemplars."""

import asyncio
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.request
import json

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import ROOT, http_server, ids, ok, stdio

pytestmark = pytest.mark.anyio
PHOENIX = os.environ.get("PHOENIX_BIN", str(ROOT / ".phoenix-venv" / "bin" / "phoenix"))
HEADER_TRACE = "5b8efff798038103d269b633813fc60c"
HEADER_PARENT = "eee19b7ec3c1b174"
META_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
META_PARENT = "00f067aa0ba902b7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def phoenix():
    if not os.access(PHOENIX, os.X_OK):
        pytest.skip(f"Arize Phoenix is not installed at {PHOENIX} (scripts/test.sh installs it into .phoenix-venv)")
    port, grpc = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="phoenix-")
    env = {**os.environ, "PHOENIX_WORKING_DIR": work, "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port),
           "PHOENIX_GRPC_PORT": str(grpc), "PHOENIX_TELEMETRY_ENABLED": "false"}
    proc = subprocess.Popen([PHOENIX, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, "Phoenix exited at start"
            assert time.monotonic() < deadline, "Phoenix did not start within 120 s"
            time.sleep(0.5)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def spans_of(phoenix, project, ready, timeout=60):
    """Spans of `project` in Phoenix (OTLP form), once `ready(spans)` holds (or at the timeout:
    Phoenix stores what it receives a little later)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            body = urllib.request.urlopen(f"{phoenix}/v1/projects/{project}/spans/otlpv1?limit=1000", timeout=10).read()
            spans = json.loads(body)["data"]
        except OSError:
            spans = []
        if ready(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def attrs(span) -> dict:
    out = {}
    for kv in span.get("attributes") or []:
        v = kv["value"]
        out[kv["key"]] = next((x for x in v.values() if x is not None), None)
    return out


def env_for(phoenix, project):
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": phoenix, "OTEL_SERVICE_NAME": "gemba-under-test",
            "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project},deployment.environment=test"}


async def test_http_spans_join_the_callers_trace(phoenix, workspace):
    project = "gemba-http"
    header = {"traceparent": f"00-{HEADER_TRACE}-{HEADER_PARENT}-01"}
    with http_server(workspace, admin=True, env=env_for(phoenix, project)) as srv:
        async with httpx2.AsyncClient(headers=header) as http:
            async with Client(streamable_http_client(srv.url, http_client=http), mode="legacy",
                              read_timeout_seconds=60, cache=None) as c:
                # _meta wins over the header.
                r = await c.call_tool("list_workbooks", {}, meta={"traceparent": f"00-{META_TRACE}-{META_PARENT}-01"})
                assert not r.is_error
                book = await ids(c)  # header context only
                await ok(c, "read_table", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales", "limit": 2})
                bad = await c.call_tool("read_table", {"workbook_id": "no-such-book", "sheet_name": "x"})
                assert bad.is_error
        def ready(spans):
            names = [s["name"] for s in spans]
            return names.count("tools/call read_table") >= 2 and "serialize" in names and "tools/list" in names \
                and "tools/call list_workbooks" in names
        spans = spans_of(phoenix, project, ready)
        # Exemplars: the OpenMetrics buckets of read_table name a trace this client started.
        req = urllib.request.Request(srv.admin + "/metrics", headers={"Accept": "application/openmetrics-text"})
        om = urllib.request.urlopen(req, timeout=10).read().decode()
        plain = urllib.request.urlopen(srv.admin + "/metrics", timeout=10).read().decode()
    ex = [l for l in om.splitlines() if l.startswith("gemba_tool_duration_seconds_bucket") and 'tool="read_table"' in l
          and "# {trace_id=" in l]
    assert ex and all(HEADER_TRACE in l for l in ex), ex
    assert "trace_id" not in plain
    roots = {(s["name"], s["trace_id"]): s for s in spans if s.get("parent_span_id") in (META_PARENT, HEADER_PARENT)}
    meta_root = roots[("tools/call list_workbooks", META_TRACE)]
    assert meta_root["parent_span_id"] == META_PARENT
    a = attrs(meta_root)
    assert a["mcp.method.name"] == "tools/call" and a["gen_ai.tool.name"] == "list_workbooks"
    assert a["gen_ai.operation.name"] == "execute_tool" and a["network.transport"] == "tcp"
    assert a["mcp.protocol.version"] == "2025-11-25" and a["mcp.session.id"] and a["jsonrpc.request.id"]
    assert "error.type" not in a
    read = [s for s in spans if s["name"] == "tools/call read_table" and s["trace_id"] == HEADER_TRACE
            and s.get("parent_span_id") == HEADER_PARENT]
    by_status = {s["status"]["code"]: s for s in read}
    good, failed = by_status[0], by_status[2]
    assert attrs(failed)["error.type"] == "tool_error"
    children = {s["name"] for s in spans if s.get("parent_span_id") == good["span_id"]}
    assert {"load", "extract", "serialize"} <= children, children
    for s in spans:
        if s.get("parent_span_id") == good["span_id"]:
            assert s["trace_id"] == HEADER_TRACE
            assert int(good["start_time_unix_nano"]) <= int(s["start_time_unix_nano"])
    assert ("tools/list", HEADER_TRACE) in roots


async def test_stdio_spans_carry_the_pipe_transport(phoenix, workspace):
    project = "gemba-stdio"
    trace = "0af7651916cd43dd8448eb211c80319c"
    async with stdio(workspace, env=env_for(phoenix, project)) as c:
        r = await c.call_tool("list_workbooks", {}, meta={"traceparent": f"00-{trace}-b7ad6b7169203331-01"})
        assert not r.is_error
        # Not sampled by the caller: no spans for this one.
        r = await c.call_tool("list_sheets", {"workbook_id": "x"}, meta={"traceparent": f"00-{trace}-b7ad6b7169203332-00"})
    spans = spans_of(phoenix, project, lambda spans: {"tools/call list_workbooks", "serialize"} <= {s["name"] for s in spans})
    roots = [s for s in spans if s["trace_id"] == trace and s.get("parent_span_id", "").startswith("b7ad6b716920333")]
    assert [s["name"] for s in roots] == ["tools/call list_workbooks"]
    assert roots[0]["parent_span_id"] == "b7ad6b7169203331"
    assert attrs(roots[0])["network.transport"] == "pipe"
    # Its children are in the same trace; nothing of the unsampled call is.
    children = [s for s in spans if s.get("parent_span_id") == roots[0]["span_id"]]
    assert children and all(s["trace_id"] == trace for s in children)
    assert not [s for s in spans if s["trace_id"] == trace and s not in roots and s not in children]


async def test_recalc_save_and_libreoffice_are_child_spans(phoenix, scratch_workspace, tmp_path):
    """A save that recalculates first, then a recalculation through the real LibreOffice, then
    one through a LibreOffice that exits with status 3: the recalculation, save and LibreOffice
    runs are child spans of each call's span, the LibreOffice ones carrying the exit status."""
    project = "gemba-forks"
    trace = "6e0c63257de34c926f9efcd03919fb92"
    meta = lambda n: {"traceparent": f"00-{trace}-{n:016x}-01"}
    fake = tmp_path / "soffice"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    for extra in ([], ["--libreoffice", str(fake)]):
        with http_server(scratch_workspace, extra, env=env_for(phoenix, project)) as srv:
            async with Client(streamable_http_client(srv.url), mode="legacy", read_timeout_seconds=120,
                              cache=None) as c:
                model = (await ids(c))["model.xlsx"]
                fork = (await ok(c, "create_fork", {"workbook_id": model}))["fork_id"]
                await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs", "edits": ["B3=5"]})
                if not extra:
                    r = await c.call_tool("save_fork", {"fork_id": fork, "target_path": "traced.xlsx"}, meta=meta(1))
                    assert not r.is_error, r.content
                    r = await c.call_tool("recalculate", {"fork_id": fork, "backend": "libreoffice"}, meta=meta(2))
                    assert not r.is_error, r.content
                else:
                    r = await c.call_tool("recalculate", {"fork_id": fork, "backend": "libreoffice"}, meta=meta(3))
                    assert r.is_error

    def ready(spans):
        parents = {s.get("parent_span_id") for s in spans if s["trace_id"] == trace}
        return {f"{n:016x}" for n in (1, 2, 3)} <= parents and sum(s["name"] == "libreoffice" for s in spans) >= 2
    spans = [s for s in spans_of(phoenix, project, ready, timeout=90) if s["trace_id"] == trace]
    root = {int(s["parent_span_id"], 16): s for s in spans if s.get("parent_span_id", "").startswith("0000")}
    assert root[1]["name"] == "tools/call save_fork" and root[2]["name"] == "tools/call recalculate"

    def children(parent, name):
        return [s for s in spans if s.get("parent_span_id") == parent["span_id"] and s["name"] == name]

    def inside(child, parent):
        return int(parent["start_time_unix_nano"]) <= int(child["start_time_unix_nano"]) \
            <= int(child["end_time_unix_nano"]) <= int(parent["end_time_unix_nano"])

    # The save recalculated first (the fork was stale), then built and wrote the file.
    [recalc], [save] = children(root[1], "recalc"), children(root[1], "save")
    assert attrs(recalc)["gemba.recalc.backend"] in ("in_process", "libreoffice")
    assert int(attrs(recalc)["gemba.recalc.cells"]) >= 1
    assert int(attrs(save)["gemba.save.bytes"]) > 1000
    assert inside(recalc, root[1]) and inside(save, root[1])
    assert int(recalc["end_time_unix_nano"]) <= int(save["start_time_unix_nano"])
    assert "error.type" not in attrs(save) and save["status"]["code"] != 2
    # The real LibreOffice: a run inside the recalculation, exit status 0.
    [recalc] = children(root[2], "recalc")
    assert attrs(recalc)["gemba.recalc.backend"] == "libreoffice" and inside(recalc, root[2])
    [lo] = children(recalc, "libreoffice")
    assert int(attrs(lo)["process.exit.code"]) == 0 and inside(lo, recalc)
    # A LibreOffice that exits with 3: each attempt a failed span with that status.
    [recalc] = children(root[3], "recalc")
    assert recalc["status"]["code"] == 2 and attrs(recalc)["error.type"]
    runs = children(recalc, "libreoffice")
    assert runs and all(int(attrs(s)["process.exit.code"]) == 3 for s in runs)
    assert all(attrs(s)["error.type"] == "exit_status" and s["status"]["code"] == 2 for s in runs)


async def test_a_receiver_that_is_down_costs_only_counted_drops(workspace):
    port = free_port()  # nothing listens there
    with http_server(workspace, ["--otlp-endpoint", f"http://127.0.0.1:{port}", "--trace-sample", "1"],
                     admin=True) as srv:
        async with Client(streamable_http_client(srv.url), mode="legacy", read_timeout_seconds=60, cache=None) as c:
            book = await ids(c)
            for _ in range(40):
                await ok(c, "read_table", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales", "limit": 2})

        def dropped():
            text = urllib.request.urlopen(srv.admin + "/metrics", timeout=10).read().decode()
            vals = {}
            for line in text.splitlines():
                if line.startswith("gemba_trace_spans_"):
                    name, v = line.rsplit(" ", 1)
                    vals[name] = float(v)
            return vals
        deadline = time.monotonic() + 30
        while True:
            v = dropped()
            lost = v.get('gemba_trace_spans_dropped_total{reason="export_failed"}', 0) + \
                v.get('gemba_trace_spans_dropped_total{reason="queue_full"}', 0)
            # 42 calls, each a root span and its stage children: all of them dropped, counted.
            if lost >= 42 * 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert v["gemba_trace_spans_exported_total"] == 0
    assert lost >= 42 * 2, v
