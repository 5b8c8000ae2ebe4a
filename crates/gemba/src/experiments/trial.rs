//! One tool call under the experiments: assigned before it runs (its knob values fill the
//! arguments the agent left out and set how the server runs it), observed after it ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use kaizen::Outcome;
use kaizen::experiment::{Assignment, Observation};
use rmcp::model::CallToolResult;
use serde_json::Value;

use super::Experiments;
use super::knobs::{self, CallSettings};
use crate::measure::Note;

/// A call's assignment, the settings it asked for and when it started.
pub struct Trial {
    experiments: Arc<Experiments>,
    assignment: Assignment,
    started: Instant,
    pub settings: CallSettings,
}

/// Assigns a call to its variants (when experiments run): rewrites `args` with the knob values
/// the agent left out and returns the trial to finish after the call. `session` is the MCP
/// session's id; the key is the call's `workbook_id`.
pub fn begin(experiments: Option<&Arc<Experiments>>, tool: &str, args: &mut Value, session: u64) -> Option<Trial> {
    let experiments = experiments?;
    let key = args.get("workbook_id").and_then(Value::as_str);
    let assignment = experiments.engine.assign(&format!("{session:016x}"), key);
    let settings = knobs::apply(tool, args, &assignment);
    Some(Trial { experiments: experiments.clone(), assignment, started: Instant::now(), settings })
}

/// Whether the call reads its workbooks fresh from disk.
pub fn bypasses_cache(trial: &Option<Trial>) -> bool {
    trial.as_ref().is_some_and(|t| t.settings.bypass_cache)
}

impl Trial {
    /// Records how the call went: its latency from assignment to answer, outcome, cache use and
    /// response size. (Calls refused before running or cancelled by the client are not
    /// recorded: the variant had no part in them.)
    pub fn finish(self, tool: &str, note: &Note, result: &CallToolResult) {
        let outcome =
            note.outcome().unwrap_or(if result.is_error == Some(true) { Outcome::ToolError } else { Outcome::Ok });
        let response_bytes = result.content.iter().filter_map(|b| b.as_text().map(|t| t.text.len() as u64)).sum();
        let cache_hit = match note.cache.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        };
        let observation = Observation {
            operation: tool,
            latency_micros: self.started.elapsed().as_micros() as u64,
            is_error: outcome != Outcome::Ok,
            is_server_error: matches!(outcome, Outcome::Timeout | Outcome::Internal),
            cache_hit,
            response_bytes,
        };
        self.experiments.engine.record(&self.assignment, &observation);
    }
}
