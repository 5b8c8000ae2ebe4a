//! The tool catalog: every tool's name, description, annotations and schemas, and the
//! dispatch from a name to the plain function in `sheets::tools`. Names are the contract
//! with agents; the order here is the order of `tools/list`.

use rmcp::model::{Tool, ToolAnnotations};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sheets::tools::{discovery, editing, forks, formulas, reading, restructure, search, structure, verify};
use sheets::{Budget, Engine, SheetsError};

use crate::schema::{input_schema, output_schema};

/// Why a call did not produce a result.
#[derive(Debug)]
pub enum CallError {
    /// Arguments that do not fit the tool's schema.
    InvalidParams(String),
    /// The domain refused or failed.
    Tool(SheetsError),
}

fn call<P: DeserializeOwned, O: Serialize>(
    f: fn(&Engine, P, &Budget) -> sheets::Result<O>,
    engine: &Engine,
    args: &Value,
    budget: &Budget,
) -> Result<(Value, std::time::Duration), CallError> {
    // Also returns the time spent decoding the arguments (the "validate" stage). Decoded from
    // a borrow: a call tried inline and sent to the blocking pool decodes them again.
    let t = std::time::Instant::now();
    let params = <P as serde::Deserialize>::deserialize(args).map_err(|e| CallError::InvalidParams(e.to_string()))?;
    let validate = t.elapsed();
    let out = f(engine, params, budget).map_err(|e| {
        // A load refused by a limit is worth telling the client about (surface::logging).
        if let SheetsError::LimitExceeded { .. } = &e {
            budget.notice(sheets::limits::NoticeLevel::Warning, "limits", || format!("refused: {e}"));
        }
        CallError::Tool(e)
    })?;
    let v = serde_json::to_value(out).map_err(|e| CallError::Tool(SheetsError::Internal(e.to_string())))?;
    Ok((v, validate))
}

/// What a tool does to state, for its annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Reads only.
    Read,
    /// Changes a fork (never an original file); repeating it gives the same state.
    Write,
    /// Changes a fork in a way that adds state (a new fork, checkpoint or staged change).
    Append,
    /// Removes state or writes files (discard, restore, save).
    Destructive,
}

fn tool<P: schemars::JsonSchema, O: schemars::JsonSchema>(
    name: &'static str,
    effect: Effect,
    title: &str,
    description: &'static str,
) -> Tool {
    let mut t = Tool::new(name, description, input_schema::<P>());
    let mut out = output_schema::<O>();
    // Results are described by the tool's description and their own field names; the input
    // schemas keep their descriptions, and the listing every agent reads stays within its
    // budget (40,000 characters for 33 tools).
    let mut v = serde_json::Value::Object((*out).clone());
    strip_descriptions(&mut v);
    if let serde_json::Value::Object(m) = v {
        out = std::sync::Arc::new(m);
    }
    t.output_schema = Some(out);
    let a = ToolAnnotations::with_title(title).open_world(false);
    t.annotations = Some(match effect {
        // Destructive and idempotent hints mean something only when a tool is not read-only.
        Effect::Read => a.read_only(true),
        Effect::Write => a.read_only(false).destructive(false).idempotent(true),
        Effect::Append => a.read_only(false).destructive(false).idempotent(false),
        Effect::Destructive => a.read_only(false).destructive(true).idempotent(false),
    });
    t
}

fn strip_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("description").is_some_and(serde_json::Value::is_string) && m.contains_key("type") {
                m.remove("description");
            }
            m.values_mut().for_each(strip_descriptions);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

macro_rules! catalog {
    ($( $module:ident :: $name:ident ($P:ty) -> $O:ty, $effect:ident, $title:literal, $desc:literal; )*) => {
        /// Tool names in listing order.
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// What each tool does to state, by name.
        #[cfg(test)]
        pub fn effect(name: &str) -> Option<Effect> {
            match name {
                $( stringify!($name) => Some(Effect::$effect), )*
                _ => None,
            }
        }

        /// The tool definitions for `tools/list`.
        pub fn definitions() -> Vec<Tool> {
            vec![$( tool::<$P, $O>(stringify!($name), Effect::$effect, $title, $desc) ),*]
        }

        /// Run tool `name`; `None` when no tool has that name.
        pub fn dispatch(name: &str, engine: &Engine, args: &Value, budget: &Budget) -> Option<Result<(Value, std::time::Duration), CallError>> {
            match name {
                $( stringify!($name) => Some(call::<$P, $O>($module::$name, engine, args, budget)), )*
                _ => None,
            }
        }
    };
}

