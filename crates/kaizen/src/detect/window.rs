//! Per-tool call windows: events land in the window of their own timestamp (aligned to unix
//! time); a tick hands over the windows that have ended, and windows short of the minimum
//! volume are pooled with the next ones (up to a limit) so quiet tools are judged on enough
//! calls or not at all.

use std::collections::VecDeque;

use super::input::{CallClass, CallEvent};
use super::loghist::WindowHist;

/// Windows kept open per tool while waiting for a tick; past this, the oldest two merge.
const MAX_OPEN: usize = 4;

/// Calls gathered over one window or a pool of consecutive windows.
#[derive(Debug, Clone)]
pub struct Accum {
    /// First and last window index covered (window index = unix ms / window ms).
    pub first: u64,
    pub last: u64,
    /// Latency of the successful calls.
    pub ok_latency: WindowHist,
    pub by_class: [u64; CallClass::COUNT],
    pub response_bytes: u64,
}

impl Accum {
    pub fn new(window: u64) -> Self {
        Self {
            first: window,
            last: window,
            ok_latency: WindowHist::default(),
            by_class: [0; CallClass::COUNT],
            response_bytes: 0,
        }
    }

    #[inline]
    pub fn add(&mut self, e: &CallEvent) {
        self.by_class[e.class as usize] += 1;
        self.response_bytes = self.response_bytes.saturating_add(e.response_bytes);
        if e.class == CallClass::Ok {
            self.ok_latency.add(e.latency_us);
        }
    }

    pub fn merge(&mut self, o: &Accum) {
        self.first = self.first.min(o.first);
        self.last = self.last.max(o.last);
        self.ok_latency.merge(&o.ok_latency);
        for (a, b) in self.by_class.iter_mut().zip(o.by_class) {
            *a += b;
        }
        self.response_bytes = self.response_bytes.saturating_add(o.response_bytes);
    }

    pub fn calls(&self) -> u64 {
        self.by_class.iter().sum()
    }

    pub fn errors(&self) -> u64 {
        self.calls() - self.by_class[CallClass::Ok as usize]
    }

    /// Start and end of the span covered, unix ms.
    pub fn span_ms(&self, window_ms: u64) -> (u64, u64) {
        (self.first * window_ms, (self.last + 1) * window_ms)
    }
}

/// The open windows of one tool and its pool of short ones.
#[derive(Debug, Default)]
pub struct ToolWindows {
    open: VecDeque<Accum>,
    pool: Option<Accum>,
}

impl ToolWindows {
    /// Adds a call to the window of its timestamp (a late call joins the oldest open window).
    #[inline]
    pub fn add(&mut self, e: &CallEvent, window_ms: u64) {
        let w = e.at_ms / window_ms;
        match self.open.back().map(|a| a.last) {
            Some(newest) if w <= newest => {
                // Usually the newest window; a call older than every open one joins the oldest.
                let idx = self.open.iter().rposition(|a| a.first <= w).unwrap_or(0);
                if let Some(a) = self.open.get_mut(idx) {
                    a.add(e);
                }
            }
            _ => {
                if self.open.len() == MAX_OPEN
                    && let Some(a) = self.open.pop_front()
                    && let Some(b) = self.open.front_mut()
                {
                    b.merge(&a);
                }
                let mut acc = Accum::new(w);
                acc.add(e);
                self.open.push_back(acc);
            }
        }
    }

    /// Windows ended by `now_ms` (less the grace for late calls), pooled: returns the
    /// accumulations that reached `min_calls`, oldest first. Pools spanning `max_pool` windows
    /// without reaching it are dropped.
    pub fn take_ready(
        &mut self,
        now_ms: u64,
        window_ms: u64,
        grace_ms: u64,
        min_calls: u64,
        max_pool: u64,
    ) -> Vec<Accum> {
        let mut ready = Vec::new();
        while let Some(front) = self.open.front() {
            if (front.last + 1) * window_ms + grace_ms > now_ms {
                break;
            }
            let Some(acc) = self.open.pop_front() else { break };
            let pool = match self.pool.take() {
                Some(p) if acc.last.saturating_sub(p.first) < max_pool => {
                    let mut p = p;
                    p.merge(&acc);
                    p
                }
                _ => acc,
            };
            // A pool of `max_pool` windows still short of calls is too quiet to judge: dropped.
            if pool.calls() >= min_calls {
                ready.push(pool);
            } else if pool.last + 1 - pool.first < max_pool {
                self.pool = Some(pool);
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at_ms: u64, class: CallClass) -> CallEvent {
        CallEvent { op: 0, at_ms, latency_us: 1000, class, response_bytes: 10 }
    }

    #[test]
    fn windows_close_after_grace_and_late_calls_join_the_oldest() {
        let mut t = ToolWindows::default();
        for i in 0..25 {
            t.add(&ev(10_000 + i * 100, CallClass::Ok), 10_000);
        }
        t.add(&ev(20_500, CallClass::UserError), 10_000);
        // A late call for a window already gone by: joins the oldest open one.
        t.add(&ev(5_000, CallClass::Ok), 10_000);
        assert!(t.take_ready(20_500, 10_000, 1000, 20, 6).is_empty(), "grace not over");
        let r = t.take_ready(21_000, 10_000, 1000, 20, 6);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].first, r[0].last, r[0].calls(), r[0].errors()), (1, 1, 26, 0));
        assert_eq!(r[0].ok_latency.n(), 26);
    }

    #[test]
    fn quiet_windows_pool_up_to_the_limit_then_drop() {
        let mut t = ToolWindows::default();
        // 5 calls per window: 4 windows make 20.
        for w in 0..4u64 {
            for i in 0..5 {
                t.add(&ev(w * 10_000 + i, CallClass::Ok), 10_000);
            }
        }
        let r = t.take_ready(100_000, 10_000, 0, 20, 6);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].first, r[0].last, r[0].calls()), (0, 3, 20));
        // 3 calls per window for 6 windows: 18 < 20, dropped; nothing carried over.
        for w in 10..16u64 {
            for i in 0..3 {
                t.add(&ev(w * 10_000 + i, CallClass::Ok), 10_000);
            }
        }
        assert!(t.take_ready(200_000, 10_000, 0, 20, 6).is_empty());
        for i in 0..19 {
            t.add(&ev(160_000 + i, CallClass::Ok), 10_000);
        }
        assert!(t.take_ready(300_000, 10_000, 0, 20, 6).is_empty(), "19 fresh calls are not enough");
    }

    #[test]
    fn open_windows_are_bounded_when_ticks_stop() {
        let mut t = ToolWindows::default();
        for w in 0..100u64 {
            t.add(&ev(w * 10_000, CallClass::Ok), 10_000);
        }
        assert!(t.open.len() <= MAX_OPEN);
        let total: u64 = t.open.iter().map(Accum::calls).sum();
        assert_eq!(total, 100);
    }
}
