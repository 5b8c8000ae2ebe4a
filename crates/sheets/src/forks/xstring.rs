//! OOXML's string escape (`ST_Xstring`, ECMA-376 Part 1, 22.9.2.19) on top of XML's own.
//!
//! XML 1.0 cannot carry U+0000–U+0008, U+000B, U+000C, U+000E–U+001F, U+FFFE or U+FFFF at all
//! (not even as character references), yet a cell can hold them (`=CHAR(12)`). OOXML writes
//! such a character as `_xHHHH_` (its UTF-16 code unit in hex), and a literal `_xHHHH_` in the
//! text as `_x005F_xHHHH_` so that it reads back literally. Excel also writes CR this way,
//! because XML parsers turn a raw CR into LF. Every string Gemba writes into a saved part goes
//! through [`escape_text`] or [`escape_attr`], so the file is well-formed and every reader that
//! follows the standard (Excel, LibreOffice, calamine) gets the original text back; formula
//! text read from a file goes through [`unescape`] so Gemba's own reads match.

use std::borrow::Cow;

/// Length of one `_xHHHH_` escape in bytes.
const ESCAPE_LEN: usize = 7;

/// Whether XML 1.0 forbids the character outright (it must be written as `_xHHHH_`).
pub fn forbidden_in_xml(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
}

/// Whether `s` holds `_xHHHH_` at byte `i`.
fn escape_at(s: &[u8], i: usize) -> Option<u16> {
    let b = s.get(i..i + ESCAPE_LEN)?;
    if b[0] != b'_' || b[1] != b'x' || b[6] != b'_' {
        return None;
    }
    let hex = std::str::from_utf8(&b[2..6]).ok()?;
    if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// Whether the text needs any escaping at all (most text does not: no allocation then).
fn needs_escape(s: &str, attr: bool) -> bool {
    let b = s.as_bytes();
    s.chars().any(|c| {
        matches!(c, '&' | '<' | '>' | '\r') || forbidden_in_xml(c) || (attr && matches!(c, '"' | '\'' | '\t' | '\n'))
    }) || b.iter().enumerate().any(|(i, &c)| c == b'_' && escape_at(b, i).is_some())
}

fn escape(s: &str, attr: bool) -> Cow<'_, str> {
    if !needs_escape(s, attr) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 16);
    for (i, c) in s.char_indices() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attr => out.push_str("&quot;"),
            '\'' if attr => out.push_str("&apos;"),
            // An attribute's TAB and LF would become spaces (attribute-value normalization).
            '\t' if attr => out.push_str("&#9;"),
            '\n' if attr => out.push_str("&#10;"),
            '_' if escape_at(bytes, i).is_some() => out.push_str("_x005F_"),
            c if c == '\r' || forbidden_in_xml(c) => {
                out.push_str(&format!("_x{:04X}_", c as u32));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Text for an element's content (`<t>`, `<v>`, `<f>`): XML's `&`, `<`, `>` as entities, the
/// characters XML 1.0 forbids and CR as `_xHHHH_`, a literal `_xHHHH_` as `_x005F_xHHHH_`.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Text for an attribute value in double or single quotes: as [`escape_text`], with quotes as
/// entities and TAB and LF as character references (a parser would turn them into spaces).
pub fn escape_attr(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// The original text of an `ST_Xstring` whose XML entities are already decoded: every
/// `_xHHHH_` becomes its character (a surrogate pair of escapes one character; a lone
/// surrogate U+FFFD), so `_x005F_x000D_` reads as the literal `_x000D_`.
pub fn unescape(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let Some(first) = (0..b.len()).find(|&i| b[i] == b'_' && escape_at(b, i).is_some()) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len());
    out.push_str(&s[..first]);
    let mut i = first;
    while i < b.len() {
        match escape_at(b, i) {
            Some(unit) => {
                i += ESCAPE_LEN;
                let c = match unit {
                    0xD800..=0xDBFF => match escape_at(b, i) {
                        Some(low @ 0xDC00..=0xDFFF) => {
                            i += ESCAPE_LEN;
                            let cp = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                            char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER)
                        }
                        _ => char::REPLACEMENT_CHARACTER,
                    },
                    u => char::from_u32(u32::from(u)).unwrap_or(char::REPLACEMENT_CHARACTER),
                };
                out.push(c);
            }
            None => {
                // Copy up to the next underscore (always on a character boundary: '_' is ASCII).
                let next = b[i + 1..].iter().position(|&c| c == b'_').map_or(b.len(), |p| i + 1 + p);
                out.push_str(&s[i..next]);
                i = next;
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code point XML 1.0 forbids, the whitespace it allows, and look-alike escapes.
    fn hard_texts() -> Vec<String> {
        let mut v: Vec<String> = (1u32..=0x1f).map(|c| format!("a{}b", char::from_u32(c).unwrap())).collect();
        v.extend(
            ["\u{fffe}", "\u{ffff}", "_x000D_", "_x005F_", "_x00e9_ and _X000D_", "x_x0041_x", "__x0041__"]
                .map(String::from),
        );
        v.push("plain & <tags> \"quoted\" 'single'".into());
        v.push("emoji 😀 _xD83D__xDE00_".into());
        v
    }

    fn well_formed(xml: &str) -> bool {
        let mut r = quick_xml::Reader::from_str(xml);
        loop {
            match r.read_event() {
                Ok(quick_xml::events::Event::Eof) => return !xml.chars().any(forbidden_in_xml),
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn escaped_text_is_well_formed_xml_and_reads_back() {
        for s in hard_texts() {
            let t = escape_text(&s);
            assert!(!t.chars().any(|c| forbidden_in_xml(c) || c == '\r'), "{s:?} -> {t:?}");
            assert!(well_formed(&format!("<t>{t}</t>")), "{t:?}");
            let entities = quick_xml::escape::unescape(&t).unwrap();
            assert_eq!(unescape(&entities), s, "text {s:?} via {t:?}");
            let a = escape_attr(&s);
            assert!(well_formed(&format!("<x v=\"{a}\" w='{a}'/>")), "{a:?}");
        }
    }

    #[test]
    fn known_forms() {
        assert_eq!(escape_text("\u{c}"), "_x000C_");
        assert_eq!(escape_text("a\r\nb"), "a_x000D_\nb");
        assert_eq!(escape_text("_x000D_"), "_x005F_x000D_");
        assert_eq!(escape_text("_x00zz_ _x12"), "_x00zz_ _x12");
        assert_eq!(escape_attr("a\tb\nc\"d"), "a&#9;b&#10;c&quot;d");
        assert_eq!(unescape("_x005F_x000D_"), "_x000D_");
        assert_eq!(unescape("_x000d_|_xD83D__xDE00_|_xD83D_"), "\r|😀|\u{fffd}");
        assert!(matches!(escape_text("nothing to do"), Cow::Borrowed(_)));
        assert!(matches!(unescape("no_escapes_here"), Cow::Borrowed(_)));
    }
}
