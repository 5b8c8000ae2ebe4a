//! Validation: the parsed config checked against the embedder's knobs and turned into a `Plan`
//! (names resolved to indices, shares filled in, flags expanded). Every problem is reported at
//! once, each saying which experiment, what was wrong and what to write instead.

// Checks are written `!(x > 0.0)` on purpose: NaN from a config fails them.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use std::collections::{HashMap, HashSet};

use super::assign::fnv1a64;
use super::config::{BanditConfig, CanaryConfig, CustomMetricConfig, ExperimentConfig, ExperimentsConfig, Kind, Unit};
use super::knob::{KnobSpec, KnobValue};

/// Most experiments in one file, variants per experiment, looks per test: bounds on memory and
/// on the work `evaluate` does.
pub const MAX_EXPERIMENTS: usize = 64;
pub const MAX_VARIANTS: usize = 16;
pub const MAX_LOOKS: usize = 50;
const MAX_LIST: usize = 10_000;

/// Configuration problems, all of them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("the declared knobs are inconsistent: {0}")]
    Knobs(String),
    #[error("{} problem(s) in the experiments config:\n  - {}", .0.len(), .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// A metric compared between variants.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// Mean log-latency (a geometric-mean ratio; the p95 ratio when a variant scales latency).
    Latency,
    ErrorRatio,
    ServerErrorRatio,
    CacheHitRatio,
    /// Mean ln(1 + bytes).
    ResponseBytes,
    /// The variant's own SLO burn rate: bad calls (errors, or slower than the threshold) over
    /// the error budget (1 − objective).
    SloBurn {
        objective: f64,
        latency_us: Option<u64>,
    },
    /// A custom metric: index into the experiment's `custom`.
    Custom(usize),
}

impl Metric {
    /// The metric's name as in the config and the JSON.
    pub fn name<'a>(&self, plan: &'a ExperimentPlan) -> &'a str {
        match self {
            Metric::Latency => "latency",
            Metric::ErrorRatio => "error_ratio",
            Metric::ServerErrorRatio => "server_error_ratio",
            Metric::CacheHitRatio => "cache_hit_ratio",
            Metric::ResponseBytes => "response_bytes",
            Metric::SloBurn { .. } => "slo_burn",
            Metric::Custom(i) => plan.custom.get(*i).map_or("custom", |c| c.0.as_str()),
        }
    }
}

