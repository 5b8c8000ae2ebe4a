//! A1-style addresses: cells, rectangles, whole rows and columns, sheet prefixes.
//! Rows and columns are 0-based inside, 1-based / lettered at the boundary.

use std::fmt;

/// Excel's grid limits.
pub const MAX_ROWS: u32 = 1_048_576;
pub const MAX_COLS: u32 = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellRef {
    pub row: u32,
    pub col: u32,
}

impl CellRef {
    pub fn new(row: u32, col: u32) -> Self {
        Self { row, col }
    }
}

impl fmt::Display for CellRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_col(f, self.col)?;
        write!(f, "{}", self.row + 1)
    }
}

/// An inclusive rectangle of cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rect {
    pub top: u32,
    pub left: u32,
    pub bottom: u32,
    pub right: u32,
}

impl Rect {
    pub fn new(top: u32, left: u32, bottom: u32, right: u32) -> Self {
        Self { top: top.min(bottom), left: left.min(right), bottom: top.max(bottom), right: left.max(right) }
    }

    /// Cut at the last row and column of `used` (the cells below and right of it are empty),
    /// never short of its own first row and column.
    pub fn cut_to(self, used: Option<Rect>) -> Rect {
        let used = used.unwrap_or(Rect::new(0, 0, 0, 0));
        Rect::new(
            self.top,
            self.left,
            self.bottom.min(used.bottom.max(self.top)),
            self.right.min(used.right.max(self.left)),
        )
    }
    pub fn cell(c: CellRef) -> Self {
        Self::new(c.row, c.col, c.row, c.col)
    }
    pub fn height(&self) -> u32 {
        self.bottom - self.top + 1
    }
    pub fn width(&self) -> u32 {
        self.right - self.left + 1
    }
    pub fn area(&self) -> u64 {
        u64::from(self.height()) * u64::from(self.width())
    }
    pub fn contains(&self, row: u32, col: u32) -> bool {
        row >= self.top && row <= self.bottom && col >= self.left && col <= self.right
    }
    pub fn intersects(&self, o: &Rect) -> bool {
        self.top <= o.bottom && o.top <= self.bottom && self.left <= o.right && o.left <= self.right
    }
    pub fn intersect(&self, o: &Rect) -> Option<Rect> {
        self.intersects(o).then(|| Rect {
            top: self.top.max(o.top),
            left: self.left.max(o.left),
            bottom: self.bottom.min(o.bottom),
            right: self.right.min(o.right),
        })
    }
    pub fn union(&self, o: &Rect) -> Rect {
        Rect {
            top: self.top.min(o.top),
            left: self.left.min(o.left),
            bottom: self.bottom.max(o.bottom),
            right: self.right.max(o.right),
        }
    }
    pub fn top_left(&self) -> CellRef {
        CellRef::new(self.top, self.left)
    }
}

impl fmt::Display for Rect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.top == self.bottom && self.left == self.right {
            return write!(f, "{}", self.top_left());
        }
        write!(f, "{}:{}", self.top_left(), CellRef::new(self.bottom, self.right))
    }
}

pub fn col_name(col: u32) -> String {
    let mut s = String::new();
    let _ = write_col(&mut s, col);
    s
}

fn write_col(f: &mut impl fmt::Write, col: u32) -> fmt::Result {
    let mut buf = [0u8; 4];
    let mut n = col + 1;
    let mut i = buf.len();
    while n > 0 {
        i -= 1;
        buf[i] = b'A' + ((n - 1) % 26) as u8;
        n = (n - 1) / 26;
    }
    f.write_str(std::str::from_utf8(&buf[i..]).unwrap_or("?"))
}

/// Parse column letters ("A", "xfd") into a 0-based index.
pub fn parse_col(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 3 {
        return None;
    }
    let mut n: u32 = 0;
    for b in s.bytes() {
        if !b.is_ascii_alphabetic() {
            return None;
        }
        n = n * 26 + u32::from(b.to_ascii_uppercase() - b'A' + 1);
    }
    (1..=MAX_COLS).contains(&n).then(|| n - 1)
}

fn parse_row(s: &str) -> Option<u32> {
    let n: u32 = s.parse().ok()?;
    (1..=MAX_ROWS).contains(&n).then(|| n - 1)
}

