//! Warm reads run inline: which tool calls skip the hop to the blocking pool.
//!
//! A tool call normally runs on tokio's blocking pool (`spawn_blocking`): a call may parse a
//! workbook for seconds, wait for another call's load, or scan a big sheet, and none of that
//! may hold up the async runtime's few worker threads. But most calls of an agent are warm
//! reads — the workbook and its sheets already in memory, a page or an overview to cut from
//! them — whose work is a few microseconds, against ~40 µs for waking a pool thread and
//! coming back. Those run right on the runtime thread that received them.
//!
//! The rule, all of it checked before the call (no file opened, no lock held for long):
//! - the tool is a read of bounded work ([`INLINE_TOOLS`]: listing, overviews, pages, ranges,
//!   profiles, searches) — never a write, a save, a recalculation or a formula trace;
//! - its workbook is in the cache and current, found in a workspace listing that needs no
//!   rescan, not a fork, and the call does not bypass the cache;
//! - every sheet it may read is in memory (the named `sheet_name`, or all of the workbook's
//!   sheets when the call names none), and together they hold at most the bound's cells
//!   ([`DEFAULT_MAX_CELLS`], `GEMBA_INLINE_MAX_CELLS`; 0 turns inline runs off). The bound
//!   caps the work of any of these tools, scans and region detection included;
//! - `read_table` naming an Excel `table` is excluded (the table list is read on first use);
//! - no test fault is planted on the tool (test builds).
//!
//! The call then runs under an inline budget ([`sheets::Budget::inline`]): if it would still
//! have to load something or wait for another call's load (the file changed a moment ago,
//! the cache evicted it), it stops with `WouldBlock` before doing so and runs again on the
//! blocking pool as usual. A panic inside is caught and answered like one on the pool.

use serde_json::Value;
use sheets::Engine;

/// Cells the sheets of an inline call may hold together, by default: ~1 ms of work for the
/// dearest of the tools (a full scan or a region detection).
pub const DEFAULT_MAX_CELLS: u64 = 50_000;

/// The environment variable that sets the bound (0: every call goes to the blocking pool).
pub const MAX_CELLS_VAR: &str = "GEMBA_INLINE_MAX_CELLS";

/// Read tools whose work is bounded by the cells of the sheets they read.
pub const INLINE_TOOLS: [&str; 14] = [
    "list_workbooks",
    "describe_workbook",
    "list_sheets",
    "workbook_summary",
    "sheet_overview",
    "sheet_statistics",
    "table_profile",
    "read_table",
    "range_values",
    "sheet_page",
    "inspect_cells",
    "find_value",
    "find_formula",
    "sheet_formula_map",
];

/// Most workbooks a workspace listing may hold for `list_workbooks` to run inline.
const MAX_LISTED: usize = 5_000;

/// The rule above, with its bound.
#[derive(Debug, Clone, Copy)]
pub struct InlineRule {
    pub max_cells: u64,
}

impl InlineRule {
    /// The bound from `GEMBA_INLINE_MAX_CELLS`, or the default; an unreadable value is reported
    /// and the default kept.
    pub fn from_env() -> Self {
        let max_cells = match std::env::var(MAX_CELLS_VAR) {
            Ok(v) => v.trim().parse().unwrap_or_else(|_| {
                tracing::warn!("{MAX_CELLS_VAR}={v:?} is not a number of cells; using {DEFAULT_MAX_CELLS}");
                DEFAULT_MAX_CELLS
            }),
            Err(_) => DEFAULT_MAX_CELLS,
        };
        Self { max_cells }
    }

    /// Whether the call `tool(args)` may run inline now (see the module's rule).
    pub fn admits(&self, engine: &Engine, tool: &str, args: &Value) -> bool {
        if self.max_cells == 0 || !INLINE_TOOLS.contains(&tool) {
            return false;
        }
        if tool == "list_workbooks" {
            return engine.workspace.fresh_listing_len().is_some_and(|n| n <= MAX_LISTED);
        }
        if tool == "read_table" && args.get("table").is_some_and(|t| !t.is_null()) {
            return false;
        }
        let Some(id) = args.get("workbook_id").and_then(Value::as_str) else { return false };
        let sheet = match args.get("sheet_name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            // Not a name: the pool run answers with the argument error.
            Some(_) => return false,
        };
        engine.warm_cells(id, sheet).is_some_and(|cells| cells <= self.max_cells)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use sheets::{Budget, EngineConfig};

    use super::*;

    fn engine() -> Engine {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workspace");
        Engine::new(&root, EngineConfig::default()).expect("the example workspace opens")
    }

    #[test]
    fn only_warm_bounded_reads_run_inline() {
        let e = engine();
        let rule = InlineRule { max_cells: DEFAULT_MAX_CELLS };
        let id = e.workspace.list().iter().find(|w| w.rel_path == "sales.xlsx").map(|w| w.id.clone()).expect("sales");
        let args = json!({"workbook_id": id, "sheet_name": "Sales", "limit": 10});
        assert!(!rule.admits(&e, "read_table", &args), "cold: the workbook is not loaded yet");
        // An inline budget refuses the load instead of doing it.
        let inline = Budget::with_timeout(Duration::from_secs(30)).inline();
        assert!(matches!(e.workbook(&id, &inline), Err(sheets::SheetsError::WouldBlock)));
        let budget = Budget::with_timeout(Duration::from_secs(30));
        let wb = e.workbook(&id, &budget).expect("loads");
        for i in 0..wb.sheets.len() {
            wb.sheet_at(i, &budget).expect("sheet loads");
        }
        // A fresh listing (a slow machine may have spent its second loading).
        e.workspace.refresh();
        assert!(rule.admits(&e, "read_table", &args), "warm and small");
        assert!(rule.admits(&e, "list_sheets", &json!({"workbook_id": id})));
        assert!(rule.admits(&e, "list_workbooks", &json!({})));
        assert!(!rule.admits(&e, "create_fork", &json!({"workbook_id": id})), "not a read");
        assert!(!rule.admits(&e, "read_table", &json!({"workbook_id": id, "table": "T1"})));
        assert!(!rule.admits(&e, "read_table", &json!({"workbook_id": id, "sheet_name": 3})));
        assert!(!rule.admits(&e, "read_table", &json!({"workbook_id": "nope"})));
        let cells = e.warm_cells(&id, None).expect("all sheets loaded");
        assert!(cells > 0);
        assert!(!InlineRule { max_cells: cells - 1 }.admits(&e, "list_sheets", &json!({"workbook_id": id})));
        assert!(!InlineRule { max_cells: 0 }.admits(&e, "list_workbooks", &json!({})));
        // Warm: the inline budget gets the workbook and the sheet without blocking.
        assert!(e.workbook(&id, &inline).is_ok());
        assert!(e.sheet(&wb, Some("Sales"), &inline).is_ok());
    }
}
