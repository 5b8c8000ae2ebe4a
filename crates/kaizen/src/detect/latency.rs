//! Latency anomalies of one tool. Each evaluation compares the window's mean log latency —
//! every successful call's ln(µs) clamped to the baseline's 2nd and 98th percentiles — with the
//! same statistic of the baseline distribution: the effect `e = m − μ_W` (ln units). The clamp
//! bounds each call's influence, so the central limit holds at 20 calls even under heavy
//! tails, and the standard error `σ_W/√n` comes from the baseline itself.
//!
//! The effect is measured from the current level, not the slow baseline: the median effect of
//! the last 60 normal windows (the offset) follows a daily shape the histogram lags behind.
//! `z = (e − offset)/(σ_W/√n)` is divided by the overdispersion `φ` (1.4826·MAD of recent
//! scores, at least 1: bursts and drift make windows vary more than independent calls would)
//! and accumulated by a one-sided CUSUM `S = max(0, S + z/φ − k)`. The allowance `k` is a
//! latency rise (`latency_allowance`, +15 %) expressed in standard errors, so a busy tool is
//! not alarmed by a certain but harmless +5 %. It opens at `S ≥ h` when the run's latency is
//! also up by `min_latency_increase` (+25 %) and its median by `min_latency_increase_ms`
//! (0.25 ms: sub-millisecond jitter is nobody's regression): a strong single window opens at once, a few
//! moderately bad ones in a row open too. The onset is the first clearly bad window of the run.
//!
//! The baseline is a decayed histogram (half-life in evaluations), frozen while open. A window
//! is learned only after six more evaluations have passed without an anomaly opening, so the
//! start of an anomaly (before it is recognised) is never taught as normal.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::anomaly::{EvalCtx, Verdict};
use super::config::DetectConfig;
use super::loghist::{BaselineHist, WindowHist, Winsorized, midpoint_ms};
use super::window::Accum;

/// Recent standardized scores kept to measure overdispersion.
const Z_KEEP: usize = 180;
/// Recent window effects kept to place the current level (≈ 10 min at 10 s windows).
const E_KEEP: usize = 60;
/// Evaluations a watched window waits before the baseline learns it.
const QUARANTINE: usize = 6;
/// Scores are collected once the baseline has absorbed this many evaluations.
const Z_START: u32 = 10;
/// Fewer recent scores than this: no overdispersion or offset correction yet.
const Z_MIN: usize = 20;
/// Below this per-call spread (ln units) the baseline is treated as this spread.
const MIN_SD: f64 = 0.05;
/// A still-open anomaly's window counts as bad above this z/φ.
const STILL_BAD_Z: f64 = 2.0;
/// The run's effect is measured over at most its last few evaluations.
const RUN_RECENT: usize = 4;

/// What a latency detector learned, to carry across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyBaseline {
    /// Baseline histogram: (bucket of 1/8 ln µs, decayed weight).
    pub weights: Vec<(u16, f64)>,
    pub learned: u32,
    pub recent_scores: Vec<f64>,
    pub recent_effects: Vec<f64>,
}

#[derive(Debug, Default)]
pub struct LatencyDetector {
    base: BaselineHist,
    learned: u32,
    z_recent: VecDeque<f64>,
    e_recent: VecDeque<f64>,
    /// Watched windows not yet learned (see `learn_later`).
    quarantine: VecDeque<WindowHist>,
    cusum: f64,
    run: Run,
    open: Option<OpenLatency>,
}

/// The evaluations since the CUSUM last left zero.
#[derive(Debug, Default)]
struct Run {
    start_ms: Option<u64>,
    /// Start of the first window of the run that was bad on its own.
    first_bad_ms: Option<u64>,
    /// (calls, effect less offset) of the run's recent evaluations.
    recent: VecDeque<(u64, f64)>,
}

#[derive(Debug)]
struct OpenLatency {
    since_ms: u64,
    good: u32,
}

impl LatencyDetector {
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Whether the baseline is still being learned.
    pub fn warming(&self, cfg: &DetectConfig) -> bool {
        self.learned < cfg.warmup_evaluations
    }

    /// The learned state, to save.
    pub fn baseline(&self) -> LatencyBaseline {
        LatencyBaseline {
            weights: self.base.to_sparse(),
            learned: self.learned,
            recent_scores: self.z_recent.iter().copied().collect(),
            recent_effects: self.e_recent.iter().copied().collect(),
        }
    }

    /// Takes a saved state; `false` (and nothing changed) if it is malformed.
    pub fn restore(&mut self, b: &LatencyBaseline) -> bool {
        let finite = |v: &[f64], max: usize| v.len() <= max && v.iter().all(|x| x.is_finite());
        let Some(base) = BaselineHist::from_sparse(&b.weights) else { return false };
        if !finite(&b.recent_scores, Z_KEEP) || !finite(&b.recent_effects, E_KEEP) {
            return false;
        }
        *self = Self {
            base,
            learned: b.learned,
            z_recent: b.recent_scores.iter().copied().collect(),
            e_recent: b.recent_effects.iter().copied().collect(),
            ..Self::default()
        };
        true
    }

