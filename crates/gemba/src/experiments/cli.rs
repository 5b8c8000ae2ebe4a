//! `gemba experiment status|report|check|knobs`: the experiments' saved state and decisions,
//! read from the state database without a server, and the checks a file gets at start.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use kaizen::experiment::persist::ExperimentStore;
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    pub command: ExperimentCommand,
}

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Each experiment's state, variants and headline test, as the server last saved them.
    Status(StoreArgs),
    /// Every test's decision (effect, confidence interval, p-value, samples against the power
    /// analysis' prediction) and the log of transitions (steps, rollbacks, decisions).
    Report(ReportArgs),
    /// Check an experiments file against Gemba's knobs and tools, listing every problem.
    Check {
        /// The experiments file (TOML).
        file: PathBuf,
    },
    /// The knobs experiments may set, with their types, defaults and what they change.
    Knobs {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The workspace whose state to read (`<workspace>/.gemba/gemba.db`).
    #[arg(long, env = "GEMBA_WORKSPACE")]
    pub workspace: Option<PathBuf>,
    /// The state directory, when not `<workspace>/.gemba`.
    #[arg(long, env = "GEMBA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this experiment.
    #[arg(long)]
    pub experiment: Option<String>,
    /// Most transitions shown (newest first).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

pub fn run(args: ExperimentArgs) -> Result<()> {
    match args.command {
        ExperimentCommand::Status(a) => status(&a),
        ExperimentCommand::Report(a) => report(&a),
        ExperimentCommand::Check { file } => check(&file),
        ExperimentCommand::Knobs { json } => knobs(json),
    }
}

fn open(a: &StoreArgs) -> Result<ExperimentStore> {
    let dir = match (&a.state_dir, &a.workspace) {
        (Some(d), _) => d.clone(),
        (None, Some(w)) => w.join(".gemba"),
        (None, None) => bail!("pass --workspace DIR (or --state-dir DIR)"),
    };
    let db = dir.join("gemba.db");
    if !db.exists() {
        bail!("no state database at {}; run `gemba serve --experiments FILE` on this workspace first", db.display());
    }
    let store = ExperimentStore::open_read_only(&db)?;
    Ok(store)
}

/// The saved status, or a clear error when the server never ran experiments here.
fn saved_status(store: &ExperimentStore) -> Result<Value> {
    match store.load_status() {
        Ok(v) => Ok(v),
        Err(e) if e.to_string().contains("no such table") => {
            bail!("no experiments were ever run with this state directory (start gemba serve with --experiments FILE)")
        }
        Err(e) => Err(e.into()),
    }
}

fn status(a: &StoreArgs) -> Result<()> {
    let store = open(a)?;
    let status = saved_status(&store)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let list = status["experiments"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        outln!("no experiments saved");
    }
    for e in &list {
        outln!("{}", headline(e));
        outln!(
            "  {:<16} {:>7} {:>9} {:>9} {:>9} {:>8} {:>10}",
            "variant",
            "share",
            "samples",
            "p50 ms",
            "p95 ms",
            "errors",
            "bytes"
        );
        for v in e["variants"].as_array().into_iter().flatten() {
            let m = &v["metrics"];
            outln!(
                "  {:<16} {:>7} {:>9} {:>9} {:>9} {:>8} {:>10}",
                text(&v["name"]),
                pct_of(&v["share"]),
                num(&v["samples"]),
                num(&m["latency_p50_ms"]),
                num(&m["latency_p95_ms"]),
                pct_of(&m["error_ratio"]),
                num(&m["response_bytes_geomean"]),
            );
        }
        if let Some(d) = e["decision"].as_str() {
            outln!("  decision: {d}");
        }
        outln!();
    }
    Ok(())
}

/// "name  kind  state  unit=…  step 2/4 (5 %)".
fn headline(e: &Value) -> String {
    let mut s = format!("{}  {}  {}  unit={}", text(&e["name"]), text(&e["kind"]), text(&e["state"]), text(&e["unit"]));
    if let Some(step) = e.get("step") {
        s.push_str(&format!("  step {}/{} ({})", num(&step["index"]), num(&step["of"]), pct_of(&step["share"])));
    }
    if let Some(b) = e.get("bandit") {
        s.push_str(&format!("  leader {}", text(&b["leader"])));
    }
    s
}

fn report(a: &ReportArgs) -> Result<()> {
    let store = open(&a.store)?;
    let status = saved_status(&store)?;
    let mut list = status["experiments"].as_array().cloned().unwrap_or_default();
    if let Some(name) = &a.experiment {
        list.retain(|e| e["name"].as_str() == Some(name.as_str()));
        if list.is_empty() {
            bail!("no experiment '{name}' in the saved state; `gemba experiment status` lists them");
        }
    }
    let transitions = store.transitions(a.experiment.as_deref(), a.limit.min(10_000))?;
    if a.store.json {
        let log: Vec<Value> = transitions
            .iter()
            .map(|t| {
                json!({"at": kaizen::detect::timefmt::format_ms(t.at_secs * 1000), "at_secs": t.at_secs,
                       "experiment": t.experiment, "kind": t.kind, "severity": t.severity, "message": t.message})
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&json!({"experiments": list, "transitions": log}))?);
        return Ok(());
    }
    for e in &list {
        outln!("{}", headline(e));
        if let Some(d) = e.get("description").and_then(Value::as_str) {
            outln!("  hypothesis: {d}");
        }
        outln!("  decision: {}", e["decision"].as_str().unwrap_or("none yet"));
        let tests = e["tests"].as_array().cloned().unwrap_or_default();
        if !tests.is_empty() {
            outln!(
                "  {:<8} {:<18} {:<12} {:<15} {:>10} {:>24} {:>10} {:>9} {:>7} {:>17}",
                "role",
                "metric",
                "variant",
                "status",
                "effect",
                "CI",
                "p",
                "p (MWU)",
                "info",
                "samples/predicted"
            );
        }
        for t in &tests {
            let ci = match t["ci"].as_array().map(Vec::as_slice) {
                Some([lo, hi]) => format!("[{}, {}]", effect(t, lo), effect(t, hi)),
                _ => "-".into(),
            };
            outln!(
                "  {:<8} {:<18} {:<12} {:<15} {:>10} {:>24} {:>10} {:>9} {:>7} {:>17}",
                text(&t["role"]),
                text(&t["metric"]),
                text(&t["variant"]),
                text(&t["status"]),
                effect(t, &t["effect"]),
                ci,
                sci(&t["p_value"]),
                sci(&t["mann_whitney_p"]),
                pct_of(&t["information"]),
                format!("{}/{}", num(&t["variant_samples"]), num(&t["predicted_samples"])),
            );
        }
        outln!();
    }
    outln!("transitions (newest first):");
    if transitions.is_empty() {
        outln!("  none");
    }
    for t in &transitions {
        let kind = serde_json::to_value(t.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        outln!(
            "  {}  {:<20} {:<13} {}",
            kaizen::detect::timefmt::format_ms(t.at_secs * 1000),
            t.experiment,
            kind,
            t.message
        );
    }
    Ok(())
}

fn check(file: &std::path::Path) -> Result<()> {
    let engine = super::load_engine(file)?;
    let plan = engine.plan();
    outln!("{}: {} experiment(s), valid", file.display(), plan.experiments.len());
    for e in &plan.experiments {
        let variants: Vec<&str> = e.variants.iter().map(|v| v.name.as_str()).collect();
        outln!("  {} ({}, unit {:?}): {}", e.name, e.kind.as_str(), e.unit, variants.join(", "));
    }
    Ok(())
}

fn knobs(as_json: bool) -> Result<()> {
    let specs = super::knobs::specs();
    if as_json {
        let list: Vec<Value> = specs
            .iter()
            .map(|k| json!({"name": k.name, "takes": k.describe(), "default": k.default, "help": k.help}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&json!({ "knobs": list }))?);
        return Ok(());
    }
    for k in &specs {
        outln!("{:<16} {} (default {})\n    {}", k.name, k.describe(), k.default, k.help);
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    }
}

fn pct_of(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{:.1} %", x * 100.0))
}

fn sci(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2e}"))
}

/// An effect in the test's own units: relative for latency and bytes, points for ratios.
fn effect(t: &Value, v: &Value) -> String {
    let Some(x) = v.as_f64() else { return "-".into() };
    match t["metric"].as_str().unwrap_or("") {
        "latency" | "response_bytes" => format!("{:+.1} %", x * 100.0),
        "error_ratio" | "server_error_ratio" | "cache_hit_ratio" => format!("{:+.2} pt", x * 100.0),
        "slo_burn" => format!("{x:.2}x"),
        _ => format!("{x:+.4}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_are_shown_in_their_units() {
        let lat = json!({"metric": "latency"});
        assert_eq!(effect(&lat, &json!(0.638)), "+63.8 %");
        assert_eq!(effect(&json!({"metric": "error_ratio"}), &json!(-0.0123)), "-1.23 pt");
        assert_eq!(effect(&lat, &Value::Null), "-");
        assert_eq!(num(&json!(42)), "42");
        assert_eq!(pct_of(&json!(0.05)), "5.0 %");
        let e = json!({"name": "c", "kind": "canary", "state": "rolled_back", "unit": "request",
                       "step": {"index": 1, "of": 3, "share": 0.1}});
        assert_eq!(headline(&e), "c  canary  rolled_back  unit=request  step 1/3 (10.0 %)");
    }
}
