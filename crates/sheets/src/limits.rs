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
    /// Read workbooks fresh from their files instead of the cache (a per-call load strategy).
    bypass_cache: bool,
    /// Who watches this call's progress and notices (none unless the embedder asked).
    observer: Option<Arc<Observer>>,
    /// The call runs on a thread that must not block (see [`Budget::inline`]).
    inline: bool,
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
    /// The heavy steps the call took (recalculations, LibreOffice runs, saves), in the order
    /// they ended; at most [`MAX_PHASES`](crate::phase::MAX_PHASES).
    phases: parking_lot::Mutex<Vec<crate::phase::Phase>>,
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
    /// Note a heavy step the call took (dropped past [`MAX_PHASES`](crate::phase::MAX_PHASES)).
    pub fn record_phase(&self, phase: crate::phase::Phase) {
        let mut v = self.phases.lock();
        if v.len() < crate::phase::MAX_PHASES {
            v.push(phase);
        }
    }

    /// The heavy steps noted so far, taken out (the embedder reads them once the call ended).
    pub fn take_phases(&self) -> Vec<crate::phase::Phase> {
        std::mem::take(&mut *self.phases.lock())
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
            bypass_cache: false,
            observer: None,
            inline: false,
        }
    }

    /// This budget for a call run inline on a thread that must not block (an async runtime's
    /// worker): anything that would load a workbook or sheet, or wait for another call's load,
    /// fails with [`SheetsError::WouldBlock`] instead of doing it, and the embedder runs the
    /// call again on a thread that may block. Only warm reads of bounded size should run so.
    pub fn inline(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Whether the call runs inline (it must not load or wait).
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// Tell `w` whenever this call waits for another call's work.
    pub fn with_waiting(mut self, w: Arc<dyn Waiting>) -> Self {
        self.waiting = Some(w);
        self
    }

    /// Run `wait` (a blocking wait for another call's work) with the call's share of the server
    /// lent out meanwhile; an error if it cannot be had back within the load budget.
    pub fn while_waiting<T>(&self, wait: impl FnOnce() -> T) -> Result<T> {
        if self.inline {
            return Err(SheetsError::WouldBlock);
        }
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
            bypass_cache: false,
            observer: None,
            inline: false,
        }
    }

    /// This budget with `observer` watching the call: long stages report their progress to
    /// it and the domain leaves notices in it (see [`Observer`]).
    pub fn observed_by(mut self, observer: Arc<Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The call's observer, when someone watches it (clone it into a helper thread).
    pub fn observer(&self) -> Option<&Arc<Observer>> {
        self.observer.as_ref()
    }

    /// Start a stage of `total` units (`unit`: "bytes inflated", "steps"...); a no-op unless
    /// the call is observed.
    pub fn progress_begin(&self, what: impl FnOnce() -> String, unit: &'static str, total: u64) {
        if let Some(o) = self.observer.as_ref().filter(|o| o.wants_progress()) {
            o.begin(what(), unit, total);
        }
    }

    /// Start a stage unless one is still running (a load inside a save is part of the save's
    /// own step); whether it started, so the caller reports only its own stage.
    pub fn progress_begin_if_idle(&self, what: impl FnOnce() -> String, unit: &'static str, total: u64) -> bool {
        match self.observer.as_ref().filter(|o| o.wants_progress()) {
            Some(o) => o.begin_if_idle(what(), unit, total),
            None => false,
        }
    }

    /// `done` units of the current stage are finished.
    pub fn progress(&self, done: u64) {
        if let Some(o) = &self.observer {
            o.advance(done);
        }
    }

    /// Tell the caller something it should know besides the result; a no-op unless observed.
    pub fn notice(&self, level: NoticeLevel, topic: &'static str, message: impl FnOnce() -> String) {
        if let Some(o) = &self.observer {
            o.notice(level, topic, message());
        }
    }

    /// Read workbooks for this call fresh from their files, neither using nor filling the cache
    /// (fork views are in memory and unaffected). Slower, and never stale by a second: a load
    /// strategy the embedder may choose per call.
    pub fn with_cache_bypass(mut self, bypass: bool) -> Self {
        self.bypass_cache = bypass;
        self
    }

    /// Whether this call reads workbooks fresh from their files.
    pub fn bypasses_cache(&self) -> bool {
        self.bypass_cache
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
            observer: None,
            bypass_cache: false,
            inline: false,
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

    /// Whether the caller withdrew the call (as opposed to running out of time).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
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

/// How much a notice matters (the embedder maps it to its own log levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoticeLevel {
    Info,
    Notice,
    Warning,
    Error,
}

/// Something the caller of a tool should hear about besides its result: a limit hit, a
/// fallback taken, a file changed under a fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub level: NoticeLevel,
    /// What the notice is about ("limits", "recalc", "forks"...).
    pub topic: &'static str,
    pub message: String,
}

/// Most notices one call keeps; later ones are counted, not kept.
pub const MAX_NOTICES: usize = 16;

/// Watches one call: long stages (loading by bytes inflated, recalculation, save, structure
/// edits) write how far they have got, and the domain leaves notices. Writers only set plain
/// fields under a short lock; whoever reports progress reads a snapshot when it wants one, so
/// a hot loop never calls out into the embedder.
#[derive(Debug, Default)]
pub struct Observer {
    /// Whether anyone reads the progress (a client asked for it); notices are always kept.
    progress_wanted: bool,
    progress: parking_lot::Mutex<ProgressState>,
    notices: parking_lot::Mutex<(Vec<Notice>, usize)>,
}

#[derive(Debug, Default)]
struct ProgressState {
    /// Units of the stages already over, so progress only grows across stages.
    base: u64,
    done: u64,
    total: u64,
    what: String,
    unit: &'static str,
    started: bool,
}

