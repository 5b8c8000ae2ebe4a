//! Search: find_value, in value mode (cells whose value matches) and label mode (the value
//! beside or below a label such as "Total").

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{cell_schema, clamp_limit, is_false};
use crate::Engine;
use crate::address::CellRef;
use crate::error::{Result, SheetsError};
use crate::limits::Budget;
use crate::sheet::Sheet;
use crate::value::Value;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FindMode {
    /// Cells whose value matches the query.
    #[default]
    Value,
    /// The value next to a label matching the query.
    Label,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Right first, then below.
    #[default]
    Auto,
    Right,
    Below,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    /// Substring, case-insensitive (default in value mode).
    #[default]
    Contains,
    /// Whole value, case-insensitive (default in label mode).
    Exact,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FindValueParams {
    pub workbook_id: String,
    /// Text or number to find.
    pub query: String,
    /// Default: all sheets.
    pub sheet_name: Option<String>,
    pub mode: Option<FindMode>,
    #[serde(rename = "match")]
    pub match_kind: Option<MatchKind>,
    /// Label mode: where the value is.
    pub direction: Option<Direction>,
    /// Default 20.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Match {
    pub sheet_name: String,
    pub cell: String,
    #[schemars(schema_with = "cell_schema")]
    pub value: serde_json::Value,
    /// Label mode: the label cell and its text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_cell: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FindValueOutput {
    pub matches: Vec<Match>,
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Which pooled strings match, as a bitmap over the pool.
fn matching_strings(sheet: &Sheet, q: &str, exact: bool) -> Vec<bool> {
    sheet
        .lower_strings()
        .iter()
        .map(|s| {
            if exact {
                let t = s.trim();
                t == q || t.trim_end_matches(':').trim() == q
            } else {
                s.contains(q)
            }
        })
        .collect()
}

fn is_match(v: &Value, hits: &[bool], num: Option<f64>, shown: Option<&dyn Fn(&Value) -> bool>) -> bool {
    match v {
        Value::Text(i) => hits.get(*i as usize).copied().unwrap_or(false),
        Value::Number(n) => num.is_some_and(|q| (n - q).abs() <= 1e-9 * q.abs().max(1.0)),
        Value::Bool(_) | Value::Error(_) | Value::Date(_) | Value::Duration(_) => shown.is_some_and(|f| f(v)),
        _ => false,
    }
}

/// The query could be how another tool shows a boolean, an error or a date ("FALSE", "#REF!",
/// "2016-10-20"): those cells are then matched on that text too.
fn may_name_other_kinds(q: &str) -> bool {
    q == "true"
        || q == "false"
        || q.starts_with('#')
        || (q.starts_with(|c: char| c.is_ascii_digit()) && q.contains(['-', ':']))
}

/// The first non-empty cell right of / below a label, within a short reach.
fn beside(sheet: &Sheet, at: CellRef, dir: Direction) -> Option<(CellRef, Value)> {
    const REACH: u32 = 6;
    let right = || {
        sheet
            .row_span(at.row, at.col + 1, at.col + REACH)
            .iter()
            .find(|c| !c.value.is_empty())
            .map(|c| (CellRef::new(c.row, c.col), c.value))
    };
    let below = || {
        (at.row + 1..=at.row + REACH)
            .map(|r| (r, sheet.get(r, at.col)))
            .find(|(_, v)| !v.is_empty())
            .map(|(r, v)| (CellRef::new(r, at.col), v))
    };
    match dir {
        Direction::Right => right(),
        Direction::Below => below(),
        Direction::Auto => right().or_else(below),
    }
}

pub fn find_value(engine: &Engine, p: FindValueParams, budget: &Budget) -> Result<FindValueOutput> {
    let q = p.query.trim().to_lowercase();
    if q.is_empty() {
        return Err(SheetsError::invalid("query", "is empty; give text or a number to find"));
    }
    let wb = engine.workbook(&p.workbook_id, budget)?;
    let mode = p.mode.unwrap_or_default();
    let exact = p.match_kind.map(|m| m == MatchKind::Exact).unwrap_or(mode == FindMode::Label);
    let limit = clamp_limit(p.limit, 20, engine.caps.max_items);
    let num = q.parse::<f64>().ok().filter(|n| n.is_finite());
    let sheets: Vec<Arc<Sheet>> = match p.sheet_name.as_deref() {
        Some(n) => vec![engine.sheet(&wb, Some(n), budget)?],
        None => (0..wb.sheets.len()).map(|i| wb.sheet_at(i, budget)).collect::<Result<_>>()?,
    };
    let mut out = FindValueOutput { matches: Vec::new(), truncated: false, hint: None };
    let other_kinds = mode == FindMode::Value && may_name_other_kinds(&q);
    'sheets: for sheet in &sheets {
        let hits = matching_strings(sheet, &q, exact);
        let any_text = hits.iter().any(|h| *h);
        let only_text = (num.is_none() && !other_kinds) || mode == FindMode::Label;
        if !any_text && only_text {
            continue;
        }
        let shown = |v: &Value| {
            let t = sheet.text(v).to_lowercase();
            if exact { t.trim() == q } else { t.contains(q.as_str()) }
        };
        // Without a number (or a boolean, error or date) to find, only text cells can match:
        // skip the rest undecoded, and the text cells whose string does not match before their
        // position is worked out.
        let cells: Box<dyn Iterator<Item = crate::sheet::Cell>> = if only_text {
            let hits = &hits;
            let keep = move |s: u32| hits.get(s as usize).copied().unwrap_or(false);
            Box::new(sheet.text_cells(keep).map(|(at, s)| crate::sheet::Cell {
                row: at.row,
                col: at.col,
                value: Value::Text(s),
            }))
        } else {
            Box::new(sheet.cells().iter())
        };
        for (i, c) in cells.enumerate() {
            if i % 262_144 == 0 {
                budget.check()?;
            }
            let ok = match mode {
                FindMode::Value => {
                    is_match(&c.value, &hits, num, other_kinds.then_some(&shown as &dyn Fn(&Value) -> bool))
                }
                FindMode::Label => matches!(c.value, Value::Text(_)) && is_match(&c.value, &hits, None, None),
            };
            if !ok {
                continue;
            }
            if out.matches.len() >= limit {
                out.truncated = true;
                break 'sheets;
            }
            let at = CellRef::new(c.row, c.col);
            match mode {
                FindMode::Value => out.matches.push(Match {
                    sheet_name: sheet.name.clone(),
                    cell: at.to_string(),
                    value: sheet.json(&c.value),
                    label_cell: None,
                    label: None,
                }),
                FindMode::Label => {
                    if let Some((vat, v)) = beside(sheet, at, p.direction.unwrap_or_default()) {
                        out.matches.push(Match {
                            sheet_name: sheet.name.clone(),
                            cell: vat.to_string(),
                            value: sheet.json(&v),
                            label_cell: Some(at.to_string()),
                            label: Some(sheet.text(&c.value).into_owned()),
                        });
                    }
                }
            }
        }
    }
    if out.truncated {
        out.hint = Some(format!("more than {limit} matches; narrow with sheet_name, match=exact, or a higher limit"));
    } else if out.matches.is_empty() {
        out.hint = Some(match mode {
            FindMode::Label => "no label matched; try match=contains or mode=value".into(),
            FindMode::Value => "no cell matched; check the spelling or try fewer words".into(),
        });
    }
    Ok(out)
}
