//! `gemba slo`: the SLO configuration (the seed's tiers by default, or `--slo FILE`) and the
//! Prometheus rules generated from it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kaizen::slo::SloConfig;

use crate::operational::OperationalConfig;

/// Which tier each tool belongs to by default (seed 000, "Performance Budgets").
pub const TOOL_TIERS: [(&str, &str); 33] = [
    ("list_workbooks", "metadata"),
    ("describe_workbook", "metadata"),
    ("list_sheets", "metadata"),
    ("workbook_summary", "analysis"),
    ("named_ranges", "metadata"),
    ("sheet_overview", "analysis"),
    ("sheet_statistics", "analysis"),
    ("table_profile", "analysis"),
    ("read_table", "data"),
    ("range_values", "data"),
    ("sheet_page", "data"),
    ("inspect_cells", "data"),
    ("find_value", "analysis"),
    ("find_formula", "analysis"),
    ("formula_trace", "compute"),
    ("scan_volatiles", "compute"),
    ("sheet_formula_map", "compute"),
    ("create_fork", "data"),
    ("list_forks", "metadata"),
    ("edit_batch", "data"),
    ("transform_batch", "data"),
    ("structure_batch", "compute"),
    ("style_batch", "data"),
    ("apply_staged_change", "data"),
    ("discard_staged_change", "metadata"),
    ("recalculate", "compute"),
    ("get_changeset", "analysis"),
    ("verify_workbook", "analysis"),
    ("checkpoint_fork", "metadata"),
    ("list_checkpoints", "metadata"),
    ("restore_checkpoint", "data"),
    ("save_fork", "compute"),
    ("discard_fork", "metadata"),
];

/// The seed's own figures for some tools (p50, p95, p99 in ms, timeout in ms), over their tier's.
const SEED_FIGURES: [(&str, f64, f64, f64, u64); 12] = [
    ("list_workbooks", 10.0, 50.0, 100.0, 1_000),
    ("list_sheets", 5.0, 20.0, 50.0, 500),
    ("describe_workbook", 20.0, 100.0, 200.0, 2_000),
    ("sheet_overview", 100.0, 500.0, 1_000.0, 5_000),
    ("table_profile", 200.0, 1_000.0, 2_000.0, 10_000),
    ("find_value", 50.0, 200.0, 500.0, 5_000),
    ("find_formula", 100.0, 500.0, 1_000.0, 10_000),
    ("read_table", 50.0, 200.0, 500.0, 5_000),
    ("range_values", 30.0, 150.0, 300.0, 3_000),
    ("sheet_page", 100.0, 500.0, 1_000.0, 10_000),
    ("formula_trace", 500.0, 2_000.0, 5_000.0, 30_000),
    ("scan_volatiles", 1_000.0, 5_000.0, 10_000.0, 60_000),
];

/// The default SLO configuration: the seed's tiers, every tool in its tier, and the seed's own
/// figures where it gives them.
pub fn seed() -> SloConfig {
    let mut cfg = SloConfig::with_tiers(&TOOL_TIERS);
    for (tool, p50, p95, p99, timeout) in SEED_FIGURES {
        if let Some(o) = cfg.tools.get_mut(tool) {
            o.p50_ms = Some(p50);
            o.p95_ms = Some(p95);
            o.p99_ms = Some(p99);
            o.timeout_ms = Some(timeout);
        }
    }
    cfg
}

/// The names Gemba's exports carry (metrics `gemba_*`, alerts `Gemba*`, the `tool` label, MCP
/// protocol versions and transports, and OpenTelemetry's MCP conventions).
pub fn naming() -> kaizen::Naming {
    crate::measure::naming()
}

/// An SLO file: the objectives, and the thresholds of the operational alerts.
#[derive(Debug, Clone)]
pub struct SloFile {
    pub slo: SloConfig,
    pub operational: OperationalConfig,
}

impl SloFile {
    /// The Prometheus rules: SLO groups, then the operational group.
    pub fn rules(&self, runbook_url: &str) -> serde_json::Value {
        let naming = naming();
        let mut rules = kaizen::slo::prometheus_rules(&self.slo, runbook_url, &naming);
        let ops = kaizen::operational::prometheus_group(
            "gemba-operational",
            &crate::operational::rules(&self.operational),
            &naming.service,
            runbook_url,
        );
        if let Some(groups) = rules["groups"].as_array_mut() {
            groups.push(ops);
        }
        rules
    }

    /// The effective configuration as TOML (a starting point for --slo FILE).
    fn to_toml(&self) -> Result<String> {
        let mut table = toml::Table::try_from(&self.slo)?;
        table.insert("operational".into(), toml::Value::try_from(&self.operational)?);
        Ok(toml::to_string_pretty(&table)?)
    }
}

