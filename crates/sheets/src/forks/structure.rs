//! Structural edits of an xlsx file: insert or delete rows and columns, create, rename, delete
//! and copy sheets. Each works on the file itself, the way Excel would: cells move, formulas
//! everywhere are rewritten (other sheets, defined names, chart series, conditional formats,
//! data validations), merged ranges, hyperlinks, filters, tables, comments and pivot sources
//! follow. Untouched parts are copied byte for byte; inside a rewritten part, unknown markup
//! is copied as it was.
//!
//! Not followed (left where they were): drawing anchors (charts and pictures keep their place
//! on the grid) and page breaks. Columns inserted or deleted through a table are refused.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};

use quick_xml::Reader;
use quick_xml::escape::{escape, unescape};
use quick_xml::events::{BytesStart, Event};
use serde::{Deserialize, Serialize};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::xlsx::{
    attr, norm, relationships as rels, remove_element_containing as remove_tag_containing, resolve_target as resolve,
};
use crate::address::{MAX_COLS, MAX_ROWS, col_name, parse_cell, quote_sheet};
use crate::error::{Result, SheetsError};
use crate::formula::{Axis, Token, adjust_structure, scan};

/// One structural edit, as logged and as `structure_batch` takes it (0-based indices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StructOp {
    InsertRows {
        sheet: String,
        at: u32,
        count: u32,
    },
    DeleteRows {
        sheet: String,
        at: u32,
        count: u32,
    },
    InsertCols {
        sheet: String,
        at: u32,
        count: u32,
    },
    DeleteCols {
        sheet: String,
        at: u32,
        count: u32,
    },
    CreateSheet {
        name: String,
    },
    RenameSheet {
        sheet: String,
        new_name: String,
    },
    DeleteSheet {
        sheet: String,
    },
    CopySheet {
        sheet: String,
        new_name: String,
    },
    /// Cell ops, carried out by the transform tools in the batch's order (not a file edit).
    CopyRange {
        sheet: String,
        range: String,
        to: String,
    },
    MoveRange {
        sheet: String,
        range: String,
        to: String,
    },
}

impl StructOp {
    /// A copy or move of a range: cell edits, not a structural change of the file.
    pub fn is_range_op(&self) -> bool {
        matches!(self, StructOp::CopyRange { .. } | StructOp::MoveRange { .. })
    }
}

impl StructOp {
    /// What it does, for people: "insert 2 rows before row 5 of Sheet1".
    pub fn describe(&self) -> String {
        let plural = |n: u32, one: &str, many: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {many}") };
        match self {
            StructOp::InsertRows { sheet, at, count } => {
                format!("insert {} before row {} of {sheet}", plural(*count, "row", "rows"), at + 1)
            }
            StructOp::DeleteRows { sheet, at, count } => {
                format!("delete {} from row {} of {sheet}", plural(*count, "row", "rows"), at + 1)
            }
            StructOp::InsertCols { sheet, at, count } => {
                format!("insert {} before column {} of {sheet}", plural(*count, "column", "columns"), col_name(*at))
            }
            StructOp::DeleteCols { sheet, at, count } => {
                format!("delete {} from column {} of {sheet}", plural(*count, "column", "columns"), col_name(*at))
            }
            StructOp::CreateSheet { name } => format!("create sheet {name}"),
            StructOp::RenameSheet { sheet, new_name } => format!("rename sheet {sheet} to {new_name}"),
            StructOp::DeleteSheet { sheet } => format!("delete sheet {sheet}"),
            StructOp::CopySheet { sheet, new_name } => format!("copy sheet {sheet} as {new_name}"),
            StructOp::CopyRange { sheet, range, to } => format!("copy {sheet}!{range} to {to}"),
            StructOp::MoveRange { sheet, range, to } => format!("move {sheet}!{range} to {to}"),
        }
    }

    /// A row or column edit as (sheet, axis, at, signed count).
    fn shift(&self) -> Option<Shift<'_>> {
        let (sheet, axis, at, count) = match self {
            StructOp::InsertRows { sheet, at, count } => (sheet, Axis::Rows, *at, i64::from(*count)),
            StructOp::DeleteRows { sheet, at, count } => (sheet, Axis::Rows, *at, -i64::from(*count)),
            StructOp::InsertCols { sheet, at, count } => (sheet, Axis::Cols, *at, i64::from(*count)),
            StructOp::DeleteCols { sheet, at, count } => (sheet, Axis::Cols, *at, -i64::from(*count)),
            _ => return None,
        };
        Some(Shift { sheet, axis, at, count })
    }
}

#[derive(Clone, Copy)]
struct Shift<'a> {
    sheet: &'a str,
    axis: Axis,
    at: u32,
    count: i64,
}

