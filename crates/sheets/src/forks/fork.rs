//! One fork: the original workbook it started from, its edits (a log of cell writes and, per
//! cell, the latest input), the values its last recalculation produced, and the view the read
//! tools see. An edit costs what it changes: a map insert and one appended log line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::cells::{Input, Scalar};
use super::engine::IronSession;
use super::persist::{ForkDir, ForkMeta, Op, StyleOp};
use super::recalc::RecalcReport;
use super::recalc_job::{RecalcDone, RecalcJob};
use super::styles::StyleSpec;
use super::xlsx::{self, CellWrite, PatchPlan, PatchReport, SheetPatch};
use crate::address::CellRef;
use crate::error::{Result, SheetsError};
use crate::limits::Budget;
use crate::sheet::{Sheet, SheetBuilder};
use crate::value::Value;
use crate::workbook::Workbook;
use crate::workspace::Entry;

pub(super) type CellMap<T> = BTreeMap<(u32, u32), T>;
/// Per sheet, shared copy-on-write: a snapshot costs one reference per sheet, and an edit made
/// while a snapshot is out copies only the sheet it touches.
pub(super) type Layer<T> = Vec<Arc<CellMap<T>>>;
type FormulaLookup = Box<dyn Fn(u32, u32) -> Option<String>>;

/// Versions are unique across forks, so a fork rebuilt in place (a structural edit) never
/// repeats the version a running recalculation started from.
static VERSIONS: AtomicU64 = AtomicU64::new(1);

fn next_version() -> u64 {
    VERSIONS.fetch_add(1, Ordering::Relaxed)
}

pub struct Fork {
    pub meta: ForkMeta,
    pub(super) dir: ForkDir,
    base: Arc<Workbook>,
    ops: Vec<Op>,
    /// Latest input per cell, by sheet index.
    edits: Layer<Input>,
    /// Recalculated values that differ from the original's (and every edited formula's
    /// value), as the file stores them (a date in a 1904 workbook is its 1904 serial).
    computed: Layer<Scalar>,
    style_ops: Vec<StyleOp>,
    /// The formatting change per cell (later changes merged over earlier ones).
    styles: Layer<StyleSpec>,
    /// Edits since the last recalculation.
    stale: bool,
    last_recalc: Option<RecalcReport>,
    view: Option<Arc<Workbook>>,
    session: Option<IronSession>,
    /// Ops already written into `session`.
    session_ops: usize,
    /// Changes whenever the cells may change (edits, a restored checkpoint, a rebuilt fork):
    /// a recalculation is committed only onto the version it started from.
    version: u64,
    /// Changes when the op log no longer extends what the engine's model has seen (a
    /// restored checkpoint, a rebuilt fork): such a model is dropped instead of reused.
    lineage: u64,
}

/// What a render or a recalculation reads of a fork, taken under its lock in O(sheets).
#[derive(Clone)]
pub struct Snapshot {
    pub(super) id: String,
    /// The id of the workbook the fork was made from.
    pub(super) workbook_id: String,
    pub(super) epoch: u32,
    pub(super) stale: bool,
    pub(super) base: Arc<Workbook>,
    /// The fork's own copy of the base's file (read instead of the original, which may have
    /// changed since).
    pub(super) base_copy: std::path::PathBuf,
    pub(super) edits: Layer<Input>,
    pub(super) computed: Layer<Scalar>,
    pub(super) styles: Layer<StyleSpec>,
}

/// A sheet value as the file stores it: a date of a 1904 workbook is loaded as its 1900
/// serial (so reads show the right day) and goes back to its 1904 serial here.
pub(super) fn file_scalar(v: &Value, pool: &[Arc<str>], date1904: bool) -> Scalar {
    match v {
        Value::Date(n) if date1904 => Scalar::Number(n - super::date1904::OFFSET_DAYS),
        v => Scalar::from_value(v, pool),
    }
}

/// A cell before and after, as the changeset shows it.
#[derive(Debug, Clone)]
pub struct CellChange {
    pub sheet: String,
    pub at: CellRef,
    pub kind: &'static str,
    pub before: Scalar,
    pub before_formula: Option<String>,
    pub after: Scalar,
    pub after_formula: Option<String>,
}

