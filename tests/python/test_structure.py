"""structure_batch through the real binary and the official MCP SDK: rows and columns inserted
and deleted with formulas everywhere rewritten (other sheets, defined names, merged ranges,
conditional formats, validations, tables), sheets created, renamed, copied and deleted; the
saved file checked with openpyxl (an independent reader) and recalculated by LibreOffice."""

import pathlib
import shutil
import subprocess
import tempfile
import zipfile

import openpyxl
import pytest
from openpyxl.formatting.rule import CellIsRule
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.worksheet.table import Table
from openpyxl.workbook.defined_name import DefinedName

from conftest import CORPUS, STRICT, needs_corpus, err, ids, ok, stdio

pytestmark = pytest.mark.anyio


def build(path: pathlib.Path):
    wb = openpyxl.Workbook()
    data = wb.active
    data.title = "Data"
    data.append(["Item", "Qty", "Price", "Total"])
    for i in range(1, 6):
        data.append([f"item{i}", i, 10 * i, f"=B{i + 1}*C{i + 1}"])
    data["F1"] = "Sum"
    data["G1"] = "=SUM(D2:D6)"
    data.merge_cells("F3:G4")
    data["F3"] = "merged"
    data.conditional_formatting.add("D2:D6", CellIsRule(operator="greaterThan", formula=["$B$2*100"]))
    dv = DataValidation(type="whole", operator="between", formula1="0", formula2="100", sqref="B2:B6")
    data.add_data_validation(dv)
    report = wb.create_sheet("Report")
    report["A1"] = "Grand total"
    report["B1"] = "=Data!G1"
    report["B2"] = "=SUM(Data!D2:D6)"
    report["B3"] = "=Data!B4"
    report["B4"] = "='Data'!C6+1"
    wb.defined_names["Totals"] = DefinedName("Totals", attr_text="Data!$D$2:$D$6")
    lookup = wb.create_sheet("Lookup")
    lookup.append(["Code", "Name"])
    lookup.append(["a", "alpha"])
    lookup.append(["b", "beta"])
    lookup.add_table(Table(displayName="Codes", ref="A1:B3"))
    wb.save(path)


@pytest.fixture
def workspace():
    d = pathlib.Path(tempfile.mkdtemp(prefix="gemba-structure-"))
    build(d / "book.xlsx")
    (d / "out").mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def values(c, book, sheet, rng):
    r = await ok(c, "range_values", {"workbook_id": book, "sheet_name": sheet, "ranges": [rng], "format": "values"})
    return r["ranges"][0]["values"]


