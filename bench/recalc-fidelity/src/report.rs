//! Per-engine summary: the table and the JSON document.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::bench::{FileRow, RunConfig};
use crate::child::{EngineOutcome, Status};
use crate::engines::EngineKind;

const LEGEND: &str = "
files: compared/in scope. fidelity%: matched/cells over the files the engine loaded and evaluated.
fid.all%: matched over every in-scope cell (failed or timed-out files count as misses).
fid.nonvol%: fidelity% without cells calling RAND/RANDBETWEEN/RANDARRAY/NOW/TODAY.
fid.common%: fidelity% over the files every engine compared (like for like).
";

/// How many mismatching functions and mismatch kinds to list per engine.
const TOP_N: usize = 12;

#[derive(Debug, Clone, Serialize)]
pub struct EngineSummary {
    pub engine: String,
    /// Files in scope (Excel-saved, readable by calamine, with cached formula values).
    pub files_in_scope: usize,
    /// Formula cells with cached values in those files.
    pub cells_in_scope: usize,
    /// Files the engine loaded and evaluated.
    pub files_compared: usize,
    pub cells_compared: usize,
    pub matched: usize,
    /// matched / cells_compared.
    pub fidelity_pct: f64,
    /// matched / cells_in_scope: files the engine failed on count as all-mismatch.
    pub fidelity_all_pct: f64,
    /// Cells compared whose formula calls RAND/RANDBETWEEN/RANDARRAY/NOW/TODAY.
    pub volatile_cells: usize,
    /// Like `fidelity_pct`, without the volatile cells.
    pub fidelity_nonvolatile_pct: f64,
    /// Files every engine compared, and this engine's fidelity over their cells: the
    /// like-for-like figure.
    pub common_files: usize,
    pub common_cells: usize,
    pub fidelity_common_pct: f64,
    /// Load errors and panics (and process crashes while loading).
    pub load_failures: usize,
    /// Errors, panics and crashes while evaluating or reading results.
    pub eval_failures: usize,
    /// Of the failures above, the child processes that died (abort, signal).
    pub crashes: usize,
    pub timeouts: usize,
    pub harness_errors: usize,
    pub total_eval_ms: f64,
    pub median_eval_ms: Option<f64>,
    pub total_load_ms: f64,
    pub median_load_ms: Option<f64>,
    pub top_mismatch_functions: Vec<Counted>,
    pub top_mismatch_kinds: Vec<Counted>,
}

/// A label and how often it occurred.
#[derive(Debug, Clone, Serialize)]
pub struct Counted {
    pub name: String,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    pub corpus: String,
    pub timeout_s: u64,
    pub memory_limit_mb: u64,
    pub all_producers: bool,
    pub files_seen: usize,
    pub engines: &'a [EngineSummary],
    pub files: &'a [FileRow],
}

pub fn summarize(engines: &[EngineKind], rows: &[FileRow]) -> Vec<EngineSummary> {
    engines.iter().map(|engine| summarize_engine(engine.name(), rows)).collect()
}

fn summarize_engine(name: &str, rows: &[FileRow]) -> EngineSummary {
    let in_scope: Vec<&FileRow> = rows.iter().filter(|r| r.skipped.is_none()).collect();
    let common: Vec<&EngineOutcome> =
        in_scope.iter().filter(|r| all_ok(r)).filter_map(|r| r.engines.get(name)).collect();
    let common_cells = common.iter().map(|o| o.cells).sum();
    let outcomes: Vec<&EngineOutcome> = in_scope.iter().filter_map(|r| r.engines.get(name)).collect();
    let ok: Vec<&EngineOutcome> = outcomes.iter().copied().filter(|o| o.status == Status::Ok).collect();
    let cells_in_scope = in_scope.iter().map(|r| r.cached_cells).sum();
    let cells_compared = ok.iter().map(|o| o.cells).sum();
    let matched = ok.iter().map(|o| o.matched).sum();
    let volatile_cells = ok.iter().map(|o| o.volatile_cells).sum();
    let volatile_matched: usize = ok.iter().map(|o| o.volatile_matched).sum();
    let mut eval_times: Vec<f64> = ok.iter().filter_map(|o| o.eval_ms).collect();
    let mut load_times: Vec<f64> = ok.iter().filter_map(|o| o.load_ms).collect();
    EngineSummary {
        engine: name.to_string(),
        files_in_scope: in_scope.len(),
        cells_in_scope,
        files_compared: ok.len(),
        cells_compared,
        matched,
        fidelity_pct: percent(matched, cells_compared),
        fidelity_all_pct: percent(matched, cells_in_scope),
        volatile_cells,
        fidelity_nonvolatile_pct: percent(matched - volatile_matched, cells_compared - volatile_cells),
        common_files: common.len(),
        common_cells,
        fidelity_common_pct: percent(common.iter().map(|o| o.matched).sum(), common_cells),
        load_failures: count(&outcomes, |o| is_failure(o) && o.phase.as_deref() == Some("load")),
        eval_failures: count(&outcomes, |o| is_failure(o) && o.phase.as_deref() != Some("load")),
        crashes: count(&outcomes, |o| o.status == Status::Crashed),
        timeouts: count(&outcomes, |o| o.status == Status::Timeout),
        harness_errors: count(&outcomes, |o| o.status == Status::HarnessError),
        total_eval_ms: total(&eval_times),
        median_eval_ms: median(&mut eval_times),
        total_load_ms: total(&load_times),
        median_load_ms: median(&mut load_times),
        top_mismatch_functions: top(ok.iter().map(|o| &o.mismatch_functions)),
        top_mismatch_kinds: top(ok.iter().map(|o| &o.mismatch_kinds)),
    }
}

