"""The real binary over stdio, driven by the official MCP Python SDK, in both protocol eras."""

import json
import os
import pathlib
import shutil
import time

import pytest
from mcp import MCPError
import mcp_types as types
from pydantic import BaseModel, ConfigDict

from conftest import READ_FORK_TOOLS, READ_TOOLS, TOOL_NAMES, err, ids, ok, stdio

pytestmark = pytest.mark.anyio
MODES = ["legacy", "auto"]


class RawResult(BaseModel):
    model_config = ConfigDict(extra="allow")


@pytest.mark.parametrize("mode", MODES)
async def test_handshake_identity_and_lean_listing(workspace, mode):
    async with stdio(workspace, mode) as c:
        if mode == "legacy":
            assert c.protocol_version == "2025-11-25"
            assert c.session.initialize_result is not None
        else:
            # The client opened with server/discover and the server answered in the new era.
            assert c.protocol_version == "2026-07-28"
            assert c.session.discover_result is not None
        assert c.server_info.name == "gemba"
        assert c.server_info.version
        tools = await c.list_tools()
        assert [t.name for t in tools.tools] == TOOL_NAMES
        listing = tools.model_dump_json(by_alias=True, exclude_none=True)
        assert len(listing) <= 40_000, len(listing)
        for t in tools.tools:
            assert t.output_schema and t.output_schema["type"] == "object"
            assert t.annotations.read_only_hint is (t.name in READ_TOOLS or t.name in READ_FORK_TOOLS)
            if t.name in ("save_fork", "discard_fork", "restore_checkpoint"):
                assert t.annotations.destructive_hint is True
        if mode == "legacy":
            instructions = c.session.initialize_result.instructions
        else:
            instructions = c.session.discover_result.instructions
        assert "list_workbooks" in instructions and "sheet_overview" in instructions


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_method_is_method_not_found(workspace, mode):
    async with stdio(workspace, mode) as c:
        with pytest.raises(MCPError) as e:
            await c.session.send_request(types.Request(method="no/such/method", params={}), RawResult)
        assert e.value.code == -32601


