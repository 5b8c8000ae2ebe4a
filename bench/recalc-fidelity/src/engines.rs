//! The engines under test, behind one small trait.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};

use crate::libreoffice;
use crate::value::Value;

/// Which engine to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    IronCalc,
    Formualizer,
    LibreOffice,
}

/// Settings a child passes to the engine it runs.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// The run's LibreOffice directory (profile and work directories); `None` makes the
    /// engine create its own.
    pub lo_dir: Option<PathBuf>,
}

impl EngineKind {
    pub const ALL: [EngineKind; 3] = [EngineKind::IronCalc, EngineKind::Formualizer, EngineKind::LibreOffice];

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::IronCalc => "ironcalc",
            EngineKind::Formualizer => "formualizer",
            EngineKind::LibreOffice => "libreoffice",
        }
    }

    /// Parses an xlsx file (`bytes`, read from `path`) into the engine, without evaluating it.
    pub fn load(self, bytes: Vec<u8>, path: &Path, options: &EngineOptions) -> Result<Box<dyn LoadedBook>> {
        match self {
            EngineKind::IronCalc => ironcalc_engine::load(&bytes, &file_stem(path)),
            EngineKind::Formualizer => formualizer_engine::load(bytes),
            EngineKind::LibreOffice => libreoffice::load(&bytes, path, options.lo_dir.as_deref()),
        }
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EngineKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ironcalc" => Ok(EngineKind::IronCalc),
            "formualizer" => Ok(EngineKind::Formualizer),
            "libreoffice" => Ok(EngineKind::LibreOffice),
            other => bail!("unknown engine '{other}' (expected ironcalc, formualizer or libreoffice)"),
        }
    }
}

/// A workbook loaded into an engine.
pub trait LoadedBook {
    /// Recalculates every formula.
    fn evaluate(&mut self) -> Result<()>;
    /// Makes the results readable by `value`, for engines that compute out of process.
    fn read_back(&mut self) -> Result<()> {
        Ok(())
    }
    /// The value of a cell (0-based row and column); `None` when the engine has no such sheet.
    fn value(&self, sheet: &str, row: u32, col: u32) -> Option<Value>;
}

/// Returned by `LoadedBook::evaluate` when the engine could not open the file at all; only
/// engines that load and evaluate in one step (LibreOffice) find that out so late. It is
/// reported as a load failure.
#[derive(Debug)]
pub struct LoadFailure(pub String);

impl fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadFailure {}

mod ironcalc_engine {
    use std::collections::HashMap;

    use ironcalc_base::Model;
    use ironcalc_base::types::{Cell, FormulaValue, SpillValue};

    use super::*;

    pub struct IronCalcBook {
        model: Model<'static>,
        sheets: HashMap<String, u32>,
    }

    pub fn load(bytes: &[u8], name: &str) -> Result<Box<dyn LoadedBook>> {
        let workbook = ironcalc::import::load_from_xlsx_bytes(bytes, name, "en", "UTC").map_err(|e| anyhow!("{e}"))?;
        let model = Model::from_workbook(workbook, "en").map_err(|e| anyhow!("{e}"))?;
        let sheets = model.workbook.get_worksheet_names().into_iter().zip(0u32..).collect();
        Ok(Box::new(IronCalcBook { model, sheets }))
    }

    impl LoadedBook for IronCalcBook {
        fn evaluate(&mut self) -> Result<()> {
            self.model.evaluate();
            Ok(())
        }

        fn value(&self, sheet: &str, row: u32, col: u32) -> Option<Value> {
            let index = *self.sheets.get(sheet)?;
            let worksheet = self.model.workbook.worksheet(index).ok()?;
            let cell = worksheet.cell(row as i32 + 1, col as i32 + 1);
            Some(cell.map_or(Value::Empty, |c| self.cell_value(&c)))
        }
    }

