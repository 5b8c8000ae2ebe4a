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
//! Durability: `fork.json` (checkpoints, staged changes) and every other file are replaced
//! atomically (write, fsync the file, rename, fsync the directory). The log is appended one
//! whole line per batch and fsynced before the edit is acknowledged. A crash mid-append leaves
//! a torn last line (no newline): it was never acknowledged and is cut off when the log is
//! opened and before any append, so a new batch never lands glued to it. A line that cannot be
//! read in the middle (disk damage, or a fragment glued to a batch by an older version that
//! is not recoverable) is logged as an error, skipped, and reported on the fork
//! (`list_forks` shows `damaged`); the lines after it are kept.

use std::io::{Read, Seek, SeekFrom, Write};
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
    /// The fork's `layout` when the change was staged (absent in forks staged before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<u64>,
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
    /// Counts every change of where cells are (a structural edit, a rewind to another epoch):
    /// a change staged under another layout would land on other cells.
    #[serde(default)]
    pub layout: u64,
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> SheetsError {
    SheetsError::Workspace(format!("cannot {what} {}: {e}", path.display()))
}

/// Make a directory's entries (a file just created or renamed into it) durable. File systems
/// that cannot sync a directory (they answer "invalid" or "unsupported") are let be: there is
/// nothing more to do on them.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let d = std::fs::File::open(dir)?;
    match d.sync_all() {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported) => Ok(()),
        other => other,
    }
}

/// Write a file so that a crash leaves either the old content or the new, never a mix:
/// a temporary file in the same directory, fsync, rename over, fsync the directory.
/// `pause` (tests only) waits between the fsync and the rename.
pub fn write_atomic(path: &Path, data: &[u8], pause: Option<std::time::Duration>) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
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
        // Without this the rename itself may not survive a crash.
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

static APPEND_PAUSE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Tests only: make every log append write half its line, pause this long, then write the
/// rest, so that a test can kill the server with a torn line on disk (0: off).
pub fn set_test_append_pause(pause: Option<std::time::Duration>) {
    let ms = pause.map_or(0, |p| u64::try_from(p.as_millis()).unwrap_or(u64::MAX));
    APPEND_PAUSE_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

fn test_append_pause() -> Option<std::time::Duration> {
    match APPEND_PAUSE_MS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        ms => Some(std::time::Duration::from_millis(ms)),
    }
}

pub struct ForkDir {
    pub dir: PathBuf,
    /// The structural epoch whose log this appends to.
    epoch: u32,
    /// Where the next batch goes: the end of the log's last whole line. Unknown until the log
    /// is read or first appended to; anything past it is a torn or failed append.
    log_len: Option<u64>,
    /// The log's directory entry is known to be durable (synced once per process).
    log_entry_synced: bool,
    /// What reading the log found wrong, for `list_forks` (None: nothing).
    damage: Option<String>,
}

impl ForkDir {
    pub fn new(root: &Path, id: &str) -> Self {
        Self { dir: root.join(id), epoch: 0, log_len: None, log_entry_synced: false, damage: None }
    }

