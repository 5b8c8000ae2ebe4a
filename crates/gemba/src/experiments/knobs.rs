//! Gemba's knobs: the settings an experiment may vary per call, and how each one changes the
//! call. Every knob changes real behaviour an agent or the operator can see:
//!
//! - `response_format` — the format read tools answer in when the agent does not choose one
//!   (`read_table`, `range_values`, `sheet_page`): csv (the default, smallest), json or values.
//! - `page_size` — rows `read_table` returns (`limit`) and `sheet_page` pages (`page_size`) when
//!   the agent does not say; 0 keeps each tool's own default (100 and 50).
//! - `cache_mode` — `normal` reads workbooks through the cache; `bypass` reads the file fresh on
//!   every call (never stale, much slower: the load strategy a canary can show is worse).
//!
//! Knob values only fill in what the agent left out: an argument the agent gave always wins.

use kaizen::experiment::{Assignment, KnobSpec};
use serde_json::Value;

pub const RESPONSE_FORMAT: &str = "response_format";
pub const PAGE_SIZE: &str = "page_size";
pub const CACHE_MODE: &str = "cache_mode";

/// Tools that take a `format` argument.
const FORMAT_TOOLS: [&str; 3] = ["read_table", "range_values", "sheet_page"];
/// Largest `page_size` knob value (read_table's own row bound).
const MAX_PAGE_SIZE: i64 = 5_000;

/// The knobs Gemba declares to the experiment engine (experiments are checked against them).
pub fn specs() -> Vec<KnobSpec> {
    vec![
        KnobSpec::string(
            RESPONSE_FORMAT,
            "csv",
            &["csv", "json", "values"],
            "format of read_table / range_values / sheet_page answers when the agent gives none",
        ),
        KnobSpec::int(
            PAGE_SIZE,
            0,
            0,
            MAX_PAGE_SIZE,
            "rows read_table returns (limit) and sheet_page pages (page_size) when the agent gives none; 0: the tool's default",
        ),
        KnobSpec::string(
            CACHE_MODE,
            "normal",
            &["normal", "bypass"],
            "normal: workbooks come from the cache; bypass: every call reads its workbook fresh from disk",
        ),
    ]
}

/// What a call's assignment asks of the server beyond its arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallSettings {
    /// Read workbooks fresh from disk (`cache_mode = "bypass"`).
    pub bypass_cache: bool,
}

/// Fills the arguments the agent left out from the call's knob values and returns the settings
/// the server applies itself. Arguments that are not an object are left for the tool to refuse.
pub fn apply(tool: &str, args: &mut Value, a: &Assignment) -> CallSettings {
    let settings = CallSettings { bypass_cache: a.string(CACHE_MODE) == Some("bypass") };
    let Value::Object(map) = args else { return settings };
    if FORMAT_TOOLS.contains(&tool)
        && let Some(format) = a.string(RESPONSE_FORMAT)
        && format != "csv"
        && map.get("format").is_none_or(Value::is_null)
    {
        map.insert("format".into(), Value::String(format.into()));
    }
    let page_arg = match tool {
        "read_table" => Some("limit"),
        "sheet_page" => Some("page_size"),
        _ => None,
    };
    if let Some(arg) = page_arg
        && let Some(n) = a.int(PAGE_SIZE).filter(|n| *n > 0)
        && map.get(arg).is_none_or(Value::is_null)
    {
        map.insert(arg.into(), Value::from(n));
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaizen::experiment::{Engine, ExperimentsConfig};
    use serde_json::json;

    fn engine(toml_text: &str) -> Engine {
        let cfg: ExperimentsConfig = toml::from_str(toml_text).unwrap();
        Engine::new(specs(), &cfg).unwrap()
    }

    /// Every call gets the one variant (a flag at 100 %).
    fn all_on(knobs: &str) -> Engine {
        engine(&format!(
            "[[experiment]]\nname = \"t\"\nkind = \"ab\"\nunit = \"request\"\nprimary = {{ metric = \"latency\", mde = 0.1 }}\n\
             [[experiment.variant]]\nname = \"control\"\nshare = 0.0\n[[experiment.variant]]\nname = \"on\"\nshare = 1.0\nknobs = {{ {knobs} }}\n"
        ))
    }

    #[test]
    fn defaults_change_nothing() {
        let e = engine("");
        let a = e.assign("s", None);
        for tool in ["read_table", "sheet_page", "range_values", "list_sheets"] {
            let mut args = json!({"workbook_id": "sales-1234"});
            assert_eq!(apply(tool, &mut args, &a), CallSettings::default());
            assert_eq!(args, json!({"workbook_id": "sales-1234"}), "{tool}");
        }
    }

    #[test]
    fn knob_values_fill_only_what_the_agent_left_out() {
        let e = all_on("response_format = \"json\", page_size = 20, cache_mode = \"bypass\"");
        let a = e.assign("s", None);
        let mut args = json!({"workbook_id": "w"});
        assert_eq!(apply("read_table", &mut args, &a), CallSettings { bypass_cache: true });
        assert_eq!(args, json!({"workbook_id": "w", "format": "json", "limit": 20}));
        let mut args = json!({"workbook_id": "w", "format": "csv", "limit": 3});
        apply("read_table", &mut args, &a);
        assert_eq!(args, json!({"workbook_id": "w", "format": "csv", "limit": 3}), "the agent's choice wins");
        let mut args = json!({"workbook_id": "w", "format": null});
        apply("sheet_page", &mut args, &a);
        assert_eq!(args, json!({"workbook_id": "w", "format": "json", "page_size": 20}));
        let mut args = json!({"workbook_id": "w"});
        apply("range_values", &mut args, &a);
        assert_eq!(args, json!({"workbook_id": "w", "format": "json"}), "range_values has no page size");
        let mut args = json!({"workbook_id": "w"});
        assert!(apply("list_sheets", &mut args, &a).bypass_cache, "every workbook read can bypass the cache");
        assert_eq!(args, json!({"workbook_id": "w"}));
        let mut not_an_object = json!([1, 2]);
        apply("read_table", &mut not_an_object, &a);
        assert_eq!(not_an_object, json!([1, 2]), "left for the tool to refuse");
    }

    #[test]
    fn the_documented_example_is_valid_for_these_knobs() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/experiments.example.toml");
        let e = crate::experiments::load_engine(&path).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(e.plan().experiments.len(), 3);
    }

    #[test]
    fn experiments_are_checked_against_these_knobs() {
        let cfg: ExperimentsConfig = toml::from_str(
            "[[experiment]]\nname = \"x\"\nkind = \"flag\"\nknob = \"cache_mode\"\non = \"sometimes\"\nshare = 0.1\n\
             [[experiment]]\nname = \"y\"\nkind = \"flag\"\nknob = \"page_size\"\non = 9000\nshare = 0.1\n",
        )
        .unwrap();
        let e = Engine::new(specs(), &cfg).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("normal, bypass") && e.contains("0..=5000"), "{e}");
    }
}
