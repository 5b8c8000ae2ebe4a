//! A change of version or configuration between runs, noted as a `config_change` event at
//! start: a regression that arrives with a deploy is then ranked with its likely cause. Each run
//! is a row of the `runs` table (`kaizen::store`); the previous one is read before this run's
//! is recorded.

use std::path::Path;

use serde_json::{Value, json};

use crate::config::ServeConfig;

/// This build's version, as recorded per run.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Settings listed per change at most (the rest are counted).
const MAX_LISTED: usize = 8;

/// The settings that change how the server behaves under load, as recorded per run.
pub fn run_config(cfg: &ServeConfig) -> Value {
    json!({
        "cache_bytes": cfg.cache_bytes,
        "max_inflight": cfg.max_inflight,
        "queue_wait_ms": cfg.queue_wait_ms,
        "max_queued": cfg.max_queued,
        "timeout_ms": cfg.timeout_ms,
        "load_timeout_ms": cfg.load_timeout_ms,
        "max_file_bytes": cfg.max_file_bytes,
        "max_cells": cfg.max_cells,
        "max_forks": cfg.forks.max_forks,
        "recalc_backend": serde_json::to_value(cfg.forks.default_backend).unwrap_or(Value::Null),
    })
}

/// The last run recorded in the state database, if any (a database that cannot be read is
/// logged and treated as no history).
pub fn last_run(db: &Path) -> Option<kaizen::store::Run> {
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
        (Value::Object(old), Value::Object(new)) => {
            let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
            keys.sort();
            keys.dedup();
            let changed: Vec<String> = keys
                .into_iter()
                .filter(|k| old.get(*k) != new.get(*k))
                .map(|k| format!("{k} {} → {}", shown(old.get(k)), shown(new.get(k))))
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

fn shown(v: Option<&Value>) -> String {
    match v {
        None => "(unset)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "version 0.1.0 → 0.2.0; cache_bytes 512 → 64; max_queued (unset) → 32"
        );
        assert_eq!(change(&run("0.1.0", json!("odd")), "0.1.0", &cfg).unwrap(), "configuration changed");
    }

    #[test]
    fn reads_the_last_recorded_run() {
        let dir = std::env::temp_dir().join(format!("gemba-runs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = kaizen::store::Store::open(&dir, kaizen::store::Retention::default()).unwrap();
        assert!(last_run(&store.path).is_none());
        store.record_run("0.1.0", &json!({"cache_bytes": 1})).unwrap();
        store.record_run("0.2.0", &json!({"cache_bytes": 2})).unwrap();
        let last = last_run(&store.path).unwrap();
        assert_eq!((last.version.as_str(), &last.config), ("0.2.0", &json!({"cache_bytes": 2})));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
