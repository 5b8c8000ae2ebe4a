//! Likely causes: the embedder's `CauseModel` says which signal moving which way points at
//! which cause; ranking measures how far each signal moved around the symptom's onset against
//! its own recent past, and when.
//!
//! For a rule on a gauge or counter: the baseline is the median of the signal's points in the
//! `cause_lookback_secs` before onset (less the lead); its level is the most extreme value it
//! held for three ticks in a row from `cause_lead_secs` before onset to `cause_follow_secs`
//! after; `z = change / max(1.4826·MAD, min_change/2)`, strength `1 − e^{−(z−3)/3}` above 3
//! (z = 5 → 0.49, z = 10 → 0.90). A level past the rule's absolute `threshold` is evidence too
//! (0.5 to 0.9), for trouble that was already there when the baseline was taken. A signal that
//! first moved more than `cause_slack_secs` after onset is more likely a consequence: × 0.6.
//! Events count fully within `cause_event_recent_secs` before onset, fading to 0.3 at
//! `cause_event_lookback_secs`. Rule score = weight × strength (× timing); a cause's score is
//! its best rule's, so scores are comparable across causes (all in 0..=1).

use serde::{Deserialize, Serialize};

use super::config::{DetectConfig, DetectError};
use super::signals::SignalHistory;
use super::timefmt::clock;

/// The cause vocabulary (the contract with operators and dashboards).
pub const CAUSES: [&str; 11] = [
    "cache_thrash",
    "saturation",
    "slow_load",
    "large_responses",
    "recalc_backend",
    "file_changed",
    "config_change",
    "memory_pressure",
    "user_errors",
    "data_errors",
    "unknown",
];

/// Rules at most, per model.
const MAX_RULES: usize = 256;
/// Causes scoring less than this are not listed at all.
const LIST_MIN: f64 = 0.05;
/// Strength of a signal that moved only after the symptom (likely a consequence).
const LATE: f64 = 0.6;
/// A signal moved when its sustained level is this many noise scales from its baseline.
const Z_MOVED: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Up,
    Down,
}

impl Direction {
    fn sign(self) -> f64 {
        match self {
            Direction::Up => 1.0,
            Direction::Down => -1.0,
        }
    }
}

/// How a rule reads its signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// The value as given (hit ratio, in-flight, RSS).
    Gauge,
    /// A monotonic count: its rate per second between ticks (evictions, refusals, CPU seconds).
    Counter,
    /// Two counters: Δsignal / Δper between ticks (load seconds per load).
    CounterRatio,
    /// Two gauges: signal / per (RSS / memory limit).
    GaugeRatio,
    /// Discrete events noted with `note_event` under this signal name.
    Event,
}

/// "When `signal` moves `direction`, suspect `cause`."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CauseRule {
    /// One of `CAUSES` (not `unknown`).
    pub cause: String,
    pub signal: String,
    #[serde(default)]
    pub direction: Direction,
    pub kind: SignalKind,
    /// The denominator signal, for the ratio kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    /// 0..=1: how directly this signal points at the cause.
    pub weight: f64,
    /// The smallest change that matters, in the signal's units (per second for counters);
    /// required for all kinds but `event`. It keeps flat signals from scoring on noise.
    #[serde(default)]
    pub min_change: f64,
    /// A level past which the signal is evidence even without a move (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

impl CauseRule {
    /// A rule on a gauge, counter or event signal.
    pub fn new(
        cause: &str,
        signal: &str,
        direction: Direction,
        kind: SignalKind,
        weight: f64,
        min_change: f64,
    ) -> Self {
        Self {
            cause: cause.into(),
            signal: signal.into(),
            direction,
            kind,
            per: None,
            weight,
            min_change,
            threshold: None,
        }
    }

    /// The same rule over `signal / per`.
    pub fn per(mut self, per: &str) -> Self {
        self.per = Some(per.into());
        self
    }

    /// The same rule with an absolute threshold.
    pub fn threshold(mut self, level: f64) -> Self {
        self.threshold = Some(level);
        self
    }

    fn label(&self) -> String {
        match &self.per {
            Some(p) => format!("{} per {p}", self.signal),
            None => self.signal.clone(),
        }
    }

    fn unit(&self) -> &'static str {
        if self.kind == SignalKind::Counter { "/s" } else { "" }
    }
}

/// The embedder's rules. Kaizen knows no signal names; the embedder does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CauseModel {
    pub rules: Vec<CauseRule>,
}

