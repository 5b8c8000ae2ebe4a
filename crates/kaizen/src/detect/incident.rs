//! Incidents: anomalies and alerts that overlap in time grouped into one (one notification, not
//! ten). At most one incident is open: a symptom starting while one is open joins it; the
//! incident closes once every member has ended and `incident_quiet_secs` passed without a new
//! one. Each keeps a timeline (symptoms, alerts, the signals that moved, noted events) and its
//! ranked causes.

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::causes::{Movement, RankedCause};
use super::signals::NotedEvent;
use super::timefmt::{clock, serde_ms, serde_ms_opt};

/// Timeline entries kept per incident; later ones are counted, not kept.
const MAX_TIMELINE: usize = 200;
/// Tools listed per incident.
const MAX_TOOLS: usize = 64;

/// One line of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    #[serde(rename = "at", with = "serde_ms")]
    pub at_ms: u64,
    pub signal: String,
    pub detail: String,
}

/// An incident, as shown and stored (`{"id", "opened", "closed"?, "tools", "timeline",
/// "causes"}`, times in RFC 3339 UTC, causes best first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    #[serde(rename = "opened", with = "serde_ms")]
    pub opened_ms: u64,
    #[serde(rename = "closed", with = "serde_ms_opt", default, skip_serializing_if = "Option::is_none")]
    pub closed_ms: Option<u64>,
    pub tools: Vec<String>,
    pub timeline: Vec<TimelineEntry>,
    pub causes: Vec<RankedCause>,
}

impl Incident {
    /// The best-ranked cause, if ranked yet.
    pub fn top_cause(&self) -> Option<&RankedCause> {
        self.causes.first()
    }

    /// One line: tools, top cause with score and evidence.
    pub fn summary(&self) -> String {
        let tools = if self.tools.is_empty() { "server".to_string() } else { self.tools.join(", ") };
        match self.top_cause() {
            Some(c) => format!("{tools}: likely {} ({:.2}): {}", c.cause, c.score, c.evidence),
            None => format!("{tools}: causes not ranked yet"),
        }
    }

    fn add(&mut self, e: TimelineEntry, dropped: &mut u64) {
        if self.timeline.len() >= MAX_TIMELINE {
            *dropped += 1;
            return;
        }
        let pos = self.timeline.iter().rposition(|x| x.at_ms <= e.at_ms).map_or(0, |i| i + 1);
        self.timeline.insert(pos, e);
    }
}

/// A symptom starting or ending, from an anomaly or an alert.
#[derive(Debug, Clone)]
pub struct Symptom {
    /// Identifies the symptom across start and end (`anomaly:tool/signal`, `alert:name/tool`).
    pub key: String,
    pub tool: String,
    pub at_ms: u64,
    /// When the symptom began, for a start (may precede `at_ms`: detection takes windows).
    pub onset_ms: Option<u64>,
    /// The timeline's signal column and detail.
    pub signal: String,
    pub detail: String,
}

/// What an incident did during one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    Updated,
    Closed,
}

#[derive(Debug)]
struct OpenIncident {
    inc: Incident,
    onset_ms: u64,
    active: BTreeSet<String>,
    /// When the last member ended (while none is active).
    quiet_since_ms: Option<u64>,
    /// Signals whose first move is already on the timeline.
    moved: BTreeSet<String>,
    /// Events already on the timeline (at, signal, detail).
    events_seen: BTreeSet<(u64, String, String)>,
    announced: bool,
    announced_top: Option<String>,
    announced_tools: usize,
    dirty: bool,
    dropped: u64,
}

/// The open incident and the recently closed ones.
#[derive(Debug, Default)]
pub struct IncidentBook {
    open: Option<OpenIncident>,
    closed: VecDeque<Incident>,
    opened_total: u64,
    last_id_ms: u64,
}

impl IncidentBook {
    pub fn opened_total(&self) -> u64 {
        self.opened_total
    }

    pub fn open_incident(&self) -> Option<&Incident> {
        self.open.as_ref().map(|o| &o.inc)
    }