    /// The same directory, appending to epoch `epoch`'s log.
    pub fn at_epoch(self, epoch: u32) -> Self {
        Self { epoch, log_len: None, log_entry_synced: false, damage: None, ..self }
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

    /// The edit log of this directory's epoch, read for use: a torn tail is cut off the file
    /// (it was never acknowledged), and unreadable lines are reported in [`ForkDir::damage`].
    pub fn open_log(&mut self) -> Result<LogRead> {
        let path = self.ops_path();
        let read = read_log(&path, &self.fork_id())?;
        if read.torn_bytes > 0 {
            cut_torn_tail(&path, read.good_len).map_err(|e| io_err("cut the torn last line of", &path, e))?;
        }
        self.log_len = Some(read.good_len);
        self.damage = read.damage(&path);
        Ok(read)
    }

    /// The edit log of another epoch (restoring a checkpoint taken in it), read only.
    pub fn load_epoch_ops(&self, epoch: u32) -> Result<(Vec<Op>, Vec<StyleOp>)> {
        let read = read_log(&self.ops_path_for(epoch), &self.fork_id())?;
        Ok((read.ops, read.styles))
    }

    /// What is wrong with this epoch's log, if anything: lines that could not be read were
    /// skipped (their edits are missing from the fork) and are kept in the file.
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    /// The fork's id (its directory's name), for logs.
    fn fork_id(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
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

    /// Append a batch of cell writes; when this returns Ok the batch is on disk (fsynced).
    pub fn append_ops(&mut self, ops: &[Op]) -> Result<()> {
        let mut line = serde_json::to_vec(ops).map_err(|e| SheetsError::Internal(e.to_string()))?;
        line.push(b'\n');
        self.append_line(&line)
    }

    /// Append a formatting change; durable when this returns Ok.
    pub fn append_style(&mut self, op: &StyleOp) -> Result<()> {
        let mut line = serde_json::to_vec(&LogLine::Style { style: Box::new(op.clone()) })
            .map_err(|e| SheetsError::Internal(e.to_string()))?;
        line.push(b'\n');
        self.append_line(&line)
    }

    /// Write one whole line at the end of the last whole line and fsync it. A torn tail left by
    /// a crash is cut off first (the line would otherwise be glued to it and both lost), and a
    /// failed write is cut back off, so the log is always whole lines.
    fn append_line(&mut self, line: &[u8]) -> Result<()> {
        let path = self.ops_path();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err("open", &path, e))?;
        let at = match self.log_len {
            Some(n) => n,
            None => whole_lines_end(&mut f).map_err(|e| io_err("read", &path, e))?,
        };
        let on_disk = f.metadata().map_err(|e| io_err("inspect", &path, e))?.len();
        if on_disk < at {
            return Err(SheetsError::Workspace(format!(
                "the edit log {} is shorter ({on_disk} bytes) than this server wrote it ({at} bytes): something else changed it; restart the server so the fork is read again",
                path.display()
            )));
        }
        if on_disk > at {
            tracing::warn!(log = %path.display(), bytes = on_disk - at, "cutting a torn last line off an edit log");
        }
        let written = (|| {
            if on_disk > at {
                f.set_len(at)?;
            }
            f.seek(SeekFrom::Start(at))?;
            match test_append_pause() {
                // Tests only: half a line, a pause (to be killed in), the rest.
                Some(pause) => {
                    let half = line.len() / 2;
                    f.write_all(&line[..half])?;
                    std::thread::sleep(pause);
                    f.write_all(&line[half..])?;
                }
                None => f.write_all(line)?,
            }
            f.sync_data()
        })();
        if let Err(e) = written {
            // Leave whole lines only: the next append must not land after a fragment.
            let _ = f.set_len(at).and_then(|()| f.sync_data());
            self.log_len = None;
            return Err(io_err("append to", &path, e));
        }
        if !self.log_entry_synced {
            // The log may have just been created: its name must survive a crash too.
            sync_dir(&self.dir).map_err(|e| io_err("sync", &self.dir, e))?;
            self.log_entry_synced = true;
        }
        self.log_len = Some(at + line.len() as u64);
        Ok(())
    }

    /// Replace the whole log (after restoring a checkpoint). A log with unreadable lines is
    /// kept beside it (`<log>.damaged-<unix time>`) rather than overwritten.
    pub fn rewrite_ops(&mut self, ops: &[Op], styles: &[StyleOp]) -> Result<()> {
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
        let path = self.ops_path();
        if self.damage.is_some() {
            let kept = path.with_extension(format!("jsonl.damaged-{}", now_unix()));
            std::fs::rename(&path, &kept).map_err(|e| io_err("set aside the damaged log", &path, e))?;
            tracing::warn!(log = %kept.display(), "the damaged edit log is kept beside the rewritten one");
        }
        write_atomic(&path, &data, None).map_err(|e| io_err("write", &path, e))?;
        self.log_len = Some(data.len() as u64);
        self.log_entry_synced = true;
        self.damage = None;
        Ok(())
    }

    /// Read the fork back: its description, then its current epoch's log (see
    /// [`ForkDir::open_log`]); this directory then appends to that epoch.
    pub fn load(&mut self) -> Result<(ForkMeta, LogRead)> {
        let raw = std::fs::read(self.meta_path()).map_err(|e| io_err("read", &self.meta_path(), e))?;
        let meta: ForkMeta = serde_json::from_slice(&raw).map_err(|e| io_err("parse", &self.meta_path(), e))?;
        self.epoch = meta.epoch;
        self.log_len = None;
        self.log_entry_synced = false;
        let log = self.open_log()?;
        Ok((meta, log))
    }

    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "cannot remove fork directory: {e}");
        }
    }
}

