//! The span model: what one finished span carries to the exporter. Attribute names are the
//! embedder's (`&'static str`): Kaizen knows no semantic convention itself.

use std::borrow::Cow;
use std::time::SystemTime;

use super::context::{SpanId, TraceId};

/// An attribute value (the OTLP `AnyValue` kinds Gemba needs).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    /// A fixed string: no allocation per span.
    Static(&'static str),
    /// A number sent as 16 lowercase hex digits (an id), written out only when encoded.
    Hex64(u64),
    /// An integer sent as a decimal string (a JSON-RPC request id), written out only when
    /// encoded.
    Decimal(i64),
    Int(i64),
    F64(f64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.into())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// OTLP span kinds (the numbers are the protocol's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// OTLP status codes (the numbers are the protocol's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusCode {
    #[default]
    Unset = 0,
    Ok = 1,
    Error = 2,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The parent span (the caller's for a root span of this process), if any.
    pub parent: Option<SpanId>,
    pub trace_state: String,
    /// A fixed name (a stage) costs no allocation.
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    /// Unix nanoseconds.
    pub start_nanos: u64,
    pub end_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: StatusCode,
    pub status_message: String,
}

impl Span {
    /// A span of `trace` under `parent`, with a fresh id, from `start` to `end` (unix nanos).
    pub fn new(
        trace_id: TraceId,
        parent: Option<SpanId>,
        name: impl Into<Cow<'static, str>>,
        start: u64,
        end: u64,
    ) -> Self {
        Span {
            trace_id,
            span_id: SpanId::random(),
            parent,
            trace_state: String::new(),
            name: name.into(),
            kind: SpanKind::Internal,
            start_nanos: start,
            end_nanos: end.max(start),
            attributes: Vec::new(),
            status: StatusCode::Unset,
            status_message: String::new(),
        }
    }

    /// Adds an attribute.
    pub fn attr(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Self {
        self.attributes.push((key, value.into()));
        self
    }
}

/// Unix nanoseconds of a wall-clock instant (0 before the epoch).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
