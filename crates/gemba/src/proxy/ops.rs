//! What the proxy measures: a recorder per upstream over one closed set of operations — the
//! upstream's tools (learned from its `tools/list` at start), an "other tool" operation for
//! tools that appear later (`tools/call`), the MCP methods a client sends, and `unknown` — and
//! how an answer becomes an outcome.

use std::collections::HashMap;
use std::sync::Arc;

use kaizen::recorder::OpSpec;
use kaizen::{OpId, Outcome, Recorder};

/// The task methods (2025-11-25) a client sends, measured by the proxy besides Gemba's own
/// methods (`measure::METHODS`), which Gemba's server does not implement.
pub const TASK_METHODS: [&str; 5] = ["tasks/get", "tasks/list", "tasks/result", "tasks/cancel", "tasks/update"];

/// Client-to-server methods measured besides the tools: Gemba's own list, then the task
/// methods (anything else is `unknown`).
pub fn methods() -> impl Iterator<Item = &'static str> {
    crate::measure::METHODS.iter().chain(TASK_METHODS.iter()).copied()
}

/// The operation a call of a tool not known at start counts under.
pub const OTHER_TOOL: &str = "tools/call";

/// Most tools that get an operation of their own (the rest count as `tools/call`), so a server
/// with a huge tool list cannot blow up the number of series.
pub const MAX_TOOL_OPS: usize = 500;
/// Longest tool name that gets an operation of its own.
pub const MAX_TOOL_NAME: usize = 128;

/// Operation names and their ids, the same for every upstream's recorder.
#[derive(Debug)]
pub struct Ops {
    pub specs: Vec<OpSpec>,
    tools: HashMap<String, OpId>,
    methods: HashMap<&'static str, OpId>,
    other_tool: OpId,
    unknown: OpId,
}

impl Ops {
    /// Operations for these tool names (duplicates, over-long names and names past
    /// `MAX_TOOL_OPS` fall back to `tools/call`). A tool named like a method gets the operation
    /// `tool:<name>`, so no two series share labels.
    pub fn new(tools: &[String]) -> Self {
        let mut specs = Vec::new();
        let mut tool_ids = HashMap::new();
        for t in tools {
            if tool_ids.len() >= MAX_TOOL_OPS || t.is_empty() || t.chars().count() > MAX_TOOL_NAME {
                continue;
            }
            if tool_ids.contains_key(t) {
                continue;
            }
            let op = if methods().any(|m| m == t) { format!("tool:{t}") } else { t.clone() };
            tool_ids.insert(t.clone(), OpId(specs.len() as u16));
            specs.push(OpSpec { name: op, method: "tools/call".into(), target: Some(t.clone()) });
        }
        let mut method_ids = HashMap::new();
        for m in methods() {
            method_ids.insert(m, OpId(specs.len() as u16));
            specs.push(OpSpec { name: m.into(), method: m.into(), target: None });
        }
        let other_tool = method_ids[OTHER_TOOL];
        let unknown = method_ids["unknown"];
        Self { specs, tools: tool_ids, methods: method_ids, other_tool, unknown }
    }

    /// The operation of a request: its tool for `tools/call`, else its method.
    pub fn of(&self, method: &str, tool: Option<&str>) -> OpId {
        if method == "tools/call" {
            return tool.and_then(|t| self.tools.get(t).copied()).unwrap_or(self.other_tool);
        }
        self.methods.get(method).copied().unwrap_or(self.unknown)
    }

    /// The tool operations' names (what SLO patterns are matched against), with `tools/call`.
    pub fn tool_op_names(&self) -> Vec<&str> {
        self.specs.iter().filter(|s| s.method == "tools/call").map(|s| s.name.as_str()).collect()
    }

    pub fn name(&self, op: OpId) -> &str {
        self.specs.get(op.0 as usize).map_or("unknown", |s| s.name.as_str())
    }

    /// A recorder over these operations, its series labelled `upstream="<label>"`.
    pub fn recorder(&self, upstream: &str, enabled: bool) -> Arc<Recorder> {
        let r = Recorder::new(crate::measure::naming(), self.specs.clone(), Vec::new(), enabled);
        r.set_const_labels(vec![("upstream".into(), upstream.into())]);
        r
    }
}

/// The outcome of a JSON-RPC error answer, by its code: internal errors and the SDKs'
/// connection-closed code are the server's failure, their request-timeout code a timeout,
/// everything else (unknown method, bad params, invalid request) the caller's.
pub fn error_outcome(code: i64) -> Outcome {
    match code {
        -32603 | -32000 => Outcome::Internal,
        -32001 => Outcome::Timeout,
        _ => Outcome::InvalidParams,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_methods_and_fallbacks() {
        let tools: Vec<String> =
            ["echo", "get-sum", "echo", "ping", &"x".repeat(200)].iter().map(|s| s.to_string()).collect();
        let ops = Ops::new(&tools);
        assert_eq!(ops.name(ops.of("tools/call", Some("echo"))), "echo");
        assert_eq!(ops.name(ops.of("tools/call", Some("get-sum"))), "get-sum");
        assert_eq!(ops.name(ops.of("tools/call", Some("ping"))), "tool:ping", "a tool named like a method");
        assert_eq!(ops.name(ops.of("ping", None)), "ping");
        assert_eq!(ops.name(ops.of("tools/call", Some("new-tool"))), "tools/call");
        assert_eq!(ops.name(ops.of("tools/call", Some(&"x".repeat(200)))), "tools/call");
        assert_eq!(ops.name(ops.of("no/such", None)), "unknown");
        assert_eq!(ops.tool_op_names(), vec!["echo", "get-sum", "tool:ping", "tools/call"]);
        let names: std::collections::HashSet<_> = ops.specs.iter().map(|s| &s.name).collect();
        assert_eq!(names.len(), ops.specs.len(), "operation names are unique");
    }

    #[test]
    fn tool_operations_are_bounded() {
        let tools: Vec<String> = (0..2 * MAX_TOOL_OPS).map(|i| format!("t{i}")).collect();
        let ops = Ops::new(&tools);
        assert_eq!(ops.specs.len(), MAX_TOOL_OPS + methods().count());
        assert_eq!(ops.name(ops.of("tools/call", Some("t0"))), "t0");
        assert_eq!(ops.name(ops.of("tools/call", Some(&format!("t{}", MAX_TOOL_OPS)))), "tools/call");
    }

    #[test]
    fn error_codes_map_to_outcomes() {
        assert_eq!(error_outcome(-32603), Outcome::Internal);
        assert_eq!(error_outcome(-32001), Outcome::Timeout);
        assert_eq!(error_outcome(-32601), Outcome::InvalidParams);
        assert_eq!(error_outcome(-32602), Outcome::InvalidParams);
    }
}
