//! The experiment engine: assignment on the hot path (a read lock and a hash per experiment),
//! recording into per-variant accumulators, and `evaluate`, which the embedder calls every few
//! seconds to run the tests and move experiments along (canary steps, rollbacks, A/B decisions,
//! bandit shares, freezing while an SLO's error budget is exhausted).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::accum::{Observation, VariantStats};
use super::assign::{Assignment, Pick, fnv1a64, pick_by_share, position};
use super::bandit::{Allocation, allocate};
use super::compare::worse_sign;
use super::config::{ExperimentsConfig, Kind, Unit};
use super::knob::KnobSpec;
use super::monitor::{Monitor, SavedTest, TestStatus};
use super::plan::{ConfigError, ExperimentPlan, GuardPlan, Metric, Plan};
use crate::event::AlertEvent;
use crate::stats::random::Rng;

/// An experiment's lifecycle state (frozen is a flag on top of running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    RolledBack,
    Completed,
}

/// What changed at an `evaluate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    StepAdvanced,
    RolledBack,
    Completed,
    LeaderChanged,
    Frozen,
    Unfrozen,
}

/// A change to log and deliver as an alert; `message` is for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub experiment: String,
    pub kind: TransitionKind,
    pub at_secs: u64,
    /// "ticket" for rollbacks, "info" otherwise.
    pub severity: String,
    pub message: String,
}

impl Transition {
    /// The alert to deliver through `alerts::deliver` (rollbacks fire; freezing fires and
    /// unfreezing resolves an info alert), named by `naming`; None for routine progress.
    pub fn alert_event(&self, naming: &crate::naming::Naming) -> Option<AlertEvent> {
        let (alert, status) = match self.kind {
            TransitionKind::RolledBack => ("ExperimentRolledBack", "firing"),
            TransitionKind::Frozen => ("ExperimentsFrozen", "firing"),
            TransitionKind::Unfrozen => ("ExperimentsFrozen", "resolved"),
            _ => return None,
        };
        Some(AlertEvent {
            alert: naming.alert(alert),
            slo: String::new(),
            tool: String::new(),
            severity: self.severity.clone(),
            status: status.into(),
            at_secs: self.at_secs,
            summary: self.message.clone(),
            runbook: "docs/experiments.md#when-a-canary-rolls-back".into(),
        })
    }
}

/// How calls are routed now (read on every `assign`).
#[derive(Debug, Clone)]
struct Routing {
    /// Randomizing and counting; otherwise everyone gets `fixed` and nothing is recorded.
    active: bool,
    fixed: usize,
    shares: Vec<f64>,
    order: Vec<usize>,
}

/// The mutable analysis state of one experiment (what is persisted, plus the tests).
#[derive(Debug, Clone)]
struct Control {
    state: State,
    frozen: bool,
    step: usize,
    /// Variant samples when the current canary step began.
    step_base: u64,
    /// Bandit shares (other kinds route by plan or step).
    shares: Vec<f64>,
    decision: Option<String>,
    winner: Option<usize>,
    monitors: Vec<Monitor>,
    rng: Rng,
    leader: Option<usize>,
    prob_best: Vec<f64>,
    started_secs: Option<u64>,
    updated_secs: u64,
}

struct Run {
    routing: RwLock<Routing>,
    stats: Vec<Mutex<VariantStats>>,
    control: Mutex<Control>,
    slo_thresholds: Vec<Option<u64>>,
}

/// Persisted form of one experiment (see `persist`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentState {
    pub state: State,
    pub frozen: bool,
    pub step: usize,
    pub step_base: u64,
    pub shares: Vec<f64>,
    pub decision: Option<String>,
    pub winner: Option<usize>,
    pub tests: Vec<SavedTest>,
    pub rng: Rng,
    pub leader: Option<usize>,
    pub prob_best: Vec<f64>,
    pub started_secs: Option<u64>,
    pub updated_secs: u64,
    pub stats: Vec<VariantStats>,
}

