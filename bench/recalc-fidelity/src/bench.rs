//! The `run` command: scans the corpus and runs every engine on every file in scope,
//! each in its own child process.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::child::{EngineOutcome, ScanOutcome, Status};
use crate::engines::EngineKind;
use crate::libreoffice::{self, RunDir};
use crate::runner::{ChildEnd, Limits, run_child};

/// Settings of one `run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub corpus: PathBuf,
    pub engines: Vec<EngineKind>,
    pub limits: Limits,
    /// Also compare files not saved by Microsoft Excel.
    pub all_producers: bool,
}

/// One corpus file: what calamine found and what each engine did.
#[derive(Debug, Clone, Serialize)]
pub struct FileRow {
    pub file: String,
    pub producer: String,
    /// Why the file is not compared; `None` when it is.
    pub skipped: Option<String>,
    pub cached_cells: usize,
    pub uncached_formulas: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calamine_sheet_errors: Vec<String>,
    pub engines: BTreeMap<String, EngineOutcome>,
}

/// Runs the whole benchmark; progress goes to stderr.
pub fn run(config: &RunConfig) -> Result<Vec<FileRow>> {
    let files = corpus_files(&config.corpus)?;
    let lo_dir = libreoffice_dir(config)?;
    let lo_dir = lo_dir.as_ref().map(RunDir::path);
    let mut rows = Vec::with_capacity(files.len());
    for (index, path) in files.iter().enumerate() {
        let row = run_file(path, config, lo_dir);
        eprintln!("[{}/{}] {}", index + 1, files.len(), progress_line(&row));
        rows.push(row);
    }
    Ok(rows)
}

/// `.xlsx` and `.xlsm` files directly in `dir`, sorted by name.
fn corpus_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading corpus directory {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file() && is_ooxml_workbook(path))
        .collect();
    files.sort();
    Ok(files)
}

/// The LibreOffice profile and work directories of this run, when the libreoffice engine
/// runs; fails early when soffice cannot be started.
fn libreoffice_dir(config: &RunConfig) -> Result<Option<RunDir>> {
    if !config.engines.contains(&EngineKind::LibreOffice) {
        return Ok(None);
    }
    let run_dir = RunDir::create()?;
    let version = libreoffice::version(&run_dir)?;
    eprintln!("libreoffice: {version}, profile in {}", run_dir.path().display());
    Ok(Some(run_dir))
}

fn is_ooxml_workbook(path: &Path) -> bool {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    matches!(ext.as_deref(), Some("xlsx" | "xlsm"))
}

fn run_file(path: &Path, config: &RunConfig, lo_dir: Option<&Path>) -> FileRow {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let scan = scan_file(path, config.limits);
    let mut row = FileRow {
        file,
        producer: scan.producer.clone(),
        skipped: skip_reason(&scan, config.all_producers),
        cached_cells: scan.cells,
        uncached_formulas: scan.uncached_formulas,
        calamine_sheet_errors: scan.sheet_errors,
        engines: BTreeMap::new(),
    };
    if row.skipped.is_none() {
        for engine in &config.engines {
            row.engines.insert(engine.name().to_string(), run_engine(*engine, path, config.limits, lo_dir));
        }
    }
    row
}

fn skip_reason(scan: &ScanOutcome, all_producers: bool) -> Option<String> {
    if let Some(error) = &scan.error {
        return Some(format!("calamine cannot open: {error}"));
    }
    if !scan.excel && !all_producers {
        return Some("not saved by Microsoft Excel".to_string());
    }
    if scan.cells == 0 {
        return Some("no formula with a cached value".to_string());
    }
    None
}

fn scan_file(path: &Path, limits: Limits) -> ScanOutcome {
    let failure = |error: String| ScanOutcome { error: Some(error), ..Default::default() };
    match run_child(&["scan"], path, limits) {
        Ok(ChildEnd::Finished { json }) => {
            serde_json::from_str(&json).unwrap_or_else(|e| failure(format!("bad scan output: {e}")))
        }
        Ok(ChildEnd::TimedOut { .. }) => failure("calamine timed out".to_string()),
        Ok(ChildEnd::Crashed { status, stderr_tail, .. }) => {
            failure(format!("calamine crashed ({status}): {stderr_tail}"))
        }
        Err(err) => failure(format!("{err:#}")),
    }
}

fn run_engine(engine: EngineKind, path: &Path, limits: Limits, lo_dir: Option<&Path>) -> EngineOutcome {
    let harness =
        |status, error: String, phase| EngineOutcome { status, error: Some(error), phase, ..Default::default() };
    match run_child(&one_args(engine, lo_dir), path, limits) {
        Ok(ChildEnd::Finished { json }) => serde_json::from_str(&json)
            .unwrap_or_else(|e| harness(Status::HarnessError, format!("bad child output: {e}"), None)),
        Ok(ChildEnd::TimedOut { phase }) => {
            harness(Status::Timeout, format!("killed after {:?}", limits.timeout), phase)
        }
        Ok(ChildEnd::Crashed { status, phase, stderr_tail }) => {
            harness(Status::Crashed, format!("{status}: {}", stderr_tail.trim()), phase)
        }
        Err(err) => harness(Status::HarnessError, format!("{err:#}"), None),
    }
}

/// `one --engine E [--lo-dir DIR]`; the file comes last.
fn one_args(engine: EngineKind, lo_dir: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["one", "--engine", engine.name()].into_iter().map(OsString::from).collect();
    if let (EngineKind::LibreOffice, Some(dir)) = (engine, lo_dir) {
        args.push("--lo-dir".into());
        args.push(dir.into());
    }
    args
}

fn progress_line(row: &FileRow) -> String {
    if let Some(reason) = &row.skipped {
        return format!("{} skipped: {}", row.file, first_line(reason));
    }
    let engines: Vec<String> = row
        .engines
        .iter()
        .map(|(name, o)| match o.status {
            Status::Ok => format!("{name} {}/{}", o.matched, o.cells),
            other => format!("{name} {other:?}"),
        })
        .collect();
    format!("{} ({} cells): {}", row.file, row.cached_cells, engines.join(", "))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
