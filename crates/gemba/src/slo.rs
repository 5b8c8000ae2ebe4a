//! `gemba slo`: the SLO configuration (the seed's tiers by default, or `--slo FILE`) and the
//! Prometheus rules generated from it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kaizen::slo::SloConfig;

/// Which tier each tool belongs to by default (seed 000, "Performance Budgets").
pub const TOOL_TIERS: [(&str, &str); 17] = [
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
];

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
    /// Print Prometheus recording and alerting rules for the SLOs.
    Rules {
        /// Base URL of the runbook the alerts link to.
        #[arg(long, default_value = RUNBOOK_URL)]
        runbook_url: String,
    },
}

/// The SLO config from a file, or the seed default.
pub fn load(path: Option<&PathBuf>) -> Result<SloConfig> {
    let cfg = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read SLO file {}", p.display()))?;
            let mut cfg: SloConfig =
                toml::from_str(&text).with_context(|| format!("SLO file {} is not valid", p.display()))?;
            // Tiers not given in the file keep the seed's figures.
            let seed = SloConfig::seed_default(&TOOL_TIERS);
            for (k, v) in seed.tiers {
                cfg.tiers.entry(k).or_insert(v);
            }
            if cfg.tools.is_empty() {
                cfg.tools = seed.tools;
            }
            cfg
        }
        None => SloConfig::seed_default(&TOOL_TIERS),
    };
    if let Err(e) = cfg.validate() {
        bail!("SLO config: {e}");
    }
    Ok(cfg)
}

pub fn run(args: SloArgs) -> Result<()> {
    let cfg = load(args.slo.as_ref())?;
    match args.command {
        SloCommand::Config => println!("{}", toml::to_string_pretty(&cfg)?),
        SloCommand::Rules { runbook_url } => {
            println!("{}", serde_json::to_string_pretty(&kaizen::slo::prometheus_rules(&cfg, &runbook_url))?)
        }
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
        let cfg = super::load(None).unwrap();
        assert_eq!(cfg.objectives().len(), 2 * crate::catalog::NAMES.len());
    }
}
