//! A loaded sheet: non-empty cells in row-major order, stored column by column of a table
//! (a 2-byte column, a 1-byte tag and a 4- or 8-byte payload per cell, rows found through a
//! start index), formulas beside them, a string pool, merged ranges. Built once by a loader
//! (`SheetBuilder`), then shared read-only.
//!
//! Why this shape: a cached sheet is mostly its cells, and a cell of a typical sheet costs
//! 7 bytes here (numbers with up to 9 significant decimal digits fit the 4-byte payload as a
//! mantissa and a power of ten, which gives back the very `f64` a parser makes of the text),
//! against 24 for a `(row, col, Value)` triple. A sheet whose numbers mostly need all 64 bits
//! switches to 8-byte payloads (11 bytes a cell). Reads decode a `Value` per cell on the fly.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::address::{CellRef, MAX_COLS, MAX_ROWS, Rect};
use crate::regions::Region;
use crate::value::{self, CellError, Value};

/// One cell as the read tools see it (decoded from the packed storage).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    pub row: u32,
    pub col: u32,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub struct Formula {
    pub at: CellRef,
    pub text: Arc<str>,
}

/// How a value is packed: a tag byte and a payload.
///
/// Tags below 16 are the non-numbers (empty, bool, error, text: the payload holds the flag,
/// the error code or the string index). For numbers the high nibble is the kind (1 number,
/// 2 date, 3 duration) and the low nibble the decimal scale `k` of a 32-bit mantissa `m`
/// (the value is `m / 10^k`, `k` in 0..=9), or `WIDE` when the payload holds the `f64`
/// itself (8-byte payloads) or its index in the side table (4-byte payloads).
pub(crate) mod packed {
    use super::{CellError, Value};

    pub const EMPTY: u8 = 0;
    pub const BOOL: u8 = 1;
    pub const ERROR: u8 = 2;
    pub const TEXT: u8 = 3;
    pub const NUMBER: u8 = 0x10;
    pub const DATE: u8 = 0x20;
    pub const DURATION: u8 = 0x30;
    pub const WIDE: u8 = 0x0F;
    /// Largest decimal scale a 32-bit mantissa carries.
    pub const MAX_SCALE: u8 = 9;

    pub const POW10: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

    const ERRORS: [CellError; 8] = [
        CellError::Div0,
        CellError::NA,
        CellError::Name,
        CellError::Null,
        CellError::Num,
        CellError::Ref,
        CellError::Value,
        CellError::GettingData,
    ];

    pub fn error_code(e: CellError) -> u32 {
        ERRORS.iter().position(|x| *x == e).unwrap_or(0) as u32
    }

    fn error_of(code: u64) -> CellError {
        ERRORS.get(code as usize).copied().unwrap_or(CellError::Value)
    }

    /// The kind nibble of a number value.
    pub fn kind_of(v: &Value) -> Option<(u8, f64)> {
        match *v {
            Value::Number(n) => Some((NUMBER, n)),
            Value::Date(n) => Some((DATE, n)),
            Value::Duration(n) => Some((DURATION, n)),
            _ => None,
        }
    }

    /// `n` as `m / 10^k` with a 32-bit `m` when that gives back exactly `n` (same bits).
    pub fn compact(n: f64) -> Option<(i32, u8)> {
        if !n.is_finite() || n.abs() >= 2_147_483_647.5 {
            return None;
        }
        for k in 0..=MAX_SCALE {
            let scaled = n * POW10[k as usize];
            if scaled.abs() > 2_147_483_647.0 {
                return None;
            }
            let m = scaled.round() as i32;
            // Decoded exactly as `small` decodes it (so -0.0 never passes for 0).
            if small(m as u32, k).to_bits() == n.to_bits() {
                return Some((m, k));
            }
        }
        None
    }

    /// Decode a number from its mantissa and scale.
    #[inline]
    pub fn small(m: u32, k: u8) -> f64 {
        let m = m as i32 as f64;
        if k == 0 { m } else { m / POW10[k as usize] }
    }

    #[inline]
    fn number(kind: u8, n: f64) -> Value {
        match kind {
            NUMBER => Value::Number(n),
            DATE => Value::Date(n),
            _ => Value::Duration(n),
        }
    }

    /// Decode a 4-byte payload (wide numbers live in `wide`).
    #[inline]
    pub fn decode_narrow(tag: u8, p: u32, wide: &[f64]) -> Value {
        match tag {
            EMPTY => Value::Empty,
            BOOL => Value::Bool(p != 0),
            ERROR => Value::Error(error_of(u64::from(p))),
            TEXT => Value::Text(p),
            t => {
                let k = t & 0x0F;
                let n = if k == WIDE { wide.get(p as usize).copied().unwrap_or(f64::NAN) } else { small(p, k) };
                number(t & 0xF0, n)
            }
        }
    }

    /// Decode an 8-byte payload.
    #[inline]
    pub fn decode_wide(tag: u8, p: u64) -> Value {
        match tag {
            EMPTY => Value::Empty,
            BOOL => Value::Bool(p != 0),
            ERROR => Value::Error(error_of(p)),
            TEXT => Value::Text(p as u32),
            t => number(t & 0xF0, f64::from_bits(p)),
        }
    }
}

/// Where the payloads live: 4 bytes a cell with a side table for the numbers that need
/// 64 bits, or 8 bytes a cell.
#[derive(Debug)]
enum Payload {
    Narrow { small: Vec<u32>, wide: Vec<f64> },
    Wide(Vec<u64>),
}

