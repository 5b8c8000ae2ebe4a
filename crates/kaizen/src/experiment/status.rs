//! What an experiment shows: the status JSON (`/experiments.json`, `kaizen://experiments`,
//! `gemba experiment status`) and metric samples labelled by experiment and variant.

use serde_json::{Map, Value, json};

use super::accum::VariantStats;
use super::bandit::mean_rewards;
use super::config::{Kind, Unit};
use super::engine::State;
use super::monitor::{Monitor, TestStatus};
use super::plan::ExperimentPlan;
use crate::exposition::{Kind as SampleKind, Sample};

/// A consistent view of one experiment for rendering.
pub struct View<'a> {
    pub state: State,
    pub frozen: bool,
    pub step: usize,
    pub decision: Option<String>,
    pub winner: Option<usize>,
    pub monitors: &'a [Monitor],
    pub leader: Option<usize>,
    pub prob_best: &'a [f64],
    pub started_secs: Option<u64>,
    pub updated_secs: u64,
    pub shares: Vec<f64>,
    pub stats: &'a [VariantStats],
}

/// "running", "rolled_back", "completed" or "frozen".
pub fn state_name(state: State, frozen: bool) -> &'static str {
    match (state, frozen) {
        (State::Running, true) => "frozen",
        (State::Running, false) => "running",
        (State::RolledBack, _) => "rolled_back",
        (State::Completed, _) => "completed",
    }
}

fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::Session => "session",
        Unit::Key => "key",
        Unit::Request => "request",
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Per-variant metrics in natural units.
pub fn variant_metrics(p: &ExperimentPlan, s: &VariantStats) -> Map<String, Value> {
    let mut m = Map::new();
    let ms = |us: f64| json!(round(us / 1000.0, 3));
    if let Some(q) = s.latency.quantile(0.5) {
        m.insert("latency_p50_ms".into(), ms(q));
    }
    if let Some(q) = s.latency.quantile(0.95) {
        m.insert("latency_p95_ms".into(), ms(q));
    }
    if let Some(q) = s.latency.quantile(0.99) {
        m.insert("latency_p99_ms".into(), ms(q));
    }
    if s.log_latency.n > 0 {
        m.insert("latency_geomean_ms".into(), ms(s.log_latency.mean.exp()));
    }
    if let Some(r) = s.error_ratio() {
        m.insert("error_ratio".into(), json!(round(r, 6)));
    }
    if let Some(r) = s.server_error_ratio() {
        m.insert("server_error_ratio".into(), json!(round(r, 6)));
    }
    if let Some(r) = s.cache_hit_ratio() {
        m.insert("cache_hit_ratio".into(), json!(round(r, 6)));
    }
    if s.log_bytes.n > 0 {
        m.insert("response_bytes_geomean".into(), json!(round(s.log_bytes.mean.exp_m1(), 1)));
    }
    for (name, cfg) in &p.custom {
        if let Some(mo) = s.custom.get(name).filter(|mo| mo.n > 0) {
            let mean = if cfg.log { mo.mean.exp() } else { mo.mean };
            m.insert(name.clone(), json!(round(mean, 6)));
        }
    }
    if s.forced > 0 {
        m.insert("forced_calls".into(), json!(s.forced));
    }
    m
}

