//! One recalculation of a fork, run without the fork's lock: [`Fork::begin_recalc`] takes a
//! snapshot (and the in-process engine's model) in O(sheets) under the lock, [`RecalcJob::run`]
//! evaluates it with no lock held, and [`Fork::finish_recalc`] commits the values only if the
//! fork did not change meanwhile. Reads meanwhile see the last committed values.
//!
//! When the in-process engine refuses the workbook (it cannot import it, or cannot calculate
//! it exactly), the job falls back to LibreOffice when it is installed and says so in the
//! report (`backend`, `fallback_reason`).
//!
//! [`Fork::begin_recalc`]: super::fork::Fork::begin_recalc
//! [`Fork::finish_recalc`]: super::fork::Fork::finish_recalc

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cells::{Input, Scalar, a1};
use super::engine::{EngineSlot, IronSession, Refusal};
use super::fork::{CellMap, Layer, Snapshot, file_scalar};
use super::libreoffice::{self, LibreOffice};
use super::persist::Op;
use super::recalc::{Backend, CellIssue, Computed, RecalcReport};
use crate::address::{CellRef, quote_sheet};
use crate::error::{Result, SheetsError};
use crate::limits::{Budget, Limits};
use crate::sheet::Sheet;

/// How often a caller waiting on the in-process engine looks at its budget (a discard or a
/// client cancel is seen within this).
const POLL: Duration = Duration::from_millis(25);

/// A recalculation taken out of a fork (see the module docs).
pub struct RecalcJob {
    pub(super) snap: Snapshot,
    /// The fork's version and lineage when the job was taken.
    pub(super) version: u64,
    pub(super) lineage: u64,
    /// Ops in the fork's log when the job was taken.
    pub(super) ops_seen: usize,
    /// The in-process engine's model (None: load it from the base file).
    pub(super) session: Option<IronSession>,
    /// Ops the model has not seen, with their sheet indices.
    pub(super) pending: Vec<(usize, Op)>,
}

/// A finished recalculation, to commit with `Fork::finish_recalc`.
pub struct RecalcDone {
    pub(super) version: u64,
    pub(super) lineage: u64,
    pub(super) ops_seen: usize,
    /// The in-process engine's model after the run, to keep for the next one.
    pub(super) session: Option<IronSession>,
    pub(super) computed: Layer<Scalar>,
    pub(super) report: RecalcReport,
}

/// Why an in-process run did not produce values.
enum InProcessError {
    /// The engine will not take this workbook: another backend may.
    Refused(Refusal),
    Failed(SheetsError),
}

impl From<SheetsError> for InProcessError {
    fn from(e: SheetsError) -> Self {
        Self::Failed(e)
    }
}

struct Values {
    results: Vec<Computed>,
    load_ms: f64,
    evaluate_ms: f64,
    session: Option<IronSession>,
}

impl RecalcJob {
    /// The fork the job was taken from.
    pub fn snap_id(&self) -> &str {
        &self.snap.id
    }

    /// Evaluate the snapshot with `backend` (no lock held). A refusal of the in-process
    /// engine falls back to LibreOffice when it is installed.
    pub fn run(mut self, backend: Backend, lo: &LibreOffice, limits: &Limits, budget: &Budget) -> Result<RecalcDone> {
        let id = self.snap.id.clone();
        let mut fallback_reason = None;
        let (values, used) = match backend {
            Backend::Libreoffice => (self.run_libreoffice(lo, limits, budget)?, Backend::Libreoffice),
            Backend::InProcess => match self.run_in_process(budget) {
                Ok(v) => (v, Backend::InProcess),
                Err(InProcessError::Failed(e)) => return Err(e),
                Err(InProcessError::Refused(why)) => {
                    if !libreoffice::available(lo.program()) {
                        return Err(why.into_error(&id));
                    }
                    tracing::info!(fork = %id, "in-process engine refused ({}); recalculating with LibreOffice", why.0);
                    let v = self.run_libreoffice(lo, limits, budget).map_err(|e| match e {
                        e @ (SheetsError::Timeout { .. } | SheetsError::Cancelled) => e,
                        e => SheetsError::Unsupported {
                            workbook_id: id.clone(),
                            reason: format!(
                                "the in-process engine cannot calculate this workbook ({}), and the LibreOffice fallback failed: {e}",
                                why.0
                            ),
                        },
                    })?;
                    fallback_reason = Some(why.0);
                    (v, Backend::Libreoffice)
                }
            },
        };
        let (computed, mut report) =
            absorb(&self.snap, values.results, used, values.load_ms, values.evaluate_ms, budget)?;
        report.fallback_reason = fallback_reason;
        Ok(RecalcDone {
            version: self.version,
            lineage: self.lineage,
            ops_seen: self.ops_seen,
            session: values.session,
            computed,
            report,
        })
    }

