//! The MCP adapter: a thin `ServerHandler` that lists the catalog and runs a tool call on the
//! blocking pool under a time budget, mapping domain errors to tool errors the agent can read.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kaizen::Outcome;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;
use sheets::{Budget, Engine, ErrorClass};

use crate::catalog::{self, CallError};
use crate::measure::{self, Note};

/// The MCP resource with the server's own figures.
pub const METRICS_URI: &str = "kaizen://metrics";
/// The MCP resource with the SLO status.
pub const SLO_URI: &str = "kaizen://slo";
/// The MCP resource with the experiments' status.
pub const EXPERIMENTS_URI: &str = "kaizen://experiments";

pub const INSTRUCTIONS: &str = "Gemba reads spreadsheets (xlsx, xlsm, xls, xlsb, ods) in one workspace. \
Workflow: 1) list_workbooks for ids; 2) workbook_summary or list_sheets; 3) sheet_overview to see regions \
(tables, parameter blocks, outputs, notes) and their region_id; 4) table_profile to understand columns; \
5) a targeted read: read_table (region_id, columns, filters, limit/offset), range_values or inspect_cells. \
Search with find_value (mode=label for 'the value next to Total') and find_formula; follow formulas with \
formula_trace. Responses are small by default: follow next_offset / next_start_row / next_cursor, and \
narrow a call when truncated is true. Rows and columns are 1-based in arguments and results (A1 notation). \
To change a workbook: create_fork, then edit_batch / transform_batch (mode=preview first if unsure), \
recalculate, get_changeset and verify_workbook, then save_fork to a new path. The original is never written \
until save_fork; a fork_id works as a workbook_id in every read tool.";

/// Shared, cheap-to-clone server state (one per process; HTTP makes a handler per session).
pub struct State {
    pub engine: Engine,
    pub tools: Vec<Tool>,
    /// Each tool's time budget (its SLO tier's timeout, or --timeout-ms for all).
    pub timeouts: std::collections::HashMap<String, Duration>,
    pub default_timeout: Duration,
    /// Budget for loading workbooks (a cold load may need more than a tool's own timeout).
    pub load_timeout: Duration,
    /// Measurement and improvement, once started (none with --no-kaizen's bench paths).
    pub kaizen: std::sync::OnceLock<Arc<crate::wiring::Kaizen>>,
    /// Test-only fault injection (compiled only with `--features test-faults`).
    pub faults: crate::faults::Faults,
    /// Admission control: slots for tool calls, refusals past them.
    pub gate: crate::admission::Gate,
}

pub use crate::admission::Admission;

#[derive(Clone)]
pub struct GembaServer {
    state: Arc<State>,
}

impl GembaServer {
    pub fn new(engine: Engine, timeouts: crate::slo::Timeouts, admission: Admission) -> Self {
        Self {
            state: Arc::new(State {
                engine,
                tools: catalog::definitions(),
                timeouts: timeouts.per_tool,
                default_timeout: timeouts.default,
                load_timeout: timeouts.load,
                kaizen: std::sync::OnceLock::new(),
                faults: crate::faults::Faults::from_env(),
                gate: crate::admission::Gate::new(admission),
            }),
        }
    }

    /// Calls refused for capacity, the admission settings, and slots free now.
    pub fn admission_figures(&self) -> (u64, Admission, usize) {
        let g = &self.state.gate;
        (g.refused(), g.config, g.free())
    }

    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// Measurement started: the resources and per-call hooks can reach it from now on.
    pub fn attach_kaizen(&self, k: Arc<crate::wiring::Kaizen>) {
        let _ = self.state.kaizen.set(k);
    }

