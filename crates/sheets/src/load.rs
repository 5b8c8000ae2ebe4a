//! Reading workbook files with calamine, behind the limits: format sniffing by content,
//! zip-bomb checks before parsing, streaming sheets into the compact model, and turning
//! every reader failure (including a panic inside the reader) into a clear error.

use std::cell::Cell;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use calamine::{Data, DataRef, Reader, Xls, Xlsb, Xlsx};

use crate::address::Rect;
use crate::error::{Result, SheetsError};
use crate::limits::{Budget, Limits};
use crate::sheet::{Sheet, SheetBuilder};
use crate::value::{CellError, Value};
use crate::xlsx_reader::{Failure, Progress, XlsxBook};

/// Days between the 1904 and 1900 date systems.
const EPOCH_1904_OFFSET: f64 = 1462.0;
/// How many cells between budget checks.
const CHECK_EVERY: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xlsx,
    Xlsb,
    Xls,
    Ods,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Xlsx => "xlsx",
            Format::Xlsb => "xlsb",
            Format::Xls => "xls",
            Format::Ods => "ods",
        }
    }
}

/// The file image, shared so a second reader can work on it in parallel.
pub type Bytes = Image;

thread_local! {
    /// Where the last read of a file image on this thread ended: a sheet load (on the same
    /// thread as its reader) turns it into progress in bytes inflated.
    static READ_POS: Cell<u64> = const { Cell::new(0) };
}

/// A file image that publishes its read position (per thread, one store per read: the zip
/// inflater reads in 32 KiB chunks) so a sheet load can tell how far into its part it is.
pub struct Image(Cursor<Arc<[u8]>>);

impl Image {
    pub fn new(bytes: Arc<[u8]>) -> Self {
        Self(Cursor::new(bytes))
    }
}

impl Read for Image {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        READ_POS.with(|p| p.set(self.0.position()));
        Ok(n)
    }
}

impl Seek for Image {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let at = self.0.seek(pos)?;
        READ_POS.with(|p| p.set(at));
        Ok(at)
    }
}

/// The zip part a sheet's reader is in, found from the image's read position: its local
/// header offset and its compressed and inflated sizes.
struct PartSpan {
    start: u64,
    packed: u64,
    size: u64,
}

impl PartSpan {
    /// The part holding the current read position (the reader has just opened it).
    fn current(bytes: &[u8]) -> Option<Self> {
        let pos = READ_POS.with(Cell::get);
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).ok()?;
        let mut best: Option<Self> = None;
        for i in 0..zip.len() {
            let Ok(f) = zip.by_index_raw(i) else { continue };
            let start = f.header_start();
            if start <= pos && best.as_ref().is_none_or(|b| b.start < start) {
                best = Some(Self { start, packed: f.compressed_size().max(1), size: f.size() });
            }
        }
        best
    }

    /// Bytes inflated so far, estimated from the compressed bytes read (exact at the end).
    fn inflated(&self) -> u64 {
        let read = READ_POS.with(Cell::get).saturating_sub(self.start).min(self.packed);
        ((read as f64 / self.packed as f64) * self.size as f64) as u64
    }
}

/// Progress of one sheet load in bytes inflated, when someone watches the call and no other
/// stage (a save, a recalculation) is running around the load.
struct LoadProgress<'a> {
    budget: &'a Budget,
    span: Option<PartSpan>,
}

impl<'a> LoadProgress<'a> {
    fn start(budget: &'a Budget, id: &str, sheet: &str, bytes: &[u8]) -> Self {
        let span =
            budget.observer().filter(|o| o.wants_progress()).and_then(|_| PartSpan::current(bytes)).filter(|s| {
                budget.progress_begin_if_idle(|| format!("loading sheet '{sheet}' of {id}"), "bytes inflated", s.size)
            });
        Self { budget, span }
    }

    fn tick(&self) {
        if let Some(s) = &self.span {
            self.budget.progress(s.inflated());
        }
    }

    fn finish(&self) {
        if let Some(s) = &self.span {
            self.budget.progress(s.size);
        }
    }
}

