"""Robustness over ../shared/corpus: every file either loads and answers list_sheets and
sheet_page, or gets a clear error — within the limits, no hang, no crash of the server."""

import time

import pytest

from conftest import CORPUS, needs_corpus, stdio

pytestmark = pytest.mark.anyio


@needs_corpus
async def test_every_corpus_file_answers_or_fails_clearly():
    outcomes = {"ok": 0, "error": 0}
    slow = []
    async with stdio(CORPUS, extra=["--timeout-ms", "20000"]) as c:  # state goes to a temp dir
        books, offset = [], 0
        while offset is not None:
            r = await c.call_tool("list_workbooks", {"offset": offset, "limit": 500})
            books += r.structured_content["workbooks"]
            offset = r.structured_content.get("next_offset")
        assert len(books) >= 150
        for b in books:
            t = time.monotonic()
            r = await c.call_tool("list_sheets", {"workbook_id": b["workbook_id"]})
            if r.is_error:
                msg = r.content[0].text
                assert len(msg) > 20 and b["workbook_id"] in msg, (b["path"], msg)
                assert "panicked" not in msg
                outcomes["error"] += 1
            else:
                sheets = r.structured_content["sheets"]
                if sheets:
                    p = await c.call_tool("sheet_page", {"workbook_id": b["workbook_id"],
                                                         "sheet_name": sheets[0]["name"], "page_size": 20})
                    if p.is_error:
                        assert len(p.content[0].text) > 20, (b["path"], p.content[0].text)
                        outcomes["error"] += 1
                        continue
                    assert "range" in p.structured_content
                outcomes["ok"] += 1
            elapsed = time.monotonic() - t
            if elapsed > 10:
                slow.append((b["path"], elapsed))
        # The server survived all of it and still answers.
        r = await c.call_tool("list_workbooks", {"limit": 1})
        assert not r.is_error
    print(f"corpus: {outcomes}, slow: {slow}")
    assert outcomes["ok"] >= 100
    assert not slow, slow
