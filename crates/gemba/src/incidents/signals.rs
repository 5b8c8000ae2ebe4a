//! Gemba's signals for the detector: read from the workbook cache, admission control, the
//! recalculation backend, the recorder and /proc at each tick, and turned into the snapshot the
//! cause rules read (counters as raw totals, gauges as they are now) plus discrete events
//! (breaker opened, files changed under the cache).

use std::sync::atomic::Ordering::Relaxed;

use kaizen::detect::SignalSnapshot;

use crate::server::GembaServer;

/// The names Gemba gives its signals (the cause rules refer to them).
pub mod names {
    /// Share of workbook lookups that hit the cache since the last tick (gauge).
    pub const CACHE_HIT_RATIO: &str = "cache_hit_ratio";
    /// Workbooks evicted to stay within the byte bound (counter).
    pub const CACHE_EVICTIONS: &str = "cache_evictions";
    /// Workbooks opened (counter).
    pub const CACHE_LOADS: &str = "cache_loads";
    /// Seconds spent opening workbooks (counter; per load with `cache_loads`).
    pub const LOAD_SECONDS: &str = "load_seconds_sum";
    /// Tool calls started and not finished, waiting ones included (gauge).
    pub const INFLIGHT: &str = "inflight";
    /// Mean time a tool call finished since the last tick waited for a slot (gauge, seconds).
    pub const QUEUE_WAIT_SECONDS: &str = "queue_wait_seconds";
    /// Tool calls refused by admission control (counter).
    pub const REFUSALS: &str = "refusals";
    /// The LibreOffice circuit breaker is open (gauge, 0 or 1).
    pub const BACKEND_BREAKER_OPEN: &str = "backend_breaker_open";
    /// Recalculation retries (counter).
    pub const BACKEND_RETRIES: &str = "backend_retries";
    /// A recalculation has been running longer than `LONG_RECALC_SECS` (gauge, 0 or 1).
    pub const BACKEND_LONG_RUNS: &str = "backend_long_runs";
    /// Cached workbooks dropped because their file changed on disk (counter).
    pub const FILES_CHANGED: &str = "files_changed";
    pub const RSS_BYTES: &str = "rss_bytes";
    pub const MEMORY_LIMIT_BYTES: &str = "memory_limit_bytes";
    /// Process CPU time (counter; its rate is cores busy).
    pub const CPU_SECONDS: &str = "cpu_seconds";
    /// Bytes of tool responses (counter).
    pub const RESPONSE_BYTES: &str = "response_bytes";
    /// Events: the breaker opened, files changed under the cache, version or config changed.
    pub const EVENT_BREAKER_OPENED: &str = "breaker_opened";
    pub const EVENT_FILE_CHANGED: &str = "file_changed";
    pub const EVENT_CONFIG_CHANGE: &str = "config_change";

    /// Every name above: the snapshot's and the events'.
    pub const ALL: [&str; 18] = [
        CACHE_HIT_RATIO,
        CACHE_EVICTIONS,
        CACHE_LOADS,
        LOAD_SECONDS,
        INFLIGHT,
        QUEUE_WAIT_SECONDS,
        REFUSALS,
        BACKEND_BREAKER_OPEN,
        BACKEND_RETRIES,
        BACKEND_LONG_RUNS,
        FILES_CHANGED,
        RSS_BYTES,
        MEMORY_LIMIT_BYTES,
        CPU_SECONDS,
        RESPONSE_BYTES,
        EVENT_BREAKER_OPENED,
        EVENT_FILE_CHANGED,
        EVENT_CONFIG_CHANGE,
    ];
}

/// A recalculation running this long counts as a long run (the operational alert waits for
/// 2 minutes; as a cause it matters sooner).
const LONG_RECALC_SECS: f64 = 30.0;

/// The raw figures read at one tick (totals since start for counters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Raw {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub evictions: u64,
    pub loads: u64,
    pub load_nanos: u64,
    pub invalidations: u64,
    pub inflight: i64,
    /// Tool calls finished (any outcome) and the seconds they waited for a slot, in total.
    pub tool_calls: u64,
    pub queue_seconds: f64,
    pub refusals: u64,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: u8,
    pub retries: u64,
    pub longest_recalc_secs: f64,
    pub rss_bytes: u64,
    pub memory_limit_bytes: u64,
    pub cpu_seconds: f64,
    pub response_bytes: u64,
}

impl Raw {
    /// Reads everything now. `tool_ops` is how many of the recorder's operations are tools
    /// (they come first in `measure::op_specs`).
    pub fn read(server: &GembaServer, recorder: &kaizen::Recorder, tool_ops: usize) -> Self {
        let cache = &server.engine().cache.stats;
        let lo = &server.engine().forks.stats.libreoffice;
        let p = kaizen::process::process_stats();
        let (refused, _, _) = server.admission_figures();
        let mut r = Raw {
            cache_hits: cache.hits.load(Relaxed),
            cache_misses: cache.misses.load(Relaxed),
            evictions: cache.evictions.load(Relaxed),
            loads: cache.loads.load(Relaxed),
            load_nanos: cache.load_nanos.load(Relaxed),
            invalidations: cache.invalidations.load(Relaxed),
            refusals: refused,
            breaker_state: lo.breaker_state.load(Relaxed),
            retries: lo.retries.load(Relaxed),
            longest_recalc_secs: lo.longest_running_seconds(),
            rss_bytes: p.resident_memory_bytes,
            memory_limit_bytes: p.memory_limit_bytes,
            cpu_seconds: p.cpu_seconds,
            ..Raw::default()
        };
        for (_, s) in recorder.ops().take(tool_ops) {
            r.inflight += s.in_flight.load(Relaxed).max(0);
            r.tool_calls += s.total_requests();
            r.queue_seconds += s.queue.sum_seconds();
            r.response_bytes += s.response_bytes.load(Relaxed);
        }
        r
    }
}

