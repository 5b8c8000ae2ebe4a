//! `gemba stats`: per-tool count, error rate and percentiles from the request log.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The workspace whose request log to read (`<workspace>/.gemba/gemba.db`).
    #[arg(long, env = "GEMBA_WORKSPACE")]
    pub workspace: Option<PathBuf>,
    /// The state directory, when not `<workspace>/.gemba`.
    #[arg(long, env = "GEMBA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How far back: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Only this tool.
    #[arg(long)]
    pub tool: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The stages that are the tool's own work (the rest is overhead around it).
const WORK_STAGES: [&str; 2] = ["analyze", "extract"];

pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().with_context(|| format!("'{s}' is not a duration like 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("'{s}': use a unit of s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
}

pub fn run(args: StatsArgs) -> Result<()> {
    let dir = match (&args.state_dir, &args.workspace) {
        (Some(d), _) => d.clone(),
        (None, Some(w)) => w.join(".gemba"),
        (None, None) => bail!("pass --workspace DIR (or --state-dir DIR)"),
    };
    let db = dir.join("gemba.db");
    if !db.exists() {
        bail!("no request log at {}; run `gemba serve` on this workspace first", db.display());
    }
    let since = parse_duration(&args.since)?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let stats = kaizen::store::tool_stats(&db, now_ms - since.as_millis() as i64, args.tool.as_deref())?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    outln!(
        "{:<22} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "tool",
        "count",
        "errors",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms"
    );
    for s in &stats {
        outln!(
            "{:<22} {:>8} {:>7.1}% {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            s.tool,
            s.count,
            s.error_rate * 100.0,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.max_ms
        );
    }
    if stats.is_empty() {
        outln!("(no requests in the last {})", args.since);
        return Ok(());
    }
    let cancelled: Vec<String> =
        stats.iter().filter(|s| s.cancelled > 0).map(|s| format!("{} {}", s.tool, s.cancelled)).collect();
    if !cancelled.is_empty() {
        outln!(
            "cancelled by their clients (in the count; not errors, not in the percentiles): {}",
            cancelled.join(", ")
        );
    }
    outln!();
    outln!("where the time goes (value stream; share of total request time):");
    for s in stats.iter().filter(|s| !s.stages.is_empty()) {
        let work: f64 = s.stages.iter().filter(|(n, _)| WORK_STAGES.contains(&n.as_str())).map(|(_, v)| v).sum();
        let parts: Vec<String> = s.stages.iter().map(|(n, v)| format!("{n} {:.0}%", v * 100.0)).collect();
        outln!(
            "  {:<22} {}; queue {:.0}%; the work itself {:.0}%",
            s.tool,
            parts.join(" · "),
            s.queue_share * 100.0,
            work * 100.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse() {
        assert_eq!(super::parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(super::parse_duration("1h").unwrap().as_secs(), 3600);
        assert!(super::parse_duration("soon").is_err());
    }
}
