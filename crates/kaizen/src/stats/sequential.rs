//! The guard against peeking: Lan–DeMets alpha spending with the O'Brien–Fleming-type spending
//! function α(t) = 2·(1 − Φ(z_{1−α/2} / √t)) for a one-sided level α (a two-sided test of level α
//! spends α/2 this way in each tail, as R's ldbounds and gsDesign do), over any sequence of looks
//! at information fractions
//! t₁ < t₂ < … ≤ 1 (they need not be planned in advance). Each look's boundary is chosen so that
//! the probability under H0 of crossing at that look and not before is α(t_k) − α(t_{k−1}); the
//! joint distribution of the z statistics (a Brownian motion in t) is integrated numerically on a
//! grid (Armitage, McPherson & Rowe 1969; Jennison & Turnbull 2000, ch. 19).
//!
//! Checking a naive p < α at every look inflates the false-positive rate (ten looks at 5 % give
//! about 19 %); these boundaries keep it at α. O'Brien–Fleming spending is conservative early
//! (a boundary of ~4.9 at t = 0.2 for α = 5 %) and close to the fixed-sample value at the end, so
//! the sample size barely grows (`inflation_factor`).

use serde::{Deserialize, Serialize};

use super::dist::{normal_cdf, normal_quantile, normal_sf};
use super::power::Sides;
use super::{StatsError, check_probability};

/// Most looks one test may take (each costs a grid convolution; the engine looks ≤ ~20 times).
pub const MAX_LOOKS: usize = 200;
/// Smallest information fraction of a look, and smallest step between looks: the grid's
/// resolution (0.02 on the Brownian scale) resolves increments down to √0.01 = 0.1.
pub const MIN_STEP: f64 = 0.01;
/// A boundary this large cannot be crossed; used when a look has (almost) no alpha to spend.
pub const MAX_BOUND: f64 = 40.0;
/// Grid spacing on the Brownian scale S = Z·√t.
const H: f64 = 0.02;
/// Half-width of the grid in standard deviations of S (mass beyond is < 1e-18).
const SPAN_SD: f64 = 9.0;

/// One-sided alpha spent by information fraction `t` under O'Brien–Fleming-type spending.
pub fn obf_spent(t: f64, alpha: f64) -> f64 {
    if t <= 0.0 {
        0.0
    } else if t >= 1.0 {
        alpha
    } else {
        2.0 * normal_sf(normal_quantile(1.0 - alpha / 2.0) / t.sqrt())
    }
}

/// One look: its information fraction and the z boundary used there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Look {
    pub t: f64,
    pub bound: f64,
}

/// Density of S = Z√t on the continuation region after a look, as Simpson-weighted points.
#[derive(Debug, Clone, Default)]
struct Grid {
    t: f64,
    s: Vec<f64>,
    /// f(s_i) · Simpson weight · h: integrals are Σ q_i g(s_i).
    q: Vec<f64>,
}

/// The continuation region in S units for a look, clipped to where the density lives.
fn region(t: f64, bound: f64, sides: Sides, drift: f64) -> (f64, f64) {
    let centre = drift * t;
    let span = SPAN_SD * t.sqrt();
    let hi = (bound * t.sqrt()).min(centre + span);
    let lo = match sides {
        Sides::Two => (-bound * t.sqrt()).max(centre - span),
        Sides::One => centre - span,
    };
    (lo, hi.max(lo))
}

/// Probability of crossing at a look at `t` (and not before), given the previous grid.
fn cross_prob(prev: Option<&Grid>, t: f64, bound: f64, sides: Sides, drift: f64) -> f64 {
    let upper = bound * t.sqrt();
    let tail = |mean: f64, sd: f64| {
        let mut p = normal_sf((upper - mean) / sd);
        if sides == Sides::Two {
            p += normal_cdf((-upper - mean) / sd);
        }
        p
    };
    match prev {
        None => tail(drift * t, t.sqrt()),
        Some(g) => {
            let d = t - g.t;
            let sd = d.sqrt();
            g.s.iter().zip(&g.q).map(|(s, q)| q * tail(s + drift * d, sd)).sum()
        }
    }
}