/// One experiment as saved: name, the config fingerprint it was collected under, its state and
/// its last status JSON (for `gemba experiment status` without a server).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedExperiment {
    pub name: String,
    pub fingerprint: String,
    pub state: ExperimentState,
    pub status: serde_json::Value,
}

/// The engine. Share it as `Arc<Engine>`; every method takes `&self`.
pub struct Engine {
    plan: Arc<Plan>,
    runs: Vec<Run>,
    requests: AtomicU64,
}

fn monitors_for(p: &ExperimentPlan) -> Vec<Monitor> {
    let mut out = Vec::new();
    if p.kind == Kind::Bandit {
        return out;
    }
    for v in 1..p.variants.len() {
        if p.primary.is_some() {
            out.push(Monitor::new(p, v, None));
        }
        for g in 0..p.guards.len() {
            out.push(Monitor::new(p, v, Some(g)));
        }
    }
    out
}

fn routing_for(p: &ExperimentPlan, c: &Control) -> Routing {
    let n = p.variants.len();
    let fixed = |v: usize| Routing { active: false, fixed: v, shares: vec![], order: vec![] };
    if c.frozen || c.state == State::RolledBack {
        return fixed(0);
    }
    if c.state == State::Completed {
        return match p.kind {
            Kind::Canary => fixed(1),
            Kind::Ab => fixed(c.winner.unwrap_or(0)),
            _ => fixed(0),
        };
    }
    let (shares, order): (Vec<f64>, Vec<usize>) = match p.kind {
        Kind::Ab | Kind::Flag => (p.variants.iter().map(|v| v.share).collect(), (0..n).collect()),
        Kind::Canary => {
            let s = p.canary.as_ref().and_then(|c2| c2.steps.get(c.step)).copied().unwrap_or(0.0);
            (vec![1.0 - s, s], vec![1, 0])
        }
        Kind::Bandit => (c.shares.clone(), (0..n).collect()),
    };
    Routing { active: true, fixed: 0, shares, order }
}

fn pct(x: f64) -> String {
    format!("{:+.1} %", x * 100.0)
}

/// Describes a guard's evidence for a message.
fn guard_evidence(plan: &ExperimentPlan, m: &Monitor) -> String {
    let r = &m.report;
    let effect = r.effect.map_or("n/a".to_string(), |e| effect_text(plan, &r.metric, e));
    let ci = r.ci.map_or(String::new(), |(lo, hi)| {
        format!(", CI {} to {}", effect_text(plan, &r.metric, lo), effect_text(plan, &r.metric, hi))
    });
    let how = if r.gross {
        "grossly worse".to_string()
    } else {
        format!(
            "z {:.2} ≥ boundary {:.2} at {:.0} % information",
            r.z.unwrap_or(0.0),
            r.bound.unwrap_or(0.0),
            r.information * 100.0
        )
    };
    let predicted = r.predicted_samples.map_or(String::new(), |p| format!(" (predicted {p})"));
    format!(
        "{} {effect}{ci}; {how}; {} variant samples{predicted}, {} control",
        r.metric, r.variant_samples, r.control_samples
    )
}

fn effect_text(plan: &ExperimentPlan, metric: &str, e: f64) -> String {
    match metric {
        "latency" | "response_bytes" => pct(e),
        "slo_burn" => format!("burn {e:.2}x"),
        "error_ratio" | "server_error_ratio" | "cache_hit_ratio" => format!("{:+.2} points", e * 100.0),
        other if plan.custom.iter().any(|c| c.0 == other && c.1.log) => pct(e),
        _ => format!("{e:+.4}"),
    }
}

