//! Cell formatting for forks: what `style_batch` asks for, and how a save turns it into new
//! entries in `xl/styles.xml` (a font, fill, border or number format added, a cell format (`xf`)
//! derived from the cell's current one) without touching the entries already there.

use std::collections::HashMap;

use quick_xml::Reader;
use quick_xml::events::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::xlsx::set_attr;
use crate::error::{Result, SheetsError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct FontSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bold: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub italic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underline: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct BorderSpec {
    /// thin, medium, thick, dashed, dotted, double, none.
    pub style: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct AlignSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizontal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertical: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap: Option<bool>,
}

/// A formatting change for a range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct StyleSpec {
    /// e.g. "0.00%", "#,##0", "yyyy-mm-dd".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub font: Option<FontSpec>,
    /// RGB hex ("FFFF00"), or "none".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub border: Option<BorderSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<AlignSpec>,
}

fn bad(field: &'static str, msg: String) -> SheetsError {
    SheetsError::invalid(field, msg)
}

fn check_color(c: &str) -> Result<String> {
    let hex = c.trim().trim_start_matches('#');
    if hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(format!("FF{}", hex.to_ascii_uppercase()));
    }
    if hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(hex.to_ascii_uppercase());
    }
    Err(bad("style", format!("colour '{c}' is not RGB hex; write it like \"FF0000\"")))
}

impl StyleSpec {
    /// Check every field, with errors that say what is accepted.
    pub fn validate(&self) -> Result<()> {
        if self == &StyleSpec::default() {
            return Err(bad(
                "style",
                "the style changes nothing; give number_format, font, fill, border or alignment".into(),
            ));
        }
        if let Some(f) = &self.number_format
            && (f.is_empty() || f.len() > 255)
        {
            return Err(bad("number_format", "must be 1 to 255 characters, like \"0.00%\"".into()));
        }
        if let Some(font) = &self.font {
            if let Some(c) = &font.color {
                check_color(c)?;
            }
            if font.size.is_some_and(|s| !(1..=409).contains(&s)) {
                return Err(bad("font", "size must be 1 to 409 points".into()));
            }
        }
        if let Some(c) = &self.fill
            && c != "none"
        {
            check_color(c)?;
        }
        if let Some(b) = &self.border {
            if !BORDER_STYLES.contains(&b.style.as_str()) {
                return Err(bad("border", format!("style '{}' is not one of {}", b.style, BORDER_STYLES.join(", "))));
            }
            if let Some(c) = &b.color {
                check_color(c)?;
            }
        }
        if let Some(a) = &self.alignment {
            if let Some(h) = &a.horizontal
                && !["left", "center", "right", "fill", "justify", "general"].contains(&h.as_str())
            {
                return Err(bad("alignment", format!("horizontal '{h}' is not left, center, right, fill or justify")));
            }
            if let Some(v) = &a.vertical
                && !["top", "center", "bottom", "justify"].contains(&v.as_str())
            {
                return Err(bad("alignment", format!("vertical '{v}' is not top, center or bottom")));
            }
        }
        Ok(())
    }

    /// `later` applied over `self` (fields it sets win).
    pub fn merge(&self, later: &StyleSpec) -> StyleSpec {
        let font = match (&self.font, &later.font) {
            (Some(a), Some(b)) => Some(FontSpec {
                bold: b.bold.or(a.bold),
                italic: b.italic.or(a.italic),
                underline: b.underline.or(a.underline),
                size: b.size.or(a.size),
                color: b.color.clone().or(a.color.clone()),
                name: b.name.clone().or(a.name.clone()),
            }),
            (a, b) => b.clone().or(a.clone()),
        };
        let alignment = match (&self.alignment, &later.alignment) {
            (Some(a), Some(b)) => Some(AlignSpec {
                horizontal: b.horizontal.clone().or(a.horizontal.clone()),
                vertical: b.vertical.clone().or(a.vertical.clone()),
                wrap: b.wrap.or(a.wrap),
            }),
            (a, b) => b.clone().or(a.clone()),
        };
        StyleSpec {
            number_format: later.number_format.clone().or(self.number_format.clone()),
            font,
            fill: later.fill.clone().or(self.fill.clone()),
            border: later.border.clone().or(self.border.clone()),
            alignment,
        }
    }
}