/// The experiment's entry in the status JSON.
pub fn experiment_json(p: &ExperimentPlan, v: &View) -> Value {
    let variants: Vec<Value> = p
        .variants
        .iter()
        .enumerate()
        .map(|(i, var)| {
            let s = v.stats.get(i).cloned().unwrap_or_default();
            json!({
                "name": var.name,
                "share": round(v.shares.get(i).copied().unwrap_or(0.0), 6),
                "samples": s.samples,
                "metrics": Value::Object(variant_metrics(p, &s)),
            })
        })
        .collect();
    let mut o = Map::new();
    o.insert("name".into(), json!(p.name));
    o.insert("kind".into(), json!(p.kind.as_str()));
    o.insert("state".into(), json!(state_name(v.state, v.frozen)));
    o.insert("unit".into(), json!(unit_name(p.unit)));
    if !p.description.is_empty() {
        o.insert("description".into(), json!(p.description));
    }
    o.insert("variants".into(), Value::Array(variants));
    if let Some(d) = &v.decision {
        o.insert("decision".into(), json!(d));
    }
    // The headline test: a broken guard, else the winner's (or first) primary, else the first guard.
    let headline = v
        .monitors
        .iter()
        .find(|m| m.status == TestStatus::Broken)
        .or_else(|| v.monitors.iter().find(|m| m.guard.is_none() && Some(m.variant) == v.winner))
        .or_else(|| v.monitors.iter().find(|m| m.guard.is_none()))
        .or_else(|| v.monitors.first());
    if let Some(h) = headline {
        let r = &h.report;
        if let Some(x) = r.p_value {
            o.insert("p_value".into(), json!(x));
        }
        if let Some(x) = r.effect {
            o.insert("effect".into(), json!(round(x, 6)));
        }
        if let Some((lo, hi)) = r.ci {
            o.insert("ci".into(), json!([round(lo, 6), round(hi, 6)]));
        }
        if let Some(n) = r.predicted_samples {
            o.insert("predicted_samples".into(), json!(n));
        }
        o.insert("metric".into(), json!(r.metric));
    }
    if p.kind == Kind::Canary
        && let Some(c) = &p.canary
    {
        o.insert(
            "step".into(),
            json!({"index": v.step + 1, "of": c.steps.len(), "share": c.steps.get(v.step).copied().unwrap_or(0.0)}),
        );
    }
    if let Some(b) = &p.bandit {
        let names = p.variants.iter().map(|x| x.name.clone());
        let pb: Map<String, Value> = names.clone().zip(v.prob_best.iter().map(|x| json!(round(*x, 4)))).collect();
        let mr: Map<String, Value> =
            names.zip(mean_rewards(p, b, v.stats).into_iter().map(|x| json!(round(x, 6)))).collect();
        o.insert(
            "bandit".into(),
            json!({
                "leader": v.leader.and_then(|l| p.variants.get(l)).map(|x| x.name.clone()),
                "prob_best": pb,
                "mean_reward": mr,
                "max_explore": b.max_explore,
            }),
        );
    }
    if !v.monitors.is_empty() {
        o.insert("tests".into(), json!(v.monitors.iter().map(|m| &m.report).collect::<Vec<_>>()));
    }
    if let Some(s) = v.started_secs {
        o.insert("started_at_secs".into(), json!(s));
    }
    o.insert("updated_at_secs".into(), json!(v.updated_secs));
    Value::Object(o)
}

/// Where an experiment stands, for its metric samples.
pub struct Standing<'a> {
    pub state: State,
    pub frozen: bool,
    pub step: usize,
    pub shares: &'a [f64],
    pub stats: &'a [VariantStats],
}

/// Metric samples for one experiment.
pub fn samples(naming: &crate::naming::Naming, p: &ExperimentPlan, now: &Standing, out: &mut Vec<Sample>) {
    let Standing { state, frozen, step, shares, stats } = *now;
    let current = state_name(state, frozen);
    for s in ["running", "rolled_back", "completed", "frozen"] {
        out.push(
            Sample::new(
                &naming.metric("experiment_state"),
                "1 for the experiment's current state (running, rolled_back, completed, frozen).",
                SampleKind::Gauge,
                f64::from(u8::from(s == current)),
            )
            .label("experiment", &p.name)
            .label("kind", p.kind.as_str())
            .label("state", s),
        );
    }
    if p.kind == Kind::Canary {
        out.push(
            Sample::new(
                &naming.metric("experiment_canary_step"),
                "Current canary step (1-based).",
                SampleKind::Gauge,
                (step + 1) as f64,
            )
            .label("experiment", &p.name),
        );
    }
    for (i, v) in p.variants.iter().enumerate() {
        let s = stats.get(i).cloned().unwrap_or_default();
        let lab = |x: Sample| x.label("experiment", &p.name).label("variant", &v.name);
        out.push(lab(Sample::new(
            &naming.metric("experiment_share"),
            "Share of units the variant gets now.",
            SampleKind::Gauge,
            shares.get(i).copied().unwrap_or(0.0),
        )));
        out.push(lab(Sample::new(
            &naming.metric("experiment_calls"),
            "Calls counted for the variant (randomized, while running).",
            SampleKind::Counter,
            s.samples as f64,
        )));
        out.push(lab(Sample::new(
            &naming.metric("experiment_errors"),
            "Failed calls counted for the variant.",
            SampleKind::Counter,
            s.errors as f64,
        )));
        for (q, name) in [(0.5, "0.5"), (0.95, "0.95"), (0.99, "0.99")] {
            if let Some(us) = s.latency.quantile(q) {
                out.push(
                    lab(Sample::new(
                        &naming.metric("experiment_latency_seconds"),
                        "Latency quantiles of the variant's calls (1 % buckets).",
                        SampleKind::Gauge,
                        us / 1e6,
                    ))
                    .label("quantile", name),
                );
            }
        }
        if let Some(r) = s.cache_hit_ratio() {
            out.push(lab(Sample::new(
                &naming.metric("experiment_cache_hit_ratio"),
                "Cache hit ratio of the variant's calls.",
                SampleKind::Gauge,
                r,
            )));
        }
    }
}
