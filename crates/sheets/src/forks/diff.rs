//! The changeset of a fork that went through structural edits: the fork as it is now against
//! the original, cell by cell, with the original's cells carried through the edits (a row
//! inserted above moves a cell down; that alone is not a change, nor is a formula whose
//! references the edit rewrote).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::cells::Scalar;
use super::fork::CellChange;
use super::persist::StructRecord;
use super::structure::{StructOp, rename_refs};
use crate::address::CellRef;
use crate::error::Result;
use crate::formula::{Axis, adjust_structure};
use crate::limits::Budget;
use crate::sheet::Sheet;
use crate::workbook::Workbook;

/// Where an original sheet's cells went: its name now, and the row/column edits it took.
struct Carried<'a> {
    name: String,
    shifts: Vec<(Axis, u32, i64)>,
    /// Every later op, for rewriting the original's formulas the way the edits did.
    ops: Vec<&'a StructOp>,
}

fn map(p: u32, at: u32, count: i64) -> Option<u32> {
    let (p, at) = (i64::from(p), i64::from(at));
    let n = if count >= 0 {
        if p >= at { p + count } else { p }
    } else if p < at {
        p
    } else if p < at - count {
        return None;
    } else {
        p + count
    };
    u32::try_from(n).ok()
}

/// Rewrite a formula of sheet `host` (its name at that point) through one op, as the file was.
fn carry_formula(f: &str, host: &str, op: &StructOp) -> String {
    match op {
        StructOp::InsertRows { sheet, at, count } => {
            adjust_structure(f, host, sheet, Axis::Rows, *at, i64::from(*count))
        }
        StructOp::DeleteRows { sheet, at, count } => {
            adjust_structure(f, host, sheet, Axis::Rows, *at, -i64::from(*count))
        }
        StructOp::InsertCols { sheet, at, count } => {
            adjust_structure(f, host, sheet, Axis::Cols, *at, i64::from(*count))
        }
        StructOp::DeleteCols { sheet, at, count } => {
            adjust_structure(f, host, sheet, Axis::Cols, *at, -i64::from(*count))
        }
        StructOp::RenameSheet { sheet, new_name } => rename_refs(f, sheet, Some(new_name)),
        StructOp::DeleteSheet { sheet } => rename_refs(f, sheet, None),
        StructOp::CreateSheet { .. }
        | StructOp::CopySheet { .. }
        | StructOp::CopyRange { .. }
        | StructOp::MoveRange { .. } => f.to_string(),
    }
}