const BORDER_STYLES: [&str; 7] = ["thin", "medium", "thick", "dashed", "dotted", "double", "none"];

/// Built-in number formats (ECMA-376 18.8.30) by code.
fn builtin_format(code: &str) -> Option<u32> {
    Some(match code {
        "General" => 0,
        "0" => 1,
        "0.00" => 2,
        "#,##0" => 3,
        "#,##0.00" => 4,
        "0%" => 9,
        "0.00%" => 10,
        "0.00E+00" => 11,
        "mm-dd-yy" => 14,
        "d-mmm-yy" => 15,
        "d-mmm" => 16,
        "mmm-yy" => 17,
        "h:mm AM/PM" => 18,
        "h:mm:ss AM/PM" => 19,
        "h:mm" => 20,
        "h:mm:ss" => 21,
        "m/d/yy h:mm" => 22,
        "@" => 49,
        _ => return None,
    })
}

/// A section of styles.xml: where its children end, and how many there are.
struct Section {
    /// Byte offset of the closing tag (where new children go), or of the empty element.
    close_at: usize,
    /// The section is an empty element (`<fonts count="0"/>`).
    empty: Option<(usize, usize)>,
    children: Vec<(usize, usize)>,
}

/// The parts of styles.xml a save needs: each section's children as byte spans.
struct Styles<'a> {
    xml: &'a str,
    num_fmts: Option<Section>,
    fonts: Section,
    fills: Section,
    borders: Section,
    cell_xfs: Section,
    max_num_fmt: u32,
}

