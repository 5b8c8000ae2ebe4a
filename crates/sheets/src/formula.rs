//! A small formula scanner: enough of Excel's grammar to find references (cells, ranges, whole
//! rows/columns, sheet-qualified), defined names and function calls, and to rewrite references
//! in relative (R1C1-like) form so copies of one formula group together.

use crate::address::{MAX_COLS, MAX_ROWS, Rect, parse_col};

/// One end of a reference; `None` means "whole" (a column ref has no row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefEnd {
    pub row: Option<(u32, bool)>,
    pub col: Option<(u32, bool)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Token<'a> {
    Function(&'a str),
    Ref { span: (usize, usize), sheet: Option<String>, a: RefEnd, b: Option<RefEnd> },
    Name(&'a str),
}

impl Token<'_> {
    /// The rectangle a reference covers (whole rows/columns span the grid).
    pub fn rect(&self) -> Option<Rect> {
        let Token::Ref { a, b, .. } = self else {
            return None;
        };
        let b = b.unwrap_or(*a);
        let (r0, r1) = match (a.row, b.row) {
            (Some((x, _)), Some((y, _))) => (x, y),
            _ => (0, MAX_ROWS - 1),
        };
        let (c0, c1) = match (a.col, b.col) {
            (Some((x, _)), Some((y, _))) => (x, y),
            _ => (0, MAX_COLS - 1),
        };
        Some(Rect::new(r0, c0, r1, c1))
    }
}

fn parse_end(word: &str) -> Option<RefEnd> {
    let b = word.as_bytes();
    let mut i = 0;
    let col_abs = b.first() == Some(&b'$');
    if col_abs {
        i += 1;
    }
    let cs = i;
    while i < b.len() && b[i].is_ascii_alphabetic() {
        i += 1;
    }
    let letters = &word[cs..i];
    let row_abs = b.get(i) == Some(&b'$');
    if row_abs {
        i += 1;
    }
    let ds = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i != b.len() {
        return None;
    }
    let digits = &word[ds..i];
    let col = if letters.is_empty() { None } else { Some((parse_col(letters)?, col_abs)) };
    let row = if digits.is_empty() {
        None
    } else {
        let n: u32 = digits.parse().ok()?;
        if n == 0 || n > MAX_ROWS {
            return None;
        }
        Some((n - 1, if letters.is_empty() { col_abs } else { row_abs }))
    };
    if col.is_none() && row.is_none() {
        return None;
    }
    Some(RefEnd { row, col })
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'.' | b'\\') || c >= 0x80
}

/// Scan a formula (without the leading '='), calling `f` for each function, reference and name.
pub fn scan<'a>(formula: &'a str, mut f: impl FnMut(Token<'a>)) {
    let b = formula.as_bytes();
    let mut i = 0;
    let mut sheet: Option<String> = None;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'\'' => {
                let start = i + 1;
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                let name = formula.get(start..i.min(b.len())).unwrap_or("").replace("''", "'");
                i += 1;
                if b.get(i) == Some(&b'!') {
                    i += 1;
                    sheet = Some(name);
                }
                continue;
            }
            b'[' => {
                // External workbook or structured reference: skip the bracketed part.
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'[' {
                        depth += 1;
                    } else if b[i] == b']' {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            _ if is_word(c) => {
                let start = i;
                while i < b.len() && is_word(b[i]) {
                    i += 1;
                }
                let word = &formula[start..i];
                if b.get(i) == Some(&b'!') {
                    sheet = Some(word.to_string());
                    i += 1;
                    continue;
                }
                if b.get(i) == Some(&b'(') {
                    f(Token::Function(word));
                    sheet = None;
                    continue;
                }
                let starts_digit = c.is_ascii_digit();
                if let Some(a) = parse_end(word) {
                    // A range "A1:B2", "A:C" or "1:3".
                    let mut end = None;
                    let mut span_end = i;
                    if b.get(i) == Some(&b':') {
                        let s2 = i + 1;
                        let mut j = s2;
                        while j < b.len() && is_word(b[j]) {
                            j += 1;
                        }
                        if let Some(e) = parse_end(&formula[s2..j]) {
                            end = Some(e);
                            span_end = j;
                            i = j;
                        }
                    }
                    let whole_ok = end
                        .is_some_and(|e| (a.row.is_none() && e.row.is_none()) || (a.col.is_none() && e.col.is_none()));
                    let is_cell = a.row.is_some() && a.col.is_some();
                    if is_cell || whole_ok {
                        f(Token::Ref { span: (start, span_end), sheet: sheet.take(), a, b: end });
                        continue;
                    }
                    if starts_digit {
                        sheet = None;
                        continue;
                    }
                }
                if !starts_digit && !word.eq_ignore_ascii_case("TRUE") && !word.eq_ignore_ascii_case("FALSE") {
                    f(Token::Name(word));
                }
                sheet = None;
            }
            _ => {
                i += 1;
                sheet = None;
            }
        }
    }
}

