//! The read tools as plain functions: `fn(&Engine, Params, &Budget) -> Result<Output>`.
//! One file per tool family; shared pieces (output formats, schema helpers, target selection)
//! live here.

pub mod discovery;
pub mod editing;
pub mod forks;
pub mod formulas;
pub mod reading;
pub mod restructure;
pub mod search;
pub mod structure;
pub mod verify;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::address::{Rect, parse_range, split_sheet};
use crate::error::{Result, SheetsError, short_list};
use crate::regions::{self, Region, RegionKind};
use crate::sheet::Sheet;

/// csv (default), json or values.
// The variants carry plain comments, not docs: docs would make the schema a `oneOf` of
// described constants, three times the size of an `enum` in the listing every agent reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    // CSV text with a header line (smallest).
    #[default]
    Csv,
    // Objects keyed by header.
    Json,
    // Arrays of values.
    Values,
}

/// JSON schema of one cell value.
pub fn cell_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": ["string", "number", "boolean", "null"]})
}

/// Rows as arrays of cell values.
pub fn value_rows_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "items": {"type": "array", "items": {"type": ["string", "number", "boolean", "null"]}}})
}

/// Rows as objects keyed by header.
pub fn object_rows_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "items": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}}})
}

pub fn is_false(b: &bool) -> bool {
    !*b
}

/// Clamp an optional limit into `1..=max`, defaulting to `default`.
pub fn clamp_limit(v: Option<u32>, default: usize, max: usize) -> usize {
    v.map(|v| v as usize).unwrap_or(default).clamp(1, max.max(1))
}

/// A block of a sheet to read: data rows, their headers, and where they came from.
#[derive(Debug, Clone)]
pub struct Target {
    pub data: Option<Rect>,
    pub header_row: Option<u32>,
    pub headers: Vec<String>,
    pub left: u32,
    pub totals_row: Option<u32>,
    pub region_id: Option<String>,
}

/// Which block of a sheet a read is about.
pub struct Selection<'a> {
    pub region_id: Option<&'a str>,
    pub table: Option<&'a str>,
    pub range: Option<&'a str>,
    /// 1-based header row override; 0 means "no header".
    pub header_row: Option<u32>,
    pub include_totals: bool,
}

fn from_region(r: &Region, include_totals: bool) -> Target {
    Target {
        data: r.data_rect(include_totals),
        header_row: r.header_row,
        headers: r.headers.clone(),
        left: r.rect.left,
        totals_row: r.totals_row,
        region_id: Some(r.id.clone()),
    }
}

/// Parse a range argument against a sheet, with a clear error.
pub fn parse_range_arg(sheet: &Sheet, field: &'static str, s: &str) -> Result<Rect> {
    let (named, r) = split_sheet(s);
    // A prefix naming another sheet would be read on this one: refused, not dropped.
    if let Some(named) = named
        && named.trim().to_lowercase() != sheet.name.trim().to_lowercase()
    {
        return Err(SheetsError::invalid(
            field,
            format!(
                "'{s}' names sheet '{named}', but this call reads sheet '{}'; pass sheet_name \"{named}\" (a call reads one sheet), or leave the prefix out",
                sheet.name
            ),
        ));
    }
    parse_range(r, sheet.used).ok_or_else(|| {
        SheetsError::invalid(
            field,
            format!("'{s}' is not an A1 range; use forms like \"B3:F40\", \"A1\", \"C:D\" or \"2:10\""),
        )
    })
}