@pytest.mark.parametrize("mode", MODES)
async def test_every_tool_answers_and_validates(workspace, mode):
    async with stdio(workspace, mode) as c:
        book = await ids(c)
        assert set(book) == {"sales.xlsx", "budget.xlsx", "model.xlsx"}
        sales, budget, model = book["sales.xlsx"], book["budget.xlsx"], book["model.xlsx"]

        d = await ok(c, "describe_workbook", {"workbook_id": sales})
        assert d["format"] == "xlsx" and [s["name"] for s in d["sheets"]] == ["Sales", "Assumptions"]
        assert d["defined_names"] == 2

        s = await ok(c, "list_sheets", {"workbook_id": sales})
        assert s["sheets"][0] == {"name": "Sales", "used_range": "A1:L44", "cells": 1 + 12 + 40 * 12 + 3, "formulas": 2}

        summary = await ok(c, "workbook_summary", {"workbook_id": budget})
        kinds = [r["kind"] for r in summary["sheets"][0]["regions"]]
        assert kinds == ["table", "table", "outputs", "notes"]

        names = await ok(c, "named_ranges", {"workbook_id": sales})
        assert {n["name"]: n["refers_to"] for n in names["defined_names"]} == {
            "TaxRate": "Assumptions!$B$1", "Growth": "Assumptions!$B$2"}
        tables = await ok(c, "named_ranges", {"workbook_id": budget})
        assert tables["tables"] == [{"name": "StaffTable", "sheet_name": "Staff", "range": "A1:C5",
                                     "columns": ["Name", "Team", "Salary"]}]

        ov = await ok(c, "sheet_overview", {"workbook_id": budget, "sheet_name": "Budget"})
        r1, r2 = ov["regions"][0], ov["regions"][1]
        # Merged group headers over a header row that is not row 1, with a title above.
        assert r1["range"] == "A2:E9" and r1["header_row"] == 3 and r1["title"] == "Department budget"
        # With a range and header_row 0, every row of the range is data: the title row too.
        whole = await ok(c, "read_table", {"workbook_id": budget, "sheet_name": "Budget", "range": "A1:A9",
                                           "header_row": 0, "format": "values"})
        assert whole["range"] == "A1:A9" and whole["total_rows"] == 9, whole
        assert whole["values"][0] == ["Department budget"] and whole["row_numbers"][0] == 1, whole
        assert r1["headers"] == ["Department", "2024 / Plan", "2024 / Actual", "2025 / Plan", "2025 / Actual"]
        # A second table beside the first.
        assert r2["range"] == "G3:H7" and r2["headers"] == ["Month", "Headcount"]
        assert "B2:C2" in ov["merged_ranges"]

        st = await ok(c, "sheet_statistics", {"workbook_id": budget, "sheet_name": "Budget"})
        assert st["formulas"] == 2 and st["uncalculated"] == 2

        prof = await ok(c, "table_profile", {"workbook_id": sales, "sheet_name": "Sales"})
        cols = {col["name"]: col for col in prof["columns"]}
        assert prof["rows"] == 40 and cols["Units"]["type"] == "number" and cols["Region"]["type"] == "text"
        assert cols["Date"]["type"] == "date" and cols["Units"]["min"] >= 1

        t = await ok(c, "read_table", {"workbook_id": sales, "sheet_name": "Sales", "limit": 5,
                                        "columns": ["Date", "Units"]})
        lines = t["csv"].splitlines()
        assert lines[0] == "Date,Units" and len(lines) == 6
        assert lines[1].startswith("2024-01-01,")
        assert t["total_rows"] == 40 and t["next_offset"] == 5 and t["totals_row"] == 44

        rv = await ok(c, "range_values", {"workbook_id": sales, "sheet_name": "Assumptions",
                                          "ranges": ["A1:B2"], "format": "values"})
        assert rv["ranges"][0]["values"] == [["Tax rate", 0.2], ["Growth", 0.05]]
        # Ranges reaching past the used cells are cut at the last used row and column.
        rv = await ok(c, "range_values", {"workbook_id": sales, "sheet_name": "Assumptions",
                                          "ranges": ["A1:XFD2", "A1048570:B1048576"], "format": "values"})
        wide, below = rv["ranges"]
        assert wide["range"] == "A1:B2" and wide["values"] == [["Tax rate", 0.2], ["Growth", 0.05]], wide
        assert below == {"range": "A1048570:B1048570", "values": [[None, None]]} and not rv.get("truncated"), rv

        page = await ok(c, "sheet_page", {"workbook_id": sales, "sheet_name": "Sales", "page_size": 3})
        assert page["csv"].splitlines()[0].startswith("row,A,B,C")
        assert page["csv"].splitlines()[1].startswith("1,Sales 2024")
        assert page["next_start_row"] == 4

        cells = await ok(c, "inspect_cells", {"workbook_id": budget, "sheet_name": "Budget", "cells": ["B12", "C2"]})
        b12, c2 = cells["cells"]
        assert b12["formula"] == "=SUM(B4:B9)" and b12["uncalculated"] is True and b12["value"] is None
        assert c2["merged_range"] == "B2:C2" and c2["value"] == "2024"
        # A cell named with its own sheet is read there; one naming another sheet is refused,
        # not read on this one.
        same = await ok(c, "inspect_cells", {"workbook_id": budget, "sheet_name": "Budget", "cells": ["Budget!B12"]})
        assert same["cells"][0]["formula"] == "=SUM(B4:B9)"
        msg = await err(c, "inspect_cells", {"workbook_id": sales, "sheet_name": "Sales", "cells": ["Assumptions!B2"]})
        assert "names sheet 'Assumptions'" in msg and "sheet_name" in msg, msg

        fv = await ok(c, "find_value", {"workbook_id": sales, "query": "FX EUR/USD", "mode": "label"})
        assert fv["matches"] == [{"sheet_name": "Assumptions", "cell": "B3", "value": 1.08,
                                  "label_cell": "A3", "label": "FX EUR/USD"}]
        fv = await ok(c, "find_value", {"workbook_id": sales, "query": "0.05"})
        assert {"sheet_name": "Assumptions", "cell": "B2", "value": 0.05} in fv["matches"]

        ff = await ok(c, "find_formula", {"workbook_id": model, "query": "growth"})
        assert ff["total"] == 59 and ff["matches"][0]["cell"] == "B3"

        tr = await ok(c, "formula_trace", {"workbook_id": model, "sheet_name": "Summary", "cell": "B2"})
        assert tr["formula"] == "=Calc!E61" and tr["nodes"][0]["cell"] == "Calc!E61"
        dep = await ok(c, "formula_trace", {"workbook_id": model, "sheet_name": "Inputs", "cell": "B2",
                                            "direction": "dependents", "depth": 1})
        assert dep["total"] == 59  # every Revenue formula after the first reads Growth

        vol = await ok(c, "scan_volatiles", {"workbook_id": model})
        assert {f["name"] for f in vol["by_function"]} == {"TODAY", "NOW", "OFFSET"} and vol["total"] == 3

        fm = await ok(c, "sheet_formula_map", {"workbook_id": model, "sheet_name": "Calc"})
        assert fm["formulas"] == 240
        assert {"formula": "=B2-C2", "range": "D2:D61", "cells": 60} in fm["groups"]


