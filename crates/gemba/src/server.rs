//! The MCP adapter: a thin `ServerHandler` that lists the catalog and runs a tool call on the
//! blocking pool under a time budget, mapping domain errors to tool errors the agent can read.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kaizen::Outcome;
#[allow(deprecated)] // logging/setLevel is deprecated by SEP-2577 but part of the legacy era
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    ContentBlock, GetPromptRequestParams, GetPromptResponse, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference, Resource, ResourceContents,
    ServerConfig, SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;
use sheets::limits::Observer;
use sheets::{Budget, Engine, ErrorClass};

use crate::catalog::{self, CallError};
use crate::measure::{self, Note};
use crate::surface::{self, completion, logging, prompts, resources};

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
    /// Prompts, completion, logging, progress, resources and subscriptions (process-wide part).
    pub surface: surface::Shared,
    /// Which warm reads run inline on the runtime thread (see `inline`).
    pub inline: crate::inline::InlineRule,
    /// Calls run inline, and calls tried inline that needed a load and went to the pool.
    pub inline_calls: std::sync::atomic::AtomicU64,
    pub inline_fallbacks: std::sync::atomic::AtomicU64,
    /// A rescan of the workspace listing ahead of its end is under way.
    pub refreshing_listing: std::sync::atomic::AtomicBool,
}

pub use crate::admission::Admission;

#[derive(Clone)]
pub struct GembaServer {
    state: Arc<State>,
    /// This session's surface state (log level, rate limit, subscriptions): HTTP makes a new
    /// one per session through `measure::SessionScoped`.
    session: Arc<surface::Session>,
}

impl measure::SessionScoped for GembaServer {
    fn new_session(&self) -> Self {
        Self { state: self.state.clone(), session: Arc::new(surface::Session::new(&self.state.surface)) }
    }
}