/// A line of the log that could not be read.
#[derive(Debug, Clone)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// Byte offset of the line in the file.
    pub offset: u64,
    pub len: usize,
    pub error: String,
}

/// What reading an op log found.
#[derive(Debug, Default)]
pub struct LogRead {
    pub ops: Vec<Op>,
    pub styles: Vec<StyleOp>,
    /// Bytes up to the end of the last whole line (a clean log's length).
    pub good_len: u64,
    /// Bytes after the last newline: a write cut short by a crash, never acknowledged.
    pub torn_bytes: u64,
    /// Lines that could not be read, in order (the first [`MAX_BAD_LINES`]); later lines are
    /// still read.
    pub bad_lines: Vec<BadLine>,
    pub bad_line_count: usize,
    /// Lines that carried a torn fragment glued in front of a whole batch (how older versions
    /// appended after a crash); the batch was read and the fragment dropped.
    pub salvaged: usize,
}

/// Most unreadable lines described one by one.
pub const MAX_BAD_LINES: usize = 10;

impl LogRead {
    /// The damage to report, if any line could not be read.
    fn damage(&self, path: &Path) -> Option<String> {
        if self.bad_line_count == 0 {
            return None;
        }
        let lines: Vec<String> = self.bad_lines.iter().map(|b| b.line.to_string()).collect();
        let more = if self.bad_line_count > lines.len() { " and more".to_string() } else { String::new() };
        Some(format!(
            "{} line(s) of the edit log {} could not be read (line {}{more}) and were skipped: the edits in them are missing from this fork; later edits were kept. Check the fork's cells, redo missing edits (or restore a checkpoint); the unreadable lines stay in the file",
            self.bad_line_count,
            path.display(),
            lines.join(", ")
        ))
    }
}

/// Read a log file: a missing file is an empty log, any other read error is an error.
fn read_log(path: &Path, who: &str) -> Result<LogRead> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let read = parse_log(&bytes);
            if read.torn_bytes > 0 {
                tracing::warn!(fork = %who, log = %path.display(), bytes = read.torn_bytes, "dropping a torn last line (a write cut short by a crash; it was never acknowledged)");
            }
            if read.salvaged > 0 {
                tracing::warn!(fork = %who, log = %path.display(), lines = read.salvaged, "recovered edit batches glued to a torn fragment by an older version; the fragments were dropped");
            }
            for b in &read.bad_lines {
                tracing::error!(fork = %who, log = %path.display(), line = b.line, offset = b.offset, bytes = b.len, "an edit log line cannot be read and is skipped (its edits are missing; later lines are kept): {}", b.error);
            }
            Ok(read)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LogRead::default()),
        Err(e) => Err(io_err("read", path, e)),
    }
}

/// Cut a log back to its whole lines, durably.
fn cut_torn_tail(path: &Path, good_len: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(good_len)?;
    f.sync_data()
}