/// Whether every engine run on this file loaded and evaluated it.
fn all_ok(row: &FileRow) -> bool {
    !row.engines.is_empty() && row.engines.values().all(|o| o.status == Status::Ok)
}

fn is_failure(outcome: &EngineOutcome) -> bool {
    matches!(outcome.status, Status::LoadFailed | Status::EvalFailed | Status::Crashed)
}

fn count(outcomes: &[&EngineOutcome], pred: impl Fn(&EngineOutcome) -> bool) -> usize {
    outcomes.iter().filter(|o| pred(o)).count()
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 }
}

/// Sum that is `0.0`, not `-0.0`, for no values.
fn total(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |sum, v| sum + v)
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 0 { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] })
}

fn top<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, usize>>) -> Vec<Counted> {
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for map in maps {
        for (key, n) in map {
            *totals.entry(key).or_default() += n;
        }
    }
    let mut sorted: Vec<Counted> =
        totals.into_iter().map(|(name, count)| Counted { name: name.to_string(), count }).collect();
    sorted.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    sorted.truncate(TOP_N);
    sorted
}

pub fn render_json(config: &RunConfig, rows: &[FileRow], summaries: &[EngineSummary]) -> serde_json::Result<String> {
    let report = JsonReport {
        corpus: config.corpus.display().to_string(),
        timeout_s: config.limits.timeout.as_secs(),
        memory_limit_mb: config.limits.memory_mb,
        all_producers: config.all_producers,
        files_seen: rows.len(),
        engines: summaries,
        files: rows,
    };
    serde_json::to_string_pretty(&report)
}

pub fn render_table(rows: &[FileRow], summaries: &[EngineSummary]) -> String {
    let mut out = String::new();
    let skipped = rows.iter().filter(|r| r.skipped.is_some()).count();
    let in_scope = summaries.first().map_or(0, |s| s.files_in_scope);
    let cells = summaries.first().map_or(0, |s| s.cells_in_scope);
    let _ = writeln!(
        out,
        "{} .xlsx/.xlsm files seen, {skipped} skipped, {in_scope} in scope with {cells} cached formula cells\n",
        rows.len()
    );
    let header = [
        "engine",
        "files",
        "cells",
        "matched",
        "fidelity%",
        "fid.all%",
        "fid.nonvol%",
        "fid.common%",
        "load-fail",
        "eval-fail",
        "timeouts",
        "median-load-ms",
        "median-eval-ms",
        "total-eval-ms",
    ];
    let mut lines = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    lines.extend(summaries.iter().map(table_row));
    out.push_str(&align(&lines));
    out.push_str(LEGEND);
    for summary in summaries {
        render_top(&mut out, summary);
    }
    out
}

fn table_row(s: &EngineSummary) -> Vec<String> {
    vec![
        s.engine.clone(),
        format!("{}/{}", s.files_compared, s.files_in_scope),
        s.cells_compared.to_string(),
        s.matched.to_string(),
        format!("{:.2}", s.fidelity_pct),
        format!("{:.2}", s.fidelity_all_pct),
        format!("{:.2}", s.fidelity_nonvolatile_pct),
        format!("{:.2}", s.fidelity_common_pct),
        s.load_failures.to_string(),
        s.eval_failures.to_string(),
        s.timeouts.to_string(),
        s.median_load_ms.map_or("-".to_string(), |ms| format!("{ms:.2}")),
        s.median_eval_ms.map_or("-".to_string(), |ms| format!("{ms:.2}")),
        format!("{:.1}", s.total_eval_ms),
    ]
}

fn render_top(out: &mut String, s: &EngineSummary) {
    let _ = writeln!(out, "\n{}: top mismatching functions (first function of the formula)", s.engine);
    for Counted { name, count } in &s.top_mismatch_functions {
        let _ = writeln!(out, "  {count:>7}  {name}");
    }
    let _ = writeln!(out, "{}: top mismatch kinds (cached -> computed)", s.engine);
    for Counted { name, count } in &s.top_mismatch_kinds {
        let _ = writeln!(out, "  {count:>7}  {name}");
    }
}

/// Left-aligns the first column and right-aligns the others.
fn align(lines: &[Vec<String>]) -> String {
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..columns).map(|c| lines.iter().filter_map(|l| l.get(c)).map(|s| s.len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| if i == 0 { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
