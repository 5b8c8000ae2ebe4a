//! Prompts: the workflows agents actually run with Gemba, each a short recipe that names the
//! tools in order with their arguments filled in. They are static text: `prompts/get` checks
//! the arguments (and the workbook id, with a did-you-mean) and renders the recipe.

use rmcp::model::{GetPromptResult, Prompt, PromptArgument, PromptMessage, Role};

/// One argument of a prompt.
struct Arg {
    name: &'static str,
    description: &'static str,
    required: bool,
}

/// One prompt: its name, what it is for, its arguments.
struct Def {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    args: &'static [Arg],
}

const WORKBOOK: Arg =
    Arg { name: "workbook_id", description: "Workbook id from list_workbooks (or a fork id).", required: true };

const PROMPTS: [Def; 3] = [
    Def {
        name: "explore_workbook",
        title: "Explore a workbook",
        description: "Learn what a workbook holds: sheets, tables, parameter blocks and outputs, then read what matters.",
        args: &[WORKBOOK],
    },
    Def {
        name: "what_if",
        title: "What if…",
        description: "Try changes on a fork (fork, edit, recalculate, changeset, verify) and report their effect; the original stays untouched.",
        args: &[
            WORKBOOK,
            Arg {
                name: "changes",
                description: "The changes to try, e.g. \"Inputs!B3=1200; growth rate 5%\".",
                required: true,
            },
        ],
    },
    Def {
        name: "audit_formulas",
        title: "Audit formulas",
        description: "Find volatile functions, error values, broken references and hard-coded numbers inside formulas.",
        args: &[
            WORKBOOK,
            Arg { name: "sheet_name", description: "Only this sheet (default: every sheet).", required: false },
        ],
    },
];

/// Prompt names, in listing order.
pub fn names() -> impl Iterator<Item = &'static str> {
    PROMPTS.iter().map(|p| p.name)
}

/// The argument names of a prompt (`None`: no such prompt).
pub fn argument_names(prompt: &str) -> Option<Vec<&'static str>> {
    PROMPTS.iter().find(|p| p.name == prompt).map(|p| p.args.iter().map(|a| a.name).collect())
}

/// The `prompts/list` entries.
pub fn list() -> Vec<Prompt> {
    PROMPTS
        .iter()
        .map(|p| {
            let args = p
                .args
                .iter()
                .map(|a| PromptArgument::new(a.name).with_description(a.description).with_required(a.required))
                .collect();
            Prompt::new(p.name, Some(p.description), Some(args)).with_title(p.title)
        })
        .collect()
}

/// Why a prompt could not be rendered (the message says what to do instead).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PromptError {
    #[error("no prompt '{name}'{hint}; call prompts/list")]
    Unknown { name: String, hint: String },
    #[error("prompt {prompt} needs the argument `{argument}`: {what}")]
    Missing { prompt: &'static str, argument: &'static str, what: &'static str },
    #[error("prompt {prompt} has no argument `{argument}`; its arguments are: {known}")]
    Unexpected { prompt: &'static str, argument: String, known: String },
}

/// Check a `prompts/get` request's arguments: the prompt exists, required arguments are
/// there (and not blank), no unknown ones. Returns the prompt's name.
pub fn check(name: &str, args: &serde_json::Map<String, serde_json::Value>) -> Result<&'static str, PromptError> {
    let Some(def) = PROMPTS.iter().find(|p| p.name == name) else {
        let near = sheets::error::closest(name, names(), 1);
        let hint = near.first().map(|n| format!(" — did you mean '{n}'?")).unwrap_or_default();
        return Err(PromptError::Unknown { name: name.to_string(), hint });
    };
    for a in def.args.iter().filter(|a| a.required) {
        let given = args.get(a.name).and_then(serde_json::Value::as_str).is_some_and(|v| !v.trim().is_empty());
        if !given {
            return Err(PromptError::Missing { prompt: def.name, argument: a.name, what: a.description });
        }
    }
    if let Some(extra) = args.keys().find(|k| !def.args.iter().any(|a| a.name == k.as_str())) {
        let known = def.args.iter().map(|a| a.name).collect::<Vec<_>>().join(", ");
        return Err(PromptError::Unexpected { prompt: def.name, argument: extra.clone(), known });
    }
    Ok(def.name)
}

