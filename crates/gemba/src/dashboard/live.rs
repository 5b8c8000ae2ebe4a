//! The live view: one snapshot every interval, computed from the same in-process figures
//! `/metrics.json` (`kaizen::exposition::summary`) and `/slo.json` (`slo::status_json`) show,
//! plus a ring of the last five minutes of points for the charts.
//!
//! Everything here is a pure function of what was gathered, so it is tested on real summaries.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use serde_json::{Map, Value, json};

/// Points kept for the 5-minute charts (at a 2 s interval, 5 minutes).
pub const RING_POINTS: usize = 150;
/// The span the ring covers.
pub const RING_SPAN_MS: u64 = 5 * 60 * 1000;

/// What one snapshot is computed from.
#[derive(Debug, Clone)]
pub struct Gathered {
    pub at_ms: u64,
    /// `kaizen::exposition::summary(&recorder)`, as `/metrics.json` serves it.
    pub metrics: Value,
    /// `slo::status_json(&sli)`, as `/slo.json` serves it.
    pub slo: Value,
    /// Seconds spent waiting for an admission slot, per op (cumulative).
    pub queue_seconds: BTreeMap<String, f64>,
}

/// One chart point (what the page plots for the 5-minute range).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Unix milliseconds.
    pub t: u64,
    /// Requests per second since the previous point (None for the first point after a pause).
    pub rate: Option<f64>,
    /// Errors over requests since the previous point (None without requests).
    pub err: Option<f64>,
    pub inflight: f64,
    pub queued: f64,
    /// Refusals per second since the previous point.
    pub refused: Option<f64>,
    /// Cache hit ratio since the previous point (None without lookups).
    pub hit: Option<f64>,
    pub rss: f64,
    /// CPU time over wall time since the previous point (1.0 = one core busy).
    pub cpu: Option<f64>,
    pub cache_bytes: f64,
    /// Per op with traffic in the last minute: p50, p95, p99 in ms over the sliding minute.
    pub lat: BTreeMap<String, [f64; 3]>,
}

/// Cumulative figures of one op at one point (for range deltas).
#[derive(Debug, Clone, Default)]
struct OpTotals {
    calls: u64,
    errors: u64,
    /// Seconds per stage (the recorder's stage names, then "queue").
    stages: BTreeMap<String, f64>,
}

/// Cumulative counters at one point.
#[derive(Debug, Clone, Default)]
struct Totals {
    at_ms: u64,
    calls: u64,
    errors: u64,
    refused: f64,
    hits: f64,
    misses: f64,
    cpu_seconds: f64,
    ops: BTreeMap<String, OpTotals>,
}

/// The producer's memory: the ring of points and the totals they were differenced from.
#[derive(Debug, Default)]
pub struct Live {
    ring: VecDeque<(Point, Totals)>,
}

/// Outcomes that are not errors: success, and calls the client itself cancelled.
fn is_error(outcome: &str) -> bool {
    outcome != "ok" && outcome != "cancelled"
}

fn other(metrics: &Value, key: &str) -> f64 {
    metrics["other"][key].as_f64().unwrap_or(0.0)
}

