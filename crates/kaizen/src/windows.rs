//! Sliding-window percentiles from HDR histograms. Each window is a ring of sub-window
//! histograms (1 min = 6 × 10 s, 5 min = 5 × 1 min, 1 h = 6 × 10 min); a quantile merges the
//! ring's live slots, so it is exact to the histogram's precision (3 significant digits), not an
//! interpolation between bucket edges. Only the aggregator thread records here.

use hdrhistogram::Histogram;

/// (label, sub-window seconds, slots)
pub const WINDOWS: [(&str, u64, usize); 3] = [("1m", 10, 6), ("5m", 60, 5), ("1h", 600, 6)];
/// Highest value tracked, in microseconds (1 hour); larger values saturate.
const MAX_MICROS: u64 = 3_600_000_000;

fn new_hist() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

struct Ring {
    sub_secs: u64,
    /// (sub-window index since the epoch, histogram), allocated on first use.
    slots: Vec<Option<(u64, Histogram<u32>)>>,
}

impl Ring {
    fn new(sub_secs: u64, n: usize) -> Self {
        Self { sub_secs, slots: (0..n).map(|_| None).collect() }
    }

    fn record(&mut self, now_secs: u64, micros: u64) {
        let idx = now_secs / self.sub_secs;
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(idx % n) as usize];
        match slot {
            Some((i, h)) if *i == idx => h.saturating_record(micros.max(1)),
            _ => {
                let mut h = match slot.take() {
                    Some((_, mut old)) => {
                        old.reset();
                        old
                    }
                    None => new_hist(),
                };
                h.saturating_record(micros.max(1));
                *slot = Some((idx, h));
            }
        }
    }

    fn merged(&self, now_secs: u64) -> Option<Histogram<u32>> {
        let idx = now_secs / self.sub_secs;
        let n = self.slots.len() as u64;
        let mut out: Option<Histogram<u32>> = None;
        for (i, h) in self.slots.iter().flatten() {
            if *i + n > idx && *i <= idx {
                match &mut out {
                    Some(o) => {
                        let _ = o.add(h);
                    }
                    None => out = Some(h.clone()),
                }
            }
        }
        out
    }
}

/// The percentile windows of one operation.
pub struct OpWindows {
    rings: Vec<Ring>,
}

impl Default for OpWindows {
    fn default() -> Self {
        Self { rings: WINDOWS.iter().map(|(_, s, n)| Ring::new(*s, *n)).collect() }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WindowSummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl OpWindows {
    pub fn record(&mut self, now_secs: u64, micros: u64) {
        for r in &mut self.rings {
            r.record(now_secs, micros);
        }
    }

    /// Summaries for each window, in `WINDOWS` order (`None` when the window saw nothing).
    pub fn summaries(&self, now_secs: u64) -> Vec<Option<WindowSummary>> {
        self.rings
            .iter()
            .map(|r| {
                r.merged(now_secs).filter(|h| !h.is_empty()).map(|h| {
                    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
                    WindowSummary {
                        count: h.len(),
                        p50_ms: q(0.5),
                        p95_ms: q(0.95),
                        p99_ms: q(0.99),
                        p999_ms: q(0.999),
                        max_ms: h.max() as f64 / 1000.0,
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_slide_and_quantiles_are_exact() {
        let mut w = OpWindows::default();
        for v in 1..=1000u64 {
            w.record(1_000, v * 1000); // 1..1000 ms at t = 1000 s
        }
        let s = w.summaries(1_000);
        let m1 = s[0].as_ref().unwrap();
        assert_eq!(m1.count, 1000);
        assert!((m1.p50_ms - 500.0).abs() <= 0.5, "{}", m1.p50_ms);
        assert!((m1.p99_ms - 990.0).abs() <= 1.0, "{}", m1.p99_ms);
        // Two minutes later the 1-minute window is empty, the 5-minute and 1-hour ones are not.
        let later = w.summaries(1_120);
        assert!(later[0].is_none());
        assert_eq!(later[1].as_ref().unwrap().count, 1000);
        assert_eq!(later[2].as_ref().unwrap().count, 1000);
        // After two hours everything has slid out.
        assert!(w.summaries(1_000 + 7_200).iter().all(Option::is_none));
    }
}
