//! Recalculating and checking a fork: recalculate, get_changeset (cell-level diff against the
//! original), verify_workbook (targets before and after, new and resolved errors).

use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::clamp_limit;
use crate::Engine;
use crate::address::{parse_cell, quote_sheet, split_sheet};
use crate::error::{Result, SheetsError};
use crate::forks::cells::a1;
use crate::forks::fork::CellChange;
use crate::forks::recalc::{Backend, RecalcReport};
use crate::limits::Budget;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RecalculateParams {
    pub fork_id: String,
    /// in_process (default) or libreoffice.
    pub backend: Option<Backend>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RecalculateOutput {
    #[serde(flatten)]
    pub report: RecalcReport,
    pub took_ms: f64,
}

/// Recalculate a fork. The fork is not held while the engine runs: reads through it see its
/// last committed values, and `discard_fork` cancels the run (see `ForkStore::recalculate`).
pub fn recalculate(engine: &Engine, p: RecalculateParams, budget: &Budget) -> Result<RecalculateOutput> {
    let handle = engine.forks.get(&p.fork_id)?;
    let t = Instant::now();
    let backend = p.backend.unwrap_or(engine.forks.cfg.default_backend);
    let report = engine.forks.recalculate(&handle, backend, &engine.limits, budget)?;
    let took = t.elapsed();
    if report.backend == Backend::InProcess.as_str() {
        let s = &engine.forks.stats;
        s.recalcs_in_process.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.recalc_nanos_in_process.fetch_add(took.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(RecalculateOutput { report, took_ms: took.as_secs_f64() * 1e3 })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ChangesetParams {
    pub fork_id: String,
    pub sheet_name: Option<String>,
    /// value_edited, formula_edited, cleared, recalculated, new_error.
    pub kinds: Option<Vec<String>>,
    /// Max changes (default 200).
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ChangeRow {
    pub cell: String,
    pub kind: String,
    #[schemars(schema_with = "super::cell_schema")]
    pub before: serde_json::Value,
    #[schemars(schema_with = "super::cell_schema")]
    pub after: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_formula: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_formula: Option<String>,
}

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct ChangeSummary {
    pub value_edited: usize,
    pub formula_edited: usize,
    pub cleared: usize,
    pub recalculated: usize,
    pub new_error: usize,
    pub total: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ChangesetOutput {
    pub summary: ChangeSummary,
    pub changes: Vec<ChangeRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u32>,
    pub needs_recalc: bool,
    /// Structural edits (rows, columns, sheets), in order. Cell changes are listed against
    /// the workbook as the last of them left it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub structure: Vec<String>,
}

fn row(c: &CellChange) -> ChangeRow {
    ChangeRow {
        cell: format!("{}!{}", quote_sheet(&c.sheet), a1(c.at)),
        kind: c.kind.into(),
        before: c.before.to_json(),
        after: c.after.to_json(),
        before_formula: c.before_formula.as_ref().map(|f| format!("={f}")),
        after_formula: c.after_formula.as_ref().map(|f| format!("={f}")),
    }
}

const KINDS: [&str; 5] = ["value_edited", "formula_edited", "cleared", "recalculated", "new_error"];

pub fn get_changeset(engine: &Engine, p: ChangesetParams, budget: &Budget) -> Result<ChangesetOutput> {
    if let Some(k) = p.kinds.iter().flatten().find(|k| !KINDS.contains(&k.as_str())) {
        return Err(SheetsError::invalid("kinds", format!("'{k}' is not a kind; use {}", KINDS.join(", "))));
    }
    let handle = engine.forks.get(&p.fork_id)?;
    let all = engine.forks.changes(&handle, p.sheet_name.as_deref(), &engine.limits, &engine.cache.stats, budget)?;
    let f = handle.lock();
    let mut summary = ChangeSummary { total: all.len(), ..Default::default() };
    for c in &all {
        match c.kind {
            "value_edited" => summary.value_edited += 1,
            "formula_edited" => summary.formula_edited += 1,
            "cleared" => summary.cleared += 1,
            "recalculated" => summary.recalculated += 1,
            _ => summary.new_error += 1,
        }
    }
    let limit = clamp_limit(p.limit, 200, engine.caps.max_items.max(1000));
    let offset = p.offset.unwrap_or(0) as usize;
    let wanted: Vec<&CellChange> =
        all.iter().filter(|c| p.kinds.as_ref().is_none_or(|k| k.iter().any(|k| k == c.kind))).collect();
    let changes: Vec<ChangeRow> = wanted.iter().skip(offset).take(limit).map(|c| row(c)).collect();
    let next_offset = (offset + changes.len() < wanted.len()).then_some((offset + changes.len()) as u32);
    let structure = f.meta.structure.iter().map(|r| r.op.describe()).collect();
    Ok(ChangesetOutput { summary, changes, next_offset, needs_recalc: f.is_stale(), structure })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct VerifyParams {
    pub fork_id: String,
    /// Cells like "Summary!B12".
    pub targets: Option<Vec<String>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TargetRow {
    pub cell: String,
    #[schemars(schema_with = "super::cell_schema")]
    pub before: serde_json::Value,
    #[schemars(schema_with = "super::cell_schema")]
    pub after: serde_json::Value,
    pub changed: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorRow {
    pub cell: String,
    #[schemars(schema_with = "super::cell_schema")]
    pub value: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formula: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VerifyOutput {
    pub ok: bool,
    pub needs_recalc: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetRow>,
    /// First 100.
    pub new_errors: Vec<ErrorRow>,
    /// First 100.
    pub resolved_errors: Vec<ErrorRow>,
    pub calc_issues: usize,
}

pub fn verify_workbook(engine: &Engine, p: VerifyParams, budget: &Budget) -> Result<VerifyOutput> {
    let handle = engine.forks.get(&p.fork_id)?;
    let changes = engine.forks.changes(&handle, None, &engine.limits, &engine.cache.stats, budget)?;
    let f = handle.lock();
    let mut targets = Vec::new();
    for t in p.targets.iter().flatten() {
        let (sheet, addr) = split_sheet(t.trim());
        let at = parse_cell(addr.trim().replace('$', "").as_str())
            .ok_or_else(|| SheetsError::invalid("targets", format!("'{t}' is not a cell like \"Summary!B12\"")))?;
        let i = f.base().sheet_index(sheet.as_deref().or_else(|| f.base().sheets.first().map(|s| s.name.as_str())))?;
        let (after, _) = f.current(i, at.row, at.col, budget)?;
        // Before is the original's cell (carried through any structural edits): the
        // changeset's, or the cell as it is when it did not change.
        let name = &f.base().sheets[i].name;
        let before = changes
            .iter()
            .find(|c| c.at == at && c.sheet.eq_ignore_ascii_case(name))
            .map_or_else(|| after.clone(), |c| c.before.clone());
        targets.push(TargetRow {
            cell: format!("{}!{}", quote_sheet(&f.base().sheets[i].name), a1(at)),
            changed: !before.same_as(&after),
            before: before.to_json(),
            after: after.to_json(),
        });
    }
    let mut new_errors = Vec::new();
    let mut resolved_errors = Vec::new();
    for c in &changes {
        let cell = format!("{}!{}", quote_sheet(&c.sheet), a1(c.at));
        if c.after.is_error() && !c.before.is_error() && new_errors.len() < 100 {
            new_errors.push(ErrorRow {
                cell,
                value: c.after.to_json(),
                formula: c.after_formula.as_ref().map(|f| format!("={f}")),
            });
        } else if c.before.is_error() && !c.after.is_error() && resolved_errors.len() < 100 {
            resolved_errors.push(ErrorRow { cell, value: c.after.to_json(), formula: c.after_formula.clone() });
        }
    }
    let calc_issues = f.last_recalc().map_or(0, |r| r.issue_count);
    let needs_recalc = f.is_stale();
    Ok(VerifyOutput {
        ok: new_errors.is_empty() && calc_issues == 0 && !needs_recalc,
        needs_recalc,
        targets,
        new_errors,
        resolved_errors,
        calc_issues,
    })
}