/// A validated variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantPlan {
    pub name: String,
    /// (knob index, value), values already checked and coerced.
    pub settings: Vec<(usize, KnobValue)>,
    /// Configured share (A/B, flag); canary and bandit shares are live state.
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrimaryPlan {
    pub metric: Metric,
    pub mde: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GuardPlan {
    pub metric: Metric,
    pub max_worse: f64,
    pub detect: f64,
    pub gross: Option<f64>,
    pub gross_min_samples: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BanditPlan {
    pub reward: Metric,
    /// Cost subtracted from each arm's reward (cost_per_unit × the arm's cost knob value).
    pub cost: Vec<f64>,
    pub max_explore: f64,
    pub min_share: f64,
    pub warmup: u64,
    pub seed: u64,
}

/// One validated experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentPlan {
    pub name: String,
    pub kind: Kind,
    pub unit: Unit,
    pub description: String,
    /// Per-experiment hash salt, so experiments split independently.
    pub salt: u64,
    pub operations: Vec<String>,
    pub variants: Vec<VariantPlan>,
    pub allow: HashSet<String>,
    pub deny: HashSet<String>,
    pub alpha: f64,
    pub power: f64,
    pub looks: usize,
    pub min_samples: u64,
    pub primary: Option<PrimaryPlan>,
    pub guards: Vec<GuardPlan>,
    pub canary: Option<CanaryConfig>,
    pub bandit: Option<BanditPlan>,
    pub custom: Vec<(String, CustomMetricConfig)>,
    /// Hash of everything that shapes the data; saved state with another fingerprint is stale.
    pub fingerprint: String,
}

impl ExperimentPlan {
    /// Whether an observation of this operation counts.
    pub fn counts(&self, operation: &str) -> bool {
        self.operations.is_empty() || self.operations.iter().any(|o| o == operation)
    }

    /// Latency thresholds of SLO-burn guards (bad-call counting needs them at record time).
    pub fn slo_thresholds(&self) -> Vec<Option<u64>> {
        self.guards
            .iter()
            .filter_map(|g| match g.metric {
                Metric::SloBurn { latency_us, .. } => Some(latency_us),
                _ => None,
            })
            .collect()
    }
}

/// The validated set: the knobs and the experiments.
#[derive(Debug, Clone)]
pub struct Plan {
    pub knobs: Vec<KnobSpec>,
    pub knob_index: HashMap<String, usize>,
    pub experiments: Vec<ExperimentPlan>,
}

impl Plan {
    /// Validates `config` against the declared `knobs`.
    pub fn new(knobs: Vec<KnobSpec>, config: &ExperimentsConfig) -> Result<Self, ConfigError> {
        let mut knob_index = HashMap::new();
        for (i, k) in knobs.iter().enumerate() {
            if knob_index.insert(k.name.clone(), i).is_some() {
                return Err(ConfigError::Knobs(format!("knob '{}' is declared twice", k.name)));
            }
            k.check(&k.default).map_err(|e| ConfigError::Knobs(format!("default of {e}")))?;
        }
        let mut errors = Vec::new();
        if config.experiments.len() > MAX_EXPERIMENTS {
            errors.push(format!(
                "{} experiments; at most {MAX_EXPERIMENTS} run at once — remove finished ones",
                config.experiments.len()
            ));
        }
        let mut experiments = Vec::new();
        let mut names = HashSet::new();
        let mut knob_owner: HashMap<usize, String> = HashMap::new();
        for e in config.experiments.iter().take(MAX_EXPERIMENTS) {
            let mut errs = Vec::new();
            if !names.insert(e.name.clone()) {
                errs.push("the name is used twice; experiment names must be unique".to_string());
            }
            if let Some(p) = validate(e, &knobs, &knob_index, &mut errs) {
                for v in &p.variants {
                    for (k, _) in &v.settings {
                        if let Some(other) = knob_owner.get(k)
                            && *other != p.name
                        {
                            errs.push(format!(
                                "knob '{}' is also set by experiment '{other}'; a knob may be in one experiment at a \
                                 time — remove the finished one",
                                knobs[*k].name
                            ));
                        }
                    }
                }
                for v in &p.variants {
                    for (k, _) in &v.settings {
                        knob_owner.insert(*k, p.name.clone());
                    }
                }
                if errs.is_empty() {
                    experiments.push(p);
                }
            }
            let label = if e.name.is_empty() { "(unnamed)" } else { e.name.as_str() };
            errors.extend(errs.into_iter().map(|m| format!("experiment '{label}': {m}")));
        }
        if errors.is_empty() { Ok(Self { knobs, knob_index, experiments }) } else { Err(ConfigError::Invalid(errors)) }
    }
}

fn parse_metric(name: &str, custom: &[(String, CustomMetricConfig)], errs: &mut Vec<String>) -> Option<Metric> {
    Some(match name {
        "latency" => Metric::Latency,
        "error_ratio" => Metric::ErrorRatio,
        "server_error_ratio" => Metric::ServerErrorRatio,
        "cache_hit_ratio" => Metric::CacheHitRatio,
        "response_bytes" => Metric::ResponseBytes,
        other => match custom.iter().position(|c| c.0 == other) {
            Some(i) => Metric::Custom(i),
            None => {
                errs.push(format!(
                    "unknown metric '{other}'; use latency, error_ratio, server_error_ratio, cache_hit_ratio, \
                     response_bytes, slo_burn (guards), or declare it under [experiment.metrics]"
                ));
                return None;
            }
        },
    })
}

fn in_unit(x: f64) -> bool {
    x > 0.0 && x < 1.0
}

fn validate(
    e: &ExperimentConfig,
    knobs: &[KnobSpec],
    index: &HashMap<String, usize>,
    errs: &mut Vec<String>,
) -> Option<ExperimentPlan> {
    if e.name.is_empty()
        || e.name.len() > 64
        || !e.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errs.push("name must be 1–64 characters of letters, digits, '-', '_' or '.'".into());
    }
    if !in_unit(e.alpha) || e.alpha > 0.5 {
        errs.push(format!("alpha must be in (0, 0.5], got {}", e.alpha));
    }
    if !in_unit(e.power) || e.power <= e.alpha {
        errs.push(format!("power must be in (alpha, 1), got {}", e.power));
    }
    if e.looks == 0 || e.looks > MAX_LOOKS {
        errs.push(format!("looks must be within 1..={MAX_LOOKS}, got {}", e.looks));
    }
    if e.min_samples < 2 {
        errs.push(format!("min_samples must be at least 2, got {}", e.min_samples));
    }
    if e.allow.len() + e.deny.len() > MAX_LIST {
        errs.push(format!("allow and deny lists hold at most {MAX_LIST} entries together"));
    }
    let custom: Vec<(String, CustomMetricConfig)> = e.metrics.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (name, c) in &custom {
        if matches!(
            name.as_str(),
            "latency" | "error_ratio" | "server_error_ratio" | "cache_hit_ratio" | "response_bytes" | "slo_burn"
        ) {
            errs.push(format!("custom metric '{name}' has a built-in metric's name; rename it"));
        }
        if let Some(sd) = c.assumed_sd
            && !(sd > 0.0 && sd.is_finite())
        {
            errs.push(format!("metric '{name}': assumed_sd must be positive"));
        }
    }

    // Variants, with the flag shorthand expanded.
    let mut raw = e.variants.clone();
    if let Some(knob) = &e.knob {
        if e.kind != Kind::Flag {
            errs.push("`knob`/`on` are the flag shorthand; other kinds list [[experiment.variant]]".into());
        } else if !raw.is_empty() {
            errs.push("give either the flag shorthand (knob, on, share) or variants, not both".into());
        } else {
            let on = e.on.clone().unwrap_or(KnobValue::Bool(true));
            let share = e.share.unwrap_or(0.0);
            raw = vec![
                super::config::VariantConfig {
                    name: "off".into(),
                    knobs: Default::default(),
                    share: Some(1.0 - share),
                },
                super::config::VariantConfig {
                    name: "on".into(),
                    knobs: [(knob.clone(), on)].into_iter().collect(),
                    share: Some(share),
                },
            ];
            if !(0.0..=1.0).contains(&share) {
                errs.push(format!("share is a fraction of units in 0..=1 (5 % is 0.05), got {share}"));
            }
        }
    } else if e.kind == Kind::Flag && e.share.is_some() && raw.len() == 2 {
        let s = e.share.unwrap_or(0.0);
        raw[0].share = Some(1.0 - s);
        raw[1].share = Some(s);
    }
    if raw.len() < 2 {
        errs.push(format!(
            "needs at least 2 variants (the first is control), got {}; add [[experiment.variant]] tables",
            raw.len()
        ));
        return None;
    }
    if raw.len() > MAX_VARIANTS {
        errs.push(format!("at most {MAX_VARIANTS} variants, got {}", raw.len()));
        return None;
    }
    if matches!(e.kind, Kind::Canary | Kind::Flag) && raw.len() != 2 {
        errs.push(format!(
            "a {} has exactly 2 variants (control, then the change), got {}",
            e.kind.as_str(),
            raw.len()
        ));
    }
    let mut seen = HashSet::new();
    let mut variants = Vec::new();
    for v in &raw {
        if v.name.is_empty() || !seen.insert(v.name.clone()) {
            errs.push(format!("variant names must be non-empty and unique ('{}')", v.name));
        }
        let mut settings = Vec::new();
        for (k, val) in &v.knobs {
            match index.get(k) {
                None => {
                    let mut known: Vec<&str> = knobs.iter().map(|k| k.name.as_str()).collect();
                    known.sort_unstable();
                    errs.push(format!("variant '{}': unknown knob '{k}'; known knobs: {}", v.name, known.join(", ")));
                }
                Some(&i) => match knobs[i].check(val) {
                    Ok(checked) => settings.push((i, checked)),
                    Err(m) => errs.push(format!("variant '{}': {m}", v.name)),
                },
            }
        }
        variants.push(VariantPlan { name: v.name.clone(), settings, share: v.share.unwrap_or(f64::NAN) });
    }
    if variants.len() >= 2 && variants.iter().skip(1).all(|v| v.settings == variants[0].settings) && e.kind != Kind::Ab
    {
        errs.push("every variant has the same settings as control; nothing would change".into());
    }

    // Shares.
    match e.kind {
        Kind::Ab | Kind::Flag => {
            let given = raw.iter().filter(|v| v.share.is_some()).count();
            if given == 0 {
                let s = 1.0 / variants.len() as f64;
                variants.iter_mut().for_each(|v| v.share = s);
            } else if given != variants.len() {
                errs.push("give a share to every variant or to none (an equal split)".into());
            } else {
                let sum: f64 = variants.iter().map(|v| v.share).sum();
                if variants.iter().any(|v| !(0.0..=1.0).contains(&v.share)) {
                    errs.push("shares are fractions in 0..=1 (5 % is 0.05)".into());
                } else if (sum - 1.0).abs() > 1e-6 {
                    errs.push(format!("shares must sum to 1, they sum to {sum}"));
                }
            }
        }
        Kind::Canary | Kind::Bandit => {
            if raw.iter().any(|v| v.share.is_some()) {
                errs.push(format!("a {} sets its shares itself; remove `share` from the variants", e.kind.as_str()));
            }
            variants.iter_mut().for_each(|v| v.share = 0.0);
        }
    }

    let primary = match (&e.primary, e.kind) {
        (None, Kind::Ab) => {
            errs.push("an A/B test needs [experiment.primary] with metric and mde".into());
            None
        }
        (Some(p), _) => {
            let m = parse_metric(&p.metric, &custom, errs);
            if !(p.mde > 0.0 && p.mde.is_finite()) {
                errs.push(format!("primary mde must be positive, got {}", p.mde));
            }
            if matches!(m, Some(Metric::Latency | Metric::ResponseBytes)) && p.mde >= 1.0 {
                errs.push(format!("primary mde is relative for {} (0.10 = 10 %), got {}", p.metric, p.mde));
            }
            m.map(|metric| PrimaryPlan { metric, mde: p.mde })
        }
        (None, _) => None,
    };

    let mut guards = Vec::new();
    for g in &e.guards {
        let metric = if g.metric == "slo_burn" {
            let objective = g.objective.unwrap_or(f64::NAN);
            if !in_unit(objective) {
                errs.push("an slo_burn guard needs objective in (0, 1), e.g. 0.99".into());
                continue;
            }
            if !(g.max_worse > 0.0) || !(g.detect * (1.0 - objective) < 1.0) {
                errs.push(
                    "slo_burn: max_worse is the tolerated burn rate (> 0, e.g. 2.0) and detect the burn rate to \
                     catch, with detect × (1 − objective) < 1"
                        .into(),
                );
            }
            let latency_us = match g.latency_ms {
                Some(ms) if ms > 0.0 && ms.is_finite() => Some((ms * 1000.0) as u64),
                Some(ms) => {
                    errs.push(format!("slo_burn latency_ms must be positive, got {ms}"));
                    None
                }
                None => None,
            };
            Metric::SloBurn { objective, latency_us }
        } else {
            match parse_metric(&g.metric, &custom, errs) {
                Some(m) => m,
                None => continue,
            }
        };
        if !(g.max_worse >= 0.0) || !(g.detect > g.max_worse) || !g.detect.is_finite() {
            errs.push(format!(
                "guard '{}': detect ({}) must exceed max_worse ({}) — the test is sized to catch the worst case",
                g.metric, g.detect, g.max_worse
            ));
        }
        if matches!(metric, Metric::ErrorRatio | Metric::ServerErrorRatio | Metric::CacheHitRatio) && g.detect >= 1.0 {
            errs.push(format!("guard '{}': ratios are compared in absolute points (0.05 = 5 points)", g.metric));
        }
        if let Some(x) = g.gross
            && !(x > 1.0)
        {
            errs.push(format!("guard '{}': gross is a factor above 1 (e.g. 10), got {x}", g.metric));
        }
        let gross = g.gross.or(match metric {
            Metric::ErrorRatio | Metric::ServerErrorRatio => Some(10.0),
            _ => None,
        });
        guards.push(GuardPlan {
            metric,
            max_worse: g.max_worse,
            detect: g.detect,
            gross,
            gross_min_samples: g.gross_min_samples.max(1),
        });
    }
    if e.kind == Kind::Canary && guards.is_empty() {
        errs.push("a canary needs at least one [[experiment.guard]] to decide on rollback".into());
    }
    if e.kind == Kind::Bandit && !guards.is_empty() {
        errs.push("a bandit has no guards; it steers by its reward".into());
    }

    let canary = match e.kind {
        Kind::Canary => {
            let c = e
                .canary
                .clone()
                .unwrap_or(CanaryConfig { steps: vec![0.01, 0.05, 0.25, 1.0], min_samples_per_step: 200 });
            if c.steps.is_empty()
                || c.steps.windows(2).any(|w| !(w[1] > w[0]))
                || c.steps.iter().any(|s| !(*s > 0.0 && *s <= 1.0))
                || c.steps.last() != Some(&1.0)
            {
                errs.push(format!(
                    "canary steps must increase within (0, 1] and end at 1.0 (1 % → 5 % → 25 % → 100 % is \
                     [0.01, 0.05, 0.25, 1.0]), got {:?}",
                    c.steps
                ));
            }
            if c.steps.len() > 20 {
                errs.push("a canary has at most 20 steps".into());
            }
            Some(c)
        }
        _ => {
            if e.canary.is_some() {
                errs.push("[experiment.canary] belongs to kind = \"canary\"".into());
            }
            None
        }
    };

    let bandit = match (e.kind, &e.bandit) {
        (Kind::Bandit, None) => {
            errs.push("a bandit needs [experiment.bandit] with a reward".into());
            None
        }
        (Kind::Bandit, Some(b)) => validate_bandit(b, &custom, knobs, index, &variants, &e.name, errs),
        (_, Some(_)) => {
            errs.push("[experiment.bandit] belongs to kind = \"bandit\"".into());
            None
        }
        _ => None,
    };

    if !e.allow.is_empty() && e.kind == Kind::Bandit {
        errs.push("a bandit takes no allow list (it has no single treatment)".into());
    }
    if let Some(both) = e.allow.iter().find(|a| e.deny.contains(a)) {
        errs.push(format!("'{both}' is on both the allow and the deny list"));
    }

    // The fingerprint ignores the description, so editing notes keeps the collected data.
    let mut shaped = e.clone();
    shaped.description.clear();
    let fingerprint = format!("{:016x}", fnv1a64(serde_json::to_string(&shaped).unwrap_or_default().as_bytes()));
    Some(ExperimentPlan {
        name: e.name.clone(),
        kind: e.kind,
        unit: e.unit,
        description: e.description.clone(),
        salt: fnv1a64(e.name.as_bytes()),
        operations: e.operations.clone(),
        variants,
        allow: e.allow.iter().cloned().collect(),
        deny: e.deny.iter().cloned().collect(),
        alpha: e.alpha,
        power: e.power,
        looks: e.looks.clamp(1, MAX_LOOKS),
        min_samples: e.min_samples.max(2),
        primary,
        guards,
        canary,
        bandit,
        custom,
        fingerprint,
    })
}

