"""Saved files every reader opens, through the real binary and the official MCP SDK.

Text with the characters XML 1.0 forbids (a cell holding =CHAR(12)), CR, and literal `_xHHHH_`
text go through edit -> recalculate -> save, and come back as they were through calamine
(Gemba's own reads of the saved file), openpyxl and LibreOffice; every saved part parses with a
strict XML parser. A 1904 date-system workbook recalculates in process with its dates right
when saved, and a workbook the in-process engine refuses falls back to LibreOffice."""

import datetime
import pathlib
import re
import shutil
import subprocess
import tempfile
import time
import xml.dom.minidom
import zipfile

import anyio
import openpyxl
import pytest
from openpyxl.utils.datetime import CALENDAR_MAC_1904

from conftest import STRICT, err, ids, ok, stdio

pytestmark = pytest.mark.anyio

HAS_LIBREOFFICE = shutil.which("soffice") is not None


def libreoffice_checks() -> bool:
    """Whether the LibreOffice part of a test runs: when it is installed, and always under
    GEMBA_STRICT=1 (scripts/test.sh, CI), where a missing install fails instead of passing
    with that part quietly left out."""
    if STRICT:
        assert HAS_LIBREOFFICE, "LibreOffice (soffice) is needed for this check; scripts/test.sh installs it"
    return HAS_LIBREOFFICE

# Every code point U+0001-U+001F (TAB, LF and CR included), the two non-characters XML forbids,
# and text that looks like an escape and must read back literally.
TEXTS = [f"a{chr(c)}b" for c in range(1, 0x20)] + [
    "\ufffe", "\uffff", "_x000D_", "_x005F_", "lit _x0041_ and _x00e9_", "cr\r\nlf", "\x0c"]


def ooxml_unescape(s):
    """ST_Xstring decoding as the standard defines it (openpyxl leaves cell text escaped)."""
    if s is None:
        return None
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), s)


def assert_every_part_is_well_formed(path):
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(".xml") or name.endswith(".rels"):
                data = z.read(name)
                try:
                    xml.dom.minidom.parseString(data)
                except Exception as e:  # the strict parser's own message says where
                    raise AssertionError(f"{path.name}: {name} is not well-formed XML: {e}") from None