async def test_rows_and_columns_move_formulas_everywhere(workspace):
    original = (workspace / "book.xlsx").read_bytes()
    async with stdio(workspace) as c:
        book = (await ids(c))["book.xlsx"]
        fork = (await ok(c, "create_fork", {"workbook_id": book}))["fork_id"]
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Data", "edits": ["B2=7"]})
        cp = (await ok(c, "checkpoint_fork", {"fork_id": fork, "name": "before structure"}))["checkpoint_id"]
        r = await ok(c, "structure_batch", {"fork_id": fork, "ops": [
            {"op": "insert_rows", "sheet_name": "Data", "at": 3, "count": 2},
            {"op": "delete_rows", "sheet_name": "Data", "at": 7},
            {"op": "insert_cols", "sheet_name": "Data", "at": "B"},
        ]})
        assert r["done"] == ["insert 2 rows before row 3 of Data", "delete 1 row from row 7 of Data",
                             "insert 1 column before column B of Data"]
        assert r["needs_recalc"]
        # The edit made before the rebase is in the new base; item1 stays on row 2, item2 moves to row 5.
        assert await values(c, fork, "Data", "A2:D2") == [["item1", None, 7, 10]]
        assert (await values(c, fork, "Data", "A5:A5")) == [["item2"]]
        cells = await ok(c, "inspect_cells", {"workbook_id": fork, "sheet_name": "Data", "cells": ["E5", "H1"]})
        formulas = {x["cell"]: x.get("formula") for x in cells["cells"]}
        assert formulas["E5"] in ("C5*D5", "=C5*D5"), formulas
        # Row 7 (item4, once row 5) was deleted: the sum shrinks, the table keeps the rest.
        assert formulas["H1"] in ("SUM(E2:E7)", "=SUM(E2:E7)"), formulas
        rep = await ok(c, "inspect_cells", {"workbook_id": fork, "sheet_name": "Report", "cells": ["B1", "B2", "B3", "B4"]})
        f = [x.get("formula", "").lstrip("=") for x in rep["cells"]]
        assert f == ["Data!H1", "SUM(Data!E2:E7)", "Data!C6", "'Data'!D7+1"], f

        # The changeset is against the original, with its cells carried through the edits:
        # moved cells and rewritten references are not changes, the edit made before them is.
        cs = await ok(c, "get_changeset", {"fork_id": fork})
        assert cs["structure"] == r["done"]
        assert [(x["cell"], x["kind"], x["before"], x["after"]) for x in cs["changes"]] == [
            ("Data!C2", "value_edited", 1, 7)], cs
        rc = await ok(c, "recalculate", {"fork_id": fork})
        assert rc["issue_count"] == 0, rc
        cs = await ok(c, "get_changeset", {"fork_id": fork, "kinds": ["recalculated"]})
        # openpyxl writes formulas without cached values: every formula gets its first value.
        got = {x["cell"]: x["after"] for x in cs["changes"]}
        assert all(x["before"] is None for x in cs["changes"]), cs
        assert (got["Data!E2"], got["Data!H1"], got["Report!B1"], got["Report!B2"]) == (70, 450, 450, 450), got
        assert len(got) == 9, got  # E2, E5, E6, E7, H1 and Report's four
        v = await ok(c, "verify_workbook", {"fork_id": fork, "targets": ["Data!C2", "Data!A5", "Report!B2"]})
        assert [(t["cell"], t["before"], t["after"], t["changed"]) for t in v["targets"]] == [
            ("Data!C2", 1, 7, True), ("Data!A5", "item2", "item2", False), ("Report!B2", None, 450, True)], v
        # item1 7*10, item2 2*20, item3 3*30, item5 5*50 (item4's row was deleted).
        assert await values(c, fork, "Data", "E2:E2") == [[70]]
        assert await values(c, fork, "Report", "B1:B2") == [[450], [450]]
        saved = await ok(c, "save_fork", {"fork_id": fork, "target_path": "out/shifted.xlsx"})
        assert saved["path"].endswith("shifted.xlsx")

        # Back to before the structural edit: that epoch's file and log come back.
        back = await ok(c, "restore_checkpoint", {"fork_id": fork, "checkpoint_id": cp})
        assert back["restored"] == cp
        assert await values(c, fork, "Data", "A3:B3") == [["item2", 2]]
        assert await values(c, fork, "Data", "B2:B2") == [[7]]
    assert (workspace / "book.xlsx").read_bytes() == original

    wb = openpyxl.load_workbook(workspace / "out" / "shifted.xlsx")
    data = wb["Data"]
    assert [data.cell(row=r, column=1).value for r in range(1, 9)] == [
        "Item", "item1", None, None, "item2", "item3", "item5", None]
    assert data["E5"].value == "=C5*D5"
    assert data["H1"].value == "=SUM(E2:E7)"
    assert [str(m) for m in data.merged_cells.ranges] == ["G5:H6"]
    assert [str(r.sqref) for r in data.conditional_formatting] == ["E2:E7"]
    assert str(data.data_validations.dataValidation[0].sqref) == "C2:C7"
    assert wb.defined_names["Totals"].attr_text == "Data!$E$2:$E$7"
    assert wb["Report"]["B3"].value == "=Data!C6"
    # Untouched sheets stay as they were: the table on Lookup is intact.
    assert wb["Lookup"].tables["Codes"].ref == "A1:B3"


