//! Formula cells and the values Excel cached for them, read with calamine.

use std::io::{Read, Seek};
use std::path::Path;

use anyhow::{Context, Result};
use calamine::{CellErrorType, Data, Range, Reader, Xlsx, open_workbook};
use serde::Serialize;

use crate::value::Value;

/// One formula cell that carries a cached value.
#[derive(Debug, Clone)]
pub struct CachedCell {
    pub sheet: String,
    /// 0-based row, as calamine reports it.
    pub row: u32,
    /// 0-based column, as calamine reports it.
    pub col: u32,
    /// Formula text without the leading `=`.
    pub formula: String,
    pub value: Value,
}

/// Everything calamine could read from one workbook.
#[derive(Debug, Default)]
pub struct CachedBook {
    pub cells: Vec<CachedCell>,
    /// Formula cells without a cached value (skipped).
    pub uncached_formulas: usize,
    /// Sheets calamine could not read (`name: error`); their cells are skipped.
    pub sheet_errors: Vec<String>,
}

/// The application that last saved the file, from `docProps/app.xml`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Producer {
    pub application: Option<String>,
    pub app_version: Option<String>,
}

impl Producer {
    /// Whether the file was last saved by Microsoft Excel (desktop, Mac or Online), so its
    /// cached formula values were computed by Excel. Writers that only claim compatibility
    /// ("Microsoft Excel Compatible / Openpyxl") are excluded.
    pub fn is_excel(&self) -> bool {
        self.application
            .as_deref()
            .is_some_and(|app| app.contains("Microsoft") && app.contains("Excel") && !app.contains("Compatible"))
    }

    pub fn label(&self) -> String {
        match (&self.application, &self.app_version) {
            (Some(app), Some(version)) => format!("{app} {version}"),
            (Some(app), None) => app.clone(),
            _ => String::new(),
        }
    }
}

/// Reads every formula cell with a cached value from an `.xlsx`/`.xlsm` file.
pub fn read_cached(path: &Path) -> Result<CachedBook> {
    let mut workbook: Xlsx<_> = open_workbook(path)?;
    let mut book = CachedBook::default();
    for sheet in workbook.sheet_names() {
        if let Err(err) = read_sheet(&mut workbook, &sheet, &mut book) {
            book.sheet_errors.push(format!("{sheet}: {err:#}"));
        }
    }
    Ok(book)
}

fn read_sheet<RS: Read + Seek>(workbook: &mut Xlsx<RS>, sheet: &str, book: &mut CachedBook) -> Result<()> {
    let formulas = workbook.worksheet_formula(sheet).context("worksheet_formula")?;
    if formulas.is_empty() {
        return Ok(());
    }
    let values = workbook.worksheet_range(sheet).context("worksheet_range")?;
    collect_sheet(sheet, &formulas, &values, book);
    Ok(())
}

fn collect_sheet(sheet: &str, formulas: &Range<String>, values: &Range<Data>, book: &mut CachedBook) {
    let Some((row0, col0)) = formulas.start() else {
        return;
    };
    for (rel_row, rel_col, formula) in formulas.used_cells() {
        if formula.is_empty() {
            continue;
        }
        let (row, col) = (row0 + rel_row as u32, col0 + rel_col as u32);
        match values.get_value((row, col)).map(data_to_value) {
            Some(value) if value != Value::Empty => book.cells.push(CachedCell {
                sheet: sheet.to_string(),
                row,
                col,
                formula: formula.trim_start_matches('=').to_string(),
                value,
            }),
            _ => book.uncached_formulas += 1,
        }
    }
}

/// Converts a calamine value; dates and durations become their serial numbers.
pub fn data_to_value(data: &Data) -> Value {
    match data {
        Data::Int(i) => Value::Number(*i as f64),
        Data::Float(f) => Value::Number(*f),
        Data::String(s) => Value::Text(s.clone()),
        Data::Bool(b) => Value::Bool(*b),
        Data::DateTime(dt) => Value::Number(dt.as_f64()),
        Data::DateTimeIso(s) | Data::DurationIso(s) => Value::Text(s.clone()),
        Data::Error(e) => Value::Error(error_code(e)),
        Data::Empty => Value::Empty,
    }
}

fn error_code(error: &CellErrorType) -> String {
    match error {
        CellErrorType::GettingData => "#GETTING_DATA".to_string(),
        other => other.to_string(),
    }
}

/// Reads the producer from `docProps/app.xml`; missing parts give an empty producer.
pub fn read_producer(path: &Path) -> Producer {
    let Some(xml) = read_zip_part(path, "docProps/app.xml") else {
        return Producer::default();
    };
    Producer { application: xml_element_text(&xml, "Application"), app_version: xml_element_text(&xml, "AppVersion") }
}

/// Reads a zip member as text, at most 1 MiB of it. Some writers store member names with
/// backslashes (`docProps\app.xml`); those are found too.
fn read_zip_part(path: &Path, name: &str) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut archive = zip::ZipArchive::new(file).ok()?;
    let index = archive.index_for_name(name).or_else(|| archive.index_for_name(&name.replace('/', "\\")))?;
    let member = archive.by_index(index).ok()?;
    let mut text = String::new();
    member.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Text of the first `<tag>` or `<prefix:tag>` element; enough for `app.xml`.
fn xml_element_text(xml: &str, tag: &str) -> Option<String> {
    let open = xml.find(&format!("<{tag}>")).map(|i| i + tag.len() + 2).or_else(|| {
        let pattern = format!(":{tag}>");
        xml.find(&pattern).map(|i| i + pattern.len())
    })?;
    let rest = &xml[open..];
    let end = rest.find("</")?;
    Some(rest[..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_detection() {
        let excel = Producer { application: Some("Microsoft Macintosh Excel".into()), app_version: None };
        let openpyxl =
            Producer { application: Some("Microsoft Excel Compatible / Openpyxl".into()), app_version: None };
        assert!(excel.is_excel());
        assert!(!openpyxl.is_excel());
        assert!(!Producer::default().is_excel());
    }

    #[test]
    fn app_xml_parsing() {
        let xml = "<Properties><Application>Microsoft Excel</Application><AppVersion>16.0300</AppVersion></Properties>";
        assert_eq!(xml_element_text(xml, "Application").as_deref(), Some("Microsoft Excel"));
        assert_eq!(xml_element_text(xml, "AppVersion").as_deref(), Some("16.0300"));
        assert_eq!(xml_element_text(xml, "Company"), None);
    }
}
