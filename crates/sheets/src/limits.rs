//! Explicit limits, and the time budget a call runs under.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Result, SheetsError};

/// Limits applied to every workbook before and while it loads.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest file accepted, in bytes.
    pub max_file_bytes: u64,
    /// Most non-empty cells one sheet may hold once loaded.
    pub max_cells_per_sheet: usize,
    /// Largest total uncompressed size of a zip-based workbook.
    pub max_uncompressed_bytes: u64,
    /// Largest single part (XML stream) inside a zip-based workbook.
    pub max_part_bytes: u64,
    /// Highest compression ratio accepted for a part larger than 1 MiB (zip bombs).
    pub max_compression_ratio: u64,
    /// Most sheets a workbook may have.
    pub max_sheets: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 256 * 1024 * 1024,
            max_cells_per_sheet: 20_000_000,
            max_uncompressed_bytes: 2 * 1024 * 1024 * 1024,
            max_part_bytes: 1024 * 1024 * 1024,
            max_compression_ratio: 250,
            max_sheets: 2_000,
        }
    }
}

/// Told when a call starts and stops waiting for work another call is doing (a workbook or
/// sheet that call is loading), so the embedder can lend the call's share of the server (an
/// admission slot) to others meanwhile: waiting is not work.
pub trait Waiting: Send + Sync {
    /// The call is about to wait.
    fn begin(&self);
    /// The wait is over; false if the call could not get its share back before `deadline`.
    fn end(&self, deadline: Option<Instant>) -> bool;
}

/// The time a call may take, and a flag the caller can raise to cancel it. Long loops check it
/// every few thousand steps, so a timeout actually stops the work.
#[derive(Clone)]
pub struct Budget {
    deadline: Option<Instant>,
    total: Duration,
    /// Loading a workbook may take longer than the tool's own work (a cold load of a big file
    /// under a metadata tool's short timeout); it has its own deadline.
    load_deadline: Option<Instant>,
    load_total: Duration,
    cancelled: Arc<AtomicBool>,
    stages: Arc<StageTimes>,
    waiting: Option<Arc<dyn Waiting>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget").field("total", &self.total).field("load_total", &self.load_total).finish()
    }
}

/// Where a call's time went, filled in by the domain as it works (for the value-stream map),
/// and whether the workbook came from the cache.
#[derive(Debug, Default)]
pub struct StageTimes {
    /// Cache lookup and, on a miss, loading the workbook and its sheets.
    pub load_nanos: AtomicU64,
    /// Region detection and other analysis.
    pub analyze_nanos: AtomicU64,
    /// 0: no lookup, 1: cache hit, 2: cache miss.
    pub cache: AtomicU8,
    /// The workbook the call looked up in the cache (the first one), for the request log.
    key: std::sync::OnceLock<String>,
}

impl StageTimes {
    /// Note the workbook id the call looked up (the first one counts).
    pub fn set_key(&self, id: &str) {
        let _ = self.key.set(id.to_string());
    }

