//! `notifications/message`: the one place that tells an agent what it should know besides a
//! result (a limit hit, a fallback taken, a file changed under a fork, a response cut by a cap).
//!
//! Each era has its own switch: a legacy session sets one level with `logging/setLevel` (until
//! then it hears warnings and worse); a 2026-07-28 request opts in with the
//! `io.modelcontextprotocol/logLevel` key of its own `_meta` and hears nothing without it.
//! Messages pass a token bucket per session (10 a second, bursts of 20); what does not fit is
//! dropped and counted.
#![allow(deprecated)] // rmcp marks the logging types deprecated (SEP-2577); both eras still use them.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use rmcp::RoleServer;
use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
use rmcp::service::{Peer, RequestContext};
use serde_json::{Value, json};
use sheets::limits::{Notice, NoticeLevel};

/// Messages a session may send per second, and the burst it may save up.
pub const RATE_PER_SECOND: f64 = 10.0;
pub const BURST: f64 = 20.0;

/// A legacy session's level before it calls `logging/setLevel`.
pub const DEFAULT_SESSION_LEVEL: LoggingLevel = LoggingLevel::Warning;

/// Severity order of MCP's (syslog) levels; higher is more severe.
pub fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

fn from_rank(r: u8) -> LoggingLevel {
    match r {
        0 => LoggingLevel::Debug,
        1 => LoggingLevel::Info,
        2 => LoggingLevel::Notice,
        3 => LoggingLevel::Warning,
        4 => LoggingLevel::Error,
        5 => LoggingLevel::Critical,
        6 => LoggingLevel::Alert,
        _ => LoggingLevel::Emergency,
    }
}

/// The MCP level of a domain notice.
pub fn level_of(n: NoticeLevel) -> LoggingLevel {
    match n {
        NoticeLevel::Info => LoggingLevel::Info,
        NoticeLevel::Notice => LoggingLevel::Notice,
        NoticeLevel::Warning => LoggingLevel::Warning,
        NoticeLevel::Error => LoggingLevel::Error,
    }
}

/// A token bucket: `capacity` tokens, refilled at `rate` per second.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    rate: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, capacity: f64) -> Self {
        Self { tokens: capacity, capacity, rate, at: Instant::now() }
    }

    /// Take one token at `now` if there is one.
    pub fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counters of the logging channel, shared by every session.
#[derive(Debug, Default)]
pub struct LogCounters {
    pub sent: AtomicU64,
    /// Over the session's rate.
    pub dropped: AtomicU64,
    /// Below the level the client asked for (not an error: just not wanted).
    pub filtered: AtomicU64,
}

/// One session's logging state: its level (legacy) and its rate limit.
#[derive(Debug)]
pub struct SessionLog {
    level: AtomicU8,
    bucket: Mutex<TokenBucket>,
}

impl Default for SessionLog {
    fn default() -> Self {
        Self {
            level: AtomicU8::new(rank(DEFAULT_SESSION_LEVEL)),
            bucket: Mutex::new(TokenBucket::new(RATE_PER_SECOND, BURST)),
        }
    }
}

impl SessionLog {
    /// `logging/setLevel`: the session hears `level` and worse from now on.
    pub fn set_level(&self, level: LoggingLevel) {
        self.level.store(rank(level), Ordering::Relaxed);
    }

    pub fn level(&self) -> LoggingLevel {
        from_rank(self.level.load(Ordering::Relaxed))
    }
}

/// Where one request's messages go, and from which level: built from the request context.
pub struct RequestLog<'a> {
    peer: Peer<RoleServer>,
    threshold: Option<LoggingLevel>,
    session: &'a SessionLog,
    counters: &'a LogCounters,
}

impl<'a> RequestLog<'a> {
    /// The level that applies to this request: its own `_meta` level (2026-07-28), else the
    /// session's (legacy), else none (a 2026-07-28 request that did not opt in).
    pub fn new(ctx: &RequestContext<RoleServer>, session: &'a SessionLog, counters: &'a LogCounters) -> Self {
        let threshold = match ctx.meta.log_level() {
            Some(l) => Some(l),
            None if super::is_legacy(ctx) => Some(session.level()),
            None => None,
        };
        Self { peer: ctx.peer.clone(), threshold, session, counters }
    }

    /// Whether a message at `level` would be sent (so callers can skip building it).
    pub fn wants(&self, level: LoggingLevel) -> bool {
        self.threshold.is_some_and(|t| rank(level) >= rank(t))
    }