    /// Run one tool to completion, reporting details into `note` for the measurement layer.
    pub async fn run_tool(
        &self,
        name: &str,
        mut args: Value,
        note: &Note,
        ct: &tokio_util::sync::CancellationToken,
    ) -> CallToolResult {
        let state = self.state.clone();
        // Experiments: the call's variants fill arguments the agent left out and choose settings.
        let trial = crate::experiments::trial::begin(
            state.kaizen.get().and_then(|k| k.experiments.as_ref()),
            name,
            &mut args,
            note.session,
        );
        // Admission: a slot, or a quick refusal. The slot goes with the work, so it is held
        // until the work really ends (a timed-out call keeps it until it stops); it is lent out
        // while the call waits for another call's load.
        let ticket = match state.gate.admit(name).await {
            Ok(t) => Arc::new(t),
            Err(why) => {
                note.set_outcome(Outcome::Rejected);
                return tool_error(why);
            }
        };
        let timeout = state.timeouts.get(name).copied().unwrap_or(state.default_timeout);
        let budget = Budget::with_timeouts(timeout, state.load_timeout)
            .with_waiting(ticket.clone())
            .with_cache_bypass(crate::experiments::trial::bypasses_cache(&trial));
        let canceller = budget.canceller();
        let name_owned = name.to_string();
        let queued = Instant::now();
        let b = budget.clone();
        let work = tokio::task::spawn_blocking(move || {
            let _ticket = ticket;
            let queue = queued.elapsed();
            if let Err(e) = state.faults.before(&name_owned, &b) {
                return (queue, Duration::ZERO, Some(Err(CallError::Tool(e))));
            }
            let t = Instant::now();
            let r = catalog::dispatch(&name_owned, &state.engine, args, &b);
            state.faults.after(&name_owned);
            (queue, t.elapsed(), r)
        });
        let backstop = timeout.max(self.state.load_timeout) + Duration::from_millis(250);
        let outcome = tokio::select! {
            r = tokio::time::timeout(backstop, work) => r,
            _ = ct.cancelled() => {
                // The client gave up (a cancel notification, or it went away): stop the work.
                canceller.cancel();
                note.set_outcome(Outcome::Cancelled);
                return tool_error(format!("{name} was cancelled by the client"));
            }
        };
        let stages = budget.stages();
        let result = match outcome {
            Err(_) => {
                // The work checks its budget and stops; tell the agent now.
                canceller.cancel();
                note.set_outcome(Outcome::Timeout);
                tool_error(format!(
                    "{name} took longer than its {}ms budget and was stopped; narrow the call (sheet_name, range, limit) and try again",
                    backstop.as_millis()
                ))
            }
            Ok(Err(join)) => {
                tracing::error!(tool = name, "tool panicked: {join}");
                note.set_outcome(Outcome::Internal);
                note.set_error("system", "tool panicked");
                tool_error(format!(
                    "internal error in {name}; the server is still running — please report this with the arguments used"
                ))
            }
            Ok(Ok((queue, work, r))) => {
                note.queue_nanos.store(queue.as_nanos() as u64, Ordering::Relaxed);
                let load = Duration::from_nanos(stages.load_nanos.load(Ordering::Relaxed));
                let analyze = Duration::from_nanos(stages.analyze_nanos.load(Ordering::Relaxed));
                note.stage(measure::STAGE_LOAD, load);
                note.stage(measure::STAGE_ANALYZE, analyze);
                match r {
                    None => tool_error(unknown_tool(name)),
                    Some(Ok((value, validate))) => {
                        note.stage(measure::STAGE_VALIDATE, validate);
                        note.stage(measure::STAGE_EXTRACT, work.saturating_sub(load + analyze + validate));
                        note.rows.store(rows_of(&value), Ordering::Relaxed);
                        if value.get("truncated").and_then(Value::as_bool) == Some(true) {
                            note.truncated.store(true, Ordering::Relaxed);
                        }
                        let t = Instant::now();
                        let r = success(value);
                        note.stage(measure::STAGE_SERIALIZE, t.elapsed());
                        r
                    }
                    Some(Err(CallError::InvalidParams(msg))) => {
                        note.set_outcome(Outcome::InvalidParams);
                        tool_error(format!("invalid arguments for {name}: {msg}. See the tool's inputSchema"))
                    }
                    Some(Err(CallError::Tool(e))) => {
                        match e.class() {
                            ErrorClass::Internal => {
                                tracing::error!(tool = name, "{e}");
                                note.set_outcome(Outcome::Internal);
                            }
                            ErrorClass::Timeout => note.set_outcome(Outcome::Timeout),
                            ErrorClass::User => note.set_outcome(Outcome::ToolError),
                            ErrorClass::Workbook => {
                                note.set_outcome(Outcome::ToolError);
                                note.set_error("data", &e.to_string());
                            }
                        }
                        tool_error(e.to_string())
                    }
                }
            }
        };
        let cache = match stages.cache_hit() {
            Some(true) => 1,
            Some(false) => 2,
            None => 0,
        };
        note.cache.store(cache, Ordering::Relaxed);
        if let Some(key) = stages.key() {
            // The workbook's size in the cache after the call: what a cache model must hold.
            *note.key.lock() = Some((key.to_string(), self.state.engine.cache.bytes_of(key) as u64));
        }
        if let Some(t) = trial {
            t.finish(name, note, &result);
        }
        result
    }
}

