//! structure_batch: insert and delete rows and columns, create, rename, delete and copy sheets
//! in a fork. Applied to the file as Excel would (see `forks::structure`), then the fork is
//! rebased on the result.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::editing::{Mode, TransformBatchParams, TransformOp, too_many_cells, transform_batch};
use crate::Engine;
use crate::address::{MAX_COLS, MAX_ROWS, parse_col, parse_range, split_sheet};
use crate::error::{Result, SheetsError};
use crate::forks::ForkHandle;
use crate::forks::persist::Checkpoint;
use crate::forks::structure::{StructOp, check_sheet_name};
use crate::limits::Budget;
use crate::workbook::Workbook;

/// Most structural edits in one batch.
const MAX_STRUCT_OPS: usize = 100;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StructKind {
    InsertRows,
    DeleteRows,
    InsertCols,
    DeleteCols,
    CreateSheet,
    RenameSheet,
    DeleteSheet,
    CopySheet,
    CopyRange,
    MoveRange,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StructEdit {
    pub op: StructKind,
    pub sheet_name: Option<String>,
    /// Row number or column letter; inserts go before it.
    #[serde(default)]
    #[schemars(schema_with = "at_schema")]
    pub at: Option<serde_json::Value>,
    /// Default 1.
    pub count: Option<u32>,
    pub new_name: Option<String>,
    /// copy_range/move_range: the source ("B2:D9") and the top-left target ("F2").
    pub range: Option<String>,
    pub to: Option<String>,
}

fn at_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": ["integer", "string"]})
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StructureBatchParams {
    pub fork_id: String,
    pub ops: Vec<StructEdit>,
    pub mode: Option<Mode>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StructureOutput {
    pub mode: String,
    /// What was (or, in a preview, would be) done, in order.
    pub done: Vec<String>,
    /// The fork's sheets afterwards.
    pub sheets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    pub needs_recalc: bool,
}

fn need<'a>(v: &'a Option<String>, field: &'static str, op: &str) -> Result<&'a str> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| SheetsError::invalid(field, format!("{op} needs {field}")))
}

fn position(at: &Option<serde_json::Value>, rows: bool, op: &str) -> Result<u32> {
    let (what, max) = if rows { ("a row number (1-based)", MAX_ROWS) } else { ("a column letter or number", MAX_COLS) };
    let n = match at {
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Some(serde_json::Value::String(s)) if !rows => {
            s.trim().parse::<u32>().ok().or_else(|| parse_col(s.trim()).map(|c| c + 1))
        }
        Some(serde_json::Value::String(s)) => s.trim().parse::<u32>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= 1 && n <= max => Ok(n - 1),
        _ => Err(SheetsError::invalid("at", format!("{op} needs `at`: {what} between 1 and {max}; got {at:?}"))),
    }
}

