"""`gemba proxy`: Kaizen in front of MCP servers nobody here wrote — the MCP reference server
(`@modelcontextprotocol/server-everything`, installed by scripts/test.sh into `.npm-tools`), a
FastMCP (`MCPServer`) server written with the official Python SDK, and a small server that
crashes in the middle of a call. The client is the official Python SDK in every case; the
proxy is the real binary; the measurements are read from its own /metrics and `gemba stats`."""

import contextlib
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request

import anyio
import pytest
from mcp import Client, StdioServerParameters, types

from conftest import BIN, ROOT, TIMEOUT

pytestmark = pytest.mark.anyio

EVERYTHING = ROOT / ".npm-tools" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
PY = sys.executable

FASTMCP_SERVER = textwrap.dedent('''
    """A small server on the official Python SDK's FastMCP (MCPServer in mcp 2.x)."""
    import os
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    mcp = MCPServer("weather")

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @mcp.tool()
    def forecast(city: str) -> str:
        """The forecast for a city."""
        return f"sunny in {city}"

    @mcp.tool()
    def fail(why: str) -> str:
        """Always fails (a tool error)."""
        raise ToolError(why)

    @mcp.tool()
    def version() -> str:
        """Which build of the server this is."""
        return os.environ.get("WEATHER_VERSION", "a")

    @mcp.resource("note://hello")
    def hello() -> str:
        """A note."""
        return "hello from the note"

    @mcp.prompt()
    def greet(name: str) -> str:
        """Greet someone."""
        return f"Hello {name}, how is the weather?"

    if __name__ == "__main__":
        mcp.run()
''')