fn scan(xml: &str) -> std::result::Result<Styles<'_>, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(false);
    let mut sections: HashMap<&'static str, Section> = HashMap::new();
    let mut stack: Vec<(&'static str, usize)> = Vec::new();
    let mut max_num_fmt = 163;
    let names = ["numFmts", "fonts", "fills", "borders", "cellXfs"];
    let mut depth = 0usize;
    loop {
        let start = reader.buffer_position() as usize;
        let ev = reader.read_event().map_err(|e| e.to_string())?;
        let end = reader.buffer_position() as usize;
        match &ev {
            Event::Start(e) => {
                depth += 1;
                let local = e.local_name();
                let name = local.as_ref();
                if depth == 2
                    && let Some(n) = names.iter().find(|n| **n == name)
                {
                    stack.push((n, start));
                    sections.insert(n, Section { close_at: 0, empty: None, children: Vec::new() });
                } else if depth == 3
                    && let Some((sec, _)) = stack.last()
                {
                    // A child element with content: its span ends at the matching end tag.
                    let child_start = start;
                    let mut d = 1usize;
                    while d > 0 {
                        match reader.read_event().map_err(|e| e.to_string())? {
                            Event::Start(_) => d += 1,
                            Event::End(_) => d -= 1,
                            Event::Eof => return Err("unexpected end of styles.xml".into()),
                            _ => {}
                        }
                    }
                    depth -= 1;
                    if let Some(s) = sections.get_mut(sec) {
                        s.children.push((child_start, reader.buffer_position() as usize));
                    }
                }
            }
            Event::Empty(e) => {
                let local = e.local_name();
                let name = local.as_ref();
                if depth == 1
                    && let Some(n) = names.iter().find(|n| **n == name)
                {
                    sections.insert(n, Section { close_at: start, empty: Some((start, end)), children: Vec::new() });
                } else if depth == 2
                    && let Some((sec, _)) = stack.last()
                {
                    if *sec == "numFmts"
                        && let Some(id) = e
                            .attributes()
                            .flatten()
                            .find(|a| a.key.as_ref() == "numFmtId")
                            .and_then(|a| a.value.parse::<u32>().ok())
                    {
                        max_num_fmt = max_num_fmt.max(id);
                    }
                    if let Some(s) = sections.get_mut(sec) {
                        s.children.push((start, end));
                    }
                }
            }
            Event::End(_) => {
                if depth == 2
                    && let Some((sec, _)) = stack.pop()
                    && let Some(s) = sections.get_mut(sec)
                {
                    s.close_at = start;
                }
                depth = depth.saturating_sub(1);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut take = |n: &str| sections.remove(n);
    let need = |s: Option<Section>, n: &str| s.ok_or_else(|| format!("styles.xml has no <{n}>"));
    Ok(Styles {
        xml,
        num_fmts: take("numFmts"),
        fonts: need(take("fonts"), "fonts")?,
        fills: need(take("fills"), "fills")?,
        borders: need(take("borders"), "borders")?,
        cell_xfs: need(take("cellXfs"), "cellXfs")?,
        max_num_fmt,
    })
}

fn attr_of(tag: &str, name: &str) -> Option<String> {
    let pat = format!(" {name}=\"");
    let i = tag.find(&pat)? + pat.len();
    let j = tag[i..].find('"')? + i;
    Some(tag[i..j].to_string())
}

/// Remove every child element `<name .../>` or `<name ...>...</name>` from a font's inner XML.
fn remove_child(inner: &str, name: &str) -> String {
    let mut out = inner.to_string();
    loop {
        let open = format!("<{name}");
        let Some(i) =
            out.match_indices(&open).map(|(i, _)| i).find(|&i| out[i + open.len()..].starts_with([' ', '/', '>']))
        else {
            return out;
        };
        let Some(gt) = out[i..].find('>') else { return out };
        let tag_end = i + gt + 1;
        let end = if out[..tag_end].ends_with("/>") {
            tag_end
        } else {
            let close = format!("</{name}>");
            out[tag_end..].find(&close).map(|j| tag_end + j + close.len()).unwrap_or(tag_end)
        };
        out.replace_range(i..end, "");
    }
}

/// An attribute value (format codes, font names): XML-escaped, with OOXML's `_xHHHH_` for the
/// characters XML cannot carry.
fn escape(s: &str) -> String {
    super::xstring::escape_attr(s).into_owned()
}

/// styles.xml with its elements in the default namespace: some writers (Java's JAXB, for one)
/// put SpreadsheetML under a prefix (`<ns2:styleSheet xmlns:ns2="…">`), and the entries a save
/// adds are written unprefixed. Every element in the root's prefix loses it, and the root
/// declares that namespace as the default; anything else is left byte for byte.
fn unprefix_root_namespace(xml: &str) -> std::result::Result<std::borrow::Cow<'_, str>, String> {
    let mut reader = Reader::from_str(xml);
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut prefix: Option<String> = None;
    loop {
        let start = reader.buffer_position() as usize;
        let ev = reader.read_event().map_err(|e| e.to_string())?;
        let (name, name_at) = match &ev {
            Event::Start(e) | Event::Empty(e) => (e.name(), start + 1),
            Event::End(e) => (e.name(), start + 2),
            Event::Eof => break,
            _ => continue,
        };
        let Some(p) = &prefix else {
            // The root element decides.
            let Some(p) = name.prefix() else { return Ok(xml.into()) };
            let p = p.as_ref().to_string();
            let (Event::Start(root) | Event::Empty(root)) = &ev else { return Ok(xml.into()) };
            let declared = format!("xmlns:{p}");
            let mut uri = None;
            for a in root.attributes().flatten() {
                if a.key.as_ref() == "xmlns" {
                    return Err("styles.xml puts its root under a prefix and declares another default namespace; \
                                this file's styles cannot be extended"
                        .into());
                }
                if a.key.as_ref() == declared {
                    // As written (already escaped for an attribute).
                    uri = Some(a.value.to_string());
                }
            }
            let Some(uri) = uri else {
                return Err(format!("styles.xml does not declare its root's prefix ({declared})"));
            };
            let tag_end = reader.buffer_position() as usize - if matches!(ev, Event::Empty(_)) { 2 } else { 1 };
            edits.push((name_at, name_at + p.len() + 1, String::new()));
            edits.push((tag_end, tag_end, format!(" xmlns=\"{uri}\"")));
            prefix = Some(p);
            continue;
        };
        if name.prefix().is_some_and(|q| q.as_ref() == p.as_str()) {
            edits.push((name_at, name_at + p.len() + 1, String::new()));
        }
    }
    let mut out = xml.to_string();
    for (a, b, text) in edits.into_iter().rev() {
        out.replace_range(a..b, &text);
    }
    Ok(out.into())
}

/// New styles.xml with a cell format for each (base xf, spec) pair; returns the new xf index
/// of each pair, in order.
pub fn add_formats(xml: &str, wanted: &[(u32, StyleSpec)]) -> std::result::Result<(String, Vec<u32>), String> {
    // The reader skips a byte-order mark without counting it in its positions: keep it aside.
    if let Some(body) = xml.strip_prefix('\u{feff}') {
        let (out, ids) = add_formats(body, wanted)?;
        return Ok((format!("\u{feff}{out}"), ids));
    }
    let unprefixed = unprefix_root_namespace(xml)?;
    let xml: &str = &unprefixed;
    let st = scan(xml)?;
    let child = |s: &Section, i: usize| s.children.get(i).map(|&(a, b)| &st.xml[a..b]);
    let (mut new_fmts, mut new_fonts, mut new_fills, mut new_borders, mut new_xfs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut next_fmt = st.max_num_fmt + 1;
    let mut out_ids = Vec::new();
    for (base, spec) in wanted {
        let base_xf = child(&st.cell_xfs, *base as usize).or_else(|| child(&st.cell_xfs, 0)).unwrap_or("<xf/>");
        let tag_end = base_xf.find('>').map(|i| i + 1).unwrap_or(base_xf.len());
        let mut tag = base_xf[..tag_end].trim_end_matches("/>").trim_end_matches('>').to_string();
        let mut inner = if base_xf[..tag_end].ends_with("/>") {
            String::new()
        } else {
            base_xf[tag_end..].trim_end_matches("</xf>").to_string()
        };
        if let Some(code) = &spec.number_format {
            let id = match builtin_format(code) {
                Some(id) => id,
                None => {
                    let id = next_fmt;
                    next_fmt += 1;
                    new_fmts.push(format!("<numFmt numFmtId=\"{id}\" formatCode=\"{}\"/>", escape(code)));
                    id
                }
            };
            tag = set_attr(&tag, "numFmtId", &id.to_string());
            tag = set_attr(&tag, "applyNumberFormat", "1");
        }
        if let Some(f) = &spec.font {
            let font_id: usize = attr_of(&tag, "fontId").and_then(|v| v.parse().ok()).unwrap_or(0);
            let base_font = child(&st.fonts, font_id).unwrap_or("<font/>");
            let (open, mut body) = match base_font.find('>') {
                Some(i) if !base_font[..=i].ends_with("/>") => {
                    (base_font[..=i].to_string(), base_font[i + 1..].trim_end_matches("</font>").to_string())
                }
                _ => ("<font>".to_string(), String::new()),
            };
            let mut add = String::new();
            if let Some(b) = f.bold {
                body = remove_child(&body, "b");
                if b {
                    add.push_str("<b/>");
                }
            }
            if let Some(i) = f.italic {
                body = remove_child(&body, "i");
                if i {
                    add.push_str("<i/>");
                }
            }
            if let Some(u) = f.underline {
                body = remove_child(&body, "u");
                if u {
                    add.push_str("<u/>");
                }
            }
            if let Some(sz) = f.size {
                body = remove_child(&body, "sz");
                add.push_str(&format!("<sz val=\"{sz}\"/>"));
            }
            if let Some(c) = &f.color {
                body = remove_child(&body, "color");
                add.push_str(&format!("<color rgb=\"{}\"/>", check_color(c).map_err(|e| e.to_string())?));
            }
            if let Some(n) = &f.name {
                body = remove_child(&body, "name");
                body = remove_child(&body, "scheme");
                add.push_str(&format!("<name val=\"{}\"/>", escape(n)));
            }
            let id = st.fonts.children.len() + new_fonts.len();
            new_fonts.push(format!("{open}{add}{body}</font>"));
            tag = set_attr(&tag, "fontId", &id.to_string());
            tag = set_attr(&tag, "applyFont", "1");
        }
        if let Some(c) = &spec.fill {
            let id = if c == "none" {
                0
            } else {
                let rgb = check_color(c).map_err(|e| e.to_string())?;
                let id = st.fills.children.len() + new_fills.len();
                new_fills.push(format!(
                    "<fill><patternFill patternType=\"solid\"><fgColor rgb=\"{rgb}\"/><bgColor indexed=\"64\"/></patternFill></fill>"
                ));
                id
            };
            tag = set_attr(&tag, "fillId", &id.to_string());
            tag = set_attr(&tag, "applyFill", "1");
        }
        if let Some(b) = &spec.border {
            let side = |n: &str| -> std::result::Result<String, String> {
                if b.style == "none" {
                    return Ok(format!("<{n}/>"));
                }
                let color = match &b.color {
                    Some(c) => format!("<color rgb=\"{}\"/>", check_color(c).map_err(|e| e.to_string())?),
                    None => "<color indexed=\"64\"/>".into(),
                };
                Ok(format!("<{n} style=\"{}\">{color}</{n}>", b.style))
            };
            let id = st.borders.children.len() + new_borders.len();
            new_borders.push(format!(
                "<border>{}{}{}{}<diagonal/></border>",
                side("left")?,
                side("right")?,
                side("top")?,
                side("bottom")?
            ));
            tag = set_attr(&tag, "borderId", &id.to_string());
            tag = set_attr(&tag, "applyBorder", "1");
        }
        if let Some(a) = &spec.alignment {
            let existing = inner.find("<alignment").map(|i| {
                let e = inner[i..].find("/>").map(|j| i + j + 2).unwrap_or(inner.len());
                (i, e)
            });
            let mut al = match existing {
                Some((i, e)) => inner[i..e].trim_end_matches("/>").to_string(),
                None => "<alignment".to_string(),
            };
            if let Some(h) = &a.horizontal {
                al = set_attr(&al, "horizontal", h);
            }
            if let Some(v) = &a.vertical {
                al = set_attr(&al, "vertical", v);
            }
            if let Some(w) = a.wrap {
                al = set_attr(&al, "wrapText", if w { "1" } else { "0" });
            }
            al.push_str("/>");
            match existing {
                Some((i, e)) => inner.replace_range(i..e, &al),
                None => inner.insert_str(0, &al),
            }
            tag = set_attr(&tag, "applyAlignment", "1");
        }
        let id = st.cell_xfs.children.len() + new_xfs.len();
        new_xfs.push(if inner.is_empty() { format!("{tag}/>") } else { format!("{tag}>{inner}</xf>") });
        out_ids.push(id as u32);
    }
    // Splice the additions in, from the end of the file backwards so offsets stay valid.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    match &st.num_fmts {
        Some(_) => {}
        None if !new_fmts.is_empty() => {
            let at = st
                .fonts
                .empty
                .map(|(a, _)| a)
                .unwrap_or_else(|| st.xml[..st.fonts.close_at].rfind("<fonts").unwrap_or(st.fonts.close_at));
            edits.push((at, at, format!("<numFmts count=\"{}\">{}</numFmts>", new_fmts.len(), new_fmts.concat())));
        }
        None => {}
    }
    let mut section = |s: &Section, name: &str, added: &[String]| {
        if added.is_empty() {
            return;
        }
        let count = s.children.len() + added.len();
        match s.empty {
            Some((a, b)) => edits.push((a, b, format!("<{name} count=\"{count}\">{}</{name}>", added.concat()))),
            None => {
                edits.push((s.close_at, s.close_at, added.concat()));
                // The section's start tag: update its count.
                let open_at = st.xml[..s.close_at].rfind(&format!("<{name}")).unwrap_or(0);
                let open_end = open_at + st.xml[open_at..].find('>').unwrap_or(0);
                let tag = &st.xml[open_at..open_end];
                edits.push((open_at, open_end, set_attr(tag, "count", &count.to_string())));
            }
        }
    };
    if let Some(s) = &st.num_fmts {
        section(s, "numFmts", &new_fmts);
    }
    section(&st.fonts, "fonts", &new_fonts);
    section(&st.fills, "fills", &new_fills);
    section(&st.borders, "borders", &new_borders);
    section(&st.cell_xfs, "cellXfs", &new_xfs);
    edits.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let mut out = st.xml.to_string();
    for (a, b, text) in edits {
        out.replace_range(a..b, &text);
    }
    Ok((out, out_ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STYLES: &str = r#"<styleSheet><fonts count="1"><font><sz val="11"/><name val="Calibri"/><scheme val="minor"/></font></fonts><fills count="2"><fill><patternFill patternType="none"/></fill><fill><patternFill patternType="gray125"/></fill></fills><borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders><cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs><cellXfs count="2"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/><xf numFmtId="14" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"><alignment horizontal="left"/></xf></cellXfs></styleSheet>"#;

    #[test]
    fn adds_derived_formats_and_keeps_the_rest() {
        let spec = StyleSpec {
            number_format: Some("0.000".into()),
            font: Some(FontSpec { bold: Some(true), color: Some("ff0000".into()), ..Default::default() }),
            fill: Some("FFFF00".into()),
            border: Some(BorderSpec { style: "thin".into(), color: None }),
            alignment: Some(AlignSpec { wrap: Some(true), ..Default::default() }),
        };
        spec.validate().unwrap();
        let (xml, ids) = add_formats(STYLES, &[(1, spec)]).unwrap();
        assert_eq!(ids, [2]);
        assert!(xml.starts_with(r#"<styleSheet><numFmts count="1"><numFmt numFmtId="164" formatCode="0.000"/></numFmts><fonts count="2">"#), "{xml}");
        assert!(xml.contains(r#"<font><b/><color rgb="FFFF0000"/><sz val="11"/><name val="Calibri"/><scheme val="minor"/></font></fonts>"#), "{xml}");
        assert!(xml.contains(r#"<fills count="3">"#) && xml.contains(r#"<fgColor rgb="FFFFFF00"/>"#));
        assert!(xml.contains(r#"<borders count="2">"#) && xml.contains(r#"<left style="thin">"#));
        assert!(xml.contains(r#"<cellXfs count="3">"#), "{xml}");
        assert!(xml.contains(r#"<xf numFmtId="164" fontId="1" fillId="2" borderId="1" xfId="0" applyNumberFormat="1" applyFont="1" applyFill="1" applyBorder="1" applyAlignment="1"><alignment horizontal="left" wrapText="1"/></xf></cellXfs>"#), "{xml}");
        // The original entries are untouched.
        assert!(xml.contains(r#"<xf numFmtId="14" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"><alignment horizontal="left"/></xf>"#));
    }

    #[test]
    fn a_prefixed_stylesheet_is_extended_in_the_default_namespace() {
        // As JAXB writes it (PhpSpreadsheet's issue 3720 file): SpreadsheetML under `ns2:`.
        let prefixed = STYLES
            .replace("<styleSheet>", r#"<ns2:styleSheet xmlns:ns2="urn:main" xmlns:x="urn:x">"#)
            .replace("</styleSheet>", "<x:ext/></ns2:styleSheet>");
        let prefixed = regex_free_prefix(&prefixed);
        let xml = format!(r#"<?xml version="1.0" standalone="yes"?>{prefixed}"#);
        let spec = StyleSpec { font: Some(FontSpec { bold: Some(true), ..Default::default() }), ..Default::default() };
        let (out, ids) = add_formats(&xml, &[(1, spec)]).unwrap();
        assert_eq!(ids, vec![2]);
        assert!(out.starts_with(r#"<?xml version="1.0" standalone="yes"?><styleSheet xmlns:ns2="urn:main" xmlns:x="urn:x" xmlns="urn:main"><fonts count="2">"#), "{out}");
        assert!(
            out.contains(r#"<cellXfs count="3">"#) && out.contains("<b/>") && out.ends_with("<x:ext/></styleSheet>"),
            "{out}"
        );
        assert!(!out.contains("ns2:fo") && !out.contains("</ns2:"), "{out}");
        // Well formed: every element closes in order.
        let mut r = Reader::from_str(&out);
        r.config_mut().check_end_names = true;
        while !matches!(r.read_event().unwrap(), Event::Eof) {}
    }

    /// The test stylesheet with every SpreadsheetML element moved under `ns2:`.
    fn regex_free_prefix(xml: &str) -> String {
        let mut out = String::new();
        let mut rest = xml;
        while let Some(i) = rest.find('<') {
            out.push_str(&rest[..=i]);
            rest = &rest[i + 1..];
            let close = rest.starts_with('/');
            if close {
                out.push('/');
                rest = &rest[1..];
            }
            if !rest.starts_with("ns2:") && !rest.starts_with("x:") {
                out.push_str("ns2:");
            }
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn bad_specs_say_what_is_accepted() {
        let e = StyleSpec { fill: Some("yellow".into()), ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("RGB hex"), "{e}");
        let e = StyleSpec::default().validate().unwrap_err().to_string();
        assert!(e.contains("changes nothing"), "{e}");
        let b = BorderSpec { style: "wavy".into(), color: None };
        let e = StyleSpec { border: Some(b), ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("thin"), "{e}");
    }
}
