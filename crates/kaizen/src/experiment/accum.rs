//! Per-variant accumulators: counts, error counts, cache hits, streaming moments of log-latency
//! and log-bytes (for Welch and the power analysis), and a log-bucket latency histogram (1 %
//! wide buckets, 1 µs to ~17 min) for percentiles and Mann–Whitney. Fixed memory per variant.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::mann_whitney::{MannWhitney, mann_whitney_counts};
use crate::stats::moments::Moments;

/// What happened in one call, as the embedder reports it to `Engine::record`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observation<'a> {
    /// The operation (tool) name; experiments with an `operations` list count only those.
    pub operation: &'a str,
    pub latency_micros: u64,
    /// Any failure (tool error, invalid params, timeout, internal).
    pub is_error: bool,
    /// A failure that is the server's fault (timeout, internal), not the caller's.
    pub is_server_error: bool,
    /// Whether the call hit the cache, when it used one.
    pub cache_hit: Option<bool>,
    pub response_bytes: u64,
}

/// Bucket growth factor of the latency histogram.
const GROWTH: f64 = 1.01;
/// ln(1e9 µs) / ln(1.01) ≈ 2083 buckets: 1 µs to 1000 s, 1 % resolution.
pub const BUCKETS: usize = 2084;

/// Latency counts in log buckets (bucket i holds [1.01^i, 1.01^(i+1)) µs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogHistogram {
    /// Allocated on first use; persisted sparsely as (bucket, count).
    #[serde(with = "sparse")]
    counts: Vec<u64>,
    total: u64,
}

mod sparse {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(usize, u64)> = v.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i, *c)).collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let pairs: Vec<(usize, u64)> = Vec::deserialize(d)?;
        let mut v = Vec::new();
        for (i, c) in pairs {
            if i < super::BUCKETS {
                if v.is_empty() {
                    v = vec![0; super::BUCKETS];
                }
                v[i] = c;
            }
        }
        Ok(v)
    }
}

impl LogHistogram {
    fn bucket(micros: u64) -> usize {
        let x = micros.max(1) as f64;
        ((x.ln() / GROWTH.ln()) as usize).min(BUCKETS - 1)
    }

    pub fn record(&mut self, micros: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        self.counts[Self::bucket(micros)] += 1;
        self.total += 1;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The q-quantile in microseconds (the bucket's geometric middle; within 0.5 %).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(GROWTH.powf(i as f64 + 0.5));
            }
        }
        None
    }

    /// Mann–Whitney between two histograms (values within a bucket count as ties).
    pub fn mann_whitney(&self, other: &LogHistogram) -> Option<MannWhitney> {
        if self.total == 0 || other.total == 0 {
            return None;
        }
        let pairs: Vec<(u64, u64)> = (0..BUCKETS)
            .map(|i| (self.counts.get(i).copied().unwrap_or(0), other.counts.get(i).copied().unwrap_or(0)))
            .filter(|p| p.0 + p.1 > 0)
            .collect();
        mann_whitney_counts(&pairs).ok()
    }
}

/// Everything one variant accumulated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VariantStats {
    pub samples: u64,
    pub errors: u64,
    pub server_errors: u64,
    pub cache_lookups: u64,
    pub cache_hits: u64,
    /// Calls bad for each SLO-burn guard (in guard order among SLO-burn guards).
    #[serde(default)]
    pub slo_bad: Vec<u64>,
    /// ln(latency µs).
    pub log_latency: Moments,
    /// ln(1 + response bytes).
    pub log_bytes: Moments,
    pub latency: LogHistogram,
    /// Custom metrics by name: raw values, and their logs for log-scale metrics.
    #[serde(default)]
    pub custom: BTreeMap<String, Moments>,
    /// Calls given this variant without randomization (allow/deny lists): not in the tests.
    #[serde(default)]
    pub forced: u64,
}

impl VariantStats {
    /// Adds one call. `slo_thresholds` are the latency thresholds of the SLO-burn guards.
    pub fn record(&mut self, o: &Observation, slo_thresholds: &[Option<u64>]) {
        self.samples += 1;
        self.errors += u64::from(o.is_error);
        self.server_errors += u64::from(o.is_server_error);
        if let Some(hit) = o.cache_hit {
            self.cache_lookups += 1;
            self.cache_hits += u64::from(hit);
        }
        if self.slo_bad.len() != slo_thresholds.len() {
            self.slo_bad.resize(slo_thresholds.len(), 0);
        }
        for (bad, t) in self.slo_bad.iter_mut().zip(slo_thresholds) {
            *bad += u64::from(o.is_error || t.is_some_and(|t| o.latency_micros > t));
        }
        self.log_latency.push((o.latency_micros.max(1) as f64).ln());
        self.log_bytes.push((o.response_bytes as f64).ln_1p());
        self.latency.record(o.latency_micros);
    }

    /// Adds a custom metric value (`log`: store ln(value); non-positive values are skipped).
    pub fn record_custom(&mut self, name: &str, value: f64, log: bool) {
        let v = if log { if value > 0.0 { value.ln() } else { return } } else { value };
        if let Some(m) = self.custom.get_mut(name) {
            m.push(v);
        } else {
            let mut m = Moments::default();
            m.push(v);
            self.custom.insert(name.to_string(), m);
        }
    }

    pub fn error_ratio(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.errors as f64 / self.samples as f64)
    }
    pub fn server_error_ratio(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.server_errors as f64 / self.samples as f64)
    }
    pub fn cache_hit_ratio(&self) -> Option<f64> {
        (self.cache_lookups > 0).then(|| self.cache_hits as f64 / self.cache_lookups as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_within_a_percent_and_round_trip() {
        let mut s = VariantStats::default();
        for i in 1..=10_000u64 {
            s.record(
                &Observation { operation: "op", latency_micros: i * 10, is_error: i % 100 == 0, ..Default::default() },
                &[Some(50_000)],
            );
        }
        let p95 = s.latency.quantile(0.95).unwrap();
        assert!((p95 / 95_000.0 - 1.0).abs() < 0.01, "{p95}");
        let p50 = s.latency.quantile(0.5).unwrap();
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.01, "{p50}");
        assert_eq!(s.errors, 100);
        // Bad for the SLO: errors, or slower than 50 ms (5000 calls above; 50 of the errors are below).
        assert_eq!(s.slo_bad, vec![5000 + 50]);
        let json = serde_json::to_string(&s).unwrap();
        let back: VariantStats = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (back.samples, back.errors, &back.slo_bad, &back.latency),
            (s.samples, s.errors, &s.slo_bad, &s.latency)
        );
        assert!((back.log_latency.m2 - s.log_latency.m2).abs() < 1e-9 * s.log_latency.m2);
        assert!(json.len() < 80_000, "sparse persistence: {} bytes", json.len());
        let mw = s.latency.mann_whitney(&back.latency).unwrap();
        assert!((mw.prob_superiority - 0.5).abs() < 1e-12);
        s.record_custom("calls_per_workflow", 7.0, false);
        s.record_custom("ignored", -1.0, true);
        assert_eq!(s.custom.len(), 1);
        assert_eq!(LogHistogram::bucket(u64::MAX), BUCKETS - 1);
    }
}
