//! The experiments file as the embedder parses it (TOML, `[[experiment]]` tables; see
//! `docs/experiments.md`). Plain serde types with defaults; `plan::Plan::new` checks them against
//! the declared knobs and turns them into a validated plan. Unknown fields are refused, so a
//! typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::knob::KnobValue;

/// The whole file: `[[experiment]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentsConfig {
    #[serde(default, rename = "experiment")]
    pub experiments: Vec<ExperimentConfig>,
}

/// What kind of experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// On/off (or any two settings) for a share of units, with allow/deny lists; no decision.
    Flag,
    /// A/B(/n) test: fixed shares, a primary metric decided with significance, guards.
    Ab,
    /// Canary rollout: steps of the variant's share, advanced while guards hold, rolled back
    /// automatically when one breaks.
    Canary,
    /// Multi-armed bandit: shares follow Thompson sampling, exploration bounded.
    Bandit,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Flag => "flag",
            Kind::Ab => "ab",
            Kind::Canary => "canary",
            Kind::Bandit => "bandit",
        }
    }
}

/// What a unit of assignment is: one agent session, one key (workbook), or each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// One session sees one variant (the default).
    Session,
    /// One key (e.g. workbook) sees one variant, whoever asks; calls without a key get control.
    Key,
    /// Each call on its own: for performance knobs that need no per-session consistency, and for
    /// load tests that drive everything through one session.
    Request,
}

/// Which direction is better for a custom metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// One `[[experiment]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    pub name: String,
    pub kind: Kind,
    #[serde(default = "default_unit")]
    pub unit: Unit,
    /// A short note for reports (the hypothesis).
    #[serde(default)]
    pub description: String,
    /// Only observations of these operations count (empty: all).
    #[serde(default)]
    pub operations: Vec<String>,
    /// Variants; the first is control. `[[experiment.variant]]`.
    #[serde(default, rename = "variant")]
    pub variants: Vec<VariantConfig>,
    /// Shorthand for a flag: the knob to flip, the value when on (default `true`) and the share
    /// on (0..1). Expands to variants "off" (knob default) and "on".
    #[serde(default)]
    pub knob: Option<String>,
    #[serde(default)]
    pub on: Option<KnobValue>,
    #[serde(default)]
    pub share: Option<f64>,
    /// Sessions or keys always given the first non-control variant (not counted in statistics).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Sessions or keys always given control (not counted in statistics).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Significance level of each test (two-sided for the primary, one-sided for each guard).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Power each test is sized for.
    #[serde(default = "default_power")]
    pub power: f64,
    /// Looks planned per test (each look happens after another 1/looks of the planned sample).
    #[serde(default = "default_looks")]
    pub looks: usize,
    /// Samples each compared variant needs before any test looks.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    #[serde(default)]
    pub primary: Option<PrimaryConfig>,
    #[serde(default, rename = "guard")]
    pub guards: Vec<GuardConfig>,
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
    #[serde(default)]
    pub bandit: Option<BanditConfig>,
    /// Custom (business) metrics recorded with `Engine::record_metric`, by name.
    #[serde(default)]
    pub metrics: BTreeMap<String, CustomMetricConfig>,
}

/// One variant: a name and its knob settings (unset knobs keep their defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    pub name: String,
    #[serde(default)]
    pub knobs: BTreeMap<String, KnobValue>,
    /// Share of units (A/B). Default: an equal split. Canary and bandit set shares themselves.
    #[serde(default)]
    pub share: Option<f64>,
}

/// The metric an A/B test decides on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimaryConfig {
    /// latency | error_ratio | server_error_ratio | cache_hit_ratio | response_bytes | a custom metric.
    pub metric: String,
    /// Minimum detectable effect the test is sized for: relative for latency and response bytes
    /// (0.10 = 10 %), absolute for ratios (0.01 = one point), in the metric's units for custom ones.
    pub mde: f64,
}

/// A guard: the variant must not be worse than control on this metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// latency | error_ratio | server_error_ratio | cache_hit_ratio | response_bytes | slo_burn |
    /// a custom metric.
    pub metric: String,
    /// Tolerated worsening (relative for latency/bytes, absolute for ratios, custom units).
    /// The guard breaks when the variant is worse than control by more than this, with
    /// significance. For `slo_burn`: the burn rate tolerated (e.g. 2.0).
    #[serde(default)]
    pub max_worse: f64,
    /// The worst case the guard is sized to catch with the experiment's power (e.g. 0.5 = 50 %
    /// slower); must exceed `max_worse`. For `slo_burn`: a burn rate (e.g. 10.0).
    pub detect: f64,
    /// Immediate rollback, without waiting for significance, when the variant is this many times
    /// worse than control (error ratios: variant ratio ≥ gross × max(control ratio, 1 %);
    /// latency: geometric-mean ratio ≥ gross) once it has `gross_min_samples`.
    #[serde(default)]
    pub gross: Option<f64>,
    #[serde(default = "default_gross_min")]
    pub gross_min_samples: u64,
    /// For `slo_burn`: the SLO objective (e.g. 0.99) and optional latency threshold: a call is
    /// bad when it errs or is slower than this.
    #[serde(default)]
    pub objective: Option<f64>,
    #[serde(default)]
    pub latency_ms: Option<f64>,
}

/// Canary steps: the variant's share at each step (fractions; the last must be 1.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    #[serde(default = "default_steps")]
    pub steps: Vec<f64>,
    /// Variant samples each step needs before it may advance.
    #[serde(default = "default_step_samples")]
    pub min_samples_per_step: u64,
}

/// The bandit's reward and exploration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanditConfig {
    /// cache_hit (binary) | success (1 − error, binary) | latency (−ln latency) | a custom metric
    /// (higher is better).
    pub reward: String,
    /// Subtract `cost_per_unit × value of this knob` from each arm's reward (e.g. memory).
    #[serde(default)]
    pub cost_knob: Option<String>,
    #[serde(default)]
    pub cost_per_unit: f64,
    /// Largest share of traffic for all non-leading arms together after warm-up.
    #[serde(default = "default_explore")]
    pub max_explore: f64,
    /// Smallest share any arm keeps after warm-up, so it keeps learning.
    #[serde(default = "default_min_share")]
    pub min_share: f64,
    /// Samples every arm gets at equal shares before the bandit steers.
    #[serde(default = "default_warmup")]
    pub warmup: u64,
    /// Seed of the Thompson draws (default: from the name), for reproducible allocations.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// A custom metric: which way is better, and whether to compare it on a log scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomMetricConfig {
    pub better: Better,
    /// Compare ln(value) (relative effects, for positive skewed values).
    #[serde(default)]
    pub log: bool,
    /// Standard deviation assumed for power analysis before data arrive.
    #[serde(default)]
    pub assumed_sd: Option<f64>,
}

fn default_unit() -> Unit {
    Unit::Session
}
fn default_alpha() -> f64 {
    0.05
}
fn default_power() -> f64 {
    0.8
}
fn default_looks() -> usize {
    10
}
fn default_min_samples() -> u64 {
    30
}
fn default_gross_min() -> u64 {
    20
}
fn default_steps() -> Vec<f64> {
    vec![0.01, 0.05, 0.25, 1.0]
}
fn default_step_samples() -> u64 {
    200
}
fn default_explore() -> f64 {
    0.1
}
fn default_min_share() -> f64 {
    0.01
}
fn default_warmup() -> u64 {
    100
}
