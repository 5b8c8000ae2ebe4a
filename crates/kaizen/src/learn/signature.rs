//! Error taxonomy and signatures: every failed request gets a category (`user`, `data`,
//! `transient`, `system`) and a signature (its message with the specifics taken out, plus tool
//! and category), so one kind of mistake is counted once however many names, ids and paths it
//! was made with. Per signature: counts, first and last seen, affected keys, an example, what the
//! agent called next (did it recover?), and a Pareto ranking.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ids::{FastMap, FastSet};

use super::ids::stable_id;
use super::scan::{LogRow, text};
use super::time::iso;
use super::usage::ToolCount;

/// What kind of failure: decides who can fix it and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// The caller's mistake: a bad argument, an unknown name.
    User,
    /// The input itself: an unreadable or unsupported file, a limit hit.
    Data,
    /// Worth retrying: a timeout, a refusal under load, a backend retry, a cancel.
    Transient,
    /// The server's fault: an internal error, a panic, I/O.
    System,
}

impl Category {
    pub const ALL: [Category; 4] = [Category::User, Category::Data, Category::Transient, Category::System];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::User => "user",
            Category::Data => "data",
            Category::Transient => "transient",
            Category::System => "system",
        }
    }

    /// The category named `s` (exactly one of the four names), if any.
    pub fn parse(s: &str) -> Option<Category> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Longest signature text, in characters.
const MAX_SIGNATURE: usize = 200;
/// Longest quoted span replaced by a placeholder; a lone quote beyond this is kept as text.
const MAX_QUOTED: usize = 300;

/// Characters that end a word (besides whitespace) and are kept as they are.
fn is_delimiter(c: char) -> bool {
    matches!(c, ',' | ';' | '(' | ')' | '[' | ']' | '{' | '}' | '<' | '>' | '=' | '!' | '?' | '|' | '*' | '`' | '&')
}

fn is_quote(c: char) -> bool {
    matches!(c, '\'' | '"' | '\u{2018}' | '\u{2019}' | '\u{201c}' | '\u{201d}')
}

fn closing_quote(c: char) -> char {
    match c {
        '\u{2018}' => '\u{2019}',
        '\u{201c}' => '\u{201d}',
        c => c,
    }
}

/// Whether `w` names a file or directory: rooted, home- or dot-relative, a drive letter, or
/// something with a slash whose last part has a file extension.
fn is_path(w: &str) -> bool {
    let b = w.as_bytes();
    if w.len() > 1 && (w.starts_with('/') || w.starts_with("~/") || w.starts_with("./") || w.starts_with("../")) {
        return true;
    }
    if b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/') {
        return true;
    }
    if let Some(i) = w.rfind(['/', '\\'])
        && i > 0
    {
        let last = &w[i + 1..];
        if let Some(dot) = last.rfind('.') {
            let ext = &last[dot + 1..];
            return dot > 0 && (1..=5).contains(&ext.len()) && ext.chars().all(|c| c.is_ascii_alphanumeric());
        }
    }
    false
}

fn is_digitish(c: char) -> bool {
    c.is_ascii_digit() || c == '#'
}

/// The placeholder for one word of a message (or the word itself when it is not a specific).
fn classify_word<'a>(w: &'a str, key: Option<&str>) -> &'a str {
    if key.is_some_and(|k| k == w) {
        return "<id>";
    }
    if w.contains("://") {
        return "<url>";
    }
    if is_path(w) {
        return "<path>";
    }
    if !w.chars().any(is_digitish) {
        return w;
    }
    let body = w.trim_start_matches(['-', '+']);
    if body.chars().all(|c| is_digitish(c) || matches!(c, '.' | ':' | '-' | '_' | '/' | ',')) {
        return "#";
    }
    // A number with a short unit: 500ms, 8MB, 2s, 75%.
    let digits = body.find(|c: char| !(is_digitish(c) || c == '.')).unwrap_or(body.len());
    let unit = &body[digits..];
    if digits > 0 && (1..=3).contains(&unit.len()) && unit.chars().all(|c| c.is_ascii_alphabetic() || c == '%') {
        return "#unit";
    }
    "<id>"
}