/// Checked structural edits, with sheet names as the fork knows them.
fn to_ops(
    engine: &Engine,
    fork_id: &str,
    edits: &[StructEdit],
    budget: &Budget,
) -> Result<(Vec<StructOp>, Vec<String>)> {
    if edits.is_empty() {
        return Err(SheetsError::invalid("ops", "no edits; give at least one"));
    }
    if edits.len() > MAX_STRUCT_OPS {
        return Err(SheetsError::invalid(
            "ops",
            format!("{} edits in one batch; the limit is {MAX_STRUCT_OPS}", edits.len()),
        ));
    }
    let view = engine.forks.view(fork_id, budget)?;
    // Sheet names as the batch goes, to check each edit against the state before it.
    let mut names: Vec<String> = view.sheets.iter().map(|s| s.name.clone()).collect();
    let find = |names: &[String], n: &str| -> Result<String> {
        names.iter().find(|s| s.eq_ignore_ascii_case(n)).cloned().ok_or_else(|| {
            SheetsError::invalid(
                "sheet_name",
                format!("no sheet '{n}' at this point; the sheets are: {}", names.join(", ")),
            )
        })
    };
    let mut out = Vec::with_capacity(edits.len());
    for e in edits {
        let opname = serde_json::to_value(e.op).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let count = e.count.unwrap_or(1);
        use StructKind as K;
        let op = match e.op {
            K::InsertRows | K::DeleteRows | K::InsertCols | K::DeleteCols => {
                let sheet = find(&names, need(&e.sheet_name, "sheet_name", &opname)?)?;
                let rows = matches!(e.op, K::InsertRows | K::DeleteRows);
                let at = position(&e.at, rows, &opname)?;
                let max = if rows { MAX_ROWS } else { MAX_COLS };
                if count == 0 || count > max {
                    return Err(SheetsError::invalid("count", format!("{opname} needs a count between 1 and {max}")));
                }
                if matches!(e.op, K::InsertRows | K::InsertCols) {
                    // Nothing may be pushed off the sheet: Excel refuses that too.
                    if let Ok(i) = view.sheet_index(Some(&sheet))
                        && let Ok(s) = view.sheet_at(i, budget)
                        && let Some(used) = s.used
                    {
                        let last = if rows { used.bottom } else { used.right };
                        if u64::from(last) + u64::from(count) >= u64::from(max) && last >= at {
                            return Err(SheetsError::invalid(
                                "count",
                                format!(
                                    "inserting {count} would push cells past the sheet's last {}; delete some first",
                                    if rows { "row" } else { "column" }
                                ),
                            ));
                        }
                    }
                }
                match e.op {
                    K::InsertRows => StructOp::InsertRows { sheet, at, count },
                    K::DeleteRows => StructOp::DeleteRows { sheet, at, count: count.min(max - at) },
                    K::InsertCols => StructOp::InsertCols { sheet, at, count },
                    _ => StructOp::DeleteCols { sheet, at, count: count.min(max - at) },
                }
            }
            K::CreateSheet => {
                let name = need(&e.new_name, "new_name", &opname)?.to_string();
                check_sheet_name(&name, &names)?;
                names.push(name.clone());
                StructOp::CreateSheet { name }
            }
            K::RenameSheet => {
                let sheet = find(&names, need(&e.sheet_name, "sheet_name", &opname)?)?;
                let new_name = need(&e.new_name, "new_name", &opname)?.to_string();
                let others: Vec<String> = names.iter().filter(|n| **n != sheet).cloned().collect();
                check_sheet_name(&new_name, &others)?;
                for n in &mut names {
                    if *n == sheet {
                        n.clone_from(&new_name);
                    }
                }
                StructOp::RenameSheet { sheet, new_name }
            }
            K::DeleteSheet => {
                let sheet = find(&names, need(&e.sheet_name, "sheet_name", &opname)?)?;
                if names.len() == 1 {
                    return Err(SheetsError::invalid(
                        "ops",
                        "a workbook needs at least one sheet; create another first",
                    ));
                }
                names.retain(|n| *n != sheet);
                StructOp::DeleteSheet { sheet }
            }
            K::CopySheet => {
                let sheet = find(&names, need(&e.sheet_name, "sheet_name", &opname)?)?;
                let new_name = need(&e.new_name, "new_name", &opname)?.to_string();
                check_sheet_name(&new_name, &names)?;
                let after = names.iter().position(|n| *n == sheet).map_or(names.len(), |i| i + 1);
                names.insert(after, new_name.clone());
                StructOp::CopySheet { sheet, new_name }
            }
            K::CopyRange | K::MoveRange => {
                let sheet = find(&names, need(&e.sheet_name, "sheet_name", &opname)?)?;
                let range = need(&e.range, "range", &opname)?.to_string();
                let to = need(&e.to, "to", &opname)?.to_string();
                if e.op == K::CopyRange {
                    StructOp::CopyRange { sheet, range, to }
                } else {
                    StructOp::MoveRange { sheet, range, to }
                }
            }
        };
        out.push(op);
    }
    check_range_bound(&view, &out, engine.forks.cfg.max_batch, budget)?;
    Ok((out, names))
}

/// Refuse a batch whose range copies and moves together could write more cells than one call
/// may, before any of it runs (a copy writes its area, a move clears its source too).
fn check_range_bound(view: &Workbook, ops: &[StructOp], max: usize, budget: &Budget) -> Result<()> {
    let mut total: u64 = 0;
    let mut largest = (0u64, String::new());
    for (k, op) in ops.iter().enumerate() {
        let (sheet, range, factor) = match op {
            StructOp::CopyRange { sheet, range, .. } => (sheet, range, 1),
            StructOp::MoveRange { sheet, range, .. } => (sheet, range, 2),
            _ => continue,
        };
        // Whole rows or columns ("C:D") span the sheet's used range as it is now.
        let used = view.sheet_index(Some(sheet)).ok().and_then(|i| view.sheet_at(i, budget).ok()).and_then(|s| s.used);
        let rect = parse_range(split_sheet(range).1, used).ok_or_else(|| {
            SheetsError::invalid(
                "range",
                format!("'{range}' is not an A1 range; use forms like \"B3:F40\", \"A1\", \"C:D\" or \"2:10\""),
            )
        })?;
        let n = rect.area().saturating_mul(factor);
        total = total.saturating_add(n);
        if n > largest.0 {
            largest = (n, format!("op #{} {}, {n} cells", k + 1, op.describe()));
        }
    }
    if total > max as u64 {
        return Err(too_many_cells("ops", total, max, Some(largest.1)));
    }
    Ok(())
}

