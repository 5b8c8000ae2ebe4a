"""A recalculation never blocks its fork, on a real path: LibreOffice started through a wrapper
script passed as `--libreoffice PATH`, which sleeps before it execs soffice. While it runs, a
read through the fork answers at once with the last committed values, `list_forks` answers at
once, an edit lands at once (and the recalculation runs again so its values include it), and
`discard_fork` returns at once, ending the call and killing LibreOffice's process group."""

import asyncio
import os
import shutil
import subprocess
import time

import pytest

from conftest import ids, ok, stdio

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice (soffice) is not installed"),
]

# Bounds well above what the answers take (milliseconds) and well below the recalculation's
# length, so a busy machine does not fail them while a blocked call still would.
PROMPT = 1.5


def slow_soffice(tmp_path, seconds):
    path = tmp_path / "slow-soffice"
    path.write_text(f'#!/bin/sh\nsleep {seconds}\nexec soffice "$@"\n')
    path.chmod(0o755)
    return path


async def wait_for_process(pattern, timeout=20):
    """The process group of the first process whose command line has `pattern`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        for pid in r.stdout.split():
            try:
                return os.getpgid(int(pid))
            except ProcessLookupError:
                continue
        await asyncio.sleep(0.05)
    raise AssertionError(f"no process matching {pattern} started")


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


async def value(c, book, sheet, cell):
    r = await ok(c, "range_values", {"workbook_id": book, "sheet_name": sheet, "ranges": [cell], "format": "values"})
    return r["ranges"][0]["values"][0][0]


async def timed(coro):
    t = time.monotonic()
    r = await coro
    return r, time.monotonic() - t


async def test_reads_listing_and_discard_do_not_wait_for_a_running_recalculation(scratch_workspace, tmp_path):
    slow = slow_soffice(tmp_path, 8)
    async with stdio(scratch_workspace, extra=["--libreoffice", str(slow)]) as c:
        model = (await ids(c))["model.xlsx"]
        fork = (await ok(c, "create_fork", {"workbook_id": model}))["fork_id"]
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs", "edits": ["B3=2000"]})
        await ok(c, "recalculate", {"fork_id": fork})
        committed = await value(c, fork, "Summary", "B1")
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs", "edits": ["B3=3000"]})

        running = asyncio.create_task(c.call_tool("recalculate", {"fork_id": fork, "backend": "libreoffice"}))
        pgid = await wait_for_process(f"{slow} --headless")

        # A read through the fork: the last committed values, and the edit made since.
        v, took = await timed(value(c, fork, "Summary", "B1"))
        assert v == committed and took < PROMPT, (v, committed, took)
        assert await value(c, fork, "Inputs", "B3") == 3000
        listing, took = await timed(ok(c, "list_forks", {}))
        [info] = listing["forks"]
        assert took < PROMPT and info["recalculating"] and info["needs_recalc"], (listing, took)
        assert not running.done()

        _, took = await timed(ok(c, "discard_fork", {"fork_id": fork}))
        assert took < PROMPT, took
        t = time.monotonic()
        r = await asyncio.wait_for(running, timeout=10)
        assert time.monotonic() - t < PROMPT
        assert r.is_error and "discarded" in r.content[0].text, r.content[0].text
        # The wrapper and anything it started are gone with their process group.
        deadline = time.monotonic() + 5
        while group_alive(pgid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not group_alive(pgid), f"process group {pgid} outlived the discard"
        assert (await ok(c, "list_forks", {}))["forks"] == []


async def test_an_edit_during_a_recalculation_lands_at_once_and_is_in_its_values(scratch_workspace, tmp_path):
    slow = slow_soffice(tmp_path, 3)
    async with stdio(scratch_workspace, extra=["--libreoffice", str(slow)]) as c:
        model = (await ids(c))["model.xlsx"]
        original = await value(c, model, "Summary", "B1")
        fork = (await ok(c, "create_fork", {"workbook_id": model}))["fork_id"]
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs", "edits": ["B3=2000"]})
        running = asyncio.create_task(c.call_tool("recalculate", {"fork_id": fork, "backend": "libreoffice"}))
        await wait_for_process(f"{slow} --headless")
        _, took = await timed(ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs", "edits": ["B3=4000"]}))
        assert took < PROMPT, took
        assert not running.done()
        r = await asyncio.wait_for(running, timeout=120)
        assert not r.is_error, r.content[0].text
        assert r.structured_content["backend"] == "libreoffice"
        # The run that started before the edit was not committed; the one after it was.
        total = await value(c, fork, "Summary", "B1")
        assert abs(total / original - 4) < 1e-9, (original, total)
        [info] = (await ok(c, "list_forks", {}))["forks"]
        assert not info["needs_recalc"] and not info.get("recalculating"), info


async def test_a_client_cancel_of_a_libreoffice_recalculation_is_cancelled_not_a_failure(scratch_workspace, tmp_path):
    """A real path for a cancel: the client withdraws a recalculation while LibreOffice runs.
    The process group is killed, the call is recorded as `cancelled` (not a timeout, not
    internal), and the circuit breaker counts no failure."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from conftest import http_server, metric

    slow = slow_soffice(tmp_path, 30)
    with http_server(scratch_workspace, ["--libreoffice", str(slow)], admin=True) as srv:
        async with Client(streamable_http_client(srv.url, http_client=httpx2.AsyncClient(timeout=60)),
                          mode="legacy", read_timeout_seconds=60, cache=None) as c:
            model = (await ids(c))["model.xlsx"]
            fork = (await ok(c, "create_fork", {"workbook_id": model}))["fork_id"]
            await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs", "edits": ["B3=2000"]})
            task = asyncio.create_task(c.call_tool("recalculate", {"fork_id": fork, "backend": "libreoffice"}))
            pgid = await wait_for_process(f"{slow} --headless")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            t = time.monotonic()
            while group_alive(pgid):
                assert time.monotonic() - t < 10, "LibreOffice kept running after the cancel"
                await asyncio.sleep(0.05)
            # The fork is usable at once, and the server counts a cancel, not a failure.
            await ok(c, "list_forks", {})
            t = time.monotonic()
            while metric(srv.admin, 'gemba_tool_requests_total{tool="recalculate",outcome="cancelled"}') != 1:
                assert time.monotonic() - t < 10, "the cancel was not recorded as cancelled"
                await asyncio.sleep(0.1)
            assert metric(srv.admin, "gemba_recalc_timeouts_total") == 0
            assert metric(srv.admin, 'gemba_recalc_failures_total{backend="libreoffice"}') == 0
            assert metric(srv.admin, "gemba_recalc_breaker_state") == 0
            assert not metric(srv.admin, 'gemba_tool_requests_total{tool="recalculate",outcome="internal"}')
            assert not metric(srv.admin, 'gemba_tool_requests_total{tool="recalculate",outcome="timeout"}')
