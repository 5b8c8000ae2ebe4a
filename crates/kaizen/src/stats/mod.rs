//! Statistics for experiments: distributions, two-sample tests, confidence intervals, power and
//! sample size, and a guard against peeking (Lan–DeMets alpha spending). Everything is checked
//! against published reference values (R, scipy, Newcombe 1998) in the unit tests, each citing
//! its source.
//!
//! - `special`: log-gamma, incomplete beta and gamma (Lentz continued fractions)
//! - `dist`: normal, Student t, chi-square CDFs and quantiles
//! - `moments`: streaming mean/variance (Welford), bounded memory
//! - `welch`: Welch's t-test and the CI of a difference in means
//! - `mann_whitney`: Mann–Whitney U, tie-corrected normal approximation, from samples or counts
//! - `proportions`: two-proportion z-test, Wilson and Newcombe intervals, chi-square 2×k
//! - `power`: sample size and power for means (incl. relative latency effects) and proportions
//! - `sequential`: Lan–DeMets O'Brien–Fleming alpha spending over any sequence of looks
//! - `random`: a small seeded generator for simulations and Thompson sampling

// Checks are written `!(x > 0.0)` on purpose: NaN fails them, where `x <= 0.0` would let it pass.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod dist;
pub mod mann_whitney;
pub mod moments;
pub mod power;
pub mod proportions;
pub mod random;
pub mod sequential;
pub mod special;
pub mod welch;

/// Why a statistic could not be computed; each says what was missing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Checks a significance level or confidence-related probability lies strictly inside (0, 1).
pub(crate) fn check_probability(name: &str, p: f64) -> Result<(), StatsError> {
    if p > 0.0 && p < 1.0 {
        Ok(())
    } else {
        Err(StatsError::InvalidArgument(format!("{name} must be strictly between 0 and 1, got {p}")))
    }
}
