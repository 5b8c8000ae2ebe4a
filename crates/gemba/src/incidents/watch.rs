//! The detector's periodic part, on the evaluator thread: every tick it reads Gemba's signals,
//! notes discrete events, ticks the detector, saves changed incidents, and turns incident
//! transitions into alerts (log and webhook) with the top cause in the message (an opening is
//! held back briefly until a cause is ranked: `notify`); anomalies are logged. Baselines are
//! saved every few minutes and at shutdown.

use std::sync::Arc;

use kaizen::detect::{IncidentStore, Transition};
use kaizen::event::AlertEvent;

use super::notify::Notifier;
use super::signals::{Raw, Signals};
use super::{Incidents, now_ms};
use crate::server::GembaServer;
use crate::wiring::Periodic;

/// How often the learned baselines are saved (and at shutdown).
const BASELINES_EVERY_MS: u64 = 5 * 60 * 1000;
/// Severity of the incident alert: a person should look, no one need be woken by detection
/// alone (the SLO burn-rate pages do that).
const SEVERITY: &str = "ticket";

pub struct Watch {
    incidents: Arc<Incidents>,
    server: GembaServer,
    recorder: Arc<kaizen::Recorder>,
    tool_ops: usize,
    signals: Signals,
    store: Option<IncidentStore>,
    baselines_saved_ms: u64,
    notifier: Notifier,
}

impl Watch {
    pub fn new(
        incidents: Arc<Incidents>,
        server: GembaServer,
        recorder: Arc<kaizen::Recorder>,
        tool_ops: usize,
        store: Option<IncidentStore>,
    ) -> Self {
        Self {
            incidents,
            server,
            recorder,
            tool_ops,
            signals: Signals::default(),
            store,
            baselines_saved_ms: now_ms(),
            notifier: Notifier::default(),
        }
    }

    fn save_baselines(&mut self, now: u64) {
        if let Some(store) = &mut self.store
            && let Err(e) = store.save_baselines(&self.incidents.detector.baselines(now))
        {
            tracing::warn!("cannot save the detector's baselines: {e}");
        }
        self.baselines_saved_ms = now;
    }
}

impl Periodic for Watch {
    fn tick(&mut self, _now: u64) -> Vec<AlertEvent> {
        let now = now_ms();
        let det = &self.incidents.detector;
        let raw = Raw::read(&self.server, &self.recorder, self.tool_ops);
        let (snapshot, events) = self.signals.snapshot(&raw);
        for (signal, detail) in &events {
            det.note_event(now, signal, detail);
        }
        let out = det.tick(now, &snapshot);
        if let Some(store) = &mut self.store
            && let Err(e) = store.upsert_all(&out.changed)
        {
            tracing::warn!("cannot save incidents: {e}");
        }
        if now >= self.baselines_saved_ms + BASELINES_EVERY_MS {
            self.save_baselines(now);
        }
        for t in out.transitions.iter().filter(|t| !t.is_incident()) {
            tracing::info!("{}", t.message());
        }
        let alert = self.recorder.naming().alert("Incident");
        self.notifier.pass(&out.transitions, now).iter().filter_map(|t| alert_event(t, &alert, now / 1000)).collect()
    }

    fn shutdown(&mut self, _now: u64) -> Vec<AlertEvent> {
        self.save_baselines(now_ms());
        Vec::new()
    }
}

/// The alert for an incident transition (None for anomaly transitions): firing when opened or
/// updated (new top cause, another tool), resolved when closed; the summary is the
/// transition's line (tools, top cause, evidence), the runbook the top cause's section.
pub fn alert_event(t: &Transition, alert: &str, at_secs: u64) -> Option<AlertEvent> {
    let (tools, top, status) = match t {
        Transition::IncidentOpened { tools, top_cause, .. } | Transition::IncidentUpdated { tools, top_cause, .. } => {
            (tools, top_cause, "firing")
        }
        Transition::IncidentClosed { tools, top_cause, .. } => (tools, top_cause, "resolved"),
        _ => return None,
    };
    let cause = top.as_ref().map_or("unknown", |c| c.cause.as_str());
    Some(AlertEvent {
        alert: alert.to_string(),
        slo: String::new(),
        tool: tools.join(","),
        severity: SEVERITY.into(),
        status: status.into(),
        at_secs,
        summary: t.message(),
        runbook: format!("{}#{}", crate::slo::RUNBOOK_URL, runbook_anchor(cause)),
    })
}

/// `incident-cache-thrash` for `cache_thrash`: the cause's section in docs/runbooks.md.
pub fn runbook_anchor(cause: &str) -> String {
    format!("incident-{}", cause.replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaizen::detect::{RankedCause, Signal};

    #[test]
    fn incident_transitions_become_alerts_with_the_top_cause() {
        let cause = RankedCause { cause: "cache_thrash".into(), score: 0.9, evidence: "hit ratio 0.95 → 0.3".into() };
        let opened = Transition::IncidentOpened {
            id: "inc-1".into(),
            at_ms: 1_000,
            tools: vec!["read_table".into(), "sheet_page".into()],
            top_cause: Some(cause.clone()),
        };
        let a = alert_event(&opened, "GembaIncident", 7).unwrap();
        assert_eq!((a.status.as_str(), a.tool.as_str(), a.at_secs), ("firing", "read_table,sheet_page", 7));
        assert!(a.summary.contains("likely cache_thrash (0.90): hit ratio 0.95 → 0.3"), "{}", a.summary);
        assert_eq!(a.runbook, "docs/runbooks.md#incident-cache-thrash");

        let closed = Transition::IncidentClosed { id: "inc-1".into(), at_ms: 2_000, tools: vec![], top_cause: None };
        let a = alert_event(&closed, "GembaIncident", 9).unwrap();
        assert_eq!((a.status.as_str(), a.runbook.as_str()), ("resolved", "docs/runbooks.md#incident-unknown"));

        let anomaly = Transition::AnomalyOpened {
            tool: "read_table".into(),
            signal: Signal::Latency,
            at_ms: 1,
            onset_ms: 1,
            detail: "x".into(),
        };
        assert!(alert_event(&anomaly, "GembaIncident", 1).is_none());
    }

    #[test]
    fn every_cause_has_a_runbook_section() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/runbooks.md")).unwrap();
        for cause in kaizen::detect::CAUSES {
            let anchor = runbook_anchor(cause);
            let section = doc.split(&format!("\n## {anchor}\n")).nth(1).unwrap_or_else(|| panic!("no ## {anchor}"));
            let section = section.split("\n## ").next().unwrap_or_default();
            assert!(section.contains("**What it means.**") && section.contains("**What to do.**"), "{anchor}");
        }
    }
}
