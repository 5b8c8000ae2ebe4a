//! Service level objectives: the config (defaults from the seed's four tiers), burn-rate math
//! over the Google SRE Workbook windows, and the same objectives rendered as Prometheus
//! recording and alerting rules, so the in-process judge and Prometheus cannot disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Burn-rate alert windows: (severity, long window, short window, factor).
pub const BURN_ALERTS: [(&str, &str, &str, f64); 4] =
    [("page", "1h", "5m", 14.4), ("page", "6h", "30m", 6.0), ("ticket", "1d", "2h", 3.0), ("ticket", "3d", "6h", 1.0)];
/// Every window a rule or the in-process engine computes.
pub const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// A tier of tools with shared latency figures (milliseconds) and timeout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub timeout_ms: u64,
}

/// One tool's objectives; anything left out comes from its tier.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolObjectives {
    pub tier: Option<String>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub timeout_ms: Option<u64>,
    /// Share of requests that must be under the p95 threshold (default 0.95).
    pub latency_objective: Option<f64>,
    /// Share of requests that must not be `internal` or `timeout` (default 0.999).
    pub availability: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    #[serde(default = "default_period")]
    pub period_days: u32,
    /// Fewer requests than this in a long window never alert (low-traffic guard).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Alert when this share of the period's error budget is spent.
    #[serde(default = "default_budget_alert")]
    pub budget_alert_at: f64,
    #[serde(default)]
    pub tiers: BTreeMap<String, Tier>,
    #[serde(default)]
    pub tools: BTreeMap<String, ToolObjectives>,
    /// Thresholds of the operational alerts.
    #[serde(default)]
    pub operational: crate::operational::OperationalConfig,
    /// Scale every window (and the period) by this factor — only for tests that need hours to
    /// pass in seconds. 1 in production.
    #[serde(default = "default_scale")]
    pub window_scale: f64,
    /// Granularity of the in-process SLI counts, in seconds (60 in production).
    #[serde(default = "default_resolution")]
    pub resolution_secs: u64,
}

fn default_scale() -> f64 {
    1.0
}
fn default_resolution() -> u64 {
    60
}

fn default_period() -> u32 {
    30
}
fn default_min_requests() -> u64 {
    10
}
fn default_budget_alert() -> f64 {
    0.7
}

/// What an objective judges.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Indicator {
    /// Share of requests answered under `threshold_seconds`.
    Latency { threshold_seconds: f64 },
    /// Share of requests that are not `internal` or `timeout`.
    Availability,
}

#[derive(Debug, Clone, Serialize)]
pub struct Objective {
    /// `<tool>-latency` or `<tool>-availability`.
    pub name: String,
    pub tool: String,
    pub tier: String,
    pub indicator: Indicator,
    /// Target share of good requests, e.g. 0.999.
    pub objective: f64,
}

impl Objective {
    pub fn error_budget(&self) -> f64 {
        (1.0 - self.objective).max(1e-9)
    }
}

impl SloConfig {
    /// The seed's four tiers (metadata, analysis, data, compute) and per-tool figures.
    pub fn seed_default(tool_tiers: &[(&str, &str)]) -> Self {
        let tier = |p50, p95, p99, t| Tier { p50_ms: p50, p95_ms: p95, p99_ms: p99, timeout_ms: t };
        let mut tiers = BTreeMap::new();
        tiers.insert("metadata".into(), tier(20.0, 100.0, 200.0, 2_000));
        tiers.insert("analysis".into(), tier(200.0, 1_000.0, 2_000.0, 10_000));
        tiers.insert("data".into(), tier(100.0, 500.0, 1_000.0, 10_000));
        tiers.insert("compute".into(), tier(1_000.0, 5_000.0, 10_000.0, 60_000));
        // The seed's own per-tool figures.
        let seed: [(&str, f64, f64, f64, u64); 11] = [
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
        ];
        let mut tools = BTreeMap::new();
        for (tool, t) in tool_tiers {
            let mut o = ToolObjectives { tier: Some((*t).to_string()), ..Default::default() };
            if let Some((_, p50, p95, p99, to)) = seed.iter().find(|s| s.0 == *tool) {
                o.p50_ms = Some(*p50);
                o.p95_ms = Some(*p95);
                o.p99_ms = Some(*p99);
                o.timeout_ms = Some(*to);
            }
            tools.insert((*tool).to_string(), o);
        }
        if let Some(sv) = tools.get_mut("scan_volatiles") {
            sv.p50_ms = Some(1_000.0);
            sv.p95_ms = Some(5_000.0);
            sv.p99_ms = Some(10_000.0);
            sv.timeout_ms = Some(60_000);
        }
        Self {
            period_days: 30,
            min_requests: default_min_requests(),
            budget_alert_at: default_budget_alert(),
            tiers,
            tools,
            operational: Default::default(),
            window_scale: 1.0,
            resolution_secs: 60,
        }
    }