catalog! {
    discovery::list_workbooks(discovery::ListWorkbooksParams) -> discovery::ListWorkbooksOutput, Read,
        "List workbooks", "List workbooks in the workspace with their ids. Start here.";
    discovery::describe_workbook(discovery::WorkbookParams) -> discovery::DescribeWorkbookOutput, Read,
        "Describe workbook", "Format, size, sheet names and counts of one workbook (cheap: reads no cells).";
    discovery::list_sheets(discovery::WorkbookParams) -> discovery::ListSheetsOutput, Read,
        "List sheets", "Sheets with used range, cell and formula counts.";
    discovery::workbook_summary(discovery::WorkbookParams) -> discovery::WorkbookSummaryOutput, Read,
        "Workbook summary", "One-call overview: every sheet with its detected regions and headers.";
    discovery::named_ranges(discovery::WorkbookParams) -> discovery::NamedRangesOutput, Read,
        "Named ranges", "Defined names and Excel tables.";
    structure::sheet_overview(structure::SheetParams) -> structure::SheetOverviewOutput, Read,
        "Sheet overview", "Detect regions on a sheet (table, parameters, outputs, notes) with headers and confidence. Use region_id in read_table.";
    structure::sheet_statistics(structure::SheetParams) -> structure::SheetStatisticsOutput, Read,
        "Sheet statistics", "Counts by type, formulas, uncalculated formulas, errors, density.";
    structure::table_profile(structure::TableProfileParams) -> structure::TableProfileOutput, Read,
        "Table profile", "Per-column type, fill, distinct count, min/max/mean and top values of a table.";
    reading::read_table(reading::ReadTableParams) -> reading::ReadTableOutput, Read,
        "Read table", "Rows of a table (region_id, table or range) with header detection, column selection, filters, sampling and pagination.";
    reading::range_values(reading::RangeValuesParams) -> reading::RangeValuesOutput, Read,
        "Range values", "Values of A1 ranges, as CSV or arrays.";
    reading::sheet_page(reading::SheetPageParams) -> reading::SheetPageOutput, Read,
        "Sheet page", "A page of raw sheet rows with row numbers and column letters; continue at next_start_row.";
    reading::inspect_cells(reading::InspectCellsParams) -> reading::InspectCellsOutput, Read,
        "Inspect cells", "Value, type, formula and merge info of specific cells.";
    search::find_value(search::FindValueParams) -> search::FindValueOutput, Read,
        "Find value", "Find cells by value, or (mode=label) the value beside or below a label such as 'Total'.";
    formulas::find_formula(formulas::FindFormulaParams) -> formulas::FindFormulaOutput, Read,
        "Find formula", "Formulas containing some text, with their cached values.";
    formulas::formula_trace(formulas::FormulaTraceParams) -> formulas::FormulaTraceOutput, Read,
        "Formula trace", "Precedents or dependents of a cell, level by level, with a cursor.";
    formulas::scan_volatiles(formulas::ScanVolatilesParams) -> formulas::ScanVolatilesOutput, Read,
        "Scan volatiles", "Formulas calling volatile functions (NOW, TODAY, RAND, OFFSET, INDIRECT...).";
    formulas::sheet_formula_map(formulas::SheetFormulaMapParams) -> formulas::SheetFormulaMapOutput, Read,
        "Sheet formula map", "Formulas grouped by shape (copies of one formula share a group), largest first.";
    forks::create_fork(forks::CreateForkParams) -> forks::CreateForkOutput, Append,
        "Create fork", "Start editing a workbook: writes go to the fork, the original is untouched until save_fork. Read tools take the fork_id as workbook_id.";
    forks::list_forks(forks::ListForksParams) -> forks::ListForksOutput, Read,
        "List forks", "Open forks: edits, checkpoints, staged changes, recalculation state.";
    editing::edit_batch(editing::EditBatchParams) -> editing::EditOutput, Write,
        "Edit cells", "Write values and formulas into a fork: [\"A1=100\", \"B2==SUM(A1:A9)\", \"C3=\"]. mode=preview stages it.";
    editing::transform_batch(editing::TransformBatchParams) -> editing::EditOutput, Write,
        "Transform ranges", "Clear, fill, find/replace, write a matrix, copy or move ranges in a fork. mode=preview stages it.";
    restructure::structure_batch(restructure::StructureBatchParams) -> restructure::StructureOutput, Append,
        "Restructure", "Insert/delete rows or columns (formulas follow) or create/rename/delete/copy sheets in a fork, all or none. mode=preview stages it.";
    editing::style_batch(editing::StyleBatchParams) -> editing::StyleOutput, Write,
        "Format ranges", "Set number format, font, fill, borders or alignment of ranges in a fork. mode=preview stages it.";
    forks::apply_staged_change(forks::StagedChangeParams) -> forks::StagedChangeOutput, Write,
        "Apply staged change", "Apply a change staged by a preview (its change_id).";
    forks::discard_staged_change(forks::StagedChangeParams) -> forks::StagedChangeOutput, Destructive,
        "Discard staged change", "Drop a change staged by a preview.";
    verify::recalculate(verify::RecalculateParams) -> verify::RecalculateOutput, Write,
        "Recalculate", "Recalculate a fork (in process, or backend=libreoffice); reports changed cells, cycles, unsupported functions.";
    verify::get_changeset(verify::ChangesetParams) -> verify::ChangesetOutput, Read,
        "Changeset", "Cell-level diff of a fork against its original: edits, recalculated values, new errors.";
    verify::verify_workbook(verify::VerifyParams) -> verify::VerifyOutput, Read,
        "Verify fork", "Check a fork before saving: cells before/after, new and resolved errors, calculation issues.";
    forks::checkpoint_fork(forks::CheckpointForkParams) -> forks::CheckpointInfo, Append,
        "Checkpoint fork", "Remember the fork's current state to return to with restore_checkpoint.";
    forks::list_checkpoints(forks::ForkParams) -> forks::ListCheckpointsOutput, Read,
        "List checkpoints", "A fork's checkpoints.";
    forks::restore_checkpoint(forks::RestoreCheckpointParams) -> forks::RestoreCheckpointOutput, Destructive,
        "Restore checkpoint", "Return a fork to a checkpoint; later edits and checkpoints are dropped.";
    forks::save_fork(forks::SaveForkParams) -> forks::SaveForkOutput, Destructive,
        "Save fork", "Recalculate if needed, then save the fork atomically to a new workspace path; untouched parts kept byte-exact.";
    forks::discard_fork(forks::ForkParams) -> forks::DiscardForkOutput, Destructive,
        "Discard fork", "Delete a fork and its edits.";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::has_bare_boolean;

    #[test]
    fn listing_is_lean_complete_and_strict() {
        let tools = definitions();
        assert_eq!(tools.len(), NAMES.len());
        let listing = serde_json::to_string(&rmcp::model::ListToolsResult::with_all_items(tools.clone())).unwrap();
        eprintln!("tools/list is {} characters", listing.len());
        assert!(listing.len() <= 40_000, "tools/list is {} characters", listing.len());
        for t in &tools {
            let input = Value::Object((*t.input_schema).clone());
            let output = Value::Object((**t.output_schema.as_ref().unwrap()).clone());
            assert_eq!(input["type"], "object", "{}", t.name);
            assert_eq!(output["type"], "object", "{}", t.name);
            assert!(!has_bare_boolean(&input), "{} input has a bare boolean schema: {input}", t.name);
            assert!(!has_bare_boolean(&output), "{} output has a bare boolean schema: {output}", t.name);
            assert!(!listing.contains("\"$schema\""));
            let read_only = effect(&t.name) == Some(Effect::Read);
            assert_eq!(t.annotations.as_ref().and_then(|a| a.read_only_hint), Some(read_only), "{}", t.name);
            assert!(t.description.as_ref().is_some_and(|d| d.len() <= 200), "{} description too long", t.name);
        }
    }

    #[test]
    fn bare_boolean_detector_works() {
        assert!(has_bare_boolean(&serde_json::json!({"properties": {"x": true}})));
        assert!(has_bare_boolean(&serde_json::json!({"items": true})));
        assert!(!has_bare_boolean(
            &serde_json::json!({"additionalProperties": false, "properties": {"x": {"type": "string"}}})
        ));
    }
}
