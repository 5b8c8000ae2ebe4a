//! The improvement backlog: ranked items generated from the report's evidence — the top error
//! signatures, a cache capacity or policy change, an SLO burning its budget, a stage that
//! dominates a tool's time, a truncation pattern, a regression. Each has a stable id derived from
//! its cause (the same while the cause persists), the evidence with links into the report, and a
//! RICE score: reach × impact × confidence / effort.

use std::collections::HashMap;

use serde::Serialize;

use super::cache::{CacheSection, Policy};
use super::compliance::SloLine;
use super::ids::stable_id;
use super::signature::{Category, ErrorsSection};
use super::stream::StageLine;
use super::trends::{Direction, ToolChange, TrendRow};
use super::usage::UsageSection;

/// What kind of improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Error,
    Cache,
    CachePolicy,
    Slo,
    Stage,
    Queue,
    Truncation,
    Regression,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Error => "error",
            Kind::Cache => "cache",
            Kind::CachePolicy => "cache_policy",
            Kind::Slo => "slo",
            Kind::Stage => "stage",
            Kind::Queue => "queue",
            Kind::Truncation => "truncation",
            Kind::Regression => "regression",
        }
    }

    /// The default effort (person-days, a rough guess) when the configuration does not say.
    fn default_effort(self) -> f64 {
        match self {
            Kind::Error => 1.0,
            Kind::Cache => 0.25,
            Kind::CachePolicy => 3.0,
            Kind::Slo => 2.0,
            Kind::Stage => 3.0,
            Kind::Queue => 1.0,
            Kind::Truncation => 1.0,
            Kind::Regression => 2.0,
        }
    }
}

/// One fact behind an item, with a link into the report (a JSON pointer, also the HTML anchor).
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub fact: String,
    pub link: String,
}

/// One improvement to make.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogItem {
    /// Stable while the cause persists: `<kind>-<hash of the cause>`.
    pub id: String,
    pub kind: Kind,
    pub title: String,
    /// What to do about it.
    pub suggestion: String,
    pub evidence: Vec<Evidence>,
    /// Requests affected in the period.
    pub reach: f64,
    /// RICE impact: 0.25 minimal, 0.5 low, 1 medium, 2 high, 3 massive.
    pub impact: f64,
    /// 0.5 a hunch, 0.8 likely, 1.0 measured.
    pub confidence: f64,
    /// Person-days, a rough guess (the configuration may override it).
    pub effort: f64,
    /// reach × impact × confidence / effort.
    pub score: f64,
}

/// Efforts set by configuration: by item id (first) or by kind name.
pub type EffortOverrides = HashMap<String, f64>;

/// Everything the backlog is generated from.
pub(crate) struct Inputs<'a> {
    pub errors: &'a ErrorsSection,
    pub usage: &'a UsageSection,
    pub cache: &'a CacheSection,
    pub slo: &'a [SloLine],
    pub changes: &'a [ToolChange],
    pub trends: &'a [TrendRow],
    pub stream: &'a [StageLine],
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn ev(fact: String, link: impl Into<String>) -> Evidence {
    Evidence { fact, link: link.into() }
}

struct Draft {
    id: String,
    kind: Kind,
    title: String,
    suggestion: String,
    evidence: Vec<Evidence>,
    reach: f64,
    impact: f64,
    confidence: f64,
}

