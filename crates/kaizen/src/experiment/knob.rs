//! Knobs: named, typed settings the embedder reads per call (cache capacity, page size, a code
//! path behind a flag…). The embedder declares the knobs it has, with defaults and allowed
//! ranges, so experiment configs are checked against them before anything runs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A knob's value: bool, integer, float or string (TOML's scalar types).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KnobValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl KnobValue {
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            KnobValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            KnobValue::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// Floats, and integers as floats.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            KnobValue::Float(f) => Some(*f),
            KnobValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            KnobValue::Str(s) => Some(s),
            _ => None,
        }
    }
    fn type_name(&self) -> &'static str {
        match self {
            KnobValue::Bool(_) => "bool",
            KnobValue::Int(_) => "int",
            KnobValue::Float(_) => "float",
            KnobValue::Str(_) => "string",
        }
    }
}

impl fmt::Display for KnobValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KnobValue::Bool(b) => write!(f, "{b}"),
            KnobValue::Int(i) => write!(f, "{i}"),
            KnobValue::Float(x) => write!(f, "{x}"),
            KnobValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The type of a knob and what values it accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum KnobKind {
    Bool,
    /// Inclusive range.
    Int {
        min: i64,
        max: i64,
    },
    /// Inclusive range.
    Float {
        min: f64,
        max: f64,
    },
    /// Allowed values (empty: any string).
    Str {
        allowed: Vec<String>,
    },
}

/// One knob the embedder has: name, type and default (what calls get outside experiments).
#[derive(Debug, Clone, PartialEq)]
pub struct KnobSpec {
    pub name: String,
    pub kind: KnobKind,
    pub default: KnobValue,
    /// One line for `gemba experiment knobs` and errors.
    pub help: String,
}

impl KnobSpec {
    pub fn bool(name: &str, default: bool, help: &str) -> Self {
        Self { name: name.into(), kind: KnobKind::Bool, default: KnobValue::Bool(default), help: help.into() }
    }
    pub fn int(name: &str, default: i64, min: i64, max: i64, help: &str) -> Self {
        Self {
            name: name.into(),
            kind: KnobKind::Int { min, max },
            default: KnobValue::Int(default),
            help: help.into(),
        }
    }
    pub fn float(name: &str, default: f64, min: f64, max: f64, help: &str) -> Self {
        Self {
            name: name.into(),
            kind: KnobKind::Float { min, max },
            default: KnobValue::Float(default),
            help: help.into(),
        }
    }
    pub fn string(name: &str, default: &str, allowed: &[&str], help: &str) -> Self {
        Self {
            name: name.into(),
            kind: KnobKind::Str { allowed: allowed.iter().map(|s| s.to_string()).collect() },
            default: KnobValue::Str(default.into()),
            help: help.into(),
        }
    }

    /// Checks a value against this knob's type and range; integers are accepted for float knobs
    /// (and returned as floats), so `capacity = 64` works for a float knob.
    pub fn check(&self, v: &KnobValue) -> Result<KnobValue, String> {
        let wrong = || format!("knob '{}' takes {}, got {} {v}", self.name, self.describe(), v.type_name());
        match (&self.kind, v) {
            (KnobKind::Bool, KnobValue::Bool(_)) => Ok(v.clone()),
            (KnobKind::Int { min, max }, KnobValue::Int(i)) => {
                if i < min || i > max {
                    Err(format!("knob '{}' must be within {min}..={max}, got {i}", self.name))
                } else {
                    Ok(v.clone())
                }
            }
            (KnobKind::Float { min, max }, KnobValue::Float(_) | KnobValue::Int(_)) => {
                let x = v.as_f64().unwrap_or(f64::NAN);
                if !(x >= *min && x <= *max) {
                    Err(format!("knob '{}' must be within {min}..={max}, got {x}", self.name))
                } else {
                    Ok(KnobValue::Float(x))
                }
            }
            (KnobKind::Str { allowed }, KnobValue::Str(s)) => {
                if allowed.is_empty() || allowed.contains(s) {
                    Ok(v.clone())
                } else {
                    Err(format!("knob '{}' must be one of {}, got {s:?}", self.name, allowed.join(", ")))
                }
            }
            _ => Err(wrong()),
        }
    }

    /// "an int within 1..=4096" and the like.
    pub fn describe(&self) -> String {
        match &self.kind {
            KnobKind::Bool => "a bool".into(),
            KnobKind::Int { min, max } => format!("an int within {min}..={max}"),
            KnobKind::Float { min, max } => format!("a float within {min}..={max}"),
            KnobKind::Str { allowed } if allowed.is_empty() => "a string".into(),
            KnobKind::Str { allowed } => format!("one of {}", allowed.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_against_their_knob() {
        let cap = KnobSpec::int("cache_capacity", 64, 1, 4096, "workbooks held");
        assert!(cap.check(&KnobValue::Int(128)).is_ok());
        let e = cap.check(&KnobValue::Int(0)).unwrap_err();
        assert!(e.contains("1..=4096"), "{e}");
        assert!(cap.check(&KnobValue::Str("big".into())).unwrap_err().contains("takes an int"));
        let ratio = KnobSpec::float("sample_ratio", 0.5, 0.0, 1.0, "");
        assert_eq!(ratio.check(&KnobValue::Int(1)).unwrap(), KnobValue::Float(1.0));
        assert!(ratio.check(&KnobValue::Float(f64::NAN)).is_err());
        let fmt = KnobSpec::string("format", "csv", &["csv", "json"], "");
        assert!(fmt.check(&KnobValue::Str("xml".into())).unwrap_err().contains("csv, json"));
        assert!(KnobSpec::bool("new_path", false, "").check(&KnobValue::Bool(true)).is_ok());
    }
}