fn validate_bandit(
    b: &BanditConfig,
    custom: &[(String, CustomMetricConfig)],
    knobs: &[KnobSpec],
    index: &HashMap<String, usize>,
    variants: &[VariantPlan],
    name: &str,
    errs: &mut Vec<String>,
) -> Option<BanditPlan> {
    let reward = match b.reward.as_str() {
        "cache_hit" => Metric::CacheHitRatio,
        "success" => Metric::ErrorRatio,
        "latency" => Metric::Latency,
        other => match custom.iter().position(|c| c.0 == other) {
            Some(i) => Metric::Custom(i),
            None => {
                errs.push(format!(
                    "bandit reward '{other}' is not cache_hit, success, latency or a declared custom metric"
                ));
                return None;
            }
        },
    };
    if !in_unit(b.max_explore) || b.max_explore > 0.5 {
        errs.push(format!("bandit max_explore must be in (0, 0.5], got {}", b.max_explore));
    }
    let others = variants.len().saturating_sub(1) as f64;
    if !(b.min_share >= 0.0) || b.min_share * others > b.max_explore {
        errs.push(format!(
            "bandit min_share × (arms − 1) = {} exceeds max_explore {}; lower min_share",
            b.min_share * others,
            b.max_explore
        ));
    }
    if !b.cost_per_unit.is_finite() {
        errs.push("bandit cost_per_unit must be finite".into());
    }
    let mut cost = vec![0.0; variants.len()];
    if let Some(k) = &b.cost_knob {
        match index.get(k) {
            None => errs.push(format!("bandit cost_knob '{k}' is not a declared knob")),
            Some(&i) => {
                for (c, v) in cost.iter_mut().zip(variants) {
                    let value = v.settings.iter().find(|s| s.0 == i).map_or(&knobs[i].default, |s| &s.1);
                    match value.as_f64() {
                        Some(x) => *c = b.cost_per_unit * x,
                        None => errs.push(format!("bandit cost_knob '{k}' must be numeric")),
                    }
                }
            }
        }
    }
    Some(BanditPlan {
        reward,
        cost,
        max_explore: b.max_explore,
        min_share: b.min_share,
        warmup: b.warmup.max(1),
        seed: b.seed.unwrap_or_else(|| fnv1a64(name.as_bytes())),
    })
}
