"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright) loads the admin listener's page while `gemba loadtest` drives traffic, and the
figures it shows are checked against /metrics.json fetched at the same moments; updates must
keep arriving, the 1-hour view must come from the request log, and any JavaScript error fails
the test. Screenshots are saved (into docs/ with GEMBA_SAVE_SCREENSHOTS=1, as the README's).

Also: the admin token (refused start when the admin listener is exposed without one; 401 for the
page, the stream and metrics without it; a browser signed in by a cookie, the token in no page)
and the cap on concurrent viewers."""

import http.client
import json
import os
import pathlib
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import BIN, ROOT, http_server

SCENARIO = ROOT / "examples" / "loadtest" / "dashboard-mix.toml"
CHROMIUM = os.environ.get("GEMBA_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The dashboard's update interval (dashboard::INTERVAL).
INTERVAL_S = 2.0
RATE = 40
# Endpoints the page reads when another part of Kaizen provides them; a 404 there is the
# "not available" case the page must survive (Chromium logs the failed fetch as a console line).
OPTIONAL = ("/incidents.json", "/experiments.json")

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -r tests/python/requirements.txt")


def get_json(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def status_of(url, headers=None, method="GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read(4096).decode(errors="replace")


def errors_of(m):
    return sum(v for k, v in m["outcomes"].items() if k not in ("ok", "cancelled"))


def metrics_totals(admin):
    m = get_json(admin + "/metrics.json")
    return sum(t["requests"] for t in m["tools"]), m


class Recorder:
    """Page errors and console errors, with the optional endpoints' 404s told apart."""

    def __init__(self, page, unauthorized_at=None):
        self.errors = []
        # With a token, the sign-in form at / is answered 401 by design (Chromium logs it).
        self.unauthorized_at = unauthorized_at
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("console", self.console)

    def console(self, msg):
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        if "404" in msg.text and url.endswith(OPTIONAL):
            return
        if self.unauthorized_at and "401" in msg.text and url.rstrip("/") == self.unauthorized_at.rstrip("/"):
            return
        self.errors.append(f"console {msg.type}: {msg.text} ({url})")


def launch(p):
    if not pathlib.Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package")
    return p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)


def wait_until(what, predicate, timeout=30.0, every=0.2):
    end = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(every)


def updates(page):
    return int(page.locator("body").get_attribute("data-updates") or 0)


def tile_value(page, metric):
    v = page.locator(f'[data-metric="{metric}"]').get_attribute("data-value")
    return None if v in (None, "") else float(v)


def expect_optional_panel(url, panel):
    """What an optional source's panel must say, from what the source answers now."""
    code, body = status_of(url)
    if code == 404:
        wanted = ["Not available"]
    else:
        assert code == 200, (url, code, body)
        d = json.loads(body)
        if d.get("detect") == "disabled" or (not d.get("experiments", [1]) and d.get("note")):
            wanted = ["Not enabled"]
        else:
            wanted = ["No incidents", "No experiments", "OPEN since", "closed "]
            wanted += [x["name"] for x in d.get("experiments", [])]
    wait_until(f"{url}'s panel to say one of {wanted}",
               lambda: any(w in panel.inner_text() for w in wanted), timeout=20)


def shots_dir(tmp_path):
    if os.environ.get("GEMBA_SAVE_SCREENSHOTS") == "1":
        d = ROOT / "docs"
        d.mkdir(exist_ok=True)
        return d
    return tmp_path