/// An open calamine reader over the file's bytes.
pub enum Book {
    Xlsx(Xlsx<Bytes>),
    Xlsb(Xlsb<Bytes>),
    Xls(Xls<Bytes>),
    Ods(calamine::Ods<Bytes>),
}

/// What the opener learns about a workbook without loading its sheets.
pub struct Opened {
    pub book: Book,
    pub format: Format,
    pub sheets: Vec<SheetMeta>,
    pub defined_names: Vec<(String, String)>,
    pub date1904: bool,
    pub has_vba: bool,
    pub bytes: Arc<[u8]>,
}

#[derive(Debug, Clone)]
pub struct SheetMeta {
    pub name: String,
    /// "worksheet", "chartsheet", "macrosheet", "dialogsheet".
    pub kind: &'static str,
    pub hidden: bool,
}

fn unreadable(id: &str, reason: impl std::fmt::Display) -> SheetsError {
    SheetsError::Unreadable { workbook_id: id.to_string(), reason: reason.to_string() }
}

fn limit(id: &str, detail: impl Into<String>) -> SheetsError {
    SheetsError::LimitExceeded { workbook_id: id.to_string(), detail: detail.into() }
}

/// Run reader code, turning a panic inside it into an error instead of a crash.
fn guarded<T>(id: &str, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::warn!(workbook = id, "reader panicked while {what}: {msg}");
            Err(unreadable(id, format!("the reader failed while {what} (malformed file: {msg})")))
        }
    }
}

const OLE_MAGIC: [u8; 8] = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// Identify the format from the bytes (extensions lie), checking zip containers against the limits.
pub fn sniff(id: &str, bytes: &[u8], limits: &Limits) -> Result<Format> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return sniff_zip(id, bytes, limits);
    }
    if bytes.starts_with(&OLE_MAGIC) {
        let needle: Vec<u8> = "EncryptedPackage".encode_utf16().flat_map(u16::to_le_bytes).collect();
        if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
            return Err(SheetsError::Encrypted { workbook_id: id.to_string() });
        }
        crate::cfb::validate(bytes).map_err(|e| unreadable(id, format!("the OLE2 container is damaged: {e}")))?;
        return Ok(Format::Xls);
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(2048)]).to_lowercase();
    let reason = if head.contains("office:document") {
        "flat OpenDocument XML (.fods); save it as .ods or .xlsx".to_string()
    } else if head.contains("<html") || head.contains("<table") {
        "an HTML file with a spreadsheet extension; save it as .xlsx".to_string()
    } else if bytes.is_empty() {
        "the file is empty".to_string()
    } else if bytes.len() >= 4 && bytes[0] == 0x09 && matches!(bytes[1], 0x00 | 0x02 | 0x04) {
        "an Excel 2-4 (BIFF2-4) worksheet, older than calamine reads; save it as .xlsx".to_string()
    } else {
        "the content is not a spreadsheet Gemba reads (xlsx, xlsm, xlsb, xls, ods)".to_string()
    };
    Err(SheetsError::Unsupported { workbook_id: id.to_string(), reason })
}