/// Turns readings into snapshots, remembering the previous one for the per-tick figures.
#[derive(Debug, Default)]
pub struct Signals {
    prev: Option<Raw>,
}

/// A discrete event seen between two readings: (signal, detail).
pub type Event = (&'static str, String);

impl Signals {
    /// The snapshot for `now` and the events since the previous reading.
    pub fn snapshot(&mut self, now: &Raw) -> (SignalSnapshot, Vec<Event>) {
        use names::*;
        let mut v: Vec<(&str, f64)> = vec![
            (CACHE_EVICTIONS, now.evictions as f64),
            (CACHE_LOADS, now.loads as f64),
            (LOAD_SECONDS, now.load_nanos as f64 / 1e9),
            (INFLIGHT, now.inflight as f64),
            (REFUSALS, now.refusals as f64),
            (BACKEND_BREAKER_OPEN, f64::from(u8::from(now.breaker_state == 1))),
            (BACKEND_RETRIES, now.retries as f64),
            (BACKEND_LONG_RUNS, f64::from(u8::from(now.longest_recalc_secs > LONG_RECALC_SECS))),
            (FILES_CHANGED, now.invalidations as f64),
            (RSS_BYTES, now.rss_bytes as f64),
            (CPU_SECONDS, now.cpu_seconds),
            (RESPONSE_BYTES, now.response_bytes as f64),
        ];
        if now.memory_limit_bytes > 0 {
            v.push((MEMORY_LIMIT_BYTES, now.memory_limit_bytes as f64));
        }
        let mut events = Vec::new();
        match &self.prev {
            Some(prev) => {
                // Figures over the interval since the last tick; none when nothing happened
                // (a quiet cache has no hit ratio, not a perfect one).
                let hits = now.cache_hits.saturating_sub(prev.cache_hits);
                let lookups = hits + now.cache_misses.saturating_sub(prev.cache_misses);
                if lookups > 0 {
                    v.push((CACHE_HIT_RATIO, hits as f64 / lookups as f64));
                }
                let calls = now.tool_calls.saturating_sub(prev.tool_calls);
                let waited = (now.queue_seconds - prev.queue_seconds).max(0.0);
                v.push((QUEUE_WAIT_SECONDS, if calls > 0 { waited / calls as f64 } else { 0.0 }));
                if now.breaker_state == 1 && prev.breaker_state != 1 {
                    events.push((
                        EVENT_BREAKER_OPENED,
                        "the LibreOffice recalculation breaker opened after repeated failures".to_string(),
                    ));
                }
                let changed = now.invalidations.saturating_sub(prev.invalidations);
                if changed > 0 {
                    events.push((
                        EVENT_FILE_CHANGED,
                        format!("{changed} cached workbook(s) dropped because the file changed on disk"),
                    ));
                }
            }
            None => v.push((QUEUE_WAIT_SECONDS, 0.0)),
        }
        self.prev = Some(now.clone());
        (SignalSnapshot::of(v), events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &SignalSnapshot, name: &str) -> Option<f64> {
        s.values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    #[test]
    fn per_tick_figures_come_from_the_interval_and_events_from_changes() {
        let mut sig = Signals::default();
        let first = Raw { cache_hits: 90, cache_misses: 10, tool_calls: 100, queue_seconds: 1.0, ..Raw::default() };
        let (snap, events) = sig.snapshot(&first);
        assert_eq!(value(&snap, names::CACHE_HIT_RATIO), None, "no interval yet");
        assert_eq!(value(&snap, names::QUEUE_WAIT_SECONDS), Some(0.0));
        assert!(events.is_empty());

        let second = Raw {
            cache_hits: 93,
            cache_misses: 19,
            tool_calls: 120,
            queue_seconds: 3.0,
            invalidations: 2,
            breaker_state: 1,
            evictions: 7,
            ..Raw::default()
        };
        let (snap, events) = sig.snapshot(&second);
        assert_eq!(value(&snap, names::CACHE_HIT_RATIO), Some(0.25));
        assert_eq!(value(&snap, names::QUEUE_WAIT_SECONDS), Some(0.1));
        assert_eq!(value(&snap, names::CACHE_EVICTIONS), Some(7.0), "counters go as raw totals");
        assert_eq!(value(&snap, names::BACKEND_BREAKER_OPEN), Some(1.0));
        let kinds: Vec<&str> = events.iter().map(|e| e.0).collect();
        assert_eq!(kinds, [names::EVENT_BREAKER_OPENED, names::EVENT_FILE_CHANGED]);
        assert!(events[1].1.starts_with("2 cached workbook(s)"));

        // Nothing looked up, breaker still open: no ratio, no new events.
        let (snap, events) = sig.snapshot(&second);
        assert_eq!(value(&snap, names::CACHE_HIT_RATIO), None);
        assert_eq!(value(&snap, names::QUEUE_WAIT_SECONDS), Some(0.0));
        assert!(events.is_empty());
    }
}