    /// Send one message: `data` is an object with at least a `message`.
    pub async fn emit(&self, level: LoggingLevel, logger: &str, data: Value) {
        if !self.wants(level) {
            self.counters.filtered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.session.bucket.lock().take_at(Instant::now()) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let param = LoggingMessageNotificationParam::new(level, data).with_logger(logger);
        match self.peer.notify_logging_message(param).await {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!("log message not delivered: {e}"),
        }
    }

    /// Send the notices a call's domain code left (see `sheets::limits::Observer`).
    pub async fn emit_notices(&self, tool: &str, notices: Vec<Notice>, more: usize) {
        for n in notices {
            let level = level_of(n.level);
            self.emit(level, &format!("gemba.{}", n.topic), json!({"message": n.message, "tool": tool})).await;
        }
        if more > 0 {
            self.counters.dropped.fetch_add(more as u64, Ordering::Relaxed);
        }
    }
}

/// What a tool's result says an agent should hear about: a response cut by a cap, cells whose
/// recalculated value fell back to the file's, a save that could not recalculate first.
pub fn result_notices(tool: &str, result: &Value) -> Vec<(LoggingLevel, &'static str, Value)> {
    let mut out = Vec::new();
    if result.get("truncated").and_then(Value::as_bool) == Some(true) {
        let hint =
            result.get("hint").and_then(Value::as_str).unwrap_or("narrow the call or continue from where it stopped");
        out.push((
            LoggingLevel::Info,
            "gemba.responses",
            json!({"message": format!("the {tool} response was cut at a cap; {hint}"), "tool": tool}),
        ));
    }
    let issues = result
        .pointer("/report/issue_count")
        .or_else(|| result.get("recalc_issues"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if issues > 0 {
        out.push((
            LoggingLevel::Warning,
            "gemba.recalc",
            json!({
                "message": format!(
                    "{issues} formula cells could not be recalculated (cycles or unsupported functions) and kept the file's value; recalculate with backend=\"libreoffice\" to compute them"
                ),
                "tool": tool,
                "cells": issues,
            }),
        ));
    }
    if let Some(err) = result.get("recalc_error").and_then(Value::as_str) {
        out.push((
            LoggingLevel::Warning,
            "gemba.recalc",
            json!({
                "message": format!("saved without recalculating ({err}); Excel will recalculate the file when it opens it"),
                "tool": tool,
            }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_bursts_then_the_rate() {
        let mut b = TokenBucket::new(10.0, 20.0);
        let t0 = Instant::now();
        let burst = (0..100).filter(|_| b.take_at(t0)).count();
        assert_eq!(burst, 20, "a full bucket gives its burst at once");
        // One second later: ten more, not a second burst.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| b.take_at(t1)).count(), 10);
        // Over ten seconds at 50 a second, 10 a second pass (plus nothing saved up).
        let mut passed = 0;
        for i in 0..500u64 {
            if b.take_at(t1 + Duration::from_millis(20 * (i + 1))) {
                passed += 1;
            }
        }
        assert!((99..=101).contains(&passed), "{passed} passed in 10 s");
    }

    #[test]
    fn levels_order_like_syslog() {
        assert!(rank(LoggingLevel::Debug) < rank(LoggingLevel::Info));
        assert!(rank(LoggingLevel::Warning) < rank(LoggingLevel::Error));
        assert!(rank(LoggingLevel::Alert) < rank(LoggingLevel::Emergency));
        for r in 0..8 {
            assert_eq!(rank(from_rank(r)), r);
        }
        let s = SessionLog::default();
        assert_eq!(s.level(), LoggingLevel::Warning);
        s.set_level(LoggingLevel::Debug);
        assert_eq!(s.level(), LoggingLevel::Debug);
    }

    #[test]
    fn results_become_notices() {
        let cut = json!({"truncated": true, "hint": "use offset 500"});
        let n = result_notices("read_table", &cut);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].0, LoggingLevel::Info);
        assert!(n[0].2["message"].as_str().unwrap().contains("use offset 500"));
        let recalc = json!({"report": {"issue_count": 3, "changed": 1}});
        let n = result_notices("recalculate", &recalc);
        assert_eq!((n.len(), n[0].1), (1, "gemba.recalc"));
        assert_eq!(n[0].2["cells"], 3);
        let saved = json!({"recalc_error": "engine failed", "recalc_issues": 0});
        assert_eq!(result_notices("save_fork", &saved).len(), 1);
        assert!(result_notices("list_workbooks", &json!({"workbooks": [], "total": 0})).is_empty());
    }
}
