//! Streaming moments (Welford's algorithm): count, mean and sum of squared deviations in O(1)
//! memory, mergeable, numerically stable. What Welch's test and the power analysis need.

use serde::{Deserialize, Serialize};

/// Count, mean and M2 (sum of squared deviations from the mean) of a stream of values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
}

impl Moments {
    /// Moments of a slice.
    pub fn of(xs: &[f64]) -> Self {
        let mut m = Self::default();
        for &x in xs {
            m.push(x);
        }
        m
    }

    /// Adds one value (non-finite values are ignored so one bad input cannot poison the stream).
    pub fn push(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// Combines two streams (Chan et al.'s parallel update).
    pub fn merge(&mut self, o: &Moments) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        self.mean += d * o.n as f64 / n as f64;
        self.m2 += o.m2 + d * d * self.n as f64 * o.n as f64 / n as f64;
        self.n = n;
    }

    /// The sample variance (n − 1 denominator); None below two values.
    pub fn variance(&self) -> Option<f64> {
        (self.n >= 2).then(|| (self.m2 / (self.n - 1) as f64).max(0.0))
    }

    /// The sample standard deviation; None below two values.
    pub fn sd(&self) -> Option<f64> {
        self.variance().map(f64::sqrt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_matches_two_pass_and_merges() {
        let xs = [19.1, 21.4, 22.3, 18.7, 20.0, 23.5, 21.1, 19.8, 22.9, 20.6];
        let m = Moments::of(&xs);
        let mean = xs.iter().sum::<f64>() / 10.0;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 9.0;
        assert!((m.mean - mean).abs() < 1e-12 && (m.variance().unwrap() - var).abs() < 1e-12);
        let mut a = Moments::of(&xs[..3]);
        a.merge(&Moments::of(&xs[3..]));
        assert!((a.mean - m.mean).abs() < 1e-12 && (a.m2 - m.m2).abs() < 1e-9 && a.n == 10);
        let mut b = Moments::default();
        b.push(f64::NAN);
        assert_eq!(b.n, 0);
        assert_eq!(Moments::of(&[1.0]).variance(), None);
    }
}
