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
            m.remove("$schema");
            m.remove("title");
            m.remove("format");
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
