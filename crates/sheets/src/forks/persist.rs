//! How a fork lives on disk, so it survives a restart:
//!
//! ```text
//! <state>/forks/<fork-id>/base.xlsx   the original as it was when the fork was made
//!                        /fork.json   what the fork is (source, checkpoints, staged changes)
//!                        /ops.jsonl   its edits, one batch per line, appended as they happen
//!                        /base-N.xlsx the fork after its Nth structural edit (epoch N)
//!                        /ops-N.jsonl the edit log of epoch N
//! ```
//!
//! A structural edit (rows, columns, sheets) rebases the fork: the file with every edit so far
//! becomes the new base, and a new, empty log begins. The new epoch's files are written first
//! and `fork.json` (written atomically) is the commit point, so a crash leaves the fork in one
//! epoch or the other. Earlier epochs stay on disk so that a checkpoint taken before a
//! structural edit can still be restored.
//!
//! `fork.json` is replaced atomically (write, fsync, rename); `ops.jsonl` is appended, and a
//! torn last line (a crash mid-append) is dropped when the fork is read back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::cells::Input;
use super::styles::StyleSpec;
use crate::error::{Result, SheetsError};
use crate::workspace::FileIdentity;

/// One cell write, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Sheet name.
    pub s: String,
    pub r: u32,
    pub c: u32,
    pub i: Input,
}

/// One formatting change of a range, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StyleOp {
    /// Sheet name.
    pub s: String,
    pub top: u32,
    pub left: u32,
    pub bottom: u32,
    pub right: u32,
    pub st: StyleSpec,
}

/// A line of the op log: a batch of cell writes, or one formatting change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum LogLine {
    Cells(Vec<Op>),
    Style { style: Box<StyleOp> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Edits (ops) the fork had when the checkpoint was taken.
    pub ops: usize,
    /// Formatting changes it had.
    #[serde(default)]
    pub styles: usize,
    /// The structural epoch it belongs to (0 before any structural edit).
    #[serde(default)]
    pub epoch: u32,
    pub created_unix: u64,
}

/// A structural edit the fork went through, and the epoch it began.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StructRecord {
    pub epoch: u32,
    pub op: super::structure::StructOp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Staged {
    pub id: String,
    /// The tool that staged it.
    pub tool: String,
    pub ops: Vec<Op>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub styles: Vec<StyleOp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub structure: Vec<super::structure::StructOp>,
    pub created_unix: u64,
}

/// The source file's identity, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    pub len: u64,
    pub mtime_ns: Option<u128>,
    pub inode: u64,
}

impl From<&FileIdentity> for SourceIdentity {
    fn from(f: &FileIdentity) -> Self {
        Self {
            len: f.len,
            mtime_ns: f.modified.and_then(|m| m.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos()),
            inode: f.inode,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkMeta {
    pub id: String,
    pub workbook_id: String,
    /// The original, relative to the workspace.
    pub source_path: String,
    pub source: SourceIdentity,
    pub created_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default)]
    pub checkpoints: Vec<Checkpoint>,
    #[serde(default)]
    pub staged: Vec<Staged>,
    /// Paths (relative) this fork has saved to; saving there again is allowed.
    #[serde(default)]
    pub saved_paths: Vec<String>,
    /// Counter for checkpoint and change ids.
    #[serde(default)]
    pub seq: u64,
    /// Structural edits so far; the fork's base is `base-<epoch>.xlsx` once it is above 0.
    #[serde(default)]
    pub epoch: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub structure: Vec<StructRecord>,
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> SheetsError {
    SheetsError::Workspace(format!("cannot {what} {}: {e}", path.display()))
}

/// Write a file so that a crash leaves either the old content or the new, never a mix:
/// a temporary file in the same directory, fsync, rename over, fsync the directory.
/// `pause` (tests only) waits between the fsync and the rename.
pub fn write_atomic(path: &Path, data: &[u8], pause: Option<std::time::Duration>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.gemba-{}-{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub struct ForkDir {
    pub dir: PathBuf,
    /// The structural epoch whose log this appends to.
    epoch: u32,
}

impl ForkDir {
    pub fn new(root: &Path, id: &str) -> Self {
        Self { dir: root.join(id), epoch: 0 }
    }

    /// The same directory, appending to epoch `epoch`'s log.
    pub fn at_epoch(self, epoch: u32) -> Self {
        Self { epoch, ..self }
    }

    pub fn base(&self) -> PathBuf {
        self.dir.join("base.xlsx")
    }

    /// The base file of a structural epoch.
    pub fn base_for(&self, epoch: u32) -> PathBuf {
        if epoch == 0 { self.base() } else { self.dir.join(format!("base-{epoch}.xlsx")) }
    }

    fn ops_path_for(&self, epoch: u32) -> PathBuf {
        if epoch == 0 { self.dir.join("ops.jsonl") } else { self.dir.join(format!("ops-{epoch}.jsonl")) }
    }

    /// Write epoch `epoch + 1`'s base and its empty log. The epoch begins when `fork.json`
    /// says so; until then these files are unused.
    pub fn prepare_epoch(&self, epoch: u32, base: &[u8]) -> Result<()> {
        let next = self.base_for(epoch + 1);
        write_atomic(&next, base, None).map_err(|e| io_err("write", &next, e))?;
        let log = self.ops_path_for(epoch + 1);
        write_atomic(&log, b"", None).map_err(|e| io_err("write", &log, e))
    }

    /// Remove the files of epochs `from..=to` (a prepared epoch that failed, or epochs a
    /// restored checkpoint left behind).
    pub fn remove_epochs(&self, from: u32, to: u32) {
        for e in from.max(1)..=to {
            let _ = std::fs::remove_file(self.base_for(e));
            let _ = std::fs::remove_file(self.ops_path_for(e));
        }
    }

    /// The edit log of an epoch.
    pub fn load_epoch_ops(&self, epoch: u32) -> Result<(Vec<Op>, Vec<StyleOp>)> {
        let path = self.ops_path_for(epoch);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(parse_log(&text, &self.dir.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Vec::new(), Vec::new())),
            Err(e) => Err(io_err("read", &path, e)),
        }
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("fork.json")
    }

    fn ops_path(&self) -> PathBuf {
        self.ops_path_for(self.epoch)
    }

    pub fn save_meta(&self, meta: &ForkMeta) -> Result<()> {
        let json = serde_json::to_vec_pretty(meta).map_err(|e| SheetsError::Internal(e.to_string()))?;
        write_atomic(&self.meta_path(), &json, None).map_err(|e| io_err("write", &self.meta_path(), e))
    }

    pub fn append_ops(&self, ops: &[Op]) -> Result<()> {
        let mut line = serde_json::to_vec(ops).map_err(|e| SheetsError::Internal(e.to_string()))?;
        line.push(b'\n');
        self.append_line(&line)
    }

    pub fn append_style(&self, op: &StyleOp) -> Result<()> {
        let mut line = serde_json::to_vec(&LogLine::Style { style: Box::new(op.clone()) })
            .map_err(|e| SheetsError::Internal(e.to_string()))?;
        line.push(b'\n');
        self.append_line(&line)
    }

    fn append_line(&self, line: &[u8]) -> Result<()> {
        let path = self.ops_path();
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io_err("open", &path, e))?;
        // One write of the whole line: a crash leaves at most a torn last line, dropped on load.
        f.write_all(line).map_err(|e| io_err("append to", &path, e))
    }

    /// Replace the whole log (after restoring a checkpoint).
    pub fn rewrite_ops(&self, ops: &[Op], styles: &[StyleOp]) -> Result<()> {
        let mut data = Vec::new();
        if !ops.is_empty() {
            data = serde_json::to_vec(ops).map_err(|e| SheetsError::Internal(e.to_string()))?;
            data.push(b'\n');
        }
        for st in styles {
            data.extend(
                serde_json::to_vec(&LogLine::Style { style: Box::new(st.clone()) })
                    .map_err(|e| SheetsError::Internal(e.to_string()))?,
            );
            data.push(b'\n');
        }
        write_atomic(&self.ops_path(), &data, None).map_err(|e| io_err("write", &self.ops_path(), e))
    }

    pub fn load(&self) -> Result<(ForkMeta, Vec<Op>, Vec<StyleOp>)> {
        let raw = std::fs::read(self.meta_path()).map_err(|e| io_err("read", &self.meta_path(), e))?;
        let meta: ForkMeta = serde_json::from_slice(&raw).map_err(|e| io_err("parse", &self.meta_path(), e))?;
        let (ops, styles) = match std::fs::read_to_string(self.ops_path_for(meta.epoch)) {
            Ok(text) => parse_log(&text, &meta.id),
            Err(_) => (Vec::new(), Vec::new()),
        };
        Ok((meta, ops, styles))
    }

    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "cannot remove fork directory: {e}");
        }
    }
}

