//! Recalculation-fidelity benchmark for formula engines: two in-process Rust engines and
//! LibreOffice headless.
//!
//! ```text
//! recalc-fidelity run --corpus DIR [--json] [--engines ironcalc,formualizer,libreoffice]
//!                     [--timeout-secs 30] [--memory-mb 4096] [--all-producers]
//! recalc-fidelity one --engine ENGINE [--lo-dir DIR] FILE  (child: one engine on one file)
//! recalc-fidelity scan FILE                                (child: calamine scan of one file)
//! ```

mod bench;
mod cached;
mod child;
mod engines;
mod libreoffice;
mod report;
mod runner;
mod value;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use crate::bench::RunConfig;
use crate::engines::{EngineKind, EngineOptions};
use crate::runner::Limits;

const USAGE: &str = "usage:
  recalc-fidelity run --corpus DIR [--json] [--engines ironcalc,formualizer,libreoffice]
                      [--timeout-secs 30] [--memory-mb 4096] [--all-producers]
  recalc-fidelity one --engine ENGINE [--lo-dir DIR] FILE
  recalc-fidelity scan FILE";

/// Stack of the thread that loads and evaluates in a child; deep dependency chains recurse.
const WORKER_STACK_BYTES: usize = 256 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("run") => run_command(&args[1..]),
        Some("one") => one_command(&args[1..]),
        Some("scan") => scan_command(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => return Err(usage("expected a command: run, one or scan")),
    }
}

fn run_command(args: &[String]) -> Result<()> {
    let (config, json) = parse_run_args(args)?;
    let rows = bench::run(&config)?;
    let summaries = report::summarize(&config.engines, &rows);
    if json {
        println!("{}", report::render_json(&config, &rows, &summaries)?);
    } else {
        print!("{}", report::render_table(&rows, &summaries));
    }
    Ok(())
}

fn parse_run_args(args: &[String]) -> Result<(RunConfig, bool)> {
    let mut corpus = None;
    let mut json = false;
    let mut all_producers = false;
    let mut engines = EngineKind::ALL.to_vec();
    let mut limits = Limits { timeout: Duration::from_secs(30), memory_mb: 4096 };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--corpus" => corpus = Some(PathBuf::from(value()?)),
            "--json" => json = true,
            "--all-producers" => all_producers = true,
            "--engines" => engines = value()?.split(',').map(str::parse).collect::<Result<_>>()?,
            "--timeout-secs" => limits.timeout = Duration::from_secs(value()?.parse().context("--timeout-secs")?),
            "--memory-mb" => limits.memory_mb = value()?.parse().context("--memory-mb")?,
            other => return Err(usage(format!("unknown argument '{other}'"))),
        }
    }
    let corpus = corpus.context("--corpus DIR is required")?;
    Ok((RunConfig { corpus, engines, limits, all_producers }, json))
}

fn one_command(args: &[String]) -> Result<()> {
    let (engine, options, file) = parse_one_args(args)?;
    print_json_line(&in_worker(move || child::run_one(engine, &file, &options))?)
}

/// `--engine ENGINE [--lo-dir DIR] FILE`.
fn parse_one_args(args: &[String]) -> Result<(EngineKind, EngineOptions, PathBuf)> {
    let (engine, lo_dir, file) = match args {
        [flag, engine, file] if flag == "--engine" => (engine, None, file),
        [flag, engine, option, dir, file] if flag == "--engine" && option == "--lo-dir" => {
            (engine, Some(PathBuf::from(dir)), file)
        }
        _ => return Err(usage("expected: one --engine ENGINE [--lo-dir DIR] FILE")),
    };
    Ok((engine.parse()?, EngineOptions { lo_dir }, PathBuf::from(file)))
}

fn scan_command(args: &[String]) -> Result<()> {
    let [file] = args else {
        return Err(usage("expected: scan FILE"));
    };
    let file = PathBuf::from(file);
    print_json_line(&in_worker(move || child::scan(&file))?)
}

/// An argument error, with the usage text appended.
fn usage(message: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{message}\n\n{USAGE}")
}

/// Runs child work on a thread with a large stack, with panics recorded by the hook.
fn in_worker<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    child::install_panic_hook();
    let handle = std::thread::Builder::new().stack_size(WORKER_STACK_BYTES).spawn(work).context("spawning worker")?;
    handle.join().map_err(|_| anyhow!("worker thread panicked"))
}

fn print_json_line<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
