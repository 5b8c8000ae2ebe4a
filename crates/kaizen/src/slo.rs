//! Service level objectives: the config (defaults from the seed's four tiers), burn-rate math
//! over the Google SRE Workbook windows, and the same objectives rendered as Prometheus
//! recording and alerting rules, so the in-process judge and Prometheus cannot disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::naming::Naming;

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
    /// Scale every window (and the period) by this factor — only for tests that need hours to
    /// pass in seconds. 1 in production.
    #[serde(default = "default_scale")]
    pub window_scale: f64,
    /// Granularity of the in-process SLI counts, in seconds (60 in production).
    #[serde(default = "default_resolution")]
    pub resolution_secs: u64,
    /// Tiers for operations not listed under `tools`, by name pattern (`[[pattern]]`, first
    /// match wins): for embedders whose operations are only known at run time.
    #[serde(default, rename = "pattern", skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<TierPattern>,
    /// The tier of operations neither listed nor matched by a pattern; without it they have no
    /// objectives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<String>,
}

/// `[[pattern]] match = "read_*" tier = "data"`: a tier for every operation whose name matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPattern {
    /// A glob over operation names: `*` matches any run of characters, `?` exactly one.
    #[serde(rename = "match")]
    pub pattern: String,
    pub tier: String,
}

/// Longest pattern accepted (a pattern is matched against every operation at start).
const MAX_PATTERN_CHARS: usize = 200;

