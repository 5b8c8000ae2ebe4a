//! Log-latency histograms: buckets of 1/8 in ln(µs) (12.5 % wide) from 1 µs to about 40 days.
//! A window's histogram is counts (one increment per call); the baseline's is the same buckets
//! with exponentially decayed weights. Both are summarized the same way (bucket midpoints), so
//! a window and its baseline are compared without quantization bias.

/// Buckets per unit of ln(µs).
const PER_UNIT: f64 = 8.0;
/// Number of buckets (ln(µs) from 0 to 22).
pub const BUCKETS: usize = 176;

/// The bucket of a latency.
#[inline]
pub fn bucket_of(latency_us: u64) -> usize {
    if latency_us <= 1 {
        return 0;
    }
    ((latency_us as f64).ln() * PER_UNIT) as usize
}

/// The midpoint of a bucket, in ln(µs).
#[inline]
pub fn midpoint(bucket: usize) -> f64 {
    (bucket as f64 + 0.5) / PER_UNIT
}

/// The latency at a bucket's midpoint, in milliseconds (for messages).
pub fn midpoint_ms(bucket: usize) -> f64 {
    midpoint(bucket).exp() / 1000.0
}

/// Per-call counts over one window (or a pool of windows).
#[derive(Clone)]
pub struct WindowHist {
    counts: Box<[u32; BUCKETS]>,
    n: u64,
}

impl std::fmt::Debug for WindowHist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowHist").field("n", &self.n).finish()
    }
}

impl Default for WindowHist {
    fn default() -> Self {
        Self { counts: Box::new([0; BUCKETS]), n: 0 }
    }
}

impl WindowHist {
    #[inline]
    pub fn add(&mut self, latency_us: u64) {
        let b = bucket_of(latency_us).min(BUCKETS - 1);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.n += 1;
    }

    pub fn merge(&mut self, other: &WindowHist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.n += other.n;
    }

    pub fn n(&self) -> u64 {
        self.n
    }

    /// Mean of the calls' ln(µs), each clamped into the buckets `[lo, hi]`.
    pub fn winsorized_mean(&self, lo: usize, hi: usize) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let sum: f64 = self.counts.iter().enumerate().map(|(i, &c)| f64::from(c) * midpoint(i.clamp(lo, hi))).sum();
        sum / self.n as f64
    }

    /// The bucket holding quantile `q`.
    pub fn quantile_bucket(&self, q: f64) -> usize {
        quantile(self.counts.iter().map(|&c| f64::from(c)), self.n as f64, q)
    }
}

/// The baseline distribution of per-call log latency, learned slowly.
#[derive(Clone)]
pub struct BaselineHist {
    weights: Box<[f64; BUCKETS]>,
    total: f64,
}

impl std::fmt::Debug for BaselineHist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaselineHist").field("total", &self.total).finish()
    }
}

impl Default for BaselineHist {
    fn default() -> Self {
        Self { weights: Box::new([0.0; BUCKETS]), total: 0.0 }
    }
}

/// The baseline summarized for one evaluation: clamp buckets and the winsorized moments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Winsorized {
    pub lo: usize,
    pub hi: usize,
    pub mean: f64,
    pub sd: f64,
}

impl BaselineHist {
    /// Decays the old weights by `decay` and adds the window's counts.
    pub fn absorb(&mut self, w: &WindowHist, decay: f64) {
        self.total = 0.0;
        for (a, &c) in self.weights.iter_mut().zip(w.counts.iter()) {
            *a = *a * decay + f64::from(c);
            self.total += *a;
        }
    }

    /// The non-zero weights as (bucket, weight), for saving.
    pub fn to_sparse(&self) -> Vec<(u16, f64)> {
        self.weights.iter().enumerate().filter(|(_, w)| **w > 0.0).map(|(i, w)| (i as u16, *w)).collect()
    }

    /// Rebuilds from `to_sparse` output; `None` if a bucket or weight is out of range.
    pub fn from_sparse(pairs: &[(u16, f64)]) -> Option<Self> {
        let mut h = Self::default();
        for &(i, w) in pairs {
            let slot = h.weights.get_mut(usize::from(i))?;
            if !(w.is_finite() && w >= 0.0) {
                return None;
            }
            *slot = w;
            h.total += w;
        }
        Some(h)
    }