impl Payload {
    #[inline]
    fn value(&self, tag: u8, i: usize) -> Value {
        match self {
            Payload::Narrow { small, wide } => packed::decode_narrow(tag, small[i], wide),
            Payload::Wide(w) => packed::decode_wide(tag, w[i]),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Payload::Narrow { small, wide } => small.capacity() * 4 + wide.capacity() * 8,
            Payload::Wide(w) => w.capacity() * 8,
        }
    }
}

#[derive(Debug)]
pub struct Sheet {
    pub name: String,
    cols: Vec<u16>,
    tags: Vec<u8>,
    payload: Payload,
    /// `row_start[i]..row_start[i+1]` are the cells of row `first_row + i`.
    row_start: Vec<u32>,
    first_row: u32,
    pub strings: Vec<Arc<str>>,
    formulas: Vec<Formula>,
    pub merged: Vec<Rect>,
    pub used: Option<Rect>,
    pub(crate) regions: OnceLock<Arc<Vec<Region>>>,
    lower_strings: OnceLock<Vec<Box<str>>>,
}

/// How many stored cells of each kind a sheet holds (`empty` are formulas without a cached
/// value).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KindCounts {
    pub empty: u64,
    pub bool: u64,
    pub error: u64,
    pub text: u64,
    pub number: u64,
    pub date: u64,
    pub duration: u64,
}

/// The cells of one row (or of a column span of it), sorted by column.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    sheet: &'a Sheet,
    row: u32,
    start: usize,
    end: usize,
}

impl<'a> Row<'a> {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The columns of the row's cells, ascending.
    pub fn cols(&self) -> &'a [u16] {
        &self.sheet.cols[self.start..self.end]
    }

    /// The `i`-th cell of the row.
    pub fn at(&self, i: usize) -> Cell {
        self.sheet.cell_at(self.row, self.start + i)
    }

    /// The value at column `col` (empty when there is no cell).
    pub fn get(&self, col: u32) -> Value {
        let Ok(c) = u16::try_from(col) else { return Value::Empty };
        match self.cols().binary_search(&c) {
            Ok(i) => self.sheet.value_at(self.start + i),
            Err(_) => Value::Empty,
        }
    }

    /// The cells within columns `left..=right`.
    pub fn span(&self, left: u32, right: u32) -> Row<'a> {
        let cols = self.cols();
        let a = cols.partition_point(|&c| u32::from(c) < left);
        let b = cols.partition_point(|&c| u32::from(c) <= right).max(a);
        Row { sheet: self.sheet, row: self.row, start: self.start + a, end: self.start + b }
    }

    pub fn first(&self) -> Option<Cell> {
        (!self.is_empty()).then(|| self.at(0))
    }

    pub fn last(&self) -> Option<Cell> {
        (!self.is_empty()).then(|| self.at(self.len() - 1))
    }

    pub fn iter(&self) -> RowIter<'a> {
        RowIter { sheet: self.sheet, row: self.row, i: self.start, end: self.end }
    }
}

impl<'a> IntoIterator for Row<'a> {
    type Item = Cell;
    type IntoIter = RowIter<'a>;
    fn into_iter(self) -> RowIter<'a> {
        self.iter()
    }
}

pub struct RowIter<'a> {
    sheet: &'a Sheet,
    row: u32,
    i: usize,
    end: usize,
}

impl Iterator for RowIter<'_> {
    type Item = Cell;
    #[inline]
    fn next(&mut self) -> Option<Cell> {
        self.sheet.step(self.row, &mut self.i, self.end)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.i;
        (n, Some(n))
    }
}

impl ExactSizeIterator for RowIter<'_> {}

/// All cells of a sheet, row-major.
#[derive(Clone, Copy)]
pub struct Cells<'a> {
    sheet: &'a Sheet,
}

impl<'a> Cells<'a> {
    pub fn len(&self) -> usize {
        self.sheet.tags.len()
    }
    pub fn is_empty(&self) -> bool {
        self.sheet.tags.is_empty()
    }
    pub fn iter(&self) -> CellIter<'a> {
        CellIter { sheet: self.sheet, i: 0, row_i: 0 }
    }
}

impl<'a> IntoIterator for Cells<'a> {
    type Item = Cell;
    type IntoIter = CellIter<'a>;
    fn into_iter(self) -> CellIter<'a> {
        self.iter()
    }
}

pub struct CellIter<'a> {
    sheet: &'a Sheet,
    /// Next cell.
    i: usize,
    /// Row (index into `row_start`) of the next cell.
    row_i: usize,
}

impl Iterator for CellIter<'_> {
    type Item = Cell;
    #[inline]
    fn next(&mut self) -> Option<Cell> {
        let s = self.sheet;
        let end = s.tags.len();
        while self.i < end && s.row_start[self.row_i + 1] as usize <= self.i {
            self.row_i += 1;
        }
        s.step(s.first_row + self.row_i as u32, &mut self.i, end)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.sheet.tags.len() - self.i;
        (n, Some(n))
    }
}

impl ExactSizeIterator for CellIter<'_> {}

impl Sheet {
    pub fn empty(name: &str) -> Self {
        SheetBuilder::new(name.to_string()).finish(Vec::new())
    }

    pub fn cell_count(&self) -> usize {
        self.tags.len()
    }