/// The end of the last whole line of an open log (0 if it has none), found from the end.
fn whole_lines_end(f: &mut std::fs::File) -> std::io::Result<u64> {
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn parse_line(line: &[u8]) -> std::result::Result<LogLine, serde_json::Error> {
    serde_json::from_slice::<LogLine>(line)
}

/// A line whose start is a torn fragment and whose rest is a whole batch: the batch.
/// A batch line starts with `[{"s":` and a style line with `{"style":`; inside JSON strings
/// quotes are escaped, so these never occur elsewhere.
fn salvage(line: &[u8]) -> Option<LogLine> {
    const STARTS: [&[u8]; 2] = [b"[{\"s\":", b"{\"style\":"];
    let mut tries = 0;
    for i in 1..line.len() {
        if STARTS.iter().any(|s| line[i..].starts_with(s)) {
            tries += 1;
            if let Ok(l) = parse_line(&line[i..]) {
                return Some(l);
            }
            if tries >= 64 {
                break;
            }
        }
    }
    None
}

/// Cell batches and formatting changes of a log. Only whole lines count; an unreadable line
/// is reported and skipped, and every line after it is still read.
fn parse_log(data: &[u8]) -> LogRead {
    let mut read = LogRead::default();
    let mut pos = 0usize;
    let mut number = 0usize;
    while pos < data.len() {
        let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') else {
            read.torn_bytes = (data.len() - pos) as u64;
            break;
        };
        number += 1;
        let line = &data[pos..pos + nl];
        let at = pos;
        pos += nl + 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        let parsed = match parse_line(line) {
            Ok(l) => Some(l),
            Err(e) => match salvage(line) {
                Some(l) => {
                    read.salvaged += 1;
                    Some(l)
                }
                None => {
                    read.bad_line_count += 1;
                    if read.bad_lines.len() < MAX_BAD_LINES {
                        read.bad_lines.push(BadLine {
                            line: number,
                            offset: at as u64,
                            len: line.len(),
                            error: e.to_string(),
                        });
                    }
                    None
                }
            },
        };
        match parsed {
            Some(LogLine::Cells(batch)) => read.ops.extend(batch),
            Some(LogLine::Style { style }) => read.styles.push(*style),
            None => {}
        }
    }
    read.good_len = (data.len() as u64) - read.torn_bytes;
    read
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
            layout: 0,
        }
    }

    fn op(v: f64) -> Op {
        Op { s: "S".into(), r: 0, c: 0, i: Input::Value { v: Scalar::Number(v) } }
    }

    fn scratch(name: &str) -> (PathBuf, ForkDir) {
        let root = std::env::temp_dir().join(format!("gemba-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = ForkDir::new(&root, "fork-test");
        std::fs::create_dir_all(&dir.dir).unwrap();
        dir.save_meta(&meta(0)).unwrap();
        (root, dir)
    }

    fn values(ops: &[Op]) -> Vec<f64> {
        ops.iter()
            .map(|o| match &o.i {
                Input::Value { v: Scalar::Number(n) } => *n,
                other => panic!("not a number: {other:?}"),
            })
            .collect()
    }

    fn reopen(root: &Path) -> (ForkDir, LogRead) {
        let mut d = ForkDir::new(root, "fork-test");
        let (_, log) = d.load().unwrap();
        (d, log)
    }

    #[test]
    fn an_epoch_begins_only_when_the_description_says_so() {
        let (root, mut dir) = scratch("epoch");
        dir.append_ops(&[op(1.0), op(2.0)]).unwrap();
        // A crash after the next epoch's files were written but before fork.json: still epoch 0.
        dir.prepare_epoch(0, b"new base").unwrap();
        let (m, log) = ForkDir::new(&root, "fork-test").load().unwrap();
        assert_eq!((m.epoch, log.ops.len()), (0, 2));
        // Committed: epoch 1 starts with an empty log, epoch 0's log is kept for its checkpoints.
        dir.save_meta(&meta(1)).unwrap();
        let (m, log) = ForkDir::new(&root, "fork-test").load().unwrap();
        assert_eq!((m.epoch, log.ops.len()), (1, 0));
        let mut d1 = ForkDir::new(&root, "fork-test").at_epoch(1);
        d1.append_ops(&[op(3.0)]).unwrap();
        assert_eq!(ForkDir::new(&root, "fork-test").load().unwrap().1.ops, vec![op(3.0)]);
        assert_eq!(d1.load_epoch_ops(0).unwrap().0.len(), 2);
        d1.remove_epochs(1, 1);
        assert!(!d1.base_for(1).exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A crash mid-append leaves a fragment without its newline. The next append (after a
    /// restart, or in a process that never read the log) must not glue its batch to it.
    #[test]
    fn a_torn_tail_is_cut_before_the_next_append() {
        let (root, mut dir) = scratch("torn");
        dir.append_ops(&[op(1.0)]).unwrap();
        let log = dir.dir.join("ops.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(br#"[{"s":"S","r":0,"c":0,"i":{"k":"val"#).unwrap();
        drop(f);
        // Restarted: opening the log cuts the tail; the new batch lands on a clean line.
        let (mut d, read) = reopen(&root);
        assert!(read.torn_bytes > 0 && read.bad_line_count == 0);
        d.append_ops(&[op(2.0)]).unwrap();
        assert_eq!(values(&reopen(&root).1.ops), [1.0, 2.0]);
        // Without reading it first (a fresh directory handle appends at once).
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"[{\"s\":").unwrap();
        ForkDir::new(&root, "fork-test").append_ops(&[op(3.0)]).unwrap();
        // Garbage after what this handle wrote (a failed write) is cut by its next append.
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"\0\0\0").unwrap();
        d = reopen(&root).0;
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"{\"sty").unwrap();
        d.append_ops(&[op(4.0)]).unwrap();
        let (d2, read) = reopen(&root);
        assert_eq!(values(&read.ops), [1.0, 2.0, 3.0, 4.0]);
        assert!(d2.damage().is_none() && read.bad_line_count == 0);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A line that cannot be read in the middle is reported, and the lines after it are kept.
    #[test]
    fn a_bad_middle_line_is_reported_and_later_lines_are_kept() {
        let (root, mut dir) = scratch("badline");
        dir.append_ops(&[op(1.0)]).unwrap();
        let log = dir.dir.join("ops.jsonl");
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"{not json at all}\n").unwrap();
        // Bytes that are not UTF-8 inside a string: only that line is lost.
        let mut bad = br#"[{"s":"S","r":0,"c":0,"i":{"k":"value","v":{"t":"text","v":""#.to_vec();
        bad.extend([0xff, 0xfe]);
        bad.extend(br#""}}}]"#);
        bad.push(b'\n');
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(&bad).unwrap();
        dir.log_len = None;
        dir.append_ops(&[op(2.0), op(3.0)]).unwrap();
        let (mut d, read) = reopen(&root);
        assert_eq!(values(&read.ops), [1.0, 2.0, 3.0]);
        assert_eq!(read.bad_line_count, 2);
        assert_eq!(read.bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(), [2, 3]);
        let why = d.damage().unwrap().to_string();
        assert!(why.contains("line 2, 3") && why.contains("skipped") && why.contains("later edits were kept"), "{why}");
        // Appending still works, and rewriting keeps the damaged log aside.
        d.append_ops(&[op(4.0)]).unwrap();
        assert_eq!(values(&reopen(&root).1.ops), [1.0, 2.0, 3.0, 4.0]);
        d.rewrite_ops(&[op(9.0)], &[]).unwrap();
        assert!(d.damage().is_none());
        let kept: Vec<_> = std::fs::read_dir(&d.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ops.jsonl.damaged-"))
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(values(&reopen(&root).1.ops), [9.0]);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Older versions appended after a torn tail, gluing the acknowledged batch to the fragment.
    #[test]
    fn a_batch_glued_to_a_fragment_by_an_older_version_is_recovered() {
        let (root, dir) = scratch("glued");
        let whole = serde_json::to_string(&[op(1.0)]).unwrap();
        let style = serde_json::to_string(&LogLine::Style {
            style: Box::new(StyleOp { s: "S".into(), top: 0, left: 0, bottom: 1, right: 1, st: StyleSpec::default() }),
        })
        .unwrap();
        let glued = format!(
            "{whole}\n{}{}\n{}{}\n",
            &whole[..17],
            serde_json::to_string(&[op(2.0)]).unwrap(),
            &whole[..9],
            style
        );
        std::fs::write(dir.dir.join("ops.jsonl"), glued).unwrap();
        let (d, read) = reopen(&root);
        assert_eq!(values(&read.ops), [1.0, 2.0]);
        assert_eq!((read.styles.len(), read.salvaged, read.bad_line_count), (1, 2, 0));
        assert!(d.damage().is_none());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_log_that_cannot_be_read_is_an_error_not_an_empty_fork() {
        let (root, dir) = scratch("unreadable");
        // A directory where the log should be: reading it fails with something else than
        // "not found", which must not pass for "no edits".
        std::fs::create_dir_all(dir.dir.join("ops.jsonl")).unwrap();
        let err = ForkDir::new(&root, "fork-test").load().map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("ops.jsonl"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
