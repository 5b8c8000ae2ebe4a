//! The 1904 date system for an engine that only knows 1900's.
//!
//! In a workbook with `date1904`, the serial `n` means 1904-01-01 plus `n` days, which is the
//! serial `n + 1462` in the 1900 system. IronCalc only knows the 1900 system, so a 1904
//! workbook's formulas are rewritten before it evaluates them: every argument a date function
//! reads as a date gets `+1462`, and every date a function returns gets `-1462`. Stored numbers
//! are never touched, so arithmetic on serials, differences of dates and every non-date
//! function are exact as they are, and the results are 1904 serials, ready to be saved.
//!
//! A call the rewrite cannot make exact (holiday lists of `WORKDAY`/`NETWORKDAYS`, `TEXT` with
//! a format that is not a literal) refuses the workbook with a reason, so the caller can use
//! an engine that knows the 1904 system (LibreOffice). Not covered: text that only becomes a
//! date by coercion (`VALUE("2024-03-01")`, `"2024-03-01"+0`, date criteria strings), which
//! IronCalc reads in the 1900 system.

use std::borrow::Cow;

/// Days between the 1904 and the 1900 date systems (1904-01-01 is 1900 serial 1462).
pub const OFFSET_DAYS: f64 = 1462.0;
const OFFSET: &str = "1462";

/// How a function takes and gives dates.
struct DateFn {
    /// Arguments (0-based) read as dates.
    date_args: &'static [usize],
    /// The result is a date serial.
    returns_date: bool,
    /// An argument that is a list of dates (holidays): cannot be shifted in a formula.
    date_list_arg: Option<usize>,
}

const fn f(date_args: &'static [usize], returns_date: bool, date_list_arg: Option<usize>) -> DateFn {
    DateFn { date_args, returns_date, date_list_arg }
}

fn date_fn(name: &str) -> Option<DateFn> {
    Some(match name {
        "YEAR" | "MONTH" | "DAY" | "WEEKDAY" | "WEEKNUM" | "ISOWEEKNUM" => f(&[0], false, None),
        "DATEDIF" | "DAYS360" | "YEARFRAC" => f(&[0, 1], false, None),
        "NETWORKDAYS" => f(&[0, 1], false, Some(2)),
        "NETWORKDAYS.INTL" => f(&[0, 1], false, Some(3)),
        "WORKDAY" => f(&[0], true, Some(2)),
        "WORKDAY.INTL" => f(&[0], true, Some(3)),
        "EDATE" | "EOMONTH" => f(&[0], true, None),
        "DATE" | "DATEVALUE" | "TODAY" | "NOW" => f(&[], true, None),
        "ACCRINT" | "PRICEMAT" | "YIELDMAT" | "ODDLPRICE" | "ODDLYIELD" => f(&[0, 1, 2], false, None),
        "ACCRINTM" | "COUPDAYBS" | "COUPDAYS" | "COUPDAYSNC" | "COUPNUM" | "DISC" | "DURATION" | "MDURATION"
        | "INTRATE" | "RECEIVED" | "PRICE" | "YIELD" | "PRICEDISC" | "YIELDDISC" | "TBILLEQ" | "TBILLPRICE"
        | "TBILLYIELD" => f(&[0, 1], false, None),
        "COUPNCD" | "COUPPCD" => f(&[0, 1], true, None),
        "AMORDEGRC" | "AMORLINC" => f(&[1, 2], false, None),
        "ODDFPRICE" | "ODDFYIELD" => f(&[0, 1, 2, 3], false, None),
        _ => return None,
    })
}

/// The formula rewritten for an engine in the 1900 system, or why that cannot be exact.
/// Works on A1 text and on IronCalc's internal R1C1 text alike (it only looks at calls).
pub fn shim(formula: &str) -> Result<Cow<'_, str>, String> {
    if !formula.contains('(') {
        return Ok(Cow::Borrowed(formula));
    }
    let out = rewrite(formula)?;
    Ok(if out == formula { Cow::Borrowed(formula) } else { Cow::Owned(out) })
}

/// Byte length of a quoted run starting at `i` (`"..."` or `'...'`, doubled quotes inside).
fn quoted_len(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return j + 1 - i;
        }
        j += 1;
    }
    b.len() - i
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.')
}

/// The arguments of a call whose `(` is at `open`: their byte spans, and the index of `)`.
fn call_args(b: &[u8], open: usize) -> Result<(Vec<(usize, usize)>, usize), String> {
    let mut depth = 0i32;
    let mut args = Vec::new();
    let mut start = open + 1;
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => {
                i += quoted_len(b, i);
                continue;
            }
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' if depth > 0 => depth -= 1,
            b')' => {
                args.push((start, i));
                return Ok((args, i));
            }
            b',' | b';' if depth == 0 => {
                args.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    Err("a function call is not closed".into())
}

/// Whether a `TEXT` format code shows a date part (year, month or day).
fn format_shows_date(code: &str) -> bool {
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                for d in chars.by_ref() {
                    if d == '"' {
                        break;
                    }
                }
            }
            '[' => {
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
            }
            '\\' => {
                chars.next();
            }
            'y' | 'Y' | 'd' | 'D' | 'm' | 'M' => return true,
            _ => {}
        }
    }
    false
}

/// The text of a string literal argument (`"..."` with doubled quotes), if it is one.
fn string_literal(arg: &str) -> Option<String> {
    let t = arg.trim();
    let inner = t.strip_prefix('"')?.strip_suffix('"')?;
    if inner.replace("\"\"", "").contains('"') {
        return None;
    }
    Some(inner.replace("\"\"", "\""))
}

