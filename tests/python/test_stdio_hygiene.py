"""The stdio stream itself, byte for byte: nothing but JSON-RPC on stdout, whatever a library
prints, and a long session of notifications never stalls the reader."""

import json
import os
import subprocess
import time

import openpyxl
import pytest
from mcp import Client, StdioServerParameters
from openpyxl.styles import Font

from conftest import BIN, TIMEOUT


class RawStdio:
    """The real binary over a raw pipe, so every line it writes is seen."""

    def __init__(self, workspace, state_dir):
        self.proc = subprocess.Popen(
            [BIN, "serve", "--stdio", "--workspace", str(workspace), "--state-dir", str(state_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = []
        self.next_id = 1

    def send(self, obj):
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def read_line(self, timeout=60):
        # The server answers well within the timeout; a missing answer fails instead of hanging.
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no output from the server within {timeout} s"
        line = self.proc.stdout.readline()
        assert line, "the server closed stdout"
        self.lines.append(line)
        return line

    def request(self, method, params=None, timeout=60):
        rid = self.next_id
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
        while True:
            msg = json.loads(self.read_line(timeout))
            if msg.get("id") == rid:
                return msg

    def initialize(self):
        r = self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                        "clientInfo": {"name": "raw", "version": "1"}})
        assert "result" in r, r
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call(self, tool, args):
        r = self.request("tools/call", {"name": tool, "arguments": args})
        assert "result" in r, r
        assert not r["result"].get("isError"), r["result"]["content"]
        return r["result"]["structuredContent"]

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        rest = self.proc.stdout.read()
        self.lines.extend(rest.splitlines(keepends=True))
        return self.proc.stderr.read().decode(errors="replace")


def test_a_library_printing_to_stdout_never_reaches_the_mcp_stream(tmp_path):
    # IronCalc's importer prints "Unexpected feature ..." for a font feature it does not know
    # (here a superscript), on stdout, while the fork is recalculated in process.
    ws = tmp_path / "ws"
    ws.mkdir()
    wb = openpyxl.Workbook()
    sh = wb.active
    sh.title = "Calc"
    sh["A1"] = 2
    sh["A2"] = "=A1*21"
    sh["B1"] = "x2"
    sh["B1"].font = Font(vertAlign="superscript")
    wb.save(ws / "styled.xlsx")
    s = RawStdio(ws, tmp_path / "state")
    try:
        s.initialize()
        book = s.call("list_workbooks", {})["workbooks"][0]["workbook_id"]
        fork = s.call("create_fork", {"workbook_id": book})["fork_id"]
        s.call("edit_batch", {"fork_id": fork, "sheet_name": "Calc", "edits": ["A1=3"]})
        r = s.call("recalculate", {"fork_id": fork})
        assert r["backend"] == "in_process", r
        v = s.call("range_values", {"workbook_id": fork, "sheet_name": "Calc", "ranges": ["A2"], "format": "values"})
        assert "63" in json.dumps(v)
    finally:
        stderr = s.close()
    assert s.lines, "no output at all"
    for line in s.lines:
        msg = json.loads(line)  # every line on stdout is a JSON-RPC message
        assert msg.get("jsonrpc") == "2.0", line
    # What the library printed went to stderr instead.
    assert "Unexpected feature" in stderr


def test_hundreds_of_notifications_never_stall_the_reader(tmp_path, workspace):
    """Client notifications are never answered; a long session sends many of them (progress,
    cancels of finished calls, roots changed), and the server must keep reading."""
    s = RawStdio(workspace, tmp_path / "state")
    try:
        s.initialize()
        for i in range(300):
            s.send({"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": "client-side", "progress": i}})
        for i in range(300):
            s.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": 10_000 + i, "reason": "already finished"}})
        t = time.monotonic()
        r = s.request("ping", timeout=30)
        assert r.get("result") == {}, r
        books = s.call("list_workbooks", {})
        assert books["workbooks"]
        print(f"ping answered {(time.monotonic() - t) * 1000:.0f} ms after 600 notifications")
    finally:
        s.close()


def test_an_answer_larger_than_the_pipe_arrives_whole_to_a_slow_reader(tmp_path, workspace):
    """stdout is written without blocking when it is a pipe: an answer bigger than the pipe's
    buffer (64 KiB) must wait for a reader that is slow to drain it, and arrive whole."""
    s = RawStdio(workspace, tmp_path / "state")
    try:
        s.initialize()
        # Requests back to back, then nothing read for a while: the answers fill the pipe.
        for _ in range(40):
            s.send({"jsonrpc": "2.0", "id": s.next_id, "method": "tools/list", "params": {}})
            s.next_id += 1
        time.sleep(1.5)
        answers = [json.loads(s.read_line()) for _ in range(40)]
        assert all("result" in a and a["result"]["tools"] for a in answers), answers[0]
        total = sum(len(line) for line in s.lines)
        assert total > 4 * 65536, f"only {total} bytes: the pipe never filled"
        # The stream is still in step afterwards.
        assert s.call("list_workbooks", {})["workbooks"]
    finally:
        s.close()


