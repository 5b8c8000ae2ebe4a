//! What a report needs besides the log: the cache capacity that was in force, the SLO objectives,
//! and the team's own effort estimates for backlog items.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use kaizen::learn::{Period, ReportOptions};
use kaizen::slo::SloConfig;
use serde::Deserialize;

/// `--report-config FILE`: the team's estimates and the length of the lists.
///
/// ```toml
/// top_n = 10
/// [effort]               # person-days, by backlog item id (first) or kind
/// cache = 0.1            # resizing the cache is a one-line change here
/// "error-3f2a9c" = 0.5
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// How many signatures, workflows and keys to list (1 to 1000; default 10).
    pub top_n: Option<usize>,
    /// Person-days per backlog item id or kind (error, cache, cache_policy, slo, stage, queue,
    /// truncation, regression), overriding the defaults.
    #[serde(default)]
    pub effort: HashMap<String, f64>,
}

impl ReportConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read report config {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "report config {} is not valid: it may hold `top_n = 10` and an [effort] table of \
                 person-days by backlog item id or kind",
                path.display()
            )
        })
    }
}

/// The cache capacity of the latest server start before `until_ms` (its recorded
/// `cache_bytes`), or of the earliest start after it when none came before; `None` when the
/// log has no usable run record.
pub fn recorded_capacity(db: &Path, until_ms: i64) -> Option<u64> {
    let runs = match kaizen::store::load_runs(db, until_ms) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("cannot read the server starts from {}: {e}", db.display());
            return None;
        }
    };
    let before = runs.iter().rev().find(|r| r.started_ms < until_ms);
    let run = before.or_else(|| runs.first())?;
    run.config.get(super::runs::CACHE_BYTES).and_then(serde_json::Value::as_u64).filter(|b| *b > 0)
}

/// The capacity to compare the what-if with: the recorded one, else the server's default.
pub fn capacity_in_force(db: &Path, until_ms: i64) -> u64 {
    recorded_capacity(db, until_ms).unwrap_or((crate::config::DEFAULT_CACHE_MB * 1024 * 1024) as u64)
}

/// The options for one report.
pub fn build(period: Period, until_ms: i64, capacity_bytes: u64, slo: &SloConfig, cfg: &ReportConfig) -> ReportOptions {
    let mut opts = ReportOptions {
        period,
        until_ms,
        capacity_bytes: Some(capacity_bytes.max(1)),
        slo_objectives: slo.objectives().into_iter().map(|o| (o.name, o.objective)).collect(),
        slo_resolution_secs: slo.resolution_secs,
        effort_overrides: cfg.effort.clone(),
        ..ReportOptions::default()
    };
    if let Some(n) = cfg.top_n {
        opts.top_n = n;
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_config_takes_efforts_and_refuses_unknown_keys() {
        let cfg: ReportConfig = toml::from_str("top_n = 5\n[effort]\ncache = 0.1\n\"error-abc\" = 2\n").unwrap();
        assert_eq!(cfg.top_n, Some(5));
        assert_eq!(cfg.effort.get("cache"), Some(&0.1));
        assert_eq!(cfg.effort.get("error-abc"), Some(&2.0));
        assert!(toml::from_str::<ReportConfig>("efort = 1").is_err());
        let opts = build(Period::Day, 1_000, 64 << 20, &crate::slo::seed(), &cfg);
        assert_eq!(opts.top_n, 5);
        assert_eq!(opts.capacity_bytes, Some(64 << 20));
        // Every tool has a latency and an availability objective in the seed.
        assert_eq!(opts.slo_objectives.len(), 2 * crate::slo::TOOL_TIERS.len());
    }

    #[test]
    fn capacity_comes_from_the_run_in_force_at_the_end_of_the_period() {
        let dir = std::env::temp_dir().join(format!("gemba-report-runs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let retention = kaizen::store::Retention { max_age: std::time::Duration::from_secs(86_400), max_rows: 1000 };
        let store = kaizen::store::Store::open(&dir, retention).unwrap();
        let db = dir.join(super::super::DB_FILE);
        // No run recorded: the default.
        assert_eq!(recorded_capacity(&db, i64::MAX), None);
        assert_eq!(capacity_in_force(&db, i64::MAX), 512 << 20);
        store.record_run("1", &serde_json::json!({ "cache_bytes": 64u64 << 20 })).unwrap();
        store.record_run("1", &serde_json::json!({ "cache_bytes": 96u64 << 20 })).unwrap();
        assert_eq!(capacity_in_force(&db, i64::MAX), 96 << 20);
        // A period ending before the first start: that start's capacity.
        assert_eq!(capacity_in_force(&db, 0), 64 << 20);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
