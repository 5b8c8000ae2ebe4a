//! The request log: an embedded SQLite database written off the hot path by one thread fed
//! through a bounded queue (a full queue drops rows and counts them; it never blocks a request).
//! Retention by age and by row count. Arguments are stored only as a hash, except for a short
//! excerpt (at most 300 characters) on requests that failed, so an error can be reproduced.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};

use crate::queue::{Receiver, Sender, bounded};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, params};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the request log {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("request log query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("cannot create the state directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
}

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Row {
    pub at_ms: i64,
    pub session: String,
    pub tool: String,
    pub args_hash: String,
    pub duration_us: i64,
    pub outcome: &'static str,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub cache_hit: Option<bool>,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub rows: i64,
    pub queue_us: i64,
    /// Time per named stage (value stream), in microseconds.
    pub stages_us: Vec<(String, i64)>,
    /// The resource the request touched (for Gemba, a workbook id); `None` if none.
    pub key: Option<String>,
    /// That resource's size in the embedder's cache once the request was served (0 if unknown).
    pub key_bytes: i64,
    /// The response ran into a cap (items, cells, bytes) and was cut.
    pub truncated: bool,
    /// The arguments as JSON, cut to `MAX_ARGS_EXCERPT` characters; kept only on failed requests.
    pub args_excerpt: Option<String>,
}

/// Longest error message kept in the log, in characters.
pub const MAX_ERROR_MESSAGE: usize = 500;
/// Longest argument excerpt kept in the log, in characters.
pub const MAX_ARGS_EXCERPT: usize = 300;

/// `s` cut to at most `max` characters (on a character boundary, never mid-character).
pub fn cap_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// One start of the embedding program, as recorded by `Store::record_run`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Run {
    pub started_ms: i64,
    pub version: String,
    pub config: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Retention {
    pub max_age: Duration,
    pub max_rows: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(30 * 24 * 3600), max_rows: 2_000_000 }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    session TEXT NOT NULL,
    tool TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    duration_us INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error_class TEXT,
    error_message TEXT,
    cache_hit INTEGER,
    request_bytes INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    queue_us INTEGER NOT NULL DEFAULT 0,
    stages_us TEXT,
    key TEXT,
    key_bytes INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0,
    args_excerpt TEXT
);
CREATE INDEX IF NOT EXISTS requests_at ON requests(at_ms);
CREATE TABLE IF NOT EXISTS runs (
    started_ms INTEGER NOT NULL,
    version TEXT NOT NULL,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS slo_minutes (
    slo TEXT NOT NULL,
    minute INTEGER NOT NULL,
    good INTEGER NOT NULL,
    total INTEGER NOT NULL,
    PRIMARY KEY (slo, minute)
);
";

/// Health of the writer, for readiness checks and metrics.
#[derive(Debug, Default)]
pub struct StoreHealth {
    pub writable: AtomicBool,
    pub rows_written: AtomicU64,
    pub write_errors: AtomicU64,
    pub last_error: parking_lot::Mutex<Option<String>>,
}

pub struct Store {
    pub path: PathBuf,
    pub health: Arc<StoreHealth>,
    tx: Sender<Row>,
    flush_ack: FlushAck,
}

/// Queue between the aggregator and the writer.
const LOG_QUEUE: usize = 16_384;
/// A row with this tool name asks the writer to acknowledge once everything before it is written.
const FLUSH_MARKER: &str = "\u{0}flush";
/// How long the writer gathers rows after the first before writing them in one transaction
/// (rows reach the log at most this much later; a flush that finds the writer idle is written
/// at once, one that arrives while it gathers waits for the end of the gathering).
const LINGER: Duration = Duration::from_millis(50);
/// Where a store's writer acknowledges a flush: one per store (a process may hold several).
type FlushAck = Arc<parking_lot::Mutex<Option<SyncSender<()>>>>;

impl Store {
    /// Open (creating) `<dir>/gemba.db` and start its writer thread.
    pub fn open(dir: &Path, retention: Retention) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir { path: dir.to_path_buf(), source })?;
        let path = dir.join("gemba.db");
        let conn = open_rw(&path)?;
        let health = Arc::new(StoreHealth::default());
        health.writable.store(true, Ordering::Relaxed);
        let (tx, rx) = bounded(LOG_QUEUE);
        let h = health.clone();
        let flush_ack = FlushAck::default();
        std::thread::Builder::new()
            .name("kaizen-store".into())
            .spawn({
                let ack = flush_ack.clone();
                move || writer(conn, rx, h, retention, ack)
            })
            .map_err(|e| StoreError::Dir { path: dir.to_path_buf(), source: e })?;
        Ok(Self { path, health, tx, flush_ack })
    }

    pub fn sender(&self) -> Sender<Row> {
        self.tx.clone()
    }

    /// Wait (up to `timeout`) until the queue is empty and the last batch is written.
    pub fn flush(&self, timeout: Duration) {
        let t = Instant::now();
        let (done_tx, done_rx) = sync_channel(1);
        let marker = Row {
            at_ms: 0,
            session: String::new(),
            tool: FLUSH_MARKER.into(),
            args_hash: String::new(),
            duration_us: 0,
            outcome: "ok",
            error_class: None,
            error_message: None,
            cache_hit: None,
            request_bytes: 0,
            response_bytes: 0,
            rows: 0,
            queue_us: 0,
            stages_us: Vec::new(),
            key: None,
            key_bytes: 0,
            truncated: false,
            args_excerpt: None,
        };
        *self.flush_ack.lock() = Some(done_tx);
        if self.tx.send_timeout(marker, timeout).is_ok() {
            let _ = done_rx.recv_timeout(timeout.saturating_sub(t.elapsed()));
        }
    }

    /// Save SLI minutes (slo, minute, good, total), replacing earlier counts of the same minute.
    pub fn save_slo_minutes(&self, rows: &[(String, u64, u64, u64)], keep_days: u32) -> Result<(), StoreError> {
        let mut conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|source| StoreError::Open { path: self.path.clone(), source })?;
        conn.busy_timeout(Duration::from_secs(2))?;
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO slo_minutes (slo, minute, good, total) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (slo, minute) DO UPDATE SET good = excluded.good, total = excluded.total",
            )?;
            for (slo, m, g, t) in rows {
                stmt.execute(params![slo, *m as i64, *g as i64, *t as i64])?;
            }
        }
        let oldest = (now_ms() / 60_000) - i64::from(keep_days) * 1440;
        tx.execute("DELETE FROM slo_minutes WHERE minute < ?1", params![oldest])?;
        tx.commit()?;
        Ok(())
    }

    /// Record one start of the embedding program: its version and its effective configuration
    /// (as JSON), so reports can show what changed during a period.
    pub fn record_run(&self, version: &str, config: &serde_json::Value) -> Result<(), StoreError> {
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|source| StoreError::Open { path: self.path.clone(), source })?;
        conn.busy_timeout(Duration::from_secs(2))?;
        conn.execute(
            "INSERT INTO runs (started_ms, version, config) VALUES (?1, ?2, ?3)",
            params![now_ms(), version, config.to_string()],
        )?;
        Ok(())
    }

    /// Whether the database can take a write now (a short immediate transaction).
    pub fn check_writable(&self) -> Result<(), String> {
        let conn =
            Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| e.to_string())?;
        conn.busy_timeout(Duration::from_millis(200)).map_err(|e| e.to_string())?;
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").map_err(|e| e.to_string())
    }
}

