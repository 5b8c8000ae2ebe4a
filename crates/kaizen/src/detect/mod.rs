//! Anomaly detection per tool and incidents with timelines and ranked causes.
//!
//! The embedder feeds a [`Detector`] three things: finished calls ([`Detector::record`], in
//! batches from the aggregator thread, cheap per call), a tick every few seconds with a
//! snapshot of its gauges and counters ([`Detector::tick`]), and discrete events and SLO alert
//! transitions ([`Detector::note_event`], [`Detector::alert`]). Each tick closes the windows
//! that have ended, judges latency and error ratio per tool against a slowly learned baseline
//! (`latency`, `errors`), groups anomalies and alerts that overlap into one incident
//! (`incident`), ranks likely causes from the embedder's [`CauseModel`] (`causes`), and
//! returns the transitions to deliver and the incidents to save (`persist`).
//!
//! Measured error rates and how to rerun the simulation: `docs/detection.md`.

pub mod anomaly;
pub mod causes;
pub mod config;
pub mod errors;
pub mod incident;
pub mod input;
pub mod latency;
pub mod loghist;
pub mod persist;
pub mod signals;
pub mod timefmt;
pub mod window;

#[cfg(test)]
mod scenario_tests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

pub use anomaly::{Signal, ToolBaseline};
pub use causes::{CAUSES, CauseModel, CauseRule, Direction, RankedCause, SignalKind};
pub use config::{DetectConfig, DetectError};
pub use incident::{Incident, TimelineEntry};
pub use input::{AlertTransition, CallClass, CallEvent, SignalSnapshot, derived};
pub use persist::{IncidentStore, PersistError, load_incidents};

use anomaly::{AnomalyChange, ToolDetector};
use incident::{Change, IncidentBook, Symptom};
use signals::{CallTally, SignalHistory};

/// Alert transitions waiting for the next tick, at most.
const MAX_PENDING_ALERTS: usize = 1000;
/// Calls stamped more than this after the last tick are dropped (clock jumps).
const FUTURE_SLACK_MS: u64 = 60_000;

/// Something to deliver (log, webhook, alert channel).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transition {
    AnomalyOpened {
        tool: String,
        signal: Signal,
        at_ms: u64,
        onset_ms: u64,
        detail: String,
    },
    AnomalyClosed {
        tool: String,
        signal: Signal,
        at_ms: u64,
        detail: String,
    },
    IncidentOpened {
        id: String,
        at_ms: u64,
        tools: Vec<String>,
        top_cause: Option<RankedCause>,
    },
    /// The top cause changed or another tool joined.
    IncidentUpdated {
        id: String,
        at_ms: u64,
        tools: Vec<String>,
        top_cause: Option<RankedCause>,
    },
    IncidentClosed {
        id: String,
        at_ms: u64,
        tools: Vec<String>,
        top_cause: Option<RankedCause>,
    },
}

impl Transition {
    /// One line for a log or an alert message, with the top cause and its evidence.
    pub fn message(&self) -> String {
        let cause = |c: &Option<RankedCause>| match c {
            Some(c) => format!("likely {} ({:.2}): {}", c.cause, c.score, c.evidence),
            None => "cause not ranked yet".into(),
        };
        let tools = |t: &[String]| if t.is_empty() { "server".to_string() } else { t.join(", ") };
        match self {
            Transition::AnomalyOpened { tool, signal, detail, .. } => {
                format!("{tool} {} anomaly: {detail}", signal.as_str())
            }
            Transition::AnomalyClosed { tool, signal, detail, .. } => {
                format!("{tool} {} anomaly over: {detail}", signal.as_str())
            }
            Transition::IncidentOpened { id, tools: t, top_cause, .. } => {
                format!("incident {id} opened ({}): {}", tools(t), cause(top_cause))
            }
            Transition::IncidentUpdated { id, tools: t, top_cause, .. } => {
                format!("incident {id} updated ({}): {}", tools(t), cause(top_cause))
            }
            Transition::IncidentClosed { id, tools: t, top_cause, .. } => {
                format!("incident {id} closed ({}): {}", tools(t), cause(top_cause))
            }
        }
    }

