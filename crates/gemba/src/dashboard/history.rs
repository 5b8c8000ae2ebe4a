//! The 5-minute, 1-hour and 24-hour views from the request log (so they survive restarts):
//! calls, errors, refusals and latency per time bucket, per tool totals with their value
//! stream, the discovery-to-read funnel, the busiest workbooks and the latest errors.
//!
//! One streaming pass over the range, bounded in rows, time and memory: percentiles come from
//! small log-scale histograms (buckets 12 % wide, so a percentile is within ±6 % of the exact
//! one), sessions and workbooks are counted up to a cap. Runs on a blocking thread.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
use serde_json::{Value, json};

/// A time range the page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Range {
    FiveMinutes,
    Hour,
    Day,
}

impl Range {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "5m" => Ok(Range::FiveMinutes),
            "1h" => Ok(Range::Hour),
            "24h" => Ok(Range::Day),
            other => Err(format!("unknown range '{other}': use 5m, 1h or 24h")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Range::FiveMinutes => "5m",
            Range::Hour => "1h",
            Range::Day => "24h",
        }
    }

    pub fn span_ms(self) -> i64 {
        match self {
            Range::FiveMinutes => 5 * 60_000,
            Range::Hour => 3_600_000,
            Range::Day => 86_400_000,
        }
    }

    /// Width of one chart bucket.
    pub fn bucket_ms(self) -> i64 {
        match self {
            Range::FiveMinutes => 10_000,
            Range::Hour => 60_000,
            Range::Day => 15 * 60_000,
        }
    }

    /// How long a computed view is served before it is computed again.
    pub fn ttl(self) -> Duration {
        match self {
            Range::FiveMinutes => Duration::from_secs(5),
            Range::Hour => Duration::from_secs(20),
            Range::Day => Duration::from_secs(60),
        }
    }
}

/// Bounds of one query.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rows read at most; past it the view is marked partial.
    pub max_rows: u64,
    /// Time spent at most; past it the view is marked partial.
    pub max_time: Duration,
    /// Sessions followed for the funnel; later ones are counted as untracked.
    pub max_sessions: usize,
    /// Workbooks counted for the busiest list.
    pub max_keys: usize,
    /// Distinct tool names; later ones are counted as "(other)".
    pub max_tools: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows: 3_000_000,
            max_time: Duration::from_secs(10),
            max_sessions: 200_000,
            max_keys: 100_000,
            max_tools: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot open the request log {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("reading the request log failed: {0}")]
    Query(#[from] rusqlite::Error),
}

/// Log-scale buckets per decade of microseconds.
const PER_DECADE: f64 = 20.0;
/// Buckets: 1 µs to 10^10 µs (almost 3 hours).
const HIST_BUCKETS: usize = 200;

/// A latency histogram in log-scale buckets.
#[derive(Clone)]
struct Hist {
    counts: Box<[u32; HIST_BUCKETS]>,
    n: u64,
}

impl Hist {
    fn new() -> Self {
        Self { counts: Box::new([0; HIST_BUCKETS]), n: 0 }
    }

    fn add(&mut self, micros: i64) {
        let i = if micros <= 1 { 0 } else { ((micros as f64).log10() * PER_DECADE) as usize };
        let slot = &mut self.counts[i.min(HIST_BUCKETS - 1)];
        *slot = slot.saturating_add(1);
        self.n += 1;
    }

    /// The `q` quantile in milliseconds (the bucket's geometric middle), None when empty.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                let micros = 10f64.powf((i as f64 + 0.5) / PER_DECADE);
                return Some((micros / 1000.0 * 1000.0).round() / 1000.0);
            }
        }
        None
    }

    fn triple(&self) -> Value {
        match (self.quantile_ms(0.5), self.quantile_ms(0.95), self.quantile_ms(0.99)) {
            (Some(a), Some(b), Some(c)) => json!([a, b, c]),
            _ => Value::Null,
        }
    }
}

