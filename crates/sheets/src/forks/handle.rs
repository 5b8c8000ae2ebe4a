//! A fork as the store holds it: the fork behind its lock, and beside it what must be
//! reachable without that lock — a summary for `list_forks` (refreshed whenever a holder of
//! the lock lets go), whether a recalculation is running and how to cancel it, and whether
//! the fork was discarded.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use super::fork::Fork;
use super::persist::SourceIdentity;
use crate::error::{Result, SheetsError};
use crate::limits::{Budget, Canceller};

/// What `list_forks` shows of a fork, readable without the fork's lock.
#[derive(Debug, Clone)]
pub struct ForkSummary {
    pub fork_id: String,
    pub workbook_id: String,
    pub source_path: String,
    /// The original file's identity when the fork was made (or last saved over it).
    pub source: SourceIdentity,
    pub label: Option<String>,
    pub created_unix: u64,
    pub cells_edited: usize,
    pub cells_styled: usize,
    pub checkpoints: usize,
    pub staged: Vec<String>,
    pub needs_recalc: bool,
    /// Why the fork's log is damaged (lines skipped on load), if it is.
    pub damaged: Option<String>,
    /// What the summary was built from (cheap to compare: no rebuild when nothing changed).
    signature: Signature,
}

type Signature = (u64, usize, u64, u32, usize, usize, bool);

fn signature(f: &Fork) -> Signature {
    (
        f.version(),
        f.style_count(),
        f.meta.seq,
        f.meta.epoch,
        f.meta.checkpoints.len(),
        f.meta.staged.len(),
        f.is_stale(),
    )
}

impl ForkSummary {
    fn of(f: &Fork) -> Self {
        Self {
            fork_id: f.meta.id.clone(),
            workbook_id: f.meta.workbook_id.clone(),
            source_path: f.meta.source_path.clone(),
            source: f.meta.source.clone(),
            label: f.meta.label.clone(),
            created_unix: f.meta.created_unix,
            cells_edited: f.cells_edited(),
            cells_styled: f.cells_styled(),
            checkpoints: f.meta.checkpoints.len(),
            staged: f.meta.staged.iter().map(|s| s.id.clone()).collect(),
            needs_recalc: f.is_stale(),
            damaged: f.damage().map(str::to_string),
            signature: signature(f),
        }
    }
}

#[derive(Default)]
struct Control {
    discarded: bool,
    /// Cancels the running recalculation's call.
    running: Option<Canceller>,
}

pub struct ForkCell {
    fork: Mutex<Fork>,
    summary: Mutex<Arc<ForkSummary>>,
    /// One recalculation of a fork at a time.
    recalc_turn: Mutex<()>,
    control: Mutex<Control>,
}

/// The fork, locked; letting go refreshes the listing summary.
pub struct ForkGuard<'a> {
    cell: &'a ForkCell,
    fork: MutexGuard<'a, Fork>,
}

impl std::ops::Deref for ForkGuard<'_> {
    type Target = Fork;
    fn deref(&self) -> &Fork {
        &self.fork
    }
}

impl std::ops::DerefMut for ForkGuard<'_> {
    fn deref_mut(&mut self) -> &mut Fork {
        &mut self.fork
    }
}

impl Drop for ForkGuard<'_> {
    fn drop(&mut self) {
        let mut summary = self.cell.summary.lock();
        if summary.signature != signature(&self.fork) || summary.source != self.fork.meta.source {
            *summary = Arc::new(ForkSummary::of(&self.fork));
        }
    }
}

/// The running recalculation's registration; dropping it unregisters.
pub struct Running<'a>(&'a ForkCell);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.control.lock().running = None;
    }
}

impl ForkCell {
    pub fn new(fork: Fork) -> Self {
        let summary = Mutex::new(Arc::new(ForkSummary::of(&fork)));
        Self { fork: Mutex::new(fork), summary, recalc_turn: Mutex::new(()), control: Mutex::default() }
    }

    /// The fork, waiting for whoever holds it.
    pub fn lock(&self) -> ForkGuard<'_> {
        ForkGuard { cell: self, fork: self.fork.lock() }
    }

    /// The fork, if it can be had within `wait`.
    pub fn try_lock_for(&self, wait: Duration) -> Option<ForkGuard<'_>> {
        self.fork.try_lock_for(wait).map(|fork| ForkGuard { cell: self, fork })
    }

    /// The listing summary as of the last time the fork's lock was let go.
    pub fn summary(&self) -> Arc<ForkSummary> {
        self.summary.lock().clone()
    }

    pub fn recalculating(&self) -> bool {
        self.control.lock().running.is_some()
    }

    pub fn is_discarded(&self) -> bool {
        self.control.lock().discarded
    }

    /// Mark the fork discarded and cancel its running recalculation (a LibreOffice process
    /// group is killed, an in-process evaluation abandoned).
    pub fn discard(&self) {
        let mut c = self.control.lock();
        c.discarded = true;
        if let Some(r) = c.running.take() {
            r.cancel();
        }
    }

    /// Wait (within the budget) until no other recalculation of this fork runs.
    pub fn recalc_turn(&self, budget: &Budget) -> Result<MutexGuard<'_, ()>> {
        loop {
            if let Some(g) = self.recalc_turn.try_lock_for(Duration::from_millis(50)) {
                return Ok(g);
            }
            budget.check()?;
        }
    }

    /// Register the call running a recalculation, so that discarding the fork cancels it.
    pub fn register(&self, budget: &Budget) -> Result<Running<'_>> {
        let mut c = self.control.lock();
        if c.discarded {
            return Err(discarded_error(&self.summary().fork_id));
        }
        c.running = Some(budget.canceller());
        Ok(Running(self))
    }
}

/// The error a recalculation gets when its fork is discarded under it.
pub fn discarded_error(id: &str) -> SheetsError {
    SheetsError::invalid(
        "fork_id",
        format!("fork '{id}' was discarded while it was being recalculated; nothing was committed"),
    )
}
