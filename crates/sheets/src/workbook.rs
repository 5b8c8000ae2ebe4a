//! A workbook held in the cache: metadata at once, sheets loaded on first use, and the file
//! identity it was read from.
//!
//! Each sheet loads once however many callers ask at the same time (one `SheetLoad` per
//! sheet in flight; the others wait on it, lending their share of the server out). A large
//! xlsx sheet loads on a thread of its own and publishes prefixes of itself as its rows
//! arrive, so a caller that needs only the first rows is answered while the rest loads for
//! the next calls; that load counts an estimate of its size in the cache from the start and
//! stops when the workbook leaves the cache. Sheets read by the streaming reader need no
//! lock on the workbook, so several load in parallel ([`Workbook::load_sheets`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::{Result, SheetsError, closest, short_list};
use crate::limits::{Budget, Canceller, Limits};
use crate::load::{self, Book, Format, SheetMeta, TableInfo};
use crate::sheet::Sheet;
use crate::workspace::{Entry, FileIdentity};
use crate::xlsx_reader::{Progress, XlsxBook};

/// xlsx sheets whose XML is at least this large load on a thread of their own, publishing
/// prefixes as they go.
const BACKGROUND_XML_BYTES: u64 = 8 << 20;
/// Prefixes are published for at most this many rows; a read further down waits for the
/// whole sheet.
pub const MAX_PREFIX_ROWS: u32 = 20_000;
/// Bytes of compact model per byte of sheet XML, to count a background load in the cache
/// before it ends (measured: 0.2 on the sales workloads).
const MODEL_PER_XML_BYTE: f64 = 0.2;

/// Where sheets not yet in memory come from.
enum Source {
    /// The file image: calamine's reader over it, and the streaming reader for xlsx.
    File { book: Arc<Mutex<Book>>, file: Arc<[u8]>, fast: Option<Arc<XlsxBook>> },
    /// Another workbook (a fork's view: changed sheets are held here, the rest come from the base).
    Overlay { base: Arc<Workbook> },
}

/// After loading a sheet of at least this many bytes, freed memory is handed back to the
/// system.
const TRIM_AFTER_BYTES: usize = 4 << 20;

/// Hand the heap's free pages back to the system: a big load frees about as much as it keeps
/// (the builder's growth, inflate buffers), and glibc keeps freed heap memory resident.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What a sheet's loads share with the workbook: the sheets in memory, the loads in flight,
/// and the bytes held.
struct Held {
    loaded: RwLock<Vec<Option<Arc<Sheet>>>>,
    loading: Mutex<Vec<Option<Arc<SheetLoad>>>>,
    bytes: AtomicUsize,
}

/// A sheet as far as it is known: the whole of it, or its first rows while it loads.
#[derive(Clone)]
pub enum SheetView {
    Full(Arc<Sheet>),
    /// The complete rows before `rows_done` (0-based, exclusive); merged ranges not known yet.
    Prefix {
        sheet: Arc<Sheet>,
        rows_done: u32,
    },
}

impl SheetView {
    pub fn sheet(&self) -> &Arc<Sheet> {
        match self {
            SheetView::Full(s) | SheetView::Prefix { sheet: s, .. } => s,
        }
    }
    /// Rows read so far when this is a prefix.
    pub fn rows_done(&self) -> Option<u32> {
        match self {
            SheetView::Full(_) => None,
            SheetView::Prefix { rows_done, .. } => Some(*rows_done),
        }
    }
}

/// One sheet load in flight: its result when done, its latest prefix meanwhile.
pub struct SheetLoad {
    state: Mutex<LoadState>,
    changed: Condvar,
    /// Rows a waiter wants as a prefix (0: none).
    want: AtomicU32,
    /// Stops the load (the workbook left the cache).
    cancel: Canceller,
    /// Bytes of the sheet's XML inflated so far, of `xml_bytes`, for waiters' progress.
    inflated: AtomicU64,
    xml_bytes: u64,
    /// "loading sheet 'S' of ID", for waiters' progress.
    what: String,
}

#[derive(Default)]
struct LoadState {
    prefix: Option<(Arc<Sheet>, u32)>,
    result: Option<Result<Arc<Sheet>>>,
}