/// The tools of each step from discovery to a targeted read (Gemba's catalog).
const DISCOVERY: [&str; 5] = ["list_workbooks", "describe_workbook", "list_sheets", "workbook_summary", "named_ranges"];
const STRUCTURE: [&str; 8] = [
    "sheet_overview",
    "sheet_statistics",
    "table_profile",
    "find_value",
    "find_formula",
    "formula_trace",
    "scan_volatiles",
    "sheet_formula_map",
];
const READS: [&str; 4] = ["read_table", "range_values", "sheet_page", "inspect_cells"];

fn family(tool: &str) -> &'static str {
    if DISCOVERY.contains(&tool) {
        "discovery"
    } else if STRUCTURE.contains(&tool) {
        "structure"
    } else if READS.contains(&tool) {
        "read"
    } else if tool.contains('/') || ["initialize", "ping", "unknown"].contains(&tool) {
        "protocol"
    } else {
        "write"
    }
}

#[derive(Default, Clone, Copy)]
struct BucketCounts {
    calls: u64,
    errors: u64,
    refused: u64,
    timeouts: u64,
    hits: u64,
    misses: u64,
}

struct ToolAcc {
    calls: u64,
    errors: u64,
    outcomes: BTreeMap<String, u64>,
    hist: Hist,
    /// Per chart bucket, allocated on first use.
    buckets: Vec<Option<Hist>>,
    stages_us: BTreeMap<String, i64>,
    queue_us: i64,
}

/// Funnel flags of one session: 1 discovered, 2 looked at structure after, 4 read after.
fn advance(flags: u8, fam: &str) -> u8 {
    match fam {
        "discovery" => flags | 1,
        "structure" if flags & 1 != 0 => flags | 2,
        "read" if flags & 1 != 0 => flags | 4,
        _ => flags,
    }
}

fn is_error(outcome: &str) -> bool {
    outcome != "ok" && outcome != "cancelled"
}

fn open(db: &Path) -> Result<Connection, HistoryError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|source| HistoryError::Open { path: db.display().to_string(), source })?;
    // The writer holds the database most of the time under load: wait for it rather than fail.
    conn.busy_timeout(Duration::from_secs(2))?;
    Ok(conn)
}

