//! Configuration and version changes in a period, from the runs the embedder recorded.

use serde::Serialize;

use crate::store::Run;

/// One start of the embedder in the period and what changed since the start before it.
#[derive(Debug, Clone, Serialize)]
pub struct RunChange {
    pub at: String,
    pub at_ms: i64,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// `path: old → new` for each configuration value that changed (at most 50).
    pub config_changes: Vec<String>,
}

const MAX_CHANGES: usize = 50;
const MAX_VALUE: usize = 80;

fn show(v: Option<&serde_json::Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => crate::store::cap_chars(&v.to_string(), MAX_VALUE).to_string(),
    }
}

/// Differences between two JSON values as `path: old → new` lines.
fn diff(path: &str, a: Option<&serde_json::Value>, b: Option<&serde_json::Value>, out: &mut Vec<String>) {
    if out.len() >= MAX_CHANGES || a == b {
        return;
    }
    if let (Some(serde_json::Value::Object(x)), Some(serde_json::Value::Object(y))) = (a, b) {
        let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            diff(&format!("{path}/{k}"), x.get(k), y.get(k), out);
        }
        return;
    }
    let p = if path.is_empty() { "/" } else { path };
    out.push(format!("{p}: {} → {}", show(a), show(b)));
}

/// The runs that started at or after `from_ms`, each against the run before it.
pub(crate) fn changes(runs: &[Run], from_ms: i64) -> Vec<RunChange> {
    let mut out = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        if r.started_ms < from_ms {
            continue;
        }
        let prev = i.checked_sub(1).map(|j| &runs[j]);
        let mut config_changes = Vec::new();
        if let Some(p) = prev {
            diff("", Some(&p.config), Some(&r.config), &mut config_changes);
        }
        out.push(RunChange {
            at: super::time::iso(r.started_ms),
            at_ms: r.started_ms,
            version: r.version.clone(),
            previous_version: prev.map(|p| p.version.clone()).filter(|v| *v != r.version),
            config_changes,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_what_changed() {
        let runs = vec![
            Run { started_ms: 0, version: "0.1.0".into(), config: json!({"cache_mb": 512, "slo": {"a": 1}}) },
            Run {
                started_ms: 10,
                version: "0.1.0".into(),
                config: json!({"cache_mb": 128, "slo": {"a": 1}, "x": true}),
            },
            Run {
                started_ms: 20,
                version: "0.2.0".into(),
                config: json!({"cache_mb": 128, "slo": {"a": 1}, "x": true}),
            },
        ];
        let c = changes(&runs, 5);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].config_changes, vec!["/cache_mb: 512 → 128", "/x: (absent) → true"]);
        assert_eq!(c[0].previous_version, None);
        assert_eq!(c[1].previous_version.as_deref(), Some("0.1.0"));
        assert!(c[1].config_changes.is_empty());
    }
}