impl Progress for SheetLoad {
    fn wanted_rows(&self) -> u32 {
        self.want.load(Ordering::Relaxed)
    }
    fn publish(&self, prefix: Sheet, rows_done: u32) {
        let mut st = self.state.lock();
        st.prefix = Some((Arc::new(prefix), rows_done));
        // Satisfied: nobody waits for more until someone asks.
        let _ = self.want.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| (w <= rows_done).then_some(0));
        self.changed.notify_all();
    }
    fn inflated(&self, bytes: u64) {
        self.inflated.store(bytes, Ordering::Relaxed);
    }
}

impl SheetLoad {
    fn new(cancel: Canceller, xml_bytes: u64, what: String) -> Self {
        Self {
            state: Mutex::new(LoadState::default()),
            changed: Condvar::new(),
            want: AtomicU32::new(0),
            cancel,
            inflated: AtomicU64::new(0),
            xml_bytes,
            what,
        }
    }

    fn finish(&self, r: Result<Arc<Sheet>>) {
        let mut st = self.state.lock();
        st.result = Some(r);
        st.prefix = None;
        self.changed.notify_all();
    }

    /// Wait for the whole sheet, or (with `rows`) for a prefix of at least that many rows.
    fn wait(&self, rows: Option<u32>, budget: &Budget) -> Result<SheetView> {
        if let Some(r) = rows {
            self.want.fetch_max(r, Ordering::Relaxed);
        }
        // A watched call reports the load's progress while it waits (the load itself runs
        // under a budget of its own when it runs in the background).
        let watched = self.xml_bytes > 0
            && budget.observer().is_some_and(|o| o.wants_progress())
            && budget.progress_begin_if_idle(|| self.what.clone(), "bytes inflated", self.xml_bytes);
        let tick = if watched { Duration::from_millis(100) } else { Duration::from_secs(1) };
        let mut st = self.state.lock();
        loop {
            if watched {
                budget.progress(self.inflated.load(Ordering::Relaxed));
            }
            if let Some(r) = &st.result {
                return r.clone().map(SheetView::Full);
            }
            if let (Some(need), Some((p, done))) = (rows, &st.prefix)
                && *done >= need
            {
                return Ok(SheetView::Prefix { sheet: p.clone(), rows_done: *done });
            }
            budget.check_load().map_err(|e| match e {
                SheetsError::Cancelled => SheetsError::Cancelled,
                _ => budget.load_timeout_error(),
            })?;
            let wait = budget.load_remaining().unwrap_or(tick).min(tick);
            if wait.is_zero() {
                return Err(budget.load_timeout_error());
            }
            self.changed.wait_for(&mut st, wait);
        }
    }
}

/// What a load needs, shared with the thread it may run on.
#[derive(Clone)]
struct LoadJob {
    id: String,
    index: usize,
    meta: SheetMeta,
    book: Arc<Mutex<Book>>,
    file: Arc<[u8]>,
    fast: Option<Arc<XlsxBook>>,
    date1904: bool,
    limits: Limits,
    held: Arc<Held>,
    stats: Arc<crate::cache::CacheStats>,
    /// Bytes counted for the load before it ends.
    estimate: usize,
}

impl LoadJob {
    /// Read the sheet: the streaming reader first for xlsx, calamine otherwise or when the
    /// streaming reader hands it back.
    fn read(&self, budget: &Budget, progress: &dyn Progress) -> Result<Sheet> {
        if self.meta.kind != "worksheet" {
            // Chart and macro sheets have no cell grid to read.
            return Ok(Sheet::empty(&self.meta.name));
        }
        if let Some(fast) = &self.fast
            && let Some(s) =
                load::load_sheet_fast(&self.id, fast, self.index, &self.meta.name, &self.limits, budget, progress)?
        {
            return Ok(s);
        }
        // calamine's reader is one per workbook: one sheet at a time through it.
        let mut book = match self.book.try_lock() {
            Some(b) => b,
            None => {
                let wait = budget.load_remaining().unwrap_or(Duration::from_secs(3600));
                budget.while_waiting(|| self.book.try_lock_for(wait))?.ok_or_else(|| budget.load_timeout_error())?
            }
        };
        load::load_sheet(&self.id, &mut book, &self.file, &self.meta.name, self.date1904, &self.limits, budget)
    }

