//! Gemba's cause model and detector settings: which of Gemba's signals points at which cause
//! (the 20-rule table of `docs/detection.md`, as data), and the optional `--detect FILE` that
//! overrides the settings (`[detect]`) or replaces the rules (`[[cause]]`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use kaizen::detect::{CauseModel, CauseRule, DetectConfig, Direction, SignalKind};
use serde::{Deserialize, Serialize};

use super::signals::names as s;

/// Largest `--detect` file read (a rule table is a few KB).
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The calls-derived signals the detector computes itself (see `kaizen::detect::derived`).
const CALLS_REFUSED: &str = "calls.share.refused";
const CALLS_USER_ERROR: &str = "calls.share.user_error";
const CALLS_DATA_ERROR: &str = "calls.share.data_error";
const CALLS_RESPONSE_BYTES: &str = "calls.response_bytes_mean";

/// One row of the table: cause, signal, direction, kind, per, weight, min_change, threshold.
type Row = (&'static str, &'static str, Direction, SignalKind, Option<&'static str>, f64, f64, Option<f64>);

/// Gemba's rules. Weights say which signals are primary: in-flight and CPU rise with any
/// slowdown (Little's law), so they weigh less than queue wait and refusals; cache signals weigh
/// most, because a slower cache-missing call is the commonest consequence that looks like
/// saturation. `min_change` is the smallest move that matters, in the signal's units (per
/// second for counters).
const RULES: [Row; 20] = {
    use Direction::{Down, Up};
    use SignalKind::{Counter, CounterRatio, Event, Gauge, GaugeRatio};
    [
        ("cache_thrash", s::CACHE_HIT_RATIO, Down, Gauge, None, 1.0, 0.05, Some(0.5)),
        ("cache_thrash", s::CACHE_EVICTIONS, Up, Counter, None, 1.0, 0.2, None),
        ("cache_thrash", s::CACHE_LOADS, Up, Counter, None, 0.7, 0.2, None),
        ("slow_load", s::LOAD_SECONDS, Up, CounterRatio, Some(s::CACHE_LOADS), 0.9, 0.05, None),
        ("saturation", s::QUEUE_WAIT_SECONDS, Up, Gauge, None, 0.9, 0.05, Some(0.5)),
        ("saturation", s::REFUSALS, Up, Counter, None, 0.95, 0.1, None),
        ("saturation", CALLS_REFUSED, Up, Gauge, None, 0.95, 0.02, None),
        ("saturation", s::INFLIGHT, Up, Gauge, None, 0.6, 2.0, None),
        ("saturation", s::CPU_SECONDS, Up, Counter, None, 0.5, 0.25, None),
        ("large_responses", CALLS_RESPONSE_BYTES, Up, Gauge, None, 0.7, 20_000.0, None),
        ("recalc_backend", s::BACKEND_BREAKER_OPEN, Up, Gauge, None, 1.0, 0.5, None),
        ("recalc_backend", s::BACKEND_RETRIES, Up, Counter, None, 0.8, 0.05, None),
        ("recalc_backend", s::BACKEND_LONG_RUNS, Up, Gauge, None, 0.8, 0.5, None),
        ("recalc_backend", s::EVENT_BREAKER_OPENED, Up, Event, None, 0.9, 0.0, None),
        ("file_changed", s::FILES_CHANGED, Up, Counter, None, 0.8, 0.05, None),
        ("file_changed", s::EVENT_FILE_CHANGED, Up, Event, None, 0.7, 0.0, None),
        ("config_change", s::EVENT_CONFIG_CHANGE, Up, Event, None, 0.9, 0.0, None),
        ("memory_pressure", s::RSS_BYTES, Up, GaugeRatio, Some(s::MEMORY_LIMIT_BYTES), 1.0, 0.1, Some(0.9)),
        ("user_errors", CALLS_USER_ERROR, Up, Gauge, None, 1.0, 0.02, None),
        ("data_errors", CALLS_DATA_ERROR, Up, Gauge, None, 1.0, 0.02, None),
    ]
};

/// Gemba's default cause model (the table above).
pub fn default_model() -> CauseModel {
    CauseModel {
        rules: RULES
            .iter()
            .map(|&(cause, signal, direction, kind, per, weight, min_change, threshold)| CauseRule {
                cause: cause.into(),
                signal: signal.into(),
                direction,
                kind,
                per: per.map(Into::into),
                weight,
                min_change,
                threshold,
            })
            .collect(),
    }
}

/// The `--detect` file: `[detect]` overrides any detector setting (the rest keep their
/// defaults); `[[cause]]` entries, when present, replace the whole default rule table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectFile {
    #[serde(default)]
    pub detect: DetectConfig,
    #[serde(default, rename = "cause", skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<CauseRule>,
}

/// What the detector runs with: settings and rules, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: DetectConfig,
    pub model: CauseModel,
}