    /// Forgets everything (a new normal is to be learned).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    pub fn total(&self) -> f64 {
        self.total
    }

    pub fn quantile_bucket(&self, q: f64) -> usize {
        quantile(self.weights.iter().copied(), self.total, q)
    }

    /// Clamp buckets at quantiles `q_lo`/`q_hi`, and the mean and standard deviation of ln(µs)
    /// clamped into them.
    pub fn winsorized(&self, q_lo: f64, q_hi: f64) -> Winsorized {
        let lo = self.quantile_bucket(q_lo);
        let hi = self.quantile_bucket(q_hi).max(lo);
        if self.total <= 0.0 {
            return Winsorized { lo, hi, mean: 0.0, sd: 0.0 };
        }
        let (mut s1, mut s2) = (0.0, 0.0);
        for (i, &w) in self.weights.iter().enumerate() {
            let x = midpoint(i.clamp(lo, hi));
            s1 += w * x;
            s2 += w * x * x;
        }
        let mean = s1 / self.total;
        let var = (s2 / self.total - mean * mean).max(0.0);
        Winsorized { lo, hi, mean, sd: var.sqrt() }
    }
}

fn quantile(weights: impl Iterator<Item = f64>, total: f64, q: f64) -> usize {
    if total <= 0.0 {
        return 0;
    }
    let target = q.clamp(0.0, 1.0) * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, w) in weights.enumerate() {
        if w > 0.0 {
            last = i;
        }
        acc += w;
        if acc >= target && w > 0.0 {
            return i;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_an_eighth_of_ln() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        // ln(1000) = 6.908 → bucket 55; its midpoint is within 6.25 % of 1 ms.
        assert_eq!(bucket_of(1000), 55);
        assert!((midpoint_ms(55) / 1.0 - 1.0).abs() < 0.0625);
        let mut h = WindowHist::default();
        h.add(u64::MAX);
        assert_eq!(h.quantile_bucket(0.5), BUCKETS - 1);
    }

    #[test]
    fn winsorized_moments_match_the_data() {
        let mut w = WindowHist::default();
        // 1 ms ×98, then two huge outliers that the clamp must hold back.
        for _ in 0..98 {
            w.add(1000);
        }
        w.add(10_000_000);
        w.add(20_000_000);
        let mut b = BaselineHist::default();
        b.absorb(&w, 1.0);
        let s = b.winsorized(0.02, 0.97);
        assert_eq!(s.lo, 55);
        assert_eq!(s.hi, 55);
        assert!((s.mean - midpoint(55)).abs() < 1e-12);
        assert!(s.sd < 1e-9);
        // Unclamped, the outliers dominate the spread.
        let open = b.winsorized(0.0, 1.0);
        assert!(open.sd > 1.0, "{open:?}");
        assert!((w.winsorized_mean(s.lo, s.hi) - s.mean).abs() < 1e-12);
    }

    #[test]
    fn absorb_decays_old_weight() {
        let mut fast = WindowHist::default();
        let mut slow = WindowHist::default();
        for _ in 0..100 {
            fast.add(100);
            slow.add(10_000);
        }
        let mut b = BaselineHist::default();
        b.absorb(&fast, 0.5);
        b.absorb(&slow, 0.5);
        // 50 fast vs 100 slow: the median is slow.
        assert_eq!(b.quantile_bucket(0.5), bucket_of(10_000));
        assert!((b.total() - 150.0).abs() < 1e-9);
    }

    #[test]
    fn sparse_round_trip_and_bad_input_is_refused() {
        let mut w = WindowHist::default();
        for us in [10, 1000, 1000, 5_000_000] {
            w.add(us);
        }
        let mut b = BaselineHist::default();
        b.absorb(&w, 1.0);
        let back = BaselineHist::from_sparse(&b.to_sparse()).unwrap();
        assert_eq!(back.to_sparse(), b.to_sparse());
        assert_eq!(back.total(), 4.0);
        assert!(BaselineHist::from_sparse(&[(BUCKETS as u16, 1.0)]).is_none());
        assert!(BaselineHist::from_sparse(&[(3, f64::NAN)]).is_none());
        assert!(BaselineHist::from_sparse(&[(3, -1.0)]).is_none());
    }
}
