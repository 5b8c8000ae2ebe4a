//! The worksheet scan: `<sheetData>` read byte by byte into the `SheetBuilder`, then the
//! merged ranges after it. Positions, types and values follow calamine's cell reader
//! (`XlsxCellReader::next_cell_with_formula`) rule for rule; what it does not recognize it
//! hands back as a [`Bail`].

use memchr::{memchr, memmem};

use super::numfmt::NumKind;
use super::text::{decode_text, read_inline_string, unescape_excel};
use super::{Bail, Failure, Sst, inflate::Source};
use crate::address::Rect;
use crate::error::SheetsError;
use crate::limits::{Budget, Limits};
use crate::sheet::{Sheet, SheetBuilder, packed};
use crate::value::CellError;

/// Told about a sheet as its rows arrive, so a caller can be answered from the first rows
/// while the rest of the sheet loads.
pub trait Progress: Sync {
    /// The rows (0-based, exclusive) someone is waiting for; 0 when nobody waits.
    fn wanted_rows(&self) -> u32;
    /// The complete rows before `rows_done`, as a sheet of their own.
    fn publish(&self, prefix: Sheet, rows_done: u32);
    /// Bytes of the sheet's XML inflated so far.
    fn inflated(&self, _bytes: u64) {}
}

/// For loads nobody watches.
pub struct NoProgress;

impl Progress for NoProgress {
    fn wanted_rows(&self) -> u32 {
        0
    }
    fn publish(&self, _: Sheet, _: u32) {}
}

/// Everything a scan needs besides its bytes.
pub struct Context<'a> {
    pub strings: &'a Sst,
    pub formats: &'a [NumKind],
    pub date1904: bool,
    pub limits: &'a Limits,
    pub budget: &'a Budget,
    pub progress: &'a dyn Progress,
    /// The sheet XML's inflated size, to size the cell arrays up front.
    pub xml_bytes: u64,
}

/// Cells between checks of the budget and the cell limit.
const CHECK_EVERY: usize = 16_384;
/// A single element larger than this is not something a sane sheet has.
const MAX_ITEM: usize = 64 << 20;
/// Most shared-formula groups a sheet may declare.
const MAX_SHARED: usize = 1 << 20;
/// Days between the 1904 and 1900 date systems.
const EPOCH_1904_OFFSET: f64 = 1462.0;

/// The unconsumed bytes of the stream.
struct Input<'s> {
    src: &'s mut Source,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    /// Bytes read so far, reported to whoever watches the load.
    read: u64,
    progress: &'s dyn Progress,
}

impl Input<'_> {
    fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Read one more chunk behind what is left; false at the end of the part.
    fn more(&mut self) -> Result<bool, Bail> {
        if self.eof {
            return Ok(false);
        }
        if self.buf.len() - self.pos > MAX_ITEM {
            return Err(Bail::new("an element larger than 64 MiB"));
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let n = self.src.fill(&mut self.buf)?;
        if n == 0 {
            self.eof = true;
        }
        self.read += n as u64;
        self.progress.inflated(self.read);
        Ok(n > 0)
    }

    /// Read the rest of the part (so its checksum is checked).
    fn drain(&mut self) -> Result<(), Bail> {
        self.pos = self.buf.len();
        while self.more()? {
            self.pos = self.buf.len();
        }
        Ok(())
    }
}

/// What one `<…>` at the cursor is.
enum Tag<'a> {
    /// `<name attrs>` or `<name attrs/>`: the local name and the attribute bytes.
    Start {
        local: &'a [u8],
        attrs: &'a [u8],
        empty: bool,
    },
    End {
        local: &'a [u8],
    },
    /// A comment or processing instruction: nothing to read.
    Skip,
}

/// A start tag's qualified name, length and whether it closes itself.
type StartTag<'a> = (&'a [u8], usize, bool);

