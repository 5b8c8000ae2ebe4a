"""The cold path of a big sheet through the real binary: the first page answers from the rows
read so far while the rest of the sheet loads in the background, says so, and agrees with the
same page once the whole sheet is in; reads that need the whole sheet wait for it (reporting
progress meanwhile) and see every row."""

import time

import pytest

from conftest import ids, ok, stdio

pytestmark = pytest.mark.anyio

SALES_ROWS = 100_000  # data rows of sales_100k.xlsx (header on row 1, totals on row 100,002)


async def test_first_page_answers_while_the_sheet_loads(bench_workspace):
    async with stdio(bench_workspace) as c:
        book = await ids(c)
        sales = book["sales_100k.xlsx"]
        t = time.monotonic()
        first = await ok(c, "sheet_page", {"workbook_id": sales, "sheet_name": "Sales", "page_size": 100})
        took = time.monotonic() - t
        print(f"cold first page of sales_100k: {took * 1000:.0f} ms, partial: {first.get('partial')}")
        # 47 MB of XML cannot be parsed before its first rows are: the page is a partial view.
        partial = first["partial"]
        assert 100 < partial["rows_read"] < SALES_ROWS, partial
        assert "used_range" in partial["unknown"]
        assert "used_range" not in first, "the used range is not known before the sheet is read"
        lines = first["csv"].splitlines()
        assert lines[0] == "row,A,B,C,D,E,F,G,H,I,J,K,L"
        assert len(lines) == 101 and lines[1].startswith("1,Date,Region,")
        assert first["range"] == "A1:L100" and first["next_start_row"] == 101

        # The last rows need the whole sheet: that call waits for the load and sees them.
        tail = await ok(c, "range_values", {"workbook_id": sales, "sheet_name": "Sales",
                                            "ranges": [f"A{SALES_ROWS + 2}:B{SALES_ROWS + 2}"],
                                            "format": "values"})
        assert tail["ranges"][0]["values"][0][0] == "Total"

        # Once loaded, the same page comes from the whole sheet, with the same rows.
        full = await ok(c, "sheet_page", {"workbook_id": sales, "sheet_name": "Sales", "page_size": 100})
        assert "partial" not in full
        assert full["used_range"] == f"A1:L{SALES_ROWS + 2}"
        assert full["csv"] == first["csv"] and full["next_start_row"] == 101


async def test_a_page_further_down_waits_for_the_whole_sheet(bench_workspace):
    async with stdio(bench_workspace) as c:
        book = await ids(c)
        sales = book["sales_100k.xlsx"]
        deep = await ok(c, "sheet_page", {"workbook_id": sales, "sheet_name": "Sales", "start_row": 99_990,
                                          "page_size": 50})
        assert "partial" not in deep
        lines = deep["csv"].splitlines()
        # Rows 99,990 .. 100,002: the last data rows and the totals row, nothing past them.
        assert [ln.split(",")[0] for ln in lines[1:]] == [str(r) for r in range(99_990, SALES_ROWS + 3)]
        assert lines[-1].startswith(f"{SALES_ROWS + 2},Total,")
        assert "next_start_row" not in deep
        # A first page after the load is whole too.
        first = await ok(c, "sheet_page", {"workbook_id": sales, "sheet_name": "Sales", "page_size": 10})
        assert "partial" not in first and first["used_range"] == f"A1:L{SALES_ROWS + 2}"


async def test_a_wait_for_a_background_load_reports_progress(bench_workspace):
    async with stdio(bench_workspace) as c:
        book = await ids(c)
        sales = book["sales_100k.xlsx"]
        seen = []

        async def on_progress(progress, total, message):
            seen.append((time.monotonic(), progress, total, message))

        t0 = time.monotonic()
        r = await c.call_tool("range_values", {"workbook_id": sales, "sheet_name": "Sales",
                                               "ranges": [f"A{SALES_ROWS + 2}"], "format": "values"},
                              progress_callback=on_progress)
        took = time.monotonic() - t0
        assert not r.is_error, r.content
        assert r.structured_content["ranges"][0]["values"][0][0] == "Total"
        print(f"full load of sales_100k: {took:.2f} s, {len(seen)} progress notifications")
        assert all(t - t0 >= 0.25 for t, *_ in seen), "nothing before 250 ms"
        progress = [p for _, p, _, _ in seen]
        assert progress == sorted(progress) and all(p <= t for _, p, t, _ in seen)
        assert all("inflated" in m and sales in m for *_, m in seen), seen
        if took >= 0.6:
            # Long enough for the 250 ms threshold and at least one tick after it.
            assert seen, "a wait past 250 ms with a progressToken reports the load's progress"


async def test_sheets_over_the_cell_limit_refuse_reads_that_need_them_whole(bench_workspace):
    async with stdio(bench_workspace, extra=["--max-cells", "100000"]) as c:
        book = await ids(c)
        sales = book["sales_100k.xlsx"]
        for _ in range(2):
            r = await c.call_tool("sheet_page", {"workbook_id": sales, "start_row": 90_000})
            assert r.is_error and "limit" in r.content[0].text and "100000" in r.content[0].text
        # The first rows of such a sheet may still be shown, as a partial view that says so.
        r = await c.call_tool("sheet_page", {"workbook_id": sales, "page_size": 20})
        if not r.is_error:
            assert r.structured_content["partial"]["rows_read"] < SALES_ROWS


async def test_ranges_near_the_top_read_while_the_sheet_loads_agree_with_the_whole_sheet(bench_workspace):
    async with stdio(bench_workspace) as c:
        book = await ids(c)
        sales = book["sales_100k.xlsx"]
        args = {"workbook_id": sales, "sheet_name": "Sales", "ranges": ["A1:L3", "F40:G41"], "format": "values"}
        early = await ok(c, "range_values", args)
        assert early["ranges"][0]["values"][0][:3] == ["Date", "Region", "Product"]
        await ok(c, "range_values", {"workbook_id": sales, "sheet_name": "Sales", "ranges": ["A100002"]})
        late = await ok(c, "range_values", args)
        assert early == late