async def test_errors_say_what_was_wrong_and_what_to_do(workspace):
    async with stdio(workspace) as c:
        book = await ids(c)
        msg = await err(c, "list_sheets", {"workbook_id": "salse"})
        assert "salse" in msg and book["sales.xlsx"] in msg and "list_workbooks" in msg
        msg = await err(c, "sheet_overview", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sale"})
        assert "Sales" in msg and "Assumptions" in msg
        msg = await err(c, "read_table", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales",
                                          "range": "hello"})
        assert "A1" in msg
        msg = await err(c, "read_table", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales",
                                          "columns": ["Untis"]})
        assert "Units" in msg
        msg = await err(c, "read_table", {"workbook_id": book["sales.xlsx"], "region_id": "r9",
                                          "sheet_name": "Sales"})
        assert "r2" in msg and "sheet_overview" in msg
        msg = await err(c, "read_table", {"workbook_id": book["sales.xlsx"], "limit": "many"})
        assert "invalid arguments" in msg
        msg = await err(c, "sheet_page", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales", "start_row": 0})
        assert "1-based" in msg
        with pytest.raises(MCPError) as e:
            await c.call_tool("read_tabel", {})
        assert "read_table" in str(e.value)


async def test_pagination_covers_every_row_once(workspace):
    async with stdio(workspace) as c:
        sales = (await ids(c))["sales.xlsx"]
        seen, offset = [], 0
        while offset is not None:
            t = await ok(c, "read_table", {"workbook_id": sales, "sheet_name": "Sales", "limit": 7,
                                            "offset": offset, "format": "values"})
            seen += t["row_numbers"]
            offset = t.get("next_offset")
        assert seen == list(range(4, 44))
        rows, start = [], 1
        while start is not None:
            p = await ok(c, "sheet_page", {"workbook_id": sales, "sheet_name": "Sales", "start_row": start,
                                           "page_size": 10, "format": "values"})
            rows += p["row_numbers"]
            start = p.get("next_start_row")
        assert rows == [1] + list(range(3, 45))
        dist = await ok(c, "read_table", {"workbook_id": sales, "sheet_name": "Sales", "limit": 3,
                                          "sample": "distributed", "format": "values"})
        assert dist["row_numbers"] == [4, 23, 43]
        last = await ok(c, "read_table", {"workbook_id": sales, "sheet_name": "Sales", "limit": 2,
                                          "sample": "last", "format": "json"})
        assert last["row_numbers"] == [42, 43] and set(last["rows"][0]) >= {"Date", "Units"}


async def test_filters(workspace):
    async with stdio(workspace) as c:
        sales = (await ids(c))["sales.xlsx"]
        allrows = await ok(c, "read_table", {"workbook_id": sales, "sheet_name": "Sales", "limit": 100,
                                             "format": "json"})
        expect = [r for r in allrows["rows"] if r["Region"] == "North" and r["Units"] > 100]
        got = await ok(c, "read_table", {"workbook_id": sales, "sheet_name": "Sales", "format": "json",
                                         "filters": [{"column": "region", "value": "north"},
                                                     {"column": "Units", "op": "gt", "value": 100}]})
        assert got["rows"] == expect and got["total_rows"] == len(expect)


async def test_ids_are_stable_across_restarts(workspace):
    async with stdio(workspace) as c:
        first = await ids(c)
    async with stdio(workspace) as c:
        assert await ids(c) == first
    assert all(len(i) <= 32 for i in first.values())


async def test_changed_file_is_reloaded(scratch_workspace):
    async with stdio(scratch_workspace) as c:
        book = await ids(c)
        before = await ok(c, "list_sheets", {"workbook_id": book["sales.xlsx"]})
        assert before["sheets"][0]["name"] == "Sales"
        target = scratch_workspace / "sales.xlsx"
        shutil.copy(scratch_workspace / "model.xlsx", target)
        future = time.time() + 5
        os.utime(target, (future, future))
        after = await ok(c, "list_sheets", {"workbook_id": book["sales.xlsx"]})
        assert [s["name"] for s in after["sheets"]] == ["Inputs", "Calc", "Summary"]


async def test_paths_outside_the_workspace_are_refused(scratch_workspace, tmp_path):
    outside = tmp_path / "secret.xlsx"
    shutil.copy(scratch_workspace / "sales.xlsx", outside)
    (scratch_workspace / "escape.xlsx").symlink_to(outside)
    (scratch_workspace / "inside-link.xlsx").symlink_to(scratch_workspace / "budget.xlsx")
    async with stdio(scratch_workspace) as c:
        book = await ids(c)
        assert "escape.xlsx" not in book and "inside-link.xlsx" in book
        for probe in ["escape.xlsx", "../secret.xlsx", str(outside), "/etc/passwd"]:
            msg = await err(c, "describe_workbook", {"workbook_id": probe})
            assert "no workbook" in msg


async def test_bad_files_get_clear_errors_and_the_server_stays_up(scratch_workspace):
    (scratch_workspace / "empty.xlsx").write_bytes(b"")
    (scratch_workspace / "text.xls").write_text("just some text, not a workbook")
    (scratch_workspace / "truncated.xlsx").write_bytes((scratch_workspace / "sales.xlsx").read_bytes()[:3000])
    async with stdio(scratch_workspace) as c:
        book = await ids(c)
        assert "empty" in await err(c, "list_sheets", {"workbook_id": book["empty.xlsx"]})
        assert "not a spreadsheet" in await err(c, "list_sheets", {"workbook_id": book["text.xls"]})
        assert "could not be read" in await err(c, "list_sheets", {"workbook_id": book["truncated.xlsx"]})
        await ok(c, "list_sheets", {"workbook_id": book["sales.xlsx"]})


async def test_limits_and_timeouts_stop_the_work(bench_workspace):
    async with stdio(bench_workspace, extra=["--max-cells", "100000"]) as c:
        book = await ids(c)
        # A page that needs the whole sheet (a first page may answer from the rows read so far).
        msg = await err(c, "sheet_page", {"workbook_id": book["sales_100k.xlsx"], "start_row": 90000})
        assert "limit" in msg and "100000" in msg
        await ok(c, "sheet_page", {"workbook_id": book["small.xlsx"]})
    async with stdio(bench_workspace, extra=["--timeout-ms", "50", "--load-timeout-ms", "50"]) as c:
        book = await ids(c)
        t = time.monotonic()
        msg = await err(c, "sheet_page", {"workbook_id": book["sales_100k.xlsx"], "start_row": 90000})
        assert "budget" in msg
        assert time.monotonic() - t < 5
        await ok(c, "describe_workbook", {"workbook_id": book["small.xlsx"]})


async def test_large_workbook_reads_are_bounded(bench_workspace):
    async with stdio(bench_workspace) as c:
        book = await ids(c)
        wide = await ok(c, "read_table", {"workbook_id": book["wide.xlsx"], "limit": 1000})
        # 200 columns: the cell cap (10,000) bounds the rows, and the answer says how to go on.
        assert wide["returned"] <= 50 and wide["next_offset"] == wide["returned"]
        assert len(json.dumps(wide)) < 250_000
        big = await ok(c, "find_value", {"workbook_id": book["sales_100k.xlsx"], "query": "North", "limit": 5})
        assert len(big["matches"]) == 5 and big["truncated"] is True and "hint" in big


async def test_find_value_finds_booleans_errors_and_dates_as_other_tools_show_them(tmp_path):
    import datetime

    import openpyxl

    wb = openpyxl.Workbook()
    sh = wb.active
    sh.title = "Data"
    sh.append(["flag", "when", "check"])
    sh.append([False, datetime.datetime(2016, 10, 20), "#REF!"])
    sh.append([True, datetime.datetime(2017, 1, 2), 3])
    wb.save(tmp_path / "kinds.xlsx")
    async with stdio(tmp_path) as c:
        wid = (await ids(c))["kinds.xlsx"]
        shown = await ok(c, "range_values", {"workbook_id": wid, "sheet_name": "Data", "ranges": ["A2:C2"]})
        assert shown["ranges"][0]["csv"].strip() == "FALSE,2016-10-20,#REF!", shown
        for query, cell in [("FALSE", "A2"), ("2016-10-20", "B2"), ("#REF!", "C2"), ("true", "A3")]:
            found = await ok(c, "find_value", {"workbook_id": wid, "query": query})
            assert [m["cell"] for m in found["matches"]] == [cell], (query, found)
        # Numbers and text are found as before, and a label search still looks at text only.
        assert [m["cell"] for m in (await ok(c, "find_value", {"workbook_id": wid, "query": "3"}))["matches"]] == ["C3"]
        label = await ok(c, "find_value", {"workbook_id": wid, "query": "FALSE", "mode": "label"})
        assert label["matches"] == []
