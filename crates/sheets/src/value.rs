//! Cell values: a compact in-memory form (16 bytes) and their rendering for agents.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Spreadsheet error values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellError {
    Div0,
    NA,
    Name,
    Null,
    Num,
    Ref,
    Value,
    GettingData,
}

impl CellError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Div0 => "#DIV/0!",
            Self::NA => "#N/A",
            Self::Name => "#NAME?",
            Self::Null => "#NULL!",
            Self::Num => "#NUM!",
            Self::Ref => "#REF!",
            Self::Value => "#VALUE!",
            Self::GettingData => "#DATA!",
        }
    }
}

impl From<&calamine::CellErrorType> for CellError {
    fn from(e: &calamine::CellErrorType) -> Self {
        use calamine::CellErrorType as E;
        match e {
            E::Div0 => Self::Div0,
            E::NA => Self::NA,
            E::Name => Self::Name,
            E::Null => Self::Null,
            E::Num => Self::Num,
            E::Ref => Self::Ref,
            E::Value => Self::Value,
            E::GettingData => Self::GettingData,
        }
    }
}

/// A cell value as stored in a loaded sheet. Text is an index into the sheet's string pool.
/// Dates are serial numbers in the 1900 system (1904 workbooks are shifted at load).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Empty,
    Number(f64),
    Bool(bool),
    Text(u32),
    Date(f64),
    Duration(f64),
    Error(CellError),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Empty => "empty",
            Value::Number(_) => "number",
            Value::Bool(_) => "bool",
            Value::Text(_) => "text",
            Value::Date(_) => "date",
            Value::Duration(_) => "duration",
            Value::Error(_) => "error",
        }
    }
    pub fn is_empty(&self) -> bool {
        matches!(self, Value::Empty)
    }
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) | Value::Date(n) | Value::Duration(n) => Some(*n),
            _ => None,
        }
    }
}

/// A number as Excel shows it in General format: at most 15 significant digits, so binary
/// noise such as 0.15000000000000002 reads 0.15.
pub fn excel_round(n: f64) -> f64 {
    if !n.is_finite() || n == 0.0 || (n.fract() == 0.0 && n.abs() < 1e15) {
        return n;
    }
    // Most values already print in 15 significant digits or fewer: check on the shortest
    // round-trip text (ryu, no allocation) before the slow exact rounding.
    let mut buf = ryu::Buffer::new();
    if significant_digits(buf.format_finite(n)) <= 15 {
        return n;
    }
    format!("{n:.14e}").parse().unwrap_or(n)
}

/// Significant digits of a number's text (`-0.00123e5` has 3).
fn significant_digits(s: &str) -> usize {
    let mantissa = s.split(['e', 'E']).next().unwrap_or(s);
    let digits = mantissa.bytes().filter(u8::is_ascii_digit).skip_while(|&d| d == b'0');
    let mut n = 0;
    let mut trailing_zeros = 0;
    for d in digits {
        n += 1;
        if d == b'0' {
            trailing_zeros += 1;
        } else {
            trailing_zeros = 0;
        }
    }
    // Trailing zeros after the point do not count ("1.50"); ryu never writes them anyway.
    if mantissa.contains('.') { n - trailing_zeros } else { n }
}

/// Shortest text of a number at Excel's 15-digit precision; integers without a fraction.
pub fn format_number(n: f64, out: &mut String) {
    let n = excel_round(n);
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e15 {
        let _ = write!(out, "{}", n as i64);
    } else {
        let _ = write!(out, "{n}");
    }
}

/// Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm, inverse form).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Render an Excel 1900-system serial as ISO 8601: a date, or a date-time when it has a time part.
pub fn format_date(serial: f64, out: &mut String) {
    if !serial.is_finite() || !(0.0..2_958_466.0).contains(&serial) {
        format_number(serial, out);
        return;
    }
    let mut days = serial.floor() as i64;
    let mut secs = ((serial - serial.floor()) * 86_400.0).round() as i64;
    if secs >= 86_400 {
        days += 1;
        secs -= 86_400;
    }
    if serial < 1.0 {
        // A pure time of day.
        let _ = write!(out, "{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        return;
    }
    // Excel's fictitious 1900-02-29 (serial 60): days after it are shifted by one.
    if days < 60 {
        days += 1;
    }
    let (y, m, d) = civil_from_days(days - 25_569);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}");
    if secs != 0 {
        let _ = write!(out, "T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    }
}

/// Render a duration (days) as [h]:mm:ss.
pub fn format_duration(days: f64, out: &mut String) {
    let total = (days * 86_400.0).round() as i64;
    let sign = if total < 0 { "-" } else { "" };
    let t = total.abs();
    let _ = write!(out, "{sign}{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
}

/// Append a CSV field, quoting when needed (RFC 4180).
pub fn push_csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) || field.starts_with(' ') || field.ends_with(' ') {
        out.push('"');
        for ch in field.chars() {
            if ch == '"' {
                out.push('"');
            }
            out.push(ch);
        }
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// Text rendering of a value, borrowing the pool for text.
pub fn display<'a>(v: &Value, pool: &'a [std::sync::Arc<str>]) -> Cow<'a, str> {
    match v {
        Value::Empty => Cow::Borrowed(""),
        Value::Text(i) => Cow::Borrowed(pool.get(*i as usize).map(|s| &**s).unwrap_or("")),
        Value::Bool(b) => Cow::Borrowed(if *b { "TRUE" } else { "FALSE" }),
        Value::Error(e) => Cow::Borrowed(e.as_str()),
        Value::Number(n) => {
            let mut s = String::new();
            format_number(*n, &mut s);
            Cow::Owned(s)
        }
        Value::Date(n) => {
            let mut s = String::new();
            format_date(*n, &mut s);
            Cow::Owned(s)
        }
        Value::Duration(n) => {
            let mut s = String::new();
            format_duration(*n, &mut s);
            Cow::Owned(s)
        }
    }
}

/// JSON rendering of a value: numbers as numbers, text/dates/errors as strings, empty as null.
pub fn to_json(v: &Value, pool: &[std::sync::Arc<str>]) -> serde_json::Value {
    match v {
        Value::Empty => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(n) if n.is_finite() => {
            let n = excel_round(*n);
            if n.fract() == 0.0 && n.abs() < 9e15 {
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Value::from(n)
            }
        }
        other => serde_json::Value::String(display(other, pool).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: f64) -> String {
        let mut o = String::new();
        format_date(s, &mut o);
        o
    }

    #[test]
    fn excel_serials_render_as_iso() {
        assert_eq!(date(1.0), "1900-01-01");
        assert_eq!(date(59.0), "1900-02-28");
        assert_eq!(date(61.0), "1900-03-01");
        assert_eq!(date(45_292.0), "2024-01-01");
        assert_eq!(date(45_292.5), "2024-01-01T12:00:00");
        assert_eq!(date(0.25), "06:00:00");
    }

    #[test]
    fn numbers_render_shortest() {
        let mut o = String::new();
        format_number(3.0, &mut o);
        o.push(' ');
        format_number(0.1 + 0.2, &mut o);
        o.push(' ');
        format_number(-1.5e20, &mut o);
        assert_eq!(o, "3 0.3 -150000000000000000000");
        assert_eq!(excel_round(0.15000000000000002), 0.15);
        assert_eq!(excel_round(1.0 / 3.0), 0.333333333333333);
    }

    #[test]
    fn the_fast_path_rounds_like_the_exact_one() {
        assert_eq!(significant_digits("0.30000000000000004"), 17);
        assert_eq!(significant_digits("-0.00123e5"), 3);
        assert_eq!(significant_digits("1.5"), 2);
        let exact = |n: f64| -> f64 { format!("{n:.14e}").parse().unwrap() };
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = f64::from_bits(x);
            if !n.is_finite() {
                continue;
            }
            for v in [n, (x % 1_000_000) as f64 / 1000.0, (x % 997) as f64 * 0.1] {
                if v != 0.0 {
                    assert_eq!(excel_round(v), exact(v), "{v:e}");
                }
            }
        }
    }

    #[test]
    fn csv_quoting() {
        let mut o = String::new();
        push_csv_field(&mut o, "a,b");
        o.push(',');
        push_csv_field(&mut o, "say \"hi\"");
        o.push(',');
        push_csv_field(&mut o, "plain");
        assert_eq!(o, "\"a,b\",\"say \"\"hi\"\"\",plain");
    }

    #[test]
    fn value_is_small() {
        assert_eq!(std::mem::size_of::<Value>(), 16);
    }
}