/// Progress so far, summed over the call's stages: `progress` never decreases.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressSnapshot {
    pub progress: u64,
    pub total: u64,
    /// What is happening now, e.g. "loading sheet 'Sales' of sales.xlsx: 12 of 40 MB inflated".
    pub message: String,
}

impl Observer {
    /// An observer that keeps notices, and progress too when `progress` (someone reads it).
    pub fn new(progress: bool) -> Self {
        Self { progress_wanted: progress, ..Self::default() }
    }

    /// Whether progress is read: stages that cost something to measure check this first.
    pub fn wants_progress(&self) -> bool {
        self.progress_wanted
    }

    /// A new stage of `total` units; the previous stage counts as finished.
    pub fn begin(&self, what: String, unit: &'static str, total: u64) {
        if !self.progress_wanted {
            return;
        }
        let mut p = self.progress.lock();
        if p.started {
            p.base += p.total.max(p.done);
        }
        p.started = true;
        p.done = 0;
        p.total = total;
        p.what = what;
        p.unit = unit;
    }

    /// Begin a stage only when none is running (none began yet, or the last one is finished).
    pub fn begin_if_idle(&self, what: String, unit: &'static str, total: u64) -> bool {
        {
            let p = self.progress.lock();
            if !self.progress_wanted || (p.started && p.done < p.total) {
                return false;
            }
        }
        self.begin(what, unit, total);
        true
    }

    /// `done` units of the current stage are finished (never goes back, never past the total).
    pub fn advance(&self, done: u64) {
        if !self.progress_wanted {
            return;
        }
        let mut p = self.progress.lock();
        p.done = p.done.max(done.min(p.total));
    }

    /// Where the call is, or `None` before any stage began.
    pub fn snapshot(&self) -> Option<ProgressSnapshot> {
        let p = self.progress.lock();
        if !p.started {
            return None;
        }
        let amount = |n: u64| match p.unit.starts_with("bytes") {
            true if p.total >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
            true => format!("{:.1} KB", n as f64 / 1e3),
            false => n.to_string(),
        };
        let unit = p.unit.strip_prefix("bytes").map(str::trim).unwrap_or(p.unit);
        Some(ProgressSnapshot {
            progress: p.base + p.done,
            total: p.base + p.total,
            message: format!("{}: {} of {} {unit}", p.what, amount(p.done), amount(p.total)).trim_end().to_string(),
        })
    }

    /// Leave a notice for the caller (at most [`MAX_NOTICES`] are kept).
    pub fn notice(&self, level: NoticeLevel, topic: &'static str, message: String) {
        let mut n = self.notices.lock();
        if n.0.len() < MAX_NOTICES {
            n.0.push(Notice { level, topic, message });
        } else {
            n.1 += 1;
        }
    }

    /// The notices left so far (emptied), and how many more were not kept.
    pub fn take_notices(&self) -> (Vec<Notice>, usize) {
        std::mem::take(&mut *self.notices.lock())
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

    #[test]
    fn progress_grows_across_stages_and_is_clamped() {
        let b = Budget::unlimited();
        // Unobserved: reporting is a no-op.
        b.progress_begin(|| unreachable!("not observed, so never formatted"), "steps", 3);
        // Observed for notices only: progress is not kept.
        let quiet = Arc::new(Observer::new(false));
        let q = Budget::unlimited().observed_by(quiet.clone());
        q.progress_begin(|| unreachable!("progress not wanted, so never formatted"), "steps", 3);
        q.progress(2);
        assert_eq!(quiet.snapshot(), None);
        let o = Arc::new(Observer::new(true));
        let b = b.observed_by(o.clone());
        assert_eq!(o.snapshot(), None);
        b.progress_begin(|| "loading sheet 'S'".into(), "bytes inflated", 2_000_000);
        b.progress(500_000);
        let s = o.snapshot().unwrap();
        assert_eq!((s.progress, s.total), (500_000, 2_000_000));
        assert_eq!(s.message, "loading sheet 'S': 0.5 MB of 2.0 MB inflated");
        b.progress(100); // never goes back
        b.progress(9_000_000); // never past the total
        assert_eq!(o.snapshot().unwrap().progress, 2_000_000);
        b.progress_begin(|| "recalculating".into(), "steps", 4);
        b.progress(1);
        let s = o.snapshot().unwrap();
        assert_eq!((s.progress, s.total), (2_000_001, 2_000_004));
        assert_eq!(s.message, "recalculating: 1 of 4 steps");
        // A load inside a running stage does not replace it...
        assert!(!b.progress_begin_if_idle(|| "loading".into(), "bytes inflated", 10));
        assert_eq!(o.snapshot().unwrap().message, "recalculating: 1 of 4 steps");
        // ...but once it is over, the next load is a stage of its own.
        b.progress(4);
        assert!(b.progress_begin_if_idle(|| "loading sheet 'T'".into(), "bytes inflated", 2_000));
        assert_eq!(o.snapshot().unwrap().message, "loading sheet 'T': 0.0 KB of 2.0 KB inflated");
    }

    #[test]
    fn notices_are_bounded() {
        let o = Arc::new(Observer::new(false));
        let b = Budget::unlimited().observed_by(o.clone());
        for i in 0..MAX_NOTICES + 3 {
            b.notice(NoticeLevel::Warning, "limits", || format!("n{i}"));
        }
        let (kept, more) = o.take_notices();
        assert_eq!(kept.len(), MAX_NOTICES);
        assert_eq!(kept[0].message, "n0");
        assert_eq!(more, 3);
        assert_eq!(o.take_notices(), (Vec::new(), 0));
    }
}
