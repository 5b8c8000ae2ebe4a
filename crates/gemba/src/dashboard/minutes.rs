//! What the request log does not hold (memory, CPU, threads, descriptors, the state directory,
//! the cache's bytes, in-flight and queued calls), sampled once a minute by the evaluator thread
//! into a ring of 24 hours, for the 1-hour and 24-hour charts. It starts with the process: the
//! page says "since start" when the range reaches before it.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

use crate::wiring::{Kaizen, Periodic};

/// One minute per point, one day kept.
pub const KEEP: usize = 1440;

/// One sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Minute {
    pub t: u64,
    pub rss: f64,
    pub cpu_seconds: f64,
    pub threads: f64,
    pub fds: f64,
    pub state_dir_bytes: f64,
    pub cache_bytes: f64,
    pub cache_hits: f64,
    pub cache_misses: f64,
    pub inflight: f64,
    pub queued: f64,
}

impl Minute {
    /// A sample from a `/metrics.json` summary taken at `t` (unix ms).
    pub fn from_summary(t: u64, m: &Value) -> Self {
        let other = |k: &str| m["other"][k].as_f64().unwrap_or(0.0);
        let p = &m["process"];
        Self {
            t,
            rss: p["resident_memory_bytes"].as_f64().unwrap_or(0.0),
            cpu_seconds: p["cpu_seconds"].as_f64().unwrap_or(0.0),
            threads: p["threads"].as_f64().unwrap_or(0.0),
            fds: p["open_fds"].as_f64().unwrap_or(0.0),
            state_dir_bytes: other("gemba_state_dir_bytes"),
            cache_bytes: other("gemba_cache_bytes"),
            cache_hits: other("gemba_cache_hits"),
            cache_misses: other("gemba_cache_misses"),
            inflight: m["tools"].as_array().into_iter().flatten().map(|t| t["in_flight"].as_f64().unwrap_or(0.0)).sum(),
            queued: other("gemba_calls_queued"),
        }
    }
}

/// The ring, shared between the sampler and the dashboard.
#[derive(Debug, Default)]
pub struct Minutes {
    ring: Mutex<VecDeque<Minute>>,
}

impl Minutes {
    pub fn push(&self, m: Minute) {
        let mut r = self.ring.lock();
        r.push_back(m);
        while r.len() > KEEP {
            r.pop_front();
        }
    }

    /// The samples since `from_ms`, with CPU share and cache hit ratio between samples.
    pub fn since(&self, from_ms: u64) -> Value {
        let r = self.ring.lock();
        let mut out = Vec::new();
        let mut prev: Option<&Minute> = None;
        for m in r.iter() {
            if m.t >= from_ms {
                let (cpu, hit) = match prev {
                    Some(p) if m.t > p.t => {
                        let secs = (m.t - p.t) as f64 / 1000.0;
                        let hits = (m.cache_hits - p.cache_hits).max(0.0);
                        let lookups = hits + (m.cache_misses - p.cache_misses).max(0.0);
                        (Some((m.cpu_seconds - p.cpu_seconds).max(0.0) / secs), (lookups > 0.0).then(|| hits / lookups))
                    }
                    _ => (None, None),
                };
                out.push(json!({
                    "t": m.t, "rss": m.rss, "cpu": cpu, "threads": m.threads, "fds": m.fds,
                    "state_dir_bytes": m.state_dir_bytes, "cache_bytes": m.cache_bytes, "hit": hit,
                    "inflight": m.inflight, "queued": m.queued,
                }));
            }
            prev = Some(m);
        }
        Value::Array(out)
    }
}

/// The evaluator part that takes one sample a minute.
pub struct Sampler {
    pub kaizen: Arc<Kaizen>,
    pub minutes: Arc<Minutes>,
    pub last_minute: u64,
}

impl Periodic for Sampler {
    fn tick(&mut self, now: u64) -> Vec<kaizen::event::AlertEvent> {
        let minute = now / 60;
        if minute != self.last_minute {
            self.last_minute = minute;
            let summary = kaizen::exposition::summary(&self.kaizen.recorder);
            self.minutes.push(Minute::from_summary(now * 1000, &summary));
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_rates_are_between_samples() {
        let m = Minutes::default();
        for i in 0..(KEEP as u64 + 10) {
            m.push(Minute {
                t: i * 60_000,
                cpu_seconds: i as f64 * 30.0,
                cache_hits: i as f64 * 3.0,
                cache_misses: i as f64,
                ..Default::default()
            });
        }
        let all = m.since(0);
        let all = all.as_array().unwrap();
        assert_eq!(all.len(), KEEP);
        assert!(all[0]["cpu"].is_null(), "no sample before the first kept");
        assert_eq!(all[1]["cpu"], 0.5, "30 CPU seconds a minute");
        assert_eq!(all[1]["hit"], 0.75);
        assert_eq!(m.since((KEEP as u64) * 60_000).as_array().unwrap().len(), 10);
    }

    #[test]
    fn sample_from_a_summary() {
        let s = json!({"process": {"resident_memory_bytes": 5.0, "cpu_seconds": 1.5, "threads": 7, "open_fds": 9},
                       "tools": [{"in_flight": 2}, {"in_flight": 1}],
                       "other": {"gemba_cache_bytes": 100.0, "gemba_calls_queued": 4.0}});
        let m = Minute::from_summary(60_000, &s);
        assert_eq!((m.rss, m.threads, m.fds, m.cache_bytes, m.inflight, m.queued), (5.0, 7.0, 9.0, 100.0, 3.0, 4.0));
    }
}
