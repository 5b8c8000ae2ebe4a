//! The in-process recalculation engine: IronCalc. A fork keeps one loaded model; edits since
//! the last recalculation are applied to it cell by cell, then the whole workbook is evaluated.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ironcalc_base::Model;
use ironcalc_base::expressions::token::Error as IcError;
use ironcalc_base::types::{Cell, FormulaValue};

use super::cells::{Input, Scalar};
use super::recalc::{Computed, Issue};
use crate::error::{Result, SheetsError};

/// In-process recalculations running now, including ones whose caller gave up at its deadline
/// (the engine cannot be interrupted). Bounded, so runaway evaluations cannot pile up.
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const MAX_RUNNING: usize = 4;

/// Workbooks (by the id of the original a fork was made from) with a run whose caller gave up,
/// and how many: another run of the same workbook would only take a second slot and run past
/// its deadline too, so it is refused until they end. One slow workbook cannot take every slot.
static ABANDONED: std::sync::Mutex<Vec<(String, usize, std::time::Instant)>> = std::sync::Mutex::new(Vec::new());

fn abandoned() -> std::sync::MutexGuard<'static, Vec<(String, usize, std::time::Instant)>> {
    ABANDONED.lock().unwrap_or_else(|p| p.into_inner())
}

/// A place among the running in-process recalculations, given back when dropped (by the
/// thread that runs the engine).
pub struct EngineSlot {
    workbook: String,
    state: std::sync::Arc<SlotState>,
}

/// Whether the run ended and whether its caller gave up, both changed only under `ABANDONED`'s
/// lock, so a run that ends as its caller gives up is counted exactly once or not at all.
#[derive(Default)]
pub struct SlotState {
    ended: std::sync::atomic::AtomicBool,
    abandoned: std::sync::atomic::AtomicBool,
}

/// The caller's side of a slot: lets it give the run up.
pub struct SlotWatch {
    workbook: String,
    state: std::sync::Arc<SlotState>,
}

impl SlotWatch {
    /// The caller gave up on this run (deadline, cancel, discard): it runs on, and its
    /// workbook's next runs are refused until it ends.
    pub fn abandon(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut list = abandoned();
        if self.state.ended.load(Relaxed) || self.state.abandoned.swap(true, Relaxed) {
            return;
        }
        match list.iter_mut().find(|(w, _, _)| *w == self.workbook) {
            Some(e) => e.1 += 1,
            None => list.push((self.workbook.clone(), 1, std::time::Instant::now())),
        }
    }
}

impl EngineSlot {
    /// `id` names the fork in errors; `workbook` is the original it was made from.
    pub fn take(id: &str, workbook: &str) -> Result<Self> {
        use std::sync::atomic::Ordering;
        if let Some((_, n, since)) = abandoned().iter().find(|(w, _, _)| w == workbook) {
            return Err(SheetsError::Unsupported {
                workbook_id: id.to_string(),
                reason: format!(
                    "{} in-process recalculation{} of this workbook ran past {} deadline and {} still running ({} s so far; the engine cannot be stopped); use backend=\"libreoffice\", or try again when {} ended",
                    n,
                    if *n == 1 { "" } else { "s" },
                    if *n == 1 { "its" } else { "their" },
                    if *n == 1 { "is" } else { "are" },
                    since.elapsed().as_secs(),
                    if *n == 1 { "it has" } else { "they have" },
                ),
            });
        }
        let n = RUNNING.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_RUNNING {
            RUNNING.fetch_sub(1, Ordering::AcqRel);
            return Err(SheetsError::Unsupported {
                workbook_id: id.to_string(),
                reason: format!(
                    "{n} in-process recalculations are still running (some past their deadline); try again later or use backend=\"libreoffice\""
                ),
            });
        }
        Ok(EngineSlot { workbook: workbook.to_string(), state: Default::default() })
    }

    pub fn watch(&self) -> SlotWatch {
        SlotWatch { workbook: self.workbook.clone(), state: self.state.clone() }
    }