/// Functions whose result changes on every recalculation, or that defeat dependency tracking.
pub const VOLATILE: [&str; 8] = ["NOW", "TODAY", "RAND", "RANDBETWEEN", "RANDARRAY", "OFFSET", "INDIRECT", "CELL"];

/// Volatile functions a formula calls (upper-case, de-duplicated).
pub fn volatile_calls(formula: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    scan(formula, |t| {
        if let Token::Function(name) = t {
            let n = name.trim_start_matches("_xlfn.");
            if let Some(v) = VOLATILE.iter().find(|v| v.eq_ignore_ascii_case(n))
                && !out.contains(v)
            {
                out.push(*v);
            }
        }
    });
    out
}

/// The formula with its relative references rewritten relative to (row, col): copies of one
/// formula down a column map to the same text.
pub fn relative_form(formula: &str, row: u32, col: u32) -> String {
    let mut out = String::with_capacity(formula.len() + 8);
    let mut last = 0;
    let rel = |e: &RefEnd| {
        let mut s = String::new();
        if let Some((r, abs)) = e.row {
            if abs {
                s.push_str(&format!("R{}", r + 1));
            } else {
                s.push_str(&format!("R[{}]", i64::from(r) - i64::from(row)));
            }
        }
        if let Some((c, abs)) = e.col {
            if abs {
                s.push_str(&format!("C{}", c + 1));
            } else {
                s.push_str(&format!("C[{}]", i64::from(c) - i64::from(col)));
            }
        }
        s
    };
    scan(formula, |t| {
        if let Token::Ref { span, a, b, .. } = t {
            out.push_str(&formula[last..span.0]);
            out.push_str(&rel(&a));
            if let Some(b) = b {
                out.push(':');
                out.push_str(&rel(&b));
            }
            last = span.1;
        }
    });
    out.push_str(&formula[last..]);
    out.to_uppercase()
}

/// The formula as it reads when copied `dr` rows and `dc` columns away (a fill): relative
/// references move, `$`-anchored ones stay. A reference pushed off the grid becomes `#REF!`.
pub fn shift(formula: &str, dr: i64, dc: i64) -> String {
    let mut out = String::with_capacity(formula.len() + 8);
    let mut last = 0;
    let end = |e: &RefEnd| -> Option<String> {
        let mut s = String::new();
        if let Some((c, abs)) = e.col {
            let c = if abs { i64::from(c) } else { i64::from(c) + dc };
            if !(0..i64::from(MAX_COLS)).contains(&c) {
                return None;
            }
            if abs {
                s.push('$');
            }
            s.push_str(&crate::address::col_name(c as u32));
        }
        if let Some((r, abs)) = e.row {
            let r = if abs { i64::from(r) } else { i64::from(r) + dr };
            if !(0..i64::from(MAX_ROWS)).contains(&r) {
                return None;
            }
            if abs {
                s.push('$');
            }
            s.push_str(&(r + 1).to_string());
        }
        Some(s)
    };
    scan(formula, |t| {
        if let Token::Ref { span, a, b, .. } = t {
            out.push_str(&formula[last..span.0]);
            let moved = match b {
                Some(b) => end(&a).zip(end(&b)).map(|(x, y)| format!("{x}:{y}")),
                None => end(&a),
            };
            out.push_str(moved.as_deref().unwrap_or("#REF!"));
            last = span.1;
        }
    });
    out.push_str(&formula[last..]);
    out
}