fn sniff_zip(id: &str, bytes: &[u8], limits: &Limits) -> Result<Format> {
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| unreadable(id, format!("broken zip container ({e})")))?;
    let mut total: u64 = 0;
    let (mut xlsb, mut xlsx, mut ods, mut content_types) = (false, false, false, false);
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i).map_err(|e| unreadable(id, format!("broken zip entry {i} ({e})")))?;
        let (size, packed) = (f.size(), f.compressed_size().max(1));
        let fname = f.name().map(|n| n.to_string()).unwrap_or_else(|_| format!("#{i}"));
        total = total.saturating_add(size);
        if size > limits.max_part_bytes {
            return Err(limit(id, format!("part '{fname}' unpacks to {size} bytes (limit {})", limits.max_part_bytes)));
        }
        if size > 1 << 20 && size / packed > limits.max_compression_ratio {
            return Err(limit(
                id,
                format!(
                    "part '{fname}' has compression ratio {}:1 (limit {}:1); this looks like a zip bomb",
                    size / packed,
                    limits.max_compression_ratio
                ),
            ));
        }
        let name = fname.replace('\\', "/").to_ascii_lowercase();
        match name.as_str() {
            "xl/workbook.bin" => xlsb = true,
            "xl/workbook.xml" => xlsx = true,
            "content.xml" => ods = true,
            "[content_types].xml" => content_types = true,
            _ => {}
        }
    }
    if total > limits.max_uncompressed_bytes {
        return Err(limit(id, format!("unpacks to {total} bytes in all (limit {})", limits.max_uncompressed_bytes)));
    }
    if xlsb {
        Ok(Format::Xlsb)
    } else if xlsx || content_types {
        Ok(Format::Xlsx)
    } else if ods {
        Ok(Format::Ods)
    } else {
        Err(SheetsError::Unsupported {
            workbook_id: id.to_string(),
            reason: "a zip file that is neither an Office Open XML nor an OpenDocument spreadsheet".into(),
        })
    }
}

/// Open a workbook from its bytes: metadata only, sheets load later.
pub fn open(id: &str, bytes: Vec<u8>, limits: &Limits) -> Result<Opened> {
    open_image(id, Arc::from(bytes), limits)
}

/// [`open`] over an image already shared (a workbook's file read again).
pub fn open_image(id: &str, bytes: Arc<[u8]>, limits: &Limits) -> Result<Opened> {
    let format = sniff(id, &bytes, limits)?;
    guarded(id, "opening the workbook", || {
        let map = |e: &dyn std::fmt::Display| {
            let text = e.to_string();
            if text.to_lowercase().contains("password") || text.to_lowercase().contains("encrypt") {
                SheetsError::Encrypted { workbook_id: id.to_string() }
            } else {
                unreadable(id, text)
            }
        };
        let cursor = Image::new(bytes.clone());
        let (book, date1904) = match format {
            Format::Xlsx => {
                let b = Xlsx::new(cursor).map_err(|e| map(&e))?;
                let d = b.has_1904_epoch();
                (Book::Xlsx(b), d)
            }
            Format::Xlsb => {
                let b = Xlsb::new(cursor).map_err(|e| map(&e))?;
                let d = b.has_1904_epoch();
                (Book::Xlsb(b), d)
            }
            Format::Xls => {
                let b = Xls::new(cursor).map_err(|e| map(&e))?;
                let d = b.has_1904_epoch();
                (Book::Xls(b), d)
            }
            Format::Ods => (Book::Ods(calamine::Ods::new(cursor).map_err(|e| map(&e))?), false),
        };
        let (metas, names) = match &book {
            Book::Xlsx(b) => (b.sheets_metadata().to_vec(), b.defined_names().to_vec()),
            Book::Xlsb(b) => (b.sheets_metadata().to_vec(), b.defined_names().to_vec()),
            Book::Xls(b) => (b.sheets_metadata().to_vec(), b.defined_names().to_vec()),
            Book::Ods(b) => (b.sheets_metadata().to_vec(), b.defined_names().to_vec()),
        };
        if metas.len() > limits.max_sheets {
            return Err(limit(id, format!("{} sheets (limit {})", metas.len(), limits.max_sheets)));
        }
        let sheets = metas
            .into_iter()
            .map(|m| SheetMeta {
                name: m.name,
                kind: match m.typ {
                    calamine::SheetType::WorkSheet => "worksheet",
                    calamine::SheetType::ChartSheet => "chartsheet",
                    calamine::SheetType::MacroSheet => "macrosheet",
                    calamine::SheetType::DialogSheet => "dialogsheet",
                    calamine::SheetType::Vba => "vba",
                },
                hidden: !matches!(m.visible, calamine::SheetVisible::Visible),
            })
            .collect();
        let mut book = book;
        let has_vba = match &mut book {
            Book::Xlsx(b) => b.vba_project().ok().flatten().is_some(),
            Book::Xls(b) => b.vba_project().ok().flatten().is_some(),
            Book::Xlsb(b) => b.vba_project().ok().flatten().is_some(),
            Book::Ods(_) => false,
        };
        Ok(Opened { book, format, sheets, defined_names: names, date1904, has_vba, bytes: bytes.clone() })
    })
}

