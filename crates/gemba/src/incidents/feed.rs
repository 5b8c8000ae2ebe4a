//! Finished calls into the detector, from the recorder's aggregator thread (never on a
//! request's path): one `CallEvent` per call, its class from the outcome and the error's
//! category (`data` makes a tool error a data error); calls the client cancelled are left out.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use kaizen::Finished;
use kaizen::detect::{CallClass, CallEvent};

use super::Incidents;

pub struct Feed {
    incidents: Arc<Incidents>,
}

impl Feed {
    pub fn new(incidents: Arc<Incidents>) -> Self {
        Self { incidents }
    }
}

/// The detector's view of one finished call; None for a call it should not judge.
pub fn call_event(f: &Finished) -> Option<CallEvent> {
    let category = f.completion.error.as_ref().map(|(category, _)| category.as_str());
    let class = CallClass::from_outcome(f.outcome(), category)?;
    Some(CallEvent {
        op: usize::from(f.op),
        at_ms: f.at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        latency_us: f.micros,
        class,
        response_bytes: f.completion.response_bytes,
    })
}

impl kaizen::Observer for Feed {
    fn observe(&self, batch: &[Finished]) {
        let calls: Vec<CallEvent> = batch.iter().filter_map(call_event).collect();
        if !calls.is_empty() {
            self.incidents.detector.record(&calls);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaizen::{Completion, Outcome};

    fn finished(outcome: Outcome, category: Option<&str>) -> Finished {
        Finished {
            op: 3,
            micros: 1500,
            at: UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            completion: Completion {
                outcome: Some(outcome),
                response_bytes: 42,
                error: category.map(|c| (c.to_string(), "msg".to_string())),
                ..Default::default()
            },
        }
    }

    #[test]
    fn classes_follow_outcome_and_category() {
        let e = call_event(&finished(Outcome::Ok, None)).unwrap();
        assert_eq!(
            (e.op, e.at_ms, e.latency_us, e.class, e.response_bytes),
            (3, 1_700_000_000_123, 1500, CallClass::Ok, 42)
        );
        assert_eq!(call_event(&finished(Outcome::ToolError, Some("data"))).unwrap().class, CallClass::DataError);
        assert_eq!(call_event(&finished(Outcome::ToolError, Some("user"))).unwrap().class, CallClass::UserError);
        assert_eq!(call_event(&finished(Outcome::Rejected, Some("transient"))).unwrap().class, CallClass::Refused);
        assert_eq!(call_event(&finished(Outcome::Timeout, Some("transient"))).unwrap().class, CallClass::Timeout);
        assert_eq!(call_event(&finished(Outcome::Internal, Some("system"))).unwrap().class, CallClass::ServerError);
        assert!(call_event(&finished(Outcome::Cancelled, Some("transient"))).is_none());
    }
}
