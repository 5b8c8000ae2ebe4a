//! The work done inside one child process: `scan FILE` and `one --engine E FILE`.
//!
//! Each prints exactly one JSON line on stdout. Progress markers (`phase=...`) go to stderr
//! so that the parent can tell where a child that crashed or hung was.

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::cached::{self, CachedBook, CachedCell};
use crate::engines::{EngineKind, EngineOptions, LoadFailure, LoadedBook};
use crate::value::{Value, first_function, is_volatile, values_match};

/// Mismatching cells kept per file as examples.
const MAX_SAMPLES: usize = 20;

/// Prefix of the progress markers written to stderr.
pub const PHASE_MARKER: &str = "recalc-fidelity phase=";

/// What calamine says about a file: is it in scope, and how many cells are compared.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScanOutcome {
    pub producer: String,
    pub excel: bool,
    /// Formula cells with a cached value.
    pub cells: usize,
    /// Of those, cells whose formula calls a volatile function.
    pub volatile_cells: usize,
    pub uncached_formulas: usize,
    pub sheet_errors: Vec<String>,
    /// Set when calamine cannot open the file.
    pub error: Option<String>,
}

/// Result of one engine on one file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineOutcome {
    pub status: Status,
    pub error: Option<String>,
    /// Where a failed, crashed or timed-out child was (`load`, `evaluate`, `compare`).
    pub phase: Option<String>,
    pub cells: usize,
    pub matched: usize,
    /// Cells whose formula calls a volatile function (RAND, NOW, TODAY...), and how many of
    /// those matched anyway.
    pub volatile_cells: usize,
    pub volatile_matched: usize,
    pub load_ms: Option<f64>,
    pub eval_ms: Option<f64>,
    /// Cells on sheets the engine did not load.
    pub missing_sheet_cells: usize,
    /// First function of each mismatching formula, counted.
    pub mismatch_functions: BTreeMap<String, usize>,
    /// `cached kind -> computed kind`, counted.
    pub mismatch_kinds: BTreeMap<String, usize>,
    pub samples: Vec<Mismatch>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Ok,
    LoadFailed,
    EvalFailed,
    Crashed,
    Timeout,
    /// The child could not be run or its output could not be read.
    HarnessError,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mismatch {
    pub cell: String,
    pub formula: String,
    pub cached: Value,
    pub computed: Value,
}

/// `scan FILE`: reads the cached values with calamine.
pub fn scan(path: &Path) -> ScanOutcome {
    let producer = cached::read_producer(path);
    let mut outcome = ScanOutcome { producer: producer.label(), excel: producer.is_excel(), ..Default::default() };
    match guarded(|| cached::read_cached(path)) {
        Ok(book) => {
            outcome.cells = book.cells.len();
            outcome.volatile_cells = book.cells.iter().filter(|c| is_volatile(&c.formula)).count();
            outcome.uncached_formulas = book.uncached_formulas;
            outcome.sheet_errors = book.sheet_errors;
        }
        Err(err) => outcome.error = Some(format!("{err:#}")),
    }
    outcome
}

/// `one --engine E FILE`: loads, evaluates and compares.
pub fn run_one(engine: EngineKind, path: &Path, options: &EngineOptions) -> EngineOutcome {
    let book = match guarded(|| cached::read_cached(path)) {
        Ok(book) => book,
        Err(err) => return failed(Status::HarnessError, "calamine", err),
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => return failed(Status::HarnessError, "read", err.into()),
    };

    mark_phase("load");
    let started = Instant::now();
    let mut loaded = match guarded(|| engine.load(bytes, path, options)) {
        Ok(loaded) => loaded,
        Err(err) => return failed(Status::LoadFailed, "load", err),
    };
    let load_ms = elapsed_ms(started);

    mark_phase("evaluate");
    let started = Instant::now();
    if let Err(err) = guarded(|| loaded.evaluate()) {
        let mut outcome = evaluate_failed(err);
        outcome.load_ms = Some(load_ms);
        return outcome;
    }
    let eval_ms = elapsed_ms(started);

    mark_phase("compare");
    let compared = guarded(|| {
        loaded.read_back()?;
        Ok(compare(&book, loaded.as_ref()))
    });
    let mut outcome = match compared {
        Ok(outcome) => outcome,
        Err(err) => failed(Status::EvalFailed, "compare", err),
    };
    outcome.load_ms = Some(load_ms);
    outcome.eval_ms = Some(eval_ms);
    outcome
}

