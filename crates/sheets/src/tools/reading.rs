//! Reading: read_table, range_values, sheet_page, inspect_cells.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Format, Selection, Target, cell_schema, clamp_limit, is_false, object_rows_schema, parse_range_arg, select,
    value_rows_schema,
};
use crate::Engine;
use crate::address::{CellRef, Rect, col_name, parse_col, split_sheet};
use crate::error::{Result, SheetsError, short_list};
use crate::limits::Budget;
use crate::sheet::Sheet;
use crate::value::{Value, push_csv_field};
use crate::workbook::{SheetView, Workbook};

/// The sheet and block a read targets: an Excel table, or a selection on a named sheet.
pub fn resolve_target(
    engine: &Engine,
    wb: &Workbook,
    sheet_name: Option<&str>,
    table: Option<&str>,
    sel: &Selection<'_>,
    budget: &Budget,
) -> Result<(Arc<Sheet>, Target)> {
    if let Some(t) = table.map(str::trim).filter(|t| !t.is_empty()) {
        let info = wb.table(t)?;
        let sheet = engine.sheet(wb, Some(&info.sheet), budget)?;
        let mut data = info.data;
        if !sel.include_totals {
            // Excel tables may have a totals row; detect it like a region's.
            let r = crate::regions::analyze_range(
                &sheet,
                Rect::new(info.header_row.unwrap_or(data.top), data.left, data.bottom, data.right),
            );
            if r.totals_row == Some(data.bottom) && data.bottom > data.top {
                data.bottom -= 1;
            }
        }
        let target = Target {
            data: Some(data),
            header_row: info.header_row,
            headers: info.columns.clone(),
            left: data.left,
            totals_row: None,
            region_id: None,
        };
        return Ok((sheet, target));
    }
    let sheet = engine.sheet(wb, sheet_name, budget)?;
    let target = select(&sheet, sel, budget)?;
    Ok((sheet, target))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    #[default]
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
    StartsWith,
    Empty,
    NotEmpty,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Filter {
    /// Header name or column letter.
    pub column: String,
    #[serde(default)]
    pub op: FilterOp,
    #[schemars(schema_with = "cell_schema")]
    #[serde(default)]
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sample {
    /// Rows from `offset` on (pagination).
    #[default]
    First,
    /// The last `limit` rows.
    Last,
    /// `limit` rows spread evenly.
    Distributed,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadTableParams {
    pub workbook_id: String,
    pub sheet_name: Option<String>,
    /// From sheet_overview. Default: the sheet's largest table.
    pub region_id: Option<String>,
    /// Excel table name.
    pub table: Option<String>,
    /// A1 range, e.g. "B3:F40" (header detected).
    pub range: Option<String>,
    /// 1-based header row override; 0 = no header.
    pub header_row: Option<u32>,
    /// Header names or column letters to return.
    pub columns: Option<Vec<String>>,
    /// All must match.
    pub filters: Option<Vec<Filter>>,
    pub sample: Option<Sample>,
    /// Rows (default 100).
    pub limit: Option<u32>,
    pub offset: Option<u32>,
    pub format: Option<Format>,
    /// Keep a detected totals row.
    pub include_totals: Option<bool>,
}

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct ReadTableOutput {
    pub sheet_name: String,
    /// Data range (without header).
    pub range: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_row: Option<u32>,
    pub headers: Vec<String>,
    /// Rows matching the filters.
    pub total_rows: u32,
    pub returned: u32,
    /// format=csv: header line then rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csv: Option<String>,
    /// format=json.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "object_rows_schema")]
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
    /// format=values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "value_rows_schema")]
    pub values: Vec<Vec<serde_json::Value>>,
    /// 1-based sheet rows of the returned rows (json/values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub row_numbers: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u32>,
    /// 1-based row of a totals row left out (include_totals to keep it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals_row: Option<u32>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Resolve column names/letters to absolute columns of `data`.
fn resolve_columns(target: &Target, data: &Rect, names: Option<&[String]>) -> Result<Vec<u32>> {
    let all: Vec<u32> = (data.left..=data.right).collect();
    let Some(names) = names.filter(|n| !n.is_empty()) else {
        return Ok(all);
    };
    names.iter().map(|n| resolve_column(target, data, n)).collect()
}

fn resolve_column(target: &Target, data: &Rect, name: &str) -> Result<u32> {
    let q = name.trim();
    let header_of = |c: u32| target.headers.get((c - target.left) as usize);
    if let Some(c) = (data.left..=data.right).find(|c| header_of(*c).is_some_and(|h| h == q)) {
        return Ok(c);
    }
    if let Some(c) = (data.left..=data.right).find(|c| header_of(*c).is_some_and(|h| h.eq_ignore_ascii_case(q))) {
        return Ok(c);
    }
    if let Some(c) = parse_col(q).filter(|c| *c >= data.left && *c <= data.right) {
        return Ok(c);
    }
    let near = crate::error::closest(q, target.headers.iter().map(String::as_str), 1);
    let mut msg = format!("no column '{q}'; columns are: {}", short_list(&target.headers, 30));
    if let Some(n) = near.first() {
        msg.push_str(&format!(" (did you mean '{n}'?)"));
    }
    Err(SheetsError::invalid("columns", msg))
}

struct Compiled {
    col: u32,
    op: FilterOp,
    num: Option<f64>,
    text: String,
}

fn compile_filters(target: &Target, data: &Rect, filters: &[Filter]) -> Result<Vec<Compiled>> {
    filters
        .iter()
        .map(|f| {
            let col = resolve_column(target, data, &f.column)?;
            let (num, text) = match &f.value {
                serde_json::Value::Number(n) => (n.as_f64(), n.to_string()),
                serde_json::Value::String(s) => (s.trim().parse::<f64>().ok(), s.to_lowercase()),
                serde_json::Value::Bool(b) => (None, if *b { "true".into() } else { "false".into() }),
                serde_json::Value::Null => (None, String::new()),
                other => {
                    return Err(SheetsError::invalid(
                        "filters",
                        format!("value {other} must be a string, number or boolean"),
                    ));
                }
            };
            if matches!(f.op, FilterOp::Gt | FilterOp::Gte | FilterOp::Lt | FilterOp::Lte)
                && num.is_none()
                && text.is_empty()
            {
                return Err(SheetsError::invalid("filters", format!("op on '{}' needs a value", f.column)));
            }
            Ok(Compiled { col, op: f.op, num, text })
        })
        .collect()
}

fn matches(sheet: &Sheet, row: u32, f: &Compiled) -> bool {
    let v = sheet.get(row, f.col);
    match f.op {
        FilterOp::Empty => v.is_empty(),
        FilterOp::NotEmpty => !v.is_empty(),
        _ if v.is_empty() => matches!(f.op, FilterOp::Ne),
        op => {
            if let (Some(a), Some(b)) = (v.as_number(), f.num) {
                return match op {
                    FilterOp::Eq => a == b,
                    FilterOp::Ne => a != b,
                    FilterOp::Gt => a > b,
                    FilterOp::Gte => a >= b,
                    FilterOp::Lt => a < b,
                    FilterOp::Lte => a <= b,
                    FilterOp::Contains | FilterOp::StartsWith => sheet.text(&v).to_lowercase().contains(&f.text),
                    _ => false,
                };
            }
            let s = sheet.text(&v).to_lowercase();
            match op {
                FilterOp::Eq => s == f.text,
                FilterOp::Ne => s != f.text,
                FilterOp::Gt => s.as_str() > f.text.as_str(),
                FilterOp::Gte => s.as_str() >= f.text.as_str(),
                FilterOp::Lt => s.as_str() < f.text.as_str(),
                FilterOp::Lte => s.as_str() <= f.text.as_str(),
                FilterOp::Contains => s.contains(&f.text),
                FilterOp::StartsWith => s.starts_with(&f.text),
                _ => false,
            }
        }
    }
}

/// Render chosen rows in the requested format, within the caps. Returns how many were written.
struct Renderer<'a> {
    sheet: &'a Sheet,
    cols: &'a [u32],
    names: Vec<String>,
    format: Format,
    max_bytes: usize,
    csv: String,
    rows: Vec<serde_json::Map<String, serde_json::Value>>,
    values: Vec<Vec<serde_json::Value>>,
    row_numbers: Vec<u32>,
    bytes: usize,
}

impl<'a> Renderer<'a> {
    fn new(sheet: &'a Sheet, cols: &'a [u32], names: Vec<String>, format: Format, max_bytes: usize) -> Self {
        let mut csv = String::new();
        if format == Format::Csv {
            for (i, n) in names.iter().enumerate() {
                if i > 0 {
                    csv.push(',');
                }
                push_csv_field(&mut csv, n);
            }
            csv.push('\n');
        }
        Self {
            sheet,
            cols,
            names,
            format,
            max_bytes,
            csv,
            rows: Vec::new(),
            values: Vec::new(),
            row_numbers: Vec::new(),
            bytes: 0,
        }
    }

    /// Add a row; false when the byte cap is reached (the row is not added).
    fn push(&mut self, row: u32) -> bool {
        let cells = self.sheet.row(row);
        let value_at = |c: u32| cells.get(c);
        match self.format {
            Format::Csv => {
                let mark = self.csv.len();
                for (i, c) in self.cols.iter().enumerate() {
                    if i > 0 {
                        self.csv.push(',');
                    }
                    let v = value_at(*c);
                    if !v.is_empty() {
                        push_csv_field(&mut self.csv, &self.sheet.text(&v));
                    }
                }
                self.csv.push('\n');
                if self.csv.len() > self.max_bytes && mark > 0 {
                    self.csv.truncate(mark);
                    return false;
                }
            }
            Format::Json => {
                let mut m = serde_json::Map::new();
                let mut size = 2;
                for (c, n) in self.cols.iter().zip(&self.names) {
                    let v = value_at(*c);
                    if !v.is_empty() {
                        size += n.len() + 6 + self.sheet.text(&v).len();
                        m.insert(n.clone(), self.sheet.json(&v));
                    }
                }
                self.bytes += size;
                if self.bytes > self.max_bytes && !self.rows.is_empty() {
                    return false;
                }
                self.rows.push(m);
                self.row_numbers.push(row + 1);
            }
            Format::Values => {
                let vals: Vec<serde_json::Value> = self.cols.iter().map(|c| self.sheet.json(&value_at(*c))).collect();
                self.bytes += vals.len() * 4 + vals.iter().map(|v| v.to_string().len()).sum::<usize>();
                if self.bytes > self.max_bytes && !self.values.is_empty() {
                    return false;
                }
                self.values.push(vals);
                self.row_numbers.push(row + 1);
            }
        }
        true
    }
}

pub fn read_table(engine: &Engine, p: ReadTableParams, budget: &Budget) -> Result<ReadTableOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let include_totals = p.include_totals.unwrap_or(false);
    let (sheet, target) = resolve_target(
        engine,
        &wb,
        p.sheet_name.as_deref(),
        p.table.as_deref(),
        &Selection {
            region_id: p.region_id.as_deref(),
            table: p.table.as_deref(),
            range: p.range.as_deref(),
            header_row: p.header_row,
            include_totals,
        },
        budget,
    )?;
    let mut out = ReadTableOutput {
        sheet_name: sheet.name.clone(),
        region_id: target.region_id.clone(),
        header_row: target.header_row.map(|h| h + 1),
        totals_row: if include_totals { None } else { target.totals_row.map(|t| t + 1) },
        ..Default::default()
    };
    let Some(data) = target.data else {
        out.headers = target.headers.clone();
        out.hint = Some("the block has a header but no data rows".into());
        return Ok(out);
    };
    out.range = data.to_string();
    let cols = resolve_columns(&target, &data, p.columns.as_deref())?;
    let names: Vec<String> = cols
        .iter()
        .map(|c| target.headers.get((c - target.left) as usize).cloned().unwrap_or_else(|| col_name(*c)))
        .collect();
    out.headers = names.clone();
    let format = p.format.unwrap_or_default();
    let caps = &engine.caps;
    let max_rows = (caps.max_cells / cols.len().max(1)).max(1);
    let limit = clamp_limit(p.limit, 100, max_rows.min(5_000));
    let offset = p.offset.unwrap_or(0) as usize;
    let sample = p.sample.unwrap_or_default();
    let filters = compile_filters(&target, &data, p.filters.as_deref().unwrap_or(&[]))?;

    // The matching rows, as an index space: either every row of the block, or a filtered list.
    let filtered: Option<Vec<u32>> = if filters.is_empty() {
        None
    } else {
        let mut v = Vec::new();
        for row in data.top..=data.bottom {
            if (row - data.top) % 16_384 == 0 {
                budget.check()?;
            }
            if filters.iter().all(|f| matches(&sheet, row, f)) {
                v.push(row);
            }
        }
        Some(v)
    };
    let total = filtered.as_ref().map(|v| v.len()).unwrap_or(data.height() as usize);
    let row_at = |i: usize| filtered.as_ref().map(|v| v[i]).unwrap_or(data.top + i as u32);
    let picks: Vec<usize> = match sample {
        Sample::First => (offset.min(total)..total.min(offset.saturating_add(limit))).collect(),
        Sample::Last => (total.saturating_sub(limit)..total).collect(),
        Sample::Distributed => {
            if total <= limit {
                (0..total).collect()
            } else {
                (0..limit).map(|k| k * (total - 1) / (limit - 1).max(1)).collect()
            }
        }
    };
    let mut r = Renderer::new(&sheet, &cols, names, format, caps.max_bytes);
    let mut written = 0;
    for (k, &i) in picks.iter().enumerate() {
        if k % 4096 == 0 {
            budget.check()?;
        }
        if !r.push(row_at(i)) {
            out.truncated = true;
            break;
        }
        written += 1;
    }
    out.total_rows = total as u32;
    out.returned = written as u32;
    if sample == Sample::First {
        let next = offset + written;
        if next < total {
            out.next_offset = Some(next as u32);
            out.hint = Some(if out.truncated {
                format!("response reached its size cap; call again with offset {next}, fewer columns, or format csv")
            } else {
                format!("{} more rows; call again with offset {next}", total - next)
            });
        }
    } else if written < picks.len() {
        out.hint = Some("response reached its size cap; ask for fewer rows or columns".into());
    }
    match format {
        Format::Csv => out.csv = Some(r.csv),
        Format::Json => {
            out.rows = r.rows;
            out.row_numbers = r.row_numbers;
        }
        Format::Values => {
            out.values = r.values;
            out.row_numbers = r.row_numbers;
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RangeValuesParams {
    pub workbook_id: String,
    pub sheet_name: Option<String>,
    /// A1 ranges, e.g. ["A1:C9", "Other!B2"].
    pub ranges: Vec<String>,
    pub format: Option<Format>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RangeBlock {
    pub range: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sheet_name: Option<String>,
    /// Rows as CSV, no header line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csv: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "value_rows_schema")]
    pub values: Vec<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RangeValuesOutput {
    pub sheet_name: String,
    pub ranges: Vec<RangeBlock>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

pub fn range_values(engine: &Engine, p: RangeValuesParams, budget: &Budget) -> Result<RangeValuesOutput> {
    if p.ranges.is_empty() {
        return Err(SheetsError::invalid("ranges", "give at least one A1 range, e.g. [\"A1:C10\"]"));
    }
    if p.ranges.len() > 50 {
        return Err(SheetsError::invalid("ranges", "at most 50 ranges per call"));
    }
    let wb = engine.workbook(&p.workbook_id, budget)?;
    // Ranges near the top of a sheet still loading are read from its first rows: complete
    // rows, so the answer is the same as from the whole sheet.
    let default_sheet = match rows_needed(&p.ranges) {
        Some(rows) => engine.sheet_view(&wb, p.sheet_name.as_deref(), rows, budget).map(|v| v.sheet().clone()).ok(),
        None => engine.sheet(&wb, p.sheet_name.as_deref(), budget).ok(),
    };
    let format = p.format.unwrap_or_default();
    let mut budget_cells = engine.caps.max_cells;
    let mut bytes = 0usize;
    let mut out = RangeValuesOutput { sheet_name: String::new(), ranges: Vec::new(), truncated: false, hint: None };
    for spec in &p.ranges {
        budget.check()?;
        let (sheet_part, _) = split_sheet(spec);
        let sheet = match (&sheet_part, &default_sheet) {
            (Some(s), _) => engine.sheet(&wb, Some(s), budget)?,
            (None, Some(s)) => s.clone(),
            (None, None) => engine.sheet(&wb, p.sheet_name.as_deref(), budget)?,
        };
        if out.sheet_name.is_empty() {
            out.sheet_name = sheet.name.clone();
        }
        let asked = parse_range_arg(&sheet, "ranges", spec)?;
        // Rows below and columns right of the used range are empty: the range is cut there (its
        // `range` says so), never short of its own first row and column, so "A1:XFD10" or
        // "A1:B1048576" answer with the cells there are, not with a cap reached on empty ones,
        // and a cell past the data still answers as an empty cell.
        let rect = asked.cut_to(sheet.used);
        let mut block = RangeBlock {
            range: rect.to_string(),
            sheet_name: sheet_part.clone(),
            csv: None,
            values: Vec::new(),
            truncated: false,
        };
        let mut csv = String::new();
        for row in rect.top..=rect.bottom {
            let w = rect.width() as usize;
            if budget_cells < w || bytes > engine.caps.max_bytes {
                block.truncated = true;
                out.truncated = true;
                out.hint = Some(format!(
                    "stopped at row {} of {spec}; ask for a smaller range or continue from there",
                    row + 1
                ));
                break;
            }
            budget_cells -= w;
            let span = sheet.row_span(row, rect.left, rect.right);
            let mut it = span.iter().peekable();
            let mut vals = Vec::new();
            for col in rect.left..=rect.right {
                let v = match it.peek() {
                    Some(c) if c.col == col => it.next().map(|c| c.value).unwrap_or(Value::Empty),
                    _ => Value::Empty,
                };
                match format {
                    Format::Csv => {
                        if col > rect.left {
                            csv.push(',');
                        }
                        if !v.is_empty() {
                            push_csv_field(&mut csv, &sheet.text(&v));
                        }
                    }
                    _ => vals.push(sheet.json(&v)),
                }
            }
            match format {
                Format::Csv => csv.push('\n'),
                _ => {
                    bytes += vals.len() * 6;
                    block.values.push(vals);
                }
            }
            bytes = bytes.max(csv.len());
        }
        if format == Format::Csv {
            block.csv = Some(csv);
        }
        out.ranges.push(block);
        if out.truncated {
            break;
        }
    }
    Ok(out)
}

/// The rows (0-based, exclusive) that explicit cell ranges on the call's sheet reach; `None`
/// when a range names another sheet or whole rows or columns (they need the used range).
fn rows_needed(ranges: &[String]) -> Option<u32> {
    let mut rows = 0;
    for spec in ranges {
        let (sheet, r) = split_sheet(spec);
        if sheet.is_some() {
            return None;
        }
        let (a, b) = r.split_once(':').unwrap_or((r, r));
        let (a, b) = (crate::address::parse_cell(a)?, crate::address::parse_cell(b)?);
        rows = rows.max(a.row.max(b.row).saturating_add(1));
    }
    Some(rows)
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SheetPageParams {
    pub workbook_id: String,
    pub sheet_name: Option<String>,
    /// 1-based first row (default: first used row).
    pub start_row: Option<u32>,
    /// Rows per page (default 50, max 500).
    pub page_size: Option<u32>,
    /// Column span, e.g. "A:H" (default: used columns, at most 100).
    pub columns: Option<String>,
    pub format: Option<Format>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SheetPageOutput {
    pub sheet_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_range: Option<String>,
    /// Range this page covers.
    pub range: String,
    /// CSV with a leading "row" column; empty rows are skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csv: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "value_rows_schema")]
    pub values: Vec<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub row_numbers: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_start_row: Option<u32>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Set while the sheet still loads: the page came from its first rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
}

/// What a page answered from the first rows of a sheet still loading does not know yet.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Partial {
    /// Rows read so far (1..=rows_read).
    pub rows_read: u32,
    pub unknown: String,
}

/// Rows past a page's end a prefix must hold, to find where the next page starts.
const PAGE_SLACK: u32 = 64;

pub fn sheet_page(engine: &Engine, p: SheetPageParams, budget: &Budget) -> Result<SheetPageOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let page = clamp_limit(p.page_size, 50, 500) as u32;
    // A sheet still loading answers from its first rows when they hold the page.
    let want = p.start_row.unwrap_or(1).saturating_sub(1).saturating_add(page).saturating_add(PAGE_SLACK);
    if let SheetView::Prefix { sheet, rows_done } = engine.sheet_view(&wb, p.sheet_name.as_deref(), want, budget)?
        && let Some(out) = page_of(engine, &p, &sheet, Some(rows_done), budget)?
    {
        return Ok(out);
    }
    let sheet = engine.sheet(&wb, p.sheet_name.as_deref(), budget)?;
    page_of(engine, &p, &sheet, None, budget)?
        .ok_or_else(|| SheetsError::Internal("a page of a loaded sheet came back empty-handed".into()))
}

/// One page of `sheet`; with `rows_done` the sheet is the prefix of one still loading, and
/// `None` comes back when the page reaches past it.
fn page_of(
    engine: &Engine,
    p: &SheetPageParams,
    sheet: &Sheet,
    rows_done: Option<u32>,
    budget: &Budget,
) -> Result<Option<SheetPageOutput>> {
    let mut out = SheetPageOutput {
        sheet_name: sheet.name.clone(),
        used_range: if rows_done.is_some() { None } else { sheet.used.map(|u| u.to_string()) },
        range: String::new(),
        csv: None,
        values: Vec::new(),
        row_numbers: Vec::new(),
        next_start_row: None,
        truncated: false,
        partial: rows_done.map(|rows_read| Partial {
            rows_read,
            unknown: "the sheet is still loading: used_range, and columns first used further down".into(),
        }),
    };
    let Some(used) = sheet.used else {
        if rows_done.is_some() {
            return Ok(None);
        }
        out.csv = (p.format.unwrap_or_default() == Format::Csv).then(String::new);
        return Ok(Some(out));
    };
    let (left, right) = match p.columns.as_deref() {
        Some(c) => {
            let r = parse_range_arg(sheet, "columns", c)?;
            (r.left, r.right)
        }
        None => (used.left, used.right.min(used.left + 99)),
    };
    let page = clamp_limit(p.page_size, 50, 500) as u32;
    let start = match p.start_row {
        Some(0) => {
            return Err(SheetsError::invalid("start_row", "rows are 1-based; use 1 for the first row"));
        }
        Some(s) => s - 1,
        None => used.top,
    };
    let format = p.format.unwrap_or_default();
    let max_rows_by_cells = (engine.caps.max_cells as u32 / (right - left + 1)).max(1);
    let end = start.saturating_add(page.min(max_rows_by_cells)).saturating_sub(1);
    let end = match rows_done {
        // The page and the rows after it that find the next start must all have arrived.
        Some(done) if end.saturating_add(PAGE_SLACK) >= done => return Ok(None),
        Some(_) => end,
        None => end.min(used.bottom.max(start)),
    };
    out.range = Rect::new(start, left, end, right).to_string();
    let mut csv = String::new();
    if format == Format::Csv {
        csv.push_str("row");
        for c in left..=right {
            csv.push(',');
            csv.push_str(&col_name(c));
        }
        csv.push('\n');
    }
    let mut last_done = start.wrapping_sub(1);
    for row in start..=end {
        let span = sheet.row_span(row, left, right);
        if span.iter().all(|c| c.value.is_empty()) {
            last_done = row;
            continue;
        }
        if row % 1024 == 0 {
            budget.check()?;
        }
        let mark = csv.len();
        let mut it = span.iter().peekable();
        let mut vals = Vec::new();
        if format == Format::Csv {
            csv.push_str(&(row + 1).to_string());
        }
        for col in left..=right {
            let v = match it.peek() {
                Some(c) if c.col == col => it.next().map(|c| c.value).unwrap_or(Value::Empty),
                _ => Value::Empty,
            };
            if format == Format::Csv {
                csv.push(',');
                if !v.is_empty() {
                    push_csv_field(&mut csv, &sheet.text(&v));
                }
            } else {
                vals.push(sheet.json(&v));
            }
        }
        if format == Format::Csv {
            csv.push('\n');
            if csv.len() > engine.caps.max_bytes {
                csv.truncate(mark);
                out.truncated = true;
                break;
            }
        } else {
            out.values.push(vals);
            out.row_numbers.push(row + 1);
        }
        last_done = row;
    }
    if format == Format::Csv {
        out.csv = Some(csv);
    }
    let next = last_done.wrapping_add(1);
    if let Some(done) = rows_done {
        // The next row with data among those read, or the first row not read yet.
        let mut n = next;
        while n < done && sheet.row_span(n, left, right).is_empty() {
            n += 1;
        }
        out.next_start_row = Some(n + 1);
    } else if next <= used.bottom {
        // Skip ahead to the next row that has data.
        let mut n = next;
        while n <= used.bottom && sheet.row_span(n, left, right).is_empty() {
            n += 1;
        }
        if n <= used.bottom {
            out.next_start_row = Some(n + 1);
        }
    }
    Ok(Some(out))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InspectCellsParams {
    pub workbook_id: String,
    pub sheet_name: Option<String>,
    /// Cells or small ranges, e.g. ["B7", "D2:D4"] (max 200 cells).
    pub cells: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CellDetail {
    pub cell: String,
    #[schemars(schema_with = "cell_schema")]
    pub value: serde_json::Value,
    /// number, text, bool, date, duration, error or empty.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formula: Option<String>,
    /// A formula with no cached value: never calculated.
    #[serde(skip_serializing_if = "is_false")]
    pub uncalculated: bool,
    /// The merged range covering this cell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_range: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InspectCellsOutput {
    pub sheet_name: String,
    pub cells: Vec<CellDetail>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
}

pub fn inspect_cells(engine: &Engine, p: InspectCellsParams, budget: &Budget) -> Result<InspectCellsOutput> {
    if p.cells.is_empty() {
        return Err(SheetsError::invalid("cells", "give at least one cell, e.g. [\"B7\"]"));
    }
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let sheet = engine.sheet(&wb, p.sheet_name.as_deref(), budget)?;
    const MAX: usize = 200;
    let mut out = InspectCellsOutput { sheet_name: sheet.name.clone(), cells: Vec::new(), truncated: false };
    'outer: for spec in &p.cells {
        let rect = parse_range_arg(&sheet, "cells", spec)?;
        for row in rect.top..=rect.bottom {
            for col in rect.left..=rect.right {
                if out.cells.len() >= MAX {
                    out.truncated = true;
                    break 'outer;
                }
                let at = CellRef::new(row, col);
                let v = sheet.get(row, col);
                let formula = sheet.formula_at(at).map(|f| format!("={f}"));
                let merged = sheet.merge_at(row, col);
                let shown = match merged {
                    Some(m) if v.is_empty() && (m.top, m.left) != (row, col) => sheet.get(m.top, m.left),
                    _ => v,
                };
                out.cells.push(CellDetail {
                    cell: at.to_string(),
                    value: sheet.json(&shown),
                    kind: shown.type_name().into(),
                    uncalculated: formula.is_some() && v.is_empty(),
                    formula,
                    merged_range: merged.map(|m| m.to_string()),
                });
            }
        }
    }
    Ok(out)
}
