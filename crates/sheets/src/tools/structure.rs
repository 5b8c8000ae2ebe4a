//! Structure: sheet_overview (regions), sheet_statistics, table_profile.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{RegionInfo, Selection, cell_schema, is_false};
use crate::Engine;
use crate::address::{CellRef, Rect, col_name};
use crate::error::Result;
use crate::limits::Budget;
use crate::regions;
use crate::value::Value;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SheetParams {
    pub workbook_id: String,
    /// Optional when the workbook has one sheet.
    pub sheet_name: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SheetOverviewOutput {
    pub sheet_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_range: Option<String>,
    pub regions: Vec<RegionInfo>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged_ranges: Vec<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
}

pub fn sheet_overview(engine: &Engine, p: SheetParams, budget: &Budget) -> Result<SheetOverviewOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let sheet = engine.sheet(&wb, p.sheet_name.as_deref(), budget)?;
    let regs = super::regions_of(&sheet, budget);
    let max = engine.caps.max_items.min(200);
    Ok(SheetOverviewOutput {
        sheet_name: sheet.name.clone(),
        used_range: sheet.used.map(|u| u.to_string()),
        truncated: regs.len() > max || regs.len() >= regions::MAX_REGIONS || sheet.merged.len() > 50,
        regions: regs.iter().take(max).map(|r| RegionInfo::from_region(r, 60)).collect(),
        merged_ranges: sheet.merged.iter().take(50).map(|m| m.to_string()).collect(),
    })
}

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct TypeCounts {
    pub number: u64,
    pub text: u64,
    pub bool: u64,
    pub date: u64,
    pub duration: u64,
    pub error: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CellError {
    pub cell: String,
    pub error: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SheetStatisticsOutput {
    pub sheet_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_range: Option<String>,
    /// Non-empty cells.
    pub cells: u64,
    pub by_type: TypeCounts,
    pub formulas: u64,
    /// Formula cells with no cached value (never calculated).
    pub uncalculated: u64,
    /// Share of the used range that is filled, 0..1.
    pub density: f64,
    pub merged_ranges: u64,
    pub regions: u64,
    /// First error cells.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<CellError>,
}

pub fn sheet_statistics(engine: &Engine, p: SheetParams, budget: &Budget) -> Result<SheetStatisticsOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let sheet = engine.sheet(&wb, p.sheet_name.as_deref(), budget)?;
    // Counted from the cell tags and only the error cells decoded: a statistics call on a big
    // sheet stays a pass over one byte a cell.
    let k = sheet.kind_counts(|| budget.check())?;
    let t =
        TypeCounts { number: k.number, text: k.text, bool: k.bool, date: k.date, duration: k.duration, error: k.error };
    let empty_formula = k.empty;
    let errors: Vec<CellError> = sheet
        .error_cells()
        .take(20)
        .map(|(at, e)| CellError { cell: at.to_string(), error: e.as_str().into() })
        .collect();
    let filled = sheet.cell_count() as u64 - empty_formula;
    let area = sheet.used.map(|u| u.area()).unwrap_or(0);
    Ok(SheetStatisticsOutput {
        sheet_name: sheet.name.clone(),
        used_range: sheet.used.map(|u| u.to_string()),
        cells: filled,
        by_type: t,
        formulas: sheet.formulas().len() as u64,
        uncalculated: empty_formula,
        density: if area == 0 { 0.0 } else { ((sheet.cell_count() as f64 / area as f64) * 1000.0).round() / 1000.0 },
        merged_ranges: sheet.merged.len() as u64,
        regions: super::regions_of(&sheet, budget).len() as u64,
        errors,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TableProfileParams {
    pub workbook_id: String,
    pub sheet_name: Option<String>,
    /// From sheet_overview; default: the sheet's largest table.
    pub region_id: Option<String>,
    /// Excel table name (see named_ranges).
    pub table: Option<String>,
    /// A1 range instead of a region.
    pub range: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TopValue {
    #[schemars(schema_with = "cell_schema")]
    pub value: serde_json::Value,
    pub count: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ColumnProfile {
    pub name: String,
    /// Column letter.
    pub column: String,
    /// Dominant type: number, text, date, bool, duration, error or empty.
    #[serde(rename = "type")]
    pub kind: String,
    pub non_empty: u64,
    pub empty: u64,
    /// Distinct values (capped at 10000).
    pub distinct: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopValue>,
    #[serde(skip_serializing_if = "is_false")]
    pub has_formulas: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TableProfileOutput {
    pub sheet_name: String,
    /// Data rows profiled.
    pub range: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_row: Option<u32>,
    pub rows: u32,
    pub columns: Vec<ColumnProfile>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
}

pub fn table_profile(engine: &Engine, p: TableProfileParams, budget: &Budget) -> Result<TableProfileOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let (sheet, target) = super::reading::resolve_target(
        engine,
        &wb,
        p.sheet_name.as_deref(),
        p.table.as_deref(),
        &Selection {
            region_id: p.region_id.as_deref(),
            table: p.table.as_deref(),
            range: p.range.as_deref(),
            header_row: None,
            include_totals: false,
        },
        budget,
    )?;
    let Some(data) = target.data else {
        return Ok(TableProfileOutput {
            sheet_name: sheet.name.clone(),
            range: String::new(),
            header_row: target.header_row.map(|h| h + 1),
            rows: 0,
            columns: Vec::new(),
            truncated: false,
        });
    };
    const MAX_COLS: u32 = 100;
    let cols = data.width().min(MAX_COLS);
    let rect = Rect::new(data.top, data.left, data.bottom, data.left + cols - 1);
    struct Acc {
        types: [u64; 7],
        /// Occurrences per distinct value, keyed by (type, bits or string id): no text formatting.
        distinct: HashMap<(u8, u64), u64>,
        min: f64,
        max: f64,
        sum: f64,
        n: u64,
        formulas: bool,
    }
    let mut accs: Vec<Acc> = (0..cols)
        .map(|_| Acc {
            types: [0; 7],
            distinct: HashMap::new(),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            n: 0,
            formulas: false,
        })
        .collect();
    for (i, c) in sheet.cells_in(rect).enumerate() {
        if i % 65_536 == 0 {
            budget.check()?;
        }
        let a = &mut accs[(c.col - rect.left) as usize];
        let k = match c.value {
            Value::Number(_) => 0,
            Value::Text(_) => 1,
            Value::Date(_) => 2,
            Value::Bool(_) => 3,
            Value::Duration(_) => 4,
            Value::Error(_) => 5,
            Value::Empty => 6,
        };
        a.types[k] += 1;
        if let Some(n) = c.value.as_number().filter(|n| n.is_finite()) {
            a.min = a.min.min(n);
            a.max = a.max.max(n);
            a.sum += n;
            a.n += 1;
        }
        let key = match c.value {
            Value::Number(n) | Value::Date(n) | Value::Duration(n) => Some((k as u8, n.to_bits())),
            Value::Text(i) => Some((1, u64::from(i))),
            Value::Bool(b) => Some((3, u64::from(b))),
            Value::Error(_) => Some((5, 0)),
            Value::Empty => None,
        };
        if let Some(key) = key {
            if let Some(n) = a.distinct.get_mut(&key) {
                *n += 1;
            } else if a.distinct.len() < 10_000 {
                a.distinct.insert(key, 1);
            }
        }
        if !a.formulas && sheet.formula_at(CellRef::new(c.row, c.col)).is_some() {
            a.formulas = true;
        }
    }
    const NAMES: [&str; 7] = ["number", "text", "date", "bool", "duration", "error", "empty"];
    let rows = u64::from(rect.height());
    let columns = accs
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let non_empty: u64 = a.types[..6].iter().sum();
            let dom = (0..6).max_by_key(|k| a.types[*k]).filter(|k| a.types[*k] > 0).unwrap_or(6);
            let numeric = matches!(dom, 0 | 2 | 4) && a.n > 0;
            let mut top: Vec<(String, u64)> = if dom == 1 || dom == 3 {
                a.distinct
                    .iter()
                    .filter(|((t, _), _)| *t == 1 || *t == 3)
                    .map(|((t, bits), n)| {
                        let v = if *t == 1 { Value::Text(*bits as u32) } else { Value::Bool(*bits == 1) };
                        (sheet.text(&v).into_owned(), *n)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            top.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
            let round = |x: f64| (x * 1e6).round() / 1e6;
            ColumnProfile {
                name: target
                    .headers
                    .get((rect.left - target.left) as usize + i)
                    .cloned()
                    .unwrap_or_else(|| col_name(rect.left + i as u32)),
                column: col_name(rect.left + i as u32),
                kind: NAMES[dom].into(),
                non_empty,
                empty: rows.saturating_sub(non_empty),
                distinct: a.distinct.len() as u64,
                min: numeric.then_some(a.min),
                max: numeric.then_some(a.max),
                mean: numeric.then(|| round(a.sum / a.n as f64)),
                top: top
                    .into_iter()
                    .take(5)
                    .filter(|(_, n)| *n > 1)
                    .map(|(v, count)| TopValue { value: serde_json::Value::String(v), count })
                    .collect(),
                has_formulas: a.formulas,
            }
        })
        .collect();
    Ok(TableProfileOutput {
        sheet_name: sheet.name.clone(),
        range: data.to_string(),
        header_row: target.header_row.map(|h| h + 1),
        rows: data.height(),
        columns,
        truncated: data.width() > MAX_COLS,
    })
}
