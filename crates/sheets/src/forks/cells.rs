//! What an edit writes into a cell, the shorthand agents use to say it (`"A1=100"`,
//! `"B2==SUM(A1:A2)"`), and the parse check every formula passes before it is accepted.

use serde::{Deserialize, Serialize};

use crate::address::{CellRef, col_name, parse_cell, split_sheet};
use crate::error::{Result, SheetsError};
use crate::value::{CellError, Value};

/// A cell value owned outside any sheet's string pool (edits, recalculated results).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v", rename_all = "lowercase")]
pub enum Scalar {
    Empty,
    Number(f64),
    Text(String),
    Bool(bool),
    /// An error value such as `#DIV/0!`.
    Error(String),
}

impl Scalar {
    /// The owned form of a sheet value.
    pub fn from_value(v: &Value, pool: &[std::sync::Arc<str>]) -> Self {
        match v {
            Value::Empty => Scalar::Empty,
            Value::Number(n) | Value::Date(n) | Value::Duration(n) => Scalar::Number(*n),
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Text(i) => Scalar::Text(pool.get(*i as usize).map(|s| s.to_string()).unwrap_or_default()),
            Value::Error(e) => Scalar::Error(e.as_str().to_string()),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Scalar::Empty => serde_json::Value::Null,
            Scalar::Number(n) => {
                serde_json::Number::from_f64(crate::value::excel_round(*n)).map_or(serde_json::Value::Null, Into::into)
            }
            Scalar::Text(s) | Scalar::Error(s) => serde_json::Value::String(s.clone()),
            Scalar::Bool(b) => serde_json::Value::Bool(*b),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Scalar::Error(_))
    }

    /// Equal as a spreadsheet would judge a recomputed value: numbers within 1e-9 relative,
    /// an empty string the same as an empty cell.
    pub fn same_as(&self, other: &Scalar) -> bool {
        match (self, other) {
            (Scalar::Number(a), Scalar::Number(b)) => {
                let scale = a.abs().max(b.abs());
                (a - b).abs() <= 1e-9 * scale || (a - b).abs() < 1e-12
            }
            (Scalar::Empty, Scalar::Text(s)) | (Scalar::Text(s), Scalar::Empty) => s.is_empty(),
            (a, b) => a == b,
        }
    }
}

/// The error value for a text such as `#N/A`, if it is one.
pub fn error_kind(s: &str) -> Option<CellError> {
    Some(match s {
        "#DIV/0!" => CellError::Div0,
        "#N/A" => CellError::NA,
        "#NAME?" => CellError::Name,
        "#NULL!" => CellError::Null,
        "#NUM!" => CellError::Num,
        "#REF!" => CellError::Ref,
        "#VALUE!" => CellError::Value,
        "#DATA!" | "#GETTING_DATA" => CellError::GettingData,
        _ => return None,
    })
}

/// What an edit puts into a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Input {
    /// A constant (Empty clears the cell's content, keeping its style).
    Value { v: Scalar },
    /// A formula, stored without its leading `=`.
    Formula { f: String },
}

impl Input {
    pub fn formula(&self) -> Option<&str> {
        match self {
            Input::Formula { f } => Some(f),
            Input::Value { .. } => None,
        }
    }

    /// How the input reads back to an agent: the value, or the formula with its `=`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Input::Value { v } => v.to_json(),
            Input::Formula { f } => serde_json::Value::String(format!("={f}")),
        }
    }
}

// One edit: `"A1=100"`, or `{"cell": "A1", "value": 1}` / `{"cell": "A1", "formula": "=B1*2"}`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum EditSpec {
    Shorthand(String),
    Cell {
        cell: String,
        #[serde(default)]
        #[schemars(schema_with = "crate::tools::cell_schema")]
        value: Option<serde_json::Value>,
        #[serde(default)]
        formula: Option<String>,
    },
}

/// An edit resolved to a cell and what it writes.
#[derive(Debug, Clone)]
pub struct Edit {
    pub sheet: Option<String>,
    pub at: CellRef,
    pub input: Input,
}