    fn run_in_process(&mut self, budget: &Budget) -> std::result::Result<Values, InProcessError> {
        let snap = &self.snap;
        let names: Vec<String> = snap.base.sheets.iter().map(|s| s.name.clone()).collect();
        let session = self.session.take();
        let fresh = session.is_none();
        let bytes = if fresh { Some(snap.base.file_bytes_from_copy(&snap.base_copy)?) } else { None };
        let date1904 = snap.base.date1904;
        let pending = std::mem::take(&mut self.pending);
        let id = snap.id.clone();
        budget.check()?;
        // Load and evaluate on a thread of its own: the engine cannot be interrupted (a load
        // can take minutes on some files), so a caller past its budget, cancelled, or whose
        // fork was discarded returns at once and the thread's work is dropped when it ends.
        let guard = EngineSlot::take(&id, &snap.workbook_id)?;
        let watch = guard.watch();
        type Outcome =
            std::result::Result<(IronSession, std::result::Result<Vec<Computed>, String>, Duration, Duration), Refusal>;
        let (tx, rx) = std::sync::mpsc::channel::<Outcome>();
        std::thread::Builder::new()
            .name("gemba-recalc".into())
            .spawn(move || {
                let _slot = guard;
                let t = Instant::now();
                let loaded = match (session, bytes) {
                    (Some(s), _) => Ok(s),
                    (None, Some(b)) => IronSession::load(&b, &names, date1904),
                    (None, None) => Err(Refusal("no workbook to load".into())),
                };
                let mut session = match loaded {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let load = t.elapsed();
                for (i, op) in &pending {
                    match session.set(*i, op.r, op.c, &op.i) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(fork = %id, "engine refused {}!{}: {e}", op.s, a1(CellRef::new(op.r, op.c)));
                        }
                        Err(refusal) => {
                            let _ = tx.send(Err(refusal));
                            return;
                        }
                    }
                }
                let t = Instant::now();
                let r = session.evaluate();
                let _ = tx.send(Ok((session, r, load, t.elapsed())));
            })
            .map_err(|e| SheetsError::Internal(format!("cannot start the recalculation thread: {e}")))?;
        let outcome = loop {
            match rx.recv_timeout(POLL) {
                Ok(o) => break o,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = budget.check() {
                        // The thread runs on: its workbook's next runs wait for it.
                        watch.abandon();
                        return Err(match e {
                            SheetsError::Timeout { budget } => SheetsError::RecalcTimeout { budget },
                            e => e,
                        }
                        .into());
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(SheetsError::Internal("the recalculation thread ended without a result".into()).into());
                }
            }
        };
        match outcome {
            Ok((session, Ok(results), load, took)) => Ok(Values {
                results,
                load_ms: if fresh { load.as_secs_f64() * 1e3 } else { 0.0 },
                evaluate_ms: took.as_secs_f64() * 1e3,
                session: Some(session),
            }),
            Ok((_, Err(panic), _, _)) => {
                Err(InProcessError::Refused(Refusal(format!("it failed while evaluating: {panic}"))))
            }
            Err(refusal) => Err(InProcessError::Refused(refusal)),
        }
    }

    fn run_libreoffice(&self, lo: &LibreOffice, limits: &Limits, budget: &Budget) -> Result<Values> {
        let snap = &self.snap;
        let t = Instant::now();
        let (input, _) = snap.render(false, budget)?;
        let out = lo.recalculate(&snap.id, &input, budget)?;
        let took = t.elapsed().as_secs_f64() * 1e3;
        let opened = crate::load::open(&snap.id, out, limits)?;
        let date1904 = opened.date1904;
        let bytes = opened.bytes.clone();
        let mut book = opened.book;
        let mut results = Vec::new();
        for (i, meta) in snap.base.sheets.iter().enumerate() {
            if meta.kind != "worksheet" {
                continue;
            }
            // The formula cells of this fork's sheet: the original's, less those overwritten by
            // values, plus the edited formulas.
            let base = snap.base.sheet_at(i, budget)?;
            let edits = &snap.edits[i];
            let mut cells: Vec<(u32, u32)> = base
                .formulas()
                .iter()
                .map(|f| (f.at.row, f.at.col))
                .filter(|k| !matches!(edits.get(k), Some(Input::Value { .. })))
                .collect();
            cells.extend(edits.iter().filter(|(_, v)| v.formula().is_some()).map(|(k, _)| *k));
            if cells.is_empty() {
                continue;
            }
            let recalculated =
                crate::load::load_sheet(&snap.id, &mut book, &bytes, &meta.name, date1904, limits, budget)?;
            for (r, c) in cells {
                let v = file_scalar(&recalculated.get(r, c), &recalculated.strings, date1904);
                results.push(Computed { sheet: i, row: r, col: c, value: v, issue: None });
            }
        }
        Ok(Values { results, load_ms: 0.0, evaluate_ms: took, session: None })
    }
}

