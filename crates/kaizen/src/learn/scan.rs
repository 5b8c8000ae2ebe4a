//! Streaming the request log out of SQLite: one statement per period, rows handed to a callback
//! as borrowed views (no allocation per row), oldest first (by row id, which is write order).
//!
//! The period is located with two seeks in the `at_ms` index, then the rows are read by id
//! range, which is a sequential table scan; rows written slightly out of time order are
//! filtered by their own `at_ms`.

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params};

use super::LearnError;

/// One logged request, borrowed from the statement's current row. Texts are the stored bytes
/// (validated as UTF-8 only where a text is shown: most rows need none of them as text).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogRow<'a> {
    pub at_ms: i64,
    pub session: &'a [u8],
    pub tool: &'a [u8],
    pub duration_us: i64,
    pub outcome: &'a [u8],
    pub error_class: Option<&'a [u8]>,
    pub error_message: Option<&'a [u8]>,
    pub cache_hit: Option<bool>,
    pub response_bytes: i64,
    pub queue_us: i64,
    pub stages_us: Option<&'a [u8]>,
    pub key: Option<&'a [u8]>,
    pub key_bytes: i64,
    pub truncated: bool,
    pub args_excerpt: Option<&'a [u8]>,
}

impl LogRow<'_> {
    /// The call failed: neither answered nor withdrawn by its client (a cancelled call is no
    /// error of the server's, as the SLIs already count it).
    pub fn failed(&self) -> bool {
        self.outcome != b"ok" && self.outcome != b"cancelled"
    }
}

/// Stored bytes as text (invalid UTF-8 shown with replacement characters).
pub(crate) fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// The few fields the previous period is read for (trends only).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LightRow<'a> {
    pub at_ms: i64,
    pub tool: &'a [u8],
    pub duration_us: i64,
    pub ok: bool,
}

/// Open the log read-only.
pub(crate) fn open(path: &Path) -> Result<Connection, LearnError> {
    if !path.exists() {
        return Err(LearnError::NoLog(path.to_path_buf()));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|source| LearnError::Open { path: path.to_path_buf(), source })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // A bigger page cache than the 2 MB default makes the sequential scan cheaper; bounded.
    conn.pragma_update(None, "cache_size", -16_384)?;
    Ok(conn)
}

/// The columns of `requests`; older logs lack the newer ones.
fn columns(conn: &Connection) -> Result<Vec<String>, LearnError> {
    let cols = conn
        .prepare("SELECT name FROM pragma_table_info('requests')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    if cols.is_empty() {
        return Err(LearnError::NotALog("it has no `requests` table".into()));
    }
    Ok(cols)
}

/// Rows are written in completion order, so ids and times agree up to small local disorder;
/// the id range is widened by this many rows each side (and rows outside the period filtered
/// by their own time), which keeps the range exact unless rows were written over 10,000 out of
/// time order.
const ID_MARGIN: i64 = 10_000;

/// An id range holding every row with `from_ms <= at_ms < until_ms`, found with two seeks in the
/// `at_ms` index (a range query over the index would read all of it: 2 million entries).
fn id_range(conn: &Connection, from_ms: i64, until_ms: i64) -> Result<Option<(i64, i64)>, LearnError> {
    let seek = |sql: &str| -> Result<Option<i64>, LearnError> {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query(params![from_ms, until_ms])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    };
    let first = seek("SELECT id FROM requests WHERE at_ms >= ?1 AND at_ms < ?2 ORDER BY at_ms, id LIMIT 1")?;
    let last = seek("SELECT id FROM requests WHERE at_ms >= ?1 AND at_ms < ?2 ORDER BY at_ms DESC, id DESC LIMIT 1")?;
    Ok(match (first, last) {
        (Some(a), Some(b)) => Some((a.min(b).saturating_sub(ID_MARGIN), a.max(b).saturating_add(ID_MARGIN))),
        _ => None,
    })
}

fn bytes(v: ValueRef<'_>) -> Option<&[u8]> {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(t),
        _ => None,
    }
}

/// A stored text cut to `max` bytes: the log's writer caps what it writes, but a report must
/// stay bounded on any database (a cut inside a character shows as a replacement character).
fn capped(v: ValueRef<'_>, max: usize) -> Option<&[u8]> {
    bytes(v).map(|b| &b[..b.len().min(max)])
}

fn int(v: ValueRef<'_>) -> i64 {
    match v {
        ValueRef::Integer(i) => i,
        ValueRef::Real(f) => f as i64,
        _ => 0,
    }
}