/// The gross rule: a variant many times worse than control is rolled back without waiting.
fn gross_break(g: &GuardPlan, c: &VariantStats, t: &VariantStats) -> bool {
    let Some(factor) = g.gross else { return false };
    if t.samples < g.gross_min_samples {
        return false;
    }
    match g.metric {
        Metric::ErrorRatio | Metric::ServerErrorRatio => {
            let (xt, xc) =
                if g.metric == Metric::ErrorRatio { (t.errors, c.errors) } else { (t.server_errors, c.server_errors) };
            let pt = xt as f64 / t.samples as f64;
            let pc = if c.samples > 0 { xc as f64 / c.samples as f64 } else { 0.0 };
            xt >= 3 && pt >= factor * pc.max(0.01)
        }
        Metric::CacheHitRatio => {
            let (Some(ht), Some(hc)) = (t.cache_hit_ratio(), c.cache_hit_ratio()) else { return false };
            t.cache_lookups >= g.gross_min_samples && (1.0 - ht) >= factor * (1.0 - hc).max(0.01)
        }
        Metric::Latency => {
            c.log_latency.n >= g.gross_min_samples && (t.log_latency.mean - c.log_latency.mean).exp() >= factor
        }
        Metric::ResponseBytes => {
            c.log_bytes.n >= g.gross_min_samples && (t.log_bytes.mean - c.log_bytes.mean).exp() >= factor
        }
        Metric::SloBurn { objective, .. } => {
            let bad = t.slo_bad.iter().copied().max().unwrap_or(0);
            bad as f64 / t.samples as f64 / (1.0 - objective) >= factor * g.max_worse
        }
        Metric::Custom(_) => false,
    }
}

impl Engine {
    /// Validates the config against the declared knobs and sets every experiment running.
    pub fn new(knobs: Vec<KnobSpec>, config: &ExperimentsConfig) -> Result<Self, ConfigError> {
        let plan = Arc::new(Plan::new(knobs, config)?);
        let runs = plan
            .experiments
            .iter()
            .map(|p| {
                let control = Control {
                    state: State::Running,
                    frozen: false,
                    step: 0,
                    step_base: 0,
                    shares: vec![1.0 / p.variants.len() as f64; p.variants.len()],
                    decision: None,
                    winner: None,
                    monitors: monitors_for(p),
                    rng: Rng::new(p.bandit.as_ref().map_or(p.salt, |b| b.seed)),
                    leader: None,
                    prob_best: vec![],
                    started_secs: None,
                    updated_secs: 0,
                };
                Run {
                    routing: RwLock::new(routing_for(p, &control)),
                    stats: p.variants.iter().map(|_| Mutex::new(VariantStats::default())).collect(),
                    control: Mutex::new(control),
                    slo_thresholds: p.slo_thresholds(),
                }
            })
            .collect();
        Ok(Self { plan, runs, requests: AtomicU64::new(0) })
    }

    /// The validated plan (knobs and experiments).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// An assignment with every knob at its default (no experiment), e.g. for internal calls.
    pub fn defaults(&self) -> Assignment {
        Assignment { plan: self.plan.clone(), picks: Vec::new() }
    }

    /// Assigns a call to a variant of every experiment. `session` is the caller's session id;
    /// `key` the key the call is about (e.g. a workbook id), if any.
    pub fn assign(&self, session: &str, key: Option<&str>) -> Assignment {
        let mut picks = Vec::with_capacity(self.runs.len());
        let mut request_hash = None;
        for (i, (p, run)) in self.plan.experiments.iter().zip(&self.runs).enumerate() {
            let r = run.routing.read();
            let pick = |variant: usize, counted: bool| Pick { experiment: i as u16, variant: variant as u16, counted };
            if !r.active {
                picks.push(pick(r.fixed, false));
                continue;
            }
            let listed = |list: &std::collections::HashSet<String>| {
                !list.is_empty() && (list.contains(session) || key.is_some_and(|k| list.contains(k)))
            };
            if listed(&p.deny) {
                picks.push(pick(0, false));
                continue;
            }
            if listed(&p.allow) {
                picks.push(pick(1, false));
                continue;
            }
            let unit = match p.unit {
                Unit::Session => fnv1a64(session.as_bytes()),
                Unit::Key => match key {
                    Some(k) => fnv1a64(k.as_bytes()),
                    None => {
                        picks.push(pick(0, false));
                        continue;
                    }
                },
                Unit::Request => {
                    *request_hash.get_or_insert_with(|| self.requests.fetch_add(1, Ordering::Relaxed).wrapping_add(1))
                }
            };
            let u = position(p.salt, unit);
            picks.push(pick(pick_by_share(u, &r.order, &r.shares), true));
        }
        Assignment { plan: self.plan.clone(), picks }
    }

