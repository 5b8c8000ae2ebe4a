//! Forks: every write goes to a fork of a workbook; the original is untouched until an explicit
//! save. A fork is held in memory (the original's loaded model, shared with the cache, plus its
//! edits), persisted in the state directory, recalculated in process or by LibreOffice, and
//! saved faithfully and atomically.

pub mod cells;
pub mod date1904;
pub mod diff;
pub mod engine;
pub mod fork;
pub mod handle;
pub mod libreoffice;
pub mod persist;
pub mod recalc;
pub mod recalc_job;
pub mod structure;
pub mod styles;
pub mod xlsx;
pub mod xstring;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::cache::CacheStats;
use crate::error::{Result, SheetsError, closest, short_list};
use crate::limits::{Budget, Limits};
use crate::workbook::Workbook;
use crate::workspace::{Entry, FileIdentity};
use fork::Fork;
use handle::ForkCell;
use libreoffice::{LibreOffice, LibreOfficeConfig};
use persist::{ForkDir, ForkMeta, Op, SourceIdentity, StyleOp, now_unix};
use recalc::{Backend, RecalcReport, RecalcStats};

pub const FORK_PREFIX: &str = "fork-";

#[derive(Debug, Clone)]
pub struct ForkConfig {
    /// Where forks are kept (`<state>/forks`).
    pub dir: PathBuf,
    pub max_forks: usize,
    /// Forks older than this are removed when the server starts.
    pub max_age: Duration,
    /// Most cell writes one fork may hold.
    pub max_ops: usize,
    /// Most cell writes in one batch.
    pub max_batch: usize,
    pub max_checkpoints: usize,
    pub max_staged: usize,
    /// Saving over the original file is allowed.
    pub allow_overwrite: bool,
    pub default_backend: Backend,
    pub libreoffice: LibreOfficeConfig,
    /// Tests only: wait this long between writing a saved file and renaming it into place.
    pub save_pause: Option<Duration>,
    /// Tests only: pause halfway through every edit-log append, to kill the server with a torn
    /// line on disk (tests only: the embedder sets it from `GEMBA_TEST_APPEND_PAUSE_MS` in a test build).
    pub append_pause: Option<Duration>,
}

