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
use crate::file_image::FileImage;
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
    /// The workbook's file, and the readers over it while loads may need them.
    File(Arc<FileSource>),
    /// Another workbook (a fork's view: changed sheets are held here, the rest come from the base).
    Overlay { base: Arc<Workbook> },
}

/// A workbook's file and its readers. Once a load ends, what later loads do not need is let
/// go: the file image always (the streaming reader then reads just the parts it needs from
/// the file, checked to be the same file), calamine's reader for xlsx the streaming reader
/// reads (built again from the file for a sheet it hands back, or for tables), and every
/// reader once all worksheets are in memory. Formats read only by calamine keep their
/// reader (and with it the image) until then: reopening them would parse them again.
struct FileSource {
    image: Arc<FileImage>,
    readers: Mutex<Readers>,
}

#[derive(Default, Clone)]
struct Readers {
    /// calamine's reader over the file image.
    book: Option<Arc<Mutex<Book>>>,
    /// The streaming reader (xlsx).
    fast: Option<Arc<XlsxBook>>,
}

impl FileSource {
    /// Bytes held: the image while pinned or calamine's reader (which holds it) is kept, and
    /// the streaming reader's strings.
    fn bytes(&self) -> usize {
        let r = self.readers.lock();
        let image = if r.book.is_some() || self.image.is_pinned() { self.image.len() as usize } else { 0 };
        image + r.fast.as_ref().map_or(0, |f| f.heap_bytes())
    }

    /// After a load ends: let go of what no later load needs (see [`FileSource`]).
    fn settle(&self, held: &Held, sheets: &[SheetMeta]) {
        let all_loaded = {
            let loaded = held.loaded.read();
            sheets.iter().zip(loaded.iter()).all(|(m, s)| m.kind != "worksheet" || s.is_some())
        };
        let mut r = self.readers.lock();
        if all_loaded {
            *r = Readers::default();
        } else if let Some(fast) = &r.fast {
            fast.release_image(self.image.clone());
            r.book = None;
        } else {
            return;
        }
        drop(r);
        self.image.release();
    }

