//! Unix milliseconds ⇄ RFC 3339 UTC text (`2025-01-01T12:00:10.250Z`), the form every time takes
//! in the incidents JSON; and `HH:MM:SS` for evidence sentences. No calendar crate: the civil
//! date algorithm (H. Hinnant) is a dozen lines.

/// `2025-01-01T12:00:10.250Z` for a unix time in milliseconds.
pub fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// `12:00:10` (UTC), for evidence and messages.
pub fn clock(ms: u64) -> String {
    let rem = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Parses what `format_ms` writes (the fraction optional, `Z` required); `None` otherwise.
pub fn parse_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 || y < 1970 {
        return None;
    }
    let rest = &s[19..];
    let frac_ms = match rest.strip_suffix('Z')? {
        "" => 0,
        f => {
            let digits = f.strip_prefix('.')?;
            if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let padded = format!("{digits:0<3}");
            padded[..3].parse::<u64>().ok()?
        }
    };
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + se;
    Some(secs * 1000 + frac_ms)
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Serde adapter: a `u64` of unix milliseconds as RFC 3339 text.
pub mod serde_ms {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_ms(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_ms(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("'{text}' is not a time like 2025-01-01T12:00:10.250Z")))
    }
}

/// Serde adapter: an optional time (absent when `None`).
pub mod serde_ms_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&super::format_ms(*ms)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse_ms(&text).map(Some).ok_or_else(|| {
                serde::de::Error::custom(format!("'{text}' is not a time like 2025-01-01T12:00:10.250Z"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_known_instants() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_700_000_000_250), "2023-11-14T22:13:20.250Z");
        assert_eq!(clock(1_700_000_000_250), "22:13:20");
        assert_eq!(parse_ms("2023-11-14T22:13:20.250Z"), Some(1_700_000_000_250));
        assert_eq!(parse_ms("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse_ms("2024-02-29T00:00:00.5Z"), Some(1_709_164_800_500));
    }

    #[test]
    fn round_trips_across_years_and_rejects_junk() {
        let mut ms = 0u64;
        while ms < 4_000_000_000_000 {
            assert_eq!(parse_ms(&format_ms(ms)), Some(ms), "{}", format_ms(ms));
            ms += 86_399_937;
        }
        for bad in ["", "2023-11-14 22:13:20Z", "2023-13-14T22:13:20Z", "2023-11-14T22:13:20", "2023-11-14T22:13:20.Z"]
        {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
    }
}
