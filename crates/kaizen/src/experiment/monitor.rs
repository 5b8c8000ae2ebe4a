//! One sequential test: a variant against control on one metric, as a guard (one-sided: is it
//! worse than control by more than the tolerance?) or as the primary metric (two-sided: is there
//! a difference?). It looks when another 1/looks of its planned information has arrived and
//! uses Lan–DeMets boundaries, so evaluating as often as the embedder likes cannot inflate the
//! false-positive rate. Its planned information comes from the power analysis; the samples it
//! predicts are reported, and the test concludes once it has them.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::accum::VariantStats;
use super::compare::{estimate, natural, samples_needed, slo_index, to_test_scale};
use super::plan::{ExperimentPlan, Metric};
use crate::stats::dist::normal_quantile;
use crate::stats::power::Sides;
use crate::stats::sequential::{AlphaSpending, Look, MIN_STEP, inflation_factor};

/// Where a test stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    /// Not enough samples to look yet.
    Waiting,
    /// Looking; no conclusion yet.
    Running,
    /// Guard: the variant is worse than tolerated, with significance (or grossly worse).
    Broken,
    /// Guard: the planned information arrived and the variant was not found worse.
    Held,
    /// Primary: a difference, with significance.
    Significant,
    /// Primary: the planned information arrived without a significant difference.
    NotSignificant,
}

impl TestStatus {
    pub fn concluded(self) -> bool {
        matches!(self, TestStatus::Broken | TestStatus::Held | TestStatus::Significant | TestStatus::NotSignificant)
    }
}

/// What a test shows (the `tests` entries of the status JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TestReport {
    pub metric: String,
    pub variant: String,
    /// "primary" or "guard".
    pub role: String,
    pub status: Option<TestStatus>,
    pub control_samples: u64,
    pub variant_samples: u64,
    /// Variant vs control in natural units: relative for latency/bytes (0.25 = 25 % more),
    /// absolute points for ratios, the burn rate for slo_burn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<f64>,
    /// Repeated confidence interval of the effect (valid at any look), natural units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci: Option<(f64, f64)>,
    /// Naive single-look p-value (compare with `alpha_now`, not with alpha).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mann_whitney_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub z: Option<f64>,
    /// The boundary at the last look, and the nominal p-value threshold it amounts to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha_now: Option<f64>,
    /// Share of the planned information collected (1 = the test concludes).
    pub information: f64,
    /// Variant samples the test needs (power analysis × sequential inflation, at the current
    /// allocation between variant and control).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_samples: Option<u64>,
    /// Samples per arm of a fixed, equal-allocation design (what `power.t.test` would say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_per_arm: Option<u64>,
    pub looks: usize,
    /// Set when the guard broke by the gross rule rather than by the test.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gross: bool,
}

/// What is persisted of a test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedTest {
    pub variant: usize,
    pub guard: Option<usize>,
    pub looks: Vec<Look>,
    pub status: TestStatus,
    pub report: TestReport,
}

/// Cache key: alpha and power bits, looks, two-sided.
type DesignKey = (u64, u64, usize, bool);

/// The sequential design's inflation, cached per (alpha, power, looks, sides).
fn inflation(alpha: f64, power: f64, looks: usize, sides: Sides) -> f64 {
    static CACHE: OnceLock<Mutex<HashMap<DesignKey, f64>>> = OnceLock::new();
    let key = (alpha.to_bits(), power.to_bits(), looks, sides == Sides::Two);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(v) = cache.lock().ok().and_then(|c| c.get(&key).copied()) {
        return v;
    }
    let v = inflation_factor(alpha, power, looks, sides).unwrap_or(1.0);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, v);
    }
    v
}

/// One running test.
#[derive(Debug, Clone)]
pub struct Monitor {
    pub variant: usize,
    /// Index of the guard; None for the primary metric.
    pub guard: Option<usize>,
    spending: AlphaSpending,
    pub status: TestStatus,
    pub report: TestReport,
}

impl Monitor {
    pub fn new(plan: &ExperimentPlan, variant: usize, guard: Option<usize>) -> Self {
        let sides = if guard.is_some() { Sides::One } else { Sides::Two };
        // Two-sided primaries of an A/B/n test share alpha (Bonferroni over the treatments).
        let alpha = if guard.is_some() { plan.alpha } else { plan.alpha / (plan.variants.len() - 1).max(1) as f64 };
        let spending = AlphaSpending::new(alpha.clamp(1e-9, 0.5), sides)
            .unwrap_or_else(|_| AlphaSpending::new(0.05, sides).expect("0.05 is a valid alpha"));
        let metric = metric_of(plan, guard);
        let report = TestReport {
            metric: metric.map(|m| m.name(plan).to_string()).unwrap_or_default(),
            variant: plan.variants.get(variant).map(|v| v.name.clone()).unwrap_or_default(),
            role: if guard.is_some() { "guard" } else { "primary" }.into(),
            status: Some(TestStatus::Waiting),
            ..Default::default()
        };
        Self { variant, guard, spending, status: TestStatus::Waiting, report }
    }

    pub fn save(&self) -> SavedTest {
        SavedTest {
            variant: self.variant,
            guard: self.guard,
            looks: self.spending.looks().to_vec(),
            status: self.status,
            report: self.report.clone(),
        }
    }

    /// Resumes from saved looks (None when they do not fit this plan).
    pub fn restore(plan: &ExperimentPlan, saved: &SavedTest) -> Option<Self> {
        let mut m = Self::new(plan, saved.variant, saved.guard);
        let sides = if saved.guard.is_some() { Sides::One } else { Sides::Two };
        m.spending = AlphaSpending::from_looks(m.spending.alpha(), sides, &saved.looks).ok()?;
        m.status = saved.status;
        m.report = saved.report.clone();
        Some(m)
    }