# A server of the plainest kind (raw JSON-RPC over stdio) that dies in the middle of a call to
# `crash`. Every process appends one line per message it received to $CRASHY_LOG.
CRASHY_SERVER = textwrap.dedent('''
    import json, os, sys, time
    log = open(os.environ["CRASHY_LOG"], "a", buffering=1)
    log.write(f"start {os.getpid()}\\n")
    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
    def text(s):
        return {"content": [{"type": "text", "text": s}], "isError": False}
    for line in sys.stdin:
        m = json.loads(line)
        method, mid = m.get("method"), m.get("id")
        log.write(f"{os.getpid()} {method or 'response'}\\n")
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
                "serverInfo": {"name": "crashy", "version": "1.0"}}})
        elif method == "tools/list":
            tools = [{"name": n, "inputSchema": {"type": "object"}} for n in ("echo", "pid", "crash", "slow")]
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": tools}})
        elif method == "tools/call":
            name, args = m["params"]["name"], m["params"].get("arguments") or {}
            if name == "crash":
                time.sleep(0.3)
                os._exit(3)
            if name == "slow":
                time.sleep(float(args.get("seconds", 1)))
            if name == "pid":
                send({"jsonrpc": "2.0", "id": mid, "result": text(str(os.getpid()))})
            else:
                send({"jsonrpc": "2.0", "id": mid, "result": text(json.dumps(args))})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        elif mid is not None and method is not None:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": f"no method {method}"}})
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_everything():
    if not EVERYTHING.exists():
        pytest.skip(f"server-everything is not installed at {EVERYTHING}; run scripts/test.sh")


def everything_cmd():
    return ["node", str(EVERYTHING), "stdio"]


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    d = tmp_path_factory.mktemp("servers")
    (d / "weather_server.py").write_text(FASTMCP_SERVER)
    (d / "crashy.py").write_text(CRASHY_SERVER)
    return d


def proxy_args(upstream, state_dir, admin_port=None, extra=()):
    args = ["proxy", "--state-dir", str(state_dir), *extra]
    if admin_port:
        args += ["--admin", f"127.0.0.1:{admin_port}"]
    return [*args, "--", *upstream]


def proxied(upstream, state_dir, admin_port=None, extra=(), env=None, mode="legacy", **kw):
    """The SDK client over stdio to `gemba proxy -- upstream…`."""
    params = StdioServerParameters(command=BIN, args=proxy_args(upstream, state_dir, admin_port, extra),
                                   env={"GEMBA_LOG": "warn", "PATH": os.environ["PATH"], **(env or {})})
    return Client(params, mode=mode, read_timeout_seconds=TIMEOUT, cache=None, **kw)


def direct(upstream, env=None, mode="legacy", **kw):
    params = StdioServerParameters(command=upstream[0], args=upstream[1:],
                                   env={"PATH": os.environ["PATH"], **(env or {})})
    return Client(params, mode=mode, read_timeout_seconds=TIMEOUT, cache=None, **kw)


def scrape(admin_port) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).read().decode()


def series(text, name, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}")[0] if "{" in line else ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else 0.0


def wait_for(pred, timeout=20.0, every=0.2):
    """Poll until `pred()` is truthy (the aggregator drains its queue every few ms)."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(every)


def stats(state_dir) -> dict:
    out = subprocess.run([BIN, "stats", "--state-dir", str(state_dir), "--since", "1h", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {s["tool"]: s for s in json.loads(out.stdout)}


def dump(x):
    return x.model_dump(mode="json", exclude_none=True, by_alias=True)


# ---------------------------------------------------------------------------------------------
# The MCP reference server (Node), through the proxy and direct: the same answers.

async def everything_session(client_factory, calls_log):
    """One session's worth of everything the reference server offers; returns what was seen."""
    seen = {"progress": [], "sampled": [], "elicited": 0, "roots": 0, "logs": 0}

    async def sampling(ctx, params):
        seen["sampled"].append(params.messages[0].content.text)
        return types.CreateMessageResult(role="assistant", model="test-model",
                                         content=types.TextContent(type="text", text="the sampled answer"))

    async def elicitation(ctx, params):
        seen["elicited"] += 1
        return types.ElicitResult(action="decline")

    async def roots(ctx):
        seen["roots"] += 1
        return types.ListRootsResult(roots=[types.Root(uri="file:///tmp/project", name="project")])

    async def logging_cb(params):
        seen["logs"] += 1

    out = {}
    async with client_factory(sampling_callback=sampling, elicitation_callback=elicitation,
                              list_roots_callback=roots, logging_callback=logging_cb) as c:
        tools = await c.list_tools()
        out["tools"] = sorted(t.name for t in tools.tools)
        out["tool_schemas"] = {t.name: dump(t) for t in tools.tools}
        r = await c.call_tool("echo", {"message": "hello through the proxy"})
        out["echo"] = dump(r)
        calls_log.append("echo")
        r = await c.call_tool("get-sum", {"a": 2, "b": 40})
        out["sum"] = dump(r)
        calls_log.append("get-sum")
        r = await c.call_tool("get-structured-content", {"location": "New York"})
        out["structured"] = r.structured_content
        calls_log.append("get-structured-content")
        r = await c.call_tool("get-tiny-image", {})
        out["image_types"] = [x.type for x in r.content]
        calls_log.append("get-tiny-image")

        async def progress(p, total, message):
            seen["progress"].append(p)
        r = await c.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 3},
                              progress_callback=progress)
        out["long"] = r.is_error
        calls_log.append("trigger-long-running-operation")
        if "trigger-sampling-request" in out["tools"]:
            r = await c.call_tool("trigger-sampling-request", {"prompt": "say hi", "maxTokens": 20})
            out["sampling"] = json.dumps(dump(r))
            calls_log.append("trigger-sampling-request")
        if "trigger-elicitation-request" in out["tools"]:
            await c.call_tool("trigger-elicitation-request", {})
            calls_log.append("trigger-elicitation-request")
        if "get-roots-list" in out["tools"]:
            await c.call_tool("get-roots-list", {})
            calls_log.append("get-roots-list")
        res = await c.list_resources()
        out["resources"] = sorted(x.uri for x in res.resources)
        first = res.resources[0].uri
        rr = await c.read_resource(first)
        out["read"] = dump(rr)
        prompts = await c.list_prompts()
        out["prompts"] = sorted(p.name for p in prompts.prompts)
        g = await c.get_prompt("args-prompt", {"city": "Paris", "state": "Texas"})
        out["prompt"] = dump(g)
        try:
            out["unknown_tool"] = dump(await c.call_tool("no-such-tool", {}))
        except Exception as e:  # a JSON-RPC error rather than a tool error
            out["unknown_tool"] = str(e)
        await c.send_ping()
    out["seen"] = {"progress": len(seen["progress"]) > 0, "sampled": seen["sampled"],
                   "elicited": seen["elicited"], "roots": seen["roots"]}
    return out


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_reference_server_answers_the_same_through_the_proxy(mode, tmp_path):
    need_everything()
    port = free_port()
    calls_direct, calls_proxied = [], []
    want = await everything_session(lambda **kw: direct(everything_cmd(), mode=mode, **kw), calls_direct)
    got = await everything_session(
        lambda **kw: proxied(everything_cmd(), tmp_path / "state", port, mode=mode, **kw), calls_proxied)
    assert got == want
    # Server-to-client requests crossed the proxy both ways (where the server offers them).
    assert got["seen"]["progress"]
    if "trigger-sampling-request" in got["tools"]:
        assert got["seen"]["sampled"], got["seen"]
        assert "the sampled answer" in got["sampling"]
    if "get-roots-list" in got["tools"]:
        assert got["seen"]["roots"] >= 1


async def test_every_call_to_the_reference_server_is_measured_with_its_upstream_label(tmp_path):
    need_everything()
    port = free_port()
    state = tmp_path / "state"
    async with proxied(everything_cmd(), state, port, extra=["--name", "everything"]) as c:
        for i in range(5):
            r = await c.call_tool("echo", {"message": f"m{i}"})
            assert not r.is_error
        r = await c.call_tool("get-sum", {"a": 1, "b": 2})
        assert "3" in r.content[0].text
        # A bad argument: the reference server answers with a tool error (or a protocol error).
        with contextlib.suppress(Exception):
            await c.call_tool("get-sum", {"a": "x"})
        await c.list_resources()
        text = wait_for(lambda: (t := scrape(port)) and series(
            t, "gemba_tool_requests_total", tool="echo", upstream="everything") == 5 and t)
        assert text, scrape(port)
        assert series(text, "gemba_tool_requests_total", tool="echo", outcome="ok", upstream="everything") == 5
        assert series(text, "gemba_tool_requests_total", tool="get-sum", upstream="everything") == 2
        assert series(text, "gemba_tool_requests_total", tool="get-sum", outcome="ok", upstream="everything") == 1
        assert series(text, "gemba_tool_requests_total", tool="resources/list", upstream="everything") == 1
        assert series(text, "gemba_tool_requests_total", tool="initialize", upstream="everything") == 1
        assert series(text, "gemba_tool_duration_seconds_count", tool="echo", upstream="everything") == 5
        assert series(text, "gemba_tool_in_flight", tool="echo", upstream="everything") == 0
        assert series(text, "gemba_proxy_upstream_up", upstream="everything") == 1
        assert series(text, "mcp_server_operation_duration_seconds_count", mcp_method_name="tools/call",
                      gen_ai_tool_name="echo", network_transport="pipe") == 5
        # Every series of the recorder carries the label, so two proxies can share a Prometheus.
        for line in text.splitlines():
            if line.startswith("gemba_tool_requests_total{"):
                assert 'upstream="everything"' in line, line
        slo = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/slo.json", timeout=10).read())
        assert slo, "the SLO status is served"
        ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status == 200
    s = wait_for(lambda: (st := stats(state)).get("echo", {}).get("count") == 5 and st, timeout=15) or stats(state)
    assert s["echo"]["count"] == 5, s
    assert s["get-sum"]["count"] == 2, s


# ---------------------------------------------------------------------------------------------
# A FastMCP server: byte-for-byte transparency, tool errors measured, SLO tiers by pattern.

RAW_SESSION = [
    {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {"sampling": {}},
        "clientInfo": {"name": "raw", "version": "0"}}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    {"jsonrpc": "2.0", "id": "s-3", "method": "tools/call", "params": {"name": "add", "arguments": {"a": 2, "b": 3}}},
    {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "fail", "arguments": {"why": "no sun"}}},
    {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "missing", "arguments": {}}},
    {"jsonrpc": "2.0", "id": 6, "method": "resources/read", "params": {"uri": "note://hello"}},
    {"jsonrpc": "2.0", "id": 7, "method": "prompts/get", "params": {"name": "greet", "arguments": {"name": "Ann"}}},
    {"jsonrpc": "2.0", "id": 8, "method": "no/such/method", "params": {}},
    {"jsonrpc": "2.0", "id": 9, "method": "ping"},
]


@contextlib.contextmanager
def stdio_process(cmd, env=None, text=True):
    """A server process on pipes; on the way out its input is closed and it is waited for."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=text, env={**os.environ, "GEMBA_LOG": "warn", **(env or {})})
    try:
        yield p
    finally:
        p.stdin.close()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def raw_exchange(cmd, lines, env=None):
    """Send JSON-RPC lines one at a time (each answered before the next) and return every line
    the server wrote, as text."""
    out = []
    with stdio_process(cmd, env) as p:
        for msg in lines:
            p.stdin.write(json.dumps(msg) + "\n")
            p.stdin.flush()
            if "id" in msg:
                while True:
                    line = p.stdout.readline()
                    assert line, f"the server closed its output (answer to {msg} missing)"
                    out.append(line.rstrip("\n"))
                    m = json.loads(line)
                    if m.get("id") == msg["id"] and "method" not in m:
                        break
    return out


async def test_fastmcp_answers_are_forwarded_byte_for_byte(scripts, tmp_path):
    upstream = [PY, str(scripts / "weather_server.py")]
    want = raw_exchange(upstream, RAW_SESSION)
    got = raw_exchange([BIN, *proxy_args(upstream, tmp_path / "state")], RAW_SESSION)
    assert got == want
    assert len(got) >= len([m for m in RAW_SESSION if "id" in m])


def pipelined_exchange(cmd, lines, env=None):
    """Write every line at once (from a thread, so neither side's pipe fills and stalls the
    other) and read until each request is answered; every line the server wrote, as bytes."""
    import threading
    blob = b"".join(json.dumps(m, ensure_ascii=False).encode() + b"\n" for m in lines)
    waiting = {m["id"] for m in lines if "id" in m}
    out = []
    with stdio_process(cmd, env, text=False) as p:
        writer = threading.Thread(target=lambda: (p.stdin.write(blob), p.stdin.flush()), daemon=True)
        writer.start()
        while waiting:
            line = p.stdout.readline()
            assert line, f"the server closed its output with {sorted(waiting)} unanswered"
            out.append(line)
            m = json.loads(line)
            if "method" not in m:
                waiting.discard(m.get("id"))
        writer.join(timeout=30)
    return out


async def test_large_and_back_to_back_messages_pass_whole_and_in_order(scripts, tmp_path):
    # Sizes around the proxy's 64 KiB reads and far past them, small ones between (so several
    # share one read), multi-byte UTF-8 throughout: each answer must arrive byte for byte as
    # the server wrote it, in the server's order.
    upstream = [PY, str(scripts / "crashy.py")]
    env = {"CRASHY_LOG": str(tmp_path / "crashy.log")}
    sizes = [10, 70_000, 3, 300_000, 65_535, 7, 1_500_000, 16_384, 1]
    session = [
        {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ] + [
        {"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
         "params": {"name": "echo", "arguments": {"n": i, "text": ("é€x" * n)[:n]}}}
        for i, n in enumerate(sizes)
    ]
    want = pipelined_exchange(upstream, session, env)
    got = pipelined_exchange([BIN, *proxy_args(upstream, tmp_path / "state")], session, env)
    assert len(got) == len(want) == len(sizes) + 1
    for g, w in zip(got, want):
        assert g == w, (len(g), len(w), g[:80], w[:80])
    texts = [json.loads(json.loads(line)["result"]["content"][0]["text"])["text"] for line in got[1:]]
    assert [len(t) for t in texts] == sizes


async def test_fastmcp_calls_are_measured_by_tool_with_slo_tiers_by_pattern(scripts, tmp_path):
    upstream = [PY, str(scripts / "weather_server.py")]
    slo = tmp_path / "slo.toml"
    slo.write_text(textwrap.dedent('''
        default_tier = "data"
        [[pattern]]
        match = "fore*"
        tier = "metadata"
    '''))
    port = free_port()
    state = tmp_path / "state"
    async with proxied(upstream, state, port, extra=["--slo", str(slo)]) as c:
        tools = sorted(t.name for t in (await c.list_tools()).tools)
        assert tools == ["add", "fail", "forecast", "version"]
        for i in range(4):
            r = await c.call_tool("add", {"a": i, "b": 1})
            assert not r.is_error and r.content[0].text == str(i + 1)
        r = await c.call_tool("forecast", {"city": "Oslo"})
        assert r.content[0].text == "sunny in Oslo"
        r = await c.call_tool("fail", {"why": "no sun today"})
        assert r.is_error and "no sun today" in r.content[0].text
        rr = await c.read_resource("note://hello")
        assert rr.contents[0].text == "hello from the note"
        g = await c.get_prompt("greet", {"name": "Ann"})
        assert "Hello Ann" in g.messages[0].content.text
        text = wait_for(lambda: (t := scrape(port)) and series(
            t, "gemba_tool_requests_total", tool="fail", upstream="weather_server") == 1 and t)
        assert text, scrape(port)
        assert series(text, "gemba_tool_requests_total", tool="add", outcome="ok", upstream="weather_server") == 4
        assert series(text, "gemba_tool_requests_total", tool="fail", outcome="tool_error",
                      upstream="weather_server") == 1
        assert series(text, "gemba_tool_requests_total", tool="resources/read", outcome="ok") == 1
        assert series(text, "gemba_tool_requests_total", tool="prompts/get", outcome="ok") == 1
        slo_json = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/slo.json", timeout=10).read())
        tiers = json.dumps(slo_json)
        assert "metadata" in tiers and "forecast" in tiers
    s = wait_for(lambda: (st := stats(state)).get("add", {}).get("count") == 4 and st, timeout=15) or stats(state)
    assert s["add"]["count"] == 4 and s["fail"]["errors"] == 1, s


# `gemba bench --only proxy` in front of a server named on its command line: how anyone
# measures what the proxy costs their own server.

def test_the_overhead_bench_measures_the_proxy_in_front_of_a_named_server(scripts, tmp_path):
    """One pair of processes of the FastMCP server, its `forecast` tool called direct and through
    the proxy: the report names the upstream, both sides answered at a real rate, and the CPU
    per call was spent by the proxy and by the server behind it (so the calls went through)."""
    out = tmp_path / "bench.json"
    cmd = [BIN, "bench", "--only", "proxy", "--pairs", "1", "--dir", str(tmp_path / "w"), "--json", str(out),
           "--proxy-arg=--name", "--proxy-arg=weather",
           "--tool", "forecast", "--arguments", '{"city": "Oslo"}', "--", PY, str(scripts / "weather_server.py")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "GEMBA_LOG": "warn"})
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    proxy = report["proxy"]
    assert proxy["upstream"] == f"{PY} {scripts / 'weather_server.py'}", proxy["upstream"]
    assert (proxy["middle"], proxy["pairs"], proxy["tool"]) == ("proxy", 1, "forecast"), proxy
    assert proxy["proxy_args"] == ["--name", "weather"], proxy
    [fig] = proxy["throughput"]
    assert fig["tool"] == "forecast", fig
    assert fig["direct_per_s"] > 20 and fig["proxied_per_s"] > 20, fig
    assert fig["proxy_cpu_us_per_call"] > 0 and fig["upstream_cpu_us_per_call"] > 0, fig
    assert len(fig["pair_losses"]) == 1 and abs(fig["pair_losses"][0] - fig["throughput_loss"]) < 1e-9, fig
    assert 0 < proxy["direct_p50_ms"] < 1_000 and 0 < proxy["proxied_p50_ms"] < 1_000, proxy
    bars = [b["bar"] for b in report["bars"]]
    assert "gemba proxy costs <= 5 % of forecast throughput" in bars, bars
    assert "upstream: " in r.stdout and "forecast throughput" in r.stdout, r.stdout


@pytest.mark.parametrize("args, says", [
    (["--", "python3", "x.py"], "--tool"),
    (["--tool", "echo"], "after `--`"),
    (["--tool", "echo", "--arguments", "[1]", "--", "python3", "x.py"], "JSON object"),
    (["--tool", "echo", "--arguments", "{nope", "--", "python3", "x.py"], "not JSON"),
])
def test_the_overhead_bench_says_what_is_wrong_with_its_upstream(args, says, tmp_path):
    """Usage errors are caught before anything starts, and say what to do."""
    r = subprocess.run([BIN, "bench", "--only", "proxy", "--dir", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and says in r.stderr, (r.returncode, r.stderr)


def test_the_overhead_bench_passes_proxy_args_on(scripts, tmp_path):
    """`--proxy-arg` reaches `gemba proxy`: an argument it does not know stops the bench with the
    proxy's own complaint rather than a figure measured without it."""
    r = subprocess.run([BIN, "bench", "--only", "proxy", "--pairs", "1", "--dir", str(tmp_path),
                        "--proxy-arg=--no-such-flag", "--tool", "forecast", "--arguments", '{"city": "Oslo"}',
                        "--", PY, str(scripts / "weather_server.py")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stdout
    assert "--no-such-flag" in r.stderr and "gemba proxy" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# A server that crashes in the middle of a call.

async def test_a_crash_mid_call_is_answered_clearly_survived_and_visible(scripts, tmp_path):
    log = tmp_path / "crashy.log"
    upstream = [PY, str(scripts / "crashy.py")]
    port = free_port()
    state = tmp_path / "state"
    async with proxied(upstream, state, port, env={"CRASHY_LOG": str(log)}, extra=["--name", "crashy"]) as c:
        first_pid = (await c.call_tool("pid", {})).content[0].text
        r = await c.call_tool("echo", {"x": 1})
        assert json.loads(r.content[0].text) == {"x": 1}

        # Two calls in flight when the server dies (the second waits behind the first in the
        # server's input): both answered, both with the reason.
        async def call(name, args, out):
            try:
                out[name] = await c.call_tool(name, args)
            except Exception as e:  # the SDK raises on a JSON-RPC error
                out[name] = e
        results = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "crash", {}, results)
            await anyio.sleep(0.05)
            tg.start_soon(call, "slow", {"seconds": 0}, results)
        for name in ("slow", "crash"):
            msg = str(results[name])
            assert "upstream MCP server" in msg and "exited with status 3" in msg and "restarting" in msg, msg

        # Restarted (with backoff) and the session replayed: later calls work, on a new process.
        second_pid = None
        for _ in range(40):
            try:
                second_pid = (await c.call_tool("pid", {})).content[0].text
                break
            except Exception:
                await anyio.sleep(0.25)
        assert second_pid and second_pid != first_pid
        r = await c.call_tool("echo", {"after": "crash"})
        assert json.loads(r.content[0].text) == {"after": "crash"}

        text = wait_for(lambda: (t := scrape(port)) and series(t, "gemba_proxy_upstream_restarts_total",
                                                                   upstream="crashy") >= 1 and t)
        assert text, scrape(port)
        assert series(text, "gemba_proxy_upstream_exits_total", upstream="crashy") == 1
        assert series(text, "gemba_proxy_failed_requests_total", upstream="crashy") == 2
        assert series(text, "gemba_proxy_upstream_up", upstream="crashy") == 1
        assert series(text, "gemba_tool_requests_total", tool="crash", outcome="internal", upstream="crashy") == 1
        assert series(text, "gemba_tool_requests_total", tool="slow", outcome="internal", upstream="crashy") == 1
        assert series(text, "gemba_tool_requests_total", tool="echo", outcome="ok", upstream="crashy") == 2

    # The new process heard the client's handshake again before any call.
    lines = log.read_text().splitlines()
    starts = [l.split()[1] for l in lines if l.startswith("start ")]
    assert len(starts) >= 2, lines
    second = [l.split()[1] for l in lines if l.startswith(starts[1] + " ")]
    assert second[:2] == ["initialize", "notifications/initialized"], second
    # The request log has the crash with its reason.
    s = stats(state)
    assert s["crash"]["errors"] == 1 and s["slow"]["errors"] == 1, s


async def test_a_message_over_the_size_limit_is_answered_at_once_not_left_waiting(scripts, tmp_path):
    """A message longer than --max-message-mb is not passed on, either way; the request it was
    (or answered) gets an error that names the size and the flag, at once, it is measured, and
    the session goes on."""
    log = tmp_path / "crashy.log"
    upstream = [PY, str(scripts / "crashy.py")]
    port = free_port()
    state = tmp_path / "state"
    extra = ["--name", "crashy", "--max-message-mb", "1"]
    async with proxied(upstream, state, port, env={"CRASHY_LOG": str(log)}, extra=extra) as c:
        # The answer is too long (~1.2 MB: each `"` is escaped twice on its way back, once in the
        # echoed JSON and once in the answer), the request that asked for it (~0.6 MB) is not.
        with anyio.fail_after(30):
            with pytest.raises(Exception) as answer:
                await c.call_tool("echo", {"q": '"' * 300_000})
        said = str(answer.value)
        assert "answered with 1.1 MiB" in said and "--max-message-mb" in said and "crashy" in said, said

        # The request is too long (~1.4 MB): answered by the proxy, never given to the server.
        with anyio.fail_after(30):
            with pytest.raises(Exception) as request:
                await c.call_tool("echo", {"big": "x" * 1_500_000})
        said = str(request.value)
        assert "this request is 1.4 MiB" in said and "--max-message-mb" in said, said

        # The session goes on, on the same server process.
        r = await c.call_tool("echo", {"after": "too long"})
        assert json.loads(r.content[0].text) == {"after": "too long"}

        def counted():
            t = scrape(port)
            done = series(t, "gemba_tool_requests_total", tool="echo", upstream="crashy")
            return t if done >= 3 else None
        text = wait_for(counted)
        assert text, scrape(port)
        assert series(text, "gemba_tool_requests_total", tool="echo", outcome="internal", upstream="crashy") == 1
        assert series(text, "gemba_tool_requests_total", tool="echo", outcome="invalid_params", upstream="crashy") == 1
        assert series(text, "gemba_tool_requests_total", tool="echo", outcome="ok", upstream="crashy") == 1
        assert series(text, "gemba_proxy_upstream_dropped_messages_total", upstream="crashy") == 1
        assert series(text, "gemba_proxy_upstream_exits_total", upstream="crashy") == 0

    # The server saw the two calls that fit, both in one process (the first process the log shows
    # is the proxy's probe of the server's tools).
    calls = [l.split()[0] for l in log.read_text().splitlines() if l.endswith(" tools/call")]
    assert len(calls) == 2 and len(set(calls)) == 1, log.read_text()


def test_an_upstream_command_that_cannot_run_stops_the_proxy_with_a_clear_error(tmp_path):
    """A server that dies is restarted; a command that cannot run at all (no such program, or a
    file that is not executable) is a mistake no restart mends: the proxy says so and exits,
    instead of leaving the client's handshake waiting."""
    not_executable = tmp_path / "server.sh"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    for command, why in [(str(tmp_path / "no-such-server"), "No such file"),
                         (str(not_executable), "Permission denied")]:
        t = time.monotonic()
        out = subprocess.run([BIN, *proxy_args([command, "--flag"], tmp_path / "state")], input="",
                             capture_output=True, text=True, timeout=60, env={**os.environ, "GEMBA_LOG": "warn"})
        assert out.returncode != 0, out
        assert f"cannot start the upstream `{command} --flag`" in out.stderr, out.stderr
        assert why in out.stderr and "check the upstream's command after `--`" in out.stderr, out.stderr
        assert time.monotonic() - t < 20


async def test_a_server_that_keeps_dying_is_restarted_with_growing_delays(scripts, tmp_path):
    """A server that dies at once every time: the proxy keeps retrying with backoff (not in a
    tight loop), reports itself not ready, and answers held requests with an error in time."""
    dead = tmp_path / "dead.py"
    dead.write_text("import os, sys\nopen(os.environ['DEAD_LOG'], 'a').write('start\\n')\nsys.exit(7)\n")
    log = tmp_path / "dead.log"
    port = free_port()
    args = proxy_args([PY, str(dead)], tmp_path / "state", port, extra=["--name", "dead", "--hold-ms", "1500"])
    with stdio_process([BIN, *args], {"DEAD_LOG": str(log)}) as p:
        def ready_status():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status
            except urllib.error.HTTPError as e:
                return e.code
            except OSError:
                return None
        assert wait_for(lambda: ready_status() == 503, timeout=30)
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
        p.stdin.write(json.dumps(init) + "\n")
        p.stdin.flush()
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x", "arguments": {}}}
        p.stdin.write(json.dumps(call) + "\n")
        p.stdin.flush()
        # The call is answered once it has been held --hold-ms (the handshake waits on).
        answers = {}

        def read_until_the_call_is_answered():
            for line in p.stdout:
                m = json.loads(line)
                answers[m.get("id")] = m
                if m.get("id") == 2:
                    return
        reader = threading.Thread(target=read_until_the_call_is_answered, daemon=True)
        reader.start()
        reader.join(30)
        assert 2 in answers and "error" in answers[2], answers
        assert "down" in answers[2]["error"]["message"] and "exited with status 7" in answers[2]["error"]["message"]
        time.sleep(3)
        text = scrape(port)
        exits = series(text, "gemba_proxy_upstream_exits_total", upstream="dead")
        assert series(text, "gemba_proxy_upstream_up", upstream="dead") == 0
        # Delays of 0.25, 0.5, 1, 2, 4 s …: a few starts in these seconds, not hundreds.
        # (one start is the proxy's probe of the tools, which exits too)
        starts = len(log.read_text().splitlines())
        assert 3 <= starts <= 12, starts
        assert 1 <= exits <= starts, (exits, starts)


# ---------------------------------------------------------------------------------------------
# Streamable HTTP: the proxy serving HTTP clients, and an upstream over HTTP.

@contextlib.contextmanager
def proxy_http(upstream_args, state_dir, admin_port, env=None, log=None):
    """`gemba proxy --http 127.0.0.1:0 …`; yields its MCP URL. Its stderr lines are appended to
    `log` when one is given."""
    args = [BIN, "proxy", "--http", "127.0.0.1:0", "--state-dir", str(state_dir),
            "--admin", f"127.0.0.1:{admin_port}", *upstream_args]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "GEMBA_LOG": "warn", **(env or {})})
    url = None
    log = [] if log is None else log
    try:
        for line in p.stderr:
            log.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "gemba proxy did not report its address"
        threading.Thread(target=lambda: [log.append(line) for line in p.stderr], daemon=True).start()
        yield url
    finally:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


async def test_http_clients_get_a_session_each_in_front_of_a_stdio_server(tmp_path):
    need_everything()
    port = free_port()
    with proxy_http(["--name", "everything", "--", *everything_cmd()], tmp_path / "state", port) as url:
        progress = []

        async def on_progress(p, total, message):
            progress.append(p)
        async with Client(url, mode="legacy", read_timeout_seconds=TIMEOUT, cache=None) as a, \
                Client(url, mode="legacy", read_timeout_seconds=TIMEOUT, cache=None) as b:
            ra = await a.call_tool("echo", {"message": "from a"})
            rb = await b.call_tool("echo", {"message": "from b"})
            assert "from a" in ra.content[0].text and "from b" in rb.content[0].text
            r = await a.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 2},
                                  progress_callback=on_progress)
            assert not r.is_error and progress
            text = scrape(port)
            assert series(text, "gemba_proxy_upstream_connections", upstream="everything") == 2
            g = await b.get_prompt("simple-prompt", {})
            assert g.messages
        text = wait_for(lambda: (t := scrape(port)) and series(
            t, "gemba_tool_requests_total", tool="echo", upstream="everything") == 2 and t)
        assert text, scrape(port)
        assert series(text, "gemba_tool_requests_total", tool="echo", outcome="ok") == 2
        assert series(text, "gemba_tool_requests_total", tool="prompts/get", outcome="ok") == 1
        assert series(text, "mcp_server_operation_duration_seconds_count", mcp_method_name="tools/call",
                      gen_ai_tool_name="echo", network_transport="tcp") == 2


async def test_http_front_answers_the_same_as_direct(tmp_path):
    """The reference server's HTTP transport direct, and the proxy's HTTP front in front of its
    stdio transport: the same answers to the same session."""
    need_everything()
    up_port = free_port()
    node = subprocess.Popen(["node", str(EVERYTHING), "streamableHttp"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PORT": str(up_port)})
    try:
        for line in node.stderr:
            if "listening" in line.lower():
                break
        threading.Thread(target=lambda: [None for _ in node.stderr], daemon=True).start()
        want = await everything_session(
            lambda **kw: Client(f"http://127.0.0.1:{up_port}/mcp", mode="legacy", read_timeout_seconds=TIMEOUT,
                                cache=None, **kw), [])
        with proxy_http(["--", *everything_cmd()], tmp_path / "state", free_port()) as url:
            got = await everything_session(
                lambda **kw: Client(url, mode="legacy", read_timeout_seconds=TIMEOUT, cache=None, **kw), [])
        assert got == want
    finally:
        node.terminate()
        node.wait(timeout=15)


def listening_on(port) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def proxy_to_url(url, name, state_dir, admin_port) -> StdioServerParameters:
    """`gemba proxy --upstream URL` over stdio, as an SDK client starts it."""
    return StdioServerParameters(
        command=BIN, args=["proxy", "--upstream", url, "--name", name, "--state-dir", str(state_dir),
                           "--admin", f"127.0.0.1:{admin_port}"],
        env={"GEMBA_LOG": "warn", "PATH": os.environ["PATH"]})


async def test_an_http_upstream_is_proxied_to_a_stdio_client(tmp_path):
    need_everything()
    up_port = free_port()
    node = subprocess.Popen(["node", str(EVERYTHING), "streamableHttp"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PORT": str(up_port)})
    try:
        for line in node.stderr:
            if "listening" in line.lower():
                break
        threading.Thread(target=lambda: [None for _ in node.stderr], daemon=True).start()
        port = free_port()
        params = proxy_to_url(f"http://127.0.0.1:{up_port}/mcp", "remote", tmp_path / "state", port)
        progress = []

        async def on_progress(p, total, message):
            progress.append(p)
        async with Client(params, mode="legacy", read_timeout_seconds=TIMEOUT, cache=None) as c:
            tools = sorted(t.name for t in (await c.list_tools()).tools)
            assert "echo" in tools and "get-sum" in tools
            for i in range(3):
                r = await c.call_tool("get-sum", {"a": i, "b": 10})
                assert str(i + 10) in r.content[0].text
            r = await c.call_tool("trigger-long-running-operation", {"duration": 1, "steps": 2},
                                  progress_callback=on_progress)
            assert not r.is_error and progress
            rr = await c.read_resource((await c.list_resources()).resources[0].uri)
            assert rr.contents
            text = wait_for(lambda: (t := scrape(port)) and series(
                t, "gemba_tool_requests_total", tool="get-sum", upstream="remote") == 3 and t)
            assert text, scrape(port)
            assert series(text, "gemba_tool_requests_total", tool="get-sum", outcome="ok", upstream="remote") == 3
            assert series(text, "gemba_proxy_upstream_up", upstream="remote") == 1
    finally:
        node.terminate()
        node.wait(timeout=15)


# ---------------------------------------------------------------------------------------------
# A/B between two upstreams: the experiment engine chooses per session.

AB_EXPERIMENT = '''
[[experiment]]
name = "weather-v2"
kind = "ab"
unit = "session"
primary = { metric = "latency", mde = 0.10 }
[[experiment.variant]]
name = "a"
share = 0.5
[[experiment.variant]]
name = "b"
share = 0.5
knobs = { upstream = "b" }
'''


async def test_ab_between_two_upstreams_splits_sessions_and_measures_each(scripts, tmp_path):
    (scripts / "weather_b.py").write_text(FASTMCP_SERVER.replace('"WEATHER_VERSION", "a"', '"WEATHER_VERSION", "b"'))
    exp = tmp_path / "ab.toml"
    exp.write_text(AB_EXPERIMENT)
    port = free_port()
    b_cmd = f"{PY} {scripts / 'weather_b.py'}"
    args = ["--name", "v1", "--upstream-b", b_cmd, "--name-b", "v2", "--experiments", str(exp),
            "--", PY, str(scripts / "weather_server.py")]
    seen = {"a": 0, "b": 0}
    with proxy_http(args, tmp_path / "state", port) as url:
        for _ in range(10):
            async with Client(url, mode="legacy", read_timeout_seconds=TIMEOUT, cache=None) as c:
                v = (await c.call_tool("version", {})).content[0].text
                seen[v] += 1
                # The session stays on its upstream.
                assert (await c.call_tool("version", {})).content[0].text == v
        text = wait_for(lambda: (t := scrape(port)) and series(t, "gemba_tool_requests_total", tool="version")
                        == 20 and t)
        assert text, scrape(port)
    # 10 sessions at 50/50: both sides serve (all ten on one side: p = 0.002).
    assert seen["a"] >= 1 and seen["b"] >= 1, seen
    assert series(text, "gemba_tool_requests_total", tool="version", outcome="ok", upstream="v1") == 2 * seen["a"]
    assert series(text, "gemba_tool_requests_total", tool="version", outcome="ok", upstream="v2") == 2 * seen["b"]
    assert any(line.startswith("gemba_experiment_") and 'experiment="weather-v2"' in line
               for line in text.splitlines()), "the experiment's figures are exported"


# ---------------------------------------------------------------------------------------------
# The MCP conformance suite: Gemba direct, and Gemba behind the proxy, give the same results.

def conformance_suite():
    from test_conformance import TOOLS, node_22
    node = node_22()
    cli = os.environ.get("GEMBA_CONFORMANCE_CLI",
                         str(TOOLS / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"))
    if node is None or not pathlib.Path(cli).exists():
        pytest.skip("the MCP conformance suite and Node >= 22 are not installed; run scripts/test.sh")
    return node, cli


def conformance_checks(node, cli, url, scenario, out):
    run = subprocess.run([node, cli, "server", "--url", url, "--scenario", scenario, "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    checks = [c for f in out.rglob("checks.json") for c in json.loads(f.read_text())]
    return run.returncode, sorted((c.get("id") or c.get("name") or json.dumps(c, sort_keys=True), c["status"])
                                  for c in checks)


@pytest.mark.parametrize("upstream_kind", ["stdio", "http"])
def test_the_conformance_suite_gives_the_same_results_through_the_proxy(upstream_kind, workspace, tmp_path):
    """The suite against `gemba serve` over HTTP, direct and through the proxy's HTTP front, with
    the proxy's upstream `gemba serve --stdio` (a command) or the direct server itself (a URL)."""
    from conftest import http_server
    from test_conformance import SCENARIOS
    node, cli = conformance_suite()
    with contextlib.ExitStack() as stack:
        direct_srv = stack.enter_context(http_server(workspace))
        if upstream_kind == "http":
            upstream = ["--upstream", direct_srv.url]
        else:
            upstream = ["--", BIN, "serve", "--stdio", "--workspace", str(workspace),
                        "--state-dir", str(tmp_path / "up")]
        url = stack.enter_context(proxy_http(upstream, tmp_path / "px", free_port()))
        for scenario in SCENARIOS:
            want = conformance_checks(node, cli, direct_srv.url, scenario, tmp_path / "d" / scenario)
            got = conformance_checks(node, cli, url, scenario, tmp_path / "p" / scenario)
            assert want[1], f"{scenario}: no checks ran"
            assert got == want, f"{scenario}: direct {want}, through the proxy {got}"


# ---------------------------------------------------------------------------------------------
# A canary that goes wrong: B answers every tool call with a server error, its guard breaks, the
# engine rolls B back, every new session goes to A, and a restarted proxy remembers.

TWO_FACED_SERVER = textwrap.dedent('''
    """Raw JSON-RPC over stdio; `a` answers its tool, `b` fails every call (a broken build)."""
    import json, sys
    side = sys.argv[1]
    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
    for line in sys.stdin:
        m = json.loads(line)
        method, mid = m.get("method"), m.get("id")
        if mid is None or method is None:
            continue
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
                "serverInfo": {"name": "two-faced", "version": side}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [
                {"name": "which", "inputSchema": {"type": "object"}}]}})
        elif method == "tools/call" and side == "b":
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32603, "message": "broken build"}})
        elif method == "tools/call":
            send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": side}]}})
        else:
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
''')

ROLLBACK_CANARY = '''
[[experiment]]
name = "v2-canary"
kind = "canary"
unit = "session"
[experiment.canary]
steps = [0.5, 1.0]
min_samples_per_step = 1000
[[experiment.guard]]
metric = "server_error_ratio"
max_worse = 0.01
detect = 0.05
gross = 3.0
gross_min_samples = 3
[[experiment.variant]]
name = "a"
[[experiment.variant]]
name = "b"
knobs = { upstream = "b" }
'''


@contextlib.contextmanager
def webhook_sink():
    """A local Alertmanager-style receiver; yields (url, bodies received)."""
    import http.server
    bodies = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/alerts", bodies
    finally:
        srv.shutdown()


async def which_side(url) -> str:
    """One session: three calls; `a`, or `b` when B's broken build answered."""
    async with Client(url, mode="legacy", read_timeout_seconds=TIMEOUT, cache=None) as c:
        sides = set()
        for _ in range(3):
            try:
                sides.add((await c.call_tool("which", {})).content[0].text)
            except Exception as e:  # the JSON-RPC error of B's broken build
                assert "broken build" in str(e), e
                sides.add("b")
        assert len(sides) == 1, f"a session stays on its upstream: {sides}"
        return sides.pop()


def experiments_json(port) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/experiments.json", timeout=10).read())


def experiment_state(port) -> dict:
    text = scrape(port)
    return {s: series(text, "gemba_experiment_state", experiment="v2-canary", state=s)
            for s in ("running", "rolled_back")}


async def test_a_canary_whose_guard_breaks_is_rolled_back_end_to_end(scripts, tmp_path):
    (scripts / "two_faced.py").write_text(TWO_FACED_SERVER)
    exp = tmp_path / "canary.toml"
    exp.write_text(ROLLBACK_CANARY)
    state = tmp_path / "state"
    script = scripts / "two_faced.py"
    with webhook_sink() as (hook, alerts):
        args = ["--name", "v1", "--upstream-b", f"{PY} {script} b", "--name-b", "v2", "--experiments", str(exp),
                "--alert-webhook", hook, "--", PY, str(script), "a"]
        port = free_port()
        with proxy_http(args, state, port) as url:
            assert experiment_state(port)["running"] == 1
            status = experiments_json(port)
            assert [x["name"] for x in status["experiments"]] == ["v2-canary"], status
            assert status["experiments"][0]["state"] == "running", status
            assert [(u["upstream"], u["name"]) for u in status["upstreams"]] == [("a", "v1"), ("b", "v2")], status
            before = {"a": 0, "b": 0}
            # Sessions split (50 %) until B has served a few.
            for _ in range(20):
                before[await which_side(url)] += 1
                if before["b"] >= 2 and before["a"] >= 1:
                    break
            assert before["a"] >= 1 and before["b"] >= 2, before
            text = scrape(port)
            assert series(text, "gemba_tool_requests_total", tool="which", upstream="v2", outcome="ok") == 0
            assert series(text, "gemba_tool_requests_total", tool="which", upstream="v2") == 3 * before["b"]
            # The evaluator (every 10 s) sees B's server errors and rolls it back.
            assert wait_for(lambda: experiment_state(port)["rolled_back"] == 1, timeout=40), scrape(port)
            assert experiment_state(port)["running"] == 0
            # /experiments.json on the admin listener tells the same story: rolled back, B's
            # guard broken, and how many sessions each upstream was given.
            status = experiments_json(port)
            canary = status["experiments"][0]
            assert canary["state"] == "rolled_back", canary
            assert any(t["role"] == "guard" and t["status"] == "broken" and t["variant"] == "b"
                       for t in canary["tests"]), canary
            sessions = {u["name"]: u["sessions"] for u in status["upstreams"]}
            assert sessions == {"v1": before["a"], "v2": before["b"]}, (sessions, before)
            after = [await which_side(url) for _ in range(8)]
            assert after == ["a"] * 8, after
            assert {u["name"]: u["sessions"] for u in experiments_json(port)["upstreams"]} == \
                {"v1": before["a"] + 8, "v2": before["b"]}
            assert wait_for(lambda: any("ExperimentRolledBack" in b for b in alerts), timeout=20), alerts
            assert any("v2-canary" in b for b in alerts if "ExperimentRolledBack" in b)
        # Restarted on the same state directory: still rolled back, every session on A.
        port = free_port()
        with proxy_http(args, state, port) as url:
            assert experiment_state(port) == {"running": 0, "rolled_back": 1}
            assert experiments_json(port)["experiments"][0]["state"] == "rolled_back"
            again = [await which_side(url) for _ in range(6)]
            assert again == ["a"] * 6, again


# ---------------------------------------------------------------------------------------------
# The 2026 era over the proxy's HTTP front: stateless requests (no initialize, no session; the
# protocol version in `_meta`) through to a stdio upstream and to an HTTP upstream.

MODERN = "2026-07-28"


@pytest.mark.parametrize("upstream_kind", ["stdio", "http"])
async def test_stateless_2026_requests_pass_through_the_http_front(upstream_kind, workspace, tmp_path):
    import httpx2
    from conftest import http_server, ids, ok
    port = free_port()
    with contextlib.ExitStack() as stack:
        if upstream_kind == "stdio":
            up = ["--name", "sheets", "--", BIN, "serve", "--stdio", "--workspace", str(workspace),
                  "--state-dir", str(tmp_path / "up")]
        else:
            srv = stack.enter_context(http_server(workspace))
            up = ["--name", "sheets", "--upstream", srv.url]
        url = stack.enter_context(proxy_http(up, tmp_path / "px", port))
        async with Client(url, mode="auto", read_timeout_seconds=TIMEOUT, cache=None) as c:
            assert c.protocol_version == MODERN
            book = await ids(c)
            t = await ok(c, "read_table", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales", "limit": 2})
            assert t["returned"] == 2
        # The plainest 2026-era client: one POST, no initialize before it, no session after it.
        body = {"jsonrpc": "2.0", "id": "plain-1", "method": "tools/call",
                "params": {"name": "list_workbooks", "arguments": {},
                           "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                                     "io.modelcontextprotocol/clientCapabilities": {},
                                     "io.modelcontextprotocol/clientInfo": {"name": "plain", "version": "1"}}}}
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                   "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "list_workbooks"}
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            for _ in range(2):
                r = await http.post(url, json=body, headers=headers)
                assert r.status_code == 200, r.text
                assert "mcp-session-id" not in {k.lower() for k in r.headers}
                text = r.text
                if "text/event-stream" in r.headers.get("content-type", ""):
                    text = next(line[5:] for line in text.splitlines()
                                if line.startswith("data:") and '"plain-1"' in line)
                answer = json.loads(text)
                assert answer["id"] == "plain-1", answer
                assert "sales.xlsx" in json.dumps(answer.get("result")), answer
        metrics = wait_for(lambda: (m := scrape(port)) and series(
            m, "gemba_tool_requests_total", tool="list_workbooks", upstream="sheets") >= 3 and m)
        assert metrics, scrape(port)
        assert series(metrics, "gemba_tool_requests_total", tool="read_table", upstream="sheets", outcome="ok") == 1
        assert series(metrics, "mcp_server_operation_duration_seconds_count", mcp_method_name="tools/call",
                      gen_ai_tool_name="list_workbooks", mcp_protocol_version=MODERN) >= 3


# ---------------------------------------------------------------------------------------------
# Cancellation end to end: the client abandons a call in flight; the upstream (FastMCP) is told
# for the request it is running (the id it saw, which the proxy chose itself for stateless
# 2026-era requests), says so, and the proxy counts the call as cancelled. Progress on the way
# reaches the client under its own token.

SLOW_SERVER = textwrap.dedent('''
    """FastMCP: `slow` reports progress until it is cancelled (at most 30 s). Each call and each
    cancellation is written to $CANCEL_LOG with the request id this server saw."""
    import json, os
    import anyio
    from mcp.server.mcpserver import MCPServer, Context

    mcp = MCPServer("slow")
    log = open(os.environ["CANCEL_LOG"], "a", buffering=1)

    @mcp.tool()
    async def slow(ctx: Context) -> str:
        """Works until cancelled, reporting progress."""
        rid = json.dumps(ctx.request_id)
        log.write(f"call {rid}\\n")
        try:
            for n in range(600):
                await ctx.report_progress(n + 1, 600)
                await anyio.sleep(0.05)
        except anyio.get_cancelled_exc_class():
            log.write(f"cancelled {rid}\\n")
            with anyio.CancelScope(shield=True):
                await ctx.info(f"stopped {rid}")
            raise
        return "done"

    @mcp.tool()
    def echo(text: str) -> str:
        """Echo."""
        return text

    if __name__ == "__main__":
        import warnings
        warnings.simplefilter("ignore")
        mcp.run()