/// An error message with its specifics replaced by placeholders, so one kind of mistake has one
/// text: quoted names become `'?'`, numbers `#` (with their unit: `#ms`), ids and hashes `<id>`
/// (as does `key`, the resource the request touched), paths `<path>`, URLs `<url>`. Only the
/// first clause is kept (up to `; `, ` — ` or "did you mean"): what follows is a hint whose
/// lists vary from call to call. Idempotent, also on messages logged by older versions, which
/// replaced quoted text with `'?'` and digit runs with `#`.
pub fn normalize(message: &str, key: Option<&str>) -> String {
    let chars: Vec<char> = message.chars().take(crate::store::MAX_ERROR_MESSAGE).collect();
    let mut out = String::with_capacity(chars.len().min(MAX_SIGNATURE + 16));
    let mut word = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_quote(c) {
            let prev_alnum = i > 0 && chars[i - 1].is_alphanumeric();
            let close = closing_quote(c);
            let end = if prev_alnum && c != '"' {
                None
            } else {
                (i + 1..chars.len().min(i + 2 + MAX_QUOTED))
                    .find(|&j| chars[j] == close && chars.get(j + 1).is_none_or(|n| !n.is_alphanumeric()))
            };
            if let Some(j) = end {
                out.push_str("'?'");
                i = j + 1;
                continue;
            }
            // An apostrophe (can't) or a lone quote: part of the text.
            word.push(c);
            i += 1;
            continue;
        }
        // Inside a URL, `?`, `=` and `&` belong to the word.
        if c.is_whitespace() || (is_delimiter(c) && !word.contains("://")) {
            flush_word(&mut out, &mut word, key);
            if c.is_whitespace() {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
            } else {
                out.push(c);
            }
            i += 1;
            continue;
        }
        word.push(c);
        i += 1;
    }
    flush_word(&mut out, &mut word, key);
    first_clause(&out)
}

/// Append `word`'s placeholder (keeping trailing `.` and `:` outside it) and clear it.
fn flush_word(out: &mut String, word: &mut String, key: Option<&str>) {
    if word.is_empty() {
        return;
    }
    let core = word.trim_end_matches(['.', ':']);
    let tail = &word[core.len()..];
    if !core.is_empty() {
        match classify_word(core, key) {
            "#unit" => {
                let body = core.trim_start_matches(['-', '+']);
                let digits = body.find(|c: char| !(is_digitish(c) || c == '.')).unwrap_or(body.len());
                out.push('#');
                out.push_str(&body[digits..]);
            }
            p => out.push_str(p),
        }
    }
    out.push_str(tail);
    word.clear();
}

/// The message up to its first hint separator, trimmed and capped.
fn first_clause(s: &str) -> String {
    let mut end = s.len();
    for sep in ["; ", " — ", " – ", " -- ", " - did you mean", "did you mean"] {
        if let Some(i) = s.find(sep)
            && i > 0
        {
            end = end.min(i);
        }
    }
    let t = s[..end].trim_end_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ':' | ';' | '(' | '-' | '—'));
    let t = t.trim_start();
    crate::store::cap_chars(t, MAX_SIGNATURE).trim_end().to_string()
}

const TRANSIENT: &[&str] = &[
    "timed out",
    "timeout",
    "took longer than",
    "at capacity",
    "too many requests",
    "rate limit",
    "try again",
    "retry after",
    "temporarily",
    "unavailable",
    "refused",
    "busy",
    "cancelled",
    "canceled",
    "circuit",
    "half-open",
    "overloaded",
    "deadline",
    "connection reset",
];

const DATA: &[&str] = &[
    "not a zip",
    "zip archive",
    "could not be read",
    "cannot be read",
    "unreadable",
    "corrupt",
    "malformed",
    "encrypted",
    "password",
    "exceeds a limit",
    "limit exceeded",
    "too large",
    "too many cells",
    "too many rows",
    "unsupported",
    "not supported",
    "invalid file",
    "not a valid",
    "unexpected end of file",
    "bad magic",
];

const SYSTEM: &[&str] = &[
    "internal error",
    "internal",
    "panic",
    "i/o error",
    "io error",
    "os error",
    "permission denied",
    "no space left",
    "disk full",
    "out of memory",
    "database",
    "poisoned",
    "broken pipe",
    "thread",
];

/// Whether a (lower-case, normalized) message reads as the caller's mistake.
fn reads_as_user(m: &str) -> bool {
    (m.starts_with("no ") && !m.starts_with("no space"))
        || m.starts_with("unknown ")
        || m.starts_with("invalid `")
        || m.starts_with("invalid argument")
        || m.starts_with("invalid params")
        || m.starts_with("missing ")
        || m.contains("did you mean")
        || m.contains("not found")
        || m.contains("must be ")
}

