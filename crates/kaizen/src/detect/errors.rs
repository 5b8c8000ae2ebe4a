//! Error-ratio anomalies of one tool: a Bernoulli CUSUM. Against the baseline ratio `p0`
//! (decayed counts, never below `error_ratio_floor`) and the alternative `p1 = p0 +
//! error_shift`, each evaluation adds its log-likelihood ratio
//! `x·ln(p1/p0) + (n−x)·ln((1−p1)/(1−p0))` to `S = max(0, S + LLR)`. By Wald's bound a
//! threshold `h` keeps false alarms below one per `e^h` evaluations for independent calls;
//! because real errors come in clusters (a retried bad call), a run must also hold at least
//! `min_errors` errors spread over two windows, unless one window alone is overwhelming
//! (`LLR ≥ error_h_strong`), and the ratio must be up by `min_error_increase` and at least
//! double the baseline. So one error in 20 calls at a 0.1 % baseline (p = 2 %) opens nothing.
//!
//! The baseline learns a window six evaluations later, unless an anomaly opened meanwhile (the
//! anomaly's start is never learned), with its error count clamped to `n·p0 + 3σ + 1`, so a
//! burst that does not open cannot teach itself as normal either; it is frozen while open.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::anomaly::{EvalCtx, Verdict};
use super::config::DetectConfig;
use super::input::CallClass;
use super::window::Accum;

const RUN_RECENT: usize = 6;
/// Evaluations a watched window waits before the baseline learns it.
const QUARANTINE: usize = 6;

/// What an error detector learned, to carry across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBaseline {
    /// Decayed counts of failed and all calls.
    pub errors: f64,
    pub calls: f64,
    pub learned: u32,
}

#[derive(Debug, Default)]
pub struct ErrorDetector {
    errors: f64,
    calls: f64,
    learned: u32,
    cusum: f64,
    run_start_ms: Option<u64>,
    /// Per recent run evaluation: calls by class.
    run_recent: VecDeque<[u64; CallClass::COUNT]>,
    /// Watched windows' (errors, calls) not yet learned.
    quarantine: VecDeque<(u64, u64)>,
    open: Option<OpenErrors>,
}

#[derive(Debug)]
struct OpenErrors {
    since_ms: u64,
    good: u32,
}

impl ErrorDetector {
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub fn warming(&self, cfg: &DetectConfig) -> bool {
        self.learned < cfg.warmup_evaluations
    }

    /// The learned state, to save.
    pub fn baseline(&self) -> ErrorBaseline {
        ErrorBaseline { errors: self.errors, calls: self.calls, learned: self.learned }
    }

    /// Takes a saved state; `false` (and nothing changed) if it is malformed.
    pub fn restore(&mut self, b: &ErrorBaseline) -> bool {
        let ok = b.errors.is_finite() && b.calls.is_finite() && b.errors >= 0.0 && b.calls >= b.errors;
        if ok {
            *self = Self { errors: b.errors, calls: b.calls, learned: b.learned, ..Self::default() };
        }
        ok
    }

    fn p0(&self, cfg: &DetectConfig) -> f64 {
        if self.calls <= 0.0 { cfg.error_ratio_floor } else { (self.errors / self.calls).max(cfg.error_ratio_floor) }
    }

    fn absorb(&mut self, x: u64, n: u64, cfg: &DetectConfig) {
        let decay = 0.5f64.powf(1.0 / cfg.baseline_half_life);
        let p0 = self.p0(cfg);
        let nf = n as f64;
        let cap = (nf * p0 + 3.0 * (nf * p0 * (1.0 - p0)).sqrt() + 1.0).ceil();
        let x = if self.learned < cfg.warmup_evaluations { x as f64 } else { (x as f64).min(cap) };
        self.errors = self.errors * decay + x;
        self.calls = self.calls * decay + nf;
        self.learned = self.learned.saturating_add(1);
    }

