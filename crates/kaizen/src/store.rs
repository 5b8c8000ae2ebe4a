//! The request log: an embedded SQLite database written off the hot path by one thread fed
//! through a bounded queue (a full queue drops rows and counts them; it never blocks a request).
//! Retention by age and by row count. Arguments are never stored, only a hash of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
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
    rows INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_at ON requests(at_ms);
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
    tx: SyncSender<Row>,
}

/// Queue between the aggregator and the writer.
const LOG_QUEUE: usize = 100_000;

impl Store {
    /// Open (creating) `<dir>/gemba.db` and start its writer thread.
    pub fn open(dir: &Path, retention: Retention) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir { path: dir.to_path_buf(), source })?;
        let path = dir.join("gemba.db");
        let conn = open_rw(&path)?;
        let health = Arc::new(StoreHealth::default());
        health.writable.store(true, Ordering::Relaxed);
        let (tx, rx) = sync_channel(LOG_QUEUE);
        let h = health.clone();
        std::thread::Builder::new()
            .name("kaizen-store".into())
            .spawn(move || writer(conn, rx, h, retention))
            .map_err(|e| StoreError::Dir { path: dir.to_path_buf(), source: e })?;
        Ok(Self { path, health, tx })
    }

    pub fn sender(&self) -> SyncSender<Row> {
        self.tx.clone()
    }

    /// Whether the database can take a write now (a short immediate transaction).
    pub fn check_writable(&self) -> Result<(), String> {
        let conn =
            Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| e.to_string())?;
        conn.busy_timeout(Duration::from_millis(200)).map_err(|e| e.to_string())?;
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").map_err(|e| e.to_string())
    }
}

fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    let setup = || -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(2))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)
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
    Ok(())
}

fn write_batch(conn: &mut Connection, batch: &[Row]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO requests (at_ms, session, tool, args_hash, duration_us, outcome, error_class, error_message, cache_hit, request_bytes, response_bytes, rows) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for r in batch {
            stmt.execute(params![
                r.at_ms,
                r.session,
                r.tool,
                r.args_hash,
                r.duration_us,
                r.outcome,
                r.error_class,
                r.error_message,
                r.cache_hit,
                r.request_bytes,
                r.response_bytes,
                r.rows
            ])?;
        }
    }
    tx.commit()
}

fn writer(mut conn: Connection, rx: Receiver<Row>, health: Arc<StoreHealth>, retention: Retention) {
    let _ = apply_retention(&conn, &retention);
    let mut last_retention = Instant::now();
    let mut batch: Vec<Row> = Vec::with_capacity(1024);
    loop {
        let disconnected = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => {
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
        if last_retention.elapsed() > Duration::from_secs(300) {
            let _ = apply_retention(&conn, &retention);
            last_retention = Instant::now();
        }
        if disconnected {
            return;
        }
    }
}

/// Per-tool figures from the log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolStats {
    pub tool: String,
    pub count: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Count, error rate and exact percentiles per tool since `since_ms`, from the log at `path`.
pub fn tool_stats(path: &Path, since_ms: i64, tool: Option<&str>) -> Result<Vec<ToolStats>, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    let mut stmt = conn.prepare(
        "SELECT tool, duration_us, outcome FROM requests WHERE at_ms >= ?1 AND (?2 IS NULL OR tool = ?2) ORDER BY tool, duration_us",
    )?;
    let mut rows = stmt.query(params![since_ms, tool])?;
    let mut out: Vec<ToolStats> = Vec::new();
    let mut cur: Option<(String, Vec<i64>, u64)> = None;
    let flush = |cur: Option<(String, Vec<i64>, u64)>, out: &mut Vec<ToolStats>| {
        if let Some((tool, d, errors)) = cur {
            let q = |p: f64| {
                let i = ((p * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1;
                d[i] as f64 / 1000.0
            };
            out.push(ToolStats {
                count: d.len() as u64,
                errors,
                error_rate: errors as f64 / d.len() as f64,
                p50_ms: q(0.5),
                p95_ms: q(0.95),
                p99_ms: q(0.99),
                max_ms: d.last().copied().unwrap_or(0) as f64 / 1000.0,
                tool,
            });
        }
    };
    while let Some(r) = rows.next()? {
        let t: String = r.get(0)?;
        let d: i64 = r.get(1)?;
        let o: String = r.get(2)?;
        let is_err = o != "ok";
        match &mut cur {
            Some((ct, v, e)) if *ct == t => {
                v.push(d);
                *e += u64::from(is_err);
            }
            _ => {
                flush(cur.take(), &mut out);
                cur = Some((t, vec![d], u64::from(is_err)));
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
            for _ in 0..100 {
                if store.health.rows_written.load(Ordering::Relaxed) == 101 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(store.check_writable().is_ok());
        }
        let stats = tool_stats(&dir.join("gemba.db"), 0, None).unwrap();
        let rt = stats.iter().find(|s| s.tool == "read_table").unwrap();
        assert_eq!((rt.count, rt.errors), (100, 10));
        assert_eq!((rt.p50_ms, rt.p95_ms, rt.p99_ms, rt.max_ms), (50.0, 95.0, 99.0, 100.0));
        let only = tool_stats(&dir.join("gemba.db"), 0, Some("list_workbooks")).unwrap();
        assert_eq!(only.len(), 1);
        assert!(tool_stats(&dir.join("gemba.db"), now_ms() + 60_000, None).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
