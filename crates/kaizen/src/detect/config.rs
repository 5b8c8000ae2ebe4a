//! Detector settings, with the defaults the simulation in `sim.rs` measured (see
//! `docs/detection.md`), and their validation.

use serde::{Deserialize, Serialize};

/// A setting or a cause model that cannot work, said plainly with what to do instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectError {
    #[error("detect setting `{field}` = {value}: {why}")]
    Setting { field: &'static str, value: String, why: &'static str },
    #[error("cause rule {index} ({cause} on {signal}): {why}")]
    Rule { index: usize, cause: String, signal: String, why: String },
    #[error("{0}")]
    Model(String),
}

/// How anomalies are found: windows, baseline, decision thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Evaluation window, seconds (aligned to unix time).
    pub window_secs: u64,
    /// A window with fewer calls than `min_calls` is pooled with the next ones, up to this many
    /// windows (6 × 10 s = 1 min); a pool still short of calls is dropped, so a quiet tool is
    /// never judged on a handful of calls.
    pub max_pool_windows: u64,
    /// Calls an evaluation needs (successful calls for latency, all calls for the error ratio).
    pub min_calls: u64,
    /// Evaluations that only teach the baseline before any alarm (per tool and signal).
    pub warmup_evaluations: u32,
    /// Half-life of the baseline, in evaluations: slow enough that an incident does not teach
    /// itself as normal, fast enough to follow a daily shape.
    pub baseline_half_life: f64,
    /// Latency: each call's log latency is clamped to these baseline quantiles before averaging.
    pub winsor_low: f64,
    pub winsor_high: f64,
    /// Latency CUSUM: the allowance per evaluation, as a rise (0.15 = +15 %: smaller rises do
    /// not accumulate), and the decision threshold in standard errors.
    pub latency_allowance: f64,
    pub latency_h: f64,
    /// Latency must also be up by at least this share (0.2 = +20 %) over the run before opening.
    pub min_latency_increase: f64,
    /// ... and its median by at least this many milliseconds: a tool that answers in a fraction
    /// of a millisecond is slowed by tens of percent by any neighbour on the host (all tools at
    /// once), a shift nobody waiting on it would notice.
    pub min_latency_increase_ms: f64,
    /// Error ratio: the CUSUM's alternative is the baseline ratio plus this.
    pub error_shift: f64,
    /// Error ratio CUSUM threshold (log-likelihood ratio); a single window above
    /// `error_h_strong` opens at once, otherwise the run must span two windows with errors.
    pub error_h: f64,
    pub error_h_strong: f64,
    /// Errors a run needs before it can open, and the least rise of the ratio over baseline.
    pub min_errors: u64,
    pub min_error_increase: f64,
    /// The baseline error ratio is never taken below this (a tool that never failed is not
    /// alarmed by one failure).
    pub error_ratio_floor: f64,
    /// Consecutive good evaluations that close an open anomaly.
    pub close_after: u32,
    /// An anomaly open this long is accepted as the new normal: closed, baseline relearned.
    pub max_open_secs: u64,
    /// A tool idle this long has its first `rewarm_evaluations` evaluations after the gap taught
    /// to nobody and alarmed on by nobody (cold starts after idle are not incidents).
    pub idle_reset_secs: u64,
    pub rewarm_evaluations: u32,
    /// After baselines are restored from an earlier run, this many evaluations per tool
    /// neither alarm nor teach (caches start cold after a restart).
    pub restart_rewarm_evaluations: u32,
    /// How long after a window ends its late events may still arrive (ms).
    pub late_grace_ms: u64,
    /// An incident closes once all its anomalies and alerts have been quiet this long.
    pub incident_quiet_secs: u64,
    /// Cause ranking: baseline span before onset, the lead before onset that already counts as
    /// "with the symptom", and how long after onset ranking keeps refining.
    pub cause_lookback_secs: u64,
    pub cause_lead_secs: u64,
    pub cause_follow_secs: u64,
    /// A signal that moved later than onset + this is treated as a consequence (score × 0.6).
    pub cause_slack_secs: u64,
    /// Discrete events (config change, breaker opened) count as evidence this far back, full
    /// strength within `cause_event_recent_secs` of onset.
    pub cause_event_lookback_secs: u64,
    pub cause_event_recent_secs: u64,
    /// Below this top score the incident's cause is `unknown`.
    pub min_cause_score: f64,
    /// Closed incidents kept in memory (the database keeps them all).
    pub max_incidents: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            window_secs: 10,
            max_pool_windows: 6,
            min_calls: 20,
            warmup_evaluations: 30,
            baseline_half_life: 180.0,
            winsor_low: 0.02,
            winsor_high: 0.98,
            latency_allowance: 0.15,
            latency_h: 5.0,
            min_latency_increase: 0.25,
            min_latency_increase_ms: 0.25,
            error_shift: 0.03,
            error_h: 11.5,
            error_h_strong: 18.0,
            min_errors: 3,
            min_error_increase: 0.01,
            error_ratio_floor: 0.0005,
            close_after: 3,
            max_open_secs: 3600,
            idle_reset_secs: 3600,
            rewarm_evaluations: 3,
            restart_rewarm_evaluations: 6,
            late_grace_ms: 1000,
            incident_quiet_secs: 120,
            cause_lookback_secs: 600,
            cause_lead_secs: 30,
            cause_follow_secs: 120,
            cause_slack_secs: 30,
            cause_event_lookback_secs: 1800,
            cause_event_recent_secs: 120,
            min_cause_score: 0.25,
            max_incidents: 200,
        }
    }
}

