//! Kaizen: Gemba's measurement and improvement engine. It knows nothing of spreadsheets or of
//! MCP: callers register a closed set of operations and report durations and outcomes.
//!
//! - `recorder`: atomics on the hot path, a queue to an aggregator thread
//! - `buckets`: fixed-edge atomic histograms (Prometheus), `windows`: HDR sliding windows
//! - `exposition`: Prometheus text via prometheus-client, and a JSON summary
//! - `store`: the SQLite request log, written off the hot path
//! - `process`: RSS, CPU, file descriptors, disk
//! - `statsd`: optional UDP push

pub mod alerts;
pub mod buckets;
pub mod detect;
pub mod exposition;
pub mod operational;
pub mod outcome;
pub mod process;
pub mod recorder;
pub mod sli;
pub mod slo;
pub mod statsd;
pub mod store;
pub mod windows;

pub use outcome::Outcome;
pub use recorder::{Completion, OpId, OpSpec, Recorder, Timer};