    pub fn cells(&self) -> Cells<'_> {
        Cells { sheet: self }
    }

    pub fn formulas(&self) -> &[Formula] {
        &self.formulas
    }

    #[inline]
    fn value_at(&self, i: usize) -> Value {
        self.payload.value(self.tags[i], i)
    }

    #[inline]
    fn cell_at(&self, row: u32, i: usize) -> Cell {
        Cell { row, col: u32::from(self.cols[i]), value: self.value_at(i) }
    }

    /// One step of a walk over packed cells: the cell at index `*i` (in row `row`) while
    /// `*i < end`, moving `*i` past it.
    #[inline]
    fn step(&self, row: u32, i: &mut usize, end: usize) -> Option<Cell> {
        if *i >= end {
            return None;
        }
        let c = self.cell_at(row, *i);
        *i += 1;
        Some(c)
    }

    /// Cells of one row, sorted by column.
    pub fn row(&self, row: u32) -> Row<'_> {
        let (start, end) = if row < self.first_row {
            (0, 0)
        } else {
            let i = (row - self.first_row) as usize;
            match (self.row_start.get(i), self.row_start.get(i + 1)) {
                (Some(&a), Some(&b)) => (a as usize, b as usize),
                _ => (0, 0),
            }
        };
        Row { sheet: self, row, start, end }
    }

    /// Cells of one row within columns `left..=right`.
    pub fn row_span(&self, row: u32, left: u32, right: u32) -> Row<'_> {
        self.row(row).span(left, right)
    }

    pub fn get(&self, row: u32, col: u32) -> Value {
        self.row(row).get(col)
    }

    /// Iterate the stored cells inside `rect`, row-major.
    pub fn cells_in(&self, rect: Rect) -> impl Iterator<Item = Cell> + '_ {
        let (top, bottom) = match self.used {
            Some(u) => (rect.top.max(u.top), rect.bottom.min(u.bottom)),
            None => (1, 0),
        };
        (top..=bottom).flat_map(move |r| self.row_span(r, rect.left, rect.right).iter())
    }

    /// The text cells whose string-pool index passes `keep`, with each cell's position, in row
    /// order: for searches that only look at text (the other cells are not decoded, and a
    /// position is worked out only for the cells kept).
    pub fn text_cells<'a>(&'a self, keep: impl Fn(u32) -> bool + 'a) -> impl Iterator<Item = (CellRef, u32)> + 'a {
        let string_at = move |i: usize| match &self.payload {
            Payload::Narrow { small, .. } => small[i],
            Payload::Wide(w) => w[i] as u32,
        };
        let texts = self.tags.iter().enumerate().filter(move |&(i, t)| *t == packed::TEXT && keep(string_at(i)));
        self.positioned(texts.map(|(i, _)| i)).map(move |(at, i)| (at, string_at(i)))
    }

    /// The error cells with their positions, in row order (only the error cells are decoded).
    pub fn error_cells(&self) -> impl Iterator<Item = (CellRef, CellError)> + '_ {
        let errors = self.tags.iter().enumerate().filter(|&(_, t)| *t == packed::ERROR).map(|(i, _)| i);
        self.positioned(errors).filter_map(|(at, i)| match self.value_at(i) {
            Value::Error(e) => Some((at, e)),
            _ => None,
        })
    }

    /// Cells by kind, counted from the tags alone (no value is decoded), `check` called before
    /// each block of 64 Ki cells so a caller can stop a long count.
    pub fn kind_counts<E>(&self, mut check: impl FnMut() -> Result<(), E>) -> Result<KindCounts, E> {
        let mut by_tag = [0u64; 256];
        for block in self.tags.chunks(1 << 16) {
            check()?;
            for &t in block {
                by_tag[usize::from(t)] += 1;
            }
        }
        let mut k = KindCounts {
            empty: by_tag[usize::from(packed::EMPTY)],
            bool: by_tag[usize::from(packed::BOOL)],
            error: by_tag[usize::from(packed::ERROR)],
            text: by_tag[usize::from(packed::TEXT)],
            ..KindCounts::default()
        };
        // Every other tag is a number kind, as `packed::decode_*` reads it.
        for (tag, &n) in by_tag.iter().enumerate().skip(usize::from(packed::TEXT) + 1) {
            match tag as u8 & 0xF0 {
                packed::NUMBER => k.number += n,
                packed::DATE => k.date += n,
                _ => k.duration += n,
            }
        }
        Ok(k)
    }

    /// Cell indices (ascending) paired with their positions: the row search resumes where the
    /// last one was found, so a walk over a few cells never visits every row.
    fn positioned<'a>(
        &'a self,
        indices: impl Iterator<Item = usize> + 'a,
    ) -> impl Iterator<Item = (CellRef, usize)> + 'a {
        let mut row_i = 0usize;
        indices.map(move |i| {
            let rest = &self.row_start[row_i + 1..];
            row_i += rest.partition_point(|&start| start as usize <= i);
            (CellRef::new(self.first_row + row_i as u32, u32::from(self.cols[i])), i)
        })
    }

    pub fn formula_at(&self, at: CellRef) -> Option<&Arc<str>> {
        self.formulas
            .binary_search_by(|f| (f.at.row, f.at.col).cmp(&(at.row, at.col)))
            .ok()
            .map(|i| &self.formulas[i].text)
    }

    /// Formulas inside `rect`, row-major.
    pub fn formulas_in(&self, rect: Rect) -> impl Iterator<Item = &Formula> + '_ {
        let start = self.formulas.partition_point(|f| f.at.row < rect.top);
        self.formulas[start..]
            .iter()
            .take_while(move |f| f.at.row <= rect.bottom)
            .filter(move |f| f.at.col >= rect.left && f.at.col <= rect.right)
    }

    pub fn text(&self, v: &Value) -> std::borrow::Cow<'_, str> {
        value::display(v, &self.strings)
    }

    pub fn json(&self, v: &Value) -> serde_json::Value {
        value::to_json(v, &self.strings)
    }

    /// The string pool lower-cased, built on first search.
    pub fn lower_strings(&self) -> &[Box<str>] {
        self.lower_strings.get_or_init(|| self.strings.iter().map(|s| s.to_lowercase().into_boxed_str()).collect())
    }

    /// The merged range whose top-left anchors `(row, col)`'s value, if the cell is covered.
    pub fn merge_at(&self, row: u32, col: u32) -> Option<Rect> {
        self.merged.iter().copied().find(|m| m.contains(row, col))
    }

    /// Heap bytes of the cells alone (columns, tags, payloads, row index): the figure the
    /// "bytes per cell" budget is about.
    pub fn cell_bytes(&self) -> usize {
        self.cols.capacity() * 2 + self.tags.capacity() + self.payload.heap_bytes() + self.row_start.capacity() * 4
    }

    /// Approximate heap bytes held, for the cache's accounting.
    pub fn heap_bytes(&self) -> usize {
        self.cell_bytes()
            + self.strings.capacity() * 16
            + self.strings.iter().map(|s| s.len() + 32).sum::<usize>()
            + self.formulas.capacity() * std::mem::size_of::<Formula>()
            + self.formulas.iter().map(|f| f.text.len() + 24).sum::<usize>()
            + self.merged.capacity() * std::mem::size_of::<Rect>()
            + self.name.len()
            + 256
    }
}

