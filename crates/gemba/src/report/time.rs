//! The `--until` argument: an RFC 3339 time, a calendar date, or `now` (all UTC unless the time
//! carries an offset). Parsed by hand: Gemba has no date-time dependency and needs only this.

use anyhow::{Result, bail};

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn number(s: &str, what: &str, whole: &str) -> Result<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        bail!("'{whole}': the {what} '{s}' is not a number; {HELP}");
    }
    s.parse().map_err(|_| anyhow::anyhow!("'{whole}': the {what} '{s}' is out of range; {HELP}"))
}

const HELP: &str = "use an RFC 3339 time (2026-12-04T18:00:00Z, 2026-12-04T18:00:00+01:00), a date \
(2026-12-04, meaning the end of that day in UTC) or 'now'";

/// The day number of `YYYY-MM-DD`.
fn date(s: &str, whole: &str) -> Result<i64> {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else { bail!("'{whole}' is not a date or time; {HELP}") };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        bail!("'{whole}': write the date as YYYY-MM-DD; {HELP}");
    }
    let (y, m, d) = (i64::from(number(y, "year", whole)?), number(m, "month", whole)?, number(d, "day", whole)?);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        bail!("'{whole}': there is no such day; {HELP}");
    }
    Ok(days_from_civil(y, m, d))
}

/// Milliseconds into the day of `HH:MM:SS[.fff]`.
fn clock(s: &str, whole: &str) -> Result<i64> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let parts: Vec<&str> = hms.split(':').collect();
    let [h, mi, sec] = parts.as_slice() else { bail!("'{whole}': write the time as HH:MM:SS; {HELP}") };
    let (h, mi, sec) = (number(h, "hour", whole)?, number(mi, "minute", whole)?, number(sec, "second", whole)?);
    // 60 is a leap second; it is taken as the next second.
    if h > 23 || mi > 59 || sec > 60 {
        bail!("'{whole}': the time {hms} is out of range; {HELP}");
    }
    let millis = if frac.is_empty() {
        0
    } else {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            bail!("'{whole}': the fraction of a second '{frac}' is not 1 to 9 digits; {HELP}");
        }
        // Milliseconds: the first three digits, the rest dropped.
        let digits = &frac[..frac.len().min(3)];
        i64::from(number(digits, "fraction of a second", whole)?) * 10i64.pow(3 - digits.len() as u32)
    };
    Ok(((i64::from(h) * 60 + i64::from(mi)) * 60 + i64::from(sec)) * 1000 + millis)
}

/// Offset from UTC in milliseconds of `Z`, `+HH:MM` or `-HH:MM`.
fn offset(s: &str, whole: &str) -> Result<i64> {
    if s.eq_ignore_ascii_case("z") {
        return Ok(0);
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => bail!("'{whole}': the time needs an offset (Z or +HH:MM); {HELP}"),
    };
    let Some((h, m)) = rest.split_once(':') else { bail!("'{whole}': write the offset as +HH:MM; {HELP}") };
    let (h, m) = (number(h, "offset hours", whole)?, number(m, "offset minutes", whole)?);
    if h > 23 || m > 59 {
        bail!("'{whole}': the offset {s} is out of range; {HELP}");
    }
    Ok(sign * (i64::from(h) * 60 + i64::from(m)) * 60_000)
}

/// Unix milliseconds of `s`: `now`, an RFC 3339 time, or a date (the end of that UTC day, so
/// `--period day --until 2026-12-04` covers the 4th).
pub fn parse_until(s: &str, now_ms: i64) -> Result<i64> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if t.len() > 40 {
        bail!("'{}…' is too long for a time; {HELP}", t.chars().take(40).collect::<String>());
    }
    let split = t.find(['T', 't', ' ']);
    let Some(i) = split else { return Ok((date(t, t)? + 1) * DAY_MS) };
    let (d, rest) = (&t[..i], &t[i + 1..]);
    let day = date(d, t)?;
    let tz_at = rest
        .find(['Z', 'z', '+', '-'])
        .ok_or_else(|| anyhow::anyhow!("'{t}': the time needs an offset (Z for UTC, or +HH:MM); {HELP}"))?;
    let ms = clock(&rest[..tz_at], t)?;
    let off = offset(&rest[tz_at..], t)?;
    Ok(day * DAY_MS + ms - off)
}

#[cfg(test)]
mod tests {
    use super::parse_until;

    #[test]
    fn dates_mean_the_end_of_that_day() {
        // 2026-12-04T00:00:00Z is 1796342400 s.
        assert_eq!(parse_until("2026-12-03", 0).unwrap(), 1_796_342_400_000);
        assert_eq!(parse_until("1970-01-01", 0).unwrap(), 86_400_000);
        assert_eq!(parse_until("2024-02-29", 0).unwrap(), 1_709_251_200_000);
    }

    #[test]
    fn rfc3339_times_with_offsets_and_fractions() {
        assert_eq!(parse_until("2026-12-04T00:00:00Z", 0).unwrap(), 1_796_342_400_000);
        assert_eq!(parse_until("2026-12-04T01:00:00+01:00", 0).unwrap(), 1_796_342_400_000);
        assert_eq!(parse_until("2026-12-03T23:30:00-00:30", 0).unwrap(), 1_796_342_400_000);
        assert_eq!(parse_until("2026-12-04 00:00:01.25z", 0).unwrap(), 1_796_342_401_250);
        assert_eq!(parse_until(" now ", 42).unwrap(), 42);
    }

    #[test]
    fn bad_times_say_what_to_write() {
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2023-02-29",
            "2026-12-04T25:00:00Z",
            "2026-12-04T10:00:00",
            "2026-12-04T10:00Z",
            "26-12-04",
            "2026-12-04T10:00:00.x1Z",
            "2026-12-04T10:00:00+1:00:00",
        ] {
            let e = parse_until(bad, 0).unwrap_err().to_string();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }
}
