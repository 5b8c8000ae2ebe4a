//! Operational alerts (seed 000's alerting section), generic: the embedder declares rules over
//! named signals it reports each evaluation (counters as totals since start, gauges as they
//! are), each with how long its condition must hold and the PromQL that says the same thing in
//! Prometheus. Kaizen evaluates them in process and renders them as one rule group, so the two
//! judges cannot drift apart.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::event::AlertEvent;

/// Signal values at one evaluation: counters are totals since start, gauges are current.
pub type Signals = Vec<(String, f64)>;

/// What must be true for a rule to fire.
#[derive(Debug, Clone)]
pub enum Condition {
    /// A gauge above `threshold`; with `per`, the gauge as a share of another (a zero or
    /// missing denominator never holds).
    Above { signal: String, per: Option<String>, threshold: f64 },
    /// Over `window_secs`: the increase of the `num` counters divided by the increase of the `den`
    /// counters, above (or, with `below`, under) `threshold`, once `den` grew by `min_den`.
    Ratio { num: Vec<String>, den: Vec<String>, window_secs: u64, below: bool, threshold: f64, min_den: f64 },
    /// A counter's rate per second over `window_secs` above `threshold`.
    Rate { signal: String, window_secs: u64, threshold: f64 },
    /// A counter's rate over `short_secs` above `factor` times its rate over `long_secs`, with at
    /// least `min_increase` in the short window and half the long window of history.
    Spike { signal: String, short_secs: u64, long_secs: u64, factor: f64, min_increase: f64 },
}

/// One operational alert.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// "page", "ticket" or "info".
    pub severity: String,
    /// How long the condition must hold before the alert fires.
    pub hold_secs: u64,
    /// The runbook section (anchor) the alert links to.
    pub runbook_anchor: String,
    pub summary: String,
    pub condition: Condition,
    /// The same condition in PromQL, and its `for:` duration, for the rule file.
    pub promql: String,
    pub prom_for: String,
}

/// History kept for the longest window (an hour and a bit).
const KEEP_SECS: u64 = 3_700;

pub struct Operational {
    rules: Vec<Rule>,
    runbook: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (time, signal values), one per evaluation.
    history: VecDeque<(u64, HashMap<String, f64>)>,
    /// Since when each rule's condition has held.
    since: HashMap<String, u64>,
    firing: HashMap<String, bool>,
}

fn value(s: &HashMap<String, f64>, names: &[String]) -> f64 {
    names.iter().map(|n| s.get(n).copied().unwrap_or(0.0)).sum()
}

/// The increase of `names` (summed) over the window ending at the last evaluation, and the
/// seconds it spans.
fn increase(h: &VecDeque<(u64, HashMap<String, f64>)>, now: u64, window: u64, names: &[String]) -> Option<(f64, u64)> {
    let (t_last, last) = h.back()?;
    let (t0, first) = h.iter().find(|(t, _)| *t + window >= now)?;
    Some(((value(last, names) - value(first, names)).max(0.0), t_last.saturating_sub(*t0)))
}

fn holds(c: &Condition, h: &VecDeque<(u64, HashMap<String, f64>)>, now: u64) -> bool {
    let Some((_, cur)) = h.back() else { return false };
    match c {
        Condition::Above { signal, per, threshold } => {
            let v = cur.get(signal).copied().unwrap_or(0.0);
            match per {
                Some(d) => cur.get(d).is_some_and(|d| *d > 0.0 && v / d > *threshold),
                None => v > *threshold,
            }
        }
        Condition::Ratio { num, den, window_secs, below, threshold, min_den } => {
            match (increase(h, now, *window_secs, num), increase(h, now, *window_secs, den)) {
                (Some((n, _)), Some((d, _))) if d >= *min_den && d > 0.0 => {
                    let r = n / d;
                    if *below { r < *threshold } else { r > *threshold }
                }
                _ => false,
            }
        }
        Condition::Rate { signal, window_secs, threshold } => {
            increase(h, now, *window_secs, std::slice::from_ref(signal))
                .is_some_and(|(inc, dt)| dt > 0 && inc / dt as f64 > *threshold)
        }
        Condition::Spike { signal, short_secs, long_secs, factor, min_increase } => {
            let enough_history = h.front().is_some_and(|(t, _)| now.saturating_sub(*t) >= long_secs / 2);
            let names = std::slice::from_ref(signal);
            match (increase(h, now, *short_secs, names), increase(h, now, *long_secs, names)) {
                (Some((si, sdt)), Some((li, ldt))) if enough_history && sdt > 0 && ldt > 0 => {
                    let (short, long) = (si / sdt as f64, li / ldt as f64);
                    si >= *min_increase && long > 0.0 && short > factor * long
                }
                _ => false,
            }
        }
    }
}

