"""Shared fixtures: the real gemba binary, generated workspaces, stdio and HTTP connections
through the official MCP Python SDK."""

import contextlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.request

import pytest
from mcp import Client, StdioServerParameters

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("GEMBA_BIN", str(ROOT / "target" / "release" / "gemba"))
# The shared corpus: ../shared/corpus/files, or GEMBA_CORPUS=DIR; GEMBA_CORPUS=none leaves the
# corpus tests out on purpose (they are deselected, never passed without running).
_CORPUS_ENV = os.environ.get("GEMBA_CORPUS", "")
CORPUS = pathlib.Path(_CORPUS_ENV) if _CORPUS_ENV not in ("", "none") else ROOT.parent / "shared" / "corpus" / "files"
HAVE_CORPUS = _CORPUS_ENV != "none" and CORPUS.is_dir()
# GEMBA_STRICT=1 (scripts/test.sh sets it): a skipped test is a failure, so a broken install
# step fails the run instead of quietly skipping what it was meant to test.
STRICT = os.environ.get("GEMBA_STRICT") == "1"
TIMEOUT = 60

needs_corpus = pytest.mark.needs_corpus


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_corpus: reads the shared corpus (../shared/corpus/files)")


def pytest_collection_modifyitems(config, items):
    wanting = [i for i in items if i.get_closest_marker("needs_corpus")]
    if not wanting:
        return
    if HAVE_CORPUS:
        if not (CORPUS.parent / "MANIFEST.tsv").is_file():
            raise pytest.UsageError(f"the corpus at {CORPUS} has no ../MANIFEST.tsv beside it")
        return
    if _CORPUS_ENV == "none":
        config.hook.pytest_deselected(items=wanting)
        items[:] = [i for i in items if i not in wanting]
        config.issue_config_time_warning(
            pytest.PytestWarning(f"GEMBA_CORPUS=none: {len(wanting)} corpus tests deselected"), stacklevel=2)
        return
    for i in wanting:
        i.add_marker(pytest.mark.skip(reason=f"the shared corpus is not at {CORPUS} (set GEMBA_CORPUS=DIR, "
                                             "or GEMBA_CORPUS=none to leave the corpus tests out)"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if STRICT and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped under GEMBA_STRICT=1 (what it needs must be installed, not skipped): {reason}"

TOOL_NAMES = [
    "list_workbooks", "describe_workbook", "list_sheets", "workbook_summary", "named_ranges",
    "sheet_overview", "sheet_statistics", "table_profile", "read_table", "range_values",
    "sheet_page", "inspect_cells", "find_value", "find_formula", "formula_trace",
    "scan_volatiles", "sheet_formula_map",
    "create_fork", "list_forks", "edit_batch", "transform_batch", "structure_batch", "style_batch", "apply_staged_change",
    "discard_staged_change", "recalculate", "get_changeset", "verify_workbook", "checkpoint_fork",
    "list_checkpoints", "restore_checkpoint", "save_fork", "discard_fork",
]
READ_TOOLS = TOOL_NAMES[:17]
READ_FORK_TOOLS = ["list_forks", "get_changeset", "verify_workbook", "list_checkpoints"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def generate(kind: str, out: pathlib.Path) -> pathlib.Path:
    subprocess.run([BIN, "workloads", "--set", kind, "--out", str(out)], check=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> pathlib.Path:
    return generate("example", tmp_path_factory.mktemp("example"))


@pytest.fixture(scope="session")
def bench_workspace(tmp_path_factory) -> pathlib.Path:
    return generate("bench", tmp_path_factory.mktemp("bench"))


@pytest.fixture
def scratch_workspace(workspace, tmp_path) -> pathlib.Path:
    """A private copy of the example workspace that a test may change."""
    dst = tmp_path / "ws"
    shutil.copytree(workspace, dst)
    return dst


def stdio(workspace, mode="legacy", extra=(), state_dir=None, env=None):
    """A client over stdio to a fresh server. The state directory (request log) goes to a
    temporary directory unless one is given, so tests never write into shared inputs."""
    state_dir = state_dir or tempfile.mkdtemp(prefix="gemba-state-")
    params = StdioServerParameters(
        command=BIN,
        args=["serve", "--stdio", "--workspace", str(workspace), "--state-dir", str(state_dir), *extra],
        env={"GEMBA_LOG": "warn", **(env or {})},
    )
    return Client(params, mode=mode, read_timeout_seconds=TIMEOUT, cache=None)


class HttpServer:
    def __init__(self, workspace, extra=(), state_dir=None, env=None, admin=False):
        state_dir = state_dir or tempfile.mkdtemp(prefix="gemba-state-")
        args = [BIN, "serve", "--http", "127.0.0.1:0", "--workspace", str(workspace),
                "--state-dir", str(state_dir), *extra]
        if admin:
            args += ["--admin", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "GEMBA_LOG": "warn", **(env or {})},
        )
        self.url = None
        self.admin = None
        for line in self.proc.stderr:
            m = re.search(r"admin on (http://\S+)", line)
            if m:
                self.admin = m.group(1)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
            if self.url and (self.admin or not admin):
                break
        assert self.url, "gemba did not report its address"
        assert self.admin or not admin, "gemba did not report its admin address"
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def http_server(workspace, extra=(), **kw):
    s = HttpServer(workspace, extra, **kw)
    try:
        yield s
    finally:
        s.close()


async def ids(client) -> dict:
    r = await client.call_tool("list_workbooks", {})
    assert not r.is_error, r.content
    return {w["path"]: w["workbook_id"] for w in r.structured_content["workbooks"]}


async def ok(client, tool, args):
    """Call a tool and require success; the SDK has already validated the result against the
    tool's outputSchema (it raises otherwise)."""
    r = await client.call_tool(tool, args)
    assert not r.is_error, f"{tool} failed: {r.content[0].text if r.content else r}"
    assert r.structured_content is not None
    # The text content carries the same JSON, for clients that ignore structuredContent.
    import json
    assert json.loads(r.content[0].text) == r.structured_content
    return r.structured_content


async def err(client, tool, args) -> str:
    r = await client.call_tool(tool, args)
    assert r.is_error, f"{tool} should have failed: {r.structured_content}"
    return r.content[0].text


def metric(admin, name):
    """The first sample of `name` on the admin listener's /metrics (None when absent)."""
    text = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None
