"""The same traffic judged twice: Gemba's in-process burn rate and the one a real Prometheus
computes from the generated rules agree within 1 %. Windows are scaled down (1 h -> 60 s) so
the test runs in about two minutes."""

import json
import os
import shutil
import subprocess
import threading
import time

import anyio
import httpx2
import pytest

from conftest import BIN, http_server, ids

pytestmark = pytest.mark.anyio
PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(not PROMETHEUS, reason="prometheus is not installed (scripts/test.sh installs it)")
async def test_prometheus_and_gemba_agree_on_burn_rate(workspace, tmp_path):
    slo_file = tmp_path / "slo.toml"
    slo_file.write_text(f"window_scale = {1 / 60}\nresolution_secs = 1\n")
    rules = subprocess.run([BIN, "slo", "--slo", str(slo_file), "rules"], capture_output=True, text=True,
                           check=True).stdout
    (tmp_path / "rules.yml").write_text(rules)
    slo = "sheet_statistics-availability"
    # Every 10th sheet_statistics call fails on the server: a 10 % error ratio, 100x burn.
    with http_server(workspace, ["--slo", str(slo_file)], admin=True,
                     env={"GEMBA_TEST_PANIC_TOOL": "sheet_statistics@10"}) as srv:
        target = srv.admin.removeprefix("http://")
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n"
                       f"scrape_configs:\n  - job_name: gemba\n    static_configs:\n      - targets: ['{target}']\n")
        port = 19190 + os.getpid() % 1000
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = threading.Event()
        try:
            from test_kaizen import mcp_http
            async with await mcp_http(srv.url) as c:
                book = await ids(c)
                args = {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales"}

                async def load():
                    while not stop.is_set():
                        await c.call_tool("sheet_statistics", args)
                        await anyio.sleep(0.01)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(load)
                    await anyio.sleep(80)  # more than the scaled 1h window (60 s)
                    pairs = []
                    async with httpx2.AsyncClient() as http:
                        for _ in range(5):
                            r = await http.get(f"http://127.0.0.1:{port}/api/v1/query",
                                               params={"query": f'slo:sli_error:ratio_rate1h{{slo="{slo}"}}'})
                            res = r.json()["data"]["result"]
                            prom_burn = float(res[0]["value"][1]) / 0.001 if res else None
                            js = (await http.get(srv.admin + "/slo.json")).json()
                            st = next(o for o in js["objectives"] if o["slo"] == slo)
                            gemba_burn = dict(st["burn_rates"])["1h"]
                            pairs.append((prom_burn, gemba_burn))
                            await anyio.sleep(2)
                    stop.set()
                    tg.cancel_scope.cancel()
        finally:
            stop.set()
            prom.terminate()
            prom.wait(timeout=10)
    print("burn rate (prometheus, gemba):", pairs)
    good = [(p, g) for p, g in pairs if p is not None and g > 0]
    assert good, pairs
    diffs = [abs(p - g) / g for p, g in good]
    assert max(diffs) <= 0.01, f"burn rates disagree by up to {max(diffs):.2%}: {pairs}"
    assert all(80 <= g <= 120 for _, g in good), pairs