impl CauseModel {
    /// Checks every rule; the error names the rule and what to change.
    pub fn validate(&self) -> Result<(), DetectError> {
        if self.rules.len() > MAX_RULES {
            return Err(DetectError::Model(format!(
                "{} cause rules; at most {MAX_RULES} are accepted",
                self.rules.len()
            )));
        }
        for (index, r) in self.rules.iter().enumerate() {
            let bad = |why: String| DetectError::Rule { index, cause: r.cause.clone(), signal: r.signal.clone(), why };
            if r.cause == "unknown" || !CAUSES.contains(&r.cause.as_str()) {
                return Err(bad(format!("cause must be one of {}", CAUSES[..CAUSES.len() - 1].join(", "))));
            }
            if r.signal.is_empty() || r.signal.len() > 128 {
                return Err(bad("signal must be a name of 1 to 128 bytes".into()));
            }
            if !(r.weight.is_finite() && r.weight > 0.0 && r.weight <= 1.0) {
                return Err(bad(format!("weight {} must be in (0, 1]", r.weight)));
            }
            let ratio = matches!(r.kind, SignalKind::CounterRatio | SignalKind::GaugeRatio);
            match (&r.per, ratio) {
                (None, true) => return Err(bad("a ratio kind needs `per` (the denominator signal)".into())),
                (Some(_), false) => return Err(bad("`per` only goes with counter_ratio or gauge_ratio".into())),
                _ => {}
            }
            if r.kind != SignalKind::Event && !(r.min_change.is_finite() && r.min_change > 0.0) {
                return Err(bad(format!(
                    "min_change {} must be > 0: the smallest change that matters, in the signal's units",
                    r.min_change
                )));
            }
            if r.threshold.is_some_and(|t| !t.is_finite()) {
                return Err(bad("threshold must be a finite number".into()));
            }
        }
        Ok(())
    }
}

/// A cause with its score (0..=1, comparable across causes) and the evidence in numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedCause {
    pub cause: String,
    pub score: f64,
    pub evidence: String,
}

/// A signal's first move, for the incident timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Movement {
    pub at_ms: u64,
    pub signal: String,
    pub detail: String,
}

/// A cause, its best rule score so far, and each rule's (score, evidence).
type CauseTally = (String, f64, Vec<(f64, String)>);

struct Finding {
    score: f64,
    evidence: String,
    movement: Option<Movement>,
}

/// Ranks the model's causes for a symptom that began at `onset_ms`, looking at data up to
/// `end_ms`. Returns the causes (best first; `unknown` first when nothing scored
/// `min_cause_score`) and the signals' first moves for the timeline.
pub fn rank(
    model: &CauseModel,
    hist: &SignalHistory,
    cfg: &DetectConfig,
    onset_ms: u64,
    end_ms: u64,
) -> (Vec<RankedCause>, Vec<Movement>) {
    let mut best: Vec<CauseTally> = Vec::new();
    let mut moves = Vec::new();
    for rule in &model.rules {
        let Some(f) = (match rule.kind {
            SignalKind::Event => event_finding(rule, hist, cfg, onset_ms, end_ms),
            _ => level_finding(rule, hist, cfg, onset_ms, end_ms),
        }) else {
            continue;
        };
        if let Some(m) = f.movement {
            moves.push(m);
        }
        match best.iter_mut().find(|(c, _, _)| *c == rule.cause) {
            Some(entry) => {
                entry.1 = entry.1.max(f.score);
                entry.2.push((f.score, f.evidence));
            }
            None => best.push((rule.cause.clone(), f.score, vec![(f.score, f.evidence)])),
        }
    }
    let mut causes: Vec<RankedCause> = best
        .into_iter()
        .filter(|(_, s, _)| *s >= LIST_MIN)
        .map(|(cause, score, mut ev)| {
            ev.sort_by(|a, b| b.0.total_cmp(&a.0));
            let evidence = ev.into_iter().map(|(_, e)| e).collect::<Vec<_>>().join("; ");
            RankedCause { cause, score: round3(score), evidence }
        })
        .collect();
    let top = causes.iter().map(|c| c.score).fold(0.0, f64::max);
    if top < cfg.min_cause_score {
        causes.push(RankedCause {
            cause: "unknown".into(),
            score: round3(1.0 - top),
            evidence: format!(
                "no watched signal moved beyond its noise around {} ({} rules checked)",
                clock(onset_ms),
                model.rules.len()
            ),
        });
    }
    causes.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.cause.cmp(&b.cause)));
    moves.sort_by_key(|m| m.at_ms);
    (causes, moves)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The points a rule reads, as (time, value), oldest first.