/// A start tag parsed in one pass: calls `on_attr(key, raw value)` for each attribute and
/// returns (qualified name, tag length, self-closing); `None` when the buffer ends first.
#[inline]
fn parse_start<'a>(d: &'a [u8], mut on_attr: impl FnMut(&'a [u8], &'a [u8])) -> Result<Option<StartTag<'a>>, Bail> {
    let len = d.len();
    let mut i = 1;
    while i < len && !matches!(d[i], b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/') {
        i += 1;
    }
    let qname = &d[1..i];
    loop {
        while i < len && d[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= len {
            return Ok(None);
        }
        match d[i] {
            b'>' => return Ok(Some((qname, i + 1, false))),
            b'/' => {
                return match d.get(i + 1) {
                    None => Ok(None),
                    Some(b'>') => Ok(Some((qname, i + 2, true))),
                    Some(_) => Err(Bail::new("a stray '/' in a tag")),
                };
            }
            _ => {}
        }
        let key_start = i;
        while i < len && d[i] != b'=' && d[i] != b'>' {
            i += 1;
        }
        if i >= len {
            return Ok(None);
        }
        if d[i] == b'>' {
            return Err(Bail::new("an attribute without a value"));
        }
        let key = d[key_start..i].trim_ascii_end();
        i += 1;
        while i < len && d[i].is_ascii_whitespace() {
            i += 1;
        }
        let Some(&q) = d.get(i) else { return Ok(None) };
        if q != b'"' && q != b'\'' {
            return Err(Bail::new("an unquoted attribute"));
        }
        let Some(vlen) = find(q, &d[i + 1..]) else { return Ok(None) };
        on_attr(key, &d[i + 1..i + 1 + vlen]);
        i += vlen + 2;
    }
}

/// The tag at the start of `d` (which begins with `<`) and its length; `None` when the
/// buffer ends before the tag does.
fn tag(d: &[u8]) -> Result<Option<(Tag<'_>, usize)>, Bail> {
    if d.len() < 2 {
        return Ok(None);
    }
    match d[1] {
        b'!' => {
            if d.len() < 4 {
                return Ok(None);
            }
            if &d[..4] != b"<!--" {
                return Err(Bail::new("a DTD or CDATA section"));
            }
            Ok(memmem::find(&d[4..], b"-->").map(|i| (Tag::Skip, 4 + i + 3)))
        }
        b'?' => Ok(memmem::find(&d[2..], b"?>").map(|i| (Tag::Skip, 2 + i + 2))),
        b'/' => Ok(memchr(b'>', d).map(|i| {
            let name = d[2..i].trim_ascii_end();
            (Tag::End { local: local(name) }, i + 1)
        })),
        _ => Ok(parse_start(d, |_, _| {})?.map(|(qname, len, empty)| {
            let attrs_end = if empty { len - 2 } else { len - 1 };
            let attrs = &d[1 + qname.len()..attrs_end];
            (Tag::Start { local: local(qname), attrs, empty }, len)
        })),
    }
}

/// The first `b` in `d`: a plain loop, quicker than `memchr` over the few bytes a cell's
/// pieces span.
#[inline(always)]
fn find(b: u8, d: &[u8]) -> Option<usize> {
    d.iter().position(|&x| x == b)
}

fn local(qname: &[u8]) -> &[u8] {
    match memchr(b':', qname) {
        Some(i) => &qname[i + 1..],
        None => qname,
    }
}

