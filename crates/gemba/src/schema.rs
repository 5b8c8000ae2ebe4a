//! JSON schemas for the tool listing: generated from the parameter and result types, then
//! trimmed (no `$schema`, titles, numeric formats or empty defaults) so the listing every agent
//! reads stays small.

use std::sync::Arc;

use rmcp::model::JsonObject;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::Value;

fn trim(v: &mut Value) {
    match v {
        Value::Object(m) => {
            // Keywords only (their values are strings): a *property* named `format` or `title` is a
            // schema object in a `properties` map, and stays (read_table's `format` was lost).
            for keyword in ["$schema", "title", "format"] {
                if matches!(m.get(keyword), Some(Value::String(_))) {
                    m.remove(keyword);
                }
            }
            if m.get("minimum").and_then(Value::as_f64) == Some(0.0) {
                m.remove("minimum");
            }
            // A schema's `default` of null or false says nothing an optional field does not.
            if m.contains_key("type") && matches!(m.get("default"), Some(Value::Null | Value::Bool(false))) {
                m.remove("default");
            }
            for (_, x) in m.iter_mut() {
                trim(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(trim),
        _ => {}
    }
}

/// An optional property (not in `required`) need not also admit `null`: leaving it out says the
/// same, and the listing every agent reads gets shorter. `["integer", "null"]` becomes
/// `"integer"`, and `anyOf: [X, {"type": "null"}]` becomes X. (Outputs skip such fields when
/// empty, so they never hold null; inputs still accept null, serde reads it as absent.)
fn optional_not_nullable(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let required: Vec<String> = m
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).map(String::from).collect())
                .unwrap_or_default();
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                for (name, p) in props.iter_mut() {
                    if !required.contains(name) {
                        drop_null(p);
                    }
                }
            }
            m.values_mut().for_each(optional_not_nullable);
        }
        Value::Array(a) => a.iter_mut().for_each(optional_not_nullable),
        _ => {}
    }
}

fn drop_null(p: &mut Value) {
    let Value::Object(m) = p else { return };
    if let Some(Value::Array(types)) = m.get("type")
        && types.len() == 2
        && types.contains(&Value::from("null"))
        && let Some(other) = types.iter().find(|t| *t != "null").cloned()
    {
        m.insert("type".into(), other);
        return;
    }
    let is_null =
        |x: &Value| x.get("type") == Some(&Value::from("null")) && x.as_object().is_some_and(|o| o.len() == 1);
    if let Some(Value::Array(any)) = m.get("anyOf")
        && any.len() == 2
        && let Some(keep) = any.iter().find(|x| !is_null(x)).cloned()
        && any.iter().any(is_null)
        && let Value::Object(keep) = keep
    {
        m.remove("anyOf");
        for (k, v) in keep {
            m.entry(k).or_insert(v);
        }
    }
}

/// The trimmed schema of `T` as an input (what deserializes), as the JSON object MCP expects.
pub fn input_schema<T: JsonSchema>() -> Arc<JsonObject> {
    schema_with::<T>(SchemaSettings::draft2020_12())
}

/// The trimmed schema of `T` as an output (what serializes: skipped fields are optional).
pub fn output_schema<T: JsonSchema>() -> Arc<JsonObject> {
    schema_with::<T>(SchemaSettings::draft2020_12().for_serialize())
}

fn schema_with<T: JsonSchema>(settings: SchemaSettings) -> Arc<JsonObject> {
    let generator = settings
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let schema = generator.into_root_schema_for::<T>();
    let mut v = schema.to_value();
    trim(&mut v);
    optional_not_nullable(&mut v);
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(JsonObject::new()),
    }
}

#[cfg(test)]
/// True when a schema contains a bare boolean sub-schema (`true`/`false` where a schema goes).
pub fn has_bare_boolean(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, x)| {
            let schema_slot = matches!(
                k.as_str(),
                "items" | "additionalProperties" | "not" | "contains" | "propertyNames" | "unevaluatedProperties"
            );
            (schema_slot && x.is_boolean() && !(k == "additionalProperties" && x == &Value::Bool(false)))
                || (k == "properties" && x.as_object().is_some_and(|p| p.values().any(Value::is_boolean)))
                || has_bare_boolean(x)
        }),
        Value::Array(a) => a.iter().any(has_bare_boolean),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn optional_properties_drop_null_required_ones_keep_it() {
        let mut v = json!({
            "type": "object",
            "required": ["kept"],
            "properties": {
                "kept": {"type": ["string", "null"]},
                "limit": {"type": ["integer", "null"], "description": "Max rows."},
                "sample": {"description": "How.", "anyOf": [{"oneOf": [{"const": "first"}]}, {"type": "null"}]},
                "nested": {"type": "object", "properties": {"x": {"type": ["number", "null"]}}},
                "many": {"type": ["string", "number", "null"]}
            }
        });
        optional_not_nullable(&mut v);
        let p = &v["properties"];
        assert_eq!(p["kept"]["type"], json!(["string", "null"]));
        assert_eq!(p["limit"], json!({"type": "integer", "description": "Max rows."}));
        assert_eq!(p["sample"], json!({"description": "How.", "oneOf": [{"const": "first"}]}));
        assert_eq!(p["nested"]["properties"]["x"]["type"], "number");
        assert_eq!(p["many"]["type"], json!(["string", "number", "null"]), "only a two-way union is simplified");
    }

    #[test]
    fn a_property_named_like_a_keyword_is_kept() {
        let mut v = json!({
            "type": "object",
            "title": "Params",
            "properties": {
                "format": {"description": "csv or json.", "enum": ["csv", "json"]},
                "title": {"type": "string"},
                "limit": {"type": "integer", "format": "uint32", "minimum": 0}
            }
        });
        trim(&mut v);
        assert_eq!(
            v,
            json!({"type": "object", "properties": {
                "format": {"description": "csv or json.", "enum": ["csv", "json"]},
                "title": {"type": "string"},
                "limit": {"type": "integer"}
            }})
        );
    }

    #[test]
    fn the_reading_tools_declare_their_format() {
        for tool in ["read_table", "range_values", "sheet_page"] {
            let t = crate::catalog::definitions().into_iter().find(|t| t.name == tool).unwrap();
            assert!(t.input_schema.get("properties").and_then(|p| p.get("format")).is_some(), "{tool}");
        }
    }
}
