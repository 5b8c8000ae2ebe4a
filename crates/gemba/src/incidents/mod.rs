//! Anomalies and incidents, live: `kaizen::detect` wired into the server. Finished calls feed
//! the detector from the recorder's aggregator thread (`feed`); every 5 s the evaluator ticks it
//! with Gemba's signals (`signals`), delivers incident transitions as alerts with the top cause
//! in the message, and keeps incidents and baselines in the state database (`watch`). The cause
//! rules and settings are Gemba's (`model`, overridable with `--detect FILE`); a change of
//! version or configuration since the last run is noted at start (`runs`). Shown on
//! `/incidents.json`, `kaizen://incidents`, `gemba incidents` (`cli`) and the
//! `gemba_anomaly_open` / `gemba_incidents_total` series.

pub mod cli;
mod feed;
pub mod model;
mod notify;
pub mod runs;
pub mod signals;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kaizen::detect::{AlertTransition, Detector, IncidentStore, load_incidents};
use kaizen::event::AlertEvent;
use kaizen::exposition::{Kind, Sample};
use serde_json::{Value, json};

use crate::config::ServeConfig;
use crate::server::GembaServer;
use crate::wiring::Periodic;

/// The MCP resource with the incidents.
pub const INCIDENTS_URI: &str = "kaizen://incidents";
/// How far back `/incidents.json` and `kaizen://incidents` look unless told otherwise.
pub const DEFAULT_SINCE: Duration = Duration::from_secs(7 * 86_400);
/// Earlier runs' incidents shown after a restart, and closed ones kept in the database.
const RESTORE_SPAN: Duration = Duration::from_secs(30 * 86_400);
const KEEP_SPAN: Duration = Duration::from_secs(90 * 86_400);
/// Saved baselines older than this are not restored (the traffic has likely changed).
const BASELINE_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The detector of one server process, and what reads it.
pub struct Incidents {
    pub detector: Detector,
    naming: kaizen::Naming,
}

impl Incidents {
    /// `{"incidents": [...]}` for incidents open now or closed since `since_ms`, newest first.
    pub fn json(&self, since_ms: u64) -> Value {
        self.detector.incidents_json(since_ms)
    }

    /// The resource body: the last 7 days.
    pub fn recent_json(&self) -> Value {
        self.json(now_ms().saturating_sub(DEFAULT_SINCE.as_millis() as u64))
    }

    /// SLO burn-rate transitions (page and ticket) become incident symptoms; slow budget
    /// states are left out (they can fire for days and would hold an incident open).
    pub fn forward_alerts(&self, events: &[AlertEvent]) {
        for e in events.iter().filter(|e| !e.slo.is_empty() && e.alert.contains("BurnRate")) {
            self.detector.alert(AlertTransition {
                name: e.alert.clone(),
                tool: e.tool.clone(),
                firing: e.status == "firing",
                at_ms: e.at_secs * 1000,
                detail: e.summary.clone(),
            });
        }
    }

    /// `gemba_anomaly_open{tool,signal}` (for the tools past their warm-up: a tool still
    /// learning its baseline cannot alarm, and most tools are never called often enough to be
    /// judged), `gemba_incident_open` and `gemba_incidents_total`.
    pub fn samples(&self, out: &mut Vec<Sample>) {
        let name = self.naming.metric("anomaly_open");
        for s in self.detector.anomaly_states().into_iter().filter(|s| s.open || !s.warming) {
            out.push(
                Sample::new(
                    &name,
                    "1 while the tool's latency or error ratio is anomalous against its learned baseline.",
                    Kind::Gauge,
                    f64::from(u8::from(s.open)),
                )
                .label(&self.naming.op_label, &s.tool)
                .label("signal", s.signal.as_str()),
            );
        }
        out.push(Sample::new(
            &self.naming.metric("incident_open"),
            "1 while an incident (anomalies and SLO alerts grouped) is open.",
            Kind::Gauge,
            f64::from(u8::from(self.detector.open_incident().is_some())),
        ));
        out.push(Sample::new(
            &self.naming.metric("incidents"),
            "Incidents opened since the server started.",
            Kind::Counter,
            self.detector.incidents_total() as f64,
        ));
    }
}

/// What `wiring::start` plugs in: the handle, the periodic part, the call observer.
pub struct Started {
    pub incidents: Arc<Incidents>,
    pub part: Box<dyn Periodic>,
    pub observer: Arc<dyn kaizen::Observer>,
}

