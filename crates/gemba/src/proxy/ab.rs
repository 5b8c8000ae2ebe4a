//! A/B and canary between two upstreams: the experiment engine's string knob `upstream` (a|b)
//! decides per session (per request for stateless 2026-era requests) which upstream serves it.
//! Without an experiments file, `--upstream-b` gets a canary: B's share steps up while its
//! guards hold (server errors, latency) and is rolled back to A automatically when one breaks.
//! Rolled-back and frozen experiments give every new session A; sessions already on B stay
//! there (their state lives in that upstream).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use kaizen::event::AlertEvent;
use kaizen::experiment::{Assignment, Engine, ExperimentsConfig, KnobSpec, persist::ExperimentStore};

use crate::wiring::{Kaizen, Periodic};

/// The knob experiments set.
pub const KNOB: &str = "upstream";

pub fn knobs() -> Vec<KnobSpec> {
    vec![KnobSpec::string(
        KNOB,
        "a",
        &["a", "b"],
        "which upstream serves the session (a: --upstream/command, b: --upstream-b)",
    )]
}

/// The canary `--upstream-b` gets without `--experiments`.
pub const DEFAULT_CANARY: &str = r#"
[[experiment]]
name = "upstream-b-canary"
kind = "canary"
unit = "session"
description = "upstream B serves a growing share of new sessions while it is no worse than A"
power = 0.95
[experiment.canary]
steps = [0.05, 0.25, 0.5, 1.0]
min_samples_per_step = 100
[[experiment.guard]]
metric = "server_error_ratio"
max_worse = 0.01
detect = 0.05
gross = 3.0
[[experiment.guard]]
metric = "latency"
max_worse = 0.20
detect = 0.50
gross = 5.0
[[experiment.variant]]
name = "a"
[[experiment.variant]]
name = "b"
knobs = { upstream = "b" }
"#;