/// The workbook a prompt is about, as the server resolved it.
pub struct Subject<'a> {
    pub id: &'a str,
    /// Its workspace path (a fork answers with its original's).
    pub path: &'a str,
}

/// Render a checked prompt. `arg` reads an argument (already checked to be present when required).
pub fn render(name: &str, book: &Subject<'_>, arg: impl Fn(&str) -> Option<String>) -> GetPromptResult {
    let (id, path) = (book.id, book.path);
    let (description, text) = match name {
        "explore_workbook" => (
            format!("Explore {path}"),
            format!(
                "Explore the workbook {path} (workbook_id \"{id}\") with Gemba's tools, reading as little as needed.\n\
\n\
1. workbook_summary {{\"workbook_id\": \"{id}\"}}: every sheet with its used range, cell and formula counts, and detected regions (tables, parameter blocks, outputs, notes) with their headers.\n\
2. For each sheet that matters: sheet_overview {{\"workbook_id\": \"{id}\", \"sheet_name\": \"<sheet>\"}} to get the regions and their region_id.\n\
3. For each data table: table_profile {{\"workbook_id\": \"{id}\", \"sheet_name\": \"<sheet>\", \"region_id\": \"<region>\"}}: column types, fill, ranges, top values.\n\
4. Read samples, not everything: read_table {{\"workbook_id\": \"{id}\", \"sheet_name\": \"<sheet>\", \"region_id\": \"<region>\", \"limit\": 20}} (sample \"distributed\" for a spread); follow next_offset only if needed.\n\
5. Parameter blocks and outputs: range_values or inspect_cells on their ranges; named_ranges {{\"workbook_id\": \"{id}\"}} for defined names and Excel tables.\n\
6. Where the numbers come from: sheet_formula_map on sheets with formulas, formula_trace on key output cells.\n\
\n\
Then summarize: what the workbook is for, its inputs, its calculations and its outputs, with sheet and cell references."
            ),
        ),
        "what_if" => {
            let changes = arg("changes").unwrap_or_default();
            (
                format!("What if — {path}"),
                format!(
                    "Find out what happens to {path} (workbook_id \"{id}\") if: {changes}\n\
\n\
Work on a fork; the original file is never written.\n\
1. Find the cells the changes touch: workbook_summary {{\"workbook_id\": \"{id}\"}}, then find_value with mode \"label\" (e.g. {{\"workbook_id\": \"{id}\", \"query\": \"Growth\", \"mode\": \"label\"}}) or inspect_cells. Note their current values.\n\
2. Find the outputs to watch (totals, results): sheet_overview regions of kind outputs, or formula_trace with direction \"dependents\" from the changed cells.\n\
3. create_fork {{\"workbook_id\": \"{id}\"}} → fork_id.\n\
4. edit_batch {{\"fork_id\": \"<fork_id>\", \"edits\": [\"Sheet!B3=1200\", ...]}}: one edit per changed cell (\"=\" then the value; \"==\" then a formula). Use \"mode\": \"preview\" first if unsure, then apply_staged_change.\n\
5. recalculate {{\"fork_id\": \"<fork_id>\"}}: note cycles and unsupported functions (backend \"libreoffice\" computes more functions).\n\
6. get_changeset {{\"fork_id\": \"<fork_id>\"}}: every cell that changed, edits and recalculated values.\n\
7. verify_workbook {{\"fork_id\": \"<fork_id>\", \"targets\": [\"Sheet!B12\", ...]}} with the outputs from step 2: before and after, new errors.\n\
\n\
Report each change and its effect on the outputs (before → after, and the difference). Then discard_fork, or save_fork to a new path if the user wants to keep the result."
                ),
            )
        }
        _ => {
            let sheet = arg("sheet_name").filter(|s| !s.trim().is_empty());
            let scope = match &sheet {
                Some(s) => format!("the sheet '{s}' of {path}"),
                None => format!("every sheet of {path}"),
            };
            let sheet_arg =
                sheet.as_deref().map(|s| format!(", \"sheet_name\": {}", serde_json::json!(s))).unwrap_or_default();
            (
                format!("Audit formulas — {path}"),
                format!(
                    "Audit the formulas of {scope} (workbook_id \"{id}\").\n\
\n\
1. Volatile functions: scan_volatiles {{\"workbook_id\": \"{id}\"{sheet_arg}}}: NOW, TODAY, RAND, OFFSET, INDIRECT... recalculate on every change and make results move.\n\
2. Error values: sheet_statistics {{\"workbook_id\": \"{id}\", \"sheet_name\": \"<sheet>\"}} for each sheet (error and uncalculated-formula counts), then find_value {{\"workbook_id\": \"{id}\", \"query\": \"#DIV/0!\"{sheet_arg}}} (and #N/A, #VALUE!, #NAME?) to locate them.\n\
3. Broken references: find_formula {{\"workbook_id\": \"{id}\", \"query\": \"#REF!\"{sheet_arg}}}; also find_formula for \"[\" (links to other files).\n\
4. Hard-coded numbers in formulas: sheet_formula_map {{\"workbook_id\": \"{id}\"{sheet_arg}}} groups copies of one formula; look for constants inside formulas (=B2*1.07, =C5+250) and for a group broken by a cell that differs from its neighbours. formula_trace shows where a suspicious cell's inputs come from.\n\
\n\
Report each finding with its sheet and cell, why it is a risk, and a fix (move a constant into a labelled input cell, replace a volatile function, repair the reference)."
                ),
            )
        }
    };
    GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]).with_description(description)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn prompts_are_listed_with_their_arguments() {
        let l = list();
        let names: Vec<&str> = l.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["explore_workbook", "what_if", "audit_formulas"]);
        let what_if = &l[1];
        let a = what_if.arguments.as_ref().unwrap();
        assert_eq!(
            a.iter().map(|a| (a.name.as_str(), a.required)).collect::<Vec<_>>(),
            [("workbook_id", Some(true)), ("changes", Some(true))]
        );
        assert_eq!(argument_names("audit_formulas"), Some(vec!["workbook_id", "sheet_name"]));
        assert_eq!(argument_names("nope"), None);
    }

    #[test]
    fn arguments_are_checked_with_clear_errors() {
        assert_eq!(check("explore_workbook", &args(json!({"workbook_id": "sales-1a2b"}))), Ok("explore_workbook"));
        let e = check("explore_workbok", &args(json!({}))).unwrap_err();
        assert!(e.to_string().contains("did you mean 'explore_workbook'"), "{e}");
        let e = check("what_if", &args(json!({"workbook_id": "x"}))).unwrap_err();
        assert_eq!(
            e,
            PromptError::Missing { prompt: "what_if", argument: "changes", what: PROMPTS[1].args[1].description }
        );
        let e = check("what_if", &args(json!({"workbook_id": "x", "changes": "  "}))).unwrap_err();
        assert!(matches!(e, PromptError::Missing { argument: "changes", .. }));
        let e = check("audit_formulas", &args(json!({"workbook_id": "x", "sheet": "A"}))).unwrap_err();
        assert!(e.to_string().contains("arguments are: workbook_id, sheet_name"), "{e}");
    }

    #[test]
    fn recipes_name_the_tools_in_order_with_arguments() {
        let book = Subject { id: "model-9f3c", path: "model.xlsx" };
        let text = |r: GetPromptResult| match &r.messages[0].content {
            rmcp::model::ContentBlock::Text(t) => t.text.clone(),
            _ => String::new(),
        };
        let what_if = text(render("what_if", &book, |a| (a == "changes").then(|| "Inputs!B3=1200".to_string())));
        let order = ["create_fork", "edit_batch", "recalculate", "get_changeset", "verify_workbook"];
        let at: Vec<usize> = order.iter().map(|t| what_if.find(t).unwrap_or(usize::MAX)).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "tools out of order: {at:?}");
        assert!(what_if.contains("Inputs!B3=1200") && what_if.contains("\"model-9f3c\""));
        let audit = text(render("audit_formulas", &book, |a| (a == "sheet_name").then(|| "P&L \"Q1\"".to_string())));
        for t in ["scan_volatiles", "find_formula", "#REF!", "sheet_formula_map"] {
            assert!(audit.contains(t), "audit lacks {t}");
        }
        assert!(audit.contains(r#""sheet_name": "P&L \"Q1\"""#), "sheet names are JSON-quoted: {audit}");
        let explore = text(render("explore_workbook", &book, |_| None));
        assert!(explore.find("workbook_summary") < explore.find("read_table"));
    }
}
