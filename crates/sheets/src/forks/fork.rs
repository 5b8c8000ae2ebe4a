//! One fork: the original workbook it started from, its edits (a log of cell writes and, per
//! cell, the latest input), the values its last recalculation produced, and the view the read
//! tools see. An edit costs what it changes: a map insert and one appended log line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::cells::{Input, Scalar, a1};
use super::engine::{EngineSlot, IronSession};
use super::libreoffice::LibreOffice;
use super::persist::{ForkDir, ForkMeta, Op, StyleOp};
use super::recalc::{Backend, CellIssue, Computed, RecalcReport};
use super::styles::StyleSpec;
use super::xlsx::{self, CellWrite, PatchPlan, PatchReport, SheetPatch};
use crate::address::{CellRef, quote_sheet};
use crate::error::{Result, SheetsError};
use crate::limits::{Budget, Limits};
use crate::sheet::{Sheet, SheetBuilder};
use crate::workbook::Workbook;
use crate::workspace::Entry;

type CellMap<T> = BTreeMap<(u32, u32), T>;
type FormulaLookup = Box<dyn Fn(u32, u32) -> Option<String>>;

pub struct Fork {
    pub meta: ForkMeta,
    pub(super) dir: ForkDir,
    base: Arc<Workbook>,
    ops: Vec<Op>,
    /// Latest input per cell, by sheet index.
    edits: Vec<CellMap<Input>>,
    /// Recalculated values that differ from the original's (and every edited formula's value).
    computed: Vec<CellMap<Scalar>>,
    style_ops: Vec<StyleOp>,
    /// The formatting change per cell (later changes merged over earlier ones).
    styles: Vec<CellMap<StyleSpec>>,
    /// Edits since the last recalculation.
    stale: bool,
    last_recalc: Option<RecalcReport>,
    view: Option<Arc<Workbook>>,
    session: Option<IronSession>,
    /// Ops already written into `session`.
    session_ops: usize,
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
            edits: vec![CellMap::new(); n],
            computed: vec![CellMap::new(); n],
            style_ops: Vec::new(),
            styles: vec![CellMap::new(); n],
            stale: false,
            last_recalc: None,
            view: None,
            session: None,
            session_ops: 0,
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
                self.styles[i].insert((r, c), merged);
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

    pub fn style_count(&self) -> usize {
        self.style_ops.len()
    }

    pub fn cells_styled(&self) -> usize {
        self.styles.iter().map(|m| m.len()).sum()
    }