    /// Holds a watched window's counts back for `QUARANTINE` evaluations; the one leaving is
    /// learned. The counts of an anomaly's start are dropped with the quarantine.
    fn learn_later(&mut self, x: u64, n: u64, cfg: &DetectConfig) {
        self.quarantine.push_back((x, n));
        if self.quarantine.len() > QUARANTINE
            && let Some((x, n)) = self.quarantine.pop_front()
        {
            self.absorb(x, n, cfg);
        }
    }

    pub fn reset_run(&mut self) {
        self.cusum = 0.0;
        self.run_start_ms = None;
        self.run_recent.clear();
    }

    pub fn expire(&mut self) -> Verdict {
        if self.open.take().is_some() {
            self.reset_run();
            return Verdict::Closed { detail: "no calls left to judge; closed".into() };
        }
        Verdict::Quiet
    }

    fn describe(by_class: &[u64; CallClass::COUNT], p0: f64) -> String {
        let n: u64 = by_class.iter().sum();
        let x = n - by_class[CallClass::Ok as usize];
        let mix: Vec<String> = CallClass::ALL[1..]
            .iter()
            .filter(|c| by_class[**c as usize] > 0)
            .map(|c| format!("{} {}", c.as_str(), by_class[*c as usize]))
            .collect();
        format!(
            "error ratio {} vs {} baseline: {x} of {n} calls failed ({})",
            pct(x as f64 / n.max(1) as f64),
            pct(p0),
            mix.join(", ")
        )
    }

    pub fn evaluate(&mut self, acc: &Accum, cfg: &DetectConfig, ctx: EvalCtx) -> Verdict {
        let (n, x) = (acc.calls(), acc.errors());
        if n < cfg.min_calls {
            return Verdict::Quiet;
        }
        if self.learned < cfg.warmup_evaluations {
            if ctx.learn {
                self.absorb(x, n, cfg);
            }
            return Verdict::Quiet;
        }
        let p0 = self.p0(cfg);
        let p1 = (p0 + cfg.error_shift).min(0.999);
        let ratio = x as f64 / n as f64;
        let llr = x as f64 * (p1 / p0).ln() + (n - x) as f64 * ((1.0 - p1) / (1.0 - p0)).ln();
        let min_ratio = (p0 + cfg.min_error_increase).max(2.0 * p0);

        if let Some(open) = &mut self.open {
            let still_bad = ratio >= (p0 + cfg.min_error_increase / 2.0).max(1.5 * p0) && llr > 0.0;
            open.good = if still_bad { 0 } else { open.good + 1 };
            if ctx.end_ms.saturating_sub(open.since_ms) >= cfg.max_open_secs * 1000 {
                self.open = None;
                *self = Self::default();
                return Verdict::Closed {
                    detail: format!("open {} min: taken as the new normal, baseline relearned", cfg.max_open_secs / 60),
                };
            }
            if open.good >= cfg.close_after {
                self.open = None;
                self.reset_run();
                return Verdict::Closed {
                    detail: format!("back within baseline: {}", Self::describe(&acc.by_class, p0)),
                };
            }
            return Verdict::Quiet;
        }

        if !ctx.alarms_allowed {
            // Re-warming after an idle gap: these windows neither accumulate nor teach.
            self.reset_run();
            return Verdict::Quiet;
        }
        let before = self.cusum;
        self.cusum = (self.cusum + llr).clamp(0.0, 3.0 * cfg.error_h);
        if self.cusum > 0.0 {
            if before == 0.0 {
                self.run_start_ms = Some(ctx.start_ms);
                self.run_recent.clear();
            }
            if self.run_recent.len() == RUN_RECENT {
                self.run_recent.pop_front();
            }
            self.run_recent.push_back(acc.by_class);
        } else {
            self.run_start_ms = None;
            self.run_recent.clear();
        }

        let strong = llr >= cfg.error_h_strong && x >= cfg.min_errors && ratio >= min_ratio;
        let mut run = [0u64; CallClass::COUNT];
        for w in &self.run_recent {
            for (a, b) in run.iter_mut().zip(w) {
                *a += b;
            }
        }
        let run_n: u64 = run.iter().sum();
        let run_x = run_n - run[CallClass::Ok as usize];
        let windows_with_errors =
            self.run_recent.iter().filter(|w| w.iter().sum::<u64>() > w[CallClass::Ok as usize]).count();
        let sustained = self.cusum >= cfg.error_h
            && windows_with_errors >= 2
            && run_x >= cfg.min_errors
            && run_x as f64 / run_n.max(1) as f64 >= min_ratio;
        if strong || sustained {
            let onset_ms = if sustained { self.run_start_ms.unwrap_or(ctx.start_ms) } else { ctx.start_ms };
            let detail = Self::describe(if sustained { &run } else { &acc.by_class }, p0);
            self.open = Some(OpenErrors { since_ms: onset_ms, good: 0 });
            self.reset_run();
            self.quarantine.clear();
            return Verdict::Opened { onset_ms, detail };
        }
        if ctx.learn {
            self.learn_later(x, n, cfg);
        }
        Verdict::Quiet
    }
}