/// Resolve a selection on a sheet (region id, range, or the sheet's main table).
pub fn select(sheet: &Sheet, sel: &Selection<'_>, budget: &crate::Budget) -> Result<Target> {
    let mut target = if let Some(range) = sel.range {
        let rect = parse_range_arg(sheet, "range", range)?;
        let t0 = std::time::Instant::now();
        let r = regions::analyze_range(sheet, rect);
        budget.stages().add_analyze(t0.elapsed());
        let mut t = from_region(&r, sel.include_totals);
        if r.kind != RegionKind::Table {
            // Key/value or notes ranges are read as they are, without a header.
            t.header_row = None;
            t.data = Some(rect);
            t.headers = (rect.left..=rect.right).map(crate::address::col_name).collect();
            t.totals_row = None;
        }
        t.left = rect.left;
        t.region_id = None;
        t
    } else {
        let regs = regions_of(sheet, budget);
        let r = match sel.region_id {
            Some(id) => regs.iter().find(|r| r.id.eq_ignore_ascii_case(id.trim())).ok_or_else(|| {
                let ids: Vec<String> =
                    regs.iter().map(|r| format!("{} ({} {})", r.id, r.kind.as_str(), r.rect)).collect();
                SheetsError::UnknownRegion {
                    query: id.to_string(),
                    sheet: sheet.name.clone(),
                    available: format!("regions are: {}", short_list(&ids, 12)),
                }
            })?,
            None => regs
                .iter()
                .filter(|r| r.kind == RegionKind::Table)
                .max_by_key(|r| r.rect.area())
                .or_else(|| regs.iter().max_by_key(|r| r.rect.area()))
                .ok_or_else(|| {
                    SheetsError::invalid("sheet_name", format!("sheet '{}' is empty; nothing to read", sheet.name))
                })?,
        };
        from_region(r, sel.include_totals)
    };
    if let Some(h) = sel.header_row {
        let Some(data) = target.data.or(target.header_row.map(|h| Rect::new(h, target.left, h, target.left))) else {
            return Ok(target);
        };
        // With an explicit range, the block is that range: region detection may have taken its
        // first rows for a title, and the caller who names the header row says otherwise.
        // (Cut at the last used row and column, as range_values does.)
        let explicit = match sel.range {
            Some(range) => Some(parse_range_arg(sheet, "range", range)?.cut_to(sheet.used)),
            None => None,
        };
        let full = explicit.unwrap_or_else(|| {
            Rect::new(target.header_row.unwrap_or(data.top).min(data.top), data.left, data.bottom, data.right)
        });
        if h == 0 {
            target.header_row = None;
            target.data = Some(full);
            target.headers = (full.left..=full.right).map(crate::address::col_name).collect();
        } else {
            let hr = h - 1;
            if hr < full.top || hr > full.bottom {
                return Err(SheetsError::invalid(
                    "header_row",
                    format!("row {h} is outside the selected block {full}; pick a row in it, or 0 for no header"),
                ));
            }
            target.header_row = Some(hr);
            target.headers = (full.left..=full.right)
                .map(|c| {
                    let t = sheet.text(&sheet.get(hr, c)).trim().to_string();
                    if t.is_empty() { crate::address::col_name(c) } else { t }
                })
                .collect();
            target.data = (hr < full.bottom).then(|| Rect::new(hr + 1, full.left, full.bottom, full.right));
        }
    }
    Ok(target)
}

/// The sheet's regions, timing the analysis into the budget's stages when it runs.
pub fn regions_of(sheet: &Sheet, budget: &crate::Budget) -> std::sync::Arc<Vec<Region>> {
    let t = std::time::Instant::now();
    let r = regions::regions(sheet);
    budget.stages().add_analyze(t.elapsed());
    r
}

/// Serialize-side helpers shared by several outputs.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NameCount {
    pub name: String,
    pub count: u64,
}

/// The region list entry shared by sheet_overview and workbook_summary.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RegionInfo {
    pub region_id: String,
    /// A1 range, header included.
    pub range: String,
    /// table, parameters, outputs or notes.
    pub kind: String,
    /// 1-based sheet row of the header; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_row: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Data rows (without header and totals).
    pub rows: u32,
    pub confidence: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// 1-based sheet row of a totals row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals_row: Option<u32>,
}

impl RegionInfo {
    pub fn from_region(r: &Region, max_headers: usize) -> Self {
        Self {
            region_id: r.id.clone(),
            range: r.rect.to_string(),
            kind: r.kind.as_str().into(),
            header_row: r.header_row.map(|h| h + 1),
            headers: if r.kind == RegionKind::Table {
                r.headers.iter().take(max_headers).cloned().collect()
            } else {
                Vec::new()
            },
            rows: r.data_rect(false).map(|d| d.height()).unwrap_or(0),
            confidence: r.confidence,
            title: r.title.clone(),
            totals_row: r.totals_row.map(|t| t + 1),
        }
    }
}