/// Whether `name` matches the glob `pattern` (`*` any run of characters, `?` one character,
/// everything else literally). Linear in the inputs' lengths times the number of stars at worst.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // The last star seen and the name position it is currently standing in for.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            // Let the star absorb one more character and retry.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
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
    /// The seed's four tiers (seed 000, "Performance Budgets"): metadata, analysis, data and
    /// compute, with p50/p95/p99 targets and timeouts in milliseconds.
    pub fn seed_tiers() -> BTreeMap<String, Tier> {
        let tier = |p50, p95, p99, t| Tier { p50_ms: p50, p95_ms: p95, p99_ms: p99, timeout_ms: t };
        let mut tiers = BTreeMap::new();
        tiers.insert("metadata".into(), tier(20.0, 100.0, 200.0, 2_000));
        tiers.insert("analysis".into(), tier(200.0, 1_000.0, 2_000.0, 10_000));
        tiers.insert("data".into(), tier(100.0, 500.0, 1_000.0, 10_000));
        tiers.insert("compute".into(), tier(1_000.0, 5_000.0, 10_000.0, 60_000));
        tiers
    }

    /// The seed's tiers, and each operation in the tier the embedder gives it.
    pub fn with_tiers(op_tiers: &[(&str, &str)]) -> Self {
        let tools = op_tiers
            .iter()
            .map(|(op, t)| ((*op).to_string(), ToolObjectives { tier: Some((*t).to_string()), ..Default::default() }))
            .collect();
        Self {
            period_days: default_period(),
            min_requests: default_min_requests(),
            budget_alert_at: default_budget_alert(),
            tiers: Self::seed_tiers(),
            tools,
            window_scale: 1.0,
            resolution_secs: 60,
            patterns: Vec::new(),
            default_tier: None,
        }
    }

    /// The tier an operation gets from the patterns or the default tier (`None` when neither
    /// applies). Operations listed under `tools` are not looked at here.
    pub fn tier_by_pattern(&self, op: &str) -> Option<&str> {
        self.patterns
            .iter()
            .find(|p| glob_match(&p.pattern, op))
            .map(|p| p.tier.as_str())
            .or(self.default_tier.as_deref())
    }

    /// This config with an entry under `tools` for every operation in `ops` that is not listed
    /// by name but gets a tier from a pattern or the default tier. Call it once the operation
    /// names are known (e.g. a proxy's upstream tools); the result has the same objectives for
    /// listed tools and new ones for the others.
    pub fn resolve(&self, ops: &[&str]) -> SloConfig {
        let mut out = self.clone();
        for op in ops {
            if out.tools.contains_key(*op) {
                continue;
            }
            if let Some(tier) = self.tier_by_pattern(op) {
                out.tools
                    .insert((*op).to_string(), ToolObjectives { tier: Some(tier.to_string()), ..Default::default() });
            }
        }
        out
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

    /// Check the config: every tool's tier exists, objectives are in (0, 1), latency figures
    /// are positive and in order (p50 ≤ p95 ≤ p99), timeouts above zero.
    pub fn validate(&self) -> Result<(), String> {
        let figures = |what: &str, t: &Tier| {
            let ok = [t.p50_ms, t.p95_ms, t.p99_ms].iter().all(|v| v.is_finite() && *v > 0.0);
            if !(ok && t.p50_ms <= t.p95_ms && t.p95_ms <= t.p99_ms) {
                return Err(format!(
                    "{what}: p50_ms {}, p95_ms {}, p99_ms {} must be above 0 and in order (p50 ≤ p95 ≤ p99), e.g. 50, 200, 500",
                    t.p50_ms, t.p95_ms, t.p99_ms
                ));
            }
            if t.timeout_ms == 0 {
                return Err(format!("{what}: timeout_ms must be above 0, e.g. 5000"));
            }
            Ok(())
        };
        for (name, t) in &self.tiers {
            figures(&format!("tier {name}"), t)?;
        }
        for tool in self.tools.keys() {
            if let Some((_, t, _)) = self.figures(tool) {
                figures(&format!("tool {tool} (with its tier's figures)"), &t)?;
            }
        }
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
        let known = || self.tiers.keys().cloned().collect::<Vec<_>>().join(", ");
        for p in &self.patterns {
            if p.pattern.is_empty() || p.pattern.chars().count() > MAX_PATTERN_CHARS {
                return Err(format!(
                    "pattern '{}': a pattern needs 1 to {MAX_PATTERN_CHARS} characters, e.g. match = \"read_*\"",
                    p.pattern
                ));
            }
            if !self.tiers.contains_key(&p.tier) {
                return Err(format!("pattern '{}': no tier '{}'; tiers are {}", p.pattern, p.tier, known()));
            }
        }
        if let Some(t) = &self.default_tier
            && !self.tiers.contains_key(t)
        {
            return Err(format!("default_tier: no tier '{t}'; tiers are {}", known()));
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

/// Requests needed before the budget alert means anything: enough that the budget allows at
/// least ten bad requests (1,000 for 99 %, 10,000 for 99.9 %).
pub fn budget_min_requests(o: &Objective, min_requests: u64) -> u64 {
    ((10.0 / o.error_budget()).ceil() as u64).max(min_requests)
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
/// Metric, label and alert names come from `naming`. The result is a JSON value (print it as
/// YAML or JSON; both are valid rule files for Prometheus and promtool).
pub fn prometheus_rules(cfg: &SloConfig, runbook_base: &str, naming: &Naming) -> Value {
    let mut groups = Vec::new();
    let requests = naming.metric("tool_requests_total");
    let duration = naming.metric("tool_duration_seconds");
    let op = naming.op_label.as_str();
    for o in cfg.objectives() {
        let sel = format!("{op}=\"{}\"", o.tool);
        let mut labels = json!({"slo": o.name, "tier": o.tier});
        labels[op] = json!(o.tool);
        let mut rules = Vec::new();
        for w in WINDOWS {
            let r = cfg.range(w);
            let expr = match &o.indicator {
                Indicator::Availability => format!(
                    "(sum(rate({requests}{{{sel},outcome=~\"internal|timeout\"}}[{r}])) or vector(0)) / sum(rate({requests}{{{sel},outcome!=\"cancelled\"}}[{r}]))"
                ),
                Indicator::Latency { threshold_seconds } => format!(
                    "1 - (sum(rate({duration}_bucket{{{sel},le=\"{}\"}}[{r}])) / sum(rate({duration}_count{{{sel}}}[{r}])))",
                    prom_float(*threshold_seconds)
                ),
            };
            rules.push(json!({"record": format!("slo:sli_error:ratio_rate{w}"), "expr": expr, "labels": labels}));
            rules.push(json!({
                "record": format!("slo:requests:increase{w}"),
                "expr": format!("sum(increase({requests}{{{sel}}}[{r}]))"),
                "labels": labels,
            }));
        }
        rules.push(
            json!({"record": "slo:objective:ratio", "expr": format!("vector({})", prom_float(o.objective)), "labels": labels}),
        );
        rules.push(json!({"record": "slo:error_budget:ratio", "expr": format!("vector({})", prom_float(o.error_budget())), "labels": labels}));
        let period = cfg.period_window();
        let period_range = cfg.range(&period);
        rules.push(json!({
            "record": format!("slo:sli_error:ratio_rate{period}"),
            "expr": format!("avg_over_time(slo:sli_error:ratio_rate5m{{slo=\"{}\"}}[{period_range}])", o.name),
            "labels": labels,
        }));
        rules.push(json!({
            "record": format!("slo:requests:increase{period}"),
            "expr": format!("sum(increase({requests}{{{sel}}}[{period_range}]))"),
            "labels": labels,
        }));
        rules.push(json!({
            "record": "slo:error_budget_remaining:ratio",
            "expr": format!("1 - (slo:sli_error:ratio_rate{period}{{slo=\"{}\"}} / {})", o.name, prom_float(o.error_budget())),
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
            let alert = naming.alert(if severity == "page" { "SLOBurnRatePage" } else { "SLOBurnRateTicket" });
            let mut alert_labels = json!({"severity": severity, "slo": o.name, "tier": o.tier});
            alert_labels[op] = json!(o.tool);
            rules.push(json!({
                "alert": alert,
                "expr": conds.join(" or "),
                "labels": alert_labels,
                "annotations": {
                    "summary": format!("{} is spending its error budget too fast ({severity})", o.name),
                    "description": format!("Objective {} for {}: burn rate above the multi-window threshold.", prom_float(o.objective), o.tool),
                    "runbook_url": anchor,
                },
            }));
        }
        let mut budget_labels = json!({"severity": "ticket", "slo": o.name, "tier": o.tier});
        budget_labels[op] = json!(o.tool);
        rules.push(json!({
            "alert": naming.alert("SLOErrorBudgetLow"),
            "expr": format!(
                "(1 - slo:error_budget_remaining:ratio{{slo=\"{}\"}}) >= {} and slo:requests:increase{period}{{slo=\"{}\"}} >= {}",
                o.name,
                prom_float(cfg.budget_alert_at),
                o.name,
                budget_min_requests(&o, cfg.min_requests)
            ),
            "labels": budget_labels,
            "annotations": {
                "summary": format!("{} has spent {:.0}% of its error budget", o.name, cfg.budget_alert_at * 100.0),
                "description": "Error budget consumption over the SLO period crossed the alert threshold.",
                "runbook_url": format!("{runbook_base}#slo-error-budget-low"),
            },
        }));
        groups.push(
            json!({"name": format!("{}-slo-{}", naming.metric_prefix, o.name), "interval": "30s", "rules": rules}),
        );
    }
    json!({ "groups": groups })
}

/// A float as a person writes it in a rule file: rounded to 12 significant digits, so
/// `0.72` and not `0.7200000000000006`, no exponent, no trailing zeros.
pub fn prom_float(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".into();
    }
    let digits = 12 - 1 - v.abs().log10().floor() as i32;
    let s = format!("{:.*}", digits.clamp(0, 30) as usize, v);
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if s == "-0" { "0".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SloConfig {
        let mut c = SloConfig::with_tiers(&[("read", "data"), ("list", "metadata"), ("scan", "compute")]);
        if let Some(t) = c.tools.get_mut("read") {
            t.p95_ms = Some(200.0);
            t.timeout_ms = Some(5_000);
        }
        c
    }

    #[test]
    fn tiers_and_per_operation_figures() {
        let c = cfg();
        assert!(c.validate().is_ok());
        assert_eq!(c.timeout_ms("read"), Some(5_000));
        assert_eq!(c.timeout_ms("list"), Some(2_000));
        assert_eq!(c.timeout_ms("scan"), Some(60_000));
        let objs = c.objectives();
        let rt = objs.iter().find(|o| o.name == "read-latency").unwrap();
        assert_eq!(rt.indicator, Indicator::Latency { threshold_seconds: 0.2 });
        let av = objs.iter().find(|o| o.name == "read-availability").unwrap();
        assert!((av.error_budget() - 0.001).abs() < 1e-12);
    }

    #[test]
    fn globs_match_stars_and_single_characters() {
        assert!(glob_match("read_*", "read_table"));
        assert!(glob_match("read_*", "read_"));
        assert!(!glob_match("read_*", "range_values"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*_batch", "edit_batch"));
        assert!(glob_match("get-?um", "get-sum"));
        assert!(!glob_match("get-?um", "get-um"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("*trigger*", "trigger-long-running-operation"));
        assert!(glob_match("écho", "écho"), "characters, not bytes");
        assert!(!glob_match("echo", "echo2"));
        // Many stars against a long name that does not match: still quick.
        let long = "a".repeat(2_000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &long));
    }

    #[test]
    fn patterns_and_default_tier_resolve_unlisted_operations() {
        let text = r#"
default_tier = "analysis"
[[pattern]]
match = "read_*"
tier = "data"
[[pattern]]
match = "*"
tier = "metadata"
[tools.echo]
tier = "compute"
"#;
        let mut c: SloConfig = toml::from_str(text).unwrap();
        c.tiers = SloConfig::seed_tiers();
        assert!(c.validate().is_ok());
        let r = c.resolve(&["echo", "read_file", "list_things"]);
        let tier = |op: &str| r.tools.get(op).and_then(|o| o.tier.clone());
        assert_eq!(tier("echo").as_deref(), Some("compute"), "a tool listed by name keeps its own tier");
        assert_eq!(tier("read_file").as_deref(), Some("data"), "first matching pattern");
        assert_eq!(tier("list_things").as_deref(), Some("metadata"), "later pattern");
        assert_eq!(r.timeout_ms("read_file"), Some(10_000));
        assert_eq!(r.objectives().len(), 6);
        // Without the catch-all, the default tier applies; without either, no objectives.
        c.patterns.pop();
        assert_eq!(c.resolve(&["list_things"]).tools["list_things"].tier.as_deref(), Some("analysis"));
        c.default_tier = None;
        assert!(!c.resolve(&["list_things"]).tools.contains_key("list_things"));
    }

    #[test]
    fn patterns_are_validated() {
        let mut c = SloConfig::with_tiers(&[]);
        c.patterns.push(TierPattern { pattern: "read_*".into(), tier: "fast".into() });
        let e = c.validate().unwrap_err();
        assert!(e.contains("no tier 'fast'") && e.contains("metadata"), "{e}");
        c.patterns[0] = TierPattern { pattern: String::new(), tier: "data".into() };
        assert!(c.validate().unwrap_err().contains("1 to 200 characters"));
        c.patterns.clear();
        c.default_tier = Some("nope".into());
        assert!(c.validate().unwrap_err().contains("default_tier"));
        // Unknown keys in a pattern table are refused.
        let bad = "[[pattern]]\nmatch = \"a*\"\ntier = \"data\"\ntimeout = 3\n";
        assert!(toml::from_str::<SloConfig>(bad).is_err());
    }

    #[test]
    fn floats_read_as_people_write_them() {
        assert_eq!(prom_float(0.7200000000000006), "0.72");
        assert_eq!(prom_float(14.4 * 0.001), "0.0144");
        assert_eq!(prom_float(1.0 - 0.999), "0.001");
        assert_eq!(prom_float(0.2), "0.2");
        assert_eq!(prom_float(10.0), "10");
        assert_eq!(prom_float(0.0), "0");
        assert_eq!(prom_float(1e-7), "0.0000001");
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
        let naming = Naming { alert_prefix: "Svc".into(), op_label: "tool".into(), ..Naming::plain("svc") };
        let rules = prometheus_rules(&cfg(), "https://example.invalid/runbooks.md", &naming);
        let text = rules.to_string();
        for w in WINDOWS {
            assert!(text.contains(&format!("slo:sli_error:ratio_rate{w}")), "{w}");
        }
        assert!(text.contains("SvcSLOBurnRatePage") && text.contains("SvcSLOErrorBudgetLow"));
        assert!(text.contains("svc_tool_requests_total{tool=\\\"read\\\""), "metric and label names from the naming");
        assert!(text.contains("le=\\\"0.2\\\""), "read_table's p95 threshold is a bucket edge");
    }
}