/// `0.1 %`, `5.2 %`, `0.05 %`.
pub fn pct(share: f64) -> String {
    let p = share * 100.0;
    if p >= 10.0 {
        format!("{p:.0} %")
    } else if p >= 1.0 {
        format!("{p:.1} %")
    } else {
        format!("{p:.2} %")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::input::CallEvent;

    fn window(index: u64, calls: u64, errors: u64) -> Accum {
        let mut a = Accum::new(index);
        for i in 0..calls {
            let class = if i < errors { CallClass::UserError } else { CallClass::Ok };
            a.add(&CallEvent { op: 0, at_ms: index * 10_000, latency_us: 1000, class, response_bytes: 0 });
        }
        a
    }

    fn ctx(index: u64) -> EvalCtx {
        EvalCtx { start_ms: index * 10_000, end_ms: (index + 1) * 10_000, alarms_allowed: true, learn: true }
    }

    /// A detector that learned 0.1 % errors over 100 windows of 1000 calls.
    fn learned() -> (ErrorDetector, DetectConfig, u64) {
        let cfg = DetectConfig::default();
        let mut d = ErrorDetector::default();
        for i in 0..100 {
            assert_eq!(d.evaluate(&window(i, 1000, 1), &cfg, ctx(i)), Verdict::Quiet);
        }
        (d, cfg, 100)
    }

    #[test]
    fn one_error_in_twenty_calls_is_no_anomaly() {
        let (mut d, cfg, mut i) = learned();
        for _ in 0..50 {
            assert_eq!(d.evaluate(&window(i, 20, 1), &cfg, ctx(i)), Verdict::Quiet, "window {i}");
            i += 1;
            for _ in 0..5 {
                d.evaluate(&window(i, 20, 0), &cfg, ctx(i));
                i += 1;
            }
        }
        // Three errors in one window of 20 (a retried bad call): still no anomaly.
        assert_eq!(d.evaluate(&window(i, 20, 3), &cfg, ctx(i)), Verdict::Quiet);
    }

    #[test]
    fn five_percent_opens_at_once_on_volume_and_within_windows_on_little() {
        let (mut d, cfg, i) = learned();
        match d.evaluate(&window(i, 500, 25), &cfg, ctx(i)) {
            Verdict::Opened { onset_ms, detail } => {
                assert_eq!(onset_ms, i * 10_000);
                assert!(detail.starts_with("error ratio 5.0 % vs 0.10 % baseline: 25 of 500"), "{detail}");
            }
            v => panic!("{v:?}"),
        }
        let (mut d, cfg, mut i) = learned();
        let step = i;
        let opened = loop {
            let v = d.evaluate(&window(i, 40, 2), &cfg, ctx(i));
            i += 1;
            if let Verdict::Opened { onset_ms, .. } = v {
                break onset_ms;
            }
            assert!(i - step <= 3, "2 errors in 40 calls, window after window, opens within 3");
        };
        assert_eq!(opened, step * 10_000);
    }
}