async def test_sheets_are_created_renamed_copied_and_deleted(workspace):
    async with stdio(workspace) as c:
        book = (await ids(c))["book.xlsx"]
        fork = (await ok(c, "create_fork", {"workbook_id": book}))["fork_id"]
        p = await ok(c, "structure_batch", {"fork_id": fork, "mode": "preview", "ops": [
            {"op": "rename_sheet", "sheet_name": "Data", "new_name": "Sales Data"},
            {"op": "copy_sheet", "sheet_name": "Report", "new_name": "Report 2"},
            {"op": "create_sheet", "new_name": "Notes"},
            {"op": "delete_sheet", "sheet_name": "Lookup"},
        ]})
        assert p["sheets"] == ["Sales Data", "Report", "Report 2", "Notes"], p
        # A preview changes nothing until it is applied.
        assert [s["name"] for s in (await ok(c, "list_sheets", {"workbook_id": fork}))["sheets"]] == [
            "Data", "Report", "Lookup"]
        await ok(c, "apply_staged_change", {"fork_id": fork, "change_id": p["change_id"]})
        names = [s["name"] for s in (await ok(c, "list_sheets", {"workbook_id": fork}))["sheets"]]
        assert names == ["Sales Data", "Report", "Report 2", "Notes"], names
        rep = await ok(c, "inspect_cells", {"workbook_id": fork, "sheet_name": "Report 2", "cells": ["B1", "B4"]})
        assert [x["formula"].lstrip("=") for x in rep["cells"]] == ["'Sales Data'!G1", "'Sales Data'!C6+1"]
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Notes", "edits": ["A1=hello", "A2=='Sales Data'!G1"]})
        await ok(c, "recalculate", {"fork_id": fork})
        assert await values(c, fork, "Notes", "A2:A2") == [[sum(i * 10 * i for i in range(1, 6))]]
        await ok(c, "save_fork", {"fork_id": fork, "target_path": "out/sheets.xlsx"})

        # Bad requests get clear errors and change nothing.
        e = await err(c, "structure_batch", {"fork_id": fork, "ops": [{"op": "rename_sheet", "sheet_name": "Notes", "new_name": "report"}]})
        assert "already exists" in e
        e = await err(c, "structure_batch", {"fork_id": fork, "ops": [{"op": "insert_rows", "sheet_name": "Nope", "at": 1}]})
        assert "no sheet 'Nope'" in e
        e = await err(c, "structure_batch", {"fork_id": fork, "ops": [{"op": "delete_cols", "sheet_name": "Notes", "at": "ZZZZ"}]})
        assert "column letter" in e
        e = await err(c, "structure_batch", {"fork_id": fork, "ops": [{"op": "create_sheet", "new_name": "a/b"}]})
        assert "cannot contain" in e

    wb = openpyxl.load_workbook(workspace / "out" / "sheets.xlsx")
    assert wb.sheetnames == ["Sales Data", "Report", "Report 2", "Notes"]
    assert wb["Report"]["B1"].value == "='Sales Data'!G1"
    assert wb["Notes"]["A1"].value == "hello"
    with zipfile.ZipFile(workspace / "out" / "sheets.xlsx") as z:
        names = z.namelist()
        # The deleted sheet's data is gone from the file, not just hidden.
        assert not any("alpha" in z.read(n).decode("utf-8", "replace") for n in names if n.startswith("xl/worksheets/"))
    if STRICT or shutil.which("soffice"):
        assert shutil.which("soffice"), "LibreOffice (soffice) is needed for the round-trip check"
        out = workspace / "csv"
        out.mkdir()
        subprocess.run(["soffice", "--headless", "--norestore", f"-env:UserInstallation=file://{workspace}/lo-profile",
                        "--convert-to", "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,false,false,false,4",
                        "--outdir", str(out), str(workspace / "out" / "sheets.xlsx")], check=True, timeout=180,
                       capture_output=True)
        notes = (out / "sheets-Notes.csv").read_text()
        assert "hello" in notes and str(sum(i * 10 * i for i in range(1, 6))) in notes


async def test_a_restructured_fork_survives_a_restart(workspace):
    state = tempfile.mkdtemp(prefix="gemba-state-")
    async with stdio(workspace, state_dir=state) as c:
        book = (await ids(c))["book.xlsx"]
        fork = (await ok(c, "create_fork", {"workbook_id": book}))["fork_id"]
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Data", "edits": ["A2=first"]})
        cp = (await ok(c, "checkpoint_fork", {"fork_id": fork}))["checkpoint_id"]
        await ok(c, "structure_batch", {"fork_id": fork, "ops": [{"op": "insert_rows", "sheet_name": "Data", "at": 2}]})
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Data", "edits": ["A2=new row"]})
    async with stdio(workspace, state_dir=state) as c:
        assert await values(c, fork, "Data", "A2:A3") == [["new row"], ["first"]]
        cs = await ok(c, "get_changeset", {"fork_id": fork})
        assert cs["structure"] == ["insert 1 row before row 2 of Data"]
        await ok(c, "restore_checkpoint", {"fork_id": fork, "checkpoint_id": cp})
        assert await values(c, fork, "Data", "A2:A3") == [["first"], ["item2"]]
        assert "structure" not in await ok(c, "get_changeset", {"fork_id": fork})
    shutil.rmtree(state, ignore_errors=True)


