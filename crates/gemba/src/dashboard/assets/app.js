// Gemba dashboard: live figures over Server-Sent Events, request-log views for 1 h and 24 h,
// charts drawn as plain SVG. Every text from the server goes in through textContent (never
// innerHTML), and a panel whose source is missing says so instead of breaking the page.
"use strict";

(function () {
  const SVGNS = "http://www.w3.org/2000/svg";
  const RANGE_MS = { "5m": 5 * 60e3, "1h": 3600e3, "24h": 86400e3 };
  // How often the request-log view is fetched again per range (the server caches it as long).
  const HISTORY_EVERY = { "5m": 10e3, "1h": 20e3, "24h": 60e3 };
  const OPTIONAL_EVERY = 15e3;
  const LEARN_EVERY = 300e3;
  const C = {
    blue: "var(--blue)", orange: "var(--orange)", sky: "var(--sky)", green: "var(--green)",
    yellow: "var(--yellow)", vermillion: "var(--vermillion)", purple: "var(--purple)", black: "var(--black)",
  };
  const STAGES = [
    ["validate", C.sky], ["load", C.blue], ["analyze", C.orange], ["extract", C.green],
    ["serialize", C.purple], ["queue", C.vermillion],
  ];

  const state = {
    range: "5m",
    snap: null,
    points: [],
    history: {},
    learn: null,
    incidents: undefined,
    experiments: undefined,
    tool: null,
    toolChosen: false,
    sloAll: false,
    lastUpdate: 0,
  };

  // ---------- small helpers ----------
  const $ = (id) => document.getElementById(id);
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k === "style") setStyle(e, v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }
  // Styles go through the CSSOM: the page's Content-Security-Policy allows no inline style
  // attributes.
  function setStyle(e, text) {
    for (const decl of String(text).split(";")) {
      const i = decl.indexOf(":");
      if (i > 0) e.style.setProperty(decl.slice(0, i).trim(), decl.slice(i + 1).trim());
    }
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "stroke" || k === "fill") e.style.setProperty(k, String(v));
      else e.setAttribute(k, String(v));
    }
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  const num = (x) => (typeof x === "number" && isFinite(x) ? x : null);

  function fmtNum(x, digits) {
    x = num(x);
    if (x === null) return "–";
    const a = Math.abs(x);
    if (a >= 1e9) return (x / 1e9).toFixed(1) + " G";
    if (a >= 1e6) return (x / 1e6).toFixed(1) + " M";
    if (a >= 1e4) return (x / 1e3).toFixed(1) + " k";
    if (digits !== undefined) return x.toFixed(digits);
    return Number.isInteger(x) ? String(x) : x.toFixed(a < 10 ? 2 : 1);
  }
  function fmtInt(x) { x = num(x); return x === null ? "–" : Math.round(x).toLocaleString("en-US"); }
  function fmtMs(x) {
    x = num(x);
    if (x === null) return "–";
    if (x > 0 && x < 0.1) return (x * 1000).toPrecision(2).replace(/\.0+$/, "") + " µs";
    if (x >= 10000) return (x / 1000).toFixed(1) + " s";
    if (x >= 1000) return (x / 1000).toFixed(2) + " s";
    if (x >= 100) return x.toFixed(0) + " ms";
    if (x >= 10) return x.toFixed(1) + " ms";
    return x.toFixed(2) + " ms";
  }
  function fmtPct(x, digits) {
    x = num(x);
    if (x === null) return "–";
    const p = x * 100;
    if (digits !== undefined) return p.toFixed(digits) + " %";
    if (p === 0) return "0 %";
    if (p < 0.1) return p.toFixed(3) + " %";
    if (p < 10) return p.toFixed(2) + " %";
    return p.toFixed(1) + " %";
  }
  function fmtBytes(x) {
    x = num(x);
    if (x === null) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(x) >= 1024 && i < u.length - 1) { x /= 1024; i++; }
    return (i === 0 ? x.toFixed(0) : x.toFixed(x < 10 ? 2 : 1)) + " " + u[i];
  }
  function fmtDur(s) {
    s = num(s);
    if (s === null) return "–";
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return (s / 60).toFixed(0) + " min";
    if (s < 86400 * 2) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " days";
  }
  function fmtClock(ms, withSeconds) {
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, "0");
    return p(d.getHours()) + ":" + p(d.getMinutes()) + (withSeconds ? ":" + p(d.getSeconds()) : "");
  }
  function fmtAgo(ms) {
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 86400 * 2) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }
  function rangeLabel(r) { return { "5m": "last 5 min", "1h": "last hour", "24h": "last 24 h" }[r]; }

  function tile(label, value, hint, opts) {
    opts = opts || {};
    return el("div", { class: "tile", "data-level": opts.level || null, "data-metric": opts.metric || null,
      "data-value": opts.raw !== undefined && opts.raw !== null ? String(opts.raw) : null },
      el("span", { class: "label", text: label }),
      el("span", { class: "value", text: value }),
      hint ? el("span", { class: "hint", text: hint }) : null);
  }
  function na(text) { return el("p", { class: "na", text }); }
  function barRow(name, frac, value, color, extra) {
    const fill = el("span", { class: "fill", style: "width:" + (Math.max(0, Math.min(1, frac || 0)) * 100).toFixed(1) + "%" + (color ? ";background:" + color : "") });
    return el("li", extra || {}, el("span", { class: "name", title: name, text: name }),
      el("span", { class: "track", "aria-hidden": "true" }, fill), el("span", { class: "v", text: value }));
  }

  // ---------- charts ----------
  function niceStep(raw) {
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
  }
  function timeTicks(from, to) {
    const span = to - from;
    const steps = [10e3, 30e3, 60e3, 120e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 10800e3, 21600e3];
    const step = steps.find((s) => span / s <= 6) || 43200e3;
    const off = new Date().getTimezoneOffset() * 60e3;
    const out = [];
    for (let t = Math.ceil((from - off) / step) * step + off; t <= to; t += step) out.push(t);
    return { ticks: out, seconds: step < 60e3 };
  }

  // A line chart: series [{name, color, dash, data: [[t, v|null], ...], fmt}], time on x; a
  // logarithmic y axis with `log: true` (latency: fast medians and a far threshold both show).
  function lineChart(host, opts) {
    clear(host);
    const W = Math.max(240, Math.floor(host.clientWidth || 560));
    const H = opts.height || 170;
    const m = { l: 56, r: 14, t: 10, b: 22 };
    const from = opts.from, to = opts.to;
    const yFmt = opts.yFmt || fmtNum;
    let max = 0;
    let min = Infinity;
    let any = false;
    for (const s of opts.series) for (const [t, v] of s.data) if (num(v) !== null && t >= from - 1 && t <= to + 1) { any = true; max = Math.max(max, v); if (v > 0) min = Math.min(min, v); }
    for (const t of opts.thresholds || []) if (num(t.value) !== null) { max = Math.max(max, t.value * (opts.log ? 1.5 : 1.08)); if (t.value > 0) min = Math.min(min, t.value); }
    if (opts.yMax) max = Math.max(max, opts.yMax);
    let ticks = [];
    let y;
    if (opts.log) {
      const lo = Math.floor(Math.log10(isFinite(min) ? min : 0.1));
      const hi = Math.max(lo + 1, Math.ceil(Math.log10(max > 0 ? max : 1)));
      for (let e = lo; e <= hi; e++) ticks.push(Math.pow(10, e));
      max = Math.pow(10, hi);
      y = (v) => m.t + (1 - (Math.log10(Math.max(v, Math.pow(10, lo))) - lo) / (hi - lo)) * (H - m.t - m.b);
    } else {
      if (max <= 0) max = opts.yMin || 1;
      const step = niceStep(max / 4);
      max = Math.ceil(max / step) * step;
      for (let v = 0; v <= max + step / 2; v += step) ticks.push(v);
      y = (v) => m.t + (1 - v / max) * (H - m.t - m.b);
    }
    const x = (t) => m.l + ((t - from) / Math.max(1, to - from)) * (W - m.l - m.r);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
    const title = svg("title");
    root.append(title);
    const axis = svg("g", { class: "axis" });
    for (const v of ticks) {
      axis.append(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
      const t = svg("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" });
      t.textContent = yFmt(v);
      axis.append(t);
    }
    const tt = timeTicks(from, to);
    for (const t of tt.ticks) {
      const tx = svg("text", { x: x(t), y: H - 6, "text-anchor": "middle" });
      tx.textContent = fmtClock(t, tt.seconds);
      axis.append(tx);
    }
    root.append(axis);
    for (const th of opts.thresholds || []) {
      if (num(th.value) === null || th.value > max) continue;
      root.append(svg("line", { class: "thr", x1: m.l, x2: W - m.r, y1: y(th.value), y2: y(th.value) }));
      const lt = svg("text", { class: "thr-label", x: W - m.r - 4, y: y(th.value) - 4, "text-anchor": "end" });
      lt.textContent = th.label;
      root.append(lt);
    }
    for (const s of opts.series) {
      let d = "";
      let pen = false;
      let lone = [];
      const pts = s.data.filter(([t]) => t >= from - 1 && t <= to + 1);
      pts.forEach(([t, v], i) => {
        if (num(v) === null) { pen = false; return; }
        const seg = (pen ? "L" : "M") + x(t).toFixed(1) + " " + y(Math.min(v, max)).toFixed(1);
        const nextOk = i + 1 < pts.length && num(pts[i + 1][1]) !== null;
        if (!pen && !nextOk) lone.push([t, v]);
        d += seg;
        pen = true;
      });
      if (d) root.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": s.width || 2, "stroke-dasharray": s.dash || null, "stroke-linejoin": "round" }));
      for (const [t, v] of lone) root.append(svg("circle", { cx: x(t), cy: y(Math.min(v, max)), r: 2.5, fill: s.color }));
    }
    if (!any) {
      const e = svg("text", { class: "empty", x: (m.l + W - m.r) / 2, y: H / 2, "text-anchor": "middle" });
      e.textContent = opts.empty || "No data in this range yet";
      root.append(e);
    }
    const latest = opts.series.map((s) => {
      const last = [...s.data].reverse().find(([, v]) => num(v) !== null);
      return { s, v: last ? last[1] : null };
    });
    title.textContent = (opts.label || "chart") + ": " + latest.map(({ s, v }) => s.name + " " + (s.fmt || yFmt)(v)).join(", ");
    host.append(root);
    const legend = el("ul", { class: "legend" });
    for (const { s, v } of latest) {
      const sw = svg("svg", { width: 22, height: 10, "aria-hidden": "true" });
      sw.append(svg("line", { x1: 1, x2: 21, y1: 5, y2: 5, stroke: s.color, "stroke-width": 2.5, "stroke-dasharray": s.dash || null }));
      legend.append(el("li", {}, sw, el("span", { text: s.name }), el("b", { text: opts.noLatest ? "" : (s.fmt || yFmt)(v) })));
    }
    for (const th of opts.thresholds || []) {
      if (num(th.value) === null) continue;
      const sw = svg("svg", { width: 22, height: 10, "aria-hidden": "true" });
      sw.append(svg("line", { x1: 1, x2: 21, y1: 5, y2: 5, stroke: "var(--threshold)", "stroke-width": 1.5, "stroke-dasharray": "6 4" }));
      legend.append(el("li", {}, sw, el("span", { text: th.legend || th.label })));
    }
    host.append(legend);
  }

  // An x–y chart with numeric x (the cache what-if).
  function xyChart(host, opts) {
    clear(host);
    const W = Math.max(240, Math.floor(host.clientWidth || 480));
    const H = opts.height || 150;
    const m = { l: 48, r: 14, t: 10, b: 30 };
    // Capacities span orders of magnitude: a logarithmic x axis, ticks at powers of two.
    let xmax = 1, xmin = Infinity;
    for (const s of opts.series) for (const [xv] of s.data) if (xv > 0) { xmax = Math.max(xmax, xv); xmin = Math.min(xmin, xv); }
    for (const mk of opts.markers || []) if (num(mk.x) !== null && mk.x > 0) { xmax = Math.max(xmax, mk.x); xmin = Math.min(xmin, mk.x); }
    const lo = Math.floor(Math.log2(isFinite(xmin) ? xmin : 1));
    const hi = Math.max(lo + 1, Math.ceil(Math.log2(xmax)));
    const x = (v) => m.l + ((Math.log2(Math.max(v, Math.pow(2, lo))) - lo) / (hi - lo)) * (W - m.l - m.r);
    const y = (v) => m.t + (1 - v) * (H - m.t - m.b);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
    const title = svg("title");
    title.textContent = opts.label || "chart";
    root.append(title);
    const axis = svg("g", { class: "axis" });
    for (const v of [0, 0.25, 0.5, 0.75, 1]) {
      axis.append(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
      const t = svg("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" });
      t.textContent = (v * 100).toFixed(0) + " %";
      axis.append(t);
    }
    const every = Math.max(1, Math.ceil((hi - lo) / Math.max(2, Math.floor((W - m.l - m.r) / 70))));
    for (let e = lo; e <= hi; e += every) {
      const v = Math.pow(2, e);
      const t = svg("text", { x: x(v), y: H - 14, "text-anchor": "middle" });
      t.textContent = fmtNum(v) + (opts.xUnit || "");
      axis.append(t);
    }
    root.append(axis);
    for (const mk of opts.markers || []) {
      if (num(mk.x) === null) continue;
      root.append(svg("line", { class: "thr", x1: x(mk.x), x2: x(mk.x), y1: m.t, y2: H - m.b }));
      const lt = svg("text", { class: "thr-label", x: x(mk.x) + 4, y: m.t + 12 + (mk.row || 0) * 13 });
      lt.textContent = mk.label;
      root.append(lt);
    }
    for (const s of opts.series) {
      const d = s.data.map(([a, b], i) => (i ? "L" : "M") + x(a).toFixed(1) + " " + y(b).toFixed(1)).join("");
      if (d) root.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash || null }));
      for (const [a, b] of s.data) root.append(svg("circle", { cx: x(a), cy: y(b), r: 2.2, fill: s.color }));
    }
    host.append(root);
    const legend = el("ul", { class: "legend" });
    for (const s of opts.series) {
      const sw = svg("svg", { width: 22, height: 10, "aria-hidden": "true" });
      sw.append(svg("line", { x1: 1, x2: 21, y1: 5, y2: 5, stroke: s.color, "stroke-width": 2.5, "stroke-dasharray": s.dash || null }));
      legend.append(el("li", {}, sw, el("span", { text: s.name })));
    }
    host.append(legend);
  }

  // ---------- data for the selected range ----------
  function rangeBounds() {
    const to = state.snap ? state.snap.at_ms : Date.now();
    return { from: to - RANGE_MS[state.range], to };
  }
  function hist() { return state.history[state.range] || null; }

  // Per tool rows for the table: from the live snapshot (5 min) or the request log (1 h, 24 h).
  function toolRows() {
    const snap = state.snap;
    const live = new Map(((snap && snap.tools) || []).map((t) => [t.tool, t]));
    if (state.range === "5m") {
      const secs = snap && snap.range && snap.range.secs > 0 ? snap.range.secs : null;
      return ((snap && snap.tools) || [])
        .filter((t) => t.window_count > 0 || t.range_calls > 0 || t.in_flight > 0)
        .map((t) => ({
          tool: t.tool, kind: t.kind, calls: t.range_calls, errors: t.range_errors,
          rate: secs ? t.range_calls / secs : null,
          p50: t.p50_ms, p95: t.p95_ms, p99: t.p99_ms, slo: t.slo_ms, inflight: t.in_flight,
          windowCount: t.window_count,
        }))
        .sort((a, b) => b.windowCount - a.windowCount || b.calls - a.calls || a.tool.localeCompare(b.tool));
    }
    const h = hist();
    if (!h || !h.tools) return [];
    const span = RANGE_MS[state.range] / 1000;
    return h.tools.map((t) => {
      const l = live.get(t.tool) || {};
      const lat = Array.isArray(t.lat) ? t.lat : [null, null, null];
      return {
        tool: t.tool, kind: t.family === "protocol" ? "protocol" : "tool", calls: t.calls, errors: t.errors,
        rate: t.calls / span, p50: lat[0], p95: lat[1], p99: lat[2], slo: l.slo_ms, inflight: l.in_flight || 0,
      };
    });
  }

  // ---------- panels ----------
  function renderHeader() {
    const s = state.snap;
    const v = $("verdict");
    if (!s) return;
    const slo = s.slo || {};
    const alerting = (slo.objectives || []).filter((o) => o.state === "page" || o.state === "ticket");
    const rows = toolRows();
    const busiest = rows.find((r) => r.kind === "tool");
    const r = s.range || {};
    const parts = [];
    const rate = state.range === "5m" ? lastRate() : (hist() ? sum(hist().series, "calls") / (RANGE_MS[state.range] / 1000) : null);
    parts.push(fmtNum(rate, 2) + " calls/s");
    const er = state.range === "5m" ? r.error_ratio : ratioOf(hist(), "errors");
    parts.push(fmtPct(er) + " errors");
    if (busiest && num(busiest.p95) !== null) {
      parts.push(busiest.tool + " p95 " + fmtMs(busiest.p95) + (num(busiest.slo) !== null ? (busiest.p95 <= busiest.slo ? " (within " : " (over ") + fmtMs(busiest.slo) + ")" : ""));
    }
    let level = "ok";
    let lead = "";
    if (alerting.length) {
      level = alerting.some((o) => o.state === "page") ? "bad" : "warn";
      lead = alerting.length + " SLO" + (alerting.length > 1 ? "s" : "") + " alerting (" + alerting.slice(0, 2).map((o) => o.slo).join(", ") + (alerting.length > 2 ? ", …" : "") + ") · ";
    } else if (slo.budget_low > 0) {
      level = "warn";
      lead = slo.budget_low + " error budget" + (slo.budget_low > 1 ? "s" : "") + " running low · ";
    } else if (num(er) !== null && er > 0.05) {
      level = "warn";
    }
    const openIncident = state.incidents && Array.isArray(state.incidents.incidents) && state.incidents.incidents.find((i) => !i.closed);
    if (openIncident) {
      level = "bad";
      lead = "Incident open (" + (openIncident.tools || []).join(", ") + ") · " + lead;
    }
    v.dataset.level = level;
    v.textContent = lead + (level === "ok" ? "Healthy: " : "") + parts.join(" · ") + " (" + rangeLabel(state.range) + ")";
    $("uptime").textContent = "Gemba " + (s.version || "") + ", up " + fmtDur(s.uptime_s);
  }

  function sum(arr, k) { return (arr || []).reduce((a, x) => a + (num(x[k]) || 0), 0); }
  function ratioOf(h, k) {
    if (!h || !h.series) return null;
    const calls = sum(h.series, "calls");
    return calls > 0 ? sum(h.series, k) / calls : null;
  }
  // Calls per second over the last 10 seconds of points.
  function lastRate() {
    const pts = state.points.slice(-5).filter((p) => num(p.rate) !== null);
    if (!pts.length) return state.snap && state.snap.range ? state.snap.range.rate : null;
    return pts.reduce((a, p) => a + p.rate, 0) / pts.length;
  }

  function renderNow() {
    const s = state.snap;
    const tiles = clear($("now-tiles"));
    const { from, to } = rangeBounds();
    if (!s) { tiles.append(na("Waiting for the first update…")); return; }
    const t = s.totals || {};
    const h = hist();
    let calls, errors, refused, rateNote;
    if (state.range === "5m") {
      calls = s.range.calls; errors = s.range.errors; refused = s.range.refused;
      rateNote = "over " + fmtNum(s.range.secs, 0) + " s";
    } else if (h && h.series) {
      calls = sum(h.series, "calls"); errors = sum(h.series, "errors"); refused = sum(h.series, "refused");
      rateNote = "from the request log";
    }
    const rate = state.range === "5m" ? lastRate() : (num(calls) !== null ? calls / (RANGE_MS[state.range] / 1000) : null);
    const er = num(calls) > 0 ? errors / calls : null;
    tiles.append(
      tile("Calls/s", fmtNum(rate, 2), state.range === "5m" ? "last 10 s" : "average, " + rangeLabel(state.range), { metric: "rate", raw: rate }),
      tile("Error ratio", fmtPct(er), fmtInt(errors) + " errors in " + fmtInt(calls) + " calls", { metric: "error-ratio", raw: er, level: er > 0.05 ? "bad" : er > 0.01 ? "warn" : null }),
      tile("In flight", fmtInt(t.in_flight), "of " + fmtInt(t.max_inflight) + " slots", { metric: "in-flight", raw: t.in_flight }),
      tile("Queued", fmtInt(t.queued), "waiting for a slot", { metric: "queued", raw: t.queued, level: t.queued > 0 ? "warn" : null }),
      tile("Refused", fmtInt(refused), fmtInt(t.refused) + " since start", { metric: "refused", raw: refused, level: refused > 0 ? "warn" : null }),
      tile("Calls since start", fmtInt(t.calls), fmtInt(t.errors) + " errors", { metric: "calls-total", raw: t.calls }),
    );
    $("rate-note").textContent = rateNote ? "(" + rangeLabel(state.range) + ")" : "";
    // Calls and errors per second.
    let rateData = [], errData = [];
    if (state.range === "5m") {
      const first = state.points.length ? state.points[0].t : Infinity;
      for (const [t, b, bs] of logBuckets(first)) { rateData.push([t, b.calls / bs]); errData.push([t, b.errors / bs]); }
      rateData.push(...state.points.map((p) => [p.t, p.rate]));
      errData.push(...state.points.map((p) => [p.t, num(p.rate) === null ? null : num(p.err) !== null ? p.err * p.rate : 0]));
    } else if (h && h.series) {
      const bs = h.bucket_ms / 1000;
      rateData = h.series.map((b) => [b.t + h.bucket_ms / 2, b.calls / bs]);
      errData = h.series.map((b) => [b.t + h.bucket_ms / 2, b.errors / bs]);
    }
    lineChart($("chart-rate"), {
      from, to, label: "Calls and errors per second",
      series: [
        { name: "calls/s", color: C.blue, data: rateData },
        { name: "errors/s", color: C.vermillion, dash: "5 3", data: errData },
      ],
      yFmt: (v) => fmtNum(v),
    });
    renderToolTable();
    renderLatency();
  }

  // Before this page's live points begin (the live view runs only while someone watches), the
  // 5-minute charts are drawn from the request log's 10-second buckets.
  function logBuckets(before) {
    const h = state.history["5m"];
    if (!h || !Array.isArray(h.series)) return [];
    return h.series.filter((b) => b.t + h.bucket_ms <= before).map((b) => [b.t + h.bucket_ms / 2, b, h.bucket_ms / 1000]);
  }
  function logLatency(tool, before) {
    const h = state.history["5m"];
    const t = h && (h.tools || []).find((x) => x.tool === tool);
    if (!t) return [];
    return t.series.map((l, i) => [h.from_ms + i * h.bucket_ms + h.bucket_ms / 2, l, h.from_ms + (i + 1) * h.bucket_ms])
      .filter(([, l, end]) => l && end <= before);
  }

  function renderToolTable() {
    const rows = toolRows();
    const tbody = clear($("tools-table").querySelector("tbody"));
    $("tools-note").textContent = "(" + rangeLabel(state.range) + (state.range === "5m" ? "; percentiles over the HDR 5-minute window" : "; percentiles from the request log, ±6 %") + ")";
    if (!rows.length) {
      tbody.append(el("tr", {}, el("td", { colspan: 9, class: "na", text: state.range === "5m" || hist() ? "No calls in this range." : "Loading the request log…" })));
      return;
    }
    const tools = rows.map((r) => r.tool);
    if (!state.toolChosen || !tools.includes(state.tool)) {
      const first = rows.find((r) => r.kind === "tool" && num(r.p95) !== null) || rows[0];
      if (!state.toolChosen || !state.tool) state.tool = first.tool;
    }
    for (const r of rows) {
      const over = num(r.p95) !== null && num(r.slo) !== null && r.p95 > r.slo;
      const tr = el("tr", { "data-tool": r.tool, tabindex: "0", "aria-selected": r.tool === state.tool ? "true" : "false", title: "Show " + r.tool + " on the latency chart" },
        el("td", { class: "tool-name" }, el("code", { text: r.tool }), r.kind === "protocol" ? el("span", { class: "tag", text: "protocol" }) : null),
        el("td", { class: "num", "data-field": "calls", text: fmtInt(r.calls) }),
        el("td", { class: "num", "data-field": "rate", text: fmtNum(r.rate, 2) }),
        el("td", { class: "num", "data-field": "errors", text: r.errors ? fmtInt(r.errors) + " (" + fmtPct(r.calls ? r.errors / r.calls : null, 1) + ")" : "0" }),
        el("td", { class: "num", "data-field": "p50", "data-value": num(r.p50) ?? "", text: fmtMs(r.p50) }),
        el("td", { class: "num", "data-field": "p95", "data-value": num(r.p95) ?? "" }, el("span", { class: over ? "over" : null, text: fmtMs(r.p95) })),
        el("td", { class: "num", "data-field": "p99", "data-value": num(r.p99) ?? "", text: fmtMs(r.p99) }),
        el("td", { class: "num", "data-field": "slo", text: num(r.slo) !== null ? fmtMs(r.slo) : "–" }),
        el("td", { class: "num", "data-field": "inflight", text: fmtInt(r.inflight) }));
      const choose = () => { state.tool = r.tool; state.toolChosen = true; render(); };
      tr.addEventListener("click", choose);
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(); } });
      tbody.append(tr);
    }
    const sel = $("tool-select");
    const have = [...sel.options].map((o) => o.value).join("\n");
    if (have !== tools.join("\n")) {
      clear(sel);
      for (const t of tools) sel.append(el("option", { value: t, text: t }));
    }
    sel.value = state.tool;
  }

  function renderLatency() {
    const { from, to } = rangeBounds();
    const tool = state.tool;
    const live = state.snap && (state.snap.tools || []).find((t) => t.tool === tool);
    const slo = live ? live.slo_ms : null;
    let p50 = [], p95 = [], p99 = [];
    if (state.range === "5m") {
      const first = state.points.length ? state.points[0].t : Infinity;
      for (const [t, l] of logLatency(tool, first)) { p50.push([t, l[0]]); p95.push([t, l[1]]); p99.push([t, l[2]]); }
      if (p50.length) { p50.push([first - 1, null]); p95.push([first - 1, null]); p99.push([first - 1, null]); }
      for (const p of state.points) {
        const l = p.lat && p.lat[tool];
        p50.push([p.t, l ? l[0] : null]); p95.push([p.t, l ? l[1] : null]); p99.push([p.t, l ? l[2] : null]);
      }
      $("lat-note").textContent = "(each point: the minute before it)";
    } else {
      const h = hist();
      const t = h && (h.tools || []).find((x) => x.tool === tool);
      if (h && t) {
        t.series.forEach((l, i) => {
          const at = h.from_ms + i * h.bucket_ms + h.bucket_ms / 2;
          p50.push([at, l ? l[0] : null]); p95.push([at, l ? l[1] : null]); p99.push([at, l ? l[2] : null]);
        });
      }
      $("lat-note").textContent = h ? "(per " + fmtDur(h.bucket_ms / 1000) + ")" : "";
    }
    lineChart($("chart-lat"), {
      from, to, label: "Latency of " + (tool || "no tool"),
      series: [
        { name: "p50", color: C.blue, data: p50 },
        { name: "p95", color: C.orange, dash: "7 3", data: p95 },
        { name: "p99", color: C.vermillion, dash: "2 3", data: p99 },
      ],
      thresholds: num(slo) !== null ? [{ value: slo, label: "SLO p95 " + fmtMs(slo), legend: "SLO: 95 % within " + fmtMs(slo) }] : [],
      yFmt: fmtMs, log: true,
      empty: tool ? "No calls of " + tool + " in this range" : "No calls in this range yet",
    });
  }

  function stateBadge(o) {
    if (o.state === "page") return el("span", { class: "badge bad", text: "page" });
    if (o.state === "ticket") return el("span", { class: "badge warn", text: "ticket" });
    if (o.budget_low) return el("span", { class: "badge warn", text: "budget low" });
    return el("span", { class: "badge ok", text: "ok" });
  }

  function renderSlo() {
    const s = state.snap;
    const slo = (s && s.slo) || {};
    const list = slo.objectives || [];
    const summary = $("slo-summary");
    const tbody = clear($("slo-table").querySelector("tbody"));
    if (!s) return;
    summary.textContent = fmtInt(slo.count) + " objectives; " + fmtInt(list.length) + " with traffic in the SLO period; " +
      fmtInt(slo.alerting) + " alerting; " + fmtInt(slo.budget_low) + " with a low error budget. Burn rate 1 = spending the budget exactly as fast as the period allows.";
    if (!list.length) {
      tbody.append(el("tr", {}, el("td", { colspan: 9, class: "na", text: "No objective has had traffic yet." })));
    }
    const shown = state.sloAll ? list : list.slice(0, 10);
    for (const o of shown) {
      const left = num(o.budget_left);
      const lvl = left === null ? null : left < 0.1 ? "bad" : left < 0.3 ? "warn" : null;
      const frac = left === null ? 0 : Math.max(0, Math.min(1, left));
      const target = o.kind === "latency" ? fmtPct(o.objective, 1) + " ≤ " + fmtMs(o.threshold_ms) : fmtPct(o.objective, 1) + " ok";
      const burn = (w) => { const b = o.burn && o.burn[w]; return el("td", { class: "num", text: num(b) === null ? "–" : fmtNum(b, 2) }); };
      tbody.append(el("tr", { "data-slo": o.slo },
        el("td", {}, el("code", { text: o.tool }), el("span", { class: "tag", text: o.kind })),
        el("td", { class: "num", text: target }),
        el("td", { class: "num", text: fmtPct(o.sli, 2) }),
        el("td", {}, el("span", { class: "budget" },
          el("span", { class: "track", "aria-hidden": "true" }, el("span", { class: "fill", "data-level": lvl, style: "width:" + (frac * 100).toFixed(1) + "%" })),
          el("span", { text: left === null ? "–" : fmtPct(left, 1) }))),
        burn("5m"), burn("1h"), burn("6h"),
        el("td", {}, stateBadge(o)),
        el("td", { class: "num", text: num(o.tte_s) !== null ? fmtDur(o.tte_s) : "not burning" })));
    }
    const more = $("slo-more");
    if (list.length > 10) {
      more.hidden = false;
      more.textContent = state.sloAll ? "Show the 10 worst" : "Show all " + list.length;
    } else more.hidden = true;
  }

  function renderCache() {
    const s = state.snap;
    const c = (s && s.cache) || null;
    const tiles = clear($("cache-tiles"));
    if (!c) return;
    const h = hist();
    const hit = state.range === "5m" ? s.range.hit_ratio : h && h.cache ? h.cache.hit_ratio : null;
    tiles.append(
      tile("Hit rate", fmtPct(hit, 1), rangeLabel(state.range), { metric: "cache-hit", raw: hit, level: num(hit) !== null && hit < 0.5 ? "warn" : null }),
      tile("Since start", fmtPct(c.hit_ratio, 1), fmtInt(c.hits) + " hits, " + fmtInt(c.misses) + " misses", { metric: "cache-hit-total", raw: c.hit_ratio }),
      tile("Workbooks held", fmtInt(c.entries), fmtInt(c.invalidations) + " dropped as changed"),
      tile("Evictions", fmtInt(c.evictions), "to stay within the bound", { metric: "evictions", raw: c.evictions, level: c.evictions > 0 ? "warn" : null }),
    );
    const frac = c.capacity > 0 ? c.bytes / c.capacity : 0;
    clear($("cache-meter")).append(el("div", { class: "meter" },
      el("span", { text: "Memory used" }),
      el("span", { class: "track", role: "meter", "aria-valuemin": 0, "aria-valuemax": c.capacity, "aria-valuenow": c.bytes, "aria-label": "cache bytes used" },
        el("span", { class: "fill", style: "width:" + (Math.min(1, frac) * 100).toFixed(1) + "%" })),
      el("span", { text: fmtBytes(c.bytes) + " of " + fmtBytes(c.capacity) })));
    const top = clear($("cache-top"));
    if (state.range === "5m") {
      $("keys-note").textContent = "(accesses while cached)";
      const max = Math.max(1, ...(c.top || []).map((x) => x.accesses));
      for (const x of (c.top || []).slice(0, 8)) top.append(barRow(x.workbook, x.accesses / max, fmtInt(x.accesses)));
      if (!(c.top || []).length) top.append(el("li", {}, na("No workbook in the cache.")));
    } else {
      $("keys-note").textContent = "(calls, " + rangeLabel(state.range) + ")";
      const keys = (h && h.top_keys) || [];
      const max = Math.max(1, ...keys.map((x) => x.calls));
      for (const x of keys.slice(0, 8)) top.append(barRow(x.workbook, x.calls / max, fmtInt(x.calls) + (x.misses ? " · " + fmtInt(x.misses) + " loads" : "")));
      if (!keys.length) top.append(el("li", {}, na(h ? "No workbook calls in this range." : "Loading…")));
    }
    renderWhatIf(c);
  }

  function renderWhatIf(c) {
    const host = $("chart-whatif");
    const L = state.learn;
    const note = $("whatif-note");
    if (!L || !L.available || !L.cache || !Array.isArray(L.cache.whatif) || !L.cache.whatif.length) {
      clear(host).append(na(L && L.reason ? "Not available: " + L.reason : L ? "Not enough request-log data yet (the what-if replays the last day of workbook accesses)." : "Loading the learning view…"));
      note.textContent = "";
      return;
    }
    const byPolicy = {};
    for (const p of L.cache.whatif) (byPolicy[p.policy] = byPolicy[p.policy] || []).push([p.capacity_mb, p.predicted_hit_rate]);
    const colors = { lru: C.blue, gdsf: C.orange, lfu: C.green };
    const dashes = { lru: null, gdsf: "6 3", lfu: "2 3" };
    const series = Object.entries(byPolicy).map(([pol, data]) => ({ name: pol.toUpperCase() + (pol === "lru" ? " (Gemba's)" : ""), color: colors[pol] || C.purple, dash: dashes[pol], data: data.sort((a, b) => a[0] - b[0]) }));
    const markers = [{ x: c.capacity / 1048576, label: "now " + fmtNum(c.capacity / 1048576, 0) + " MiB" }];
    const rec = L.cache.recommendation;
    if (rec && num(rec.capacity_mb) !== null) markers.push({ x: rec.capacity_mb, label: "advised " + fmtNum(rec.capacity_mb, 0) + " MiB", row: 1 });
    xyChart(host, { series, markers, xUnit: " MiB", label: "Predicted hit rate by cache size" });
    note.textContent = "(replay of the last day" + (rec ? "; advice: " + rec.reason : "") + ")";
  }

  function renderStream() {
    const legend = clear($("stream-legend"));
    for (const [name, color] of STAGES) legend.append(el("li", {}, el("span", { class: "sw", style: "background:" + color }), el("span", { text: name })));
    const bars = clear($("stream-bars"));
    const note = $("stream-note");
    let rows = [];
    if (state.range === "5m") {
      const tools = (state.snap && state.snap.tools) || [];
      rows = tools.map((t) => ({ tool: t.tool, stages: t.stages || {} }));
      note.textContent = "Time in each stage over the last 5 minutes; queue = waiting for an admission slot. Protocol methods have no stages.";
    } else {
      const h = hist();
      rows = ((h && h.tools) || []).map((t) => ({ tool: t.tool, stages: t.stages || {} }));
      note.textContent = "Time in each stage, " + rangeLabel(state.range) + ", from the request log; queue = waiting for an admission slot.";
    }
    rows = rows.map((r) => ({ ...r, total: STAGES.reduce((a, [k]) => a + (num(r.stages[k]) || 0), 0) })).filter((r) => r.total > 0).sort((a, b) => b.total - a.total).slice(0, 10);
    if (!rows.length) { bars.append(el("li", {}, na("No tool calls with measured stages in this range."))); return; }
    const max = rows[0].total;
    for (const r of rows) {
      const track = el("span", { class: "track", style: "width:" + Math.max(2, (r.total / max) * 100).toFixed(1) + "%" });
      const parts = [];
      for (const [k, color] of STAGES) {
        const v = num(r.stages[k]) || 0;
        if (v <= 0) continue;
        parts.push(k + " " + fmtPct(v / r.total, 0));
        track.append(el("span", { class: "seg", style: "width:" + ((v / r.total) * 100).toFixed(2) + "%;background:" + color, title: k + ": " + fmtMs(v * 1000) + " (" + fmtPct(v / r.total, 0) + ")" }));
      }
      bars.append(el("li", { "data-tool": r.tool },
        el("span", { class: "name", title: r.tool, text: r.tool }),
        el("span", { style: "display:block" }, track),
        el("span", { class: "v", text: fmtMs(r.total * 1000) }),
        el("span", { class: "sr", text: parts.join(", ") })));
    }
  }

  function renderResources() {
    const s = state.snap;
    const r = (s && s.resources) || null;
    const tiles = clear($("res-tiles"));
    if (!r) return;
    const memFrac = r.memory_limit > 0 ? r.rss / r.memory_limit : null;
    tiles.append(
      tile("Memory (RSS)", fmtBytes(r.rss), memFrac !== null ? fmtPct(memFrac, 1) + " of " + fmtBytes(r.memory_limit) : "", { metric: "rss", raw: r.rss, level: memFrac > 0.9 ? "bad" : memFrac > 0.75 ? "warn" : null }),
      tile("CPU", num(r.cpu) !== null ? fmtNum(r.cpu, 2) + " cores" : "–", fmtNum(r.cpu_seconds, 1) + " CPU s since start", { metric: "cpu", raw: r.cpu }),
      tile("Threads", fmtInt(r.threads), "", { metric: "threads", raw: r.threads }),
      tile("Open files", fmtInt(r.fds), "file descriptors", { metric: "fds", raw: r.fds }),
      tile("State directory", fmtBytes(r.state_dir_bytes), "request log, forks, checkpoints", { metric: "state-dir", raw: r.state_dir_bytes }),
    );
    const { from, to } = rangeBounds();
    let rss = [], cpu = [];
    const note = $("res-note");
    if (state.range === "5m") {
      rss = state.points.map((p) => [p.t, p.rss]);
      cpu = state.points.map((p) => [p.t, p.cpu]);
      note.textContent = "";
    } else {
      const h = hist();
      const mins = (h && Array.isArray(h.minutes)) ? h.minutes : [];
      rss = mins.map((p) => [p.t, p.rss]);
      cpu = mins.map((p) => [p.t, p.cpu]);
      note.textContent = mins.length && mins[0].t > from + 120e3 ? "(sampled each minute since the server started " + fmtAgo(mins[0].t) + ")" : "(sampled each minute)";
    }
    lineChart($("chart-rss"), { from, to, height: 130, label: "Memory", series: [{ name: "RSS", color: C.blue, data: rss }], yFmt: fmtBytes });
    lineChart($("chart-cpu"), { from, to, height: 130, label: "CPU", series: [{ name: "cores busy", color: C.orange, data: cpu }], yFmt: (v) => fmtNum(v, 2), yMin: 1 });
  }

  function renderWork() {
    const s = state.snap;
    const w = (s && s.work) || null;
    const tiles = clear($("work-tiles"));
    if (!w) return;
    const recalc = w.recalc || {};
    const breaker = ["closed", "open", "half-open"][w.breaker_state] || "–";
    tiles.append(
      tile("Workbooks opened", fmtInt(w.workbooks_loaded), fmtInt(w.sheets_loaded) + " sheets, " + fmtNum(w.cells_loaded) + " cells", { metric: "workbooks-loaded", raw: w.workbooks_loaded }),
      tile("Forks", fmtInt(w.forks_created) + " created", fmtInt(w.forks_saved) + " saved, " + fmtInt(w.forks_discarded) + " discarded, " + fmtInt(w.forks_open) + " open", { metric: "forks-created", raw: w.forks_created }),
      tile("Cells edited", fmtInt(w.cells_edited), "in forks"),
      tile("Recalculations", fmtInt((recalc.in_process || 0) + (recalc.libreoffice || 0)), fmtInt(recalc.in_process || 0) + " in process, " + fmtInt(recalc.libreoffice || 0) + " LibreOffice"),
      tile("LibreOffice breaker", breaker, fmtInt(w.recalc_failures) + " failures, " + fmtInt(w.recalc_timeouts) + " timeouts", { level: w.breaker_state === 1 ? "bad" : w.breaker_state === 2 ? "warn" : null }),
    );
    const h = hist();
    const funnel = clear($("funnel"));
    const fam = clear($("families"));
    if (!h || h.error) {
      funnel.append(el("li", {}, na(h && h.error ? "Not available: " + h.error : "Loading the request log…")));
      $("funnel-note").textContent = "";
      return;
    }
    const f = h.funnel || {};
    $("funnel-note").textContent = "(sessions, " + rangeLabel(state.range) + ")";
    const steps = [["sessions", f.sessions], ["listed or described a workbook", f.discovered], ["then looked at its structure", f.structure], ["then made a targeted read", f.read]];
    const top = Math.max(1, f.sessions || 0);
    for (const [name, n] of steps) funnel.append(barRow(name, (n || 0) / top, fmtInt(n) + (name !== "sessions" && f.sessions ? " (" + fmtPct((n || 0) / f.sessions, 0) + ")" : "")));
    const fams = Object.entries(h.families || {}).sort((a, b) => b[1] - a[1]);
    const fmax = Math.max(1, ...fams.map(([, n]) => n));
    const famNames = { discovery: "discovery (list, describe)", structure: "structure and search", read: "targeted reads", write: "forks and writes", protocol: "protocol (list tools, ping…)" };
    for (const [k, n] of fams) fam.append(barRow(famNames[k] || k, n / fmax, fmtInt(n)));
    if (!fams.length) fam.append(el("li", {}, na("No calls in this range.")));
  }

  function renderErrors() {
    const h = hist();
    const list = clear($("err-tools"));
    const recent = clear($("err-recent"));
    $("err-note").textContent = "(" + rangeLabel(state.range) + ")";
    if (!h || h.error) {
      list.append(el("li", {}, na(h && h.error ? "Not available: " + h.error : "Loading the request log…")));
    } else {
      const tools = (h.tools || []).filter((t) => t.errors > 0).sort((a, b) => b.errors - a.errors).slice(0, 8);
      const max = Math.max(1, ...tools.map((t) => t.errors));
      for (const t of tools) {
        const outs = Object.entries(t.outcomes || {}).filter(([k]) => k !== "ok" && k !== "cancelled").map(([k, v]) => k.replace("_", " ") + " " + v).join(", ");
        list.append(barRow(t.tool, t.errors / max, fmtInt(t.errors) + " (" + fmtPct(t.errors / t.calls, 1) + ")", C.vermillion, { title: outs }));
      }
      if (!tools.length) list.append(el("li", {}, na("No failed calls in this range.")));
      const groups = [];
      for (const e of h.recent_errors || []) {
        const g = groups.find((x) => x.e.tool === e.tool && x.e.outcome === e.outcome && x.e.message === e.message);
        if (g) g.n++; else groups.push({ e, n: 1 });
      }
      for (const { e, n } of groups.slice(0, 5)) {
        recent.append(el("li", { "data-level": e.class === "system" || e.outcome === "internal" ? "bad" : "warn" },
          el("span", { class: "meta", text: fmtClock(e.at_ms, true) + (n > 1 ? " (and " + (n - 1) + " more like it)" : "") + " · " + e.tool + " · " + (e.outcome || "").replace("_", " ") + (e.class ? " (" + e.class + ")" : "") + (e.workbook ? " · " + e.workbook : "") }),
          el("span", { class: "msg", text: e.message || "(no message)" })));
      }
      if (!(h.recent_errors || []).length) recent.append(el("li", { "data-level": "ok" }, el("span", { class: "msg", text: "No failures in this range." })));
    }
    const sigs = clear($("err-sigs"));
    const backlog = clear($("backlog"));
    const L = state.learn;
    if (!L || !L.available) {
      const why = L ? "Not available: " + (L.reason || "no learning data") : "Loading the learning view…";
      sigs.append(el("li", {}, el("span", { class: "msg", text: why })));
      backlog.append(el("li", {}, el("span", { class: "msg", text: why })));
      $("sig-note").textContent = "";
      return;
    }
    const e = L.errors || {};
    $("sig-note").textContent = "(" + fmtInt(e.total) + " errors" + (e.by_category ? ": " + Object.entries(e.by_category).map(([k, v]) => k + " " + v).join(", ") : "") + (num(L.until_ms) !== null ? "; as of " + fmtClock(L.until_ms, false) + ", every 5 min" : "") + ")";
    for (const s of (e.top || []).slice(0, 6)) {
      sigs.append(el("li", { "data-level": s.category === "system" ? "bad" : "warn" },
        el("span", { class: "meta", text: s.tool + " · " + s.category + " · " + fmtInt(s.count) + " (" + fmtPct(s.share, 0) + " of errors) · last " + (s.last_seen || "") }),
        el("span", { class: "msg", text: s.signature })));
    }
    if (!(e.top || []).length) sigs.append(el("li", { "data-level": "ok" }, el("span", { class: "msg", text: "No errors in the last day." })));
    for (const b of (L.backlog || [])) {
      backlog.append(el("li", {}, el("span", { class: "msg", text: b.title }), el("span", { class: "meta", text: b.suggestion + " (score " + fmtNum(b.score, 1) + ")" })));
    }
    if (!(L.backlog || []).length) backlog.append(el("li", { "data-level": "ok" }, el("span", { class: "msg", text: "Nothing to improve found in the last day." })));
  }

  function renderIncidents() {
    const list = clear($("incident-list"));
    const d = state.incidents;
    if (d === undefined) { list.append(el("li", {}, el("span", { class: "msg", text: "Loading…" }))); return; }
    if (!d || !Array.isArray(d.incidents)) { list.append(el("li", {}, el("span", { class: "msg", text: "Not available: this server has no incident detection (/incidents.json)." }))); return; }
    if (d.detect === "disabled") { list.append(el("li", {}, el("span", { class: "msg", text: "Not enabled: incident detection is off on this server." }))); return; }
    const items = [...d.incidents].sort((a, b) => (a.closed ? 1 : 0) - (b.closed ? 1 : 0) || String(b.opened).localeCompare(String(a.opened))).slice(0, 6);
    if (!items.length) { list.append(el("li", { "data-level": "ok" }, el("span", { class: "msg", text: "No incidents." }))); return; }
    for (const i of items) {
      const cause = (i.causes || [])[0];
      list.append(el("li", { "data-level": i.closed ? "ok" : "bad" },
        el("span", { class: "meta", text: (i.closed ? "closed " + String(i.closed) : "OPEN since " + String(i.opened)) + " · " + ((i.tools || []).join(", ") || "server") }),
        el("span", { class: "msg", text: cause ? "Likely " + cause.cause + " (" + fmtNum(cause.score, 2) + "): " + (cause.evidence || "") : "Causes not ranked yet" })));
    }
  }

  function renderExperiments() {
    const list = clear($("experiment-list"));
    const d = state.experiments;
    if (d === undefined) { list.append(el("li", {}, el("span", { class: "msg", text: "Loading…" }))); return; }
    if (!d || !Array.isArray(d.experiments)) { list.append(el("li", {}, el("span", { class: "msg", text: "Not available: this server runs no experiments (/experiments.json)." }))); return; }
    if (!d.experiments.length) { list.append(el("li", {}, el("span", { class: "msg", text: d.note ? "Not enabled: " + String(d.note) + "." : "No experiments configured." }))); return; }
    for (const x of d.experiments.slice(0, 8)) {
      const variants = (x.variants || []).map((v) => v.name + " " + fmtPct(v.share, 0) + " (" + fmtInt(v.samples) + ")").join(" · ");
      const stats = [];
      if (num(x.effect) !== null) stats.push("effect " + fmtPct(x.effect, 1));
      if (num(x.p_value) !== null) stats.push("p = " + fmtNum(x.p_value, 3));
      if (num(x.predicted_samples) !== null) stats.push("needs ≈ " + fmtInt(x.predicted_samples) + " samples");
      const bad = /roll|frozen|fail/.test(String(x.state));
      list.append(el("li", { "data-level": bad ? "bad" : /complete|done/.test(String(x.state)) ? "ok" : "warn" },
        el("span", { class: "meta", text: x.name + " · " + x.kind + " · " + x.state + (x.metric ? " · " + x.metric : "") }),
        el("span", { class: "msg", text: variants + (stats.length ? " — " + stats.join(", ") : "") + (x.decision ? " — " + (typeof x.decision === "string" ? x.decision : JSON.stringify(x.decision)) : "") })));
    }
  }

  function render() {
    const steps = [renderHeader, renderNow, renderSlo, renderCache, renderStream, renderResources, renderWork, renderErrors, renderIncidents, renderExperiments];
    // One panel's failure (say, an optional source with an unexpected shape) leaves the others
    // drawn; it is logged as an error, so the browser test still fails on it.
    for (const f of steps) {
      try { f(); } catch (e) { console.error(f.name + " failed: " + (e && e.stack || e)); }
    }
    if (state.lastUpdate) $("updated").textContent = "updated " + fmtClock(state.lastUpdate, true);
  }

  // ---------- data sources ----------
  function setConn(s, text) {
    const c = $("conn");
    c.dataset.state = s;
    $("conn-text").textContent = text;
  }

  function connect() {
    const es = new EventSource("/dashboard/stream");
    es.addEventListener("series", (e) => {
      const d = JSON.parse(e.data);
      const seen = new Set(state.points.map((p) => p.t));
      for (const p of d.points || []) if (!seen.has(p.t)) state.points.push(p);
      state.points.sort((a, b) => a.t - b.t);
    });
    es.addEventListener("snapshot", (e) => {
      const s = JSON.parse(e.data);
      state.snap = s;
      state.lastUpdate = Date.now();
      if (s.point && !state.points.some((p) => p.t === s.point.t)) state.points.push(s.point);
      const cutoff = s.at_ms - RANGE_MS["5m"];
      state.points = state.points.filter((p) => p.t >= cutoff);
      setConn("live", "live");
      document.body.dataset.updates = String((Number(document.body.dataset.updates) || 0) + 1);
      render();
    });
    es.onerror = () => {
      setConn(es.readyState === EventSource.CLOSED ? "lost" : "connecting", es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting");
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
    };
  }

  async function getJson(url) {
    const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (!r.ok) return { status: r.status, body: null };
    return { status: r.status, body: await r.json() };
  }

  const timers = {};
  function every(name, ms, f) {
    const run = async () => {
      try { if (document.visibilityState !== "hidden") await f(); } catch (e) { console.warn(name + " failed: " + e); }
      timers[name] = setTimeout(run, ms);
    };
    clearTimeout(timers[name]);
    run();
  }

  async function loadHistory() {
    const range = state.range;
    const { body } = await getJson("/dashboard/history.json?range=" + range);
    state.history[range] = body || { error: "the request-log view could not be read" };
    render();
  }
  async function loadLearn() {
    const { body } = await getJson("/dashboard/learn.json");
    state.learn = body || { available: false, reason: "the learning view could not be read" };
    render();
  }
  async function loadOptional() {
    const inc = await getJson("/incidents.json");
    state.incidents = inc.body;
    const exp = await getJson("/experiments.json");
    state.experiments = exp.body;
    render();
  }

  function setRange(r) {
    if (!RANGE_MS[r]) return;
    state.range = r;
    every("history", HISTORY_EVERY[r], loadHistory);
    render();
  }

  function start() {
    for (const input of document.querySelectorAll('input[name="range"]')) {
      input.addEventListener("change", () => { if (input.checked) setRange(input.value); });
    }
    $("tool-select").addEventListener("change", (e) => { state.tool = e.target.value; state.toolChosen = true; render(); });
    $("slo-more").addEventListener("click", () => { state.sloAll = !state.sloAll; renderSlo(); });
    let resizeTimer = null;
    window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(render, 150); });
    document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") { every("optional", OPTIONAL_EVERY, loadOptional); } });
    render();
    connect();
    setRange(state.range);
    every("learn", LEARN_EVERY, loadLearn);
    every("optional", OPTIONAL_EVERY, loadOptional);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