    /// Records what happened to a call (after it finished).
    pub fn record(&self, a: &Assignment, o: &Observation) {
        for pick in &a.picks {
            let (Some(p), Some(run)) =
                (self.plan.experiments.get(pick.experiment as usize), self.runs.get(pick.experiment as usize))
            else {
                continue;
            };
            if !p.counts(o.operation) || !run.routing.read().active {
                continue;
            }
            if !pick.counted {
                // Allow/deny lists, or a key-unit experiment without a key: shown, not tested.
                if let Some(s) = run.stats.get(pick.variant as usize) {
                    s.lock().forced += 1;
                }
                continue;
            }
            if let Some(s) = run.stats.get(pick.variant as usize) {
                s.lock().record(o, &run.slo_thresholds);
            }
        }
    }

    /// Records a custom metric value (e.g. calls per completed workflow) for the call's variants;
    /// only experiments that declared the metric keep it.
    pub fn record_metric(&self, a: &Assignment, metric: &str, value: f64) {
        if !value.is_finite() {
            return;
        }
        for pick in a.picks.iter().filter(|p| p.counted) {
            let (Some(p), Some(run)) =
                (self.plan.experiments.get(pick.experiment as usize), self.runs.get(pick.experiment as usize))
            else {
                continue;
            };
            let Some((_, cfg)) = p.custom.iter().find(|c| c.0 == metric) else { continue };
            if !run.routing.read().active {
                continue;
            }
            if let Some(s) = run.stats.get(pick.variant as usize) {
                s.lock().record_custom(metric, value, cfg.log);
            }
        }
    }

    /// Runs the tests and moves experiments along. Call every few seconds (any cadence is
    /// statistically safe: tests look only when enough new information arrived). While
    /// `slo_exhausted`, running experiments freeze: everyone gets control and nothing is recorded.
    pub fn evaluate(&self, now_secs: u64, slo_exhausted: bool) -> Vec<Transition> {
        let mut out = Vec::new();
        for (p, run) in self.plan.experiments.iter().zip(&self.runs) {
            let mut c = run.control.lock();
            let before = (c.state, c.frozen, c.step, c.winner);
            let stats: Vec<VariantStats> = run.stats.iter().map(|s| s.lock().clone()).collect();
            let mut emit = |kind: TransitionKind, severity: &str, message: String| {
                out.push(Transition {
                    experiment: p.name.clone(),
                    kind,
                    at_secs: now_secs,
                    severity: severity.into(),
                    message,
                })
            };
            if c.state == State::Running {
                if slo_exhausted && !c.frozen {
                    c.frozen = true;
                    emit(
                        TransitionKind::Frozen,
                        "info",
                        format!(
                            "experiment '{}' frozen: an SLO's error budget is exhausted; all calls get control",
                            p.name
                        ),
                    );
                } else if !slo_exhausted && c.frozen {
                    c.frozen = false;
                    emit(
                        TransitionKind::Unfrozen,
                        "info",
                        format!("experiment '{}' resumed: error budgets recovered", p.name),
                    );
                }
                if !c.frozen {
                    c.started_secs.get_or_insert(now_secs);
                    step_experiment(p, &mut c, &stats, &mut emit);
                }
            }
            c.updated_secs = now_secs;
            let after = (c.state, c.frozen, c.step, c.winner);
            if before != after || p.kind == Kind::Bandit {
                *run.routing.write() = routing_for(p, &c);
            }
        }
        out
    }

