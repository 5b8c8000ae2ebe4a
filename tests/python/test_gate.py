"""The performance regression gate (`gemba bench --baseline`): it passes on the build that
wrote the baseline, and fails when a tool is made slower on purpose (GEMBA_TEST_BURN_TOOL adds
pointless CPU work to every call of one tool, a planted regression)."""

import json
import os
import shutil
import subprocess

import pytest

from conftest import BIN, ROOT

pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None, reason="the gate counts instructions with valgrind")


def gate(tmp_path, *extra, env=None):
    cmd = [BIN, "bench", "--dir", str(tmp_path / "bench"), "--baseline", str(tmp_path / "baseline.json"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_the_gate_passes_a_rerun_and_fails_a_planted_regression(tmp_path):
    figure = ["--figure", "read_table_100"]
    made = gate(tmp_path, "--update-baseline", *figure)
    assert made.returncode == 0, made.stdout + made.stderr
    base = json.loads((tmp_path / "baseline.json").read_text())
    per_call = base["figures"]["read_table_100"]
    assert per_call > 100_000, base

    rerun = gate(tmp_path, *figure)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "PASS performance gate" in rerun.stdout
    line = next(l for l in rerun.stdout.splitlines() if l.startswith("read_table_100"))
    change = float(line.split()[3].rstrip("%"))
    assert abs(change) < 3.0, f"a rerun of one build moved by {change}%: {line}"

    # About 4 instructions a round: 25 % more work on every read_table call.
    rounds = int(per_call * 0.25 / 4)
    slower = gate(tmp_path, *figure, env={"GEMBA_TEST_BURN_TOOL": f"read_table@{rounds}"})
    assert slower.returncode != 0, slower.stdout
    assert "REGRESSION" in slower.stdout and "FAIL performance gate" in slower.stdout, slower.stdout
    assert "regressed by more than 10 %" in slower.stderr

    # A burn on another tool leaves this figure alone.
    other = gate(tmp_path, *figure, env={"GEMBA_TEST_BURN_TOOL": f"find_value@{rounds}"})
    assert other.returncode == 0, other.stdout


def test_the_gate_names_its_figures_when_asked_for_an_unknown_one(tmp_path):
    (tmp_path / "baseline.json").write_text(json.dumps({"threshold": 0.1, "figures": {}}))
    r = gate(tmp_path, "--figure", "no_such_figure")
    assert r.returncode != 0
    assert "read_table_100" in r.stderr and "no_such_figure" in r.stderr, r.stderr


def test_the_committed_baseline_covers_every_gate_figure():
    base = json.loads((ROOT / "bench" / "baseline.json").read_text())
    assert base["threshold"] == 0.1
    for name in ["list_workbooks", "read_table_100", "find_value_miss", "cold_read_10k", "load_100k",
                 "fork_edit_100", "fork_recalc", "fork_save"]:
        assert base["figures"][name] > 0, name
