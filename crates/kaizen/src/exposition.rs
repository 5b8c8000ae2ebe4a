//! Export: Prometheus/OpenMetrics text through prometheus-client (a collector that reads the
//! recorder's atomics at scrape time, so recording never takes the registry's locks), and a
//! JSON summary with the HDR window percentiles.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::buckets::{EDGES_SECONDS, OTEL_EDGES_SECONDS, grouped};
use crate::outcome::Outcome;
use crate::process::process_stats;
use crate::recorder::Recorder;
use crate::windows::WINDOWS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; exported with a `_total` suffix (do not put it in the name).
    Counter,
    Gauge,
}

/// One extra value to export.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn new(name: &str, help: &str, kind: Kind, value: f64) -> Self {
        Self { name: name.into(), help: help.into(), kind, labels: Vec::new(), value }
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }
}

/// Exports one or more recorders: every family once, with each recorder's series (carrying its
/// constant labels). Metric names come from the first recorder's naming.
#[derive(Debug)]
struct KaizenCollector(Vec<Arc<Recorder>>);

type Labels<'a> = Vec<(&'a str, &'a str)>;
/// A named histogram's help and its series, one per recorder that has it.
type NamedSeries<'a> = (&'a str, Vec<(&'a Recorder, &'a crate::buckets::Buckets)>);