pub(crate) fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    let setup = || -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(2))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        // Columns added after the first schema: add them to older logs.
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('requests')")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !cols.iter().any(|c| c == "queue_us") {
            conn.execute_batch("ALTER TABLE requests ADD COLUMN queue_us INTEGER NOT NULL DEFAULT 0")?;
        }
        if !cols.iter().any(|c| c == "stages_us") {
            conn.execute_batch("ALTER TABLE requests ADD COLUMN stages_us TEXT")?;
        }
        for (name, decl) in [
            ("key", "TEXT"),
            ("key_bytes", "INTEGER NOT NULL DEFAULT 0"),
            ("truncated", "INTEGER NOT NULL DEFAULT 0"),
            ("args_excerpt", "TEXT"),
        ] {
            if !cols.iter().any(|c| c == name) {
                conn.execute_batch(&format!("ALTER TABLE requests ADD COLUMN {name} {decl}"))?;
            }
        }
        Ok(())
    };
    setup().map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    Ok(conn)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn apply_retention(conn: &Connection, r: &Retention) -> rusqlite::Result<()> {
    let cutoff = now_ms() - r.max_age.as_millis() as i64;
    conn.execute("DELETE FROM requests WHERE at_ms < ?1", params![cutoff])?;
    conn.execute("DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?1", params![r.max_rows as i64])?;
    // Runs are few; keep the newest one whatever its age, so the configuration in force is known.
    conn.execute(
        "DELETE FROM runs WHERE started_ms < ?1 AND started_ms < (SELECT MAX(started_ms) FROM runs)",
        params![cutoff],
    )?;
    Ok(())
}

