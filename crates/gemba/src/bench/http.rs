//! `gemba bench --only http`: the HTTP throughput bar of issue 18 as a figure anyone can rerun.
//! `gemba serve --http` on the example workspace, and `gemba loadtest` (a process of its own,
//! on the same machine, as the bar says) driving `examples/loadtest/gemba-reads.toml`:
//! - an open loop at 5,000 calls/s (latency counted from each call's due time), and
//! - a closed loop of 8 workers (capacity),
//!
//! each in both lifecycles (legacy sessions with event streams; the 2026-07-28 era, stateless,
//! JSON answers), rounds interleaved so the machine's drift falls on all of them; the medians
//! are reported with the load average seen before each run (other work on the machine shows
//! there). Bars, per lifecycle: the closed loop (capacity) reaches ≥ 5,000 calls/s with p99 ≤ 20 ms
//! and ≤ 1 % errors (the bar: calls/s with their p99); the open loop, the stricter check
//! of the same claim, delivers ≥ 99 % of 5,000/s with p99 ≤ 20 ms and ≤ 1 % errors, so the tail
//! at exactly the bar's rate is judged too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{median, server_exe};

/// The scenario the bar names, built in (so the bench runs from any directory).
const SCENARIO: &str = include_str!("../../../../examples/loadtest/gemba-reads.toml");
/// Arrival rate of the open loop.
const RATE: f64 = 5_000.0;
/// Most calls outstanding in the open loop; workers of the closed loop.
const OPEN_CONCURRENCY: usize = 64;
const CLOSED_WORKERS: usize = 8;
/// Length of one run, and rounds per configuration.
const RUN: &str = "8s";
const ROUNDS: usize = 3;
/// The bar.
const MAX_P99_MS: f64 = 20.0;
const MIN_DELIVERED: f64 = 0.99;
const MAX_ERRORS: f64 = 0.01;

/// The server, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `gemba serve --http 127.0.0.1:0` on `workspace` and read its URL from its stderr.
fn start_server(workspace: &Path, state: &Path) -> Result<(Server, String)> {
    let mut child = Command::new(server_exe()?)
        .arg("serve")
        .arg("--http")
        .arg("127.0.0.1:0")
        .arg("--workspace")
        .arg(workspace)
        .arg("--state-dir")
        .arg(state)
        .env("GEMBA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start gemba serve --http")?;
    let stderr = child.stderr.take().context("no stderr from gemba serve")?;
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(url) = line.split("listening on ").nth(1) {
                let _ = tx.send(url.trim().to_string());
                sent = true;
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).context("gemba serve --http did not say where it listens")?;
    Ok((server, url))
}

/// The 1-minute load average now (Linux; NaN elsewhere).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

#[derive(Clone, Copy)]
struct Config {
    closed: bool,
    lifecycle: &'static str,
}

impl Config {
    fn name(&self) -> String {
        let era = if self.lifecycle == "discover" { "2026-07-28 (stateless, JSON)" } else { "legacy (sessions, SSE)" };
        if self.closed {
            format!("closed loop, {CLOSED_WORKERS} workers, {era}")
        } else {
            format!("open loop at {RATE:.0}/s, {era}")
        }
    }
}

/// One `gemba loadtest` run; its JSON report's totals.
fn loadtest(url: &str, scenario: &Path, out: &Path, c: Config) -> Result<Value> {
    let exe = std::env::current_exe().context("cannot find the gemba binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("loadtest").arg("--url").arg(url).arg("--scenario").arg(scenario).arg("--duration").arg(RUN);
    cmd.arg("--lifecycle").arg(c.lifecycle).arg("--quiet").arg("--json").arg(out);
    if c.closed {
        cmd.arg("--closed").arg("--concurrency").arg(CLOSED_WORKERS.to_string());
    } else {
        cmd.arg("--rate").arg(format!("{RATE}/s")).arg("--concurrency").arg(OPEN_CONCURRENCY.to_string());
    }
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).status().context("cannot run gemba loadtest")?;
    if !status.success() {
        bail!("gemba loadtest failed ({status})");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out)?)?;
    Ok(report["result"]["total"].clone())
}

