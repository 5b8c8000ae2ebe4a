//! The few statistics the trends need, private to `learn` (the crate's general statistics live
//! elsewhere): the normal tail, a two-proportion z-test, Mann–Whitney U on sorted samples, and a
//! tail-exceedance test for a high percentile.

/// Complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Two-sided p-value of a standard normal statistic.
pub(crate) fn two_sided_p(z: f64) -> f64 {
    if !z.is_finite() {
        return if z.is_nan() { 1.0 } else { 0.0 };
    }
    erfc(z.abs() / std::f64::consts::SQRT_2).clamp(0.0, 1.0)
}

/// Two-proportion z-test of x1/n1 against x2/n2 (pooled variance): (z, two-sided p).
pub(crate) fn two_proportions(x1: u64, n1: u64, x2: u64, n2: u64) -> (f64, f64) {
    if n1 == 0 || n2 == 0 {
        return (0.0, 1.0);
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let p = (x1 + x2) as f64 / (n1f + n2f);
    let se = (p * (1.0 - p) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 {
        return (0.0, 1.0);
    }
    let z = (x1 as f64 / n1f - x2 as f64 / n2f) / se;
    (z, two_sided_p(z))
}

/// Mann–Whitney U test of `a` against `b` (both sorted ascending), normal approximation with
/// tie and continuity corrections: (z, two-sided p). z > 0 when `a` tends to be larger.
pub(crate) fn mann_whitney(a: &[u32], b: &[u32]) -> (f64, f64) {
    let (n1, n2) = (a.len(), b.len());
    if n1 == 0 || n2 == 0 {
        return (0.0, 1.0);
    }
    let (mut i, mut j) = (0, 0);
    let mut rank = 0.0f64; // ranks assigned so far
    let mut r1 = 0.0f64;
    let mut ties = 0.0f64;
    while i < n1 || j < n2 {
        let v = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => *x.min(y),
            (Some(x), None) => *x,
            (None, Some(y)) => *y,
            (None, None) => break,
        };
        let ca = a[i..].iter().take_while(|x| **x == v).count();
        let cb = b[j..].iter().take_while(|x| **x == v).count();
        let t = (ca + cb) as f64;
        let avg = rank + (t + 1.0) / 2.0;
        r1 += avg * ca as f64;
        rank += t;
        ties += t * t * t - t;
        i += ca;
        j += cb;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let n = n1f + n2f;
    let u1 = r1 - n1f * (n1f + 1.0) / 2.0;
    let mean = n1f * n2f / 2.0;
    let var = n1f * n2f / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)).max(1.0));
    if var <= 0.0 {
        return (0.0, 1.0);
    }
    let d = u1 - mean;
    let z = (d - 0.5 * d.signum()) / var.sqrt();
    (z, two_sided_p(z))
}

/// The value at quantile `q` of a sorted sample (nearest rank, as the request log's statistics).
pub(crate) fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Whether the share of `cur` above `prev`'s `q` quantile differs from `prev`'s own share above
/// it: a test aimed at the tail, where a p95 change shows. (z, two-sided p); z > 0 when `cur`
/// has more values above the threshold.
pub(crate) fn tail_exceedance(prev: &[u32], cur: &[u32], q: f64) -> (f64, f64) {
    let t = quantile(prev, q);
    let above = |s: &[u32]| (s.len() - s.partition_point(|x| *x <= t)) as u64;
    two_proportions(above(cur), cur.len() as u64, above(prev), prev.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_matches_tables() {
        assert!((two_sided_p(1.959_964) - 0.05).abs() < 1e-6);
        assert!((two_sided_p(3.290_527) - 0.001).abs() < 1e-6);
        assert!((two_sided_p(0.0) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn mann_whitney_matches_a_hand_computed_case() {
        // a = {1,2,3}, b = {4,5,6}: U1 = 0, mean 4.5, var = 9*7/12 = 5.25.
        let (z, _) = mann_whitney(&[1, 2, 3], &[4, 5, 6]);
        assert!((z - (-(4.5 - 0.5) / 5.25f64.sqrt())).abs() < 1e-9, "{z}");
        let (z, p) = mann_whitney(&[5, 5, 5], &[5, 5, 5]);
        assert_eq!((z, p), (0.0, 1.0));
    }

    #[test]
    fn proportions() {
        let (z, p) = two_proportions(60, 1000, 30, 1000);
        assert!(z > 3.0 && p < 0.01, "{z} {p}");
        assert_eq!(two_proportions(0, 0, 1, 10), (0.0, 1.0));
    }
}