/// Errors of one op in a `/metrics.json` tool entry.
fn op_errors(t: &Value) -> u64 {
    t["outcomes"]
        .as_object()
        .map(|o| o.iter().filter(|(k, _)| is_error(k)).map(|(_, v)| v.as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

fn totals_of(g: &Gathered) -> Totals {
    let m = &g.metrics;
    let mut t = Totals {
        at_ms: g.at_ms,
        refused: other(m, "gemba_requests_refused"),
        hits: other(m, "gemba_cache_hits"),
        misses: other(m, "gemba_cache_misses"),
        cpu_seconds: m["process"]["cpu_seconds"].as_f64().unwrap_or(0.0),
        ..Default::default()
    };
    for tool in m["tools"].as_array().into_iter().flatten() {
        let name = tool["tool"].as_str().unwrap_or("").to_string();
        let calls = tool["requests"].as_u64().unwrap_or(0);
        let errors = op_errors(tool);
        t.calls += calls;
        t.errors += errors;
        let mut stages: BTreeMap<String, f64> = tool["stages"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v["seconds"].as_f64().unwrap_or(0.0))).collect())
            .unwrap_or_default();
        stages.insert("queue".into(), g.queue_seconds.get(&name).copied().unwrap_or(0.0));
        t.ops.insert(name, OpTotals { calls, errors, stages });
    }
    t
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// A previous point further back than this is not differenced against (the live view paused
/// while nobody watched): the first point after a pause has no rates.
const MAX_GAP_MS: u64 = 10_000;

fn point_of(g: &Gathered, now: &Totals, prev: Option<&Totals>) -> Point {
    let m = &g.metrics;
    let mut lat = BTreeMap::new();
    for tool in m["tools"].as_array().into_iter().flatten() {
        let w = &tool["windows"]["1m"];
        if w["count"].as_u64().unwrap_or(0) > 0 {
            let q = |k: &str| round(w[k].as_f64().unwrap_or(0.0), 3);
            lat.insert(tool["tool"].as_str().unwrap_or("").to_string(), [q("p50_ms"), q("p95_ms"), q("p99_ms")]);
        }
    }
    let in_flight: f64 =
        m["tools"].as_array().into_iter().flatten().map(|t| t["in_flight"].as_f64().unwrap_or(0.0)).sum();
    let (rate, err, refused, hit, cpu) = match prev {
        Some(p) if now.at_ms > p.at_ms && now.at_ms - p.at_ms <= MAX_GAP_MS => {
            let secs = (now.at_ms - p.at_ms) as f64 / 1000.0;
            let calls = now.calls.saturating_sub(p.calls) as f64;
            let errors = now.errors.saturating_sub(p.errors) as f64;
            let hits = (now.hits - p.hits).max(0.0);
            let lookups = hits + (now.misses - p.misses).max(0.0);
            (
                Some(round(calls / secs, 3)),
                ratio(errors, calls).map(|x| round(x, 5)),
                Some(round((now.refused - p.refused).max(0.0) / secs, 3)),
                ratio(hits, lookups).map(|x| round(x, 5)),
                Some(round((now.cpu_seconds - p.cpu_seconds).max(0.0) / secs, 4)),
            )
        }
        _ => (None, None, None, None, None),
    };
    Point {
        t: g.at_ms,
        rate,
        err,
        inflight: in_flight,
        queued: other(m, "gemba_calls_queued"),
        refused,
        hit,
        rss: m["process"]["resident_memory_bytes"].as_f64().unwrap_or(0.0),
        cpu,
        cache_bytes: other(m, "gemba_cache_bytes"),
        lat,
    }
}

/// Protocol methods (not tools) carry a slash or are one of the lifecycle names.
fn kind_of(op: &str) -> &'static str {
    if op.contains('/') || ["initialize", "ping", "unknown"].contains(&op) { "protocol" } else { "tool" }
}

impl Live {
    /// Add a point for `g` (dropping points older than five minutes) and return the snapshot
    /// the page shows, as JSON.
    pub fn update(&mut self, g: &Gathered, version: &str, interval_ms: u64) -> Value {
        let now = totals_of(g);
        let point = point_of(g, &now, self.ring.back().map(|(_, t)| t));
        let snapshot = self.snapshot(g, &now, &point, version, interval_ms);
        self.ring.push_back((point, now));
        while self.ring.len() > RING_POINTS || self.ring.front().is_some_and(|(p, _)| p.t + RING_SPAN_MS < g.at_ms) {
            self.ring.pop_front();
        }
        snapshot
    }

    /// The points of the last five minutes, oldest first.
    pub fn points(&self, now_ms: u64) -> Vec<&Point> {
        self.ring.iter().map(|(p, _)| p).filter(|p| p.t + RING_SPAN_MS >= now_ms).collect()
    }

    fn snapshot(&self, g: &Gathered, now: &Totals, point: &Point, version: &str, interval_ms: u64) -> Value {
        let m = &g.metrics;
        // The oldest point within five minutes: the range's deltas are taken against it.
        let base = self.ring.iter().map(|(_, t)| t).find(|t| t.at_ms + RING_SPAN_MS >= g.at_ms);
        let span_s = base.map(|b| (g.at_ms.saturating_sub(b.at_ms)) as f64 / 1000.0).unwrap_or(0.0);
        let thresholds = latency_thresholds(&g.slo);
        let mut tools = Vec::new();
        for tool in m["tools"].as_array().into_iter().flatten() {
            let name = tool["tool"].as_str().unwrap_or("");
            let cur = now.ops.get(name).cloned().unwrap_or_default();
            let old = base.and_then(|b| b.ops.get(name)).cloned().unwrap_or_default();
            let w5 = &tool["windows"]["5m"];
            let q = |k: &str| w5[k].as_f64().map(|x| round(x, 3));
            let stages: Map<String, Value> = cur
                .stages
                .iter()
                .map(|(k, v)| (k.clone(), json!(round((v - old.stages.get(k).copied().unwrap_or(0.0)).max(0.0), 6))))
                .collect();
            let stages_total: Map<String, Value> =
                cur.stages.iter().map(|(k, v)| (k.clone(), json!(round(*v, 6)))).collect();
            tools.push(json!({
                "tool": name,
                "kind": kind_of(name),
                "calls": cur.calls,
                "errors": cur.errors,
                "outcomes": tool["outcomes"],
                "in_flight": tool["in_flight"],
                "range_calls": cur.calls.saturating_sub(old.calls),
                "range_errors": cur.errors.saturating_sub(old.errors),
                "window_count": w5["count"].as_u64().unwrap_or(0),
                "p50_ms": q("p50_ms"),
                "p95_ms": q("p95_ms"),
                "p99_ms": q("p99_ms"),
                "max_ms": q("max_ms"),
                "slo_ms": thresholds.get(name),
                "stages": stages,
                "stages_total": stages_total,
            }));
        }
        let range_calls = base.map(|b| now.calls.saturating_sub(b.calls)).unwrap_or(0);
        let range_errors = base.map(|b| now.errors.saturating_sub(b.errors)).unwrap_or(0);
        let range_refused = base.map(|b| (now.refused - b.refused).max(0.0)).unwrap_or(0.0);
        let range_hits = base.map(|b| (now.hits - b.hits).max(0.0)).unwrap_or(0.0);
        let range_misses = base.map(|b| (now.misses - b.misses).max(0.0)).unwrap_or(0.0);
        let p = &m["process"];
        json!({
            "at_ms": g.at_ms,
            "interval_ms": interval_ms,
            "uptime_s": m["uptime_seconds"],
            "version": version,
            "point": point,
            "totals": {
                "calls": now.calls,
                "errors": now.errors,
                "error_ratio": ratio(now.errors as f64, now.calls as f64),
                "refused": now.refused,
                "in_flight": point.inflight,
                "queued": point.queued,
                "max_inflight": other(m, "gemba_inflight_limit"),
                "slots_free": other(m, "gemba_inflight_slots_free"),
            },
            "range": {
                "secs": round(span_s, 1),
                "calls": range_calls,
                "errors": range_errors,
                "refused": range_refused,
                "rate": if span_s > 0.0 { Some(round(range_calls as f64 / span_s, 3)) } else { None },
                "error_ratio": ratio(range_errors as f64, range_calls as f64),
                "hit_ratio": ratio(range_hits, range_hits + range_misses),
            },
            "tools": tools,
            "slo": slo_section(&g.slo),
            "cache": cache_section(m),
            "resources": {
                "rss": p["resident_memory_bytes"],
                "memory_limit": p["memory_limit_bytes"],
                "cpu_seconds": p["cpu_seconds"],
                "cpu": point.cpu,
                "threads": p["threads"],
                "fds": p["open_fds"],
                "state_dir_bytes": other(m, "gemba_state_dir_bytes"),
            },
            "work": work_section(m),
            "log": { "dropped_events": m["dropped_events"], "dropped_log_rows": m["dropped_log_rows"] },
        })
    }
}

/// Each tool's latency objective threshold, in ms.
fn latency_thresholds(slo: &Value) -> BTreeMap<String, f64> {
    slo["objectives"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| Some((o["tool"].as_str()?.to_string(), o["latency_threshold_seconds"].as_f64()? * 1000.0)))
        .collect()
}

fn severity_rank(o: &Value) -> u8 {
    match o["state"].as_str() {
        Some("page") => 0,
        Some("ticket") => 1,
        _ if o["budget_low"].as_bool() == Some(true) => 2,
        _ => 3,
    }
}

/// The objectives worth showing (with traffic in the period, or alerting), worst first, and
/// counts over all of them.
pub fn slo_section(slo: &Value) -> Value {
    let all: Vec<&Value> = slo["objectives"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let mut shown: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|o| o["requests_period"].as_u64().unwrap_or(0) > 0 || severity_rank(o) < 3)
        .collect();
    shown.sort_by(|a, b| {
        severity_rank(a)
            .cmp(&severity_rank(b))
            .then(
                a["error_budget_remaining"]
                    .as_f64()
                    .unwrap_or(1.0)
                    .total_cmp(&b["error_budget_remaining"].as_f64().unwrap_or(1.0)),
            )
            .then(b["requests_period"].as_u64().cmp(&a["requests_period"].as_u64()))
    });
    let objectives: Vec<Value> = shown
        .iter()
        .map(|o| {
            let burn: Map<String, Value> = o["burn_rates"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_str()?.to_string(), json!(round(p[1].as_f64()?, 3)))))
                .collect();
            json!({
                "slo": o["slo"],
                "tool": o["tool"],
                "tier": o["tier"],
                "kind": if o["latency_threshold_seconds"].is_number() { "latency" } else { "availability" },
                "threshold_ms": o["latency_threshold_seconds"].as_f64().map(|s| round(s * 1000.0, 3)),
                "objective": o["objective"],
                "sli": o["sli"],
                "budget_left": o["error_budget_remaining"],
                "burn": burn,
                "state": o["state"],
                "budget_low": o["budget_low"],
                "tte_s": o["time_to_exhaustion_secs"],
                "requests": o["requests_period"],
            })
        })
        .collect();
    json!({
        "count": all.len(),
        "alerting": all.iter().filter(|o| severity_rank(o) < 2).count(),
        "budget_low": all.iter().filter(|o| o["budget_low"].as_bool() == Some(true)).count(),
        "objectives": objectives,
    })
}

