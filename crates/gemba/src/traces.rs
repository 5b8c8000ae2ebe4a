//! Traces of MCP requests over OTLP, named by the OpenTelemetry MCP semantic conventions: one
//! SERVER span per request (`{mcp.method.name} {target}`), children for the value-stream
//! stages of a tool call, the caller's W3C trace context joined, parent-based ratio sampling,
//! and exemplars on the call-duration histogram. Off by default: `--otlp-endpoint URL` or the
//! standard `OTEL_EXPORTER_OTLP_*` variables turn it on. The generic parts live in
//! `kaizen::trace`; this module only names things and reads the MCP request.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};
use kaizen::exposition::{Kind, Sample};
use kaizen::trace::context::{Parent, SpanId, TraceId};
use kaizen::trace::exemplar::{Exemplars, annotate};
use kaizen::trace::export::{Endpoint, ExportConfig, Exporter, parse_headers};
use kaizen::trace::span::{Span, SpanKind, StatusCode, Value, unix_nanos};
use kaizen::trace::{Resource, Sampler};
use rmcp::RoleServer;
use rmcp::model::MetaObject;
use rmcp::service::RequestContext;
use sheets::phase::{Phase, PhaseKind};

use crate::measure::{Note, PROTOCOLS, STAGES, TRANSPORTS};

/// Where and how traces are exported (resolved from flags and `OTEL_*` variables).
#[derive(Debug, Clone)]
pub struct TraceSettings {
    pub endpoint: Endpoint,
    pub headers: Vec<(String, String)>,
    pub resource: Vec<(String, String)>,
    pub sample_ratio: f64,
}

impl TraceSettings {
    /// Flags first, then the standard variables (read through `env`). `None`: tracing is off.
    /// `--otlp-endpoint` and `OTEL_EXPORTER_OTLP_ENDPOINT` are base URLs (`/v1/traces` is added
    /// unless the URL has a path); `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as given.
    pub fn resolve(
        flag_endpoint: Option<&str>,
        flag_ratio: Option<f64>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TraceSettings>> {
        let var = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none")
        {
            return Ok(None);
        }
        let url = match (flag_endpoint, var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(f), _, _) => f.to_string(),
            (None, Some(t), _) => t,
            (None, None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None, None) => return Ok(None),
        };
        let endpoint = Endpoint::parse(&url)?;
        let headers = parse_headers(
            &var("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS")).unwrap_or_default(),
        )?;
        let sample_ratio = match flag_ratio {
            Some(r) => r,
            None => match var("OTEL_TRACES_SAMPLER_ARG") {
                Some(a) => a
                    .parse::<f64>()
                    .map_err(|_| anyhow::anyhow!("OTEL_TRACES_SAMPLER_ARG '{a}' is not a number between 0 and 1"))?,
                None => 1.0,
            },
        };
        if !(0.0..=1.0).contains(&sample_ratio) {
            bail!("trace sample ratio {sample_ratio} is not between 0 and 1 (--trace-sample, OTEL_TRACES_SAMPLER_ARG)");
        }
        let mut resource: Vec<(String, String)> =
            parse_headers(&var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default())
                .map_err(|_| anyhow::anyhow!("OTEL_RESOURCE_ATTRIBUTES is not a comma-separated list of key=value"))?;
        fn set(resource: &mut Vec<(String, String)>, k: &str, v: String) {
            match resource.iter_mut().find(|(key, _)| key == k) {
                Some(kv) => kv.1 = v,
                None => resource.push((k.to_string(), v)),
            }
        }
        if let Some(name) = var("OTEL_SERVICE_NAME") {
            set(&mut resource, "service.name", name);
        }
        if !resource.iter().any(|(k, _)| k == "service.name") {
            set(&mut resource, "service.name", "gemba".into());
        }
        set(&mut resource, "service.version", env!("CARGO_PKG_VERSION").into());
        set(&mut resource, "service.instance.id", TraceId::random().to_string());
        Ok(Some(TraceSettings { endpoint, headers, resource, sample_ratio }))
    }
}