fn error_items(e: &ErrorsSection, out: &mut Vec<Draft>) {
    let floor = (e.total as f64 * 0.005).max(5.0);
    for (i, s) in e.top.iter().enumerate().take(5) {
        let in_pareto = s.cumulative_share - s.share < 0.8;
        if !in_pareto || (s.count as f64) < floor {
            continue;
        }
        let f = &s.follow_up;
        let link = format!("/errors/top/{i}");
        let mut evidence = vec![ev(
            format!(
                "{} errors ({} of all errors, rank {} of {}), {} to {}",
                s.count,
                pct(s.share),
                i + 1,
                e.signatures,
                s.first_seen,
                s.last_seen
            ),
            link.clone(),
        )];
        if s.keys > 0 {
            evidence.push(ev(format!("{} keys affected, e.g. {}", s.keys, s.key_examples.join(", ")), link.clone()));
        }
        if f.followed > 0 {
            let next =
                f.next.first().map(|t| format!("; most often next: {} ({})", t.tool, t.count)).unwrap_or_default();
            evidence.push(ev(
                format!(
                    "the next call succeeded in {} of {} follow-ups, the same tool was retried in {}{next}",
                    pct(f.recovered),
                    f.followed,
                    pct(f.retried_same_tool)
                ),
                format!("{link}/follow_up"),
            ));
        }
        if f.abandoned > 0 {
            evidence.push(ev(
                format!("{} sessions ended on it ({} of its errors)", f.abandoned, pct(f.abandoned_share)),
                format!("{link}/follow_up"),
            ));
        }
        let suggestion = match s.category {
            Category::User => format!(
                "Agents keep making this mistake in {}: make the right argument obvious (the tool description, a did-you-mean that names the call to make, accepting the near miss when it is unambiguous).",
                s.tool
            ),
            Category::Data => "Inputs that cannot be served: report them before agents try (in listings), and say in the error what to do instead.".into(),
            Category::Transient => "Absorb it: retry inside the server where safe, raise the limit that refuses, or tell agents how long to wait.".into(),
            Category::System => "A defect on the server's side: find the cause from the example and fix it; add a test that reproduces it.".into(),
        };
        let mut impact: f64 = match s.category {
            Category::User | Category::Transient => 1.0,
            Category::Data => 0.5,
            Category::System => 2.0,
        };
        if f.abandoned_share >= 0.2 {
            impact = (impact * 2.0).min(3.0);
        }
        let persistent = s.last_seen_ms - s.first_seen_ms >= 3_600_000;
        let confidence = if s.count >= 100 && persistent {
            1.0
        } else if s.count >= 20 {
            0.8
        } else {
            0.5
        };
        out.push(Draft {
            id: s.id.clone(),
            kind: Kind::Error,
            title: format!(
                "{} error in {}: “{}” ({} of errors)",
                s.category.as_str(),
                s.tool,
                s.signature,
                pct(s.share)
            ),
            suggestion,
            evidence,
            reach: s.count as f64,
            impact,
            confidence,
        });
    }
}

