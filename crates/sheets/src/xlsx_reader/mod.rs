//! A streaming reader of xlsx worksheets built for the compact model: the sheet's XML is
//! inflated on one thread and scanned on another (byte-level, no XML event objects), shared
//! strings and date formats are read once per workbook, and cells go straight into the
//! `SheetBuilder`. It reads what calamine reads, the way calamine reads it (values, types,
//! dates under both date systems, shared strings and rich text, inline strings, errors,
//! booleans, formulas including shared ones), and a corpus test compares the two cell by cell.
//!
//! Whatever it is unsure of it does not guess: it gives up with a [`Bail`] (a strict OOXML
//! package, a DTD, an unknown cell type, an entity in a number, a checksum mismatch...) and
//! the loader reads the sheet with calamine instead.

mod cells;
mod inflate;
mod numfmt;
mod package;
mod text;

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use quick_xml::events::BytesStart;

pub use cells::{NoProgress, Progress};
pub(crate) use package::Package;

use crate::error::SheetsError;
use crate::limits::{Budget, Limits};
use crate::sheet::Sheet;

/// Why the fast reader handed a sheet back to calamine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bail(pub String);

impl Bail {
    pub fn new(why: impl Into<String>) -> Self {
        Bail(why.into())
    }
    fn xml(e: quick_xml::Error) -> Self {
        Bail(format!("xml: {e}"))
    }
}

/// How a fast load ended when it did not give a sheet.
#[derive(Debug)]
pub enum Failure {
    /// Read it with calamine instead.
    Bail(Bail),
    /// A real error (limits, budget, cancellation): report it.
    Error(SheetsError),
}

impl From<Bail> for Failure {
    fn from(b: Bail) -> Self {
        Failure::Bail(b)
    }
}

impl From<SheetsError> for Failure {
    fn from(e: SheetsError) -> Self {
        Failure::Error(e)
    }
}

/// A quick-xml reader configured as calamine configures its own, so the parts read through
/// it (shared strings, styles, relationships, inline strings) decode the same way.
fn xml_reader(bytes: &[u8]) -> quick_xml::Reader<&[u8]> {
    let mut r = quick_xml::Reader::from_reader(bytes);
    let config = r.config_mut();
    config.check_end_names = false;
    config.trim_text(false);
    config.check_comments = false;
    config.expand_empty_elements = true;
    r
}

/// A raw attribute value (no entity decoding), matched on the exact key.
fn attr(e: &BytesStart<'_>, key: &str) -> Result<Option<String>, Bail> {
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|e| Bail::new(format!("attribute: {e}")))?;
        if a.key.as_ref() == key {
            return Ok(Some(a.value.into_owned()));
        }
    }
    Ok(None)
}

/// An attribute value with XML entities decoded.
fn attr_decoded(e: &BytesStart<'_>, key: &str) -> Result<Option<String>, Bail> {
    match attr(e, key)? {
        None => Ok(None),
        Some(raw) => quick_xml::escape::unescape(&raw)
            .map(|c| Some(c.into_owned()))
            .map_err(|e| Bail::new(format!("attribute entity: {e}"))),
    }
}

/// The shared-strings table: all strings in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Sst {
    text: String,
    ends: Vec<usize>,
}

impl Sst {
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * 8
    }
}

/// Where a book whose file image was let go gets the compressed bytes of a part.
pub trait PartSource: Send + Sync {
    /// `len` bytes at offset `start` of the file: a buffer holding them and where in it they
    /// begin. Fails (e.g. [`SheetsError::ChangedOnDisk`]) when the file is not the one opened.
    fn part(&self, start: usize, len: usize) -> crate::Result<(Arc<[u8]>, usize)>;
}

/// Where the book reads parts from: the file image, or (once it is let go) a [`PartSource`].
enum Bytes {
    Image(Arc<[u8]>),
    Parts(Arc<dyn PartSource>),
}

/// What the fast reader keeps per workbook: where each sheet's XML is, the cell formats that
/// make dates, (read on first use) the shared strings, and the file image until it is let go
/// ([`XlsxBook::release_image`]).
pub struct XlsxBook {
    bytes: RwLock<Bytes>,
    package: Package,
    formats: Vec<numfmt::NumKind>,
    date1904: bool,
    /// Read on first use; a failure to get the bytes is not kept (the next load tries again).
    strings: Mutex<Option<Result<Arc<Sst>, Bail>>>,
}

impl std::fmt::Debug for XlsxBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XlsxBook").field("sheets", &self.package.sheets.len()).finish()
    }
}

/// Parts at least this large are inflated on a thread of their own, beside the scan.
const THREADED_PART_BYTES: u64 = 1 << 20;