/// Rows (or items) a result carries: `returned` when the tool says, else the longest list.
fn rows_of(v: &Value) -> u64 {
    if let Some(n) = v.get("returned").and_then(Value::as_u64) {
        return n;
    }
    v.as_object()
        .map(|m| m.values().filter_map(Value::as_array).map(|a| a.len() as u64).max().unwrap_or(0))
        .unwrap_or(0)
}

fn unknown_tool(name: &str) -> String {
    let near = sheets::error::closest(name, catalog::NAMES.iter().copied(), 1);
    match near.first() {
        Some(n) => format!("no tool '{name}' — did you mean '{n}'? call tools/list"),
        None => format!("no tool '{name}'; call tools/list"),
    }
}

fn success(value: Value) -> CallToolResult {
    let text = value.to_string();
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(value);
    r
}

fn tool_error(msg: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(msg)])
}

impl ServerHandler for GembaServer {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().build());
        let mut imp = Implementation::new("gemba", env!("CARGO_PKG_VERSION"));
        imp = imp.with_title("Gemba spreadsheet server");
        info.server_info = imp;
        info.instructions = Some(INSTRUCTIONS.into());
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.state.tools.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.state.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        if !catalog::NAMES.contains(&name.as_str()) {
            return Err(ErrorData::invalid_params(unknown_tool(&name), None));
        }
        let args = Value::Object(request.arguments.unwrap_or_default());
        let ct = context.ct.clone();
        let note = context.extensions.get::<Arc<Note>>().cloned().unwrap_or_default();
        let result = self.run_tool(&name, args, &note, &ct).await;
        Ok(CallToolResponse::from(result))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut m = Resource::new(METRICS_URI, "kaizen-metrics");
        m.description =
            Some("Gemba's own figures: requests, outcomes, latency percentiles per tool, cache, process.".into());
        m.mime_type = Some("application/json".into());
        let mut s = Resource::new(SLO_URI, "kaizen-slo");
        s.description = Some("Each tool's objectives: SLI, error budget left, burn rates, alert state.".into());
        s.mime_type = Some("application/json".into());
        let mut x = Resource::new(EXPERIMENTS_URI, "kaizen-experiments");
        x.description = Some(
            "Experiments (flags, A/B tests, canaries, bandits): state, variants, tests with p-values and effects.".into(),
        );
        x.mime_type = Some("application/json".into());
        Ok(ListResourcesResult::with_all_items(vec![m, s, x]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let body = match request.uri.as_str() {
            METRICS_URI => match self.state.kaizen.get() {
                Some(k) => kaizen::exposition::summary(&k.recorder).to_string(),
                None => "{\"kaizen\":\"disabled\"}".into(),
            },
            SLO_URI => match self.state.kaizen.get() {
                Some(k) => crate::slo::status_json(&k.sli).to_string(),
                None => "{\"slo\":\"disabled\"}".into(),
            },
            EXPERIMENTS_URI => match self.state.kaizen.get().and_then(|k| k.experiments.as_ref()) {
                Some(x) => x.status_json().to_string(),
                None => crate::experiments::none_json().to_string(),
            },
            other => {
                return Err(ErrorData::resource_not_found(
                    format!("no resource '{other}'; the server offers {METRICS_URI}, {SLO_URI} and {EXPERIMENTS_URI}"),
                    None,
                ));
            }
        };
        Ok(ReadResourceResponse::from(ReadResourceResult::new(vec![ResourceContents::TextResourceContents {
            uri: request.uri.clone(),
            mime_type: Some("application/json".into()),
            text: body,
            meta: None,
        }])))
    }
}