/// The category of a failed request. Outcomes that are transient by nature (timeout, rejected,
/// cancelled) decide first; then the embedder's own class when it is `data`, `transient` or
/// `system`; a `user` class, a missing one or an unknown one is checked against the message
/// (older logs filed unreadable files under `user`); what is left follows the outcome.
pub fn categorize(outcome: &str, error_class: Option<&str>, message: &str) -> Category {
    if matches!(outcome, "timeout" | "rejected" | "cancelled" | "canceled") {
        return Category::Transient;
    }
    if let Some(c) = error_class.and_then(Category::parse)
        && c != Category::User
    {
        return c;
    }
    let m = message.to_lowercase();
    if reads_as_user(&m) {
        return Category::User;
    }
    if TRANSIENT.iter().any(|p| m.contains(p)) {
        return Category::Transient;
    }
    if DATA.iter().any(|p| m.contains(p)) {
        return Category::Data;
    }
    if SYSTEM.iter().any(|p| m.contains(p)) {
        return Category::System;
    }
    if error_class == Some("user") {
        return Category::User;
    }
    match outcome {
        "tool_error" | "invalid_params" => Category::User,
        o if o.contains("cancel") => Category::Transient,
        _ => Category::System,
    }
}

/// One request of a signature, to show what it looked like.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub at: String,
    pub session: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The message as logged (at most 500 characters).
    pub message: String,
    /// The arguments as logged (JSON cut to at most 300 characters), when the embedder sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<String>,
}

/// What agents did right after this error, in the same session.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowUp {
    /// Errors followed by another call in the same session.
    pub followed: u64,
    /// The most common next calls (tool, count), most common first.
    pub next: Vec<ToolCount>,
    /// Share of follow-ups that succeeded (the agent recovered).
    pub recovered: f64,
    /// Share of follow-ups that called the same tool again.
    pub retried_same_tool: f64,
    /// Sessions that ended on this error (the agent gave up).
    pub abandoned: u64,
    /// `abandoned` over the error's count.
    pub abandoned_share: f64,
}

/// One error signature, with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureStats {
    /// Stable across reports while the signature persists (a hash of tool, category and text).
    pub id: String,
    pub signature: String,
    pub category: Category,
    pub tool: String,
    pub count: u64,
    /// Share of all errors in the period.
    pub share: f64,
    /// Share of all errors made by this signature and every one ranked above it (Pareto).
    pub cumulative_share: f64,
    pub first_seen: String,
    pub last_seen: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Distinct keys (workbooks) affected (counted up to 4,096 per signature, a million in all).
    pub keys: u64,
    /// A few of them.
    pub key_examples: Vec<String>,
    pub example: Example,
    pub follow_up: FollowUp,
}

/// The errors section of a report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ErrorsSection {
    /// Failed requests in the period.
    pub total: u64,
    /// Errors per category.
    pub by_category: BTreeMap<String, u64>,
    /// Distinct signatures.
    pub signatures: u64,
    /// How many of the top signatures make 80 % of the errors.
    pub pareto_80: u64,
    /// The top signatures, most frequent first.
    pub top: Vec<SignatureStats>,
    /// Errors not given a signature because the distinct-signature bound was reached.
    pub unsigned: u64,
}

/// Most distinct signatures tracked; later new ones are counted in `unsigned`.
const MAX_SIGNATURES: usize = 20_000;
/// Most distinct keys counted per signature.
const MAX_KEYS_PER_SIGNATURE: usize = 4096;
/// Most distinct keys remembered over all signatures (bounds memory on very large logs).
const MAX_KEYS_TOTAL: usize = 1_000_000;

#[derive(Debug, Default)]
struct FollowAcc {
    followed: u64,
    recovered: u64,
    same_tool: u64,
    abandoned: u64,
    next: FastMap<u16, u64>,
}

#[derive(Debug)]
struct Acc {
    tool: u16,
    category: Category,
    text: String,
    count: u64,
    first: i64,
    last: i64,
    keys: FastSet<u64>,
    key_examples: Vec<String>,
    example: Example,
    follow: FollowAcc,
}

/// The accumulator: feed it every row, then `finish`.
#[derive(Debug, Default)]
pub(crate) struct Signatures {
    index: FastMap<(u16, Category, String), u32>,
    accs: Vec<Acc>,
    by_category: [u64; 4],
    total: u64,
    unsigned: u64,
    keys_remembered: usize,
}

pub(crate) fn key_hash(s: &str) -> u64 {
    super::ids::fnv64(s.as_bytes())
}

