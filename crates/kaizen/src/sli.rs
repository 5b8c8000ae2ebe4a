//! The in-process SLI engine: per-minute good/total counts per objective (fed by the
//! aggregator, off the hot path), burn rates over the SRE Workbook windows, error budgets,
//! time to exhaustion, and alert state with firing/resolved transitions. Minutes are saved to
//! the state database so budgets survive restarts.

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::Serialize;

pub use crate::event::AlertEvent;
use crate::naming::Naming;
use crate::outcome::Outcome;
use crate::recorder::{Finished, Observer};
use crate::slo::{self, Indicator, Objective, SloConfig, budget_min_requests};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub good: u64,
    pub total: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.good += o.good;
        self.total += o.total;
    }
    fn bad(&self) -> u64 {
        self.total.saturating_sub(self.good)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SloStatus {
    pub slo: String,
    pub tool: String,
    pub tier: String,
    pub objective: f64,
    /// Good share over the period so far (None without traffic).
    pub sli: Option<f64>,
    pub error_budget_remaining: f64,
    /// Burn rate per window, in `slo::WINDOWS` order.
    pub burn_rates: Vec<(String, f64)>,
    pub requests_period: u64,
    /// Seconds until the budget is gone at the 1h burn rate (None when not burning).
    pub time_to_exhaustion_secs: Option<f64>,
    /// "ok", "ticket" or "page"; "budget_low" is reported separately.
    pub state: String,
    pub budget_low: bool,
    /// For latency objectives, the threshold in seconds.
    pub latency_threshold_seconds: Option<f64>,
}

struct PerObjective {
    obj: Objective,
    threshold_micros: Option<u64>,
    /// (minute index, counts), oldest first.
    minutes: VecDeque<(u64, Counts)>,
    /// Minutes not yet saved.
    dirty: Vec<u64>,
    firing: Option<&'static str>,
    budget_low: bool,
}

pub struct SliEngine {
    cfg: SloConfig,
    runbook: String,
    /// Alert names and metric names for this embedder.
    naming: Naming,
    /// For each recorder op index, the objectives it feeds.
    op_objectives: Vec<Vec<usize>>,
    state: Mutex<Vec<PerObjective>>,
}

impl std::fmt::Debug for SliEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliEngine").finish()
    }
}

impl SliEngine {
    /// Buckets a window spans at the configured resolution and scale.
    fn buckets(&self, w: &str) -> u64 {
        self.cfg.window_secs(w).div_ceil(self.cfg.resolution_secs).max(1)
    }

    fn bucket_of(&self, secs: u64) -> u64 {
        secs / self.cfg.resolution_secs
    }

    /// Buckets kept: the longest window or the period, whichever is longer.
    fn keep(&self) -> u64 {
        self.buckets("3d").max(self.buckets(&self.cfg.period_window()))
    }
}

impl SliEngine {
    /// An engine for the objectives of `cfg`, fed by the ops named `op_names` (a recorder's);
    /// alerts and series are named by `naming`.
    pub fn new(cfg: SloConfig, op_names: &[String], runbook: &str, naming: &Naming) -> Self {
        let objectives = cfg.objectives();
        let op_objectives = op_names
            .iter()
            .map(|n| objectives.iter().enumerate().filter(|(_, o)| &o.tool == n).map(|(i, _)| i).collect())
            .collect();
        let state = objectives
            .into_iter()
            .map(|obj| PerObjective {
                threshold_micros: match obj.indicator {
                    Indicator::Latency { threshold_seconds } => Some((threshold_seconds * 1e6) as u64),
                    Indicator::Availability => None,
                },
                obj,
                minutes: VecDeque::new(),
                dirty: Vec::new(),
                firing: None,
                budget_low: false,
            })
            .collect();
        Self { cfg, runbook: runbook.to_string(), naming: naming.clone(), op_objectives, state: Mutex::new(state) }
    }

    pub fn config(&self) -> &SloConfig {
        &self.cfg
    }

