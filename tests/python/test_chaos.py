"""Chaos: faults injected into a real server, each with its expected outcome, how long the server
took to recover, and a check that nothing was lost. Faults come from test-only switches
(GEMBA_TEST_SLOW_TOOL, GEMBA_TEST_PANIC_TOOL), from the file system (files replaced or corrupted
under the cache, a file-size limit standing in for a full disk) and from the load itself."""

import asyncio
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import zipfile

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import BIN, err, http_server, ids, metric, ok

pytestmark = pytest.mark.anyio


def client(url):
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(timeout=30)), mode="legacy",
                  read_timeout_seconds=30, cache=None)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def recovered_within(url, seconds=5.0):
    """Seconds until a plain call succeeds again (fails the test past `seconds`)."""
    t = time.monotonic()
    while True:
        try:
            async with client(url) as c:
                r = await c.call_tool("list_workbooks", {"limit": 1})
                if not r.is_error:
                    return time.monotonic() - t
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            pass
        assert time.monotonic() - t < seconds, "the server did not recover in time"
        await asyncio.sleep(0.05)


async def test_flood_beyond_capacity_is_refused_quickly(workspace):
    """10x more concurrent calls than slots: the excess is refused fast with a clear error, memory
    stays bounded, and the server serves again at once."""
    env = {"GEMBA_TEST_SLOW_TOOL": "list_sheets@300"}
    extra = ["--max-inflight", "2", "--queue-wait-ms", "50"]
    with http_server(workspace, extra, env=env, admin=True) as srv:
        async with client(srv.url) as c:
            book = (await ids(c))["sales.xlsx"]

            async def one():
                t = time.monotonic()
                r = await c.call_tool("list_sheets", {"workbook_id": book})
                return r, time.monotonic() - t

            results = []
            for _ in range(3):  # three waves of 40 at once
                results += await asyncio.gather(*[one() for _ in range(40)])
                assert rss_bytes(srv.proc.pid) < 300 * 1024 * 1024
        served = [d for r, d in results if not r.is_error]
        refused = [(r.content[0].text, d) for r, d in results if r.is_error]
        assert len(served) + len(refused) == 120, "every call got an answer"
        assert len(served) >= 2 and len(refused) >= 90, (len(served), len(refused))
        assert all("at capacity" in m for m, _ in refused), refused[:2]
        # Past the bounded queue (4 x 2 slots waiting) calls are refused without waiting at all.
        assert any("more waiting" in m for m, _ in refused), refused[:2]
        assert max(d for _, d in refused) < 1.0, "refusals are quick"
        assert metric(srv.admin, "gemba_requests_refused_total") == len(refused)
        took = await recovered_within(srv.url)
        print(f"flood: {len(served)} served, {len(refused)} refused (max {max(d for _, d in refused) * 1000:.0f} ms); "
              f"recovered in {took * 1000:.0f} ms")


async def test_a_cancelled_call_stops_its_work(workspace):
    """A client that gives up frees the server: the work stops, its slot is free again."""
    env = {"GEMBA_TEST_SLOW_TOOL": "list_sheets@5000"}
    extra = ["--max-inflight", "1", "--queue-wait-ms", "1500"]
    with http_server(workspace, extra, env=env, admin=True) as srv:
        async with client(srv.url) as c:
            book = (await ids(c))["sales.xlsx"]
            task = asyncio.create_task(c.call_tool("list_sheets", {"workbook_id": book}))
            # Wait until the call holds the only slot (it holds it for 5 s if nothing stops it).
            t = time.monotonic()
            while metric(srv.admin, "gemba_inflight_slots_free") != 0:
                assert time.monotonic() - t < 3, "the call never started"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The only slot comes back long before the 5 s the work would have taken.
            t = time.monotonic()
            while metric(srv.admin, "gemba_inflight_slots_free") != 1:
                assert time.monotonic() - t < 2, "the cancelled work kept running"
                await asyncio.sleep(0.05)
            await ok(c, "describe_workbook", {"workbook_id": book})
            print(f"cancel: slot free again {(time.monotonic() - t) * 1000:.0f} ms after the cancel")


async def test_slow_read_times_out_and_the_server_stays_up(workspace):
    env = {"GEMBA_TEST_SLOW_TOOL": "read_table@2000"}
    with http_server(workspace, ["--timeout-ms", "400"], env=env) as srv:
        async with client(srv.url) as c:
            book = (await ids(c))["sales.xlsx"]
            t = time.monotonic()
            msg = await err(c, "read_table", {"workbook_id": book, "sheet_name": "Sales", "limit": 5})
            assert "budget" in msg and time.monotonic() - t < 1.5, msg
            await ok(c, "list_sheets", {"workbook_id": book})


async def test_a_panicking_tool_fails_alone(workspace):
    with http_server(workspace, env={"GEMBA_TEST_PANIC_TOOL": "list_sheets@2"}) as srv:
        async with client(srv.url) as c:
            book = (await ids(c))["sales.xlsx"]
            await ok(c, "list_sheets", {"workbook_id": book})
            assert "internal error" in await err(c, "list_sheets", {"workbook_id": book})
            t = time.monotonic()
            await ok(c, "list_sheets", {"workbook_id": book})
            print(f"panic: next call served {(time.monotonic() - t) * 1000:.0f} ms later")