impl XlsxBook {
    /// Read the package structure, checking that it names the sheets calamine found (in the
    /// same order); anything unexpected leaves the workbook to calamine.
    pub fn open(image: Arc<[u8]>, sheet_names: &[&str], date1904: bool) -> Result<Self, Bail> {
        let package = Package::open(&image)?;
        let names: Vec<&str> = package.sheets.iter().map(|(n, _)| n.as_str()).collect();
        if names != sheet_names {
            return Err(Bail::new("the package's sheet list differs from calamine's"));
        }
        let formats = match package.part_path_of("styles.xml") {
            Some(path) => match package.read_small(&image, &path)? {
                Some(bytes) => numfmt::read_cell_formats(&bytes)?,
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        Ok(Self { bytes: RwLock::new(Bytes::Image(image)), package, formats, date1904, strings: Mutex::new(None) })
    }

    /// Let go of the file image: later loads read the compressed bytes of the parts they need
    /// from `parts` (the image is freed once no load in flight holds it).
    pub fn release_image(&self, parts: Arc<dyn PartSource>) {
        *self.bytes.write() = Bytes::Parts(parts);
    }

    /// Uncompressed size of a sheet's XML (for reservations and progress), if known.
    pub fn sheet_xml_bytes(&self, i: usize) -> Option<u64> {
        let (_, path) = self.package.sheets.get(i)?;
        self.package.entry(path).map(|e| e.size)
    }

    /// Heap bytes held (the shared strings once read; not the file image).
    pub fn heap_bytes(&self) -> usize {
        let strings = match &*self.strings.lock() {
            Some(Ok(s)) => s.heap_bytes(),
            _ => 0,
        };
        strings + self.formats.capacity()
    }

    /// The compressed bytes of entry `e`: a buffer and where in it they begin.
    fn compressed(&self, e: &package::Entry) -> Result<(Arc<[u8]>, usize), Failure> {
        let parts = match &*self.bytes.read() {
            Bytes::Image(image) => return Ok((image.clone(), e.data_start)),
            Bytes::Parts(p) => p.clone(),
        };
        let (buf, at) = parts.part(e.data_start, e.compressed)?;
        if at.checked_add(e.compressed).is_none_or(|end| end > buf.len()) {
            return Err(Failure::Error(SheetsError::Internal("a part read came back short".into())));
        }
        Ok((buf, at))
    }

    fn strings(&self) -> Result<Arc<Sst>, Failure> {
        let mut slot = self.strings.lock();
        if let Some(r) = &*slot {
            return r.clone().map_err(Failure::Bail);
        }
        let read = || -> Result<Arc<Sst>, Failure> {
            let Some(path) = self.package.part_path_of("sharedStrings.xml") else {
                return Ok(Arc::new(Sst::default()));
            };
            let Some(e) = self.package.small_entry(&path)? else {
                return Ok(Arc::new(Sst::default()));
            };
            let (buf, at) = self.compressed(e)?;
            let bytes = package::inflate_small(&path, e, &buf[at..at + e.compressed])?;
            Ok(Arc::new(text::read_shared_strings(&bytes)?))
        };
        match read() {
            Ok(s) => {
                *slot = Some(Ok(s.clone()));
                Ok(s)
            }
            Err(Failure::Bail(b)) => {
                *slot = Some(Err(b.clone()));
                Err(Failure::Bail(b))
            }
            Err(e) => Err(e),
        }
    }

    /// Load sheet `i` into the compact model, publishing prefixes to `progress` as rows arrive.
    pub fn load_sheet(
        &self,
        i: usize,
        limits: &Limits,
        budget: &Budget,
        progress: &dyn Progress,
    ) -> Result<Sheet, Failure> {
        let (name, path) = self.package.sheets.get(i).ok_or_else(|| Bail::new("no such sheet"))?;
        let entry = self.package.entry(path).ok_or_else(|| Bail::new(format!("part {path} missing")))?.clone();
        let strings = self.strings()?;
        let threaded = entry.size >= THREADED_PART_BYTES
            && std::thread::available_parallelism().map(|n| n.get() > 1).unwrap_or(false);
        let (buf, at) = self.compressed(&entry)?;
        let entry = package::Entry { data_start: at, ..entry };
        let mut source = inflate::Source::new(buf, &entry, threaded)?;
        let ctx = cells::Context {
            strings: &strings,
            formats: &self.formats,
            date1904: self.date1904,
            limits,
            budget,
            progress,
            xml_bytes: entry.size,
        };
        cells::read_sheet(name, &mut source, &ctx)
    }
}

#[cfg(test)]
mod tests;