/// The density on the continuation region of a look at `t` with `bound`.
fn next_grid(prev: Option<&Grid>, t: f64, bound: f64, sides: Sides, drift: f64) -> Grid {
    let (lo, hi) = region(t, bound, sides, drift);
    let mut intervals = ((hi - lo) / H).ceil() as usize;
    intervals = intervals.max(2);
    if intervals % 2 == 1 {
        intervals += 1;
    }
    let h = (hi - lo) / intervals as f64;
    let mut s = Vec::with_capacity(intervals + 1);
    let mut q = Vec::with_capacity(intervals + 1);
    let inv_sqrt_2pi = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
    for i in 0..=intervals {
        let x = lo + i as f64 * h;
        let density = match prev {
            None => {
                let z = (x - drift * t) / t.sqrt();
                (-0.5 * z * z).exp() * inv_sqrt_2pi / t.sqrt()
            }
            Some(g) => {
                let d = t - g.t;
                let sd = d.sqrt();
                g.s.iter()
                    .zip(&g.q)
                    .map(|(u, w)| {
                        let z = (x - u - drift * d) / sd;
                        w * (-0.5 * z * z).exp()
                    })
                    .sum::<f64>()
                    * inv_sqrt_2pi
                    / sd
            }
        };
        let simpson = if i == 0 || i == intervals {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        };
        s.push(x);
        q.push(density * simpson * h / 3.0);
    }
    Grid { t, s, q }
}

fn check_fractions(prev: f64, t: f64) -> Result<(), StatsError> {
    if !(MIN_STEP..=1.0).contains(&t) {
        return Err(StatsError::InvalidArgument(format!(
            "an information fraction must lie in [{MIN_STEP}, 1], got {t}"
        )));
    }
    if t - prev < MIN_STEP - 1e-12 {
        return Err(StatsError::InvalidArgument(format!(
            "looks must be at least {MIN_STEP} apart in information (previous {prev}, now {t})"
        )));
    }
    Ok(())
}

/// Lan–DeMets O'Brien–Fleming boundaries for a test of level `alpha`, one look at a time.
/// Persist `looks()` and rebuild with `from_looks` to resume after a restart.
#[derive(Debug, Clone)]
pub struct AlphaSpending {
    alpha: f64,
    sides: Sides,
    looks: Vec<Look>,
    grid: Option<Grid>,
}

impl AlphaSpending {
    pub fn new(alpha: f64, sides: Sides) -> Result<Self, StatsError> {
        check_probability("alpha", alpha)?;
        Ok(Self { alpha, sides, looks: Vec::new(), grid: None })
    }

    /// Resumes a test from its recorded looks (their boundaries are kept as they were used).
    pub fn from_looks(alpha: f64, sides: Sides, looks: &[Look]) -> Result<Self, StatsError> {
        let mut me = Self::new(alpha, sides)?;
        let mut prev = 0.0;
        for l in looks.iter().take(MAX_LOOKS) {
            check_fractions(prev, l.t)?;
            let grid = next_grid(me.grid.as_ref(), l.t, l.bound, sides, 0.0);
            me.grid = Some(grid);
            me.looks.push(*l);
            prev = l.t;
        }
        Ok(me)
    }