/// The process's tracer: sampler, exporter, exemplars. Installed once by `install`.
pub struct Tracer {
    sampler: Sampler,
    exporter: Exporter,
    exemplars: Exemplars,
    /// Operation names in the recorder's order (exemplars are kept per operation).
    ops: Vec<String>,
    /// `tools/call {op}` per operation: the span names of tool calls, made once (the tracer
    /// is a static, so spans borrow them without allocating).
    call_names: Vec<String>,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Starts the exporter and makes the tracer the process's. `ops` are the recorder's operation
/// names in order (`Recorder::names`).
pub fn install(settings: TraceSettings, ops: Vec<String>) -> Result<()> {
    let resource = Resource {
        attributes: settings.resource.into_iter().map(|(k, v)| (k, Value::Str(v))).collect(),
        scope_name: "gemba".into(),
        scope_version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut cfg = ExportConfig::new(settings.endpoint.clone(), resource);
    cfg.headers = settings.headers;
    let tracer = Tracer {
        sampler: Sampler::new(settings.sample_ratio),
        exporter: Exporter::start(cfg)?,
        exemplars: Exemplars::new(ops.len(), &kaizen::buckets::EDGES_SECONDS),
        call_names: ops.iter().map(|o| format!("tools/call {o}")).collect(),
        ops,
    };
    let ep = &settings.endpoint;
    tracing::info!("traces go to http://{}:{}{} (sampling {})", ep.host, ep.port, ep.path, settings.sample_ratio);
    if TRACER.set(tracer).is_err() {
        bail!("the tracer is already installed");
    }
    Ok(())
}

/// Exports what is queued (at shutdown), waiting at most `timeout`.
pub fn flush(timeout: Duration) {
    if let Some(t) = TRACER.get() {
        t.exporter.flush(timeout);
    }
}

/// A request being traced (sampled): what its spans need from the start.
pub struct Begun {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    trace_state: String,
    start_wall: SystemTime,
    start: Instant,
    name: Cow<'static, str>,
    attrs: Vec<(&'static str, Value)>,
    op: usize,
}

/// The caller's context: `params._meta.traceparent` (the MCP way, per request) wins over the
/// HTTP `traceparent` header (per POST).
fn parent_of(ctx: &RequestContext<RoleServer>, meta: Option<&MetaObject>) -> Option<Parent> {
    let from_meta = |m: &MetaObject| m.get_traceparent().and_then(|tp| Parent::parse(tp, m.get_tracestate()));
    meta.and_then(from_meta).or_else(|| from_meta(&ctx.meta)).or_else(|| {
        let parts = ctx.extensions.get::<axum::http::request::Parts>()?;
        let h = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
        Parent::parse(h("traceparent")?, h("tracestate"))
    })
}

/// Starts tracing a request, or `None` when tracing is off (one branch) or the trace is not
/// sampled. `meta` is the request's own `_meta` when the handler has it apart from the context.
#[allow(clippy::too_many_arguments)]
pub fn begin(
    ctx: &RequestContext<RoleServer>,
    meta: Option<&MetaObject>,
    method: &'static str,
    tool: Option<&str>,
    op: usize,
    session: u64,
    transport: usize,
) -> Option<Begun> {
    let tracer: &'static Tracer = TRACER.get()?;
    let parent = parent_of(ctx, meta);
    let trace_id = parent.as_ref().map_or_else(TraceId::random, |p| p.trace_id);
    if !tracer.sampler.sampled(trace_id, parent.as_ref()) {
        return None;
    }
    // Fixed strings are borrowed and ids written out by the exporter thread: a call pays for
    // the attribute vector and, at most, its HTTP session id and a string request id.
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(8);
    attrs.push(("mcp.method.name", Value::Static(method)));
    let known = tool.filter(|t| tracer.ops.get(op).is_some_and(|o| o.as_str() == *t));
    let name: Cow<'static, str> = match (tool, known) {
        (Some(_), Some(_)) => Cow::Borrowed(tracer.call_names[op].as_str()),
        (Some(t), None) => Cow::Owned(format!("{method} {t}")),
        (None, _) => Cow::Borrowed(method),
    };
    if let Some(t) = tool {
        let v = known.map_or_else(|| Value::Str(t.to_string()), |_| Value::Static(tracer.ops[op].as_str()));
        attrs.push(("gen_ai.tool.name", v));
        attrs.push(("gen_ai.operation.name", Value::Static("execute_tool")));
    }
    let http_session = ctx
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string));
    attrs.push(("mcp.session.id", http_session.map_or(Value::Hex64(session), Value::Str)));
    let id = match &ctx.id {
        rmcp::model::NumberOrString::Number(n) => Value::Decimal(*n),
        rmcp::model::NumberOrString::String(s) => Value::Str(s.to_string()),
    };
    attrs.push(("jsonrpc.request.id", id));
    if let Some(v) = ctx.protocol_version() {
        let known = PROTOCOLS.iter().find(|p| **p == v.as_str());
        attrs.push(("mcp.protocol.version", known.map_or_else(|| Value::Str(v.as_str().into()), |p| Value::Static(p))));
    }
    attrs.push(("network.transport", Value::Static(TRANSPORTS.get(transport).copied().unwrap_or("pipe"))));
    Some(Begun {
        trace_id,
        span_id: SpanId::random(),
        parent: parent.as_ref().map(|p| p.span_id),
        trace_state: parent.map(|p| p.trace_state).unwrap_or_default(),
        start_wall: SystemTime::now(),
        start: Instant::now(),
        name,
        attrs,
        op,
    })
}

