"""The MCP surface besides tools, through the official Python SDK in both protocol eras and on
both transports: prompts, completion, logging, progress, resources and subscriptions."""

import asyncio
import json
import os
import re
import shutil
import time
import urllib.request

import httpx2
import mcp_types as types
import pytest
import anyio
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourceUpdated

from conftest import BIN, TIMEOUT, TOOL_NAMES, http_server, ids, ok

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]
ERAS = ["legacy", "auto"]  # auto: server/discover, then 2026-07-28
TOOLS_LIST_BUDGET = 40_000


def stdio(workspace, mode="legacy", extra=(), env=None, **kw):
    """A client over stdio to a fresh server (callbacks and log level passed to the Client)."""
    import tempfile
    params = StdioServerParameters(
        command=BIN,
        args=["serve", "--stdio", "--workspace", str(workspace), "--state-dir", tempfile.mkdtemp(prefix="gemba-state-"),
              *extra],
        env={"GEMBA_LOG": "warn", **(env or {})},
    )
    return Client(params, mode=mode, read_timeout_seconds=TIMEOUT * 2, cache=None, **kw)


def http_client(url, mode, **kw):
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(timeout=TIMEOUT * 2)), mode=mode,
                  read_timeout_seconds=TIMEOUT * 2, cache=None, **kw)


def text_of(prompt) -> str:
    return "\n".join(m.content.text for m in prompt.messages)


