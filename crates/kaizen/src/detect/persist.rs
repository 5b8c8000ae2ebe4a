//! Incidents in the state database: table `incidents (id, opened_ms, closed_ms, json)`, one
//! row per incident, upserted whenever it changes; read back by `load_incidents` (for the CLI
//! when no server runs, and to show earlier runs' incidents after a restart).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::anomaly::ToolBaseline;
use super::incident::Incident;

/// Incidents returned by one `load_incidents`, at most (newest kept).
const MAX_LOAD: usize = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    opened_ms INTEGER NOT NULL,
    closed_ms INTEGER,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_opened ON incidents(opened_ms);
CREATE TABLE IF NOT EXISTS detect_baselines (
    tool TEXT PRIMARY KEY,
    saved_ms INTEGER NOT NULL,
    json TEXT NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot open the state database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("no state database at {path}: start `gemba serve` once, or pass the right --state-dir")]
    Missing { path: PathBuf },
    #[error("incident query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("incident {id} in the database is not valid JSON ({source}); delete that row or restore a backup")]
    Corrupt { id: String, source: serde_json::Error },
    #[error("cannot encode incident {id}: {source}")]
    Encode { id: String, source: serde_json::Error },
}

/// A writer of incidents (keep one per process, on the thread that ticks the detector).
#[derive(Debug)]
pub struct IncidentStore {
    conn: Connection,
}

impl IncidentStore {
    /// Opens (creating if needed) the database at `path` and the `incidents` table.
    pub fn open(path: &Path) -> Result<Self, PersistError> {
        let open = |source| PersistError::Open { path: path.to_path_buf(), source };
        let conn = Connection::open(path).map_err(open)?;
        let setup = || -> rusqlite::Result<()> {
            conn.busy_timeout(Duration::from_secs(2))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.execute_batch(SCHEMA)
        };
        setup().map_err(open)?;
        Ok(Self { conn })
    }

    /// Inserts or replaces one incident.
    pub fn upsert(&mut self, inc: &Incident) -> Result<(), PersistError> {
        self.upsert_all(std::slice::from_ref(inc))
    }