/// `error.type` of a finished request: the JSON-RPC error code of an error answer, `tool_error`
/// for a result with `isError`, else the outcome the handler noted when it is not ok.
pub fn error_type<T>(r: &Result<T, rmcp::ErrorData>, is_error: bool, note: Option<&Note>) -> Option<String> {
    match r {
        Err(e) => Some(e.code.0.to_string()),
        Ok(_) if is_error => Some("tool_error".into()),
        Ok(_) => note.and_then(Note::outcome).filter(|o| *o != kaizen::Outcome::Ok).map(|o| o.as_str().into()),
    }
}

impl Begun {
    /// Ends the request's span, adds the stage children from `note`, submits them all (never
    /// blocking) and keeps the trace as an exemplar of the call's duration.
    pub fn finish(self, error: Option<String>, note: Option<&Note>) {
        let Some(tracer) = TRACER.get() else { return };
        let elapsed = self.start.elapsed();
        let start = unix_nanos(self.start_wall);
        let end = start + elapsed.as_nanos() as u64;
        let mut root = Span::new(self.trace_id, self.parent, self.name, start, end);
        root.span_id = self.span_id;
        root.kind = SpanKind::Server;
        root.trace_state = self.trace_state;
        root.attributes = self.attrs;
        if let Some(e) = error {
            root.status = StatusCode::Error;
            root.attributes.push(("error.type", e.into()));
        }
        let mut spans = Vec::with_capacity(8);
        spans.push(root);
        if let Some(n) = note {
            stage_spans(self.trace_id, self.span_id, start, n, &mut spans);
            let phases = n.phases.lock();
            phase_spans(self.trace_id, self.span_id, (self.start, start), &phases, &mut spans);
        }
        tracer.exporter.submit(spans);
        let unix = end as f64 / 1e9;
        tracer.exemplars.record(self.op, elapsed.as_secs_f64(), self.trace_id, unix);
    }
}

/// The value-stream stages as children, laid end to end after the queue wait (the note holds
/// each stage's total time, not its start; the stages run in this order).
fn stage_spans(trace: TraceId, parent: SpanId, start: u64, note: &Note, out: &mut Vec<Span>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut at = start;
    let queue = note.queue_nanos.load(Relaxed);
    if queue > 0 {
        out.push(Span::new(trace, Some(parent), "queue", at, at + queue));
        at += queue;
    }
    for (i, stage) in STAGES.iter().enumerate() {
        let d = note.stage_nanos[i].load(Relaxed);
        if d > 0 {
            out.push(Span::new(trace, Some(parent), *stage, at, at + d));
            at += d;
        }
    }
}

/// The heavy steps of a call (recalculation, each LibreOffice run, save) as children of the
/// request's span at their real times (`origin`: the call's start as an instant and in unix
/// nanos); a LibreOffice run inside a recalculation is that recalculation's child.
fn phase_spans(trace: TraceId, parent: SpanId, origin: (Instant, u64), phases: &[Phase], out: &mut Vec<Span>) {
    let at = |t: Instant| origin.1 + t.saturating_duration_since(origin.0).as_nanos() as u64;
    let ids: Vec<SpanId> = phases.iter().map(|_| SpanId::random()).collect();
    for (i, p) in phases.iter().enumerate() {
        let within = |r: &Phase| r.kind == PhaseKind::Recalc && r.start <= p.start && p.end <= r.end;
        let parent = match p.kind {
            PhaseKind::LibreOffice => phases.iter().position(within).map_or(parent, |k| ids[k]),
            _ => parent,
        };
        let mut span = Span::new(trace, Some(parent), p.kind.as_str(), at(p.start), at(p.end));
        span.span_id = ids[i];
        if let Some(b) = p.backend {
            span.attr("gemba.recalc.backend", b);
        }
        if let Some(n) = p.cells {
            span.attr("gemba.recalc.cells", n as i64);
        }
        if let Some(n) = p.bytes {
            span.attr("gemba.save.bytes", n as i64);
        }
        if p.kind == PhaseKind::LibreOffice {
            span.attr("process.executable.name", "soffice");
            if let Some(code) = p.exit_code {
                span.attr("process.exit.code", i64::from(code));
            }
        }
        if let Some(e) = p.error {
            span.status = StatusCode::Error;
            span.attr("error.type", e);
        }
        out.push(span);
    }
}

