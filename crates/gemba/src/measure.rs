//! Kaizen around every request: `Measured<H>` wraps any `ServerHandler` and times every method
//! that reaches it (tools/list, tools/call, resources, unknown methods...) on every transport,
//! classifying the outcome. The inner handler can add detail (outcome, rows, stages, queue
//! time) through a `Note` it finds in the request's extensions.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kaizen::exposition::{Kind, Sample};
use kaizen::naming::{Naming, SemanticConvention};
use kaizen::recorder::OpSpec;
use kaizen::{Completion, OpId, Outcome, Recorder};
use parking_lot::Mutex;
use rmcp::model::*;
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};

use crate::catalog;

/// Protocol methods measured besides the tools (a closed set; anything else is "unknown").
pub const METHODS: [&str; 16] = [
    "initialize",
    "server/discover",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "subscriptions/listen",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "unknown",
];

/// The value-stream stages of a tool call.
pub const STAGES: [&str; 5] = ["validate", "load", "analyze", "extract", "serialize"];
pub const STAGE_VALIDATE: usize = 0;
pub const STAGE_LOAD: usize = 1;
pub const STAGE_ANALYZE: usize = 2;
pub const STAGE_EXTRACT: usize = 3;
pub const STAGE_SERIALIZE: usize = 4;

pub const CACHE_LOAD_HISTOGRAM: &str = "gemba_cache_load_duration_seconds";

pub fn op_specs() -> Vec<OpSpec> {
    let mut v: Vec<OpSpec> = catalog::NAMES
        .iter()
        .map(|n| OpSpec { name: (*n).into(), method: "tools/call".into(), target: Some((*n).into()) })
        .collect();
    v.extend(METHODS.iter().map(|m| OpSpec { name: (*m).into(), method: (*m).into(), target: None }));
    v
}

/// MCP protocol versions, as a closed label set (anything else is `other`).
pub const PROTOCOLS: [&str; 5] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"];
/// Where a request came in ("pipe" for stdio, "tcp" for HTTP, as the OpenTelemetry conventions say).
pub const TRANSPORTS: [&str; 2] = ["pipe", "tcp"];

/// The names Gemba's exports carry: `gemba_*` metrics with a `tool` label, `Gemba*` alerts, MCP
/// protocol versions and transports, and OpenTelemetry's MCP semantic conventions.
pub fn naming() -> Naming {
    Naming {
        metric_prefix: "gemba".into(),
        op_label: "tool".into(),
        alert_prefix: "Gemba".into(),
        service: "gemba".into(),
        protocols: PROTOCOLS.iter().map(|p| p.to_string()).collect(),
        transports: TRANSPORTS.iter().map(|t| t.to_string()).collect(),
        semantic_convention: Some(SemanticConvention {
            operation_metric: "mcp_server_operation_duration_seconds".into(),
            operation_help: "MCP request duration (OpenTelemetry MCP semantic conventions).".into(),
            session_metric: "mcp_server_session_duration_seconds".into(),
            session_help: "MCP session duration (OpenTelemetry MCP semantic conventions).".into(),
            method_label: "mcp_method_name".into(),
            target_label: "gen_ai_tool_name".into(),
            error_label: "error_type".into(),
            transport_label: "network_transport".into(),
            protocol_label: "mcp_protocol_version".into(),
        }),
    }
}

pub fn new_recorder(enabled: bool) -> Arc<Recorder> {
    Recorder::with_histograms(
        naming(),
        op_specs(),
        STAGES.iter().map(|s| s.to_string()).collect(),
        vec![(CACHE_LOAD_HISTOGRAM.into(), "Time to open a workbook on a cache miss.".into())],
        enabled,
    )
}

/// What the inner handler tells the wrapper about one request.
#[derive(Debug, Default)]
pub struct Note {
    /// 0: not set; otherwise `Outcome as u8 + 1`.
    outcome: AtomicU8,
    pub rows: AtomicU64,
    pub queue_nanos: AtomicU64,
    pub stage_nanos: [AtomicU64; 5],
    /// 0 unknown, 1 hit, 2 miss.
    pub cache: AtomicU8,
    pub error: Mutex<Option<(String, String)>>,
    /// The workbook the call looked up, and its bytes in the cache afterwards.
    pub key: Mutex<Option<(String, u64)>>,
    /// The response ran into a cap.
    pub truncated: std::sync::atomic::AtomicBool,
    /// The MCP session the request came in on (experiments assign by it).
    pub session: u64,
    /// The heavy steps the call took (recalculations, LibreOffice runs, saves), for traces.
    pub phases: Mutex<Vec<sheets::phase::Phase>>,
}