    /// The state of every experiment in the JSON contract (see `docs/experiments.md`).
    pub fn status_json(&self) -> serde_json::Value {
        let list: Vec<serde_json::Value> =
            self.plan.experiments.iter().zip(&self.runs).map(|(p, run)| self.one_status(p, run)).collect();
        serde_json::json!({ "experiments": list })
    }

    fn one_status(&self, p: &ExperimentPlan, run: &Run) -> serde_json::Value {
        let c = run.control.lock();
        let stats: Vec<VariantStats> = run.stats.iter().map(|s| s.lock().clone()).collect();
        let routing = run.routing.read().clone();
        super::status::experiment_json(
            p,
            &super::status::View {
                state: c.state,
                frozen: c.frozen,
                step: c.step,
                decision: c.decision.clone(),
                winner: c.winner,
                monitors: &c.monitors,
                leader: c.leader,
                prob_best: &c.prob_best,
                started_secs: c.started_secs,
                updated_secs: c.updated_secs,
                shares: effective_shares(p, &routing),
                stats: &stats,
            },
        )
    }

    /// Metric samples labelled by experiment and variant, for the exposition.
    pub fn samples(&self, naming: &crate::naming::Naming) -> Vec<crate::exposition::Sample> {
        let mut out = Vec::new();
        for (p, run) in self.plan.experiments.iter().zip(&self.runs) {
            let c = run.control.lock();
            let routing = run.routing.read().clone();
            let stats: Vec<VariantStats> = run.stats.iter().map(|s| s.lock().clone()).collect();
            let shares = effective_shares(p, &routing);
            let now = super::status::Standing {
                state: c.state,
                frozen: c.frozen,
                step: c.step,
                shares: &shares,
                stats: &stats,
            };
            super::status::samples(naming, p, &now, &mut out);
        }
        out
    }

    /// Everything needed to resume after a restart (save it with `persist::ExperimentStore`).
    pub fn save_state(&self) -> Vec<SavedExperiment> {
        self.plan
            .experiments
            .iter()
            .zip(&self.runs)
            .map(|(p, run)| {
                let status = self.one_status(p, run);
                let c = run.control.lock();
                SavedExperiment {
                    name: p.name.clone(),
                    fingerprint: p.fingerprint.clone(),
                    state: ExperimentState {
                        state: c.state,
                        frozen: c.frozen,
                        step: c.step,
                        step_base: c.step_base,
                        shares: c.shares.clone(),
                        decision: c.decision.clone(),
                        winner: c.winner,
                        tests: c.monitors.iter().map(Monitor::save).collect(),
                        rng: c.rng.clone(),
                        leader: c.leader,
                        prob_best: c.prob_best.clone(),
                        started_secs: c.started_secs,
                        updated_secs: c.updated_secs,
                        stats: run.stats.iter().map(|s| s.lock().clone()).collect(),
                    },
                    status,
                }
            })
            .collect()
    }

