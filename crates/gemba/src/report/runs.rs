//! What the server records about itself at each start (`runs` in the request log): its version
//! and the configuration that shapes the figures a report explains — the cache capacity, the
//! admission limits, timeouts and input limits. Reports show what changed between starts and
//! take the capacity in force from here.

use serde_json::{Value, json};

use crate::config::ServeConfig;

/// The key of the workbook cache's byte bound in a run's configuration.
pub const CACHE_BYTES: &str = "cache_bytes";

/// The effective configuration worth comparing across starts (no paths, addresses or secrets).
pub fn run_config(cfg: &ServeConfig) -> Value {
    let f = &cfg.forks;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "transport": if cfg.http.is_some() { "http" } else { "stdio" },
        CACHE_BYTES: cfg.cache_bytes,
        "max_inflight": cfg.max_inflight,
        "max_queued": cfg.max_queued,
        "queue_wait_ms": cfg.queue_wait_ms,
        "timeout_ms": cfg.timeout_ms,
        "load_timeout_ms": cfg.load_timeout_ms,
        "slo_file": cfg.slo_file.is_some(),
        "max_file_bytes": cfg.max_file_bytes,
        "max_cells": cfg.max_cells,
        "max_body_bytes": cfg.max_body_bytes,
        "kaizen": cfg.kaizen,
        "log_retention_secs": cfg.retention.max_age.as_secs(),
        "log_max_rows": cfg.retention.max_rows,
        "forks": {
            "max_forks": f.max_forks,
            "max_age_secs": f.max_age.as_secs(),
            "allow_overwrite": f.allow_overwrite,
            "recalc_backend": serde_json::to_value(f.default_backend).unwrap_or(Value::Null),
            "recalc_timeout_ms": f.libreoffice.timeout.as_millis() as u64,
            "recalc_concurrency": f.libreoffice.concurrency,
        },
    })
}

/// Record this start in the request log (a failure is logged: the server runs on without it).
pub fn record(store: &kaizen::store::Store, cfg: &ServeConfig) {
    if let Err(e) = store.record_run(env!("CARGO_PKG_VERSION"), &run_config(cfg)) {
        tracing::warn!("cannot record this server start in the request log: {e}");
    }
}
