//! Sample size and power. For means: R's `power.t.test` exactly (two-sample, noncentral t by
//! numerical integration) and the normal-approximation design the sequential tests use (with an
//! allocation ratio, as a canary gives its variant far fewer calls than control). For latency,
//! effects are relative: a 10 % slowdown is a difference of ln(1.1) in mean log-latency. For
//! proportions: R's `power.prop.test` and a one-sample version for SLO burn.

use super::dist::{normal_cdf, normal_quantile, normal_sf, t_quantile};
use super::special::ln_gamma;
use super::{StatsError, check_probability};

/// One- or two-sided alternative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sides {
    One,
    Two,
}

impl Sides {
    /// The critical z for level `alpha` (z_{1−α} or z_{1−α/2}).
    pub fn z_alpha(self, alpha: f64) -> f64 {
        match self {
            Sides::One => normal_quantile(1.0 - alpha),
            Sides::Two => normal_quantile(1.0 - alpha / 2.0),
        }
    }
}

fn check_design(alpha: f64, power: f64) -> Result<(), StatsError> {
    check_probability("alpha", alpha)?;
    check_probability("power", power)?;
    if power <= alpha {
        return Err(StatsError::InvalidArgument(format!("power ({power}) must exceed alpha ({alpha})")));
    }
    Ok(())
}

fn check_effect(delta: f64, sd: f64) -> Result<(), StatsError> {
    if !(delta.is_finite() && delta != 0.0) {
        return Err(StatsError::InvalidArgument(format!("the effect must be finite and non-zero, got {delta}")));
    }
    if !(sd.is_finite() && sd > 0.0) {
        return Err(StatsError::InvalidArgument(format!("the standard deviation must be positive, got {sd}")));
    }
    Ok(())
}

/// Power of the two-sample t-test with `n` per group (R: `power.t.test(n, delta, sd, sig.level)`,
/// `strict = FALSE`: only the tail in the effect's direction counts).
pub fn t_test_power(n: f64, delta: f64, sd: f64, alpha: f64, sides: Sides) -> Result<f64, StatsError> {
    check_probability("alpha", alpha)?;
    check_effect(delta, sd)?;
    if !(n >= 2.0) {
        return Err(StatsError::InvalidArgument(format!("n per group must be at least 2, got {n}")));
    }
    let nu = 2.0 * (n - 1.0);
    let q = match sides {
        Sides::One => t_quantile(1.0 - alpha, nu),
        Sides::Two => t_quantile(1.0 - alpha / 2.0, nu),
    };
    let ncp = (delta / sd).abs() * (n / 2.0).sqrt();
    Ok(noncentral_t_sf(q, nu, ncp))
}

/// P(T' > c) for the noncentral t with `nu` df and noncentrality `ncp`:
/// E_V[Φ(ncp − c·√(V/ν))], V ~ χ²_ν, by Simpson's rule over V.
fn noncentral_t_sf(c: f64, nu: f64, ncp: f64) -> f64 {
    if nu > 1e6 {
        return normal_sf(c - ncp);
    }
    let k = nu / 2.0;
    let ln_norm = -k * 2f64.ln() - ln_gamma(k);
    let density = |v: f64| {
        if v <= 0.0 {
            return if nu == 2.0 { 0.5 } else { 0.0 };
        }
        ((k - 1.0) * v.ln() - v / 2.0 + ln_norm).exp()
    };
    let spread = (2.0 * nu).sqrt();
    let lo = (nu - 12.0 * spread).max(0.0);
    let hi = nu + 14.0 * spread + 30.0;
    const STEPS: usize = 4000;
    let h = (hi - lo) / STEPS as f64;
    let mut sum = 0.0;
    for i in 0..=STEPS {
        let v = lo + i as f64 * h;
        let w = if i == 0 || i == STEPS {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        };
        sum += w * density(v) * normal_cdf(ncp - c * (v / nu).sqrt());
    }
    (sum * h / 3.0).clamp(0.0, 1.0)
}