/// Raw attribute values (no entity decoding), matched on exact keys, as calamine reads them.
fn attrs<'a, const N: usize>(raw: &'a [u8], keys: [&[u8]; N]) -> Result<[Option<&'a [u8]>; N], Bail> {
    let mut out = [None; N];
    let mut pos = 0;
    let len = raw.len();
    loop {
        while pos < len && raw[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos >= len {
            return Ok(out);
        }
        let key_start = pos;
        while pos < len && raw[pos] != b'=' {
            pos += 1;
        }
        if pos >= len {
            return Err(Bail::new("an attribute without a value"));
        }
        let key = raw[key_start..pos].trim_ascii_end();
        pos += 1;
        while pos < len && raw[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let q = raw.get(pos).copied();
        if q != Some(b'"') && q != Some(b'\'') {
            return Err(Bail::new("an unquoted attribute"));
        }
        pos += 1;
        let start = pos;
        while pos < len && Some(raw[pos]) != q {
            pos += 1;
        }
        let val = &raw[start..pos];
        pos += 1;
        for (k, slot) in keys.iter().zip(out.iter_mut()) {
            if key == *k && slot.is_none() {
                *slot = Some(val);
            }
        }
    }
}

/// "B7" → (row 6, col Some(1)); letters then digits, as calamine's `get_row_column`.
#[inline]
fn position(r: &[u8]) -> Result<(u32, Option<u32>), Bail> {
    // The usual short reference: at most 3 letters and 7 digits cannot overflow.
    if r.len() <= 10 {
        let (mut col, mut row, mut i) = (0u32, 0u32, 0usize);
        while i < r.len() && i < 3 && r[i].is_ascii_alphabetic() {
            col = col * 26 + u32::from((r[i] | 0x20) - b'a') + 1;
            i += 1;
        }
        let digits_start = i;
        while i < r.len() && r[i].is_ascii_digit() && i - digits_start < 7 {
            row = row * 10 + u32::from(r[i] - b'0');
            i += 1;
        }
        if i == r.len() && i > digits_start && row > 0 {
            return Ok((row - 1, col.checked_sub(1)));
        }
    }
    position_slow(r)
}

fn position_slow(r: &[u8]) -> Result<(u32, Option<u32>), Bail> {
    let bad = || Bail::new(format!("cell reference '{}'", String::from_utf8_lossy(r)));
    let mut i = 0;
    let mut col: u32 = 0;
    let mut row: u32 = 0;
    while i < r.len() {
        match r[i] {
            c @ b'A'..=b'Z' => {
                col = col.checked_mul(26).and_then(|x| x.checked_add(u32::from(c - b'A') + 1)).ok_or_else(bad)?
            }
            c @ b'a'..=b'z' => {
                col = col.checked_mul(26).and_then(|x| x.checked_add(u32::from(c - b'a') + 1)).ok_or_else(bad)?
            }
            c @ b'0'..=b'9' => {
                row = u32::from(c - b'0');
                i += 1;
                break;
            }
            _ => return Err(bad()),
        }
        i += 1;
    }
    while i < r.len() {
        match r[i] {
            c @ b'0'..=b'9' => {
                row = row.checked_mul(10).and_then(|x| x.checked_add(u32::from(c - b'0'))).ok_or_else(bad)?
            }
            _ => return Err(bad()),
        }
        i += 1;
    }
    let row = row.checked_sub(1).ok_or_else(bad)?;
    Ok((row, col.checked_sub(1)))
}

fn cell_position(r: &[u8]) -> Result<(u32, u32), Bail> {
    match position(r)? {
        (row, Some(col)) => Ok((row, col)),
        _ => Err(Bail::new("a cell reference without a column")),
    }
}

/// "A1:C4" (or "A1") as a rectangle, as calamine's `get_dimension`.
fn dimension(r: &[u8]) -> Result<Rect, Bail> {
    let mut parts = r.split(|&b| b == b':');
    let a = cell_position(parts.next().unwrap_or_default())?;
    let b = match parts.next() {
        Some(p) => cell_position(p)?,
        None => a,
    };
    if parts.next().is_some() {
        return Err(Bail::new("a range with three parts"));
    }
    Ok(Rect::new(a.0, a.1, b.0, b.1))
}

fn digits(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// A plain decimal `-?\d+(\.\d+)?` with at most 9 significant digits and 9 decimals, as
/// mantissa and scale: `m / 10^k` is then exactly the `f64` a correct parser makes of it.
#[inline]
fn small_decimal(v: &[u8]) -> Option<(i32, u8)> {
    let (neg, digits) = match v.first()? {
        b'-' => (true, &v[1..]),
        _ => (false, v),
    };
    let mut m: u64 = 0;
    let mut sig = 0u32;
    let mut scale: i32 = -1;
    let mut any = false;
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                any = true;
                m = m * 10 + u64::from(b - b'0');
                if m != 0 {
                    sig += 1;
                }
                if sig > 9 {
                    return None;
                }
                if scale >= 0 {
                    scale += 1;
                }
            }
            b'.' if scale < 0 => scale = 0,
            _ => return None,
        }
    }
    if !any || scale == 0 || scale > 9 || (neg && m == 0) {
        return None;
    }
    let k = scale.max(0) as u8;
    let m = m as i64;
    Some((if neg { -m } else { m } as i32, k))
}

/// The common shape of a cell, read without the general parser: `<c` with single-letter
/// double-quoted attributes, then nothing, or one `<v>` value. (r, s, t, value, length);
/// `None` for any other shape (or when the buffer ends first): the general path decides.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn simple_cell(d: &[u8]) -> Option<(Option<&[u8]>, Option<&[u8]>, Option<&[u8]>, Option<&[u8]>, usize)> {
    let mut i = 2;
    let (mut r, mut s, mut t) = (None, None, None);
    loop {
        match *d.get(i)? {
            b' ' => {
                let k = *d.get(i + 1)?;
                if *d.get(i + 2)? != b'=' || *d.get(i + 3)? != b'"' {
                    return None;
                }
                let start = i + 4;
                let mut j = start;
                while *d.get(j)? != b'"' {
                    j += 1;
                }
                let val = Some(&d[start..j]);
                let slot = match k {
                    b'r' => &mut r,
                    b's' => &mut s,
                    b't' => &mut t,
                    _ => return None,
                };
                if slot.is_some() {
                    return None;
                }
                *slot = val;
                i = j + 1;
            }
            b'>' => {
                i += 1;
                break;
            }
            b'/' => return (*d.get(i + 1)? == b'>').then_some((r, s, t, None, i + 2)),
            _ => return None,
        }
    }
    if d.get(i..i + 4)? == b"</c>" {
        return Some((r, s, t, None, i + 4));
    }
    if d.get(i..i + 3)? != b"<v>" {
        return None;
    }
    let start = i + 3;
    let mut j = start;
    while *d.get(j)? != b'<' {
        j += 1;
    }
    if d.get(j..j + 8)? != b"</v></c>" {
        return None;
    }
    Some((r, s, t, Some(&d[start..j]), j + 8))
}