    /// The symptom onset of the open incident (the earliest of its members').
    pub fn open_onset_ms(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.onset_ms)
    }

    /// Open and closed incidents overlapping `[since_ms, ∞)`, newest first.
    pub fn list(&self, since_ms: u64) -> Vec<Incident> {
        let mut v: Vec<Incident> = self.open.iter().map(|o| o.inc.clone()).collect();
        v.extend(self.closed.iter().rev().filter(|i| i.closed_ms.unwrap_or(u64::MAX) >= since_ms).cloned());
        v
    }

    /// Adds incidents from an earlier run (oldest kept up to `max`); any left open by that
    /// run is closed at its last timeline entry. Returns those it closed, to be saved.
    pub fn restore(&mut self, mut past: Vec<Incident>, max: usize) -> Vec<Incident> {
        let mut fixed = Vec::new();
        for inc in &mut past {
            if inc.closed_ms.is_none() {
                let last = inc.timeline.last().map_or(inc.opened_ms, |e| e.at_ms).max(inc.opened_ms);
                inc.closed_ms = Some(last);
                inc.timeline.push(TimelineEntry {
                    at_ms: last,
                    signal: "incident".into(),
                    detail: "closed at restart: the server stopped while it was open".into(),
                });
                fixed.push(inc.clone());
            }
        }
        past.sort_by_key(|i| i.opened_ms);
        let mut merged: Vec<Incident> = past.into_iter().chain(self.closed.drain(..)).collect();
        merged.sort_by_key(|i| i.opened_ms);
        merged.dedup_by(|a, b| a.id == b.id);
        self.last_id_ms =
            merged.iter().filter_map(|i| i.id.strip_prefix("inc-")?.parse().ok()).fold(self.last_id_ms, u64::max);
        let skip = merged.len().saturating_sub(max);
        self.closed = merged.into_iter().skip(skip).collect();
        fixed
    }

    /// A symptom starts: joins the open incident or opens one.
    pub fn start(&mut self, s: Symptom) {
        let onset = s.onset_ms.unwrap_or(s.at_ms).min(s.at_ms);
        let open = self.open.get_or_insert_with(|| {
            self.opened_total += 1;
            // Ids are the opening time in ms, kept unique even if two open in the same ms.
            self.last_id_ms = s.at_ms.max(self.last_id_ms + 1);
            OpenIncident {
                inc: Incident {
                    id: format!("inc-{}", self.last_id_ms),
                    opened_ms: s.at_ms,
                    closed_ms: None,
                    tools: Vec::new(),
                    timeline: Vec::new(),
                    causes: Vec::new(),
                },
                onset_ms: onset,
                active: BTreeSet::new(),
                quiet_since_ms: None,
                moved: BTreeSet::new(),
                events_seen: BTreeSet::new(),
                announced: false,
                announced_top: None,
                announced_tools: 0,
                dirty: true,
                dropped: 0,
            }
        });
        open.onset_ms = open.onset_ms.min(onset);
        open.active.insert(s.key);
        open.quiet_since_ms = None;
        if !s.tool.is_empty() && !open.inc.tools.contains(&s.tool) && open.inc.tools.len() < MAX_TOOLS {
            open.inc.tools.push(s.tool);
            open.inc.tools.sort();
        }
        let detail = if onset < s.at_ms { format!("{} (detected {})", s.detail, clock(s.at_ms)) } else { s.detail };
        open.inc.add(TimelineEntry { at_ms: onset, signal: s.signal, detail }, &mut open.dropped);
        open.dirty = true;
    }

    /// A symptom ends (ignored when it belongs to no open incident).
    pub fn end(&mut self, s: Symptom) {
        let Some(open) = &mut self.open else { return };
        if !open.active.remove(&s.key) {
            return;
        }
        open.inc.add(TimelineEntry { at_ms: s.at_ms, signal: s.signal, detail: s.detail }, &mut open.dropped);
        if open.active.is_empty() {
            open.quiet_since_ms = Some(s.at_ms);
        }
        open.dirty = true;
    }

    /// Whether the open incident's causes should be (re)ranked at `now_ms`: until the follow
    /// span after onset has passed, and once more when it closes.
    pub fn wants_ranking(&self, now_ms: u64, follow_ms: u64) -> bool {
        self.open.as_ref().is_some_and(|o| o.inc.causes.is_empty() || now_ms <= o.onset_ms + follow_ms + 10_000)
    }

    /// Installs a ranking and the signals' first moves (each signal once) on the open incident.
    pub fn set_causes(&mut self, causes: Vec<RankedCause>, moves: Vec<Movement>) {
        let Some(open) = &mut self.open else { return };
        if open.inc.causes != causes {
            open.inc.causes = causes;
            open.dirty = true;
        }
        for m in moves {
            if open.moved.insert(m.signal.clone()) {
                open.inc.add(TimelineEntry { at_ms: m.at_ms, signal: m.signal, detail: m.detail }, &mut open.dropped);
                open.dirty = true;
            }
        }
    }

    /// Puts noted events on the open incident's timeline (each once).
    pub fn add_events<'a>(&mut self, events: impl Iterator<Item = &'a NotedEvent>) {
        let Some(open) = &mut self.open else { return };
        for e in events {
            if open.events_seen.insert((e.at_ms, e.signal.clone(), e.detail.clone())) {
                let entry = TimelineEntry { at_ms: e.at_ms, signal: e.signal.clone(), detail: e.detail.clone() };
                open.inc.add(entry, &mut open.dropped);
                open.dirty = true;
            }
        }
    }

    /// Decides what to announce this tick and closes an incident that has been quiet long
    /// enough. Returns the change (if any) with a copy of the incident, and whether its stored
    /// copy must be updated (`dirty`).
    pub fn settle(
        &mut self,
        now_ms: u64,
        quiet_ms: u64,
        max_closed: usize,
    ) -> (Option<(Change, Incident)>, Option<Incident>) {
        let Some(open) = &mut self.open else { return (None, None) };
        if let Some(q) = open.quiet_since_ms
            && now_ms.saturating_sub(q) >= quiet_ms
        {
            let Some(mut o) = self.open.take() else { return (None, None) };
            o.inc.closed_ms = Some(q);
            if o.dropped > 0 {
                o.inc.timeline.push(TimelineEntry {
                    at_ms: q,
                    signal: "incident".into(),
                    detail: format!("{} more timeline entries not kept", o.dropped),
                });
            }
            let inc = o.inc.clone();
            if self.closed.len() >= max_closed {
                self.closed.pop_front();
            }
            self.closed.push_back(o.inc);
            return (Some((Change::Closed, inc.clone())), Some(inc));
        }
        let top = open.inc.top_cause().map(|c| c.cause.clone());
        let change = if !open.announced {
            open.announced = true;
            Some(Change::Opened)
        } else if top != open.announced_top || open.inc.tools.len() != open.announced_tools {
            Some(Change::Updated)
        } else {
            None
        };
        if change.is_some() {
            open.announced_top = top;
            open.announced_tools = open.inc.tools.len();
        }
        let dirty = std::mem::take(&mut open.dirty).then(|| open.inc.clone());
        (change.map(|c| (c, open.inc.clone())), dirty)
    }
}