/// Labelled extra samples `name{label=value}` as (value of the label, sample).
fn labelled(m: &Value, name: &str, label: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}{{{label}=");
    m["other"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.strip_suffix('}')?.to_string(), v.as_f64()?)))
        .collect()
}

fn cache_section(m: &Value) -> Value {
    let hits = other(m, "gemba_cache_hits");
    let misses = other(m, "gemba_cache_misses");
    let mut top = labelled(m, "gemba_cache_workbook_accesses", "workbook");
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    json!({
        "hits": hits,
        "misses": misses,
        "hit_ratio": ratio(hits, hits + misses),
        "bytes": other(m, "gemba_cache_bytes"),
        "capacity": other(m, "gemba_cache_capacity_bytes"),
        "entries": other(m, "gemba_cache_entries"),
        "evictions": other(m, "gemba_cache_evictions"),
        "invalidations": other(m, "gemba_cache_invalidations"),
        "load_failures": other(m, "gemba_cache_load_failures"),
        "top": top.iter().map(|(w, n)| json!({"workbook": w, "accesses": n})).collect::<Vec<_>>(),
    })
}

fn work_section(m: &Value) -> Value {
    let recalc: Map<String, Value> =
        labelled(m, "gemba_recalc_runs", "backend").into_iter().map(|(k, v)| (k, json!(v))).collect();
    json!({
        "workbooks_loaded": other(m, "gemba_workbooks_loaded"),
        "sheets_loaded": other(m, "gemba_sheets_loaded"),
        "cells_loaded": other(m, "gemba_cells_loaded"),
        "forks_created": other(m, "gemba_forks_created"),
        "forks_saved": other(m, "gemba_forks_saved"),
        "forks_discarded": other(m, "gemba_forks_discarded"),
        "forks_open": other(m, "gemba_forks_open"),
        "cells_edited": other(m, "gemba_fork_cells_edited"),
        "recalc": recalc,
        "recalc_failures": labelled(m, "gemba_recalc_failures", "backend").iter().map(|(_, v)| v).sum::<f64>(),
        "recalc_timeouts": other(m, "gemba_recalc_timeouts"),
        "breaker_state": other(m, "gemba_recalc_breaker_state"),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use kaizen::recorder::OpSpec;
    use kaizen::{Completion, Outcome, Recorder};

    use super::*;

    /// A recorder with its SLI engine attached, as the server wires them.
    fn recorder() -> (Arc<Recorder>, Arc<kaizen::sli::SliEngine>) {
        let specs = ["read_table", "list_sheets", "tools/list"]
            .iter()
            .map(|n| OpSpec { name: (*n).into(), method: "tools/call".into(), target: Some((*n).into()) })
            .collect();
        let stages = crate::measure::STAGES.iter().map(|s| s.to_string()).collect();
        let r = Recorder::new(crate::measure::naming(), specs, stages, true);
        let sli =
            Arc::new(kaizen::sli::SliEngine::new(crate::slo::seed(), r.names(), crate::slo::RUNBOOK_URL, r.naming()));
        r.attach_observer(sli.clone());
        (r, sli)
    }

    fn call((r, _): &(Arc<Recorder>, Arc<kaizen::sli::SliEngine>), op: &str, outcome: Outcome, ms: u64) {
        let id = r.op(op).expect("op");
        let t = r.start(id);
        std::thread::sleep(Duration::from_millis(ms));
        let mut c = Completion { outcome: Some(outcome), ..Default::default() };
        c.stages[crate::measure::STAGE_LOAD] = 1_000_000;
        t.finish(c);
    }

    fn gathered((r, sli): &(Arc<Recorder>, Arc<kaizen::sli::SliEngine>), at_ms: u64) -> Gathered {
        r.flush();
        let slo = crate::slo::status_json(sli);
        Gathered { at_ms, metrics: kaizen::exposition::summary(r), slo, queue_seconds: BTreeMap::new() }
    }

    #[test]
    fn snapshot_agrees_with_the_summary_and_ranges_are_deltas() {
        let r = recorder();
        let mut live = Live::default();
        for _ in 0..4 {
            call(&r, "read_table", Outcome::Ok, 2);
        }
        call(&r, "read_table", Outcome::Cancelled, 0);
        let first = live.update(&gathered(&r, 1_000_000), "test", 2000);
        assert_eq!(first["totals"]["calls"], 5);
        assert_eq!(first["totals"]["errors"], 0, "a cancelled call is not an error");
        assert_eq!(first["range"]["calls"], 0, "no earlier point yet");
        assert!(first["point"]["err"].is_null());

        call(&r, "read_table", Outcome::ToolError, 1);
        call(&r, "read_table", Outcome::Timeout, 1);
        call(&r, "list_sheets", Outcome::Ok, 1);
        call(&r, "list_sheets", Outcome::Ok, 1);
        let g = gathered(&r, 1_002_000);
        let objectives = g.slo["objectives"].as_array().unwrap();
        assert!(objectives.iter().any(|o| o["requests_period"].as_u64() > Some(0)), "the SLIs counted the calls");
        let s = live.update(&g, "test", 2000);
        assert_eq!(s["totals"]["calls"], 9);
        assert_eq!(s["totals"]["errors"], 2);
        assert_eq!(s["range"]["calls"], 4);
        assert_eq!(s["range"]["errors"], 2);
        assert_eq!(s["point"]["rate"], 2.0, "4 calls in 2 s");
        assert!(first["point"]["rate"].is_null(), "nothing to difference the first point against");
        assert_eq!(s["point"]["err"], 0.5);
        let rt = s["tools"].as_array().unwrap().iter().find(|t| t["tool"] == "read_table").unwrap();
        let m = g.metrics["tools"].as_array().unwrap().iter().find(|t| t["tool"] == "read_table").unwrap();
        assert_eq!(rt["calls"], m["requests"]);
        assert_eq!(rt["p95_ms"], json!(round(m["windows"]["5m"]["p95_ms"].as_f64().unwrap(), 3)));
        assert_eq!(rt["range_calls"], 2);
        assert_eq!(rt["slo_ms"], 200.0, "the seed's read_table p95 target");
        assert!(rt["p95_ms"].as_f64().unwrap() >= 1.0);
        assert_eq!(rt["stages"]["load"], 0.002, "two calls' load stage since the first point");
        assert_eq!(rt["kind"], "tool");
        assert_eq!(s["slo"]["objectives"][0]["tool"], "read_table", "the objective with errors comes first");
        assert!(s["slo"]["count"].as_u64().unwrap() >= 4);
        let pts = live.points(1_002_000);
        assert_eq!(pts.len(), 2);
        assert!(pts[1].lat.contains_key("list_sheets"));
        let later = live.update(&gathered(&r, 1_060_000), "test", 2000);
        assert!(later["point"]["rate"].is_null(), "a pause of a minute is not averaged over");
        assert_eq!(later["range"]["calls"], 4, "the range still reaches back to the first point");
    }

    #[test]
    fn the_ring_keeps_five_minutes() {
        let r = recorder();
        let mut live = Live::default();
        for i in 0..400u64 {
            live.update(&gathered(&r, 1_000_000 + i * 2000), "test", 2000);
        }
        let now = 1_000_000 + 399 * 2000;
        let pts = live.points(now);
        assert!(pts.len() <= RING_POINTS);
        assert!(pts.first().unwrap().t + RING_SPAN_MS >= now);
        assert_eq!(pts.last().unwrap().t, now);
    }

    #[test]
    fn labelled_samples_and_kinds() {
        let m = json!({"other": {"gemba_recalc_runs{backend=in_process}": 3.0, "gemba_recalc_runs{backend=libreoffice}": 1.0, "gemba_recalc_runsx": 9.0}});
        let mut v = labelled(&m, "gemba_recalc_runs", "backend");
        v.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(v, vec![("in_process".to_string(), 3.0), ("libreoffice".to_string(), 1.0)]);
        assert_eq!(kind_of("tools/list"), "protocol");
        assert_eq!(kind_of("read_table"), "tool");
    }
}