    fn add(p: &mut PerObjective, minute: u64, c: Counts, keep: u64) {
        match p.minutes.back_mut() {
            Some((m, counts)) if *m == minute => counts.add(c),
            _ => {
                // Keep minutes sorted even if an event arrives late.
                let pos = p.minutes.partition_point(|(m, _)| *m < minute);
                if p.minutes.get(pos).is_some_and(|(m, _)| *m == minute) {
                    p.minutes[pos].1.add(c);
                } else {
                    p.minutes.insert(pos, (minute, c));
                }
            }
        }
        if !p.dirty.contains(&minute) {
            p.dirty.push(minute);
        }
        while p.minutes.front().is_some_and(|(m, _)| *m + keep < minute) {
            p.minutes.pop_front();
        }
    }

    /// Count finished requests: (op index, unix seconds, duration µs, outcome).
    pub fn count(&self, events: impl IntoIterator<Item = (usize, u64, u64, Outcome)>) {
        let keep = self.keep();
        let mut st = self.state.lock();
        for (op, secs, micros, outcome) in events {
            if !outcome.is_judged() {
                continue;
            }
            let Some(objs) = self.op_objectives.get(op) else { continue };
            for &i in objs {
                let p = &mut st[i];
                let good = match p.threshold_micros {
                    Some(t) => micros <= t,
                    None => !outcome.is_server_error(),
                };
                Self::add(p, secs / self.cfg.resolution_secs, Counts { good: u64::from(good), total: 1 }, keep);
            }
        }
    }

    /// Restore saved minutes (slo name, minute, good, total).
    pub fn restore(&self, rows: impl IntoIterator<Item = (String, u64, u64, u64)>) {
        let keep = self.keep();
        let mut st = self.state.lock();
        for (slo, minute, good, total) in rows {
            if let Some(p) = st.iter_mut().find(|p| p.obj.name == slo) {
                Self::add(p, minute, Counts { good, total }, keep);
                p.dirty.retain(|m| *m != minute);
            }
        }
    }

    /// Minutes changed since the last call: (slo, minute, good, total).
    pub fn take_dirty(&self) -> Vec<(String, u64, u64, u64)> {
        let mut st = self.state.lock();
        let mut out = Vec::new();
        for p in st.iter_mut() {
            for m in p.dirty.drain(..) {
                if let Some((_, c)) = p.minutes.iter().find(|(x, _)| *x == m) {
                    out.push((p.obj.name.clone(), m, c.good, c.total));
                }
            }
        }
        out
    }

    fn sum(p: &PerObjective, now_minute: u64, minutes: u64) -> Counts {
        let from = now_minute.saturating_sub(minutes.saturating_sub(1));
        let mut c = Counts::default();
        for (m, x) in p.minutes.iter().rev() {
            if *m < from {
                break;
            }
            if *m <= now_minute {
                c.add(*x);
            }
        }
        c
    }

    fn status_of(&self, p: &PerObjective, now_secs: u64) -> (SloStatus, Option<&'static str>) {
        let now_minute = self.bucket_of(now_secs);
        let o = &p.obj;
        let burns: Vec<(String, f64, f64)> = slo::WINDOWS
            .iter()
            .map(|w| {
                let c = Self::sum(p, now_minute, self.buckets(w));
                (w.to_string(), slo::burn_rate(c.bad() as f64, c.total as f64, o.objective), c.total as f64)
            })
            .collect();
        let severity = slo::evaluate(
            |w| burns.iter().find(|(x, _, _)| x == w).map(|(_, b, n)| (*b, *n)).unwrap_or((0.0, 0.0)),
            self.cfg.min_requests,
        );
        let period = Self::sum(p, now_minute, self.buckets(&self.cfg.period_window()));
        let consumed =
            if period.total == 0 { 0.0 } else { (period.bad() as f64 / period.total as f64) / o.error_budget() };
        let remaining = 1.0 - consumed;
        let burn_1h = burns.iter().find(|(w, _, _)| w == "1h").map(|(_, b, _)| *b).unwrap_or(0.0);
        let period_secs = self.cfg.window_secs(&self.cfg.period_window()) as f64;
        let tte = (burn_1h > 0.0 && remaining > 0.0).then(|| remaining * period_secs / burn_1h);
        let status = SloStatus {
            slo: o.name.clone(),
            tool: o.tool.clone(),
            tier: o.tier.clone(),
            objective: o.objective,
            sli: (period.total > 0).then(|| period.good as f64 / period.total as f64),
            error_budget_remaining: remaining,
            burn_rates: burns.iter().map(|(w, b, _)| (w.clone(), *b)).collect(),
            requests_period: period.total,
            time_to_exhaustion_secs: tte,
            state: severity.unwrap_or("ok").to_string(),
            latency_threshold_seconds: p.threshold_micros.map(|t| t as f64 / 1e6),
            budget_low: period.total >= budget_min_requests(o, self.cfg.min_requests)
                && consumed >= self.cfg.budget_alert_at,
        };
        (status, severity)
    }