    /// Inserts or replaces incidents in one transaction.
    pub fn upsert_all(&mut self, incidents: &[Incident]) -> Result<(), PersistError> {
        if incidents.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO incidents (id, opened_ms, closed_ms, json) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET opened_ms = excluded.opened_ms,
                     closed_ms = excluded.closed_ms, json = excluded.json",
            )?;
            for inc in incidents {
                let json =
                    serde_json::to_string(inc).map_err(|source| PersistError::Encode { id: inc.id.clone(), source })?;
                stmt.execute(params![inc.id, ms(inc.opened_ms), inc.closed_ms.map(ms), json])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Saves the detector's baselines (replacing earlier ones of the same tools).
    pub fn save_baselines(&mut self, baselines: &[ToolBaseline]) -> Result<(), PersistError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO detect_baselines (tool, saved_ms, json) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tool) DO UPDATE SET saved_ms = excluded.saved_ms, json = excluded.json",
            )?;
            for b in baselines {
                let json =
                    serde_json::to_string(b).map_err(|source| PersistError::Encode { id: b.tool.clone(), source })?;
                stmt.execute(params![b.tool, ms(b.saved_ms), json])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Baselines saved by earlier runs no older than `max_age_ms` before `now_ms`. Rows that do
    /// not parse are skipped (a baseline is an optimisation: the detector relearns without it).
    pub fn load_baselines(&self, now_ms: u64, max_age_ms: u64) -> Result<Vec<ToolBaseline>, PersistError> {
        let mut stmt = self.conn.prepare("SELECT json FROM detect_baselines WHERE saved_ms >= ?1")?;
        let rows = stmt.query_map(params![ms(now_ms.saturating_sub(max_age_ms))], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            if let Ok(b) = serde_json::from_str::<ToolBaseline>(&row?) {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Deletes incidents closed before `before_ms`; returns how many.
    pub fn prune(&mut self, before_ms: u64) -> Result<usize, PersistError> {
        Ok(self
            .conn
            .execute("DELETE FROM incidents WHERE closed_ms IS NOT NULL AND closed_ms < ?1", params![ms(before_ms)])?)
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Incidents open or closed at or after `since_ms`, newest first (at most 1000), read-only.
/// A database without the table (no incident ever) gives an empty list.
pub fn load_incidents(path: &Path, since_ms: u64) -> Result<Vec<Incident>, PersistError> {
    if !path.exists() {
        return Err(PersistError::Missing { path: path.to_path_buf() });
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| PersistError::Open { path: path.to_path_buf(), source })?;
    conn.busy_timeout(Duration::from_secs(2))?;
    let table: Option<String> = conn
        .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'incidents'", [], |r| r.get(0))
        .optional()?;
    if table.is_none() {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT id, json FROM incidents WHERE closed_ms IS NULL OR closed_ms >= ?1
         ORDER BY opened_ms DESC LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![ms(since_ms), MAX_LOAD as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, json) = row?;
        out.push(serde_json::from_str(&json).map_err(|source| PersistError::Corrupt { id, source })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::causes::RankedCause;
    use crate::detect::incident::TimelineEntry;

    fn incident(id: &str, opened: u64, closed: Option<u64>) -> Incident {
        Incident {
            id: id.into(),
            opened_ms: opened,
            closed_ms: closed,
            tools: vec!["read_table".into(), "sheet_page".into()],
            timeline: vec![
                TimelineEntry { at_ms: opened - 20_000, signal: "read_table/latency".into(), detail: "rose".into() },
                TimelineEntry {
                    at_ms: opened - 15_000, signal: "cache_hit_ratio".into(), detail: "0.95 → 0.2".into()
                },
            ],
            causes: vec![RankedCause {
                cause: "cache_thrash".into(),
                score: 0.93,
                evidence: "cache_hit_ratio 0.95 → 0.2 from 12:00:10".into(),
            }],
        }
    }

    #[test]
    fn round_trip_upsert_and_since() {
        let dir = std::env::temp_dir().join(format!("kaizen-detect-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gemba.db");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(load_incidents(&path, 0), Err(PersistError::Missing { .. })));

        let mut store = IncidentStore::open(&path).unwrap();
        assert!(load_incidents(&path, 0).unwrap().is_empty());
        let old = incident("inc-1700000000000", 1_700_000_000_000, Some(1_700_000_300_000));
        let mut live = incident("inc-1700000900000", 1_700_000_900_000, None);
        store.upsert_all(&[old.clone(), live.clone()]).unwrap();
        // The live one changes and closes: the row is replaced, not duplicated.
        live.closed_ms = Some(1_700_001_000_000);
        live.causes[0].score = 0.97;
        store.upsert(&live).unwrap();

        let all = load_incidents(&path, 0).unwrap();
        assert_eq!(all, vec![live.clone(), old.clone()], "newest first, exactly as saved");
        let recent = load_incidents(&path, 1_700_000_500_000).unwrap();
        assert_eq!(recent, vec![live.clone()]);
        let json = serde_json::to_value(&all[0]).unwrap();
        assert_eq!(json["opened"], "2023-11-14T22:28:20.000Z");
        assert_eq!(json["timeline"][0]["at"], "2023-11-14T22:28:00.000Z");
        assert_eq!(json["causes"][0]["cause"], "cache_thrash");

        assert_eq!(store.prune(1_700_000_500_000).unwrap(), 1);
        assert_eq!(load_incidents(&path, 0).unwrap(), vec![live]);

        // A damaged row is reported with its id, not skipped silently.
        store.conn.execute("UPDATE incidents SET json = '{' WHERE id = 'inc-1700000900000'", []).unwrap();
        let e = load_incidents(&path, 0).unwrap_err().to_string();
        assert!(e.contains("inc-1700000900000") && e.contains("not valid JSON"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
