//! Gemba's operational alerts (seed 000's alerting section): error-rate spike, recalculation
//! circuit breaker open, memory near its limit, low workbook-cache hit rate, retry storm, usage
//! spike, long-running recalculation. The thresholds come from the `[operational]` table of the
//! SLO file; `kaizen::operational` evaluates the rules in process and renders them for
//! Prometheus from the same figures.

use std::sync::atomic::Ordering::Relaxed;

use kaizen::operational::{Condition, Rule, Signals};
use serde::{Deserialize, Serialize};

use crate::server::GembaServer;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperationalConfig {
    /// Share of requests that are `internal` or `timeout` over 5 min (HighErrorRate), for 2 min.
    pub error_rate: f64,
    /// Resident memory over this share of the limit (MemoryExhaustion), for 5 min.
    pub memory_fraction: f64,
    /// Cache hit rate under this (LowCacheHitRate), for 15 min, with at least `min_lookups`.
    pub cache_hit_rate: f64,
    pub min_lookups: u64,
    /// Recalc retries per second over 5 min (HighRetryRate), for 5 min.
    pub retries_per_second: f64,
    /// Request rate over 5 min above this many times its 1 h average (UsageSpike), for 10 min.
    pub usage_spike_factor: f64,
    /// A recalculation running longer than this many seconds (LongRunningRecalc).
    pub recalc_seconds: f64,
    /// Minutes the recalc breaker must stay open (CircuitBreakerOpen).
    pub breaker_open_minutes: u64,
}

impl Default for OperationalConfig {
    fn default() -> Self {
        Self {
            error_rate: 0.1,
            memory_fraction: 0.9,
            cache_hit_rate: 0.5,
            min_lookups: 20,
            retries_per_second: 10.0,
            usage_spike_factor: 2.0,
            recalc_seconds: 120.0,
            breaker_open_minutes: 5,
        }
    }
}

const REQUESTS: &str = "requests";
const SERVER_ERRORS: &str = "server_errors";
const CACHE_HITS: &str = "cache_hits";
const CACHE_MISSES: &str = "cache_misses";
const RETRIES: &str = "recalc_retries";
const RSS: &str = "rss_bytes";
const MEMORY_LIMIT: &str = "memory_limit_bytes";
const BREAKER_OPEN: &str = "recalc_breaker_open";
const LONGEST_RECALC: &str = "longest_recalc_seconds";

fn f(x: f64) -> String {
    kaizen::slo::prom_float(x)
}