    /// Run the load and hand its result to the workbook and to everyone waiting.
    fn run(&self, load: &SheetLoad, budget: &Budget) -> Result<Arc<Sheet>> {
        let r = self.read(budget, load).map(Arc::new);
        let held = &self.held;
        match &r {
            Ok(sheet) => {
                if sheet.heap_bytes() >= TRIM_AFTER_BYTES {
                    give_back_freed_memory();
                }
                held.bytes.fetch_add(sheet.heap_bytes(), Ordering::Relaxed);
                self.stats.sheets_loaded.fetch_add(1, Ordering::Relaxed);
                self.stats.cells_loaded.fetch_add(sheet.cell_count() as u64, Ordering::Relaxed);
                held.loaded.write()[self.index] = Some(sheet.clone());
            }
            Err(e) => tracing::debug!(workbook = %self.id, sheet = %self.meta.name, "sheet load failed: {e}"),
        }
        held.bytes.fetch_sub(self.estimate.min(held.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        held.loading.lock()[self.index] = None;
        load.finish(r.clone());
        r
    }
}

pub struct Workbook {
    pub entry: Entry,
    pub identity: FileIdentity,
    pub format: Format,
    pub sheets: Vec<SheetMeta>,
    pub defined_names: Vec<(String, String)>,
    pub date1904: bool,
    pub has_vba: bool,
    limits: Limits,
    source: Source,
    held: Arc<Held>,
    tables: Mutex<Option<Arc<Vec<TableInfo>>>>,
    stats: Arc<crate::cache::CacheStats>,
}

impl std::fmt::Debug for Workbook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workbook").field("id", &self.entry.id).finish()
    }
}

impl Drop for Workbook {
    /// Loads still running for this workbook stop: nobody can ask for their result.
    fn drop(&mut self) {
        for l in self.held.loading.lock().iter().flatten() {
            l.cancel.cancel();
        }
    }
}

