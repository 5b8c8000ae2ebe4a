//! Engine-neutral cell values and the equality rule of the benchmark.

use serde::{Deserialize, Serialize};

/// Relative tolerance for numbers: `|a-b| <= REL_TOL * max(|a|,|b|)`.
const REL_TOL: f64 = 1e-9;
/// Two numbers both smaller than this in magnitude are equal.
const ABS_ZERO: f64 = 1e-12;

/// A scalar cell value, as cached by Excel or as recomputed by an engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Value {
    Number(f64),
    Text(String),
    Bool(bool),
    /// Error code as Excel writes it, e.g. `#DIV/0!`.
    Error(String),
    Empty,
}

impl Value {
    /// Short name of the value's type, used to classify mismatches.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Number(_) => "number",
            Value::Text(_) => "text",
            Value::Bool(_) => "bool",
            Value::Error(_) => "error",
            Value::Empty => "empty",
        }
    }

    /// The kind, with the error code for errors (`error #NAME?`).
    pub fn kind_detail(&self) -> String {
        match self {
            Value::Error(code) => format!("error {code}"),
            other => other.kind().to_string(),
        }
    }
}

/// Whether a recomputed value equals the cached one under the benchmark's rule.
pub fn values_match(cached: &Value, computed: &Value) -> bool {
    match (cached, computed) {
        (Value::Number(a), Value::Number(b)) => numbers_match(*a, *b),
        (Value::Text(a), Value::Text(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Error(a), Value::Error(b)) => a == b,
        (Value::Empty, Value::Empty) => true,
        (Value::Empty, Value::Text(s)) | (Value::Text(s), Value::Empty) => s.is_empty(),
        _ => false,
    }
}

fn numbers_match(a: f64, b: f64) -> bool {
    if a.abs() < ABS_ZERO && b.abs() < ABS_ZERO {
        return true;
    }
    (a - b).abs() <= REL_TOL * a.abs().max(b.abs())
}

/// Functions whose value depends on when or how often the workbook is calculated; a cell
/// that calls one cannot be expected to reproduce Excel's cached value.
const VOLATILE_FUNCTIONS: [&str; 5] = ["RAND", "RANDBETWEEN", "RANDARRAY", "NOW", "TODAY"];

/// The first function called in a formula (`_xlfn.`/`_xlws.` prefixes removed),
/// or `(no function)` when the formula only uses operators and references.
pub fn first_function(formula: &str) -> String {
    functions(formula).into_iter().next().unwrap_or_else(|| "(no function)".to_string())
}

/// Whether the formula calls RAND, RANDBETWEEN, RANDARRAY, NOW or TODAY.
pub fn is_volatile(formula: &str) -> bool {
    functions(formula).iter().any(|f| VOLATILE_FUNCTIONS.contains(&f.as_str()))
}

/// Names of the functions called in a formula, in order of appearance, upper-cased.
/// Text inside string literals is ignored.
pub fn functions(formula: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_string = false;
    let mut start: Option<usize> = None;
    for (i, ch) in formula.char_indices() {
        if ch == '"' {
            in_string = !in_string;
            start = None;
            continue;
        }
        if in_string {
            continue;
        }
        if is_name_char(ch) {
            start.get_or_insert(i);
            continue;
        }
        if ch == '(' {
            if let Some(name) = start.map(|s| &formula[s..i]).filter(|n| looks_like_function(n)) {
                found.push(normalize_function(name));
            }
        }
        start = None;
    }
    found
}

fn is_name_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || ch == '_' || ch == '.'
}

fn looks_like_function(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

fn normalize_function(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    let trimmed = upper.trim_start_matches("_XLFN.").trim_start_matches("_XLWS.").trim_start_matches("_XLUDF.");
    trimmed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_use_relative_tolerance() {
        assert!(values_match(&Value::Number(1e10), &Value::Number(1e10 + 1e-1)));
        assert!(!values_match(&Value::Number(1.0), &Value::Number(1.0 + 1e-6)));
        assert!(values_match(&Value::Number(1e-13), &Value::Number(-1e-13)));
        assert!(!values_match(&Value::Number(0.0), &Value::Number(1e-9)));
    }

    #[test]
    fn empty_string_matches_empty() {
        assert!(values_match(&Value::Text(String::new()), &Value::Empty));
        assert!(!values_match(&Value::Text("a".into()), &Value::Empty));
    }

    #[test]
    fn errors_match_by_code() {
        assert!(values_match(&Value::Error("#N/A".into()), &Value::Error("#N/A".into())));
        assert!(!values_match(&Value::Error("#N/A".into()), &Value::Error("#REF!".into())));
        assert!(!values_match(&Value::Bool(true), &Value::Number(1.0)));
    }

    #[test]
    fn first_function_skips_strings_and_prefixes() {
        assert_eq!(first_function("A1+SUM(B1:B2)"), "SUM");
        assert_eq!(first_function("\"X(\"&_xlfn.CONCAT(A1)"), "CONCAT");
        assert_eq!(first_function("A1+B1"), "(no function)");
        assert_eq!(first_function("Sheet1!A1*2"), "(no function)");
        assert_eq!(first_function("_xlfn._xlws.SORT(A1:A3)"), "SORT");
    }

    #[test]
    fn volatile_detection() {
        assert!(is_volatile("TODAY()-0.5"));
        assert!(is_volatile("ROUND(RAND()*10,0)"));
        assert!(!is_volatile("\"NOW()\"&A1"));
        assert!(!is_volatile("NOWHERE(A1)+A2"));
        assert_eq!(functions("IF(ISNA(VLOOKUP(A1,B:C,2,0)),0,1)"), ["IF", "ISNA", "VLOOKUP"]);
    }
}
