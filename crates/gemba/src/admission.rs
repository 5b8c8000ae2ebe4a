//! Admission control: at most `max_inflight` tool calls do work at once; a call waits up to
//! `queue_wait` for a slot, at most `max_queued` wait, and the rest are refused at once with a
//! clear error, so a flood gets quick refusals instead of slow death.
//!
//! Two refinements keep loads from starving everything else:
//! - a call that waits for another call's load (a workbook or sheet being read) lends its slot
//!   out while it waits (`sheets::Waiting`): waiting is not CPU work;
//! - calls that never load a workbook (listing workbooks, forks or checkpoints, discarding) have
//!   a pool of their own, so they are never refused because loads hold every slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How much work the server takes on.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub max_inflight: usize,
    pub queue_wait: Duration,
    /// Calls that may wait for a slot at once; past it a call is refused without waiting.
    pub max_queued: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Self { max_inflight: 8, queue_wait: Duration::from_millis(250), max_queued: 32 }
    }
}

/// Tools that never load a workbook: they run in their own pool.
pub const NO_LOAD_TOOLS: [&str; 5] =
    ["list_workbooks", "list_forks", "list_checkpoints", "discard_fork", "discard_staged_change"];

struct Pool {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Pool {
    fn new(n: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(n.max(1))), waiting: AtomicUsize::new(0) }
    }
}

pub struct Gate {
    pub config: Admission,
    work: Pool,
    light: Pool,
    refused: AtomicU64,
}

impl Gate {
    pub fn new(config: Admission) -> Self {
        Self {
            work: Pool::new(config.max_inflight),
            light: Pool::new(config.max_inflight),
            config,
            refused: AtomicU64::new(0),
        }
    }

    /// Calls refused for capacity so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Calls waiting for a slot now (both pools).
    pub fn queued(&self) -> usize {
        self.work.waiting.load(Ordering::Relaxed) + self.light.waiting.load(Ordering::Relaxed)
    }

    /// Work slots free now.
    pub fn free(&self) -> usize {
        self.work.slots.available_permits()
    }

    /// A slot for `tool`, or why the call is refused.
    pub async fn admit(&self, tool: &str) -> Result<Ticket, String> {
        let pool = if NO_LOAD_TOOLS.contains(&tool) { &self.light } else { &self.work };
        let adm = self.config;
        let permit = match pool.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // A bounded queue: past it, refuse at once rather than let waiters pile up.
                if pool.waiting.fetch_add(1, Ordering::AcqRel) >= adm.max_queued {
                    pool.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(self.refuse(format!("{} more waiting", adm.max_queued)));
                }
                let got = tokio::time::timeout(adm.queue_wait, pool.slots.clone().acquire_owned()).await;
                pool.waiting.fetch_sub(1, Ordering::AcqRel);
                match got {
                    Ok(Ok(p)) => p,
                    _ => return Err(self.refuse(format!("none finished within {} ms", adm.queue_wait.as_millis()))),
                }
            }
        };
        Ok(Ticket {
            permit: Mutex::new(Some(permit)),
            slots: pool.slots.clone(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn refuse(&self, why: String) -> String {
        self.refused.fetch_add(1, Ordering::Relaxed);
        format!(
            "the server is at capacity ({} calls running, {why}); retry after a short pause",
            self.config.max_inflight
        )
    }
}

/// An admitted call's slot. It goes with the work (held until the work really ends, even past
/// a timeout) and is lent out while the call waits for another call's load.
pub struct Ticket {
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    slots: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
}

impl sheets::Waiting for Ticket {
    fn begin(&self) {
        // Dropping the permit gives the slot back to the pool.
        self.permit.lock().take();
    }

    fn end(&self, deadline: Option<Instant>) -> bool {
        let acquire = self.slots.clone().acquire_owned();
        // Called on a blocking-pool thread (the tool's), never on the async runtime itself.
        let got = match deadline {
            Some(d) => self.runtime.block_on(tokio::time::timeout_at(d.into(), acquire)).ok().and_then(Result::ok),
            None => self.runtime.block_on(acquire).ok(),
        };
        match got {
            Some(p) => {
                *self.permit.lock() = Some(p);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use sheets::Waiting;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_call_lends_its_slot_and_listing_has_its_own_pool() {
        let gate =
            Arc::new(Gate::new(Admission { max_inflight: 1, queue_wait: Duration::from_millis(50), max_queued: 4 }));
        let ticket = gate.admit("read_table").await.expect("the one slot");
        assert_eq!(gate.free(), 0);
        assert!(gate.admit("sheet_page").await.is_err(), "refused: the slot is busy");
        assert!(gate.admit("list_workbooks").await.is_ok(), "listing never waits for loads");
        // The call waits for another's load: its slot is free meanwhile.
        let t = Arc::new(ticket);
        let t2 = t.clone();
        tokio::task::spawn_blocking(move || t2.begin()).await.unwrap();
        assert_eq!(gate.free(), 1);
        let other = gate.admit("sheet_page").await.expect("the lent slot");
        // It wants its slot back: it waits until the other call is done.
        let t3 = t.clone();
        let back = tokio::task::spawn_blocking(move || t3.end(Some(Instant::now() + Duration::from_secs(5))));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(other);
        assert!(back.await.unwrap());
        assert_eq!(gate.free(), 0);
        assert_eq!(gate.refused(), 1);
    }
}