pub fn structure_batch(engine: &Engine, p: StructureBatchParams, budget: &Budget) -> Result<StructureOutput> {
    let (ops, after) = to_ops(engine, &p.fork_id, &p.ops, budget)?;
    let done: Vec<String> = ops.iter().map(StructOp::describe).collect();
    let handle = engine.forks.get(&p.fork_id)?;
    if p.mode.unwrap_or_default() == Mode::Preview {
        let mut f = handle.lock();
        if f.meta.staged.len() >= engine.forks.cfg.max_staged {
            return Err(SheetsError::invalid("mode", "too many staged changes; apply or discard some first"));
        }
        let id = f.stage("structure_batch", Vec::new(), Vec::new(), ops)?;
        return Ok(StructureOutput {
            mode: "preview".into(),
            done,
            sheets: after,
            change_id: Some(id),
            needs_recalc: false,
        });
    }
    let sheets = apply_batch(engine, &p.fork_id, &handle, &ops, budget)?;
    Ok(StructureOutput { mode: "apply".into(), done, sheets, change_id: None, needs_recalc: true })
}

/// Carry out a batch in order, all or none: runs of structural edits rebase the fork, range
/// copies and moves go through the transform tool; a failure returns the fork to where the
/// batch began.
pub fn apply_batch(
    engine: &Engine,
    fork_id: &str,
    handle: &ForkHandle,
    ops: &[StructOp],
    budget: &Budget,
) -> Result<Vec<String>> {
    let start = {
        let f = handle.lock();
        Checkpoint {
            id: String::new(),
            name: None,
            ops: f.op_count(),
            styles: f.style_count(),
            epoch: f.meta.epoch,
            created_unix: 0,
        }
    };
    let max = engine.forks.cfg.max_batch;
    let run = || -> Result<()> {
        // Cells the batch's range copies and moves wrote so far: bounded like one transform call
        // (checked before the batch; this catches ranges that grew as the batch went).
        let mut written: u64 = 0;
        let mut i = 0;
        while i < ops.len() {
            let (sheet, range, to, moving) = match &ops[i] {
                StructOp::CopyRange { sheet, range, to } => (sheet, range, to, false),
                StructOp::MoveRange { sheet, range, to } => (sheet, range, to, true),
                _ => {
                    let end = ops[i..].iter().position(StructOp::is_range_op).map_or(ops.len(), |k| i + k);
                    engine.forks.restructure(handle, &ops[i..end], &engine.limits, &engine.cache.stats, budget)?;
                    i = end;
                    continue;
                }
            };
            let (range, to) = (range.clone(), to.clone());
            let op = if moving { TransformOp::Move { range, to } } else { TransformOp::Copy { range, to } };
            let params = TransformBatchParams {
                fork_id: fork_id.to_string(),
                sheet_name: Some(sheet.clone()),
                ops: vec![op],
                mode: None,
            };
            written += transform_batch(engine, params, budget)?.cells as u64;
            if written > max as u64 {
                return Err(too_many_cells("ops", written, max, None));
            }
            i += 1;
        }
        Ok(())
    };
    if let Err(e) = run() {
        let (same_epoch, untouched) = {
            let f = handle.lock();
            let same = f.meta.epoch == start.epoch;
            (same, same && f.op_count() == start.ops && f.style_count() == start.styles)
        };
        if untouched {
            return Err(e);
        }
        let undo = if same_epoch {
            handle.lock().truncate(start.ops, start.styles)
        } else {
            engine.forks.rewind(handle, &start, &engine.limits, &engine.cache.stats)
        };
        if let Err(u) = undo {
            tracing::warn!(fork = %fork_id, "could not undo a failed structure_batch: {u}");
        }
        return Err(e);
    }
    Ok(handle.lock().base().sheets.iter().map(|s| s.name.clone()).collect())
}
