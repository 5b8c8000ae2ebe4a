//! Recent history of the embedder's signals (raw snapshot values per tick, plus what the
//! detector derives from calls) and of discrete events, bounded in time, names and points.

use std::collections::{HashMap, VecDeque};

use super::input::{CallClass, CallEvent, SignalSnapshot, derived};

/// Distinct signal names kept; further names are ignored (and counted).
const MAX_SIGNALS: usize = 128;
/// Points kept per signal, whatever the tick rate.
const MAX_POINTS: usize = 4096;
/// Events kept.
const MAX_EVENTS: usize = 1000;
/// Longest signal name kept (longer ones are ignored) and event detail (longer ones are cut).
const MAX_NAME: usize = 128;
const MAX_DETAIL: usize = 500;

/// A discrete event the embedder noted (configuration change, breaker opened, file changed).
#[derive(Debug, Clone, PartialEq)]
pub struct NotedEvent {
    pub at_ms: u64,
    pub signal: String,
    pub detail: String,
}

/// Calls since the last tick, across all tools, for the derived signals.
#[derive(Debug, Default, Clone)]
pub struct CallTally {
    by_class: [u64; CallClass::COUNT],
    response_bytes: u64,
}

impl CallTally {
    #[inline]
    pub fn add(&mut self, e: &CallEvent) {
        self.by_class[e.class as usize] += 1;
        self.response_bytes = self.response_bytes.saturating_add(e.response_bytes);
    }
}

#[derive(Debug)]
pub struct SignalHistory {
    series: HashMap<String, VecDeque<(u64, f64)>>,
    events: VecDeque<NotedEvent>,
    keep_ms: u64,
    event_keep_ms: u64,
    last_tick_ms: Option<u64>,
    /// Values ignored because the name limit was reached.
    pub ignored: u64,
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl SignalHistory {
    /// Keeps signal points for `keep_ms` and events for `event_keep_ms`.
    pub fn new(keep_ms: u64, event_keep_ms: u64) -> Self {
        Self { series: HashMap::new(), events: VecDeque::new(), keep_ms, event_keep_ms, last_tick_ms: None, ignored: 0 }
    }

    fn push(&mut self, at_ms: u64, name: &str, value: f64) {
        if !value.is_finite() {
            return;
        }
        if !self.series.contains_key(name) {
            if self.series.len() >= MAX_SIGNALS || name.is_empty() || name.len() > MAX_NAME {
                self.ignored += 1;
                return;
            }
            self.series.insert(name.to_string(), VecDeque::new());
        }
        let Some(s) = self.series.get_mut(name) else { return };
        // Points stay in time order: a clock stepping back replaces nothing, it is dropped.
        if s.back().is_some_and(|&(t, _)| t >= at_ms) {
            return;
        }
        if s.len() == MAX_POINTS {
            s.pop_front();
        }
        s.push_back((at_ms, value));
    }

    /// Records a tick: the embedder's snapshot and the signals derived from the calls since
    /// the previous tick; forgets what is older than the retention.
    pub fn record_tick(&mut self, now_ms: u64, snap: &SignalSnapshot, tally: &CallTally) {
        for (name, v) in &snap.values {
            self.push(now_ms, name, *v);
        }
        if let Some(last) = self.last_tick_ms
            && now_ms > last
        {
            let calls: u64 = tally.by_class.iter().sum();
            let secs = (now_ms - last) as f64 / 1000.0;
            self.push(now_ms, derived::CALL_RATE, calls as f64 / secs);
            if calls > 0 {
                for c in &CallClass::ALL[1..] {
                    let share = tally.by_class[*c as usize] as f64 / calls as f64;
                    self.push(now_ms, &format!("{}{}", derived::SHARE_PREFIX, c.as_str()), share);
                }
                self.push(now_ms, derived::RESPONSE_BYTES_MEAN, tally.response_bytes as f64 / calls as f64);
            }
        }
        self.last_tick_ms = Some(now_ms);
        let cutoff = now_ms.saturating_sub(self.keep_ms);
        for s in self.series.values_mut() {
            while s.front().is_some_and(|&(t, _)| t < cutoff) {
                s.pop_front();
            }
        }
        self.series.retain(|_, s| !s.is_empty());
        let cutoff = now_ms.saturating_sub(self.event_keep_ms);
        while self.events.front().is_some_and(|e| e.at_ms < cutoff) {
            self.events.pop_front();
        }
    }

    /// Notes a discrete event (kept in time order).
    pub fn note_event(&mut self, at_ms: u64, signal: &str, detail: &str) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        let e = NotedEvent { at_ms, signal: cut(signal, MAX_NAME), detail: cut(detail, MAX_DETAIL) };
        let pos = self.events.iter().rposition(|x| x.at_ms <= at_ms).map_or(0, |i| i + 1);
        self.events.insert(pos, e);
    }

    pub fn points(&self, name: &str) -> Option<&VecDeque<(u64, f64)>> {
        self.series.get(name)
    }

    /// Events from `from_ms` to `to_ms` inclusive, oldest first.
    pub fn events_between(&self, from_ms: u64, to_ms: u64) -> impl Iterator<Item = &NotedEvent> {
        self.events.iter().filter(move |e| e.at_ms >= from_ms && e.at_ms <= to_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_rates_and_shares_and_forgets_old_points() {
        let mut h = SignalHistory::new(60_000, 600_000);
        let mut tally = CallTally::default();
        h.record_tick(1_000, &SignalSnapshot::of([("x", 1.0)]), &tally);
        for i in 0..10 {
            let class = if i < 2 { CallClass::UserError } else { CallClass::Ok };
            tally.add(&CallEvent { op: 0, at_ms: 2_000, latency_us: 10, class, response_bytes: 100 });
        }
        h.record_tick(6_000, &SignalSnapshot::of([("x", 2.0), ("y", f64::NAN)]), &tally);
        assert_eq!(h.points(derived::CALL_RATE).unwrap().back(), Some(&(6_000, 2.0)));
        assert_eq!(h.points("calls.share.user_error").unwrap().back(), Some(&(6_000, 0.2)));
        assert_eq!(h.points(derived::RESPONSE_BYTES_MEAN).unwrap().back(), Some(&(6_000, 100.0)));
        assert!(h.points("y").is_none(), "non-finite values are not kept");
        h.record_tick(100_000, &SignalSnapshot::default(), &CallTally::default());
        assert!(h.points("x").is_none(), "older than the retention");
    }

    #[test]
    fn events_stay_in_time_order_and_names_are_bounded() {
        let mut h = SignalHistory::new(60_000, 600_000);
        h.note_event(5_000, "b", "second");
        h.note_event(1_000, "a", "first");
        let got: Vec<_> = h.events_between(0, 10_000).map(|e| e.detail.as_str()).collect();
        assert_eq!(got, ["first", "second"]);
        let many: Vec<(String, f64)> = (0..500).map(|i| (format!("s{i}"), 1.0)).collect();
        h.record_tick(1_000, &SignalSnapshot { values: many }, &CallTally::default());
        assert_eq!(h.series.len(), MAX_SIGNALS);
        assert_eq!(h.ignored, 500 - MAX_SIGNALS as u64);
    }
}