/// Cells kept in stream order while they arrive in row-major order; any cell out of order
/// (or a repeat) switches the builder to keeping each cell's row and sorting at the end.
enum Order {
    /// `row_start` grows as rows arrive; `last` is the last cell's (row, col).
    Sorted { row_start: Vec<u32>, first_row: u32, last: Option<(u32, u32)> },
    /// Each cell's row, parallel to the other columns.
    Unsorted { rows: Vec<u32> },
}

/// Accumulates cells while a sheet streams in; strings are interned.
pub struct SheetBuilder {
    name: String,
    cols: Vec<u16>,
    tags: Vec<u8>,
    small: Vec<u32>,
    wide: Vec<f64>,
    order: Order,
    strings: Vec<Arc<str>>,
    by_content: HashMap<Arc<str>, u32>,
    /// Shared-string pool entries seen before, by address: one hash of a pointer, no hashing of text.
    by_addr: HashMap<usize, u32>,
    formulas: Vec<Formula>,
    formulas_sorted: bool,
    /// Cells dropped because they lie outside Excel's grid (the loaders refuse such sheets).
    outside: Option<(u32, u32)>,
    pub merged: Vec<Rect>,
}

impl SheetBuilder {
    pub fn new(name: String) -> Self {
        Self {
            name,
            cols: Vec::new(),
            tags: Vec::new(),
            small: Vec::new(),
            wide: Vec::new(),
            order: Order::Sorted { row_start: Vec::new(), first_row: 0, last: None },
            strings: Vec::new(),
            by_content: HashMap::new(),
            by_addr: HashMap::new(),
            formulas: Vec::new(),
            formulas_sorted: true,
            outside: None,
            merged: Vec::new(),
        }
    }

    /// A builder that starts from an existing string pool (indices stay valid), for a sheet
    /// rebuilt with changes.
    pub fn with_pool(name: String, strings: &[Arc<str>]) -> Self {
        let mut b = Self::new(name);
        b.strings = strings.to_vec();
        b.by_content = strings.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
        b
    }

    pub fn reserve(&mut self, n: usize) {
        self.cols.reserve(n);
        self.tags.reserve(n);
        self.small.reserve(n);
    }

    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The first cell dropped for lying outside Excel's grid, if any (row, col).
    pub fn outside(&self) -> Option<(u32, u32)> {
        self.outside
    }

    /// Bytes the cells take so far (for progress accounting).
    pub fn cell_bytes(&self) -> usize {
        let rows = match &self.order {
            Order::Sorted { row_start, .. } => row_start.capacity() * 4,
            Order::Unsorted { rows } => rows.capacity() * 4,
        };
        self.cols.capacity() * 2 + self.tags.capacity() + self.small.capacity() * 4 + self.wide.capacity() * 8 + rows
    }

    /// Add a cell (an empty value keeps a place: a formula cell never calculated).
    pub fn push(&mut self, row: u32, col: u32, value: Value) {
        let (tag, p) = match value {
            Value::Empty => (packed::EMPTY, 0),
            Value::Bool(b) => (packed::BOOL, u32::from(b)),
            Value::Error(e) => (packed::ERROR, packed::error_code(e)),
            Value::Text(i) => (packed::TEXT, i),
            ref v => {
                let Some((kind, n)) = packed::kind_of(v) else { return };
                return self.push_number(row, col, kind, n);
            }
        };
        self.push_packed(row, col, tag, p);
    }

    /// Add a number of kind `kind` (`packed::NUMBER`, `DATE` or `DURATION`).
    pub(crate) fn push_number(&mut self, row: u32, col: u32, kind: u8, n: f64) {
        match packed::compact(n) {
            Some((m, k)) => {
                self.push_packed(row, col, kind | k, m as u32);
            }
            None => self.push_wide(row, col, kind, n),
        }
    }