    /// The workbook id the call looked up, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.get().map(String::as_str)
    }

    pub fn add_load(&self, d: Duration) {
        self.load_nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn add_analyze(&self, d: Duration) {
        self.analyze_nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    /// Some(true) for a hit, Some(false) for a miss, None when no workbook was looked up.
    pub fn cache_hit(&self) -> Option<bool> {
        match self.cache.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::unlimited()
    }
}

impl Budget {
    pub fn unlimited() -> Self {
        Self {
            deadline: None,
            total: Duration::MAX,
            load_deadline: None,
            load_total: Duration::MAX,
            cancelled: Arc::new(AtomicBool::new(false)),
            stages: Arc::default(),
            waiting: None,
        }
    }

    /// Tell `w` whenever this call waits for another call's work.
    pub fn with_waiting(mut self, w: Arc<dyn Waiting>) -> Self {
        self.waiting = Some(w);
        self
    }

    /// Run `wait` (a blocking wait for another call's work) with the call's share of the server
    /// lent out meanwhile; an error if it cannot be had back within the load budget.
    pub fn while_waiting<T>(&self, wait: impl FnOnce() -> T) -> Result<T> {
        let Some(w) = &self.waiting else { return Ok(wait()) };
        w.begin();
        let r = wait();
        if w.end(self.load_deadline) { Ok(r) } else { Err(self.load_timeout_error()) }
    }

    pub fn stages(&self) -> &StageTimes {
        &self.stages
    }

    pub fn with_timeout(total: Duration) -> Self {
        Self::with_timeouts(total, total)
    }

    /// A budget whose tool work must end within `work` and whose workbook loads within `load`.
    pub fn with_timeouts(work: Duration, load: Duration) -> Self {
        let now = Instant::now();
        Self {
            deadline: now.checked_add(work),
            total: work,
            load_deadline: now.checked_add(load.max(work)),
            load_total: load.max(work),
            cancelled: Arc::new(AtomicBool::new(false)),
            stages: Arc::default(),
            waiting: None,
        }
    }

    /// A budget for work that outlives this call (a sheet loading in the background for the
    /// calls after it): the same load deadline, a cancel flag of its own, no admission hook,
    /// stage times of its own.
    pub fn detached(&self) -> Budget {
        Budget {
            deadline: self.load_deadline,
            total: self.load_total,
            load_deadline: self.load_deadline,
            load_total: self.load_total,
            cancelled: Arc::new(AtomicBool::new(false)),
            stages: Arc::default(),
            waiting: None,
        }
    }

    /// This budget without its admission hook, for helper threads of the call (only the
    /// call's own thread lends its share out).
    pub fn without_waiting(&self) -> Budget {
        Budget { waiting: None, ..self.clone() }
    }

    /// Check the load deadline (loops that read a workbook).
    pub fn check_load(&self) -> Result<()> {
        self.check_against(self.load_deadline, self.load_total)
    }

    /// Check the tool's own deadline (loops that do the tool's work).
    pub fn check(&self) -> Result<()> {
        self.check_against(self.deadline, self.total)
    }

    fn check_against(&self, deadline: Option<Instant>, total: Duration) -> Result<()> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(SheetsError::Cancelled);
        }
        match deadline {
            Some(d) if Instant::now() >= d => Err(SheetsError::Timeout { budget: total }),
            _ => Ok(()),
        }
    }

    /// Time left for the tool's own work (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Time left to wait for a load.
    pub fn load_remaining(&self) -> Option<Duration> {
        self.load_deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub fn load_timeout_error(&self) -> SheetsError {
        SheetsError::Timeout { budget: self.load_total }
    }

    /// A handle that cancels this budget's work when `cancel()` is called on it.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancelled.clone())
    }
}

#[derive(Debug, Clone)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_times_out_and_cancels() {
        let b = Budget::with_timeout(Duration::from_millis(0));
        assert!(matches!(b.check(), Err(SheetsError::Timeout { .. })));
        let b = Budget::unlimited();
        assert!(b.check().is_ok());
        b.canceller().cancel();
        assert!(matches!(b.check(), Err(SheetsError::Cancelled)));
    }

    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicI32, AtomicBool);

    impl Waiting for Counting {
        fn begin(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn end(&self, _deadline: Option<Instant>) -> bool {
            self.0.fetch_sub(1, Ordering::SeqCst);
            !self.1.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn waits_lend_the_share_out_and_take_it_back() {
        let w = Arc::new(Counting::default());
        let b = Budget::with_timeout(Duration::from_secs(5)).with_waiting(w.clone());
        let inside = b.while_waiting(|| w.0.load(Ordering::SeqCst)).unwrap();
        assert_eq!((inside, w.0.load(Ordering::SeqCst)), (1, 0), "lent during the wait, back after");
        w.1.store(true, Ordering::SeqCst);
        assert!(matches!(b.while_waiting(|| ()), Err(SheetsError::Timeout { .. })), "no share back: a timeout");
        assert_eq!(Budget::unlimited().while_waiting(|| 7).unwrap(), 7);
    }
}
