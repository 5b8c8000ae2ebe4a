//! Region detection: find the separate blocks on a sheet (data tables, parameter key/value
//! blocks, formula outputs, notes) and, for tables, their header rows, titles and totals.
//!
//! Blocks are connected components of occupied cells (merged areas count as occupied), found
//! with a union-find over per-row runs — one pass over the cells. Each block is then
//! classified from its first rows and a sample of its body.

use std::sync::Arc;

use crate::address::{CellRef, Rect, col_name};
use crate::sheet::Sheet;
use crate::value::Value;

/// Most regions reported for one sheet.
pub const MAX_REGIONS: usize = 500;
/// Rows sampled to judge column types.
const SAMPLE_ROWS: u32 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    Table,
    Parameters,
    Outputs,
    Notes,
}

impl RegionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionKind::Table => "table",
            RegionKind::Parameters => "parameters",
            RegionKind::Outputs => "outputs",
            RegionKind::Notes => "notes",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Region {
    pub id: String,
    /// The block without its title rows: header (and group rows) through the last row.
    pub rect: Rect,
    pub kind: RegionKind,
    /// 0-based sheet row of the (lowest) header row.
    pub header_row: Option<u32>,
    pub headers: Vec<String>,
    pub confidence: f64,
    pub title: Option<String>,
    pub totals_row: Option<u32>,
}

impl Region {
    /// The data rows: below the header, above a totals row.
    pub fn data_rect(&self, include_totals: bool) -> Option<Rect> {
        let top = self.header_row.map(|h| h + 1).unwrap_or(self.rect.top);
        let bottom = match self.totals_row {
            Some(t) if !include_totals => t.checked_sub(1)?,
            _ => self.rect.bottom,
        };
        (top <= bottom).then(|| Rect::new(top, self.rect.left, bottom, self.rect.right))
    }
}

/// The regions of a sheet, computed once and cached on the sheet.
pub fn regions(sheet: &Sheet) -> Arc<Vec<Region>> {
    sheet.regions.get_or_init(|| Arc::new(detect(sheet))).clone()
}

struct Dsu(Vec<u32>);

impl Dsu {
    fn find(&mut self, mut x: u32) -> u32 {
        while self.0[x as usize] != x {
            let p = self.0[x as usize];
            self.0[x as usize] = self.0[p as usize];
            x = p;
        }
        x
    }
    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra.max(rb) as usize] = ra.min(rb);
        }
    }
}

