//! Gemba's spreadsheet domain: the workspace, loading with limits, the workbook cache, region
//! detection and the read tools as plain functions with typed parameters, results and errors.
//! Nothing here knows about MCP; the `gemba` binary adapts these functions to the protocol.

pub mod address;
pub mod cache;
pub mod cfb;
pub mod error;
pub mod file_image;
pub mod forks;
pub mod formula;
pub mod limits;
pub mod load;
pub mod phase;
pub mod regions;
pub mod sheet;
pub mod tools;
pub mod value;
pub mod workbook;
pub mod workspace;
pub mod xlsx_reader;

use std::path::Path;
use std::sync::Arc;

pub use error::{ErrorClass, Result, SheetsError};
pub use limits::{Budget, Limits, Waiting};

use cache::{Lookup, WorkbookCache};
use sheet::Sheet;
use workbook::{SheetView, Workbook};
use workspace::Workspace;

/// Caps on what one response may carry; a capped response says `truncated` and how to go on.
#[derive(Debug, Clone)]
pub struct Caps {
    /// Most cell values in one response.
    pub max_cells: usize,
    /// Most list items (matches, nodes, workbooks) in one response.
    pub max_items: usize,
    /// Most bytes of text (csv) in one response.
    pub max_bytes: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self { max_cells: 10_000, max_items: 500, max_bytes: 200_000 }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub cache_bytes: usize,
    pub limits: Limits,
    pub caps: Caps,
    pub forks: forks::ForkConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 512 * 1024 * 1024,
            limits: Limits::default(),
            caps: Caps::default(),
            forks: forks::ForkConfig::default(),
        }
    }
}

/// Everything the tools need: the workspace, the cache, the limits.
pub struct Engine {
    pub workspace: Workspace,
    pub cache: WorkbookCache,
    pub limits: Limits,
    pub caps: Caps,
    pub forks: forks::ForkStore,
}

impl Engine {
    pub fn new(root: &Path, config: EngineConfig) -> Result<Self> {
        let cache = WorkbookCache::new(config.cache_bytes);
        let forks = forks::ForkStore::open(config.forks, &config.limits, &cache.stats)?;
        Ok(Self { workspace: Workspace::open(root)?, cache, limits: config.limits, caps: config.caps, forks })
    }

    /// The workbook with this id, from the cache or loaded now.
    pub fn workbook(&self, id: &str, budget: &Budget) -> Result<Arc<Workbook>> {
        self.workbook_lookup(id, budget).map(|(w, _)| w)
    }

    pub fn workbook_lookup(&self, id: &str, budget: &Budget) -> Result<(Arc<Workbook>, Lookup)> {
        if id.trim().is_empty() {
            return Err(SheetsError::invalid("workbook_id", "is empty; call list_workbooks to get an id"));
        }
        if budget.is_inline() && (budget.bypasses_cache() || forks::ForkStore::is_fork_id(id)) {
            // A fork's view may be rebuilt, and a bypass reads the file: both may block.
            return Err(SheetsError::WouldBlock);
        }
        let t = std::time::Instant::now();
        if forks::ForkStore::is_fork_id(id) {
            let view = self.forks.view(id, budget);
            budget.stages().add_load(t.elapsed());
            return view.map(|v| (v, Lookup::Hit));
        }
        let entry = self.workspace.resolve(id)?;
        budget.stages().set_key(&entry.id);
        let r = if budget.bypasses_cache() {
            self.cache.load_uncached(&entry, &self.limits, budget).map(|w| (w, Lookup::Miss))
        } else {
            self.cache.get(&entry, &self.limits, budget)
        };
        let stages = budget.stages();
        stages.add_load(t.elapsed());
        if let Ok((_, lookup)) = &r {
            let code = match lookup {
                Lookup::Hit => 1,
                Lookup::Miss => 2,
            };
            // A miss anywhere in the call wins over a hit.
            stages.cache.fetch_max(code, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// The cells a read of workbook `id` could touch if it ran now without loading anything:
    /// those of sheet `sheet` (every sheet when `None`), or `None` when the workbook is not
    /// cached, the workspace listing would have to be rescanned to find it, or a sheet it
    /// could read is not in memory yet. A cheap look (no file is opened) for deciding whether
    /// a call may run inline ([`Budget::inline`]); the call itself checks again as it runs.
    pub fn warm_cells(&self, id: &str, sheet: Option<&str>) -> Option<u64> {
        let id = id.trim();
        if id.is_empty() || forks::ForkStore::is_fork_id(id) {
            return None;
        }
        let entry_id = self.workspace.listed_id(id)?;
        let wb = self.cache.peek(&entry_id)?;
        // A loaded sheet stays loaded while the workbook lives: reading it cannot load.
        let inline = Budget::unlimited().inline();
        let cells = |i: usize| -> Option<u64> {
            if !wb.is_loaded(i) {
                return None;
            }
            wb.sheet_at(i, &inline).ok().map(|s| s.cell_count() as u64)
        };
        match sheet {
            Some(name) => cells(wb.sheet_index(Some(name)).ok()?),
            None => (0..wb.sheets.len()).try_fold(0u64, |sum, i| Some(sum + cells(i)?)),
        }
    }

    /// Sheet `name`, or its first `rows` rows (0-based, exclusive) when it is still loading in
    /// the background and they are in: for reads that need only the top of a sheet.
    pub fn sheet_view(&self, wb: &Workbook, name: Option<&str>, rows: u32, budget: &Budget) -> Result<SheetView> {
        let i = wb.sheet_index(name)?;
        if wb.is_loaded(i) {
            return wb.sheet_at(i, budget).map(SheetView::Full);
        }
        if budget.is_inline() {
            return Err(SheetsError::WouldBlock);
        }
        let t = std::time::Instant::now();
        let v = wb.sheet_prefix_at(i, rows, budget)?;
        self.cache.enforce(wb.id());
        budget.stages().add_load(t.elapsed());
        budget.stages().cache.store(2, std::sync::atomic::Ordering::Relaxed);
        Ok(v)
    }

    /// A loaded sheet; keeps the cache within its byte bound after a sheet load.
    pub fn sheet(&self, wb: &Workbook, name: Option<&str>, budget: &Budget) -> Result<Arc<Sheet>> {
        let i = wb.sheet_index(name)?;
        let fresh = !wb.is_loaded(i);
        if !fresh {
            return wb.sheet_at(i, budget);
        }
        if budget.is_inline() {
            return Err(SheetsError::WouldBlock);
        }
        let t = std::time::Instant::now();
        let s = wb.sheet_at(i, budget)?;
        self.cache.enforce(wb.id());
        budget.stages().add_load(t.elapsed());
        budget.stages().cache.store(2, std::sync::atomic::Ordering::Relaxed);
        Ok(s)
    }
}