/// Turn text typed after `=` into a constant: numbers, TRUE/FALSE, error values, else text.
/// A leading `'` forces text (`'007` stays "007").
pub fn parse_constant(s: &str) -> Scalar {
    if s.is_empty() {
        return Scalar::Empty;
    }
    if let Some(t) = s.strip_prefix('\'') {
        return Scalar::Text(t.to_string());
    }
    let trimmed = s.trim();
    if trimmed.eq_ignore_ascii_case("true") {
        return Scalar::Bool(true);
    }
    if trimmed.eq_ignore_ascii_case("false") {
        return Scalar::Bool(false);
    }
    if error_kind(trimmed).is_some() {
        return Scalar::Error(trimmed.to_string());
    }
    let looks_numeric = trimmed.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        && trimmed.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric
        && let Ok(n) = trimmed.parse::<f64>()
        && n.is_finite()
    {
        return Scalar::Number(n);
    }
    if let Some(p) = trimmed.strip_suffix('%')
        && let Ok(n) = p.trim().parse::<f64>()
        && n.is_finite()
    {
        return Scalar::Number(n / 100.0);
    }
    Scalar::Text(s.to_string())
}

fn json_constant(field: &'static str, v: &serde_json::Value) -> Result<Scalar> {
    Ok(match v {
        serde_json::Value::Null => Scalar::Empty,
        serde_json::Value::Bool(b) => Scalar::Bool(*b),
        serde_json::Value::Number(n) => Scalar::Number(
            n.as_f64()
                .ok_or_else(|| SheetsError::invalid(field, format!("{n} is not a finite number a cell can hold")))?,
        ),
        serde_json::Value::String(s) => {
            if error_kind(s).is_some() {
                Scalar::Error(s.clone())
            } else {
                Scalar::Text(s.clone())
            }
        }
        other => {
            return Err(SheetsError::invalid(
                field,
                format!("{other} is not a cell value; use a number, text, true/false or null"),
            ));
        }
    })
}

fn parse_address(field: &'static str, s: &str) -> Result<(Option<String>, CellRef)> {
    let (sheet, a1) = split_sheet(s.trim());
    let at = parse_cell(a1.trim().trim_start_matches('$').replace('$', "").as_str()).ok_or_else(|| {
        SheetsError::invalid(field, format!("'{s}' does not start with a cell address; write edits like \"B3=42\""))
    })?;
    Ok((sheet, at))
}

impl EditSpec {
    /// Resolve one edit, with a clear error naming the edit that is wrong.
    pub fn resolve(&self, index: usize) -> Result<Edit> {
        const FIELD: &str = "edits";
        let with_index = |e: SheetsError| match e {
            SheetsError::InvalidArgument { message, .. } => {
                SheetsError::invalid(FIELD, format!("edit #{}: {message}", index + 1))
            }
            other => other,
        };
        match self {
            EditSpec::Shorthand(s) => {
                let Some(eq) = s.find('=') else {
                    return Err(with_index(SheetsError::invalid(
                        FIELD,
                        format!(
                            "'{s}' has no '='; write \"A1=100\" for a value, \"A1==SUM(B1:B9)\" for a formula, \"A1=\" to clear"
                        ),
                    )));
                };
                let (addr, rest) = (&s[..eq], &s[eq + 1..]);
                check_text_length(rest).map_err(with_index)?;
                let (sheet, at) = parse_address(FIELD, addr).map_err(with_index)?;
                let input = match rest.strip_prefix('=') {
                    Some(f) => Input::Formula { f: check_formula(f).map_err(with_index)? },
                    None => Input::Value { v: parse_constant(rest) },
                };
                Ok(Edit { sheet, at, input })
            }
            EditSpec::Cell { cell, value, formula } => {
                let (sheet, at) = parse_address(FIELD, cell).map_err(with_index)?;
                let input = match (formula, value) {
                    (Some(_), Some(_)) => {
                        return Err(with_index(SheetsError::invalid(
                            FIELD,
                            format!("{cell} has both a value and a formula; give one"),
                        )));
                    }
                    (Some(f), None) => Input::Formula { f: check_formula(f).map_err(with_index)? },
                    (None, Some(v)) => {
                        if let Some(t) = v.as_str() {
                            check_text_length(t).map_err(with_index)?;
                        }
                        Input::Value { v: json_constant(FIELD, v).map_err(with_index)? }
                    }
                    (None, None) => Input::Value { v: Scalar::Empty },
                };
                Ok(Edit { sheet, at, input })
            }
        }
    }
}

/// Excel's limit on the characters of one cell.
pub const MAX_CELL_CHARS: usize = 32_767;

fn check_text_length(s: &str) -> Result<()> {
    let n = s.chars().count();
    if n > MAX_CELL_CHARS {
        return Err(SheetsError::invalid(
            "edits",
            format!("the value has {n} characters; a cell holds at most {MAX_CELL_CHARS} — split it over cells"),
        ));
    }
    Ok(())
}

