//! Typed errors of the spreadsheet domain.
//!
//! Every user-facing variant says what was wrong and what to do instead: the MCP
//! layer shows the message to the agent verbatim.

use std::time::Duration;

/// The broad class of an error, used to choose between a tool error and a
/// protocol error and (later) to classify outcomes for measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The caller asked for something that does not exist or is malformed.
    User,
    /// The work ran past its time budget.
    Timeout,
    /// The file is unreadable, hostile, or over a limit.
    Workbook,
    /// Something went wrong on our side.
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SheetsError {
    #[error("no workbook '{query}'{suggestion}; call list_workbooks to see the ids")]
    UnknownWorkbook { query: String, suggestion: String },

    #[error("no sheet '{query}' in workbook {workbook_id}; sheets are: {available}")]
    UnknownSheet { query: String, workbook_id: String, available: String },

    #[error("no region '{query}' on sheet '{sheet}'; {available}; call sheet_overview to see them")]
    UnknownRegion { query: String, sheet: String, available: String },

    #[error("no table '{query}' in workbook {workbook_id}; {available}; call named_ranges to see them")]
    UnknownTable { query: String, workbook_id: String, available: String },

    #[error("invalid `{field}`: {message}")]
    InvalidArgument { field: &'static str, message: String },

    #[error(
        "workbook {workbook_id} is encrypted (password protected); Gemba cannot read it — save an unencrypted copy into the workspace"
    )]
    Encrypted { workbook_id: String },

    #[error("workbook {workbook_id} is not supported: {reason}")]
    Unsupported { workbook_id: String, reason: String },

    #[error("workbook {workbook_id} could not be read: {reason}")]
    Unreadable { workbook_id: String, reason: String },

    #[error(
        "workbook {workbook_id} changed on disk since it was loaded ({what}); call again: the next call loads the file as it is now"
    )]
    ChangedOnDisk { workbook_id: String, what: String },

    #[error("workbook {workbook_id} exceeds a limit: {detail}")]
    LimitExceeded { workbook_id: String, detail: String },

    #[error("the call took longer than its {}ms budget and was stopped; narrow it (a sheet_name, a range, a smaller limit) and call again", .budget.as_millis())]
    Timeout { budget: Duration },

    /// The in-process engine ran past the call's budget. It cannot be interrupted, so it runs
    /// on; the advice differs from a read's.
    #[error(
        "the in-process recalculation took longer than the call's {}ms budget; the engine cannot be stopped, so it finishes in the background and this workbook's next in-process recalculation is refused until it has. Recalculate with backend=\"libreoffice\" (stopped at its own timeout), or save_fork with recalculate=false to save without new values",
        .budget.as_millis()
    )]
    RecalcTimeout { budget: Duration },

    #[error("the call was cancelled")]
    Cancelled,

    #[error("workspace error: {0}")]
    Workspace(String),

    #[error("internal error: {0}")]
    Internal(String),

    /// The call runs where it must not block (an async runtime thread) and needs a load or a
    /// wait: the embedder runs it again on a thread that may block. Never shown to a client.
    #[error("this call needs a workbook or sheet load; run it on a thread that may block")]
    WouldBlock,
}

impl SheetsError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::UnknownWorkbook { .. }
            | Self::UnknownSheet { .. }
            | Self::UnknownRegion { .. }
            | Self::UnknownTable { .. }
            | Self::InvalidArgument { .. } => ErrorClass::User,
            Self::Timeout { .. } | Self::RecalcTimeout { .. } | Self::Cancelled => ErrorClass::Timeout,
            Self::Encrypted { .. }
            | Self::Unsupported { .. }
            | Self::Unreadable { .. }
            | Self::ChangedOnDisk { .. }
            | Self::LimitExceeded { .. } => ErrorClass::Workbook,
            Self::Workspace(_) | Self::Internal(_) | Self::WouldBlock => ErrorClass::Internal,
        }
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument { field, message: message.into() }
    }
}

pub type Result<T, E = SheetsError> = std::result::Result<T, E>;

/// Up to `n` names from `candidates` closest to `query` (case-insensitive edit distance),
/// best first; used for "did you mean" hints.
pub fn closest<'a>(query: &str, candidates: impl IntoIterator<Item = &'a str>, n: usize) -> Vec<&'a str> {
    let q = query.to_lowercase();
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| {
            let lc = c.to_lowercase();
            let d = if lc.contains(&q) || q.contains(&lc) { 0 } else { edit_distance(&q, &lc) };
            (d, c)
        })
        .filter(|(d, c)| *d <= (q.chars().count().max(c.chars().count()) / 2).max(2))
        .collect();
    scored.sort_by_key(|(d, c)| (*d, c.len()));
    scored.into_iter().take(n).map(|(_, c)| c).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// A short human list: "a, b, c (and 12 more)".
pub fn short_list<S: AsRef<str>>(items: &[S], max: usize) -> String {
    if items.is_empty() {
        return "(none)".into();
    }
    let s: Vec<&str> = items.iter().take(max).map(|x| x.as_ref()).collect();
    let rest = items.len().saturating_sub(max);
    let more = if rest > 0 { format!(" (and {rest} more)") } else { String::new() };
    let joined = s.join(", ");
    format!("{joined}{more}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos() {
        let c = closest("Sumary", ["Inputs", "Calc", "Summary"], 3);
        assert_eq!(c, vec!["Summary"]);
        assert!(closest("zzzzzz", ["Inputs", "Calc"], 3).is_empty());
    }

    #[test]
    fn short_list_truncates() {
        assert_eq!(short_list(&["a", "b", "c"], 2), "a, b (and 1 more)");
        assert_eq!(short_list::<&str>(&[], 2), "(none)");
    }
}