    /// True for the incident transitions (what to page or notify on).
    pub fn is_incident(&self) -> bool {
        matches!(
            self,
            Transition::IncidentOpened { .. } | Transition::IncidentUpdated { .. } | Transition::IncidentClosed { .. }
        )
    }
}

/// What one tick produced.
#[derive(Debug, Default, Clone)]
pub struct TickOutput {
    /// In order: anomalies opened/closed, then incident changes.
    pub transitions: Vec<Transition>,
    /// Incidents whose content changed (to upsert with `IncidentStore::upsert`).
    pub changed: Vec<Incident>,
}

/// One tool's anomaly state, for metrics (`gemba_anomaly_open{tool,signal}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnomalyState {
    pub tool: String,
    pub signal: Signal,
    pub open: bool,
    /// Still learning its baseline (no alarms yet).
    pub warming: bool,
}

/// Counts of input the detector could not use (for a log line or a metric).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub unknown_op_calls: u64,
    pub future_calls: u64,
    pub alerts: u64,
}

struct Inner {
    tools: Vec<ToolDetector>,
    tally: CallTally,
    history: SignalHistory,
    pending_alerts: VecDeque<AlertTransition>,
    book: IncidentBook,
    unknown_ops: u64,
    future_calls: u64,
    dropped_alerts: u64,
    last_tick_ms: Option<u64>,
}

/// The detector: anomalies per tool, incidents, causes. Thread-safe; every method takes `&self`.
pub struct Detector {
    cfg: DetectConfig,
    model: CauseModel,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector").field("cfg", &self.cfg).finish()
    }
}

impl Detector {
    /// A detector for the operations `op_names` (indexed as in `CallEvent::op`), judged with
    /// `cfg`, explaining incidents with `model`.
    pub fn new(cfg: DetectConfig, model: CauseModel, op_names: &[String]) -> Result<Self, DetectError> {
        cfg.validate()?;
        model.validate()?;
        if op_names.len() > 1000 {
            return Err(DetectError::Model(format!("{} operations; at most 1000 are watched", op_names.len())));
        }
        let keep_ms = (cfg.cause_lookback_secs + cfg.cause_follow_secs + 120) * 1000;
        let event_keep_ms = (cfg.cause_event_lookback_secs + cfg.max_open_secs + cfg.incident_quiet_secs) * 1000;
        let inner = Inner {
            tools: op_names.iter().map(|n| ToolDetector::new(n.clone())).collect(),
            tally: CallTally::default(),
            history: SignalHistory::new(keep_ms, event_keep_ms),
            pending_alerts: VecDeque::new(),
            book: IncidentBook::default(),
            unknown_ops: 0,
            future_calls: 0,
            dropped_alerts: 0,
            last_tick_ms: None,
        };
        Ok(Self { cfg, model, inner: Mutex::new(inner) })
    }

    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// Records finished calls (any order within a few seconds; each lands in the window of
    /// its own `at_ms`). Calls for unknown op indices are counted and ignored.
    pub fn record(&self, events: &[CallEvent]) {
        let wms = self.cfg.window_ms();
        let mut g = self.inner.lock();
        let inner = &mut *g;
        // A call stamped far ahead of the last tick (a clock jump) would hold its tool's
        // windows open until then: such calls are counted and dropped.
        let horizon = inner.last_tick_ms.map_or(u64::MAX, |t| t.saturating_add(FUTURE_SLACK_MS));
        for e in events {
            match inner.tools.get_mut(e.op) {
                Some(_) if e.at_ms > horizon => inner.future_calls += 1,
                Some(t) => {
                    t.add(e, wms);
                    inner.tally.add(e);
                }
                None => inner.unknown_ops += 1,
            }
        }
    }

    /// Notes a discrete event (`config_change`, `breaker_opened`, `file_changed`...): it goes
    /// on the timeline of an incident it precedes or falls in, and is evidence for the cause
    /// rules of kind `event` on the same signal name.
    pub fn note_event(&self, at_ms: u64, signal: &str, detail: &str) {
        self.inner.lock().history.note_event(at_ms, signal, detail);
    }

