//! Welch's unequal-variance t-test and the confidence interval of a difference in means.
//! For latencies the engine applies it to log-latency, so the difference is a log ratio.

use serde::Serialize;

use super::dist::{t_quantile, t_sf};
use super::moments::Moments;
use super::{StatsError, check_probability};

/// Welch's test of mean(a) − mean(b).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Welch {
    /// mean(a) − mean(b).
    pub diff: f64,
    /// Standard error of the difference.
    pub se: f64,
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// The confidence interval of the difference at the requested level.
    pub ci: (f64, f64),
}

/// Welch's t-test on two summaries, with a `confidence`-level interval (e.g. 0.95).
/// Needs two values per group and some variance in at least one group.
pub fn welch_t_test(a: &Moments, b: &Moments, confidence: f64) -> Result<Welch, StatsError> {
    check_probability("confidence", confidence)?;
    let (va, vb) = match (a.variance(), b.variance()) {
        (Some(va), Some(vb)) => (va, vb),
        _ => {
            return Err(StatsError::NotEnoughData(format!(
                "Welch's test needs at least 2 values per group, got {} and {}",
                a.n, b.n
            )));
        }
    };
    let (sa, sb) = (va / a.n as f64, vb / b.n as f64);
    let se2 = sa + sb;
    if !(se2 > 0.0) {
        return Err(StatsError::NotEnoughData("both groups have zero variance".into()));
    }
    let se = se2.sqrt();
    let df = se2 * se2 / (sa * sa / (a.n - 1) as f64 + sb * sb / (b.n - 1) as f64);
    let diff = a.mean - b.mean;
    let t = diff / se;
    let p_value = (2.0 * t_sf(t.abs(), df)).min(1.0);
    let q = t_quantile(0.5 + confidence / 2.0, df);
    Ok(Welch { diff, se, t, df, p_value, ci: (diff - q * se, diff + q * se) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scipy_ttest_ind_unequal_var() {
        let a = [19.1, 21.4, 22.3, 18.7, 20.0, 23.5, 21.1, 19.8, 22.9, 20.6];
        let b = [23.2, 24.8, 22.1, 25.6, 23.9, 26.3, 24.4, 22.7];
        // scipy.stats.ttest_ind(a, b, equal_var=False): statistic = -4.433533767790465,
        // pvalue = 0.0004327784067805986, df = 15.7432265004292,
        // confidence_interval(0.95) = (-4.709936964868845, -1.6600630351311527)
        let w = welch_t_test(&Moments::of(&a), &Moments::of(&b), 0.95).unwrap();
        assert!((w.t - -4.433_533_767_790_465).abs() < 1e-12);
        assert!((w.df - 15.743_226_500_429_2).abs() < 1e-10);
        assert!((w.p_value - 0.000_432_778_406_780_598_6).abs() < 1e-14);
        assert!((w.ci.0 - -4.709_936_964_868_845).abs() < 1e-10);
        assert!((w.ci.1 - -1.660_063_035_131_152_7).abs() < 1e-10);
    }

    #[test]
    fn refuses_what_it_cannot_compute() {
        let one = Moments::of(&[1.0]);
        let flat = Moments::of(&[2.0, 2.0, 2.0]);
        assert!(matches!(welch_t_test(&one, &flat, 0.95), Err(StatsError::NotEnoughData(_))));
        assert!(matches!(welch_t_test(&flat, &flat, 0.95), Err(StatsError::NotEnoughData(_))));
        assert!(matches!(welch_t_test(&flat, &flat, 1.5), Err(StatsError::InvalidArgument(_))));
    }
}
