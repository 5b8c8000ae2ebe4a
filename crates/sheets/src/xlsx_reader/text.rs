//! Text as calamine reads it: shared strings and inline strings (rich text runs joined,
//! phonetic runs left out, whitespace trimmed unless `xml:space="preserve"`), XML entities,
//! line ends normalized, and Excel's `_xHHHH_` escapes. The rich-text walk is a port of
//! calamine 0.38's `read_string_with_bufs` and `unescape_xml` (MIT licence, Copyright
//! 2016-2026 Johann Tuffe) over the same quick-xml reader configuration.

use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::name::QName;

use super::{Bail, Sst, xml_reader};

/// Read `sharedStrings.xml` into one buffer.
pub fn read_shared_strings(xml: &[u8]) -> Result<Sst, Bail> {
    let mut r = xml_reader(xml);
    let mut sst = Sst::default();
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match r.read_event_into(&mut buf).map_err(Bail::xml)? {
            Event::Start(e) if e.local_name().as_ref() == "sst" => {
                if let Some(n) = super::attr(&e, "uniqueCount")?.and_then(|n| n.parse::<usize>().ok()) {
                    sst.ends.reserve(n.min(1 << 24));
                }
                break;
            }
            Event::Eof => return Err(Bail::new("sharedStrings: no sst element")),
            _ => {}
        }
    }
    let mut inner = Vec::with_capacity(1024);
    let mut text = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match r.read_event_into(&mut buf).map_err(Bail::xml)? {
            Event::Start(e) if e.local_name().as_ref() == "si" => {
                let name = e.name().as_ref().to_string();
                if let Some(s) = read_string(&mut r, QName(&name), &mut inner, &mut text)? {
                    sst.push(&s);
                }
            }
            Event::End(e) if e.local_name().as_ref() == "sst" => break,
            Event::Eof => return Err(Bail::new("sharedStrings: sst never ends")),
            _ => {}
        }
    }
    Ok(sst)
}

/// An inline string: `xml` is the whole `<is>…</is>` element.
pub fn read_inline_string(xml: &[u8]) -> Result<String, Bail> {
    let mut r = xml_reader(xml);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_event_into(&mut buf).map_err(Bail::xml)? {
            Event::Start(e) => {
                let name = e.name().as_ref().to_string();
                let (mut inner, mut text) = (Vec::new(), Vec::new());
                return Ok(read_string(&mut r, QName(&name), &mut inner, &mut text)?.unwrap_or_default());
            }
            Event::Eof => return Err(Bail::new("inline string without an element")),
            _ => {}
        }
    }
}

/// A string element's text: plain `<t>`, or rich text runs concatenated.
fn read_string(
    xml: &mut quick_xml::Reader<&[u8]>,
    closing: QName<'_>,
    xml_buf: &mut Vec<u8>,
    text_buf: &mut Vec<u8>,
) -> Result<Option<String>, Bail> {
    let mut rich: Option<String> = None;
    let mut phonetic = false;
    loop {
        xml_buf.clear();
        match xml.read_event_into(xml_buf).map_err(Bail::xml)? {
            Event::Start(e) if e.local_name().as_ref() == "r" && rich.is_none() => rich = Some(String::new()),
            Event::Start(e) if e.local_name().as_ref() == "rPh" => phonetic = true,
            Event::End(e) if e.name() == closing => return Ok(Some(rich.unwrap_or_default())),
            Event::End(e) if e.local_name().as_ref() == "rPh" => phonetic = false,
            Event::Start(e) if e.local_name().as_ref() == "t" && !phonetic => {
                let preserve = super::attr(&e, "xml:space")?.is_some_and(|v| v == "preserve");
                let tname = e.name().as_ref().to_string();
                text_buf.clear();
                let mut value = String::new();
                loop {
                    match xml.read_event_into(text_buf).map_err(Bail::xml)? {
                        Event::Text(t) => value.push_str(&t.xml10_content()),
                        Event::CData(t) => value.push_str(&t.xml10_content()),
                        Event::GeneralRef(g) => push_entity(&g, &mut value)?,
                        Event::End(end) if end.name().as_ref() == tname.as_str() => break,
                        Event::Eof => return Err(Bail::new("t never ends")),
                        _ => {}
                    }
                }
                let value = if preserve {
                    unescape_excel(&value).into_owned()
                } else {
                    unescape_excel(value.trim_matches([' ', '\t', '\r', '\n'])).into_owned()
                };
                match &mut rich {
                    Some(s) => s.push_str(&value),
                    None => rich = Some(value),
                }
            }
            Event::Eof => return Err(Bail::new("string never ends")),
            _ => {}
        }
    }
}