    /// Seconds a window spans, after scaling.
    pub fn window_secs(&self, w: &str) -> u64 {
        ((window_seconds(w) as f64 * self.window_scale).round() as u64).max(1)
    }

    /// The PromQL range for a window: the window itself, or its scaled length in seconds.
    pub fn range(&self, w: &str) -> String {
        if self.window_scale == 1.0 { w.to_string() } else { format!("{}s", self.window_secs(w)) }
    }

    pub fn period_window(&self) -> String {
        format!("{}d", self.period_days)
    }

    /// Check the config: every tool's tier exists, objectives are in (0, 1).
    pub fn validate(&self) -> Result<(), String> {
        for (tool, o) in &self.tools {
            if let Some(t) = &o.tier
                && !self.tiers.contains_key(t)
            {
                let known: Vec<&String> = self.tiers.keys().collect();
                return Err(format!("tool {tool}: no tier '{t}'; tiers are {known:?}"));
            }
            for (what, v) in [("latency_objective", o.latency_objective), ("availability", o.availability)] {
                if let Some(v) = v
                    && !(v > 0.0 && v < 1.0)
                {
                    return Err(format!("tool {tool}: {what} {v} must be between 0 and 1, e.g. 0.999"));
                }
            }
        }
        if !(self.window_scale > 0.0 && self.window_scale <= 1.0) || self.resolution_secs == 0 {
            return Err("window_scale must be in (0, 1] and resolution_secs at least 1".into());
        }
        if !(self.budget_alert_at > 0.0 && self.budget_alert_at <= 1.0) {
            return Err(format!("budget_alert_at {} must be in (0, 1]", self.budget_alert_at));
        }
        Ok(())
    }

    fn figures(&self, tool: &str) -> Option<(String, Tier, &ToolObjectives)> {
        let o = self.tools.get(tool)?;
        let tier_name = o.tier.clone().unwrap_or_else(|| "data".into());
        let base = self.tiers.get(&tier_name)?.clone();
        Some((
            tier_name,
            Tier {
                p50_ms: o.p50_ms.unwrap_or(base.p50_ms),
                p95_ms: o.p95_ms.unwrap_or(base.p95_ms),
                p99_ms: o.p99_ms.unwrap_or(base.p99_ms),
                timeout_ms: o.timeout_ms.unwrap_or(base.timeout_ms),
            },
            o,
        ))
    }

    /// The timeout a tool runs under (its tier's, unless set for the tool).
    pub fn timeout_ms(&self, tool: &str) -> Option<u64> {
        self.figures(tool).map(|(_, t, _)| t.timeout_ms)
    }

    /// All objectives: a latency and an availability objective per tool.
    pub fn objectives(&self) -> Vec<Objective> {
        let mut out = Vec::new();
        for tool in self.tools.keys() {
            let Some((tier, fig, o)) = self.figures(tool) else { continue };
            out.push(Objective {
                name: format!("{tool}-latency"),
                tool: tool.clone(),
                tier: tier.clone(),
                indicator: Indicator::Latency { threshold_seconds: fig.p95_ms / 1000.0 },
                objective: o.latency_objective.unwrap_or(0.95),
            });
            out.push(Objective {
                name: format!("{tool}-availability"),
                tool: tool.clone(),
                tier,
                indicator: Indicator::Availability,
                objective: o.availability.unwrap_or(0.999),
            });
        }
        out
    }
}

/// Burn rate: how many times faster than allowed the error budget is being spent.
pub fn burn_rate(bad: f64, total: f64, objective: f64) -> f64 {
    if total <= 0.0 {
        return 0.0;
    }
    (bad / total) / (1.0 - objective).max(1e-9)
}