def samples(admin, name):
    """Every sample of `name` on /metrics, by its label set."""
    text = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:_total)?(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


async def wait_for(pred, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


def touch_changed(path):
    """Change a workbook on disk the way an editor's save does (new content, new mtime)."""
    data = path.read_bytes()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data + b"\0")
    os.replace(tmp, path)


@pytest.mark.parametrize("mode", ERAS)
async def test_capabilities_and_a_lean_tools_list(workspace, mode):
    async with stdio(workspace, mode) as c:
        assert c.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        caps = c.server_capabilities
        assert caps.prompts is not None and caps.completions is not None and caps.logging is not None
        assert caps.resources is not None and caps.resources.subscribe is True
        # Only what works is declared: no list-changed notifications are ever sent.
        assert not caps.resources.list_changed and not caps.prompts.list_changed and not caps.tools.list_changed
        tools = await c.list_tools()
        assert [t.name for t in tools.tools] == TOOL_NAMES
        # The listing as the official SDK serializes it for its users.
        size = len(json.dumps([t.model_dump(exclude_none=True) for t in tools.tools]))
        print(f"tools/list as the Python SDK dumps it ({mode}): {size} characters")
        assert size <= TOOLS_LIST_BUDGET, size


@pytest.mark.parametrize("mode", ERAS)
async def test_prompts_name_the_tools_in_order(workspace, mode):
    async with stdio(workspace, mode) as c:
        book = await ids(c)
        listed = {p.name: p for p in (await c.list_prompts()).prompts}
        assert list(listed) == ["explore_workbook", "what_if", "audit_formulas"]
        assert [(a.name, a.required) for a in listed["what_if"].arguments] == [("workbook_id", True), ("changes", True)]
        assert [(a.name, a.required) for a in listed["audit_formulas"].arguments] == [
            ("workbook_id", True), ("sheet_name", False)]
        for p in listed.values():
            assert p.description and p.title

        what_if = await c.get_prompt("what_if", {"workbook_id": book["model.xlsx"], "changes": "Inputs!B3=1200"})
        text = text_of(what_if)
        steps = [text.find(t) for t in ("create_fork", "edit_batch", "recalculate", "get_changeset", "verify_workbook")]
        assert -1 not in steps and steps == sorted(steps), text
        assert "model.xlsx" in text and book["model.xlsx"] in text and "Inputs!B3=1200" in text
        explore = text_of(await c.get_prompt("explore_workbook", {"workbook_id": book["sales.xlsx"]}))
        assert explore.find("workbook_summary") < explore.find("sheet_overview") < explore.find("read_table")
        audit = text_of(await c.get_prompt("audit_formulas", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales"}))
        for needle in ("scan_volatiles", "#REF!", "find_formula", "sheet_formula_map", '"sheet_name": "Sales"'):
            assert needle in audit, needle

        with pytest.raises(MCPError, match="did you mean 'what_if'"):
            await c.get_prompt("what_iff", {"workbook_id": book["sales.xlsx"]})
        with pytest.raises(MCPError, match="needs the argument `changes`"):
            await c.get_prompt("what_if", {"workbook_id": book["sales.xlsx"]})
        with pytest.raises(MCPError, match="did you mean"):
            await c.get_prompt("explore_workbook", {"workbook_id": book["sales.xlsx"][:-1] + "x"})


@pytest.mark.parametrize("mode", ERAS)
async def test_completion_of_ids_sheets_and_forks(workspace, mode):
    async with stdio(workspace, mode) as c:
        book = await ids(c)
        explore = types.PromptReference(name="explore_workbook")
        r = await c.complete(explore, {"name": "workbook_id", "value": "sal"})
        assert r.completion.values == [book["sales.xlsx"]]
        # By path, with letters in order ("bdgt" finds budget.xlsx).
        assert (await c.complete(explore, {"name": "workbook_id", "value": "bdgt"})).completion.values == [
            book["budget.xlsx"]]
        everything = (await c.complete(explore, {"name": "workbook_id", "value": ""})).completion
        assert sorted(everything.values) == sorted(book.values()) and everything.total == len(book)
        # Sheet names of the workbook given in the context.
        audit = types.PromptReference(name="audit_formulas")
        r = await c.complete(audit, {"name": "sheet_name", "value": "sa"}, {"workbook_id": book["sales.xlsx"]})
        assert r.completion.values == ["Sales"]
        # A prefix first, then names that contain the text.
        r = await c.complete(audit, {"name": "sheet_name", "value": "s"}, {"workbook_id": book["sales.xlsx"]})
        assert r.completion.values == ["Sales", "Assumptions"]
        r = await c.complete(audit, {"name": "sheet_name", "value": ""}, {"workbook_id": book["sales.xlsx"]})
        assert r.completion.values == ["Sales", "Assumptions"]
        # Resource-template variables complete the same way.
        sheet_tpl = types.ResourceTemplateReference(uri="gemba://workbooks/{workbook_id}/sheets/{sheet_name}")
        r = await c.complete(sheet_tpl, {"name": "sheet_name", "value": "ass"}, {"workbook_id": book["sales.xlsx"]})
        assert r.completion.values == ["Assumptions"]
        # Fork ids work as workbook ids, so they complete too.
        fork = (await ok(c, "create_fork", {"workbook_id": book["model.xlsx"]}))["fork_id"]
        r = await c.complete(types.ResourceTemplateReference(uri="gemba://workbooks/{workbook_id}"),
                             {"name": "workbook_id", "value": "fork-"})
        assert r.completion.values == [fork]
        with pytest.raises(MCPError, match="no argument 'sheet'"):
            await c.complete(audit, {"name": "sheet", "value": ""})
        with pytest.raises(MCPError, match="no prompt"):
            await c.complete(types.PromptReference(name="nope"), {"name": "workbook_id", "value": ""})


@pytest.mark.parametrize("mode", ERAS)
async def test_workbook_resources(workspace, mode):
    async with stdio(workspace, mode) as c:
        book = await ids(c)
        listed = (await c.list_resources()).resources
        uris = [r.uri for r in listed]
        assert uris[:4] == ["kaizen://metrics", "kaizen://slo", "kaizen://experiments", "kaizen://incidents"]
        assert sorted(uris[4:]) == sorted(f"gemba://workbooks/{i}" for i in book.values())
        assert {r.name for r in listed[4:]} == set(book)
        templates = [t.uri_template for t in (await c.list_resource_templates()).resource_templates]
        assert templates == ["gemba://workbooks/{workbook_id}", "gemba://workbooks/{workbook_id}/sheets/{sheet_name}",
                             "kaizen://report/{period}"]

        sales = book["sales.xlsx"]
        summary = (await c.read_resource(f"gemba://workbooks/{sales}")).contents[0]
        assert summary.mime_type == "application/json"
        assert json.loads(summary.text) == await ok(c, "workbook_summary", {"workbook_id": sales})
        page = (await c.read_resource(f"gemba://workbooks/{sales}/sheets/Assumptions")).contents[0]
        assert page.mime_type == "text/csv"
        assert page.text == (await ok(c, "sheet_page", {"workbook_id": sales, "sheet_name": "Assumptions"}))["csv"]
        with pytest.raises(MCPError, match="did you mean") as e:
            await c.read_resource(f"gemba://workbooks/{sales[:-1]}x")
        assert "list_workbooks" in str(e.value)
        with pytest.raises(MCPError, match="no sheet 'Nope'"):
            await c.read_resource(f"gemba://workbooks/{sales}/sheets/Nope")
        with pytest.raises(MCPError, match="not a Gemba resource"):
            await c.read_resource("file:///etc/passwd")


async def test_resource_listing_is_paginated(workspace, tmp_path):
    ws = tmp_path / "many"
    ws.mkdir()
    for i in range(230):
        shutil.copy(workspace / "budget.xlsx", ws / f"b{i:03}.xlsx")
    async with stdio(ws) as c:
        seen, cursor, pages = [], None, 0
        while True:
            page = await c.list_resources(cursor=cursor)
            pages += 1
            seen += [r.uri for r in page.resources if r.uri.startswith("gemba://")]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert pages == 3 and len(seen) == 230 and len(set(seen)) == 230
        with pytest.raises(MCPError, match="without a cursor"):
            await c.list_resources(cursor="bogus")


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_legacy_subscription_hears_a_change_within_two_seconds(scratch_workspace, transport):
    updates = []

    async def on_message(m):
        if isinstance(m, types.ResourceUpdatedNotification):
            updates.append((time.monotonic(), m.params.uri))

    async def run(c):
        book = await ids(c)
        uri = f"gemba://workbooks/{book['sales.xlsx']}"
        sheet_uri = f"gemba://workbooks/{book['budget.xlsx']}/sheets/Staff"
        await c.subscribe_resource(uri)
        await c.subscribe_resource(sheet_uri)
        await asyncio.sleep(0.6)  # the poller has seen the files as they are
        t0 = time.monotonic()
        touch_changed(scratch_workspace / "sales.xlsx")
        assert await wait_for(lambda: updates, 2.0), "no notifications/resources/updated within 2 s"
        assert updates[0][1] == uri and updates[0][0] - t0 <= 2.0
        print(f"update heard {updates[0][0] - t0:.2f} s after the change ({transport})")
        touch_changed(scratch_workspace / "budget.xlsx")
        assert await wait_for(lambda: any(u == sheet_uri for _, u in updates), 2.0)
        # After unsubscribing, a change is not reported.
        await c.unsubscribe_resource(uri)
        n = len(updates)
        touch_changed(scratch_workspace / "sales.xlsx")
        await asyncio.sleep(1.5)
        assert len(updates) == n
        # What cannot be watched says why.
        with pytest.raises(MCPError, match="changes with every request"):
            await c.subscribe_resource("kaizen://metrics")
        fork = (await ok(c, "create_fork", {"workbook_id": book["model.xlsx"]}))["fork_id"]
        with pytest.raises(MCPError, match="is a fork"):
            await c.subscribe_resource(f"gemba://workbooks/{fork}")
        with pytest.raises(MCPError, match="did you mean"):
            await c.subscribe_resource("gemba://workbooks/salse")

    if transport == "stdio":
        async with stdio(scratch_workspace, "legacy", message_handler=on_message) as c:
            await run(c)
    else:
        with http_server(scratch_workspace, admin=True) as srv:
            async with http_client(srv.url, "legacy", message_handler=on_message) as c:
                await run(c)
                assert samples(srv.admin, "gemba_resource_subscriptions")[""] == 1
            # The subscriptions end with their session.
            assert await wait_for(lambda: samples(srv.admin, "gemba_resource_subscriptions")[""] == 0, 5)
            # Measured like every request.
            requests = samples(srv.admin, "gemba_tool_requests")
            assert requests['{tool="resources/subscribe",outcome="ok"}'] == 2
            assert requests['{tool="resources/unsubscribe",outcome="ok"}'] == 1
            assert requests['{tool="resources/subscribe",outcome="invalid_params"}'] == 3


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_listen_hears_a_change_within_two_seconds(scratch_workspace, transport):
    async def run(c):
        book = await ids(c)
        uri = f"gemba://workbooks/{book['sales.xlsx']}"
        async with c.listen(resource_subscriptions=[uri, "gemba://workbooks/nope", "kaizen://metrics"]) as sub:
            # Only what can be watched is honoured.
            assert sub.honored.resource_subscriptions == [uri]
            await asyncio.sleep(0.6)
            t0 = time.monotonic()
            touch_changed(scratch_workspace / "sales.xlsx")
            with anyio.fail_after(2.0):
                event = await sub.__anext__()
            assert event == ResourceUpdated(uri=uri)
            print(f"listen heard the change {time.monotonic() - t0:.2f} s after it ({transport})")

    if transport == "stdio":
        async with stdio(scratch_workspace, "auto") as c:
            await run(c)
    else:
        with http_server(scratch_workspace, admin=True) as srv:
            async with http_client(srv.url, "auto") as c:
                await run(c)
            # The subscription ended with its request, which was measured.
            assert await wait_for(lambda: samples(srv.admin, "gemba_resource_subscriptions")[""] == 0, 5)
            assert await wait_for(lambda: samples(srv.admin, "gemba_tool_requests").get(
                '{tool="subscriptions/listen",outcome="ok"}') == 1, 5)


async def test_legacy_logging_follows_the_session_level(workspace):
    logs = []

    async def on_log(p):
        logs.append(p)

    async with stdio(workspace, "legacy", extra=["--max-cells", "100"], logging_callback=on_log) as c:
        book = await ids(c)
        # Default level: warnings. A load refused by a limit is one.
        await c.call_tool("sheet_page", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales"})
        assert await wait_for(lambda: logs, 2)
        assert logs[0].level == "warning" and logs[0].logger == "gemba.limits"
        assert "exceeds a limit" in logs[0].data["message"] and logs[0].data["tool"] == "sheet_page"
        # A cut response is only info: not heard at the default level...
        logs.clear()
        cut = await ok(c, "find_value", {"workbook_id": book["budget.xlsx"], "query": "e", "limit": 1})
        assert cut["truncated"] is True
        await asyncio.sleep(0.3)
        assert logs == []
        # ...but heard once the session asks for info.
        await c.set_logging_level("info")
        await ok(c, "find_value", {"workbook_id": book["budget.xlsx"], "query": "e", "limit": 1})
        assert await wait_for(lambda: logs, 2)
        assert logs[0].level == "info" and logs[0].logger == "gemba.responses"
        assert "cut at a cap" in logs[0].data["message"]
        # At "error" even the refusal is quiet.
        logs.clear()
        await c.set_logging_level("error")
        await c.call_tool("sheet_page", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales"})
        await asyncio.sleep(0.3)
        assert logs == []


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_modern_logging_is_per_request(workspace, transport):
    logs = []

    async def on_log(p):
        logs.append(p)

    async def run(c, opted_in):
        book = await ids(c)
        await c.call_tool("sheet_page", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales"})
        await asyncio.sleep(0.3)
        if opted_in:
            assert [(m.level, m.logger) for m in logs] == [("warning", "gemba.limits")]
        else:
            assert logs == [], "a 2026-07-28 request without a log level hears nothing"

    for level in (None, "warning"):
        logs.clear()
        if transport == "stdio":
            async with stdio(workspace, "auto", extra=["--max-cells", "100"], logging_callback=on_log,
                             log_level=level) as c:
                await run(c, level is not None)
        else:
            with http_server(workspace, ["--max-cells", "100"]) as srv:
                async with http_client(srv.url, "auto", logging_callback=on_log, log_level=level) as c:
                    await run(c, level is not None)


async def test_log_messages_are_rate_limited_and_counted(workspace):
    logs = []

    async def on_log(p):
        logs.append(p)

    with http_server(workspace, admin=True) as srv:
        async with http_client(srv.url, "legacy", logging_callback=on_log) as c:
            book = await ids(c)
            await c.set_logging_level("debug")
            t0 = time.monotonic()
            calls = 60
            await asyncio.gather(*[
                c.call_tool("find_value", {"workbook_id": book["budget.xlsx"], "query": "e", "limit": 1})
                for _ in range(calls)])
            elapsed = time.monotonic() - t0
            await asyncio.sleep(0.5)
            # A burst of 20, then 10 a second.
            assert 20 <= len(logs) <= 20 + 10 * elapsed + 1, (len(logs), elapsed)
            counted = samples(srv.admin, "gemba_log_messages")
            assert counted['{outcome="sent"}'] == len(logs)
            assert counted['{outcome="dropped"}'] == calls - len(logs)
            assert samples(srv.admin, "gemba_tool_requests")['{tool="logging/setLevel",outcome="ok"}'] == 1


async def test_a_file_changed_under_a_fork_is_reported_once(scratch_workspace):
    logs = []

    async def on_log(p):
        logs.append(p)

    async with stdio(scratch_workspace, "legacy", logging_callback=on_log) as c:
        book = await ids(c)
        fork = (await ok(c, "create_fork", {"workbook_id": book["sales.xlsx"]}))["fork_id"]
        await ok(c, "list_sheets", {"workbook_id": fork})
        assert logs == []
        touch_changed(scratch_workspace / "sales.xlsx")
        await ok(c, "list_sheets", {"workbook_id": fork})
        assert await wait_for(lambda: logs, 2)
        assert logs[0].level == "warning" and logs[0].logger == "gemba.forks"
        assert "sales.xlsx changed on disk" in logs[0].data["message"] and logs[0].data["fork_id"] == fork
        await ok(c, "get_changeset", {"fork_id": fork})
        await asyncio.sleep(0.3)
        assert len(logs) == 1, "the same change is reported once"


@pytest.mark.parametrize("mode,transport", [("legacy", "stdio"), ("auto", "stdio"),
                                            ("legacy", "http"), ("auto", "http")])
async def test_progress_of_a_cold_load(bench_workspace, mode, transport):
    async def run(c):
        book = await ids(c)
        seen = []

        async def on_progress(progress, total, message):
            seen.append((time.monotonic(), progress, total, message))

        t0 = time.monotonic()
        # A page near the end needs the whole sheet (a first page answers from the first rows).
        r = await c.call_tool("sheet_page", {"workbook_id": book["sales_100k.xlsx"], "page_size": 5,
                                             "start_row": 99_000},
                              progress_callback=on_progress)
        took = time.monotonic() - t0
        assert not r.is_error, r.content
        print(f"cold load of sales_100k ({mode}, {transport}): {took:.2f} s, {len(seen)} progress notifications")
        if took < 0.35:
            # Too quick for progress to be due (a faster machine): still, nothing before 250 ms.
            assert all(t - t0 >= 0.25 for t, *_ in seen), seen
            return
        assert seen, "a call past 250 ms with a progressToken reports progress"
        assert seen[0][0] - t0 >= 0.25, "nothing before 250 ms"
        progress = [p for _, p, _, _ in seen]
        assert progress == sorted(set(progress)), "progress only rises"
        assert all(p <= t for _, p, t, _ in seen)
        assert any("inflated" in m and book["sales_100k.xlsx"] in m for *_, m in seen), seen[0]
        gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:])]
        assert all(g >= 0.05 for g in gaps), gaps  # at most one every ~100 ms
        # A quick call sends none.
        quick = []

        async def on_quick(*a):
            quick.append(a)

        await c.call_tool("list_workbooks", {}, progress_callback=on_quick)
        assert quick == []

    # Generous budgets: a debug build loads 1.2 million cells slowly; progress is what is tested.
    budgets = ["--timeout-ms", "120000", "--load-timeout-ms", "120000"]
    if transport == "stdio":
        async with stdio(bench_workspace, mode, extra=budgets) as c:
            await run(c)
    else:
        with http_server(bench_workspace, budgets) as srv:
            async with http_client(srv.url, mode) as c:
                await run(c)


async def test_progress_of_recalculate_save_and_structure(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    # A slow disk (test switch) keeps the save past 250 ms, so its steps are reported.
    async with stdio(ws, "legacy", env={"GEMBA_TEST_SAVE_PAUSE_MS": "600"}) as c:
        book = await ids(c)
        fork = (await ok(c, "create_fork", {"workbook_id": book["model.xlsx"]}))["fork_id"]
        await ok(c, "edit_batch", {"fork_id": fork, "edits": ["Inputs!B3=1234"]})
        seen = []

        async def on_progress(progress, total, message):
            seen.append((progress, total, message))

        await c.call_tool("save_fork", {"fork_id": fork, "target_path": "model-v2.xlsx"},
                          progress_callback=on_progress)
        assert seen, "a save past 250 ms reports progress"
        assert any(m.startswith("saving") for _, _, m in seen), seen
        assert [p for p, _, _ in seen] == sorted(p for p, _, _ in seen)