/// The view of `range` ending at `until_ms`.
pub fn query(db: &Path, range: Range, until_ms: i64, lim: &Limits) -> Result<Value, HistoryError> {
    let started = Instant::now();
    let bucket_ms = range.bucket_ms();
    // Buckets aligned to their width, the last one holding `until_ms`.
    let last_start = until_ms - until_ms.rem_euclid(bucket_ms);
    let n_buckets = (range.span_ms() / bucket_ms) as usize;
    let from_ms = last_start - (n_buckets as i64 - 1) * bucket_ms;
    let conn = open(db)?;
    let mut stmt = conn.prepare(
        "SELECT at_ms, session, tool, duration_us, outcome, cache_hit, queue_us, stages_us, key
         FROM requests WHERE at_ms >= ?1 AND at_ms <= ?2",
    )?;
    let mut rows = stmt.query(params![from_ms, until_ms])?;
    let mut series = vec![BucketCounts::default(); n_buckets];
    let mut overall: Vec<Hist> = vec![Hist::new(); n_buckets];
    let mut tools: Vec<(String, ToolAcc)> = Vec::new();
    let mut sessions: HashMap<String, u8> = HashMap::new();
    let mut untracked_sessions = 0u64;
    let mut keys: HashMap<String, (u64, u64)> = HashMap::new();
    let mut families: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut scanned, mut partial) = (0u64, None::<String>);
    while let Some(r) = rows.next()? {
        scanned += 1;
        if scanned > lim.max_rows {
            partial = Some(format!("stopped after {} rows", lim.max_rows));
            break;
        }
        if scanned % 65_536 == 0 && started.elapsed() > lim.max_time {
            partial = Some(format!("stopped after {} s", lim.max_time.as_secs()));
            break;
        }
        let at: i64 = r.get(0)?;
        let session: String = r.get(1)?;
        let tool: String = r.get(2)?;
        let micros: i64 = r.get(3)?;
        let outcome: String = r.get(4)?;
        let hit: Option<bool> = r.get(5)?;
        let queue: i64 = r.get(6)?;
        let stages: Option<String> = r.get(7)?;
        let key: Option<String> = r.get(8)?;
        let b = (((at - from_ms) / bucket_ms).max(0) as usize).min(n_buckets - 1);
        let err = is_error(&outcome);
        let s = &mut series[b];
        s.calls += 1;
        s.errors += u64::from(err);
        s.refused += u64::from(outcome == "rejected");
        s.timeouts += u64::from(outcome == "timeout");
        match hit {
            Some(true) => s.hits += 1,
            Some(false) => s.misses += 1,
            None => {}
        }
        overall[b].add(micros);
        let name = if tools.iter().any(|(n, _)| *n == tool) || tools.len() < lim.max_tools {
            tool
        } else {
            "(other)".to_string()
        };
        let fam = family(&name);
        *families.entry(fam).or_default() += 1;
        let idx = match tools.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                tools.push((
                    name,
                    ToolAcc {
                        calls: 0,
                        errors: 0,
                        outcomes: BTreeMap::new(),
                        hist: Hist::new(),
                        buckets: vec![None; n_buckets],
                        stages_us: BTreeMap::new(),
                        queue_us: 0,
                    },
                ));
                tools.len() - 1
            }
        };
        let t = &mut tools[idx].1;
        t.calls += 1;
        t.errors += u64::from(err);
        *t.outcomes.entry(outcome).or_default() += 1;
        t.hist.add(micros);
        t.buckets[b].get_or_insert_with(Hist::new).add(micros);
        t.queue_us += queue.max(0);
        if let Some(obj) = stages.and_then(|s| serde_json::from_str::<serde_json::Map<String, Value>>(&s).ok()) {
            for (k, v) in obj {
                *t.stages_us.entry(k).or_default() += v.as_i64().unwrap_or(0).max(0);
            }
        }
        let room = sessions.len() < lim.max_sessions;
        match sessions.get_mut(&session) {
            Some(f) => *f = advance(*f, fam),
            None if room => {
                sessions.insert(session, advance(0, fam));
            }
            None => untracked_sessions += 1,
        }
        if let Some(k) = key {
            let missed = u64::from(hit == Some(false));
            let room = keys.len() < lim.max_keys;
            match keys.get_mut(&k) {
                Some(e) => {
                    e.0 += 1;
                    e.1 += missed;
                }
                None if room => {
                    keys.insert(k, (1, missed));
                }
                None => {}
            }
        }
    }
    drop(rows);
    tools.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(&b.0)));
    let mut top_keys: Vec<(String, (u64, u64))> = keys.into_iter().collect();
    top_keys.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    top_keys.truncate(10);
    let count = |mask: u8| sessions.values().filter(|f| **f & mask == mask).count();
    let (hits, misses) = series.iter().fold((0, 0), |(h, m), s| (h + s.hits, m + s.misses));
    Ok(json!({
        "range": range.as_str(),
        "from_ms": from_ms,
        "until_ms": until_ms,
        "bucket_ms": bucket_ms,
        "rows": scanned.min(lim.max_rows),
        "partial": partial,
        "series": series.iter().zip(&overall).enumerate().map(|(i, (s, h))| json!({
            "t": from_ms + i as i64 * bucket_ms,
            "calls": s.calls,
            "errors": s.errors,
            "refused": s.refused,
            "timeouts": s.timeouts,
            "hits": s.hits,
            "misses": s.misses,
            "lat": h.triple(),
        })).collect::<Vec<_>>(),
        "tools": tools.iter().map(|(name, t)| {
            let total_us: i64 = t.stages_us.values().sum::<i64>() + t.queue_us;
            let mut stages: BTreeMap<String, f64> =
                t.stages_us.iter().map(|(k, v)| (k.clone(), *v as f64 / 1e6)).collect();
            stages.insert("queue".into(), t.queue_us as f64 / 1e6);
            json!({
                "tool": name,
                "family": family(name),
                "calls": t.calls,
                "errors": t.errors,
                "outcomes": t.outcomes,
                "lat": t.hist.triple(),
                "stages": stages,
                "stage_seconds": total_us as f64 / 1e6,
                "series": t.buckets.iter().map(|h| h.as_ref().map(Hist::triple).unwrap_or(Value::Null)).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
        "families": families,
        "funnel": {
            "sessions": sessions.len(),
            "discovered": count(1),
            "structure": count(3),
            "read": count(5),
            "untracked_calls": untracked_sessions,
        },
        "cache": { "hits": hits, "misses": misses, "hit_ratio": if hits + misses > 0 { Some(hits as f64 / (hits + misses) as f64) } else { None } },
        "top_keys": top_keys.iter().map(|(k, (n, m))| json!({"workbook": k, "calls": n, "misses": m})).collect::<Vec<_>>(),
        "recent_errors": recent_errors(&conn, from_ms)?,
    }))
}

/// Longest error message shown.
const MESSAGE_CHARS: usize = 240;

/// The latest failed calls in the range (newest first).
fn recent_errors(conn: &Connection, from_ms: i64) -> Result<Vec<Value>, HistoryError> {
    let mut stmt = conn.prepare(
        "SELECT at_ms, tool, outcome, error_class, error_message, key FROM requests
         WHERE at_ms >= ?1 AND outcome NOT IN ('ok', 'cancelled') ORDER BY at_ms DESC LIMIT 12",
    )?;
    let rows = stmt.query_map(params![from_ms], |r| {
        let msg: Option<String> = r.get(4)?;
        Ok(json!({
            "at_ms": r.get::<_, i64>(0)?,
            "tool": r.get::<_, String>(1)?,
            "outcome": r.get::<_, String>(2)?,
            "class": r.get::<_, Option<String>>(3)?,
            "message": msg.map(|m| kaizen::store::cap_chars(&m, MESSAGE_CHARS).to_string()),
            "workbook": r.get::<_, Option<String>>(5)?,
        }))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One logged call: (at_ms, session, tool, µs, outcome, cache hit, key).
    type LogRow<'a> = (i64, &'a str, &'a str, i64, &'static str, Option<bool>, Option<&'a str>);

    /// A request log written by the real store, with `rows`.
    fn log(rows: &[LogRow]) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        let store = kaizen::store::Store::open(dir.path(), kaizen::store::Retention::default()).expect("store");
        let tx = store.sender();
        for (at, session, tool, us, outcome, hit, key) in rows {
            tx.send(kaizen::store::Row {
                at_ms: *at,
                session: session.to_string(),
                tool: tool.to_string(),
                args_hash: "0".into(),
                duration_us: *us,
                outcome,
                error_class: (*outcome != "ok").then(|| "user".to_string()),
                error_message: (*outcome != "ok").then(|| format!("no sheet 'X' in {tool}")),
                cache_hit: *hit,
                request_bytes: 10,
                response_bytes: 10,
                rows: 1,
                queue_us: 100,
                stages_us: vec![("load".into(), *us / 2), ("extract".into(), *us / 4)],
                key: key.map(str::to_string),
                key_bytes: 1000,
                truncated: false,
                args_excerpt: None,
            })
            .expect("send");
        }
        store.flush(Duration::from_secs(10));
        dir
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU64, Ordering};
                static N: AtomicU64 = AtomicU64::new(0);
                let p = std::env::temp_dir().join(format!(
                    "gemba-dash-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).expect("temp dir");
                Self(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn buckets_percentiles_funnel_and_errors_from_a_real_log() {
        let t0: i64 = 1_700_000_000_000;
        let t0 = t0 - t0.rem_euclid(60_000);
        let mut rows = Vec::new();
        // Session a: discovery, structure, read; session b: discovery then a read; c: reads only.
        rows.push((t0 + 1_000, "a", "list_workbooks", 1_000, "ok", None, None));
        rows.push((t0 + 2_000, "a", "sheet_overview", 5_000, "ok", Some(true), Some("sales")));
        for i in 0..100 {
            // Latencies 1..100 ms in the first minute.
            rows.push((t0 + 3_000 + i, "a", "read_table", (i + 1) * 1_000, "ok", Some(i > 0), Some("sales")));
        }
        rows.push((t0 + 61_000, "b", "list_sheets", 1_000, "ok", Some(false), Some("costs")));
        rows.push((t0 + 62_000, "b", "read_table", 2_000, "tool_error", Some(true), Some("costs")));
        rows.push((t0 + 63_000, "c", "read_table", 2_000, "cancelled", None, None));
        rows.push((t0 + 64_000, "c", "read_table", 2_000, "rejected", None, None));
        let dir = log(&rows);
        let db = dir.path().join("gemba.db");
        let v = query(&db, Range::Hour, t0 + 65_000, &Limits::default()).expect("query");
        assert_eq!(v["rows"], 106);
        assert!(v["partial"].is_null());
        let series = v["series"].as_array().unwrap();
        assert_eq!(series.len(), 60);
        let first = &series[58];
        assert_eq!(first["t"], t0);
        assert_eq!(first["calls"], 102);
        assert_eq!(first["errors"], 0);
        let second = &series[59];
        assert_eq!(second["calls"], 4);
        assert_eq!(second["errors"], 2, "a tool error and a refusal; the cancelled call is not an error");
        assert_eq!(second["refused"], 1);
        let rt = v["tools"].as_array().unwrap().iter().find(|t| t["tool"] == "read_table").unwrap();
        assert_eq!(rt["calls"], 103);
        // Exact p50 of the 103 latencies is 49 ms (1..100 ms and three of 2 ms); the histogram is
        // within its ±6 %.
        let p50 = rt["lat"][0].as_f64().unwrap();
        assert!((p50 / 49.0 - 1.0).abs() < 0.07, "p50 {p50}");
        let p99 = rt["lat"][2].as_f64().unwrap();
        assert!((p99 / 99.0 - 1.0).abs() < 0.07, "p99 {p99}");
        assert_eq!(rt["series"].as_array().unwrap().len(), 60);
        assert!(rt["series"][58].is_array() && rt["series"][0].is_null());
        // Stages: half the time loading, a quarter extracting, queue 100 µs per call.
        let load = rt["stages"]["load"].as_f64().unwrap();
        let extract = rt["stages"]["extract"].as_f64().unwrap();
        assert!((load / extract - 2.0).abs() < 0.01, "{load} {extract}");
        assert!((rt["stages"]["queue"].as_f64().unwrap() - 103.0 * 100e-6).abs() < 1e-9);
        assert_eq!(v["funnel"]["sessions"], 3);
        assert_eq!(v["funnel"]["discovered"], 2);
        assert_eq!(v["funnel"]["structure"], 1);
        assert_eq!(v["funnel"]["read"], 2);
        assert_eq!(v["families"]["read"], 103);
        assert_eq!(v["top_keys"][0]["workbook"], "sales");
        assert_eq!(v["top_keys"][0]["calls"], 101);
        assert_eq!(v["top_keys"][0]["misses"], 1);
        assert_eq!(v["cache"]["misses"], 2);
        let errs = v["recent_errors"].as_array().unwrap();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0]["outcome"], "rejected", "newest first");
        assert_eq!(errs[1]["message"], "no sheet 'X' in read_table");
        // The 5-minute view leaves the first minute out.
        let v5 = query(&db, Range::FiveMinutes, t0 + 65_000 + 5 * 60_000 - 30_000, &Limits::default()).expect("5m");
        assert_eq!(v5["rows"], 4);
    }

    #[test]
    fn bounded_by_rows() {
        let t0 = 1_700_000_000_000i64;
        let rows: Vec<_> = (0..50).map(|i| (t0 + i, "s", "read_table", 1_000, "ok", None, None)).collect();
        let dir = log(&rows);
        let lim = Limits { max_rows: 20, ..Limits::default() };
        let v = query(&dir.path().join("gemba.db"), Range::Hour, t0 + 1_000, &lim).expect("query");
        assert_eq!(v["rows"], 20);
        assert_eq!(v["partial"], "stopped after 20 rows");
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Hist::new();
        assert!(h.quantile_ms(0.5).is_none());
        for us in 1..=10_000 {
            h.add(us);
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!((p50 / 5.0 - 1.0).abs() < 0.07, "{p50}");
        h.add(i64::MAX);
        h.add(-5);
        assert_eq!(h.n, 10_002);
        assert!(Range::parse("1w").unwrap_err().contains("5m, 1h or 24h"));
    }
}