impl Operational {
    pub fn new(rules: Vec<Rule>, runbook: &str) -> Self {
        Self { rules, runbook: runbook.into(), state: Mutex::new(State::default()) }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Record the signals at `now` (unix seconds) and return alert transitions.
    pub fn evaluate(&self, now: u64, signals: Signals) -> Vec<AlertEvent> {
        let mut st = self.state.lock();
        st.history.push_back((now, signals.into_iter().collect()));
        while st.history.front().is_some_and(|(t, _)| *t + KEEP_SECS < now) {
            st.history.pop_front();
        }
        let mut out = Vec::new();
        for rule in &self.rules {
            if holds(&rule.condition, &st.history, now) {
                st.since.entry(rule.name.clone()).or_insert(now);
            } else {
                st.since.remove(&rule.name);
            }
            let should = st.since.get(&rule.name).is_some_and(|t| now.saturating_sub(*t) >= rule.hold_secs);
            let was = st.firing.get(&rule.name).copied().unwrap_or(false);
            if should != was {
                st.firing.insert(rule.name.clone(), should);
                out.push(AlertEvent {
                    alert: rule.name.clone(),
                    slo: String::new(),
                    tool: String::new(),
                    severity: rule.severity.clone(),
                    status: if should { "firing" } else { "resolved" }.into(),
                    at_secs: now,
                    summary: rule.summary.clone(),
                    runbook: format!("{}#{}", self.runbook, rule.runbook_anchor),
                });
            }
        }
        out
    }

    /// Names of the alerts firing now.
    pub fn firing(&self) -> Vec<String> {
        let st = self.state.lock();
        let mut v: Vec<String> = st.firing.iter().filter(|(_, on)| **on).map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }
}

/// The rules as one Prometheus alerting-rule group named `group`, labelled with `service`.
pub fn prometheus_group(group: &str, rules: &[Rule], service: &str, runbook: &str) -> Value {
    let rules: Vec<Value> = rules
        .iter()
        .map(|r| {
            json!({
                "alert": r.name,
                "expr": r.promql,
                "for": r.prom_for,
                "labels": {"severity": r.severity, "service": service},
                "annotations": {"summary": r.summary, "runbook_url": format!("{runbook}#{}", r.runbook_anchor)},
            })
        })
        .collect();
    json!({"name": group, "interval": "30s", "rules": rules})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, hold_secs: u64, condition: Condition) -> Rule {
        Rule {
            name: name.into(),
            severity: "page".into(),
            hold_secs,
            runbook_anchor: name.to_lowercase(),
            summary: format!("{name} holds"),
            condition,
            promql: "vector(1)".into(),
            prom_for: "1m".into(),
        }
    }

    fn rules() -> Vec<Rule> {
        let s = |x: &str| x.to_string();
        vec![
            rule(
                "Errors",
                120,
                Condition::Ratio {
                    num: vec![s("errors")],
                    den: vec![s("requests")],
                    window_secs: 300,
                    below: false,
                    threshold: 0.1,
                    min_den: 10.0,
                },
            ),
            rule("Memory", 300, Condition::Above { signal: s("rss"), per: Some(s("limit")), threshold: 0.9 }),
            rule(
                "LowHits",
                900,
                Condition::Ratio {
                    num: vec![s("hits")],
                    den: vec![s("hits"), s("misses")],
                    window_secs: 900,
                    below: true,
                    threshold: 0.5,
                    min_den: 20.0,
                },
            ),
            rule(
                "Spike",
                600,
                Condition::Spike {
                    signal: s("requests"),
                    short_secs: 300,
                    long_secs: 3600,
                    factor: 2.0,
                    min_increase: 100.0,
                },
            ),
        ]
    }

    fn signals(requests: f64, errors: f64, hits: f64, misses: f64, rss: f64) -> Signals {
        [
            ("requests", requests),
            ("errors", errors),
            ("hits", hits),
            ("misses", misses),
            ("rss", rss),
            ("limit", 1000.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn conditions_must_hold_for_their_duration() {
        let o = Operational::new(rules(), "docs/runbooks.md");
        let (mut req, mut err, mut hits, mut misses) = (0.0, 0.0, 0.0, 0.0);
        let mut fired = Vec::new();
        for t in (0..=600).step_by(10) {
            req += 100.0;
            err += 50.0; // 50 % server errors
            hits += 1.0;
            misses += 9.0;
            for e in o.evaluate(1_000 + t, signals(req, err, hits, misses, 950.0)) {
                fired.push((t, e.alert, e.status));
            }
        }
        let at = |n: &str| fired.iter().find(|(_, a, st)| a == n && st == "firing").map(|(t, _, _)| *t);
        // The ratio needs two samples (t = 10), then must hold for 2 minutes.
        assert_eq!(at("Errors"), Some(130));
        assert_eq!(at("Memory"), Some(300));
        assert_eq!(at("LowHits"), None, "needs 15 minutes");
        assert_eq!(at("Spike"), None, "steady traffic is no spike");
        assert_eq!(o.firing(), vec!["Errors".to_string(), "Memory".to_string()]);
        // Healthy again: they resolve.
        let resolved: Vec<String> = (1..=40)
            .flat_map(|k| {
                req += 100.0;
                o.evaluate(1_600 + k * 10, signals(req, err, hits, misses, 100.0))
            })
            .filter(|e| e.status == "resolved")
            .map(|e| e.alert)
            .collect();
        assert!(resolved.contains(&"Errors".to_string()) && resolved.contains(&"Memory".to_string()));
    }

    #[test]
    fn a_spike_needs_history_and_volume() {
        let o = Operational::new(rules(), "r");
        let mut req = 0.0;
        let mut first = None;
        // 40 minutes at 1/s, then 10/s.
        for t in (0..4_800).step_by(10) {
            req += if t < 2_400 { 10.0 } else { 100.0 };
            if o.evaluate(t, signals(req, 0.0, 0.0, 0.0, 0.0)).iter().any(|e| e.alert == "Spike") && first.is_none() {
                first = Some(t);
            }
        }
        let first = first.expect("the spike fired");
        assert!((3_000..=3_100).contains(&first), "fired at {first}");
    }

    #[test]
    fn the_group_renders_every_rule() {
        let g = prometheus_group("svc-operational", &rules(), "svc", "docs/runbooks.md");
        assert_eq!(g["rules"].as_array().map(Vec::len), Some(4));
        assert_eq!(g["rules"][0]["labels"]["service"], "svc");
        assert_eq!(g["rules"][0]["annotations"]["runbook_url"], "docs/runbooks.md#errors");
    }
}
