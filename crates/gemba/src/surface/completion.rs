//! `completion/complete` for prompt arguments and resource-template variables: workbook ids
//! (by id prefix, then by path: prefix of the path or file name, substring, letters in order),
//! fork ids (they work wherever a workbook id does) and the sheet names of the workbook given
//! in the context. At most 100 values, best first, with the total count.

use rmcp::model::CompletionInfo;

/// A workbook (or fork) that may complete a `workbook_id`.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    /// Workspace path (a fork's: its original's).
    pub path: String,
}

/// How well `query` matches, lower is better; `None`: no match.
fn tier(query: &str, id: &str, path: &str) -> Option<(u8, usize)> {
    let q = query.trim().to_lowercase();
    if q.is_empty() {
        return Some((0, 0));
    }
    let (id, path) = (id.to_lowercase(), path.to_lowercase());
    let file = path.rsplit('/').next().unwrap_or(&path);
    if id.starts_with(&q) {
        return Some((0, 0));
    }
    if path.starts_with(&q) || file.starts_with(&q) {
        return Some((1, 0));
    }
    if let Some(at) = path.find(&q) {
        return Some((2, at));
    }
    subsequence_gaps(&q, &path).map(|gaps| (3, gaps))
}

/// Whether the letters of `q` appear in `s` in order; the letters skipped between them.
fn subsequence_gaps(q: &str, s: &str) -> Option<usize> {
    let mut chars = s.chars();
    let mut gaps = 0;
    let mut first = true;
    for c in q.chars() {
        let mut skipped = 0;
        loop {
            match chars.next() {
                Some(x) if x == c => break,
                Some(_) => skipped += 1,
                None => return None,
            }
        }
        if !first {
            gaps += skipped;
        }
        first = false;
    }
    Some(gaps)
}

fn info(values: Vec<String>) -> CompletionInfo {
    let total = values.len();
    let shown: Vec<String> = values.into_iter().take(CompletionInfo::MAX_VALUES).collect();
    let more = total > shown.len();
    // At most MAX_VALUES by construction, so the check cannot fail; an empty answer if it did.
    CompletionInfo::with_pagination(shown, Some(total as u32), more).unwrap_or_default()
}

/// Workbook and fork ids matching `query`, best first.
pub fn workbook_ids(candidates: &[Candidate], query: &str) -> CompletionInfo {
    let mut ranked: Vec<((u8, usize), &Candidate)> =
        candidates.iter().filter_map(|c| tier(query, &c.id, &c.path).map(|t| (t, c))).collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.path.cmp(&b.1.path)).then_with(|| a.1.id.cmp(&b.1.id)));
    info(ranked.into_iter().map(|(_, c)| c.id.clone()).collect())
}

/// Sheet names starting with `query` (any case), then those containing it, in workbook order.
pub fn sheet_names(names: &[String], query: &str) -> CompletionInfo {
    let q = query.trim().to_lowercase();
    let (mut starts, mut contains) = (Vec::new(), Vec::new());
    for n in names {
        let l = n.to_lowercase();
        if l.starts_with(&q) {
            starts.push(n.clone());
        } else if l.contains(&q) {
            contains.push(n.clone());
        }
    }
    starts.extend(contains);
    info(starts)
}

/// Nothing to offer (a free-text argument such as `changes`).
pub fn none() -> CompletionInfo {
    info(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, path: &str) -> Candidate {
        Candidate { id: id.into(), path: path.into() }
    }

    #[test]
    fn ids_complete_by_prefix_then_path_then_letters() {
        let books = [
            c("sales-3f2a", "sales.xlsx"),
            c("budget-19c0", "finance/budget.xlsx"),
            c("sales-2024-77aa", "archive/sales-2024.xlsx"),
            c("model-9f3c", "model.xlsx"),
            c("fork-0a1b2c3d", "model.xlsx"),
        ];
        assert_eq!(workbook_ids(&books, "sal").values, ["sales-2024-77aa", "sales-3f2a"]);
        // By path: the folder, then a file name's prefix.
        assert_eq!(workbook_ids(&books, "finance/").values, ["budget-19c0"]);
        assert_eq!(workbook_ids(&books, "BUD").values, ["budget-19c0"]);
        // Letters in order anywhere in the path.
        assert_eq!(workbook_ids(&books, "arcsl").values, ["sales-2024-77aa"]);
        // Fork ids complete too, and a fork matches by its original's path.
        assert_eq!(workbook_ids(&books, "fork").values, ["fork-0a1b2c3d"]);
        assert_eq!(workbook_ids(&books, "model").values, ["model-9f3c", "fork-0a1b2c3d"]);
        let all = workbook_ids(&books, "");
        assert_eq!((all.values.len(), all.total, all.has_more), (5, Some(5), Some(false)));
        assert!(workbook_ids(&books, "zzz").values.is_empty());
    }

    #[test]
    fn at_most_a_hundred_values() {
        let many: Vec<Candidate> = (0..250).map(|i| c(&format!("book-{i:03}"), &format!("b/{i:03}.xlsx"))).collect();
        let r = workbook_ids(&many, "book");
        assert_eq!((r.values.len(), r.total, r.has_more), (100, Some(250), Some(true)));
    }

    #[test]
    fn sheets_complete_by_prefix_then_substring() {
        let names: Vec<String> =
            ["Summary", "Inputs", "Sales 2024", "Q1 sales"].iter().map(|s| s.to_string()).collect();
        assert_eq!(sheet_names(&names, "sa").values, ["Sales 2024", "Q1 sales"]);
        assert_eq!(sheet_names(&names, "").values.len(), 4);
        assert!(none().values.is_empty());
    }
}