fn convert_ref(b: &mut SheetBuilder, v: DataRef<'_>, date_shift: f64) -> Value {
    match v {
        DataRef::Empty => Value::Empty,
        DataRef::Int(i) => Value::Number(i as f64),
        DataRef::Float(f) => Value::Number(f),
        DataRef::Bool(x) => Value::Bool(x),
        DataRef::SharedString(s) => b.intern_shared(s),
        DataRef::String(s) => b.intern(&s),
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => b.intern(&s),
        DataRef::Error(e) => Value::Error(CellError::from(&e)),
        DataRef::DateTime(d) => {
            if d.is_duration() {
                Value::Duration(d.as_f64())
            } else {
                Value::Date(d.as_f64() + date_shift)
            }
        }
    }
}

fn convert_data(b: &mut SheetBuilder, v: &Data, date_shift: f64) -> Value {
    match v {
        Data::Empty => Value::Empty,
        Data::Int(i) => Value::Number(*i as f64),
        Data::Float(f) => Value::Number(*f),
        Data::Bool(x) => Value::Bool(*x),
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => b.intern(s),
        Data::Error(e) => Value::Error(CellError::from(e)),
        Data::DateTime(d) => {
            if d.is_duration() {
                Value::Duration(d.as_f64())
            } else {
                Value::Date(d.as_f64() + date_shift)
            }
        }
    }
}

fn rect(d: &calamine::Dimensions) -> Rect {
    Rect::new(d.start.0, d.start.1, d.end.0, d.end.1)
}

/// Load one sheet into the compact model: xlsx sheets through the streaming reader when the
/// workbook has one (`fast`), falling back to calamine when that reader is unsure of
/// something; every other format (and the fallback) through calamine.
#[allow(clippy::too_many_arguments)]
pub fn load_sheet(
    id: &str,
    book: &mut Book,
    bytes: &Arc<[u8]>,
    name: &str,
    date1904: bool,
    limits: &Limits,
    budget: &Budget,
) -> Result<Sheet> {
    load_sheet_calamine(id, book, bytes, name, date1904, limits, budget)
}

/// Load sheet `index` with the streaming xlsx reader; `Ok(None)` when it handed the sheet
/// back (read it with calamine).
pub fn load_sheet_fast(
    id: &str,
    fast: &XlsxBook,
    index: usize,
    name: &str,
    limits: &Limits,
    budget: &Budget,
    progress: &dyn Progress,
) -> Result<Option<Sheet>> {
    // The call's own progress (bytes inflated), when someone watches it and no other stage
    // runs around the load.
    let total = fast.sheet_xml_bytes(index).unwrap_or(0);
    let watched = budget.observer().is_some_and(|o| o.wants_progress())
        && budget.progress_begin_if_idle(|| format!("loading sheet '{name}' of {id}"), "bytes inflated", total);
    let progress = Reporting { inner: progress, budget: watched.then_some(budget) };
    let progress = &progress;
    match guarded(id, &format!("reading sheet '{name}'"), || match fast.load_sheet(index, limits, budget, progress) {
        Ok(s) => Ok(Ok(s)),
        Err(Failure::Bail(b)) => Ok(Err(b)),
        Err(Failure::Error(e)) => Err(with_workbook_id(e, id)),
    })? {
        Ok(sheet) => Ok(Some(sheet)),
        Err(bail) => {
            tracing::debug!(workbook = id, sheet = name, "streaming reader handed the sheet to calamine: {}", bail.0);
            Ok(None)
        }
    }
}

/// A load's progress passed on to its watchers, and to the call's own observer when it has
/// one.
struct Reporting<'a> {
    inner: &'a dyn Progress,
    budget: Option<&'a Budget>,
}