impl Note {
    pub fn set_outcome(&self, o: Outcome) {
        self.outcome.store(o as u8 + 1, Ordering::Relaxed);
    }
    pub fn outcome(&self) -> Option<Outcome> {
        match self.outcome.load(Ordering::Relaxed) {
            0 => None,
            n => Outcome::ALL.get(n as usize - 1).copied(),
        }
    }
    pub fn stage(&self, i: usize, d: Duration) {
        self.stage_nanos[i].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn set_error(&self, class: &str, message: &str) {
        *self.error.lock() = Some((class.into(), log_message(message)));
    }
}

/// Longest error message kept for the request log (signatures are made from it later, by
/// `kaizen::learn`, which takes the specifics out).
const MAX_MESSAGE_CHARS: usize = 500;

/// An error message as the request log keeps it: whole, up to a bound.
pub fn log_message(msg: &str) -> String {
    match msg.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((i, _)) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The category of an outcome in the error taxonomy (user / data / transient / system), when
/// the handler did not say more precisely (an unreadable workbook is `data`).
pub fn error_class(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "",
        Outcome::ToolError | Outcome::InvalidParams => "user",
        Outcome::Timeout | Outcome::Rejected | Outcome::Cancelled => "transient",
        Outcome::Internal => "system",
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A session: one per stdio process, one per HTTP session. Its length is recorded when the
/// last handle to it goes away.
pub struct Session {
    pub id: u64,
    started: Instant,
    recorder: Arc<Recorder>,
    transport: usize,
    protocol: AtomicU8,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.recorder.record_session(
            self.started.elapsed(),
            usize::from(self.protocol.load(Ordering::Relaxed)),
            self.transport,
        );
    }
}

static SESSION_SEQ: AtomicU64 = AtomicU64::new(1);

/// A handler with per-session state: HTTP asks for a fresh one for every session (the
/// default shares everything, for handlers without such state).
pub trait SessionScoped: Clone {
    fn new_session(&self) -> Self {
        self.clone()
    }
}

/// The wrapper: measures every request that reaches the inner handler.
pub struct Measured<H> {
    inner: H,
    recorder: Arc<Recorder>,
    ops: Arc<Vec<OpId>>,
    session: Arc<Session>,
    transport: usize,
}

impl<H: SessionScoped> Measured<H> {
    pub fn new(inner: H, recorder: Arc<Recorder>, transport: usize) -> Self {
        let ops: Vec<OpId> = recorder.names().iter().enumerate().map(|(i, _)| OpId(i as u16)).collect();
        let seed = SESSION_SEQ.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u64) << 32;
        Self {
            session: Arc::new(Session {
                id: fnv(&seed.to_le_bytes()),
                started: Instant::now(),
                recorder: recorder.clone(),
                transport,
                protocol: AtomicU8::new(recorder.naming().other_protocol() as u8),
            }),
            inner,
            recorder,
            ops: Arc::new(ops),
            transport,
        }
    }

    /// A handle for a new session sharing the inner handler (HTTP makes one per session).
    pub fn new_session(&self) -> Self {
        Self::new(self.inner.new_session(), self.recorder.clone(), self.transport)
    }

    fn op(&self, name: &str) -> OpId {
        self.recorder.op(name).or_else(|| self.recorder.op("unknown")).unwrap_or(self.ops[0])
    }

    fn protocol(&self, ctx: &RequestContext<RoleServer>) -> usize {
        let naming = self.recorder.naming();
        let p = ctx.protocol_version().map(|v| naming.protocol_index(v.as_str())).unwrap_or(naming.other_protocol());
        self.session.protocol.store(p as u8, Ordering::Relaxed);
        p
    }

    fn completion<T>(&self, r: &Result<T, ErrorData>, protocol: usize) -> Completion {
        let (outcome, error) = match r {
            Ok(_) => (Outcome::Ok, None),
            Err(e) => {
                let o = match e.code {
                    ErrorCode::INTERNAL_ERROR => Outcome::Internal,
                    _ => Outcome::InvalidParams,
                };
                (o, Some((error_class(o).to_string(), log_message(&e.message))))
            }
        };
        Completion {
            outcome: Some(outcome),
            session: self.session.id,
            protocol,
            transport: self.transport,
            error,
            ..Default::default()
        }
    }
}

impl<H: Clone> Clone for Measured<H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            recorder: self.recorder.clone(),
            ops: self.ops.clone(),
            session: self.session.clone(),
            transport: self.transport,
        }
    }
}