    /// Resumes from saved state. Experiments whose config changed since (another fingerprint)
    /// or whose state does not fit start afresh; the returned notes say which and why.
    pub fn restore(&self, saved: &[SavedExperiment]) -> Vec<String> {
        let mut notes = Vec::new();
        for s in saved {
            let Some(i) = self.plan.experiments.iter().position(|p| p.name == s.name) else { continue };
            let (p, run) = (&self.plan.experiments[i], &self.runs[i]);
            if s.fingerprint != p.fingerprint {
                notes.push(format!("experiment '{}' changed since its state was saved; starting it afresh", s.name));
                continue;
            }
            let st = &s.state;
            let monitors: Option<Vec<Monitor>> = st.tests.iter().map(|t| Monitor::restore(p, t)).collect();
            let fits = st.stats.len() == p.variants.len()
                && st.shares.len() == p.variants.len()
                && st.winner.is_none_or(|w| w < p.variants.len())
                && p.canary.as_ref().is_none_or(|c| st.step < c.steps.len());
            let (Some(monitors), true) = (monitors, fits) else {
                notes.push(format!("experiment '{}': saved state does not fit its config; starting it afresh", s.name));
                continue;
            };
            let mut c = run.control.lock();
            *c = Control {
                state: st.state,
                frozen: st.frozen,
                step: st.step,
                step_base: st.step_base,
                shares: st.shares.clone(),
                decision: st.decision.clone(),
                winner: st.winner,
                monitors,
                rng: st.rng.clone(),
                leader: st.leader,
                prob_best: st.prob_best.clone(),
                started_secs: st.started_secs,
                updated_secs: st.updated_secs,
            };
            for (slot, v) in run.stats.iter().zip(&st.stats) {
                *slot.lock() = v.clone();
            }
            *run.routing.write() = routing_for(p, &c);
        }
        notes
    }
}

/// Shares as calls see them now (a fixed variant shows as 100 %).
fn effective_shares(p: &ExperimentPlan, r: &Routing) -> Vec<f64> {
    if r.active {
        r.shares.clone()
    } else {
        (0..p.variants.len()).map(|i| if i == r.fixed { 1.0 } else { 0.0 }).collect()
    }
}

/// One running, unfrozen experiment's step: tests, then kind-specific progress.
fn step_experiment(
    p: &ExperimentPlan,
    c: &mut Control,
    stats: &[VariantStats],
    emit: &mut impl FnMut(TransitionKind, &str, String),
) {
    if p.kind == Kind::Bandit {
        if let Some(b) = &p.bandit {
            let Allocation { shares, leader, prob_best } = allocate(p, b, stats, &mut c.rng);
            if leader.is_some() && leader != c.leader {
                let l = leader.unwrap_or(0);
                emit(
                    TransitionKind::LeaderChanged,
                    "info",
                    format!(
                        "bandit '{}': arm '{}' leads (P(best) {:.2}); it now gets {:.0} % of calls",
                        p.name,
                        p.variants[l].name,
                        prob_best.get(l).copied().unwrap_or(0.0),
                        shares.get(l).copied().unwrap_or(0.0) * 100.0
                    ),
                );
                c.decision = Some(format!("leader: {}", p.variants[l].name));
            }
            c.shares = shares;
            c.leader = leader.or(c.leader);
            c.prob_best = prob_best;
        }
        return;
    }
    let control = &stats[0];
    let mut broken: Option<usize> = None;
    for (i, m) in c.monitors.iter_mut().enumerate() {
        let Some(treatment) = stats.get(m.variant) else { continue };
        if let Some(g) = m.guard.and_then(|g| p.guards.get(g))
            && !m.status.concluded()
            && gross_break(g, control, treatment)
        {
            m.update(p, control, treatment);
            m.break_gross();
        } else {
            m.update(p, control, treatment);
        }
        if m.guard.is_some() && m.status == TestStatus::Broken && broken.is_none() {
            broken = Some(i);
        }
    }
    if let Some(i) = broken {
        let m = &c.monitors[i];
        let what = match p.kind {
            Kind::Canary => {
                let share = p.canary.as_ref().and_then(|k| k.steps.get(c.step)).copied().unwrap_or(0.0);
                format!("canary '{}' rolled back at step {} ({:.0} %)", p.name, c.step + 1, share * 100.0)
            }
            _ => format!("{} '{}' rolled back", p.kind.as_str(), p.name),
        };
        let msg = format!(
            "{what}: variant '{}' breaks its {} guard: {}",
            m.report.variant,
            m.report.metric,
            guard_evidence(p, m)
        );
        c.state = State::RolledBack;
        c.decision = Some(msg.clone());
        emit(TransitionKind::RolledBack, "ticket", msg);
        return;
    }
    match p.kind {
        Kind::Canary => advance_canary(p, c, stats, emit),
        Kind::Ab => decide_ab(p, c, emit),
        _ => {}
    }
}