    /// Overdispersion: the robust spread (1.4826 · MAD) of recent scores, at least 1.
    fn phi(&self) -> f64 {
        if self.z_recent.len() < Z_MIN {
            return 1.0;
        }
        let med = median(self.z_recent.iter().copied());
        let mad = median(self.z_recent.iter().map(|z| (z - med).abs()));
        (1.4826 * mad).clamp(1.0, 5.0)
    }

    /// Where the current level sits against the slow baseline (ln units).
    fn offset(&self) -> f64 {
        if self.e_recent.len() < Z_MIN { 0.0 } else { median(self.e_recent.iter().copied()) }
    }

    fn remember(&mut self, e: f64, z: f64) {
        if self.z_recent.len() == Z_KEEP {
            self.z_recent.pop_front();
        }
        self.z_recent.push_back(z);
        if self.e_recent.len() == E_KEEP {
            self.e_recent.pop_front();
        }
        self.e_recent.push_back(e);
    }

    /// The window's effect against the baseline (ln units), that effect less the offset in
    /// standard errors, and the standard error.
    fn score(&self, acc: &Accum, b: &Winsorized) -> (f64, f64, f64) {
        let n = acc.ok_latency.n() as f64;
        let e = acc.ok_latency.winsorized_mean(b.lo, b.hi) - b.mean;
        let se = b.sd.max(MIN_SD) / n.sqrt();
        (e, (e - self.offset()) / se, se)
    }

    fn absorb(&mut self, w: &WindowHist, cfg: &DetectConfig) {
        let decay = 0.5f64.powf(1.0 / cfg.baseline_half_life);
        self.base.absorb(w, decay);
        self.learned = self.learned.saturating_add(1);
    }

    /// Holds a watched window back for `QUARANTINE` evaluations; the one leaving is learned.
    /// A window that turns out to be the start of an anomaly is dropped with the quarantine.
    fn learn_later(&mut self, w: &WindowHist, cfg: &DetectConfig) {
        self.quarantine.push_back(w.clone());
        if self.quarantine.len() > QUARANTINE
            && let Some(old) = self.quarantine.pop_front()
        {
            self.absorb(&old, cfg);
        }
    }

    fn forget(&mut self) {
        *self = Self::default();
    }

    /// Clears the CUSUM (after an idle gap the old evidence is stale).
    pub fn reset_run(&mut self) {
        self.cusum = 0.0;
        self.run = Run::default();
    }

    fn describe(&self, acc: &Accum, effect: f64) -> String {
        let w = &acc.ok_latency;
        format!(
            "p95 {} vs {} baseline, median {} vs {} ({:+.0} % clamped mean of log latency), {} calls",
            fmt_ms(midpoint_ms(w.quantile_bucket(0.95))),
            fmt_ms(midpoint_ms(self.base.quantile_bucket(0.95))),
            fmt_ms(midpoint_ms(w.quantile_bucket(0.5))),
            fmt_ms(midpoint_ms(self.base.quantile_bucket(0.5))),
            (effect.exp() - 1.0) * 100.0,
            w.n()
        )
    }

    /// Closes an open anomaly whose tool has gone quiet (no traffic, nothing to be slow).
    pub fn expire(&mut self) -> Verdict {
        if self.open.take().is_some() {
            self.reset_run();
            return Verdict::Closed { detail: "no calls left to judge; closed".into() };
        }
        Verdict::Quiet
    }