/// Where alerts link by default (pass --runbook-url with your own copy's address).
pub const RUNBOOK_URL: &str = "docs/runbooks.md";

#[derive(Debug, Args)]
pub struct SloArgs {
    #[command(subcommand)]
    pub command: SloCommand,
    /// SLO file (TOML); default: the seed's four tiers.
    #[arg(long, env = "GEMBA_SLO", global = true)]
    pub slo: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SloCommand {
    /// Print the effective SLO configuration as TOML (a starting point for --slo FILE).
    Config,
    /// Each objective's SLI, error budget left, burn and state, from the state database.
    Status {
        /// The workspace whose state to read (`<workspace>/.gemba`).
        #[arg(long, env = "GEMBA_WORKSPACE")]
        workspace: Option<PathBuf>,
        /// The state directory, when not `<workspace>/.gemba`.
        #[arg(long, env = "GEMBA_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the Grafana dashboards (operations, SLO) as JSON, or write them into a directory.
    Dashboards {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print an example Alertmanager route/receiver configuration.
    Alertmanager,
    /// Print Prometheus recording and alerting rules for the SLOs.
    Rules {
        /// Base URL of the runbook the alerts link to.
        #[arg(long, default_value = RUNBOOK_URL)]
        runbook_url: String,
    },
}

/// The time budgets of the tools.
pub struct Timeouts {
    pub per_tool: std::collections::HashMap<String, std::time::Duration>,
    pub default: std::time::Duration,
    pub load: std::time::Duration,
}

impl Timeouts {
    /// Tier timeouts from the SLO config, unless one timeout is forced for all tools.
    pub fn from(cfg: &SloConfig, forced_ms: Option<u64>, load_ms: u64) -> Self {
        let ms = std::time::Duration::from_millis;
        let per_tool = TOOL_TIERS
            .iter()
            .map(|(t, _)| (t.to_string(), ms(forced_ms.or_else(|| cfg.timeout_ms(t)).unwrap_or(30_000))))
            .collect();
        Self { per_tool, default: ms(forced_ms.unwrap_or(30_000)), load: ms(load_ms) }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The SLO status as JSON (for /slo.json and kaizen://slo).
pub fn status_json(engine: &kaizen::sli::SliEngine) -> serde_json::Value {
    serde_json::json!({ "objectives": engine.status(now_secs()) })
}

/// The SLO config from a file, or the seed default.
pub fn load(path: Option<&PathBuf>) -> Result<SloFile> {
    load_with(path, seed)
}

/// The SLO config from a file, or `default` (another embedder's seed, e.g. the proxy's: tiers
/// and a default tier, no tools). What the file leaves out (tiers, tools, the default tier)
/// comes from the default.
pub fn load_with(path: Option<&PathBuf>, default: fn() -> SloConfig) -> Result<SloFile> {
    let file = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read SLO file {}", p.display()))?;
            let mut table: toml::Table =
                toml::from_str(&text).with_context(|| format!("SLO file {} is not valid TOML", p.display()))?;
            let operational = match table.remove("operational") {
                Some(v) => v
                    .try_into()
                    .with_context(|| format!("SLO file {}: the [operational] table is not valid", p.display()))?,
                None => OperationalConfig::default(),
            };
            let seed = default();
            // A tier the default has may be given in part (`[tiers.data] p95_ms = 300`): the
            // figures left out keep the default's.
            if let Some(toml::Value::Table(tiers)) = table.get_mut("tiers") {
                for (name, given) in tiers.iter_mut() {
                    if let (toml::Value::Table(given), Some(base)) = (given, seed.tiers.get(name))
                        && let Ok(toml::Value::Table(base)) = toml::Value::try_from(base)
                    {
                        for (k, v) in base {
                            given.entry(k).or_insert(v);
                        }
                    }
                }
            }
            let mut cfg: SloConfig = toml::Value::Table(table)
                .try_into()
                .with_context(|| format!("SLO file {} is not valid", p.display()))?;
            // Tiers not given in the file keep the seed's figures.
            for (k, v) in seed.tiers {
                cfg.tiers.entry(k).or_insert(v);
            }
            if cfg.tools.is_empty() {
                cfg.tools = seed.tools;
            }
            if cfg.default_tier.is_none() {
                cfg.default_tier = seed.default_tier;
            }
            SloFile { slo: cfg, operational }
        }
        None => SloFile { slo: default(), operational: OperationalConfig::default() },
    };
    if let Err(e) = file.slo.validate() {
        bail!("SLO config: {e}");
    }
    Ok(file)
}

pub fn run(args: SloArgs) -> Result<()> {
    let file = load(args.slo.as_ref())?;
    let cfg = file.slo.clone();
    match args.command {
        SloCommand::Config => outln!("{}", file.to_toml()?),
        SloCommand::Status { workspace, state_dir, json } => {
            let dir = match (state_dir, workspace) {
                (Some(d), _) => d,
                (None, Some(w)) => w.join(".gemba"),
                (None, None) => bail!("pass --workspace DIR (or --state-dir DIR)"),
            };
            let db = dir.join("gemba.db");
            if !db.exists() {
                bail!("no state database at {}; run `gemba serve` on this workspace first", db.display());
            }
            let names: Vec<String> = TOOL_TIERS.iter().map(|(t, _)| t.to_string()).collect();
            let period_min = u64::from(cfg.period_days) * 1440;
            let engine = kaizen::sli::SliEngine::new(cfg, &names, RUNBOOK_URL, &naming());
            engine.restore(kaizen::store::load_slo_minutes(&db, (now_secs() / 60).saturating_sub(period_min))?);
            let status = engine.status(now_secs());
            if json {
                outln!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            outln!(
                "{:<30} {:>9} {:>10} {:>12} {:>9} {:>9} {:>8}",
                "slo",
                "objective",
                "sli",
                "budget left",
                "burn 1h",
                "requests",
                "state"
            );
            for s in status.iter().filter(|s| s.requests_period > 0) {
                let burn = s.burn_rates.iter().find(|(w, _)| w == "1h").map(|(_, b)| *b).unwrap_or(0.0);
                let state = if s.budget_low && s.state == "ok" { "budget_low".to_string() } else { s.state.clone() };
                outln!(
                    "{:<30} {:>8.2}% {:>9.3}% {:>11.1}% {:>9.2} {:>9} {:>8}",
                    s.slo,
                    s.objective * 100.0,
                    s.sli.unwrap_or(1.0) * 100.0,
                    s.error_budget_remaining * 100.0,
                    burn,
                    s.requests_period,
                    state
                );
            }
            if status.iter().all(|s| s.requests_period == 0) {
                outln!("(no requests recorded in the SLO period)");
            }
        }
        SloCommand::Dashboards { out } => {
            let dashboards = crate::dashboards::grafana();
            match out {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    for d in &dashboards {
                        let uid = d["uid"].as_str().unwrap_or("gemba");
                        let path = dir.join(format!("{uid}.json"));
                        std::fs::write(&path, serde_json::to_string_pretty(d)?)?;
                        outln!("{}", path.display());
                    }
                }
                None => outln!("{}", serde_json::to_string_pretty(&dashboards)?),
            }
        }
        SloCommand::Alertmanager => out!("{}", crate::dashboards::ALERTMANAGER_EXAMPLE),
        SloCommand::Rules { runbook_url } => out!("{}", crate::yaml::to_string(&file.rules(&runbook_url))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_tool_has_a_tier() {
        for name in crate::catalog::NAMES {
            assert!(super::TOOL_TIERS.iter().any(|(t, _)| t == name), "{name} has no tier");
        }
        let cfg = super::load(None).unwrap().slo;
        assert_eq!(cfg.objectives().len(), 2 * crate::catalog::NAMES.len());
        assert_eq!(cfg.timeout_ms("list_workbooks"), Some(1_000));
        assert_eq!(cfg.timeout_ms("read_table"), Some(5_000));
        assert_eq!(cfg.timeout_ms("scan_volatiles"), Some(60_000));
    }

    fn from_file(name: &str, text: &str) -> anyhow::Result<super::SloFile> {
        let path = std::env::temp_dir().join(format!("gemba-slo-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let r = super::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn a_tier_may_be_given_in_part_and_impossible_figures_are_refused() {
        let cfg = from_file("part", "[tiers.data]\np95_ms = 300.0\n").unwrap().slo;
        let seed = super::seed();
        let (given, base) = (&cfg.tiers["data"], &seed.tiers["data"]);
        assert_eq!((given.p50_ms, given.p95_ms, given.p99_ms), (base.p50_ms, 300.0, base.p99_ms));
        assert_eq!(given.timeout_ms, base.timeout_ms);
        for (text, says) in [
            ("[tiers.data]\np50_ms = -5.0\n", "tier data: p50_ms -5"),
            ("[tiers.data]\np50_ms = 900.0\np95_ms = 100.0\n", "in order"),
            ("[tiers.data]\ntimeout_ms = 0\n", "timeout_ms must be above 0"),
            ("[tools.read_table]\np99_ms = 1.0\n", "tool read_table"),
        ] {
            let e = format!("{:#}", from_file("bad", text).err().unwrap());
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