/// Every changed cell of `now` against `original`, sheet by sheet (optionally one sheet of
/// `now`), through the structural edits `records`.
pub fn changes(
    original: &Workbook,
    now: &Workbook,
    records: &[StructRecord],
    only: Option<usize>,
    budget: &Budget,
) -> Result<Vec<CellChange>> {
    // Follow each original sheet through the edits.
    let mut carried: Vec<Option<Carried<'_>>> = original
        .sheets
        .iter()
        .map(|s| Some(Carried { name: s.name.clone(), shifts: Vec::new(), ops: Vec::new() }))
        .collect();
    for r in records {
        for c in carried.iter_mut() {
            let Some(cur) = c else { continue };
            let shift = match &r.op {
                StructOp::InsertRows { sheet, at, count } => Some((sheet, Axis::Rows, *at, i64::from(*count))),
                StructOp::DeleteRows { sheet, at, count } => Some((sheet, Axis::Rows, *at, -i64::from(*count))),
                StructOp::InsertCols { sheet, at, count } => Some((sheet, Axis::Cols, *at, i64::from(*count))),
                StructOp::DeleteCols { sheet, at, count } => Some((sheet, Axis::Cols, *at, -i64::from(*count))),
                _ => None,
            };
            if let Some((sheet, axis, at, count)) = shift
                && sheet.eq_ignore_ascii_case(&cur.name)
            {
                cur.shifts.push((axis, at, count));
            }
            cur.ops.push(&r.op);
            match &r.op {
                StructOp::RenameSheet { sheet, new_name } if sheet.eq_ignore_ascii_case(&cur.name) => {
                    cur.name.clone_from(new_name);
                }
                StructOp::DeleteSheet { sheet } if sheet.eq_ignore_ascii_case(&cur.name) => *c = None,
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for (ni, sheet_now) in now.sheets.iter().enumerate() {
        if only.is_some_and(|o| o != ni) {
            continue;
        }
        let after = now.sheet_at(ni, budget)?;
        let origin =
            carried.iter().position(|c| c.as_ref().is_some_and(|c| c.name.eq_ignore_ascii_case(&sheet_now.name)));
        let mut before: BTreeMap<(u32, u32), (Scalar, Option<String>)> = BTreeMap::new();
        if let Some(oi) = origin
            && let Some(c) = &carried[oi]
        {
            let orig = original.sheet_at(oi, budget)?;
            carry_cells(&orig, &original.sheets[oi].name, c, &mut before, budget)?;
        }
        diff_sheet(&sheet_now.name, &after, &before, &mut out, budget)?;
    }
    Ok(out)
}

/// The original sheet's cells at their positions now, with formulas rewritten by the edits.
fn carry_cells(
    orig: &Arc<Sheet>,
    first_name: &str,
    c: &Carried<'_>,
    into: &mut BTreeMap<(u32, u32), (Scalar, Option<String>)>,
    budget: &Budget,
) -> Result<()> {
    let place = |r: u32, col: u32| -> Option<(u32, u32)> {
        let (mut r, mut col) = (r, col);
        for &(axis, at, count) in &c.shifts {
            match axis {
                Axis::Rows => r = map(r, at, count)?,
                Axis::Cols => col = map(col, at, count)?,
            }
        }
        Some((r, col))
    };
    let carry = |f: &str| -> String {
        let mut host = first_name.to_string();
        let mut text = f.to_string();
        for op in &c.ops {
            text = carry_formula(&text, &host, op);
            if let StructOp::RenameSheet { sheet, new_name } = op
                && sheet.eq_ignore_ascii_case(&host)
            {
                host.clone_from(new_name);
            }
        }
        text
    };
    for (n, cell) in orig.cells().iter().enumerate() {
        if n % 4096 == 0 {
            budget.check()?;
        }
        if let Some(at) = place(cell.row, cell.col) {
            into.insert(at, (Scalar::from_value(&cell.value, &orig.strings), None));
        }
    }
    for f in orig.formulas() {
        if let Some(at) = place(f.at.row, f.at.col) {
            into.entry(at).or_insert((Scalar::Empty, None)).1 = Some(carry(&f.text));
        }
    }
    Ok(())
}

fn diff_sheet(
    name: &str,
    after: &Sheet,
    before: &BTreeMap<(u32, u32), (Scalar, Option<String>)>,
    out: &mut Vec<CellChange>,
    budget: &Budget,
) -> Result<()> {
    let mut now: BTreeMap<(u32, u32), (Scalar, Option<String>)> = BTreeMap::new();
    for (n, cell) in after.cells().iter().enumerate() {
        if n % 4096 == 0 {
            budget.check()?;
        }
        now.insert((cell.row, cell.col), (Scalar::from_value(&cell.value, &after.strings), None));
    }
    for f in after.formulas() {
        now.entry((f.at.row, f.at.col)).or_insert((Scalar::Empty, None)).1 = Some(f.text.to_string());
    }
    let empty = (Scalar::Empty, None);
    let mut keys: Vec<(u32, u32)> = before.keys().chain(now.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let (bv, bf) = before.get(&key).unwrap_or(&empty);
        let (av, af) = now.get(&key).unwrap_or(&empty);
        let same_formula = bf == af;
        if same_formula && bv.same_as(av) {
            continue;
        }
        let kind = match (bf, af) {
            (_, Some(_)) if !same_formula => "formula_edited",
            (Some(_), Some(_)) if av.is_error() && !bv.is_error() => "new_error",
            (Some(_), Some(_)) => "recalculated",
            _ if matches!(av, Scalar::Empty) => "cleared",
            _ => "value_edited",
        };
        out.push(CellChange {
            sheet: name.to_string(),
            at: CellRef::new(key.0, key.1),
            kind,
            before: bv.clone(),
            before_formula: bf.clone(),
            after: av.clone(),
            after_formula: af.clone(),
        });
    }
    Ok(())
}