    /// Judges one evaluation (a window or a pool of quiet windows).
    pub fn evaluate(&mut self, acc: &Accum, cfg: &DetectConfig, ctx: EvalCtx) -> Verdict {
        if acc.ok_latency.n() < cfg.min_calls {
            return Verdict::Quiet;
        }
        if self.learned < cfg.warmup_evaluations {
            if ctx.learn {
                if self.learned >= Z_START {
                    let b = self.base.winsorized(cfg.winsor_low, cfg.winsor_high);
                    let (e, z, _) = self.score(acc, &b);
                    self.remember(e, z);
                }
                self.absorb(&acc.ok_latency, cfg);
            }
            return Verdict::Quiet;
        }
        let b = self.base.winsorized(cfg.winsor_low, cfg.winsor_high);
        let (e, z, se) = self.score(acc, &b);
        let phi = self.phi();
        let za = z / phi;
        let offset = self.offset();
        let rise = e - offset;
        let floor = (1.0 + cfg.min_latency_increase).ln();
        let allowance = (1.0 + cfg.latency_allowance).ln() / (phi * se);

        if let Some(open) = &mut self.open {
            let still_bad = za >= STILL_BAD_Z && rise >= floor / 2.0;
            open.good = if still_bad { 0 } else { open.good + 1 };
            if ctx.end_ms.saturating_sub(open.since_ms) >= cfg.max_open_secs * 1000 {
                self.forget();
                return Verdict::Closed {
                    detail: format!("open {} min: taken as the new normal, baseline relearned", cfg.max_open_secs / 60),
                };
            }
            if open.good >= cfg.close_after {
                self.open = None;
                self.reset_run();
                return Verdict::Closed { detail: format!("back within baseline: {}", self.describe(acc, rise)) };
            }
            return Verdict::Quiet;
        }
        if !ctx.alarms_allowed {
            // Re-warming after an idle gap: these windows neither accumulate nor teach.
            self.reset_run();
            return Verdict::Quiet;
        }

        let before = self.cusum;
        self.cusum = (self.cusum + za - allowance).clamp(0.0, 2.0 * cfg.latency_h);
        if self.cusum > 0.0 {
            if before == 0.0 {
                self.run = Run { start_ms: Some(ctx.start_ms), ..Run::default() };
            }
            if self.run.first_bad_ms.is_none() && za - allowance >= 1.0 && rise >= floor / 2.0 {
                self.run.first_bad_ms = Some(ctx.start_ms);
            }
            if self.run.recent.len() == RUN_RECENT {
                self.run.recent.pop_front();
            }
            self.run.recent.push_back((acc.ok_latency.n(), rise));
        } else {
            self.run = Run::default();
        }

        if self.cusum >= cfg.latency_h {
            let (n, s) = self.run.recent.iter().fold((0u64, 0.0), |(n, s), &(k, r)| (n + k, s + k as f64 * r));
            let run_rise = if n > 0 { s / n as f64 } else { 0.0 };
            // The median's rise in milliseconds, by the run's rise over the baseline's median.
            let base_median_ms = midpoint_ms(self.base.quantile_bucket(0.5));
            let rise_ms = base_median_ms * (run_rise.exp() - 1.0);
            if run_rise >= floor && rise_ms >= cfg.min_latency_increase_ms {
                let onset_ms = self.run.first_bad_ms.or(self.run.start_ms).unwrap_or(ctx.start_ms);
                let detail = self.describe(acc, run_rise);
                self.open = Some(OpenLatency { since_ms: onset_ms, good: 0 });
                self.reset_run();
                self.quarantine.clear();
                return Verdict::Opened { onset_ms, detail };
            }
        }
        if ctx.learn {
            self.remember(e, z);
            self.learn_later(&acc.ok_latency, cfg);
        }
        Verdict::Quiet
    }
}

/// `0.84 ms`, `12.3 ms`, `1.25 s`.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::input::{CallClass, CallEvent};

    fn window(index: u64, latencies_us: impl IntoIterator<Item = u64>) -> Accum {
        let mut a = Accum::new(index);
        for latency_us in latencies_us {
            a.add(&CallEvent { op: 0, at_ms: index * 10_000, latency_us, class: CallClass::Ok, response_bytes: 0 });
        }
        a
    }

    fn ctx(index: u64) -> EvalCtx {
        EvalCtx { start_ms: index * 10_000, end_ms: (index + 1) * 10_000, alarms_allowed: true, learn: true }
    }

    /// 40 calls spread evenly over 1–4 ms (a fixed, repeatable window).
    fn normal() -> Vec<u64> {
        (0..40).map(|i| 1000 + i * 75).collect()
    }

    #[test]
    fn warms_up_then_opens_on_a_doubling_and_closes_when_it_ends() {
        let cfg = DetectConfig::default();
        let mut d = LatencyDetector::default();
        let mut i = 0;
        for _ in 0..100 {
            assert_eq!(d.evaluate(&window(i, normal()), &cfg, ctx(i)), Verdict::Quiet);
            i += 1;
        }
        assert!(!d.warming(&cfg));
        let step_at = i;
        let opened = loop {
            let v = d.evaluate(&window(i, normal().into_iter().map(|l| l * 2)), &cfg, ctx(i));
            i += 1;
            if let Verdict::Opened { onset_ms, detail } = v {
                break (onset_ms, detail);
            }
            assert!(i - step_at < 5, "a doubling of every call is found within a few windows");
        };
        assert_eq!(opened.0, step_at * 10_000, "onset is the first slow window");
        assert!(opened.1.contains("median 4.62 ms vs 2.47 ms"), "{}", opened.1);
        let mut closed = false;
        for _ in 0..cfg.close_after {
            closed = matches!(d.evaluate(&window(i, normal()), &cfg, ctx(i)), Verdict::Closed { .. });
            i += 1;
        }
        assert!(closed, "closes after {} good windows", cfg.close_after);
    }

    #[test]
    fn few_calls_and_small_rises_do_not_open() {
        let cfg = DetectConfig::default();
        let mut d = LatencyDetector::default();
        for i in 0..100 {
            d.evaluate(&window(i, normal()), &cfg, ctx(i));
        }
        // 19 calls a hundred times slower: under the minimum volume.
        for i in 100..110 {
            assert_eq!(d.evaluate(&window(i, (0..19).map(|_| 300_000)), &cfg, ctx(i)), Verdict::Quiet);
        }
        // +10 % on 4000 calls: statistically certain, below the allowance.
        let busy: Vec<u64> = (0..100).flat_map(|_| normal()).map(|l| l * 11 / 10).collect();
        for i in 110..140 {
            assert_eq!(d.evaluate(&window(i, busy.clone()), &cfg, ctx(i)), Verdict::Quiet);
        }
    }
}
