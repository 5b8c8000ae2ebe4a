//! A workbook held in the cache: metadata at once, sheets loaded on first use (one load per
//! sheet however many callers ask at the same time), and the file identity it was read from.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::error::{Result, SheetsError, closest, short_list};
use crate::limits::{Budget, Limits};
use crate::load::{self, Book, Format, SheetMeta, TableInfo};
use crate::sheet::Sheet;
use crate::workspace::{Entry, FileIdentity};

/// Where sheets not yet in memory come from.
enum Source {
    /// A reader over the file image.
    File { book: Box<Mutex<Book>>, file: Arc<[u8]> },
    /// Another workbook (a fork's view: changed sheets are held here, the rest come from the base).
    Overlay { base: Arc<Workbook> },
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
    loaded: RwLock<Vec<Option<Arc<Sheet>>>>,
    tables: Mutex<Option<Arc<Vec<TableInfo>>>>,
    bytes: AtomicUsize,
    stats: Arc<crate::cache::CacheStats>,
}

impl std::fmt::Debug for Workbook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workbook").field("id", &self.entry.id).finish()
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
        Ok(Self {
            entry,
            identity,
            format: opened.format,
            sheets: opened.sheets,
            defined_names: opened.defined_names,
            date1904: opened.date1904,
            has_vba: opened.has_vba,
            limits: limits.clone(),
            source: Source::File { book: Box::new(Mutex::new(opened.book)), file: opened.bytes },
            loaded: RwLock::new(vec![None; n]),
            tables: Mutex::new(None),
            bytes: AtomicUsize::new(file_bytes + 4096),
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
            loaded: RwLock::new(loaded),
            tables: Mutex::new(None),
            bytes: AtomicUsize::new(held),
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

    /// Bytes held (file image plus loaded sheets), for the cache's accounting.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
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

    /// The loaded sheet at `i`, loading it on first use.
    pub fn sheet_at(&self, i: usize, budget: &Budget) -> Result<Arc<Sheet>> {
        if let Some(Some(s)) = self.loaded.read().get(i) {
            return Ok(s.clone());
        }
        let meta = self.sheets.get(i).ok_or_else(|| SheetsError::Internal(format!("sheet index {i} out of range")))?;
        let (book, file) = match &self.source {
            Source::File { book, file } => (book, file),
            Source::Overlay { base } => return base.sheet_at(i, budget),
        };
        // One sheet loads at a time per workbook: a caller that finds another loading waits
        // for it (lending its share of the server out meanwhile), up to its load budget.
        let mut book = match book.try_lock() {
            Some(b) => b,
            None => {
                let wait = budget.load_remaining().unwrap_or(Duration::from_secs(3600));
                budget.while_waiting(|| book.try_lock_for(wait))?.ok_or_else(|| budget.load_timeout_error())?
            }
        };
        if let Some(Some(s)) = self.loaded.read().get(i) {
            return Ok(s.clone());
        }
        let sheet = if meta.kind == "worksheet" {
            load::load_sheet(&self.entry.id, &mut book, file, &meta.name, self.date1904, &self.limits, budget)?
        } else {
            // Chart and macro sheets have no cell grid to read.
            Sheet::empty(&meta.name)
        };
        let sheet = Arc::new(sheet);
        self.bytes.fetch_add(sheet.heap_bytes(), Ordering::Relaxed);
        self.stats.sheets_loaded.fetch_add(1, Ordering::Relaxed);
        self.stats.cells_loaded.fetch_add(sheet.cell_count() as u64, Ordering::Relaxed);
        self.loaded.write()[i] = Some(sheet.clone());
        Ok(sheet)
    }

    /// Whether sheet `i` is already in memory.
    pub fn is_loaded(&self, i: usize) -> bool {
        matches!(self.loaded.read().get(i), Some(Some(_)))
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