def test_dashboard_under_load_agrees_with_metrics(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    with http_server(ws, admin=True) as srv, sync_api.sync_playwright() as p:
        # Traffic first, so the page opens on a busy server.
        load = subprocess.Popen(
            [BIN, "loadtest", "--quiet", "--url", srv.url, "--scenario", str(SCENARIO),
             "--rate", f"{RATE}/s", "--duration", "16s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # /metrics.json's total, sampled in the background with the wall clock.
        samples, stop = [], threading.Event()

        def poll():
            while not stop.is_set():
                t = time.time()
                total, _ = metrics_totals(srv.admin)
                samples.append((t, total))
                time.sleep(0.25)

        poller = threading.Thread(target=poll, daemon=True)
        browser = launch(p)
        try:
            wait_until("traffic", lambda: metrics_totals(srv.admin)[0] > 20)
            poller.start()
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            rec = Recorder(page)
            page.goto(srv.admin + "/")
            wait_until("the first update", lambda: updates(page) >= 1)
            # While the load runs: the total shown is one the server really had within the
            # update interval (plus slack for a busy machine) of being read.
            checks = 0
            for _ in range(4):
                before = updates(page)
                wait_until("an update", lambda: updates(page) > before, timeout=3 * INTERVAL_S + 5)
                t_read = time.time()
                shown = tile_value(page, "calls-total")
                after, _ = metrics_totals(srv.admin)
                early = [n for (t, n) in samples if t <= t_read - 2 * INTERVAL_S - 1.0]
                low = early[-1] if early else 0
                assert low <= shown <= after, (low, shown, after)
                checks += 1
            assert checks == 4
            assert tile_value(page, "rate") > RATE / 4, "calls per second under load"
            grown = tile_value(page, "calls-total")
            assert load.wait(timeout=60) == 0, load.stderr.read()
            stop.set()
            # Quiet now: after two more updates every figure must match /metrics.json exactly.
            final, m = metrics_totals(srv.admin)

            def settled():
                n = updates(page)
                wait_until("an update", lambda: updates(page) > n, timeout=3 * INTERVAL_S + 5)
                total, fresh = metrics_totals(srv.admin)
                return (total, fresh) if tile_value(page, "calls-total") == total else None

            final, m = wait_until("the page to settle on /metrics.json", settled, timeout=30, every=0)
            assert final > grown > 0, "the total kept growing while the load ran"
            rows = page.locator("#tools-table tbody tr[data-tool]")
            shown_tools = {}
            for i in range(rows.count()):
                r = rows.nth(i)
                shown_tools[r.get_attribute("data-tool")] = {
                    f: r.locator(f'td[data-field="{f}"]').get_attribute("data-value") for f in ("p50", "p95", "p99")}
            by_tool = {t["tool"]: t for t in m["tools"]}
            for tool in ("read_table", "list_sheets", "sheet_overview", "find_value"):
                assert tool in shown_tools, f"{tool} missing from the table: {sorted(shown_tools)}"
                w = by_tool[tool]["windows"]["5m"]
                for f in ("p50", "p95", "p99"):
                    assert abs(float(shown_tools[tool][f]) - w[f + "_ms"]) <= 0.0011, (tool, f, shown_tools[tool], w)
            errors_shown = page.locator('[data-metric="calls-total"] .hint').inner_text()
            assert int(errors_shown.split()[0].replace(",", "")) == sum(errors_of(t) for t in m["tools"]), errors_shown
            assert errors_of(by_tool["read_table"]) > 0, "the scenario's bad sheet name failed"
            cap = m["other"]["gemba_cache_capacity_bytes"]
            assert "512.0 MiB" in page.locator("#cache-meter").inner_text() and cap == 512 * 1024 * 1024
            # The SLO latency threshold is drawn on the latency chart of the selected tool.
            page.select_option("#tool-select", "read_table")
            assert "SLO p95 200 ms" in page.locator("#chart-lat > svg").inner_html()
            # Panels whose source is missing (404) or switched off say so instead of breaking
            # the page; when the source answers, the panel shows what it says.
            for path, panel in (("/incidents.json", "#incident-list"), ("/experiments.json", "#experiment-list")):
                expect_optional_panel(srv.admin + path, page.locator(panel))
            # The latest failures come from the request log, with the agent's mistake in them.
            wait_until("the log view", lambda: "Sumary" in page.locator("#err-recent").inner_text(), timeout=20)
            out = shots_dir(tmp_path)
            page.screenshot(path=str(out / "dashboard.png"))
            assert (out / "dashboard.png").stat().st_size > 20_000
            # Every panel at once, for the README and for a person to look at.
            page.screenshot(path=str(out / "dashboard-full.png"), full_page=True)

            # Keyboard: Tab reaches the range switch, the arrow keys change the range, and the
            # 1-hour view is drawn from the request log (the same calls, counted by the log).
            page.locator("#range-5m").focus()
            page.keyboard.press("ArrowRight")
            assert page.locator("#range-1h").is_checked()
            wait_until("the 1 h table", lambda: "request log" in page.locator("#tools-note").inner_text())
            cell = page.locator('#tools-table tr[data-tool="read_table"] td[data-field="calls"]')
            wanted = by_tool["read_table"]["requests"]
            wait_until(f"the log's count of read_table calls ({wanted})",
                       lambda: cell.count() == 1 and int(cell.inner_text().replace(",", "")) == wanted, timeout=45)
            focused = []
            page.locator("#range-1h").focus()
            for _ in range(3):
                page.keyboard.press("Tab")
                focused.append(page.evaluate("document.activeElement && (document.activeElement.id || document.activeElement.tagName)"))
            assert "tool-select" in focused, focused
            # A mouse user clicks the label (the radio itself is visually hidden).
            page.click('label[for="range-5m"]')
            assert page.locator("#range-5m").is_checked()
            wait_until("the live table again", lambda: "request log" not in page.locator("#tools-note").inner_text())

            # A phone: one column, nothing wider than the screen.
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            rec_phone = Recorder(phone)
            phone.goto(srv.admin + "/")
            wait_until("the phone's first update", lambda: updates(phone) >= 2)
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            phone.screenshot(path=str(out / "dashboard-phone.png"))
            assert rec.errors == [] and rec_phone.errors == [], rec.errors + rec_phone.errors
        finally:
            stop.set()
            if load.poll() is None:
                load.kill()
            browser.close()


def test_admin_token(workspace, tmp_path):
    # Exposed without a token: refused at start, saying what to do.
    r = subprocess.run([BIN, "serve", "--stdio", "--workspace", str(workspace), "--state-dir", str(tmp_path / "s0"),
                        "--admin", "0.0.0.0:0"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "--admin-token" in r.stderr and "not a loopback address" in r.stderr, r.stderr

    token = "t0k3n-for-the-test"
    with http_server(workspace, ["--admin-token", token], admin=True) as srv, sync_api.sync_playwright() as p:
        a = srv.admin
        for path in ("/", "/dashboard/stream", "/dashboard/snapshot.json", "/metrics", "/metrics.json", "/slo.json"):
            code, body = status_of(a + path)
            assert code == 401, (path, code)
            assert token not in body
        code, body = status_of(a + "/")
        assert "<form" in body and 'action="/login"' in body, "a browser gets a sign-in form"
        assert status_of(a + "/healthz")[0] == 200, "health checks stay open"
        assert status_of(a + "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
        assert status_of(a + "/metrics", {"Authorization": f"Bearer {token}"})[0] == 200
        assert status_of(a + "/?token=wrong")[0] == 401

        browser = launch(p)
        try:
            ctx = browser.new_context()
            page = ctx.new_page()
            rec = Recorder(page, unauthorized_at=a)
            # Signing in with the form sets an HttpOnly cookie; the page then works, stream included.
            page.goto(a + "/")
            page.fill("#token", token)
            page.click("button[type=submit]")
            wait_until("updates after signing in", lambda: updates(page) >= 2)
            assert page.url.rstrip("/") == a.rstrip("/"), "the token is in no URL"
            assert token not in page.content()
            cookie = [c for c in ctx.cookies() if c["name"] == "gemba_admin"]
            assert cookie and cookie[0]["httpOnly"] and cookie[0]["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == "", "scripts cannot read the token"
            # A link with ?token= signs in too, and is redirected to the bare address.
            other = browser.new_context().new_page()
            rec_other = Recorder(other)
            other.goto(a + "/?token=" + token)
            assert other.url.rstrip("/") == a.rstrip("/")
            wait_until("updates from the link", lambda: updates(other) >= 1)
            assert rec.errors == [] and rec_other.errors == [], rec.errors + rec_other.errors
        finally:
            browser.close()


def test_viewers_are_capped(workspace, tmp_path):
    with http_server(workspace, admin=True) as srv:
        host, port = srv.admin.removeprefix("http://").rstrip("/").rsplit(":", 1)
        conns = []
        try:
            for _ in range(64):
                c = http.client.HTTPConnection(host, int(port), timeout=10)
                c.request("GET", "/dashboard/stream")
                r = c.getresponse()
                assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
                conns.append((c, r))
            # The first event is the five-minute series, then snapshots keep coming.
            first = conns[0][1].readline().decode()
            assert first.startswith("event: series"), first
            code, body = status_of(srv.admin + "/dashboard/stream")
            assert code == 503 and "too many dashboard viewers" in body
        finally:
            for c, _ in conns:
                c.close()
        # Closed streams give their places back.
        wait_until("a free place", lambda: status_of_stream(srv.admin) == 200, timeout=15)


def status_of_stream(admin):
    host, port = admin.removeprefix("http://").rstrip("/").rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request("GET", "/dashboard/stream")
        return c.getresponse().status
    finally:
        c.close()
