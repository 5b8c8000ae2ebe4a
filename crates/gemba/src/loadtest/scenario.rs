//! Load-test scenarios (TOML): setup calls whose results feed later ones, then a weighted mix
//! of tool calls.
//!
//! ```toml
//! [[setup]]
//! tool = "list_workbooks"
//! args = { filter = "sales" }
//! save = { book = "workbooks.0.workbook_id" }   # a path into the result's structuredContent
//!
//! [[call]]
//! tool = "read_table"
//! weight = 10
//! args = { workbook_id = "${book}", limit = 100 }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub setup: Vec<Setup>,
    #[serde(rename = "call")]
    pub calls: Vec<Call>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    pub tool: String,
    #[serde(default = "empty_args")]
    pub args: toml::Value,
    /// Variable name → dotted path into the result's structured content.
    #[serde(default)]
    pub save: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    pub tool: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "empty_args")]
    pub args: toml::Value,
}

fn one() -> u32 {
    1
}

fn empty_args() -> toml::Value {
    toml::Value::Table(Default::default())
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read scenario {}", path.display()))?;
        let s: Scenario = toml::from_str(&text).with_context(|| format!("scenario {} is not valid", path.display()))?;
        if s.calls.is_empty() {
            bail!("scenario {} has no [[call]]; add at least one tool call", path.display());
        }
        if s.calls.iter().all(|c| c.weight == 0) {
            bail!("every [[call]] in {} has weight 0", path.display());
        }
        Ok(s)
    }
}

/// The value at a dotted path (`workbooks.0.workbook_id`).
pub fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').filter(|p| !p.is_empty()).try_fold(v, |cur, key| match cur {
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        Value::Object(o) => o.get(key),
        _ => None,
    })
}

/// TOML arguments as JSON with `${name}` replaced by saved variables (a whole-string `${x}`
/// keeps the variable's JSON type).
pub fn render(args: &toml::Value, vars: &BTreeMap<String, Value>) -> Result<Value> {
    let json = serde_json::to_value(args)?;
    substitute(json, vars)
}

fn substitute(v: Value, vars: &BTreeMap<String, Value>) -> Result<Value> {
    Ok(match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
                && !name.contains("${")
            {
                return vars.get(name).cloned().with_context(|| format!("no variable '{name}' was saved by setup"));
            }
            let mut out = s.clone();
            for (k, val) in vars {
                let text = match val {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                out = out.replace(&format!("${{{k}}}"), &text);
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|x| substitute(x, vars)).collect::<Result<_>>()?),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, x)| Ok((k, substitute(x, vars)?))).collect::<Result<_>>()?)
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_fill_arguments() {
        let s: Scenario = toml::from_str(
            r#"
            [[setup]]
            tool = "list_workbooks"
            save = { book = "workbooks.0.workbook_id" }
            [[call]]
            tool = "read_table"
            args = { workbook_id = "${book}", note = "id=${book}", limit = 5 }
            "#,
        )
        .unwrap();
        let result = serde_json::json!({"workbooks": [{"workbook_id": "sales-1a2b"}]});
        let mut vars = BTreeMap::new();
        vars.insert("book".into(), at_path(&result, &s.setup[0].save["book"]).unwrap().clone());
        let args = render(&s.calls[0].args, &vars).unwrap();
        assert_eq!(args, serde_json::json!({"workbook_id": "sales-1a2b", "note": "id=sales-1a2b", "limit": 5}));
        let missing = render(&toml::Value::String("${nope}".into()), &vars).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }
}