impl Fork {
    pub fn new(meta: ForkMeta, dir: ForkDir, base: Arc<Workbook>, ops: Vec<Op>, styles: Vec<StyleOp>) -> Result<Self> {
        let n = base.sheets.len();
        let mut f = Self {
            meta,
            dir,
            base,
            ops: Vec::new(),
            edits: vec![Arc::default(); n],
            computed: vec![Arc::default(); n],
            style_ops: Vec::new(),
            styles: vec![Arc::default(); n],
            stale: false,
            last_recalc: None,
            view: None,
            session: None,
            session_ops: 0,
            version: next_version(),
            lineage: next_version(),
        };
        f.replay(ops)?;
        for st in styles {
            f.lay_style(&st)?;
            f.style_ops.push(st);
        }
        Ok(f)
    }

    fn lay_style(&mut self, op: &StyleOp) -> Result<()> {
        let i = self.base.sheet_index(Some(&op.s))?;
        for r in op.top..=op.bottom {
            for c in op.left..=op.right {
                let merged = match self.styles[i].get(&(r, c)) {
                    Some(prev) => prev.merge(&op.st),
                    None => op.st.clone(),
                };
                Arc::make_mut(&mut self.styles[i]).insert((r, c), merged);
            }
        }
        Ok(())
    }

    /// Apply a formatting change to a range.
    pub fn apply_style(&mut self, op: StyleOp) -> Result<()> {
        self.base.sheet_index(Some(&op.s))?;
        self.dir.append_style(&op)?;
        self.lay_style(&op)?;
        self.style_ops.push(op);
        Ok(())
    }

    /// What is wrong with the fork's edit log, if anything (lines that could not be read back
    /// after a restart were skipped; see `persist`).
    pub fn damage(&self) -> Option<&str> {
        self.dir.damage()
    }

    pub fn style_count(&self) -> usize {
        self.style_ops.len()
    }

    pub fn cells_styled(&self) -> usize {
        self.styles.iter().map(|m| m.len()).sum()
    }

    fn replay(&mut self, ops: Vec<Op>) -> Result<()> {
        for op in &ops {
            let i = self.base.sheet_index(Some(&op.s))?;
            Arc::make_mut(&mut self.edits[i]).insert((op.r, op.c), op.i.clone());
        }
        self.stale = !ops.is_empty();
        self.ops = ops;
        Ok(())
    }

    /// Stage a change a preview showed, to apply or discard later: returns its change id.
    pub fn stage(
        &mut self,
        tool: &str,
        ops: Vec<Op>,
        styles: Vec<StyleOp>,
        structure: Vec<super::structure::StructOp>,
    ) -> Result<String> {
        self.meta.seq += 1;
        let id = format!("chg-{}", self.meta.seq);
        self.meta.staged.push(super::persist::Staged {
            id: id.clone(),
            tool: tool.into(),
            ops,
            styles,
            structure,
            created_unix: super::persist::now_unix(),
            layout: Some(self.meta.layout),
        });
        if let Err(e) = self.save_meta() {
            // Not staged unless it is on disk.
            self.meta.staged.pop();
            return Err(e);
        }
        Ok(id)
    }

    /// Persist the fork's description (checkpoints, staged changes, saved paths).
    pub fn save_meta(&self) -> Result<()> {
        self.dir.save_meta(&self.meta)
    }

    pub fn base(&self) -> &Arc<Workbook> {
        &self.base
    }

    pub fn op_count(&self) -> usize {
        self.ops.len()
    }

    pub fn cells_edited(&self) -> usize {
        self.edits.iter().map(|m| m.len()).sum()
    }

    /// Changes whenever the cells may have changed (unique across forks).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// After a structural edit the stored values may be out of date (a deleted row's
    /// dependents): recalculate, or have Excel recalculate on open.
    pub fn mark_structure_stale(&mut self) {
        self.stale = true;
    }

    pub fn last_recalc(&self) -> Option<&RecalcReport> {
        self.last_recalc.as_ref()
    }

    /// The canonical name of a sheet of this fork (exact, then case-insensitive), with suggestions.
    pub fn sheet_name(&self, name: Option<&str>) -> Result<String> {
        let i = self.base.sheet_index(name)?;
        Ok(self.base.sheets[i].name.clone())
    }