/// Connected blocks of occupied cells, as bounding rectangles (overlaps merged).
pub fn blocks(sheet: &Sheet) -> Vec<Rect> {
    let Some(used) = sheet.used else {
        return Vec::new();
    };
    let mut runs: Vec<(u32, u32, u32)> = Vec::new(); // (row, left, right)
    let mut dsu = Dsu(Vec::new());
    let mut prev: (usize, usize) = (0, 0); // run index span of the previous row
    let mut prev_row: Option<u32> = None;
    let mut row_runs: Vec<(u32, u32)> = Vec::new();
    for row in used.top..=used.bottom {
        row_runs.clear();
        for c in sheet.row(row) {
            match row_runs.last_mut() {
                Some(last) if c.col == last.1 + 1 => last.1 = c.col,
                _ => row_runs.push((c.col, c.col)),
            }
        }
        for m in &sheet.merged {
            if m.top <= row && row <= m.bottom {
                row_runs.push((m.left, m.right));
            }
        }
        if row_runs.is_empty() {
            continue;
        }
        if !sheet.merged.is_empty() {
            row_runs.sort_unstable();
            let mut merged: Vec<(u32, u32)> = Vec::with_capacity(row_runs.len());
            for &(a, b) in row_runs.iter() {
                match merged.last_mut() {
                    Some(l) if a <= l.1 + 1 => l.1 = l.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            row_runs = merged;
        }
        let start = runs.len();
        for &(a, b) in &row_runs {
            let id = runs.len() as u32;
            runs.push((row, a, b));
            dsu.0.push(id);
        }
        if prev_row == Some(row.wrapping_sub(1)) {
            // Two-pointer overlap (diagonals touch) between this row's runs and the previous row's.
            let (mut i, mut j) = (prev.0, start);
            while i < prev.1 && j < runs.len() {
                let (_, a0, a1) = runs[i];
                let (_, b0, b1) = runs[j];
                if a0 <= b1 + 1 && b0 <= a1 + 1 {
                    dsu.union(i as u32, j as u32);
                }
                if a1 < b1 { i += 1 } else { j += 1 }
            }
        }
        prev = (start, runs.len());
        prev_row = Some(row);
    }
    let mut boxes: std::collections::HashMap<u32, Rect> = std::collections::HashMap::new();
    for (i, &(r, a, b)) in runs.iter().enumerate() {
        let root = dsu.find(i as u32);
        let rect = Rect::new(r, a, r, b);
        boxes.entry(root).and_modify(|x| *x = x.union(&rect)).or_insert(rect);
    }
    let mut rects: Vec<Rect> = boxes.into_values().collect();
    rects.sort_by_key(|r| (r.top, r.left));
    // Bounding boxes of separate components can overlap (an L-shape around another block):
    // merge them so every cell belongs to exactly one region.
    if rects.len() <= 2_000 {
        let mut changed = true;
        while changed {
            changed = false;
            let mut out: Vec<Rect> = Vec::with_capacity(rects.len());
            for r in rects.drain(..) {
                if let Some(o) = out.iter_mut().find(|o| o.intersects(&r)) {
                    *o = o.union(&r);
                    changed = true;
                } else {
                    out.push(r);
                }
            }
            rects = out;
        }
        rects.sort_by_key(|r| (r.top, r.left));
    }
    rects
}

fn detect(sheet: &Sheet) -> Vec<Region> {
    blocks(sheet)
        .into_iter()
        .take(MAX_REGIONS)
        .enumerate()
        .map(|(i, rect)| classify(sheet, rect, format!("r{}", i + 1)))
        .collect()
}

#[derive(Default, Clone, Copy)]
struct RowProfile {
    filled: u32,
    text: u32,
    numeric: u32,
    formulas: u32,
}

fn profile(sheet: &Sheet, row: u32, rect: &Rect) -> RowProfile {
    let mut p = RowProfile::default();
    for c in sheet.row_span(row, rect.left, rect.right) {
        if c.value.is_empty() && sheet.formula_at(CellRef::new(c.row, c.col)).is_none() {
            continue;
        }
        p.filled += 1;
        match c.value {
            Value::Text(_) => p.text += 1,
            Value::Number(_) | Value::Date(_) | Value::Duration(_) | Value::Bool(_) => p.numeric += 1,
            _ => {}
        }
        if sheet.formula_at(CellRef::new(c.row, c.col)).is_some() {
            p.formulas += 1;
        }
    }
    p
}

fn is_total_label(s: &str) -> bool {
    let l = s.trim().to_lowercase();
    ["total", "totals", "grand total", "sum", "subtotal", "overall"]
        .iter()
        .any(|k| l == *k || l.starts_with(&format!("{k} ")) || l.starts_with(&format!("{k}:")))
}

/// Column-type consistency of the body rows: the mean share of each column's dominant type.
fn consistency(sheet: &Sheet, body: &Rect) -> f64 {
    let w = body.width() as usize;
    let mut counts = vec![[0u32; 3]; w];
    let last = body.bottom.min(body.top + SAMPLE_ROWS);
    for row in body.top..=last {
        for c in sheet.row_span(row, body.left, body.right) {
            let k = match c.value {
                Value::Text(_) => 0,
                Value::Empty | Value::Error(_) => continue,
                _ => 1,
            };
            counts[(c.col - body.left) as usize][k] += 1;
            counts[(c.col - body.left) as usize][2] += 1;
        }
    }
    let cols: Vec<f64> = counts.iter().filter(|c| c[2] > 0).map(|c| c[0].max(c[1]) as f64 / c[2] as f64).collect();
    if cols.is_empty() { 0.0 } else { cols.iter().sum::<f64>() / cols.len() as f64 }
}

fn classify(sheet: &Sheet, rect: Rect, id: String) -> Region {
    let w = rect.width();
    let h = rect.height();
    let mut region = Region {
        id,
        rect,
        kind: RegionKind::Table,
        header_row: None,
        headers: Vec::new(),
        confidence: 0.5,
        title: None,
        totals_row: None,
    };
    let first = profile(sheet, rect.top, &rect);
    let cells: Vec<crate::sheet::Cell> = sheet.cells_in(rect).take(4096).collect();
    let text_cells = cells.iter().filter(|c| matches!(c.value, Value::Text(_))).count();
    let long_text =
        cells.iter().filter(|c| matches!(c.value, Value::Text(_)) && sheet.text(&c.value).len() > 40).count();

    // Notes: a lone cell, or text-only prose.
    if cells.len() <= 1 || (text_cells == cells.len() && (w <= 2 && h <= 3 || long_text * 2 >= text_cells)) {
        region.kind = RegionKind::Notes;
        region.confidence = if cells.len() <= 1 { 0.6 } else { 0.75 };
        return region;
    }

    // Key/value blocks: distinct labels in the first column, values beside them.
    if (2..=3).contains(&w) && h >= 2 {
        let (mut labels, mut values, mut formula_values, mut numeric_values, mut third) =
            (0u32, 0u32, 0u32, 0u32, 0u32);
        let mut distinct = std::collections::HashSet::new();
        for row in rect.top..=rect.bottom {
            let label = sheet.get(row, rect.left);
            if matches!(label, Value::Text(_)) {
                labels += 1;
                distinct.insert(sheet.text(&label).trim().to_lowercase());
            }
            let v = sheet.get(row, rect.left + 1);
            let f = sheet.formula_at(CellRef::new(row, rect.left + 1)).is_some();
            if !v.is_empty() || f {
                values += 1;
            }
            if f {
                formula_values += 1;
            }
            if v.as_number().is_some() {
                numeric_values += 1;
            }
            if w == 3 && sheet.get(row, rect.left + 2).as_number().is_some() {
                third += 1;
            }
        }
        let header_like = first.text == first.filled && first.filled == w;
        let numeric_body = numeric_values + 1 >= h;
        let unique_labels = distinct.len() as u32 * 10 >= labels * 9;
        // A third column of a key/value block holds units or notes, not a second series.
        let third_ok = w == 2 || third * 2 < h;
        if labels * 10 >= h * 8
            && values * 10 >= h * 6
            && unique_labels
            && third_ok
            && !(header_like && numeric_body && h > 3)
        {
            region.kind =
                if formula_values * 2 >= values.max(1) { RegionKind::Outputs } else { RegionKind::Parameters };
            region.confidence = if header_like { 0.65 } else { 0.85 };
            return region;
        }
    }

    // Tables: find the header row among the first rows.
    let mut header: Option<u32> = None;
    let scan_to = rect.bottom.min(rect.top + 5);
    let mut body_fallback = false;
    for row in rect.top..=scan_to {
        let p = profile(sheet, row, &rect);
        if p.filled == 0 || p.filled * 2 < w || p.text * 10 < p.filled * 8 {
            continue;
        }
        if row >= rect.bottom {
            break;
        }
        let body = Rect::new(row + 1, rect.left, rect.bottom.min(row + 20), rect.right);
        let mut body_numeric = 0;
        for r in body.top..=body.bottom {
            body_numeric += profile(sheet, r, &rect).numeric;
        }
        if body_numeric > 0 {
            header = Some(row);
            break;
        }
        if row == rect.top && p.filled == w && p.text == p.filled {
            // A text-only table: take the first full row, with less confidence.
            header = Some(row);
            body_fallback = true;
            break;
        }
    }

    let header_top;
    if let Some(hr) = header {
        // Rows above the header: group headers (merged across columns) or a title.
        let mut group_rows = Vec::new();
        let mut title_rows = Vec::new();
        for row in rect.top..hr {
            let spans = sheet.merged.iter().any(|m| {
                m.top <= row
                    && row <= m.bottom
                    && m.width() > 1
                    && m.left >= rect.left
                    && m.right <= rect.right
                    && m.width() < w
            });
            let p = profile(sheet, row, &rect);
            if spans && p.filled > 0 {
                group_rows.push(row);
            } else {
                title_rows.push(row);
            }
        }
        let title: Vec<String> = title_rows
            .iter()
            .flat_map(|r| sheet.row_span(*r, rect.left, rect.right))
            .filter(|c| !c.value.is_empty())
            .map(|c| sheet.text(&c.value).into_owned())
            .collect();
        if !title.is_empty() {
            region.title = Some(title.join(" "));
        }
        header_top = group_rows.first().copied().unwrap_or(hr);
        region.headers = header_names(sheet, &rect, hr, &group_rows);
        region.header_row = Some(hr);
    } else {
        header_top = rect.top;
        region.headers = (rect.left..=rect.right).map(col_name).collect();
    }
    region.rect = Rect::new(header_top, rect.left, rect.bottom, rect.right);

    // Totals: a last row labelled "Total", or whose numbers are all SUM/SUBTOTAL formulas.
    let data_top = header.map(|h| h + 1).unwrap_or(rect.top);
    if rect.bottom > data_top {
        let last = sheet.row_span(rect.bottom, rect.left, rect.right);
        let labelled = last.iter().any(|c| matches!(c.value, Value::Text(_)) && is_total_label(&sheet.text(&c.value)));
        let sums = last
            .iter()
            .filter(|c| c.value.as_number().is_some())
            .map(|c| {
                sheet.formula_at(CellRef::new(c.row, c.col)).is_some_and(|f| {
                    let u = f.to_uppercase();
                    u.starts_with("SUM(") || u.starts_with("SUBTOTAL(")
                })
            })
            .collect::<Vec<bool>>();
        if labelled || (!sums.is_empty() && sums.iter().all(|x| *x)) {
            region.totals_row = Some(rect.bottom);
        }
    }

    let body = Rect::new(data_top.min(rect.bottom), rect.left, rect.bottom, rect.right);
    let cons = consistency(sheet, &body);
    let fill = cells.len() as f64 / (rect.area().min(4096) as f64).max(1.0);
    region.confidence = match header {
        Some(_) if body_fallback => 0.6,
        Some(_) => 0.6 + 0.3 * cons + 0.09 * fill.min(1.0),
        None => 0.3 + 0.3 * cons,
    };
    region.confidence = (region.confidence * 100.0).round() / 100.0;
    region
}

/// Header names for each column: the header cell (or the merged cell covering it), prefixed by
/// group headers above; blanks become column letters; duplicates get a suffix.
fn header_names(sheet: &Sheet, rect: &Rect, hr: u32, group_rows: &[u32]) -> Vec<String> {
    let text_at = |row: u32, col: u32| -> String {
        let (r, c) = match sheet.merge_at(row, col) {
            Some(m) => (m.top, m.left),
            None => (row, col),
        };
        sheet.text(&sheet.get(r, c)).trim().to_string()
    };
    let mut seen = std::collections::HashMap::new();
    (rect.left..=rect.right)
        .map(|col| {
            let mut parts: Vec<String> =
                group_rows.iter().map(|r| text_at(*r, col)).filter(|s| !s.is_empty()).collect();
            let own = text_at(hr, col);
            if !own.is_empty() && parts.last() != Some(&own) {
                parts.push(own);
            }
            let mut name = if parts.is_empty() { col_name(col) } else { parts.join(" / ") };
            let n = seen.entry(name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                name = format!("{name}_{n}");
            }
            name
        })
        .collect()
}

/// Analyze an arbitrary range as one block (for reads by range): header and totals as for regions.
pub fn analyze_range(sheet: &Sheet, rect: Rect) -> Region {
    classify(sheet, rect, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sheet::SheetBuilder;

    fn build(rows: &[(u32, u32, &str)], merged: Vec<Rect>) -> Sheet {
        let mut b = SheetBuilder::new("T".into());
        for (r, c, s) in rows {
            if let Some(f) = s.strip_prefix('=') {
                b.push_formula(*r, *c, f);
                b.push(*r, *c, Value::Number(1.0));
            } else if let Ok(n) = s.parse::<f64>() {
                b.push(*r, *c, Value::Number(n));
            } else {
                let v = b.intern(s);
                b.push(*r, *c, v);
            }
        }
        b.finish(merged)
    }

    #[test]
    fn side_by_side_tables_and_kv_block() {
        let mut cells = vec![];
        // Table 1 at B3 with header at row 3, a title at B1.
        cells.push((0, 1, "Sales report"));
        for (i, h) in ["Region", "Units", "Price"].iter().enumerate() {
            cells.push((2, 1 + i as u32, *h));
        }
        for r in 3..10 {
            cells.push((r, 1, "North"));
            cells.push((r, 2, "5"));
            cells.push((r, 3, "2.5"));
        }
        cells.push((10, 1, "Total"));
        cells.push((10, 2, "=SUM(C4:C10)"));
        // Table 2 at G3, separated by empty columns E and F.
        cells.push((2, 6, "Name"));
        cells.push((2, 7, "Score"));
        for r in 3..6 {
            cells.push((r, 6, "x"));
            cells.push((r, 7, "9"));
        }
        // Parameters at J1.
        cells.push((0, 9, "Rate"));
        cells.push((0, 10, "0.05"));
        cells.push((1, 9, "Years"));
        cells.push((1, 10, "10"));
        let s = build(&cells, vec![]);
        let regs = regions(&s);
        let kinds: Vec<(&str, String)> = regs.iter().map(|r| (r.kind.as_str(), r.rect.to_string())).collect();
        assert!(kinds.contains(&("notes", "B1".into())), "{kinds:?}");
        assert!(kinds.contains(&("table", "B3:D11".into())), "{kinds:?}");
        assert!(kinds.contains(&("table", "G3:H6".into())), "{kinds:?}");
        assert!(kinds.contains(&("parameters", "J1:K2".into())), "{kinds:?}");
        let t = regs.iter().find(|r| r.rect.to_string() == "B3:D11").unwrap();
        assert_eq!(t.header_row, Some(2));
        assert_eq!(t.headers, vec!["Region", "Units", "Price"]);
        assert_eq!(t.totals_row, Some(10));
        assert!(t.confidence > 0.8, "{}", t.confidence);
        assert_eq!(t.data_rect(false).unwrap().to_string(), "B4:D10");
    }

    #[test]
    fn merged_group_headers_and_title_directly_above() {
        let mut cells = vec![(0, 0, "Quarterly figures"), (1, 1, "2024"), (1, 3, "2025")];
        for (i, h) in ["Item", "Q1", "Q2", "Q1", "Q2"].iter().enumerate() {
            cells.push((2, i as u32, *h));
        }
        for r in 3..8 {
            cells.push((r, 0, "widget"));
            for c in 1..5 {
                cells.push((r, c, "3"));
            }
        }
        let merged = vec![Rect::new(1, 1, 1, 2), Rect::new(1, 3, 1, 4)];
        let s = build(&cells, merged);
        let regs = regions(&s);
        assert_eq!(regs.len(), 1, "{regs:?}");
        let t = &regs[0];
        assert_eq!(t.title.as_deref(), Some("Quarterly figures"));
        assert_eq!(t.header_row, Some(2));
        assert_eq!(t.rect.to_string(), "A2:E8");
        assert_eq!(t.headers, vec!["Item", "2024 / Q1", "2024 / Q2", "2025 / Q1", "2025 / Q2"]);
    }

    #[test]
    fn outputs_block_and_notes() {
        let cells = vec![
            (0, 0, "Net income"),
            (0, 1, "=B5-B6"),
            (1, 0, "Margin"),
            (1, 1, "=B1/B5"),
            (5, 0, "These figures are unaudited and provided for planning purposes only."),
        ];
        let s = build(&cells, vec![]);
        let regs = regions(&s);
        assert_eq!(regs[0].kind, RegionKind::Outputs);
        assert_eq!(regs[1].kind, RegionKind::Notes);
    }
}