/// The values a run produced, laid against the snapshot: the recalculated values to keep
/// (those differing from the file's, and every edited formula's) and the report.
fn absorb(
    snap: &Snapshot,
    results: Vec<Computed>,
    backend: Backend,
    load_ms: f64,
    evaluate_ms: f64,
    budget: &Budget,
) -> Result<(Layer<Scalar>, RecalcReport)> {
    let n = snap.base.sheets.len();
    let date1904 = snap.base.date1904;
    let mut computed: Vec<CellMap<Scalar>> = vec![CellMap::new(); n];
    let mut report = RecalcReport {
        backend: backend.as_str().into(),
        formulas: results.len(),
        load_ms,
        evaluate_ms,
        ..Default::default()
    };
    let mut sheets: Vec<Option<Arc<Sheet>>> = vec![None; n];
    for (k, c) in results.into_iter().enumerate() {
        if k % 4096 == 0 {
            budget.check()?;
        }
        let key = (c.row, c.col);
        let edited = snap.edits[c.sheet].get(&key);
        if matches!(edited, Some(Input::Value { .. })) {
            continue;
        }
        let base = match &sheets[c.sheet] {
            Some(s) => s.clone(),
            None => {
                let s = snap.base.sheet_at(c.sheet, budget)?;
                sheets[c.sheet] = Some(s.clone());
                s
            }
        };
        let cached = file_scalar(&base.get(c.row, c.col), &base.strings, date1904);
        if let Some(issue) = c.issue {
            // Keep what the file says rather than write an engine's guess.
            report.issue_count += 1;
            if report.issues.len() < 50 {
                let cell =
                    format!("{}!{}", quote_sheet(&snap.base.sheets[c.sheet].name), a1(CellRef::new(c.row, c.col)));
                let kept = if edited.is_some() { serde_json::Value::Null } else { cached.to_json() };
                report.issues.push(CellIssue::new(cell, issue, kept));
            }
            continue;
        }
        if edited.is_some() {
            if !c.value.same_as(&cached) || base.formula_at(CellRef::new(c.row, c.col)).is_none() {
                report.changed += 1;
            }
            computed[c.sheet].insert(key, c.value);
        } else if !c.value.same_as(&cached) {
            report.changed += 1;
            computed[c.sheet].insert(key, c.value);
        }
    }
    Ok((computed.into_iter().map(Arc::new).collect(), report))
}