    /// The current content of a cell: its input if edited, else the original's.
    pub fn current(&self, sheet: usize, row: u32, col: u32, budget: &Budget) -> Result<(Scalar, Option<String>)> {
        if let Some(inp) = self.edits[sheet].get(&(row, col)) {
            return Ok(match inp {
                Input::Value { v } => (v.clone(), None),
                Input::Formula { f } => {
                    (self.computed[sheet].get(&(row, col)).cloned().unwrap_or(Scalar::Empty), Some(f.clone()))
                }
            });
        }
        let s = self.base.sheet_at(sheet, budget)?;
        let v = self.computed[sheet]
            .get(&(row, col))
            .cloned()
            .unwrap_or_else(|| file_scalar(&s.get(row, col), &s.strings, self.base.date1904));
        Ok((v, s.formula_at(CellRef::new(row, col)).map(|f| f.to_string())))
    }

    /// Apply a batch of writes: log them, then update the per-cell state.
    pub fn apply(&mut self, ops: Vec<Op>, max_ops: usize) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.ops.len() + ops.len() > max_ops {
            return Err(SheetsError::invalid(
                "edits",
                format!(
                    "this fork holds {} cell writes and the limit is {max_ops}; save it and start a new fork, or restore a checkpoint",
                    self.ops.len()
                ),
            ));
        }
        let mut idx = Vec::with_capacity(ops.len());
        for op in &ops {
            idx.push(self.base.sheet_index(Some(&op.s))?);
        }
        self.dir.append_ops(&ops)?;
        for (op, i) in ops.iter().zip(idx) {
            Arc::make_mut(&mut self.edits[i]).insert((op.r, op.c), op.i.clone());
            if self.computed[i].contains_key(&(op.r, op.c)) {
                Arc::make_mut(&mut self.computed[i]).remove(&(op.r, op.c));
            }
        }
        self.ops.extend(ops);
        self.stale = true;
        self.view = None;
        self.version = next_version();
        Ok(())
    }

    /// Go back to the state after the first `n` cell ops and `n_styles` formatting changes.
    pub fn truncate(&mut self, n: usize, n_styles: usize) -> Result<()> {
        let keep: Vec<Op> = self.ops[..n.min(self.ops.len())].to_vec();
        let keep_styles: Vec<StyleOp> = self.style_ops[..n_styles.min(self.style_ops.len())].to_vec();
        self.dir.rewrite_ops(&keep, &keep_styles)?;
        for m in &mut self.styles {
            *m = Arc::default();
        }
        self.style_ops.clear();
        for st in keep_styles {
            self.lay_style(&st)?;
            self.style_ops.push(st);
        }
        for m in &mut self.edits {
            *m = Arc::default();
        }
        for m in &mut self.computed {
            *m = Arc::default();
        }
        self.session = None;
        self.session_ops = 0;
        self.view = None;
        self.last_recalc = None;
        self.version = next_version();
        self.lineage = next_version();
        self.replay(keep)?;
        // Even with no edits left, recalculated values are gone: recalculate again to see them.
        self.stale = true;
        Ok(())
    }

    /// The workbook the read tools see: the original with this fork's edits and recalculated
    /// values; untouched sheets are the original's own.
    pub fn view(&mut self, entry: &Entry, budget: &Budget) -> Result<Arc<Workbook>> {
        if let Some(v) = &self.view {
            return Ok(v.clone());
        }
        let n = self.base.sheets.len();
        let mut changed: Vec<Option<Arc<Sheet>>> = vec![None; n];
        for (i, slot) in changed.iter_mut().enumerate() {
            if self.edits[i].is_empty() && self.computed[i].is_empty() {
                continue;
            }
            let base = self.base.sheet_at(i, budget)?;
            *slot = Some(Arc::new(materialize(&base, &self.edits[i], &self.computed[i], self.base.date1904)));
        }
        let v = Arc::new(Workbook::overlay(&self.base, entry.clone(), changed));
        self.view = Some(v.clone());
        Ok(v)
    }

    /// Take a recalculation out of the fork, to run without its lock: a snapshot of its cells
    /// and, for the in-process engine, its model and the edits the model has not seen.
    pub fn begin_recalc(&mut self, take_engine: bool) -> Result<RecalcJob> {
        let session = if take_engine { self.session.take() } else { None };
        let from = if session.is_some() { self.session_ops.min(self.ops.len()) } else { 0 };
        let mut pending = Vec::with_capacity(if take_engine { self.ops.len() - from } else { 0 });
        if take_engine {
            for op in &self.ops[from..] {
                pending.push((self.base.sheet_index(Some(&op.s))?, op.clone()));
            }
        }
        Ok(RecalcJob {
            snap: self.snapshot(),
            version: self.version,
            lineage: self.lineage,
            ops_seen: self.ops.len(),
            session,
            pending,
        })
    }

    /// Commit a finished recalculation if the fork is still what it started from; `None`
    /// (nothing committed) when the cells changed meanwhile. The engine's model is kept
    /// either way when it still follows the op log, so a new run only feeds it the new edits.
    pub fn finish_recalc(&mut self, done: RecalcDone) -> Option<RecalcReport> {
        if done.lineage == self.lineage
            && let Some(session) = done.session
        {
            self.session = Some(session);
            self.session_ops = done.ops_seen;
        }
        if done.version != self.version {
            return None;
        }
        self.computed = done.computed;
        self.stale = false;
        self.view = None;
        self.last_recalc = Some(done.report.clone());
        Some(done.report)
    }

    /// The fork's cells as they are now, for a render or a recalculation.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            id: self.meta.id.clone(),
            workbook_id: self.meta.workbook_id.clone(),
            epoch: self.meta.epoch,
            stale: self.stale,
            base: self.base.clone(),
            base_copy: self.dir.base_for(self.meta.epoch),
            edits: self.edits.clone(),
            computed: self.computed.clone(),
            styles: self.styles.clone(),
        }
    }

    /// The fork as an xlsx image: the original's bytes with only the touched parts rewritten.
    /// Without `with_values`, recalculated values are left out and Excel is asked to
    /// recalculate on open.
    pub fn render(&self, with_values: bool, budget: &Budget) -> Result<(Vec<u8>, PatchReport)> {
        self.snapshot().render(with_values, budget)
    }
    /// Every changed cell, sheet by sheet in order: edits first by position, with the values
    /// the last recalculation changed.
    pub fn changes(&self, sheet: Option<usize>, budget: &Budget) -> Result<Vec<CellChange>> {
        let mut out = Vec::new();
        for i in 0..self.base.sheets.len() {
            if sheet.is_some_and(|s| s != i) || (self.edits[i].is_empty() && self.computed[i].is_empty()) {
                continue;
            }
            let base = self.base.sheet_at(i, budget)?;
            let name = &self.base.sheets[i].name;
            let mut keys: Vec<(u32, u32)> = self.edits[i].keys().chain(self.computed[i].keys()).copied().collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                budget.check()?;
                let at = CellRef::new(key.0, key.1);
                let before = file_scalar(&base.get(key.0, key.1), &base.strings, self.base.date1904);
                let before_formula = base.formula_at(at).map(|f| f.to_string());
                let (after, after_formula, kind) = match self.edits[i].get(&key) {
                    Some(Input::Value { v }) => {
                        let kind = if matches!(v, Scalar::Empty) { "cleared" } else { "value_edited" };
                        (v.clone(), None, kind)
                    }
                    Some(Input::Formula { f }) => {
                        let v = self.computed[i].get(&key).cloned().unwrap_or(Scalar::Empty);
                        (v, Some(f.clone()), "formula_edited")
                    }
                    None => {
                        let v = self.computed[i].get(&key).cloned().unwrap_or(Scalar::Empty);
                        (v, before_formula.clone(), "recalculated")
                    }
                };
                let kind =
                    if after.is_error() && !before.is_error() && kind == "recalculated" { "new_error" } else { kind };
                out.push(CellChange { sheet: name.clone(), at, kind, before, before_formula, after, after_formula });
            }
        }
        Ok(out)
    }
}

