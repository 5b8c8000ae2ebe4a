//! Experiments in Gemba (`gemba serve --experiments FILE`): flags, A/B tests, canaries and
//! bandits from `kaizen::experiment`, over Gemba's knobs (`knobs`). Each tool call is assigned
//! before it runs and observed after (`trial`); every few seconds the evaluator runs the tests,
//! delivers rollbacks and freezes as alerts and saves the state in `gemba.db` (`periodic`);
//! `gemba experiment status|report|check|knobs` read it without a server (`cli`).

pub mod cli;
pub mod knobs;
pub mod periodic;
pub mod trial;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use kaizen::experiment::persist::ExperimentStore;
use kaizen::experiment::{ConfigError, Engine, ExperimentsConfig};

/// Largest experiments file read (a few hundred experiments' worth).
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The running experiments of one server process.
pub struct Experiments {
    pub engine: Engine,
    /// The file they came from (for messages).
    pub file: PathBuf,
}

impl Experiments {
    /// The status JSON (`/experiments.json`, `kaizen://experiments`), with the file the
    /// experiments came from.
    pub fn status_json(&self) -> serde_json::Value {
        let mut status = self.engine.status_json();
        if let Some(map) = status.as_object_mut() {
            map.insert("file".into(), self.file.display().to_string().into());
        }
        status
    }
}

/// The status JSON when no experiments run (the same shape, and why).
pub fn none_json() -> serde_json::Value {
    serde_json::json!({ "experiments": [], "note": "no experiments: start gemba serve with --experiments FILE" })
}

/// Reads an experiments file and checks it against Gemba's knobs and tools, reporting every
/// problem at once.
pub fn load_engine(path: &Path) -> Result<Engine> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read experiments file {}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "experiments file {} is {} bytes; at most {MAX_FILE_BYTES} are read — split it or remove finished experiments",
            path.display(),
            meta.len()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read experiments file {}", path.display()))?;
    let config: ExperimentsConfig = toml::from_str(&text)
        .with_context(|| format!("experiments file {} is not valid (see docs/experiments.md)", path.display()))?;
    let mut problems = unknown_operations(&config);
    let engine = match Engine::new(knobs::specs(), &config) {
        Ok(e) => Some(e),
        Err(ConfigError::Invalid(list)) => {
            problems.extend(list);
            None
        }
        Err(e) => bail!("{e}"),
    };
    match engine {
        Some(e) if problems.is_empty() => Ok(e),
        _ => bail!(
            "experiments file {}: {} problem(s):\n  - {}\n(knobs: `gemba experiment knobs`; fields: docs/experiments.md)",
            path.display(),
            problems.len(),
            problems.join("\n  - ")
        ),
    }
}

/// `operations` must name Gemba's tools.
fn unknown_operations(config: &ExperimentsConfig) -> Vec<String> {
    let mut out = Vec::new();
    for e in &config.experiments {
        for op in e.operations.iter().filter(|op| !crate::catalog::NAMES.contains(&op.as_str())) {
            let near = sheets::error::closest(op, crate::catalog::NAMES.iter().copied(), 1);
            let hint = near.first().map(|n| format!(" — did you mean '{n}'?")).unwrap_or_default();
            out.push(format!("experiment '{}': operation '{op}' is not a Gemba tool{hint}", e.name));
        }
    }
    out
}

/// Starts the experiments of `path`: validated, resumed from the state database in
/// `state_dir` (experiments whose definition changed start afresh, and the log says so), and
/// saved once so `gemba experiment status` sees them at once.
pub fn start(path: &Path, state_dir: &Path) -> Result<(Arc<Experiments>, Option<ExperimentStore>)> {
    let engine = load_engine(path)?;
    let names: Vec<String> = engine.plan().experiments.iter().map(|e| e.name.clone()).collect();
    let experiments = Arc::new(Experiments { engine, file: path.to_path_buf() });
    let store = std::fs::create_dir_all(state_dir)
        .map_err(anyhow::Error::from)
        .and_then(|_| ExperimentStore::open(&state_dir.join("gemba.db")).map_err(anyhow::Error::from));
    let mut store = match store {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("experiments run without saved state (a restart starts them afresh): {e:#}");
            return Ok((experiments, None));
        }
    };
    match store.load() {
        Ok((saved, notes)) => {
            for n in notes.iter().chain(&experiments.engine.restore(&saved)) {
                tracing::warn!("{n}");
            }
        }
        Err(e) => tracing::warn!("cannot read saved experiment state; starting afresh: {e}"),
    }
    let keep: Vec<&str> = names.iter().map(String::as_str).collect();
    if let Err(e) = store.forget_except(&keep).and_then(|_| store.save(&experiments.engine.save_state())) {
        tracing::warn!("cannot save experiment state: {e}");
    }
    tracing::info!("{} experiment(s) from {}", names.len(), path.display());
    Ok((experiments, Some(store)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/experiments")
    }

    #[test]
    fn the_example_files_are_valid() {
        let mut n = 0;
        for entry in std::fs::read_dir(examples()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load_engine(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 4, "{n} example files");
    }

    #[test]
    fn every_problem_is_listed() {
        let dir = std::env::temp_dir().join(format!("gemba-exp-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(
            &bad,
            "[[experiment]]\nname = \"x\"\nkind = \"flag\"\nknob = \"cache_mode\"\non = \"sometimes\"\nshare = 0.1\n\
             operations = [\"read_tabel\"]\n\
             [[experiment]]\nname = \"y\"\nkind = \"flag\"\nknob = \"turbo\"\nshare = 0.1\n",
        )
        .unwrap();
        let e = format!("{:#}", load_engine(&bad).err().unwrap());
        assert!(e.contains("5 problem(s)"), "{e}");
        for want in ["did you mean 'read_table'", "normal, bypass", "unknown knob 'turbo'", "nothing would change"] {
            assert!(e.contains(want), "{want}: {e}");
        }
        std::fs::write(&bad, "[[experiment]]\nname = \"x\"\nkind = \"coin\"\n").unwrap();
        assert!(format!("{:#}", load_engine(&bad).err().unwrap()).contains("coin"));
        assert!(load_engine(&dir.join("missing.toml")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