/// The engine from `--experiments FILE` (or the default canary), its saved state restored.
pub fn engine(file: Option<&Path>, db: Option<&Path>) -> Result<Arc<Engine>> {
    let (text, from) = match file {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("cannot read experiments file {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (DEFAULT_CANARY.to_string(), "the default upstream-b canary".to_string()),
    };
    let cfg: ExperimentsConfig = toml::from_str(&text).with_context(|| format!("{from} is not valid"))?;
    let sets_upstream = cfg
        .experiments
        .iter()
        .any(|e| e.variants.iter().any(|v| v.knobs.contains_key(KNOB)) || e.knob.as_deref() == Some(KNOB));
    if !sets_upstream {
        bail!(
            "{from}: no experiment sets the `{KNOB}` knob (a|b), so B would never serve; e.g. knobs = {{ {KNOB} = \"b\" }}"
        );
    }
    let engine = Engine::new(knobs(), &cfg).map_err(|e| anyhow::anyhow!("{from}: {e}"))?;
    if let Some(db) = db
        && let Ok(store) = ExperimentStore::open(db)
    {
        match store.load() {
            Ok((saved, notes)) => {
                for n in notes.iter().chain(engine.restore(&saved).iter()) {
                    tracing::info!("experiments: {n}");
                }
            }
            Err(e) => tracing::warn!("cannot restore experiment state: {e}"),
        }
    }
    Ok(Arc::new(engine))
}

/// Which upstream a session (or stateless request) goes to: 0 for A, 1 for B.
pub fn choose(engine: &Engine, unit: &str) -> (usize, Arc<Assignment>) {
    let a = engine.assign(unit, None);
    let b = a.string(KNOB) == Some("b");
    (usize::from(b), Arc::new(a))
}

/// One arm as the proxy sees it: the upstream behind a value of the knob.
pub struct Arm {
    /// The upstream's name (its `upstream` label in metrics).
    pub upstream: String,
    /// Sessions (and stateless requests) given to it since the proxy started.
    pub sessions: u64,
    /// Its connections open now (processes, or HTTP sessions).
    pub connections: usize,
}

/// The engine's status (`/experiments.json`) with, under `upstreams`, which upstream serves
/// each knob value (`a`, then `b`) and how many sessions each was given.
pub fn status_json(engine: &Engine, arms: &[Arm]) -> serde_json::Value {
    let mut status = engine.status_json();
    let upstreams: Vec<serde_json::Value> = arms
        .iter()
        .zip(["a", "b"])
        .map(|(arm, knob)| {
            serde_json::json!({
                KNOB: knob,
                "name": arm.upstream,
                "sessions": arm.sessions,
                "connections": arm.connections,
            })
        })
        .collect();
    if let Some(map) = status.as_object_mut() {
        map.insert("upstreams".into(), upstreams.into());
        map.insert("source".into(), "gemba proxy".into());
    }
    status
}

/// Evaluate the experiments every 10 s, deliver rollbacks as alerts, persist.
pub struct Experiments {
    pub engine: Arc<Engine>,
    pub kaizen: Arc<Kaizen>,
    pub store: Option<ExperimentStore>,
    pub last: u64,
}

impl Experiments {
    /// Unlike `gemba serve`, the proxy does not freeze its experiments when an SLO's error
    /// budget is spent: the only thing they change is which upstream serves, so a spent budget
    /// is most likely B's doing, and freezing would stop the very guards that roll B back
    /// (a frozen canary sends new sessions to A but resumes B once the budget recovers).
    fn evaluate(&mut self, now: u64) -> Vec<AlertEvent> {
        let ts = self.engine.evaluate(now, false);
        for t in &ts {
            tracing::warn!("experiment: {}", t.message);
        }
        if let Some(store) = &mut self.store {
            if let Err(e) = store.save(&self.engine.save_state()) {
                tracing::warn!("cannot save experiment state: {e}");
            }
            if let Err(e) = store.log_transitions(&ts) {
                tracing::warn!("cannot log experiment transitions: {e}");
            }
        }
        let naming = self.kaizen.recorder.naming().clone();
        ts.iter().filter_map(|t| t.alert_event(&naming)).collect()
    }
}

impl Periodic for Experiments {
    fn tick(&mut self, now: u64) -> Vec<AlertEvent> {
        if now < self.last + 10 {
            return Vec::new();
        }
        self.last = now;
        self.evaluate(now)
    }

    fn shutdown(&mut self, now: u64) -> Vec<AlertEvent> {
        self.evaluate(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_canary_is_valid_and_starts_small() {
        let e = engine(None, None).unwrap();
        let b = (0..2_000).filter(|i| choose(&e, &format!("session-{i}")).0 == 1).count();
        // The first step gives B about 5 % of sessions.
        assert!((40..=180).contains(&b), "{b} of 2000 sessions on B");
    }

    #[test]
    fn the_status_names_the_upstream_of_each_arm() {
        let e = engine(None, None).unwrap();
        let arms = [
            Arm { upstream: "v1".into(), sessions: 7, connections: 1 },
            Arm { upstream: "v2".into(), sessions: 2, connections: 0 },
        ];
        let s = status_json(&e, &arms);
        assert_eq!(s["experiments"][0]["name"], "upstream-b-canary");
        assert_eq!(s["experiments"][0]["state"], "running");
        assert_eq!(s["upstreams"][1]["upstream"], "b");
        assert_eq!(s["upstreams"][1]["name"], "v2");
        assert_eq!(s["upstreams"][0]["sessions"], 7);
    }

    #[test]
    fn a_file_that_never_sets_the_knob_is_refused() {
        let dir = std::env::temp_dir().join(format!("gemba-ab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.toml");
        std::fs::write(&p, "[[experiment]]\nname = \"x\"\nkind = \"ab\"\nprimary = { metric = \"latency\", mde = 0.1 }\n[[experiment.variant]]\nname = \"a\"\n[[experiment.variant]]\nname = \"c\"\n").unwrap();
        let Err(e) = engine(Some(&p), None) else { panic!("a file without the knob was accepted") };
        let e = e.to_string();
        assert!(e.contains("no experiment sets the `upstream` knob"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