impl Shift<'_> {
    /// The new 0-based index of a row (column) on the axis; None when it was deleted.
    fn map(&self, p: u32) -> Option<u32> {
        let (p, at) = (i64::from(p), i64::from(self.at));
        let n = if self.count >= 0 {
            if p >= at { p + self.count } else { p }
        } else if p < at {
            p
        } else if p < at - self.count {
            return None;
        } else {
            p + self.count
        };
        let limit = match self.axis {
            Axis::Rows => i64::from(MAX_ROWS),
            Axis::Cols => i64::from(MAX_COLS),
        };
        (n < limit).then_some(n as u32)
    }

    /// A formula (or a reference list item) on sheet `host`, rewritten.
    fn formula(&self, text: &str, host: &str) -> String {
        adjust_structure(text, host, self.sheet, self.axis, self.at, self.count)
    }

    /// A space-separated reference list (`sqref`) on the edited sheet: moved, with deleted
    /// items dropped. Empty when nothing is left.
    fn sqref(&self, list: &str) -> String {
        list.split_whitespace()
            .map(|item| self.formula(item, self.sheet))
            .filter(|s| !s.contains("#REF!"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn bad(id: &str, what: impl std::fmt::Display) -> SheetsError {
    SheetsError::Unreadable { workbook_id: id.to_string(), reason: format!("cannot restructure the file: {what}") }
}

fn refuse(what: impl Into<String>) -> SheetsError {
    SheetsError::invalid("ops", what)
}

/// One part of the package.
struct PartEntry {
    name: String,
    data: Vec<u8>,
    /// Its index in the original zip, while it is unchanged (then it is copied raw, byte for
    /// byte, even when its checksum is bad).
    orig: Option<usize>,
}

/// The parts of a package this module needs to know.
struct Package<'a> {
    src: &'a [u8],
    /// In zip order (names as stored).
    parts: Vec<PartEntry>,
    workbook: String,
    workbook_rels: String,
    /// (sheet name, relationship id, part name), in workbook order.
    sheets: Vec<(String, String, String)>,
}

impl<'a> Package<'a> {
    fn read(id: &str, bytes: &'a [u8]) -> Result<Self> {
        let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(|e| bad(id, e))?;
        let mut parts = Vec::with_capacity(zip.len());
        for i in 0..zip.len() {
            let (name, is_dir, method) = {
                let f = zip.by_index_raw(i).map_err(|e| bad(id, e))?;
                (f.name().map_err(|e| bad(id, e))?.into_owned(), f.is_dir(), f.compression())
            };
            if is_dir {
                continue;
            }
            let mut buf = Vec::new();
            let read = zip
                .by_index(i)
                .map_err(|e| bad(id, e))
                .and_then(|mut f| f.read_to_end(&mut buf).map(drop).map_err(|e| bad(id, format!("{name}: {e}"))));
            if read.is_err() {
                // Some producers write bad checksums: inflate the stored bytes without the check.
                buf = inflate_raw(&mut zip, i, method).ok_or_else(|| bad(id, format!("{name}: unreadable part")))?;
            }
            parts.push(PartEntry { name, data: buf, orig: Some(i) });
        }
        let mut p =
            Self { src: bytes, parts, workbook: String::new(), workbook_rels: String::new(), sheets: Vec::new() };
        let root = p.get("_rels/.rels").map(rels).unwrap_or_default();
        p.workbook = root
            .iter()
            .find(|r| r.1.ends_with("/officeDocument"))
            .map(|r| resolve("", &r.2))
            .unwrap_or_else(|| "xl/workbook.xml".into());
        p.workbook_rels = rels_of(&p.workbook);
        let wb_dir = dir_of(&p.workbook);
        let wb_rels: HashMap<String, String> = p
            .get(&p.workbook_rels)
            .map(rels)
            .unwrap_or_default()
            .into_iter()
            .map(|(rid, _, t)| (rid, resolve(&wb_dir, &t)))
            .collect();
        let wb = p.get(&p.workbook).ok_or_else(|| bad(id, "no workbook part"))?.to_vec();
        let mut reader = Reader::from_reader(wb.as_slice());
        loop {
            match reader.read_event() {
                Ok(Event::Start(e) | Event::Empty(e)) if e.local_name().as_ref() == "sheet" => {
                    let name = attr(&e, "name").unwrap_or_default();
                    let rid = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == "id" && a.key.prefix().is_some())
                        .map(|a| a.value.to_string())
                        .unwrap_or_default();
                    let part = wb_rels.get(&rid).cloned().unwrap_or_default();
                    p.sheets.push((name, rid, part));
                }
                Ok(Event::Eof) => break,
                Err(e) => return Err(bad(id, format!("{}: {e}", p.workbook))),
                _ => {}
            }
        }
        Ok(p)
    }

    fn index(&self, name: &str) -> Option<usize> {
        let want = norm(name);
        self.parts.iter().position(|p| norm(&p.name) == want)
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.index(name).map(|i| self.parts[i].data.as_slice())
    }

    fn text(&self, name: &str) -> String {
        self.get(name).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
    }

    fn set(&mut self, name: &str, data: Vec<u8>) {
        match self.index(name) {
            Some(i) => {
                if self.parts[i].data != data {
                    self.parts[i].data = data;
                    self.parts[i].orig = None;
                }
            }
            None => self.parts.push(PartEntry { name: name.to_string(), data, orig: None }),
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(i) = self.index(name) {
            self.parts.remove(i);
        }
    }

    /// The sheet's position by name (exact, then case-insensitive, as Excel compares them).
    fn sheet(&self, name: &str) -> Result<usize> {
        self.sheets
            .iter()
            .position(|s| s.0 == name)
            .or_else(|| self.sheets.iter().position(|s| s.0.eq_ignore_ascii_case(name)))
            .ok_or_else(|| {
                let names: Vec<&str> = self.sheets.iter().map(|s| s.0.as_str()).collect();
                refuse(format!("no sheet '{name}'; the sheets are: {}", names.join(", ")))
            })
    }

    /// Parts related from `part` (through its .rels) whose type ends with `kind`.
    fn related(&self, part: &str, kind: &str) -> Vec<String> {
        let dir = dir_of(part);
        self.get(&rels_of(part))
            .map(rels)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.1.ends_with(kind))
            .map(|r| resolve(&dir, &r.2))
            .collect()
    }

    fn write(&self, id: &str) -> Result<Vec<u8>> {
        let mut zip = ZipArchive::new(Cursor::new(self.src)).map_err(|e| bad(id, e))?;
        let mut out = ZipWriter::new(Cursor::new(Vec::with_capacity(self.src.len() + 4096)));
        let options =
            SimpleFileOptions::default().compression_method(CompressionMethod::Deflated).compression_level(Some(2));
        for p in &self.parts {
            match p.orig {
                Some(i) => {
                    let raw = zip.by_index_raw(i).map_err(|e| bad(id, e))?;
                    out.raw_copy_file(raw).map_err(|e| bad(id, e))?;
                }
                None => {
                    out.start_file(p.name.as_str(), options).map_err(|e| bad(id, e))?;
                    out.write_all(&p.data).map_err(|e| bad(id, e))?;
                }
            }
        }
        Ok(out.finish().map_err(|e| bad(id, e))?.into_inner())
    }

    /// Drop the calculation chain (Excel rebuilds it), which cells moving would make stale.
    fn drop_calc_chain(&mut self) {
        let Some(cc) = self.parts.iter().map(|p| p.name.clone()).find(|n| n.ends_with("calcChain.xml")) else { return };
        self.remove(&cc);
        let file = cc.rsplit('/').next().unwrap_or("calcChain.xml").to_string();
        let ct = self.text("[Content_Types].xml");
        self.set("[Content_Types].xml", remove_tag_containing(&ct, "<Override", &file).into_bytes());
        let rels_name = self.workbook_rels.clone();
        let r = self.text(&rels_name);
        self.set(&rels_name, remove_tag_containing(&r, "<Relationship", &file).into_bytes());
    }
}

/// A part's stored bytes inflated without checking its CRC.
fn inflate_raw(zip: &mut ZipArchive<Cursor<&[u8]>>, i: usize, method: CompressionMethod) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    zip.by_index_raw(i).ok()?.read_to_end(&mut raw).ok()?;
    match method {
        CompressionMethod::Stored => Some(raw),
        CompressionMethod::Deflated => {
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(raw.as_slice()).read_to_end(&mut out).ok()?;
            Some(out)
        }
        _ => None,
    }
}

fn dir_of(part: &str) -> String {
    part.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default()
}