    /// Queues an alert transition for the next tick.
    pub fn alert(&self, t: AlertTransition) {
        let mut g = self.inner.lock();
        if g.pending_alerts.len() >= MAX_PENDING_ALERTS {
            g.dropped_alerts += 1;
            return;
        }
        g.pending_alerts.push_back(t);
    }

    /// Evaluates: call every few seconds (5 s suits the default 10 s windows) with the current
    /// time and the embedder's signals.
    pub fn tick(&self, now_ms: u64, snapshot: &SignalSnapshot) -> TickOutput {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        inner.last_tick_ms = Some(inner.last_tick_ms.map_or(now_ms, |t| t.max(now_ms)));
        let tally = std::mem::take(&mut inner.tally);
        inner.history.record_tick(now_ms, snapshot, &tally);

        // Anomalies and alerts in time order, so grouping follows what happened first.
        let mut happenings: Vec<Happening> = inner
            .tools
            .iter_mut()
            .flat_map(|t| t.close_windows(now_ms, &self.cfg))
            .map(Happening::Anomaly)
            .chain(inner.pending_alerts.drain(..).map(Happening::Alert))
            .collect();
        happenings.sort_by_key(Happening::at_ms);
        let mut out = TickOutput::default();
        for h in happenings {
            apply(&mut inner.book, h, &mut out.transitions);
        }

        if let Some(onset) = inner.book.open_onset_ms() {
            if inner.book.wants_ranking(now_ms, self.cfg.cause_follow_secs * 1000) {
                let (causes, moves) = causes::rank(&self.model, &inner.history, &self.cfg, onset, now_ms);
                inner.book.set_causes(causes, moves);
            }
            let from = onset.saturating_sub(self.cfg.cause_event_recent_secs * 1000);
            inner.book.add_events(inner.history.events_between(from, now_ms));
        }

        let (change, dirty) = inner.book.settle(now_ms, self.cfg.incident_quiet_secs * 1000, self.cfg.max_incidents);
        if let Some((change, inc)) = change {
            let (id, tools, top_cause) = (inc.id.clone(), inc.tools.clone(), inc.top_cause().cloned());
            out.transitions.push(match change {
                Change::Opened => Transition::IncidentOpened { id, at_ms: inc.opened_ms, tools, top_cause },
                Change::Updated => Transition::IncidentUpdated { id, at_ms: now_ms, tools, top_cause },
                Change::Closed => {
                    Transition::IncidentClosed { id, at_ms: inc.closed_ms.unwrap_or(now_ms), tools, top_cause }
                }
            });
        }
        out.changed.extend(dirty);
        out
    }

    /// Incidents open now or closed at or after `since_ms`, newest first.
    pub fn incidents(&self, since_ms: u64) -> Vec<Incident> {
        self.inner.lock().book.list(since_ms)
    }

    /// `{"incidents": [...]}` (the JSON contract), newest first.
    pub fn incidents_json(&self, since_ms: u64) -> Value {
        incidents_json(&self.incidents(since_ms))
    }

    /// Adds incidents from earlier runs (e.g. `load_incidents` at start) so the list shows
    /// them; any that run left open is closed. Returns those closed, for `IncidentStore::upsert`.
    pub fn restore(&self, past: Vec<Incident>) -> Vec<Incident> {
        self.inner.lock().book.restore(past, self.cfg.max_incidents)
    }

    /// What every tool has learned, to save (`IncidentStore::save_baselines`) every few
    /// minutes and at shutdown, so the next run judges against it instead of starting blind:
    /// a regression that comes with a new version or configuration is then found.
    pub fn baselines(&self, now_ms: u64) -> Vec<ToolBaseline> {
        self.inner.lock().tools.iter().map(|t| t.baseline(now_ms)).collect()
    }

    /// Restores baselines saved by an earlier run, matched by tool name; call before the first
    /// `record`. Each restored tool's first `restart_rewarm_evaluations` evaluations neither
    /// alarm nor teach. Returns how many tools were restored (malformed entries are skipped).
    pub fn restore_baselines(&self, saved: &[ToolBaseline]) -> usize {
        let mut g = self.inner.lock();
        let rewarm = self.cfg.restart_rewarm_evaluations;
        let mut restored = 0;
        for b in saved {
            if let Some(t) = g.tools.iter_mut().find(|t| t.name == b.tool)
                && t.restore(b, rewarm)
            {
                restored += 1;
            }
        }
        restored
    }