    fn sides(&self) -> Sides {
        if self.guard.is_some() { Sides::One } else { Sides::Two }
    }

    /// Marks a guard broken by the gross rule.
    pub fn break_gross(&mut self) {
        self.status = TestStatus::Broken;
        self.report.status = Some(TestStatus::Broken);
        self.report.gross = true;
    }

    /// Updates the estimate and takes a look if one is due; returns true when the status
    /// changed to a conclusion at this call.
    pub fn update(&mut self, plan: &ExperimentPlan, control: &VariantStats, treatment: &VariantStats) -> bool {
        let Some(metric) = metric_of(plan, self.guard).cloned() else { return false };
        let slo = self.guard.map_or(0, |g| slo_index(plan, g));
        let est = estimate(&metric, plan, control, treatment, slo);
        let guard = self.guard.and_then(|g| plan.guards.get(g)).map(|g| (g.max_worse, g.detect));
        let mde = plan.primary.as_ref().map_or(0.0, |p| p.mde);
        let per_arm = samples_needed(&metric, plan, est.as_ref(), guard, mde);
        let infl = inflation(self.spending.alpha(), plan.power, plan.looks, self.sides());
        let one_sample = matches!(metric, Metric::SloBurn { .. });
        let r = &mut self.report;
        r.control_samples = est.as_ref().map_or(control.samples, |e| e.n_control);
        r.variant_samples = est.as_ref().map_or(treatment.samples, |e| e.n_treatment);
        r.samples_per_arm = per_arm.map(|n| n.ceil() as u64);
        let Some(est) = est else {
            r.looks = self.spending.looks().len();
            return false;
        };
        // Information: harmonic sample size over its planned value (one-sample: n over n).
        let (t_raw, predicted) = match per_arm {
            None => (0.0, None),
            Some(n) if one_sample => {
                let planned = n * infl;
                (est.n_treatment as f64 / planned, Some(planned))
            }
            Some(n) => {
                let h_max = n * infl / 2.0;
                let (nt, nc) = (est.n_treatment as f64, est.n_control as f64);
                let h = 1.0 / (1.0 / nt + 1.0 / nc);
                let ratio = nc / nt;
                (h / h_max, Some(h_max * (1.0 + 1.0 / ratio)))
            }
        };
        // No test looks before `min_samples`, so nothing concludes earlier than that.
        r.predicted_samples = predicted.map(|p| (p.ceil() as u64).max(plan.min_samples));
        r.information = t_raw.min(1.0);
        r.p_value = est.p_value;
        r.mann_whitney_p = est.mann_whitney_p;
        let (margin, se) = match (&metric, self.guard.and_then(|g| plan.guards.get(g))) {
            (Metric::SloBurn { .. }, Some(g)) => {
                let p0 = to_test_scale(&metric, plan, g.max_worse).clamp(1e-9, 1.0 - 1e-9);
                (p0, (p0 * (1.0 - p0) / est.n_treatment.max(1) as f64).sqrt())
            }
            (_, Some(g)) => (to_test_scale(&metric, plan, g.max_worse), est.se),
            (_, None) => (0.0, est.se),
        };
        let z = if self.guard.is_some() { (est.worse_sign * est.diff - margin) / se } else { est.diff / se };
        r.z = Some(z);
        r.effect = Some(natural(&metric, plan, est.diff));
        let mut changed = false;
        let enough = est.n_treatment >= plan.min_samples && (one_sample || est.n_control >= plan.min_samples);
        if !self.status.concluded() && enough {
            self.status = TestStatus::Running;
            let mut t = t_raw.min(1.0);
            if t >= 0.99 {
                t = 1.0;
            }
            let last = self.spending.last_t();
            let step = (1.0 / plan.looks as f64).max(MIN_STEP);
            let due = t >= MIN_STEP && (t - last >= step - 1e-12 || (t == 1.0 && t - last >= MIN_STEP));
            if due && let Ok(bound) = self.spending.look(t) {
                let crossed = if self.guard.is_some() { z >= bound } else { z.abs() >= bound };
                self.status = match (crossed, self.guard.is_some(), t >= 1.0) {
                    (true, true, _) => TestStatus::Broken,
                    (true, false, _) => TestStatus::Significant,
                    (false, true, true) => TestStatus::Held,
                    (false, false, true) => TestStatus::NotSignificant,
                    _ => TestStatus::Running,
                };
                changed = self.status.concluded();
            }
        }
        let last_bound = self.spending.looks().last().map(|l| l.bound);
        r.bound = last_bound;
        r.alpha_now = last_bound.map(|b| self.spending.nominal_alpha(b));
        r.looks = self.spending.looks().len();
        r.status = Some(self.status);
        // Repeated CI: estimate ± boundary × SE (two-sided boundary for the primary; for a guard
        // the one-sided boundary gives a lower confidence limit on "worse by").
        let b = last_bound.unwrap_or_else(|| normal_quantile(0.975)).min(10.0);
        let (lo, hi) = (est.diff - b * est.se, est.diff + b * est.se);
        r.ci = Some((natural(&metric, plan, lo), natural(&metric, plan, hi)));
        if one_sample {
            r.ci = Some((natural(&metric, plan, lo.max(0.0)), natural(&metric, plan, hi)));
        }
        changed
    }
}

fn metric_of(plan: &ExperimentPlan, guard: Option<usize>) -> Option<&Metric> {
    match guard {
        Some(g) => plan.guards.get(g).map(|g| &g.metric),
        None => plan.primary.as_ref().map(|p| &p.metric),
    }
}
