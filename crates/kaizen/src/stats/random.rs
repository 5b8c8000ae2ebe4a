//! A small, seeded, dependency-free generator (SplitMix64) with the draws simulations and
//! Thompson sampling need: uniform, normal, gamma, beta. Not for cryptography.

/// SplitMix64 (Steele, Lea & Flood 2014): 64 bits of state, passes BigCrush, reproducible.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller; one of the pair is discarded for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Gamma(shape, 1) by Marsaglia & Tsang (2000); shape < 1 via the boost Γ(a) = Γ(a+1)·U^(1/a).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if !(shape > 0.0) {
            return f64::NAN;
        }
        if shape < 1.0 {
            let u = 1.0 - self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = 1.0 - self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b) as a ratio of gammas.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        x / (x + y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::moments::Moments;

    #[test]
    fn draws_have_the_right_moments() {
        let mut r = Rng::new(7);
        let (mut u, mut n, mut g, mut b) =
            (Moments::default(), Moments::default(), Moments::default(), Moments::default());
        for _ in 0..200_000 {
            u.push(r.uniform());
            n.push(r.normal());
            g.push(r.gamma(2.5));
            b.push(r.beta(2.0, 6.0));
        }
        // Uniform: 1/2, 1/12; normal: 0, 1; Gamma(2.5): 2.5, 2.5; Beta(2, 6): 0.25, 1/48.
        assert!((u.mean - 0.5).abs() < 0.005 && (u.variance().unwrap() - 1.0 / 12.0).abs() < 0.002);
        assert!(n.mean.abs() < 0.01 && (n.variance().unwrap() - 1.0).abs() < 0.02);
        assert!((g.mean - 2.5).abs() < 0.02 && (g.variance().unwrap() - 2.5).abs() < 0.05);
        assert!((b.mean - 0.25).abs() < 0.003 && (b.variance().unwrap() - 1.0 / 48.0).abs() < 0.001);
        assert_eq!(Rng::new(1).next_u64(), Rng::new(1).next_u64());
        assert!(r.gamma(0.3) >= 0.0 && r.gamma(-1.0).is_nan());
    }
}
