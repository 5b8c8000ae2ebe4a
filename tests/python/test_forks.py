"""Forks through the real binary and the official MCP SDK: the edit → recalculate → verify →
save workflow, a corpus round trip checked by LibreOffice, a server killed in the middle of a
save, and the LibreOffice backend's timeout and circuit breaker."""

import asyncio
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
import zipfile

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import CORPUS, needs_corpus, err, http_server, ids, metric, ok, stdio

pytestmark = pytest.mark.anyio


def http_client(url):
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient()), mode="legacy",
                  read_timeout_seconds=30, cache=None)


def parts(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def raw_parts(path) -> dict:
    """Each part's stored (compressed) bytes, read without inflating or checking CRCs: some
    corpus files carry parts with bad CRCs, which a faithful save must copy as they are."""
    import struct
    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            f.seek(info.header_offset)
            header = f.read(30)
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            out[info.filename] = f.read(info.compress_size)
    return out


async def value(c, book, sheet, cell):
    r = await ok(c, "range_values", {"workbook_id": book, "sheet_name": sheet, "ranges": [cell], "format": "values"})
    return r["ranges"][0]["values"][0][0]


async def test_edit_recalculate_verify_save_workflow(scratch_workspace):
    original = (scratch_workspace / "model.xlsx").read_bytes()
    async with stdio(scratch_workspace) as c:
        model = (await ids(c))["model.xlsx"]
        before = await value(c, model, "Summary", "B1")
        fork = (await ok(c, "create_fork", {"workbook_id": model}))["fork_id"]

        # Preview first: nothing changes until the staged change is applied.
        p = await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs", "edits": ["B3=2000"],
                                       "mode": "preview"})
        assert p["preview"] == [{"cell": "Inputs!B3", "before": 1000, "after": 2000}]
        assert await value(c, fork, "Inputs", "B3") == 1000
        await ok(c, "apply_staged_change", {"fork_id": fork, "change_id": p["change_id"]})
        e = await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs",
                                       "edits": ["D1==B3*2", {"cell": "D2", "value": "note"}]})
        assert e["needs_recalc"] and e["formulas"] == 1

        # The fork id is a workbook id for every read tool.
        assert await value(c, fork, "Inputs", "B3") == 2000
        assert await value(c, model, "Inputs", "B3") == 1000
        st = await ok(c, "sheet_statistics", {"workbook_id": fork, "sheet_name": "Inputs"})
        assert st["formulas"] == 1

        r = await ok(c, "recalculate", {"fork_id": fork})
        assert r["backend"] == "in_process" and r["changed"] > 10
        after = await value(c, fork, "Summary", "B1")
        assert abs(after / before - 2) < 1e-9
        assert await value(c, fork, "Inputs", "D1") == 4000

        cs = await ok(c, "get_changeset", {"fork_id": fork, "kinds": ["value_edited", "formula_edited"]})
        assert cs["summary"]["value_edited"] == 2 and cs["summary"]["formula_edited"] == 1
        assert {x["cell"] for x in cs["changes"]} == {"Inputs!B3", "Inputs!D1", "Inputs!D2"}
        v = await ok(c, "verify_workbook", {"fork_id": fork, "targets": ["Summary!B1"]})
        assert v["targets"][0]["changed"] and v["targets"][0]["before"] == before
        assert v["new_errors"] == []

        msg = await err(c, "save_fork", {"fork_id": fork, "target_path": "model.xlsx"})
        assert "--allow-overwrite" in msg
        msg = await err(c, "save_fork", {"fork_id": fork, "target_path": "../escape.xlsx"})
        assert "relative" in msg
        s = await ok(c, "save_fork", {"fork_id": fork, "target_path": "model-v2.xlsx"})
        assert s["values_recalculated"] and s["parts_copied"] > 3
        saved = s["workbook_id"]
        assert await value(c, saved, "Summary", "B1") == after
        assert await value(c, saved, "Inputs", "D2") == "note"
        forks = (await ok(c, "list_forks", {}))["forks"]
        assert [f["fork_id"] for f in forks] == [fork] and not forks[0]["needs_recalc"]
        await ok(c, "discard_fork", {"fork_id": fork})
        assert "no fork" in await err(c, "recalculate", {"fork_id": fork})
    assert (scratch_workspace / "model.xlsx").read_bytes() == original
    a, b = parts(scratch_workspace / "model.xlsx"), parts(scratch_workspace / "model-v2.xlsx")
    changed = {n for n in a if a[n] != b.get(n)}
    assert changed <= set(s["parts_rewritten"]) | set(s.get("parts_dropped", [])), changed
    assert all("worksheets/" in n or n.endswith(".rels") or "Content_Types" in n or "workbook.xml" in n
               for n in s["parts_rewritten"]), s["parts_rewritten"]