    pub fn running() -> usize {
        RUNNING.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for EngineSlot {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        let mut list = abandoned();
        self.state.ended.store(true, Relaxed);
        if self.state.abandoned.load(Relaxed)
            && let Some(i) = list.iter().position(|(w, _, _)| *w == self.workbook)
        {
            list[i].1 -= 1;
            if list[i].1 == 0 {
                list.swap_remove(i);
            }
        }
    }
}

pub struct IronSession {
    model: Model<'static>,
    /// Our sheet index → the model's sheet index.
    sheet_ix: Vec<Option<u32>>,
    /// The workbook counts dates from 1904: formulas are rewritten (see `date1904`).
    date1904: bool,
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Why the engine will not calculate a workbook (the caller may use another backend).
#[derive(Debug, Clone)]
pub struct Refusal(pub String);

impl Refusal {
    /// The refusal as the error an agent sees when no other backend can take over.
    pub fn into_error(self, id: &str) -> SheetsError {
        SheetsError::Unsupported {
            workbook_id: id.to_string(),
            reason: format!(
                "the in-process engine cannot calculate this workbook ({}); use recalculate with backend=\"libreoffice\" (LibreOffice must be installed)",
                self.0
            ),
        }
    }
}

/// Replace `s` with its `_xHHHH_`-decoded text when that differs (the importer keeps the
/// file's escapes; the engine must see the characters).
fn decode_in_place(s: &mut String) {
    if let std::borrow::Cow::Owned(d) = super::xstring::unescape(s) {
        *s = d;
    }
}

/// The formula rewritten for the 1900 system when the workbook counts from 1904.
fn shim_in_place(f: &mut String, date1904: bool) -> std::result::Result<(), Refusal> {
    if date1904 && let std::borrow::Cow::Owned(s) = super::date1904::shim(f).map_err(Refusal)? {
        *f = s;
    }
    Ok(())
}

/// Make an imported workbook what the engine should evaluate: OOXML string escapes decoded,
/// and in a 1904 workbook every formula rewritten for the 1900 system.
fn prepare(wb: &mut ironcalc_base::types::Workbook, date1904: bool) -> std::result::Result<(), Refusal> {
    wb.shared_strings.iter_mut().for_each(decode_in_place);
    for ws in &mut wb.worksheets {
        for f in &mut ws.shared_formulas {
            decode_in_place(f);
            shim_in_place(f, date1904)?;
        }
    }
    for n in &mut wb.defined_names {
        decode_in_place(&mut n.formula);
        shim_in_place(&mut n.formula, date1904)?;
    }
    Ok(())
}

impl IronSession {
    /// Load the workbook image into a model. `sheet_names` are our sheets, in order.
    pub fn load(bytes: &[u8], sheet_names: &[String], date1904: bool) -> std::result::Result<Self, Refusal> {
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            let mut wb = ironcalc::import::load_from_xlsx_bytes(bytes, "fork", "en", "UTC")
                .map_err(|e| Refusal(format!("it cannot import the file: {e}")))?;
            prepare(&mut wb, date1904)?;
            Model::from_workbook(wb, "en").map_err(|e| Refusal(format!("it cannot build its model: {e}")))
        }));
        let model = match loaded {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(e),
            Err(p) => return Err(Refusal(format!("it failed while loading: {}", panic_text(p)))),
        };
        let sheet_ix = sheet_names
            .iter()
            .map(|n| model.workbook.worksheets.iter().position(|w| &w.name == n).map(|i| i as u32))
            .collect();
        Ok(Self { model, sheet_ix, date1904 })
    }

    /// Write one input into the model. `Err(Refusal)` when the engine cannot calculate the
    /// input exactly (a formula the 1904 rewrite cannot take); `Ok(Err(_))` when the engine
    /// rejects the input itself (the cell then keeps what the model had).
    pub fn set(
        &mut self,
        sheet: usize,
        row: u32,
        col: u32,
        input: &Input,
    ) -> std::result::Result<std::result::Result<(), String>, Refusal> {
        let Some(Some(s)) = self.sheet_ix.get(sheet).copied() else {
            return Ok(Err(format!("sheet {sheet} is not in the engine's model")));
        };
        let (r, c) = (row as i32 + 1, col as i32 + 1);
        let m = &mut self.model;
        Ok(match input {
            Input::Formula { f } => {
                let mut f = f.clone();
                shim_in_place(&mut f, self.date1904)?;
                m.update_cell_with_formula(s, r, c, format!("={f}"))
            }
            Input::Value { v } => match v {
                Scalar::Empty => m.set_user_input(s, r, c, String::new()),
                Scalar::Number(n) => m.update_cell_with_number(s, r, c, *n),
                Scalar::Bool(b) => m.update_cell_with_bool(s, r, c, *b),
                Scalar::Text(t) => m.update_cell_with_text(s, r, c, t),
                Scalar::Error(e) => m.set_user_input(s, r, c, e.clone()),
            },
        })
    }

    /// Evaluate the whole workbook and return every formula cell's value, by our sheet index.
    pub fn evaluate(&mut self) -> std::result::Result<Vec<Computed>, String> {
        catch_unwind(AssertUnwindSafe(|| self.model.evaluate())).map_err(panic_text)?;
        let mut out = Vec::new();
        for (ours, theirs) in self.sheet_ix.iter().enumerate() {
            let Some(ws) = theirs.and_then(|i| self.model.workbook.worksheets.get(i as usize)) else { continue };
            for (row, col, cell) in ws.sheet_data.cells() {
                let v = match &*cell {
                    Cell::CellFormula { v, .. } | Cell::ArrayFormula { v, .. } => v,
                    _ => continue,
                };
                if row < 1 || col < 1 {
                    continue;
                }
                let (value, issue) = convert(v);
                out.push(Computed { sheet: ours, row: row as u32 - 1, col: col as u32 - 1, value, issue });
            }
        }
        Ok(out)
    }
}