impl Snapshot {
    /// The fork as an xlsx image: the original's bytes with only the touched parts rewritten.
    /// Without `with_values`, recalculated values are left out and Excel is asked to
    /// recalculate on open.
    pub fn render(&self, with_values: bool, budget: &Budget) -> Result<(Vec<u8>, PatchReport)> {
        let mut sheets_loaded: Vec<Arc<Sheet>> = Vec::new();
        let mut indices = Vec::new();
        for i in 0..self.base.sheets.len() {
            if !self.edits[i].is_empty() || (with_values && !self.computed[i].is_empty()) || !self.styles[i].is_empty()
            {
                sheets_loaded.push(self.base.sheet_at(i, budget)?);
                indices.push(i);
            }
        }
        let bytes = self.base.file_bytes_from_copy(&self.base_copy)?;
        let styled: Vec<(String, &CellMap<StyleSpec>)> = indices
            .iter()
            .filter(|&&i| !self.styles[i].is_empty())
            .map(|&i| (self.base.sheets[i].name.clone(), &*self.styles[i]))
            .collect();
        let (styles_xml, mut style_maps) = if styled.is_empty() {
            (None, Vec::new())
        } else {
            let (xml, maps) = xlsx::style_plan(&self.id, &bytes, &styled)?;
            (Some(xml), maps)
        };
        style_maps.reverse();
        let lookups: Vec<FormulaLookup> = sheets_loaded
            .iter()
            .map(|s| {
                let s = s.clone();
                Box::new(move |r: u32, c: u32| s.formula_at(CellRef::new(r, c)).map(|f| f.to_string())) as FormulaLookup
            })
            .collect();
        let mut drop_calc_chain = false;
        let mut plan_sheets = Vec::new();
        for (k, &i) in indices.iter().enumerate() {
            let base = &sheets_loaded[k];
            let mut cells: CellMap<CellWrite<'_>> = CellMap::new();
            for (key, input) in self.edits[i].iter() {
                let had_formula = base.formula_at(CellRef::new(key.0, key.1)).is_some();
                if input.formula().is_some() || had_formula {
                    drop_calc_chain = true;
                }
                let value = if with_values { self.computed[i].get(key) } else { None };
                cells.insert(*key, CellWrite::Input { input, value });
            }
            if with_values {
                for (key, v) in self.computed[i].iter() {
                    cells.entry(*key).or_insert(CellWrite::Value(v));
                }
            }
            let styles = if self.styles[i].is_empty() { BTreeMap::new() } else { style_maps.pop().unwrap_or_default() };
            for key in styles.keys() {
                cells.entry(*key).or_insert(CellWrite::Style);
            }
            plan_sheets.push(SheetPatch {
                sheet: self.base.sheets[i].name.clone(),
                cells,
                styles,
                formula_of: &*lookups[k],
            });
        }
        let has_edits = self.edits.iter().any(|m| !m.is_empty());
        let plan = PatchPlan {
            sheets: plan_sheets,
            drop_calc_chain,
            full_calc_on_load: (has_edits || self.epoch > 0) && (!with_values || self.stale),
            styles_xml,
        };
        xlsx::patch(&self.id, &bytes, &plan)
    }
}

