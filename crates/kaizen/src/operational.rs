//! Operational alerts from seed 000's alerting section, evaluated in process beside the SLO
//! alerts and rendered as Prometheus rules from the same thresholds: error-rate spike, recalc
//! circuit breaker open, memory near its limit, low cache hit rate, retry storm, usage spike,
//! long-running recalculation.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::sli::AlertEvent;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperationalConfig {
    /// Share of requests that are `internal` or `timeout` over 5 min (HighErrorRate), for 2 min.
    pub error_rate: f64,
    /// Resident memory over this share of the limit (MemoryExhaustion), for 5 min.
    pub memory_fraction: f64,
    /// Cache hit rate under this (LowCacheHitRate), for 15 min, with at least `min_lookups`.
    pub cache_hit_rate: f64,
    pub min_lookups: u64,
    /// Recalc retries per second over 5 min (HighRetryRate), for 5 min.
    pub retries_per_second: f64,
    /// Request rate over 5 min above this many times its 1 h average (UsageSpike), for 10 min.
    pub usage_spike_factor: f64,
    /// A recalculation running longer than this many seconds (LongRunningRecalc).
    pub recalc_seconds: f64,
    /// Minutes the recalc breaker must stay open (CircuitBreakerOpen).
    pub breaker_open_minutes: u64,
}

impl Default for OperationalConfig {
    fn default() -> Self {
        Self {
            error_rate: 0.1,
            memory_fraction: 0.9,
            cache_hit_rate: 0.5,
            min_lookups: 20,
            retries_per_second: 10.0,
            usage_spike_factor: 2.0,
            recalc_seconds: 120.0,
            breaker_open_minutes: 5,
        }
    }
}

/// What the process reports each evaluation (counters are totals since start).
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    pub requests: u64,
    pub server_errors: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub retries: u64,
    pub rss_bytes: u64,
    pub memory_limit_bytes: u64,
    pub breaker_open: bool,
    pub longest_recalc_seconds: f64,
}

struct Rule {
    name: &'static str,
    severity: &'static str,
    /// How long the condition must hold.
    hold_secs: u64,
    anchor: &'static str,
}

const RULES: [Rule; 7] = [
    Rule { name: "GembaHighErrorRate", severity: "page", hold_secs: 120, anchor: "high-error-rate" },
    Rule { name: "GembaCircuitBreakerOpen", severity: "page", hold_secs: 300, anchor: "circuit-breaker-open" },
    Rule { name: "GembaMemoryExhaustion", severity: "page", hold_secs: 300, anchor: "memory-exhaustion" },
    Rule { name: "GembaLowCacheHitRate", severity: "ticket", hold_secs: 900, anchor: "low-cache-hit-rate" },
    Rule { name: "GembaHighRetryRate", severity: "ticket", hold_secs: 300, anchor: "high-retry-rate" },
    Rule { name: "GembaUsageSpike", severity: "info", hold_secs: 600, anchor: "usage-spike" },
    Rule { name: "GembaLongRunningRecalc", severity: "info", hold_secs: 0, anchor: "long-running-recalc" },
];

pub struct Operational {
    cfg: OperationalConfig,
    runbook: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (time, signals), one per evaluation, kept for an hour.
    history: VecDeque<(u64, Signals)>,
    /// Since when each rule's condition has held.
    since: HashMap<&'static str, u64>,
    firing: HashMap<&'static str, bool>,
}

fn rate(history: &VecDeque<(u64, Signals)>, now: u64, window: u64, f: impl Fn(&Signals) -> u64) -> Option<f64> {
    let (t_last, last) = history.back()?;
    let (t0, first) = history.iter().find(|(t, _)| *t + window >= now)?;
    let dt = t_last.saturating_sub(*t0);
    (dt > 0).then(|| f(last).saturating_sub(f(first)) as f64 / dt as f64)
}

fn delta(history: &VecDeque<(u64, Signals)>, now: u64, window: u64, f: impl Fn(&Signals) -> u64) -> u64 {
    match (history.iter().find(|(t, _)| *t + window >= now), history.back()) {
        (Some((_, a)), Some((_, b))) => f(b).saturating_sub(f(a)),
        _ => 0,
    }
}

impl Operational {
    pub fn new(cfg: OperationalConfig, runbook: &str) -> Self {
        Self { cfg, runbook: runbook.into(), state: Mutex::new(State::default()) }
    }

