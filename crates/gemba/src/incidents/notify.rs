//! Which incident transitions are notified, and when. Causes are ranked on signals that held a
//! level for three ticks, so an incident often opens (at its first symptom) before any cause can
//! be named. The opening notice is then held back until a cause is ranked, or `HOLD_MS` has
//! passed, and sent once as "opened" with what is known by then: one notice that names the
//! cause, instead of "unknown" followed by an update. Everything else passes straight through.

use kaizen::detect::Transition;

/// The longest an opening notice waits for a ranked cause: three 5 s ticks plus one.
pub const HOLD_MS: u64 = 20_000;

/// An opening notice held back: the transition as it stands now, and when it was first held.
struct Held {
    opened: Transition,
    since_ms: u64,
}

#[derive(Default)]
pub struct Notifier {
    held: Option<Held>,
}

/// A cause has been ranked (anything but none or `unknown`).
fn ranked(t: &Transition) -> bool {
    let top = match t {
        Transition::IncidentOpened { top_cause, .. }
        | Transition::IncidentUpdated { top_cause, .. }
        | Transition::IncidentClosed { top_cause, .. } => top_cause,
        _ => return false,
    };
    top.as_ref().is_some_and(|c| c.cause != "unknown")
}

impl Notifier {
    /// The incident transitions of one tick (in order) → the ones to notify now.
    pub fn pass(&mut self, transitions: &[Transition], now_ms: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        for t in transitions.iter().filter(|t| t.is_incident()) {
            match (t, self.held.take()) {
                (Transition::IncidentOpened { .. }, held) => {
                    out.extend(held.map(|h| h.opened));
                    if ranked(t) {
                        out.push(t.clone());
                    } else {
                        self.held = Some(Held { opened: t.clone(), since_ms: now_ms });
                    }
                }
                (Transition::IncidentUpdated { tools, top_cause, .. }, Some(h)) => {
                    // Still the opening notice, with the newer tools and cause.
                    let opened = match h.opened {
                        Transition::IncidentOpened { id, at_ms, .. } => {
                            Transition::IncidentOpened { id, at_ms, tools: tools.clone(), top_cause: top_cause.clone() }
                        }
                        other => other,
                    };
                    if ranked(&opened) {
                        out.push(opened);
                    } else {
                        self.held = Some(Held { opened, since_ms: h.since_ms });
                    }
                }
                (_, held) => {
                    // Closed before a cause was ranked: it still opened, then closed.
                    out.extend(held.map(|h| h.opened));
                    out.push(t.clone());
                }
            }
        }
        if let Some(h) = self.held.take_if(|h| now_ms >= h.since_ms + HOLD_MS) {
            out.push(h.opened);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaizen::detect::RankedCause;

    fn cause(name: &str) -> Option<RankedCause> {
        Some(RankedCause { cause: name.into(), score: 0.9, evidence: format!("{name} moved") })
    }

    fn opened(top: Option<RankedCause>) -> Transition {
        Transition::IncidentOpened {
            id: "inc-1".into(),
            at_ms: 1_000,
            tools: vec!["read_table".into()],
            top_cause: top,
        }
    }

    fn updated(top: Option<RankedCause>, tools: &[&str]) -> Transition {
        Transition::IncidentUpdated {
            id: "inc-1".into(),
            at_ms: 9_000,
            tools: tools.iter().map(|t| t.to_string()).collect(),
            top_cause: top,
        }
    }

    #[test]
    fn a_ranked_opening_goes_at_once() {
        let mut n = Notifier::default();
        let out = n.pass(&[opened(cause("saturation"))], 1_000);
        assert_eq!(out, [opened(cause("saturation"))]);
        assert!(n.pass(&[], 60_000).is_empty());
    }

    #[test]
    fn an_unranked_opening_waits_for_its_cause_and_is_sent_once_as_opened() {
        let mut n = Notifier::default();
        assert!(n.pass(&[opened(cause("unknown"))], 1_000).is_empty());
        assert!(n.pass(&[updated(cause("unknown"), &["read_table", "sheet_page"])], 6_000).is_empty());
        let out = n.pass(&[updated(cause("saturation"), &["read_table", "sheet_page"])], 11_000);
        let want = Transition::IncidentOpened {
            id: "inc-1".into(),
            at_ms: 1_000,
            tools: vec!["read_table".into(), "sheet_page".into()],
            top_cause: cause("saturation"),
        };
        assert_eq!(out, [want]);
        // Later changes pass through as updates.
        assert_eq!(n.pass(&[updated(cause("cache_thrash"), &["read_table"])], 16_000).len(), 1);
    }

    #[test]
    fn an_unranked_opening_goes_after_the_hold_or_before_its_close() {
        let mut n = Notifier::default();
        assert!(n.pass(&[opened(None)], 1_000).is_empty());
        assert!(n.pass(&[], 1_000 + HOLD_MS - 1).is_empty());
        assert_eq!(n.pass(&[], 1_000 + HOLD_MS), [opened(None)]);

        let closed = Transition::IncidentClosed { id: "inc-1".into(), at_ms: 5_000, tools: vec![], top_cause: None };
        assert!(n.pass(&[opened(cause("unknown"))], 1_000).is_empty());
        assert_eq!(n.pass(std::slice::from_ref(&closed), 5_000), [opened(cause("unknown")), closed]);
    }

    #[test]
    fn anomaly_transitions_are_not_notified() {
        let anomaly = Transition::AnomalyClosed {
            tool: "read_table".into(),
            signal: kaizen::detect::Signal::Latency,
            at_ms: 1,
            detail: String::new(),
        };
        assert!(Notifier::default().pass(&[anomaly], 1).is_empty());
    }
}
