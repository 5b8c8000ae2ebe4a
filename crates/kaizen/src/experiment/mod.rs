//! Experiments: flags, A/B tests, canary rollouts with automatic rollback, and a bandit — over
//! named, typed knobs the embedder declares. Kaizen knows variants, assignments, metrics and
//! statistics; nothing about what the knobs do.
//!
//! The embedder:
//! 1. declares its knobs (`KnobSpec`) and parses the experiments file into `ExperimentsConfig`;
//! 2. builds an `Engine` (validation errors say what to fix) and `restore`s saved state;
//! 3. per call: `engine.assign(session, key)` → `Assignment`; reads knobs from it
//!    (`assignment.int("cache_capacity")`); after the call, `engine.record(&assignment, &obs)`;
//! 4. every few seconds: `engine.evaluate(now, slo_exhausted)` → transitions to log and alert;
//!    then `persist::ExperimentStore::save(&engine.save_state())`;
//! 5. shows `engine.status_json()` and exports `engine.samples()`.
//!
//! - `knob`: knob values, types and ranges · `config`: the file's serde types · `plan`: validation
//! - `assign`: stable hashing and the `Assignment` · `accum`: per-variant accumulators
//! - `compare`: estimates and power analysis · `monitor`: one sequential test
//! - `bandit`: Thompson sampling shares · `engine`: the engine · `status`: JSON and samples
//! - `persist`: state in the state database

pub mod accum;
pub mod assign;
pub mod bandit;
pub mod compare;
pub mod config;
pub mod engine;
pub mod knob;
pub mod monitor;
pub mod persist;
pub mod plan;
pub mod status;

pub use accum::Observation;
pub use assign::Assignment;
pub use config::ExperimentsConfig;
pub use engine::{Engine, SavedExperiment, State, Transition, TransitionKind};
pub use knob::{KnobSpec, KnobValue};
pub use plan::ConfigError;

#[cfg(test)]
mod tests;
