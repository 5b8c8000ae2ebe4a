//! Which cell styles make a number a date or a duration: the styles part's custom number
//! formats and each cell format's `numFmtId`, judged exactly as calamine judges them (the
//! functions below are ported from calamine 0.38, MIT licence, Copyright 2016-2026 Johann
//! Tuffe), so both readers type the same cells as dates.

use std::collections::HashMap;

use quick_xml::events::Event;

use super::{Bail, xml_reader};

/// What a cell format makes of a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumKind {
    Other,
    DateTime,
    TimeDelta,
}

/// Whether a custom number format code shows a date or a duration.
pub fn detect_custom_number_format(format: &str) -> NumKind {
    let mut escaped = false;
    let mut is_quote = false;
    let mut brackets = 0u8;
    let mut prev = ' ';
    let mut hms = false;
    let mut ap = false;
    for s in format.chars() {
        match (s, escaped, is_quote, ap, brackets) {
            (_, true, ..) => escaped = false,
            ('_' | '\\' | '*', ..) => escaped = true,
            ('"', _, true, _, _) => is_quote = false,
            (_, _, true, _, _) => (),
            ('"', _, _, _, _) => is_quote = true,
            (';', ..) => return NumKind::Other,
            ('[', ..) => brackets += 1,
            (']', .., 1) if hms => return NumKind::TimeDelta,
            (']', ..) => brackets = brackets.saturating_sub(1),
            ('a' | 'A', _, _, false, 0) => ap = true,
            ('p' | 'm' | '/' | 'P' | 'M', _, _, true, 0) => return NumKind::DateTime,
            ('d' | 'm' | 'h' | 'y' | 's' | 'D' | 'M' | 'H' | 'Y' | 'S', _, _, false, 0) => return NumKind::DateTime,
            _ => {
                if hms && s.eq_ignore_ascii_case(&prev) {
                    // ok ...
                } else {
                    hms = prev == '[' && matches!(s, 'm' | 'h' | 's' | 'M' | 'H' | 'S');
                }
            }
        }
        prev = s;
    }
    NumKind::Other
}

/// Built-in number formats by id (the raw attribute text, as calamine matches it).
pub fn builtin_format_by_id(id: &str) -> NumKind {
    match id {
        "14" | "15" | "16" | "17" | "18" | "19" | "20" | "21" | "22" | "45" | "47" => NumKind::DateTime,
        "27" | "28" | "29" | "30" | "31" | "32" | "33" | "34" | "35" | "36" | "50" | "51" | "52" | "53" | "54"
        | "55" | "56" | "57" | "58" => NumKind::DateTime,
        "46" => NumKind::TimeDelta,
        _ => NumKind::Other,
    }
}

/// The kind of number each cell format (`cellXfs` entry, the cells' `s` index) shows.
pub fn read_cell_formats(bytes: &[u8]) -> Result<Vec<NumKind>, Bail> {
    let mut xml = xml_reader(bytes);
    let mut custom: HashMap<String, String> = HashMap::new();
    let mut formats = Vec::new();
    let mut buf = Vec::with_capacity(1024);
    let mut inner = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match xml.read_event_into(&mut buf).map_err(Bail::xml)? {
            Event::Start(e) if e.local_name().as_ref() == "numFmts" => loop {
                inner.clear();
                match xml.read_event_into(&mut inner).map_err(Bail::xml)? {
                    Event::Start(e) if e.local_name().as_ref() == "numFmt" => {
                        let id = super::attr(&e, "numFmtId")?;
                        let code = super::attr_decoded(&e, "formatCode")?;
                        if let (Some(id), Some(code)) = (id, code) {
                            custom.insert(id, code);
                        }
                    }
                    Event::End(e) if e.local_name().as_ref() == "numFmts" => break,
                    Event::Eof => return Err(Bail::new("styles: numFmts never ends")),
                    _ => {}
                }
            },
            Event::Start(e) if e.local_name().as_ref() == "cellXfs" => loop {
                inner.clear();
                match xml.read_event_into(&mut inner).map_err(Bail::xml)? {
                    Event::Start(e) if e.local_name().as_ref() == "xf" => {
                        formats.push(match super::attr(&e, "numFmtId")? {
                            None => NumKind::Other,
                            Some(id) => match custom.get(&id) {
                                Some(code) => detect_custom_number_format(code),
                                None => builtin_format_by_id(&id),
                            },
                        });
                    }
                    Event::End(e) if e.local_name().as_ref() == "cellXfs" => break,
                    Event::Eof => return Err(Bail::new("styles: cellXfs never ends")),
                    _ => {}
                }
            },
            Event::End(e) if e.local_name().as_ref() == "styleSheet" => break,
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(formats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_formats_are_recognized_like_calamine() {
        assert_eq!(detect_custom_number_format("DD/MM/YY"), NumKind::DateTime);
        assert_eq!(detect_custom_number_format("H:MM:SS;@"), NumKind::DateTime);
        assert_eq!(detect_custom_number_format("#,##0\\ [$\\u20bd-46D]"), NumKind::Other);
        assert_eq!(detect_custom_number_format("[h]:mm:ss"), NumKind::TimeDelta);
        assert_eq!(detect_custom_number_format("\"$\"#,##0_);[Red](\"$\"#,##0)"), NumKind::Other);
        assert_eq!(detect_custom_number_format("#,##0*y"), NumKind::Other);
        assert_eq!(detect_custom_number_format("*-yyyy-mm-dd"), NumKind::DateTime);
        assert_eq!(detect_custom_number_format("yyyy-mm-dd"), NumKind::DateTime);
        assert_eq!(builtin_format_by_id("14"), NumKind::DateTime);
        assert_eq!(builtin_format_by_id("46"), NumKind::TimeDelta);
        assert_eq!(builtin_format_by_id("164"), NumKind::Other);
    }

    #[test]
    fn cell_formats_follow_the_xf_list() {
        let xml = br#"<styleSheet><numFmts count="2"><numFmt numFmtId="164" formatCode="yyyy-mm-dd"/><numFmt numFmtId="165" formatCode="0.00"/></numFmts><cellXfs count="4"><xf numFmtId="0"/><xf numFmtId="164"/><xf numFmtId="165"/><xf/><xf numFmtId="46"></xf></cellXfs></styleSheet>"#;
        let f = read_cell_formats(xml).unwrap();
        assert_eq!(f, vec![NumKind::Other, NumKind::DateTime, NumKind::Other, NumKind::Other, NumKind::TimeDelta]);
    }
}