def libreoffice_csv(files, out_dir, timeout=240):
    """Convert xlsx files to CSV (every sheet) with LibreOffice headless; returns {stem: text}."""
    profile = tempfile.mkdtemp(prefix="gemba-lo-test-")
    subprocess.run(
        ["soffice", "--headless", "--norestore", f"-env:UserInstallation=file://{profile}",
         "--convert-to", "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,false,false,false,-1",
         "--outdir", str(out_dir), *map(str, files)],
        check=False, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    shutil.rmtree(profile, ignore_errors=True)
    texts = {}
    for f in out_dir.glob("*.csv"):
        stem = f.stem.split("-", 1)[0]
        texts[stem] = texts.get(stem, "") + f.read_text(errors="replace")
    return texts


@needs_corpus
async def test_corpus_round_trip_keeps_untouched_parts(tmp_path):
    ws = tmp_path / "ws"
    (ws / "saved").mkdir(parents=True)
    sources = sorted(p for p in CORPUS.iterdir() if p.suffix.lower() in (".xlsx", ".xlsm"))
    for i, p in enumerate(sources):
        shutil.copy(p, ws / f"c{i:03d}{p.suffix.lower()}")
    saved, refused, unreadable, empty = [], [], [], []
    async with stdio(ws, extra=["--timeout-ms", "30000"]) as c:
        books = await ids(c)
        for path, book in sorted(books.items()):
            if "/" in path:
                continue
            sheets = await c.call_tool("list_sheets", {"workbook_id": book})
            if sheets.is_error:
                unreadable.append(path)  # encrypted, corrupt, bombs: refused by the reader already
                continue
            target = next((s for s in sheets.structured_content["sheets"] if s.get("used_range")), None)
            if target is None:
                empty.append(path)
                continue
            f = await c.call_tool("create_fork", {"workbook_id": book})
            if f.is_error:
                refused.append((path, f.content[0].text))
                continue
            fork = f.structured_content["fork_id"]
            cell = target["used_range"].split(":")[0]
            marker = f"gemba{len(saved):03d}x"
            await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": target["name"], "edits": [f"{cell}={marker}"]})
            stem = pathlib.Path(path).stem
            out = f"saved/{stem}{pathlib.Path(path).suffix}"
            s = await ok(c, "save_fork", {"fork_id": fork, "target_path": out, "recalculate": False})
            # Calamine (Gemba's reader) sees the new value in the saved file.
            assert await value(c, s["workbook_id"], target["name"], cell) == marker, path
            a, b = raw_parts(ws / path), raw_parts(ws / out)
            touched = set(s["parts_rewritten"]) | set(s.get("parts_dropped", []))
            for name, data in a.items():
                if name not in touched:
                    assert b.get(name) == data, f"{path}: {name} changed though no edit touched it"
            assert len(s["parts_rewritten"]) <= 4, (path, s["parts_rewritten"])
            saved.append((stem, marker, path))
            await ok(c, "discard_fork", {"fork_id": fork})
    print(f"round trip: {len(saved)} saved; unreadable {len(unreadable)}, no cells {len(empty)}, refused {refused}")
    # Every readable workbook with cells forks and saves.
    assert not refused
    assert len(saved) >= 70
    # LibreOffice opens every saved file and shows the new value.
    texts = {}
    files = sorted((ws / "saved").iterdir())
    for i in range(0, len(files), 25):
        chunk = tmp_path / f"csv{i}"
        chunk.mkdir()
        texts.update(libreoffice_csv(files[i:i + 25], chunk))
    # A crash of LibreOffice on one file ends its batch: convert what is missing one by one.
    for stem, marker, path in saved:
        if marker not in texts.get(stem, ""):
            single = tmp_path / f"one-{stem}"
            single.mkdir()
            texts.update(libreoffice_csv([ws / "saved" / (stem + pathlib.Path(path).suffix)], single, timeout=60))
    missing = [(stem, path) for stem, marker, path in saved if marker not in texts.get(stem, "")]
    unexplained = []
    for stem, path in missing:
        with zipfile.ZipFile(ws / path) as z:
            if any(n.startswith("xl/pivotTables/") for n in z.namelist()):
                continue  # LibreOffice rebuilds pivot output from the pivot cache on load
        probe = tmp_path / f"orig-{stem}"
        probe.mkdir()
        if not libreoffice_csv([ws / path], probe, timeout=60):
            continue  # LibreOffice cannot open the original either
        unexplained.append((stem, path))
    print(f"LibreOffice: {len(saved) - len(missing)} of {len(saved)} show the edit; explained: {len(missing) - len(unexplained)}")
    assert not unexplained, unexplained


async def test_server_killed_during_save_leaves_old_or_new_file(scratch_workspace, tmp_path):
    state = tmp_path / "state"
    original = (scratch_workspace / "model.xlsx").read_bytes()
    extra = ["--allow-overwrite"]
    with http_server(scratch_workspace, extra, state_dir=state, env={"GEMBA_TEST_SAVE_PAUSE_MS": "4000"}) as srv:
        async with http_client(srv.url) as c:
            model = (await ids(c))["model.xlsx"]
            fork = (await ok(c, "create_fork", {"workbook_id": model}))["fork_id"]
            await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs", "edits": ["B3=777"]})
            task = asyncio.create_task(c.call_tool("save_fork", {"fork_id": fork, "target_path": "model.xlsx"}))
            # The save writes and fsyncs its temporary file, then pauses before the rename.
            deadline = time.monotonic() + 20
            while not list(scratch_workspace.glob(".model.xlsx.gemba-*.tmp")) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert list(scratch_workspace.glob(".model.xlsx.gemba-*.tmp")), "the save never started"
            os.kill(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait(timeout=10)
            task.cancel()
    # Never a broken file: the original, intact.
    assert (scratch_workspace / "model.xlsx").read_bytes() == original
    with zipfile.ZipFile(scratch_workspace / "model.xlsx") as z:
        assert z.testzip() is None
    # After a restart the fork and its edit are still there, and the save goes through.
    async with stdio(scratch_workspace, extra=extra, state_dir=state) as c:
        forks = (await ok(c, "list_forks", {}))["forks"]
        assert [f["fork_id"] for f in forks] == [fork] and forks[0]["cells_edited"] == 1
        assert await value(c, fork, "Inputs", "B3") == 777
        s = await ok(c, "save_fork", {"fork_id": fork, "target_path": "model.xlsx"})
        assert s["values_recalculated"]
        assert await value(c, (await ids(c))["model.xlsx"], "Inputs", "B3") == 777


async def test_libreoffice_hang_is_killed_and_breaker_fails_fast(scratch_workspace, tmp_path):
    fake = tmp_path / "soffice"
    fake.write_text("#!/bin/sh\nsleep 60\n")
    fake.chmod(0o755)
    extra = ["--libreoffice", str(fake), "--recalc-timeout-ms", "700"]
    with http_server(scratch_workspace, extra, admin=True) as srv:
        async with http_client(srv.url) as c:
            model = (await ids(c))["model.xlsx"]
            fork = (await ok(c, "create_fork", {"workbook_id": model}))["fork_id"]
            await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Inputs", "edits": ["B3=5"]})
            for _ in range(3):
                t = time.monotonic()
                msg = await err(c, "recalculate", {"fork_id": fork, "backend": "libreoffice"})
                assert "killed" in msg, msg
                assert time.monotonic() - t < 5
            assert metric(srv.admin, "gemba_recalc_breaker_state") == 1
            t = time.monotonic()
            msg = await err(c, "recalculate", {"fork_id": fork, "backend": "libreoffice"})
            assert "circuit open" in msg and time.monotonic() - t < 0.5, msg
            assert metric(srv.admin, "gemba_recalc_timeouts_total") == 3
            # No LibreOffice process is left behind, and the in-process engine still works.
            assert subprocess.run(["pgrep", "-f", f"{fake} --headless"], capture_output=True).returncode == 1
            r = await ok(c, "recalculate", {"fork_id": fork})
            assert r["backend"] == "in_process"


async def test_a_write_into_the_hidden_cells_of_a_merged_range_is_refused(tmp_path):
    import openpyxl

    ws = tmp_path / "ws"
    ws.mkdir()
    wb = openpyxl.Workbook()
    sh = wb.active
    sh.title = "Sheet1"
    sh["B2"] = "title"
    sh["F1"] = 1
    sh.merge_cells("B2:D6")
    wb.save(ws / "merged.xlsx")
    async with stdio(ws) as c:
        fork = (await ok(c, "create_fork", {"workbook_id": (await ids(c))["merged.xlsx"]}))["fork_id"]
        msg = await err(c, "edit_batch", {"fork_id": fork, "sheet_name": "Sheet1", "edits": ["F1=2", "C4=hidden"]})
        assert "Sheet1!C4 is inside the merged range B2:D6" in msg and "write to B2 instead" in msg, msg
        # Nothing of the refused batch landed; the top-left cell and cells outside take writes.
        assert (await ok(c, "list_forks", {}))["forks"][0]["cells_edited"] == 0
        await ok(c, "edit_batch", {"fork_id": fork, "sheet_name": "Sheet1", "edits": ["B2=new title", "F1=2"]})
        await ok(c, "save_fork", {"fork_id": fork, "target_path": "saved.xlsx"})
    saved = openpyxl.load_workbook(ws / "saved.xlsx")["Sheet1"]
    assert (saved["B2"].value, saved["F1"].value) == ("new title", 2)
    assert [str(r) for r in saved.merged_cells.ranges] == ["B2:D6"]
