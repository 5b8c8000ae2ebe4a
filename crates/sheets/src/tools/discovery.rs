//! Discovery: list_workbooks, describe_workbook, list_sheets, workbook_summary, named_ranges.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{RegionInfo, clamp_limit, is_false};
use crate::error::{Result, SheetsError};
use crate::limits::Budget;

use crate::{Engine, value};

pub(crate) fn iso_time(t: Option<std::time::SystemTime>) -> Option<String> {
    let secs = t?.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
    let mut s = String::new();
    value::format_date((secs / 86_400.0 + 25_569.0).floor() + (secs.floor() % 86_400.0) / 86_400.0, &mut s);
    Some(s)
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListWorkbooksParams {
    /// Only paths containing this text (case-insensitive).
    pub filter: Option<String>,
    /// Max items (default 100).
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkbookItem {
    pub workbook_id: String,
    pub path: String,
    pub size_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListWorkbooksOutput {
    pub workbooks: Vec<WorkbookItem>,
    pub total: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u32>,
}

pub fn list_workbooks(engine: &Engine, p: ListWorkbooksParams, _: &Budget) -> Result<ListWorkbooksOutput> {
    let list = engine.workspace.list();
    let filter = p.filter.as_deref().map(str::to_lowercase).filter(|f| !f.is_empty());
    let matching: Vec<&crate::workspace::Entry> =
        list.iter().filter(|e| filter.as_ref().is_none_or(|f| e.rel_path.to_lowercase().contains(f))).collect();
    let limit = clamp_limit(p.limit, 100, engine.caps.max_items);
    let offset = p.offset.unwrap_or(0) as usize;
    let page: Vec<WorkbookItem> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|e| WorkbookItem {
            workbook_id: e.id.clone(),
            path: e.rel_path.clone(),
            size_bytes: e.size,
            modified: iso_time(e.modified),
        })
        .collect();
    let end = offset + page.len();
    Ok(ListWorkbooksOutput {
        total: matching.len() as u32,
        next_offset: (end < matching.len()).then_some(end as u32),
        workbooks: page,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WorkbookParams {
    /// Id from list_workbooks.
    pub workbook_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SheetBrief {
    pub name: String,
    /// Only when not a worksheet (chartsheet, macrosheet...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub hidden: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DescribeWorkbookOutput {
    pub workbook_id: String,
    pub path: String,
    /// Detected from content: xlsx, xlsb, xls or ods.
    pub format: String,
    pub size_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    pub sheet_count: u32,
    pub sheets: Vec<SheetBrief>,
    pub defined_names: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub has_vba: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub date1904: bool,
}

fn briefs(wb: &crate::workbook::Workbook, max: usize) -> Vec<SheetBrief> {
    wb.sheets
        .iter()
        .take(max)
        .map(|s| SheetBrief {
            name: s.name.clone(),
            kind: (s.kind != "worksheet").then(|| s.kind.to_string()),
            hidden: s.hidden,
        })
        .collect()
}

pub fn describe_workbook(engine: &Engine, p: WorkbookParams, budget: &Budget) -> Result<DescribeWorkbookOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    Ok(DescribeWorkbookOutput {
        workbook_id: wb.id().to_string(),
        path: wb.entry.rel_path.clone(),
        format: wb.format.as_str().into(),
        size_bytes: wb.entry.size,
        modified: iso_time(wb.entry.modified),
        sheet_count: wb.sheets.len() as u32,
        sheets: briefs(&wb, engine.caps.max_items),
        defined_names: wb.defined_names.len() as u32,
        has_vba: wb.has_vba,
        date1904: wb.date1904,
    })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SheetInfo {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub hidden: bool,
    /// A1 range holding all non-empty cells.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_range: Option<String>,
    pub cells: u64,
    pub formulas: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListSheetsOutput {
    pub workbook_id: String,
    pub sheets: Vec<SheetInfo>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
}

pub fn list_sheets(engine: &Engine, p: WorkbookParams, budget: &Budget) -> Result<ListSheetsOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let max = engine.caps.max_items;
    let mut sheets = Vec::new();
    for (i, meta) in wb.sheets.iter().enumerate().take(max) {
        // Mostly loading: bounded by the load budget, not the tool's own.
        budget.check_load()?;
        let s = wb.sheet_at(i, budget)?;
        sheets.push(SheetInfo {
            name: meta.name.clone(),
            kind: (meta.kind != "worksheet").then(|| meta.kind.to_string()),
            hidden: meta.hidden,
            used_range: s.used.map(|u| u.to_string()),
            cells: s.cell_count() as u64,
            formulas: s.formulas().len() as u64,
        });
    }
    engine.cache.enforce(wb.id());
    Ok(ListSheetsOutput { workbook_id: wb.id().to_string(), truncated: wb.sheets.len() > max, sheets })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SheetSummary {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_range: Option<String>,
    pub cells: u64,
    pub formulas: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<RegionInfo>,
    /// Regions beyond those listed; see sheet_overview.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more_regions: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkbookSummaryOutput {
    pub workbook_id: String,
    pub format: String,
    pub sheets: Vec<SheetSummary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub named_ranges: Vec<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
}

pub fn workbook_summary(engine: &Engine, p: WorkbookParams, budget: &Budget) -> Result<WorkbookSummaryOutput> {
    const SHEETS: usize = 50;
    const REGIONS: usize = 8;
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let mut sheets = Vec::new();
    for (i, meta) in wb.sheets.iter().enumerate().take(SHEETS) {
        // Mostly loading: bounded by the load budget, not the tool's own.
        budget.check_load()?;
        let s = wb.sheet_at(i, budget)?;
        let regs = super::regions_of(&s, budget);
        sheets.push(SheetSummary {
            name: meta.name.clone(),
            used_range: s.used.map(|u| u.to_string()),
            cells: s.cell_count() as u64,
            formulas: s.formulas().len() as u64,
            regions: regs.iter().take(REGIONS).map(|r| RegionInfo::from_region(r, 12)).collect(),
            more_regions: (regs.len() > REGIONS).then(|| (regs.len() - REGIONS) as u32),
        });
    }
    engine.cache.enforce(wb.id());
    Ok(WorkbookSummaryOutput {
        workbook_id: wb.id().to_string(),
        format: wb.format.as_str().into(),
        truncated: wb.sheets.len() > SHEETS,
        named_ranges: wb.defined_names.iter().take(50).map(|(n, _)| n.clone()).collect(),
        sheets,
    })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DefinedName {
    pub name: String,
    pub refers_to: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TableItem {
    pub name: String,
    pub sheet_name: String,
    /// Header through last row.
    pub range: String,
    pub columns: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct NamedRangesOutput {
    pub defined_names: Vec<DefinedName>,
    pub tables: Vec<TableItem>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Why tables could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tables_error: Option<String>,
}

pub fn named_ranges(engine: &Engine, p: WorkbookParams, budget: &Budget) -> Result<NamedRangesOutput> {
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let max = engine.caps.max_items;
    // A table part the reader cannot parse must not hide the defined names, which are read
    // with the workbook itself.
    let (tables, tables_error) = match wb.tables() {
        Ok(t) => (t, None),
        Err(e @ (SheetsError::Unreadable { .. } | SheetsError::Unsupported { .. })) => {
            (Default::default(), Some(format!("{e}; the defined names above are complete")))
        }
        Err(e) => return Err(e),
    };
    Ok(NamedRangesOutput {
        tables_error,
        truncated: wb.defined_names.len() > max || tables.len() > max,
        defined_names: wb
            .defined_names
            .iter()
            .take(max)
            .map(|(n, r)| DefinedName { name: n.clone(), refers_to: r.clone() })
            .collect(),
        tables: tables
            .iter()
            .take(max)
            .map(|t| {
                let mut r = t.data;
                if let Some(h) = t.header_row {
                    r.top = h;
                }
                TableItem {
                    name: t.name.clone(),
                    sheet_name: t.sheet.clone(),
                    range: r.to_string(),
                    columns: t.columns.clone(),
                }
            })
            .collect(),
    })
}
