//! Types shared by the modules that judge and the modules that deliver: an alert's transition.

use serde::Serialize;

/// An alert's transition, for delivery (log, webhook).
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    /// The alert's name, e.g. `<Prefix>SLOBurnRatePage`.
    pub alert: String,
    /// The objective, for SLO alerts (empty otherwise).
    pub slo: String,
    /// The operation the objective judges (empty otherwise).
    pub tool: String,
    pub severity: String,
    /// "firing" or "resolved".
    pub status: String,
    pub at_secs: u64,
    pub summary: String,
    pub runbook: String,
}