/// Which way a structural edit moves cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    Rows,
    Cols,
}

/// The formula (on sheet `host`) after `count` rows or columns were inserted (`count > 0`) or
/// deleted (`count < 0`) at 0-based index `at` of sheet `target`, the way Excel rewrites it:
/// references at or past the edit move (absolute ones too), a range spanning it grows or
/// shrinks, and a reference whose cells were all deleted becomes `#REF!`. Whole-column
/// references are untouched by row edits (and whole rows by column edits).
pub fn adjust_structure(formula: &str, host: &str, target: &str, axis: Axis, at: u32, count: i64) -> String {
    let mut out = String::with_capacity(formula.len() + 8);
    let mut last = 0;
    let at = i64::from(at);
    // New index of a single position; None when deleted.
    let one = |p: u32| -> Option<i64> {
        let p = i64::from(p);
        if count >= 0 {
            Some(if p >= at { p + count } else { p })
        } else if p < at {
            Some(p)
        } else if p < at - count {
            None
        } else {
            Some(p + count)
        }
    };
    let coord = |e: &RefEnd| match axis {
        Axis::Rows => e.row,
        Axis::Cols => e.col,
    };
    let render = |e: &RefEnd, new: Option<i64>| -> String {
        let mut e = *e;
        if let Some(n) = new {
            match axis {
                Axis::Rows => e.row = e.row.map(|(_, abs)| (n as u32, abs)),
                Axis::Cols => e.col = e.col.map(|(_, abs)| (n as u32, abs)),
            }
        }
        let mut s = String::new();
        if let Some((c, abs)) = e.col {
            if abs {
                s.push('$');
            }
            s.push_str(&crate::address::col_name(c));
        }
        if let Some((r, abs)) = e.row {
            if abs {
                s.push('$');
            }
            s.push_str(&(r + 1).to_string());
        }
        s
    };
    let limit = match axis {
        Axis::Rows => i64::from(MAX_ROWS),
        Axis::Cols => i64::from(MAX_COLS),
    };
    scan(formula, |t| {
        let Token::Ref { span, sheet, a, b } = t else { return };
        if !sheet.as_deref().unwrap_or(host).eq_ignore_ascii_case(target) {
            return;
        }
        let replacement = match (b, coord(&a)) {
            (_, None) => return, // a whole column (row) under a row (column) edit
            (None, Some((p, _))) => match one(p) {
                Some(n) if n < limit => render(&a, Some(n)),
                _ => "#REF!".to_string(),
            },
            (Some(b), Some((p0, _))) => {
                let Some((p1, _)) = coord(&b) else { return };
                let (lo, hi) = (p0.min(p1), p0.max(p1));
                let new_lo = if count >= 0 || i64::from(lo) < at { one(lo) } else { Some(one(lo).unwrap_or(at)) };
                let new_hi = one(hi).or_else(|| (at > 0).then_some(at - 1));
                match (new_lo, new_hi) {
                    (Some(l), Some(h)) if l <= h && h < limit => {
                        let (na, nb) = if p0 <= p1 { (l, h) } else { (h, l) };
                        format!("{}:{}", render(&a, Some(na)), render(&b, Some(nb)))
                    }
                    _ => "#REF!".to_string(),
                }
            }
        };
        out.push_str(&formula[last..span.0]);
        out.push_str(&replacement);
        last = span.1;
    });
    out.push_str(&formula[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structural_edits_move_references_like_excel() {
        let ins = |f: &str| adjust_structure(f, "S", "S", Axis::Rows, 4, 2); // 2 rows before row 5
        assert_eq!(ins("A4+A5+$B$9"), "A4+A7+$B$11");
        assert_eq!(ins("SUM(A1:A10)"), "SUM(A1:A12)", "a range across the insert grows");
        assert_eq!(ins("SUM(C:C)+Other!A9"), "SUM(C:C)+Other!A9", "whole columns and other sheets stay");
        assert_eq!(adjust_structure("S!A9*2", "X", "S", Axis::Rows, 4, 2), "S!A11*2");
        let del = |f: &str| adjust_structure(f, "S", "S", Axis::Rows, 4, -2); // delete rows 5-6
        assert_eq!(del("A5"), "#REF!");
        assert_eq!(del("A7+A4"), "A5+A4");
        assert_eq!(del("SUM(A1:A10)"), "SUM(A1:A8)", "a range across the delete shrinks");
        assert_eq!(del("SUM(A5:A6)"), "SUM(#REF!)");
        assert_eq!(del("SUM(A6:A9)"), "SUM(A5:A7)");
        assert_eq!(del("SUM(A2:A5)"), "SUM(A2:A4)");
        let cols = adjust_structure("B1+D1+SUM(A:C)+1:1", "S", "S", Axis::Cols, 1, 1); // insert before B
        assert_eq!(cols, "C1+E1+SUM(A:D)+1:1");
    }

    #[test]
    fn shifting_moves_relative_references_only() {
        assert_eq!(shift("A1*2+$B$1+SUM(C1:C3)", 2, 1), "B3*2+$B$1+SUM(D3:D5)");
        assert_eq!(shift("Data!A$1+$A2", 1, 1), "Data!B$1+$A3");
        assert_eq!(shift("A1", -1, 0), "#REF!");
        assert_eq!(shift("\"A1\"&A1", 1, 0), "\"A1\"&A2");
    }

    fn refs(f: &str) -> Vec<(Option<String>, String)> {
        let mut v = Vec::new();
        scan(f, |t| {
            if let Token::Ref { sheet, .. } = &t {
                v.push((sheet.clone(), t.rect().unwrap().to_string()));
            }
        });
        v
    }

    #[test]
    fn finds_references() {
        assert_eq!(
            refs("SUM(A1:B2)+'My Sheet'!$C$3*Data!D4"),
            vec![(None, "A1:B2".into()), (Some("My Sheet".into()), "C3".into()), (Some("Data".into()), "D4".into())]
        );
        assert_eq!(refs("SUM(A:A)")[0].1, "A1:A1048576");
        assert_eq!(refs("SUM(2:3)")[0].1, "A2:XFD3");
        assert!(refs("\"A1\"&LOG10(5)+1.5").is_empty(), "{:?}", refs("\"A1\"&LOG10(5)"));
        assert!(refs("Table1[Amount]").is_empty());
    }

    #[test]
    fn finds_names_and_functions() {
        let mut names = Vec::new();
        let mut funcs = Vec::new();
        scan("IF(TaxRate>0,NOW(),TRUE)", |t| match t {
            Token::Name(n) => names.push(n),
            Token::Function(n) => funcs.push(n),
            _ => {}
        });
        assert_eq!(names, vec!["TaxRate"]);
        assert_eq!(funcs, vec!["IF", "NOW"]);
        assert_eq!(volatile_calls("A1+RAND()*OFFSET(A1,1,1)+now()"), vec!["RAND", "OFFSET", "NOW"]);
    }

    #[test]
    fn relative_forms_group_copies() {
        assert_eq!(relative_form("B2*C2", 1, 3), relative_form("B3*C3", 2, 3));
        assert_ne!(relative_form("B2*$C$2", 1, 3), relative_form("B3*$C$3", 2, 3));
        assert_eq!(relative_form("SUM(A1:A9)", 9, 0), "SUM(R[-9]C[0]:R[-1]C[0])");
    }
}