/// A `&name;` or `&#…;` reference, appended to `out`.
fn push_entity(g: &quick_xml::events::BytesRef<'_>, out: &mut String) -> Result<(), Bail> {
    let name: &str = g.as_ref();
    if let Some(s) = quick_xml::escape::resolve_xml_entity(name) {
        out.push_str(s);
        return Ok(());
    }
    match g.resolve_char_ref() {
        Ok(Some(c)) => {
            out.push(c);
            Ok(())
        }
        _ => Err(Bail::new(format!("unknown entity &{name};"))),
    }
}

/// The text of a `<v>` or `<f>` element as calamine decodes it (entities, line ends); `raw`
/// is what lies between the tags.
pub fn decode_text(raw: &[u8]) -> Result<Cow<'_, str>, Bail> {
    if !raw.contains(&b'&') && !raw.contains(&b'\r') {
        return std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|_| Bail::new("text is not UTF-8"));
    }
    // Rare: let quick-xml do exactly what it does for calamine.
    let mut wrapped = Vec::with_capacity(raw.len() + 7);
    wrapped.extend_from_slice(b"<v>");
    wrapped.extend_from_slice(raw);
    wrapped.extend_from_slice(b"</v>");
    let mut r = xml_reader(&wrapped);
    let mut buf = Vec::new();
    let mut out = String::new();
    let mut started = false;
    loop {
        buf.clear();
        match r.read_event_into(&mut buf).map_err(Bail::xml)? {
            Event::Start(_) if !started => started = true,
            Event::Text(t) => out.push_str(&t.xml10_content()),
            Event::GeneralRef(g) => push_entity(&g, &mut out)?,
            Event::End(_) => break,
            Event::Eof => return Err(Bail::new("text never ends")),
            _ => return Err(Bail::new("markup inside a value")),
        }
    }
    Ok(Cow::Owned(out))
}

/// Excel's `_xHHHH_` escapes (a UTF-16 code unit each; `_x005F_` escapes an underscore).
pub fn unescape_excel(s: &str) -> Cow<'_, str> {
    let Some((mut index, mut unit)) = find_escape(s, 0) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    loop {
        out.push_str(&s[copied..index]);
        index += ESCAPE_LEN;
        match unit {
            0xD800..=0xDBFF => match parse_escape(s, index) {
                Some(low @ 0xDC00..=0xDFFF) => {
                    let cp = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                    out.push(char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER));
                    index += ESCAPE_LEN;
                }
                _ => out.push(char::REPLACEMENT_CHARACTER),
            },
            0xDC00..=0xDFFF => out.push(char::REPLACEMENT_CHARACTER),
            _ => out.push(char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER)),
        }
        copied = index;
        match find_escape(s, index) {
            Some(next) => (index, unit) = next,
            None => break,
        }
    }
    out.push_str(&s[copied..]);
    Cow::Owned(out)
}

const ESCAPE_LEN: usize = 7;

fn find_escape(s: &str, mut start: usize) -> Option<(usize, u16)> {
    while let Some(offset) = s[start..].find('_') {
        let index = start + offset;
        if let Some(unit) = parse_escape(s, index) {
            return Some((index, unit));
        }
        start = index + 1;
    }
    None
}

fn parse_escape(s: &str, index: usize) -> Option<u16> {
    let b = s.as_bytes().get(index..index + ESCAPE_LEN)?;
    if b[0] != b'_' || b[1] != b'x' || b[6] != b'_' || !b[2..6].iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u16::from_str_radix(std::str::from_utf8(&b[2..6]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_strings_join_runs_skip_phonetics_and_trim() {
        let xml = br#"<sst uniqueCount="4"><si><t>plain</t></si><si><r><t>bold </t></r><r><t xml:space="preserve"> run</t></r><rPh><t>PH</t></rPh></si><si><t>  padded  </t></si><si><t>a_x000D_b &amp; c&#x41;</t></si><si/></sst>"#;
        let s = read_shared_strings(xml).unwrap();
        let all: Vec<&str> = (0..s.len()).map(|i| s.get(i).unwrap()).collect();
        assert_eq!(all, vec!["plain", "bold run", "padded", "a\rb & cA", ""]);
    }

    #[test]
    fn values_decode_like_quick_xml() {
        assert_eq!(decode_text(b"a &lt; b").unwrap(), "a < b");
        assert_eq!(decode_text(b"x\r\ny").unwrap(), "x\ny");
        assert_eq!(decode_text(b"plain").unwrap(), "plain");
        assert!(decode_text(b"&bogus;").is_err());
        assert_eq!(unescape_excel("_x005F_x000D_"), "_x000D_");
        assert_eq!(unescape_excel("_xD83D__xDCF7_"), "\u{1F4F7}");
    }

    #[test]
    fn inline_strings() {
        assert_eq!(read_inline_string(b"<is><t>hi</t></is>").unwrap(), "hi");
        assert_eq!(read_inline_string(b"<is><r><t>a</t></r><r><t>b</t></r></is>").unwrap(), "ab");
        assert_eq!(read_inline_string(b"<is></is>").unwrap(), "");
    }
}
