//! Comparing a variant with control on one metric: the estimate on the test's scale (log for
//! latency and bytes, absolute points for ratios), its standard error, naive fixed-sample
//! p-values and intervals for the report, and the power analysis (samples needed).

use serde::Serialize;

use super::accum::VariantStats;
use super::plan::{ExperimentPlan, Metric};
use crate::stats::moments::Moments;
use crate::stats::power::{Sides, one_proportion_n, prop_test_n, z_test_n};
use crate::stats::proportions::two_proportion_z;
use crate::stats::welch::welch_t_test;

/// Standard deviation of log-latency (and log-bytes) assumed before there are data.
pub const ASSUMED_LOG_SD: f64 = 1.0;
/// Proportion assumed before there are data (error ratios; hit ratios use 0.5).
pub const ASSUMED_ERROR_RATIO: f64 = 0.01;

/// One comparison of treatment against control.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// treatment − control on the test scale (slo_burn: the treatment's bad-call ratio).
    pub diff: f64,
    pub se: f64,
    /// +1 when a larger value is worse (latency, errors), −1 when better (hit ratio).
    pub worse_sign: f64,
    pub n_treatment: u64,
    pub n_control: u64,
    /// Naive (single-look) two-sided p-value: Welch, or the pooled two-proportion z-test.
    pub p_value: Option<f64>,
    /// Mann–Whitney p-value on the latency histograms (latency only).
    pub mann_whitney_p: Option<f64>,
    /// Spread for the power analysis: pooled SD (means) or control's ratio (proportions).
    pub spread: f64,
}

/// Whether the metric compares means (Welch) rather than proportions.
fn continuous(m: &Metric) -> bool {
    matches!(m, Metric::Latency | Metric::ResponseBytes | Metric::Custom(_))
}

fn moments<'a>(m: &Metric, plan: &ExperimentPlan, s: &'a VariantStats) -> Option<&'a Moments> {
    match m {
        Metric::Latency => Some(&s.log_latency),
        Metric::ResponseBytes => Some(&s.log_bytes),
        Metric::Custom(i) => plan.custom.get(*i).and_then(|(name, _)| s.custom.get(name)),
        _ => None,
    }
}

/// (events, trials) for a proportion metric.
fn counts(m: &Metric, s: &VariantStats, slo_index: usize) -> (u64, u64) {
    match m {
        Metric::ErrorRatio => (s.errors, s.samples),
        Metric::ServerErrorRatio => (s.server_errors, s.samples),
        Metric::CacheHitRatio => (s.cache_hits, s.cache_lookups),
        Metric::SloBurn { .. } => (s.slo_bad.get(slo_index).copied().unwrap_or(0), s.samples),
        _ => (0, 0),
    }
}

/// +1 when a larger value of the metric is worse, −1 when it is better.
pub fn worse_sign(m: &Metric, plan: &ExperimentPlan) -> f64 {
    match m {
        Metric::CacheHitRatio => -1.0,
        Metric::Custom(i) => match plan.custom.get(*i).map(|c| c.1.better) {
            Some(super::config::Better::Higher) => -1.0,
            _ => 1.0,
        },
        _ => 1.0,
    }
}

/// The index of an SLO-burn guard among the SLO-burn guards (its `slo_bad` slot).
pub fn slo_index(plan: &ExperimentPlan, guard: usize) -> usize {
    plan.guards.iter().take(guard).filter(|g| matches!(g.metric, Metric::SloBurn { .. })).count()
}

/// Laplace-smoothed proportion, so a variance is never zero.
fn smoothed(x: u64, n: u64) -> f64 {
    (x as f64 + 1.0) / (n as f64 + 2.0)
}

