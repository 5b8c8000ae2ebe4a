"""Warm reads run inline on the runtime thread (crates/gemba/src/inline.rs): the same answers as
on the blocking pool, counted in /metrics, and a read whose workbook changed on disk since it
was cached still goes to the pool, reloads and answers from the new file."""

import shutil

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import http_server, ids, metric, ok

pytestmark = pytest.mark.anyio

READS = [
    ("list_sheets", {}),
    ("describe_workbook", {}),
    ("workbook_summary", {}),
    ("sheet_overview", {"sheet_name": "Sales"}),
    ("sheet_statistics", {"sheet_name": "Sales"}),
    ("read_table", {"sheet_name": "Sales", "limit": 5}),
    ("range_values", {"sheet_name": "Sales", "ranges": ["A1:C4"]}),
    ("sheet_page", {"sheet_name": "Sales", "page_size": 5}),
    ("find_value", {"query": "North", "limit": 3}),
]


def client(url, mode):
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(timeout=60)), mode=mode,
                  read_timeout_seconds=60, cache=None)


async def answers(url, mode):
    """Each read of sales.xlsx twice (cold, then warm); the warm answers."""
    out = {}
    async with client(url, mode) as c:
        book = (await ids(c))["sales.xlsx"]
        await ok(c, "list_sheets", {"workbook_id": book})  # every sheet in memory
        for tool, args in READS:
            await ok(c, tool, {"workbook_id": book, **args})
            out[tool] = await ok(c, tool, {"workbook_id": book, **args})
        out["list_workbooks"] = await ok(c, "list_workbooks", {})
    return out


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_warm_reads_run_inline_with_the_pools_answers(workspace, mode):
    with http_server(workspace, admin=True) as inline, \
            http_server(workspace, admin=True, env={"GEMBA_INLINE_MAX_CELLS": "0"}) as pool:
        fast = await answers(inline.url, mode)
        slow = await answers(pool.url, mode)
        for tool in fast:
            # Only modification times may differ between two runs: none are in these answers.
            assert fast[tool] == slow[tool], tool
        ran_inline = metric(inline.admin, "gemba_calls_inline_total")
        assert ran_inline >= len(READS), ran_inline
        assert metric(pool.admin, "gemba_calls_inline_total") == 0
        assert metric(pool.admin, "gemba_calls_inline_fallbacks_total") == 0


async def test_a_changed_workbook_goes_back_to_the_pool_and_reloads(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    shutil.copy(ws / "sales.xlsx", tmp_path / "sales.xlsx")
    versions = {"budget": ws / "budget.xlsx", "sales": tmp_path / "sales.xlsx"}
    with http_server(ws, admin=True) as srv:
        async with client(srv.url, "legacy") as c:
            book = (await ids(c))["sales.xlsx"]
            names = {}
            for version in ("sales", "budget"):
                shutil.copy(versions[version], ws / "sales.new")
                (ws / "sales.new").replace(ws / "sales.xlsx")
                names[version] = [s["name"] for s in (await ok(c, "list_sheets", {"workbook_id": book}))["sheets"]]
            assert names["sales"] == ["Sales", "Assumptions"] and names["budget"] != names["sales"], names
            # Warm, then the file is replaced (a new inode, as an editor's save): the next read
            # is tried inline, finds the file changed, and reloads on the pool. (The try needs a
            # workspace listing younger than ~0.9 s, so a slow machine may take a few rounds.)
            for round in range(6):
                old, new = ("budget", "sales") if round % 2 == 0 else ("sales", "budget")
                warm = await ok(c, "list_sheets", {"workbook_id": book})
                assert [s["name"] for s in warm["sheets"]] == names[old]
                shutil.copy(versions[new], ws / "sales.new")
                (ws / "sales.new").replace(ws / "sales.xlsx")
                fresh = await ok(c, "list_sheets", {"workbook_id": book})
                assert [s["name"] for s in fresh["sheets"]] == names[new], (round, fresh)
                if metric(srv.admin, "gemba_calls_inline_fallbacks_total") >= 1:
                    break
            assert metric(srv.admin, "gemba_calls_inline_fallbacks_total") >= 1
            assert metric(srv.admin, "gemba_calls_inline_total") >= 1