impl Signatures {
    /// Count a row if it failed (a call its client cancelled did not); returns its signature's
    /// index.
    pub fn observe(&mut self, row: &LogRow<'_>, tool: u16) -> Option<u32> {
        if !row.failed() {
            return None;
        }
        let outcome = text(row.outcome);
        let raw = row.error_message.map(text).unwrap_or_else(|| outcome.clone());
        let key = row.key.map(text);
        let normalized = normalize(&raw, key.as_deref());
        let class = row.error_class.map(text);
        let category = categorize(&outcome, class.as_deref(), &normalized);
        self.total += 1;
        self.by_category[category as usize] += 1;
        let example = |row: &LogRow<'_>| Example {
            at: iso(row.at_ms),
            session: text(row.session).into_owned(),
            key: key.as_ref().map(|k| k.to_string()),
            message: raw.to_string(),
            args: row.args_excerpt.map(|a| text(a).into_owned()),
        };
        let k = (tool, category, normalized);
        let i = match self.index.get(&k) {
            Some(&i) => i,
            None => {
                if self.accs.len() >= MAX_SIGNATURES {
                    self.unsigned += 1;
                    return None;
                }
                let i = self.accs.len() as u32;
                self.accs.push(Acc {
                    tool,
                    category,
                    text: k.2.clone(),
                    count: 0,
                    first: row.at_ms,
                    last: row.at_ms,
                    keys: FastSet::default(),
                    key_examples: Vec::new(),
                    example: example(row),
                    follow: FollowAcc::default(),
                });
                self.index.insert(k, i);
                i
            }
        };
        let a = &mut self.accs[i as usize];
        a.count += 1;
        a.first = a.first.min(row.at_ms);
        a.last = a.last.max(row.at_ms);
        if a.example.args.is_none() && row.args_excerpt.is_some() {
            // Prefer an example that shows its arguments.
            a.example = example(row);
        }
        if let Some(k) = &key
            && a.keys.len() < MAX_KEYS_PER_SIGNATURE
            && self.keys_remembered < MAX_KEYS_TOTAL
            && a.keys.insert(key_hash(k))
        {
            self.keys_remembered += 1;
            if a.key_examples.len() < 5 {
                a.key_examples.push(k.to_string());
            }
        }
        Some(i)
    }

    /// The call after an error of signature `sig`, in the same session.
    pub fn follow_up(&mut self, sig: u32, prev_tool: u16, next_tool: u16, next_ok: bool) {
        if let Some(a) = self.accs.get_mut(sig as usize) {
            a.follow.followed += 1;
            a.follow.recovered += u64::from(next_ok);
            a.follow.same_tool += u64::from(next_tool == prev_tool);
            if a.follow.next.len() < 256 || a.follow.next.contains_key(&next_tool) {
                *a.follow.next.entry(next_tool).or_default() += 1;
            }
        }
    }

    /// A session ended on an error of signature `sig`.
    pub fn abandoned(&mut self, sig: u32) {
        if let Some(a) = self.accs.get_mut(sig as usize) {
            a.follow.abandoned += 1;
        }
    }

    /// The section, with the `top_n` most frequent signatures.
    pub fn finish(self, tools: &[String], top_n: usize) -> ErrorsSection {
        let total = self.total;
        let mut accs = self.accs;
        accs.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.first.cmp(&b.first)));
        let mut cum = 0u64;
        let mut pareto_80 = 0;
        for a in &accs {
            if (cum as f64) < 0.8 * total as f64 {
                pareto_80 += 1;
            }
            cum += a.count;
        }
        let signatures = accs.len() as u64;
        let mut cum = 0u64;
        let share = |n: u64| if total == 0 { 0.0 } else { n as f64 / total as f64 };
        let top = accs
            .into_iter()
            .take(top_n)
            .map(|a| {
                cum += a.count;
                let tool = tools.get(a.tool as usize).cloned().unwrap_or_default();
                let mut next: Vec<ToolCount> = a
                    .follow
                    .next
                    .iter()
                    .map(|(t, n)| ToolCount { tool: tools.get(*t as usize).cloned().unwrap_or_default(), count: *n })
                    .collect();
                next.sort_by(|x, y| y.count.cmp(&x.count).then_with(|| x.tool.cmp(&y.tool)));
                next.truncate(3);
                let f = &a.follow;
                let of = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
                SignatureStats {
                    id: stable_id("error", &[&tool, a.category.as_str(), &a.text]),
                    share: share(a.count),
                    cumulative_share: share(cum),
                    first_seen: iso(a.first),
                    last_seen: iso(a.last),
                    first_seen_ms: a.first,
                    last_seen_ms: a.last,
                    keys: a.keys.len() as u64,
                    key_examples: a.key_examples,
                    follow_up: FollowUp {
                        followed: f.followed,
                        next,
                        recovered: of(f.recovered, f.followed),
                        retried_same_tool: of(f.same_tool, f.followed),
                        abandoned: f.abandoned,
                        abandoned_share: of(f.abandoned, a.count),
                    },
                    example: a.example,
                    signature: a.text,
                    category: a.category,
                    count: a.count,
                    tool,
                }
            })
            .collect();
        ErrorsSection {
            total,
            by_category: Category::ALL
                .iter()
                .map(|c| (c.as_str().to_string(), self.by_category[*c as usize]))
                .filter(|(_, n)| *n > 0)
                .collect(),
            signatures,
            pareto_80,
            top,
            unsigned: self.unsigned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_realistic_messages() {
        let cases = [
            (
                "no sheet 'Sumary' in workbook sales-3f2a — did you mean 'Summary'?",
                None,
                "no sheet '?' in workbook <id>",
            ),
            (
                "no sheet 'Sumary' in workbook sales-3f2a; sheets are: Summary, Data, Inputs",
                None,
                "no sheet '?' in workbook <id>",
            ),
            ("file /home/a/b.xlsx is not a zip archive", None, "file <path> is not a zip archive"),
            (
                "the server is at capacity (8 calls running, 32 waiting); retry after a short pause",
                None,
                "the server is at capacity (# calls running, # waiting)",
            ),
            (
                "the call took longer than its 30000ms budget and was stopped; narrow it (a sheet_name) and call again",
                None,
                "the call took longer than its #ms budget and was stopped",
            ),
            ("invalid `limit`: must be at most 10000, got 25000", None, "invalid `limit`: must be at most #, got #"),
            (
                "workbook beef could not be read: invalid zip header",
                Some("beef"),
                "workbook <id> could not be read: invalid zip header",
            ),
            (
                "request 7c9e6679-7425-40de-944b-e07fc1f90ae7 failed at C:\\data\\q3.xlsx, see https://x.io/a?b=1",
                None,
                "request <id> failed at <path>, see <url>",
            ),
            ("can't open \"Q3 report.xlsx\": os error 2", None, "can't open '?': os error #"),
        ];
        for (raw, key, want) in cases {
            let got = normalize(raw, key);
            assert_eq!(got, want, "normalizing {raw:?}");
            assert_eq!(normalize(&got, key), got, "normalizing is idempotent on {got:?}");
        }
    }

    #[test]
    fn older_normalized_messages_get_the_same_signature() {
        // What the previous version logged for the same mistake: quotes as '?', digit runs as #.
        let old = "no sheet '?' in workbook sales-#f#a; sheets are: Summary, Data";
        let new = "no sheet 'Sumary' in workbook sales-3f2a; sheets are: Summary, Data";
        assert_eq!(normalize(old, None), normalize(new, None));
        assert_eq!(
            normalize("the server is at capacity (# calls running, # waiting); retry", None),
            normalize("the server is at capacity (8 calls running, 12 waiting); retry", None)
        );
    }

    #[test]
    fn categorizes_by_outcome_class_and_message() {
        let c = |o, class, m: &str| categorize(o, class, &normalize(m, None));
        assert_eq!(
            c("tool_error", Some("user"), "no sheet 'Sumary' in workbook sales-3f2a — did you mean 'Summary'?"),
            Category::User
        );
        assert_eq!(c("tool_error", Some("user"), "file /home/a/b.xlsx is not a zip archive"), Category::Data);
        assert_eq!(
            c("tool_error", Some("data"), "workbook sales-3f2a exceeds a limit: more than 5000000 cells"),
            Category::Data
        );
        assert_eq!(
            c("rejected", Some("transient"), "the server is at capacity (8 calls running, 4 waiting)"),
            Category::Transient
        );
        assert_eq!(c("timeout", None, "the call took longer than its 5000ms budget"), Category::Transient);
        assert_eq!(c("cancelled", Some("user"), "the call was cancelled"), Category::Transient);
        assert_eq!(c("internal", Some("system"), "tool panicked"), Category::System);
        assert_eq!(c("internal", None, "something odd"), Category::System);
        assert_eq!(c("tool_error", None, "LibreOffice recalculation is paused (circuit open)"), Category::Transient);
        assert_eq!(c("tool_error", Some("user"), "internal error: sheet index 4 out of range"), Category::System);
        assert_eq!(c("tool_error", Some("user"), "invalid `range`: unsupported format Z9:A"), Category::User);
        assert_eq!(c("tool_error", Some("user"), "the range is empty"), Category::User);
        assert_eq!(c("some_new_outcome", None, "disk full"), Category::System);
        assert_eq!(c("some_new_outcome", Some("transient"), "whatever"), Category::Transient);
    }
}