impl Progress for Reporting<'_> {
    fn wanted_rows(&self) -> u32 {
        self.inner.wanted_rows()
    }
    fn publish(&self, prefix: Sheet, rows_done: u32) {
        self.inner.publish(prefix, rows_done)
    }
    fn inflated(&self, bytes: u64) {
        self.inner.inflated(bytes);
        if let Some(b) = self.budget {
            b.progress(bytes);
        }
    }
}

/// Errors raised deep in a reader do not know the workbook's id: give it to them.
fn with_workbook_id(e: SheetsError, id: &str) -> SheetsError {
    match e {
        SheetsError::LimitExceeded { workbook_id, detail } if workbook_id.is_empty() => {
            SheetsError::LimitExceeded { workbook_id: id.to_string(), detail }
        }
        other => other,
    }
}

/// The refusal for a sheet with a cell outside Excel's grid.
fn outside_grid(id: &str, name: &str, (row, col): (u32, u32)) -> SheetsError {
    limit(
        id,
        format!(
            "sheet '{name}' has a cell at row {}, column {}: beyond Excel's last row (1,048,576) or column (XFD)",
            u64::from(row) + 1,
            u64::from(col) + 1
        ),
    )
}

/// Load one sheet with calamine.
fn load_sheet_calamine(
    id: &str,
    book: &mut Book,
    bytes: &Arc<[u8]>,
    name: &str,
    date1904: bool,
    limits: &Limits,
    budget: &Budget,
) -> Result<Sheet> {
    let shift = if date1904 { EPOCH_1904_OFFSET } else { 0.0 };
    let max = limits.max_cells_per_sheet;
    let over = |n: usize| limit(id, format!("sheet '{name}' has more than {n} cells (limit {max})"));
    let err = |e: &dyn std::fmt::Display| unreadable(id, format!("sheet '{name}': {e}"));
    guarded(id, &format!("reading sheet '{name}'"), || {
        let mut b = SheetBuilder::new(name.to_string());
        let merged = match book {
            Book::Xlsx(x) => std::thread::scope(|scope| {
                // Merged ranges sit after the cell data and need a second pass over the sheet's
                // XML: run it on a second reader of the same bytes, beside the cell pass.
                let merges = scope.spawn(|| {
                    catch_unwind(AssertUnwindSafe(|| {
                        Xlsx::new(Cursor::new(bytes.clone()))
                            .ok()
                            .and_then(|mut x2| x2.merge_cells_by_sheet_name(name).ok())
                            .map(|v| v.iter().map(rect).collect::<Vec<Rect>>())
                            .unwrap_or_default()
                    }))
                    .unwrap_or_default()
                });
                let mut r = x.worksheet_cells_reader(name).map_err(|e| err(&e))?;
                let progress = LoadProgress::start(budget, id, name, bytes);
                let d = r.dimensions();
                b.reserve((d.len() as usize).min(max).min(4_000_000));
                let mut seen = 0usize;
                while let Some(c) = r.next_cell_with_formula().map_err(|e| err(&e))? {
                    let (row, col) = c.pos;
                    if let Some(f) = &c.formula {
                        // Formula text is an OOXML string: `_xHHHH_` stands for a character.
                        b.push_formula(row, col, &crate::forks::xstring::unescape(f));
                    }
                    let v = convert_ref(&mut b, c.value, shift);
                    push_checked(&mut b, row, col, v, max, budget).map_err(|e| e.unwrap_or_else(|| over(max)))?;
                    seen += 1;
                    if seen.is_multiple_of(CHECK_EVERY) {
                        progress.tick();
                    }
                }
                progress.finish();
                Ok(merges.join().unwrap_or_default())
            })?,
            Book::Xlsb(x) => {
                let area;
                {
                    let mut r = x.worksheet_cells_reader(name).map_err(|e| err(&e))?;
                    let progress = LoadProgress::start(budget, id, name, bytes);
                    area = r.dimensions().len();
                    let mut seen = 0usize;
                    while let Some(c) = r.next_cell().map_err(|e| err(&e))? {
                        let (row, col) = c.get_position();
                        let v = convert_ref(&mut b, c.get_value().clone(), shift);
                        push_checked(&mut b, row, col, v, max, budget).map_err(|e| e.unwrap_or_else(|| over(max)))?;
                        seen += 1;
                        if seen.is_multiple_of(CHECK_EVERY) {
                            progress.tick();
                        }
                    }
                    progress.finish();
                }
                if area <= max as u64
                    && let Ok(fr) = x.worksheet_formula(name)
                {
                    push_formulas(&mut b, &fr, &x.sheet_names());
                }
                Vec::new()
            }
            Book::Xls(x) => {
                let range = x.worksheet_range(name).map_err(|e| err(&e))?;
                push_range(&mut b, &range, shift, max, budget).map_err(|n| n.unwrap_or_else(|| over(max)))?;
                if let Ok(fr) = x.worksheet_formula(name) {
                    push_formulas(&mut b, &fr, &x.sheet_names());
                }
                x.merge_cells_by_sheet_name(name).map(|v| v.iter().map(rect).collect()).unwrap_or_default()
            }
            Book::Ods(x) => {
                let range = x.worksheet_range(name).map_err(|e| err(&e))?;
                push_range(&mut b, &range, shift, max, budget).map_err(|n| n.unwrap_or_else(|| over(max)))?;
                if let Ok(fr) = x.worksheet_formula(name) {
                    push_formulas(&mut b, &fr, &[]);
                }
                Vec::new()
            }
        };
        if b.len() > max {
            return Err(over(b.len()));
        }
        if let Some(at) = b.outside() {
            return Err(outside_grid(id, name, at));
        }
        budget.check_load()?;
        Ok(b.finish(merged))
    })
}