''')


async def cancel_a_slow_call(c, meanwhile=None) -> int:
    """Start `slow`, wait for its first progress, run `meanwhile()` if given, abandon the call;
    returns the progress seen."""
    progress = []
    first = anyio.Event()

    async def on_progress(p, total, message):
        progress.append(p)
        first.set()
    async with anyio.create_task_group() as tg:
        async def call():
            await c.call_tool("slow", {}, progress_callback=on_progress)
            raise AssertionError("slow finished: it was not cancelled")
        tg.start_soon(call)
        with anyio.fail_after(TIMEOUT):
            await first.wait()
        if meanwhile is not None:
            await meanwhile(progress)
        tg.cancel_scope.cancel()
    return len(progress)


async def until(pred, timeout=20.0):
    """`wait_for` that lets the client's own tasks run meanwhile (its cancel goes out on one)."""
    with anyio.move_on_after(timeout):
        while not (v := pred()):
            await anyio.sleep(0.1)
        return v
    return pred()


def cancel_log(path) -> dict:
    """{"call": [ids], "cancelled": [ids]} from the slow server's log."""
    out = {"call": [], "cancelled": []}
    if path.exists():
        for line in path.read_text().splitlines():
            kind, rid = line.split(" ", 1)
            out[kind].append(json.loads(rid))
    return out


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_cancelled_call_is_cancelled_upstream_over_stdio(mode, scripts, tmp_path):
    (scripts / "slow_server.py").write_text(SLOW_SERVER)
    log = tmp_path / "cancel.log"
    port = free_port()
    logs = []

    async def on_log(params):
        logs.append(params.data)
    upstream = [PY, str(scripts / "slow_server.py")]
    async with proxied(upstream, tmp_path / "state", port, env={"CANCEL_LOG": str(log)}, mode=mode,
                       logging_callback=on_log) as c:
        assert await cancel_a_slow_call(c) >= 1
        seen = await until(lambda: (x := cancel_log(log))["cancelled"] and x)
        assert seen, cancel_log(log)
        # The upstream was told to cancel the very request it was running, once.
        assert len(seen["call"]) == 1 and seen["cancelled"] == seen["call"], seen
        # The session goes on.
        assert (await c.call_tool("echo", {"text": "still here"})).content[0].text == "still here"
        if mode == "legacy":
            # The upstream's reaction (a log message) came back through the proxy.
            assert await until(lambda: any("stopped" in str(x) for x in logs), timeout=TIMEOUT), logs
            assert f"stopped {json.dumps(seen['call'][0])}" in logs
        text = wait_for(lambda: (t := scrape(port)) and series(
            t, "gemba_tool_requests_total", tool="slow", outcome="cancelled") == 1 and t)
        assert text, scrape(port)
        assert series(text, "gemba_tool_requests_total", tool="slow", upstream="slow_server") == 1
        assert series(text, "gemba_tool_requests_total", tool="echo", outcome="ok") == 1


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_cancelled_call_is_cancelled_upstream_over_http(mode, scripts, tmp_path):
    """legacy: the client POSTs `notifications/cancelled` in its session. auto (2026-07-28): the
    client closes the request's stream; the proxy, which gave the request an id of its own on
    the upstream it shares between stateless requests, cancels it there under that id."""
    (scripts / "slow_server.py").write_text(SLOW_SERVER)
    log = tmp_path / "cancel.log"
    port = free_port()
    with proxy_http(["--name", "slow", "--", PY, str(scripts / "slow_server.py")], tmp_path / "state", port,
                    env={"CANCEL_LOG": str(log)}) as url:
        async def forge_a_cancel(progress):
            """Another stateless caller names the running request's upstream id: not forwarded."""
            import httpx2
            up_id = cancel_log(log)["call"][0]
            body = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": up_id, "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}}
            headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                       "MCP-Protocol-Version": MODERN, "Mcp-Method": "notifications/cancelled"}
            async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
                r = await http.post(url, json=body, headers=headers)
                assert r.status_code == 202, r.text
            before = len(progress)
            assert await until(lambda: len(progress) >= before + 5), "the call stopped reporting progress"
            assert cancel_log(log)["cancelled"] == []

        async with Client(url, mode=mode, read_timeout_seconds=TIMEOUT, cache=None) as c:
            assert (c.protocol_version == MODERN) == (mode == "auto")
            assert await cancel_a_slow_call(c, forge_a_cancel if mode == "auto" else None) >= 1
            seen = await until(lambda: (x := cancel_log(log))["cancelled"] and x)
            assert seen, cancel_log(log)
            assert len(seen["call"]) == 1 and seen["cancelled"] == seen["call"], seen
            if mode == "auto":
                # The id the upstream saw is the proxy's, not the client's.
                assert str(seen["call"][0]).startswith("gp-"), seen
            assert (await c.call_tool("echo", {"text": "still here"})).content[0].text == "still here"
        text = wait_for(lambda: (t := scrape(port)) and series(
            t, "gemba_tool_requests_total", tool="slow", outcome="cancelled", upstream="slow") == 1 and t)
        assert text, scrape(port)
        assert series(text, "gemba_tool_requests_total", tool="slow") == 1


# ---------------------------------------------------------------------------------------------
# An HTTP upstream that demands a bearer token (FastMCP over streamable HTTP behind a check).

VAULT_SERVER = textwrap.dedent('''
    """FastMCP over streamable HTTP behind a bearer-token check."""
    import os, sys, warnings
    import uvicorn
    from mcp.server.mcpserver import Context, MCPServer

    warnings.simplefilter("ignore")
    mcp = MCPServer("vault")

    @mcp.tool()
    def secret(name: str) -> str:
        """A secret, for callers with the token."""
        return f"the {name} is safe"

    @mcp.tool()
    def big(n: int) -> str:
        """n bytes of text."""
        return "x" * n

    @mcp.tool()
    async def chatty(n: int, ctx: Context) -> str:
        """Logs n bytes of text to the client before it answers."""
        await ctx.info("y" * n)
        return "said it"

    app = mcp.streamable_http_app()
    expected = ("Bearer " + os.environ["VAULT_TOKEN"]).encode()

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer error="invalid_token"')]})
            await send({"type": "http.response.body",
                        "body": b'{"error": "invalid_token", "error_description": "missing or wrong bearer token"}'})
            return
        await app(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
''')


@contextlib.contextmanager
def vault_server(scripts, token):
    (scripts / "vault.py").write_text(VAULT_SERVER)
    port = free_port()
    p = subprocess.Popen([PY, str(scripts / "vault.py"), str(port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, "VAULT_TOKEN": token})

    try:
        assert wait_for(lambda: listening_on(port), timeout=30), "the vault server did not start"
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        p.terminate()
        p.wait(timeout=15)


def messages_of(e: BaseException) -> str:
    """Every message in an exception and the groups and causes it holds."""
    parts = [str(e)]
    for sub in getattr(e, "exceptions", ()):
        parts.append(messages_of(sub))
    if e.__cause__ is not None:
        parts.append(messages_of(e.__cause__))
    return " | ".join(parts)


async def test_an_upstream_that_demands_a_token(scripts, tmp_path):
    token = "tok-" + os.urandom(12).hex()
    wrong = "tok-" + os.urandom(12).hex()
    with vault_server(scripts, token) as up:
        logs, scraped = [], []
        # The right token, from the environment: served and measured.
        port = free_port()
        with proxy_http(["--name", "vault", "--upstream", up], tmp_path / "right", port,
                        env={"GEMBA_UPSTREAM_TOKEN": token, "GEMBA_LOG": "debug"}, log=logs) as url:
            async with Client(url, mode="legacy", read_timeout_seconds=TIMEOUT, cache=None) as c:
                r = await c.call_tool("secret", {"name": "vault"})
                assert r.content[0].text == "the vault is safe"
            text = wait_for(lambda: (t := scrape(port)) and series(
                t, "gemba_tool_requests_total", tool="secret", outcome="ok", upstream="vault") == 1 and t)
            assert text, scrape(port)
            assert series(text, "gemba_proxy_upstream_unauthorized_total", upstream="vault") == 0
            scraped.append(text)
        # A wrong token (the flag) and none at all: the client is told what the upstream said
        # and what to do; the refusals are counted.
        for name, extra, env, hint in [
            ("wrong", ["--upstream-token", wrong], {}, "refused the token"),
            ("missing", [], {"GEMBA_UPSTREAM_TOKEN": ""}, "sent no token"),
        ]:
            port = free_port()
            with proxy_http(["--name", "vault", "--upstream", up, *extra], tmp_path / name, port,
                            env={"GEMBA_LOG": "debug", **env}, log=logs) as url:
                with pytest.raises(BaseException) as failed:
                    async with Client(url, mode="legacy", read_timeout_seconds=TIMEOUT, cache=None) as c:
                        await c.call_tool("secret", {"name": "vault"})
                said = messages_of(failed.value)
                assert "401" in said and hint in said, said
                assert "--upstream-token or GEMBA_UPSTREAM_TOKEN" in said, said
                assert "invalid_token" in said, said  # the upstream's own words
                text = wait_for(lambda: (t := scrape(port)) and series(
                    t, "gemba_proxy_upstream_unauthorized_total", upstream="vault") >= 1 and t)
                assert text, scrape(port)
                assert series(text, "gemba_proxy_failed_requests_total", upstream="vault") >= 1
                assert series(text, "gemba_tool_requests_total", tool="initialize", outcome="internal",
                              upstream="vault") >= 1
                scraped.append(text)
                scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics.json", timeout=10)
                               .read().decode())
    # No token anywhere: not in the logs (at debug level), the metrics or the state directory.
    everything = "".join(logs) + "".join(scraped)
    assert "401" in everything  # the refusals were logged
    for t in (token, wrong):
        assert t not in everything
        for f in tmp_path.rglob("*"):
            if f.is_file():
                assert t.encode() not in f.read_bytes(), f


async def test_an_http_upstream_answer_over_the_size_limit_fails_its_request_at_once(scripts, tmp_path):
    """--max-message-mb bounds an HTTP upstream's answers too (an SSE event here): one longer
    fails its request at once with an error that says so, and the next call is served. A long
    notification on a request's stream is dropped and the stream read on: its request is
    answered."""
    token = "tok-" + os.urandom(12).hex()
    with vault_server(scripts, token) as up:
        port = free_port()
        params = StdioServerParameters(
            command=BIN, args=["proxy", "--upstream", up, "--name", "vault", "--max-message-mb", "1",
                               "--state-dir", str(tmp_path / "state"), "--admin", f"127.0.0.1:{port}"],
            env={"GEMBA_LOG": "warn", "PATH": os.environ["PATH"], "GEMBA_UPSTREAM_TOKEN": token})
        async with Client(params, mode="legacy", read_timeout_seconds=TIMEOUT, cache=None) as c:
            with anyio.fail_after(30):
                with pytest.raises(Exception) as e:
                    await c.call_tool("big", {"n": 2_000_000})
            said = str(e.value)
            # (the SDK writes the text twice: as content and as structured content)
            assert re.search(r"the upstream MCP server \(vault\) answered with [34]\.\d MiB", said), said
            assert "more than gemba proxy passes (1.0 MiB)" in said and "--max-message-mb" in said, said
            r = await c.call_tool("big", {"n": 10})
            assert r.content[0].text == "x" * 10
            with anyio.fail_after(30):
                r = await c.call_tool("chatty", {"n": 2_000_000})
            assert not r.is_error and r.content[0].text == "said it", r
            text = wait_for(lambda: (t := scrape(port)) and series(
                t, "gemba_tool_requests_total", tool="chatty", upstream="vault") == 1 and t)
            assert text, scrape(port)
            assert series(text, "gemba_tool_requests_total", tool="big", outcome="internal", upstream="vault") == 1
            assert series(text, "gemba_tool_requests_total", tool="big", outcome="ok", upstream="vault") == 1
            assert series(text, "gemba_tool_requests_total", tool="chatty", outcome="ok", upstream="vault") == 1
            assert series(text, "gemba_proxy_upstream_dropped_messages_total", upstream="vault") == 2
            assert series(text, "gemba_proxy_failed_requests_total", upstream="vault") == 1


POLLED_SERVER = textwrap.dedent('''
    """FastMCP over streamable HTTP with an event store: it primes each response stream, and a
    long call closes its stream on purpose, for the client to resume it (Last-Event-ID)."""
    import sys, warnings
    import anyio, uvicorn
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.streamable_http import EventMessage, EventStore

    warnings.simplefilter("ignore")

    class Store(EventStore):
        def __init__(self):
            self.events = []

        async def store_event(self, stream_id, message):
            self.events.append((str(len(self.events) + 1), stream_id, message))
            return self.events[-1][0]

        async def replay_events_after(self, last_event_id, send_callback):
            at = next((i for i, e in enumerate(self.events) if e[0] == last_event_id), None)
            if at is None:
                return None
            stream = self.events[at][1]
            for event_id, stream_id, message in self.events[at + 1:]:
                if stream_id == stream and message is not None:
                    await send_callback(EventMessage(message, event_id))
            return stream

    mcp = MCPServer("polled")

    @mcp.tool()
    async def patient(ctx: Context) -> str:
        """Closes its stream, works on, then answers."""
        await ctx.info("closing the stream; poll me")
        await ctx.close_sse_stream()
        await anyio.sleep(0.5)
        await ctx.info("still working")
        return "done after a poll"

    @mcp.tool()
    async def hello(ctx: Context) -> str:
        """A log message on the session's own stream (related to no request)."""
        await ctx.session.send_log_message("info", "hello on the session stream")
        return "said hello"

    @mcp.tool()
    async def flap(ctx: Context) -> str:
        """Closes the session's own stream, and logs on it while it is down."""
        await ctx.close_standalone_sse_stream()
        await anyio.sleep(0.1)
        await ctx.session.send_log_message("info", "sent while the session stream was down")
        return "flapped"

    app = mcp.streamable_http_app(event_store=Store(), retry_interval=100)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
''')


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_stream_the_upstream_closes_to_be_polled_is_resumed(mode, scripts, tmp_path):
    """A server with an event store primes its response streams and may close one during a long
    call, for the client to resume it with Last-Event-ID: the proxy resumes it, and the call is
    answered (it used to fail at once: "closed the response stream without answering")."""
    (scripts / "polled.py").write_text(POLLED_SERVER)
    up_port = free_port()
    server = subprocess.Popen([PY, str(scripts / "polled.py"), str(up_port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    try:
        assert wait_for(lambda: listening_on(up_port), timeout=30), "the polled server did not start"
        port = free_port()
        params = proxy_to_url(f"http://127.0.0.1:{up_port}/mcp", "polled", tmp_path / "state", port)
        logged = []

        async def on_log(params):
            logged.append(params.data)
        async with Client(params, mode=mode, read_timeout_seconds=TIMEOUT, cache=None,
                          logging_callback=on_log) as c:
            with anyio.fail_after(30):
                r = await c.call_tool("patient", {})
            assert not r.is_error and r.content[0].text == "done after a poll", r
            if mode == "legacy":  # (a 2026-era client gets log messages only when it asks per request)
                assert "closing the stream; poll me" in logged and "still working" in logged, logged
                # The session's own stream, closed by the server and resumed by the proxy: what
                # the server sent while it was down arrives.
                for _ in range(50):
                    await c.call_tool("hello", {})
                    if "hello on the session stream" in logged:
                        break
                    await anyio.sleep(0.1)
                assert "hello on the session stream" in logged, logged
                assert (await c.call_tool("flap", {})).content[0].text == "flapped"
                with anyio.fail_after(20):
                    while "sent while the session stream was down" not in logged:
                        await anyio.sleep(0.05)
            text = wait_for(lambda: (t := scrape(port)) and series(
                t, "gemba_tool_requests_total", tool="patient", outcome="ok", upstream="polled") == 1 and t)
            assert text, scrape(port)
            assert series(text, "gemba_proxy_failed_requests_total", upstream="polled") == 0
    finally:
        server.terminate()
        server.wait(timeout=15)


def test_the_http_front_says_which_body_limit_a_request_passed(scripts, tmp_path):
    upstream = [PY, str(scripts / "weather_server.py")]
    with proxy_http(["--max-body-bytes", "65536", "--", *upstream], tmp_path / "state", free_port()) as url:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"pad": "x" * 100_000}})
        req = urllib.request.Request(url, data=body.encode(), headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        said = e.value.read().decode()
        assert e.value.code == 413 and "over 65536 bytes" in said and "--max-body-bytes" in said, said