fn rels_of(part: &str) -> String {
    match part.rsplit_once('/') {
        Some((d, f)) => format!("{d}/_rels/{f}.rels"),
        None => format!("_rels/{part}.rels"),
    }
}

/// `tag` (a raw start tag) with attribute `name` set to `value` (escaped here).
fn with_attr(tag: &str, name: &str, value: &str) -> String {
    super::xlsx::set_attr(tag, name, &escape(value))
}

/// `tag` without attribute `name`.
fn without_attr(tag: &str, name: &str) -> String {
    for quote in ['"', '\''] {
        let pat = format!(" {name}={quote}");
        if let Some(i) = tag.find(&pat) {
            let vs = i + pat.len();
            if let Some(ve) = tag[vs..].find(quote) {
                return format!("{}{}", &tag[..i], &tag[vs + ve + 1..]);
            }
        }
    }
    tag.to_string()
}

/// A streaming rewrite of one XML part. The callback sees each event with its raw bytes and
/// says what to write instead; whatever it does not touch is copied as it was.
enum Edit {
    Keep,
    /// Write this instead of the event.
    Replace(String),
    /// Drop the element (with its whole subtree when it is a start tag).
    Drop,
    /// Replace the whole element (start tag, content, end tag) with this.
    ReplaceElement(String),
    /// The callback read to the element's end itself: write this from the start tag on.
    Consumed(String),
}

/// What the callback knows about an event.
struct At<'a, 'b> {
    ev: &'a Event<'b>,
    raw: &'a str,
    /// The whole document (for reading an element's content after `read_to_end`).
    src: &'a [u8],
    /// Local names of the open elements, outermost first.
    path: &'a [String],
}

fn rewrite(
    xml: &[u8],
    mut f: impl FnMut(&At<'_, '_>, &mut Reader<&[u8]>) -> std::result::Result<Edit, String>,
) -> std::result::Result<Vec<u8>, String> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    if let Some(body) = xml.strip_prefix(BOM) {
        let mut out = BOM.to_vec();
        out.extend(rewrite(body, f)?);
        return Ok(out);
    }
    let mut out = Vec::with_capacity(xml.len() + 1024);
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut path: Vec<String> = Vec::new();
    let mut copied = 0usize;
    loop {
        let start = reader.buffer_position() as usize;
        let ev = reader.read_event().map_err(|e| format!("XML error at byte {start}: {e}"))?;
        let end = reader.buffer_position() as usize;
        if matches!(ev, Event::Eof) {
            break;
        }
        let raw = std::str::from_utf8(&xml[start..end]).map_err(|e| format!("not UTF-8 at byte {start}: {e}"))?;
        if let Event::End(_) = ev {
            path.pop();
        }
        let edit = f(&At { ev: &ev, raw, src: xml, path: &path }, &mut reader)?;
        let is_start = matches!(ev, Event::Start(_));
        let local = match &ev {
            Event::Start(e) | Event::Empty(e) => e.local_name().as_ref().to_string(),
            _ => String::new(),
        };
        match edit {
            Edit::Keep => {
                if is_start {
                    path.push(local);
                }
            }
            Edit::Replace(s) => {
                out.extend_from_slice(&xml[copied..start]);
                out.extend_from_slice(s.as_bytes());
                copied = end;
                if is_start {
                    path.push(local);
                }
            }
            Edit::Consumed(s) => {
                out.extend_from_slice(&xml[copied..start]);
                out.extend_from_slice(s.as_bytes());
                copied = reader.buffer_position() as usize;
            }
            Edit::Drop | Edit::ReplaceElement(_) => {
                out.extend_from_slice(&xml[copied..start]);
                let mut stop = end;
                if is_start {
                    let Event::Start(e) = &ev else { unreachable!("checked above") };
                    let name = e.name().as_ref().to_string();
                    reader.read_to_end(quick_xml::name::QName(&name)).map_err(|e| format!("XML error: {e}"))?;
                    stop = reader.buffer_position() as usize;
                }
                if let Edit::ReplaceElement(s) = edit {
                    out.extend_from_slice(s.as_bytes());
                }
                copied = stop;
            }
        }
    }
    out.extend_from_slice(&xml[copied..]);
    Ok(out)
}

/// Read the content of the element whose start tag `at` is, and write it back through `f`
/// (unescaped in, escaped out). None when `at` is not a start tag.
fn map_content(
    at: &At<'_, '_>,
    reader: &mut Reader<&[u8]>,
    raw_start: &str,
    f: impl FnOnce(&str) -> String,
) -> std::result::Result<Edit, String> {
    let Event::Start(e) = at.ev else {
        return Ok(if raw_start == at.raw { Edit::Keep } else { Edit::Replace(raw_start.to_string()) });
    };
    let qname = e.name().as_ref().to_string();
    let span = reader.read_to_end(quick_xml::name::QName(&qname)).map_err(|e| format!("XML error: {e}"))?;
    let content = std::str::from_utf8(&at.src[span.start as usize..span.end as usize]).map_err(|e| e.to_string())?;
    let text = unescape(content).map_err(|e| format!("bad text in <{qname}>: {e}"))?;
    let new = f(&text);
    // The text is still in its OOXML form (`_xHHHH_` escapes kept): only XML's own escaping
    // here, with a CR (from a character reference) kept as one, not left for parsers to drop.
    let body = if new == text { content.to_string() } else { escape(&new).replace('\r', "&#13;") };
    Ok(Edit::Consumed(format!("{raw_start}{body}</{qname}>")))
}

/// Apply one structural edit to an xlsx image. `formula_at(sheet, row, col)` gives a cell's
/// formula with shared formulas expanded (from the loaded model), for groups that must be
/// written out cell by cell.
pub fn apply(
    id: &str,
    bytes: &[u8],
    op: &StructOp,
    formula_at: &dyn Fn(&str, u32, u32) -> Option<String>,
) -> Result<Vec<u8>> {
    let mut pkg = Package::read(id, bytes)?;
    match op {
        StructOp::InsertRows { .. }
        | StructOp::DeleteRows { .. }
        | StructOp::InsertCols { .. }
        | StructOp::DeleteCols { .. } => {
            let s = op.shift().ok_or_else(|| refuse("not a row or column edit"))?;
            shift_cells(id, &mut pkg, s, formula_at)?;
        }
        StructOp::CreateSheet { name } => create_sheet(id, &mut pkg, name, None)?,
        StructOp::CopySheet { sheet, new_name } => {
            let i = pkg.sheet(sheet)?;
            let src = pkg.sheets[i].2.clone();
            let xml = pkg.get(&src).ok_or_else(|| bad(id, format!("sheet '{sheet}' has no part")))?.to_vec();
            let copy = strip_for_copy(&xml).map_err(|e| bad(id, format!("{src}: {e}")))?;
            create_sheet(id, &mut pkg, new_name, Some((i, copy)))?;
        }
        StructOp::RenameSheet { sheet, new_name } => rename_sheet(id, &mut pkg, sheet, new_name)?,
        StructOp::DeleteSheet { sheet } => delete_sheet(id, &mut pkg, sheet)?,
        StructOp::CopyRange { .. } | StructOp::MoveRange { .. } => {
            return Err(SheetsError::Internal("a range copy is a cell edit, not a file edit".into()));
        }
    }
    pkg.drop_calc_chain();
    pkg.write(id)
}