/// OpenMetrics text with exemplars on the call-duration histogram's buckets (unchanged when
/// tracing is off).
pub fn with_exemplars(text: String, family: &str, op_label: &str) -> String {
    let Some(t) = TRACER.get() else { return text };
    annotate(&text, family, op_label, &t.exemplars, |name| t.ops.iter().position(|o| o == name))
}

/// The exporter's counters for `/metrics`.
pub fn samples(out: &mut Vec<Sample>) {
    let Some(t) = TRACER.get() else { return };
    let s = t.exporter.stats();
    use std::sync::atomic::Ordering::Relaxed;
    out.push(Sample::new(
        "gemba_trace_spans_exported",
        "Spans the OTLP receiver accepted.",
        Kind::Counter,
        s.exported.load(Relaxed) as f64,
    ));
    for (reason, n) in s.dropped() {
        out.push(
            Sample::new("gemba_trace_spans_dropped", "Spans dropped, by reason.", Kind::Counter, n as f64)
                .label("reason", reason),
        );
    }
    out.push(Sample::new(
        "gemba_trace_export_failures",
        "OTLP exports that failed (connection, timeout or an error status).",
        Kind::Counter,
        s.failed_exports.load(Relaxed) as f64,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn off_unless_an_endpoint_is_given() {
        assert!(TraceSettings::resolve(None, None, env(&[])).expect("ok").is_none());
        let off = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")]);
        assert!(TraceSettings::resolve(None, None, off).expect("ok").is_none());
    }

    #[test]
    fn standard_variables_fill_endpoint_headers_resource_and_ratio() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20x"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=from-attrs"),
            ("OTEL_SERVICE_NAME", "sheets-mcp"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ]);
        let s = TraceSettings::resolve(None, None, e).expect("ok").expect("on");
        assert_eq!(
            (s.endpoint.host.as_str(), s.endpoint.port, s.endpoint.path.as_str()),
            ("collector", 4318, "/v1/traces")
        );
        assert_eq!(s.headers, vec![("authorization".to_string(), "Bearer x".to_string())]);
        assert_eq!(s.sample_ratio, 0.1);
        let get = |k: &str| s.resource.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("service.name").as_deref(), Some("sheets-mcp"));
        assert_eq!(get("deployment.environment").as_deref(), Some("prod"));
        assert_eq!(get("service.version").as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(get("service.instance.id").map(|v| v.len()), Some(32));
        // The flag wins, and the signal-specific variable is used as given.
        let e = env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"), ("OTEL_TRACES_SAMPLER_ARG", "0.1")]);
        let s = TraceSettings::resolve(None, Some(0.5), e).expect("ok").expect("on");
        assert_eq!((s.endpoint.path.as_str(), s.sample_ratio), ("/x", 0.5));
        let s = TraceSettings::resolve(Some("http://f:2"), None, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:3")]))
            .expect("ok")
            .expect("on");
        assert_eq!((s.endpoint.host.as_str(), s.endpoint.port), ("f", 2));
    }

    #[test]
    fn bad_settings_say_what_to_fix() {
        let err = |flag: Option<&str>, ratio: Option<f64>, pairs: &[(&str, &str)]| {
            TraceSettings::resolve(flag, ratio, env(pairs)).expect_err("refused").to_string()
        };
        assert!(err(Some("https://c:4318"), None, &[]).contains("no TLS"));
        assert!(err(Some("http://c:4318"), Some(1.5), &[]).contains("between 0 and 1"));
        assert!(
            err(None, None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_TRACES_SAMPLER_ARG", "x")])
                .contains("OTEL_TRACES_SAMPLER_ARG")
        );
    }
}