impl Workbook {
    pub fn open(
        entry: Entry,
        identity: FileIdentity,
        limits: &Limits,
        stats: Arc<crate::cache::CacheStats>,
    ) -> Result<Self> {
        let bytes = load::read_file(&entry.id, &entry.abs_path, limits)?;
        let file_bytes = bytes.len();
        // The file image stays in memory for lazy sheet loads: count it.
        let opened = load::open(&entry.id, bytes, limits)?;
        let n = opened.sheets.len();
        let fast = match opened.format {
            Format::Xlsx => {
                let names: Vec<&str> = opened.sheets.iter().map(|s| s.name.as_str()).collect();
                match XlsxBook::open(opened.bytes.clone(), &names, opened.date1904) {
                    Ok(f) => Some(Arc::new(f)),
                    Err(b) => {
                        tracing::debug!(workbook = %entry.id, "streaming reader not used: {}", b.0);
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(Self {
            entry,
            identity,
            format: opened.format,
            sheets: opened.sheets,
            defined_names: opened.defined_names,
            date1904: opened.date1904,
            has_vba: opened.has_vba,
            limits: limits.clone(),
            source: Source::File { book: Arc::new(Mutex::new(opened.book)), file: opened.bytes, fast },
            held: Arc::new(Held {
                loaded: RwLock::new(vec![None; n]),
                loading: Mutex::new(vec![None; n]),
                bytes: AtomicUsize::new(file_bytes + 4096),
            }),
            tables: Mutex::new(None),
            stats,
        })
    }

    /// A view of `base` under another id in which the sheets given in `changed` replace the
    /// base's (a fork's edits); every other sheet is the base's own, loaded by the base.
    pub fn overlay(base: &Arc<Workbook>, entry: Entry, changed: Vec<Option<Arc<Sheet>>>) -> Self {
        let n = base.sheets.len();
        let mut loaded = changed;
        loaded.resize(n, None);
        let held: usize = loaded.iter().flatten().map(|s| s.heap_bytes()).sum();
        Self {
            entry,
            identity: base.identity.clone(),
            format: base.format,
            sheets: base.sheets.clone(),
            defined_names: base.defined_names.clone(),
            date1904: base.date1904,
            has_vba: base.has_vba,
            limits: base.limits.clone(),
            source: Source::Overlay { base: base.clone() },
            held: Arc::new(Held {
                loaded: RwLock::new(loaded),
                loading: Mutex::new(vec![None; n]),
                bytes: AtomicUsize::new(held),
            }),
            tables: Mutex::new(None),
            stats: base.stats.clone(),
        }
    }

    /// The file image a workbook was read from (a view answers with its base's).
    pub fn file_bytes(&self) -> Arc<[u8]> {
        match &self.source {
            Source::File { file, .. } => file.clone(),
            Source::Overlay { base } => base.file_bytes(),
        }
    }

    pub fn id(&self) -> &str {
        &self.entry.id
    }

    /// Bytes held (file image plus loaded sheets, and an estimate for sheets loading), for
    /// the cache's accounting.
    pub fn bytes(&self) -> usize {
        let fast = match &self.source {
            Source::File { fast: Some(f), .. } => f.heap_bytes(),
            _ => 0,
        };
        self.held.bytes.load(Ordering::Relaxed) + fast
    }

    pub fn sheet_names(&self) -> Vec<&str> {
        self.sheets.iter().map(|s| s.name.as_str()).collect()
    }

    /// Resolve a sheet name (exact, then case-insensitive) to its index, with suggestions.
    /// With no name, a workbook of one sheet answers with it.
    pub fn sheet_index(&self, name: Option<&str>) -> Result<usize> {
        let names = self.sheet_names();
        let Some(q) = name.map(str::trim).filter(|q| !q.is_empty()) else {
            if names.len() == 1 {
                return Ok(0);
            }
            return Err(SheetsError::invalid(
                "sheet_name",
                format!(
                    "this workbook has {} sheets; pass sheet_name, one of: {}",
                    names.len(),
                    short_list(&names, 20)
                ),
            ));
        };
        if let Some(i) = names.iter().position(|n| *n == q) {
            return Ok(i);
        }
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(q)) {
            return Ok(i);
        }
        let near = closest(q, names.iter().copied(), 3);
        let available = if near.is_empty() {
            short_list(&names, 20)
        } else {
            format!("{} (did you mean '{}'?)", short_list(&names, 20), near[0])
        };
        Err(SheetsError::UnknownSheet { query: q.to_string(), workbook_id: self.entry.id.clone(), available })
    }

    pub fn sheet(&self, name: Option<&str>, budget: &Budget) -> Result<Arc<Sheet>> {
        let i = self.sheet_index(name)?;
        self.sheet_at(i, budget)
    }

    fn loaded_at(&self, i: usize) -> Option<Arc<Sheet>> {
        self.held.loaded.read().get(i).cloned().flatten()
    }

    /// The loaded sheet at `i`, loading it on first use.
    pub fn sheet_at(&self, i: usize, budget: &Budget) -> Result<Arc<Sheet>> {
        match self.view_at(i, None, budget)? {
            SheetView::Full(s) => Ok(s),
            SheetView::Prefix { .. } => {
                Err(SheetsError::Internal("a prefix where the whole sheet was asked for".into()))
            }
        }
    }

    /// Sheet `i`, or — when it is loading in the background and `rows` (0-based, exclusive)
    /// of it are in — its first rows. Starts the load when nobody has.
    pub fn sheet_prefix_at(&self, i: usize, rows: u32, budget: &Budget) -> Result<SheetView> {
        self.view_at(i, (rows <= MAX_PREFIX_ROWS).then_some(rows), budget)
    }

    fn view_at(&self, i: usize, rows: Option<u32>, budget: &Budget) -> Result<SheetView> {
        if let Some(s) = self.loaded_at(i) {
            return Ok(SheetView::Full(s));
        }
        let meta = self.sheets.get(i).ok_or_else(|| SheetsError::Internal(format!("sheet index {i} out of range")))?;
        let (book, file, fast) = match &self.source {
            Source::File { book, file, fast } => (book, file, fast),
            Source::Overlay { base } => {
                return match rows {
                    Some(r) => base.sheet_prefix_at(i, r, budget),
                    None => base.sheet_at(i, budget).map(SheetView::Full),
                };
            }
        };
        // Join the load in flight, or start one.
        let (load, job) = {
            let mut loading = self.held.loading.lock();
            if let Some(s) = self.loaded_at(i) {
                return Ok(SheetView::Full(s));
            }
            match &loading[i] {
                Some(l) => (l.clone(), None),
                None => {
                    let xml = fast.as_ref().and_then(|f| f.sheet_xml_bytes(i)).unwrap_or(0);
                    let background = meta.kind == "worksheet" && xml >= BACKGROUND_XML_BYTES;
                    // A background load outlives the call that starts it: its own cancel
                    // flag (the workbook's drop), the caller's load deadline.
                    let job_budget = if background { budget.detached() } else { budget.clone() };
                    let what = format!("loading sheet '{}' of {}", meta.name, self.entry.id);
                    let l = Arc::new(SheetLoad::new(job_budget.canceller(), if background { xml } else { 0 }, what));
                    // Before the load starts, so its first rows are kept for this caller.
                    if let Some(r) = rows {
                        l.want.store(r, Ordering::Relaxed);
                    }
                    let estimate = if background { (xml as f64 * MODEL_PER_XML_BYTE) as usize } else { 0 };
                    self.held.bytes.fetch_add(estimate, Ordering::Relaxed);
                    let job = LoadJob {
                        id: self.entry.id.clone(),
                        index: i,
                        meta: meta.clone(),
                        book: book.clone(),
                        file: file.clone(),
                        fast: fast.clone(),
                        date1904: self.date1904,
                        limits: self.limits.clone(),
                        held: self.held.clone(),
                        stats: self.stats.clone(),
                        estimate,
                    };
                    loading[i] = Some(l.clone());
                    (l, Some((job, job_budget, background)))
                }
            }
        };
        match job {
            // Someone else's load: wait for it, lending this call's share out meanwhile.
            None => budget.while_waiting(|| load.wait(rows, budget))?,
            Some((job, job_budget, false)) => job.run(&load, &job_budget).map(SheetView::Full),
            Some((job, job_budget, true)) => {
                let l = load.clone();
                let spawned = std::thread::Builder::new().name("gemba-sheet-load".into()).spawn(move || {
                    let t = Instant::now();
                    let r = job.run(&l, &job_budget);
                    tracing::debug!(workbook = %job.id, sheet = %job.meta.name, ok = r.is_ok(), "background load took {:?}", t.elapsed());
                });
                if let Err(e) = spawned {
                    let err = SheetsError::Internal(format!("cannot start a sheet load: {e}"));
                    self.held.loading.lock()[i] = None;
                    load.finish(Err(err.clone()));
                    return Err(err);
                }
                // This call's own load: it waits without lending its share.
                load.wait(rows, budget)
            }
        }
    }

    /// Load the given sheets, several at a time when the machine has the cores (the
    /// streaming reader needs no lock on the workbook; calamine's loads take turns).
    pub fn load_sheets(&self, indices: &[usize], budget: &Budget) -> Result<()> {
        let todo: Vec<usize> = indices.iter().copied().filter(|&i| !self.is_loaded(i)).collect();
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(todo.len());
        if workers <= 1 {
            for i in todo {
                self.sheet_at(i, budget)?;
            }
            return Ok(());
        }
        let next = AtomicUsize::new(0);
        let first_error: Mutex<Option<SheetsError>> = Mutex::new(None);
        // Worker threads do not lend the call's admission share: only the call's own thread may.
        let worker_budget = budget.without_waiting();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = todo.get(k) else { return };
                        if first_error.lock().is_some() {
                            return;
                        }
                        if let Err(e) = self.sheet_at(i, &worker_budget) {
                            first_error.lock().get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        match first_error.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether sheet `i` is already in memory.
    pub fn is_loaded(&self, i: usize) -> bool {
        matches!(self.held.loaded.read().get(i), Some(Some(_)))
            || matches!(&self.source, Source::Overlay { base } if base.is_loaded(i))
    }

    /// Excel tables (xlsx only), read on first use.
    pub fn tables(&self) -> Result<Arc<Vec<TableInfo>>> {
        let mut t = self.tables.lock();
        if let Some(t) = &*t {
            return Ok(t.clone());
        }
        let loaded = match &self.source {
            Source::File { book, .. } => Arc::new(load::load_tables(&self.entry.id, &mut book.lock())?),
            Source::Overlay { base } => base.tables()?,
        };
        *t = Some(loaded.clone());
        Ok(loaded)
    }

    pub fn table(&self, name: &str) -> Result<TableInfo> {
        let tables = self.tables()?;
        if let Some(t) = tables.iter().find(|t| t.name.eq_ignore_ascii_case(name)) {
            return Ok(t.clone());
        }
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        let near = closest(name, names.iter().copied(), 1);
        let mut available = format!("tables are: {}", short_list(&names, 20));
        if let Some(n) = near.first() {
            available.push_str(&format!(" (did you mean '{n}'?)"));
        }
        Err(SheetsError::UnknownTable { query: name.to_string(), workbook_id: self.entry.id.clone(), available })
    }
}
