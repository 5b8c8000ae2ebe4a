//! Recalculation: the backends, what they return, and the report a fork keeps of its last run.

use std::sync::atomic::{AtomicU64, Ordering};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cells::Scalar;

// Which engine recalculates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    // IronCalc inside the server (default): fast, no process to start.
    #[default]
    InProcess,
    // LibreOffice headless in a child process: broader function coverage, slower.
    Libreoffice,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::InProcess => "in_process",
            Backend::Libreoffice => "libreoffice",
        }
    }
}

/// Why a recomputed value cannot be trusted.
#[derive(Debug, Clone, PartialEq)]
pub enum Issue {
    /// The cell is part of a circular reference.
    Cycle,
    /// The engine does not support something the formula uses.
    Unsupported { detail: String },
}

/// One formula cell's recomputed value.
#[derive(Debug, Clone)]
pub struct Computed {
    pub sheet: usize,
    pub row: u32,
    pub col: u32,
    pub value: Scalar,
    pub issue: Option<Issue>,
}

/// A cell the engine could not calculate faithfully, reported to the agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CellIssue {
    pub cell: String,
    /// cycle or unsupported.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The value kept (the file's).
    #[schemars(schema_with = "crate::tools::cell_schema")]
    pub kept: serde_json::Value,
}

impl CellIssue {
    pub fn new(cell: String, issue: Issue, kept: serde_json::Value) -> Self {
        let (kind, detail) = match issue {
            Issue::Cycle => ("cycle", None),
            Issue::Unsupported { detail } => ("unsupported", Some(detail)),
        };
        Self { cell, kind: kind.into(), detail, kept }
    }
}

/// What the last recalculation did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct RecalcReport {
    /// The backend that produced the values (libreoffice when the in-process engine refused).
    pub backend: String,
    /// Why the in-process engine was not used although it was asked for (LibreOffice was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    pub formulas: usize,
    /// Formula cells whose value differs from the original's.
    pub changed: usize,
    /// Cycles and unsupported functions (first 50).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<CellIssue>,
    pub issue_count: usize,
    pub load_ms: f64,
    pub evaluate_ms: f64,
}

/// Counters a backend keeps for metrics.
#[derive(Debug, Default)]
pub struct RecalcStats {
    pub runs: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub retries: AtomicU64,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: std::sync::atomic::AtomicU8,
    pub breaker_transitions: AtomicU64,
    pub rejected_open: AtomicU64,
    /// Start of the longest recalculation still running, as unix millis (0: none).
    running: parking_lot::Mutex<Vec<std::time::Instant>>,
}

impl RecalcStats {
    /// Seconds the longest running recalculation has taken so far.
    pub fn longest_running_seconds(&self) -> f64 {
        self.running.lock().iter().map(|t| t.elapsed().as_secs_f64()).fold(0.0, f64::max)
    }

    /// Mark a recalculation as running until the guard drops.
    pub fn running(&self) -> RunningGuard<'_> {
        let at = std::time::Instant::now();
        self.running.lock().push(at);
        RunningGuard { stats: self, at }
    }

    pub fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct RunningGuard<'a> {
    stats: &'a RecalcStats,
    at: std::time::Instant,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        let mut r = self.stats.running.lock();
        if let Some(i) = r.iter().position(|t| *t == self.at) {
            r.swap_remove(i);
        }
    }
}