macro_rules! measured {
    ($self:ident, $ctx:ident, $name:expr, $call:expr) => {{
        let protocol = $self.protocol(&$ctx);
        let op = $self.op($name);
        let trace = crate::traces::begin(&$ctx, None, $name, None, op.0 as usize, $self.session.id, $self.transport);
        let timer = $self.recorder.start(op);
        let r = $call.await;
        timer.finish($self.completion(&r, protocol));
        if let Some(t) = trace {
            t.finish(crate::traces::error_type(&r, false, None), None);
        }
        r
    }};
}

impl<H: ServerHandler + SessionScoped> ServerHandler for Measured<H> {
    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        measured!(self, context, "ping", self.inner.ping(context))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        let p = self.recorder.naming().protocol_index(request.protocol_version.as_str());
        self.session.protocol.store(p as u8, Ordering::Relaxed);
        let timer = self.recorder.start(self.op("initialize"));
        let r = self.inner.initialize(request, context).await;
        let p = r.as_ref().map(|i| self.recorder.naming().protocol_index(i.protocol_version.as_str())).unwrap_or(p);
        self.session.protocol.store(p as u8, Ordering::Relaxed);
        timer.finish(self.completion(&r, p));
        r
    }

    fn negotiate_initialize(&self, request: &InitializeRequestParams) -> Result<InitializeResult, ErrorData> {
        self.inner.negotiate_initialize(request)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.inner.supported_protocol_versions()
    }

    async fn discover(&self, context: RequestContext<RoleServer>) -> Result<DiscoverResult, ErrorData> {
        measured!(self, context, "server/discover", self.inner.discover(context))
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        measured!(self, context, "completion/complete", self.inner.complete(request, context))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        measured!(self, context, "prompts/get", self.inner.get_prompt(request, context))
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        measured!(self, context, "prompts/list", self.inner.list_prompts(request, context))
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        measured!(self, context, "resources/list", self.inner.list_resources(request, context))
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        measured!(self, context, "resources/templates/list", self.inner.list_resource_templates(request, context))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        measured!(self, context, "resources/read", self.inner.read_resource(request, context))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        mut context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let protocol = self.protocol(&context);
        let name = request.name.to_string();
        let op = if catalog::NAMES.contains(&name.as_str()) { self.op(&name) } else { self.op("tools/call") };
        let trace = crate::traces::begin(
            &context,
            request.meta.as_deref(),
            "tools/call",
            Some(&name),
            op.0 as usize,
            self.session.id,
            self.transport,
        );
        let timer = self.recorder.start(op);
        let args = request.arguments.as_ref().map(|a| serde_json::to_string(a).unwrap_or_default()).unwrap_or_default();
        let note = Arc::new(Note { session: self.session.id, ..Default::default() });
        context.extensions.insert(note.clone());
        let r = self.inner.call_tool(request, context).await;
        let mut c = self.completion(&r, protocol);
        c.request_bytes = args.len() as u64;
        c.args_hash = fnv(name.as_bytes()) ^ fnv(args.as_bytes());
        if let Ok(CallToolResponse::Complete(result)) = &r {
            c.response_bytes = result.content.iter().filter_map(|b| b.as_text().map(|t| t.text.len() as u64)).sum();
            let outcome =
                note.outcome().unwrap_or(if result.is_error == Some(true) { Outcome::ToolError } else { Outcome::Ok });
            c.outcome = Some(outcome);
            if outcome != Outcome::Ok {
                let text = result.content.first().and_then(|b| b.as_text()).map(|t| t.text.as_str()).unwrap_or("");
                c.error = note.error.lock().clone().or_else(|| Some((error_class(outcome).into(), log_message(text))));
            }
        }
        c.rows = note.rows.load(Ordering::Relaxed);
        c.truncated = note.truncated.load(Ordering::Relaxed);
        if let Some((key, bytes)) = note.key.lock().take() {
            c.key = Some(key);
            c.key_bytes = bytes;
        }
        if c.outcome != Some(Outcome::Ok) {
            c.args_excerpt = Some(args);
        }
        c.queue = Duration::from_nanos(note.queue_nanos.load(Ordering::Relaxed));
        c.cache_hit = match note.cache.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        };
        for (i, s) in note.stage_nanos.iter().enumerate() {
            c.stages[i] = s.load(Ordering::Relaxed);
        }
        timer.finish(c);
        if let Some(t) = trace {
            let is_error = matches!(&r, Ok(CallToolResponse::Complete(res)) if res.is_error == Some(true));
            t.finish(crate::traces::error_type(&r, is_error, Some(&note)), Some(&note));
        }
        r
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        measured!(self, context, "tools/list", self.inner.list_tools(request, context))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.get_tool(name)
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        if (request.method == crate::stdio_limit::TOO_LONG_METHOD
            || request.method == crate::stdio_limit::NOT_JSON_METHOD)
            && let Ok(Some(unread)) = request.params_as::<crate::stdio_limit::Unread>()
        {
            // A request too long to read, or not JSON (stdio_limit), measured as a call of its
            // tool.
            let protocol = self.protocol(&context);
            let op = self.op(unread.operation());
            let method = if unread.tool.is_some() { "tools/call" } else { "unknown" };
            let (session, transport) = (self.session.id, self.transport);
            let trace =
                crate::traces::begin(&context, None, method, unread.tool.as_deref(), op.0 as usize, session, transport);
            let timer = self.recorder.start(op);
            let code = if unread.not_json.is_some() { ErrorCode::PARSE_ERROR } else { ErrorCode::INVALID_REQUEST };
            let r = Err(ErrorData::new(code, unread.message(), None));
            let mut c = self.completion(&r, protocol);
            c.request_bytes = unread.bytes as u64;
            timer.finish(c);
            if let Some(t) = trace {
                t.finish(crate::traces::error_type(&r, false, None), None);
            }
            return r;
        }
        measured!(self, context, "unknown", self.inner.on_custom_request(request, context))
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        measured!(self, context, "logging/setLevel", self.inner.set_level(request, context))
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        measured!(self, context, "resources/subscribe", self.inner.subscribe(request, context))
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        measured!(self, context, "resources/unsubscribe", self.inner.unsubscribe(request, context))
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        self.inner.accepted_subscription_filter(requested)
    }

    /// A listen request lasts as long as its stream: its "duration" is the stream's life.
    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        let protocol = self.protocol(context.request_context());
        let timer = self.recorder.start(self.op("subscriptions/listen"));
        let r = self.inner.listen(context).await;
        timer.finish(self.completion(&r, protocol));
        r
    }

    async fn on_cancelled(&self, n: CancelledNotificationParam, context: NotificationContext<RoleServer>) {
        self.inner.on_cancelled(n, context).await
    }

    async fn on_progress(&self, n: ProgressNotificationParam, context: NotificationContext<RoleServer>) {
        self.inner.on_progress(n, context).await
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.inner.on_initialized(context).await
    }

    async fn on_roots_list_changed(&self, context: NotificationContext<RoleServer>) {
        self.inner.on_roots_list_changed(context).await
    }

    async fn on_custom_notification(&self, n: CustomNotification, context: NotificationContext<RoleServer>) {
        self.inner.on_custom_notification(n, context).await
    }

    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }
}