fn rewrite(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 16);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            let n = quoted_len(b, i);
            out.push_str(&s[i..i + n]);
            i += n;
            continue;
        }
        if !is_name_start(c) || (i > 0 && is_name_char(b[i - 1])) {
            // Copy one character (whole, for non-ASCII text outside quotes).
            let len = s[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&s[i..i + len]);
            i += len;
            continue;
        }
        let mut j = i;
        while j < b.len() && is_name_char(b[j]) {
            j += 1;
        }
        if b.get(j) != Some(&b'(') {
            out.push_str(&s[i..j]);
            i = j;
            continue;
        }
        let name = &s[i..j];
        let (spans, close) = call_args(b, j)?;
        let mut args: Vec<String> = Vec::with_capacity(spans.len());
        for &(a, z) in &spans {
            args.push(rewrite(&s[a..z])?);
        }
        let upper = name.to_ascii_uppercase();
        let bare = upper.trim_start_matches("_XLFN.").trim_start_matches("_XLWS.");
        let call = match date_fn(bare) {
            Some(df) => {
                if let Some(k) = df.date_list_arg
                    && args.get(k).is_some_and(|a| !a.trim().is_empty())
                {
                    return Err(format!(
                        "{bare} with a list of holidays in a 1904 date-system workbook cannot be calculated exactly in process"
                    ));
                }
                for &k in df.date_args {
                    if let Some(a) = args.get_mut(k) {
                        *a = shift_arg(a);
                    }
                }
                let call = format!("{name}({})", args.join(","));
                if df.returns_date { format!("({call}-{OFFSET})") } else { call }
            }
            None if bare == "TEXT" && args.len() >= 2 => {
                match string_literal(&args[1]) {
                    Some(code) if format_shows_date(&code) => args[0] = shift_arg(&args[0]),
                    Some(_) => {}
                    None => {
                        return Err(
                            "TEXT with a format that is not a literal, in a 1904 date-system workbook, cannot be calculated exactly in process".into(),
                        );
                    }
                }
                format!("{name}({})", args.join(","))
            }
            None => format!("{name}({})", args.join(",")),
        };
        out.push_str(&call);
        i = close + 1;
    }
    Ok(out)
}

/// An argument read as a date, moved into the 1900 system. Text is left alone (the engine
/// reads a date written as text in the 1900 system already), as is an omitted argument.
fn shift_arg(arg: &str) -> String {
    if arg.trim().is_empty() || string_literal(arg).is_some() {
        return arg.to_string();
    }
    format!("(({arg})+{OFFSET})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(f: &str) -> String {
        shim(f).unwrap().into_owned()
    }

    #[test]
    fn date_arguments_and_results_are_shifted() {
        assert_eq!(ok("YEAR(A1)"), "YEAR(((A1)+1462))");
        assert_eq!(ok("DATE(2020,1,1)+A1"), "(DATE(2020,1,1)-1462)+A1");
        assert_eq!(ok("EDATE(A1,3)"), "(EDATE(((A1)+1462),3)-1462)");
        assert_eq!(ok("_xlfn.DAYS(A2,A1)+TODAY()"), "_xlfn.DAYS(A2,A1)+(TODAY()-1462)");
        assert_eq!(ok("MONTH(DATE(2024,2,1))"), "MONTH((((DATE(2024,2,1)-1462))+1462))");
        assert_eq!(ok("WEEKDAY(,2)"), "WEEKDAY(,2)");
        assert_eq!(ok("YEAR(\"2024-03-01\")"), "YEAR(\"2024-03-01\")");
        assert_eq!(ok("WORKDAY(A1,5)"), "(WORKDAY(((A1)+1462),5)-1462)");
        assert_eq!(
            ok("TEXT(A1,\"yyyy-mm-dd\")&TEXT(B1,\"0.00\")"),
            "TEXT(((A1)+1462),\"yyyy-mm-dd\")&TEXT(B1,\"0.00\")"
        );
        assert_eq!(ok("YEAR(R[0]C[-2])"), "YEAR(((R[0]C[-2])+1462))");
        assert_eq!(
            ok("SUM(Table1[[#This Row],[a]],YEAR('My Sheet'!A1))"),
            "SUM(Table1[[#This Row],[a]],YEAR((('My Sheet'!A1)+1462)))"
        );
    }

    #[test]
    fn what_is_not_a_date_call_is_kept() {
        for f in [
            "A1+30",
            "SUM(A1:A3)*2",
            "\"YEAR(A1)\"&B1",
            "'YEAR(x'!A1",
            "MYYEAR(A1)",
            "CHAR(12)",
            "XNPV(0.1,A1:A3,B1:B3)",
        ] {
            assert_eq!(ok(f), f);
            assert!(matches!(shim(f).unwrap(), Cow::Borrowed(_)), "{f}");
        }
    }

    #[test]
    fn calls_that_cannot_be_exact_are_refused() {
        assert!(shim("NETWORKDAYS(A1,B1,H1:H9)").unwrap_err().contains("holidays"));
        assert!(shim("WORKDAY.INTL(A1,3,1,H1:H9)").unwrap_err().contains("holidays"));
        assert!(shim("TEXT(A1,B1)").unwrap_err().contains("TEXT"));
        assert!(shim("YEAR(A1").is_err());
        assert_eq!(ok("NETWORKDAYS(A1,B1)"), "NETWORKDAYS(((A1)+1462),((B1)+1462))");
    }
}