/// A cell's value, before its style makes a number a date.
enum Raw<'a> {
    Empty,
    Bool(bool),
    Error(CellError),
    Shared(usize),
    Text(std::borrow::Cow<'a, str>),
    Decimal(i32, u8),
    Float(f64),
}

fn error_value(v: &[u8]) -> Option<CellError> {
    Some(match v {
        b"#DIV/0!" => CellError::Div0,
        b"#N/A" => CellError::NA,
        b"#NAME?" => CellError::Name,
        b"#NULL!" => CellError::Null,
        b"#NUM!" => CellError::Num,
        b"#REF!" => CellError::Ref,
        b"#VALUE!" => CellError::Value,
        _ => return None,
    })
}

/// A `<v>`'s text by the cell's `t`.
fn value_of<'a>(t: Option<&[u8]>, v: &'a [u8]) -> Result<Raw<'a>, Bail> {
    match t {
        Some(b"inlineStr") | Some(b"is") => Ok(Raw::Empty),
        Some(b"n") | Some(b"s") | Some(b"b") | Some(b"e") | None => {
            if v.is_empty() {
                return Ok(Raw::Empty);
            }
            match t {
                Some(b"s") => {
                    digits(v).map(Raw::Shared).ok_or_else(|| Bail::new("a shared-string index that is not a number"))
                }
                Some(b"b") => match std::str::from_utf8(v).map_err(|_| Bail::new("not UTF-8"))?.trim() {
                    "" => Ok(Raw::Empty),
                    "0" => Ok(Raw::Bool(false)),
                    "1" => Ok(Raw::Bool(true)),
                    s if s.eq_ignore_ascii_case("false") => Ok(Raw::Bool(false)),
                    s if s.eq_ignore_ascii_case("true") => Ok(Raw::Bool(true)),
                    _ => Err(Bail::new("a boolean that is neither 0 nor 1")),
                },
                Some(b"e") => {
                    error_value(v).map(Raw::Error).ok_or_else(|| Bail::new("an error value calamine does not know"))
                }
                _ => {
                    if let Some((m, k)) = small_decimal(v) {
                        return Ok(Raw::Decimal(m, k));
                    }
                    // calamine reads these values up to the first entity: leave such oddities to it.
                    if v.iter().any(|&b| b == b'&' || b == b'\r') {
                        return Err(Bail::new("an entity or CR in a plain value"));
                    }
                    match fast_float2::parse::<f64, _>(v) {
                        Ok(n) => Ok(Raw::Float(n)),
                        Err(_) if t.is_none() => Ok(Raw::Text(std::borrow::Cow::Borrowed(
                            std::str::from_utf8(v).map_err(|_| Bail::new("not UTF-8"))?,
                        ))),
                        Err(_) => Err(Bail::new("a number that does not parse")),
                    }
                }
            }
        }
        Some(b"str") => {
            let s = decode_text(v)?;
            Ok(Raw::Text(match unescape_excel(&s) {
                std::borrow::Cow::Borrowed(_) => s,
                std::borrow::Cow::Owned(o) => std::borrow::Cow::Owned(o),
            }))
        }
        // An ISO date as text: calamine hands it over as a string.
        Some(b"d") => Ok(Raw::Text(decode_text(v)?)),
        Some(_) => Err(Bail::new("an unknown cell type")),
    }
}

struct SharedFormula {
    text: String,
    start: (u32, u32),
}

/// The scan's state between cells.
struct Scan<'c> {
    ctx: &'c Context<'c>,
    b: SheetBuilder,
    /// Shared-string index → pool index (u32::MAX: not interned yet).
    sst_map: Vec<u32>,
    shared: Vec<Option<SharedFormula>>,
    row_index: u32,
    col_index: u32,
    shift: f64,
    next_check: usize,
}