    /// Which conditions hold now, by rule name.
    fn conditions(&self, h: &VecDeque<(u64, Signals)>, now: u64, s: &Signals) -> Vec<(&'static str, bool)> {
        let c = &self.cfg;
        let req5 = delta(h, now, 300, |x| x.requests);
        let err5 = delta(h, now, 300, |x| x.server_errors);
        let lookups15 = delta(h, now, 900, |x| x.cache_hits + x.cache_misses);
        let hits15 = delta(h, now, 900, |x| x.cache_hits);
        let rate5 = rate(h, now, 300, |x| x.requests);
        let rate1h = rate(h, now, 3600, |x| x.requests);
        let hour_of_data = h.front().is_some_and(|(t, _)| now.saturating_sub(*t) >= 1800);
        vec![
            ("GembaHighErrorRate", req5 >= 10 && err5 as f64 / req5.max(1) as f64 > c.error_rate),
            ("GembaCircuitBreakerOpen", s.breaker_open),
            (
                "GembaMemoryExhaustion",
                s.memory_limit_bytes > 0 && s.rss_bytes as f64 > c.memory_fraction * s.memory_limit_bytes as f64,
            ),
            (
                "GembaLowCacheHitRate",
                lookups15 >= c.min_lookups && (hits15 as f64 / lookups15 as f64) < c.cache_hit_rate,
            ),
            ("GembaHighRetryRate", rate(h, now, 300, |x| x.retries).is_some_and(|r| r > c.retries_per_second)),
            (
                "GembaUsageSpike",
                hour_of_data
                    && matches!((rate5, rate1h), (Some(a), Some(b)) if b > 0.0 && a > c.usage_spike_factor * b && req5 >= 100),
            ),
            ("GembaLongRunningRecalc", s.longest_recalc_seconds > c.recalc_seconds),
        ]
    }

    /// Record the signals at `now` and return alert transitions.
    pub fn evaluate(&self, now: u64, s: Signals) -> Vec<AlertEvent> {
        let mut st = self.state.lock();
        st.history.push_back((now, s));
        while st.history.front().is_some_and(|(t, _)| *t + 3700 < now) {
            st.history.pop_front();
        }
        let conds = self.conditions(&st.history, now, &s);
        let mut out = Vec::new();
        for (name, holds) in conds {
            let Some(rule) = RULES.iter().find(|r| r.name == name) else { continue };
            if holds {
                st.since.entry(name).or_insert(now);
            } else {
                st.since.remove(name);
            }
            let should = st.since.get(name).is_some_and(|t| now.saturating_sub(*t) >= rule.hold_secs);
            let was = st.firing.get(name).copied().unwrap_or(false);
            if should != was {
                st.firing.insert(name, should);
                out.push(AlertEvent {
                    alert: name.into(),
                    slo: String::new(),
                    tool: String::new(),
                    severity: rule.severity.into(),
                    status: if should { "firing" } else { "resolved" }.into(),
                    at_secs: now,
                    summary: summary(name, &self.cfg),
                    runbook: format!("{}#{}", self.runbook, rule.anchor),
                });
            }
        }
        out
    }

    /// Names of the alerts firing now.
    pub fn firing(&self) -> Vec<String> {
        let st = self.state.lock();
        let mut v: Vec<String> = st.firing.iter().filter(|(_, on)| **on).map(|(k, _)| k.to_string()).collect();
        v.sort();
        v
    }
}

fn summary(name: &str, c: &OperationalConfig) -> String {
    match name {
        "GembaHighErrorRate" => {
            format!("more than {:.0}% of requests failed on the server for 2 minutes", c.error_rate * 100.0)
        }
        "GembaCircuitBreakerOpen" => {
            format!("the recalc circuit breaker has been open for {} minutes", c.breaker_open_minutes)
        }
        "GembaMemoryExhaustion" => {
            format!("resident memory above {:.0}% of its limit for 5 minutes", c.memory_fraction * 100.0)
        }
        "GembaLowCacheHitRate" => {
            format!("workbook cache hit rate below {:.0}% for 15 minutes", c.cache_hit_rate * 100.0)
        }
        "GembaHighRetryRate" => format!("recalc retries above {}/s for 5 minutes", c.retries_per_second),
        "GembaUsageSpike" => format!("request rate {}x its hourly average for 10 minutes", c.usage_spike_factor),
        _ => format!("a recalculation has run for more than {} s", c.recalc_seconds),
    }
}

