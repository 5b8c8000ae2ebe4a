//! A change of version or configuration between runs, noted as a `config_change` event at
//! start: a regression that arrives with a deploy is then ranked with its likely cause. Each run
//! is a row of the `runs` table (`kaizen::store`); the previous one is read at the very top of
//! `wiring::start`, before anything records this run. Settings are compared by their (dotted)
//! names present in both runs, so a run recorded with more or fewer settings (another build, or
//! another part of Gemba recording the run) does not look like a change by itself.

use std::path::Path;

use serde_json::Value;

/// This build's version, as recorded per run.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Settings listed per change at most (the rest are counted).
const MAX_LISTED: usize = 8;

/// The last run recorded in the state database, if any (no database yet is no history; one
/// that cannot be read is logged and treated as no history).
pub fn last_run(db: &Path) -> Option<kaizen::store::Run> {
    if !db.exists() {
        return None;
    }
    match kaizen::store::load_runs(db, i64::MAX) {
        Ok(mut runs) => runs.pop(),
        Err(e) => {
            tracing::warn!("cannot read the previous run from {}: {e}", db.display());
            None
        }
    }
}

/// What changed from `prev` to this run, in one line; None when nothing did.
pub fn change(prev: &kaizen::store::Run, version: &str, config: &Value) -> Option<String> {
    let mut parts = Vec::new();
    if prev.version != version {
        parts.push(format!("version {} → {version}", prev.version));
    }
    match (&prev.config, config) {
        (old @ Value::Object(_), new @ Value::Object(_)) => {
            let (old, new) = (flatten(old), flatten(new));
            let changed: Vec<String> = old
                .iter()
                .filter_map(|(k, was)| {
                    let now = new.get(k)?;
                    (was != now).then(|| format!("{k} {} → {}", shown(was), shown(now)))
                })
                .collect();
            let more = changed.len().saturating_sub(MAX_LISTED);
            parts.extend(changed.into_iter().take(MAX_LISTED));
            if more > 0 {
                parts.push(format!("{more} more settings"));
            }
        }
        (old, new) if old != new => parts.push("configuration changed".into()),
        _ => {}
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// An object's leaves by dotted name (`forks.max_forks`), sorted; the version recorded inside a
/// config is left to the run's own version field.
fn flatten(v: &Value) -> std::collections::BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut std::collections::BTreeMap<String, Value>, depth: usize) {
        match v {
            Value::Object(m) if depth < 4 => {
                for (k, child) in m {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&name, child, out, depth + 1);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk("", v, &mut out, 0);
    out.remove("version");
    out
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(version: &str, config: Value) -> kaizen::store::Run {
        kaizen::store::Run { started_ms: 1, version: version.into(), config }
    }

    #[test]
    fn names_what_changed_and_nothing_when_equal() {
        let cfg = json!({"cache_bytes": 512, "max_inflight": 8});
        assert_eq!(change(&run("0.1.0", cfg.clone()), "0.1.0", &cfg), None);
        let now = json!({"cache_bytes": 64, "max_inflight": 8, "max_queued": 32});
        assert_eq!(
            change(&run("0.1.0", cfg.clone()), "0.2.0", &now).unwrap(),
            "version 0.1.0 → 0.2.0; cache_bytes 512 → 64"
        );
        // Settings only one run recorded are not a change; nested ones compare by dotted name.
        let other_shape = json!({"version": "0.1.0", "cache_bytes": 512, "forks": {"max_forks": 4}, "kaizen": true});
        assert_eq!(change(&run("0.1.0", other_shape.clone()), "0.1.0", &cfg), None);
        let wider = json!({"cache_bytes": 512, "forks": {"max_forks": 8}});
        assert_eq!(change(&run("0.1.0", other_shape), "0.1.0", &wider).unwrap(), "forks.max_forks 4 → 8");
        assert_eq!(change(&run("0.1.0", json!("odd")), "0.1.0", &cfg).unwrap(), "configuration changed");
    }

    #[test]
    fn reads_the_last_recorded_run() {
        let dir = std::env::temp_dir().join(format!("gemba-runs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = kaizen::store::Store::open(&dir, kaizen::store::Retention::default()).unwrap();
        assert!(last_run(&dir.join("none.db")).is_none(), "no database yet: no history");
        assert!(last_run(&store.path).is_none());
        store.record_run("0.1.0", &json!({"cache_bytes": 1})).unwrap();
        store.record_run("0.2.0", &json!({"cache_bytes": 2})).unwrap();
        let last = last_run(&store.path).unwrap();
        assert_eq!((last.version.as_str(), &last.config), ("0.2.0", &json!({"cache_bytes": 2})));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