async def test_a_column_edit_through_a_table_is_refused(workspace):
    async with stdio(workspace) as c:
        book = (await ids(c))["book.xlsx"]
        fork = (await ok(c, "create_fork", {"workbook_id": book}))["fork_id"]
        e = await err(c, "structure_batch", {"fork_id": fork, "ops": [
            {"op": "insert_rows", "sheet_name": "Data", "at": 2},
            {"op": "delete_cols", "sheet_name": "Lookup", "at": "B"}]})
        assert "table 'Codes'" in e, e
        # All or none: the row insert before it did not happen either.
        assert await values(c, fork, "Data", "A2:A2") == [["item1"]]
        # Range copies and moves run in the batch's order, all or none with the rest.
        e = await err(c, "structure_batch", {"fork_id": fork, "ops": [
            {"op": "copy_range", "sheet_name": "Data", "range": "A2:D2", "to": "A10"},
            {"op": "delete_cols", "sheet_name": "Lookup", "at": "A"}]})
        assert "table 'Codes'" in e, e
        assert await values(c, fork, "Data", "A10:A10") == [[None]], "the copy before the refused edit was undone"
        r = await ok(c, "structure_batch", {"fork_id": fork, "ops": [
            {"op": "insert_rows", "sheet_name": "Data", "at": 2},
            {"op": "copy_range", "sheet_name": "Data", "range": "A3:D3", "to": "A20"},
            {"op": "move_range", "sheet_name": "Data", "range": "A20:C20", "to": "F20"}]})
        assert r["done"][1:] == ["copy Data!A3:D3 to A20", "move Data!A20:C20 to F20"]
        assert await values(c, fork, "Data", "A20:H20") == [[None, None, None, None, None, "item1", 1, 10]]
        # The copy shifted its formula like Excel's paste.
        cells = await ok(c, "inspect_cells", {"workbook_id": fork, "sheet_name": "Data", "cells": ["D20"]})
        assert cells["cells"][0]["formula"].lstrip("=") == "B20*C20", cells
        # Rows through a table are fine: the table grows.
        await ok(c, "structure_batch", {"fork_id": fork, "ops": [{"op": "insert_rows", "sheet_name": "Lookup", "at": 3}]})
        await ok(c, "save_fork", {"fork_id": fork, "target_path": "out/table.xlsx"})
    wb = openpyxl.load_workbook(workspace / "out" / "table.xlsx")
    assert wb["Lookup"].tables["Codes"].ref == "A1:B4"
    assert wb["Lookup"]["B4"].value == "beta"


@needs_corpus
async def test_inserting_a_row_works_on_every_corpus_workbook(tmp_path):
    """The general case: every readable .xlsx/.xlsm of the corpus (shared formulas, tables,
    pivots, charts, odd producers) takes a row inserted at the top of its first used sheet,
    and the saved file reads back with every cell one row down."""
    ws = tmp_path / "ws"
    (ws / "saved").mkdir(parents=True)
    sources = sorted(p for p in CORPUS.iterdir() if p.suffix.lower() in (".xlsx", ".xlsm"))
    for i, p in enumerate(sources):
        shutil.copy(p, ws / f"c{i:03d}{p.suffix.lower()}")
    done, failed, diffs = [], [], []
    async with stdio(ws, extra=["--timeout-ms", "30000"]) as c:
        books = await ids(c)
        for path, book in sorted(books.items()):
            if "/" in path:
                continue
            sheets = await c.call_tool("list_sheets", {"workbook_id": book})
            if sheets.is_error:
                continue
            target = next((s for s in sheets.structured_content["sheets"] if s.get("used_range")), None)
            if target is None:
                continue
            f = await c.call_tool("create_fork", {"workbook_id": book})
            if f.is_error:
                continue
            fork = f.structured_content["fork_id"]
            first = target["used_range"].split(":")[0]
            col = first.rstrip("0123456789")
            row = int(first[len(col):])
            sample = f"{col}{row}:{col}{row + 20}"
            before = await values(c, book, target["name"], sample)
            stats = {"workbook_id": book, "sheet_name": target["name"]}
            formulas = (await ok(c, "sheet_statistics", stats))["formulas"]
            r = await c.call_tool("structure_batch", {"fork_id": fork, "ops": [
                {"op": "insert_rows", "sheet_name": target["name"], "at": 1}]})
            if r.is_error:
                failed.append((path, r.content[0].text))
                continue
            moved = f"{col}{row + 1}:{col}{row + 21}"
            assert await values(c, fork, target["name"], moved) == before, path
            # Against the original, carried through the insert, nothing changed.
            cs = await ok(c, "get_changeset", {"fork_id": fork, "limit": 3})
            if cs["summary"]["total"]:
                diffs.append((path, cs["summary"]["total"], cs["changes"][:2]))
            s = await c.call_tool("save_fork", {"fork_id": fork, "target_path": f"saved/{pathlib.Path(path).name}",
                                                "recalculate": False})
            if s.is_error:
                failed.append((path, s.content[0].text))
                continue
            assert await values(c, s.structured_content["workbook_id"], target["name"], moved) == before, path
            # No formula is lost (shared groups written out cell by cell keep every member).
            stats["workbook_id"] = s.structured_content["workbook_id"]
            assert (await ok(c, "sheet_statistics", stats))["formulas"] == formulas, path
            done.append(path)
            await ok(c, "discard_fork", {"fork_id": fork})
    print(f"row insert: {len(done)} workbooks restructured and saved; failed {failed}; changesets not empty {diffs}")
    assert not failed
    assert not diffs
    assert len(done) >= 70