impl DetectConfig {
    /// Window length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.window_secs * 1000
    }

    /// Checks every setting; the error names the field, its value and the accepted range.
    pub fn validate(&self) -> Result<(), DetectError> {
        fn bad(field: &'static str, value: impl std::fmt::Display, why: &'static str) -> Result<(), DetectError> {
            Err(DetectError::Setting { field, value: value.to_string(), why })
        }
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        if !(1..=3600).contains(&self.window_secs) {
            return bad("window_secs", self.window_secs, "use 1..=3600 (10 is the measured default)");
        }
        if !(1..=360).contains(&self.max_pool_windows) {
            return bad("max_pool_windows", self.max_pool_windows, "use 1..=360");
        }
        if !(5..=1_000_000).contains(&self.min_calls) {
            return bad("min_calls", self.min_calls, "use 5..=1000000; fewer calls say nothing");
        }
        if !(5..=100_000).contains(&self.warmup_evaluations) {
            return bad("warmup_evaluations", self.warmup_evaluations, "use 5..=100000");
        }
        if !(self.baseline_half_life.is_finite() && (5.0..=1e6).contains(&self.baseline_half_life)) {
            return bad("baseline_half_life", self.baseline_half_life, "use 5..=1e6 evaluations");
        }
        if !(0.0..0.5).contains(&self.winsor_low) || !(0.5..=1.0).contains(&self.winsor_high) {
            return bad(
                "winsor_low/winsor_high",
                format!("{}/{}", self.winsor_low, self.winsor_high),
                "use [0, 0.5) and [0.5, 1]",
            );
        }
        for (field, v) in [
            ("latency_allowance", self.latency_allowance),
            ("latency_h", self.latency_h),
            ("error_shift", self.error_shift),
            ("error_h", self.error_h),
            ("error_h_strong", self.error_h_strong),
        ] {
            if !finite_pos(v) {
                return bad(field, v, "must be a positive number");
            }
        }
        if !(self.min_latency_increase_ms.is_finite() && self.min_latency_increase_ms >= 0.0) {
            return bad("min_latency_increase_ms", self.min_latency_increase_ms, "must be ≥ 0 (milliseconds)");
        }
        if !(self.min_latency_increase.is_finite() && self.min_latency_increase >= 0.0) {
            return bad("min_latency_increase", self.min_latency_increase, "must be ≥ 0 (0.2 = +20 %)");
        }
        if !(0.0..1.0).contains(&self.min_error_increase) || !(0.0..0.5).contains(&self.error_ratio_floor) {
            return bad("min_error_increase/error_ratio_floor", self.min_error_increase, "use shares in [0, 1)");
        }
        if self.error_ratio_floor <= 0.0 {
            return bad("error_ratio_floor", self.error_ratio_floor, "must be > 0 (e.g. 0.0005)");
        }
        if self.close_after == 0 {
            return bad("close_after", self.close_after, "must be ≥ 1");
        }
        if self.max_open_secs < self.window_secs {
            return bad("max_open_secs", self.max_open_secs, "must be at least one window");
        }
        if !(0.0..=1.0).contains(&self.min_cause_score) {
            return bad("min_cause_score", self.min_cause_score, "use 0..=1");
        }
        if self.cause_lookback_secs < 60 || self.cause_lookback_secs > 86_400 {
            return bad("cause_lookback_secs", self.cause_lookback_secs, "use 60..=86400");
        }
        if self.cause_follow_secs > 3600 || self.cause_lead_secs > 3600 || self.cause_slack_secs > 3600 {
            return bad("cause_follow_secs/cause_lead_secs/cause_slack_secs", self.cause_follow_secs, "use ≤ 3600");
        }
        if self.cause_event_lookback_secs > 7 * 86_400 || self.cause_event_recent_secs > self.cause_event_lookback_secs
        {
            return bad(
                "cause_event_lookback_secs",
                self.cause_event_lookback_secs,
                "use ≤ 7 days, and ≥ cause_event_recent_secs",
            );
        }
        if !(1..=100_000).contains(&self.max_incidents) {
            return bad("max_incidents", self.max_incidents, "use 1..=100000");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        DetectConfig::default().validate().unwrap();
        let c = DetectConfig { window_secs: 0, ..DetectConfig::default() };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("window_secs") && e.contains("1..=3600"), "{e}");
        let c = DetectConfig { latency_h: f64::NAN, ..DetectConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("latency_h"));
        let c: DetectConfig = serde_json::from_str(r#"{"window_secs": 5}"#).unwrap();
        assert_eq!(c.window_secs, 5);
        assert_eq!(c.min_calls, 20);
        assert!(serde_json::from_str::<DetectConfig>(r#"{"windw_secs": 5}"#).is_err());
    }
}