# A LibreOffice profile that recalculates every formula when it opens an xlsx file.
RECALC_ALWAYS = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Calc/Formula/Load"><prop oor:name="OOXMLRecalcMode" oor:op="fuse"><value>0</value></prop></item>
</oor:items>
"""


async def listed(client, path, within_s=5.0):
    """The id of `path` once list_workbooks shows it: the server reuses a workspace listing for up
    to a second (rescanning it ahead of time under load), so a file written by another program a
    moment ago may take that long to appear."""
    deadline = time.monotonic() + within_s
    while True:
        found = (await ids(client)).get(path)
        if found or time.monotonic() > deadline:
            assert found, f"{path} not listed within {within_s} s"
            return found
        await anyio.sleep(0.2)


def libreoffice_to_xlsx(src, out_dir, recalculate=False):
    """LibreOffice opens the file and writes it again as xlsx (its own reader, its own writer)."""
    profile = pathlib.Path(tempfile.mkdtemp(prefix="gemba-lo-fidelity-"))
    if recalculate:
        (profile / "user").mkdir()
        (profile / "user" / "registrymodifications.xcu").write_text(RECALC_ALWAYS)
    try:
        subprocess.run(
            ["soffice", "--headless", "--norestore", f"-env:UserInstallation=file://{profile}",
             "--convert-to", "xlsx:Calc MS Excel 2007 XML", "--outdir", str(out_dir), str(src)],
            check=False, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    out = out_dir / src.name
    assert out.exists(), "LibreOffice could not open the saved file"
    return out


def text_book(path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "S"
    ws["A1"] = "header"
    wb.save(path)


async def test_forbidden_characters_round_trip_through_every_reader(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    text_book(ws / "text.xlsx")
    n = len(TEXTS)
    edits = [{"cell": f"A{i + 2}", "value": t} for i, t in enumerate(TEXTS)]
    # Recalculated text: CHAR(12) itself, a copy of every edited text, and a formula whose
    # own text holds a literal escape look-alike.
    edits += [{"cell": "B1", "formula": "=CHAR(12)"},
              {"cell": "C1", "formula": '="x"&CHAR(1)&"_x000D_"&CHAR(13)'}]
    edits += [{"cell": f"B{i + 2}", "formula": f"=A{i + 2}"} for i in range(n)]
    expected_b = ["\x0c"] + TEXTS
    async with stdio(ws) as c:
        book = (await ids(c))["text.xlsx"]
        fork = (await ok(c, "create_fork", {"workbook_id": book}))["fork_id"]
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "S", "edits": edits})
        # A format code and a font name with characters XML forbids in attributes too.
        await ok(c, "style_batch", {"fork_id": fork, "sheet_name": "S", "ops": [
            {"range": "A2:A4", "number_format": '0.0" \x0b&<>"', "font": {"name": "F\x01\"ont'"}}]})
        r = await ok(c, "recalculate", {"fork_id": fork})
        assert r["backend"] == "in_process" and "fallback_reason" not in r, r
        got = await ok(c, "range_values", {"workbook_id": fork, "sheet_name": "S",
                                           "ranges": [f"B1:B{n + 1}", "C1"], "format": "values"})
        assert [row[0] for row in got["ranges"][0]["values"]] == expected_b
        assert got["ranges"][1]["values"][0][0] == "x\x01_x000D_\r"

        s = await ok(c, "save_fork", {"fork_id": fork, "target_path": "saved.xlsx"})
        assert s["values_recalculated"]
        saved = ws / "saved.xlsx"
        assert_every_part_is_well_formed(saved)

        # calamine, through Gemba's own reads of the saved file: values and formulas as written.
        got = await ok(c, "range_values", {"workbook_id": s["workbook_id"], "sheet_name": "S",
                                           "ranges": [f"A2:B{n + 1}", "B1:C1"], "format": "values"})
        assert [row[0] for row in got["ranges"][0]["values"]] == TEXTS
        assert [row[1] for row in got["ranges"][0]["values"]] == TEXTS
        assert got["ranges"][1]["values"][0] == ["\x0c", "x\x01_x000D_\r"]
        cells = await ok(c, "inspect_cells", {"workbook_id": s["workbook_id"], "sheet_name": "S",
                                              "cells": ["C1"]})
        assert cells["cells"][0]["formula"] == '="x"&CHAR(1)&"_x000D_"&CHAR(13)'

        # LibreOffice opens it and writes it again (its own reader and writer) with the same
        # text, read back here through calamine. LibreOffice keeps a line break as LF, so it
        # turns CR LF into LF; a lone CR it keeps. It reads the escapes in strings, but not in
        # the stored result of a formula (`<v>` of t="str", which Excel and calamine read), so
        # formula cells are checked with LibreOffice recalculating them, as Gemba's
        # LibreOffice backend runs it.
        if libreoffice_checks():
            as_lo = [t.replace("\r\n", "\n") for t in TEXTS]
            for recalc in (False, True):
                out = libreoffice_to_xlsx(saved, ws / f"lo-{recalc}", recalculate=recalc)
                assert_every_part_is_well_formed(out)
                lo = await listed(c, f"lo-{recalc}/saved.xlsx")
                got = await ok(c, "range_values", {"workbook_id": lo, "sheet_name": "S",
                                                   "ranges": [f"A2:B{n + 1}", "B1"], "format": "values"})
                assert [row[0] for row in got["ranges"][0]["values"]] == as_lo
                if recalc:
                    assert [row[1] for row in got["ranges"][0]["values"]] == as_lo
                    assert got["ranges"][1]["values"][0][0] == "\x0c"

    # openpyxl (a strict XML parser) opens it; its raw text decodes to the original (openpyxl
    # leaves `_xHHHH_` in cell text as it is, as its own writer does not produce them).
    values = openpyxl.load_workbook(saved, data_only=True)["S"]
    assert [ooxml_unescape(values[f"A{i + 2}"].value) for i in range(n)] == TEXTS
    assert [ooxml_unescape(values[f"B{i + 1}"].value) for i in range(n + 1)] == expected_b
    formulas = openpyxl.load_workbook(saved)["S"]
    assert ooxml_unescape(formulas["C1"].value) == '="x"&CHAR(1)&"_x000D_"&CHAR(13)'
    assert ooxml_unescape(formulas["A2"].number_format) == '0.0" \x0b&<>"'


async def test_gemba_reads_escaped_text_written_by_another_program(tmp_path):
    """A file whose strings and formulas carry `_xHHHH_` escapes (as Excel and LibreOffice
    write them): Gemba's reads give back the original text, and editing it keeps it so."""
    ws = tmp_path / "ws"
    ws.mkdir()
    with zipfile.ZipFile(ws / "escaped.xlsx", "w") as z:
        z.writestr("[Content_Types].xml", (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            '<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
            '</Types>'))
        z.writestr("_rels/.rels", (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>'
            '</Relationships>'))
        z.writestr("xl/workbook.xml", (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
            'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
            '<sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>'))
        z.writestr("xl/_rels/workbook.xml.rels", (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
            '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/>'
            '</Relationships>'))
        z.writestr("xl/sharedStrings.xml", (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" uniqueCount="1">'
            '<si><t>s_x000c_|_x005F_x000D_</t></si></sst>'))
        z.writestr("xl/worksheets/sheet1.xml", (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
            '<row r="1"><c r="A1" t="s"><v>0</v></c>'
            '<c r="B1" t="inlineStr"><is><t>i_x0001_|_x005F_x0041_</t></is></c>'
            '<c r="C1" t="str"><f>LEN(A1)&amp;"_x005F_x000D_"</f><v>10_x005F_x000D_</v></c>'
            '<c r="D1"><f>LEN(B1)</f><v>10</v></c></row></sheetData></worksheet>'))
    async with stdio(ws) as c:
        book = (await ids(c))["escaped.xlsx"]
        got = await ok(c, "range_values", {"workbook_id": book, "sheet_name": "S", "ranges": ["A1:D1"],
                                           "format": "values"})
        assert got["ranges"][0]["values"][0] == ["s\x0c|_x000D_", "i\x01|_x0041_", "10_x000D_", 10]
        cells = await ok(c, "inspect_cells", {"workbook_id": book, "sheet_name": "S", "cells": ["C1"]})
        assert cells["cells"][0]["formula"] == '=LEN(A1)&"_x000D_"'
        # The in-process engine sees the same text: LEN counts characters, not escapes
        # (10 each; 22 and 23 if it saw the escapes).
        fork = (await ok(c, "create_fork", {"workbook_id": book}))["fork_id"]
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "S", "edits": ["E1==LEN(A1)+LEN(B1)"]})
        await ok(c, "recalculate", {"fork_id": fork})
        got = await ok(c, "range_values", {"workbook_id": fork, "sheet_name": "S", "ranges": ["C1:E1"],
                                           "format": "values"})
        assert got["ranges"][0]["values"][0] == ["10_x000D_", 10, 20]
        s = await ok(c, "save_fork", {"fork_id": fork, "target_path": "again.xlsx"})
        assert_every_part_is_well_formed(ws / "again.xlsx")
        got = await ok(c, "range_values", {"workbook_id": s["workbook_id"], "sheet_name": "S",
                                           "ranges": ["A1:E1"], "format": "values"})
        assert got["ranges"][0]["values"][0] == ["s\x0c|_x000D_", "i\x01|_x0041_", "10_x000D_", 10, 20]


