//! The package around the sheets: zip entries (where each part's compressed bytes are in
//! the file image), the workbook part found through `_rels/.rels`, and each sheet's part
//! found through the workbook's relationships — resolved as calamine resolves them.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use quick_xml::events::Event;

use super::{Bail, attr, attr_decoded, xml_reader};

/// Parts read whole (relationships, styles, shared strings) may be at most this large.
const MAX_SMALL_PART: u64 = 512 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Stored,
    Deflated,
}

/// One zip entry: where its data starts in the image and how it is stored.
#[derive(Debug, Clone)]
pub struct Entry {
    pub data_start: usize,
    pub compressed: usize,
    pub size: u64,
    pub crc32: u32,
    pub method: Method,
}

#[derive(Debug)]
pub struct Package {
    /// Lower-cased, `/`-separated entry names → entry (`None`: a method or flag the fast
    /// reader does not handle).
    entries: HashMap<String, Option<Entry>>,
    /// Directory of the workbook part, e.g. "xl/".
    xl_path: String,
    /// (sheet name, part path) in workbook order.
    pub sheets: Vec<(String, String)>,
}

impl Package {
    pub fn open(image: &[u8]) -> Result<Self, Bail> {
        let mut zip = zip::ZipArchive::new(Cursor::new(image)).map_err(|e| Bail::new(format!("zip: {e}")))?;
        let mut entries = HashMap::with_capacity(zip.len());
        for i in 0..zip.len() {
            let f = zip.by_index_raw(i).map_err(|e| Bail::new(format!("zip entry {i}: {e}")))?;
            let name = String::from_utf8_lossy(f.name_raw()).replace('\\', "/").to_ascii_lowercase();
            let method = match f.compression() {
                zip::CompressionMethod::Stored => Some(Method::Stored),
                zip::CompressionMethod::Deflated => Some(Method::Deflated),
                _ => None,
            };
            let entry = match (method, f.data_start(), f.encrypted()) {
                (Some(method), Some(start), false) => {
                    let start = usize::try_from(start).ok();
                    let compressed = usize::try_from(f.compressed_size()).ok();
                    match (start, compressed) {
                        (Some(s), Some(c)) if s.checked_add(c).is_some_and(|end| end <= image.len()) => {
                            Some(Entry { data_start: s, compressed: c, size: f.size(), crc32: f.crc32(), method })
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            entries.insert(name, entry);
        }
        let mut p = Package { entries, xl_path: "xl/".into(), sheets: Vec::new() };
        let mut workbook_name = "workbook.xml".to_string();
        // The workbook part, from the package relationships.
        let rels = p.read_small(image, "_rels/.rels")?.ok_or_else(|| Bail::new("no _rels/.rels"))?;
        let target = relationships(&rels)?
            .into_values()
            .find(|(_, typ)| typ.ends_with("/relationships/officeDocument"))
            .map(|(t, _)| t)
            .ok_or_else(|| Bail::new("no officeDocument relationship"))?;
        let target = quick_xml::escape::unescape(&target).map_err(|e| Bail::new(format!("{e}")))?.into_owned();
        let (dir, name) = match target.rfind('/') {
            Some(i) => target.split_at(i + 1),
            None => ("", target.as_str()),
        };
        p.xl_path = dir.strip_prefix('/').unwrap_or(dir).to_string();
        if !name.is_empty() {
            workbook_name = name.to_string();
        }
        let rels_path = format!("{}_rels/{workbook_name}.rels", p.xl_path);
        let rels = p.read_small(image, &rels_path)?.ok_or_else(|| Bail::new("no workbook relationships"))?;
        let rels = relationships(&rels)?;
        let wb_path = format!("{}{workbook_name}", p.xl_path);
        let wb = p.read_small(image, &wb_path)?.ok_or_else(|| Bail::new("no workbook part"))?;
        p.sheets = sheets(&wb, &rels, &p.xl_path)?;
        Ok(p)
    }

    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&path.to_ascii_lowercase()).and_then(Option::as_ref)
    }

    /// The path of a part beside the workbook part (e.g. "styles.xml"), if the zip has it.
    pub fn part_path_of(&self, name: &str) -> Option<String> {
        let path = format!("{}{name}", self.xl_path);
        self.entries.contains_key(&path.to_ascii_lowercase()).then_some(path)
    }

    /// A whole part, inflated (`None` when the zip has no such entry).
    pub fn read_small(&self, image: &[u8], path: &str) -> Result<Option<Vec<u8>>, Bail> {
        let Some(e) = self.small_entry(path)? else { return Ok(None) };
        inflate_small(path, e, &image[e.data_start..e.data_start + e.compressed]).map(Some)
    }

    /// The entry of a part to be read whole (`None` when the zip has no such entry); a method
    /// the fast reader does not handle, or a part too large to read whole, is a [`Bail`].
    pub fn small_entry(&self, path: &str) -> Result<Option<&Entry>, Bail> {
        let Some(e) = self.entries.get(&path.to_ascii_lowercase()) else { return Ok(None) };
        let e =
            e.as_ref().ok_or_else(|| Bail::new(format!("{path}: a zip method the fast reader leaves to calamine")))?;
        if e.size > MAX_SMALL_PART {
            return Err(Bail::new(format!("{path} is too large to read whole")));
        }
        Ok(Some(e))
    }
}

/// A whole part inflated from its compressed bytes (`data`), checked against the directory.
pub fn inflate_small(path: &str, e: &Entry, data: &[u8]) -> Result<Vec<u8>, Bail> {
    let mut out = Vec::with_capacity(e.size as usize);
    match e.method {
        Method::Stored => out.extend_from_slice(data),
        Method::Deflated => {
            flate2::read::DeflateDecoder::new(data)
                .take(e.size + 1)
                .read_to_end(&mut out)
                .map_err(|err| Bail::new(format!("{path}: inflate: {err}")))?;
        }
    }
    if out.len() as u64 != e.size || crc32fast::hash(&out) != e.crc32 {
        return Err(Bail::new(format!("{path}: size or checksum differs from the zip directory")));
    }
    Ok(out)
}

/// Relationship id → (target, type).
fn relationships(xml: &[u8]) -> Result<HashMap<String, (String, String)>, Bail> {
    let mut r = xml_reader(xml);
    let mut out = HashMap::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_event_into(&mut buf).map_err(Bail::xml)? {
            Event::Start(e) if e.local_name().as_ref() == "Relationship" => {
                if let Some(id) = attr(&e, "Id")? {
                    let typ = attr(&e, "Type")?.unwrap_or_default();
                    let target = attr(&e, "Target")?.unwrap_or_default();
                    out.insert(id, (target, typ));
                }
            }
            Event::End(e) if e.local_name().as_ref() == "Relationships" => break,
            Event::Eof => return Err(Bail::new("relationships never end")),
            _ => {}
        }
    }
    Ok(out)
}

/// The workbook's sheets (name, part path); a strict OOXML workbook is left to calamine.
fn sheets(xml: &[u8], rels: &HashMap<String, (String, String)>, xl_path: &str) -> Result<Vec<(String, String)>, Bail> {
    let mut r = xml_reader(xml);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_event_into(&mut buf).map_err(Bail::xml)? {
            Event::Start(e) if e.local_name().as_ref() == "workbook" => {
                let strict = e
                    .attributes()
                    .with_checks(false)
                    .flatten()
                    .any(|a| a.key.as_ref().starts_with("xmlns") && a.value.contains("purl.oclc.org"));
                if strict {
                    return Err(Bail::new("strict OOXML"));
                }
            }
            Event::Start(e) if e.local_name().as_ref() == "sheet" => {
                let name = attr_decoded(&e, "name")?.unwrap_or_default();
                let mut rel_id = None;
                for a in e.attributes().with_checks(false) {
                    let a = a.map_err(|e| Bail::new(format!("attribute: {e}")))?;
                    let k: &str = a.key.as_ref();
                    if k == "id" || k.ends_with(":id") {
                        rel_id = Some(a.value.into_owned());
                    }
                }
                let (target, _) = rel_id
                    .and_then(|id| rels.get(&id))
                    .ok_or_else(|| Bail::new(format!("sheet '{name}' has no relationship")))?;
                let path = match target.strip_prefix('/') {
                    Some(abs) => abs.to_string(),
                    None => format!("{xl_path}{target}"),
                };
                out.push((name, path));
            }
            Event::End(e) if e.local_name().as_ref() == "workbook" => break,
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}