fn series(rule: &CauseRule, hist: &SignalHistory) -> Vec<(u64, f64)> {
    let Some(main) = hist.points(&rule.signal) else { return Vec::new() };
    let rates = |pts: &mut dyn Iterator<Item = &(u64, f64)>| -> Vec<(u64, f64, f64)> {
        let mut out = Vec::new();
        let mut prev: Option<(u64, f64)> = None;
        for &(t, v) in pts {
            if let Some((pt, pv)) = prev
                && t > pt
                && v >= pv
            {
                out.push((t, v - pv, (t - pt) as f64 / 1000.0));
            }
            prev = Some((t, v));
        }
        out
    };
    match rule.kind {
        SignalKind::Gauge => main.iter().copied().collect(),
        SignalKind::Counter => rates(&mut main.iter()).into_iter().map(|(t, d, secs)| (t, d / secs)).collect(),
        SignalKind::CounterRatio | SignalKind::GaugeRatio => {
            let Some(per) = rule.per.as_deref().and_then(|p| hist.points(p)) else { return Vec::new() };
            if rule.kind == SignalKind::GaugeRatio {
                return join(main.iter().copied(), per.iter().copied())
                    .filter(|&(_, _, b)| b != 0.0)
                    .map(|(t, a, b)| (t, a / b))
                    .collect();
            }
            let a = rates(&mut main.iter());
            let b = rates(&mut per.iter());
            join(a.into_iter().map(|(t, d, _)| (t, d)), b.into_iter().map(|(t, d, _)| (t, d)))
                .filter(|&(_, _, db)| db > 0.0)
                .map(|(t, da, db)| (t, da / db))
                .collect()
        }
        SignalKind::Event => Vec::new(),
    }
}