impl GembaServer {
    pub fn new(engine: Engine, timeouts: crate::slo::Timeouts, admission: Admission) -> Self {
        let shared = surface::Shared::default();
        let session = Arc::new(surface::Session::new(&shared));
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
                surface: shared,
                inline: crate::inline::InlineRule::from_env(),
                inline_calls: Default::default(),
                inline_fallbacks: Default::default(),
                refreshing_listing: Default::default(),
            }),
            session,
        }
    }

    /// The surface's figures (log messages, progress, subscriptions) for the metrics provider.
    pub fn surface_samples(&self, out: &mut Vec<kaizen::exposition::Sample>) {
        self.state.surface.samples(out);
    }

    /// Calls refused for capacity, the admission settings, and slots free now.
    pub fn admission_figures(&self) -> (u64, Admission, usize) {
        let g = &self.state.gate;
        (g.refused(), g.config, g.free())
    }

    /// Calls waiting for an admission slot now.
    pub fn queued_calls(&self) -> usize {
        self.state.gate.queued()
    }

    /// Tool calls run inline on the runtime thread, and those tried inline that needed a load.
    pub fn inline_figures(&self) -> (u64, u64) {
        (self.state.inline_calls.load(Ordering::Relaxed), self.state.inline_fallbacks.load(Ordering::Relaxed))
    }

    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// Measurement started: the resources and per-call hooks can reach it from now on.
    pub fn attach_kaizen(&self, k: Arc<crate::wiring::Kaizen>) {
        let _ = self.state.kaizen.set(k);
    }

    /// Run one tool to completion, reporting details into `note` for the measurement layer.
    /// `observer` (progress and notices, see `surface`) watches the call when given.
    pub async fn run_tool(
        &self,
        name: &str,
        mut args: Value,
        note: &Note,
        ct: &tokio_util::sync::CancellationToken,
        observer: Option<Arc<Observer>>,
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
        let mut budget = Budget::with_timeouts(timeout, state.load_timeout)
            .with_waiting(ticket.clone())
            .with_cache_bypass(crate::experiments::trial::bypasses_cache(&trial));
        // surface: progress and notices of this call go to its observer.
        if let Some(o) = observer {
            budget = budget.observed_by(o);
        }
        let canceller = budget.canceller();
        let backstop = timeout.max(self.state.load_timeout) + Duration::from_millis(250);
        // A warm read of bounded size runs here, on the runtime thread (see `inline`); one
        // that turns out to need a load runs on the blocking pool like any other.
        refresh_listing_ahead(&state);
        let inline = if !budget.bypasses_cache()
            && !state.faults.touches(name)
            && state.inline.admits(&state.engine, name, &args)
        {
            run_inline(&state, name, &args, &budget)
        } else {
            None
        };
        let outcome = match inline {
            Some(done) => {
                drop(ticket);
                Ok(done)
            }
            None => {
                let name_owned = name.to_string();
                let queued = Instant::now();
                let b = budget.clone();
                let state = state.clone();
                let work = tokio::task::spawn_blocking(move || {
                    let _ticket = ticket;
                    let queue = queued.elapsed();
                    if let Err(e) = state.faults.before(&name_owned, &b) {
                        return (queue, Duration::ZERO, Some(Err(CallError::Tool(e))));
                    }
                    let t = Instant::now();
                    let r = catalog::dispatch(&name_owned, &state.engine, &args, &b);
                    state.faults.after(&name_owned);
                    (queue, t.elapsed(), r)
                });
                tokio::select! {
                    r = tokio::time::timeout(backstop, work) => match r {
                        Err(_) => Err(()),
                        Ok(r) => Ok(r.map_err(|join| join.to_string())),
                    },
                    _ = ct.cancelled() => {
                        // The client gave up (a cancel notification, or it went away): stop the work.
                        canceller.cancel();
                        note.set_outcome(Outcome::Cancelled);
                        return tool_error(format!("{name} was cancelled by the client"));
                    }
                }
            }
        };
        let stages = budget.stages();
        let result = match outcome {
            Err(()) => {
                // The work checks its budget and stops; tell the agent now.
                canceller.cancel();
                note.set_outcome(Outcome::Timeout);
                tool_error(format!(
                    "{name} took longer than its {}ms budget and was stopped; narrow the call (sheet_name, range, limit) and try again",
                    backstop.as_millis()
                ))
            }
            Ok(Err(panic)) => {
                tracing::error!(tool = name, "tool panicked: {panic}");
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
        *note.phases.lock() = stages.take_phases();
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

/// A finished call: time waiting for a thread, time working, and the tool's answer.
type Done = (Duration, Duration, Option<Result<(Value, Duration), CallError>>);

/// The workspace listing is rescanned when it is a second old; a call that finds it expired
/// would scan, so it cannot run inline. Rescan it ahead, on the blocking pool, one scan at a
/// time, so warm calls keep finding a fresh listing instead of going to the pool in a burst
/// once a second.
fn refresh_listing_ahead(state: &Arc<State>) {
    if state.inline.max_cells == 0
        || !state.engine.workspace.listing_ends_soon()
        || state.refreshing_listing.swap(true, Ordering::AcqRel)
    {
        return;
    }
    let s = state.clone();
    tokio::task::spawn_blocking(move || {
        s.engine.workspace.refresh();
        s.refreshing_listing.store(false, Ordering::Release);
    });
}

/// Run `name` inline on this (runtime) thread under an inline budget: `None` when it would
/// have to load or wait (run it on the blocking pool then), the panic's message if it panicked.
fn run_inline(state: &State, name: &str, args: &Value, budget: &Budget) -> Option<Result<Done, String>> {
    let b = budget.clone().inline();
    let t = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| catalog::dispatch(name, &state.engine, args, &b)));
    match r {
        Ok(Some(Err(CallError::Tool(sheets::SheetsError::WouldBlock)))) => {
            state.inline_fallbacks.fetch_add(1, Ordering::Relaxed);
            None
        }
        Ok(r) => {
            state.inline_calls.fetch_add(1, Ordering::Relaxed);
            Some(Ok((Duration::ZERO, t.elapsed(), r)))
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Some(Err(msg))
        }
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

/// The surface (prompts, completion, logging, progress, resources): helpers of the handler.
impl GembaServer {
    /// Run `f` on the blocking pool (workspace scans, workbook opens), as an MCP error if it panics.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Engine) -> T + Send + 'static) -> Result<T, ErrorData> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || f(&state.engine))
            .await
            .map_err(|e| ErrorData::internal_error(format!("internal error: {e}"), None))
    }

    /// After a call: tell the client what it should know (notices the domain left, a response
    /// cut by a cap, a recalculation fallback, a file changed under a fork), at its level.
    async fn report_call(
        &self,
        log: &logging::RequestLog<'_>,
        tool: &str,
        forks: &[String],
        result: &CallToolResult,
        observer: &Observer,
    ) {
        let (notices, more) = observer.take_notices();
        log.emit_notices(tool, notices, more).await;
        if let Some(v) = &result.structured_content {
            for (level, logger, data) in logging::result_notices(tool, v) {
                log.emit(level, logger, data).await;
            }
        }
        #[allow(deprecated)]
        let warning = rmcp::model::LoggingLevel::Warning;
        if log.wants(warning) {
            for fork in forks {
                if let Some(data) = surface::fork_source_changed(&self.state.engine, &self.session, fork) {
                    log.emit(warning, "gemba.forks", data).await;
                }
            }
        }
    }

    /// `resources/read` of a workbook summary or a sheet's first page, run like the tool that
    /// produces it (admission, budget, cancellation).
    async fn read_workbook_resource(
        &self,
        uri: &str,
        target: resources::Target,
        ct: &tokio_util::sync::CancellationToken,
    ) -> Result<ReadResourceResult, ErrorData> {
        let id = target.workbook_id().to_string();
        // An unknown workbook is "resource not found", with the tools' did-you-mean.
        let check = id.clone();
        self.blocking(move |e| surface::path_of(e, &check))
            .await?
            .map_err(|e| ErrorData::resource_not_found(e.to_string(), None))?;
        let (tool, args, mime) = match &target {
            resources::Target::Workbook { .. } => {
                ("workbook_summary", serde_json::json!({"workbook_id": id}), "application/json")
            }
            resources::Target::Sheet { sheet, .. } => {
                ("sheet_page", serde_json::json!({"workbook_id": id, "sheet_name": sheet}), "text/csv")
            }
        };
        let note = Note::default();
        let result = self.run_tool(tool, args, &note, ct, None).await;
        let text = result.content.first().and_then(|b| b.as_text()).map(|t| t.text.clone()).unwrap_or_default();
        if result.is_error == Some(true) {
            if let resources::Target::Sheet { sheet, .. } = target {
                // An unknown sheet is "resource not found" too (the workbook is cached by now).
                let (wid, s) = (id.clone(), sheet.clone());
                let unknown = self
                    .blocking(move |e| {
                        e.workbook(&wid, &Budget::with_timeout(Duration::from_secs(5)))
                            .and_then(|wb| wb.sheet_index(Some(&s)).map(|_| ()))
                            .err()
                            .filter(|e| matches!(e, sheets::SheetsError::UnknownSheet { .. }))
                    })
                    .await?;
                if let Some(e) = unknown {
                    return Err(ErrorData::resource_not_found(e.to_string(), None));
                }
            }
            return Err(ErrorData::invalid_params(format!("cannot read {uri}: {text}"), None));
        }
        let body = match (&target, &result.structured_content) {
            (resources::Target::Sheet { .. }, Some(v)) => {
                v.get("csv").and_then(Value::as_str).unwrap_or("").to_string()
            }
            _ => text,
        };
        Ok(ReadResourceResult::new(vec![ResourceContents::TextResourceContents {
            uri: uri.to_string(),
            mime_type: Some(mime.into()),
            text: body,
            meta: None,
        }])
        .with_ttl_ms(0)
        .with_cache_scope(CacheScope::Private))
    }
}

impl ServerHandler for GembaServer {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(surface::capabilities());
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
        // surface: progress when the call asks for it, notices when the client hears warnings.
        let log = logging::RequestLog::new(&context, &self.session.log, &self.state.surface.log);
        let token = context.meta.get_progress_token();
        #[allow(deprecated)]
        let observed = token.is_some() || log.wants(rmcp::model::LoggingLevel::Warning);
        let observer = observed.then(|| Arc::new(Observer::new(token.is_some())));
        let forks = if observed { surface::forks_named(&args) } else { Vec::new() };
        let reporter = token
            .zip(observer.clone())
            .map(|(t, o)| surface::progress::start(context.peer.clone(), t, o, self.state.surface.progress.clone()));
        let result = self.run_tool(&name, args, &note, &ct, observer.clone()).await;
        drop(reporter);
        if let Some(o) = &observer {
            self.report_call(&log, &name, &forks, &result, o).await;
        }
        Ok(CallToolResponse::from(result))
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(prompts::list())
            .with_ttl_ms(resources::STATIC_TTL_MS)
            .with_cache_scope(CacheScope::Public))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let name = prompts::check(&request.name, &args).map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
        let id = args.get("workbook_id").and_then(Value::as_str).unwrap_or_default().trim().to_string();
        let lookup = id.clone();
        let path = self
            .blocking(move |e| surface::path_of(e, &lookup))
            .await?
            .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
        let arg = |k: &str| args.get(k).and_then(Value::as_str).map(String::from);
        Ok(GetPromptResponse::from(prompts::render(name, &prompts::Subject { id: &id, path: &path }, arg)))
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let argument = request.argument.name.as_str();
        let known: Vec<&str> = match &request.r#ref {
            Reference::Prompt(p) => prompts::argument_names(&p.name)
                .ok_or_else(|| ErrorData::invalid_params(format!("no prompt '{}'; call prompts/list", p.name), None))?,
            Reference::Resource(r) => match r.uri.as_str() {
                resources::WORKBOOK_TEMPLATE => vec!["workbook_id"],
                crate::report::resource::TEMPLATE => vec!["period"],
                resources::SHEET_TEMPLATE => vec!["workbook_id", "sheet_name"],
                other => {
                    return Err(ErrorData::invalid_params(
                        format!(
                            "no resource template '{other}'; the templates are {} and {}",
                            resources::WORKBOOK_TEMPLATE,
                            resources::SHEET_TEMPLATE
                        ),
                        None,
                    ));
                }
            },
            _ => {
                return Err(ErrorData::invalid_params(
                    "completion is offered for prompts and resource templates",
                    None,
                ));
            }
        };
        if !known.contains(&argument) {
            return Err(ErrorData::invalid_params(
                format!("no argument '{argument}' to complete here; the arguments are: {}", known.join(", ")),
                None,
            ));
        }
        let value = request.argument.value.clone();
        let info = match argument {
            "workbook_id" => {
                let all = self.blocking(surface::candidates).await?;
                completion::workbook_ids(&all, &value)
            }
            "sheet_name" => {
                let book = request
                    .context
                    .as_ref()
                    .and_then(|c| c.arguments.as_ref())
                    .and_then(|a| a.get("workbook_id"))
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty());
                match book {
                    // Without the workbook there are no sheet names to offer.
                    None => completion::none(),
                    Some(id) => {
                        let names = self
                            .blocking(move |e| {
                                let budget = Budget::with_timeouts(Duration::from_secs(2), Duration::from_secs(10));
                                e.workbook(&id, &budget).map(|wb| wb.sheets.iter().map(|s| s.name.clone()).collect())
                            })
                            .await?
                            .unwrap_or_else(|_: sheets::SheetsError| Vec::new());
                        completion::sheet_names(&names, &value)
                    }
                }
            }
            "period" => crate::report::resource::complete_period(&value),
            _ => completion::none(),
        };
        Ok(CompleteResult::new(info))
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.session.log.set_level(request.level);
        Ok(())
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let m = Resource::new(METRICS_URI, "kaizen-metrics")
            .with_description("Gemba's own figures: requests, outcomes, latency percentiles per tool, cache, process.")
            .with_mime_type("application/json");
        let s = Resource::new(SLO_URI, "kaizen-slo")
            .with_description("Each tool's objectives: SLI, error budget left, burn rates, alert state.")
            .with_mime_type("application/json");
        let x = Resource::new(EXPERIMENTS_URI, "kaizen-experiments")
            .with_description(
                "Experiments (flags, A/B tests, canaries, bandits): state, variants, tests with p-values and effects.",
            )
            .with_mime_type("application/json");
        let i = Resource::new(crate::incidents::INCIDENTS_URI, "kaizen-incidents")
            .with_description(
                "Incidents of the last 7 days: anomalies and SLO alerts grouped, timeline, ranked causes.",
            )
            .with_mime_type("application/json");
        let listing = self.blocking(|e| e.workspace.list()).await?;
        let cursor = request.and_then(|r| r.cursor);
        let books = listing.iter().map(|e| resources::Listed { id: &e.id, path: &e.rel_path, size: e.size });
        resources::list_page(vec![m, s, x, i], books, cursor.as_deref()).map_err(|e| ErrorData::invalid_params(e, None))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let mut templates = resources::templates();
        templates.push(crate::report::resource::template());
        Ok(ListResourceTemplatesResult::with_all_items(templates)
            .with_ttl_ms(resources::STATIC_TTL_MS)
            .with_cache_scope(CacheScope::Public))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
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
            uri if crate::report::resource::matches(uri) => {
                crate::report::resource::read(uri, self.state.kaizen.get().cloned()).await?
            }
            crate::incidents::INCIDENTS_URI => match self.state.kaizen.get().and_then(|k| k.incidents.as_ref()) {
                Some(i) => i.recent_json().to_string(),
                None => crate::incidents::disabled_json().to_string(),
            },
            EXPERIMENTS_URI => match self.state.kaizen.get().and_then(|k| k.experiments.as_ref()) {
                Some(x) => x.status_json().to_string(),
                None => crate::experiments::none_json().to_string(),
            },
            other => {
                let target = resources::parse(other).map_err(|e| {
                    ErrorData::resource_not_found(
                        format!(
                            "{e}; the server also offers {METRICS_URI}, {SLO_URI}, {EXPERIMENTS_URI}, {} and {}",
                            crate::incidents::INCIDENTS_URI,
                            crate::report::resource::TEMPLATE
                        ),
                        None,
                    )
                })?;
                let r = self.read_workbook_resource(other, target, &context.ct).await?;
                return Ok(ReadResourceResponse::from(r));
            }
        };
        Ok(ReadResourceResponse::from(
            ReadResourceResult::new(vec![ResourceContents::TextResourceContents {
                uri: request.uri.clone(),
                mime_type: Some("application/json".into()),
                text: body,
                meta: None,
            }])
            .with_ttl_ms(0)
            .with_cache_scope(CacheScope::Private),
        ))
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let uri = request.uri.clone();
        let path = self
            .blocking(move |e| surface::watched_file(e, &uri))
            .await?
            .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
        self.state
            .surface
            .watcher
            .subscribe(self.session.id, request.uri, path, surface::watch::Target::session(context.peer.clone()))
            .map_err(|e| ErrorData::invalid_params(e.to_string(), None))
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        // Unsubscribing from something not subscribed to is not an error: the end state holds.
        self.state.surface.watcher.unsubscribe(self.session.id, &request.uri);
        Ok(())
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(surface::accepted_filter(&self.state.engine, requested))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let owner = surface::new_owner();
        let watcher = self.state.surface.watcher.clone();
        // The subscriptions end with the request, however it ends.
        struct Release(Arc<surface::watch::Watcher>, u64);
        impl Drop for Release {
            fn drop(&mut self) {
                self.0.drop_owner(self.1);
            }
        }
        let _release = Release(watcher.clone(), owner);
        let uris: Vec<String> = context.accepted().resource_subscriptions.clone().unwrap_or_default();
        for uri in uris {
            let check = uri.clone();
            let Ok(Ok(path)) = self.blocking(move |e| surface::watched_file(e, &check)).await else { continue };
            let target = surface::watch::Target::listen(context.sink().clone());
            if let Err(e) = watcher.subscribe(owner, uri, path, target) {
                tracing::debug!("subscription not kept: {e}");
            }
        }
        context.cancelled().await;
        Ok(())
    }
}
