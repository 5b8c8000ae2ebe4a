//! `gemba incidents`: the incidents kept in the state database, without a running server (a
//! table, or the JSON contract with `--json`); `--show-config` prints the detector's settings and
//! cause rules as a `--detect` file.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use kaizen::detect::{Incident, load_incidents};

use super::{model, now_ms};

#[derive(Debug, Args)]
pub struct IncidentsArgs {
    /// The workspace whose state database to read (`<workspace>/.gemba/gemba.db`).
    #[arg(long, env = "GEMBA_WORKSPACE")]
    pub workspace: Option<PathBuf>,
    /// The state directory, when not `<workspace>/.gemba`.
    #[arg(long, env = "GEMBA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Incidents open now or closed within this span: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1d")]
    pub since: String,
    /// The JSON contract (`{"incidents": [...]}`) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print the detector's settings and cause rules (the defaults, or with `--detect FILE`'s
    /// overrides) as a `--detect` file, and exit.
    #[arg(long)]
    pub show_config: bool,
    /// A detect file to check and show with `--show-config`.
    #[arg(long, env = "GEMBA_DETECT", value_name = "FILE")]
    pub detect: Option<PathBuf>,
}

pub fn run(args: IncidentsArgs) -> Result<()> {
    if args.show_config {
        outln!("{}", model::Settings::load(args.detect.as_deref())?.to_toml()?);
        return Ok(());
    }
    let dir = match (&args.state_dir, &args.workspace) {
        (Some(d), _) => d.clone(),
        (None, Some(w)) => w.join(".gemba"),
        (None, None) => bail!("pass --workspace DIR (or --state-dir DIR)"),
    };
    let since = crate::stats::parse_duration(&args.since)?;
    let db = super::db_path(&dir);
    if !db.exists() {
        bail!("no state database at {}; run `gemba serve` on this workspace first", db.display());
    }
    let list = load_incidents(&db, now_ms().saturating_sub(since.as_millis() as u64))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&kaizen::detect::incidents_json(&list))?);
        return Ok(());
    }
    if list.is_empty() {
        outln!("no incidents in the last {} ({})", args.since, dir.display());
        return Ok(());
    }
    for line in table(&list) {
        outln!("{line}");
    }
    Ok(())
}

/// One line per incident (newest first), and its top cause's evidence indented below.
pub fn table(list: &[Incident]) -> Vec<String> {
    let time = |ms: u64| kaizen::detect::timefmt::format_ms(ms);
    let mut lines = vec![format!(
        "{:<20} {:<25} {:<25} {:<22} {:<16} {:>5}",
        "id", "opened", "closed", "tools", "top cause", "score"
    )];
    for inc in list {
        let closed = inc.closed_ms.map_or_else(|| "(open)".to_string(), time);
        let tools = if inc.tools.is_empty() { "server".to_string() } else { inc.tools.join(",") };
        let (cause, score, evidence) = match inc.top_cause() {
            Some(c) => (c.cause.as_str(), format!("{:.2}", c.score), c.evidence.as_str()),
            None => ("(not ranked)", String::new(), ""),
        };
        lines.push(format!(
            "{:<20} {:<25} {:<25} {:<22} {:<16} {:>5}",
            inc.id,
            time(inc.opened_ms),
            closed,
            tools,
            cause,
            score
        ));
        if !evidence.is_empty() {
            lines.push(format!("    {evidence}"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaizen::detect::RankedCause;

    #[test]
    fn the_table_shows_open_and_closed_incidents_with_their_top_cause() {
        let inc = |id: &str, closed: Option<u64>, causes: Vec<RankedCause>| Incident {
            id: id.into(),
            opened_ms: 1_700_000_000_000,
            closed_ms: closed,
            tools: vec!["read_table".into()],
            timeline: vec![],
            causes,
        };
        let lines = table(&[
            inc(
                "inc-2",
                None,
                vec![RankedCause { cause: "saturation".into(), score: 0.83, evidence: "refusals 0/s → 40/s".into() }],
            ),
            inc("inc-1", Some(1_700_000_100_000), vec![]),
        ]);
        assert_eq!(lines.len(), 4);
        assert!(lines[1].starts_with("inc-2") && lines[1].contains("(open)") && lines[1].contains("saturation"));
        assert!(lines[1].ends_with("0.83") && lines[2].trim() == "refusals 0/s → 40/s", "{lines:?}");
        assert!(
            lines[3].contains("2023-11-14T22:13:20.000Z  2023-11-14T22:15:00.000Z")
                && lines[3].contains("(not ranked)"),
            "{lines:?}"
        );
    }
}