fn cache_items(c: &CacheSection, out: &mut Vec<Draft>) {
    let Some(rec) = &c.recommendation else { return };
    let current = c.replayed_measured_hit_rate.unwrap_or(0.0);
    let confidence = match c.model_error_points.map(f64::abs) {
        Some(e) if e <= 2.0 => 1.0,
        Some(e) if e <= 5.0 => 0.8,
        Some(_) => 0.5,
        None => 0.5,
    };
    let mut evidence = vec![ev(
        format!(
            "measured hit rate {} over {} cache lookups; achievable {} (working set {:.0} MiB)",
            pct(current),
            c.replayed,
            pct(c.achievable_hit_rate),
            c.working_set_mb
        ),
        "/cache",
    )];
    if let (Some(m), Some(e)) = (c.model_hit_rate, c.model_error_points) {
        evidence.push(ev(
            format!("the model replays today's capacity at {} ({e:+.1} points from measured)", pct(m)),
            "/cache/model_hit_rate",
        ));
    }
    evidence.push(ev(
        format!("at {:.0} MiB the model predicts {}", rec.capacity_mb, pct(rec.predicted_hit_rate)),
        "/cache/recommendation",
    ));
    let gain = rec.predicted_hit_rate - current;
    match c.capacity_mb {
        Some(cap) if gain >= 0.05 && rec.capacity_mb > cap => out.push(Draft {
            id: stable_id("cache", &["capacity", "raise"]),
            kind: Kind::Cache,
            title: format!(
                "Raise the cache from {cap:.0} MiB to {:.0} MiB: hit rate {} → {}",
                rec.capacity_mb,
                pct(current),
                pct(rec.predicted_hit_rate)
            ),
            suggestion: format!("Set the cache capacity to {:.0} MiB (memory permitting).", rec.capacity_mb),
            evidence,
            reach: gain * c.replayed as f64,
            impact: 1.0,
            confidence,
        }),
        Some(cap) if rec.capacity_mb * 2.0 <= cap && rec.predicted_hit_rate + 0.01 >= current => out.push(Draft {
            id: stable_id("cache", &["capacity", "lower"]),
            kind: Kind::Cache,
            title: format!(
                "The cache could shrink from {cap:.0} MiB to {:.0} MiB at the same hit rate",
                rec.capacity_mb
            ),
            suggestion: format!("Set the cache capacity to {:.0} MiB and give the memory back.", rec.capacity_mb),
            evidence,
            reach: c.replayed as f64 * 0.01,
            impact: 0.5,
            confidence,
        }),
        None if c.achievable_hit_rate - current >= 0.05 => out.push(Draft {
            id: stable_id("cache", &["capacity", "raise"]),
            kind: Kind::Cache,
            title: format!(
                "The cache misses {} more than it must: about {:.0} MiB would reach {}",
                pct(c.achievable_hit_rate - current),
                rec.capacity_mb,
                pct(rec.predicted_hit_rate)
            ),
            suggestion: "Pass the capacity in force to the report to compare, then size the cache.".into(),
            evidence,
            reach: gain.max(0.0) * c.replayed as f64,
            impact: 1.0,
            confidence: 0.5,
        }),
        _ => {}
    }
    // A policy that beats LRU clearly at the same capacity.
    let best = c
        .whatif
        .iter()
        .filter(|w| w.policy != Policy::Lru)
        .filter_map(|w| {
            let lru = c.whatif.iter().find(|l| l.policy == Policy::Lru && l.capacity_mb == w.capacity_mb)?;
            Some((w, w.predicted_hit_rate - lru.predicted_hit_rate, lru))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((w, delta, lru)) = best
        && delta >= 0.05
    {
        out.push(Draft {
            id: stable_id("cache_policy", &[w.policy.as_str()]),
            kind: Kind::CachePolicy,
            title: format!(
                "{} eviction would hit {} more than LRU at {:.0} MiB",
                w.policy.as_str().to_uppercase(),
                pct(delta),
                w.capacity_mb
            ),
            suggestion: format!(
                "Consider {} eviction in the cache (or raise the capacity instead).",
                w.policy.as_str().to_uppercase()
            ),
            evidence: vec![ev(
                format!(
                    "at {:.0} MiB: LRU {} vs {} {}",
                    w.capacity_mb,
                    pct(lru.predicted_hit_rate),
                    w.policy.as_str(),
                    pct(w.predicted_hit_rate)
                ),
                "/cache/whatif",
            )],
            reach: delta * c.replayed as f64,
            impact: 1.0,
            confidence: 0.5,
        });
    }
}

fn slo_items(slo: &[SloLine], out: &mut Vec<Draft>) {
    for (i, l) in slo.iter().enumerate() {
        let (Some(sli), Some(obj), Some(rem), Some(consumed)) =
            (l.sli, l.objective, l.budget_remaining, l.budget_consumed)
        else {
            continue;
        };
        if rem >= 0.3 {
            continue;
        }
        out.push(Draft {
            id: stable_id("slo", &[&l.slo]),
            kind: Kind::Slo,
            title: format!("SLO {} has spent {} of its error budget", l.slo, pct(consumed.min(99.99))),
            suggestion:
                "Find what makes the bad events (errors, slow calls) with the sections above and fix the largest."
                    .into(),
            evidence: vec![ev(
                format!(
                    "SLI {} against an objective of {} ({} bad of {})",
                    pct(sli),
                    pct(obj),
                    l.total - l.good,
                    l.total
                ),
                format!("/slo/{i}"),
            )],
            reach: (l.total - l.good) as f64,
            impact: if rem <= 0.0 { 3.0 } else { 2.0 },
            confidence: 1.0,
        });
    }
}

fn stream_items(stream: &[StageLine], out: &mut Vec<Draft>) {
    // The tools that take a tenth of all the time served or more, at most three.
    for (i, l) in stream.iter().enumerate().take(3) {
        if l.share_of_all_time < 0.1 {
            continue;
        }
        if let Some((j, s)) = l.stages.iter().enumerate().next()
            && s.share >= 0.5
        {
            out.push(Draft {
                id: stable_id("stage", &[&l.tool, &s.stage]),
                kind: Kind::Stage,
                title: format!("{} spends {} of its time in {}", l.tool, pct(s.share), s.stage),
                suggestion: format!(
                    "Make {} cheaper for {} (or avoid it: cache its result, do less of it per call).",
                    s.stage, l.tool
                ),
                evidence: vec![ev(
                    format!(
                        "{} calls, {:.1} ms on average, {} of all time served; {} in {}",
                        l.calls,
                        l.mean_ms,
                        pct(l.share_of_all_time),
                        pct(s.share),
                        s.stage
                    ),
                    format!("/value_stream/{i}/stages/{j}"),
                )],
                reach: l.calls as f64,
                impact: 1.0,
                confidence: 0.8,
            });
        }
        if l.queue_share >= 0.3 {
            out.push(Draft {
                id: stable_id("queue", &[&l.tool]),
                kind: Kind::Queue,
                title: format!("Calls to {} wait {} of their time for a slot", l.tool, pct(l.queue_share)),
                suggestion: "Add capacity (slots) or make the calls ahead of them cheaper.".into(),
                evidence: vec![ev(
                    format!("{} calls, queue share {}", l.calls, pct(l.queue_share)),
                    format!("/value_stream/{i}"),
                )],
                reach: l.calls as f64,
                impact: 1.0,
                confidence: 0.8,
            });
        }
    }
}

fn truncation_items(u: &UsageSection, out: &mut Vec<Draft>) {
    for (i, t) in u.truncation.iter().enumerate() {
        if t.share_of_calls < 0.05 || t.truncated < 20 {
            continue;
        }
        out.push(Draft {
            id: stable_id("truncation", &[&t.tool]),
            kind: Kind::Truncation,
            title: format!("{}: {} of responses hit a cap", t.tool, pct(t.share_of_calls)),
            suggestion: if t.next_same_tool >= 0.5 {
                "Agents page on: a larger default page, or a summary first, would save calls.".into()
            } else {
                "Agents rarely page on: the cap may hide what they need; make the continuation hint clearer.".into()
            },
            evidence: vec![ev(
                format!(
                    "{} truncated responses; next call: same tool {}, another tool {}, an error {}; {} sessions ended there",
                    t.truncated,
                    pct(t.next_same_tool),
                    pct(t.next_other_tool),
                    pct(t.next_error),
                    t.ended
                ),
                format!("/usage/truncation/{i}"),
            )],
            reach: t.truncated as f64,
            impact: if t.next_error + t.ended as f64 / t.truncated.max(1) as f64 >= 0.2 { 1.0 } else { 0.5 },
            confidence: 0.8,
        });
    }
}

fn regression_items(changes: &[ToolChange], trends: &[TrendRow], out: &mut Vec<Draft>) {
    let mut seen: Vec<String> = Vec::new();
    for (i, t) in changes.iter().enumerate() {
        let Some(c) = &t.change else { continue };
        if !c.significant || c.direction != Direction::Worse {
            continue;
        }
        let mut what = Vec::new();
        if c.latency_significant {
            what.push(format!(
                "p95 {:.1} → {:.1} ms, p50 {:.1} → {:.1} ms",
                c.prev_p95_ms, t.p95_ms, c.prev_p50_ms, t.p50_ms
            ));
        }
        if c.error_rate_significant {
            what.push(format!("error rate {} → {}", pct(c.prev_error_rate), pct(t.error_rate)));
        }
        let metric = if c.latency_significant { "latency" } else { "errors" };
        seen.push(t.tool.clone());
        out.push(Draft {
            id: stable_id("regression", &[&t.tool, metric]),
            kind: Kind::Regression,
            title: format!("{} got worse than the previous period: {}", t.tool, what.join("; ")),
            suggestion: "Look at the changes in the period (runs, configuration) and the tool's stages for the cause."
                .into(),
            evidence: vec![ev(
                format!("{} calls vs {} before; {}", t.calls, c.prev_calls, what.join("; ")),
                format!("/tool_changes/{i}"),
            )],
            reach: t.calls as f64,
            impact: 1.0,
            confidence: 0.8,
        });
    }
    // A tool whose last day got worse than the day before (a change too recent for the period).
    let Some(last) = trends.iter().map(|t| t.day.as_str()).max() else { return };
    for (i, t) in trends.iter().enumerate() {
        let Some(c) = &t.change else { continue };
        if t.day != last || !c.significant || c.direction != Direction::Worse || seen.contains(&t.tool) {
            continue;
        }
        let metric = if c.latency_significant { "latency" } else { "errors" };
        let what = if c.latency_significant {
            format!("p95 {:.1} → {:.1} ms, p50 {:.1} → {:.1} ms", c.prev_p95_ms, t.p95_ms, c.prev_p50_ms, t.p50_ms)
        } else {
            format!("error rate {} → {}", pct(c.prev_error_rate), pct(t.error_rate))
        };
        out.push(Draft {
            id: stable_id("regression", &[&t.tool, metric]),
            kind: Kind::Regression,
            title: format!("{} got worse on {}: {what}", t.tool, t.day),
            suggestion:
                "A recent change: look at the runs and configuration changes of that day and the tool's stages.".into(),
            evidence: vec![ev(
                format!("{} calls vs {} the day before; {what}", t.calls, c.prev_calls),
                format!("/trends/{i}"),
            )],
            reach: t.calls as f64,
            impact: 1.0,
            confidence: 0.8,
        });
    }
}

/// The ranked backlog.
pub(crate) fn build(inputs: &Inputs<'_>, overrides: &EffortOverrides) -> Vec<BacklogItem> {
    let mut drafts = Vec::new();
    error_items(inputs.errors, &mut drafts);
    cache_items(inputs.cache, &mut drafts);
    slo_items(inputs.slo, &mut drafts);
    stream_items(inputs.stream, &mut drafts);
    truncation_items(inputs.usage, &mut drafts);
    regression_items(inputs.changes, inputs.trends, &mut drafts);
    let mut items: Vec<BacklogItem> = drafts
        .into_iter()
        .map(|d| {
            let effort = overrides
                .get(&d.id)
                .or_else(|| overrides.get(d.kind.as_str()))
                .copied()
                .filter(|e| e.is_finite() && *e > 0.0)
                .unwrap_or_else(|| d.kind.default_effort());
            let score = d.reach * d.impact * d.confidence / effort;
            BacklogItem {
                id: d.id,
                kind: d.kind,
                title: d.title,
                suggestion: d.suggestion,
                evidence: d.evidence,
                reach: (d.reach * 10.0).round() / 10.0,
                impact: d.impact,
                confidence: d.confidence,
                effort,
                score: (score * 10.0).round() / 10.0,
            }
        })
        .collect();
    items.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    items
}