fn advance_canary(
    p: &ExperimentPlan,
    c: &mut Control,
    stats: &[VariantStats],
    emit: &mut impl FnMut(TransitionKind, &str, String),
) {
    let Some(cfg) = &p.canary else { return };
    let n = stats.get(1).map_or(0, |s| s.samples);
    let in_step = n.saturating_sub(c.step_base);
    // Guards hold: none broken, and no running guard's point estimate beyond its tolerance (a
    // guard that concluded "held" at its planned samples no longer blocks; gross rules remain).
    let within = c.monitors.iter().all(|m| m.status.concluded() || m.report.z.is_none_or(|z| z <= 0.0));
    if in_step < cfg.min_samples_per_step || !within || c.step + 1 >= cfg.steps.len() {
        return;
    }
    let next = c.step + 1;
    if next + 1 == cfg.steps.len() {
        // The last step is 100 %: only once every guard has its planned samples and held.
        if !c.monitors.iter().all(|m| m.status == TestStatus::Held) {
            return;
        }
        c.step = next;
        c.state = State::Completed;
        let summary: Vec<String> = c.monitors.iter().map(|m| guard_evidence(p, m)).collect();
        let msg = format!("canary '{}' completed: variant at 100 %; guards held: {}", p.name, summary.join("; "));
        c.decision = Some(msg.clone());
        emit(TransitionKind::Completed, "info", msg);
        return;
    }
    let (from, to) = (cfg.steps[c.step], cfg.steps[next]);
    c.step = next;
    c.step_base = n;
    emit(
        TransitionKind::StepAdvanced,
        "info",
        format!(
            "canary '{}' advanced from {:.0} % to {:.0} % after {in_step} variant samples with guards holding",
            p.name,
            from * 100.0,
            to * 100.0
        ),
    );
}

fn decide_ab(p: &ExperimentPlan, c: &mut Control, emit: &mut impl FnMut(TransitionKind, &str, String)) {
    let primaries: Vec<&Monitor> = c.monitors.iter().filter(|m| m.guard.is_none()).collect();
    if primaries.is_empty() || !primaries.iter().all(|m| m.status.concluded()) {
        return;
    }
    let Some(primary) = &p.primary else { return };
    let sign = worse_sign(&primary.metric, p);
    // The best significantly better variant wins.
    let winner = primaries
        .iter()
        .filter(|m| m.status == TestStatus::Significant && m.report.z.is_some_and(|z| sign * z < 0.0))
        .min_by(|a, b| {
            let ea = sign * a.report.effect.unwrap_or(0.0);
            let eb = sign * b.report.effect.unwrap_or(0.0);
            ea.total_cmp(&eb)
        })
        .map(|m| m.variant);
    let metric = primary.metric.name(p);
    let lines: Vec<String> = primaries
        .iter()
        .map(|m| {
            let r = &m.report;
            let effect = r.effect.map_or("n/a".into(), |e| effect_text(p, metric, e));
            let ci = r.ci.map_or(String::new(), |(lo, hi)| {
                format!(" (CI {} to {})", effect_text(p, metric, lo), effect_text(p, metric, hi))
            });
            let verdict = if m.status == TestStatus::Significant { "significant" } else { "not significant" };
            format!("'{}' vs control: {metric} {effect}{ci}, {verdict}", r.variant)
        })
        .collect();
    let msg = match winner {
        Some(w) => {
            format!("A/B '{}' decided: '{}' wins and gets all calls; {}", p.name, p.variants[w].name, lines.join("; "))
        }
        None => format!("A/B '{}' decided: no variant beats control, control kept; {}", p.name, lines.join("; ")),
    };
    c.winner = winner;
    c.state = State::Completed;
    c.decision = Some(msg.clone());
    emit(TransitionKind::Completed, "info", msg);
}