    /// Every tool × signal with its state (for a gauge per pair).
    pub fn anomaly_states(&self) -> Vec<AnomalyState> {
        let g = self.inner.lock();
        g.tools
            .iter()
            .flat_map(|t| {
                Signal::ALL.into_iter().map(move |s| AnomalyState {
                    tool: t.name.clone(),
                    signal: s,
                    open: t.is_open(s),
                    warming: t.warming(&self.cfg),
                })
            })
            .collect()
    }

    /// The open anomalies as (tool, signal).
    pub fn open_anomalies(&self) -> Vec<(String, Signal)> {
        self.anomaly_states().into_iter().filter(|s| s.open).map(|s| (s.tool, s.signal)).collect()
    }

    /// Incidents opened since this detector started (a counter: `gemba_incidents_total`).
    pub fn incidents_total(&self) -> u64 {
        self.inner.lock().book.opened_total()
    }

    /// The open incident, if any.
    pub fn open_incident(&self) -> Option<Incident> {
        self.inner.lock().book.open_incident().cloned()
    }

    /// What was dropped: calls for an unknown op index, calls stamped over a minute after the
    /// last tick, alert transitions beyond the queue's 1000.
    pub fn dropped(&self) -> Dropped {
        let g = self.inner.lock();
        Dropped { unknown_op_calls: g.unknown_ops, future_calls: g.future_calls, alerts: g.dropped_alerts }
    }
}

/// An anomaly change or an alert transition, to be applied to the incidents in time order.
enum Happening {
    Anomaly(AnomalyChange),
    Alert(AlertTransition),
}

impl Happening {
    fn at_ms(&self) -> u64 {
        match self {
            Happening::Anomaly(c) => c.at_ms,
            Happening::Alert(a) => a.at_ms,
        }
    }
}

/// Starts or ends the symptom in the incident book; anomaly changes are also delivered.
fn apply(book: &mut IncidentBook, h: Happening, transitions: &mut Vec<Transition>) {
    match h {
        Happening::Anomaly(c) => {
            let symptom = Symptom {
                key: format!("anomaly:{}/{}", c.tool, c.signal.as_str()),
                tool: c.tool.clone(),
                at_ms: c.at_ms,
                onset_ms: c.onset_ms,
                signal: format!("{}/{}", c.tool, c.signal.as_str()),
                detail: String::new(),
            };
            match c.onset_ms {
                Some(onset_ms) => {
                    book.start(Symptom { detail: format!("{} rose: {}", c.signal.as_str(), c.detail), ..symptom });
                    transitions.push(Transition::AnomalyOpened {
                        tool: c.tool,
                        signal: c.signal,
                        at_ms: c.at_ms,
                        onset_ms,
                        detail: c.detail,
                    });
                }
                None => {
                    book.end(Symptom { detail: format!("{} {}", c.signal.as_str(), c.detail), ..symptom });
                    transitions.push(Transition::AnomalyClosed {
                        tool: c.tool,
                        signal: c.signal,
                        at_ms: c.at_ms,
                        detail: c.detail,
                    });
                }
            }
        }
        Happening::Alert(a) => {
            let symptom = Symptom {
                key: format!("alert:{}/{}", a.name, a.tool),
                tool: a.tool.clone(),
                at_ms: a.at_ms,
                onset_ms: Some(a.at_ms),
                signal: format!("alert:{}", a.name),
                detail: format!("{} {}: {}", if a.firing { "firing" } else { "resolved" }, a.tool, a.detail),
            };
            if a.firing {
                book.start(symptom);
            } else {
                book.end(symptom);
            }
        }
    }
}

/// `{"incidents": [...]}` for a list of incidents (from a detector or `load_incidents`).
pub fn incidents_json(incidents: &[Incident]) -> Value {
    json!({ "incidents": incidents })
}
