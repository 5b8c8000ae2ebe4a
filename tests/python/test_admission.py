"""Admission control around loads, on a real path: a fresh server, one 100,000-row workbook, and
calls arriving at 50 per second while its first load runs. Waiting for another call's load is
not work, so those calls must not fill the slots, and listing is never refused because of
loads."""

import asyncio
import shutil
import time

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import http_server, metric

pytestmark = pytest.mark.anyio


def client(url):
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(timeout=60)), mode="legacy",
                  read_timeout_seconds=60, cache=None)


async def test_calls_waiting_for_a_load_do_not_fill_the_slots(bench_workspace, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(bench_workspace / "sales_100k.xlsx", ws / "sales_100k.xlsx")
    # Two slots and a short queue wait: without lending, the callers waiting on the load would
    # hold both slots and everything else would be refused after 100 ms.
    extra = ["--max-inflight", "2", "--queue-wait-ms", "100"]
    with http_server(ws, extra, admin=True) as srv:
        async with client(srv.url) as c:
            books = (await c.call_tool("list_workbooks", {})).structured_content["workbooks"]
            book = books[0]["workbook_id"]
            results = []

            async def call(tool, args):
                t = time.monotonic()
                r = await c.call_tool(tool, args)
                results.append((tool, r.is_error, r.content[0].text if r.is_error else "", time.monotonic() - t))

            tasks = []
            started = time.monotonic()
            for i in range(150):
                if i % 3 == 0:
                    tasks.append(asyncio.create_task(call("list_workbooks", {})))
                else:
                    args = {"workbook_id": book, "sheet_name": "Sales", "limit": 20, "offset": i}
                    tasks.append(asyncio.create_task(call("read_table", args)))
                await asyncio.sleep(max(0.0, started + (i + 1) / 50 - time.monotonic()))
            await asyncio.gather(*tasks)
            refused = [r for r in results if r[1] and "capacity" in r[2]]
            failed = [r for r in results if r[1]]
            assert not failed, f"{len(refused)} refused, {len(failed)} failed: {failed[:3]}"
            assert metric(srv.admin, "gemba_requests_refused_total") == 0
            slowest = max(r[3] for r in results)
            print(f"150 calls at 50/s during a cold 100k-row load: none refused; slowest {slowest:.2f} s")
