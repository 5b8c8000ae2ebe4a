//! `notifications/progress` for calls that carry a `progressToken`: a small task beside the
//! call reads the call's `sheets::limits::Observer` (which the domain fills: bytes inflated
//! while loading, steps while recalculating, saving or restructuring) and sends what changed.
//! Nothing is sent for a call that ends within [`FIRST_AFTER`]; after that at most one
//! notification every [`EVERY`], and only when the progress grew (the spec wants it to rise).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rmcp::RoleServer;
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::Peer;
use sheets::limits::{Observer, ProgressSnapshot};

/// A call shorter than this sends no progress at all.
pub const FIRST_AFTER: Duration = Duration::from_millis(250);
/// The shortest gap between two notifications of one call.
pub const EVERY: Duration = Duration::from_millis(100);

/// Progress notifications sent, for the metrics.
#[derive(Debug, Default)]
pub struct ProgressCounters {
    pub sent: AtomicU64,
}

/// The task reporting one call's progress; dropping it stops the reporting.
pub struct Reporter(tokio::task::JoinHandle<()>);

impl Drop for Reporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decides which snapshots become notifications: only rising progress is sent.
#[derive(Debug, Default)]
pub struct Rising {
    last: Option<u64>,
}

impl Rising {
    /// The snapshot to send now, if it moved past the last one sent.
    pub fn next(&mut self, snap: Option<ProgressSnapshot>) -> Option<ProgressSnapshot> {
        let s = snap?;
        if self.last.is_some_and(|l| s.progress <= l) {
            return None;
        }
        self.last = Some(s.progress);
        Some(s)
    }
}

/// Start reporting `observer`'s progress to `peer` under `token`.
pub fn start(
    peer: Peer<RoleServer>,
    token: ProgressToken,
    observer: Arc<Observer>,
    counters: Arc<ProgressCounters>,
) -> Reporter {
    Reporter(tokio::spawn(async move {
        tokio::time::sleep(FIRST_AFTER).await;
        let mut rising = Rising::default();
        loop {
            if let Some(s) = rising.next(observer.snapshot()) {
                let p = ProgressNotificationParam::new(token.clone(), s.progress as f64)
                    .with_total(s.total as f64)
                    .with_message(s.message);
                if peer.notify_progress(p).await.is_err() {
                    return; // the client is gone
                }
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(EVERY).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rising_progress_is_sent() {
        let o = Observer::new(true);
        let mut r = Rising::default();
        assert_eq!(r.next(o.snapshot()), None, "nothing before a stage begins");
        o.begin("loading".into(), "bytes inflated", 100);
        assert_eq!(r.next(o.snapshot()).map(|s| s.progress), Some(0));
        assert_eq!(r.next(o.snapshot()), None, "unchanged: not sent again");
        o.advance(40);
        assert_eq!(r.next(o.snapshot()).map(|s| (s.progress, s.total)), Some((40, 100)));
        o.begin("recalculating".into(), "steps", 4);
        // The new stage starts where the last one ended (100), so progress still rises.
        assert_eq!(r.next(o.snapshot()).map(|s| (s.progress, s.total)), Some((100, 104)));
    }
}
