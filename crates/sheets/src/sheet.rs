//! A loaded sheet: non-empty cells in row-major order (compressed rows), formulas beside them,
//! a string pool, merged ranges. Built once by the loader, then shared read-only.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::address::{CellRef, Rect};
use crate::regions::Region;
use crate::value::{self, Value};

#[derive(Debug, Clone, Copy)]
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

#[derive(Debug)]
pub struct Sheet {
    pub name: String,
    cells: Vec<Cell>,
    /// `row_index[i]..row_index[i+1]` are the cells of row `first_row + i`.
    row_index: Vec<u32>,
    first_row: u32,
    pub strings: Vec<Arc<str>>,
    formulas: Vec<Formula>,
    pub merged: Vec<Rect>,
    pub used: Option<Rect>,
    pub(crate) regions: OnceLock<Arc<Vec<Region>>>,
    lower_strings: OnceLock<Vec<Box<str>>>,
}

impl Sheet {
    pub fn empty(name: &str) -> Self {
        SheetBuilder::new(name.to_string()).finish(Vec::new())
    }

    pub fn cell_count(&self) -> usize {
        self.cells.len()
    }

    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    pub fn formulas(&self) -> &[Formula] {
        &self.formulas
    }

    /// Cells of one row, sorted by column.
    pub fn row(&self, row: u32) -> &[Cell] {
        if row < self.first_row {
            return &[];
        }
        let i = (row - self.first_row) as usize;
        match (self.row_index.get(i), self.row_index.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.cells[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Cells of one row within columns `left..=right`.
    pub fn row_span(&self, row: u32, left: u32, right: u32) -> &[Cell] {
        let r = self.row(row);
        let a = r.partition_point(|c| c.col < left);
        let b = r.partition_point(|c| c.col <= right);
        &r[a..b.max(a)]
    }

    pub fn get(&self, row: u32, col: u32) -> Value {
        let r = self.row(row);
        match r.binary_search_by_key(&col, |c| c.col) {
            Ok(i) => r[i].value,
            Err(_) => Value::Empty,
        }
    }

    /// Iterate the stored cells inside `rect`, row-major.
    pub fn cells_in(&self, rect: Rect) -> impl Iterator<Item = &Cell> + '_ {
        let (top, bottom) = match self.used {
            Some(u) => (rect.top.max(u.top), rect.bottom.min(u.bottom)),
            None => (1, 0),
        };
        (top..=bottom).flat_map(move |r| self.row_span(r, rect.left, rect.right).iter())
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

    /// Approximate heap bytes held, for the cache's accounting.
    pub fn heap_bytes(&self) -> usize {
        self.cells.capacity() * std::mem::size_of::<Cell>()
            + self.row_index.capacity() * 4
            + self.strings.iter().map(|s| s.len() + 32).sum::<usize>()
            + self.formulas.iter().map(|f| f.text.len() + 48).sum::<usize>()
            + self.merged.len() * std::mem::size_of::<Rect>()
            + self.name.len()
            + 256
    }
}

/// Accumulates cells while a sheet streams in; strings are interned.
pub struct SheetBuilder {
    name: String,
    cells: Vec<Cell>,
    sorted: bool,
    strings: Vec<Arc<str>>,
    by_content: HashMap<Arc<str>, u32>,
    /// Shared-string pool entries seen before, by address: one hash of a pointer, no hashing of text.
    by_addr: HashMap<usize, u32>,
    formulas: Vec<Formula>,
    pub merged: Vec<Rect>,
}

impl SheetBuilder {
    pub fn new(name: String) -> Self {
        Self {
            name,
            cells: Vec::new(),
            sorted: true,
            strings: Vec::new(),
            by_content: HashMap::new(),
            by_addr: HashMap::new(),
            formulas: Vec::new(),
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
        self.cells.reserve(n);
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn push(&mut self, row: u32, col: u32, value: Value) {
        if let Some(last) = self.cells.last()
            && (last.row, last.col) >= (row, col)
        {
            self.sorted = false;
        }
        self.cells.push(Cell { row, col, value });
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
        if let Some(&i) = self.by_content.get(s) {
            return Value::Text(i);
        }
        let i = self.strings.len() as u32;
        let a: Arc<str> = Arc::from(s);
        self.strings.push(a.clone());
        self.by_content.insert(a, i);
        Value::Text(i)
    }

    pub fn push_formula(&mut self, row: u32, col: u32, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let text = text.strip_prefix('=').unwrap_or(text);
        self.formulas.push(Formula { at: CellRef::new(row, col), text: Arc::from(text) });
    }

    pub fn finish(mut self, merged: Vec<Rect>) -> Sheet {
        if !self.sorted {
            self.cells.sort_unstable_by_key(|c| (c.row, c.col));
            self.cells.dedup_by_key(|c| (c.row, c.col));
        }
        self.formulas.sort_by_key(|f| (f.at.row, f.at.col));
        self.formulas.dedup_by_key(|f| (f.at.row, f.at.col));
        // A formula cell with no cached value still occupies the grid: keep an Empty cell for it
        // so region detection and paging see it.
        let missing: Vec<Cell> = self
            .formulas
            .iter()
            .filter(|f| self.cells.binary_search_by_key(&(f.at.row, f.at.col), |c| (c.row, c.col)).is_err())
            .map(|f| Cell { row: f.at.row, col: f.at.col, value: Value::Empty })
            .collect();
        if !missing.is_empty() {
            self.cells.extend(missing);
            self.cells.sort_unstable_by_key(|c| (c.row, c.col));
        }
        self.cells.shrink_to_fit();
        let mut used: Option<Rect> = None;
        let (mut left, mut right) = (u32::MAX, 0u32);
        for c in &self.cells {
            left = left.min(c.col);
            right = right.max(c.col);
        }
        let first_row = self.cells.first().map(|c| c.row).unwrap_or(0);
        let last_row = self.cells.last().map(|c| c.row).unwrap_or(0);
        let mut row_index = Vec::new();
        if !self.cells.is_empty() {
            used = Some(Rect::new(first_row, left, last_row, right));
            let nrows = (last_row - first_row + 1) as usize;
            row_index.reserve_exact(nrows + 1);
            let mut i = 0usize;
            for r in first_row..=last_row {
                row_index.push(i as u32);
                while i < self.cells.len() && self.cells[i].row == r {
                    i += 1;
                }
            }
            row_index.push(self.cells.len() as u32);
        }
        Sheet {
            name: self.name,
            cells: self.cells,
            row_index,
            first_row,
            strings: self.strings,
            formulas: self.formulas,
            merged,
            used,
            regions: OnceLock::new(),
            lower_strings: OnceLock::new(),
        }
    }
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
}
