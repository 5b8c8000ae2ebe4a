//! Fork lifecycle: create_fork, list_forks, discard_fork, save_fork, checkpoints, and applying
//! or discarding changes staged by a preview.

use std::time::{Duration, Instant, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::discovery::iso_time;
use crate::Engine;
use crate::error::{Result, SheetsError};
use crate::forks::persist::{self, Checkpoint, now_unix};
use crate::forks::recalc::RecalcReport;
use crate::forks::{ForkStats, ForkStore};
use crate::limits::Budget;
use crate::phase::{Phase, PhaseKind, error_kind};
use crate::workspace::resolve_inside;

fn when(unix: u64) -> Option<String> {
    iso_time(Some(UNIX_EPOCH + Duration::from_secs(unix)))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateForkParams {
    /// The workbook to fork (.xlsx or .xlsm).
    pub workbook_id: String,
    /// A note to recognise the fork by.
    pub label: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CreateForkOutput {
    /// Use it wherever a tool takes a workbook_id, and in the editing tools.
    pub fork_id: String,
    pub workbook_id: String,
    pub path: String,
    pub sheets: Vec<String>,
}

pub fn create_fork(engine: &Engine, p: CreateForkParams, budget: &Budget) -> Result<CreateForkOutput> {
    if ForkStore::is_fork_id(&p.workbook_id) {
        return Err(SheetsError::invalid(
            "workbook_id",
            "that is a fork; edit it directly, or checkpoint_fork it to keep a state you can return to",
        ));
    }
    let entry = engine.workspace.resolve(&p.workbook_id)?;
    let wb = engine.workbook(&entry.id, budget)?;
    let handle = engine.forks.create(&entry, wb.clone(), p.label)?;
    let f = handle.lock();
    Ok(CreateForkOutput {
        fork_id: f.meta.id.clone(),
        workbook_id: entry.id,
        path: entry.rel_path,
        sheets: wb.sheets.iter().map(|s| s.name.clone()).collect(),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListForksParams {}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ForkInfo {
    pub fork_id: String,
    pub workbook_id: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub cells_edited: usize,
    pub cells_styled: usize,
    pub checkpoints: usize,
    /// Staged change ids.
    pub staged: Vec<String>,
    pub needs_recalc: bool,
    /// A recalculation is running (reads see the values of the last one).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recalculating: bool,
    /// The original changed on disk since the fork.
    pub source_changed: bool,
    /// Edit-log lines unreadable after a restart (skipped): what is missing, what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListForksOutput {
    pub forks: Vec<ForkInfo>,
    /// Forks on disk that could not be restored, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_restored: Vec<String>,
}

/// Every fork, from summaries kept beside each fork: listing never waits for a fork that is
/// busy (a recalculation, a save).
pub fn list_forks(engine: &Engine, _: ListForksParams, _: &Budget) -> Result<ListForksOutput> {
    let mut forks = Vec::new();
    for id in engine.forks.ids() {
        let Ok(h) = engine.forks.get(&id) else { continue };
        let f = h.summary();
        let source = engine.workspace.root().join(&f.source_path);
        let source_changed = !crate::workspace::FileIdentity::of(&source)
            .is_ok_and(|now| crate::forks::persist::SourceIdentity::from(&now) == f.source);
        forks.push(ForkInfo {
            fork_id: f.fork_id.clone(),
            workbook_id: f.workbook_id.clone(),
            path: f.source_path.clone(),
            label: f.label.clone(),
            created: when(f.created_unix),
            cells_edited: f.cells_edited,
            cells_styled: f.cells_styled,
            checkpoints: f.checkpoints,
            staged: f.staged.clone(),
            needs_recalc: f.needs_recalc,
            recalculating: h.recalculating(),
            source_changed,
            damaged: f.damaged.clone(),
        });
    }
    let not_restored = engine.forks.not_restored_forks().into_iter().map(|(_, why)| why).collect();
    Ok(ListForksOutput { forks, not_restored })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ForkParams {
    pub fork_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DiscardForkOutput {
    pub discarded: String,
}

pub fn discard_fork(engine: &Engine, p: ForkParams, _: &Budget) -> Result<DiscardForkOutput> {
    engine.forks.discard(&p.fork_id)?;
    Ok(DiscardForkOutput { discarded: p.fork_id.trim().to_string() })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SaveForkParams {
    pub fork_id: String,
    /// Relative to the workspace, e.g. "out/v2.xlsx" (the original's path needs --allow-overwrite).
    pub target_path: String,
    /// Default true.
    pub recalculate: Option<bool>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SaveForkOutput {
    pub path: String,
    pub workbook_id: Option<String>,
    pub bytes: usize,
    /// false: Excel recalculates on open.
    pub values_recalculated: bool,
    /// Cells changed and issues found by the recalculation done before saving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recalc_changed: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recalc_issues: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recalc_error: Option<String>,
    /// Zip parts written anew (every other part is copied byte for byte).
    pub parts_rewritten: Vec<String>,
    pub parts_copied: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts_dropped: Vec<String>,
    pub build_ms: f64,
    pub write_ms: f64,
}

fn check_target(engine: &Engine, source_rel: &str, target: &str) -> Result<(std::path::PathBuf, bool)> {
    let target = target.trim().replace('\\', "/");
    if target.is_empty() {
        return Err(SheetsError::invalid(
            "target_path",
            "is empty; pass a path relative to the workspace, e.g. \"out/model-v2.xlsx\"",
        ));
    }
    if let Some(c) = target.chars().find(|c| c.is_control()) {
        return Err(SheetsError::invalid(
            "target_path",
            format!("contains the control character U+{:04X}; pass a plain path, e.g. \"out/model-v2.xlsx\"", c as u32),
        ));
    }
    let ext = |p: &str| p.rsplit('.').next().map(str::to_ascii_lowercase).unwrap_or_default();
    let want = ext(source_rel);
    if ext(&target) != want {
        return Err(SheetsError::invalid(
            "target_path",
            format!("'{target}' must end in .{want} like the original (a .xlsm keeps its macros only as .xlsm)"),
        ));
    }
    let path = resolve_inside(engine.workspace.root(), &target)?;
    let parent = path.parent().filter(|p| p.is_dir()).ok_or_else(|| {
        SheetsError::invalid(
            "target_path",
            format!("the folder of '{target}' does not exist; save into an existing folder"),
        )
    })?;
    // The forks' directory (their bases, logs and checkpoints) may lie inside the workspace
    // (`.gemba/forks/` by default): a save there could overwrite a fork's own files.
    let state = engine.forks.cfg.dir.canonicalize().ok();
    if let (Some(state), Ok(parent)) = (state, parent.canonicalize())
        && parent.starts_with(&state)
    {
        return Err(SheetsError::invalid(
            "target_path",
            format!(
                "'{target}' is inside the directory where Gemba keeps its forks and their checkpoints; save elsewhere in the workspace, e.g. \"out/model-v2.xlsx\""
            ),
        ));
    }
    let original = engine.workspace.root().join(source_rel);
    let is_original = original.canonicalize().ok().zip(path.canonicalize().ok()).is_some_and(|(a, b)| a == b);
    Ok((path, is_original))
}

/// Where a save may write: the target checked against the fork's rules (a new path, a path it
/// saved before, or the original with --allow-overwrite when it is unchanged on disk).
fn save_target(engine: &Engine, f: &crate::forks::fork::Fork, target_rel: &str) -> Result<(std::path::PathBuf, bool)> {
    let (path, is_original) = check_target(engine, &f.meta.source_path, target_rel)?;
    let cfg = &engine.forks.cfg;
    if is_original {
        if !cfg.allow_overwrite {
            return Err(SheetsError::invalid(
                "target_path",
                "saving over the original needs a server started with --allow-overwrite; save to a new path instead",
            ));
        }
        if !ForkStore::source_unchanged(&f.meta, &path) {
            return Err(SheetsError::invalid(
                "target_path",
                format!(
                    "'{target_rel}' changed on disk since the fork was made; saving over it would lose those changes — save to a new path, or fork the new version"
                ),
            ));
        }
    } else if path.exists() && !f.meta.saved_paths.iter().any(|p| p == target_rel) {
        return Err(SheetsError::invalid(
            "target_path",
            format!(
                "'{target_rel}' already exists; choose a new path (a fork may only overwrite files it saved itself)"
            ),
        ));
    }
    Ok((path, is_original))
}

pub fn save_fork(engine: &Engine, p: SaveForkParams, budget: &Budget) -> Result<SaveForkOutput> {
    let handle = engine.forks.get(&p.fork_id)?;
    let target_rel = p.target_path.trim().replace('\\', "/");
    let cfg = &engine.forks.cfg;
    // Check the target before a long recalculation, and again under the lock for the write.
    let stale = {
        let f = handle.lock();
        save_target(engine, &f, &target_rel)?;
        f.is_stale()
    };
    let mut recalc = None;
    let mut recalc_error = None;
    if stale && p.recalculate.unwrap_or(true) {
        match engine.forks.recalculate(&handle, cfg.default_backend, &engine.limits, budget) {
            Ok(r) => recalc = Some(r),
            Err(e @ (SheetsError::Timeout { .. } | SheetsError::RecalcTimeout { .. } | SheetsError::Cancelled)) => {
                return Err(e);
            }
            Err(e) => recalc_error = Some(e.to_string()),
        }
    }
    let mut f = handle.lock();
    if handle.is_discarded() {
        return Err(SheetsError::invalid(
            "fork_id",
            format!("fork '{}' was discarded; nothing was saved", p.fork_id.trim()),
        ));
    }
    let (path, is_original) = save_target(engine, &f, &target_rel)?;
    // Steps: the file built (sheet loads inside it are part of the step), then written.
    budget.progress_begin(|| format!("saving {} to {target_rel}", f.meta.id), "steps", 2);
    let started = Instant::now();
    let written = (|| {
        let (bytes, parts) = f.render(true, budget)?;
        let build_ms = started.elapsed().as_secs_f64() * 1e3;
        budget.progress(1);
        budget.check()?;
        let t = Instant::now();
        persist::write_atomic(&path, &bytes, cfg.save_pause).map_err(|e| {
            SheetsError::Workspace(format!(
                "could not write '{target_rel}' ({e}); nothing was changed on disk and the fork is intact — free space or pick another path, then save again"
            ))
        })?;
        Ok((bytes, parts, build_ms, t.elapsed().as_secs_f64() * 1e3))
    })();
    // The build and the write, told to the embedder as one phase.
    let mut phase = Phase::ended(PhaseKind::Save, started);
    match &written {
        Ok((bytes, ..)) => phase.bytes = Some(bytes.len() as u64),
        Err(e) => phase.error = Some(error_kind(e)),
    }
    budget.stages().record_phase(phase);
    let (bytes, parts, build_ms, write_ms) = written?;
    budget.progress(2);
    if is_original {
        if let Ok(id) = crate::workspace::FileIdentity::of(&path) {
            f.meta.source = (&id).into();
        }
    } else if !f.meta.saved_paths.contains(&target_rel) {
        f.meta.saved_paths.push(target_rel.clone());
    }
    f.save_meta()?;
    engine.forks.stats.saved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let values_recalculated = !f.is_stale();
    drop(f);
    let workbook_id = engine.workspace.resolve(&target_rel).ok().map(|e| e.id);
    Ok(SaveForkOutput {
        path: target_rel,
        workbook_id,
        bytes: bytes.len(),
        values_recalculated,
        recalc_changed: recalc.as_ref().map(|r: &RecalcReport| r.changed),
        recalc_issues: recalc.as_ref().map(|r| r.issue_count),
        recalc_error,
        parts_rewritten: parts.parts_rewritten,
        parts_copied: parts.parts_copied,
        parts_dropped: parts.parts_dropped,
        build_ms,
        write_ms,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CheckpointForkParams {
    pub fork_id: String,
    pub name: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckpointInfo {
    pub checkpoint_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub edits: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

fn info(c: &Checkpoint) -> CheckpointInfo {
    CheckpointInfo { checkpoint_id: c.id.clone(), name: c.name.clone(), edits: c.ops, created: when(c.created_unix) }
}

pub fn checkpoint_fork(engine: &Engine, p: CheckpointForkParams, _: &Budget) -> Result<CheckpointInfo> {
    let handle = engine.forks.get(&p.fork_id)?;
    let mut f = handle.lock();
    if f.meta.checkpoints.len() >= engine.forks.cfg.max_checkpoints {
        return Err(SheetsError::invalid(
            "fork_id",
            format!(
                "the fork has {} checkpoints (the limit); restore or save before taking more",
                f.meta.checkpoints.len()
            ),
        ));
    }
    f.meta.seq += 1;
    let c = Checkpoint {
        id: format!("cp-{}", f.meta.seq),
        name: p.name,
        ops: f.op_count(),
        styles: f.style_count(),
        epoch: f.meta.epoch,
        created_unix: now_unix(),
    };
    f.meta.checkpoints.push(c.clone());
    f.save_meta()?;
    Ok(info(&c))
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListCheckpointsOutput {
    pub checkpoints: Vec<CheckpointInfo>,
}

pub fn list_checkpoints(engine: &Engine, p: ForkParams, _: &Budget) -> Result<ListCheckpointsOutput> {
    let handle = engine.forks.get(&p.fork_id)?;
    let f = handle.lock();
    Ok(ListCheckpointsOutput { checkpoints: f.meta.checkpoints.iter().map(info).collect() })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RestoreCheckpointParams {
    pub fork_id: String,
    pub checkpoint_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RestoreCheckpointOutput {
    pub restored: String,
    pub cells_edited: usize,
    /// Checkpoints taken after this one, now gone.
    pub dropped_checkpoints: Vec<String>,
    pub needs_recalc: bool,
}

pub fn restore_checkpoint(engine: &Engine, p: RestoreCheckpointParams, _: &Budget) -> Result<RestoreCheckpointOutput> {
    let handle = engine.forks.get(&p.fork_id)?;
    let mut f = handle.lock();
    let id = p.checkpoint_id.trim();
    let Some(pos) = f.meta.checkpoints.iter().position(|c| c.id == id) else {
        let ids: Vec<String> = f.meta.checkpoints.iter().map(|c| c.id.clone()).collect();
        return Err(SheetsError::invalid(
            "checkpoint_id",
            format!("no checkpoint '{id}' in this fork; checkpoints are: {}", crate::error::short_list(&ids, 20)),
        ));
    };
    let cp = f.meta.checkpoints[pos].clone();
    let dropped: Vec<String> = f.meta.checkpoints[pos + 1..].iter().map(|c| c.id.clone()).collect();
    if cp.epoch == f.meta.epoch {
        f.truncate(cp.ops, cp.styles)?;
        f.meta.checkpoints.truncate(pos + 1);
        f.save_meta()?;
    } else {
        // Taken before a structural edit: that epoch's file and log come back.
        f.meta.checkpoints.truncate(pos + 1);
        f.save_meta()?;
        drop(f);
        engine.forks.rewind(&handle, &cp, &engine.limits, &engine.cache.stats)?;
        f = handle.lock();
    }
    Ok(RestoreCheckpointOutput {
        restored: id.to_string(),
        cells_edited: f.cells_edited(),
        dropped_checkpoints: dropped,
        needs_recalc: f.is_stale(),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StagedChangeParams {
    pub fork_id: String,
    /// The change_id a preview returned.
    pub change_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StagedChangeOutput {
    pub change_id: String,
    /// Cells written (0 when discarded).
    pub cells: usize,
    pub applied: bool,
}

fn take_staged(f: &mut crate::forks::fork::Fork, change_id: &str, to_apply: bool) -> Result<persist::Staged> {
    let id = change_id.trim();
    let Some(pos) = f.meta.staged.iter().position(|s| s.id == id) else {
        let ids: Vec<String> = f.meta.staged.iter().map(|s| s.id.clone()).collect();
        return Err(SheetsError::invalid(
            "change_id",
            format!(
                "no staged change '{id}' in this fork; staged changes are: {}",
                if ids.is_empty() { "none".into() } else { crate::error::short_list(&ids, 20) }
            ),
        ));
    };
    let staged = &f.meta.staged[pos];
    if to_apply && staged.layout.is_some_and(|l| l != f.meta.layout) {
        return Err(SheetsError::invalid(
            "change_id",
            format!(
                "change '{id}' was staged before rows, columns or sheets of this fork moved (a structure_batch or a \
                 restore_checkpoint since); its cell addresses no longer name the cells its preview showed. \
                 Discard it (discard_staged_change) and preview the change again"
            ),
        ));
    }
    Ok(f.meta.staged.remove(pos))
}

pub fn apply_staged_change(engine: &Engine, p: StagedChangeParams, budget: &Budget) -> Result<StagedChangeOutput> {
    let handle = engine.forks.get(&p.fork_id)?;
    let mut f = handle.lock();
    let staged = take_staged(&mut f, &p.change_id, true)?;
    if !staged.structure.is_empty() {
        // A structural change rebases the fork: its staging entry goes first, then the edits.
        f.save_meta()?;
        drop(f);
        let n = staged.structure.len();
        if let Err(e) =
            engine.forks.restructure(&handle, &staged.structure, &engine.limits, &engine.cache.stats, budget)
        {
            let mut f = handle.lock();
            f.meta.staged.push(staged);
            f.save_meta()?;
            return Err(e);
        }
        return Ok(StagedChangeOutput { change_id: staged.id, cells: n, applied: true });
    }
    let n = staged.ops.len();
    if let Err(e) = f.apply(staged.ops.clone(), engine.forks.cfg.max_ops) {
        f.meta.staged.push(staged);
        return Err(e);
    }
    for st in &staged.styles {
        f.apply_style(st.clone())?;
    }
    f.save_meta()?;
    count_edits(&engine.forks.stats, n);
    Ok(StagedChangeOutput { change_id: staged.id, cells: n, applied: true })
}

pub fn discard_staged_change(engine: &Engine, p: StagedChangeParams, _: &Budget) -> Result<StagedChangeOutput> {
    let handle = engine.forks.get(&p.fork_id)?;
    let mut f = handle.lock();
    let staged = take_staged(&mut f, &p.change_id, false)?;
    f.save_meta()?;
    Ok(StagedChangeOutput { change_id: staged.id, cells: 0, applied: false })
}

pub(crate) fn count_edits(stats: &ForkStats, n: usize) {
    stats.cells_edited.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}