/// Add a non-empty value, checking the cell limit and the budget every few thousand cells;
/// `Err(None)` means the cell limit was hit.
fn push_checked(
    b: &mut SheetBuilder,
    row: u32,
    col: u32,
    v: Value,
    max: usize,
    budget: &Budget,
) -> std::result::Result<(), Option<SheetsError>> {
    if v.is_empty() {
        return Ok(());
    }
    b.push(row, col, v);
    if b.len().is_multiple_of(CHECK_EVERY) {
        if b.len() > max {
            return Err(None);
        }
        budget.check_load().map_err(Some)?;
    }
    Ok(())
}

/// Copy a dense calamine range; `Err(None)` means the cell limit was hit.
fn push_range(
    b: &mut SheetBuilder,
    range: &calamine::Range<Data>,
    shift: f64,
    max: usize,
    budget: &Budget,
) -> std::result::Result<(), Option<SheetsError>> {
    for (i, (row, col, v)) in range.used_cells().enumerate() {
        let (r0, c0) = range.start().unwrap_or((0, 0));
        let v = convert_data(b, v, shift);
        if !v.is_empty() {
            b.push(r0 + row as u32, c0 + col as u32, v);
        }
        if i % CHECK_EVERY == 0 {
            if b.len() > max {
                return Err(None);
            }
            budget.check_load().map_err(Some)?;
        }
    }
    Ok(())
}

/// `sheets`: the workbook's sheet names, for formulas calamine decodes from binary records
/// (xls, xlsb), which name a sheet without the quotes its name needs (see `quote_sheet_refs`).
fn push_formulas(b: &mut SheetBuilder, fr: &calamine::Range<String>, sheets: &[String]) {
    let (r0, c0) = fr.start().unwrap_or((0, 0));
    let mut needs: Vec<&str> =
        sheets.iter().map(String::as_str).filter(|n| crate::address::quote_sheet(n) != *n).collect();
    // Longer names first: "Orig Sched" before a sheet named "Sched".
    needs.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for (row, col, f) in fr.used_cells() {
        if !f.is_empty() {
            b.push_formula(r0 + row as u32, c0 + col as u32, &quote_sheet_refs(f, &needs));
        }
    }
}

