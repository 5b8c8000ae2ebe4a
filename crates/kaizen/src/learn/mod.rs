//! Learning from the request log: error signatures and their Pareto, usage patterns (sessions,
//! workflows, abandonment, key heat, truncation), a cache what-if that replays the logged
//! accesses at other capacities and policies, per-tool daily trends with significance, SLO
//! compliance, and a ranked improvement backlog — assembled into one report (JSON, Markdown,
//! HTML) over a day, a week or a month.
//!
//! Like the rest of Kaizen it knows nothing of spreadsheets: the embedder logs names, outcomes,
//! messages and keys (see `store::Row`), and `report::build` reads them back.
//!
//! - `report`: the entry point (`build`, `ReportOptions`, `Report`)
//! - `signature`: normalizing and categorizing error messages
//! - `usage`, `cache`, `trends`, `compliance`, `stream`, `runs`, `backlog`: the sections
//! - `synthetic`: a seeded generator of realistic request logs, for tests and benchmarks

use std::path::PathBuf;

pub mod backlog;
pub mod cache;
pub mod compliance;
mod html;
mod ids;
mod markdown;
pub mod report;
pub mod runs;
mod scan;
pub mod signature;
mod significance;
pub mod stream;
mod svg;
pub mod synthetic;
#[cfg(test)]
mod tests;
mod time;
pub mod trends;
pub mod usage;

pub use report::{Format, Period, Report, ReportOptions, build};

/// Why a report could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(
        "there is no request log at {0}: start the server with this state directory first, or point at the right gemba.db"
    )]
    NoLog(PathBuf),
    #[error("cannot open the request log {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("the database is not a request log ({0}); point at the gemba.db in the state directory")]
    NotALog(String),
    #[error("reading the request log failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("invalid report option: {0}")]
    Options(String),
    #[error("cannot create the synthetic log {path}: {source}")]
    Synthetic { path: PathBuf, source: std::io::Error },
}
