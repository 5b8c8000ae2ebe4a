//! A small YAML writer for JSON values: block mappings and sequences the way people write
//! Prometheus rule files (what they keep in git and review), scalars plain when that is
//! unambiguous and double-quoted (JSON escapes, valid YAML) otherwise. Output only; nothing
//! here parses YAML.

use serde_json::Value;

/// `value` as a YAML document.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => mapping(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => sequence(&mut out, a, 0),
        v => {
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

/// Keys in the order people write rule files (and Alertmanager files); others follow by name.
const KEY_ORDER: [&str; 13] = [
    "groups",
    "name",
    "interval",
    "rules",
    "record",
    "alert",
    "expr",
    "for",
    "labels",
    "annotations",
    "summary",
    "description",
    "runbook_url",
];

fn ordered(m: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<(&String, &Value)> = m.iter().collect();
    v.sort_by_key(|(k, _)| (KEY_ORDER.iter().position(|o| o == k).unwrap_or(KEY_ORDER.len()), k.as_str()));
    v
}

fn mapping(out: &mut String, m: &serde_json::Map<String, Value>, depth: usize) {
    let mut first = true;
    for (k, v) in ordered(m) {
        // The first key of a mapping inside a sequence item shares the "- " line.
        if !first || depth == 0 || !out.ends_with("- ") {
            indent(out, depth);
        }
        first = false;
        out.push_str(&key(k));
        out.push(':');
        entry(out, v, depth);
    }
}

fn sequence(out: &mut String, a: &[Value], depth: usize) {
    for v in a {
        indent(out, depth);
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => mapping(out, m, depth + 2),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                sequence(out, inner, depth + 2);
            }
            v => {
                out.push_str(&scalar(v));
                out.push('\n');
            }
        }
    }
}

/// After `key:`, a nested block on the next lines or a scalar on the same line.
fn entry(out: &mut String, v: &Value, depth: usize) {
    if is_block(v) {
        out.push('\n');
        match v {
            Value::Object(m) => mapping(out, m, depth + 2),
            Value::Array(a) => sequence(out, a, depth),
            _ => {}
        }
    } else {
        out.push(' ');
        out.push_str(&scalar(v));
        out.push('\n');
    }
}

fn key(k: &str) -> String {
    if plain_ok(k) { k.to_string() } else { quoted(k) }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if plain_ok(s) => s.clone(),
        Value::String(s) => quoted(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn quoted(s: &str) -> String {
    // A JSON string literal is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Whether a string reads back as the same string when written plain.
fn plain_ok(s: &str) -> bool {
    const RESERVED: [&str; 11] = ["null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False", "FALSE", ""];
    if RESERVED.contains(&s) || s.parse::<f64>().is_ok() || s.starts_with(['0', '+', '.']) {
        return false;
    }
    let first = s.chars().next().unwrap_or(' ');
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) || first.is_whitespace() || s.ends_with(char::is_whitespace) {
        return false;
    }
    // Characters that would start a comment, a mapping, or escape handling.
    let special = s.contains(": ") || s.contains(" #") || s.ends_with(':') || s.chars().any(|c| c.is_control());
    let yaml11_bool = matches!(s.to_ascii_lowercase().as_str(), "yes" | "no" | "on" | "off" | "y" | "n");
    !special && !yaml11_bool
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rule_files_read_as_people_write_them() {
        let v = json!({"groups": [{"name": "g", "interval": "30s", "rules": [
            {"record": "slo:sli_error:ratio_rate5m", "expr": "sum(rate(x{tool=\"a\"}[5m])) > 0.72", "labels": {"slo": "a-latency"}},
            {"alert": "A", "expr": "up == 0", "labels": {}, "for": "5m"},
        ]}]});
        let y = to_string(&v);
        assert_eq!(
            y,
            "groups:\n- name: g\n  interval: 30s\n  rules:\n  - record: slo:sli_error:ratio_rate5m\n    expr: sum(rate(x{tool=\"a\"}[5m])) > 0.72\n    labels:\n      slo: a-latency\n  - alert: A\n    expr: up == 0\n    for: 5m\n    labels: {}\n"
        );
    }

    #[test]
    fn ambiguous_scalars_are_quoted() {
        for s in ["true", "no", "1.5", "0x1", "", " lead", "a: b", "# c", "-x", "05", "trail "] {
            assert!(!plain_ok(s), "{s:?} must be quoted");
        }
        for s in ["30s", "page", "gemba-slo-read_table", "up == 0", "http://x/y#a"] {
            assert!(plain_ok(s), "{s:?} can be plain");
        }
    }
}