fn stages_json(stages: &[(String, i64)]) -> Option<String> {
    if stages.is_empty() {
        return None;
    }
    let m: serde_json::Map<String, serde_json::Value> =
        stages.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(*v))).collect();
    Some(serde_json::Value::Object(m).to_string())
}

pub(crate) fn write_batch(conn: &mut Connection, batch: &[Row]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO requests (at_ms, session, tool, args_hash, duration_us, outcome, error_class, error_message, cache_hit, request_bytes, response_bytes, rows, queue_us, stages_us, key, key_bytes, truncated, args_excerpt) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?;
        for r in batch {
            let args = if r.outcome == "ok" {
                None
            } else {
                r.args_excerpt.as_deref().map(|a| cap_chars(a, MAX_ARGS_EXCERPT))
            };
            stmt.execute(params![
                r.at_ms,
                r.session,
                r.tool,
                r.args_hash,
                r.duration_us,
                r.outcome,
                r.error_class,
                r.error_message.as_deref().map(|m| cap_chars(m, MAX_ERROR_MESSAGE)),
                r.cache_hit,
                r.request_bytes,
                r.response_bytes,
                r.rows,
                r.queue_us,
                stages_json(&r.stages_us),
                r.key,
                r.key_bytes,
                r.truncated,
                args
            ])?;
        }
    }
    tx.commit()
}