    /// calamine's reader: the one held, or one opened again over the file (checked to be the
    /// file loaded).
    fn book(&self, id: &str, book: Option<Arc<Mutex<Book>>>, limits: &Limits) -> Result<Arc<Mutex<Book>>> {
        if let Some(b) = book {
            return Ok(b);
        }
        let opened = load::open_image(id, self.image.whole()?, limits)?;
        Ok(Arc::new(Mutex::new(opened.book)))
    }
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
    /// Every sheet of the workbook (to know when all are in memory).
    sheets: Arc<[SheetMeta]>,
    source: Arc<FileSource>,
    readers: Readers,
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
        if let Some(fast) = &self.readers.fast
            && let Some(s) =
                load::load_sheet_fast(&self.id, fast, self.index, &self.meta.name, &self.limits, budget, progress)?
        {
            return Ok(s);
        }
        let book = self.source.book(&self.id, self.readers.book.clone(), &self.limits)?;
        let file = self.source.image.whole()?;
        // calamine's reader is one per workbook: one sheet at a time through it.
        let mut book = match book.try_lock() {
            Some(b) => b,
            None => {
                let wait = budget.load_remaining().unwrap_or(Duration::from_secs(3600));
                budget.while_waiting(|| book.try_lock_for(wait))?.ok_or_else(|| budget.load_timeout_error())?
            }
        };
        load::load_sheet(&self.id, &mut book, &file, &self.meta.name, self.date1904, &self.limits, budget)
    }

    /// Run the load and hand its result to the workbook and to everyone waiting.
    fn run(mut self, load: &SheetLoad, budget: &Budget) -> Result<Arc<Sheet>> {
        let r = self.read(budget, load).map(Arc::new);
        let held = self.held.clone();
        match &r {
            Ok(sheet) => {
                held.bytes.fetch_add(sheet.heap_bytes(), Ordering::Relaxed);
                self.stats.sheets_loaded.fetch_add(1, Ordering::Relaxed);
                self.stats.cells_loaded.fetch_add(sheet.cell_count() as u64, Ordering::Relaxed);
                held.loaded.write()[self.index] = Some(sheet.clone());
            }
            Err(e) => tracing::debug!(workbook = %self.id, sheet = %self.meta.name, "sheet load failed: {e}"),
        }
        // Before anyone waiting is answered, so the memory they see is what stays: this load's
        // hold on the readers first, so what the workbook lets go is freed.
        self.readers = Readers::default();
        self.source.settle(&held, &self.sheets);
        if r.as_ref().is_ok_and(|s| s.heap_bytes() >= TRIM_AFTER_BYTES) {
            give_back_freed_memory();
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
    /// The same, shared with loads running on threads of their own.
    all_sheets: Arc<[SheetMeta]>,
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
        let opened = load::open(&entry.id, bytes, limits)?;
        let image = Arc::new(FileImage::new(&entry.id, &entry.abs_path, identity.clone(), opened.bytes.clone()));
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
        // The streaming reader reads xlsx sheets: calamine's reader (its shared strings and
        // styles parsed again) is built only for a sheet it hands back.
        let book = fast.is_none().then(|| Arc::new(Mutex::new(opened.book)));
        let source = FileSource { image, readers: Mutex::new(Readers { book, fast }) };
        Ok(Self {
            entry,
            identity,
            format: opened.format,
            all_sheets: opened.sheets.clone().into(),
            sheets: opened.sheets,
            defined_names: opened.defined_names,
            date1904: opened.date1904,
            has_vba: opened.has_vba,
            limits: limits.clone(),
            source: Source::File(Arc::new(source)),
            held: Arc::new(Held {
                loaded: RwLock::new(vec![None; n]),
                loading: Mutex::new(vec![None; n]),
                bytes: AtomicUsize::new(4096),
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
            all_sheets: base.all_sheets.clone(),
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

    /// The file image a workbook was read from (a view answers with its base's): held no
    /// longer than loads need it, so usually read again from the file, checked to be the
    /// same file ([`SheetsError::ChangedOnDisk`] when it is not).
    pub fn file_bytes(&self) -> Result<Arc<[u8]>> {
        match &self.source {
            Source::File(f) => f.image.whole(),
            Source::Overlay { base } => base.file_bytes(),
        }
    }

    /// [`Workbook::file_bytes`] from a copy of the file (a fork's base copy) when it holds the
    /// same bytes, so a change to the original after the copy was made does not matter.
    pub fn file_bytes_from_copy(&self, copy: &std::path::Path) -> Result<Arc<[u8]>> {
        match &self.source {
            Source::File(f) => f.image.whole_from_copy(copy),
            Source::Overlay { base } => base.file_bytes_from_copy(copy),
        }
    }

    /// Whether its file's whole image is in memory (a view answers for its base): true from
    /// the open until the first sheet loads (for xlsx) or all sheets are loaded.
    pub fn file_image_in_memory(&self) -> bool {
        match &self.source {
            Source::File(f) => f.image.in_memory(),
            Source::Overlay { base } => base.file_image_in_memory(),
        }
    }

    /// Whether a read of its file found it changed since the load (the cache then loads it
    /// again even when its size and modification time look the same).
    pub fn changed_on_disk(&self) -> bool {
        match &self.source {
            Source::File(f) => f.image.has_changed(),
            Source::Overlay { base } => base.changed_on_disk(),
        }
    }

    pub fn id(&self) -> &str {
        &self.entry.id
    }

    /// Bytes held (loaded sheets, an estimate for sheets loading, and the file image and
    /// readers while kept), for the cache's accounting.
    pub fn bytes(&self) -> usize {
        let source = match &self.source {
            Source::File(f) => f.bytes(),
            Source::Overlay { .. } => 0,
        };
        self.held.bytes.load(Ordering::Relaxed) + source
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
        let source = match &self.source {
            Source::File(f) => f,
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
                    let readers = source.readers.lock().clone();
                    let xml = readers.fast.as_ref().and_then(|f| f.sheet_xml_bytes(i)).unwrap_or(0);
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
                        sheets: self.all_sheets.clone(),
                        source: source.clone(),
                        readers,
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
                    let (id, sheet) = (job.id.clone(), job.meta.name.clone());
                    let r = job.run(&l, &job_budget);
                    tracing::debug!(workbook = %id, sheet = %sheet, ok = r.is_ok(), "background load took {:?}", t.elapsed());
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
            Source::File(f) => {
                let held = f.readers.lock().book.clone();
                let book = f.book(&self.entry.id, held, &self.limits)?;
                let mut book = book.lock();
                Arc::new(load::load_tables(&self.entry.id, &mut book)?)
            }
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
