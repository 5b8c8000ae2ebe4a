//! The workspace: the one directory Gemba serves. Workbooks get short ids derived from their
//! relative path (stable across restarts, no content hashing); every path is checked to resolve
//! inside the root, symlinks included.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::error::{Result, SheetsError, closest};

/// Extensions Gemba lists (the format itself is detected from content when loading).
pub const EXTENSIONS: [&str; 5] = ["xlsx", "xlsm", "xls", "xlsb", "ods"];
/// Most files one listing holds; deeper or larger trees are cut off with a warning.
const MAX_FILES: usize = 20_000;
const MAX_DEPTH: usize = 12;
/// How long a directory scan is reused before the next call rescans.
const LISTING_TTL: Duration = Duration::from_millis(1000);
/// A listing this close to its end is refreshed ahead (`listing_ends_soon`).
const LISTING_MARGIN: Duration = Duration::from_millis(100);
/// An id that is not in the listing rescans the workspace at most this often: agents that guess
/// ids must not turn every miss into a scan of up to 20,000 files.
const MISS_RESCAN_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    pub len: u64,
    pub modified: Option<SystemTime>,
    pub inode: u64,
}

impl FileIdentity {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(Self { len: m.len(), modified: m.modified().ok(), inode })
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// Path relative to the workspace root, with forward slashes.
    pub rel_path: String,
    pub abs_path: PathBuf,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// One scan's result, and when that scan began.
#[derive(Clone)]
struct Listing {
    started: Instant,
    /// The same moment by the wall clock, to compare with files' change times.
    started_wall: SystemTime,
    entries: Arc<Vec<Entry>>,
}

/// The served directory. Listing is cheap and never waits behind a scan when a listing exists:
/// scans run outside the listing lock (one at a time, shared by everyone who needs one) and
/// the new listing is swapped in when done.
pub struct Workspace {
    root: PathBuf,
    /// The current listing; held only to read or swap it.
    listing: Mutex<Option<Listing>>,
    /// Held for the length of a scan: one scan at a time, and a caller who needs a scan that is
    /// already running waits for it and shares its result.
    scanning: Mutex<()>,
    scans: std::sync::atomic::AtomicU64,
}

impl Workspace {
    pub fn open(root: &Path) -> Result<Self> {
        let root = root.canonicalize().map_err(|e| {
            SheetsError::Workspace(format!(
                "workspace '{}' cannot be opened ({e}); pass an existing directory with --workspace",
                root.display()
            ))
        })?;
        if !root.is_dir() {
            return Err(SheetsError::Workspace(format!("workspace '{}' is not a directory", root.display())));
        }
        Ok(Self { root, listing: Mutex::new(None), scanning: Mutex::new(()), scans: Default::default() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The workbooks in the workspace, sorted by path; rescanned at most once a second. When the
    /// listing is older than that and someone else is already rescanning, the current listing is
    /// returned at once rather than waiting.
    pub fn list(&self) -> Arc<Vec<Entry>> {
        if let Some(l) = self.current()
            && l.started.elapsed() < LISTING_TTL
        {
            return l.entries;
        }
        let gate = match self.scanning.try_lock() {
            Some(g) => g,
            None => match self.current() {
                Some(l) => return l.entries,
                // Nothing to show yet: wait for the first scan.
                None => self.scanning.lock(),
            },
        };
        // Someone may have finished a scan while this call got the gate.
        if let Some(l) = self.current()
            && l.started.elapsed() < LISTING_TTL
        {
            return l.entries;
        }
        let l = self.scan_and_swap();
        drop(gate);
        l
    }

    /// The id of the workbook `query` names (its id or path, as `resolve` matches them first)
    /// in the current listing, if that listing is still fresh: `None` where resolving it
    /// would mean a scan. A quick look, no file system access.
    pub fn listed_id(&self, query: &str) -> Option<String> {
        let l = self.current()?;
        if l.started.elapsed() >= LISTING_TTL {
            return None;
        }
        l.entries.iter().find(|e| e.id == query || e.rel_path == query).map(|e| e.id.clone())
    }

    /// How many workbooks the current listing holds, if it is still fresh (listing it needs
    /// no scan).
    pub fn fresh_listing_len(&self) -> Option<usize> {
        let l = self.current()?;
        (l.started.elapsed() < LISTING_TTL).then(|| l.entries.len())
    }

    /// Whether the current listing is gone or ends within a short margin: time to `refresh` it
    /// ahead, off the request path, so that calls keep finding a fresh one.
    pub fn listing_ends_soon(&self) -> bool {
        self.current().is_none_or(|l| l.started.elapsed() + LISTING_MARGIN >= LISTING_TTL)
    }

    /// Scan now, unless a scan is running already (it will do). Blocks for the scan.
    pub fn refresh(&self) {
        if let Some(gate) = self.scanning.try_lock() {
            self.scan_and_swap();
            drop(gate);
        }
    }

    /// How many times the workspace was scanned (for tests and metrics).
    pub fn scan_count(&self) -> u64 {
        self.scans.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn current(&self) -> Option<Listing> {
        self.listing.lock().clone()
    }

    /// Scan (the caller holds the scan gate, not the listing lock) and swap the result in.
    fn scan_and_swap(&self) -> Arc<Vec<Entry>> {
        let (started, started_wall) = (Instant::now(), SystemTime::now());
        let entries = Arc::new(self.scan());
        self.scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut guard = self.listing.lock();
        // Never replace a newer listing with an older one.
        if guard.as_ref().is_none_or(|l| l.started <= started) {
            *guard = Some(Listing { started, started_wall, entries: entries.clone() });
        }
        entries
    }

    /// The listing after a lookup missed at `missed`: a scan that began after the miss (run
    /// now, or by a concurrent caller whose result this shares), or — when the last scan began
    /// under [`MISS_RESCAN_INTERVAL`] ago and `query` is not a file changed since it began —
    /// the current listing.
    fn relist_after_miss(&self, missed: Instant, query: &str) -> Arc<Vec<Entry>> {
        let _gate = self.scanning.lock();
        if let Some(l) = self.current()
            && (l.started >= missed
                || (l.started.elapsed() < MISS_RESCAN_INTERVAL && !self.changed_since(query, l.started_wall)))
        {
            return l.entries;
        }
        self.scan_and_swap()
    }

    fn scan(&self) -> Vec<Entry> {
        let mut found: Vec<(String, PathBuf, std::fs::Metadata)> = Vec::new();
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || name.starts_with("~$") {
                    continue;
                }
                let path = e.path();
                let Ok(ft) = e.file_type() else { continue };
                let (is_dir, meta) = if ft.is_symlink() {
                    // Follow a symlink only when its target stays inside the root.
                    match path.canonicalize() {
                        Ok(t) if t.starts_with(&self.root) => match std::fs::metadata(&t) {
                            Ok(m) => (m.is_dir(), m),
                            Err(_) => continue,
                        },
                        _ => continue,
                    }
                } else {
                    match e.metadata() {
                        Ok(m) => (ft.is_dir(), m),
                        Err(_) => continue,
                    }
                };
                if is_dir {
                    if depth < MAX_DEPTH && !ft.is_symlink() {
                        stack.push((path, depth + 1));
                    }
                    continue;
                }
                let ext = path.extension().map(|x| x.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
                if !EXTENSIONS.contains(&ext.as_str()) {
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let rel = rel.to_string_lossy().replace('\\', "/");
                found.push((rel, path, meta));
                if found.len() >= MAX_FILES {
                    tracing::warn!("workspace holds more than {MAX_FILES} workbooks; listing cut off");
                    break;
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let ids = assign_ids(found.iter().map(|f| f.0.as_str()));
        found
            .into_iter()
            .zip(ids)
            .map(|((rel, abs, meta), id)| Entry {
                id,
                rel_path: rel,
                abs_path: abs,
                size: meta.len(),
                modified: meta.modified().ok(),
            })
            .collect()
    }

    /// Find a workbook by id (or by its exact relative path). A miss rescans, at most every
    /// couple of seconds for unknown ids; a path that exists on disk (a file just saved) always
    /// gets a scan that sees it. Concurrent misses share one scan.
    pub fn resolve(&self, query: &str) -> Result<Entry> {
        let q = query.trim();
        let find = |list: &[Entry]| {
            list.iter()
                .find(|e| e.id == q || e.rel_path == q)
                .or_else(|| list.iter().find(|e| e.id.eq_ignore_ascii_case(q)))
                .cloned()
        };
        if let Some(e) = find(&self.list()) {
            return self.checked(e);
        }
        let missed = Instant::now();
        let list = self.relist_after_miss(missed, q);
        if let Some(e) = find(&list) {
            return self.checked(e);
        }
        let ids: Vec<&str> = list.iter().map(|e| e.id.as_str()).collect();
        let near = closest(q, ids.iter().copied(), 1);
        let suggestion = match near.first() {
            Some(id) => {
                let path = list.iter().find(|e| e.id == *id).map(|e| e.rel_path.as_str()).unwrap_or("");
                format!(" — did you mean '{id}' ({path})?")
            }
            None => String::new(),
        };
        Err(SheetsError::UnknownWorkbook { query: q.to_string(), suggestion })
    }

    /// Whether `q` names a workbook file inside the root that changed (was written or renamed
    /// into place) after `since`, give or take the file system's clock granularity: a file a
    /// scan begun at `since` may have missed. Files that merely exist (hidden or too deep for
    /// the listing) do not count, so asking for them again and again does not rescan.
    fn changed_since(&self, q: &str, since: SystemTime) -> bool {
        let ext = Path::new(q).extension().map(|x| x.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        if !EXTENSIONS.contains(&ext.as_str()) {
            return false;
        }
        let Some(meta) = resolve_inside(&self.root, q).ok().and_then(|p| std::fs::metadata(p).ok()) else {
            return false;
        };
        // A rename sets the change time (ctime), not the modification time.
        #[cfg(unix)]
        let changed = {
            use std::os::unix::fs::MetadataExt;
            let secs = u64::try_from(meta.ctime()).unwrap_or(0);
            let nanos = u32::try_from(meta.ctime_nsec()).unwrap_or(0);
            Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
        };
        #[cfg(not(unix))]
        let changed = meta.modified().ok();
        let slack = Duration::from_secs(1);
        meta.is_file() && changed.is_some_and(|t| t + slack >= since)
    }

    /// Re-check at use time that the path still resolves inside the root.
    fn checked(&self, e: Entry) -> Result<Entry> {
        match e.abs_path.canonicalize() {
            Ok(p) if p.starts_with(&self.root) => Ok(Entry { abs_path: p, ..e }),
            Ok(_) => {
                Err(SheetsError::Workspace(format!("'{}' resolves outside the workspace and is refused", e.rel_path)))
            }
            Err(err) => Err(SheetsError::UnknownWorkbook {
                query: e.id.clone(),
                suggestion: format!(" ('{}' is gone: {err})", e.rel_path),
            }),
        }
    }
}

/// Resolve a workspace-relative path for writing or reading, refusing anything outside the root.
pub fn resolve_inside(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(SheetsError::invalid(
            "path",
            format!("'{rel}' must be relative to the workspace and must not contain '..'"),
        ));
    }
    let joined = root.join(p);
    // The deepest existing ancestor must canonicalize inside the root (symlinks included).
    let mut probe = joined.clone();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let canon = probe.canonicalize().map_err(|e| SheetsError::invalid("path", format!("'{rel}': {e}")))?;
    if !canon.starts_with(root) {
        return Err(SheetsError::invalid(
            "path",
            format!("'{rel}' resolves outside the workspace (through a symlink) and is refused"),
        ));
    }
    Ok(joined)
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn slug(rel: &str) -> String {
    let stem = Path::new(rel).file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let mut out = String::new();
    for c in stem.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 24 {
            break;
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "book".into() } else { out }
}

/// Ids: `<slug>-<4 hex of the path hash>`, widened to 8 hex where two paths would collide.
pub fn assign_ids<'a>(paths: impl Iterator<Item = &'a str>) -> Vec<String> {
    let paths: Vec<&str> = paths.collect();
    let short: Vec<String> = paths.iter().map(|p| format!("{}-{:04x}", slug(p), fnv1a(p) & 0xffff)).collect();
    let mut counts = std::collections::HashMap::new();
    for s in &short {
        *counts.entry(s.as_str()).or_insert(0) += 1;
    }
    paths
        .iter()
        .zip(&short)
        .map(
            |(p, s)| {
                if counts[s.as_str()] > 1 { format!("{}-{:08x}", slug(p), fnv1a(p) & 0xffff_ffff) } else { s.clone() }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_stable_and_distinct() {
        let ids = assign_ids(["sales.xlsx", "q1/Sales Report 2024.xlsx"].into_iter());
        assert!(ids[0].starts_with("sales-") && ids[0].len() == 10, "{}", ids[0]);
        assert!(ids[1].starts_with("sales-report-2024-"));
        assert_eq!(ids, assign_ids(["sales.xlsx", "q1/Sales Report 2024.xlsx"].into_iter()));
    }

    #[test]
    fn resolve_inside_refuses_escapes() {
        let dir = std::env::temp_dir().join(format!("gemba-ws-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.canonicalize().unwrap();
        assert!(resolve_inside(&root, "out/new.xlsx").is_ok());
        assert!(resolve_inside(&root, "../x.xlsx").is_err());
        assert!(resolve_inside(&root, "/etc/passwd").is_err());
        #[cfg(unix)]
        {
            let link = root.join("escape");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("/tmp", &link).unwrap();
            assert!(resolve_inside(&root, "escape/x.xlsx").is_err());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