fn writer(
    mut conn: Connection,
    rx: Receiver<Row>,
    health: Arc<StoreHealth>,
    retention: Retention,
    flush_ack: FlushAck,
) {
    let _ = apply_retention(&conn, &retention);
    let mut last_retention = Instant::now();
    let mut batch: Vec<Row> = Vec::with_capacity(1024);
    loop {
        let disconnected = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => {
                // Rows that arrive together are written together: one transaction (a WAL
                // append and its locks) per call would cost more than the call's own work at
                // thousands of calls a second. A flush is written at once.
                if r.tool != FLUSH_MARKER {
                    std::thread::sleep(LINGER);
                }
                batch.push(r);
                while batch.len() < 4096 {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let flush_requested = batch.iter().any(|r| r.tool == FLUSH_MARKER);
        batch.retain(|r| r.tool != FLUSH_MARKER);
        if !batch.is_empty() {
            match write_batch(&mut conn, &batch) {
                Ok(()) => {
                    health.writable.store(true, Ordering::Relaxed);
                    health.rows_written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    health.writable.store(false, Ordering::Relaxed);
                    health.write_errors.fetch_add(1, Ordering::Relaxed);
                    *health.last_error.lock() = Some(e.to_string());
                    tracing::warn!("request log write failed ({} rows dropped): {e}", batch.len());
                }
            }
            batch.clear();
        }
        if flush_requested && let Some(ack) = flush_ack.lock().take() {
            let _ = ack.try_send(());
        }
        if last_retention.elapsed() > Duration::from_secs(300) {
            let _ = apply_retention(&conn, &retention);
            last_retention = Instant::now();
        }
        if disconnected {
            return;
        }
    }
}

/// SLI minutes saved since `since_minute`: (slo, minute, good, total).
pub fn load_slo_minutes(path: &Path, since_minute: u64) -> Result<Vec<(String, u64, u64, u64)>, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    let mut stmt = conn.prepare("SELECT slo, minute, good, total FROM slo_minutes WHERE minute >= ?1")?;
    let rows = stmt
        .query_map(params![since_minute as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Runs recorded at or after `since_ms`, oldest first, with the last run before `since_ms` (the
/// one in force when the period began) in front when there is one.
pub fn load_runs(path: &Path, since_ms: i64) -> Result<Vec<Run>, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    let has_runs: bool =
        conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'runs'", [], |r| r.get(0))?;
    if !has_runs {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT started_ms, version, config FROM (
             SELECT started_ms, version, config, rowid AS r FROM
                 (SELECT started_ms, version, config, rowid FROM runs WHERE started_ms < ?1
                  ORDER BY started_ms DESC, rowid DESC LIMIT 1)
             UNION ALL
             SELECT started_ms, version, config, rowid AS r FROM runs WHERE started_ms >= ?1)
         ORDER BY started_ms, r",
    )?;
    let rows = stmt
        .query_map(params![since_ms], |r| {
            let config: String = r.get(2)?;
            Ok(Run {
                started_ms: r.get(0)?,
                version: r.get(1)?,
                // A config that is not JSON is kept as a string rather than lost.
                config: serde_json::from_str(&config).unwrap_or(serde_json::Value::String(config)),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Per-tool figures from the log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolStats {
    pub tool: String,
    pub count: u64,
    /// Failed calls: calls the client cancelled are not counted (see `cancelled`).
    pub errors: u64,
    /// Errors over the calls not cancelled.
    pub error_rate: f64,
    /// Calls the client withdrew: in `count`, not in `errors` nor in the percentiles.
    pub cancelled: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Share of the total time spent in each stage (value-stream map), largest first.
    pub stages: Vec<(String, f64)>,
    /// Share of the time spent waiting before work started.
    pub queue_share: f64,
}

#[derive(Default)]
struct Acc {
    cancelled: u64,
    queue: i64,
    stages: std::collections::BTreeMap<String, i64>,
}

/// Count, error rate, exact percentiles and the value-stream shares per tool since `since_ms`,
/// from the log at `path`.
pub fn tool_stats(path: &Path, since_ms: i64, tool: Option<&str>) -> Result<Vec<ToolStats>, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    let mut stmt = conn.prepare(
        "SELECT tool, duration_us, outcome, queue_us, stages_us FROM requests WHERE at_ms >= ?1 AND (?2 IS NULL OR tool = ?2) ORDER BY tool, duration_us",
    )?;
    let mut rows = stmt.query(params![since_ms, tool])?;
    let mut out: Vec<ToolStats> = Vec::new();
    let mut cur: Option<(String, Vec<i64>, u64, Acc)> = None;
    let flush = |cur: Option<(String, Vec<i64>, u64, Acc)>, out: &mut Vec<ToolStats>| {
        if let Some((tool, d, errors, acc)) = cur {
            let cancelled = acc.cancelled;
            let total: i64 = d.iter().sum::<i64>().max(1);
            let mut stages: Vec<(String, f64)> =
                acc.stages.into_iter().map(|(k, v)| (k, (v as f64 / total as f64 * 1000.0).round() / 1000.0)).collect();
            stages.sort_by(|a, b| b.1.total_cmp(&a.1));
            let q = |p: f64| {
                if d.is_empty() {
                    return 0.0;
                }
                let i = ((p * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1;
                d[i] as f64 / 1000.0
            };
            out.push(ToolStats {
                count: d.len() as u64 + cancelled,
                errors,
                error_rate: if d.is_empty() { 0.0 } else { errors as f64 / d.len() as f64 },
                cancelled,
                p50_ms: q(0.5),
                p95_ms: q(0.95),
                p99_ms: q(0.99),
                max_ms: d.last().copied().unwrap_or(0) as f64 / 1000.0,
                stages,
                queue_share: (acc.queue as f64 / total as f64 * 1000.0).round() / 1000.0,
                tool,
            });
        }
    };
    while let Some(r) = rows.next()? {
        let t: String = r.get(0)?;
        let d: i64 = r.get(1)?;
        let o: String = r.get(2)?;
        let q: i64 = r.get(3)?;
        let st: Option<String> = r.get(4)?;
        let is_err = o != "ok";
        if cur.as_ref().is_none_or(|c| c.0 != t) {
            flush(cur.take(), &mut out);
            cur = Some((t, Vec::new(), 0, Acc::default()));
        }
        if let Some((_, v, e, acc)) = &mut cur {
            if o == "cancelled" {
                acc.cancelled += 1;
                continue;
            }
            v.push(d);
            *e += u64::from(is_err);
            acc.queue += q;
            if let Some(obj) =
                st.and_then(|s| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&s).ok())
            {
                for (k, v) in obj {
                    *acc.stages.entry(k).or_default() += v.as_i64().unwrap_or(0);
                }
            }
        }
    }
    flush(cur, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tool: &str, us: i64, outcome: &'static str) -> Row {
        Row {
            at_ms: now_ms(),
            session: "s".into(),
            tool: tool.into(),
            args_hash: "h".into(),
            duration_us: us,
            outcome,
            error_class: None,
            error_message: None,
            cache_hit: Some(true),
            request_bytes: 10,
            response_bytes: 20,
            rows: 1,
            queue_us: us / 10,
            stages_us: vec![("load".into(), us / 2), ("extract".into(), us / 4)],
            key: None,
            key_bytes: 0,
            truncated: false,
            args_excerpt: None,
        }
    }

    #[test]
    fn rows_survive_reopen_and_stats_are_exact() {
        let dir = std::env::temp_dir().join(format!("kaizen-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Store::open(&dir, Retention::default()).unwrap();
            let tx = store.sender();
            for i in 1..=100 {
                tx.send(row("read_table", i * 1000, if i % 10 == 0 { "tool_error" } else { "ok" })).unwrap();
            }
            tx.send(row("list_workbooks", 500, "ok")).unwrap();
            // Withdrawn by their client, one of them slower than any answered call.
            tx.send(row("read_table", 900_000, "cancelled")).unwrap();
            tx.send(row("read_table", 2_000, "cancelled")).unwrap();
            for _ in 0..100 {
                if store.health.rows_written.load(Ordering::Relaxed) == 103 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(store.check_writable().is_ok());
        }
        let stats = tool_stats(&dir.join("gemba.db"), 0, None).unwrap();
        let rt = stats.iter().find(|s| s.tool == "read_table").unwrap();
        assert_eq!((rt.count, rt.errors, rt.cancelled, rt.error_rate), (102, 10, 2, 0.1));
        assert_eq!((rt.p50_ms, rt.p95_ms, rt.p99_ms, rt.max_ms), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(rt.stages, vec![("load".to_string(), 0.5), ("extract".to_string(), 0.25)]);
        assert_eq!(rt.queue_share, 0.1);
        let only = tool_stats(&dir.join("gemba.db"), 0, Some("list_workbooks")).unwrap();
        assert_eq!(only.len(), 1);
        assert!(tool_stats(&dir.join("gemba.db"), now_ms() + 60_000, None).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn caps_texts_and_keeps_arguments_only_for_failures() {
        let dir = std::env::temp_dir().join(format!("kaizen-store-caps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gemba.db");
        let mut conn = open_rw(&path).unwrap();
        let long = "é".repeat(MAX_ERROR_MESSAGE + 50);
        let mut failed = row("read_table", 1000, "tool_error");
        failed.error_message = Some(long.clone());
        failed.args_excerpt = Some("x".repeat(1000));
        failed.key = Some("sales-3f2a".into());
        failed.key_bytes = 4096;
        failed.truncated = true;
        let mut ok = row("read_table", 1000, "ok");
        ok.args_excerpt = Some("{\"secret\":1}".into());
        write_batch(&mut conn, &[failed, ok]).unwrap();
        type Stored = (Option<String>, Option<String>, Option<String>, i64, bool);
        let got: Vec<Stored> = conn
            .prepare("SELECT error_message, args_excerpt, key, key_bytes, truncated FROM requests ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(got[0].0.as_deref().map(|m| m.chars().count()), Some(MAX_ERROR_MESSAGE));
        assert_eq!(got[0].1.as_deref().map(str::len), Some(MAX_ARGS_EXCERPT));
        assert_eq!((got[0].2.as_deref(), got[0].3, got[0].4), (Some("sales-3f2a"), 4096, true));
        assert_eq!(got[1].1, None, "arguments of a successful request are not kept");
        assert_eq!(cap_chars("héllo", 2), "hé");
        assert_eq!(cap_chars("hi", 5), "hi");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
