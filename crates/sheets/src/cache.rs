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
    /// The file as it was when this load began: a changed file gets a new slot.
    identity: FileIdentity,
}

type Slot = Arc<SlotInner>;

impl SlotInner {
    fn new(identity: FileIdentity) -> Self {
        Self { state: Mutex::new(None), ready: Condvar::new(), started: Instant::now(), identity }
    }
    fn get(&self) -> Option<Result<Arc<Workbook>>> {
        self.state.lock().clone()
    }
    fn loaded(&self) -> Option<Arc<Workbook>> {
        self.state.lock().as_ref().and_then(|r| r.as_ref().ok()).cloned()
    }
    fn fill(&self, r: Result<Arc<Workbook>>) {
        *self.state.lock() = Some(r);
        self.ready.notify_all();
    }
}

/// Fills the slot with an error if the load unwinds (a panic in a reader), so the callers
/// waiting on it are answered at once instead of waiting until they give up.
struct FillOnUnwind<'a> {
    slot: &'a SlotInner,
    id: &'a str,
    done: bool,
}

impl Drop for FillOnUnwind<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.slot.fill(Err(SheetsError::Internal(format!("loading workbook '{}' failed unexpectedly", self.id))));
        }
    }
}

/// A load running longer than this is treated as stuck: later callers fail fast.
const STUCK_AFTER: Duration = Duration::from_secs(120);
/// A failed load is retried after this, doubling with each failure up to `RETRY_MAX`; a
/// changed file is retried at once.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

struct CacheEntry {
    slot: Slot,
    last_used: u64,
    accesses: u64,
    created: Instant,
    /// Loads of this file (this identity) that failed in a row.
    failures: u32,
}

impl CacheEntry {
    fn new(identity: FileIdentity, tick: u64, failures: u32) -> Self {
        Self {
            slot: Arc::new(SlotInner::new(identity)),
            last_used: tick,
            accesses: 0,
            created: Instant::now(),
            failures,
        }
    }
}

pub struct WorkbookCache {
    capacity_bytes: usize,
    inner: Mutex<(HashMap<String, CacheEntry>, u64)>,
    pub stats: Arc<CacheStats>,
    retry_first: Duration,
    loader: Loader,
}

/// How a workbook is read from its file (`Workbook::open`; tests put stand-ins here).
type Loader = fn(Entry, FileIdentity, &Limits, Arc<CacheStats>) -> Result<Workbook>;

/// What `get` did, for the caller's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
}

/// What to do with the entry found for a workbook.
enum Found {
    /// Use it (loaded, loading, or a failure still inside its back-off).
    Keep,
    /// Start again (the file changed, the load is stuck or its back-off is over), carrying
    /// this many failures into the new attempt.
    Replace(u32),
}

fn backoff(failures: u32, first: Duration) -> Duration {
    first.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(RETRY_MAX)
}