/// Every request in `[from_ms, until_ms)`, oldest first, read on the calling thread: `each`
/// returns whether to go on.
fn read_rows(
    conn: &Connection,
    from_ms: i64,
    until_ms: i64,
    mut each: impl FnMut(&LogRow<'_>) -> Result<bool, LearnError>,
) -> Result<(), LearnError> {
    let cols = columns(conn)?;
    let has = |c: &str| cols.iter().any(|x| x == c);
    let opt = |c: &str, default: &str| if has(c) { c.to_string() } else { format!("{default} AS {c}") };
    let Some((lo, hi)) = id_range(conn, from_ms, until_ms)? else {
        return Ok(());
    };
    let sql = format!(
        "SELECT at_ms, session, tool, duration_us, outcome, error_class, error_message, cache_hit, response_bytes, {}, {}, {}, {}, {}, {} FROM requests WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
        opt("queue_us", "0"),
        opt("stages_us", "NULL"),
        opt("key", "NULL"),
        opt("key_bytes", "0"),
        opt("truncated", "0"),
        opt("args_excerpt", "NULL"),
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params![lo, hi])?;
    while let Some(r) = rows.next()? {
        let at_ms = int(r.get_ref(0)?);
        if at_ms < from_ms || at_ms >= until_ms {
            continue;
        }
        let row = LogRow {
            at_ms,
            session: capped(r.get_ref(1)?, 256).unwrap_or(b""),
            tool: capped(r.get_ref(2)?, 256).unwrap_or(b""),
            duration_us: int(r.get_ref(3)?),
            outcome: capped(r.get_ref(4)?, 64).unwrap_or(b""),
            error_class: capped(r.get_ref(5)?, 64),
            error_message: capped(r.get_ref(6)?, 4 * crate::store::MAX_ERROR_MESSAGE),
            cache_hit: match r.get_ref(7)? {
                ValueRef::Null => None,
                v => Some(int(v) != 0),
            },
            response_bytes: int(r.get_ref(8)?),
            queue_us: int(r.get_ref(9)?),
            stages_us: capped(r.get_ref(10)?, 4096),
            key: capped(r.get_ref(11)?, 1024).filter(|k| !k.is_empty()),
            key_bytes: int(r.get_ref(12)?).max(0),
            truncated: int(r.get_ref(13)?) != 0,
            args_excerpt: capped(r.get_ref(14)?, 4 * crate::store::MAX_ARGS_EXCERPT),
        };
        if !each(&row)? {
            break;
        }
    }
    Ok(())
}

/// Rows per batch handed from the reading thread to the analysing one.
const BATCH_ROWS: usize = 4096;
/// Text bytes per batch before it is handed over early (long messages).
const BATCH_BYTES: usize = 4 << 20;
/// Batches in flight: bounds the memory of the pipeline (a few MB).
const BATCHES_IN_FLIGHT: usize = 4;

/// Where a text lies in a batch's buffer (`len == u32::MAX`: absent).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    at_ms: i64,
    duration_us: i64,
    response_bytes: i64,
    queue_us: i64,
    key_bytes: i64,
    cache_hit: Option<bool>,
    truncated: bool,
    /// session, tool, outcome, error_class, error_message, stages_us, key, args_excerpt
    text: [Span; 8],
}

/// Rows copied out of SQLite, their texts in one buffer.
#[derive(Debug, Default)]
struct Batch {
    buf: Vec<u8>,
    recs: Vec<Rec>,
}

impl Batch {
    fn span(&mut self, t: Option<&[u8]>) -> Span {
        match t {
            None => Span { start: 0, len: u32::MAX },
            Some(t) => {
                let start = self.buf.len() as u32;
                self.buf.extend_from_slice(t);
                Span { start, len: t.len() as u32 }
            }
        }
    }

    fn push(&mut self, r: &LogRow<'_>) {
        let text = [
            self.span(Some(r.session)),
            self.span(Some(r.tool)),
            self.span(Some(r.outcome)),
            self.span(r.error_class),
            self.span(r.error_message),
            self.span(r.stages_us),
            self.span(r.key),
            self.span(r.args_excerpt),
        ];
        self.recs.push(Rec {
            at_ms: r.at_ms,
            duration_us: r.duration_us,
            response_bytes: r.response_bytes,
            queue_us: r.queue_us,
            key_bytes: r.key_bytes,
            cache_hit: r.cache_hit,
            truncated: r.truncated,
            text,
        });
    }

    fn get(&self, s: Span) -> Option<&[u8]> {
        (s.len != u32::MAX).then(|| &self.buf[s.start as usize..(s.start + s.len) as usize])
    }

    fn row(&self, r: &Rec) -> LogRow<'_> {
        let t = |i: usize| self.get(r.text[i]);
        LogRow {
            at_ms: r.at_ms,
            session: t(0).unwrap_or(b""),
            tool: t(1).unwrap_or(b""),
            duration_us: r.duration_us,
            outcome: t(2).unwrap_or(b""),
            error_class: t(3),
            error_message: t(4),
            cache_hit: r.cache_hit,
            response_bytes: r.response_bytes,
            queue_us: r.queue_us,
            stages_us: t(5),
            key: t(6),
            key_bytes: r.key_bytes,
            truncated: r.truncated,
            args_excerpt: t(7),
        }
    }
}

