//! Tracing: spans of the embedder's operations exported over OTLP/HTTP protobuf, and exemplars
//! linking latency histograms to traces. Generic: the embedder names spans and attributes
//! (Kaizen knows no semantic convention), builds the spans of a finished call and submits them.
//!
//! - `context`: W3C `traceparent`/`tracestate`, trace and span ids
//! - `sampler`: parent-based ratio sampling
//! - `span`: the span model
//! - `otlp`: the OTLP protobuf encoding, by hand
//! - `export`: the bounded queue and the batching exporter thread, drops counted
//! - `exemplar`: the trace id of a recent sampled call per histogram bucket, for OpenMetrics

pub mod context;
pub mod exemplar;
pub mod export;
pub mod otlp;
pub mod sampler;
pub mod span;

pub use context::{Parent, SpanId, TraceId};
pub use export::{Endpoint, ExportConfig, ExportStats, Exporter, TraceError};
pub use otlp::Resource;
pub use sampler::Sampler;
pub use span::{Span, SpanKind, StatusCode, Value};
