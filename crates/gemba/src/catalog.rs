//! The tool catalog: every tool's name, description, annotations and schemas, and the
//! dispatch from a name to the plain function in `sheets::tools`. Names are the contract
//! with agents; the order here is the order of `tools/list`.

use rmcp::model::{Tool, ToolAnnotations};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sheets::tools::{discovery, formulas, reading, search, structure};
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
    args: Value,
    budget: &Budget,
) -> Result<(Value, std::time::Duration), CallError> {
    // Also returns the time spent decoding the arguments (the "validate" stage).
    let t = std::time::Instant::now();
    let params: P = serde_json::from_value(args).map_err(|e| CallError::InvalidParams(e.to_string()))?;
    let validate = t.elapsed();
    let out = f(engine, params, budget).map_err(CallError::Tool)?;
    let v = serde_json::to_value(out).map_err(|e| CallError::Tool(SheetsError::Internal(e.to_string())))?;
    Ok((v, validate))
}

fn tool<P: schemars::JsonSchema, O: schemars::JsonSchema>(
    name: &'static str,
    title: &str,
    description: &'static str,
) -> Tool {
    let mut t = Tool::new(name, description, input_schema::<P>());
    t.output_schema = Some(output_schema::<O>());
    t.annotations =
        Some(ToolAnnotations::with_title(title).read_only(true).destructive(false).idempotent(true).open_world(false));
    t
}

macro_rules! catalog {
    ($( $module:ident :: $name:ident ($P:ty) -> $O:ty, $title:literal, $desc:literal; )*) => {
        /// Tool names in listing order.
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// The tool definitions for `tools/list`.
        pub fn definitions() -> Vec<Tool> {
            vec![$( tool::<$P, $O>(stringify!($name), $title, $desc) ),*]
        }

        /// Run tool `name`; `None` when no tool has that name.
        pub fn dispatch(name: &str, engine: &Engine, args: Value, budget: &Budget) -> Option<Result<(Value, std::time::Duration), CallError>> {
            match name {
                $( stringify!($name) => Some(call::<$P, $O>($module::$name, engine, args, budget)), )*
                _ => None,
            }
        }
    };
}

catalog! {
    discovery::list_workbooks(discovery::ListWorkbooksParams) -> discovery::ListWorkbooksOutput,
        "List workbooks", "List workbooks in the workspace with their ids. Start here.";
    discovery::describe_workbook(discovery::WorkbookParams) -> discovery::DescribeWorkbookOutput,
        "Describe workbook", "Format, size, sheet names and counts of one workbook (cheap: reads no cells).";
    discovery::list_sheets(discovery::WorkbookParams) -> discovery::ListSheetsOutput,
        "List sheets", "Sheets with used range, cell and formula counts.";
    discovery::workbook_summary(discovery::WorkbookParams) -> discovery::WorkbookSummaryOutput,
        "Workbook summary", "One-call overview: every sheet with its detected regions and headers.";
    discovery::named_ranges(discovery::WorkbookParams) -> discovery::NamedRangesOutput,
        "Named ranges", "Defined names and Excel tables.";
    structure::sheet_overview(structure::SheetParams) -> structure::SheetOverviewOutput,
        "Sheet overview", "Detect regions on a sheet (table, parameters, outputs, notes) with headers and confidence. Use region_id in read_table.";
    structure::sheet_statistics(structure::SheetParams) -> structure::SheetStatisticsOutput,
        "Sheet statistics", "Counts by type, formulas, uncalculated formulas, errors, density.";
    structure::table_profile(structure::TableProfileParams) -> structure::TableProfileOutput,
        "Table profile", "Per-column type, fill, distinct count, min/max/mean and top values of a table.";
    reading::read_table(reading::ReadTableParams) -> reading::ReadTableOutput,
        "Read table", "Rows of a table (region_id, table or range) with header detection, column selection, filters, sampling and pagination. CSV by default.";
    reading::range_values(reading::RangeValuesParams) -> reading::RangeValuesOutput,
        "Range values", "Values of A1 ranges, as CSV or arrays.";
    reading::sheet_page(reading::SheetPageParams) -> reading::SheetPageOutput,
        "Sheet page", "A page of raw sheet rows with row numbers and column letters; continue with next_start_row.";
    reading::inspect_cells(reading::InspectCellsParams) -> reading::InspectCellsOutput,
        "Inspect cells", "Value, type, formula and merge info of specific cells.";
    search::find_value(search::FindValueParams) -> search::FindValueOutput,
        "Find value", "Find cells by value, or (mode=label) the value beside or below a label such as 'Total'.";
    formulas::find_formula(formulas::FindFormulaParams) -> formulas::FindFormulaOutput,
        "Find formula", "Formulas containing some text, with their cached values.";
    formulas::formula_trace(formulas::FormulaTraceParams) -> formulas::FormulaTraceOutput,
        "Formula trace", "Precedents or dependents of a cell, level by level, with a cursor.";
    formulas::scan_volatiles(formulas::ScanVolatilesParams) -> formulas::ScanVolatilesOutput,
        "Scan volatiles", "Formulas calling volatile functions (NOW, TODAY, RAND, OFFSET, INDIRECT...).";
    formulas::sheet_formula_map(formulas::SheetFormulaMapParams) -> formulas::SheetFormulaMapOutput,
        "Sheet formula map", "Formulas grouped by shape (copies of one formula share a group), largest first.";
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
        assert!(listing.len() <= 40_000, "tools/list is {} characters", listing.len());
        for t in &tools {
            let input = Value::Object((*t.input_schema).clone());
            let output = Value::Object((**t.output_schema.as_ref().unwrap()).clone());
            assert_eq!(input["type"], "object", "{}", t.name);
            assert_eq!(output["type"], "object", "{}", t.name);
            assert!(!has_bare_boolean(&input), "{} input has a bare boolean schema: {input}", t.name);
            assert!(!has_bare_boolean(&output), "{} output has a bare boolean schema: {output}", t.name);
            assert!(!listing.contains("\"$schema\""));
            assert_eq!(t.annotations.as_ref().and_then(|a| a.read_only_hint), Some(true));
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