/// The original sheet with edits and recalculated values laid over it.
/// A recalculated number in a cell the file shows as a date stays a date (in 1900 serials,
/// like every date the model holds).
fn materialize(base: &Sheet, edits: &CellMap<Input>, computed: &CellMap<Scalar>, date1904: bool) -> Sheet {
    let shift = if date1904 { super::date1904::OFFSET_DAYS } else { 0.0 };
    let mut b = SheetBuilder::with_pool(base.name.clone(), &base.strings);
    b.reserve(base.cell_count() + edits.len());
    for c in base.cells() {
        let k = (c.row, c.col);
        if !edits.contains_key(&k) && !computed.contains_key(&k) {
            b.push(c.row, c.col, c.value);
        }
    }
    let push_scalar = |b: &mut SheetBuilder, r: u32, c: u32, v: &Scalar| {
        let value = match v {
            Scalar::Empty => return,
            Scalar::Number(n) if matches!(base.get(r, c), Value::Date(_)) => Value::Date(n + shift),
            Scalar::Number(n) => crate::value::Value::Number(*n),
            Scalar::Bool(x) => crate::value::Value::Bool(*x),
            Scalar::Text(t) => b.intern(t),
            Scalar::Error(e) => match super::cells::error_kind(e) {
                Some(k) => crate::value::Value::Error(k),
                None => b.intern(e),
            },
        };
        b.push(r, c, value);
    };
    for (&(r, c), inp) in edits {
        match inp {
            Input::Value { v } => push_scalar(&mut b, r, c, v),
            Input::Formula { f } => {
                b.push_formula(r, c, f);
                if let Some(v) = computed.get(&(r, c)) {
                    push_scalar(&mut b, r, c, v);
                }
            }
        }
    }
    for (&(r, c), v) in computed {
        if !edits.contains_key(&(r, c)) {
            push_scalar(&mut b, r, c, v);
        }
    }
    for f in base.formulas() {
        if !edits.contains_key(&(f.at.row, f.at.col)) {
            b.push_formula(f.at.row, f.at.col, &f.text);
        }
    }
    b.finish(base.merged.clone())
}
