//! Ratios (error ratio, cache hit ratio): the two-proportion z-test, Wilson's score interval for
//! one proportion, Newcombe's hybrid score interval for a difference, and Pearson's chi-square
//! test of independence on a 2×k table (k variants × {event, no event}).

use serde::Serialize;

use super::dist::{chi2_sf, normal_quantile, normal_sf};
use super::{StatsError, check_probability};

/// The pooled two-proportion z-test of p1 − p2 (equivalent to `prop.test(correct = FALSE)`,
/// whose X-squared is z²).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TwoProportions {
    pub p1: f64,
    pub p2: f64,
    /// p1 − p2.
    pub diff: f64,
    pub z: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Newcombe's hybrid score interval of p1 − p2.
    pub ci: (f64, f64),
}

fn check_counts(x: u64, n: u64) -> Result<(), StatsError> {
    if n == 0 {
        return Err(StatsError::NotEnoughData("a proportion needs at least one trial".into()));
    }
    if x > n {
        return Err(StatsError::InvalidArgument(format!("{x} events out of {n} trials")));
    }
    Ok(())
}

/// Wilson's score interval for x events in n trials (no continuity correction).
pub fn wilson(x: u64, n: u64, confidence: f64) -> Result<(f64, f64), StatsError> {
    check_counts(x, n)?;
    check_probability("confidence", confidence)?;
    let z = normal_quantile(0.5 + confidence / 2.0);
    let (nf, p) = (n as f64, x as f64 / n as f64);
    let d = 1.0 + z * z / nf;
    let c = (p + z * z / (2.0 * nf)) / d;
    let h = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / d;
    Ok(((c - h).max(0.0), (c + h).min(1.0)))
}

/// Newcombe's (1998, method 10) hybrid score interval for p1 − p2.
pub fn newcombe(x1: u64, n1: u64, x2: u64, n2: u64, confidence: f64) -> Result<(f64, f64), StatsError> {
    let (l1, u1) = wilson(x1, n1, confidence)?;
    let (l2, u2) = wilson(x2, n2, confidence)?;
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let d = p1 - p2;
    let lo = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let hi = d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    Ok((lo, hi))
}

/// The pooled two-proportion z-test of x1/n1 against x2/n2, with Newcombe's interval.
pub fn two_proportion_z(x1: u64, n1: u64, x2: u64, n2: u64, confidence: f64) -> Result<TwoProportions, StatsError> {
    check_counts(x1, n1)?;
    check_counts(x2, n2)?;
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1 + n2) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    let (z, p_value) = if se > 0.0 {
        let z = (p1 - p2) / se;
        (z, (2.0 * normal_sf(z.abs())).min(1.0))
    } else {
        (0.0, 1.0)
    };
    let ci = newcombe(x1, n1, x2, n2, confidence)?;
    Ok(TwoProportions { p1, p2, diff: p1 - p2, z, p_value, ci })
}

/// Pearson's chi-square test of independence without continuity correction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChiSquare {
    pub statistic: f64,
    pub df: f64,
    pub p_value: f64,
}

/// Chi-square test on k groups of (events, trials): are the k proportions equal?
/// (`chisq.test(correct = FALSE)` on the 2×k table of events and non-events.)
pub fn chi_square_2xk(groups: &[(u64, u64)]) -> Result<ChiSquare, StatsError> {
    if groups.len() < 2 {
        return Err(StatsError::NotEnoughData("a chi-square test needs at least 2 groups".into()));
    }
    for &(x, n) in groups {
        check_counts(x, n)?;
    }
    let total: f64 = groups.iter().map(|g| g.1 as f64).sum();
    let events: f64 = groups.iter().map(|g| g.0 as f64).sum();
    let p = events / total;
    if p == 0.0 || p == 1.0 {
        return Ok(ChiSquare { statistic: 0.0, df: (groups.len() - 1) as f64, p_value: 1.0 });
    }
    let mut statistic = 0.0;
    for &(x, n) in groups {
        let (e1, e0) = (n as f64 * p, n as f64 * (1.0 - p));
        let (o1, o0) = (x as f64, (n - x) as f64);
        statistic += (o1 - e1).powi(2) / e1 + (o0 - e0).powi(2) / e0;
    }
    let df = (groups.len() - 1) as f64;
    Ok(ChiSquare { statistic, df, p_value: chi2_sf(statistic, df) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_and_newcombe_match_newcombe_1998() {
        // Newcombe (1998), Stat Med 17:857 (single proportion, method 3):
        // 81/263 → 0.2553–0.3662, 15/148 → 0.0624–0.1605, 0/10 → 0–0.2775.
        let w = wilson(81, 263, 0.95).unwrap();
        assert!((w.0 - 0.2553).abs() < 5e-5 && (w.1 - 0.3662).abs() < 5e-5);
        let w = wilson(15, 148, 0.95).unwrap();
        assert!((w.0 - 0.0624).abs() < 5e-5 && (w.1 - 0.1605).abs() < 5e-5);
        let w = wilson(0, 10, 0.95).unwrap();
        assert!(w.0 == 0.0 && (w.1 - 0.2775).abs() < 5e-5);
        // Newcombe (1998), Stat Med 17:873 (difference, method 10):
        // 56/70 − 48/80 → 0.0524 to 0.3339; 9/10 − 3/10 → 0.1705 to 0.8090.
        let d = newcombe(56, 70, 48, 80, 0.95).unwrap();
        assert!((d.0 - 0.0524).abs() < 5e-5 && (d.1 - 0.3339).abs() < 5e-5);
        let d = newcombe(9, 10, 3, 10, 0.95).unwrap();
        assert!((d.0 - 0.1705).abs() < 5e-5 && (d.1 - 0.8090).abs() < 5e-5);
    }

    #[test]
    fn z_test_and_chi_square_match_r() {
        // prop.test(c(15, 30), c(100, 100), correct = FALSE): X-squared = 6.4516, p = 0.01109
        // (scipy.stats.chi2_contingency([[15, 85], [30, 70]], correction=False):
        //  statistic 6.451612903225806, pvalue 0.011085166380602708)
        let t = two_proportion_z(15, 100, 30, 100, 0.95).unwrap();
        assert!((t.z * t.z - 6.451_612_903_225_806).abs() < 1e-12);
        assert!((t.p_value - 0.011_085_166_380_602_708).abs() < 1e-13);
        assert!(t.z < 0.0 && t.ci.1 < 0.0);
        let c = chi_square_2xk(&[(15, 100), (30, 100)]).unwrap();
        assert!((c.statistic - 6.451_612_903_225_806).abs() < 1e-12);
        // chisq.test(matrix(c(12, 88, 25, 75, 31, 69), nrow = 2)), scipy chi2_contingency
        // (correction irrelevant for k > 2): statistic 10.7631845841785, p 0.004600490769808084, df 2
        let c = chi_square_2xk(&[(12, 100), (25, 100), (31, 100)]).unwrap();
        assert!((c.statistic - 10.763_184_584_178_5).abs() < 1e-11);
        assert!((c.p_value - 0.004_600_490_769_808_084).abs() < 1e-13);
        assert_eq!(c.df, 2.0);
    }

    #[test]
    fn bad_counts_are_refused() {
        assert!(wilson(3, 0, 0.95).is_err());
        assert!(wilson(5, 3, 0.95).is_err());
        assert!(chi_square_2xk(&[(1, 10)]).is_err());
        assert_eq!(two_proportion_z(0, 10, 0, 10, 0.95).unwrap().p_value, 1.0);
    }
}
