//! Workbooks as MCP resources: `gemba://workbooks/{workbook_id}` is the workbook summary (JSON,
//! what `workbook_summary` returns) and `gemba://workbooks/{workbook_id}/sheets/{sheet_name}`
//! the sheet's first page (CSV, what `sheet_page` returns). `resources/list` lists the
//! workspace's workbooks a page at a time. Template variables are percent-encoded (RFC 6570
//! simple expansion), so a sheet name with spaces or slashes survives the URI.

use rmcp::model::{ListResourcesResult, Resource, ResourceTemplate};

pub const WORKBOOK_TEMPLATE: &str = "gemba://workbooks/{workbook_id}";
pub const SHEET_TEMPLATE: &str = "gemba://workbooks/{workbook_id}/sheets/{sheet_name}";
const PREFIX: &str = "gemba://workbooks/";
/// Workbooks per `resources/list` page.
pub const PAGE: usize = 100;
/// How long a client may reuse a listing (the workspace is rescanned at most once a second).
pub const LIST_TTL_MS: u64 = 1_000;
/// The templates never change while the server runs.
pub const STATIC_TTL_MS: u64 = 3_600_000;

/// What a `gemba://` URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Workbook { id: String },
    Sheet { id: String, sheet: String },
}

impl Target {
    pub fn workbook_id(&self) -> &str {
        match self {
            Target::Workbook { id } | Target::Sheet { id, .. } => id,
        }
    }
}

/// Why a URI is not one of ours (the message says what the URIs look like).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    #[error(
        "'{0}' is not a Gemba resource; workbooks are {WORKBOOK_TEMPLATE} and {SHEET_TEMPLATE} (see resources/list)"
    )]
    Foreign(String),
    #[error("'{0}' is malformed: {1}")]
    Malformed(String, &'static str),
}

/// Parse a workbook or sheet URI.
pub fn parse(uri: &str) -> Result<Target, UriError> {
    let rest = uri.strip_prefix(PREFIX).ok_or_else(|| UriError::Foreign(uri.to_string()))?;
    let mut parts = rest.splitn(3, '/');
    let id = parts.next().unwrap_or_default();
    let id = decode(id).ok_or_else(|| UriError::Malformed(uri.to_string(), "bad percent-encoding"))?;
    if id.trim().is_empty() {
        return Err(UriError::Malformed(uri.to_string(), "the workbook id is empty"));
    }
    match (parts.next(), parts.next()) {
        (None, _) | (Some(""), None) => Ok(Target::Workbook { id }),
        (Some("sheets"), Some(sheet)) if !sheet.is_empty() => {
            let sheet = decode(sheet).ok_or_else(|| UriError::Malformed(uri.to_string(), "bad percent-encoding"))?;
            Ok(Target::Sheet { id, sheet })
        }
        _ => Err(UriError::Malformed(uri.to_string(), "expected .../sheets/{sheet_name} after the workbook id")),
    }
}

/// The URI of a workbook's summary.
pub fn workbook_uri(id: &str) -> String {
    format!("{PREFIX}{}", encode(id))
}

/// The URI of a sheet's first page.
#[cfg(test)]
pub fn sheet_uri(id: &str, sheet: &str) -> String {
    format!("{PREFIX}{}/sheets/{}", encode(id), encode(sheet))
}

/// Percent-encode everything but RFC 3986's unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undo percent-encoding; `None` for a broken escape or bytes that are not UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The two templates, for `resources/templates/list`.
pub fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(WORKBOOK_TEMPLATE, "workbook")
            .with_title("Workbook summary")
            .with_description("Every sheet of a workbook with its used range, counts and detected regions (JSON, as workbook_summary).")
            .with_mime_type("application/json"),
        ResourceTemplate::new(SHEET_TEMPLATE, "sheet")
            .with_title("Sheet, first page")
            .with_description("The first 50 rows of a sheet as CSV with a leading row-number column (as sheet_page); use sheet_page for more.")
            .with_mime_type("text/csv"),
    ]
}

/// One listed workbook.
pub struct Listed<'a> {
    pub id: &'a str,
    pub path: &'a str,
    pub size: u64,
}