    /// Every objective's status at `now_secs`.
    pub fn status(&self, now_secs: u64) -> Vec<SloStatus> {
        let st = self.state.lock();
        st.iter().map(|p| self.status_of(p, now_secs).0).collect()
    }

    /// Evaluate alerts at `now_secs`; returns the transitions (firing and resolved), each once.
    pub fn evaluate(&self, now_secs: u64) -> Vec<AlertEvent> {
        let mut st = self.state.lock();
        let mut events = Vec::new();
        for i in 0..st.len() {
            let (status, severity) = self.status_of(&st[i], now_secs);
            let p = &mut st[i];
            let mk = |alert: &str, severity: &str, status_s: &str, summary: String, anchor: &str| AlertEvent {
                alert: alert.into(),
                slo: p.obj.name.clone(),
                tool: p.obj.tool.clone(),
                severity: severity.into(),
                status: status_s.into(),
                at_secs: now_secs,
                summary,
                runbook: format!("{}#{anchor}", self.runbook),
            };
            if severity != p.firing {
                if let Some(old) = p.firing {
                    events.push(mk(
                        &self.alert_name(old),
                        old,
                        "resolved",
                        format!("{} is no longer burning its error budget too fast ({old})", p.obj.name),
                        "slo-burn-rate",
                    ));
                }
                if let Some(new) = severity {
                    events.push(mk(
                        &self.alert_name(new),
                        new,
                        "firing",
                        format!("{} is spending its error budget too fast ({new})", p.obj.name),
                        "slo-burn-rate",
                    ));
                }
                p.firing = severity;
            }
            if status.budget_low != p.budget_low {
                events.push(mk(
                    &self.naming.alert("SLOErrorBudgetLow"),
                    "ticket",
                    if status.budget_low { "firing" } else { "resolved" },
                    format!(
                        "{} has spent {:.0}% of its error budget",
                        p.obj.name,
                        (1.0 - status.error_budget_remaining) * 100.0
                    ),
                    "slo-error-budget-low",
                ));
                p.budget_low = status.budget_low;
            }
        }
        events
    }
}

impl SliEngine {
    /// The `<prefix>_slo_*` series for the exposition.
    pub fn samples(&self, now_secs: u64, out: &mut Vec<crate::exposition::Sample>) {
        use crate::exposition::{Kind, Sample};
        let op = self.naming.op_label.as_str();
        for st in self.status(now_secs) {
            let g = |n: &str, h: &str, v: f64| {
                Sample::new(&self.naming.metric(n), h, Kind::Gauge, v).label("slo", &st.slo).label(op, &st.tool)
            };
            out.push(g("slo_objective_ratio", "The objective: share of requests that must be good.", st.objective));
            if let Some(t) = st.latency_threshold_seconds {
                out.push(g("slo_latency_threshold_seconds", "The latency objective's threshold.", t));
            }
            if let Some(sli) = st.sli {
                out.push(g("slo_sli_ratio", "Share of good requests over the SLO period so far.", sli));
            }
            out.push(g(
                "slo_error_budget_remaining_ratio",
                "Share of the period's error budget left (negative when overspent).",
                st.error_budget_remaining,
            ));
            for (w, b) in &st.burn_rates {
                out.push(
                    g("slo_burn_rate", "Error-budget burn rate per window (1 = spending exactly on budget).", *b)
                        .label("window", w),
                );
            }
            if let Some(t) = st.time_to_exhaustion_secs {
                out.push(g("slo_time_to_exhaustion_seconds", "Time until the budget is gone at the 1h burn rate.", t));
            }
            for (sev, on) in
                [("page", st.state == "page"), ("ticket", st.state == "ticket"), ("budget_low", st.budget_low)]
            {
                out.push(
                    g("slo_alert_firing", "1 while the alert of this severity fires.", f64::from(u8::from(on)))
                        .label("severity", sev),
                );
            }
        }
    }
}