/// Check a formula's syntax well enough to catch what agents get wrong (unbalanced parentheses
/// or quotes, a dangling operator, an empty formula) and return it without its `=`.
pub fn check_formula(text: &str) -> Result<String> {
    const FIELD: &str = "formula";
    let f = text.trim();
    let f = f.strip_prefix('=').unwrap_or(f).trim();
    if f.is_empty() {
        return Err(SheetsError::invalid(FIELD, "the formula is empty; write it like =SUM(A1:A9)"));
    }
    if f.len() > 8192 {
        return Err(SheetsError::invalid(
            FIELD,
            format!("the formula is {} characters; Excel's limit is 8192", f.len()),
        ));
    }
    let mut depth: i32 = 0;
    let mut chars = f.char_indices().peekable();
    let mut last_significant = ' ';
    while let Some((i, c)) = chars.next() {
        match c {
            // A text literal ("..."), or a quoted sheet name ('...'); a doubled quote inside is
            // an escaped one.
            '"' | '\'' if !skip_quoted(&mut chars, c) => {
                let what = if c == '"' { "a text literal" } else { "a quoted sheet name" };
                return Err(SheetsError::invalid(
                    FIELD,
                    format!("'={f}' has {what} opened at character {} that is never closed", i + 1),
                ));
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SheetsError::invalid(
                        FIELD,
                        format!("'={f}' closes a parenthesis at character {} that was never opened", i + 1),
                    ));
                }
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_significant = c;
        }
    }
    if depth > 0 {
        return Err(SheetsError::invalid(FIELD, format!("'={f}' leaves {depth} parenthesis(es) open; close them")));
    }
    if "+-*/^&=<>,(".contains(last_significant) {
        return Err(SheetsError::invalid(
            FIELD,
            format!("'={f}' ends with '{last_significant}'; the formula is incomplete"),
        ));
    }
    Ok(f.to_string())
}

/// Move past a quoted run whose opening quote `q` was just read; false if it never closes.
fn skip_quoted(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, q: char) -> bool {
    while let Some((_, d)) = chars.next() {
        if d == q {
            if chars.peek().map(|(_, n)| *n) == Some(q) {
                chars.next();
            } else {
                return true;
            }
        }
    }
    false
}

/// `A1`-style name of a cell.
pub fn a1(at: CellRef) -> String {
    format!("{}{}", col_name(at.col), at.row + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<Edit> {
        EditSpec::Shorthand(s.into()).resolve(0)
    }

    #[test]
    fn shorthand_values_formulas_and_clears() {
        let e = one("B3=100").unwrap();
        assert_eq!((e.at.row, e.at.col), (2, 1));
        assert_eq!(e.input, Input::Value { v: Scalar::Number(100.0) });
        assert_eq!(one("A1==SUM(B1:B2)").unwrap().input, Input::Formula { f: "SUM(B1:B2)".into() });
        assert_eq!(one("A1=").unwrap().input, Input::Value { v: Scalar::Empty });
        assert_eq!(one("A1='007").unwrap().input, Input::Value { v: Scalar::Text("007".into()) });
        assert_eq!(one("A1=true").unwrap().input, Input::Value { v: Scalar::Bool(true) });
        assert_eq!(one("A1=12.5%").unwrap().input, Input::Value { v: Scalar::Number(0.125) });
        assert_eq!(one("A1=hello = world").unwrap().input, Input::Value { v: Scalar::Text("hello = world".into()) });
        let e = one("'My Sheet'!C2=x").unwrap();
        assert_eq!(e.sheet.as_deref(), Some("My Sheet"));
    }

    #[test]
    fn bad_edits_say_what_to_do() {
        let e = one("B3").unwrap_err().to_string();
        assert!(e.contains("edit #1") && e.contains("A1=100"), "{e}");
        let e = one("ZZ=1").unwrap_err().to_string();
        assert!(e.contains("cell address"), "{e}");
        let e = one("A1==SUM(B1:B2").unwrap_err().to_string();
        assert!(e.contains("open"), "{e}");
        let e = one("A1==1+").unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
        let e = one("A1==\"abc").unwrap_err().to_string();
        assert!(e.contains("never closed"), "{e}");
        assert!(one("A1==IF(A2=\"a)\",1,2)").is_ok(), "parentheses inside text do not count");
    }

    #[test]
    fn recomputed_values_compare_like_a_spreadsheet() {
        assert!(Scalar::Number(1.0).same_as(&Scalar::Number(1.0 + 1e-12)));
        assert!(!Scalar::Number(1.0).same_as(&Scalar::Number(1.0001)));
        assert!(Scalar::Empty.same_as(&Scalar::Text(String::new())));
        assert!(!Scalar::Error("#N/A".into()).same_as(&Scalar::Text("#N/A".into())));
    }
}