/// n per group for the two-sample t-test to reach `power` (R: `power.t.test(power, delta, sd)`;
/// fractional, round up to use it).
pub fn t_test_n(delta: f64, sd: f64, alpha: f64, power: f64, sides: Sides) -> Result<f64, StatsError> {
    check_design(alpha, power)?;
    check_effect(delta, sd)?;
    let (mut lo, mut hi) = (2.0, 4.0);
    while t_test_power(hi, delta, sd, alpha, sides)? < power {
        hi *= 2.0;
        if hi > 1e12 {
            return Err(StatsError::InvalidArgument("the effect is too small to detect with any sample".into()));
        }
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if t_test_power(mid, delta, sd, alpha, sides)? < power {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-9 * hi {
            break;
        }
    }
    Ok(hi)
}

/// Normal-approximation sample size of the treatment arm when control gets `ratio` times as
/// many samples (ratio = 1: equal groups): n = (z_α + z_β)² σ² (1 + 1/ratio) / δ².
/// This is the design the sequential tests use (their z statistics are normal).
pub fn z_test_n(delta: f64, sd: f64, alpha: f64, power: f64, sides: Sides, ratio: f64) -> Result<f64, StatsError> {
    check_design(alpha, power)?;
    check_effect(delta, sd)?;
    if !(ratio.is_finite() && ratio > 0.0) {
        return Err(StatsError::InvalidArgument(format!("the allocation ratio must be positive, got {ratio}")));
    }
    let z = sides.z_alpha(alpha) + normal_quantile(power);
    Ok(z * z * sd * sd * (1.0 + 1.0 / ratio) / (delta * delta))
}

/// Equal-group sample size to detect a relative latency change `relative` (0.10 = 10 % slower,
/// −0.10 = 10 % faster) when log-latency has standard deviation `log_sd`.
pub fn relative_latency_n(relative: f64, log_sd: f64, alpha: f64, power: f64, sides: Sides) -> Result<f64, StatsError> {
    if !(relative > -1.0) {
        return Err(StatsError::InvalidArgument(format!("a relative change must exceed −100 %, got {relative}")));
    }
    z_test_n((1.0 + relative).ln(), log_sd, alpha, power, sides, 1.0)
}

fn check_p(name: &str, p: f64) -> Result<(), StatsError> {
    if p > 0.0 && p < 1.0 {
        Ok(())
    } else {
        Err(StatsError::InvalidArgument(format!("{name} must be a proportion strictly between 0 and 1, got {p}")))
    }
}

/// n per group to tell p1 from p2 (R: `power.prop.test(p1, p2, power, sig.level)`, whose
/// power is Φ((√n·|p1−p2| − z_α·√(2·p̄q̄)) / √(p1q1 + p2q2)), solved here in closed form).
pub fn prop_test_n(p1: f64, p2: f64, alpha: f64, power: f64, sides: Sides) -> Result<f64, StatsError> {
    check_design(alpha, power)?;
    check_p("p1", p1)?;
    check_p("p2", p2)?;
    if p1 == p2 {
        return Err(StatsError::InvalidArgument("p1 and p2 are equal: no effect to detect".into()));
    }
    let pb = (p1 + p2) / 2.0;
    let a = sides.z_alpha(alpha) * (2.0 * pb * (1.0 - pb)).sqrt();
    let b = normal_quantile(power) * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt();
    Ok(((a + b) / (p1 - p2).abs()).powi(2))
}

/// n for a one-sample test that a proportion exceeds p0 when it is really p1 (one-sided):
/// n = ((z_α√(p0q0) + z_β√(p1q1)) / (p1 − p0))².
pub fn one_proportion_n(p0: f64, p1: f64, alpha: f64, power: f64) -> Result<f64, StatsError> {
    check_design(alpha, power)?;
    check_p("p0", p0)?;
    check_p("p1", p1)?;
    if p1 == p0 {
        return Err(StatsError::InvalidArgument("p0 and p1 are equal: no effect to detect".into()));
    }
    let a = normal_quantile(1.0 - alpha) * (p0 * (1.0 - p0)).sqrt();
    let b = normal_quantile(power) * (p1 * (1.0 - p1)).sqrt();
    Ok(((a + b) / (p1 - p0)).powi(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_test_matches_power_t_test() {
        // R: power.t.test(n = 20, delta = 1) → power = 0.8689528 (its help page's example;
        // scipy nct.sf gives 0.8689528016921273)
        let p = t_test_power(20.0, 1.0, 1.0, 0.05, Sides::Two).unwrap();
        assert!((p - 0.868_952_801_692_127_3).abs() < 1e-7, "{p}");
        // R: power.t.test(power = .90, delta = 1) → n = 22.02110
        let n = t_test_n(1.0, 1.0, 0.05, 0.9, Sides::Two).unwrap();
        assert!((n - 22.021_095_570_096_925).abs() < 1e-4, "{n}");
        // A latency-sized case: delta 0.1 on sd 0.5 at 80 % → n = 393.4066562284782 (scipy nct)
        let n = t_test_n(0.1, 0.5, 0.05, 0.8, Sides::Two).unwrap();
        assert!((n - 393.406_656_228_478_2).abs() < 1e-3, "{n}");
        // The normal design is within one sample of it there.
        let z = z_test_n(0.1, 0.5, 0.05, 0.8, Sides::Two, 1.0).unwrap();
        assert!((n - z).abs() < 1.5 && z < n, "{z}");
    }

    #[test]
    fn proportions_match_power_prop_test() {
        // R: power.prop.test(p1 = .50, p2 = .75, power = .90) → n = 76.7 (76.70692845177743)
        let n = prop_test_n(0.5, 0.75, 0.05, 0.9, Sides::Two).unwrap();
        assert!((n - 76.706_928_451_777_43).abs() < 1e-9, "{n}");
        // Error ratio 2 % → 1 % at 80 %: 2318.16 per group (same formula)
        let n = prop_test_n(0.02, 0.01, 0.05, 0.8, Sides::Two).unwrap();
        assert!((n - 2_318.164_675_512_036_4).abs() < 1e-6, "{n}");
        let one = one_proportion_n(0.01, 0.05, 0.05, 0.8).unwrap();
        assert!(one > 50.0 && one < 200.0, "{one}");
    }

    #[test]
    fn allocation_and_relative_effects() {
        let eq = z_test_n(0.2, 1.0, 0.05, 0.8, Sides::Two, 1.0).unwrap();
        // (1.959964 + 0.841621)² · 2 / 0.04 = 392.4
        assert!((eq - 392.443_6).abs() < 0.01, "{eq}");
        // With control 99× larger the variant needs about half as many.
        let canary = z_test_n(0.2, 1.0, 0.05, 0.8, Sides::Two, 99.0).unwrap();
        assert!((canary / eq - 0.505).abs() < 0.001);
        let faster = relative_latency_n(-0.1, 0.5, 0.05, 0.8, Sides::Two).unwrap();
        let slower = relative_latency_n(0.1, 0.5, 0.05, 0.8, Sides::Two).unwrap();
        assert!(faster < slower, "ln(0.9) is larger in magnitude than ln(1.1)");
        assert!(relative_latency_n(-1.5, 0.5, 0.05, 0.8, Sides::Two).is_err());
        assert!(prop_test_n(0.1, 0.1, 0.05, 0.8, Sides::Two).is_err());
        assert!(t_test_n(1.0, 1.0, 0.05, 0.01, Sides::Two).is_err());
    }
}