    pub fn looks(&self) -> &[Look] {
        &self.looks
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Information fraction of the last look (0 before the first).
    pub fn last_t(&self) -> f64 {
        self.looks.last().map_or(0.0, |l| l.t)
    }

    /// Whether the final look (t = 1) has been taken: all alpha is spent.
    pub fn finished(&self) -> bool {
        self.last_t() >= 1.0
    }

    /// Takes a look at information fraction `t` and returns its z boundary: reject H0 at this
    /// look when z ≥ bound (one-sided) or |z| ≥ bound (two-sided).
    pub fn look(&mut self, t: f64) -> Result<f64, StatsError> {
        if self.looks.len() >= MAX_LOOKS {
            return Err(StatsError::InvalidArgument(format!("a test takes at most {MAX_LOOKS} looks")));
        }
        let prev_t = self.last_t();
        check_fractions(prev_t, t)?;
        // Two-sided: each tail spends a one-sided α/2; the crossing probability counts both.
        let (side_alpha, tails) = match self.sides {
            Sides::One => (self.alpha, 1.0),
            Sides::Two => (self.alpha / 2.0, 2.0),
        };
        let target = tails * (obf_spent(t, side_alpha) - obf_spent(prev_t, side_alpha));
        let bound = solve_bound(self.grid.as_ref(), t, self.sides, target);
        self.grid = Some(next_grid(self.grid.as_ref(), t, bound, self.sides, 0.0));
        self.looks.push(Look { t, bound });
        Ok(bound)
    }

    /// The nominal (per-look) two- or one-sided p-value threshold matching a boundary.
    pub fn nominal_alpha(&self, bound: f64) -> f64 {
        match self.sides {
            Sides::One => normal_sf(bound),
            Sides::Two => 2.0 * normal_sf(bound),
        }
    }
}

/// The boundary whose crossing probability (and not before) is `target`, by bisection.
fn solve_bound(prev: Option<&Grid>, t: f64, sides: Sides, target: f64) -> f64 {
    if target <= 1e-15 {
        return MAX_BOUND;
    }
    let (mut lo, mut hi) = (0.0, MAX_BOUND);
    if cross_prob(prev, t, hi, sides, 0.0) >= target {
        return hi;
    }
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if cross_prob(prev, t, mid, sides, 0.0) > target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-10 {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Boundaries for a whole planned sequence of looks.
pub fn boundaries(ts: &[f64], alpha: f64, sides: Sides) -> Result<Vec<f64>, StatsError> {
    let mut a = AlphaSpending::new(alpha, sides)?;
    ts.iter().map(|&t| a.look(t)).collect()
}

/// Probability of crossing the upper boundary at some look when E[Z(t)] = drift·√t
/// (drift = 0: the type I error in the upper tail; drift > 0: power).
pub fn upper_crossing_probability(ts: &[f64], bounds: &[f64], sides: Sides, drift: f64) -> f64 {
    let mut grid: Option<Grid> = None;
    let mut total = 0.0;
    for (&t, &b) in ts.iter().zip(bounds) {
        // Upper crossing only: evaluate the one-sided tail on the two-sided continuation region.
        let upper = b * t.sqrt();
        total += match &grid {
            None => normal_sf((upper - drift * t) / t.sqrt()),
            Some(g) => {
                let d = t - g.t;
                g.s.iter().zip(&g.q).map(|(s, q)| q * normal_sf((upper - s - drift * d) / d.sqrt())).sum::<f64>()
            }
        };
        grid = Some(next_grid(grid.as_ref(), t, b, sides, drift));
    }
    total
}

/// How much larger the maximum sample must be than a fixed-sample design with the same alpha
/// and power when the test looks `looks` times at equally spaced information.
pub fn inflation_factor(alpha: f64, power: f64, looks: usize, sides: Sides) -> Result<f64, StatsError> {
    check_probability("power", power)?;
    if looks == 0 || looks > 100 {
        return Err(StatsError::InvalidArgument(format!("looks must be between 1 and 100, got {looks}")));
    }
    let ts: Vec<f64> = (1..=looks).map(|k| k as f64 / looks as f64).collect();
    let bounds = boundaries(&ts, alpha, sides)?;
    let fixed = sides.z_alpha(alpha) + normal_quantile(power);
    // O'Brien–Fleming designs inflate by well under 1.3² = 1.69; 30 halvings give ~1e-9.
    let (mut lo, mut hi) = (fixed, fixed * 1.3);
    for _ in 0..30 {
        let mid = 0.5 * (lo + hi);
        if upper_crossing_probability(&ts, &bounds, sides, mid) < power {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok((0.5 * (lo + hi) / fixed).powi(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::moments::Moments;
    use crate::stats::random::Rng;
    use crate::stats::welch::welch_t_test;

    #[test]
    fn boundaries_match_published_lan_demets_obrien_fleming() {
        // Lan–DeMets O'Brien–Fleming-type spending, two-sided α = 0.05, equally spaced looks
        // (R ldbounds::ldBounds(t = 1:5/5, iuse = 1, alpha = 0.05); Jennison & Turnbull):
        // K = 5: 4.8769 3.3569 2.6803 2.2898 2.0310; K = 4: 4.3326 2.9631 2.3590 2.0141
        let b5 = boundaries(&[0.2, 0.4, 0.6, 0.8, 1.0], 0.05, Sides::Two).unwrap();
        for (got, want) in b5.iter().zip([4.8769, 3.3569, 2.6803, 2.2898, 2.0310]) {
            assert!((got - want).abs() < 2e-3, "K=5: {got} vs {want} ({b5:?})");
        }
        let b4 = boundaries(&[0.25, 0.5, 0.75, 1.0], 0.05, Sides::Two).unwrap();
        for (got, want) in b4.iter().zip([4.3326, 2.9631, 2.3590, 2.0141]) {
            assert!((got - want).abs() < 2e-3, "K=4: {got} vs {want} ({b4:?})");
        }
        // One look spends everything: the fixed-sample critical values.
        let one = boundaries(&[1.0], 0.05, Sides::Two).unwrap();
        assert!((one[0] - 1.959_964).abs() < 1e-5);
        let one = boundaries(&[1.0], 0.05, Sides::One).unwrap();
        assert!((one[0] - 1.644_854).abs() < 1e-5);
        // The total type I error of the design is alpha.
        let ts = [0.2, 0.4, 0.6, 0.8, 1.0];
        let up = upper_crossing_probability(&ts, &b5, Sides::Two, 0.0);
        assert!((up - 0.025).abs() < 2e-4, "{up}");
    }

    #[test]
    fn spending_is_monotone_and_inflation_small() {
        assert_eq!(obf_spent(0.0, 0.05), 0.0);
        assert_eq!(obf_spent(1.0, 0.05), 0.05);
        assert!(obf_spent(0.5, 0.05) < obf_spent(0.7, 0.05));
        // Jennison & Turnbull Table 2.3 gives R ≈ 1.026 for 5 O'Brien–Fleming looks at 80 %;
        // the Lan–DeMets version is within a percent of it.
        let r = inflation_factor(0.05, 0.8, 5, Sides::Two).unwrap();
        assert!(r > 1.02 && r < 1.03, "{r}");
        let r10 = inflation_factor(0.05, 0.8, 10, Sides::Two).unwrap();
        assert!(r10 > r && r10 < 1.05, "{r10}");
        let mut a = AlphaSpending::new(0.05, Sides::Two).unwrap();
        a.look(0.3).unwrap();
        assert!(a.look(0.305).is_err(), "too close to the previous look");
        assert!(a.look(1.2).is_err());
        let resumed = AlphaSpending::from_looks(0.05, Sides::Two, a.looks()).unwrap();
        let (mut x, mut y) = (a.clone(), resumed);
        assert!((x.look(0.7).unwrap() - y.look(0.7).unwrap()).abs() < 1e-12);
    }

    /// Repeated A/A tests on normal data, 10 looks each: a naive p < 0.05 at every look rejects
    /// far too often; the spending boundaries keep the rate at alpha.
    #[test]
    fn peeking_guard_keeps_the_false_positive_rate() {
        const RUNS: usize = 3000;
        const LOOKS: usize = 10;
        const PER_LOOK: usize = 40;
        let mut rng = Rng::new(2024);
        let ts: Vec<f64> = (1..=LOOKS).map(|k| k as f64 / LOOKS as f64).collect();
        let bounds = boundaries(&ts, 0.05, Sides::Two).unwrap();
        let (mut naive, mut guarded) = (0, 0);
        for _ in 0..RUNS {
            let (mut a, mut b) = (Moments::default(), Moments::default());
            let (mut naive_hit, mut guarded_hit) = (false, false);
            for bound in &bounds {
                for _ in 0..PER_LOOK {
                    a.push(rng.normal());
                    b.push(rng.normal());
                }
                let w = welch_t_test(&a, &b, 0.95).unwrap();
                naive_hit |= w.p_value < 0.05;
                guarded_hit |= (w.diff / w.se).abs() >= *bound;
            }
            naive += usize::from(naive_hit);
            guarded += usize::from(guarded_hit);
        }
        let (naive, guarded) = (naive as f64 / RUNS as f64, guarded as f64 / RUNS as f64);
        // Ten naive looks: ≈ 0.19 (Armitage et al. 1969). Guarded: 0.05 ± 3 binomial SEs (0.012).
        assert!(naive > 0.14, "naive peeking rate {naive}");
        assert!((guarded - 0.05).abs() < 0.013, "guarded rate {guarded}");
    }
}