/// Gemba's rules from the configured thresholds.
pub fn rules(c: &OperationalConfig) -> Vec<Rule> {
    let s = |x: &str| x.to_string();
    let rule = |name: &str,
                severity: &str,
                hold_secs: u64,
                anchor: &str,
                summary: String,
                condition,
                promql: String,
                prom_for: &str| Rule {
        name: name.into(),
        severity: severity.into(),
        hold_secs,
        runbook_anchor: anchor.into(),
        summary,
        condition,
        promql,
        prom_for: prom_for.into(),
    };
    let lookups15 = "(sum(increase(gemba_cache_hits_total[15m])) + sum(increase(gemba_cache_misses_total[15m])))";
    vec![
        rule(
            "GembaHighErrorRate",
            "page",
            120,
            "high-error-rate",
            format!("more than {:.0}% of requests failed on the server for 2 minutes", c.error_rate * 100.0),
            Condition::Ratio {
                num: vec![s(SERVER_ERRORS)],
                den: vec![s(REQUESTS)],
                window_secs: 300,
                below: false,
                threshold: c.error_rate,
                min_den: 10.0,
            },
            format!(
                "sum(rate(gemba_tool_requests_total{{outcome=~\"internal|timeout\"}}[5m])) / sum(rate(gemba_tool_requests_total[5m])) > {} and sum(increase(gemba_tool_requests_total[5m])) >= 10",
                f(c.error_rate)
            ),
            "2m",
        ),
        rule(
            "GembaCircuitBreakerOpen",
            "page",
            c.breaker_open_minutes * 60,
            "circuit-breaker-open",
            format!("the recalc circuit breaker has been open for {} minutes", c.breaker_open_minutes),
            Condition::Above { signal: s(BREAKER_OPEN), per: None, threshold: 0.5 },
            "max(gemba_recalc_breaker_state) == 1".into(),
            &format!("{}m", c.breaker_open_minutes),
        ),
        rule(
            "GembaMemoryExhaustion",
            "page",
            300,
            "memory-exhaustion",
            format!("resident memory above {:.0}% of its limit for 5 minutes", c.memory_fraction * 100.0),
            Condition::Above { signal: s(RSS), per: Some(s(MEMORY_LIMIT)), threshold: c.memory_fraction },
            format!(
                "gemba_process_resident_memory_bytes / gemba_process_memory_limit_bytes > {}",
                f(c.memory_fraction)
            ),
            "5m",
        ),
        rule(
            "GembaLowCacheHitRate",
            "ticket",
            900,
            "low-cache-hit-rate",
            format!("workbook cache hit rate below {:.0}% for 15 minutes", c.cache_hit_rate * 100.0),
            Condition::Ratio {
                num: vec![s(CACHE_HITS)],
                den: vec![s(CACHE_HITS), s(CACHE_MISSES)],
                window_secs: 900,
                below: true,
                threshold: c.cache_hit_rate,
                min_den: c.min_lookups as f64,
            },
            format!(
                "sum(increase(gemba_cache_hits_total[15m])) / {lookups15} < {} and {lookups15} >= {}",
                f(c.cache_hit_rate),
                c.min_lookups
            ),
            "15m",
        ),
        rule(
            "GembaHighRetryRate",
            "ticket",
            300,
            "high-retry-rate",
            format!("recalc retries above {}/s for 5 minutes", f(c.retries_per_second)),
            Condition::Rate { signal: s(RETRIES), window_secs: 300, threshold: c.retries_per_second },
            format!("sum(rate(gemba_recalc_retries_total[5m])) > {}", f(c.retries_per_second)),
            "5m",
        ),
        rule(
            "GembaUsageSpike",
            "info",
            600,
            "usage-spike",
            format!("request rate {}x its hourly average for 10 minutes", f(c.usage_spike_factor)),
            Condition::Spike {
                signal: s(REQUESTS),
                short_secs: 300,
                long_secs: 3600,
                factor: c.usage_spike_factor,
                min_increase: 100.0,
            },
            format!(
                "sum(rate(gemba_tool_requests_total[5m])) > {} * avg_over_time(sum(rate(gemba_tool_requests_total[5m]))[1h:1m])",
                f(c.usage_spike_factor)
            ),
            "10m",
        ),
        rule(
            "GembaLongRunningRecalc",
            "info",
            0,
            "long-running-recalc",
            format!("a recalculation has run for more than {} s", f(c.recalc_seconds)),
            Condition::Above { signal: s(LONGEST_RECALC), per: None, threshold: c.recalc_seconds },
            format!("max(gemba_recalc_running_seconds) > {}", f(c.recalc_seconds)),
            "1m",
        ),
    ]
}

/// What the rules look at now, read from the recorder, the cache and /proc.
pub fn signals(server: &GembaServer, recorder: &kaizen::Recorder) -> Signals {
    let (mut requests, mut server_errors) = (0, 0);
    for (_, s) in recorder.ops() {
        requests += s.total_requests() - s.requests[kaizen::Outcome::Cancelled as usize].load(Relaxed);
        server_errors += s.requests[kaizen::Outcome::Internal as usize].load(Relaxed)
            + s.requests[kaizen::Outcome::Timeout as usize].load(Relaxed);
    }
    let cache = &server.engine().cache.stats;
    let lo = &server.engine().forks.stats.libreoffice;
    let p = kaizen::process::process_stats();
    let v = |k: &str, x: f64| (k.to_string(), x);
    vec![
        v(REQUESTS, requests as f64),
        v(SERVER_ERRORS, server_errors as f64),
        v(CACHE_HITS, cache.hits.load(Relaxed) as f64),
        v(CACHE_MISSES, cache.misses.load(Relaxed) as f64),
        v(RETRIES, lo.retries.load(Relaxed) as f64),
        v(RSS, p.resident_memory_bytes as f64),
        v(MEMORY_LIMIT, p.memory_limit_bytes as f64),
        v(BREAKER_OPEN, f64::from(u8::from(lo.breaker_state.load(Relaxed) == 1))),
        v(LONGEST_RECALC, lo.longest_running_seconds()),
    ]
}
