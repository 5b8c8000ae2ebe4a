//! The MCP adapter: a thin `ServerHandler` that lists the catalog and runs a tool call on the
//! blocking pool under a time budget, mapping domain errors to tool errors the agent can read.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;
use sheets::{Budget, Engine, ErrorClass};

use crate::catalog::{self, CallError};

pub const INSTRUCTIONS: &str = "Gemba reads spreadsheets (xlsx, xlsm, xls, xlsb, ods) in one workspace. \
Workflow: 1) list_workbooks for ids; 2) workbook_summary or list_sheets; 3) sheet_overview to see regions \
(tables, parameter blocks, outputs, notes) and their region_id; 4) table_profile to understand columns; \
5) a targeted read: read_table (region_id, columns, filters, limit/offset), range_values or inspect_cells. \
Search with find_value (mode=label for 'the value next to Total') and find_formula; follow formulas with \
formula_trace. Responses are small by default: follow next_offset / next_start_row / next_cursor, and \
narrow a call when truncated is true. Rows and columns are 1-based in arguments and results (A1 notation).";

/// Shared, cheap-to-clone server state (one per process; HTTP makes a handler per session).
pub struct State {
    pub engine: Engine,
    pub tools: Vec<Tool>,
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct GembaServer {
    state: Arc<State>,
}

impl GembaServer {
    pub fn new(engine: Engine, timeout: Duration) -> Self {
        Self {
            state: Arc::new(State {
                engine,
                tools: catalog::definitions(),
                timeout,
            }),
        }
    }

    /// Run one tool to completion (used by the MCP handler and by in-process benchmarks).
    pub async fn run_tool(&self, name: &str, args: Value) -> CallToolResult {
        let state = self.state.clone();
        let budget = Budget::with_timeout(state.timeout);
        let canceller = budget.canceller();
        let name_owned = name.to_string();
        let work = tokio::task::spawn_blocking(move || {
            catalog::dispatch(&name_owned, &state.engine, args, &budget)
        });
        let outcome =
            tokio::time::timeout(self.state.timeout + Duration::from_millis(250), work).await;
        match outcome {
            Err(_) => {
                // The work checks its budget and stops; tell the agent now.
                canceller.cancel();
                tool_error(format!(
                    "{name} took longer than its {}ms budget and was stopped; narrow the call (sheet_name, range, limit) and try again",
                    self.state.timeout.as_millis()
                ))
            }
            Ok(Err(join)) => {
                tracing::error!(tool = name, "tool panicked: {join}");
                tool_error(format!(
                    "internal error in {name}; the server is still running — please report this with the arguments used"
                ))
            }
            Ok(Ok(None)) => tool_error(unknown_tool(name)),
            Ok(Ok(Some(Ok(value)))) => success(value),
            Ok(Ok(Some(Err(CallError::InvalidParams(msg))))) => tool_error(format!(
                "invalid arguments for {name}: {msg}. See the tool's inputSchema"
            )),
            Ok(Ok(Some(Err(CallError::Tool(e))))) => {
                if e.class() == ErrorClass::Internal {
                    tracing::error!(tool = name, "{e}");
                }
                tool_error(e.to_string())
            }
        }
    }
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
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
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
        let result = tokio::select! {
            r = self.run_tool(&name, args) => r,
            _ = ct.cancelled() => tool_error(format!("{name} was cancelled by the client")),
        };
        Ok(CallToolResponse::from(result))
    }
}