/// Every request in `[from_ms, until_ms)` of the log at `path`, oldest first, handed to `f`.
/// With two cores or more, SQLite is read on a second thread while `f` runs (a bounded
/// pipeline of batches), which nearly halves the time of a large scan. Returns the row count.
pub(crate) fn scan_full(
    path: &Path,
    from_ms: i64,
    until_ms: i64,
    mut f: impl FnMut(&LogRow<'_>) -> Result<(), LearnError>,
) -> Result<u64, LearnError> {
    let mut n = 0u64;
    let cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
    if cores < 2 {
        let conn = open(path)?;
        read_rows(&conn, from_ms, until_ms, |row| {
            f(row)?;
            n += 1;
            Ok(true)
        })?;
        return Ok(n);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch, LearnError>>(BATCHES_IN_FLIGHT);
    // Emptied batches go back to the reader, so their buffers are allocated once.
    let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<Batch>(BATCHES_IN_FLIGHT + 2);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut batch = Batch::default();
            let read = open(path).and_then(|conn| {
                read_rows(&conn, from_ms, until_ms, |row| {
                    batch.push(row);
                    if batch.recs.len() >= BATCH_ROWS || batch.buf.len() >= BATCH_BYTES {
                        let mut next = back_rx.try_recv().unwrap_or_default();
                        next.buf.clear();
                        next.recs.clear();
                        // A closed channel means the analysis stopped: stop too.
                        return Ok(tx.send(Ok(std::mem::replace(&mut batch, next))).is_ok());
                    }
                    Ok(true)
                })
            });
            let _ = tx.send(read.map(|()| batch));
        });
        // Owned here, so an early return (an error) closes the channel before the scope waits
        // for the reader, which then stops instead of blocking on a full channel.
        let rx = rx;
        for batch in rx.iter() {
            let batch = batch?;
            for r in &batch.recs {
                f(&batch.row(r))?;
                n += 1;
            }
            let _ = back_tx.try_send(batch);
        }
        Ok(n)
    })
}

/// Time, tool, duration and outcome of every request in `[from_ms, until_ms)`.
pub(crate) fn scan_light(
    conn: &Connection,
    from_ms: i64,
    until_ms: i64,
    mut f: impl FnMut(&LightRow<'_>),
) -> Result<u64, LearnError> {
    columns(conn)?;
    let Some((lo, hi)) = id_range(conn, from_ms, until_ms)? else {
        return Ok(0);
    };
    let mut stmt =
        conn.prepare("SELECT at_ms, tool, duration_us, outcome FROM requests WHERE id BETWEEN ?1 AND ?2 ORDER BY id")?;
    let mut rows = stmt.query(params![lo, hi])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let at_ms = int(r.get_ref(0)?);
        if at_ms < from_ms || at_ms >= until_ms {
            continue;
        }
        f(&LightRow {
            at_ms,
            tool: capped(r.get_ref(1)?, 256).unwrap_or(b""),
            duration_us: int(r.get_ref(2)?),
            ok: matches!(bytes(r.get_ref(3)?), Some(b"ok" | b"cancelled")),
        });
        n += 1;
    }
    Ok(n)
}

/// SLI minutes of every objective in `[from_minute, until_minute)`: (slo, minute, good, total).
pub(crate) fn slo_minutes(
    conn: &Connection,
    from_minute: i64,
    until_minute: i64,
) -> Result<Vec<(String, i64, u64, u64)>, LearnError> {
    let exists: bool =
        conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'slo_minutes'", [], |r| {
            r.get(0)
        })?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT slo, minute, good, total FROM slo_minutes WHERE minute >= ?1 AND minute < ?2 ORDER BY slo, minute",
    )?;
    let rows = stmt
        .query_map(params![from_minute, until_minute], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?.max(0) as u64,
                r.get::<_, i64>(3)?.max(0) as u64,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_analysis_that_stops_early_stops_the_reader() {
        let dir = std::env::temp_dir().join(format!("kaizen-scan-stop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("gemba.db");
        let spec = crate::learn::synthetic::SyntheticSpec::day(1, 30_000, 1_741_132_800_000);
        crate::learn::synthetic::generate(&path, &spec).unwrap();
        let mut seen = 0;
        let r = scan_full(&path, 0, i64::MAX, |_| {
            seen += 1;
            if seen == 10 { Err(LearnError::Options("stop".into())) } else { Ok(()) }
        });
        assert!(matches!(r, Err(LearnError::Options(_))));
        assert_eq!(seen, 10);
        // And a full scan sees every row once.
        assert_eq!(scan_full(&path, 0, i64::MAX, |_| Ok(())).unwrap(), 30_000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