/// Save the minutes changed since the last save.
pub fn save(engine: &SliEngine, store: Option<&crate::store::Store>) {
    if let Some(s) = store {
        let dirty = engine.take_dirty();
        if !dirty.is_empty()
            && let Err(err) = s.save_slo_minutes(&dirty, engine.config().period_days + 1)
        {
            tracing::warn!("cannot save SLO minutes: {err}");
        }
    }
}

impl SliEngine {
    fn alert_name(&self, severity: &str) -> String {
        self.naming.alert(if severity == "page" { "SLOBurnRatePage" } else { "SLOBurnRateTicket" })
    }
}

impl Observer for SliEngine {
    fn observe(&self, batch: &[Finished]) {
        self.count(batch.iter().map(|e| (e.op as usize, e.at_secs(), e.micros, e.outcome())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming() -> Naming {
        Naming { alert_prefix: "Test".into(), ..Naming::plain("test") }
    }

    fn engine() -> SliEngine {
        let cfg = SloConfig::with_tiers(&[("read_table", "data")]);
        SliEngine::new(cfg, &["read_table".to_string()], "docs/runbooks.md", &naming())
    }

    const T0: u64 = 1_800_000_000;

    #[test]
    fn total_failure_pages_within_a_minute_and_resolves() {
        let e = engine();
        let mut paged_at = None;
        // Ten requests a second, all failing, evaluated every 10 s.
        for s in 0..120u64 {
            e.count((0..10).map(|_| (0, T0 + s, 1_000, Outcome::Internal)));
            if s % 10 == 9 {
                let ev = e.evaluate(T0 + s);
                if paged_at.is_none() && ev.iter().any(|a| a.alert == "TestSLOBurnRatePage" && a.status == "firing") {
                    paged_at = Some(s + 1);
                }
            }
        }
        let paged_at = paged_at.expect("never paged");
        assert!(paged_at <= 60, "paged after {paged_at} s");
        // Healthy again: once the short windows are clean, the page resolves (once).
        let mut resolved = 0;
        for s in 120..(120 + 40 * 60) {
            e.count((0..10).map(|_| (0, T0 + s, 1_000, Outcome::Ok)));
            if s % 60 == 0 {
                resolved += e
                    .evaluate(T0 + s)
                    .iter()
                    .filter(|a| a.alert == "TestSLOBurnRatePage" && a.status == "resolved")
                    .count();
            }
        }
        assert_eq!(resolved, 1);
    }

    #[test]
    fn steady_load_within_objectives_never_alerts() {
        let e = engine();
        let mut alerts = 0;
        // 30 simulated minutes, 20 requests a second, 0.05 % errors, all fast.
        for s in 0..1800u64 {
            e.count((0..20).map(|k| {
                let bad = (s * 20 + k) % 2000 == 0;
                (0, T0 + s, 900, if bad { Outcome::Internal } else { Outcome::Ok })
            }));
            if s % 60 == 59 {
                alerts += e.evaluate(T0 + s).len();
            }
        }
        assert_eq!(alerts, 0);
        let st = e.status(T0 + 1800);
        let av = st.iter().find(|s| s.slo == "read_table-availability").unwrap();
        assert!(av.error_budget_remaining > 0.4 && av.error_budget_remaining < 0.6, "{}", av.error_budget_remaining);
        assert!(av.time_to_exhaustion_secs.is_some());
    }

    #[test]
    fn saved_minutes_restore_the_same_burn_rates() {
        let e = engine();
        for s in 0..300u64 {
            e.count([(0, T0 + s, if s % 4 == 0 { 900_000 } else { 1_000 }, Outcome::Ok)]);
        }
        let saved = e.take_dirty();
        assert!(!saved.is_empty());
        let f = engine();
        f.restore(saved);
        let (a, b) = (e.status(T0 + 300), f.status(T0 + 300));
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        assert!(f.take_dirty().is_empty());
    }
}
