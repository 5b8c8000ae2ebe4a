"""The generated SLO rules, checked and unit-tested with promtool: series are fed through the
rules and the burn-rate alerts must fire (or not) as the SRE Workbook windows say."""

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import BIN, STRICT

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(not PROMTOOL, reason="promtool is not installed (scripts/test.sh installs it)")


def rules(tmp_path):
    out = subprocess.run([BIN, "slo", "rules"], capture_output=True, text=True, check=True).stdout
    path = tmp_path / "rules.yml"
    path.write_text(out)
    return yaml.safe_load(out), path


def alert_of(rules_json, alert, slo):
    for g in rules_json["groups"]:
        for r in g["rules"]:
            if r.get("alert") == alert and r["labels"]["slo"] == slo:
                return r
    raise AssertionError(f"no {alert} for {slo}")


def expect(rules_json, alert, slo):
    r = alert_of(rules_json, alert, slo)
    return [{"exp_labels": r["labels"], "exp_annotations": r["annotations"]}]


def run_tests(tmp_path, tests):
    spec = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    path = tmp_path / "slo.test.yml"
    path.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    res = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_generated_rules_pass_promtool_check(tmp_path):
    parsed, path = rules(tmp_path)
    res = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
    text = path.read_text()
    # YAML as people keep it in git: block style, not JSON; thresholds as a person writes them.
    assert text.startswith("groups:\n- name: ") and "{\"groups\"" not in text
    import re
    long_floats = re.findall(r"\d+\.\d{10,}", text)
    assert not long_floats, long_floats[:5]
    assert "> 0.0144 and" in text, "14.4 x a 0.1 % budget, written as 0.0144"


def test_printing_commands_exit_quietly_when_the_reader_goes_away():
    for args in (["slo", "rules"], ["slo", "config"], ["slo", "dashboards"]):
        p = subprocess.Popen([BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.readline()
        p.stdout.close()  # like `| head -1`
        err = p.stderr.read().decode()
        assert p.wait(timeout=30) == 0, (args, err)
        assert "panicked" not in err and "Broken pipe" not in err, (args, err)


def requests(ok, internal, minutes=120):
    return [
        {"series": 'gemba_tool_requests_total{tool="read_table",outcome="ok"}', "values": f"0+{ok}x{minutes}"},
        {"series": 'gemba_tool_requests_total{tool="read_table",outcome="internal"}', "values": f"0+{internal}x{minutes}"},
    ]


def test_burn_rate_alerts_fire_as_the_windows_say(tmp_path):
    r, _ = rules(tmp_path)
    page = "GembaSLOBurnRatePage"
    avail = "read_table-availability"
    run_tests(tmp_path, [
        # 2 % errors on a 99.9 % SLO: burn 20 > 14.4 on 1h and 5m — pages.
        {"interval": "1m", "input_series": requests(980, 20),
         "alert_rule_test": [{"eval_time": "30m", "alertname": page, "exp_alerts": expect(r, page, avail)}]},
        # 0.5 % errors: burn 5 — no page.
        {"interval": "1m", "input_series": requests(995, 5),
         "alert_rule_test": [{"eval_time": "60m", "alertname": page, "exp_alerts": []}]},
        # A latency regression: nothing under read_table's 200 ms threshold — pages.
        {"interval": "1m", "input_series": [
            {"series": 'gemba_tool_requests_total{tool="read_table",outcome="ok"}', "values": "0+100x120"},
            {"series": 'gemba_tool_duration_seconds_bucket{tool="read_table",le="0.2"}', "values": "0+0x120"},
            {"series": 'gemba_tool_duration_seconds_count{tool="read_table"}', "values": "0+100x120"},
        ], "alert_rule_test": [{"eval_time": "30m", "alertname": page,
                                "exp_alerts": expect(r, page, "read_table-latency")}]},
        # Recovery: errors stop at 60m; once the short windows (5m, 30m) are clean the page resolves.
        {"interval": "1m", "input_series": [
            {"series": 'gemba_tool_requests_total{tool="read_table",outcome="ok"}', "values": "0+980x120"},
            {"series": 'gemba_tool_requests_total{tool="read_table",outcome="internal"}', "values": "0+20x60 1200+0x60"},
        ], "alert_rule_test": [
            {"eval_time": "55m", "alertname": page, "exp_alerts": expect(r, page, avail)},
            {"eval_time": "95m", "alertname": page, "exp_alerts": []},
        ]},
        # Low traffic: a handful of requests never page, whatever their errors.
        {"interval": "1m", "input_series": [
            {"series": 'gemba_tool_requests_total{tool="read_table",outcome="internal"}', "values": "0+0x30 1 1 1 1 1"},
        ], "alert_rule_test": [{"eval_time": "35m", "alertname": page, "exp_alerts": []}]},
    ])


def test_every_alert_links_to_a_written_runbook_section(tmp_path):
    import pathlib
    import re as _re
    rules_json, _ = rules(tmp_path)
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "runbooks.md").read_text()
    anchors = {m.group(1) for m in _re.finditer(r"^## (\S+)$", doc, _re.M)}
    alerts = [r for g in rules_json["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "GembaSLOBurnRatePage", "GembaSLOBurnRateTicket", "GembaSLOErrorBudgetLow", "GembaHighErrorRate",
        "GembaCircuitBreakerOpen", "GembaMemoryExhaustion", "GembaLowCacheHitRate", "GembaHighRetryRate",
        "GembaUsageSpike", "GembaLongRunningRecalc"}
    for a in alerts:
        anchor = a["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{a['alert']} links to #{anchor}, which docs/runbooks.md lacks"
        section = doc.split(f"## {anchor}\n", 1)[1].split("\n## ", 1)[0]
        assert "**What it means.**" in section and "**What to do.**" in section and len(section) > 300


def test_operational_alerts_fire_in_promtool(tmp_path):
    r, _ = rules(tmp_path)
    alert = next(x for g in r["groups"] for x in g["rules"] if x.get("alert") == "GembaHighErrorRate")
    run_tests(tmp_path, [
        {"interval": "1m", "input_series": requests(80, 20), "alert_rule_test": [
            {"eval_time": "10m", "alertname": "GembaHighErrorRate",
             "exp_alerts": [{"exp_labels": alert["labels"], "exp_annotations": alert["annotations"]}]}]},
        {"interval": "1m", "input_series": requests(99, 1), "alert_rule_test": [
            {"eval_time": "10m", "alertname": "GembaHighErrorRate", "exp_alerts": []}]},
    ])


def test_alertmanager_example_and_dashboards(tmp_path):
    am = subprocess.run([BIN, "slo", "alertmanager"], capture_output=True, text=True, check=True).stdout
    assert "receiver: gemba-pager" in am and "inhibit_rules" in am
    amtool = shutil.which("amtool")
    if STRICT or amtool:
        assert amtool, "amtool is needed (scripts/test.sh installs it)"
        path = tmp_path / "am.yml"
        path.write_text(am)
        res = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
    out = subprocess.run([BIN, "slo", "dashboards", "--out", str(tmp_path / "d")], capture_output=True, text=True,
                         check=True).stdout.split()
    assert len(out) == 2
    for path in out:
        d = json.loads(open(path).read())
        assert d["panels"] and all(t["expr"] for p in d["panels"] for t in p["targets"])
