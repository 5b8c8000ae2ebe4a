//! Fixed-edge histograms on atomics: what Prometheus scrapes. Recording is a binary search and
//! two relaxed atomic adds — no lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket upper bounds in seconds. They include every threshold of the seed's four SLO tiers
/// (5 ms … 300 s) and every boundary the OpenTelemetry MCP conventions recommend, so both
/// exports come from the same counters.
pub const EDGES_SECONDS: [f64; 23] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
    10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The OpenTelemetry MCP semantic conventions' explicit bucket boundaries (seconds).
pub const OTEL_EDGES_SECONDS: [f64; 14] =
    [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

const NANOS: [u64; 23] = {
    let mut out = [0u64; 23];
    let mut i = 0;
    while i < 23 {
        out[i] = (EDGES_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// Counts per bucket (not cumulative; the last slot is +Inf), sum and count.
#[derive(Debug)]
pub struct Buckets {
    counts: [AtomicU64; 24],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Buckets {
    #[inline]
    pub fn record(&self, nanos: u64) {
        let i = NANOS.partition_point(|e| *e < nanos);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Add this histogram's per-bucket counts into `acc` (24 slots).
    pub fn add_into(&self, acc: &mut [u64; 24]) {
        for (a, c) in acc.iter_mut().zip(&self.counts) {
            *a += c.load(Ordering::Relaxed);
        }
    }
}

/// (upper bound, count) per bucket for the given edges (a subset of `EDGES_SECONDS`), not
/// cumulative — prometheus-client accumulates when it encodes. The last pair is +Inf.
pub fn grouped(per_bucket: &[u64; 24], edges: &[f64]) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(edges.len() + 1);
    let mut j = 0;
    for e in edges {
        let mut n = 0;
        while j < EDGES_SECONDS.len() && EDGES_SECONDS[j] <= *e {
            n += per_bucket[j];
            j += 1;
        }
        out.push((*e, n));
    }
    out.push((f64::INFINITY, per_bucket[j..].iter().sum()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_subsets_agree() {
        let b = Buckets::default();
        for ns in [50_000, 2_000_000, 2_000_000, 700_000_000, 400_000_000_000] {
            b.record(ns);
        }
        let mut acc = [0u64; 24];
        b.add_into(&mut acc);
        let full = grouped(&acc, &EDGES_SECONDS);
        assert_eq!(full[0], (0.0001, 1));
        assert_eq!(full.iter().find(|(e, _)| *e == 0.0025).unwrap().1, 2);
        assert_eq!(full.last().unwrap().1, 1, "400 s is past the last edge");
        assert_eq!(full.iter().map(|x| x.1).sum::<u64>(), 5);
        let otel = grouped(&acc, &OTEL_EDGES_SECONDS);
        assert_eq!(otel[0], (0.01, 3));
        assert_eq!(otel.iter().find(|(e, _)| *e == 1.0).unwrap().1, 1);
        assert_eq!(otel.last().unwrap().1, 1);
        assert_eq!(otel.iter().map(|x| x.1).sum::<u64>(), 5);
        for e in OTEL_EDGES_SECONDS {
            assert!(EDGES_SECONDS.contains(&e), "OTel edge {e} must be one of ours");
        }
    }
}