/// Points of two time-ordered series at the times they share.
fn join(
    a: impl Iterator<Item = (u64, f64)>,
    b: impl Iterator<Item = (u64, f64)>,
) -> impl Iterator<Item = (u64, f64, f64)> {
    let mut b = b.peekable();
    a.filter_map(move |(t, va)| {
        while b.peek().is_some_and(|&(tb, _)| tb < t) {
            b.next();
        }
        match b.peek() {
            Some(&(tb, vb)) if tb == t => Some((t, va, vb)),
            _ => None,
        }
    })
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The most extreme level the signal held for three ticks in a row (the median of every three
/// consecutive points, highest for `up`, lowest for `down`): a sustained move counts, a single
/// spike does not, and a move late in the span is not diluted by the points before it.
fn sustained_level(points: &[(u64, f64)], dir: f64) -> f64 {
    let vals: Vec<f64> = points.iter().map(|p| p.1).collect();
    if vals.len() < 3 {
        let mut v = vals;
        v.sort_by(f64::total_cmp);
        return quantile(&v, 0.5);
    }
    vals.windows(3)
        .map(|w| {
            let mut t = [w[0], w[1], w[2]];
            t.sort_by(f64::total_cmp);
            t[1]
        })
        .fold(f64::NAN, |acc, m| if acc.is_nan() || dir * (m - acc) > 0.0 { m } else { acc })
}

fn level_finding(rule: &CauseRule, hist: &SignalHistory, cfg: &DetectConfig, onset: u64, end: u64) -> Option<Finding> {
    let pts = series(rule, hist);
    let lead = cfg.cause_lead_secs * 1000;
    let from = onset.saturating_sub(cfg.cause_lookback_secs * 1000);
    let split = onset.saturating_sub(lead);
    let until = end.min(onset + cfg.cause_follow_secs * 1000);
    let mut before: Vec<f64> = pts.iter().filter(|(t, _)| *t >= from && *t < split).map(|p| p.1).collect();
    let after: Vec<(u64, f64)> = pts.iter().filter(|(t, _)| *t >= split && *t <= until).copied().collect();
    if after.is_empty() {
        return None;
    }
    let dir = rule.direction.sign();
    let level = sustained_level(&after, dir);
    let unit = rule.unit();
    let label = rule.label();

    let mut strength = 0.0;
    let mut evidence = String::new();
    let mut movement = None;
    if before.len() >= 3 {
        before.sort_by(f64::total_cmp);
        let base = quantile(&before, 0.5);
        let mut dev: Vec<f64> = before.iter().map(|v| (v - base).abs()).collect();
        dev.sort_by(f64::total_cmp);
        let scale = (1.4826 * quantile(&dev, 0.5)).max(rule.min_change / 2.0);
        let z = dir * (level - base) / scale;
        if z > Z_MOVED {
            let moved_at = after.iter().find(|(_, v)| dir * (v - base) > Z_MOVED * scale).map_or(onset, |p| p.0);
            let late = moved_at > onset + cfg.cause_slack_secs * 1000;
            strength = (1.0 - (-(z - Z_MOVED) / 3.0).exp()) * if late { LATE } else { 1.0 };
            let when = if late { "after the symptom, from" } else { "from" };
            evidence = format!("{label} {}{unit} → {}{unit} {when} {}", num(base), num(level), clock(moved_at));
            movement = Some(Movement {
                at_ms: moved_at,
                signal: label.clone(),
                detail: format!("{}{unit} → {}{unit} (suggests {})", num(base), num(level), rule.cause),
            });
        }
    }
    if let Some(th) = rule.threshold {
        let excess = dir * (level - th);
        if excess > 0.0 {
            let s = 0.5 + 0.4 * (1.0 - (-excess / rule.min_change).exp());
            if movement.is_some() {
                evidence = format!("{evidence} (past {}{unit})", num(th));
            } else {
                evidence = format!("{label} at {}{unit}, past {}{unit}", num(level), num(th));
            }
            strength = f64::max(strength, s);
        }
    }
    if strength <= 0.0 {
        return None;
    }
    Some(Finding { score: rule.weight * strength, evidence, movement })
}

fn event_finding(rule: &CauseRule, hist: &SignalHistory, cfg: &DetectConfig, onset: u64, end: u64) -> Option<Finding> {
    let lookback = cfg.cause_event_lookback_secs * 1000;
    let recent = cfg.cause_event_recent_secs * 1000;
    let slack = cfg.cause_slack_secs * 1000;
    let mut best: Option<(f64, String)> = None;
    for e in hist.events_between(onset.saturating_sub(lookback), end).filter(|e| e.signal == rule.signal) {
        let strength = if e.at_ms > onset + slack {
            LATE
        } else if e.at_ms + recent >= onset {
            1.0
        } else {
            let age = (onset - recent - e.at_ms) as f64;
            let span = lookback.saturating_sub(recent).max(1) as f64;
            1.0 - 0.7 * (age / span).min(1.0)
        };
        if best.as_ref().is_none_or(|(s, _)| strength > *s) {
            best = Some((strength, format!("{} at {}: {}", e.signal, clock(e.at_ms), e.detail)));
        }
    }
    let (strength, evidence) = best?;
    Some(Finding { score: rule.weight * strength, evidence, movement: None })
}

/// A number with about three significant digits, SI-suffixed when large.
pub fn num(x: f64) -> String {
    let a = x.abs();
    let (v, suffix) = match a {
        a if a >= 1e12 => (x / 1e12, "T"),
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e4 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    let va = v.abs();
    let s = if va == 0.0 {
        "0".to_string()
    } else if va >= 100.0 {
        format!("{v:.0}")
    } else if va >= 10.0 {
        format!("{v:.1}")
    } else if va >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.2e}")
    };
    let s =
        if s.contains('.') && !s.contains('e') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    format!("{s}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(0.93), "0.93");
        assert_eq!(num(4.2), "4.2");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(250.0), "250");
        assert_eq!(num(52_000.0), "52k");
        assert_eq!(num(1.25e9), "1.25G");
        assert_eq!(num(0.0012), "1.20e-3");
    }

    #[test]
    fn validation_names_the_rule_and_the_fix() {
        let ok = CauseModel {
            rules: vec![
                CauseRule::new("cache_thrash", "cache_hit_ratio", Direction::Down, SignalKind::Gauge, 1.0, 0.05),
                CauseRule::new("slow_load", "load_seconds_sum", Direction::Up, SignalKind::CounterRatio, 0.8, 0.05)
                    .per("cache_loads"),
                CauseRule::new("config_change", "config_change", Direction::Up, SignalKind::Event, 0.9, 0.0),
            ],
        };
        ok.validate().unwrap();
        let mut m = ok.clone();
        m.rules[0].cause = "cache_trash".into();
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("rule 0") && e.contains("cache_thrash, saturation"), "{e}");
        let mut m = ok.clone();
        m.rules[1].per = None;
        assert!(m.validate().unwrap_err().to_string().contains("needs `per`"));
        let mut m = ok.clone();
        m.rules[0].min_change = 0.0;
        assert!(m.validate().unwrap_err().to_string().contains("min_change"));
        let mut m = ok;
        m.rules[2].weight = 1.5;
        assert!(m.validate().unwrap_err().to_string().contains("(0, 1]"));
        let parsed: CauseModel = serde_json::from_str(
            r#"{"rules":[{"cause":"saturation","signal":"inflight","kind":"gauge","weight":0.6,"min_change":2}]}"#,
        )
        .unwrap();
        assert_eq!(parsed.rules[0].direction, Direction::Up);
        parsed.validate().unwrap();
    }
}