def test_stdio_on_a_socket_instead_of_a_pipe(tmp_path, workspace):
    """A client may hand the server a socket (or a file) rather than pipes: the stream is then
    read and written through the blocking pool, and works the same."""
    import socket

    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [BIN, "serve", "--stdio", "--workspace", str(workspace), "--state-dir", str(tmp_path / "state")],
        stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.DEVNULL)
    theirs.close()
    ours.settimeout(60)
    reader = ours.makefile("rb")

    def request(rid, method, params):
        ours.sendall((json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}) + "\n").encode())
        while True:
            line = reader.readline()
            assert line, "the server closed the socket"
            msg = json.loads(line)
            if msg.get("id") == rid:
                return msg

    try:
        r = request(1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                      "clientInfo": {"name": "socket", "version": "1"}})
        assert "result" in r, r
        ours.sendall(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        r = request(2, "tools/call", {"name": "list_workbooks", "arguments": {}})
        assert r["result"]["structuredContent"]["workbooks"], r
    finally:
        ours.shutdown(socket.SHUT_WR)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        ours.close()


def test_a_request_longer_than_the_stdio_bound_is_answered_with_an_error(tmp_path, workspace):
    """rmcp drops a line over its 16 MiB bound unanswered; gemba serve answers it instead, at
    once, with an error saying how long it was and what to do, whether the id comes first (as
    the Python SDK writes it) or last (the TypeScript SDK), counts it as a failed call of its
    tool, and goes on reading."""
    s = RawStdio(workspace, tmp_path / "state")
    try:
        s.initialize()
        pad = "x" * (17 * 1024 * 1024)
        t = time.monotonic()
        r = s.request("tools/call", {"name": "list_workbooks", "arguments": {"pad": pad}}, timeout=30)
        assert r["error"]["code"] == -32600, r
        said = r["error"]["message"]
        assert "17.0 MiB, more than gemba serve reads from stdio (16.0 MiB)" in said, said
        assert "send less" in said, said
        answered_in = time.monotonic() - t

        # The id last, after the long params.
        late = {"method": "tools/call", "params": {"name": "list_workbooks", "arguments": {"pad": pad}},
                "jsonrpc": "2.0", "id": "late-1"}
        s.send(late)
        msg = json.loads(s.read_line(timeout=30))
        assert msg["id"] == "late-1" and msg["error"]["code"] == -32600, msg

        # Still in step: the next call is answered, by the same process.
        assert s.call("list_workbooks", {})["workbooks"]
        assert s.proc.poll() is None
    finally:
        stderr = s.close()
    assert "was not read: request 2 is answered with an error" in stderr, stderr[-2000:]
    out = subprocess.run([BIN, "stats", "--state-dir", str(tmp_path / "state"), "--since", "1h", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    stats = {row["tool"]: row for row in json.loads(out.stdout)}
    assert stats["list_workbooks"]["count"] == 3 and stats["list_workbooks"]["errors"] == 2, stats["list_workbooks"]
    print(f"a 17 MiB request answered with its error in {answered_in * 1000:.0f} ms")


def test_a_request_that_is_not_json_is_answered_with_a_parse_error(tmp_path, workspace):
    """rmcp skips a line that is not JSON, unanswered; gemba serve answers its request (when its
    id can be read) with a parse error saying where the JSON broke, in either era, counts it as
    a failed call of its tool, and goes on reading."""
    s = RawStdio(workspace, tmp_path / "state")
    try:
        # The 2026 era: no handshake, the protocol version in each request's _meta.
        meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}}
        line = json.dumps({"jsonrpc": "2.0", "id": "n-1", "method": "tools/call",
                           "params": {"_meta": meta, "name": "list_workbooks", "arguments": {}}})
        s.proc.stdin.write((line[:-2] + "\n").encode())  # the last two braces missing
        s.proc.stdin.flush()
        msg = json.loads(s.read_line(timeout=30))
        assert msg["id"] == "n-1" and msg["error"]["code"] == -32700, msg
        said = msg["error"]["message"]
        assert "this request is not JSON (EOF while parsing an object at line 1 column" in said, said
        assert "one line of UTF-8 JSON" in said, said
    finally:
        s.close()

    # The legacy era, after the handshake.
    s = RawStdio(workspace, tmp_path / "state")
    try:
        s.initialize()
        s.proc.stdin.write(b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"list_workbooks",}}\n')
        s.proc.stdin.flush()
        msg = json.loads(s.read_line(timeout=30))
        assert msg["id"] == 7 and msg["error"]["code"] == -32700, msg
        assert "(key must be a string at line 1 column 81)" in msg["error"]["message"], msg
        assert s.call("list_workbooks", {})["workbooks"]
        assert s.proc.poll() is None
    finally:
        stderr = s.close()
    assert "is not JSON" in stderr and "request 7 is answered with a parse error" in stderr, stderr[-2000:]
    out = subprocess.run([BIN, "stats", "--state-dir", str(tmp_path / "state"), "--since", "1h", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    stats = {row["tool"]: row for row in json.loads(out.stdout)}
    assert stats["list_workbooks"]["count"] == 3 and stats["list_workbooks"]["errors"] == 2, stats["list_workbooks"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_sdk_is_told_its_request_is_too_long_in_either_protocol_era(mode, tmp_path, workspace):
    """The official SDK in both eras: a 2026-era request carries its protocol version in
    `params._meta` (which the Python SDK writes after the arguments), so the stand-in keeps it,
    or the server would answer with a complaint about a missing `_meta` instead."""
    params = StdioServerParameters(command=BIN, args=["serve", "--stdio", "--workspace", str(workspace),
                                                      "--state-dir", str(tmp_path / "state")],
                                   env={"PATH": os.environ["PATH"], "GEMBA_LOG": "warn"})
    async with Client(params, mode=mode, read_timeout_seconds=TIMEOUT, cache=None) as c:
        with pytest.raises(Exception) as e:
            await c.call_tool("list_workbooks", {"pad": "x" * (17 * 1024 * 1024)})
        assert "more than gemba serve reads from stdio (16.0 MiB)" in str(e.value), str(e.value)
        r = await c.call_tool("list_workbooks", {})
        assert not r.is_error
