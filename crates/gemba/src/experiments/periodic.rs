//! The experiments' part of the evaluator: every tick (5 s) the engine runs its tests with the
//! SLOs' state (all experiments freeze while an error budget is exhausted), transitions are
//! logged, rollbacks and freezes are delivered as alerts, and the state is saved.

use std::sync::Arc;

use kaizen::event::AlertEvent;
use kaizen::experiment::Transition;
use kaizen::experiment::persist::ExperimentStore;
use kaizen::sli::SliEngine;

use super::Experiments;
use crate::wiring::Periodic;

pub struct ExperimentPart {
    experiments: Arc<Experiments>,
    sli: Arc<SliEngine>,
    store: Option<ExperimentStore>,
    naming: kaizen::Naming,
}

impl ExperimentPart {
    pub fn new(experiments: Arc<Experiments>, sli: Arc<SliEngine>, store: Option<ExperimentStore>) -> Self {
        Self { experiments, sli, store, naming: crate::measure::naming() }
    }

    fn run(&mut self, now: u64) -> Vec<AlertEvent> {
        let exhausted = slo_exhausted(&self.sli, now);
        let transitions = self.experiments.engine.evaluate(now, exhausted);
        for t in &transitions {
            log(t);
        }
        if let Some(store) = &mut self.store {
            let saved =
                store.save(&self.experiments.engine.save_state()).and_then(|_| store.log_transitions(&transitions));
            if let Err(e) = saved {
                tracing::warn!("cannot save experiment state: {e}");
            }
        }
        transitions.iter().filter_map(|t| t.alert_event(&self.naming)).collect()
    }
}

/// Whether any SLO's error budget is spent (with enough calls in the period for the figure to
/// mean something, the same bar as the budget alert).
pub fn slo_exhausted(sli: &SliEngine, now: u64) -> bool {
    sli.status(now).iter().any(|s| s.budget_low && s.error_budget_remaining <= 0.0)
}

fn log(t: &Transition) {
    use kaizen::experiment::TransitionKind::*;
    match t.kind {
        RolledBack | Frozen => tracing::warn!(experiment = %t.experiment, "{}", t.message),
        _ => tracing::info!(experiment = %t.experiment, "{}", t.message),
    }
}

impl Periodic for ExperimentPart {
    fn tick(&mut self, now: u64) -> Vec<AlertEvent> {
        self.run(now)
    }

    fn shutdown(&mut self, now: u64) -> Vec<AlertEvent> {
        self.run(now)
    }
}