/// Parse "A1" / "$A$1".
pub fn parse_cell(s: &str) -> Option<CellRef> {
    let s = s.trim().replace('$', "");
    let split = s.find(|c: char| c.is_ascii_digit())?;
    let (letters, digits) = s.split_at(split);
    Some(CellRef::new(parse_row(digits)?, parse_col(letters)?))
}

/// One end of a range: a cell, a bare column ("A") or a bare row ("3").
enum End {
    Cell(CellRef),
    Col(u32),
    Row(u32),
}

fn parse_end(s: &str) -> Option<End> {
    let t = s.trim().replace('$', "");
    if t.is_empty() {
        return None;
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return parse_row(&t).map(End::Row);
    }
    if t.bytes().all(|b| b.is_ascii_alphabetic()) {
        return parse_col(&t).map(End::Col);
    }
    parse_cell(&t).map(End::Cell)
}

/// Parse "A1", "A1:C9", "A:C", "2:5" into a rectangle. Whole rows/columns are clipped to `bounds`
/// (normally the sheet's used range) so they never mean a million cells.
pub fn parse_range(s: &str, bounds: Option<Rect>) -> Option<Rect> {
    let (a, b) = match s.split_once(':') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let (a, b) = (parse_end(a)?, parse_end(b)?);
    let bounds = bounds.unwrap_or(Rect::new(0, 0, 0, 0));
    Some(match (a, b) {
        (End::Cell(x), End::Cell(y)) => Rect::new(x.row, x.col, y.row, y.col),
        (End::Col(x), End::Col(y)) => Rect::new(bounds.top, x, bounds.bottom, y),
        (End::Row(x), End::Row(y)) => Rect::new(x, bounds.left, y, bounds.right),
        _ => return None,
    })
}

/// Split "Sheet1!A1:B2" or "'My Sheet'!A1" into (Some(sheet), range).
pub fn split_sheet(s: &str) -> (Option<String>, &str) {
    match s.rfind('!') {
        Some(i) => {
            let sheet = s[..i].trim();
            let sheet = sheet
                .strip_prefix('\'')
                .and_then(|x| x.strip_suffix('\''))
                .map(|x| x.replace("''", "'"))
                .unwrap_or_else(|| sheet.to_string());
            (Some(sheet), &s[i + 1..])
        }
        None => (None, s),
    }
}

/// Quote a sheet name for a reference when needed.
pub fn quote_sheet(name: &str) -> String {
    if name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.') && !name.is_empty() {
        name.to_string()
    } else {
        format!("'{}'", name.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_round_trip() {
        for c in [0, 1, 25, 26, 27, 51, 52, 701, 702, 16_383] {
            assert_eq!(parse_col(&col_name(c)), Some(c), "col {c}");
        }
        assert_eq!(col_name(0), "A");
        assert_eq!(col_name(26), "AA");
        assert_eq!(col_name(16_383), "XFD");
        assert_eq!(parse_col("XFE"), None);
    }

    #[test]
    fn ranges_parse() {
        let b = Rect::new(0, 0, 99, 9);
        assert_eq!(parse_range("B3:F40", None).unwrap().to_string(), "B3:F40");
        assert_eq!(parse_range("$b$3", None).unwrap().to_string(), "B3");
        assert_eq!(parse_range("C:D", Some(b)).unwrap().to_string(), "C1:D100");
        assert_eq!(parse_range("2:3", Some(b)).unwrap().to_string(), "A2:J3");
        assert_eq!(parse_range("F40:B3", None).unwrap().to_string(), "B3:F40");
        assert!(parse_range("A0", None).is_none());
        assert!(parse_range("hello world", None).is_none());
        assert!(parse_range("A:3", Some(b)).is_none());
    }

    #[test]
    fn sheet_prefixes() {
        assert_eq!(split_sheet("'My ''x'' Sheet'!A1"), (Some("My 'x' Sheet".into()), "A1"));
        assert_eq!(split_sheet("Data!B2:C3"), (Some("Data".into()), "B2:C3"));
        assert_eq!(split_sheet("B2"), (None, "B2"));
        assert_eq!(quote_sheet("My Sheet"), "'My Sheet'");
    }
}