pub fn http_throughput(dir: &Path, report: &mut serde_json::Map<String, Value>) -> Result<Vec<(String, bool)>> {
    let workspace = dir.join("example");
    if !workspace.join("sales.xlsx").exists() {
        super::workloads::write_example(&workspace)?;
    }
    let tmp: PathBuf = std::env::temp_dir().join(format!("gemba-bench-http-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let scenario = tmp.join("gemba-reads.toml");
    std::fs::write(&scenario, SCENARIO)?;
    let (server, url) = start_server(&workspace, &tmp.join("state"))?;
    let configs = [
        Config { closed: false, lifecycle: "initialize" },
        Config { closed: false, lifecycle: "discover" },
        Config { closed: true, lifecycle: "initialize" },
        Config { closed: true, lifecycle: "discover" },
    ];
    outln!("== HTTP throughput: {url}, examples/loadtest/gemba-reads.toml, gemba loadtest in its own process ==");
    // Warm the workbook and the connections first.
    let out = tmp.join("run.json");
    loadtest(&url, &scenario, &out, Config { closed: true, lifecycle: "initialize" })?;
    let mut runs: Vec<Vec<(Value, f64)>> = vec![Vec::new(); configs.len()];
    for round in 0..ROUNDS {
        for k in 0..configs.len() {
            // Each round starts one further along, so no configuration always runs first.
            let i = (k + round) % configs.len();
            let load = load_average();
            let total = loadtest(&url, &scenario, &out, configs[i])?;
            outln!(
                "  round {} {:<52} {:>8.0} calls/s  p50 {:>6.2} ms  p99 {:>7.2} ms  errors {}  (load average {load:.1})",
                round + 1,
                configs[i].name(),
                total["throughput"].as_f64().unwrap_or(0.0),
                total["p50_ms"].as_f64().unwrap_or(f64::NAN),
                total["p99_ms"].as_f64().unwrap_or(f64::NAN),
                total["count"].as_u64().unwrap_or(0).saturating_sub(total["ok"].as_u64().unwrap_or(0)),
            );
            runs[i].push((total, load));
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&tmp);
    let mut bars = Vec::new();
    let mut figures = Vec::new();
    for (c, rs) in configs.iter().zip(&runs) {
        let of = |k: &str| median(rs.iter().map(|(t, _)| t[k].as_f64().unwrap_or(f64::NAN)).collect());
        let errors = median(
            rs.iter()
                .map(|(t, _)| {
                    let count = t["count"].as_f64().unwrap_or(0.0);
                    if count > 0.0 { 1.0 - t["ok"].as_f64().unwrap_or(0.0) / count } else { 1.0 }
                })
                .collect(),
        );
        let load = median(rs.iter().map(|(_, l)| *l).collect());
        let (rate, p50, p99) = (of("throughput"), of("p50_ms"), of("p99_ms"));
        outln!(
            "{:<60} median of {ROUNDS}: {rate:>8.0} calls/s  p50 {p50:.2} ms  p99 {p99:.2} ms  errors {:.2} %  load average {load:.1}",
            c.name(),
            errors * 100.0
        );
        figures.push(json!({"config": c.name(), "closed": c.closed, "lifecycle": c.lifecycle, "calls_per_s": rate,
            "p50_ms": p50, "p99_ms": p99, "error_rate": errors, "load_average": load}));
        let era = if c.lifecycle == "discover" { "2026-07-28 era" } else { "legacy sessions" };
        if c.closed {
            bars.push((
                format!("HTTP closed loop, 8 workers ({era}): >= 5,000 calls/s, p99 <= 20 ms, errors <= 1 %"),
                rate >= RATE && p99 <= MAX_P99_MS && errors <= MAX_ERRORS,
            ));
        } else {
            bars.push((
                format!("HTTP open loop at 5,000 calls/s ({era}): delivered, p99 <= 20 ms, errors <= 1 %"),
                rate >= RATE * MIN_DELIVERED && p99 <= MAX_P99_MS && errors <= MAX_ERRORS,
            ));
        }
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    report.insert("http".into(), json!({"url": url, "rounds": ROUNDS, "run": RUN, "cores": cores, "figures": figures}));
    Ok(bars)
}