impl Scan<'_> {
    fn push(&mut self, row: u32, col: u32, s: Option<&[u8]>, raw: Raw<'_>, has_formula: bool) -> Result<(), Failure> {
        let kind = match raw {
            Raw::Decimal(..) | Raw::Float(_) => self.kind(s),
            _ => packed::NUMBER,
        };
        let b = &mut self.b;
        match raw {
            Raw::Empty => {
                if has_formula {
                    b.push(row, col, crate::value::Value::Empty);
                }
            }
            Raw::Bool(x) => b.push(row, col, crate::value::Value::Bool(x)),
            Raw::Error(e) => b.push(row, col, crate::value::Value::Error(e)),
            Raw::Text(t) => {
                let v = b.intern(&t);
                b.push(row, col, v);
            }
            Raw::Shared(i) => {
                let slot = self.sst_map.get_mut(i).ok_or_else(|| Bail::new("a shared-string index past the table"))?;
                if *slot == u32::MAX {
                    let s = self.ctx.strings.get(i).ok_or_else(|| Bail::new("a shared-string index past the table"))?;
                    *slot = b.intern_index(s);
                }
                b.push(row, col, crate::value::Value::Text(*slot));
            }
            Raw::Decimal(m, k) => {
                if kind == packed::DATE && self.shift != 0.0 {
                    b.push_number(row, col, kind, packed::small(m as u32, k) + self.shift);
                } else {
                    b.push_decimal(row, col, kind, m, k);
                }
            }
            Raw::Float(n) => {
                let n = if kind == packed::DATE { n + self.shift } else { n };
                b.push_number(row, col, kind, n);
            }
        }
        if b.len() >= self.next_check {
            self.next_check = b.len() + CHECK_EVERY;
            let max = self.ctx.limits.max_cells_per_sheet;
            if b.len() > max {
                return Err(Failure::Error(SheetsError::LimitExceeded {
                    workbook_id: String::new(),
                    detail: format!("more than {max} cells in one sheet (limit {max})"),
                }));
            }
            self.ctx.budget.check_load()?;
        }
        Ok(())
    }

    /// The number kind a style gives (absent style: a plain number).
    #[inline]
    fn kind(&self, s: Option<&[u8]>) -> u8 {
        let Some(s) = s else { return packed::NUMBER };
        let id = digits(s).unwrap_or(0);
        match self.ctx.formats.get(id) {
            Some(NumKind::DateTime) => packed::DATE,
            Some(NumKind::TimeDelta) => packed::DURATION,
            _ => packed::NUMBER,
        }
    }

    /// A `<f>` element: its text, expanded for a shared formula's later cells.
    fn formula(&mut self, attrs_raw: &[u8], text: &[u8], pos: (u32, u32)) -> Result<Option<String>, Bail> {
        let text = decode_text(text)?;
        let [t, si, r] = attrs(attrs_raw, [b"t", b"si", b"ref"])?;
        if t != Some(b"shared") {
            return Ok(Some(text.into_owned()));
        }
        let si = si.ok_or_else(|| Bail::new("a shared formula without si"))?;
        let si = digits(si).filter(|&n| n < MAX_SHARED).ok_or_else(|| Bail::new("a shared formula index"))?;
        match r {
            Some(r) => {
                let range = dimension(r)?;
                if self.shared.len() <= si {
                    self.shared.resize_with(si + 1, || None);
                }
                // The master's text is written for its own cell, which need not be the range's
                // top-left (Excel puts it at the first cell that uses it; POI's 51710 has it two
                // columns in): members shift from the master. calamine shifts from the top-left.
                let _ = range;
                self.shared[si] = Some(SharedFormula { text: text.to_string(), start: pos });
                Ok(Some(text.into_owned()))
            }
            None => match self.shared.get(si).and_then(Option::as_ref) {
                Some(f) => calamine::expand_shared_formula(&f.text, f.start, pos)
                    .map(Some)
                    .map_err(|e| Bail::new(format!("shared formula: {e}"))),
                None => Ok(None),
            },
        }
    }

    /// One `<c>` element at the start of `d`; returns its length, or `None` when the buffer
    /// ends inside it (nothing is changed then: the caller reads more and tries again).
    fn cell(&mut self, d: &[u8]) -> Result<Option<usize>, Failure> {
        if d.get(1) == Some(&b'c')
            && let Some((r, s, t, v, len)) = simple_cell(d)
        {
            let pos = match r {
                Some(r) => {
                    let p = cell_position(r)?;
                    self.col_index = p.1;
                    p
                }
                None => (self.row_index, self.col_index),
            };
            let raw = match v {
                Some(v) => value_of(t, v)?,
                None => Raw::Empty,
            };
            self.col_index += 1;
            self.push(pos.0, pos.1, s, raw, false)?;
            return Ok(Some(len));
        }
        let (mut r, mut s, mut t) = (None, None, None);
        let Some((qname, head, empty)) = parse_start(d, |k, v| match k {
            b"r" => r = r.or(Some(v)),
            b"s" => s = s.or(Some(v)),
            b"t" => t = t.or(Some(v)),
            _ => {}
        })?
        else {
            return Ok(None);
        };
        // The children: the last <v> or <is> gives the value, <f> the formula.
        let mut value: Option<(bool, &[u8])> = None; // (inline string?, bytes)
        let mut formula: Option<(&[u8], &[u8])> = None; // (attributes, text)
        let mut i = head;
        if !empty {
            loop {
                let Some(lt) = find(b'<', &d[i..]) else { return Ok(None) };
                i += lt;
                let Some(&next) = d.get(i + 1) else { return Ok(None) };
                if next == b'/' {
                    let Some(gt) = find(b'>', &d[i..]) else { return Ok(None) };
                    if d[i + 2..i + gt].trim_ascii_end() != qname {
                        return Err(Bail::new("an unexpected end tag inside a cell").into());
                    }
                    i += gt + 1;
                    break;
                }
                if next == b'!' || next == b'?' {
                    match tag(&d[i..])? {
                        Some((Tag::Skip, len)) => {
                            i += len;
                            continue;
                        }
                        Some(_) => return Err(Bail::new("markup inside a cell").into()),
                        None => return Ok(None),
                    }
                }
                let child = &d[i..];
                let mut fattrs: &[u8] = b"";
                let Some((cq, clen, cempty)) = parse_start(child, |_, _| {})? else { return Ok(None) };
                let clocal = local(cq);
                if clocal == b"f" {
                    let attrs_end = if cempty { clen - 2 } else { clen - 1 };
                    fattrs = &child[1 + cq.len()..attrs_end];
                }
                let (content, total) = if cempty {
                    (&child[clen..clen], clen)
                } else if clocal == b"is" {
                    let close = [b"</", cq, b">"].concat();
                    let Some(at) = memmem::find(&child[clen..], &close) else { return Ok(None) };
                    (&child[..clen + at + close.len()], clen + at + close.len())
                } else {
                    // Values and formulas hold no markup: their text ends at the next '<',
                    // which must close them.
                    let Some(at) = find(b'<', &child[clen..]) else { return Ok(None) };
                    let end = clen + at;
                    let need = 3 + cq.len();
                    if child.len() < end + need {
                        return Ok(None);
                    }
                    if &child[end..end + 2] != b"</"
                        || &child[end + 2..end + 2 + cq.len()] != cq
                        || child[end + 2 + cq.len()] != b'>'
                    {
                        return Err(Bail::new("markup inside a value or formula").into());
                    }
                    (&child[clen..end], end + need)
                };
                match clocal {
                    b"v" => value = Some((false, content)),
                    b"is" => value = Some((true, content)),
                    b"f" => formula = Some((fattrs, content)),
                    _ => return Err(Bail::new("an unknown element inside a cell").into()),
                }
                i += total;
            }
        }
        // Position: the reference, or the next column of the current row.
        let pos = match r {
            Some(r) => {
                let p = cell_position(r)?;
                self.col_index = p.1;
                p
            }
            None => (self.row_index, self.col_index),
        };
        let raw = match value {
            None => Raw::Empty,
            Some((true, xml)) => Raw::Text(std::borrow::Cow::Owned(read_inline_string(xml)?)),
            Some((false, v)) => value_of(t, v)?,
        };
        let formula = match formula {
            Some((a, text)) => self.formula(a, text, pos)?,
            None => None,
        };
        self.col_index += 1;
        // A formula that is kept (not blank) keeps its cell even without a value. Its text is an
        // ST_Xstring: `_xHHHH_` escapes are decoded, as the calamine path does.
        let has_formula =
            formula.is_some_and(|f| self.b.push_formula(pos.0, pos.1, &crate::forks::xstring::unescape(&f)));
        self.push(pos.0, pos.1, s, raw, has_formula)?;
        Ok(Some(i))
    }

    fn end_row(&mut self) {
        self.row_index += 1;
        self.col_index = 0;
        let want = self.ctx.progress.wanted_rows();
        if want != 0 && self.row_index >= want {
            // Rows can come out of order: then there is no prefix to give (the builder says so).
            if let Some(prefix) = self.b.snapshot(self.row_index) {
                self.ctx.progress.publish(prefix, self.row_index);
            }
        }
    }
}