    /// Add a number known as the decimal `m / 10^k` (`k` <= 9); it equals the `f64`
    /// nearest that decimal, which is what a correct parser makes of its text.
    #[inline]
    pub(crate) fn push_decimal(&mut self, row: u32, col: u32, kind: u8, m: i32, k: u8) {
        self.push_packed(row, col, kind | k, m as u32);
    }

    fn push_wide(&mut self, row: u32, col: u32, kind: u8, n: f64) {
        let i = self.wide.len() as u32;
        if self.push_packed(row, col, kind | packed::WIDE, i) {
            self.wide.push(n);
        }
    }

    /// Place a packed cell; false when it was dropped (outside the grid).
    #[inline]
    fn push_packed(&mut self, row: u32, col: u32, tag: u8, p: u32) -> bool {
        if row >= MAX_ROWS || col >= MAX_COLS {
            self.outside.get_or_insert((row, col));
            return false;
        }
        match &mut self.order {
            Order::Sorted { row_start, first_row, last } => match *last {
                Some((r, c)) if row == r && col > c => *last = Some((row, col)),
                Some((r, _)) if row > r => {
                    // Rows r+1..=row start here.
                    let n = self.tags.len() as u32;
                    for _ in r..row {
                        row_start.push(n);
                    }
                    *last = Some((row, col));
                }
                None => {
                    *first_row = row;
                    row_start.push(0);
                    *last = Some((row, col));
                }
                Some(_) => {
                    self.unsort();
                    if let Order::Unsorted { rows } = &mut self.order {
                        rows.push(row);
                    }
                }
            },
            Order::Unsorted { rows } => rows.push(row),
        }
        self.cols.push(col as u16);
        self.tags.push(tag);
        self.small.push(p);
        true
    }

    /// Switch to keeping each cell's row (a cell arrived out of order).
    fn unsort(&mut self) {
        if let Order::Sorted { row_start, first_row, .. } = &self.order {
            let mut rows = Vec::with_capacity(self.tags.capacity());
            for (i, w) in row_start.windows(2).enumerate() {
                rows.extend(std::iter::repeat_n(first_row + i as u32, (w[1] - w[0]) as usize));
            }
            let done = row_start.last().copied().unwrap_or(0) as usize;
            let last_row = first_row + row_start.len().saturating_sub(1) as u32;
            rows.extend(std::iter::repeat_n(last_row, self.tags.len() - done));
            self.order = Order::Unsorted { rows };
        }
    }

    /// Intern a string owned elsewhere for the whole load (a shared-strings table entry).
    pub fn intern_shared(&mut self, s: &str) -> Value {
        let addr = s.as_ptr() as usize;
        if let Some(&i) = self.by_addr.get(&addr) {
            return Value::Text(i);
        }
        let v = self.intern(s);
        if let Value::Text(i) = v {
            self.by_addr.insert(addr, i);
        }
        v
    }

    pub fn intern(&mut self, s: &str) -> Value {
        Value::Text(self.intern_index(s))
    }

    /// The pool index of `s`, adding it when new.
    pub fn intern_index(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.by_content.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        let a: Arc<str> = Arc::from(s);
        self.strings.push(a.clone());
        self.by_content.insert(a, i);
        i
    }

    /// Add a formula (a leading `=` is dropped); false when it is blank and was left out.
    pub fn push_formula(&mut self, row: u32, col: u32, text: &str) -> bool {
        let text = text.trim();
        if text.is_empty() {
            return false;
        }
        let text = text.strip_prefix('=').unwrap_or(text);
        if let Some(last) = self.formulas.last()
            && (last.at.row, last.at.col) >= (row, col)
        {
            self.formulas_sorted = false;
        }
        self.formulas.push(Formula { at: CellRef::new(row, col), text: Arc::from(text) });
        true
    }

    /// The sheet as far as it has arrived: the complete rows before `rows_done` (0-based,
    /// exclusive), without merged ranges (they come after the cells). `None` when the cells
    /// did not arrive in order.
    pub fn snapshot(&self, rows_done: u32) -> Option<Sheet> {
        let Order::Sorted { row_start, first_row, .. } = &self.order else { return None };
        let n = if rows_done <= *first_row {
            0
        } else {
            let i = (rows_done - first_row) as usize;
            row_start.get(i).map(|&x| x as usize).unwrap_or(self.tags.len())
        };
        let rows = if n == 0 { 0 } else { (rows_done - first_row) as usize };
        let wide_needed = self.tags[..n]
            .iter()
            .zip(&self.small[..n])
            .filter(|(t, _)| **t >= packed::NUMBER && **t & 0x0F == packed::WIDE)
            .map(|(_, p)| *p as usize + 1)
            .max()
            .unwrap_or(0);
        let f_end = self.formulas.partition_point(|f| f.at.row < rows_done);
        let b = SheetBuilder {
            name: self.name.clone(),
            cols: self.cols[..n].to_vec(),
            tags: self.tags[..n].to_vec(),
            small: self.small[..n].to_vec(),
            wide: self.wide[..wide_needed.min(self.wide.len())].to_vec(),
            order: Order::Sorted {
                row_start: row_start[..rows.min(row_start.len())].to_vec(),
                first_row: *first_row,
                last: (n > 0).then_some((rows_done.saturating_sub(1), u32::MAX)),
            },
            strings: self.strings.clone(),
            by_content: HashMap::new(),
            by_addr: HashMap::new(),
            formulas: if self.formulas_sorted { self.formulas[..f_end].to_vec() } else { Vec::new() },
            formulas_sorted: true,
            outside: None,
            merged: Vec::new(),
        };
        Some(b.finish(Vec::new()))
    }

