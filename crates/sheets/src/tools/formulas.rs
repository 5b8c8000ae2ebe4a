//! Formulas: find_formula, formula_trace (precedents / dependents), scan_volatiles,
//! sheet_formula_map.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{NameCount, cell_schema, clamp_limit, is_false};
use crate::Engine;
use crate::address::{CellRef, Rect, quote_sheet, split_sheet};
use crate::error::{Result, SheetsError};
use crate::formula::{Token, relative_form, scan, volatile_calls};
use crate::limits::Budget;
use crate::sheet::Sheet;
use crate::workbook::Workbook;

fn all_sheets(engine: &Engine, wb: &Workbook, name: Option<&str>, budget: &Budget) -> Result<Vec<Arc<Sheet>>> {
    match name {
        Some(n) => Ok(vec![engine.sheet(wb, Some(n), budget)?]),
        None => (0..wb.sheets.len()).map(|i| wb.sheet_at(i, budget)).collect(),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FindFormulaParams {
    pub workbook_id: String,
    /// Text in the formula, e.g. "VLOOKUP" or "Inputs!".
    pub query: String,
    pub sheet_name: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FormulaMatch {
    pub sheet_name: String,
    pub cell: String,
    pub formula: String,
    #[schemars(schema_with = "cell_schema")]
    pub value: serde_json::Value,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FindFormulaOutput {
    pub matches: Vec<FormulaMatch>,
    pub total: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u32>,
}

pub fn find_formula(engine: &Engine, p: FindFormulaParams, budget: &Budget) -> Result<FindFormulaOutput> {
    let q = p.query.trim().trim_start_matches('=').to_lowercase();
    if q.is_empty() {
        return Err(SheetsError::invalid("query", "is empty; give text to look for in formulas, e.g. \"SUM(\""));
    }
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let limit = clamp_limit(p.limit, 50, engine.caps.max_items);
    let offset = p.offset.unwrap_or(0) as usize;
    let mut total = 0usize;
    let mut matches = Vec::new();
    for sheet in all_sheets(engine, &wb, p.sheet_name.as_deref(), budget)? {
        for (i, f) in sheet.formulas().iter().enumerate() {
            if i % 65_536 == 0 {
                budget.check()?;
            }
            if !f.text.to_lowercase().contains(&q) {
                continue;
            }
            if total >= offset && matches.len() < limit {
                matches.push(FormulaMatch {
                    sheet_name: sheet.name.clone(),
                    cell: f.at.to_string(),
                    formula: format!("={}", f.text),
                    value: sheet.json(&sheet.get(f.at.row, f.at.col)),
                });
            }
            total += 1;
        }
    }
    let next = offset + matches.len();
    Ok(FindFormulaOutput { matches, total: total as u32, next_offset: (next < total).then_some(next as u32) })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TraceDirection {
    /// What this cell's formula reads.
    #[default]
    Precedents,
    /// Formulas that read this cell.
    Dependents,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FormulaTraceParams {
    pub workbook_id: String,
    pub sheet_name: Option<String>,
    /// Cell, e.g. "D10".
    pub cell: String,
    pub direction: Option<TraceDirection>,
    /// Levels to follow (default 2, max 6).
    pub depth: Option<u32>,
    pub limit: Option<u32>,
    /// From a previous call's next_cursor.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TraceNode {
    /// Sheet-qualified cell or range.
    pub cell: String,
    pub depth: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formula: Option<String>,
    #[schemars(schema_with = "cell_schema")]
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub value: serde_json::Value,
    /// The cell this one was reached from.
    pub from: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FormulaTraceOutput {
    pub cell: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formula: Option<String>,
    pub direction: String,
    pub nodes: Vec<TraceNode>,
    pub total: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
}

/// Most nodes one trace explores before it stops and says truncated.
const TRACE_MAX_NODES: usize = 5_000;
/// Ranges up to this many cells are opened up to follow the formulas inside them.
const EXPAND_AREA: u64 = 10_000;

struct Resolver<'a> {
    engine: &'a Engine,
    wb: &'a Workbook,
    budget: &'a Budget,
    cache: HashMap<String, Arc<Sheet>>,
}

impl Resolver<'_> {
    fn sheet(&mut self, name: &str) -> Result<Arc<Sheet>> {
        if let Some(s) = self.cache.get(name) {
            return Ok(s.clone());
        }
        let s = self.engine.sheet(self.wb, Some(name), self.budget)?;
        self.cache.insert(name.to_string(), s.clone());
        Ok(s)
    }

    /// The references of a formula, as (sheet name, rect); defined names are resolved.
    fn refs(&self, formula: &str, here: &str) -> Vec<(String, Rect)> {
        let mut out = Vec::new();
        scan(formula, |t| match &t {
            Token::Ref { sheet, .. } => {
                if let Some(r) = t.rect() {
                    out.push((sheet.clone().unwrap_or_else(|| here.to_string()), r));
                }
            }
            Token::Name(n) => {
                if let Some((_, target)) = self.wb.defined_names.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)) {
                    let target = target.trim_start_matches('=');
                    let (s, r) = split_sheet(target);
                    if let Some(rect) = crate::address::parse_range(r, None) {
                        out.push((s.unwrap_or_else(|| here.to_string()), rect));
                    }
                }
            }
            Token::Function(_) => {}
        });
        out
    }
}

/// A formula cell and the (sheet, range) references it reads.
type FormulaRefs = (String, CellRef, Vec<(String, Rect)>);

fn qualified(sheet: &str, r: &Rect) -> String {
    format!("{}!{}", quote_sheet(sheet), r)
}

pub fn formula_trace(engine: &Engine, p: FormulaTraceParams, budget: &Budget) -> Result<FormulaTraceOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let root_sheet = engine.sheet(&wb, p.sheet_name.as_deref(), budget)?;
    let (_, cell_part) = split_sheet(&p.cell);
    let at = crate::address::parse_cell(cell_part)
        .ok_or_else(|| SheetsError::invalid("cell", format!("'{}' is not a cell like \"D10\"", p.cell)))?;
    let dir = p.direction.unwrap_or_default();
    let depth = p.depth.unwrap_or(2).clamp(1, 6);
    let limit = clamp_limit(p.limit, 50, engine.caps.max_items);
    let offset: usize = match p.cursor.as_deref() {
        Some(c) => c
            .parse()
            .map_err(|_| SheetsError::invalid("cursor", "pass next_cursor from the previous call unchanged"))?,
        None => 0,
    };
    let mut res = Resolver { engine, wb: &wb, budget, cache: HashMap::new() };
    res.cache.insert(root_sheet.name.clone(), root_sheet.clone());
    let root_name = qualified(&root_sheet.name, &Rect::cell(at));
    let mut nodes: Vec<TraceNode> = Vec::new();
    let mut truncated = false;
    let mut seen: HashSet<(String, Rect)> = HashSet::new();
    seen.insert((root_sheet.name.clone(), Rect::cell(at)));
    let mut queue: VecDeque<(String, Rect, u32)> = VecDeque::new();
    queue.push_back((root_sheet.name.clone(), Rect::cell(at), 0));

    // Dependents need every formula of the workbook with its references, built once per call.
    let mut index: Vec<FormulaRefs> = Vec::new();
    if dir == TraceDirection::Dependents {
        for i in 0..wb.sheets.len() {
            let s = wb.sheet_at(i, budget)?;
            for (k, f) in s.formulas().iter().enumerate() {
                if k % 16_384 == 0 {
                    budget.check()?;
                }
                index.push((s.name.clone(), f.at, res.refs(&f.text, &s.name)));
            }
        }
    }

    while let Some((sname, rect, d)) = queue.pop_front() {
        budget.check()?;
        if d >= depth {
            continue;
        }
        let from = qualified(&sname, &rect);
        let mut next: Vec<(String, Rect)> = Vec::new();
        match dir {
            TraceDirection::Precedents => {
                let sheet = res.sheet(&sname)?;
                // A cell: follow its formula. A range: follow the formulas inside it.
                let formulas: Vec<String> = if rect.area() == 1 {
                    sheet.formula_at(rect.top_left()).map(|f| f.to_string()).into_iter().collect()
                } else if rect.area() <= EXPAND_AREA {
                    sheet.formulas_in(rect).map(|f| f.text.to_string()).collect()
                } else {
                    Vec::new()
                };
                for f in formulas {
                    next.extend(res.refs(&f, &sname));
                }
            }
            TraceDirection::Dependents => {
                for (s, cell, refs) in &index {
                    if refs.iter().any(|(rs, rr)| rs.eq_ignore_ascii_case(&sname) && rr.intersects(&rect)) {
                        next.push((s.clone(), Rect::cell(*cell)));
                    }
                }
            }
        }
        for (s, r) in next {
            if !seen.insert((s.clone(), r)) {
                continue;
            }
            if nodes.len() >= TRACE_MAX_NODES {
                truncated = true;
                break;
            }
            let (formula, value) = match res.sheet(&s) {
                Ok(sh) if r.area() == 1 => {
                    (sh.formula_at(r.top_left()).map(|f| format!("={f}")), sh.json(&sh.get(r.top, r.left)))
                }
                _ => (None, serde_json::Value::Null),
            };
            let whole = r.height() >= crate::address::MAX_ROWS || r.width() >= crate::address::MAX_COLS;
            nodes.push(TraceNode { cell: qualified(&s, &r), depth: d + 1, formula, value, from: from.clone() });
            if !whole {
                queue.push_back((s, r, d + 1));
            }
        }
    }
    let total = nodes.len();
    let page: Vec<TraceNode> = nodes.into_iter().skip(offset).take(limit).collect();
    let end = offset + page.len();
    Ok(FormulaTraceOutput {
        formula: root_sheet.formula_at(at).map(|f| format!("={f}")),
        cell: root_name,
        direction: match dir {
            TraceDirection::Precedents => "precedents".into(),
            TraceDirection::Dependents => "dependents".into(),
        },
        nodes: page,
        total: total as u32,
        next_cursor: (end < total).then(|| end.to_string()),
        truncated,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ScanVolatilesParams {
    pub workbook_id: String,
    /// Default: all sheets.
    pub sheet_name: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VolatileCell {
    pub sheet_name: String,
    pub cell: String,
    pub formula: String,
    pub functions: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ScanVolatilesOutput {
    /// Formulas calling a volatile function.
    pub total: u32,
    pub by_function: Vec<NameCount>,
    pub cells: Vec<VolatileCell>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
}

pub fn scan_volatiles(engine: &Engine, p: ScanVolatilesParams, budget: &Budget) -> Result<ScanVolatilesOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let limit = clamp_limit(p.limit, 50, engine.caps.max_items);
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    let mut cells = Vec::new();
    let mut total = 0u32;
    for sheet in all_sheets(engine, &wb, p.sheet_name.as_deref(), budget)? {
        for (i, f) in sheet.formulas().iter().enumerate() {
            if i % 16_384 == 0 {
                budget.check()?;
            }
            let v = volatile_calls(&f.text);
            if v.is_empty() {
                continue;
            }
            total += 1;
            for name in &v {
                *counts.entry(name).or_default() += 1;
            }
            if cells.len() < limit {
                cells.push(VolatileCell {
                    sheet_name: sheet.name.clone(),
                    cell: f.at.to_string(),
                    formula: format!("={}", f.text),
                    functions: v.iter().map(|s| s.to_string()).collect(),
                });
            }
        }
    }
    let mut by_function: Vec<NameCount> =
        counts.into_iter().map(|(name, count)| NameCount { name: name.into(), count }).collect();
    by_function.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    Ok(ScanVolatilesOutput { truncated: (cells.len() as u32) < total, total, by_function, cells })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SheetFormulaMapParams {
    pub workbook_id: String,
    pub sheet_name: Option<String>,
    /// Groups to return (default 50).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FormulaGroup {
    /// The formula as written in its first cell.
    pub formula: String,
    /// Bounding range of the cells sharing it (relative references moved along).
    pub range: String,
    pub cells: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SheetFormulaMapOutput {
    pub sheet_name: String,
    pub formulas: u32,
    pub groups: Vec<FormulaGroup>,
    pub total_groups: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
}

pub fn sheet_formula_map(engine: &Engine, p: SheetFormulaMapParams, budget: &Budget) -> Result<SheetFormulaMapOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let sheet = engine.sheet(&wb, p.sheet_name.as_deref(), budget)?;
    let limit = clamp_limit(p.limit, 50, engine.caps.max_items);
    let mut groups: HashMap<String, (usize, Rect, u32)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for (i, f) in sheet.formulas().iter().enumerate() {
        if i % 16_384 == 0 {
            budget.check()?;
        }
        let key = relative_form(&f.text, f.at.row, f.at.col);
        match groups.get_mut(&key) {
            Some(g) => {
                g.1 = g.1.union(&Rect::cell(f.at));
                g.2 += 1;
            }
            None => {
                groups.insert(key.clone(), (i, Rect::cell(f.at), 1));
                order.push(key);
            }
        }
    }
    let mut list: Vec<&(usize, Rect, u32)> = order.iter().filter_map(|k| groups.get(k)).collect();
    list.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    let total = list.len();
    Ok(SheetFormulaMapOutput {
        sheet_name: sheet.name.clone(),
        formulas: sheet.formulas().len() as u32,
        groups: list
            .into_iter()
            .take(limit)
            .map(|(first, rect, n)| FormulaGroup {
                formula: format!("={}", sheet.formulas()[*first].text),
                range: rect.to_string(),
                cells: *n,
            })
            .collect(),
        total_groups: total as u32,
        truncated: total > limit,
    })
}