/// Cache and business figures from the spreadsheet engine, as extra samples.
pub fn engine_samples(engine: &sheets::Engine, out: &mut Vec<Sample>) {
    let st = &engine.cache.stats;
    let c = |n: &str, h: &str, v: u64| Sample::new(n, h, Kind::Counter, v as f64);
    out.push(c("gemba_cache_hits", "Workbook cache hits.", st.hits.load(Ordering::Relaxed)));
    out.push(c("gemba_cache_misses", "Workbook cache misses (loads).", st.misses.load(Ordering::Relaxed)));
    out.push(c(
        "gemba_cache_evictions",
        "Workbooks evicted to stay within the byte bound.",
        st.evictions.load(Ordering::Relaxed),
    ));
    out.push(c(
        "gemba_cache_invalidations",
        "Cached workbooks dropped because the file changed.",
        st.invalidations.load(Ordering::Relaxed),
    ));
    out.push(c("gemba_cache_load_failures", "Workbook loads that failed.", st.load_failures.load(Ordering::Relaxed)));
    let entries = engine.cache.entry_stats();
    let g = |n: &str, h: &str, v: f64| Sample::new(n, h, Kind::Gauge, v);
    out.push(g(
        "gemba_cache_bytes",
        "Bytes held by cached workbooks.",
        entries.iter().map(|e| e.bytes).sum::<usize>() as f64,
    ));
    out.push(g("gemba_cache_capacity_bytes", "The cache's byte bound.", engine.cache.capacity_bytes() as f64));
    out.push(g("gemba_cache_entries", "Workbooks in the cache.", entries.len() as f64));
    let ages: Vec<f64> = entries.iter().map(|e| e.age.as_secs_f64()).collect();
    out.push(
        g("gemba_cache_entry_age_seconds", "Age of cache entries.", ages.iter().cloned().fold(0.0, f64::max))
            .label("stat", "max"),
    );
    out.push(
        g(
            "gemba_cache_entry_age_seconds",
            "Age of cache entries.",
            if ages.is_empty() { 0.0 } else { ages.iter().sum::<f64>() / ages.len() as f64 },
        )
        .label("stat", "mean"),
    );
    let mut top = entries;
    top.sort_by(|a, b| b.accesses.cmp(&a.accesses).then_with(|| a.id.cmp(&b.id)));
    for e in top.iter().take(10) {
        out.push(
            g("gemba_cache_workbook_accesses", "Accesses of the ten most used cached workbooks.", e.accesses as f64)
                .label("workbook", &e.id),
        );
    }
    out.push(c("gemba_workbooks_loaded", "Workbooks opened.", st.loads.load(Ordering::Relaxed)));
    out.push(c("gemba_sheets_loaded", "Sheets read into memory.", st.sheets_loaded.load(Ordering::Relaxed)));
    out.push(c("gemba_cells_loaded", "Cells read into memory.", st.cells_loaded.load(Ordering::Relaxed)));
    let fs = &engine.forks.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    out.push(c("gemba_forks_created", "Forks created.", load(&fs.created)));
    out.push(c("gemba_forks_saved", "Forks saved.", load(&fs.saved)));
    out.push(c("gemba_forks_discarded", "Forks discarded.", load(&fs.discarded)));
    out.push(g("gemba_forks_open", "Forks open.", engine.forks.count() as f64));
    out.push(c("gemba_fork_cells_edited", "Cell writes applied to forks.", load(&fs.cells_edited)));
    out.push(
        c("gemba_recalc_runs", "Recalculations started.", load(&fs.recalcs_in_process)).label("backend", "in_process"),
    );
    let lo = &fs.libreoffice;
    out.push(c("gemba_recalc_runs", "Recalculations started.", load(&lo.runs)).label("backend", "libreoffice"));
    out.push(
        c("gemba_recalc_failures", "Recalculations that failed.", load(&lo.failures)).label("backend", "libreoffice"),
    );
    out.push(c("gemba_recalc_timeouts", "Recalculations killed at their timeout.", load(&lo.timeouts)));
    out.push(c(
        "gemba_recalc_fallbacks",
        "Recalculations the in-process engine refused that LibreOffice ran instead.",
        load(&fs.recalc_fallbacks),
    ));
    out.push(c("gemba_recalc_retries", "Recalculation retries after transient failures.", load(&lo.retries)));
    out.push(c(
        "gemba_recalc_rejected",
        "Recalculations refused at once because the circuit breaker was open.",
        load(&lo.rejected_open),
    ));
    out.push(c("gemba_recalc_breaker_transitions", "Circuit breaker state changes.", load(&lo.breaker_transitions)));
    out.push(g(
        "gemba_recalc_breaker_state",
        "LibreOffice circuit breaker: 0 closed, 1 open, 2 half-open.",
        f64::from(lo.breaker_state.load(Ordering::Relaxed)),
    ));
    out.push(g(
        "gemba_recalc_running_seconds",
        "How long the longest recalculation still running has taken.",
        lo.longest_running_seconds(),
    ));
}

#[cfg(test)]
mod tests {
    use super::log_message;

    #[test]
    fn messages_are_kept_whole_up_to_a_bound() {
        assert_eq!(log_message("no sheet 'Sumary'"), "no sheet 'Sumary'");
        let long = "é".repeat(600);
        assert_eq!(log_message(&long).chars().count(), 500);
    }
}