    pub fn finish(mut self, merged: Vec<Rect>) -> Sheet {
        if !self.formulas_sorted {
            self.formulas.sort_by_key(|f| (f.at.row, f.at.col));
        }
        // A repeated formula position keeps the last one.
        dedup_keep_last(&mut self.formulas, |f| (f.at.row, f.at.col));
        let (mut first_row, mut row_start) =
            match std::mem::replace(&mut self.order, Order::Unsorted { rows: Vec::new() }) {
                Order::Sorted { mut row_start, first_row, last } => {
                    if last.is_some() {
                        row_start.push(self.tags.len() as u32);
                    }
                    (first_row, row_start)
                }
                Order::Unsorted { rows } => self.sort_cells(rows),
            };
        // A formula cell with no cached value still occupies the grid: keep an Empty cell for it
        // so region detection and paging see it. (The streaming loaders push those cells
        // themselves; this is for the readers that hand formulas over separately.)
        let missing: Vec<CellRef> = self
            .formulas
            .iter()
            .map(|f| f.at)
            .filter(|at| at.row < MAX_ROWS && at.col < MAX_COLS)
            .filter(|at| !self.has_cell(first_row, &row_start, at.row, at.col))
            .collect();
        if !missing.is_empty() {
            let mut rows = Vec::with_capacity(self.tags.len() + missing.len());
            for (i, w) in row_start.windows(2).enumerate() {
                rows.extend(std::iter::repeat_n(first_row + i as u32, (w[1] - w[0]) as usize));
            }
            for at in missing {
                rows.push(at.row);
                self.cols.push(at.col as u16);
                self.tags.push(packed::EMPTY);
                self.small.push(0);
            }
            (first_row, row_start) = self.sort_cells(rows);
        }
        let n = self.tags.len();
        // Four-byte payloads unless most numbers need all 64 bits.
        let payload = if self.wide.len() * 2 > n {
            let mut w: Vec<u64> = Vec::with_capacity(n);
            for (t, p) in self.tags.iter_mut().zip(&self.small) {
                if *t >= packed::NUMBER {
                    let v = packed::decode_narrow(*t, *p, &self.wide);
                    let x = v.as_number().unwrap_or(f64::NAN);
                    *t = (*t & 0xF0) | packed::WIDE;
                    w.push(x.to_bits());
                } else {
                    w.push(u64::from(*p));
                }
            }
            self.small = Vec::new();
            self.wide = Vec::new();
            Payload::Wide(w)
        } else {
            self.small.shrink_to_fit();
            self.wide.shrink_to_fit();
            Payload::Narrow { small: std::mem::take(&mut self.small), wide: std::mem::take(&mut self.wide) }
        };
        self.cols.shrink_to_fit();
        self.tags.shrink_to_fit();
        row_start.shrink_to_fit();
        self.formulas.shrink_to_fit();
        self.strings.shrink_to_fit();
        let used = if n == 0 {
            None
        } else {
            let (mut left, mut right) = (u16::MAX, 0u16);
            for &c in &self.cols {
                left = left.min(c);
                right = right.max(c);
            }
            let last_row = first_row + row_start.len().saturating_sub(2) as u32;
            Some(Rect::new(first_row, u32::from(left), last_row, u32::from(right)))
        };
        Sheet {
            name: self.name,
            cols: self.cols,
            tags: self.tags,
            payload,
            row_start: if n == 0 { Vec::new() } else { row_start },
            first_row: if n == 0 { 0 } else { first_row },
            strings: self.strings,
            formulas: self.formulas,
            merged,
            used,
            regions: OnceLock::new(),
            lower_strings: OnceLock::new(),
        }
    }

    /// Whether the sorted cells hold one at (row, col).
    fn has_cell(&self, first_row: u32, row_start: &[u32], row: u32, col: u32) -> bool {
        if row < first_row || row_start.len() < 2 {
            return false;
        }
        let i = (row - first_row) as usize;
        let (Some(&a), Some(&b)) = (row_start.get(i), row_start.get(i + 1)) else { return false };
        u16::try_from(col).is_ok_and(|c| self.cols[a as usize..b as usize].binary_search(&c).is_ok())
    }

