//! What the embedder feeds the detector: calls (batched, from the aggregator thread), a snapshot
//! of named gauges and counters at every tick, discrete events, and SLO alert transitions.

use serde::{Deserialize, Serialize};

use crate::Outcome;

/// How a call ended, as the detector sees it. Every class but `Ok` counts in the error ratio;
/// only `Ok` calls count in latency (fast failures would otherwise hide slow successes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum CallClass {
    Ok = 0,
    /// The caller's mistake (bad arguments, unknown names).
    UserError = 1,
    /// The input data's fault (an unreadable or unsupported file).
    DataError = 2,
    /// The server's fault.
    ServerError = 3,
    /// Ran past its time budget.
    Timeout = 4,
    /// Refused before any work (overload, limits).
    Refused = 5,
}

impl CallClass {
    pub const ALL: [CallClass; 6] = [
        CallClass::Ok,
        CallClass::UserError,
        CallClass::DataError,
        CallClass::ServerError,
        CallClass::Timeout,
        CallClass::Refused,
    ];
    pub const COUNT: usize = 6;

    pub fn as_str(self) -> &'static str {
        match self {
            CallClass::Ok => "ok",
            CallClass::UserError => "user_error",
            CallClass::DataError => "data_error",
            CallClass::ServerError => "server_error",
            CallClass::Timeout => "timeout",
            CallClass::Refused => "refused",
        }
    }

    /// Maps a recorder outcome; `category` refines a tool error: `"data"` (an unreadable input)
    /// makes it a data error, anything else a user error. A call the client cancelled says
    /// nothing about the server (its latency is cut short): None, leave it out.
    pub fn from_outcome(outcome: Outcome, category: Option<&str>) -> Option<Self> {
        Some(match outcome {
            Outcome::Ok => CallClass::Ok,
            Outcome::ToolError if category == Some("data") => CallClass::DataError,
            Outcome::ToolError | Outcome::InvalidParams => CallClass::UserError,
            Outcome::Timeout => CallClass::Timeout,
            Outcome::Internal => CallClass::ServerError,
            Outcome::Rejected => CallClass::Refused,
            Outcome::Cancelled => return None,
        })
    }
}

/// One finished call. `op` indexes the operation names the detector was built with (the
/// recorder's op indices); unknown indices are counted and ignored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallEvent {
    pub op: usize,
    /// When the call finished, unix milliseconds.
    pub at_ms: u64,
    pub latency_us: u64,
    pub class: CallClass,
    /// Bytes of the response (0 when unknown); feeds the `calls.response_bytes_mean` signal.
    pub response_bytes: u64,
}

/// Named gauges and counters read by the embedder at a tick. Which is which is said by the
/// cause rules that use them; names are free-form (`cache_hit_ratio`, `cache_evictions`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignalSnapshot {
    pub values: Vec<(String, f64)>,
}

impl SignalSnapshot {
    /// A snapshot from `(name, value)` pairs.
    pub fn of<S: Into<String>>(values: impl IntoIterator<Item = (S, f64)>) -> Self {
        Self { values: values.into_iter().map(|(k, v)| (k.into(), v)).collect() }
    }
}

/// An SLO (or any) alert changing state; the detector groups it with overlapping anomalies.
/// Pass symptoms (burn-rate pages and tickets), not slow budget states: an alert that fires
/// for days holds its incident open for days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertTransition {
    /// The alert's name, e.g. `GembaSLOBurnRatePage`.
    pub name: String,
    /// The tool it is about ("" when it is about the whole server).
    pub tool: String,
    /// `true` when it starts firing, `false` when it resolves.
    pub firing: bool,
    pub at_ms: u64,
    /// One line for the timeline (the alert's summary).
    pub detail: String,
}

/// The signal names the detector derives itself from calls, per tick, across all tools; cause
/// rules may use them like any snapshot gauge.
pub mod derived {
    /// Calls per second.
    pub const CALL_RATE: &str = "calls.rate";
    /// Mean response bytes per call.
    pub const RESPONSE_BYTES_MEAN: &str = "calls.response_bytes_mean";
    /// Prefix of the share of calls of each non-ok class: `calls.share.user_error`, ...
    pub const SHARE_PREFIX: &str = "calls.share.";
}
