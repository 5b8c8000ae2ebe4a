//! The workbook cache: bounded by bytes, least-recently-used out first, invalidated when the
//! file's identity (size, mtime, inode) changes, and single-flight — concurrent requests for a
//! workbook that is not loaded yet wait for one load instead of each parsing the file.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Result, SheetsError};
use crate::limits::{Budget, Limits};
use crate::workbook::Workbook;
use crate::workspace::{Entry, FileIdentity};

/// Counters the measurement layer reads; plain atomics, no locks.
#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub invalidations: AtomicU64,
    pub loads: AtomicU64,
    pub load_nanos: AtomicU64,
    pub load_failures: AtomicU64,
    pub sheets_loaded: AtomicU64,
    pub cells_loaded: AtomicU64,
    /// Called with each workbook load's duration (the measurement layer hooks in here).
    pub load_observer: std::sync::OnceLock<Box<dyn Fn(Duration) + Send + Sync>>,
}

impl std::fmt::Debug for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStats").field("hits", &self.hits).field("misses", &self.misses).finish()
    }
}

/// One cached workbook, for the measurement layer.
#[derive(Debug, Clone)]
pub struct EntryStat {
    pub id: String,
    pub bytes: usize,
    pub age: Duration,
    pub accesses: u64,
}

/// One workbook's place in the cache: empty while its single load runs, then the result.
/// Waiters block on the condvar up to their own deadline, never forever: a reader stuck on a
/// hostile file cannot pile up requests behind it.
struct SlotInner {
    state: Mutex<Option<Result<Arc<Workbook>>>>,
    ready: Condvar,
    started: Instant,
}

type Slot = Arc<SlotInner>;

impl SlotInner {
    fn new() -> Self {
        Self { state: Mutex::new(None), ready: Condvar::new(), started: Instant::now() }
    }
    fn get(&self) -> Option<Result<Arc<Workbook>>> {
        self.state.lock().clone()
    }
    fn loaded(&self) -> Option<Arc<Workbook>> {
        self.state.lock().as_ref().and_then(|r| r.as_ref().ok()).cloned()
    }
}

/// A load running longer than this is treated as stuck: later callers fail fast.
const STUCK_AFTER: Duration = Duration::from_secs(120);

struct CacheEntry {
    slot: Slot,
    last_used: u64,
    accesses: u64,
    created: Instant,
}

pub struct WorkbookCache {
    capacity_bytes: usize,
    inner: Mutex<(HashMap<String, CacheEntry>, u64)>,
    pub stats: Arc<CacheStats>,
}

/// What `get` did, for the caller's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
}

impl WorkbookCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self { capacity_bytes, inner: Mutex::new((HashMap::new(), 0)), stats: Arc::new(CacheStats::default()) }
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// The workbook for `entry`, loading it if absent or changed on disk. Concurrent callers
    /// share one load; each waits at most until its own budget runs out.
    pub fn get(&self, entry: &Entry, limits: &Limits, budget: &Budget) -> Result<(Arc<Workbook>, Lookup)> {
        let identity = FileIdentity::of(&entry.abs_path).map_err(|e| SheetsError::UnknownWorkbook {
            query: entry.id.clone(),
            suggestion: format!(" ('{}' cannot be read: {e})", entry.rel_path),
        })?;
        let (slot, owner) = {
            let mut g = self.inner.lock();
            g.1 += 1;
            let tick = g.1;
            let stale = g.0.get(&entry.id).and_then(|e| e.slot.get()).is_some_and(|r| match r {
                Ok(wb) => wb.identity != identity,
                Err(_) => true,
            });
            if stale {
                g.0.remove(&entry.id);
                self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
            }
            let mut owner = false;
            let e = g.0.entry(entry.id.clone()).or_insert_with(|| {
                owner = true;
                CacheEntry { slot: Arc::new(SlotInner::new()), last_used: tick, accesses: 0, created: Instant::now() }
            });
            e.last_used = tick;
            e.accesses += 1;
            (e.slot.clone(), owner)
        };
        let result = if owner {
            let t = Instant::now();
            let r = Workbook::open(entry.clone(), identity.clone(), limits, self.stats.clone()).map(Arc::new);
            let took = t.elapsed();
            self.stats.loads.fetch_add(1, Ordering::Relaxed);
            self.stats.load_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            if r.is_err() {
                self.stats.load_failures.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(observe) = self.stats.load_observer.get() {
                observe(took);
            }
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            *slot.state.lock() = Some(r.clone());
            slot.ready.notify_all();
            r
        } else {
            let mut state = slot.state.lock();
            loop {
                if let Some(r) = state.as_ref() {
                    break r.clone();
                }
                if slot.started.elapsed() > STUCK_AFTER {
                    return Err(SheetsError::LimitExceeded {
                        workbook_id: entry.id.clone(),
                        detail: format!(
                            "loading has run for over {}s and looks stuck (a malformed file?); it is refused until the file changes",
                            STUCK_AFTER.as_secs()
                        ),
                    });
                }
                let wait = budget.load_remaining().unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
                if wait.is_zero() {
                    return Err(budget.load_timeout_error());
                }
                slot.ready.wait_for(&mut state, wait);
            }
        };
        match result {
            Ok(wb) => {
                if owner {
                    self.enforce(&entry.id);
                } else {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                }
                Ok((wb, if owner { Lookup::Miss } else { Lookup::Hit }))
            }
            Err(e) => {
                // Failed loads are not kept: the next call retries (the file may be fixed).
                let mut g = self.inner.lock();
                if g.0.get(&entry.id).is_some_and(|c| Arc::ptr_eq(&c.slot, &slot)) {
                    g.0.remove(&entry.id);
                }
                Err(e)
            }
        }
    }

    /// Total bytes held by loaded workbooks.
    pub fn bytes(&self) -> usize {
        let g = self.inner.lock();
        g.0.values().filter_map(|e| e.slot.loaded()).map(|w| w.bytes()).sum()
    }

    pub fn entries(&self) -> usize {
        self.inner.lock().0.len()
    }

    /// Loaded entries with their size, age and access count.
    pub fn entry_stats(&self) -> Vec<EntryStat> {
        let g = self.inner.lock();
        g.0.iter()
            .filter_map(|(id, e)| {
                e.slot.loaded().map(|w| EntryStat {
                    id: id.clone(),
                    bytes: w.bytes(),
                    age: e.created.elapsed(),
                    accesses: e.accesses,
                })
            })
            .collect()
    }

    /// Evict least-recently-used workbooks until the total fits, never evicting `keep`.
    pub fn enforce(&self, keep: &str) {
        let mut g = self.inner.lock();
        loop {
            let total: usize = g.0.values().filter_map(|e| e.slot.loaded()).map(|w| w.bytes()).sum();
            if total <= self.capacity_bytes {
                return;
            }
            let victim =
                g.0.iter()
                    .filter(|(k, e)| k.as_str() != keep && e.slot.get().is_some())
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    g.0.remove(&k);
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => return,
            }
        }
    }

    pub fn clear(&self) {
        self.inner.lock().0.clear();
    }
}