/// Check a new sheet name the way Excel does.
pub fn check_sheet_name(name: &str, existing: &[String]) -> Result<()> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 31 {
        return Err(refuse(format!("a sheet name needs 1 to 31 characters; '{name}' has {}", name.chars().count())));
    }
    if let Some(c) = n.chars().find(|c| matches!(c, ':' | '\\' | '/' | '?' | '*' | '[' | ']')) {
        return Err(refuse(format!("a sheet name cannot contain '{c}' (nor any of : \\ / ? * [ ]): '{name}'")));
    }
    // Control characters cannot be typed into a sheet tab, and readers disagree on a literal
    // `_xHHHH_` in a sheet name (LibreOffice decodes it, calamine and openpyxl do not).
    if let Some(c) = n.chars().find(|&c| c.is_control() || super::xstring::forbidden_in_xml(c)) {
        return Err(refuse(format!(
            "a sheet name cannot contain control characters (found U+{:04X}): '{}'",
            c as u32,
            name.escape_debug()
        )));
    }
    if super::xstring::unescape(n) != n {
        return Err(refuse(format!(
            "a sheet name cannot contain text of the form _xHHHH_ (spreadsheet programs read it as an escaped character): '{name}'"
        )));
    }
    if n.starts_with('\'') || n.ends_with('\'') {
        return Err(refuse(format!("a sheet name cannot begin or end with an apostrophe: '{name}'")));
    }
    if n.eq_ignore_ascii_case("history") {
        return Err(refuse("'History' is reserved by Excel; pick another sheet name"));
    }
    if existing.iter().any(|e| e.eq_ignore_ascii_case(n)) {
        return Err(refuse(format!("a sheet named '{n}' already exists (names are compared without case)")));
    }
    Ok(())
}

fn shift_cells(
    id: &str,
    pkg: &mut Package,
    s: Shift<'_>,
    formula_at: &dyn Fn(&str, u32, u32) -> Option<String>,
) -> Result<()> {
    let ti = pkg.sheet(s.sheet)?;
    let target_name = pkg.sheets[ti].0.clone();
    let s = Shift { sheet: &target_name, ..s };
    let target_part = pkg.sheets[ti].2.clone();
    // Tables on the edited sheet first: a column edit through one is refused before anything changes.
    for table in pkg.related(&target_part, "/table") {
        let Some(xml) = pkg.get(&table).map(<[u8]>::to_vec) else { continue };
        let out = shift_table(&xml, s).map_err(|e| match e {
            TableError::Refused(m) => refuse(m),
            TableError::Xml(m) => bad(id, format!("{table}: {m}")),
        })?;
        pkg.set(&table, out);
    }
    let sheets = pkg.sheets.clone();
    for (name, _, part) in &sheets {
        let Some(xml) = pkg.get(part).map(<[u8]>::to_vec) else { continue };
        let on_target = part == &target_part;
        let out = shift_sheet(&xml, name, on_target, s, &|r, c| formula_at(name, r, c))
            .map_err(|e| bad(id, format!("{part}: {e}")))?;
        pkg.set(part, out);
    }
    for comments in pkg.related(&target_part, "/comments") {
        let Some(xml) = pkg.get(&comments).map(<[u8]>::to_vec) else { continue };
        let out = rewrite(&xml, |at, _| {
            Ok(match at.ev {
                Event::Start(e) if e.local_name().as_ref() == "comment" => match attr(e, "ref") {
                    Some(r) => {
                        let new = s.formula(&r, s.sheet);
                        if new.contains("#REF!") { Edit::Drop } else { Edit::Replace(with_attr(at.raw, "ref", &new)) }
                    }
                    None => Edit::Keep,
                },
                _ => Edit::Keep,
            })
        })
        .map_err(|e| bad(id, format!("{comments}: {e}")))?;
        pkg.set(&comments, out);
    }
    // Workbook-wide references: defined names, chart series, pivot sources.
    let wb = pkg.workbook.clone();
    let xml = pkg.get(&wb).map(<[u8]>::to_vec).unwrap_or_default();
    let out = rewrite_texts(&xml, &["definedName"], |t| s.formula(t, "")).map_err(|e| bad(id, format!("{wb}: {e}")))?;
    pkg.set(&wb, out);
    let names: Vec<String> = pkg.parts.iter().map(|p| p.name.clone()).collect();
    for name in names {
        let lower = name.to_ascii_lowercase();
        if lower.contains("/charts/chart") && lower.ends_with(".xml") {
            let xml = pkg.get(&name).map(<[u8]>::to_vec).unwrap_or_default();
            let out = rewrite_texts(&xml, &["f"], |t| s.formula(t, "")).map_err(|e| bad(id, format!("{name}: {e}")))?;
            pkg.set(&name, out);
        } else if lower.contains("pivotcachedefinition") && lower.ends_with(".xml") {
            let xml = pkg.get(&name).map(<[u8]>::to_vec).unwrap_or_default();
            let out = rewrite(&xml, |at, _| {
                Ok(match at.ev {
                    Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "worksheetSource" => {
                        match (attr(e, "sheet"), attr(e, "ref")) {
                            (Some(sh), Some(r)) if sh.eq_ignore_ascii_case(s.sheet) => {
                                let new = s.formula(&r, s.sheet);
                                if new.contains("#REF!") {
                                    Edit::Keep
                                } else {
                                    Edit::Replace(with_attr(at.raw, "ref", &new))
                                }
                            }
                            _ => Edit::Keep,
                        }
                    }
                    _ => Edit::Keep,
                })
            })
            .map_err(|e| bad(id, format!("{name}: {e}")))?;
            pkg.set(&name, out);
        }
    }
    Ok(())
}

/// Rewrite the text of every element with one of these local names.
fn rewrite_texts(xml: &[u8], names: &[&str], f: impl Fn(&str) -> String) -> std::result::Result<Vec<u8>, String> {
    rewrite(xml, |at, reader| match at.ev {
        Event::Start(e) if names.iter().any(|n| e.local_name().as_ref() == *n) => map_content(at, reader, at.raw, &f),
        _ => Ok(Edit::Keep),
    })
}