async def test_sheet_names_that_readers_would_disagree_on_are_refused(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    text_book(ws / "text.xlsx")
    async with stdio(ws) as c:
        fork = (await ok(c, "create_fork", {"workbook_id": (await ids(c))["text.xlsx"]}))["fork_id"]
        for name in ["tab\x0cname", "line\nbreak", "x_x0041_y"]:
            msg = await err(c, "structure_batch", {"fork_id": fork, "ops": [{"op": "create_sheet", "new_name": name}]})
            assert "control characters" in msg or "_xHHHH_" in msg, msg
        await ok(c, "structure_batch", {"fork_id": fork, "ops": [{"op": "create_sheet", "new_name": "Notes & <more>"}]})
        await ok(c, "save_fork", {"fork_id": fork, "target_path": "named.xlsx"})
    assert_every_part_is_well_formed(ws / "named.xlsx")
    assert openpyxl.load_workbook(ws / "named.xlsx").sheetnames == ["S", "Notes & <more>"]


def book_1904(path, extra=None):
    wb = openpyxl.Workbook()
    wb.epoch = CALENDAR_MAC_1904
    ws = wb.active
    ws.title = "Dates"
    ws["A1"] = datetime.date(2024, 3, 1)
    formulas = {
        "B1": ("=A1+30", "yyyy-mm-dd"), "C1": ("=YEAR(A1)", None), "D1": ("=DATE(2020,1,1)", "yyyy-mm-dd"),
        "E1": ("=EDATE(A1,1)", "yyyy-mm-dd"), "F1": ("=WEEKDAY(A1)", None),
        "G1": ('=TEXT(A1,"yyyy-mm-dd")', None), "H1": ("=EOMONTH(DATE(2024,2,10),0)", "yyyy-mm-dd"),
        "I1": ("=MONTH(A1)*100+DAY(A1)", None), "J1": ("=A2*2", None),
    }
    for cell, (f, fmt) in {**formulas, **(extra or {})}.items():
        ws[cell] = f
        if fmt:
            ws[cell].number_format = fmt
    ws["A2"] = 5
    wb.save(path)


EXPECTED_1904 = {
    "B1": datetime.datetime(2024, 3, 31), "C1": 2024, "D1": datetime.datetime(2020, 1, 1),
    "E1": datetime.datetime(2024, 4, 1), "F1": 6, "G1": "2024-03-01", "H1": datetime.datetime(2024, 2, 29),
    "I1": 301, "J1": 14,
}


def serial_1904(d):
    return (d - datetime.date(1904, 1, 1)).days


async def test_1904_workbook_recalculates_in_process_with_dates_right_when_saved(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    book_1904(ws / "mac.xlsx")
    async with stdio(ws) as c:
        book = (await ids(c))["mac.xlsx"]
        fork = (await ok(c, "create_fork", {"workbook_id": book}))["fork_id"]
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Dates", "edits": ["A2=7", "K1==DATE(2024,12,25)"]})
        r = await ok(c, "recalculate", {"fork_id": fork})
        assert r["backend"] == "in_process" and "fallback_reason" not in r and r["issue_count"] == 0, r
        got = await ok(c, "range_values", {"workbook_id": fork, "sheet_name": "Dates",
                                           "ranges": ["C1", "F1:G1", "I1:K1"], "format": "values"})
        assert [x["values"][0] for x in got["ranges"]] == [
            [2024], [6, "2024-03-01"], [301, 14, serial_1904(datetime.date(2024, 12, 25))]]
        s = await ok(c, "save_fork", {"fork_id": fork, "target_path": "mac-saved.xlsx"})
        assert s["values_recalculated"]
        # Gemba reads the saved file's dates as ISO dates.
        got = await ok(c, "range_values", {"workbook_id": s["workbook_id"], "sheet_name": "Dates",
                                           "ranges": ["A1:J1"], "format": "values"})
        assert got["ranges"][0]["values"][0] == [
            "2024-03-01", "2024-03-31", 2024, "2020-01-01", "2024-04-01", 6, "2024-03-01", "2024-02-29", 301, 14]

        # A fork of the saved file: a new date in A1 moves every date result, and the
        # recalculated date cells still read as dates.
        again = (await ok(c, "create_fork", {"workbook_id": s["workbook_id"]}))["fork_id"]
        await ok(c, "edit_batch", {"fork_id": again, "sheet_name": "Dates",
                                   "edits": [f"A1={serial_1904(datetime.date(2023, 1, 31))}"]})
        r = await ok(c, "recalculate", {"fork_id": again})
        assert r["backend"] == "in_process", r
        expected = ["2023-01-31", "2023-03-02", 2023, "2020-01-01",
                    "2023-02-28", 3, "2023-01-31", "2024-02-29", 131, 14]
        got = await ok(c, "range_values", {"workbook_id": again, "sheet_name": "Dates",
                                           "ranges": ["A1:J1"], "format": "values"})
        assert got["ranges"][0]["values"][0] == expected
        if libreoffice_checks():
            # LibreOffice knows the 1904 system natively: its values are the same.
            lo = await ok(c, "recalculate", {"fork_id": again, "backend": "libreoffice"})
            assert lo["backend"] == "libreoffice" and lo["changed"] == r["changed"], (lo, r)
            assert await ok(c, "range_values", {"workbook_id": again, "sheet_name": "Dates",
                                                "ranges": ["A1:J1"], "format": "values"}) == got
    saved = openpyxl.load_workbook(ws / "mac-saved.xlsx", data_only=True)
    assert saved.epoch == CALENDAR_MAC_1904
    sheet = saved["Dates"]
    assert {cell: sheet[cell].value for cell in EXPECTED_1904} == EXPECTED_1904
    assert sheet["K1"].value == serial_1904(datetime.date(2024, 12, 25))  # no date format: the serial


@pytest.mark.skipif(not HAS_LIBREOFFICE, reason="LibreOffice (soffice) is not installed")
async def test_a_workbook_the_in_process_engine_refuses_falls_back_to_libreoffice(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    # Holidays of NETWORKDAYS cannot be moved into the 1900 system inside a formula.
    book_1904(ws / "holidays.xlsx", extra={"L1": ("=NETWORKDAYS(A1,B1,A3:A4)", None)})
    wb = openpyxl.load_workbook(ws / "holidays.xlsx")
    wb["Dates"]["A3"] = datetime.date(2024, 3, 4)
    wb["Dates"]["A4"] = datetime.date(2024, 3, 5)
    wb.save(ws / "holidays.xlsx")
    async with stdio(ws) as c:
        book = (await ids(c))["holidays.xlsx"]
        fork = (await ok(c, "create_fork", {"workbook_id": book}))["fork_id"]
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Dates", "edits": ["A2=8"]})
        r = await ok(c, "recalculate", {"fork_id": fork})
        assert r["backend"] == "libreoffice", r
        assert "NETWORKDAYS" in r["fallback_reason"] and "holidays" in r["fallback_reason"], r
        got = await ok(c, "range_values", {"workbook_id": fork, "sheet_name": "Dates", "ranges": ["C1", "J1", "L1"],
                                           "format": "values"})
        # March 2024: 21 working days from the 1st to the 31st, less the two holidays.
        assert [x["values"][0][0] for x in got["ranges"]] == [2024, 16, 19]
        s = await ok(c, "save_fork", {"fork_id": fork, "target_path": "holidays-saved.xlsx"})
        assert s["values_recalculated"] and "recalc_error" not in s
    sheet = openpyxl.load_workbook(ws / "holidays-saved.xlsx", data_only=True)["Dates"]
    assert sheet["L1"].value == 19 and sheet["B1"].value == datetime.datetime(2024, 3, 31)
    # Without LibreOffice the refusal says why and what to do.
    async with stdio(ws, extra=["--libreoffice", str(tmp_path / "no-such-soffice")]) as c:
        book = (await ids(c))["holidays.xlsx"]
        fork = (await ok(c, "create_fork", {"workbook_id": book}))["fork_id"]
        msg = await err(c, "recalculate", {"fork_id": fork})
        assert "holidays" in msg and "libreoffice" in msg.lower(), msg
