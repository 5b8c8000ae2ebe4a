//! Reports from the request log (`kaizen::learn`): `gemba report`, the
//! `kaizen://report/{period}` resource, the server's run records (what the report compares
//! configurations with) and `gemba bench --only report`.
//!
//! - `options`: what a report needs that the log does not hold (capacity in force, SLO
//!   objectives, effort overrides)
//! - `resource`: the MCP resource template and its reader
//! - `runs`: the effective configuration recorded at each server start
//! - `bench`: the 2-million-row figure
//! - `time`: the `--until` argument

pub mod bench;
pub mod options;
pub mod resource;
pub mod runs;
mod time;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use kaizen::learn::{Format, Period};

/// The request log's file name in the state directory (what `kaizen::store::Store::open` creates).
pub const DB_FILE: &str = "gemba.db";

/// `gemba report`: a retrospective over a day, a week or a month of the request log.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The workspace whose request log to read (`<workspace>/.gemba/gemba.db`).
    #[arg(long, env = "GEMBA_WORKSPACE", value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// The state directory, when not `<workspace>/.gemba`.
    #[arg(long, env = "GEMBA_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The span the report covers, ending at --until: day, week or month (30 days).
    #[arg(long, default_value = "week")]
    pub period: String,
    /// The end of the period: an RFC 3339 time, a date (2026-12-04: the end of that day, UTC) or now.
    #[arg(long, default_value = "now", value_name = "TIME")]
    pub until: String,
    /// md (chat and pull requests), html (self-contained page) or json (the contract).
    #[arg(long, default_value = "md")]
    pub format: String,
    /// Write the report to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// SLO file (TOML) with the objectives to report against; default: the seed's tiers.
    #[arg(long, env = "GEMBA_SLO", value_name = "FILE")]
    pub slo: Option<PathBuf>,
    /// A TOML file with `[effort]` (person-days per backlog item id or kind) and `top_n`.
    #[arg(long, value_name = "FILE")]
    pub report_config: Option<PathBuf>,
}

impl ReportArgs {
    /// The request log's path; an error saying what to do when it is not there.
    fn database(&self) -> Result<PathBuf> {
        let dir = match (&self.state_dir, &self.workspace) {
            (Some(d), _) => d.clone(),
            (None, Some(w)) => w.join(".gemba"),
            (None, None) => bail!("pass --workspace DIR (or --state-dir DIR) to say whose request log to read"),
        };
        let db = dir.join(DB_FILE);
        if !db.is_file() {
            bail!(
                "no request log at {}: run `gemba serve` on this workspace first (with the same --state-dir, if \
                 you use one), let it serve some requests, then ask for the report again",
                db.display()
            );
        }
        Ok(db)
    }
}

/// Now, in Unix milliseconds: a period ending "now" must include the calls of this very second.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `gemba report`: build the report the arguments ask for and print or write it.
pub fn run(args: ReportArgs) -> Result<()> {
    let period: Period = args.period.trim().parse()?;
    let format: Format = args.format.trim().parse()?;
    let until_ms = time::parse_until(&args.until, now_ms())?;
    let db = args.database()?;
    let slo = crate::slo::load(args.slo.as_ref())?;
    let config = match &args.report_config {
        Some(p) => options::ReportConfig::load(p)?,
        None => options::ReportConfig::default(),
    };
    let capacity = options::capacity_in_force(&db, until_ms);
    let opts = options::build(period, until_ms, capacity, &slo.slo, &config);
    let report = kaizen::learn::build(&db, &opts)?;
    let text = report.render(format);
    match &args.out {
        Some(path) => {
            std::fs::write(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "gemba: {} report over {} requests ({} to {}) written to {}",
                period.as_str(),
                report.requests,
                report.from,
                report.until,
                path.display()
            );
        }
        None => out!("{text}{}", if text.ends_with('\n') { "" } else { "\n" }),
    }
    Ok(())
}