    /// Sort cells kept out of order (the last of repeated positions wins); returns the first
    /// row and the row starts.
    fn sort_cells(&mut self, rows: Vec<u32>) -> (u32, Vec<u32>) {
        let n = self.tags.len();
        let mut perm: Vec<u32> = (0..n as u32).collect();
        perm.sort_by_key(|&i| (rows[i as usize], self.cols[i as usize], i));
        // Keep the last of each position.
        let mut keep: Vec<u32> = Vec::with_capacity(n);
        for (k, &i) in perm.iter().enumerate() {
            let next_same = perm.get(k + 1).is_some_and(|&j| {
                rows[j as usize] == rows[i as usize] && self.cols[j as usize] == self.cols[i as usize]
            });
            if !next_same {
                keep.push(i);
            }
        }
        drop(perm);
        let gather = |v: &[u16]| keep.iter().map(|&i| v[i as usize]).collect::<Vec<u16>>();
        let cols = gather(&self.cols);
        let tags: Vec<u8> = keep.iter().map(|&i| self.tags[i as usize]).collect();
        let small: Vec<u32> = keep.iter().map(|&i| self.small[i as usize]).collect();
        let sorted_rows: Vec<u32> = keep.iter().map(|&i| rows[i as usize]).collect();
        self.cols = cols;
        self.tags = tags;
        self.small = small;
        let first_row = sorted_rows.first().copied().unwrap_or(0);
        let last_row = sorted_rows.last().copied().unwrap_or(0);
        let mut row_start = Vec::with_capacity((last_row - first_row) as usize + 2);
        let mut i = 0usize;
        if !sorted_rows.is_empty() {
            for r in first_row..=last_row {
                row_start.push(i as u32);
                while i < sorted_rows.len() && sorted_rows[i] == r {
                    i += 1;
                }
            }
            row_start.push(sorted_rows.len() as u32);
        }
        (first_row, row_start)
    }
}

