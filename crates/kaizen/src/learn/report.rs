//! The report: every analysis over one period of the request log, built in one streaming pass
//! (plus a light pass over the previous period for the trends), serialized to the JSON contract
//! and rendered as Markdown or self-contained HTML.

use std::path::Path;

use serde::Serialize;

use super::LearnError;
use super::backlog::{self, BacklogItem, EffortOverrides};
use super::cache::{self, CacheSection, Trace};
use super::compliance::{self, SloLine};
use super::ids::Interner;
use super::runs::{self, RunChange};
use super::scan;
use super::signature::{ErrorsSection, Signatures};
use super::stream::{StageLine, StreamAcc};
use super::time::{DAY_MS, iso};
use super::trends::{self, ToolChange, TrendAcc, TrendRow};
use super::usage::{Call, KeyTouch, SessionEvent, Usage, UsageSection};

/// The span a report covers, ending at its `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    /// 30 days.
    Month,
}

impl Period {
    pub fn length_ms(self) -> i64 {
        match self {
            Period::Day => DAY_MS,
            Period::Week => 7 * DAY_MS,
            Period::Month => 30 * DAY_MS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

impl std::str::FromStr for Period {
    type Err = LearnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            other => Err(LearnError::Options(format!("unknown period '{other}': use day, week or month"))),
        }
    }
}

/// An output format of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The contract: every figure, for programs.
    Json,
    /// For chat and pull requests.
    Markdown,
    /// Self-contained (inline SVG charts, no scripts, no external resources).
    Html,
}

impl std::str::FromStr for Format {
    type Err = LearnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "md" | "markdown" => Ok(Format::Markdown),
            "html" => Ok(Format::Html),
            other => Err(LearnError::Options(format!("unknown format '{other}': use md, html or json"))),
        }
    }
}

/// What to report on, and the facts the log does not hold.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub period: Period,
    /// The end of the period (exclusive), Unix milliseconds.
    pub until_ms: i64,
    /// The cache capacity in force while the log was recorded, in bytes (for the what-if's
    /// check against the measured hit rate and the recommendation's comparison).
    pub capacity_bytes: Option<u64>,
    /// (SLO name as saved in `slo_minutes`, objective such as 0.999).
    pub slo_objectives: Vec<(String, f64)>,
    /// Seconds per SLI interval in `slo_minutes` (60 unless the SLI engine was configured
    /// otherwise).
    pub slo_resolution_secs: u64,
    /// Effort per backlog item id or kind, overriding the defaults.
    pub effort_overrides: EffortOverrides,
    /// How many signatures, workflows and keys to list.
    pub top_n: usize,
    /// A client idle this long starts a new session.
    pub session_gap_ms: i64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self {
            period: Period::Week,
            until_ms: now,
            capacity_bytes: None,
            slo_objectives: Vec::new(),
            slo_resolution_secs: 60,
            effort_overrides: EffortOverrides::new(),
            top_n: 10,
            session_gap_ms: 30 * 60 * 1000,
        }
    }
}

impl ReportOptions {
    fn validate(&self) -> Result<(), LearnError> {
        let bad = |m: String| Err(LearnError::Options(m));
        if !(1..=1000).contains(&self.top_n) {
            return bad(format!("top_n is {}: use 1 to 1000", self.top_n));
        }
        if self.session_gap_ms <= 0 {
            return bad(format!("session_gap_ms is {}: use a positive number of milliseconds", self.session_gap_ms));
        }
        if !(1..=86_400).contains(&self.slo_resolution_secs) {
            return bad(format!(
                "slo_resolution_secs is {}: use the SLI engine's interval in seconds (60 by default)",
                self.slo_resolution_secs
            ));
        }
        if let Some((n, o)) = self.slo_objectives.iter().find(|(_, o)| !(*o > 0.0 && *o <= 1.0)) {
            return bad(format!("the objective of SLO '{n}' is {o}: use a share in (0, 1], such as 0.999"));
        }
        if let Some((k, e)) = self.effort_overrides.iter().find(|(_, e)| !(e.is_finite() && **e > 0.0)) {
            return bad(format!("the effort for '{k}' is {e}: use a positive number of person-days"));
        }
        if self.capacity_bytes == Some(0) {
            return bad("capacity_bytes is 0: pass the cache capacity in force, or none".into());
        }
        Ok(())
    }
}

/// A report over one period. Serializes to the JSON contract.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub period: Period,
    /// Start (inclusive) and end (exclusive) of the period, ISO 8601 UTC and Unix milliseconds.
    pub from: String,
    pub until: String,
    pub from_ms: i64,
    pub until_ms: i64,
    /// Requests logged in the period.
    pub requests: u64,
    pub slo: Vec<SloLine>,
    pub errors: ErrorsSection,
    pub usage: UsageSection,
    pub cache: CacheSection,
    /// Per tool per day, each against the day before.
    pub trends: Vec<TrendRow>,
    /// Per tool, the period against the previous one.
    pub tool_changes: Vec<ToolChange>,
    /// Where each tool's time went.
    pub value_stream: Vec<StageLine>,
    /// Starts of the server in the period, with version and configuration changes.
    pub runs: Vec<RunChange>,
    pub backlog: Vec<BacklogItem>,
}