fn compare(book: &CachedBook, loaded: &dyn LoadedBook) -> EngineOutcome {
    let mut outcome = EngineOutcome::default();
    for cell in &book.cells {
        outcome.cells += 1;
        let volatile = is_volatile(&cell.formula);
        outcome.volatile_cells += usize::from(volatile);
        let computed = loaded.value(&cell.sheet, cell.row, cell.col);
        if computed.is_none() {
            outcome.missing_sheet_cells += 1;
        }
        let computed = computed.unwrap_or(Value::Error("#NO_SHEET".to_string()));
        if values_match(&cell.value, &computed) {
            outcome.matched += 1;
            outcome.volatile_matched += usize::from(volatile);
        } else {
            record_mismatch(&mut outcome, cell, computed);
        }
    }
    outcome
}

fn record_mismatch(outcome: &mut EngineOutcome, cell: &CachedCell, computed: Value) {
    *outcome.mismatch_functions.entry(first_function(&cell.formula)).or_default() += 1;
    let kinds = format!("{} -> {}", cell.value.kind_detail(), computed.kind_detail());
    *outcome.mismatch_kinds.entry(kinds).or_default() += 1;
    if outcome.samples.len() < MAX_SAMPLES {
        outcome.samples.push(Mismatch {
            cell: format!("{}!{}", cell.sheet, a1(cell.row, cell.col)),
            formula: cell.formula.clone(),
            cached: cell.value.clone(),
            computed,
        });
    }
}

/// An evaluation error; a `LoadFailure` (the engine could not open the file) counts as a
/// load failure.
fn evaluate_failed(err: anyhow::Error) -> EngineOutcome {
    if err.is::<LoadFailure>() {
        return failed(Status::LoadFailed, "load", err);
    }
    failed(Status::EvalFailed, "evaluate", err)
}

fn failed(status: Status, phase: &str, err: anyhow::Error) -> EngineOutcome {
    EngineOutcome { status, phase: Some(phase.to_string()), error: Some(format!("{err:#}")), ..Default::default() }
}

fn mark_phase(phase: &str) {
    eprintln!("{PHASE_MARKER}{phase}");
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// A1-style reference from 0-based row and column.
pub fn a1(row: u32, col: u32) -> String {
    let mut letters = Vec::new();
    let mut n = col + 1;
    while n > 0 {
        let rem = (n - 1) % 26;
        letters.push(char::from(b'A' + rem as u8));
        n = (n - 1) / 26;
    }
    letters.iter().rev().collect::<String>() + &(row + 1).to_string()
}

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Installs a panic hook that records the message (and location) for `guarded`.
pub fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_string());
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let text = format!("panic: {message}{location}");
        eprintln!("{text}");
        if let Ok(mut slot) = LAST_PANIC.lock() {
            *slot = Some(text);
        }
    }));
}

/// Runs `f`, turning a panic into an error carrying the panic message.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(_) => {
            let message = LAST_PANIC.lock().ok().and_then(|mut slot| slot.take());
            Err(anyhow!(message.unwrap_or_else(|| "panic".to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::a1;

    #[test]
    fn a1_references() {
        assert_eq!(a1(0, 0), "A1");
        assert_eq!(a1(9, 25), "Z10");
        assert_eq!(a1(0, 26), "AA1");
        assert_eq!(a1(0, 701), "ZZ1");
        assert_eq!(a1(0, 702), "AAA1");
    }
}