/// `base` followed by the recorder's constant labels.
fn with_const<'a>(r: &'a Recorder, mut base: Labels<'a>) -> Labels<'a> {
    base.extend(r.const_labels().iter().map(|(k, v)| (k.as_str(), v.as_str())));
    base
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, series: &[(Labels, f64)]) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, _, f64>(v, None)?;
        } else {
            m.encode_family(labels)?.encode_counter::<NoLabelSet, _, f64>(v, None)?;
        }
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, series: &[(Labels, f64)]) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        if labels.is_empty() {
            m.encode_gauge(v)?;
        } else {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

/// One histogram series from per-bucket counts, regrouped to `edges`.
fn hist(
    m: &mut MetricEncoder,
    labels: &[(&str, &str)],
    acc: &[u64; 24],
    sum: f64,
    count: u64,
    edges: &[f64],
) -> std::fmt::Result {
    let buckets = grouped(acc, edges);
    if labels.is_empty() {
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    } else {
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

impl Collector for KaizenCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let Some(first) = self.0.first() else { return Ok(()) };
        let recs: Vec<&Recorder> = self.0.iter().map(|r| &**r).collect();
        let naming = first.naming();
        let m = |suffix: &str| naming.metric(suffix);
        let op = naming.op_label.as_str();

        let mut requests = Vec::new();
        let mut in_flight = Vec::new();
        for r in &recs {
            for (name, s) in r.ops() {
                for o in Outcome::ALL {
                    let v = s.requests[o as usize].load(Ordering::Relaxed);
                    if v > 0 || o == Outcome::Ok {
                        requests.push((with_const(r, vec![(op, name), ("outcome", o.as_str())]), v as f64));
                    }
                }
                in_flight.push((with_const(r, vec![(op, name)]), s.in_flight.load(Ordering::Relaxed) as f64));
            }
        }
        counter(&mut enc, &m("tool_requests"), "Requests by tool (or protocol method) and outcome.", &requests)?;
        gauge(&mut enc, &m("tool_in_flight"), "Requests being served now.", &in_flight)?;

        {
            let name = m("tool_duration_seconds");
            let mut h = enc.encode_descriptor(
                &name,
                "Time from a request's arrival to its answer, by tool.",
                None,
                MetricType::Histogram,
            )?;
            for r in &recs {
                let n = r.naming();
                for (name, s) in r.ops() {
                    let mut acc = [0u64; 24];
                    let (mut sum, mut count) = (0.0, 0);
                    for o in Outcome::ALL {
                        for p in 0..n.protocol_count() {
                            for t in 0..n.transport_count() {
                                let b = s.duration(o, p, t);
                                b.add_into(&mut acc);
                                sum += b.sum_seconds();
                                count += b.count();
                            }
                        }
                    }
                    hist(&mut h, &with_const(r, vec![(op, name)]), &acc, sum, count, &EDGES_SECONDS)?;
                }
            }
        }
        {
            let name = m("tool_queue_seconds");
            let mut h = enc.encode_descriptor(
                &name,
                "Time a request waited before its work started, by tool.",
                None,
                MetricType::Histogram,
            )?;
            for r in &recs {
                for (name, s) in r.ops() {
                    let mut acc = [0u64; 24];
                    s.queue.add_into(&mut acc);
                    let labels = with_const(r, vec![(op, name)]);
                    hist(&mut h, &labels, &acc, s.queue.sum_seconds(), s.queue.count(), &EDGES_SECONDS)?;
                }
            }
        }
        let per_op = |f: &dyn Fn(&crate::recorder::OpStats) -> u64| -> Vec<(Labels, f64)> {
            recs.iter().flat_map(|r| r.ops().map(move |(n, s)| (with_const(r, vec![(op, n)]), f(s) as f64))).collect()
        };
        counter(
            &mut enc,
            &m("tool_request_bytes"),
            "Request bytes received, by tool.",
            &per_op(&|s| s.request_bytes.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut enc,
            &m("tool_response_bytes"),
            "Response bytes sent, by tool.",
            &per_op(&|s| s.response_bytes.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut enc,
            &m("tool_rows"),
            "Rows (or items) returned, by tool.",
            &per_op(&|s| s.rows.load(Ordering::Relaxed)),
        )?;
        let mut stages = Vec::new();
        for r in &recs {
            for (n, s) in r.ops() {
                for (i, st) in r.stage_names().iter().enumerate() {
                    let v = s.stage_nanos[i].load(Ordering::Relaxed);
                    if v > 0 {
                        stages.push((with_const(r, vec![(op, n), ("stage", st.as_str())]), v as f64 / 1e9));
                    }
                }
            }
        }
        counter(
            &mut enc,
            &m("tool_stage_seconds"),
            "Time spent in each stage of a request (value stream), by tool.",
            &stages,
        )?;
        let per_rec = |f: &dyn Fn(&Recorder) -> u64| -> Vec<(Labels, f64)> {
            recs.iter().map(|r| (with_const(r, vec![]), f(r) as f64)).collect()
        };
        counter(
            &mut enc,
            &m("kaizen_dropped_events"),
            "Measurement events dropped because the aggregator queue was full.",
            &per_rec(&|r| r.dropped_events.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut enc,
            &m("kaizen_dropped_log_rows"),
            "Request-log rows dropped because the writer queue was full.",
            &per_rec(&|r| r.dropped_log_rows.load(Ordering::Relaxed)),
        )?;

        // The process is one, however many recorders it has.
        let p = process_stats();
        gauge(
            &mut enc,
            &m("process_resident_memory_bytes"),
            "Resident memory of the server process.",
            &[(vec![], p.resident_memory_bytes as f64)],
        )?;
        counter(
            &mut enc,
            &m("process_cpu_seconds"),
            "CPU time used by the server process.",
            &[(vec![], p.cpu_seconds)],
        )?;
        gauge(&mut enc, &m("process_open_fds"), "Open file descriptors.", &[(vec![], p.open_fds as f64)])?;
        gauge(
            &mut enc,
            &m("process_memory_limit_bytes"),
            "Memory the process may use (cgroup limit, else the machine's memory).",
            &[(vec![], p.memory_limit_bytes as f64)],
        )?;
        gauge(&mut enc, &m("process_threads"), "Threads of the server process.", &[(vec![], p.threads as f64)])?;

        // A semantic convention's histograms (OpenTelemetry's MCP conventions, say), from the
        // same counters.
        if let Some(sc) = &naming.semantic_convention {
            let protocols: Vec<&str> = naming.protocol_labels().collect();
            {
                let mut h =
                    enc.encode_descriptor(&sc.operation_metric, &sc.operation_help, None, MetricType::Histogram)?;
                for r in &recs {
                    for (i, (_, s)) in r.ops().enumerate() {
                        let spec = &r.specs()[i];
                        for o in Outcome::ALL {
                            for (pi, proto) in protocols.iter().enumerate() {
                                for (ti, transport) in naming.transports.iter().enumerate() {
                                    let b = s.duration(o, pi, ti);
                                    if b.count() == 0 {
                                        continue;
                                    }
                                    let mut acc = [0u64; 24];
                                    b.add_into(&mut acc);
                                    let error_type = if o == Outcome::Ok { "" } else { o.as_str() };
                                    let labels = with_const(
                                        r,
                                        vec![
                                            (sc.method_label.as_str(), spec.method.as_str()),
                                            (sc.target_label.as_str(), spec.target.as_deref().unwrap_or("")),
                                            (sc.error_label.as_str(), error_type),
                                            (sc.transport_label.as_str(), transport.as_str()),
                                            (sc.protocol_label.as_str(), proto),
                                        ],
                                    );
                                    hist(&mut h, &labels, &acc, b.sum_seconds(), b.count(), &OTEL_EDGES_SECONDS)?;
                                }
                            }
                        }
                    }
                }
            }
            let mut h = enc.encode_descriptor(&sc.session_metric, &sc.session_help, None, MetricType::Histogram)?;
            for r in &recs {
                for (pi, proto) in protocols.iter().enumerate() {
                    for (ti, transport) in naming.transports.iter().enumerate() {
                        let b = r.sessions(pi, ti);
                        if b.count() == 0 {
                            continue;
                        }
                        let mut acc = [0u64; 24];
                        b.add_into(&mut acc);
                        let labels = with_const(
                            r,
                            vec![
                                (sc.transport_label.as_str(), transport.as_str()),
                                (sc.protocol_label.as_str(), *proto),
                            ],
                        );
                        hist(&mut h, &labels, &acc, b.sum_seconds(), b.count(), &OTEL_EDGES_SECONDS)?;
                    }
                }
            }
        }

        // Named histograms: one family per name, a series per recorder that has it.
        let mut named: BTreeMap<&str, NamedSeries> = BTreeMap::new();
        for r in &recs {
            for (name, help, b) in r.histograms() {
                named.entry(name.as_str()).or_insert_with(|| (help.as_str(), Vec::new())).1.push((*r, b));
            }
        }
        for (name, (help, series)) in named {
            let mut h = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (r, b) in series {
                let mut acc = [0u64; 24];
                b.add_into(&mut acc);
                hist(&mut h, &with_const(r, vec![]), &acc, b.sum_seconds(), b.count(), &EDGES_SECONDS)?;
            }
        }

        // Extra samples from the embedding program, grouped into families by name; they carry
        // the labels the embedder gave them (not the recorder's: a provider's samples may be
        // about all recorders, or label themselves).
        let mut families: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        for r in &recs {
            if let Some(provider) = r.extra.get() {
                let mut samples = Vec::new();
                provider(&mut samples);
                for s in samples {
                    families.entry(s.name.clone()).or_default().push(s);
                }
            }
        }
        for (name, list) in families {
            let first = &list[0];
            let series: Vec<(Labels, f64)> = list
                .iter()
                .map(|s| (s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(), s.value))
                .collect();
            match first.kind {
                Kind::Counter => counter(&mut enc, &name, &first.help, &series)?,
                Kind::Gauge => gauge(&mut enc, &name, &first.help, &series)?,
            }
        }
        Ok(())
    }
}

/// A Prometheus registry exporting this recorder.
pub fn registry(recorder: Arc<Recorder>) -> Registry {
    registry_of(vec![recorder])
}

/// A Prometheus registry exporting several recorders of the same naming as one set of families,
/// each recorder's series told apart by its constant labels (`Recorder::set_const_labels`).
pub fn registry_of(recorders: Vec<Arc<Recorder>>) -> Registry {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(KaizenCollector(recorders)));
    reg
}

/// Prometheus/OpenMetrics text exposition.
pub fn encode_text(reg: &Registry) -> String {
    let mut out = String::with_capacity(64 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, reg).is_err() {
        out.clear();
    }
    out
}

/// The same exposition in the Prometheus text format 0.0.4 (for scrapers and tools such as
/// `promtool` that do not ask for OpenMetrics): counter metadata names carry `_total` and
/// there is no `# EOF`.
pub fn encode_text_004(reg: &Registry) -> String {
    let om = encode_text(reg);
    let mut counters = std::collections::HashSet::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
            && kind == "counter"
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].iter().find_map(|p| line.strip_prefix(p).map(|r| (*p, r)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The JSON summary: per operation with traffic, counts by outcome and window percentiles.
pub fn summary(r: &Recorder) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let windows = r.window_summaries();
    let mut tools = Vec::new();
    for (i, (name, s)) in r.ops().enumerate() {
        let total = s.total_requests();
        let in_flight = s.in_flight.load(Ordering::Relaxed);
        if total == 0 && in_flight == 0 {
            continue;
        }
        let mut outcomes = Map::new();
        for o in Outcome::ALL {
            let v = s.requests[o as usize].load(Ordering::Relaxed);
            if v > 0 {
                outcomes.insert(o.as_str().into(), json!(v));
            }
        }
        let mut w = Map::new();
        for (k, (label, _, _)) in WINDOWS.iter().enumerate() {
            if let Some(Some(ws)) = windows.get(i).and_then(|v| v.get(k)) {
                w.insert((*label).into(), serde_json::to_value(ws).unwrap_or(Value::Null));
            }
        }
        let stage_total: u64 = s.stage_nanos.iter().map(|x| x.load(Ordering::Relaxed)).sum();
        let mut stages = Map::new();
        for (k, st) in r.stage_names().iter().enumerate() {
            let v = s.stage_nanos[k].load(Ordering::Relaxed);
            if v > 0 {
                stages.insert(
                    st.clone(),
                    json!({"seconds": v as f64 / 1e9, "share": (v as f64 / stage_total.max(1) as f64 * 1000.0).round() / 1000.0}),
                );
            }
        }
        tools.push(json!({
            "tool": name,
            "requests": total,
            "outcomes": outcomes,
            "in_flight": in_flight,
            "windows": w,
            "request_bytes": s.request_bytes.load(Ordering::Relaxed),
            "response_bytes": s.response_bytes.load(Ordering::Relaxed),
            "rows": s.rows.load(Ordering::Relaxed),
            "stages": stages,
        }));
    }
    let mut extra = Map::new();
    if let Some(p) = r.extra.get() {
        let mut samples = Vec::new();
        p(&mut samples);
        for s in samples {
            let key = if s.labels.is_empty() {
                s.name.clone()
            } else {
                let l: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}{{{}}}", s.name, l.join(","))
            };
            extra.insert(key, json!(s.value));
        }
    }
    json!({
        "uptime_seconds": r.uptime().as_secs_f64(),
        "tools": tools,
        "process": process_stats(),
        "dropped_events": r.dropped_events.load(Ordering::Relaxed),
        "dropped_log_rows": r.dropped_log_rows.load(Ordering::Relaxed),
        "other": extra,
    })
}

#[allow(dead_code)]
fn _assert_encode_metric<T: EncodeMetric>() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::Naming;
    use crate::recorder::{Completion, OpId, OpSpec};

    fn recorder(upstream: &str) -> Arc<Recorder> {
        let spec = OpSpec { name: "echo".into(), method: "tools/call".into(), target: Some("echo".into()) };
        let r = Recorder::with_histograms(
            Naming::plain("px"),
            vec![spec],
            vec![],
            vec![("px_restart_seconds".into(), "Restart time.".into())],
            true,
        );
        r.set_const_labels(vec![("upstream".into(), upstream.into())]);
        r
    }

    #[test]
    fn several_recorders_share_families_and_keep_their_labels() {
        let (a, b) = (recorder("a"), recorder("b"));
        for _ in 0..3 {
            a.start(OpId(0)).finish(Completion { outcome: Some(Outcome::Ok), ..Default::default() });
        }
        b.start(OpId(0)).finish(Completion { outcome: Some(Outcome::Internal), ..Default::default() });
        a.set_provider(Box::new(|out| out.push(Sample::new("px_up", "Up.", Kind::Gauge, 1.0).label("upstream", "a"))));
        b.set_provider(Box::new(|out| out.push(Sample::new("px_up", "Up.", Kind::Gauge, 0.0).label("upstream", "b"))));
        let text = encode_text_004(&registry_of(vec![a, b]));
        let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
        assert_eq!(
            line("px_tool_requests_total{op=\"echo\",outcome=\"ok\",upstream=\"a\"}").as_deref(),
            Some("px_tool_requests_total{op=\"echo\",outcome=\"ok\",upstream=\"a\"} 3.0")
        );
        assert!(line("px_tool_requests_total{op=\"echo\",outcome=\"internal\",upstream=\"b\"} 1").is_some(), "{text}");
        assert!(line("px_up{upstream=\"a\"} 1").is_some() && line("px_up{upstream=\"b\"} 0").is_some(), "{text}");
        assert!(line("px_restart_seconds_count{upstream=\"b\"}").is_some(), "{text}");
        // Every family is described once, and the process is one.
        for family in ["# TYPE px_tool_requests_total counter", "# TYPE px_up gauge", "# TYPE px_process_threads gauge"]
        {
            assert_eq!(text.lines().filter(|l| *l == family).count(), 1, "{family}");
        }
        assert_eq!(text.lines().filter(|l| l.starts_with("px_process_threads")).count(), 1);
    }

    #[test]
    fn one_recorder_without_labels_exports_as_before() {
        let spec = OpSpec { name: "echo".into(), method: "tools/call".into(), target: None };
        let r = Recorder::new(Naming::plain("px"), vec![spec], vec![], true);
        r.start(OpId(0)).finish(Completion { outcome: Some(Outcome::Ok), ..Default::default() });
        let text = encode_text_004(&registry(r));
        assert!(text.contains("px_tool_requests_total{op=\"echo\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("px_kaizen_dropped_events_total 0"), "{text}");
    }
}
