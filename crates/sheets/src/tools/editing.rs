//! Editing a fork: edit_batch (cell values and formulas) and transform_batch (clear, fill,
//! find/replace, write a matrix). Every batch can be previewed first (`mode: "preview"`): the
//! preview shows each cell before and after and stages the change under a `change_id`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::forks::count_edits;
use super::parse_range_arg;
use crate::Engine;
use crate::address::{CellRef, Rect, parse_cell, quote_sheet};
use crate::error::{Result, SheetsError};
use crate::forks::cells::{EditSpec, Input, Scalar, a1, check_formula, error_kind};
use crate::forks::persist::{Op, StyleOp};
use crate::forks::styles::StyleSpec;
use crate::limits::Budget;
use crate::sheet::Sheet;

/// preview: stage it and show before/after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Apply,
    Preview,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct EditBatchParams {
    pub fork_id: String,
    /// Unless an edit names its own ("Inputs!B2=5").
    pub sheet_name: Option<String>,
    /// "A1=100", "B2==SUM(A1:A2)" (formula), "C3=" (clear), "D4='007" (text).
    pub edits: Vec<EditSpec>,
    pub mode: Option<Mode>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PreviewRow {
    pub cell: String,
    #[schemars(schema_with = "super::cell_schema")]
    pub before: serde_json::Value,
    #[schemars(schema_with = "super::cell_schema")]
    pub after: serde_json::Value,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EditOutput {
    pub mode: String,
    pub cells: usize,
    pub formulas: usize,
    /// For apply_staged_change (preview only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    /// First 50 cells before and after (preview only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<PreviewRow>,
    pub needs_recalc: bool,
}

/// Apply or stage a batch of cell writes.
fn commit(engine: &Engine, fork_id: &str, ops: Vec<Op>, mode: Mode, tool: &str, budget: &Budget) -> Result<EditOutput> {
    let cfg = &engine.forks.cfg;
    if ops.len() > cfg.max_batch {
        return Err(too_many_cells("edits", ops.len() as u64, cfg.max_batch, None));
    }
    let formulas = ops.iter().filter(|o| o.i.formula().is_some()).count();
    let handle = engine.forks.get(fork_id)?;
    let mut f = handle.lock();
    let cells = ops.len();
    match mode {
        Mode::Apply => {
            f.apply(ops, cfg.max_ops)?;
            count_edits(&engine.forks.stats, cells);
            Ok(EditOutput {
                mode: "apply".into(),
                cells,
                formulas,
                change_id: None,
                preview: Vec::new(),
                needs_recalc: f.is_stale(),
            })
        }
        Mode::Preview => {
            if f.meta.staged.len() >= cfg.max_staged {
                return Err(SheetsError::invalid(
                    "mode",
                    format!(
                        "the fork has {} staged changes (the limit); apply or discard some first",
                        f.meta.staged.len()
                    ),
                ));
            }
            let mut preview = Vec::new();
            for op in ops.iter().take(50) {
                let i = f.base().sheet_index(Some(&op.s))?;
                let (before, before_f) = f.current(i, op.r, op.c, budget)?;
                preview.push(PreviewRow {
                    cell: format!("{}!{}", quote_sheet(&op.s), a1(CellRef::new(op.r, op.c))),
                    before: match before_f {
                        Some(bf) => serde_json::Value::String(format!("={bf}")),
                        None => before.to_json(),
                    },
                    after: op.i.to_json(),
                });
            }
            let id = f.stage(tool, ops, Vec::new(), Vec::new())?;
            Ok(EditOutput {
                mode: "preview".into(),
                cells,
                formulas,
                change_id: Some(id),
                preview,
                needs_recalc: f.is_stale(),
            })
        }
    }
}

/// The canonical sheet name a batch works on.
fn sheet_of(engine: &Engine, fork_id: &str, name: Option<&str>) -> Result<String> {
    let handle = engine.forks.get(fork_id)?;
    let f = handle.lock();
    f.sheet_name(name)
}

pub fn edit_batch(engine: &Engine, p: EditBatchParams, budget: &Budget) -> Result<EditOutput> {
    if p.edits.is_empty() {
        return Err(SheetsError::invalid("edits", "is empty; pass edits like [\"A1=100\", \"B2==SUM(A1:A2)\"]"));
    }
    let max = engine.forks.cfg.max_batch;
    if p.edits.len() > max {
        return Err(too_many_cells("edits", p.edits.len() as u64, max, None));
    }
    let default_sheet = p.sheet_name.as_deref();
    let mut ops = Vec::with_capacity(p.edits.len());
    let mut sheets: std::collections::HashMap<Option<String>, String> = std::collections::HashMap::new();
    for (n, spec) in p.edits.iter().enumerate() {
        let e = spec.resolve(n)?;
        let key = e.sheet.clone().or_else(|| default_sheet.map(str::to_string));
        let sheet = match sheets.get(&key) {
            Some(s) => s.clone(),
            None => {
                let s = sheet_of(engine, &p.fork_id, key.as_deref())?;
                sheets.insert(key, s.clone());
                s
            }
        };
        ops.push(Op { s: sheet, r: e.at.row, c: e.at.col, i: e.input });
    }
    refuse_hidden_cells(engine, &p.fork_id, &ops, budget)?;
    commit(engine, &p.fork_id, ops, p.mode.unwrap_or_default(), "edit_batch", budget)
}

/// A write to a cell a merged range covers (any but its top-left) would be kept in the file and
/// never shown: Excel refuses it, openpyxl drops it. Refused here, naming the cell to write.
fn refuse_hidden_cells(engine: &Engine, fork_id: &str, ops: &[Op], budget: &Budget) -> Result<()> {
    let handle = engine.forks.get(fork_id)?;
    let f = handle.lock();
    let mut sheets: Vec<(&str, std::sync::Arc<Sheet>)> = Vec::new();
    for op in ops {
        let sheet = match sheets.iter().find(|(n, _)| *n == op.s) {
            Some((_, s)) => s.clone(),
            None => {
                let s = f.base().sheet_at(f.base().sheet_index(Some(&op.s))?, budget)?;
                sheets.push((&op.s, s.clone()));
                s
            }
        };
        // (Most sheets have no merged ranges: no lookup per write there.)
        if !sheet.merged.is_empty()
            && let Some(m) = sheet.merge_at(op.r, op.c)
            && (m.top, m.left) != (op.r, op.c)
        {
            return Err(SheetsError::invalid(
                "edits",
                format!(
                    "{}!{} is inside the merged range {m}, which shows only its top-left cell; write to {} instead",
                    quote_sheet(&op.s),
                    a1(CellRef::new(op.r, op.c)),
                    m.top_left()
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TransformOp {
    /// Values and formulas (styles stay).
    Clear { range: String },
    /// A value, or a formula for the top-left cell filled like Excel.
    Fill {
        range: String,
        #[serde(default)]
        #[schemars(schema_with = "super::cell_schema")]
        value: Option<serde_json::Value>,
        #[serde(default)]
        formula: Option<String>,
    },
    /// In text cells (range: the sheet by default).
    Replace {
        #[serde(default)]
        range: Option<String>,
        find: String,
        replace: String,
        #[serde(default)]
        match_case: bool,
        #[serde(default)]
        whole_cell: bool,
    },
    /// A matrix from `start`; "=..." is a formula, null clears.
    Write {
        start: String,
        #[schemars(schema_with = "super::value_rows_schema")]
        rows: Vec<Vec<serde_json::Value>>,
    },
    /// Paste at `to` (top-left): formulas move.
    Copy { range: String, to: String },
    /// Cut and paste: formulas keep their references.
    Move { range: String, to: String },
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TransformBatchParams {
    pub fork_id: String,
    pub sheet_name: Option<String>,
    /// Every op reads the fork as it was before the batch.
    pub ops: Vec<TransformOp>,
    pub mode: Option<Mode>,
}

fn json_input(v: &serde_json::Value) -> Result<Input> {
    if let Some(t) = v.as_str()
        && t.chars().count() > crate::forks::cells::MAX_CELL_CHARS
    {
        return Err(SheetsError::invalid(
            "value",
            format!("a value has {} characters; a cell holds at most 32767", t.chars().count()),
        ));
    }
    Ok(match v {
        serde_json::Value::String(s) if s.starts_with('=') && s.len() > 1 => Input::Formula { f: check_formula(s)? },
        serde_json::Value::String(s) => {
            Input::Value { v: if error_kind(s).is_some() { Scalar::Error(s.clone()) } else { Scalar::Text(s.clone()) } }
        }
        serde_json::Value::Null => Input::Value { v: Scalar::Empty },
        serde_json::Value::Bool(b) => Input::Value { v: Scalar::Bool(*b) },
        serde_json::Value::Number(n) => Input::Value {
            v: Scalar::Number(
                n.as_f64()
                    .ok_or_else(|| SheetsError::invalid("value", format!("{n} is not a number a cell can hold")))?,
            ),
        },
        other => return Err(SheetsError::invalid("value", format!("{other} is not a cell value"))),
    })
}

/// The refusal of a batch that would write more cells than one call may: the total, the
/// largest op when there are several, the limit, and what to do.
pub(crate) fn too_many_cells(field: &'static str, cells: u64, max: usize, largest: Option<String>) -> SheetsError {
    let largest = largest.map(|l| format!(" (the largest: {l})")).unwrap_or_default();
    SheetsError::invalid(
        field,
        format!(
            "the batch would write {cells} cells{largest}; the limit is {max} cells per call (the sum over all its ops) — split it into several calls of at most {max} cells each"
        ),
    )
}

/// The most cells one transform op can write, found without building anything: the area it
/// covers, or for clear and replace the cells there are to change.
fn cells_bound(sheet: &Sheet, op: &TransformOp) -> Result<(u64, String)> {
    Ok(match op {
        TransformOp::Clear { range } => {
            let rect = parse_range_arg(sheet, "range", range)?;
            let n = sheet.cells_in(rect).count() + sheet.formulas_in(rect).count();
            (n as u64, format!("clear {range}"))
        }
        TransformOp::Fill { range, .. } => (parse_range_arg(sheet, "range", range)?.area(), format!("fill {range}")),
        TransformOp::Replace { range, .. } => {
            let rect = match range {
                Some(r) => Some(parse_range_arg(sheet, "range", r)?),
                None => sheet.used,
            };
            let n = rect.map_or(0, |rect| {
                sheet.cells_in(rect).filter(|c| matches!(c.value, crate::value::Value::Text(_))).count()
            });
            (n as u64, format!("replace in {}", range.as_deref().unwrap_or("the sheet")))
        }
        TransformOp::Write { start, rows } => (rows.iter().map(|r| r.len() as u64).sum(), format!("write at {start}")),
        TransformOp::Copy { range, .. } => (parse_range_arg(sheet, "range", range)?.area(), format!("copy {range}")),
        // The source cells are cleared and the target written.
        TransformOp::Move { range, .. } => {
            (parse_range_arg(sheet, "range", range)?.area().saturating_mul(2), format!("move {range}"))
        }
    })
}

/// Refuse a transform batch whose ops together could write more than `max` cells, before any
/// of it is built; returns the bound.
fn check_transform_bound(sheet: &Sheet, ops: &[TransformOp], max: usize, budget: &Budget) -> Result<u64> {
    let mut total: u64 = 0;
    let mut largest = (0u64, String::new());
    for (k, op) in ops.iter().enumerate() {
        budget.check()?;
        let (n, what) = cells_bound(sheet, op)?;
        total = total.saturating_add(n);
        if n > largest.0 {
            largest = (n, format!("op #{} {what}, {n} cells", k + 1));
        }
    }
    if total > max as u64 {
        let largest = (ops.len() > 1).then_some(largest.1);
        return Err(too_many_cells("ops", total, max, largest));
    }
    Ok(total)
}

pub fn transform_batch(engine: &Engine, p: TransformBatchParams, budget: &Budget) -> Result<EditOutput> {
    if p.ops.is_empty() {
        return Err(SheetsError::invalid("ops", "is empty; pass ops like [{\"op\": \"clear\", \"range\": \"B2:B9\"}]"));
    }
    let name = sheet_of(engine, &p.fork_id, p.sheet_name.as_deref())?;
    let view = engine.forks.view(&p.fork_id, budget)?;
    let sheet = engine.sheet(&view, Some(&name), budget)?;
    let max = engine.forks.cfg.max_batch;
    // The whole batch is bounded before anything is built: ops each under the limit must not
    // add up to more than it (300 fills of 100,000 cells would build 30 million writes).
    let bound = check_transform_bound(&sheet, &p.ops, max, budget)?;
    let mut ops: Vec<Op> = Vec::with_capacity(bound as usize);
    let mut push = |r: u32, c: u32, i: Input| ops.push(Op { s: name.clone(), r, c, i });
    for op in &p.ops {
        budget.check()?;
        match op {
            TransformOp::Clear { range } => {
                let rect = parse_range_arg(&sheet, "range", range)?;
                let mut cells: Vec<(u32, u32)> = sheet.cells_in(rect).map(|c| (c.row, c.col)).collect();
                cells.extend(sheet.formulas_in(rect).map(|f| (f.at.row, f.at.col)));
                cells.sort_unstable();
                cells.dedup();
                for (r, c) in cells {
                    push(r, c, Input::Value { v: Scalar::Empty });
                }
            }
            TransformOp::Fill { range, value, formula } => {
                let rect = parse_range_arg(&sheet, "range", range)?;
                let input = match (formula, value) {
                    (Some(f), None) => Input::Formula { f: check_formula(f)? },
                    (None, Some(v)) => json_input(v)?,
                    _ => return Err(SheetsError::invalid("ops", "fill needs exactly one of `value` or `formula`")),
                };
                for r in rect.top..=rect.bottom {
                    for c in rect.left..=rect.right {
                        let i = match &input {
                            Input::Formula { f } => Input::Formula {
                                f: crate::formula::shift(
                                    f,
                                    i64::from(r) - i64::from(rect.top),
                                    i64::from(c) - i64::from(rect.left),
                                ),
                            },
                            other => other.clone(),
                        };
                        push(r, c, i);
                    }
                }
            }
            TransformOp::Replace { range, find, replace, match_case, whole_cell } => {
                if find.is_empty() {
                    return Err(SheetsError::invalid("ops", "replace needs a non-empty `find`"));
                }
                let rect = match range {
                    Some(r) => parse_range_arg(&sheet, "range", r)?,
                    None => match sheet.used {
                        Some(u) => u,
                        None => continue,
                    },
                };
                let needle = if *match_case { find.clone() } else { find.to_lowercase() };
                for cell in sheet.cells_in(rect) {
                    let crate::value::Value::Text(_) = cell.value else { continue };
                    if sheet.formula_at(CellRef::new(cell.row, cell.col)).is_some() {
                        continue;
                    }
                    let text = sheet.text(&cell.value);
                    let hay = if *match_case { text.to_string() } else { text.to_lowercase() };
                    let new = if *whole_cell {
                        if hay != needle {
                            continue;
                        }
                        replace.clone()
                    } else if !hay.contains(&needle) {
                        continue;
                    } else if *match_case {
                        text.replace(find.as_str(), replace)
                    } else {
                        replace_ci(&text, find, replace)
                    };
                    push(cell.row, cell.col, Input::Value { v: Scalar::Text(new) });
                }
            }
            TransformOp::Copy { range, to } | TransformOp::Move { range, to } => {
                let src = parse_range_arg(&sheet, "range", range)?;
                let at = parse_cell(to.trim()).ok_or_else(|| {
                    SheetsError::invalid("ops", format!("`to` '{to}' is not a cell address like \"B2\""))
                })?;
                let (dr, dc) = (i64::from(at.row) - i64::from(src.top), i64::from(at.col) - i64::from(src.left));
                let dst = Rect::new(at.row, at.col, at.row + src.height() - 1, at.col + src.width() - 1);
                if dst.bottom >= crate::address::MAX_ROWS || dst.right >= crate::address::MAX_COLS {
                    return Err(SheetsError::invalid("ops", format!("the target {dst} runs off the sheet")));
                }
                if matches!(op, TransformOp::Move { .. }) {
                    for r in src.top..=src.bottom {
                        for c in src.left..=src.right {
                            if !dst.contains(r, c) {
                                push(r, c, Input::Value { v: Scalar::Empty });
                            }
                        }
                    }
                }
                for r in src.top..=src.bottom {
                    for c in src.left..=src.right {
                        let (tr, tc) = ((i64::from(r) + dr) as u32, (i64::from(c) + dc) as u32);
                        let moving = matches!(op, TransformOp::Move { .. });
                        let input = match sheet.formula_at(CellRef::new(r, c)) {
                            Some(f) if moving => Input::Formula { f: f.to_string() },
                            Some(f) => Input::Formula { f: crate::formula::shift(f, dr, dc) },
                            None => Input::Value { v: Scalar::from_value(&sheet.get(r, c), &sheet.strings) },
                        };
                        push(tr, tc, input);
                    }
                }
            }
            TransformOp::Write { start, rows } => {
                let at = parse_cell(start.trim()).ok_or_else(|| {
                    SheetsError::invalid("ops", format!("write start '{start}' is not a cell address like \"B2\""))
                })?;
                for (dr, row) in rows.iter().enumerate() {
                    for (dc, v) in row.iter().enumerate() {
                        push(at.row + dr as u32, at.col + dc as u32, json_input(v)?);
                    }
                }
            }
        }
    }
    if ops.is_empty() {
        return Ok(EditOutput {
            mode: match p.mode.unwrap_or_default() {
                Mode::Apply => "apply".into(),
                Mode::Preview => "preview".into(),
            },
            cells: 0,
            formulas: 0,
            change_id: None,
            preview: Vec::new(),
            needs_recalc: false,
        });
    }
    commit(engine, &p.fork_id, ops, p.mode.unwrap_or_default(), "transform_batch", budget)
}

/// Replace every case-insensitive occurrence of `find` in `text`.
fn replace_ci(text: &str, find: &str, replace: &str) -> String {
    let lower = text.to_lowercase();
    let needle = find.to_lowercase();
    if lower.len() != text.len() {
        // Lower-casing changed byte lengths (rare scripts): fall back to an exact match.
        return text.replace(find, replace);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (i, _) in lower.match_indices(&needle) {
        out.push_str(&text[last..i]);
        out.push_str(replace);
        last = i + needle.len();
    }
    out.push_str(&text[last..]);
    out
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StyleRange {
    pub range: String,
    #[serde(flatten)]
    pub style: StyleSpec,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StyleBatchParams {
    pub fork_id: String,
    pub sheet_name: Option<String>,
    pub ops: Vec<StyleRange>,
    pub mode: Option<Mode>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StyleOutput {
    pub mode: String,
    /// Cells whose format changes.
    pub cells: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
}

pub fn style_batch(engine: &Engine, p: StyleBatchParams, budget: &Budget) -> Result<StyleOutput> {
    if p.ops.is_empty() {
        return Err(SheetsError::invalid(
            "ops",
            "is empty; pass ops like [{\"range\": \"A1:D1\", \"font\": {\"bold\": true}}]",
        ));
    }
    let name = sheet_of(engine, &p.fork_id, p.sheet_name.as_deref())?;
    let view = engine.forks.view(&p.fork_id, budget)?;
    let sheet = engine.sheet(&view, Some(&name), budget)?;
    let max = engine.forks.cfg.max_batch;
    // Bound the whole batch first: every cell styled is an entry in the fork's style map.
    let mut cells: u64 = 0;
    let mut largest = (0u64, String::new());
    for (k, op) in p.ops.iter().enumerate() {
        let area = parse_range_arg(&sheet, "range", &op.range)?.area();
        cells = cells.saturating_add(area);
        if area > largest.0 {
            largest = (area, format!("op #{} {}, {area} cells", k + 1, op.range));
        }
    }
    if cells > max as u64 {
        return Err(too_many_cells("ops", cells, max, (p.ops.len() > 1).then_some(largest.1)));
    }
    let mut ops = Vec::with_capacity(p.ops.len());
    for op in &p.ops {
        op.style.validate()?;
        let rect = parse_range_arg(&sheet, "range", &op.range)?;
        ops.push(StyleOp {
            s: name.clone(),
            top: rect.top,
            left: rect.left,
            bottom: rect.bottom,
            right: rect.right,
            st: op.style.clone(),
        });
    }
    let handle = engine.forks.get(&p.fork_id)?;
    let mut f = handle.lock();
    match p.mode.unwrap_or_default() {
        Mode::Apply => {
            let held = f.cells_styled() as u64;
            if held + cells > engine.forks.cfg.max_ops as u64 {
                return Err(SheetsError::invalid(
                    "ops",
                    format!(
                        "this fork styles {held} cells and the limit is {}; save it and start a new fork, or restore a checkpoint",
                        engine.forks.cfg.max_ops
                    ),
                ));
            }
            for op in ops {
                f.apply_style(op)?;
            }
            Ok(StyleOutput { mode: "apply".into(), cells: cells as usize, change_id: None })
        }
        Mode::Preview => {
            if f.meta.staged.len() >= engine.forks.cfg.max_staged {
                return Err(SheetsError::invalid("mode", "too many staged changes; apply or discard some first"));
            }
            let id = f.stage("style_batch", Vec::new(), ops, Vec::new())?;
            Ok(StyleOutput { mode: "preview".into(), cells: cells as usize, change_id: Some(id) })
        }
    }
}