/// Compares treatment `t` with control `c`; None until both have a value to compare.
pub fn estimate(m: &Metric, plan: &ExperimentPlan, c: &VariantStats, t: &VariantStats, slo: usize) -> Option<Estimate> {
    let sign = worse_sign(m, plan);
    if let Metric::SloBurn { .. } = m {
        // One-sample: the treatment's bad ratio; SE under the null is set by the caller's margin.
        let (x, n) = counts(m, t, slo);
        if n == 0 {
            return None;
        }
        let p = smoothed(x, n);
        return Some(Estimate {
            diff: x as f64 / n as f64,
            se: (p * (1.0 - p) / n as f64).sqrt(),
            worse_sign: 1.0,
            n_treatment: n,
            n_control: 0,
            p_value: None,
            mann_whitney_p: None,
            spread: p,
        });
    }
    if continuous(m) {
        let (mc, mt) = (moments(m, plan, c)?, moments(m, plan, t)?);
        if mc.n < 2 || mt.n < 2 {
            return None;
        }
        let (vc, vt) = (mc.variance()?, mt.variance()?);
        let se = (vc / mc.n as f64 + vt / mt.n as f64).sqrt();
        let pooled = ((mc.m2 + mt.m2) / (mc.n + mt.n - 2) as f64).sqrt();
        let welch = welch_t_test(mt, mc, 0.95).ok();
        let mann_whitney_p =
            if *m == Metric::Latency { t.latency.mann_whitney(&c.latency).map(|r| r.p_value) } else { None };
        return Some(Estimate {
            diff: mt.mean - mc.mean,
            se: if se > 0.0 { se } else { f64::MIN_POSITIVE },
            worse_sign: sign,
            n_treatment: mt.n,
            n_control: mc.n,
            p_value: welch.map(|w| w.p_value),
            mann_whitney_p,
            spread: if pooled > 0.0 { pooled } else { ASSUMED_LOG_SD },
        });
    }
    let ((xc, nc), (xt, nt)) = (counts(m, c, slo), counts(m, t, slo));
    if nc == 0 || nt == 0 {
        return None;
    }
    let (pc, pt) = (smoothed(xc, nc), smoothed(xt, nt));
    let se = (pc * (1.0 - pc) / nc as f64 + pt * (1.0 - pt) / nt as f64).sqrt();
    Some(Estimate {
        diff: xt as f64 / nt as f64 - xc as f64 / nc as f64,
        se,
        worse_sign: sign,
        n_treatment: nt,
        n_control: nc,
        p_value: two_proportion_z(xt, nt, xc, nc, 0.95).ok().map(|r| r.p_value),
        mann_whitney_p: None,
        spread: pc,
    })
}

/// The effect in the metric's natural units: relative change for log-scale metrics
/// (0.12 = 12 % more), absolute difference for ratios and plain custom metrics, the burn rate
/// for slo_burn.
pub fn natural(m: &Metric, plan: &ExperimentPlan, x: f64) -> f64 {
    match m {
        Metric::Latency | Metric::ResponseBytes => x.exp() - 1.0,
        Metric::Custom(i) if plan.custom.get(*i).is_some_and(|c| c.1.log) => x.exp() - 1.0,
        Metric::SloBurn { objective, .. } => x / (1.0 - objective),
        _ => x,
    }
}

/// A configured relative or absolute amount on the test scale.
pub fn to_test_scale(m: &Metric, plan: &ExperimentPlan, x: f64) -> f64 {
    match m {
        Metric::Latency | Metric::ResponseBytes => x.ln_1p(),
        Metric::Custom(i) if plan.custom.get(*i).is_some_and(|c| c.1.log) => x.ln_1p(),
        Metric::SloBurn { objective, .. } => x * (1.0 - objective),
        _ => x,
    }
}

fn clamp_p(p: f64) -> f64 {
    p.clamp(1e-4, 1.0 - 1e-4)
}

/// Samples per arm (equal allocation) a test needs, at the experiment's alpha and power.
/// Guards are one-sided from `max_worse` (the null) to `detect`; the primary is two-sided
/// against `mde`. For slo_burn: the treatment's own samples (one-sample test).
pub fn samples_needed(
    m: &Metric,
    plan: &ExperimentPlan,
    est: Option<&Estimate>,
    guard: Option<(f64, f64)>,
    mde: f64,
) -> Option<f64> {
    let (alpha, power) = (plan.alpha, plan.power);
    if let Metric::SloBurn { .. } = m {
        let (tolerated, detect) = guard?;
        let p0 = clamp_p(to_test_scale(m, plan, tolerated));
        let p1 = clamp_p(to_test_scale(m, plan, detect));
        return one_proportion_n(p0, p1, alpha, power).ok();
    }
    let sides = if guard.is_some() { Sides::One } else { Sides::Two };
    if continuous(m) {
        let sd = match (est, m) {
            (Some(e), _) => e.spread,
            (None, Metric::Custom(i)) => plan.custom.get(*i).and_then(|c| c.1.assumed_sd).unwrap_or(ASSUMED_LOG_SD),
            (None, _) => ASSUMED_LOG_SD,
        };
        let delta = match guard {
            Some((tolerated, detect)) => to_test_scale(m, plan, detect) - to_test_scale(m, plan, tolerated),
            None => to_test_scale(m, plan, mde).abs(),
        };
        // z_test_n gives the treatment arm at ratio 1: that is the per-arm n.
        return z_test_n(delta, sd, alpha, power, sides, 1.0).ok();
    }
    let base = est.map_or(if *m == Metric::CacheHitRatio { 0.5 } else { ASSUMED_ERROR_RATIO }, |e| e.spread);
    let sign = worse_sign(m, plan);
    let (p1, p2) = match guard {
        Some((tolerated, detect)) => (clamp_p(base + sign * tolerated), clamp_p(base + sign * detect)),
        None => {
            let up = base + mde;
            (clamp_p(base), clamp_p(if up < 1.0 { up } else { base - mde }))
        }
    };
    if p1 == p2 {
        return None;
    }
    prop_test_n(p1, p2, alpha, power, sides).ok()
}