/// The same alerts as Prometheus alerting rules.
pub fn prometheus_rules(c: &OperationalConfig, runbook: &str) -> Value {
    let f = |x: f64| format!("{x}");
    let exprs: [(&str, String, &str); 7] = [
        (
            "GembaHighErrorRate",
            format!(
                "sum(rate(gemba_tool_requests_total{{outcome=~\"internal|timeout\"}}[5m])) / sum(rate(gemba_tool_requests_total[5m])) > {} and sum(increase(gemba_tool_requests_total[5m])) >= 10",
                f(c.error_rate)
            ),
            "2m",
        ),
        ("GembaCircuitBreakerOpen", "max(gemba_recalc_breaker_state) == 1".into(), "5m"),
        (
            "GembaMemoryExhaustion",
            format!(
                "gemba_process_resident_memory_bytes / gemba_process_memory_limit_bytes > {}",
                f(c.memory_fraction)
            ),
            "5m",
        ),
        (
            "GembaLowCacheHitRate",
            format!(
                "sum(increase(gemba_cache_hits_total[15m])) / (sum(increase(gemba_cache_hits_total[15m])) + sum(increase(gemba_cache_misses_total[15m]))) < {} and (sum(increase(gemba_cache_hits_total[15m])) + sum(increase(gemba_cache_misses_total[15m]))) >= {}",
                f(c.cache_hit_rate),
                c.min_lookups
            ),
            "15m",
        ),
        (
            "GembaHighRetryRate",
            format!("sum(rate(gemba_recalc_retries_total[5m])) > {}", f(c.retries_per_second)),
            "5m",
        ),
        (
            "GembaUsageSpike",
            format!(
                "sum(rate(gemba_tool_requests_total[5m])) > {} * avg_over_time(sum(rate(gemba_tool_requests_total[5m]))[1h:1m])",
                f(c.usage_spike_factor)
            ),
            "10m",
        ),
        ("GembaLongRunningRecalc", format!("max(gemba_recalc_running_seconds) > {}", f(c.recalc_seconds)), "1m"),
    ];
    let rules: Vec<Value> = exprs
        .iter()
        .map(|(name, expr, hold)| {
            let rule = RULES.iter().find(|r| r.name == *name).map(|r| (r.severity, r.anchor)).unwrap_or(("info", ""));
            json!({
                "alert": name,
                "expr": expr,
                "for": hold,
                "labels": {"severity": rule.0, "service": "gemba"},
                "annotations": {"summary": summary(name, c), "runbook_url": format!("{runbook}#{}", rule.1)},
            })
        })
        .collect();
    json!({"name": "gemba-operational", "interval": "30s", "rules": rules})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_must_hold_for_their_duration() {
        let o = Operational::new(OperationalConfig::default(), "docs/runbooks.md");
        let mut s = Signals { memory_limit_bytes: 1000, rss_bytes: 950, ..Default::default() };
        let mut fired = Vec::new();
        for t in (0..=600).step_by(10) {
            s.requests += 100;
            s.server_errors += 50; // 50 % server errors
            s.cache_hits += 1;
            s.cache_misses += 9;
            for e in o.evaluate(1_000 + t, s) {
                fired.push((t, e.alert, e.status));
            }
        }
        let at = |n: &str| fired.iter().find(|(_, a, st)| a == n && st == "firing").map(|(t, _, _)| *t);
        // The rate needs two samples (t = 10), then must hold for 2 minutes.
        assert_eq!(at("GembaHighErrorRate"), Some(130));
        assert_eq!(at("GembaMemoryExhaustion"), Some(300));
        assert_eq!(at("GembaLowCacheHitRate"), None, "needs 15 minutes");
        assert_eq!(at("GembaUsageSpike"), None, "steady traffic is no spike");
        // Healthy again: they resolve.
        s.rss_bytes = 100;
        let resolved: Vec<String> = (1..=40)
            .flat_map(|k| {
                s.requests += 100;
                o.evaluate(1_600 + k * 10, s)
            })
            .filter(|e| e.status == "resolved")
            .map(|e| e.alert)
            .collect();
        assert!(
            resolved.contains(&"GembaHighErrorRate".to_string())
                && resolved.contains(&"GembaMemoryExhaustion".to_string())
        );
    }
}
