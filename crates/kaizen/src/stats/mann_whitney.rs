//! The Mann–Whitney U test (Wilcoxon rank-sum) with the tie-corrected normal approximation and
//! a continuity correction — the same as scipy's `mannwhitneyu(method="asymptotic")` and R's
//! `wilcox.test(exact = FALSE, correct = TRUE)`. It works from raw samples or from counts per
//! distinct value (as the engine's latency histograms give), so memory stays bounded.

use serde::Serialize;

use super::StatsError;
use super::dist::normal_sf;

/// U for the first sample, the z score and the two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MannWhitney {
    /// U of the first sample: the number of (x, y) pairs with x > y, ties counting one half.
    pub u: f64,
    pub z: f64,
    pub p_value: f64,
    /// P(X > Y) + P(X = Y)/2, the common-language effect size (0.5 = no shift).
    pub prob_superiority: f64,
}

/// From two raw samples (NaNs are refused).
pub fn mann_whitney_u(x: &[f64], y: &[f64]) -> Result<MannWhitney, StatsError> {
    if x.iter().chain(y).any(|v| v.is_nan()) {
        return Err(StatsError::InvalidArgument("samples contain NaN".into()));
    }
    let mut all: Vec<(f64, bool)> = x.iter().map(|&v| (v, true)).chain(y.iter().map(|&v| (v, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut counts: Vec<(u64, u64)> = Vec::new();
    let mut last = f64::NAN;
    for (v, first) in all {
        if counts.is_empty() || v != last {
            counts.push((0, 0));
            last = v;
        }
        if let Some(c) = counts.last_mut() {
            if first {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }
    mann_whitney_counts(&counts)
}

/// From counts per distinct value, in ascending order of value: `(count in x, count in y)`.
pub fn mann_whitney_counts(counts: &[(u64, u64)]) -> Result<MannWhitney, StatsError> {
    let n1: u64 = counts.iter().map(|c| c.0).sum();
    let n2: u64 = counts.iter().map(|c| c.1).sum();
    if n1 == 0 || n2 == 0 {
        return Err(StatsError::NotEnoughData(format!("Mann–Whitney needs values in both samples, got {n1} and {n2}")));
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let n = n1f + n2f;
    // Rank sum of x with midranks, and the tie term Σ(t³ − t).
    let (mut below, mut rank_sum, mut ties) = (0.0f64, 0.0f64, 0.0f64);
    for &(a, b) in counts {
        let t = (a + b) as f64;
        if t == 0.0 {
            continue;
        }
        let midrank = below + (t + 1.0) / 2.0;
        rank_sum += a as f64 * midrank;
        ties += t * t * t - t;
        below += t;
    }
    let u1 = rank_sum - n1f * (n1f + 1.0) / 2.0;
    let mu = n1f * n2f / 2.0;
    let var = n1f * n2f / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let prob_superiority = u1 / (n1f * n2f);
    if !(var > 0.0) {
        // Every value tied: no evidence of a shift.
        return Ok(MannWhitney { u: u1, z: 0.0, p_value: 1.0, prob_superiority });
    }
    // scipy: U = max(U1, U2), z = (U − μ − ½)/σ, p = 2·sf(z).
    let u_max = u1.max(n1f * n2f - u1);
    let z_abs = ((u_max - mu - 0.5) / var.sqrt()).max(0.0);
    let p_value = (2.0 * normal_sf(z_abs)).min(1.0);
    let z = if u1 >= mu { z_abs } else { -z_abs };
    Ok(MannWhitney { u: u1, z, p_value, prob_superiority })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scipy_with_and_without_ties() {
        // scipy.stats.mannwhitneyu([1,2,2,3,4,5,5,6], [3,4,4,6,7,7,8,9,10], use_continuity=True,
        // alternative="two-sided", method="asymptotic") → statistic 12.0, pvalue 0.022974224429824126
        let x = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 5.0, 6.0];
        let y = [3.0, 4.0, 4.0, 6.0, 7.0, 7.0, 8.0, 9.0, 10.0];
        let r = mann_whitney_u(&x, &y).unwrap();
        assert_eq!(r.u, 12.0);
        assert!((r.p_value - 0.022_974_224_429_824_126).abs() < 1e-14);
        assert!(r.z < 0.0);
        // The Welch data set: statistic 6.0, pvalue 0.002915085858374122
        let a = [19.1, 21.4, 22.3, 18.7, 20.0, 23.5, 21.1, 19.8, 22.9, 20.6];
        let b = [23.2, 24.8, 22.1, 25.6, 23.9, 26.3, 24.4, 22.7];
        let r = mann_whitney_u(&a, &b).unwrap();
        assert_eq!(r.u, 6.0);
        assert!((r.p_value - 0.002_915_085_858_374_122).abs() < 1e-14);
        // Swapping the samples mirrors U and keeps p.
        let s = mann_whitney_u(&b, &a).unwrap();
        assert_eq!(s.u, 80.0 - 6.0);
        assert!((s.p_value - r.p_value).abs() < 1e-15);
    }

    #[test]
    fn degenerate_inputs() {
        assert!(mann_whitney_u(&[], &[1.0]).is_err());
        assert!(mann_whitney_u(&[f64::NAN], &[1.0]).is_err());
        let r = mann_whitney_u(&[1.0, 1.0], &[1.0, 1.0, 1.0]).unwrap();
        assert_eq!((r.p_value, r.prob_superiority), (1.0, 0.5));
    }
}