impl Settings {
    /// The defaults, or `path`'s overrides; errors say which file and what is wrong in it.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let file = match path {
            Some(p) => read_file(p)?,
            None => DetectFile::default(),
        };
        let model = if file.causes.is_empty() { default_model() } else { CauseModel { rules: file.causes } };
        let where_ = || path.map_or_else(|| "the default detector settings".to_string(), |p| p.display().to_string());
        file.detect.validate().with_context(|| format!("{}: [detect]", where_()))?;
        model.validate().with_context(|| format!("{}: [[cause]]", where_()))?;
        for (i, rule) in model.rules.iter().enumerate() {
            for name in std::iter::once(&rule.signal).chain(rule.per.as_ref()) {
                if !known_signal(name) {
                    bail!(
                        "{}: [[cause]] rule {i} ({}) reads '{name}', which Gemba does not send; use one of {} \
                         or a calls.* signal",
                        where_(),
                        rule.cause,
                        s::ALL.join(", ")
                    );
                }
            }
        }
        Ok(Self { config: file.detect, model })
    }

    /// The effective settings as a `--detect` file (a starting point for one).
    pub fn to_toml(&self) -> Result<String> {
        let file = DetectFile { detect: self.config.clone(), causes: self.model.rules.clone() };
        toml::to_string(&file).context("cannot render the detector settings as TOML")
    }
}

/// A signal Gemba sends, or one the detector derives from the calls (`calls.rate`,
/// `calls.share.<class>`, `calls.response_bytes_mean`).
fn known_signal(name: &str) -> bool {
    s::ALL.contains(&name) || name.starts_with("calls.")
}

fn read_file(path: &Path) -> Result<DetectFile> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read detect file {}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        bail!("detect file {} is {} bytes; at most {MAX_FILE_BYTES} are read", path.display(), meta.len());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read detect file {}", path.display()))?;
    toml::from_str(&text).with_context(|| {
        format!(
            "detect file {} is not valid (a [detect] table of settings and [[cause]] rules; \
             `gemba incidents --show-config` prints the defaults in that form)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gemba-detect-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_default_table_is_valid_and_covers_every_cause_but_unknown() {
        let s = Settings::load(None).unwrap();
        assert_eq!(s.model.rules.len(), 20);
        for cause in kaizen::detect::CAUSES.iter().filter(|c| **c != "unknown") {
            assert!(s.model.rules.iter().any(|r| r.cause == *cause), "no rule for {cause}");
        }
        // Every signal a rule reads is one Gemba sends (or one the detector derives).
        for r in &s.model.rules {
            assert!(known_signal(&r.signal), "rule on unknown signal {}", r.signal);
            assert!(r.per.as_deref().is_none_or(known_signal), "rule {r:?}");
        }
    }

    #[test]
    fn a_file_overrides_settings_and_replaces_rules() {
        let p = write("short.toml", "[detect]\nwindow_secs = 2\nwarmup_evaluations = 10\n");
        let s = Settings::load(Some(&p)).unwrap();
        assert_eq!((s.config.window_secs, s.config.warmup_evaluations, s.config.min_calls), (2, 10, 20));
        assert_eq!(s.model.rules.len(), 20);

        let p = write(
            "rules.toml",
            "[[cause]]\ncause = \"cache_thrash\"\nsignal = \"cache_evictions\"\nkind = \"counter\"\n\
             weight = 1.0\nmin_change = 0.5\n",
        );
        let s = Settings::load(Some(&p)).unwrap();
        assert_eq!(s.model.rules.len(), 1);
        assert_eq!(s.model.rules[0].direction, Direction::Up);

        // The printed defaults read back as the same settings.
        let text = Settings::load(None).unwrap().to_toml().unwrap();
        let back = Settings::load(Some(&write("defaults.toml", &text))).unwrap();
        assert_eq!(back.model, default_model());
        assert_eq!(back.config, DetectConfig::default());
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let p = write("typo.toml", "[detect]\nwindow_sec = 2\n");
        let e = format!("{:#}", Settings::load(Some(&p)).unwrap_err());
        assert!(e.contains("typo.toml") && e.contains("window_sec"), "{e}");

        let p = write("range.toml", "[detect]\nwindow_secs = 0\n");
        let e = format!("{:#}", Settings::load(Some(&p)).unwrap_err());
        assert!(e.contains("range.toml") && e.contains("window_secs"), "{e}");

        let p = write(
            "cause.toml",
            "[[cause]]\ncause = \"gremlins\"\nsignal = \"x\"\nkind = \"gauge\"\nweight = 1.0\nmin_change = 1.0\n",
        );
        let e = format!("{:#}", Settings::load(Some(&p)).unwrap_err());
        assert!(e.contains("cause.toml") && e.contains("cause must be one of"), "{e}");

        let p = write(
            "signal.toml",
            "[[cause]]\ncause = \"saturation\"\nsignal = \"queue_wait\"\nkind = \"gauge\"\nweight = 1.0\nmin_change = 1.0\n",
        );
        let e = format!("{:#}", Settings::load(Some(&p)).unwrap_err());
        assert!(e.contains("'queue_wait', which Gemba does not send") && e.contains("queue_wait_seconds"), "{e}");

        let e = format!("{:#}", Settings::load(Some(Path::new("/nonexistent/detect.toml"))).unwrap_err());
        assert!(e.contains("cannot read detect file"), "{e}");
    }
}