async def test_workbook_replaced_or_corrupted_while_cached(scratch_workspace):
    path = scratch_workspace / "sales.xlsx"
    with http_server(scratch_workspace) as srv:
        async with client(srv.url) as c:
            book = (await ids(c))["sales.xlsx"]
            before = await ok(c, "list_sheets", {"workbook_id": book})
            assert before["sheets"][0]["name"] == "Sales"
            # Replaced by another workbook: the next read sees the new file.
            shutil.copy(scratch_workspace / "budget.xlsx", path)
            after = await ok(c, "list_sheets", {"workbook_id": book})
            assert after["sheets"][0]["name"] != "Sales"
            # Corrupted: a clear error, and the server goes on.
            path.write_bytes(b"PK\x03\x04 this is not a workbook any more")
            msg = await err(c, "list_sheets", {"workbook_id": book})
            assert book in msg and len(msg) > 30, msg
            await ok(c, "list_sheets", {"workbook_id": (await ids(c))["model.xlsx"]})


def start_limited(workspace, state):
    """A server whose process ignores SIGXFSZ, so a file-size limit set later (prlimit) makes
    writes fail with EFBIG the way a full disk makes them fail with ENOSPC."""
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    proc = subprocess.Popen(
        [BIN, "serve", "--http", "127.0.0.1:0", "--workspace", str(workspace), "--state-dir", str(state),
         "--no-kaizen"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
        env={**os.environ, "GEMBA_LOG": "warn"},
    )
    url = None
    for line in proc.stderr:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            url = m.group(1)
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    assert url
    return proc, url


async def test_disk_full_while_saving_a_fork(scratch_workspace, tmp_path):
    if shutil.which("prlimit") is None:
        pytest.fail("prlimit (util-linux) is needed for this test")
    original = (scratch_workspace / "model.xlsx").read_bytes()
    proc, url = start_limited(scratch_workspace, tmp_path / "state")
    try:
        async with client(url) as c:
            model = (await ids(c))["model.xlsx"]
            fork = (await ok(c, "create_fork", {"workbook_id": model}))["fork_id"]
            # Hardly compressible text: the saved file outgrows the limit set below.
            edits = [f"D{r}={os.urandom(15000).hex()}" for r in (1, 2)] + ["B3=42"]
            await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs", "edits": edits})
            limit = len(original) + 8000
            subprocess.run(["prlimit", "--pid", str(proc.pid), f"--fsize={limit}:unlimited"], check=True)
            msg = await err(c, "save_fork", {"fork_id": fork, "target_path": "model-v2.xlsx"})
            assert "could not write" in msg and "intact" in msg, msg
            assert not (scratch_workspace / "model-v2.xlsx").exists()
            assert not list(scratch_workspace.glob(".model-v2.xlsx.gemba-*")), "no temporary file left"
            assert (scratch_workspace / "model.xlsx").read_bytes() == original
            # Space comes back: the fork is intact and saves.
            subprocess.run(["prlimit", "--pid", str(proc.pid), "--fsize=unlimited:unlimited"], check=True)
            t = time.monotonic()
            s = await ok(c, "save_fork", {"fork_id": fork, "target_path": "model-v2.xlsx"})
            v = await ok(c, "range_values", {"workbook_id": s["workbook_id"], "sheet_name": "Inputs",
                                             "ranges": ["B3"], "format": "values"})
            assert v["ranges"][0]["values"][0][0] == 42
            with zipfile.ZipFile(scratch_workspace / "model-v2.xlsx") as z:
                assert z.testzip() is None
            print(f"disk full: refused cleanly; saved {(time.monotonic() - t) * 1000:.0f} ms after space came back")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_stdio_client_that_stops_reading_holds_memory_bounded(workspace, tmp_path):
    """Requests keep coming but no answer is read: the server stops reading requests once a
    bounded number of answers is owed, memory stays flat, and everything is answered once the
    client reads again."""
    import json

    proc = subprocess.Popen([BIN, "serve", "--stdio", "--workspace", str(workspace), "--state-dir", str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        def send(obj):
            proc.stdin.write((json.dumps(obj) + "\n").encode())
            proc.stdin.flush()

        send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "chaos", "version": "1"}}})
        assert b'"id":0' in proc.stdout.readline()
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_workbooks", "arguments": {}}})
        books = json.loads(proc.stdout.readline())["result"]["structuredContent"]["workbooks"]
        book = next(b["workbook_id"] for b in books if b["path"] == "sales.xlsx")
        os.set_blocking(proc.stdin.fileno(), False)
        sent, stalled, t = 0, None, time.monotonic()
        while sent < 20000 and time.monotonic() - t < 30:
            msg = json.dumps({"jsonrpc": "2.0", "id": 100 + sent, "method": "tools/call", "params": {
                "name": "read_table", "arguments": {"workbook_id": book, "sheet_name": "Sales", "limit": 100}}})
            try:
                os.write(proc.stdin.fileno(), (msg + "\n").encode())
                sent += 1
                stalled = None
            except BlockingIOError:
                stalled = stalled or time.monotonic()
                if time.monotonic() - stalled > 2:
                    break
                time.sleep(0.01)
        rss1 = rss_bytes(proc.pid)
        time.sleep(1)
        rss2 = rss_bytes(proc.pid)
        assert sent < 5000, f"the server kept reading: {sent} requests taken without an answer read"
        assert rss2 < 200 * 1024 * 1024 and rss2 <= rss1 + 5 * 1024 * 1024, (rss1, rss2)
        # The client reads again: every request taken is answered.
        os.set_blocking(proc.stdin.fileno(), True)
        want = 100 + sent - 1
        t = time.monotonic()
        while True:
            line = proc.stdout.readline()
            assert line, "the server went away"
            if json.loads(line).get("id") == want:
                break
            assert time.monotonic() - t < 60
        print(f"stdio: paused after {sent} unread requests; RSS {rss2 // 2**20} MB; all answered "
              f"{time.monotonic() - t:.1f} s after reading resumed")
    finally:
        proc.kill()
        proc.wait(timeout=10)
