//! Special functions the distributions are built on: log-gamma, the regularized incomplete beta
//! and gamma functions (continued fractions evaluated with the modified Lentz method).
//!
//! Accuracy is about 1e-14 relative in the ranges the tests use; every caller checks its inputs,
//! and these return NaN (never panic) for arguments outside their domain.

/// Smallest magnitude the Lentz recurrences may divide by.
const TINY: f64 = 1e-300;
/// Relative convergence target of the series and continued fractions.
const EPS: f64 = 1e-15;
/// Iteration cap: the fractions converge in well under a hundred steps for the arguments used;
/// the cap bounds time on pathological inputs.
const MAX_ITER: usize = 10_000;

/// ln Γ(x) for x > 0 (Lanczos approximation, g = 7, 9 terms; ~1e-15 relative).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        let s = (std::f64::consts::PI * x).sin();
        return std::f64::consts::PI.ln() - s.abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 ≤ x ≤ 1.
pub fn reg_inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if !(a > 0.0 && b > 0.0 && (0.0..=1.0).contains(&x)) {
        return f64::NAN;
    }
    if x == 0.0 || x == 1.0 {
        return x;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Continued fraction for I_x(a, b) (Numerical Recipes §6.4), modified Lentz.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..MAX_ITER {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even step.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        // Odd step.
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// The regularized lower incomplete gamma function P(a, x), for a > 0, x ≥ 0.
pub fn reg_inc_gamma_p(a: f64, x: f64) -> f64 {
    if !(a > 0.0) || !(x >= 0.0) {
        return f64::NAN;
    }
    if x == 0.0 {
        return 0.0;
    }
    if x < a + 1.0 { gamma_series(a, x) } else { 1.0 - gamma_cf(a, x) }
}

/// The regularized upper incomplete gamma function Q(a, x) = 1 − P(a, x), accurate in the tail.
pub fn reg_inc_gamma_q(a: f64, x: f64) -> f64 {
    if !(a > 0.0) || !(x >= 0.0) {
        return f64::NAN;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x < a + 1.0 { 1.0 - gamma_series(a, x) } else { gamma_cf(a, x) }
}

/// Series for P(a, x), good for x < a + 1.
fn gamma_series(a: f64, x: f64) -> f64 {
    let mut ap = a;
    let mut del = 1.0 / a;
    let mut sum = del;
    for _ in 0..MAX_ITER {
        ap += 1.0;
        del *= x / ap;
        sum += del;
        if del.abs() < sum.abs() * EPS {
            break;
        }
    }
    sum * (-x + a * x.ln() - ln_gamma(a)).exp()
}

/// Continued fraction for Q(a, x), good for x ≥ a + 1 (modified Lentz).
fn gamma_cf(a: f64, x: f64) -> f64 {
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..MAX_ITER {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    (-x + a * x.ln() - ln_gamma(a)).exp() * h
}

/// erfc(x), through Q(1/2, x²); accurate in relative terms far into the tail.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x >= 0.0 { reg_inc_gamma_q(0.5, x * x) } else { 2.0 - reg_inc_gamma_q(0.5, x * x) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn log_gamma_matches_known_values() {
        // Γ(5) = 24, Γ(1/2) = √π, Γ(10) = 362880.
        assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-14));
        assert!(close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-13));
        assert!(close(ln_gamma(10.0), 362_880f64.ln(), 1e-14));
        // scipy.special.gammaln(0.1) = 2.252712651734206
        assert!(close(ln_gamma(0.1), 2.252_712_651_734_206, 1e-13));
        // scipy.special.gammaln(171.5) = 709.1431630309283 (near the f64 overflow of Γ itself)
        assert!(close(ln_gamma(171.5), 709.143_163_030_928_3, 1e-13));
        assert!(ln_gamma(0.0).is_nan() && ln_gamma(-1.0).is_nan());
    }

    #[test]
    fn incomplete_beta_and_gamma_match_scipy() {
        // scipy.special.betainc(2, 3, 0.4) = 0.5248
        assert!(close(reg_inc_beta(2.0, 3.0, 0.4), 0.5248, 1e-13));
        // scipy.special.betainc(5, 0.5, 0.1) = 2.5705896992293723e-06 (a small tail)
        assert!(close(reg_inc_beta(5.0, 0.5, 0.1), 2.570_589_699_229_372_3e-6, 1e-11));
        // and its mirror through the symmetry path: I_0.9(0.5, 5) = 1 − I_0.1(5, 0.5)
        assert!(close(reg_inc_beta(0.5, 5.0, 0.9), 1.0 - 2.570_589_699_229_372_3e-6, 1e-14));
        // scipy.special.gammainc(3, 2) = 0.32332358381693654
        assert!(close(reg_inc_gamma_p(3.0, 2.0), 0.323_323_583_816_936_54, 1e-13));
        // scipy.special.gammaincc(2.5, 10) = 0.0012497305630313773 (continued-fraction path)
        assert!(close(reg_inc_gamma_q(2.5, 10.0), 0.001_249_730_563_031_377_3, 1e-12));
        // erfc(3) = 2.209049699858544e-05, erfc(-1) = 1.8427007929497148
        assert!(close(erfc(3.0), 2.209_049_699_858_544e-5, 1e-12));
        assert!(close(erfc(-1.0), 1.842_700_792_949_714_8, 1e-14));
        assert!(reg_inc_beta(-1.0, 1.0, 0.5).is_nan() && reg_inc_gamma_p(1.0, -1.0).is_nan());
    }
}