impl Default for ForkConfig {
    fn default() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self {
            dir: std::env::temp_dir().join(format!("gemba-forks-{}-{n}", std::process::id())),
            max_forks: 64,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_ops: 2_000_000,
            max_batch: 100_000,
            max_checkpoints: 64,
            max_staged: 64,
            allow_overwrite: false,
            default_backend: Backend::InProcess,
            libreoffice: LibreOfficeConfig::default(),
            save_pause: None,
            append_pause: None,
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct ForkStats {
    pub created: AtomicU64,
    pub saved: AtomicU64,
    pub discarded: AtomicU64,
    pub cells_edited: AtomicU64,
    pub recalcs_in_process: AtomicU64,
    pub recalc_nanos_in_process: AtomicU64,
    /// Recalculations the in-process engine refused and LibreOffice did instead.
    pub recalc_fallbacks: AtomicU64,
    /// The LibreOffice backend's own counters (runs, retries, breaker).
    pub libreoffice: Arc<RecalcStats>,
}

/// A fork as the store hands it out: `handle.lock()` for the fork itself; the summary,
/// recalculation state and discard flag without the lock (see `handle`).
pub type ForkHandle = Arc<ForkCell>;

/// Runs of one recalculation call while the fork keeps changing under it.
const MAX_RECALC_RUNS: usize = 3;

pub struct ForkStore {
    pub cfg: ForkConfig,
    /// Why forks cannot be made (the forks directory is not writable); reads still work.
    pub unavailable: Option<String>,
    forks: Mutex<HashMap<String, ForkHandle>>,
    /// Forks on disk that could not be restored, with why.
    broken: Mutex<std::collections::BTreeMap<String, String>>,
    pub stats: Arc<ForkStats>,
    pub libreoffice: LibreOffice,
    seq: AtomicU64,
}

impl ForkStore {
    /// Open the store and bring back the forks persisted in its directory.
    /// A forks directory that cannot be created leaves the store unavailable (every fork tool
    /// says why) rather than stopping the server: reading needs no state.
    pub fn open(cfg: ForkConfig, limits: &Limits, cache_stats: &Arc<CacheStats>) -> Result<Self> {
        let unavailable = std::fs::create_dir_all(&cfg.dir).err().map(|e| {
            let why = format!(
                "forks are unavailable: the forks directory {} cannot be created ({e}); start the server with a writable --state-dir",
                cfg.dir.display()
            );
            tracing::warn!("{why}");
            why
        });
        persist::set_test_append_pause(cfg.append_pause);
        let stats = Arc::new(ForkStats::default());
        let mut lo_cfg = cfg.libreoffice.clone();
        if lo_cfg.work_dir == LibreOfficeConfig::default().work_dir {
            lo_cfg.work_dir = cfg.dir.join(".libreoffice");
        }
        let store = Self {
            libreoffice: LibreOffice::new(lo_cfg, stats.libreoffice.clone()),
            cfg,
            unavailable,
            forks: Mutex::new(HashMap::new()),
            broken: Mutex::new(std::collections::BTreeMap::new()),
            stats,
            seq: AtomicU64::new(0),
        };
        store.restore(limits, cache_stats);
        Ok(store)
    }

    fn restore(&self, limits: &Limits, cache_stats: &Arc<CacheStats>) {
        let Ok(rd) = std::fs::read_dir(&self.cfg.dir) else { return };
        let now = now_unix();
        let mut forks = self.forks.lock();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(FORK_PREFIX) || !e.path().is_dir() {
                continue;
            }
            let mut dir = ForkDir::new(&self.cfg.dir, &name);
            let loaded = dir.load().and_then(|(meta, log)| {
                if now.saturating_sub(meta.created_unix) > self.cfg.max_age.as_secs() {
                    return Ok(None);
                }
                let base = open_base(&meta, &dir, limits, cache_stats)?;
                Ok(Some((meta, base, log)))
            });
            match loaded {
                Ok(Some((meta, base, log))) => match Fork::new(meta, dir, base, log.ops, log.styles) {
                    Ok(f) => {
                        match f.damage() {
                            Some(why) => {
                                tracing::error!(fork = %name, edits = f.op_count(), "fork restored damaged: {why}")
                            }
                            None => tracing::info!(fork = %name, edits = f.op_count(), "fork restored"),
                        }
                        forks.insert(name, Arc::new(ForkCell::new(f)));
                    }
                    Err(err) => self.not_restored(&name, err),
                },
                Ok(None) => {
                    tracing::info!(fork = %name, "fork expired; removed");
                    dir.remove();
                }
                Err(err) => self.not_restored(&name, err),
            }
        }
    }

    /// A fork whose files are on disk but could not be read back: it is left untouched, and
    /// every call naming it says why and what to do.
    fn not_restored(&self, name: &str, err: SheetsError) {
        let why = format!(
            "fork '{name}' could not be restored after a restart ({err}); its files are left untouched in {}: repair or remove that directory and restart the server, or create_fork a new fork",
            self.cfg.dir.join(name).display()
        );
        tracing::error!(fork = %name, "{why}");
        self.broken.lock().insert(name.to_string(), why);
    }

    /// Forks left on disk because they could not be restored, with why (sorted by id).
    pub fn not_restored_forks(&self) -> Vec<(String, String)> {
        self.broken.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn is_fork_id(id: &str) -> bool {
        id.trim().starts_with(FORK_PREFIX)
    }

    pub fn count(&self) -> usize {
        self.forks.lock().len()
    }

    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.forks.lock().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn get(&self, id: &str) -> Result<ForkHandle> {
        let id = id.trim();
        let forks = self.forks.lock();
        if let Some(f) = forks.get(id) {
            return Ok(f.clone());
        }
        if let Some(why) = self.broken.lock().get(id) {
            return Err(SheetsError::Workspace(why.clone()));
        }
        let ids: Vec<&str> = forks.keys().map(String::as_str).collect();
        let near = closest(id, ids.iter().copied(), 1);
        let hint = match near.first() {
            Some(n) => format!(" (did you mean '{n}'?)"),
            None if ids.is_empty() => " (there are no forks; create one with create_fork)".into(),
            None => format!("; forks are: {}", short_list(&ids, 10)),
        };
        Err(SheetsError::invalid("fork_id", format!("no fork '{id}'{hint}; call list_forks to see them")))
    }

    /// Make a fork of a workbook already loaded from `entry`.
    pub fn create(&self, entry: &Entry, original: Arc<Workbook>, label: Option<String>) -> Result<ForkHandle> {
        if let Some(why) = &self.unavailable {
            return Err(SheetsError::Workspace(why.clone()));
        }
        if original.format != crate::load::Format::Xlsx {
            return Err(SheetsError::Unsupported {
                workbook_id: entry.id.clone(),
                reason: format!(
                    "forks can edit .xlsx and .xlsm files; this is {} — save a copy as .xlsx first",
                    original.format.as_str()
                ),
            });
        }
        if self.count() >= self.cfg.max_forks {
            return Err(SheetsError::invalid(
                "workbook_id",
                format!("there are already {} forks (the limit); save or discard_fork some first", self.cfg.max_forks),
            ));
        }
        let id = self.new_id(&entry.rel_path);
        let dir = ForkDir::new(&self.cfg.dir, &id);
        std::fs::create_dir_all(&dir.dir)
            .map_err(|e| SheetsError::Workspace(format!("cannot create {}: {e}", dir.dir.display())))?;
        // The base is the very image the cache loaded; keep a copy so the fork survives a
        // restart even if the original changes.
        let result = (|| {
            persist::write_atomic(&dir.base(), &original.file_bytes()?, None)
                .map_err(|e| SheetsError::Workspace(format!("cannot copy the workbook into the fork: {e}")))?;
            // The fork's own directory entry, so a crash cannot lose the whole fork.
            persist::sync_dir(&self.cfg.dir)
                .map_err(|e| SheetsError::Workspace(format!("cannot sync {}: {e}", self.cfg.dir.display())))?;
            let meta = ForkMeta {
                id: id.clone(),
                workbook_id: entry.id.clone(),
                source_path: entry.rel_path.clone(),
                source: SourceIdentity::from(&original.identity),
                created_unix: now_unix(),
                label,
                checkpoints: Vec::new(),
                staged: Vec::new(),
                saved_paths: Vec::new(),
                seq: 0,
                epoch: 0,
                structure: Vec::new(),
                layout: 0,
            };
            dir.save_meta(&meta)?;
            Fork::new(meta, ForkDir::new(&self.cfg.dir, &id), original, Vec::new(), Vec::new())
        })();
        let fork = match result {
            Ok(f) => f,
            Err(e) => {
                dir.remove();
                return Err(e);
            }
        };
        let handle = Arc::new(ForkCell::new(fork));
        self.forks.lock().insert(id, handle.clone());
        self.stats.created.fetch_add(1, Ordering::Relaxed);
        Ok(handle)
    }

    /// Discard a fork at once: it leaves the store, its running recalculation is cancelled,
    /// and its directory is removed as soon as whoever holds the fork lets go (in the
    /// background when that takes more than a moment).
    pub fn discard(&self, id: &str) -> Result<()> {
        let removed = self.forks.lock().remove(id.trim());
        let Some(handle) = removed else {
            return self.get(id).map(|_| ());
        };
        handle.discard();
        match handle.try_lock_for(Duration::from_millis(200)) {
            Some(f) => f.dir.remove(),
            None => {
                let h = handle.clone();
                let spawned =
                    std::thread::Builder::new().name("gemba-discard".into()).spawn(move || h.lock().dir.remove());
                if let Err(e) = spawned {
                    tracing::warn!(fork = %id.trim(), "its directory stays until the next start: {e}");
                }
            }
        }
        self.stats.discarded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Recalculate a fork without holding it: reads see its last committed values meanwhile,
    /// a discard cancels the run, and the values are committed only if the fork did not change
    /// while the run went on; if it did, the run starts again on the new edits (at most
    /// `MAX_RECALC_RUNS` runs; the in-process engine then only takes the new edits).
    pub fn recalculate(
        &self,
        handle: &ForkHandle,
        backend: Backend,
        limits: &Limits,
        budget: &Budget,
    ) -> Result<RecalcReport> {
        let start = std::time::Instant::now();
        let r = self.recalculate_once(handle, backend, limits, budget);
        let mut phase = crate::phase::Phase::ended(crate::phase::PhaseKind::Recalc, start);
        match &r {
            Ok(report) => {
                phase.backend = Some(if report.backend == Backend::Libreoffice.as_str() {
                    Backend::Libreoffice.as_str()
                } else {
                    Backend::InProcess.as_str()
                });
                phase.cells = Some(report.formulas as u64);
            }
            Err(e) => phase.error = Some(crate::phase::error_kind(e)),
        }
        budget.stages().record_phase(phase);
        r
    }

    fn recalculate_once(
        &self,
        handle: &ForkHandle,
        backend: Backend,
        limits: &Limits,
        budget: &Budget,
    ) -> Result<RecalcReport> {
        let _turn = handle.recalc_turn(budget)?;
        let _running = handle.register(budget)?;
        let take_engine = backend == Backend::InProcess;
        for _ in 0..MAX_RECALC_RUNS {
            let job = handle.lock().begin_recalc(take_engine)?;
            let id = job.snap_id().to_string();
            let done = job.run(backend, &self.libreoffice, limits, budget);
            if handle.is_discarded() {
                return Err(handle::discarded_error(&id));
            }
            let done = done?;
            let mut f = handle.lock();
            if handle.is_discarded() {
                return Err(handle::discarded_error(&id));
            }
            if let Some(report) = f.finish_recalc(done) {
                if report.fallback_reason.is_some() {
                    self.stats.recalc_fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(report);
            }
            tracing::debug!(fork = %id, "the fork changed during its recalculation; running again");
        }
        Err(SheetsError::invalid(
            "fork_id",
            format!(
                "the fork changed during each of {MAX_RECALC_RUNS} recalculations, so none was committed; call recalculate again once the edits have landed"
            ),
        ))
    }

    /// The workbook a read tool sees for a fork id.
    pub fn view(&self, id: &str, budget: &Budget) -> Result<Arc<Workbook>> {
        let handle = self.get(id)?;
        let mut f = handle.lock();
        let entry = view_entry(&f);
        f.view(&entry, budget)
    }

    /// Apply structural edits (all or none): the fork with every edit so far is rendered, the
    /// edits are applied to the file, and the result becomes the fork's base in a new epoch.
    pub fn restructure(
        &self,
        handle: &ForkHandle,
        ops: &[structure::StructOp],
        limits: &Limits,
        cache_stats: &Arc<CacheStats>,
        budget: &Budget,
    ) -> Result<Vec<String>> {
        let mut f = handle.lock();
        // Steps: the fork rendered, each edit applied to the file, the new epoch committed.
        budget.progress_begin(|| format!("restructuring {}", f.meta.id), "steps", ops.len() as u64 + 2);
        let (mut bytes, _) = f.render(true, budget)?;
        budget.progress(1);
        let entry = view_entry(&f);
        let view = f.view(&entry, budget)?;
        // Sheet names as the ops rename, copy and create them → the view's sheet they show.
        let mut alias: HashMap<String, Option<String>> =
            view.sheets.iter().map(|s| (s.name.to_lowercase(), Some(s.name.clone()))).collect();
        let mut names: Vec<String> = view.sheets.iter().map(|s| s.name.clone()).collect();
        for (step, op) in ops.iter().enumerate() {
            budget.check()?;
            budget.progress(step as u64 + 1);
            // A shared group still in the file sits on a sheet no earlier edit shifted (a shift
            // writes out the groups of its sheet), so its cells are where the view has them.
            let lookup = |sheet: &str, r: u32, c: u32| -> Option<String> {
                let name = alias.get(&sheet.to_lowercase())?.as_ref()?;
                let i = view.sheet_index(Some(name)).ok()?;
                let s = view.sheet_at(i, budget).ok()?;
                s.formula_at(crate::address::CellRef::new(r, c)).map(|f| f.to_string())
            };
            bytes = structure::apply(&f.meta.id, &bytes, op, &lookup)?;
            use structure::StructOp as S;
            match op {
                S::InsertRows { .. }
                | S::DeleteRows { .. }
                | S::InsertCols { .. }
                | S::DeleteCols { .. }
                | S::CopyRange { .. }
                | S::MoveRange { .. } => {}
                S::CreateSheet { name } => {
                    alias.insert(name.trim().to_lowercase(), None);
                    names.push(name.trim().to_string());
                }
                S::CopySheet { sheet, new_name } => {
                    let src = alias.get(&sheet.to_lowercase()).cloned().flatten();
                    alias.insert(new_name.trim().to_lowercase(), src);
                    let after = names.iter().position(|n| n.eq_ignore_ascii_case(sheet)).map_or(names.len(), |i| i + 1);
                    names.insert(after, new_name.trim().to_string());
                }
                S::RenameSheet { sheet, new_name } => {
                    let src = alias.remove(&sheet.to_lowercase()).flatten();
                    alias.insert(new_name.trim().to_lowercase(), src);
                    for n in &mut names {
                        if n.eq_ignore_ascii_case(sheet) {
                            *n = new_name.trim().to_string();
                        }
                    }
                }
                S::DeleteSheet { sheet } => {
                    alias.remove(&sheet.to_lowercase());
                    names.retain(|n| !n.eq_ignore_ascii_case(sheet));
                }
            }
        }
        drop(view);
        if bytes.len() as u64 > limits.max_file_bytes {
            return Err(SheetsError::invalid(
                "ops",
                format!(
                    "the restructured file would be {} bytes, over the {} byte limit",
                    bytes.len(),
                    limits.max_file_bytes
                ),
            ));
        }
        let epoch = f.meta.epoch;
        let mut meta = f.meta.clone();
        meta.epoch = epoch + 1;
        meta.layout += 1;
        meta.structure.extend(ops.iter().map(|op| persist::StructRecord { epoch: epoch + 1, op: op.clone() }));
        let dir = ForkDir::new(&self.cfg.dir, &meta.id).at_epoch(meta.epoch);
        // The new epoch's files first, then the fork's description: the commit point.
        dir.prepare_epoch(epoch, &bytes)?;
        let committed = open_base(&meta, &dir, limits, cache_stats)
            .and_then(|base| {
                Fork::new(
                    meta.clone(),
                    ForkDir::new(&self.cfg.dir, &meta.id).at_epoch(meta.epoch),
                    base,
                    Vec::new(),
                    Vec::new(),
                )
            })
            .and_then(|fresh| dir.save_meta(&meta).map(|()| fresh));
        let mut fresh = match committed {
            Ok(f) => f,
            Err(e) => {
                dir.remove_epochs(epoch + 1, epoch + 1);
                return Err(e);
            }
        };
        fresh.mark_structure_stale();
        *f = fresh;
        budget.progress(ops.len() as u64 + 2);
        Ok(names)
    }

    /// Restore a checkpoint taken in an earlier structural epoch: that epoch's base and log
    /// come back, and later epochs are removed.
    pub fn rewind(
        &self,
        handle: &ForkHandle,
        cp: &persist::Checkpoint,
        limits: &Limits,
        cache_stats: &Arc<CacheStats>,
    ) -> Result<()> {
        let mut f = handle.lock();
        let mut dir = ForkDir::new(&self.cfg.dir, &f.meta.id).at_epoch(cp.epoch);
        let log = dir.open_log()?;
        let ops: Vec<Op> = log.ops.into_iter().take(cp.ops).collect();
        let styles: Vec<StyleOp> = log.styles.into_iter().take(cp.styles).collect();
        let mut meta = f.meta.clone();
        let from = meta.epoch;
        meta.epoch = cp.epoch;
        meta.layout += 1;
        meta.structure.retain(|r| r.epoch <= cp.epoch);
        let base = open_base(&meta, &dir, limits, cache_stats)?;
        dir.rewrite_ops(&ops, &styles)?;
        dir.save_meta(&meta)?;
        dir.remove_epochs(cp.epoch + 1, from);
        let mut fresh = Fork::new(meta, dir, base, ops, styles)?;
        fresh.mark_structure_stale();
        *f = fresh;
        Ok(())
    }

    /// Every changed cell of a fork against its original (optionally one sheet of the fork).
    /// After structural edits the original's cells are carried through them first.
    pub fn changes(
        &self,
        handle: &ForkHandle,
        sheet: Option<&str>,
        limits: &Limits,
        cache_stats: &Arc<CacheStats>,
        budget: &Budget,
    ) -> Result<Vec<fork::CellChange>> {
        let mut f = handle.lock();
        let only = match sheet {
            Some(n) => Some(f.base().sheet_index(Some(n))?),
            None => None,
        };
        if f.meta.epoch == 0 {
            return f.changes(only, budget);
        }
        let entry = view_entry(&f);
        let now = f.view(&entry, budget)?;
        let first = ForkMeta { epoch: 0, ..f.meta.clone() };
        let original = open_base(&first, &f.dir, limits, cache_stats)?;
        diff::changes(&original, &now, &f.meta.structure, only, budget)
    }

    fn new_id(&self, rel: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("{rel}|{t}|{n}|{}", std::process::id()).bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{FORK_PREFIX}{:08x}", (h ^ (h >> 32)) as u32)
    }

    /// Whether the original file still is what the fork was made from.
    pub fn source_unchanged(meta: &ForkMeta, path: &std::path::Path) -> bool {
        FileIdentity::of(path).is_ok_and(|now| SourceIdentity::from(&now) == meta.source)
    }
}

/// The workspace entry a fork's view answers as: the fork id, over the original's path.
fn view_entry(f: &Fork) -> Entry {
    let base = f.base();
    Entry {
        id: f.meta.id.clone(),
        rel_path: base.entry.rel_path.clone(),
        abs_path: base.entry.abs_path.clone(),
        size: base.entry.size,
        modified: base.entry.modified,
    }
}

fn open_base(meta: &ForkMeta, dir: &ForkDir, limits: &Limits, stats: &Arc<CacheStats>) -> Result<Arc<Workbook>> {
    let path = dir.base_for(meta.epoch);
    let identity = FileIdentity::of(&path)
        .map_err(|e| SheetsError::Workspace(format!("fork {} lost its base copy {}: {e}", meta.id, path.display())))?;
    let entry = Entry {
        id: meta.id.clone(),
        rel_path: meta.source_path.clone(),
        abs_path: path,
        size: identity.len,
        modified: identity.modified,
    };
    Workbook::open(entry, identity, limits, stats.clone()).map(Arc::new)
}