/// Remove repeats of a key from a sorted vector, keeping the last of each.
fn dedup_keep_last<T, K: PartialEq>(v: &mut Vec<T>, key: impl Fn(&T) -> K) {
    if v.len() < 2 {
        return;
    }
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v.drain(..) {
        if out.last().is_some_and(|l| key(l) == key(&x)) {
            out.pop();
        }
        out.push(x);
    }
    *v = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sorts_and_indexes_rows() {
        let mut b = SheetBuilder::new("S".into());
        b.push(2, 1, Value::Number(3.0));
        b.push(0, 0, Value::Number(1.0));
        let t = b.intern("x");
        b.push(0, 2, t);
        b.push_formula(5, 5, "=SUM(A1:A2)");
        let s = b.finish(vec![]);
        assert_eq!(s.used.unwrap().to_string(), "A1:F6");
        assert_eq!(s.row(0).len(), 2);
        assert_eq!(s.row(1).len(), 0);
        assert_eq!(s.get(2, 1), Value::Number(3.0));
        assert_eq!(s.text(&s.get(0, 2)), "x");
        assert_eq!(s.get(5, 5), Value::Empty);
        assert_eq!(s.cell_count(), 4, "uncalculated formula keeps a cell");
        assert_eq!(&**s.formula_at(CellRef::new(5, 5)).unwrap(), "SUM(A1:A2)");
        assert_eq!(s.cells_in(Rect::new(0, 1, 9, 9)).count(), 3);
    }

    #[test]
    fn text_cells_find_the_kept_strings_where_a_full_scan_does() {
        let mut b = SheetBuilder::new("S".into());
        let (x, y) = (b.intern("x"), b.intern("y"));
        // Rows with gaps between them, numbers around the text.
        for r in [0u32, 1, 4, 5, 9, 30] {
            b.push(r, 0, Value::Number(f64::from(r)));
            b.push(r, 1, if r % 2 == 0 { x } else { y });
            b.push(r, 3, x);
        }
        let s = b.finish(vec![]);
        let Value::Text(xi) = x else { panic!("interned text") };
        let fast: Vec<(u32, u32)> = s.text_cells(|i| i == xi).map(|(at, _)| (at.row, at.col)).collect();
        let full: Vec<(u32, u32)> = s.cells().iter().filter(|c| c.value == x).map(|c| (c.row, c.col)).collect();
        assert_eq!(fast, full);
        assert_eq!(fast.len(), 9);
        assert_eq!(s.text_cells(|_| true).count(), 12);
    }

    #[test]
    fn kind_counts_and_error_cells_match_a_full_decode() {
        // Both payload widths: a sheet of short decimals packs narrow, one of full-precision
        // numbers packs wide.
        for wide in [false, true] {
            let mut b = SheetBuilder::new("S".into());
            let t = b.intern("t");
            let mut x: u64 = 0x2545_F491_4F6C_DD1D;
            for r in [0u32, 2, 3, 7, 100] {
                for c in 0..40u32 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let n = if wide { f64::from_bits((x >> 12) | 0x3FF0_0000_0000_0000) } else { f64::from(c) / 4.0 };
                    let v = match x % 8 {
                        0 => Value::Bool(x.is_multiple_of(3)),
                        1 => Value::Error(if x.is_multiple_of(2) { CellError::Div0 } else { CellError::NA }),
                        2 => t,
                        3 => Value::Date(45_000.0 + f64::from(c)),
                        4 => Value::Duration(0.5),
                        5 => Value::Empty,
                        _ => Value::Number(n),
                    };
                    b.push(r, c, v);
                }
            }
            let s = b.finish(vec![]);
            let mut full = KindCounts::default();
            let mut full_errors = Vec::new();
            for c in s.cells() {
                match c.value {
                    Value::Empty => full.empty += 1,
                    Value::Bool(_) => full.bool += 1,
                    Value::Error(e) => {
                        full.error += 1;
                        full_errors.push((c.row, c.col, e));
                    }
                    Value::Text(_) => full.text += 1,
                    Value::Number(_) => full.number += 1,
                    Value::Date(_) => full.date += 1,
                    Value::Duration(_) => full.duration += 1,
                }
            }
            let mut checks = 0;
            let fast = s.kind_counts::<()>(|| {
                checks += 1;
                Ok(())
            });
            assert_eq!(fast, Ok(full), "wide payloads: {wide}");
            assert!(checks >= 1 && full.number > 0 && full.error > 0 && full.empty > 0);
            let errors: Vec<_> = s.error_cells().map(|(at, e)| (at.row, at.col, e)).collect();
            assert_eq!(errors, full_errors);
            assert_eq!(s.kind_counts(|| Err("stopped")), Err("stopped"));
        }
    }

    #[test]
    fn values_survive_packing_bit_for_bit() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut values = vec![
            Value::Number(0.0),
            Value::Number(-0.0),
            Value::Number(64.53),
            Value::Number(-7898.47),
            Value::Number(0.1 + 0.2),
            Value::Number(1e300),
            Value::Number(f64::INFINITY),
            Value::Number(2_147_483_647.0),
            Value::Number(-2_147_483_648.0),
            Value::Number(2_147_483_648.0),
            Value::Date(45_292.0),
            Value::Date(45_292.5),
            Value::Duration(1.0 / 3.0),
            Value::Bool(true),
            Value::Bool(false),
            Value::Error(CellError::NA),
            Value::Error(CellError::GettingData),
            Value::Text(7),
        ];
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = f64::from_bits(x);
            if n.is_finite() {
                values.push(Value::Number(n));
            }
            values.push(Value::Number((x % 100_000_000) as f64 / 100.0));
            values.push(Value::Date((x % 3_000_000) as f64 / 1_000.0));
        }
        let mut b = SheetBuilder::new("P".into());
        for (i, v) in values.iter().enumerate() {
            b.push(i as u32 / 7, i as u32 % 7, *v);
        }
        let s = b.finish(vec![]);
        for (i, v) in values.iter().enumerate() {
            let got = s.get(i as u32 / 7, i as u32 % 7);
            match (got.as_number(), v.as_number()) {
                (Some(a), Some(b)) => {
                    assert_eq!(a.to_bits(), b.to_bits(), "{v:?}");
                    assert_eq!(got.type_name(), v.type_name());
                }
                _ => assert_eq!(got, *v),
            }
        }
        assert!(matches!(s.payload, Payload::Narrow { .. }), "a third of the numbers are wide: narrow payloads");
        assert!(s.cell_bytes() as f64 / s.cell_count() as f64 <= 12.0);
    }

    #[test]
    fn mostly_wide_numbers_switch_to_eight_byte_payloads() {
        let mut b = SheetBuilder::new("W".into());
        for r in 0..1000u32 {
            for c in 0..8 {
                b.push(r, c, Value::Number(f64::from(r * 8 + c) / 3.0));
            }
        }
        let s = b.finish(vec![]);
        assert!(matches!(s.payload, Payload::Wide(_)));
        assert_eq!(s.get(10, 2), Value::Number(82.0 / 3.0));
        let per_cell = s.cell_bytes() as f64 / s.cell_count() as f64;
        assert!(per_cell <= 12.0, "{per_cell}");
    }

    #[test]
    fn out_of_order_cells_are_sorted_and_the_last_repeat_wins() {
        let mut b = SheetBuilder::new("U".into());
        b.push(0, 0, Value::Number(1.0));
        b.push(1, 0, Value::Number(2.0));
        b.push(0, 1, Value::Number(3.0));
        b.push(1, 0, Value::Number(4.0));
        let s = b.finish(vec![]);
        let cells: Vec<(u32, u32, Value)> = s.cells().iter().map(|c| (c.row, c.col, c.value)).collect();
        assert_eq!(cells, vec![(0, 0, Value::Number(1.0)), (0, 1, Value::Number(3.0)), (1, 0, Value::Number(4.0))]);
    }

    #[test]
    fn cells_outside_the_grid_are_refused_not_stored() {
        let mut b = SheetBuilder::new("G".into());
        b.push(0, 0, Value::Number(1.0));
        b.push(MAX_ROWS, 0, Value::Number(2.0));
        b.push(5, MAX_COLS, Value::Number(3.0));
        assert_eq!(b.outside(), Some((MAX_ROWS, 0)));
        assert_eq!(b.finish(vec![]).cell_count(), 1);
    }

    #[test]
    fn a_snapshot_holds_the_complete_rows_only() {
        let mut b = SheetBuilder::new("S".into());
        for r in 0..10u32 {
            for c in 0..3 {
                b.push(r, c, Value::Number(f64::from(r)));
            }
            if r == 4 {
                b.push_formula(4, 3, "A5*2");
            }
        }
        let s = b.snapshot(5).unwrap();
        assert_eq!(s.cell_count(), 16, "rows 1-5 and the formula cell");
        assert_eq!(s.used.unwrap().to_string(), "A1:D5");
        assert_eq!(s.get(4, 0), Value::Number(4.0));
        assert_eq!(s.get(5, 0), Value::Empty);
        let full = b.finish(vec![]);
        assert_eq!(full.cell_count(), 31);
    }

    #[test]
    fn rows_views_search_and_span() {
        let mut b = SheetBuilder::new("R".into());
        for c in [1u32, 3, 5, 9] {
            b.push(3, c, Value::Number(f64::from(c)));
        }
        let s = b.finish(vec![]);
        let r = s.row(3);
        assert_eq!(r.len(), 4);
        assert_eq!(r.get(5), Value::Number(5.0));
        assert_eq!(r.get(4), Value::Empty);
        let sp = s.row_span(3, 2, 6);
        assert_eq!(sp.iter().map(|c| c.col).collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(sp.first().map(|c| c.col), Some(3));
        assert_eq!(s.row(2).len(), 0);
        assert_eq!(s.row(99).len(), 0);
    }
}