/// Most distinct tool names; the rest are counted as one "(other)".
const MAX_TOOLS: usize = 4095;
/// Most distinct keys; requests on further keys are not replayed or ranked.
const MAX_KEYS: usize = 1_000_000;

fn tool_id(tools: &mut Interner, name: &[u8]) -> u16 {
    tools.id(name).map(|i| i as u16).unwrap_or(MAX_TOOLS as u16)
}

fn route(sigs: &mut Signatures, ev: SessionEvent) {
    match ev {
        SessionEvent::Next { prev, next } => {
            if let Some(s) = prev.sig {
                sigs.follow_up(s, prev.tool, next.tool, next.ok);
            }
        }
        SessionEvent::End { last } => {
            if let Some(s) = last.sig {
                sigs.abandoned(s);
            }
        }
    }
}

/// Build the report for `opts.period` ending at `opts.until_ms` from the log at `db_path`.
pub fn build(db_path: &Path, opts: &ReportOptions) -> Result<Report, LearnError> {
    opts.validate()?;
    let len = opts.period.length_ms();
    let until = opts.until_ms;
    let from = until.saturating_sub(len);
    let conn = scan::open(db_path)?;

    let mut tools = Interner::new(MAX_TOOLS);
    let mut keys = Interner::new(MAX_KEYS);
    let mut sigs = Signatures::default();
    let mut usage = Usage::new(opts.session_gap_ms);
    let mut trace = Trace::default();
    let mut trend = TrendAcc::default();
    let mut stream = StreamAcc::default();
    let requests = scan::scan_full(db_path, from, until, |row| {
        let tool = tool_id(&mut tools, row.tool);
        let key = row.key.and_then(|k| keys.id(k));
        let sig = sigs.observe(row, tool);
        let ok = !row.failed();
        trend.observe(tool, row.at_ms, row.duration_us, ok);
        stream.observe(tool, row.duration_us, row.queue_us, row.stages_us);
        let key_bytes = row.key_bytes.max(0) as u64;
        trace.observe(row.cache_hit, key, key_bytes);
        let touch = KeyTouch { response_bytes: row.response_bytes.max(0) as u64, cache_hit: row.cache_hit, key_bytes };
        usage.observe(
            row.session,
            row.at_ms,
            Call { tool, ok, sig, truncated: row.truncated },
            key.map(|k| (k, &touch)),
            &mut |ev| route(&mut sigs, ev),
        );
        Ok(())
    })?;
    let mut prev = TrendAcc::default();
    scan::scan_light(&conn, from.saturating_sub(len), from, |r| {
        let tool = tool_id(&mut tools, r.tool);
        prev.observe(tool, r.at_ms, r.duration_us, r.ok);
    })?;

    let mut tool_names = tools.names().to_vec();
    if tool_names.len() >= MAX_TOOLS {
        tool_names.resize(MAX_TOOLS + 1, "(other)".into());
    }
    let usage = usage.finish(until, &tool_names, keys.names(), opts.top_n, &mut |ev| route(&mut sigs, ev));
    let errors = sigs.finish(&tool_names, opts.top_n);
    let (trends, tool_changes) = trends::finish(trend, prev, &tool_names);
    let value_stream = stream.finish(&tool_names);
    drop(keys);
    let cache = cache::analyse(&trace, opts.capacity_bytes);
    drop(trace);

    let res = opts.slo_resolution_secs as i64;
    let minutes = scan::slo_minutes(&conn, from.div_euclid(1000 * res), until.div_euclid(1000 * res))?;
    let slo = compliance::section(&minutes, &opts.slo_objectives, opts.slo_resolution_secs);
    let run_list: Vec<crate::store::Run> =
        crate::store::load_runs(db_path, from)?.into_iter().filter(|r| r.started_ms < until).collect();
    let runs = runs::changes(&run_list, from);

    let backlog = backlog::build(
        &backlog::Inputs {
            errors: &errors,
            usage: &usage,
            cache: &cache,
            slo: &slo,
            changes: &tool_changes,
            trends: &trends,
            stream: &value_stream,
        },
        &opts.effort_overrides,
    );
    Ok(Report {
        period: opts.period,
        from: iso(from),
        until: iso(until),
        from_ms: from,
        until_ms: until,
        requests,
        slo,
        errors,
        usage,
        cache,
        trends,
        tool_changes,
        value_stream,
        runs,
        backlog,
    })
}

impl Report {
    /// The JSON contract, pretty-printed.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Markdown, for chat and pull requests.
    pub fn to_markdown(&self) -> String {
        super::markdown::render(self)
    }

    /// A self-contained HTML page (inline SVG charts; no scripts, fonts or other downloads).
    pub fn to_html(&self) -> String {
        super::html::render(self)
    }

    /// The report in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => self.to_json(),
            Format::Markdown => self.to_markdown(),
            Format::Html => self.to_html(),
        }
    }
}