fn convert(v: &FormulaValue) -> (Scalar, Option<Issue>) {
    match v {
        FormulaValue::Number(n) => (Scalar::Number(*n), None),
        FormulaValue::Text(s) => (Scalar::Text(s.clone()), None),
        FormulaValue::Boolean(b) => (Scalar::Bool(*b), None),
        FormulaValue::Unevaluated => {
            (Scalar::Error("#ERROR!".into()), Some(Issue::Unsupported { detail: "left unevaluated".into() }))
        }
        FormulaValue::Error { ei, d } => {
            let text = ei.to_string();
            let issue = match ei {
                IcError::CIRC => Some(Issue::Cycle),
                IcError::NIMPL => Some(Issue::Unsupported { detail: d.m.clone() }),
                IcError::ERROR | IcError::CALC => Some(Issue::Unsupported { detail: d.m.clone() }),
                IcError::NAME if d.m.to_lowercase().contains("function") => {
                    Some(Issue::Unsupported { detail: d.m.clone() })
                }
                _ => None,
            };
            (Scalar::Error(text), issue)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EngineSlot;

    #[test]
    fn a_run_given_up_on_holds_back_its_workbook_only_until_it_ends() {
        let slot = EngineSlot::take("fork-1", "wb-slow").unwrap();
        let watch = slot.watch();
        // Running, not given up: another fork of the same workbook may run beside it.
        drop(EngineSlot::take("fork-2", "wb-slow").unwrap());
        watch.abandon();
        watch.abandon();
        let err = EngineSlot::take("fork-2", "wb-slow").err().unwrap().to_string();
        assert!(err.contains("1 in-process recalculation of this workbook ran past its deadline"), "{err}");
        assert!(err.contains("libreoffice"), "{err}");
        drop(EngineSlot::take("fork-3", "wb-other").unwrap());
        drop(slot);
        drop(EngineSlot::take("fork-2", "wb-slow").unwrap());
        // Given up on after it ended: nothing is held back.
        let slot = EngineSlot::take("fork-1", "wb-slow").unwrap();
        let watch = slot.watch();
        drop(slot);
        watch.abandon();
        drop(EngineSlot::take("fork-2", "wb-slow").unwrap());
    }
}
