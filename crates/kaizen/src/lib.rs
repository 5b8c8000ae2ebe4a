//! Kaizen: Gemba's measurement and improvement engine. It knows nothing of spreadsheets or of
//! MCP: callers register a closed set of operations and report durations and outcomes.
//!
//! - `recorder`: atomics on the hot path, a queue to an aggregator thread
//! - `buckets`: fixed-edge atomic histograms (Prometheus), `windows`: HDR sliding windows
//! - `exposition`: Prometheus text via prometheus-client, and a JSON summary
//! - `store`: the SQLite request log, written off the hot path
//! - `process`: RSS, CPU, file descriptors, disk
//! - `statsd`: optional UDP push
//! - `naming`: the names exports carry, all given by the embedder
//! - `slo`, `sli`: objectives and their in-process judge (an `Observer` of finished requests)
//! - `operational`: threshold alerts over the embedder's signals; `event`, `alerts`: delivery
//! - `learn`: error signatures, usage patterns, cache what-if, trends, backlog and reports
//! - `detect`: anomalies with a measured false-alarm rate, incidents with ranked causes
//! - `trace`: spans over OTLP (bounded queue, batching exporter thread), W3C trace context,
//!   parent-based sampling, exemplars for OpenMetrics histograms
//! - `experiment`: flags, A/B tests, canaries with automatic rollback, a bandit; `stats`: the
//!   statistics they rest on (Welch, Mann–Whitney, proportions, power, alpha spending)

pub mod alerts;
pub mod buckets;
pub mod detect;
pub mod event;
pub mod experiment;
pub mod exposition;
pub mod learn;
pub mod naming;
pub mod operational;
pub mod outcome;
pub mod process;
pub mod queue;
pub mod recorder;
pub mod sli;
pub mod slo;
pub mod stats;
pub mod statsd;
pub mod store;
pub mod trace;
pub mod windows;

pub use naming::Naming;
pub use outcome::Outcome;
pub use recorder::{Completion, Finished, Observer, OpId, OpSpec, Recorder, Timer};
