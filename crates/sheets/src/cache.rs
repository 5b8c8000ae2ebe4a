//! The workbook cache: bounded by bytes, least-recently-used out first, invalidated when the
//! file's identity (size, mtime, inode) changes, and single-flight — concurrent requests for a
//! workbook that is not loaded yet wait for one load instead of each parsing the file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;

use crate::error::{Result, SheetsError};
use crate::limits::Limits;
use crate::workbook::Workbook;
use crate::workspace::{Entry, FileIdentity};

/// Counters the measurement layer reads; plain atomics, no locks.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub invalidations: AtomicU64,
    pub loads: AtomicU64,
    pub load_nanos: AtomicU64,
}

type Slot = Arc<OnceLock<Result<Arc<Workbook>>>>;

struct CacheEntry {
    slot: Slot,
    last_used: u64,
}

pub struct WorkbookCache {
    capacity_bytes: usize,
    inner: Mutex<(HashMap<String, CacheEntry>, u64)>,
    pub stats: CacheStats,
}

/// What `get` did, for the caller's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
}

impl WorkbookCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            inner: Mutex::new((HashMap::new(), 0)),
            stats: CacheStats::default(),
        }
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// The workbook for `entry`, loading it if absent or changed on disk.
    pub fn get(&self, entry: &Entry, limits: &Limits) -> Result<(Arc<Workbook>, Lookup)> {
        let identity = FileIdentity::of(&entry.abs_path).map_err(|e| SheetsError::UnknownWorkbook {
            query: entry.id.clone(),
            suggestion: format!(" ('{}' cannot be read: {e})", entry.rel_path),
        })?;
        let slot = {
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
            let e = g.0.entry(entry.id.clone()).or_insert_with(|| CacheEntry {
                slot: Arc::new(OnceLock::new()),
                last_used: tick,
            });
            e.last_used = tick;
            e.slot.clone()
        };
        let mut loaded_here = false;
        let result = slot
            .get_or_init(|| {
                loaded_here = true;
                let t = Instant::now();
                let r = Workbook::open(entry.clone(), identity.clone(), limits).map(Arc::new);
                self.stats.loads.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .load_nanos
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                r
            })
            .clone();
        if loaded_here {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(wb) => {
                if loaded_here {
                    self.enforce(&entry.id);
                }
                Ok((wb, if loaded_here { Lookup::Miss } else { Lookup::Hit }))
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
        g.0.values()
            .filter_map(|e| e.slot.get().and_then(|r| r.as_ref().ok()))
            .map(|w| w.bytes())
            .sum()
    }

    pub fn entries(&self) -> usize {
        self.inner.lock().0.len()
    }

    /// Evict least-recently-used workbooks until the total fits, never evicting `keep`.
    pub fn enforce(&self, keep: &str) {
        let mut g = self.inner.lock();
        loop {
            let total: usize = g
                .0
                .values()
                .filter_map(|e| e.slot.get().and_then(|r| r.as_ref().ok()))
                .map(|w| w.bytes())
                .sum();
            if total <= self.capacity_bytes {
                return;
            }
            let victim = g
                .0
                .iter()
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