    fn replay(&mut self, ops: Vec<Op>) -> Result<()> {
        for op in &ops {
            let i = self.base.sheet_index(Some(&op.s))?;
            self.edits[i].insert((op.r, op.c), op.i.clone());
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
        });
        self.save_meta()?;
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
            .unwrap_or_else(|| Scalar::from_value(&s.get(row, col), &s.strings));
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
            self.edits[i].insert((op.r, op.c), op.i.clone());
            self.computed[i].remove(&(op.r, op.c));
        }
        self.ops.extend(ops);
        self.stale = true;
        self.view = None;
        Ok(())
    }

    /// Go back to the state after the first `n` cell ops and `n_styles` formatting changes.
    pub fn truncate(&mut self, n: usize, n_styles: usize) -> Result<()> {
        let keep: Vec<Op> = self.ops[..n.min(self.ops.len())].to_vec();
        let keep_styles: Vec<StyleOp> = self.style_ops[..n_styles.min(self.style_ops.len())].to_vec();
        self.dir.rewrite_ops(&keep, &keep_styles)?;
        for m in &mut self.styles {
            m.clear();
        }
        self.style_ops.clear();
        for st in keep_styles {
            self.lay_style(&st)?;
            self.style_ops.push(st);
        }
        for m in &mut self.edits {
            m.clear();
        }
        for m in &mut self.computed {
            m.clear();
        }
        self.session = None;
        self.session_ops = 0;
        self.view = None;
        self.last_recalc = None;
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
            *slot = Some(Arc::new(materialize(&base, &self.edits[i], &self.computed[i])));
        }
        let v = Arc::new(Workbook::overlay(&self.base, entry.clone(), changed));
        self.view = Some(v.clone());
        Ok(v)
    }

    /// Recalculate with `backend`; the new values replace the previous run's.
    pub fn recalculate(
        &mut self,
        backend: Backend,
        lo: &LibreOffice,
        limits: &Limits,
        budget: &Budget,
    ) -> Result<RecalcReport> {
        let names: Vec<String> = self.base.sheets.iter().map(|s| s.name.clone()).collect();
        // Steps: the model loaded, the edits applied, evaluated, the values taken in.
        budget.progress_begin(|| format!("recalculating {} ({})", self.meta.id, backend.as_str()), "steps", 4);
        let (results, load_ms, evaluate_ms) = match backend {
            Backend::InProcess => self.run_in_process(&names, budget)?,
            Backend::Libreoffice => self.run_libreoffice(lo, limits, budget)?,
        };
        budget.progress(3);
        let report = self.absorb(results, backend, load_ms, evaluate_ms, budget)?;
        budget.progress(4);
        Ok(report)
    }

    fn run_in_process(&mut self, names: &[String], budget: &Budget) -> Result<(Vec<Computed>, f64, f64)> {
        // The ops the engine has not seen yet, with their sheet indices.
        let mut pending = Vec::with_capacity(self.ops.len() - self.session_ops.min(self.ops.len()));
        let from = if self.session.is_some() { self.session_ops } else { 0 };
        for op in &self.ops[from..] {
            pending.push((self.base.sheet_index(Some(&op.s))?, op.clone()));
        }
        let session = self.session.take();
        let bytes = session.is_none().then(|| self.base.file_bytes());
        let (id, names) = (self.meta.id.clone(), names.to_vec());
        budget.check()?;
        // Load and evaluate on a thread of its own: the engine cannot be interrupted (a load
        // can take minutes on some files), so a call past its budget returns at the deadline,
        // and the engine's model is rebuilt next time.
        let guard = EngineSlot::take(&id)?;
        let progress = budget.observer().cloned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("gemba-recalc".into())
            .spawn(move || {
                let _slot = guard;
                let t = Instant::now();
                let mut session = match (session, bytes) {
                    (Some(s), _) => s,
                    (None, Some(b)) => match IronSession::load(&id, &b, &names) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    },
                    (None, None) => return,
                };
                let load = t.elapsed();
                let step = |n| {
                    if let Some(p) = &progress {
                        p.advance(n);
                    }
                };
                step(1);
                for (i, op) in &pending {
                    if let Err(e) = session.set(*i, op.r, op.c, &op.i) {
                        tracing::debug!(fork = %id, "engine refused {}!{}: {e}", op.s, a1(CellRef::new(op.r, op.c)));
                    }
                }
                step(2);
                let t = Instant::now();
                let r = session.evaluate();
                let _ = tx.send(Ok((session, r, load, t.elapsed())));
            })
            .map_err(|e| SheetsError::Internal(format!("cannot start the recalculation thread: {e}")))?;
        let wait = budget.remaining().unwrap_or(std::time::Duration::from_secs(24 * 3600));
        let fresh = from == 0;
        self.session_ops = 0;
        match rx.recv_timeout(wait) {
            Ok(Ok((session, Ok(results), load, took))) => {
                self.session = Some(session);
                self.session_ops = self.ops.len();
                let load_ms = if fresh { load.as_secs_f64() * 1e3 } else { 0.0 };
                Ok((results, load_ms, took.as_secs_f64() * 1e3))
            }
            Ok(Ok((_, Err(panic), _, _))) => Err(SheetsError::Unsupported {
                workbook_id: self.meta.id.clone(),
                reason: format!("the in-process engine failed ({panic}); use recalculate with backend=\"libreoffice\""),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                budget.check()?;
                Err(SheetsError::Internal("the recalculation thread ended without a result".into()))
            }
        }
    }

    fn run_libreoffice(
        &mut self,
        lo: &LibreOffice,
        limits: &Limits,
        budget: &Budget,
    ) -> Result<(Vec<Computed>, f64, f64)> {
        let t = Instant::now();
        let (input, _) = self.render(false, budget)?;
        let out = lo.recalculate(&input, budget)?;
        let took = t.elapsed().as_secs_f64() * 1e3;
        let opened = crate::load::open(&self.meta.id, out, limits)?;
        let date1904 = opened.date1904;
        let bytes = opened.bytes.clone();
        let mut book = opened.book;
        let mut results = Vec::new();
        for (i, meta) in self.base.sheets.iter().enumerate() {
            if meta.kind != "worksheet" {
                continue;
            }
            // The formula cells of this fork's sheet: the original's, less those overwritten by
            // values, plus the edited formulas.
            let base = self.base.sheet_at(i, budget)?;
            let mut cells: Vec<(u32, u32)> = base
                .formulas()
                .iter()
                .map(|f| (f.at.row, f.at.col))
                .filter(|k| !matches!(self.edits[i].get(k), Some(Input::Value { .. })))
                .collect();
            cells.extend(self.edits[i].iter().filter(|(_, v)| v.formula().is_some()).map(|(k, _)| *k));
            if cells.is_empty() {
                continue;
            }
            let recalculated =
                crate::load::load_sheet(&self.meta.id, &mut book, &bytes, &meta.name, date1904, limits, budget)?;
            for (r, c) in cells {
                let v = Scalar::from_value(&recalculated.get(r, c), &recalculated.strings);
                results.push(Computed { sheet: i, row: r, col: c, value: v, issue: None });
            }
        }
        Ok((results, 0.0, took))
    }

    fn absorb(
        &mut self,
        results: Vec<Computed>,
        backend: Backend,
        load_ms: f64,
        evaluate_ms: f64,
        budget: &Budget,
    ) -> Result<RecalcReport> {
        let n = self.base.sheets.len();
        let mut computed: Vec<CellMap<Scalar>> = vec![CellMap::new(); n];
        let mut report = RecalcReport {
            backend: backend.as_str().into(),
            formulas: results.len(),
            load_ms,
            evaluate_ms,
            ..Default::default()
        };
        let mut sheets: Vec<Option<Arc<Sheet>>> = vec![None; n];
        for c in results {
            let key = (c.row, c.col);
            let edited = self.edits[c.sheet].get(&key);
            if matches!(edited, Some(Input::Value { .. })) {
                continue;
            }
            let base = match &sheets[c.sheet] {
                Some(s) => s.clone(),
                None => {
                    let s = self.base.sheet_at(c.sheet, budget)?;
                    sheets[c.sheet] = Some(s.clone());
                    s
                }
            };
            let cached = Scalar::from_value(&base.get(c.row, c.col), &base.strings);
            if let Some(issue) = c.issue {
                // Keep what the file says rather than write an engine's guess.
                report.issue_count += 1;
                if report.issues.len() < 50 {
                    let cell =
                        format!("{}!{}", quote_sheet(&self.base.sheets[c.sheet].name), a1(CellRef::new(c.row, c.col)));
                    let kept = if edited.is_some() { serde_json::Value::Null } else { cached.to_json() };
                    report.issues.push(CellIssue::new(cell, issue, kept));
                }
                continue;
            }
            if edited.is_some() {
                if !c.value.same_as(&cached) || base.formula_at(CellRef::new(c.row, c.col)).is_none() {
                    report.changed += 1;
                }
                computed[c.sheet].insert(key, c.value);
            } else if !c.value.same_as(&cached) {
                report.changed += 1;
                computed[c.sheet].insert(key, c.value);
            }
        }
        self.computed = computed;
        self.stale = false;
        self.view = None;
        self.last_recalc = Some(report.clone());
        Ok(report)
    }

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
        let bytes = self.base.file_bytes();
        let styled: Vec<(String, &CellMap<StyleSpec>)> = indices
            .iter()
            .filter(|&&i| !self.styles[i].is_empty())
            .map(|&i| (self.base.sheets[i].name.clone(), &self.styles[i]))
            .collect();
        let (styles_xml, mut style_maps) = if styled.is_empty() {
            (None, Vec::new())
        } else {
            let (xml, maps) = xlsx::style_plan(&self.meta.id, &bytes, &styled)?;
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
            for (key, input) in &self.edits[i] {
                let had_formula = base.formula_at(CellRef::new(key.0, key.1)).is_some();
                if input.formula().is_some() || had_formula {
                    drop_calc_chain = true;
                }
                let value = if with_values { self.computed[i].get(key) } else { None };
                cells.insert(*key, CellWrite::Input { input, value });
            }
            if with_values {
                for (key, v) in &self.computed[i] {
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
            full_calc_on_load: (has_edits || self.meta.epoch > 0) && (!with_values || self.stale),
            styles_xml,
        };
        xlsx::patch(&self.meta.id, &bytes, &plan)
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
                let before = Scalar::from_value(&base.get(key.0, key.1), &base.strings);
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

/// The original sheet with edits and recalculated values laid over it.
fn materialize(base: &Sheet, edits: &CellMap<Input>, computed: &CellMap<Scalar>) -> Sheet {
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