impl WorkbookCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            inner: Mutex::new((HashMap::new(), 0)),
            stats: Arc::new(CacheStats::default()),
            retry_first: RETRY_FIRST,
            loader: Workbook::open,
        }
    }

    #[cfg(test)]
    fn with_loader(capacity_bytes: usize, loader: Loader, retry_first: Duration) -> Self {
        Self { loader, retry_first, ..Self::new(capacity_bytes) }
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    fn judge(&self, e: &CacheEntry, identity: &FileIdentity) -> Found {
        match e.slot.get() {
            Some(Ok(wb)) if wb.identity == *identity && !wb.changed_on_disk() => Found::Keep,
            Some(Ok(_)) => Found::Replace(0),
            Some(Err(_)) if e.slot.identity != *identity => Found::Replace(0),
            Some(Err(_)) if e.slot.started.elapsed() >= backoff(e.failures, self.retry_first) => {
                Found::Replace(e.failures)
            }
            Some(Err(_)) => Found::Keep,
            None if e.slot.identity != *identity => Found::Replace(0),
            None if e.slot.started.elapsed() > STUCK_AFTER + backoff(e.failures + 1, self.retry_first) => {
                Found::Replace(e.failures + 1)
            }
            None => Found::Keep,
        }
    }

    /// The workbook for `entry`, loading it if absent or changed on disk. Concurrent callers
    /// share one load; each waits at most until its own budget runs out (and lends its share of
    /// the server out while it waits). A failed load is kept for a back-off (2 s, doubling to
    /// 5 min) so a bad file is not parsed on every call; a changed file is tried again at once.
    pub fn get(&self, entry: &Entry, limits: &Limits, budget: &Budget) -> Result<(Arc<Workbook>, Lookup)> {
        let identity = FileIdentity::of(&entry.abs_path).map_err(|e| SheetsError::UnknownWorkbook {
            query: entry.id.clone(),
            suggestion: format!(" ('{}' cannot be read: {e})", entry.rel_path),
        })?;
        if budget.is_inline() {
            return self.get_warm(entry, &identity);
        }
        let (slot, owner) = {
            let mut g = self.inner.lock();
            g.1 += 1;
            let tick = g.1;
            let found = g.0.get(&entry.id).map(|e| self.judge(e, &identity));
            if let Some(Found::Replace(failures)) = found {
                if failures == 0 {
                    self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                }
                g.0.insert(entry.id.clone(), CacheEntry::new(identity.clone(), tick, failures));
            }
            let mut owner = !matches!(found, Some(Found::Keep));
            let e = g.0.entry(entry.id.clone()).or_insert_with(|| {
                owner = true;
                CacheEntry::new(identity.clone(), tick, 0)
            });
            e.last_used = tick;
            e.accesses += 1;
            (e.slot.clone(), owner)
        };
        let result = if owner {
            let mut guard = FillOnUnwind { slot: &slot, id: &entry.id, done: false };
            let t = Instant::now();
            let r = (self.loader)(entry.clone(), identity.clone(), limits, self.stats.clone()).map(Arc::new);
            let took = t.elapsed();
            self.stats.loads.fetch_add(1, Ordering::Relaxed);
            self.stats.load_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            if r.is_err() {
                self.stats.load_failures.fetch_add(1, Ordering::Relaxed);
                let mut g = self.inner.lock();
                if let Some(e) = g.0.get_mut(&entry.id).filter(|e| Arc::ptr_eq(&e.slot, &slot)) {
                    e.failures += 1;
                }
            }
            if let Some(observe) = self.stats.load_observer.get() {
                observe(took);
            }
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            slot.fill(r.clone());
            guard.done = true;
            r
        } else {
            match slot.get() {
                Some(r) => r,
                None => budget.while_waiting(|| self.wait(&slot, entry, budget))??,
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
            Err(e) => Err(e),
        }
    }

    /// The workbook for `entry` when it is in the cache, loaded and current (or its load failed
    /// recently and the failure is kept); [`SheetsError::WouldBlock`] when getting it would
    /// mean loading it or waiting for a load. Claims nothing: the cache is left as it was but
    /// for the entry's recency. For calls run where they must not block.
    fn get_warm(&self, entry: &Entry, identity: &FileIdentity) -> Result<(Arc<Workbook>, Lookup)> {
        let mut g = self.inner.lock();
        g.1 += 1;
        let tick = g.1;
        let found = match g.0.get_mut(&entry.id) {
            Some(e) if matches!(self.judge(e, identity), Found::Keep) => e,
            _ => return Err(SheetsError::WouldBlock),
        };
        let r = found.slot.get().ok_or(SheetsError::WouldBlock)?;
        found.last_used = tick;
        found.accesses += 1;
        drop(g);
        let wb = r?;
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Ok((wb, Lookup::Hit))
    }

    /// The workbook `id` when it is loaded in the cache now, without checking its file (for a
    /// quick look at what a call would find; the call itself checks).
    pub fn peek(&self, id: &str) -> Option<Arc<Workbook>> {
        let slot = self.inner.lock().0.get(id).map(|e| e.slot.clone());
        slot.and_then(|s| s.loaded())
    }

    /// The workbook for `entry` read fresh from its file, outside the cache (neither found in
    /// nor added to it): for calls whose budget bypasses the cache. Counted as a load.
    pub fn load_uncached(&self, entry: &Entry, limits: &Limits, budget: &Budget) -> Result<Arc<Workbook>> {
        budget.check_load()?;
        let identity = FileIdentity::of(&entry.abs_path).map_err(|e| SheetsError::UnknownWorkbook {
            query: entry.id.clone(),
            suggestion: format!(" ('{}' cannot be read: {e})", entry.rel_path),
        })?;
        let t = Instant::now();
        let r = (self.loader)(entry.clone(), identity, limits, self.stats.clone()).map(Arc::new);
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        self.stats.load_nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if r.is_err() {
            self.stats.load_failures.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Wait for another call's load of `slot`, up to the caller's load budget.
    fn wait(&self, slot: &SlotInner, entry: &Entry, budget: &Budget) -> Result<Result<Arc<Workbook>>> {
        let mut state = slot.state.lock();
        loop {
            if let Some(r) = state.as_ref() {
                return Ok(r.clone());
            }
            if slot.started.elapsed() > STUCK_AFTER {
                return Err(SheetsError::LimitExceeded {
                    workbook_id: entry.id.clone(),
                    detail: format!(
                        "loading has run for over {}s and looks stuck (a malformed file?); it is tried again when the file changes, or after a pause",
                        STUCK_AFTER.as_secs()
                    ),
                });
            }
            budget.check_load().map_err(|e| match e {
                SheetsError::Cancelled => SheetsError::Cancelled,
                _ => budget.load_timeout_error(),
            })?;
            let wait = budget.load_remaining().unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
            if wait.is_zero() {
                return Err(budget.load_timeout_error());
            }
            slot.ready.wait_for(&mut state, wait);
        }
    }

    /// Bytes the workbook `id` holds in the cache now (0 when it is not loaded).
    pub fn bytes_of(&self, id: &str) -> usize {
        let slot = self.inner.lock().0.get(id).map(|e| e.slot.clone());
        slot.and_then(|s| s.loaded()).map(|w| w.bytes()).unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Loads per workbook id (each test uses its own).
    static CALLS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

    fn calls(id: &str) -> usize {
        CALLS.lock().as_ref().and_then(|m| m.get(id).copied()).unwrap_or(0)
    }

    fn entry(dir: &std::path::Path, name: &str) -> Entry {
        let abs_path = dir.join(name);
        std::fs::write(&abs_path, b"v1").unwrap();
        Entry { id: name.into(), rel_path: name.into(), abs_path, size: 2, modified: None }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gemba-cache-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Panics while loading the file's first version, fails on "bad", hangs on "hang".
    fn fussy(e: Entry, _i: FileIdentity, _l: &Limits, _s: Arc<CacheStats>) -> Result<Workbook> {
        *CALLS.lock().get_or_insert_with(HashMap::new).entry(e.id.clone()).or_default() += 1;
        let text = std::fs::read_to_string(&e.abs_path).unwrap_or_default();
        match text.as_str() {
            "v1" => panic!("a reader panics"),
            "hang" => loop {
                if std::fs::read_to_string(&e.abs_path).map(|t| t != "hang").unwrap_or(true) {
                    return Err(SheetsError::Internal("gave up".into()));
                }
                std::thread::sleep(Duration::from_millis(10));
            },
            _ => Err(SheetsError::Internal(format!("cannot read {text}"))),
        }
    }

    fn change(path: &std::path::Path, text: &str) {
        // A new inode, as an editor's save makes: the identity changes for sure.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_load_that_panics_answers_its_waiters_and_is_retried_when_the_file_changes() {
        let dir = tempdir("panic");
        let e = entry(&dir, "p.xlsx");
        let cache = Arc::new(WorkbookCache::with_loader(1 << 20, fussy, Duration::from_secs(3600)));
        let c = cache.clone();
        let e2 = e.clone();
        let panicked = std::thread::spawn(move || c.get(&e2, &Limits::default(), &Budget::unlimited())).join();
        assert!(panicked.is_err(), "the loader panicked in that thread");
        // The slot was filled on the way out: the next caller gets an error at once, not a wait.
        let t = Instant::now();
        let r = cache.get(&e, &Limits::default(), &Budget::with_timeout(Duration::from_secs(30)));
        assert!(matches!(r, Err(SheetsError::Internal(_))), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // Within its back-off the failure is not retried...
        let before = calls(&e.id);
        assert!(cache.get(&e, &Limits::default(), &Budget::unlimited()).is_err());
        assert_eq!(calls(&e.id), before, "no new load inside the back-off");
        // ...but a changed file is loaded again at once.
        change(&e.abs_path, "bad");
        let r = cache.get(&e, &Limits::default(), &Budget::unlimited());
        assert!(matches!(&r, Err(SheetsError::Internal(m)) if m.contains("cannot read bad")), "{r:?}");
        assert_eq!(calls(&e.id), before + 1);
    }

    #[test]
    fn an_inline_call_never_loads_nor_waits() {
        let dir = tempdir("inline");
        let e = entry(&dir, "i.xlsx");
        change(&e.abs_path, "hang");
        let cache = Arc::new(WorkbookCache::with_loader(1 << 20, fussy, Duration::from_secs(3600)));
        let inline = Budget::with_timeout(Duration::from_secs(30)).inline();
        // Not cached: refused at once, and nothing claimed (no load started, no entry left).
        assert!(matches!(cache.get(&e, &Limits::default(), &inline), Err(SheetsError::WouldBlock)));
        assert_eq!(calls(&e.id), 0);
        assert_eq!(cache.entries(), 0);
        // Another call's load in flight: refused at once instead of waiting for it.
        let (c, e2) = (cache.clone(), e.clone());
        let loading = std::thread::spawn(move || c.get(&e2, &Limits::default(), &Budget::unlimited()));
        while calls(&e.id) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        assert!(matches!(cache.get(&e, &Limits::default(), &inline), Err(SheetsError::WouldBlock)));
        assert!(t.elapsed() < Duration::from_secs(5), "it did not wait for the load");
        // The file changes, which ends that load: a reload is due, and an inline call refuses it.
        change(&e.abs_path, "bad");
        assert!(loading.join().unwrap().is_err());
        assert!(matches!(cache.get(&e, &Limits::default(), &inline), Err(SheetsError::WouldBlock)));
        assert_eq!(calls(&e.id), 1, "no load from an inline call");
        // A failure kept for its back-off is what an inline call gets, as it is.
        assert!(cache.get(&e, &Limits::default(), &Budget::unlimited()).is_err());
        let r = cache.get(&e, &Limits::default(), &inline);
        assert!(matches!(&r, Err(SheetsError::Internal(m)) if m.contains("cannot read bad")), "{r:?}");
        assert_eq!(calls(&e.id), 2);
        // And the inline budget refuses a wait that the embedder would lend its slot for.
        assert!(matches!(inline.while_waiting(|| ()), Err(SheetsError::WouldBlock)));
    }

    #[test]
    fn a_hung_load_does_not_hold_a_changed_file_hostage() {
        let dir = tempdir("hang");
        let e = entry(&dir, "h.xlsx");
        change(&e.abs_path, "hang");
        let cache = Arc::new(WorkbookCache::with_loader(1 << 20, fussy, Duration::from_secs(3600)));
        let (c, e2) = (cache.clone(), e.clone());
        let hung = std::thread::spawn(move || c.get(&e2, &Limits::default(), &Budget::unlimited()));
        while cache.entries() == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // A caller with a short budget gives up waiting, with a timeout.
        let r = cache.get(&e, &Limits::default(), &Budget::with_timeout(Duration::from_millis(100)));
        assert!(matches!(r, Err(SheetsError::Timeout { .. })), "{r:?}");
        // The file changes: the next caller starts a fresh load instead of waiting on the hung one.
        change(&e.abs_path, "fixed");
        let r = cache.get(&e, &Limits::default(), &Budget::with_timeout(Duration::from_secs(30)));
        assert!(matches!(&r, Err(SheetsError::Internal(m)) if m.contains("cannot read fixed")), "{r:?}");
        assert!(hung.join().unwrap().is_err());
    }

    #[test]
    fn failures_back_off_and_are_retried() {
        let dir = tempdir("backoff");
        let e = entry(&dir, "b.xlsx");
        change(&e.abs_path, "bad");
        let cache = WorkbookCache::with_loader(1 << 20, fussy, Duration::from_millis(50));
        let before = calls(&e.id);
        assert!(cache.get(&e, &Limits::default(), &Budget::unlimited()).is_err());
        assert!(cache.get(&e, &Limits::default(), &Budget::unlimited()).is_err());
        assert_eq!(calls(&e.id), before + 1);
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get(&e, &Limits::default(), &Budget::unlimited()).is_err());
        assert_eq!(calls(&e.id), before + 2, "retried after the back-off");
        assert_eq!(backoff(1, Duration::from_secs(2)), Duration::from_secs(2));
        assert_eq!(backoff(3, Duration::from_secs(2)), Duration::from_secs(8));
        assert_eq!(backoff(30, Duration::from_secs(2)), RETRY_MAX);
    }
}