/// The multi-window, multi-burn-rate decision: `burn(window)` gives the burn rate and the
/// request count in a window. Returns the severity that fires ("page" beats "ticket").
pub fn evaluate(burn: impl Fn(&str) -> (f64, f64), min_requests: u64) -> Option<&'static str> {
    let mut fired = None;
    for (severity, long, short, factor) in BURN_ALERTS {
        let (bl, nl) = burn(long);
        let (bs, _) = burn(short);
        if nl >= min_requests as f64 && bl > factor && bs > factor {
            if severity == "page" {
                return Some("page");
            }
            fired = Some(severity);
        }
    }
    fired
}

pub fn window_seconds(w: &str) -> u64 {
    let (n, unit) = w.split_at(w.len() - 1);
    let n: u64 = n.parse().unwrap_or(0);
    match unit {
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => n,
    }
}

/// Prometheus recording and alerting rules for the objectives (the shapes Sloth generates):
/// error ratios per window, then multi-window burn-rate alerts and a budget-spent alert.
/// The result is JSON, which is valid YAML for Prometheus and promtool.
pub fn prometheus_rules(cfg: &SloConfig, runbook_base: &str) -> Value {
    let mut groups = Vec::new();
    for o in cfg.objectives() {
        let sel = format!("tool=\"{}\"", o.tool);
        let labels = json!({"slo": o.name, "tool": o.tool, "tier": o.tier});
        let mut rules = Vec::new();
        for w in WINDOWS {
            let r = cfg.range(w);
            let expr = match &o.indicator {
                Indicator::Availability => format!(
                    "(sum(rate(gemba_tool_requests_total{{{sel},outcome=~\"internal|timeout\"}}[{r}])) or vector(0)) / sum(rate(gemba_tool_requests_total{{{sel}}}[{r}]))"
                ),
                Indicator::Latency { threshold_seconds } => format!(
                    "1 - (sum(rate(gemba_tool_duration_seconds_bucket{{{sel},le=\"{}\"}}[{r}])) / sum(rate(gemba_tool_duration_seconds_count{{{sel}}}[{r}])))",
                    prom_float(*threshold_seconds)
                ),
            };
            rules.push(json!({"record": format!("slo:sli_error:ratio_rate{w}"), "expr": expr, "labels": labels}));
            rules.push(json!({
                "record": format!("slo:requests:increase{w}"),
                "expr": format!("sum(increase(gemba_tool_requests_total{{{sel}}}[{r}]))"),
                "labels": labels,
            }));
        }
        rules.push(
            json!({"record": "slo:objective:ratio", "expr": format!("vector({})", o.objective), "labels": labels}),
        );
        rules.push(json!({"record": "slo:error_budget:ratio", "expr": format!("vector({})", o.error_budget()), "labels": labels}));
        let period = cfg.period_window();
        let period_range = cfg.range(&period);
        rules.push(json!({
            "record": format!("slo:sli_error:ratio_rate{period}"),
            "expr": format!("avg_over_time(slo:sli_error:ratio_rate5m{{slo=\"{}\"}}[{period_range}])", o.name),
            "labels": labels,
        }));
        rules.push(json!({
            "record": format!("slo:requests:increase{period}"),
            "expr": format!("sum(increase(gemba_tool_requests_total{{{sel}}}[{period_range}]))"),
            "labels": labels,
        }));
        rules.push(json!({
            "record": "slo:error_budget_remaining:ratio",
            "expr": format!("1 - (slo:sli_error:ratio_rate{period}{{slo=\"{}\"}} / {})", o.name, o.error_budget()),
            "labels": labels,
        }));
        let rec = |w: &str| format!("slo:sli_error:ratio_rate{w}{{slo=\"{}\"}}", o.name);
        let count = |w: &str| format!("slo:requests:increase{w}{{slo=\"{}\"}}", o.name);
        let anchor = format!("{runbook_base}#slo-burn-rate");
        for severity in ["page", "ticket"] {
            let conds: Vec<String> = BURN_ALERTS
                .iter()
                .filter(|b| b.0 == severity)
                .map(|(_, long, short, factor)| {
                    let limit = factor * o.error_budget();
                    format!(
                        "({} > {} and {} > {} and {} >= {})",
                        rec(long),
                        prom_float(limit),
                        rec(short),
                        prom_float(limit),
                        count(long),
                        cfg.min_requests
                    )
                })
                .collect();
            let alert = if severity == "page" { "GembaSLOBurnRatePage" } else { "GembaSLOBurnRateTicket" };
            rules.push(json!({
                "alert": alert,
                "expr": conds.join(" or "),
                "labels": {"severity": severity, "slo": o.name, "tool": o.tool, "tier": o.tier},
                "annotations": {
                    "summary": format!("{} is spending its error budget too fast ({severity})", o.name),
                    "description": format!("Objective {} for {}: burn rate above the multi-window threshold.", o.objective, o.tool),
                    "runbook_url": anchor,
                },
            }));
        }
        rules.push(json!({
            "alert": "GembaSLOErrorBudgetLow",
            "expr": format!(
                "(1 - slo:error_budget_remaining:ratio{{slo=\"{}\"}}) >= {} and slo:requests:increase{period}{{slo=\"{}\"}} >= {}",
                o.name,
                prom_float(cfg.budget_alert_at),
                o.name,
                crate::sli::budget_min_requests(&o, cfg.min_requests)
            ),
            "labels": {"severity": "ticket", "slo": o.name, "tool": o.tool, "tier": o.tier},
            "annotations": {
                "summary": format!("{} has spent {:.0}% of its error budget", o.name, cfg.budget_alert_at * 100.0),
                "description": "Error budget consumption over the SLO period crossed the alert threshold.",
                "runbook_url": format!("{runbook_base}#slo-error-budget-low"),
            },
        }));
        groups.push(json!({"name": format!("gemba-slo-{}", o.name), "interval": "30s", "rules": rules}));
    }
    groups.push(crate::operational::prometheus_rules(&cfg.operational, runbook_base));
    json!({ "groups": groups })
}