/// Cell batches and formatting changes of a log; a torn last line is dropped.
fn parse_log(text: &str, who: &str) -> (Vec<Op>, Vec<StyleOp>) {
    let mut ops = Vec::new();
    let mut styles = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<LogLine>(line) {
            Ok(LogLine::Cells(batch)) => ops.extend(batch),
            Ok(LogLine::Style { style }) => styles.push(*style),
            Err(e) => {
                tracing::warn!(fork = %who, line = n + 1, "dropping a torn edit batch: {e}");
                break;
            }
        }
    }
    (ops, styles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forks::cells::Scalar;

    fn meta(epoch: u32) -> ForkMeta {
        ForkMeta {
            id: "fork-test".into(),
            workbook_id: "w".into(),
            source_path: "a.xlsx".into(),
            source: SourceIdentity { len: 1, mtime_ns: None, inode: 1 },
            created_unix: 0,
            label: None,
            checkpoints: Vec::new(),
            staged: Vec::new(),
            saved_paths: Vec::new(),
            seq: 0,
            epoch,
            structure: Vec::new(),
        }
    }

    fn op(v: f64) -> Op {
        Op { s: "S".into(), r: 0, c: 0, i: Input::Value { v: Scalar::Number(v) } }
    }

    #[test]
    fn an_epoch_begins_only_when_the_description_says_so() {
        let root = std::env::temp_dir().join(format!("gemba-epoch-{}", std::process::id()));
        let dir = ForkDir::new(&root, "fork-test");
        std::fs::create_dir_all(&dir.dir).unwrap();
        dir.save_meta(&meta(0)).unwrap();
        dir.append_ops(&[op(1.0), op(2.0)]).unwrap();
        // A crash after the next epoch's files were written but before fork.json: still epoch 0.
        dir.prepare_epoch(0, b"new base").unwrap();
        let (m, ops, _) = dir.load().unwrap();
        assert_eq!((m.epoch, ops.len()), (0, 2));
        // Committed: epoch 1 starts with an empty log, epoch 0's log is kept for its checkpoints.
        dir.save_meta(&meta(1)).unwrap();
        let (m, ops, _) = dir.load().unwrap();
        assert_eq!((m.epoch, ops.len()), (1, 0));
        let d1 = ForkDir::new(&root, "fork-test").at_epoch(1);
        d1.append_ops(&[op(3.0)]).unwrap();
        assert_eq!(dir.load().unwrap().1, vec![op(3.0)]);
        assert_eq!(d1.load_epoch_ops(0).unwrap().0.len(), 2);
        d1.remove_epochs(1, 1);
        assert!(!d1.base_for(1).exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