    impl IronCalcBook {
        fn cell_value(&self, cell: &Cell) -> Value {
            match cell {
                Cell::EmptyCell { .. } => Value::Empty,
                Cell::BooleanCell { v, .. } => Value::Bool(*v),
                Cell::NumberCell { v, .. } => Value::Number(*v),
                Cell::ErrorCell { ei, .. } => Value::Error(ei.to_string()),
                Cell::SharedString { si, .. } => {
                    let text = usize::try_from(*si).ok().and_then(|i| self.model.workbook.shared_strings.get(i));
                    Value::Text(text.cloned().unwrap_or_default())
                }
                Cell::CellFormula { v, .. } | Cell::ArrayFormula { v, .. } => formula_value(v),
                Cell::SpillCell { v, .. } => spill_value(v),
            }
        }
    }

    fn formula_value(v: &FormulaValue) -> Value {
        match v {
            FormulaValue::Unevaluated => Value::Error("#UNEVALUATED".to_string()),
            FormulaValue::Boolean(b) => Value::Bool(*b),
            FormulaValue::Number(n) => Value::Number(*n),
            FormulaValue::Text(s) => Value::Text(s.clone()),
            FormulaValue::Error { ei, .. } => Value::Error(ei.to_string()),
        }
    }

    fn spill_value(v: &SpillValue) -> Value {
        match v {
            SpillValue::Boolean(b) => Value::Bool(*b),
            SpillValue::Number(n) => Value::Number(*n),
            SpillValue::Text(s) => Value::Text(s.clone()),
            SpillValue::Error(e) => Value::Error(e.to_string()),
        }
    }
}

mod formualizer_engine {
    use formualizer::eval::engine::FormulaParsePolicy;
    use formualizer::workbook::{CalamineAdapter, LoadStrategy, SpreadsheetReader, Workbook, WorkbookConfig};
    use formualizer::{DateSystem, LiteralValue};

    use super::*;

    pub struct FormualizerBook {
        workbook: Workbook,
        date_system: DateSystem,
    }

    pub fn load(bytes: Vec<u8>) -> Result<Box<dyn LoadedBook>> {
        let adapter = CalamineAdapter::open_bytes(bytes)?;
        let workbook = Workbook::from_reader(adapter, LoadStrategy::EagerAll, config())?;
        let date_system = workbook.eval_config().date_system;
        Ok(Box::new(FormualizerBook { workbook, date_system }))
    }

    /// Batch configuration; a formula that does not parse becomes an error in its cell
    /// instead of failing the whole load (what a server would want).
    fn config() -> WorkbookConfig {
        let mut config = WorkbookConfig::ephemeral();
        config.eval.formula_parse_policy = FormulaParsePolicy::CoerceToError;
        config
    }

    impl LoadedBook for FormualizerBook {
        fn evaluate(&mut self) -> Result<()> {
            self.workbook.evaluate_all()?;
            Ok(())
        }

        fn value(&self, sheet: &str, row: u32, col: u32) -> Option<Value> {
            if !self.workbook.has_sheet(sheet) {
                return None;
            }
            let value = self.workbook.get_value(sheet, row + 1, col + 1);
            Some(value.map_or(Value::Empty, |v| literal_value(&v, self.date_system)))
        }
    }

    fn literal_value(value: &LiteralValue, date_system: DateSystem) -> Value {
        match value {
            LiteralValue::Int(i) => Value::Number(*i as f64),
            LiteralValue::Number(n) => Value::Number(*n),
            LiteralValue::Text(s) => Value::Text(s.clone()),
            LiteralValue::Boolean(b) => Value::Bool(*b),
            LiteralValue::Array(rows) => {
                rows.first().and_then(|r| r.first()).map_or(Value::Empty, |v| literal_value(v, date_system))
            }
            LiteralValue::Date(_) | LiteralValue::DateTime(_) | LiteralValue::Time(_) | LiteralValue::Duration(_) => {
                value.as_serial_number_for(date_system).map_or(Value::Error("#DATE".to_string()), Value::Number)
            }
            LiteralValue::Empty => Value::Empty,
            LiteralValue::Pending => Value::Error("#PENDING".to_string()),
            LiteralValue::Error(e) => Value::Error(e.kind.to_string()),
        }
    }
}
