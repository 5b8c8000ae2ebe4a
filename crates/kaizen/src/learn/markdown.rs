//! The report as Markdown: for chat and pull requests. Tables stay short (the top items); the
//! JSON has everything.

use std::fmt::Write;

use super::cache::Policy;
use super::report::Report;

/// A table cell: no pipes or line breaks.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn opt_pct(x: Option<f64>) -> String {
    x.map(pct).unwrap_or_else(|| "–".into())
}

pub(crate) fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Kaizen report: {} until {}\n", r.period.as_str(), r.until);
    let _ = writeln!(
        s,
        "{} to {} · {} requests · {} errors · {} sessions\n",
        r.from, r.until, r.requests, r.errors.total, r.usage.sessions
    );

    let _ = writeln!(s, "## Improvement backlog\n");
    if r.backlog.is_empty() {
        let _ = writeln!(s, "Nothing stands out in this period.\n");
    } else {
        let _ = writeln!(
            s,
            "| # | score | item | reach | impact | confidence | effort | id |\n|---|---|---|---|---|---|---|---|"
        );
        for (i, b) in r.backlog.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {} | {:.0} | {} | {} | {} | `{}` |",
                i + 1,
                b.score,
                cell(&b.title),
                b.reach,
                b.impact,
                b.confidence,
                b.effort,
                b.id
            );
        }
        s.push('\n');
        for (i, b) in r.backlog.iter().enumerate().take(5) {
            let _ = writeln!(s, "{}. **{}** — {}", i + 1, b.title, b.suggestion);
            for e in &b.evidence {
                let _ = writeln!(s, "   - {} (`{}`)", e.fact, e.link);
            }
        }
        s.push('\n');
    }

    let _ = writeln!(s, "## SLO compliance\n");
    if r.slo.is_empty() {
        let _ = writeln!(s, "No SLI minutes in this period.\n");
    } else {
        let _ = writeln!(s, "| SLO | SLI | objective | budget left | good / total |\n|---|---|---|---|---|");
        for l in &r.slo {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} / {} |",
                cell(&l.slo),
                l.sli.map(|v| format!("{:.3} %", v * 100.0)).unwrap_or_else(|| "–".into()),
                l.objective.map(|v| format!("{:.3} %", v * 100.0)).unwrap_or_else(|| "–".into()),
                opt_pct(l.budget_remaining),
                l.good,
                l.total
            );
        }
        s.push('\n');
    }

    let e = &r.errors;
    let _ = writeln!(s, "## Errors\n");
    let cats: Vec<String> = e.by_category.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let _ = writeln!(
        s,
        "{} errors ({}); {} signatures, the top {} make 80 %.\n",
        e.total,
        if cats.is_empty() { "none".into() } else { cats.join(", ") },
        e.signatures,
        e.pareto_80
    );
    if !e.top.is_empty() {
        let _ = writeln!(
            s,
            "| # | signature | category | tool | count | share | cumulative | first seen | last seen | recovered | abandoned |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (i, t) in e.top.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                cell(&t.signature),
                t.category.as_str(),
                cell(&t.tool),
                t.count,
                pct(t.share),
                pct(t.cumulative_share),
                t.first_seen,
                t.last_seen,
                pct(t.follow_up.recovered),
                t.follow_up.abandoned
            );
        }
        s.push('\n');
        for (i, t) in e.top.iter().enumerate().take(3) {
            let _ = writeln!(s, "{}. example: {}", i + 1, cell(&t.example.message));
            if let Some(a) = &t.example.args {
                let _ = writeln!(s, "   arguments: `{}`", a.replace('`', "'"));
            }
        }
        s.push('\n');
    }

    let u = &r.usage;
    let _ = writeln!(s, "## Usage\n");
    let _ = writeln!(
        s,
        "{} sessions ({} still open), {} calls per session at the median ({} at p90); {} abandoned right after an error ({}).\n",
        u.sessions,
        u.open_sessions,
        u.calls_per_session_p50,
        u.calls_per_session_p90,
        u.abandoned,
        pct(u.abandoned_share)
    );
    if !u.workflows.is_empty() {
        let _ = writeln!(s, "| workflow | sessions | share |\n|---|---|---|");
        for w in &u.workflows {
            let _ = writeln!(s, "| {} | {} | {} |", cell(&w.sequence.join(" → ")), w.sessions, pct(w.share));
        }
        s.push('\n');
    }
    if !u.truncation.is_empty() {
        let _ = writeln!(
            s,
            "| truncated tool | responses | share of calls | then same tool | other tool | error | ended |\n|---|---|---|---|---|---|---|"
        );
        for t in &u.truncation {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell(&t.tool),
                t.truncated,
                pct(t.share_of_calls),
                pct(t.next_same_tool),
                pct(t.next_other_tool),
                pct(t.next_error),
                t.ended
            );
        }
        s.push('\n');
    }
    if !u.hot_keys.is_empty() {
        let _ = writeln!(s, "| hot key | calls | bytes served | hit rate | cached MiB |\n|---|---|---|---|---|");
        for k in &u.hot_keys {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} |",
                cell(&k.key),
                k.calls,
                k.bytes_served,
                opt_pct(k.hit_rate),
                k.cached_bytes as f64 / 1_048_576.0
            );
        }
        s.push('\n');
    }

    let c = &r.cache;
    let _ = writeln!(s, "## Cache what-if\n");
    let _ = writeln!(
        s,
        "Measured hit rate {} over {} lookups; {} replayed over {} keys (working set {:.0} MiB); achievable {}.",
        opt_pct(c.measured_hit_rate),
        c.measured_requests,
        c.replayed,
        c.keys,
        c.working_set_mb,
        pct(c.achievable_hit_rate)
    );
    if let (Some(cap), Some(m)) = (c.capacity_mb, c.model_hit_rate) {
        let _ = writeln!(
            s,
            "At today's {cap:.0} MiB the LRU model predicts {} ({:+.1} points from measured).",
            pct(m),
            c.model_error_points.unwrap_or(0.0)
        );
    }
    if let Some(rec) = &c.recommendation {
        let _ = writeln!(
            s,
            "\n**Recommendation:** {} at **{:.0} MiB**, predicted hit rate {} ({}).",
            rec.policy.as_str().to_uppercase(),
            rec.capacity_mb,
            pct(rec.predicted_hit_rate),
            rec.reason
        );
    }
    if !c.whatif.is_empty() {
        let mut caps: Vec<f64> = c.whatif.iter().map(|w| w.capacity_mb).collect();
        caps.sort_by(f64::total_cmp);
        caps.dedup();
        let _ = writeln!(s, "\n| capacity MiB | LRU | GDSF | LFU |\n|---|---|---|---|");
        for cap in caps {
            let get = |p: Policy| {
                c.whatif
                    .iter()
                    .find(|w| w.policy == p && w.capacity_mb == cap)
                    .map(|w| pct(w.predicted_hit_rate))
                    .unwrap_or_default()
            };
            let _ = writeln!(s, "| {cap:.0} | {} | {} | {} |", get(Policy::Lru), get(Policy::Gdsf), get(Policy::Lfu));
        }
    }
    s.push('\n');

    let _ = writeln!(s, "## Trends\n");
    if !r.tool_changes.is_empty() {
        let _ = writeln!(
            s,
            "| tool | calls | error rate | p50 ms | p95 ms | vs previous period |\n|---|---|---|---|---|---|"
        );
        for t in r.tool_changes.iter().take(20) {
            let change = match &t.change {
                None => "no previous data".into(),
                Some(ch) if ch.significant => format!(
                    "**{}**: calls {} → {}, error rate {} → {}, p95 {:.1} → {:.1} ms",
                    serde_json::to_value(ch.direction)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    ch.prev_calls,
                    t.calls,
                    pct(ch.prev_error_rate),
                    pct(t.error_rate),
                    ch.prev_p95_ms,
                    t.p95_ms
                ),
                Some(ch) => format!("no significant change (calls {} → {})", ch.prev_calls, t.calls),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} | {} |",
                cell(&t.tool),
                t.calls,
                pct(t.error_rate),
                t.p50_ms,
                t.p95_ms,
                change
            );
        }
        s.push('\n');
    }
    let flagged: Vec<_> = r.trends.iter().filter(|t| t.change.as_ref().is_some_and(|c| c.significant)).collect();
    if flagged.is_empty() {
        let _ = writeln!(s, "No day differs significantly from the day before.\n");
    } else {
        let _ = writeln!(s, "Days that differ significantly from the day before:\n");
        for t in flagged.iter().take(20) {
            if let Some(c) = &t.change {
                let _ = writeln!(
                    s,
                    "- {} {}: error rate {} → {}, p50 {:.1} → {:.1} ms, p95 {:.1} → {:.1} ms",
                    t.tool,
                    t.day,
                    pct(c.prev_error_rate),
                    pct(t.error_rate),
                    c.prev_p50_ms,
                    t.p50_ms,
                    c.prev_p95_ms,
                    t.p95_ms
                );
            }
        }
        s.push('\n');
    }

    if !r.value_stream.is_empty() {
        let _ = writeln!(
            s,
            "## Value stream\n\n| tool | calls | mean ms | share of all time | queue | largest stage |\n|---|---|---|---|---|---|"
        );
        for l in r.value_stream.iter().take(15) {
            let top =
                l.stages.first().map(|st| format!("{} {}", st.stage, pct(st.share))).unwrap_or_else(|| "–".into());
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {} | {} | {} |",
                cell(&l.tool),
                l.calls,
                l.mean_ms,
                pct(l.share_of_all_time),
                pct(l.queue_share),
                cell(&top)
            );
        }
        s.push('\n');
    }

    if !r.runs.is_empty() {
        let _ = writeln!(s, "## Changes in the period\n");
        for run in &r.runs {
            let v = match &run.previous_version {
                Some(p) => format!("version {p} → {}", run.version),
                None => format!("version {}", run.version),
            };
            let changes = if run.config_changes.is_empty() {
                "no configuration change".into()
            } else {
                run.config_changes.join("; ")
            };
            let _ = writeln!(s, "- {}: restart, {v}; {}", run.at, cell(&changes));
        }
        s.push('\n');
    }
    s
}