/// Builds the detector with Gemba's settings (or `--detect FILE`'s), restores earlier runs'
/// incidents and baselines from the state database `db`, and notes a `config_change` when the
/// version or configuration differs from the last recorded run. Call it before this run is
/// recorded. A bad `--detect` file is an error; a database that cannot be used only costs
/// persistence (logged).
pub fn start(
    cfg: &ServeConfig,
    server: &GembaServer,
    recorder: &Arc<kaizen::Recorder>,
    db: Option<&Path>,
    previous: Option<kaizen::store::Run>,
) -> Result<Started> {
    let settings = model::Settings::load(cfg.detect_file.as_deref())?;
    let detector =
        Detector::new(settings.config, settings.model, recorder.names()).context("cannot start anomaly detection")?;
    let now = now_ms();
    let store = db.and_then(|path| match restore(&detector, path, now) {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!("incidents will not be saved: {e:#}");
            None
        }
    });
    if let Some(prev) = previous
        && let Some(detail) = runs::change(&prev, runs::VERSION, &crate::report::runs::run_config(cfg))
    {
        tracing::info!("since the last run: {detail}");
        detector.note_event(now, signals::names::EVENT_CONFIG_CHANGE, &detail);
    }
    let incidents = Arc::new(Incidents { detector, naming: recorder.naming().clone() });
    let tool_ops = crate::catalog::NAMES.len();
    Ok(Started {
        incidents: incidents.clone(),
        part: Box::new(watch::Watch::new(incidents.clone(), server.clone(), recorder.clone(), tool_ops, store)),
        observer: Arc::new(feed::Feed::new(incidents)),
    })
}

/// Opens the incident store, closes what a stopped run left open, shows the last 30 days'
/// incidents, restores the baselines and prunes incidents closed over 90 days ago.
fn restore(det: &Detector, path: &Path, now: u64) -> Result<IncidentStore> {
    let mut store = IncidentStore::open(path)?;
    let past = load_incidents(path, now.saturating_sub(RESTORE_SPAN.as_millis() as u64))?;
    store.upsert_all(&det.restore(past))?;
    let restored = det.restore_baselines(&store.load_baselines(now, BASELINE_MAX_AGE.as_millis() as u64)?);
    if restored > 0 {
        tracing::info!("anomaly detection resumes from the baselines of {restored} tools");
    }
    store.prune(now.saturating_sub(KEEP_SPAN.as_millis() as u64))?;
    Ok(store)
}

/// `{"incidents": [], "detect": "disabled"}`: what the endpoints say without a detector.
pub fn disabled_json() -> Value {
    json!({"incidents": [], "detect": "disabled"})
}

/// The state database of a state directory.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("gemba.db")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaizen::detect::SignalSnapshot;

    fn event(alert: &str, slo: &str, status: &str, at_secs: u64) -> AlertEvent {
        AlertEvent {
            alert: alert.into(),
            slo: slo.into(),
            tool: "read_table".into(),
            severity: "page".into(),
            status: status.into(),
            at_secs,
            summary: format!("{alert} {status}"),
            runbook: String::new(),
        }
    }

    #[test]
    fn burn_rate_alerts_open_an_incident_and_budget_alerts_do_not() {
        let settings = model::Settings::load(None).unwrap();
        let names = vec!["read_table".to_string()];
        let inc = Incidents {
            detector: Detector::new(settings.config, settings.model, &names).unwrap(),
            naming: crate::measure::naming(),
        };
        let t0 = 1_800_000_000;
        // A slow budget state and an operational alert are no symptoms of an incident.
        inc.forward_alerts(&[
            event("GembaSLOErrorBudgetLow", "read_table-availability", "firing", t0),
            event("GembaHighErrorRate", "", "firing", t0),
        ]);
        inc.detector.tick(t0 * 1000 + 5_000, &SignalSnapshot::default());
        assert!(inc.detector.open_incident().is_none());

        inc.forward_alerts(&[event("GembaSLOBurnRatePage", "read_table-availability", "firing", t0 + 10)]);
        inc.detector.tick(t0 * 1000 + 15_000, &SignalSnapshot::default());
        let open = inc.detector.open_incident().expect("a burn-rate page opens an incident");
        assert_eq!(open.tools, ["read_table"]);
        assert!(
            open.timeline.iter().any(|e| e.signal == "alert:GembaSLOBurnRatePage" && e.detail.starts_with("firing")),
            "{open:?}"
        );
    }
}