/// A page of `resources/list`: the `fixed` resources first (on the first page only), then
/// workbooks from the cursor on. The cursor is opaque to clients: the offset of the next page.
pub fn list_page<'a>(
    fixed: Vec<Resource>,
    workbooks: impl ExactSizeIterator<Item = Listed<'a>>,
    cursor: Option<&str>,
) -> Result<ListResourcesResult, String> {
    let start = match cursor {
        None => 0,
        Some(c) => c
            .strip_prefix("wb:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| format!("cursor '{c}' is not one this server gave; list again without a cursor"))?,
    };
    let total = workbooks.len();
    let mut items = if start == 0 { fixed } else { Vec::new() };
    items.extend(workbooks.skip(start).take(PAGE).map(|w| {
        Resource::new(workbook_uri(w.id), w.path)
            .with_title(format!("{} (summary)", w.path))
            .with_description(format!(
                "Summary of {} ({} bytes): sheets, used ranges, regions. Sheets: {}",
                w.path,
                w.size,
                SHEET_TEMPLATE.replace("{workbook_id}", &encode(w.id))
            ))
            .with_mime_type("application/json")
    }));
    let end = (start + PAGE).min(total);
    let mut page = ListResourcesResult::with_all_items(items)
        .with_ttl_ms(LIST_TTL_MS)
        .with_cache_scope(rmcp::model::CacheScope::Private);
    page.next_cursor = (end < total).then(|| format!("wb:{end}"));
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_with_awkward_sheet_names() {
        assert_eq!(parse("gemba://workbooks/sales-3f2a"), Ok(Target::Workbook { id: "sales-3f2a".into() }));
        assert_eq!(parse("gemba://workbooks/sales-3f2a/"), Ok(Target::Workbook { id: "sales-3f2a".into() }));
        for sheet in ["Sales", "P&L 2024", "a/b?c#d", "Überblick %", "ünï €"] {
            let uri = sheet_uri("sales-3f2a", sheet);
            assert!(!uri[PREFIX.len()..].contains(' ') && uri.matches('/').count() == 5, "{uri}");
            assert_eq!(parse(&uri), Ok(Target::Sheet { id: "sales-3f2a".into(), sheet: sheet.into() }), "{uri}");
        }
        assert_eq!(sheet_uri("b", "P&L 2024"), "gemba://workbooks/b/sheets/P%26L%202024");
        assert!(matches!(parse("kaizen://metrics"), Err(UriError::Foreign(_))));
        assert!(matches!(parse("gemba://workbooks/"), Err(UriError::Malformed(..))));
        assert!(matches!(parse("gemba://workbooks/x/tables/y"), Err(UriError::Malformed(..))));
        assert!(matches!(parse("gemba://workbooks/x/sheets/%zz"), Err(UriError::Malformed(..))));
        assert!(matches!(parse("gemba://workbooks/x/sheets/%ff"), Err(UriError::Malformed(..))));
    }

    #[test]
    fn listing_pages_through_the_workspace() {
        let books: Vec<(String, String)> = (0..250).map(|i| (format!("b-{i:03}"), format!("d/{i:03}.xlsx"))).collect();
        let listed = || books.iter().map(|(id, path)| Listed { id, path, size: 10 });
        let fixed = vec![Resource::new("kaizen://metrics", "kaizen-metrics")];
        let p1 = list_page(fixed.clone(), listed(), None).unwrap();
        assert_eq!(p1.resources.len(), 1 + PAGE);
        assert_eq!(p1.resources[1].uri, "gemba://workbooks/b-000");
        assert_eq!(p1.resources[1].name, "d/000.xlsx");
        assert_eq!(p1.ttl_ms, Some(LIST_TTL_MS));
        let p2 = list_page(fixed.clone(), listed(), p1.next_cursor.as_deref()).unwrap();
        assert_eq!(p2.resources[0].uri, "gemba://workbooks/b-100");
        let p3 = list_page(fixed.clone(), listed(), p2.next_cursor.as_deref()).unwrap();
        assert_eq!((p3.resources.len(), p3.next_cursor.clone()), (50, None));
        assert!(list_page(fixed, listed(), Some("x")).unwrap_err().contains("list again without a cursor"));
    }
}