/// Find the next tag in the input, reading more as needed; `None` at the end of the part.
macro_rules! next_tag {
    ($input:ident, $d:ident, $tg:ident, $len:ident, $at_eof:block, $body:block) => {
        loop {
            let rest = $input.rest();
            let Some(lt) = memchr(b'<', rest) else {
                $input.pos = $input.buf.len();
                if !$input.more()? $at_eof
                continue;
            };
            $input.pos += lt;
            let $d = $input.rest();
            match tag($d)? {
                None => {
                    if !$input.more()? {
                        return Err(Bail::new("the part ends inside a tag").into());
                    }
                }
                Some(($tg, $len)) => $body,
            }
        }
    };
}

/// Read one worksheet's cells, formulas and merged ranges.
pub fn read_sheet(name: &str, src: &mut Source, ctx: &Context<'_>) -> Result<Sheet, Failure> {
    let mut input = Input {
        src,
        buf: Vec::with_capacity(super::inflate::CHUNK * 2),
        pos: 0,
        eof: false,
        read: 0,
        progress: ctx.progress,
    };
    let mut scan = Scan {
        ctx,
        b: SheetBuilder::new(name.to_string()),
        sst_map: vec![u32::MAX; ctx.strings.len()],
        shared: Vec::new(),
        row_index: 0,
        col_index: 0,
        shift: if ctx.date1904 { EPOCH_1904_OFFSET } else { 0.0 },
        next_check: CHECK_EVERY,
    };
    // The prolog: an XML declaration in UTF-8, the worksheet element, then sheetData.
    let mut root_seen = false;
    let has_cells = 'prolog: {
        next_tag!(input, d, tg, len, { return Err(Bail::new("no sheetData").into()) }, {
            match tg {
                Tag::Skip => {
                    if d.starts_with(b"<?xml") {
                        let decl = &d[..len];
                        let lower = decl.to_ascii_lowercase();
                        if let Some(i) = memmem::find(&lower, b"encoding") {
                            let after = &lower[i..];
                            if memmem::find(after, b"utf-8").is_none() {
                                return Err(Bail::new("an XML encoding other than UTF-8").into());
                            }
                        }
                    }
                    input.pos += len;
                }
                Tag::End { .. } => input.pos += len,
                Tag::Start { local, attrs: a, empty, .. } => {
                    if !root_seen {
                        root_seen = true;
                        if local != b"worksheet" {
                            return Err(Bail::new("not a worksheet").into());
                        }
                        if memmem::find(a, b"purl.oclc.org").is_some() {
                            return Err(Bail::new("strict OOXML").into());
                        }
                    } else if local == b"dimension" {
                        if let [Some(r)] = attrs(a, [b"ref"])?
                            && let Ok(dim) = dimension(r)
                        {
                            // Reserve for the declared area, never more than the XML could hold.
                            let by_xml = (ctx.xml_bytes / 16) as usize;
                            let n = (dim.area() as usize).min(by_xml).min(ctx.limits.max_cells_per_sheet).min(1 << 26);
                            scan.b.reserve(n);
                        }
                    } else if local == b"sheetData" {
                        input.pos += len;
                        break 'prolog !empty;
                    }
                    input.pos += len;
                }
            }
        });
    };
    if has_cells {
        loop {
            let rest = input.rest();
            let lt = if rest.first() == Some(&b'<') { Some(0) } else { memchr(b'<', rest) };
            let Some(lt) = lt else {
                input.pos = input.buf.len();
                if !input.more()? {
                    return Err(Bail::new("the part ends inside sheetData").into());
                }
                continue;
            };
            input.pos += lt;
            let d = input.rest();
            // The hot path: an unprefixed cell.
            let is_cell = d.len() >= 3 && d[1] == b'c' && matches!(d[2], b' ' | b'>' | b'/' | b'\t' | b'\r' | b'\n');
            if !is_cell {
                match tag(d)? {
                    None => {
                        if !input.more()? {
                            return Err(Bail::new("the part ends inside sheetData").into());
                        }
                        continue;
                    }
                    Some((Tag::Skip, len)) => {
                        input.pos += len;
                        continue;
                    }
                    Some((Tag::End { local }, len)) => {
                        match local {
                            b"row" => scan.end_row(),
                            b"sheetData" => {
                                input.pos += len;
                                break;
                            }
                            _ => return Err(Bail::new("an unexpected end tag in sheetData").into()),
                        }
                        input.pos += len;
                        continue;
                    }
                    Some((Tag::Start { local: b"row", attrs: a, empty, .. }, len)) => {
                        if let [Some(r)] = attrs(a, [b"r"])? {
                            scan.row_index = position(r)?.0;
                        }
                        input.pos += len;
                        if empty {
                            scan.end_row();
                        }
                        continue;
                    }
                    // A prefixed cell goes the same way as a plain one.
                    Some((Tag::Start { local: b"c", .. }, _)) => {}
                    Some(_) => return Err(Bail::new("an unknown element in sheetData").into()),
                }
            }
            match scan.cell(input.rest())? {
                Some(n) => input.pos += n,
                None => {
                    if !input.more()? {
                        return Err(Bail::new("the part ends inside sheetData").into());
                    }
                }
            }
        }
    }
    // After the cells: merged ranges (calamine's errors there cost only the merges).
    let mut merged = Vec::new();
    let mut merges_ok = true;
    'tail: {
        next_tag!(input, _d, tg, len, { break 'tail }, {
            if let Tag::Start { local: b"mergeCell", attrs: a, .. } = tg {
                match attrs(a, [b"ref"]) {
                    Ok([Some(r)]) => match dimension(r) {
                        Ok(rect) => merged.push(rect),
                        Err(_) => merges_ok = false,
                    },
                    Ok(_) => {}
                    Err(_) => merges_ok = false,
                }
            }
            input.pos += len;
        });
    }
    input.drain()?;
    if !merges_ok {
        merged.clear();
    }
    let b = scan.b;
    if let Some((row, col)) = b.outside() {
        return Err(Failure::Error(SheetsError::LimitExceeded {
            workbook_id: String::new(),
            detail: format!(
                "sheet '{name}' has a cell at {} (row {}, column {}), beyond Excel's last row 1,048,576 or column XFD",
                crate::address::CellRef::new(row, col.min(crate::address::MAX_COLS - 1)),
                u64::from(row) + 1,
                u64::from(col) + 1
            ),
        }));
    }
    let max = ctx.limits.max_cells_per_sheet;
    if b.len() > max {
        return Err(Failure::Error(SheetsError::LimitExceeded {
            workbook_id: String::new(),
            detail: format!("sheet '{name}' has more than {max} cells (limit {max})"),
        }));
    }
    ctx.budget.check_load()?;
    Ok(b.finish(merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_decimals_equal_the_parsed_double() {
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = 1 + (x % 9) as usize;
            let frac = (x >> 8) as usize % (digits + 1);
            let mut s: String = (0..digits).map(|i| char::from(b'0' + ((x >> (i * 3 + 16)) % 10) as u8)).collect();
            if frac > 0 && frac < digits {
                s.insert(digits - frac, '.');
            }
            if x & 1 == 1 {
                s.insert(0, '-');
            }
            let want: f64 = fast_float2::parse(s.as_bytes()).unwrap();
            if let Some((m, k)) = small_decimal(s.as_bytes()) {
                assert_eq!(packed::small(m as u32, k).to_bits(), want.to_bits(), "{s}");
            }
        }
        assert_eq!(small_decimal(b"64.53"), Some((6453, 2)));
        assert_eq!(small_decimal(b"-0"), None);
        assert_eq!(small_decimal(b"1."), None);
        assert_eq!(small_decimal(b"1e5"), None);
        assert_eq!(small_decimal(b"1234567890"), None);
        assert_eq!(small_decimal(b"0.000000001"), Some((1, 9)));
    }

    #[test]
    fn references_parse_like_calamine() {
        assert_eq!(cell_position(b"A1").unwrap(), (0, 0));
        assert_eq!(cell_position(b"xfd1048576").unwrap(), (1_048_575, 16_383));
        assert!(cell_position(b"A0").is_err());
        assert!(cell_position(b"12").is_err());
        assert_eq!(position(b"7").unwrap(), (6, None));
        assert_eq!(dimension(b"B2:C9").unwrap(), Rect::new(1, 1, 8, 2));
        assert!(dimension(b"A1:B2:C3").is_err());
    }

    #[test]
    fn attributes_are_raw_and_exact() {
        let [r, s, t] = attrs(br#" r="A1" s='3'  t = "s" x:r="Z9""#, [b"r", b"s", b"t"]).unwrap();
        assert_eq!((r, s, t), (Some(&b"A1"[..]), Some(&b"3"[..]), Some(&b"s"[..])));
        assert!(attrs(b" r=A1", [b"r"]).is_err());
    }
}
