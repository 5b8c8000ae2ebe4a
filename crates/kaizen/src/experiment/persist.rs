//! Experiment state in the state database (`gemba.db`, beside the request log), through its
//! own connection: one row per experiment (its state and last status JSON) so a restart resumes
//! where it was, and a bounded log of transitions for reports. `gemba experiment status` can read
//! it without a running server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::engine::{ExperimentState, SavedExperiment, Transition, TransitionKind};

/// Transitions kept (oldest deleted first).
pub const MAX_EVENTS: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot open the experiment state in {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("experiment state query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("cannot encode experiment state: {0}")]
    Encode(#[from] serde_json::Error),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS experiment_state (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    updated_secs INTEGER NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiment_events (
    id INTEGER PRIMARY KEY,
    at_secs INTEGER NOT NULL,
    experiment TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS experiment_events_name ON experiment_events(experiment, at_secs);
";

/// A connection to the experiment tables.
pub struct ExperimentStore {
    conn: Connection,
    path: PathBuf,
}

impl ExperimentStore {
    /// Opens (creating tables in) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, PersistError> {
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(2))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        };
        let conn = open().map_err(|source| PersistError::Open { path: path.to_path_buf(), source })?;
        Ok(Self { conn, path: path.to_path_buf() })
    }

    /// Opens an existing database read-only (status without a server); tables must exist.
    pub fn open_read_only(path: &Path) -> Result<Self, PersistError> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.busy_timeout(Duration::from_secs(2)).map(|_| c))
            .map_err(|source| PersistError::Open { path: path.to_path_buf(), source })?;
        Ok(Self { conn, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Saves every experiment's state (replacing what was saved before), in one transaction.
    pub fn save(&mut self, saved: &[SavedExperiment]) -> Result<(), PersistError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO experiment_state (name, fingerprint, updated_secs, state, status) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint,
                   updated_secs = excluded.updated_secs, state = excluded.state, status = excluded.status",
            )?;
            for s in saved {
                stmt.execute(params![
                    s.name,
                    s.fingerprint,
                    s.state.updated_secs as i64,
                    serde_json::to_string(&s.state)?,
                    s.status.to_string()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Loads saved states; rows that no longer decode are skipped and named in the notes.
    pub fn load(&self) -> Result<(Vec<SavedExperiment>, Vec<String>), PersistError> {
        let mut stmt =
            self.conn.prepare("SELECT name, fingerprint, state, status FROM experiment_state ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
        })?;
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        for row in rows {
            let (name, fingerprint, state, status) = row?;
            match (serde_json::from_str::<ExperimentState>(&state), serde_json::from_str(&status)) {
                (Ok(state), Ok(status)) => out.push(SavedExperiment { name, fingerprint, state, status }),
                (Err(e), _) | (_, Err(e)) => {
                    notes.push(format!("saved state of experiment '{name}' does not decode ({e}); it starts afresh"))
                }
            }
        }
        Ok((out, notes))
    }

    /// The last saved status of every experiment, in the JSON contract.
    pub fn load_status(&self) -> Result<serde_json::Value, PersistError> {
        let mut stmt = self.conn.prepare("SELECT status FROM experiment_state ORDER BY name")?;
        let list: Vec<serde_json::Value> = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .filter_map(|s| s.ok().and_then(|s| serde_json::from_str(&s).ok()))
            .collect();
        Ok(serde_json::json!({ "experiments": list }))
    }

    /// Removes the saved state of experiments no longer in the config.
    pub fn forget_except(&mut self, names: &[&str]) -> Result<usize, PersistError> {
        let existing: Vec<String> = self
            .conn
            .prepare("SELECT name FROM experiment_state")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut n = 0;
        for e in existing.iter().filter(|e| !names.contains(&e.as_str())) {
            n += self.conn.execute("DELETE FROM experiment_state WHERE name = ?1", params![e])?;
        }
        Ok(n)
    }

    /// Appends transitions to the log (bounded to `MAX_EVENTS`).
    pub fn log_transitions(&mut self, ts: &[Transition]) -> Result<(), PersistError> {
        if ts.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO experiment_events (at_secs, experiment, kind, severity, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for t in ts {
                let kind = serde_json::to_value(t.kind)?.as_str().unwrap_or("").to_string();
                stmt.execute(params![t.at_secs as i64, t.experiment, kind, t.severity, t.message])?;
            }
        }
        tx.execute(
            "DELETE FROM experiment_events WHERE id <= (SELECT MAX(id) FROM experiment_events) - ?1",
            params![MAX_EVENTS],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The latest transitions (newest first), of one experiment or all.
    pub fn transitions(&self, experiment: Option<&str>, limit: usize) -> Result<Vec<Transition>, PersistError> {
        let mut stmt = self.conn.prepare(
            "SELECT at_secs, experiment, kind, severity, message FROM experiment_events
             WHERE ?1 IS NULL OR experiment = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![experiment, limit.min(100_000) as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (at, experiment, kind, severity, message) = row?;
            let Ok(kind) = serde_json::from_value::<TransitionKind>(serde_json::Value::String(kind)) else { continue };
            out.push(Transition { experiment, kind, at_secs: at.max(0) as u64, severity, message });
        }
        Ok(out)
    }
}