/// A float as PromQL writes it (no exponent for ordinary values).
fn prom_float(v: f64) -> String {
    let s = format!("{v}");
    if s.contains('e') { format!("{v:.12}") } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SloConfig {
        SloConfig::seed_default(&[
            ("read_table", "data"),
            ("list_workbooks", "metadata"),
            ("scan_volatiles", "compute"),
        ])
    }

    #[test]
    fn seed_defaults_and_timeouts() {
        let c = cfg();
        assert!(c.validate().is_ok());
        assert_eq!(c.timeout_ms("read_table"), Some(5_000));
        assert_eq!(c.timeout_ms("list_workbooks"), Some(1_000));
        assert_eq!(c.timeout_ms("scan_volatiles"), Some(60_000));
        let objs = c.objectives();
        let rt = objs.iter().find(|o| o.name == "read_table-latency").unwrap();
        assert_eq!(rt.indicator, Indicator::Latency { threshold_seconds: 0.2 });
        let av = objs.iter().find(|o| o.name == "read_table-availability").unwrap();
        assert!((av.error_budget() - 0.001).abs() < 1e-12);
    }

    #[test]
    fn burn_rate_windows_decide_page_and_ticket() {
        let obj = 0.999;
        // 2 % errors on a 99.9 % SLO: burn 20 everywhere pages.
        let page = evaluate(|_| (burn_rate(2.0, 100.0, obj), 1000.0), 10);
        assert_eq!(page, Some("page"));
        // 0.5 %: burn 5 — no page; the 1d/2h pair (3x) makes a ticket.
        assert_eq!(evaluate(|_| (burn_rate(0.5, 100.0, obj), 1000.0), 10), Some("ticket"));
        // Low traffic never alerts.
        assert_eq!(evaluate(|_| (burn_rate(1.0, 3.0, obj), 3.0), 10), None);
        // Recovering: clean short windows end the page at once; the ticket waits for 2h/6h.
        assert_eq!(evaluate(|w| (if w == "5m" || w == "30m" { 0.0 } else { 20.0 }, 1000.0), 10), Some("ticket"));
        let clean = ["5m", "30m", "2h", "6h"];
        assert_eq!(evaluate(|w| (if clean.contains(&w) { 0.0 } else { 20.0 }, 1000.0), 10), None);
    }

    #[test]
    fn rules_render_every_window_and_alert() {
        let rules = prometheus_rules(&cfg(), "https://example.invalid/runbooks.md");
        let text = rules.to_string();
        for w in WINDOWS {
            assert!(text.contains(&format!("slo:sli_error:ratio_rate{w}")), "{w}");
        }
        assert!(text.contains("GembaSLOBurnRatePage") && text.contains("GembaSLOErrorBudgetLow"));
        assert!(text.contains("le=\\\"0.2\\\""), "read_table's p95 threshold is a bucket edge");
    }
}
