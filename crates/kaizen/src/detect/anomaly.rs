//! One tool's anomaly state: its windows, its latency and error-ratio detectors, warm-up, and
//! the handling of idle gaps (the first evaluations after a long silence neither alarm nor
//! teach, since a cold start after idle is not an incident).

use serde::{Deserialize, Serialize};

use super::config::DetectConfig;
use super::errors::{ErrorBaseline, ErrorDetector};
use super::input::CallEvent;
use super::latency::{LatencyBaseline, LatencyDetector};
use super::window::{Accum, ToolWindows};

/// One tool's learned baselines, saved by a run and restored by the next
/// (`Detector::baselines`, `Detector::restore_baselines`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolBaseline {
    pub tool: String,
    pub saved_ms: u64,
    pub latency: LatencyBaseline,
    pub errors: ErrorBaseline,
}

/// What is anomalous about a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Successful calls got slower.
    Latency,
    /// More calls failed (any class but ok).
    ErrorRatio,
}

impl Signal {
    pub const ALL: [Signal; 2] = [Signal::Latency, Signal::ErrorRatio];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Latency => "latency",
            Signal::ErrorRatio => "error_ratio",
        }
    }
}

/// What one evaluation concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Quiet,
    /// The symptom began at `onset_ms` (start of the run that crossed the threshold).
    Opened {
        onset_ms: u64,
        detail: String,
    },
    Closed {
        detail: String,
    },
}

/// Where an evaluation sits and what it may do.
#[derive(Debug, Clone, Copy)]
pub struct EvalCtx {
    pub start_ms: u64,
    pub end_ms: u64,
    /// False during re-warm after an idle gap.
    pub alarms_allowed: bool,
    /// Whether the evaluation may teach the baseline.
    pub learn: bool,
}

/// An anomaly opening or closing.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyChange {
    pub tool: String,
    pub signal: Signal,
    /// End of the evaluation that decided (unix ms).
    pub at_ms: u64,
    /// `Some(onset)` when it opened, `None` when it closed.
    pub onset_ms: Option<u64>,
    pub detail: String,
}

#[derive(Debug)]
pub struct ToolDetector {
    pub name: String,
    windows: ToolWindows,
    latency: LatencyDetector,
    errors: ErrorDetector,
    last_end_ms: Option<u64>,
    rewarm_left: u32,
}

impl ToolDetector {
    pub fn new(name: String) -> Self {
        Self {
            name,
            windows: ToolWindows::default(),
            latency: LatencyDetector::default(),
            errors: ErrorDetector::default(),
            last_end_ms: None,
            rewarm_left: 0,
        }
    }

    pub fn baseline(&self, saved_ms: u64) -> ToolBaseline {
        ToolBaseline {
            tool: self.name.clone(),
            saved_ms,
            latency: self.latency.baseline(),
            errors: self.errors.baseline(),
        }
    }

    /// Takes a baseline saved by an earlier run; the first `rewarm` evaluations after it
    /// neither alarm nor teach (a restarted server starts cold). `false` if malformed.
    pub fn restore(&mut self, b: &ToolBaseline, rewarm: u32) -> bool {
        let mut latency = LatencyDetector::default();
        let mut errors = ErrorDetector::default();
        if !latency.restore(&b.latency) || !errors.restore(&b.errors) {
            return false;
        }
        self.latency = latency;
        self.errors = errors;
        self.rewarm_left = rewarm;
        true
    }

    #[inline]
    pub fn add(&mut self, e: &CallEvent, window_ms: u64) {
        self.windows.add(e, window_ms);
    }

    pub fn is_open(&self, s: Signal) -> bool {
        match s {
            Signal::Latency => self.latency.is_open(),
            Signal::ErrorRatio => self.errors.is_open(),
        }
    }

    /// Whether either baseline is still being learned.
    pub fn warming(&self, cfg: &DetectConfig) -> bool {
        self.latency.warming(cfg) || self.errors.warming(cfg)
    }

    /// Evaluates every window ended by `now_ms`; returns the anomalies that opened or closed.
    pub fn close_windows(&mut self, now_ms: u64, cfg: &DetectConfig) -> Vec<AnomalyChange> {
        let window_ms = cfg.window_ms();
        let ready = self.windows.take_ready(now_ms, window_ms, cfg.late_grace_ms, cfg.min_calls, cfg.max_pool_windows);
        let mut out = Vec::new();
        for acc in &ready {
            self.evaluate(acc, cfg, &mut out);
        }
        // A tool gone quiet with an anomaly open: nothing is slow or failing any more.
        let quiet_ms = 2 * cfg.max_pool_windows * window_ms + cfg.late_grace_ms;
        if let Some(last) = self.last_end_ms
            && now_ms.saturating_sub(last) >= quiet_ms
        {
            for (signal, v) in [(Signal::Latency, self.latency.expire()), (Signal::ErrorRatio, self.errors.expire())] {
                self.push(&mut out, signal, last, v);
            }
        }
        out
    }

    fn evaluate(&mut self, acc: &Accum, cfg: &DetectConfig, out: &mut Vec<AnomalyChange>) {
        let (start_ms, end_ms) = acc.span_ms(cfg.window_ms());
        if let Some(last) = self.last_end_ms
            && start_ms.saturating_sub(last) >= cfg.idle_reset_secs * 1000
        {
            self.rewarm_left = cfg.rewarm_evaluations;
            self.latency.reset_run();
            self.errors.reset_run();
        }
        let settled = self.rewarm_left == 0;
        let ctx = EvalCtx { start_ms, end_ms, alarms_allowed: settled, learn: settled };
        let lv = self.latency.evaluate(acc, cfg, ctx);
        self.push(out, Signal::Latency, end_ms, lv);
        let ev = self.errors.evaluate(acc, cfg, ctx);
        self.push(out, Signal::ErrorRatio, end_ms, ev);
        self.rewarm_left = self.rewarm_left.saturating_sub(1);
        self.last_end_ms = Some(end_ms);
    }

    fn push(&self, out: &mut Vec<AnomalyChange>, signal: Signal, at_ms: u64, v: Verdict) {
        let tool = self.name.clone();
        match v {
            Verdict::Quiet => {}
            Verdict::Opened { onset_ms, detail } => {
                out.push(AnomalyChange { tool, signal, at_ms, onset_ms: Some(onset_ms), detail })
            }
            Verdict::Closed { detail } => out.push(AnomalyChange { tool, signal, at_ms, onset_ms: None, detail }),
        }
    }
}