enum TableError {
    Refused(String),
    Xml(String),
}

fn shift_table(xml: &[u8], s: Shift<'_>) -> std::result::Result<Vec<u8>, TableError> {
    // Read the table's own range first.
    let mut reader = Reader::from_reader(xml);
    let (mut name, mut range) = (String::new(), String::new());
    while let Ok(ev) = reader.read_event() {
        match ev {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "table" => {
                name = attr(&e, "displayName").or_else(|| attr(&e, "name")).unwrap_or_default();
                range = attr(&e, "ref").unwrap_or_default();
                break;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let Some((a, b)) = range.split_once(':').and_then(|(a, b)| Some((parse_cell(a)?, parse_cell(b)?))) else {
        return Ok(xml.to_vec());
    };
    let (lo, hi, header) = match s.axis {
        Axis::Rows => (a.row, b.row, a.row),
        Axis::Cols => (a.col, b.col, u32::MAX),
    };
    let at = s.at;
    let end = if s.count < 0 { at + (-s.count) as u32 - 1 } else { at };
    let inside = if s.count >= 0 { at > lo && at <= hi } else { at <= hi && end >= lo };
    if inside && s.axis == Axis::Cols {
        return Err(TableError::Refused(format!(
            "the table '{name}' ({range}) spans the columns this edit inserts or deletes; structure_batch cannot rewrite a table's columns yet. Edit outside the table, or rebuild it with write"
        )));
    }
    if s.count < 0 && s.axis == Axis::Rows && at <= header && end >= header {
        return Err(TableError::Refused(format!(
            "deleting these rows would delete the header row of table '{name}' ({range}); delete rows below its header"
        )));
    }
    let new = s.formula(&range, s.sheet);
    if new.contains("#REF!") {
        return Err(TableError::Refused(format!("this edit would delete all of table '{name}' ({range})")));
    }
    rewrite(xml, |at, _| {
        Ok(match at.ev {
            Event::Start(e) | Event::Empty(e)
                if matches!(e.local_name().as_ref(), "table" | "autoFilter" | "sortState") =>
            {
                match attr(e, "ref") {
                    Some(r) => Edit::Replace(with_attr(at.raw, "ref", &s.formula(&r, s.sheet))),
                    None => Edit::Keep,
                }
            }
            _ => Edit::Keep,
        })
    })
    .map_err(TableError::Xml)
}

/// One worksheet part under a row or column edit: on the edited sheet cells, rows and every
/// range move; on every sheet formulas that point at the edited sheet are rewritten.
fn shift_sheet(
    xml: &[u8],
    host: &str,
    on_target: bool,
    s: Shift<'_>,
    formula_at: &dyn Fn(u32, u32) -> Option<String>,
) -> std::result::Result<Vec<u8>, String> {
    let rows = s.axis == Axis::Rows;
    // Shared-formula groups written out cell by cell: all of them on the edited sheet (its
    // cells move apart), elsewhere only those whose formula mentions the edited sheet.
    let expand = shared_groups_to_expand(xml, on_target, s.sheet);
    // The current cell's original position (for expanding shared formulas).
    let mut cell: Option<(u32, u32)> = None;
    let mut row_no: u32 = 0;
    rewrite(xml, |at, reader| {
        let local = |e: &BytesStart<'_>| e.local_name().as_ref().to_string();
        Ok(match at.ev {
            Event::Start(e) | Event::Empty(e) => {
                let name = local(e);
                let in_data = at.path.iter().any(|p| p == "sheetData");
                match name.as_str() {
                    "row" if in_data => {
                        let r = attr(e, "r").and_then(|v| v.parse::<u32>().ok()).map(|v| v.saturating_sub(1));
                        row_no = r.unwrap_or(row_no.wrapping_add(1));
                        if !on_target {
                            return Ok(Edit::Keep);
                        }
                        if rows {
                            match s.map(row_no) {
                                None => Edit::Drop,
                                Some(n) => Edit::Replace(with_attr(at.raw, "r", &(n + 1).to_string())),
                            }
                        } else {
                            Edit::Replace(without_attr(at.raw, "spans"))
                        }
                    }
                    "c" if in_data => {
                        let pos = attr(e, "r").and_then(|v| parse_cell(&v));
                        let (r, c) = pos.map(|p| (p.row, p.col)).unwrap_or((row_no, 0));
                        cell = Some((r, c));
                        if !on_target || pos.is_none() {
                            return Ok(Edit::Keep);
                        }
                        let (nr, nc) = if rows { (s.map(r), Some(c)) } else { (Some(r), s.map(c)) };
                        match (nr, nc) {
                            (Some(nr), Some(nc)) => {
                                Edit::Replace(with_attr(at.raw, "r", &format!("{}{}", col_name(nc), nr + 1)))
                            }
                            _ => Edit::Drop,
                        }
                    }
                    "f" if in_data => {
                        let shared = attr(e, "t").as_deref() == Some("shared");
                        let prefix = raw_prefix(at.raw);
                        if shared && attr(e, "si").is_some_and(|si| expand.contains(&si)) {
                            // A shared group cannot survive cells moving apart: write each
                            // member's own formula.
                            let text = cell.and_then(|(r, c)| formula_at(r, c));
                            return Ok(match text {
                                Some(t) => Edit::ReplaceElement(format!(
                                    "<{prefix}f>{}</{prefix}f>",
                                    super::xstring::escape_text(&s.formula(&t, host))
                                )),
                                None => Edit::Drop,
                            });
                        }
                        let mut start_tag = at.raw.to_string();
                        if attr(e, "t").as_deref() == Some("array")
                            && on_target
                            && let Some(r) = attr(e, "ref")
                        {
                            let new = s.formula(&r, host);
                            if !new.contains("#REF!") {
                                start_tag = with_attr(at.raw, "ref", &new);
                            }
                        }
                        map_content(at, reader, &start_tag, |t| s.formula(t, host))?
                    }
                    "formula" | "formula1" | "formula2" => map_content(at, reader, at.raw, |t| s.formula(t, host))?,
                    "dimension" | "mergeCell" | "hyperlink" | "autoFilter" if on_target => match attr(e, "ref") {
                        Some(r) => {
                            let new = s.formula(&r, host);
                            if new.contains("#REF!") {
                                if name == "dimension" {
                                    Edit::Replace(with_attr(at.raw, "ref", "A1"))
                                } else {
                                    Edit::Drop
                                }
                            } else {
                                Edit::Replace(with_attr(at.raw, "ref", &new))
                            }
                        }
                        None => Edit::Keep,
                    },
                    "conditionalFormatting" | "dataValidation" | "selection" | "protectedRange" if on_target => {
                        match attr(e, "sqref") {
                            Some(list) => {
                                let new = s.sqref(&list);
                                if new.is_empty() {
                                    if name == "selection" {
                                        let t = with_attr(at.raw, "sqref", "A1");
                                        Edit::Replace(with_attr(&t, "activeCell", "A1"))
                                    } else {
                                        Edit::Drop
                                    }
                                } else {
                                    let mut t = with_attr(at.raw, "sqref", &new);
                                    if let Some(ac) = attr(e, "activeCell") {
                                        let nac = s.formula(&ac, host);
                                        let nac = if nac.contains("#REF!") { "A1".to_string() } else { nac };
                                        t = with_attr(&t, "activeCell", &nac);
                                    }
                                    Edit::Replace(t)
                                }
                            }
                            None => Edit::Keep,
                        }
                    }
                    "pane" if on_target => match attr(e, "topLeftCell") {
                        Some(r) => {
                            let new = s.formula(&r, host);
                            if new.contains("#REF!") {
                                Edit::Keep
                            } else {
                                Edit::Replace(with_attr(at.raw, "topLeftCell", &new))
                            }
                        }
                        None => Edit::Keep,
                    },
                    "col" if on_target && !rows => {
                        let min = attr(e, "min").and_then(|v| v.parse::<u32>().ok());
                        let max = attr(e, "max").and_then(|v| v.parse::<u32>().ok());
                        let (Some(min), Some(max)) = (min, max) else { return Ok(Edit::Keep) };
                        let range =
                            format!("{}1:{}1", col_name(min.saturating_sub(1)), col_name(max.saturating_sub(1)));
                        let new = s.formula(&range, host);
                        match new.split_once(':').and_then(|(a, b)| Some((parse_cell(a)?, parse_cell(b)?))) {
                            Some((a, b)) => {
                                let t = with_attr(at.raw, "min", &(a.col + 1).to_string());
                                Edit::Replace(with_attr(&t, "max", &(b.col + 1).to_string()))
                            }
                            None => Edit::Drop,
                        }
                    }
                    _ => Edit::Keep,
                }
            }
            Event::End(e) => {
                if e.local_name().as_ref() == "c" {
                    cell = None;
                }
                Edit::Keep
            }
            _ => Edit::Keep,
        })
    })
}

/// The `si` of the shared-formula groups of a sheet that must be written out cell by cell.
fn shared_groups_to_expand(xml: &[u8], on_target: bool, target: &str) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let mut reader = Reader::from_reader(xml);
    let target = target.to_lowercase();
    loop {
        let ev = match reader.read_event() {
            Ok(Event::Eof) | Err(_) => break,
            Ok(ev) => ev,
        };
        let (Event::Start(e) | Event::Empty(e)) = &ev else { continue };
        if e.local_name().as_ref() != "f" || attr(e, "t").as_deref() != Some("shared") {
            continue;
        }
        let Some(si) = attr(e, "si") else { continue };
        if on_target {
            out.insert(si);
            continue;
        }
        // The master carries the text (a `ref` and content); members are empty.
        if let Event::Start(_) = ev {
            let name = e.name().as_ref().to_string();
            if let Ok(span) = reader.read_to_end(quick_xml::name::QName(&name)) {
                let text = String::from_utf8_lossy(&xml[span.start as usize..span.end as usize]).to_lowercase();
                if text.contains(&target) || text.contains(&target.replace('\'', "&apos;")) {
                    out.insert(si);
                }
            }
        }
    }
    out
}

/// The namespace prefix of a raw start tag ("" or "x:").
fn raw_prefix(raw: &str) -> String {
    let name: String =
        raw.trim_start_matches('<').chars().take_while(|c| !c.is_whitespace() && *c != '>' && *c != '/').collect();
    name.rsplit_once(':').map(|(p, _)| format!("{p}:")).unwrap_or_default()
}

/// A sheet's XML made fit to be a copy: parts it points to through relationships (drawings,
/// tables, comments, controls) are left out, and it is not the selected tab.
fn strip_for_copy(xml: &[u8]) -> std::result::Result<Vec<u8>, String> {
    rewrite(xml, |at, _| {
        Ok(match at.ev {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                "drawing" | "legacyDrawing" | "legacyDrawingHF" | "tableParts" | "picture" | "oleObjects"
                | "controls" | "webPublishItems" => Edit::Drop,
                "hyperlink" if e.attributes().flatten().any(|a| a.key.local_name().as_ref() == "id") => Edit::Drop,
                "sheetView" => Edit::Replace(without_attr(at.raw, "tabSelected")),
                _ => Edit::Keep,
            },
            _ => Edit::Keep,
        })
    })
}

const EMPTY_SHEET: &str = concat!(
    "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n",
    "<worksheet xmlns=\"http://schemas.openxmlformats.org/spreadsheetml/2006/main\" ",
    "xmlns:r=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships\">",
    "<dimension ref=\"A1\"/><sheetViews><sheetView workbookViewId=\"0\"/></sheetViews>",
    "<sheetFormatPr defaultRowHeight=\"15\"/><sheetData/>",
    "<pageMargins left=\"0.7\" right=\"0.7\" top=\"0.75\" bottom=\"0.75\" header=\"0.3\" footer=\"0.3\"/></worksheet>"
);

/// Add a sheet: empty, or a copy of sheet `from.0` (its stripped XML `from.1`) placed after it.
fn create_sheet(id: &str, pkg: &mut Package, name: &str, from: Option<(usize, Vec<u8>)>) -> Result<()> {
    let existing: Vec<String> = pkg.sheets.iter().map(|s| s.0.clone()).collect();
    check_sheet_name(name, &existing)?;
    let name = name.trim();
    let wb_dir = dir_of(&pkg.workbook);
    let mut n = pkg.sheets.len() + 1;
    let part = loop {
        let p = if wb_dir.is_empty() {
            format!("worksheets/sheet{n}.xml")
        } else {
            format!("{wb_dir}/worksheets/sheet{n}.xml")
        };
        if pkg.index(&p).is_none() {
            break p;
        }
        n += 1;
    };
    let rels_name = pkg.workbook_rels.clone();
    let rels_xml = pkg.text(&rels_name);
    let mut k = 1;
    let rid = loop {
        let r = format!("rIdGemba{k}");
        if !rels_xml.contains(&format!("\"{r}\"")) {
            break r;
        }
        k += 1;
    };
    let target = part.strip_prefix(&format!("{wb_dir}/")).unwrap_or(&part).to_string();
    let rel = format!(
        "<Relationship Id=\"{rid}\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet\" Target=\"{target}\"/>"
    );
    let Some(close) = rels_xml.rfind("</Relationships>") else {
        return Err(bad(id, "the workbook's relationships part is malformed"));
    };
    pkg.set(&rels_name, format!("{}{rel}{}", &rels_xml[..close], &rels_xml[close..]).into_bytes());
    let ct = pkg.text("[Content_Types].xml");
    let over = format!(
        "<Override PartName=\"/{part}\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml\"/>"
    );
    let Some(close) = ct.rfind("</Types>") else { return Err(bad(id, "[Content_Types].xml is malformed")) };
    pkg.set("[Content_Types].xml", format!("{}{over}{}", &ct[..close], &ct[close..]).into_bytes());
    let after = from.as_ref().map(|(i, _)| *i);
    pkg.set(&part, from.map(|(_, x)| x).unwrap_or_else(|| EMPTY_SHEET.as_bytes().to_vec()));
    // The <sheet> element, with the prefix the workbook binds to the relationships namespace.
    let wb = pkg.text(&pkg.workbook.clone());
    let prefix = wb
        .find("<sheet ")
        .and_then(|i| wb[i..].find(":id=").map(|j| (i, i + j)))
        .map(|(i, j)| {
            let before = &wb[i..j];
            before.rsplit(' ').next().unwrap_or("r").to_string()
        })
        .unwrap_or_else(|| "r".into());
    let max_id = sheet_ids(&wb).into_iter().max().unwrap_or(0);
    let el = format!("<sheet name=\"{}\" sheetId=\"{}\" {prefix}:id=\"{rid}\"/>", escape(name), max_id + 1);
    let spot = match after {
        Some(i) => nth_sheet_end(&wb, i),
        None => wb.find("</sheets>").or_else(|| wb.find(":sheets>").and_then(|j| wb[..j].rfind("</"))),
    }
    .ok_or_else(|| bad(id, "the workbook part has no <sheets>"))?;
    let new_wb = format!("{}{el}{}", &wb[..spot], &wb[spot..]);
    // Sheet-scoped names after the new position move up one index.
    let new_wb = match after {
        Some(i) => shift_local_sheet_ids(&new_wb, i + 1, 1),
        None => new_wb,
    };
    let wbn = pkg.workbook.clone();
    pkg.set(&wbn, new_wb.into_bytes());
    let pos = after.map_or(pkg.sheets.len(), |i| i + 1);
    pkg.sheets.insert(pos, (name.to_string(), rid, part));
    Ok(())
}

fn sheet_ids(wb: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = wb[from..].find("sheetId=\"") {
        let s = from + i + "sheetId=\"".len();
        let e = wb[s..].find('"').map_or(s, |e| s + e);
        if let Ok(n) = wb[s..e].parse() {
            out.push(n);
        }
        from = e;
    }
    out
}

/// The byte just after the `i`th `<sheet .../>` element of workbook.xml.
fn nth_sheet_end(wb: &str, i: usize) -> Option<usize> {
    let mut reader = Reader::from_reader(wb.as_bytes());
    let mut seen = 0;
    loop {
        let ev = reader.read_event().ok()?;
        match ev {
            Event::Empty(e) | Event::Start(e) if e.local_name().as_ref() == "sheet" => {
                if seen == i {
                    return Some(reader.buffer_position() as usize);
                }
                seen += 1;
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// `localSheetId` of defined names: indices at or past `from` move by `delta`.
fn shift_local_sheet_ids(wb: &str, from: usize, delta: i64) -> String {
    let out = rewrite(wb.as_bytes(), |at, _| {
        Ok(match at.ev {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "definedName" => {
                match attr(e, "localSheetId").and_then(|v| v.parse::<i64>().ok()) {
                    Some(n) if n >= from as i64 => {
                        Edit::Replace(with_attr(at.raw, "localSheetId", &(n + delta).to_string()))
                    }
                    _ => Edit::Keep,
                }
            }
            _ => Edit::Keep,
        })
    });
    out.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|_| wb.to_string())
}

/// Replace the sheet part of references to `from` in a formula: with `to` (quoted as needed),
/// or with `#REF!` for the whole reference when `to` is None (the sheet was deleted).
pub fn rename_refs(formula: &str, from: &str, to: Option<&str>) -> String {
    let mut out = String::with_capacity(formula.len());
    let mut last = 0;
    scan(formula, |t| {
        let Token::Ref { span, sheet: Some(sheet), .. } = t else { return };
        if !sheet.eq_ignore_ascii_case(from) {
            return;
        }
        // The sheet prefix ends with '!' just before the reference.
        let Some(bang) = formula[..span.0].rfind('!') else { return };
        let head = &formula[..bang];
        let start = if head.ends_with('\'') {
            // A quoted name: find its opening quote ('' is an escaped quote inside).
            let b = head.as_bytes();
            let mut i = head.len() - 1;
            loop {
                if i == 0 {
                    break 0;
                }
                i -= 1;
                if b[i] == b'\'' {
                    if i > 0 && b[i - 1] == b'\'' {
                        i -= 1;
                        continue;
                    }
                    break i;
                }
            }
        } else {
            head.rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).map_or(0, |i| i + 1)
        };
        if start < last {
            return;
        }
        out.push_str(&formula[last..start]);
        match to {
            Some(n) => {
                out.push_str(&quote_sheet(n));
                out.push('!');
                out.push_str(&formula[span.0..span.1]);
            }
            None => out.push_str("#REF!"),
        }
        last = span.1;
    });
    out.push_str(&formula[last..]);
    out
}

/// Rewrite sheet references everywhere: every worksheet's formulas, conditional formats and
/// validations, defined names, chart series, pivot sources.
fn rename_everywhere(id: &str, pkg: &mut Package, from: &str, to: Option<&str>) -> Result<()> {
    let f = |t: &str| rename_refs(t, from, to);
    let sheets = pkg.sheets.clone();
    for (_, _, part) in &sheets {
        let Some(xml) = pkg.get(part).map(<[u8]>::to_vec) else { continue };
        let out = rewrite_texts(&xml, &["f", "formula", "formula1", "formula2"], f)
            .map_err(|e| bad(id, format!("{part}: {e}")))?;
        pkg.set(part, out);
    }
    let names: Vec<String> = pkg.parts.iter().map(|p| p.name.clone()).collect();
    for name in names {
        let lower = name.to_ascii_lowercase();
        if lower.contains("/charts/chart") && lower.ends_with(".xml") {
            let xml = pkg.get(&name).map(<[u8]>::to_vec).unwrap_or_default();
            let out = rewrite_texts(&xml, &["f"], f).map_err(|e| bad(id, format!("{name}: {e}")))?;
            pkg.set(&name, out);
        } else if lower.contains("pivotcachedefinition") && lower.ends_with(".xml") {
            let xml = pkg.get(&name).map(<[u8]>::to_vec).unwrap_or_default();
            let out = rewrite(&xml, |at, _| {
                Ok(match at.ev {
                    Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "worksheetSource" => {
                        match (attr(e, "sheet"), to) {
                            (Some(sh), Some(to)) if sh.eq_ignore_ascii_case(from) => {
                                Edit::Replace(with_attr(at.raw, "sheet", to))
                            }
                            _ => Edit::Keep,
                        }
                    }
                    _ => Edit::Keep,
                })
            })
            .map_err(|e| bad(id, format!("{name}: {e}")))?;
            pkg.set(&name, out);
        }
    }
    Ok(())
}

fn rename_sheet(id: &str, pkg: &mut Package, sheet: &str, new_name: &str) -> Result<()> {
    let i = pkg.sheet(sheet)?;
    let old = pkg.sheets[i].0.clone();
    let others: Vec<String> =
        pkg.sheets.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| s.0.clone()).collect();
    check_sheet_name(new_name, &others)?;
    let new_name = new_name.trim().to_string();
    rename_everywhere(id, pkg, &old, Some(&new_name))?;
    let wbn = pkg.workbook.clone();
    let xml = pkg.get(&wbn).map(<[u8]>::to_vec).unwrap_or_default();
    let mut seen = 0usize;
    let out = rewrite(&xml, |at, _| {
        Ok(match at.ev {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "sheet" => {
                let this = seen;
                seen += 1;
                if this == i { Edit::Replace(with_attr(at.raw, "name", &new_name)) } else { Edit::Keep }
            }
            _ => Edit::Keep,
        })
    })
    .map_err(|e| bad(id, format!("{wbn}: {e}")))?;
    let out = rewrite_texts(&out, &["definedName"], |t| rename_refs(t, &old, Some(&new_name)))
        .map_err(|e| bad(id, format!("{wbn}: {e}")))?;
    pkg.set(&wbn, out);
    pkg.sheets[i].0 = new_name;
    Ok(())
}

fn delete_sheet(id: &str, pkg: &mut Package, sheet: &str) -> Result<()> {
    let i = pkg.sheet(sheet)?;
    if pkg.sheets.len() == 1 {
        return Err(refuse("a workbook needs at least one sheet; create another before deleting this one"));
    }
    let (name, rid, part) = pkg.sheets.remove(i);
    rename_everywhere(id, pkg, &name, None)?;
    let wbn = pkg.workbook.clone();
    let xml = pkg.get(&wbn).map(<[u8]>::to_vec).unwrap_or_default();
    let mut seen = 0usize;
    let sheets_left = pkg.sheets.len();
    let out = rewrite(&xml, |at, _| {
        Ok(match at.ev {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "sheet" => {
                let this = seen;
                seen += 1;
                if this == i { Edit::Drop } else { Edit::Keep }
            }
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "definedName" => {
                match attr(e, "localSheetId").and_then(|v| v.parse::<usize>().ok()) {
                    Some(n) if n == i => Edit::Drop,
                    Some(n) if n > i => Edit::Replace(with_attr(at.raw, "localSheetId", &(n - 1).to_string())),
                    _ => Edit::Keep,
                }
            }
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "workbookView" => {
                let mut t = at.raw.to_string();
                for a in ["activeTab", "firstSheet"] {
                    if let Some(n) = attr(e, a).and_then(|v| v.parse::<usize>().ok())
                        && n >= sheets_left
                    {
                        t = with_attr(&t, a, "0");
                    }
                }
                Edit::Replace(t)
            }
            _ => Edit::Keep,
        })
    })
    .map_err(|e| bad(id, format!("{wbn}: {e}")))?;
    let out = rewrite_texts(&out, &["definedName"], |t| rename_refs(t, &name, None))
        .map_err(|e| bad(id, format!("{wbn}: {e}")))?;
    pkg.set(&wbn, out);
    let rels_name = pkg.workbook_rels.clone();
    let r = pkg.text(&rels_name);
    pkg.set(&rels_name, remove_tag_containing(&r, "<Relationship", &format!("\"{rid}\"")).into_bytes());
    let ct = pkg.text("[Content_Types].xml");
    pkg.set("[Content_Types].xml", remove_tag_containing(&ct, "<Override", &format!("\"/{part}\"")).into_bytes());
    // Its data goes with it (a deleted sheet's contents must not linger in the file); parts
    // it pointed to (drawings, comments) stay as unreferenced parts.
    pkg.remove(&part);
    pkg.remove(&rels_of(&part));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renaming_rewrites_only_references_to_that_sheet() {
        assert_eq!(
            rename_refs("Data!A1+'Data'!B2+Other!C3", "Data", Some("New Data")),
            "'New Data'!A1+'New Data'!B2+Other!C3"
        );
        assert_eq!(rename_refs("SUM('It''s'!A1:A3)", "It's", Some("X")), "SUM(X!A1:A3)");
        assert_eq!(rename_refs("Data!A1*2+A1", "data", None), "#REF!*2+A1");
    }

    #[test]
    fn shift_maps_positions_like_excel() {
        let ins = Shift { sheet: "S", axis: Axis::Rows, at: 4, count: 2 };
        assert_eq!((ins.map(3), ins.map(4)), (Some(3), Some(6)));
        let del = Shift { sheet: "S", axis: Axis::Rows, at: 4, count: -2 };
        assert_eq!((del.map(3), del.map(4), del.map(5), del.map(6)), (Some(3), None, None, Some(4)));
        assert_eq!(del.sqref("A1:B10 A5:A6 C7"), "A1:B8 C5");
    }

    #[test]
    fn sheet_names_are_checked_like_excel() {
        let existing = vec!["Sheet1".to_string()];
        assert!(check_sheet_name("sheet1", &existing).is_err());
        assert!(check_sheet_name("a/b", &existing).is_err());
        assert!(check_sheet_name(&"x".repeat(32), &existing).is_err());
        assert!(check_sheet_name("Summary 2", &existing).is_ok());
        for bad in ["a\u{c}b", "tab\there", "line\nbreak", "x\u{fffe}", "a_x0041_b"] {
            let e = check_sheet_name(bad, &existing).unwrap_err().to_string();
            assert!(e.contains("control characters") || e.contains("_xHHHH_"), "{bad:?}: {e}");
        }
        assert!(check_sheet_name("a_x41_b _xZZZZ_", &existing).is_ok());
    }
}