/// `Orig Sched!A1` → `'Orig Sched'!A1` for each sheet name that needs quotes, where the name
/// is not quoted already and starts the reference (after an operator, a parenthesis, a comma
/// or the formula's start), outside string literals.
fn quote_sheet_refs<'a>(f: &'a str, needs: &[&str]) -> std::borrow::Cow<'a, str> {
    if needs.is_empty() || !f.contains('!') {
        return f.into();
    }
    let mut out = String::with_capacity(f.len() + 8);
    let mut in_string = false;
    let mut i = 0;
    'scan: while i < f.len() {
        let rest = &f[i..];
        let ch = rest.chars().next().unwrap_or(' ');
        if ch == '"' {
            in_string = !in_string;
        } else if !in_string {
            let at_start = out.chars().last().is_none_or(|p| "=(,;+-*/^&<>: {".contains(p));
            if at_start {
                for n in needs {
                    if rest.starts_with(n) && rest[n.len()..].starts_with('!') {
                        out.push_str(&crate::address::quote_sheet(n));
                        i += n.len();
                        continue 'scan;
                    }
                }
            }
        }
        out.push(ch);
        i += ch.len_utf8();
    }
    out.into()
}

/// Excel tables (ListObjects) of an xlsx workbook: (name, sheet, data rows, columns).
pub fn load_tables(id: &str, book: &mut Book) -> Result<Vec<TableInfo>> {
    let Book::Xlsx(x) = book else {
        return Ok(Vec::new());
    };
    guarded(id, "reading tables", || {
        if x.load_tables().is_err() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = x.table_names().into_iter().cloned().collect();
        let mut out = Vec::new();
        for name in names {
            if let Ok(t) = x.table_by_name_ref(&name) {
                let data = t.data();
                let (Some(s), Some(e)) = (data.start(), data.end()) else {
                    continue;
                };
                out.push(TableInfo {
                    name: t.name().to_string(),
                    sheet: t.sheet_name().to_string(),
                    header_row: s.0.checked_sub(1),
                    data: Rect::new(s.0, s.1, e.0, e.1),
                    columns: t.columns().to_vec(),
                });
            }
        }
        Ok(out)
    })
}

#[derive(Debug, Clone)]
pub struct TableInfo {
    pub name: String,
    pub sheet: String,
    pub header_row: Option<u32>,
    pub data: Rect,
    pub columns: Vec<String>,
}

/// Read a whole file, refusing one over the size limit before reading it.
pub fn read_file(id: &str, path: &std::path::Path, limits: &Limits) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| unreadable(id, format!("cannot open: {e}")))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > limits.max_file_bytes {
        return Err(limit(id, format!("file is {len} bytes (limit {})", limits.max_file_bytes)));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(limits.max_file_bytes + 1).read_to_end(&mut buf).map_err(|e| unreadable(id, format!("read failed: {e}")))?;
    if buf.len() as u64 > limits.max_file_bytes {
        return Err(limit(id, format!("file grew past the limit of {} bytes", limits.max_file_bytes)));
    }
    Ok(buf)
}

#[cfg(test)]
mod quoting_tests {
    use super::quote_sheet_refs;

    #[test]
    fn sheet_names_that_need_quotes_get_them_in_decoded_formulas() {
        let needs = ["Summary Sched", "Orig Sched", "Q1-2"];
        let q = |f: &str| quote_sheet_refs(f, &needs).into_owned();
        assert_eq!(q("SUMIF(Orig Sched!$O$10:$AA$59,A1)"), "SUMIF('Orig Sched'!$O$10:$AA$59,A1)");
        assert_eq!(q("Summary Sched!E13+Q1-2!A1"), "'Summary Sched'!E13+'Q1-2'!A1");
        // Already quoted, inside a string, or part of a longer word: left as it is.
        assert_eq!(q("'Orig Sched'!A1"), "'Orig Sched'!A1");
        assert_eq!(q("\"Orig Sched!A1\"&B2"), "\"Orig Sched!A1\"&B2");
        assert_eq!(q("XOrig Sched!A1"), "XOrig Sched!A1");
        assert_eq!(q("Other!A1*2"), "Other!A1*2");
    }
}
