//! The performance regression gate: `gemba bench --baseline bench/baseline.json`.
//!
//! Wall-clock time on a shared 2-core machine swings by ±30 % between reruns of one build, so
//! a 10 % gate on it either fails at random or is too loose to catch anything. The gate counts
//! instructions instead: it runs `gemba serve --stdio` under valgrind (cachegrind, no cache
//! simulation), which counts every instruction the server executes whatever else the machine
//! is doing, and needs no hardware counters (which virtual machines here do not expose).
//!
//! Each figure is a difference of two runs of the server that differ only in how many times
//! the measured call is made, divided by that difference: start-up, workspace scan, handshake
//! and warm-up cancel out, and what is left is the cost of one call. Reruns of one build agree
//! within a fraction of a percent (thread interleaving and hash seeds are the only variation),
//! so a figure more than 10 % above the baseline is a regression, not noise. A figure that
//! looks worse is measured once more before it counts.
//!
//! What it does not see: time spent waiting (disk, locks, sleeps) and memory-bound slowdowns
//! that do not change the instruction count. `gemba bench` reports wall-clock figures for those.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rmcp::ServiceExt;
use serde_json::{Value, json};

use super::{Client, call, id_of, server_exe, workloads};

/// A figure is a regression when it is this much worse than the baseline.
const THRESHOLD: f64 = 0.10;
/// Measurements of a figure that looks worse before the gate believes it.
const ATTEMPTS: usize = 2;
/// The big sheet of the full-load figure, in a workspace of its own (so the other figures'
/// workspace stays as small as it was).
const BIG_FILE: &str = "sales_100k.xlsx";
/// One server run under valgrind may take this long before the gate gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// One gate figure: `setup` runs once per server, then `unit` runs `reps` times.
#[derive(Clone, Copy)]
struct Figure {
    name: &'static str,
    about: &'static str,
    /// How many more units the measured run makes than the base run.
    reps: u64,
}

const FIGURES: &[Figure] = &[
    Figure { name: "list_workbooks", about: "list the workspace (2 workbooks)", reps: 100 },
    Figure { name: "read_table_100", about: "warm read_table of 100 rows, sales_10k", reps: 20 },
    Figure { name: "find_value_miss", about: "warm find_value that scans 10,000 rows and misses", reps: 50 },
    Figure { name: "sheet_overview_summary", about: "warm sheet_overview of the model's Summary sheet", reps: 100 },
    Figure { name: "cold_read_10k", about: "first sheet_page of sales_10k: parse, index, answer", reps: 1 },
    Figure { name: "load_100k", about: "first read of the last rows of sales_100k: the whole sheet loads", reps: 1 },
    Figure { name: "fork_edit_100", about: "edit_batch of 100 cells on a fork of the model", reps: 30 },
    Figure { name: "fork_recalc", about: "edit 100 inputs, then recalculate ~8,000 formulas", reps: 8 },
    Figure { name: "fork_save", about: "edit one cell, then save_fork of the recalculated model", reps: 3 },
];

/// The ids a run's units need.
struct Ids {
    sales: String,
    fork: Option<String>,
    model: Option<String>,
}

async fn setup(client: &Client, fig: &Figure) -> Result<Ids> {
    let sales = id_of(client, if fig.name == "load_100k" { BIG_FILE } else { "sales_10k.xlsx" }).await?;
    let mut ids = Ids { sales, fork: None, model: None };
    if fig.name.starts_with("fork") || fig.name == "sheet_overview_summary" {
        let model = id_of(client, "model.xlsx").await?;
        if fig.name == "sheet_overview_summary" {
            ids.model = Some(model);
        } else {
            let (_, r) = call(client, "create_fork", &json!({"workbook_id": model})).await?;
            let fork = r.structured_content.as_ref().and_then(|v| v["fork_id"].as_str()).context("no fork id")?;
            ids.fork = Some(fork.to_string());
        }
    }
    // One unit to warm caches, engines and allocators; it is in both runs, so it cancels.
    if fig.name != "cold_read_10k" && fig.name != "load_100k" {
        unit(client, fig, &ids, 0).await?;
    }
    Ok(ids)
}

async fn unit(client: &Client, fig: &Figure, ids: &Ids, round: u64) -> Result<()> {
    let fork = ids.fork.as_deref().unwrap_or_default();
    let edits = || (2..102).map(|r| format!("A{r}={}", r + round)).collect::<Vec<_>>();
    match fig.name {
        "list_workbooks" => call(client, "list_workbooks", &json!({})).await.map(drop),
        "read_table_100" => {
            let args = json!({"workbook_id": ids.sales, "sheet_name": "Sales", "limit": 100});
            call(client, "read_table", &args).await.map(drop)
        }
        "find_value_miss" => {
            let args = json!({"workbook_id": ids.sales, "sheet_name": "Sales", "query": "no such value anywhere"});
            call(client, "find_value", &args).await.map(drop)
        }
        "sheet_overview_summary" => {
            let args = json!({"workbook_id": ids.model.as_deref().unwrap_or_default(), "sheet_name": "Summary"});
            call(client, "sheet_overview", &args).await.map(drop)
        }
        "cold_read_10k" => {
            call(client, "sheet_page", &json!({"workbook_id": ids.sales, "page_size": 50})).await.map(drop)
        }
        "load_100k" => {
            let args = json!({"workbook_id": ids.sales, "sheet_name": "Sales", "ranges": ["A99993:L100002"]});
            call(client, "range_values", &args).await.map(drop)
        }
        "fork_edit_100" => {
            call(client, "edit_batch", &json!({"fork_id": fork, "sheet_name": "Calc", "edits": edits()}))
                .await
                .map(drop)
        }
        "fork_recalc" => {
            call(client, "edit_batch", &json!({"fork_id": fork, "sheet_name": "Calc", "edits": edits()})).await?;
            call(client, "recalculate", &json!({"fork_id": fork})).await.map(drop)
        }
        "fork_save" => {
            // A fresh edit each time, so the sheet is spliced again rather than reused.
            if round == 0 {
                call(client, "recalculate", &json!({"fork_id": fork})).await?;
            }
            let edit = json!({"fork_id": fork, "sheet_name": "Calc", "edits": [format!("A2={round}")]});
            call(client, "edit_batch", &edit).await?;
            let target = format!("out/gate-{round}.xlsx");
            call(client, "save_fork", &json!({"fork_id": fork, "target_path": target})).await.map(drop)
        }
        other => bail!("no such gate figure '{other}'"),
    }
}

/// Instructions one server run executed: setup, then `reps` units.
async fn run_counted(ws: &Path, fig: &Figure, reps: u64, env: &[(String, String)]) -> Result<u64> {
    let exe = server_exe()?;
    // Outside the workspace, or its scan would find the forks' files in the state directory.
    let scratch = ws.with_file_name("gate-runs").join(format!("{}-{reps}", fig.name));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let _ = std::fs::remove_dir_all(ws.join("out"));
    std::fs::create_dir_all(ws.join("out"))?;
    let log = scratch.join("valgrind.log");
    let mut cmd = tokio::process::Command::new("valgrind");
    cmd.arg("--tool=cachegrind")
        .arg("--cache-sim=no")
        .arg("--cachegrind-out-file=/dev/null")
        .arg(format!("--log-file={}", log.display()))
        .arg(&exe)
        .arg("serve")
        .arg("--stdio")
        .arg("--workspace")
        .arg(ws)
        .arg("--state-dir")
        .arg(scratch.join("state"))
        // Under valgrind on a busy machine a call can take 50-100x its usual time: budgets
        // are for agents, not for this count.
        .args(["--timeout-ms", "600000", "--load-timeout-ms", "600000"])
        .env("GEMBA_LOG", "error")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        anyhow::anyhow!(
            "cannot start valgrind ({e}): the gate counts instructions with it; install Debian's valgrind package"
        )
    })?;
    let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
    let (Some(stdin), Some(stdout)) = (stdin, stdout) else { bail!("valgrind's pipes are missing") };
    let work = async {
        let client: Client = ().serve((stdout, stdin)).await.context("MCP handshake with gemba under valgrind")?;
        let ids = setup(&client, fig).await?;
        for round in 1..=reps {
            unit(&client, fig, &ids, round).await?;
        }
        // Closing the transport closes the server's stdin: it exits and valgrind writes its count.
        client.cancel().await.ok();
        anyhow::Ok(())
    };
    tokio::time::timeout(RUN_LIMIT, work)
        .await
        .with_context(|| format!("{} under valgrind took over {RUN_LIMIT:?}", fig.name))??;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .context("gemba did not exit after its stdin closed")??;
    if !status.success() {
        bail!("gemba under valgrind exited with {status}; see {}", log.display());
    }
    let text = std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let count = instructions(&text).with_context(|| format!("no instruction count in {}", log.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(count)
}

/// The "I refs" total from a cachegrind log ("==123== I   refs:      12,774,982").
fn instructions(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("I   refs:") || l.contains("I refs:"))?;
    let digits: String = line.rsplit(':').next()?.chars().filter(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Instructions per unit of one figure: the difference of a run with `reps` more units.
async fn measure(ws: &Path, fig: &Figure, env: &[(String, String)]) -> Result<f64> {
    let base = run_counted(ws, fig, 0, env).await?;
    let more = run_counted(ws, fig, fig.reps, env).await?;
    if more <= base {
        bail!("{}: {} more calls counted no more instructions ({more} vs {base})", fig.name, fig.reps);
    }
    Ok((more - base) as f64 / fig.reps as f64)
}

pub struct GateOptions {
    pub baseline: PathBuf,
    pub update: bool,
    /// Only these figures (all when empty).
    pub only: Vec<String>,
}

/// Run the gate; with `update`, write the figures as the new baseline. Returns whether it passed.
pub async fn gate(dir: &Path, opts: &GateOptions) -> Result<bool> {
    let ws = dir.join("gate");
    if !ws.join("model.xlsx").exists() {
        workloads::write_gate(&ws)?;
    }
    let big_ws = dir.join("gate-big");
    if !big_ws.join(BIG_FILE).exists() {
        std::fs::create_dir_all(&big_ws)?;
        workloads::write_sales_book(&big_ws.join(BIG_FILE), 100_000, 2)?;
    }
    let ws_of = |fig: &Figure| if fig.name == "load_100k" { big_ws.clone() } else { ws.clone() };
    let figures: Vec<&Figure> =
        FIGURES.iter().filter(|f| opts.only.is_empty() || opts.only.iter().any(|o| o == f.name)).collect();
    if figures.is_empty() {
        let names: Vec<&str> = FIGURES.iter().map(|f| f.name).collect();
        bail!("no gate figure matches {:?}; the figures are {}", opts.only, names.join(", "));
    }
    let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("GEMBA_TEST_BURN")).collect();
    let started = Instant::now();
    if opts.update {
        // Figures not measured this time (--figure) keep their old values.
        let mut map = std::fs::read_to_string(&opts.baseline)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|d| d["figures"].as_object().cloned())
            .unwrap_or_default();
        for fig in &figures {
            let v = measure(&ws_of(fig), fig, &env).await?;
            outln!("{:18} {v:>14.0}  {}", fig.name, fig.about);
            map.insert(fig.name.into(), json!(v.round()));
        }
        let doc = json!({
            "about": "gemba bench --baseline: instructions per call, counted under valgrind (lower is better); regenerate with --update-baseline",
            "threshold": THRESHOLD,
            "figures": map,
        });
        std::fs::write(&opts.baseline, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("cannot write {}", opts.baseline.display()))?;
        outln!("baseline written to {} in {:.0}s", opts.baseline.display(), started.elapsed().as_secs_f64());
        return Ok(true);
    }
    let text = std::fs::read_to_string(&opts.baseline).with_context(|| {
        format!("cannot read the baseline {}; create it with --update-baseline", opts.baseline.display())
    })?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", opts.baseline.display()))?;
    let threshold = doc["threshold"].as_f64().unwrap_or(THRESHOLD);
    let mut passed = true;
    outln!("{:18} {:>14} {:>14} {:>8}  verdict", "figure (instr.)", "baseline", "now", "change");
    for fig in figures {
        let Some(base) = doc["figures"][fig.name].as_f64() else {
            outln!(
                "{:18} {:>14} {:>14.0} {:>8}  new (not in the baseline)",
                fig.name,
                "-",
                measure(&ws_of(fig), fig, &env).await?,
                "-"
            );
            continue;
        };
        let mut best = measure(&ws_of(fig), fig, &env).await?;
        let mut attempts = 1;
        while best > base * (1.0 + threshold) && attempts < ATTEMPTS {
            best = best.min(measure(&ws_of(fig), fig, &env).await?);
            attempts += 1;
        }
        let change = best / base - 1.0;
        let ok = best <= base * (1.0 + threshold);
        passed &= ok;
        let verdict = if !ok {
            format!("REGRESSION ({attempts} measurements)")
        } else if change < -threshold {
            "better: update the baseline to keep this gain".to_string()
        } else {
            "ok".to_string()
        };
        outln!("{:18} {base:>14.0} {best:>14.0} {:>+7.1}%  {verdict}", fig.name, change * 100.0);
    }
    outln!("{} performance gate ({:.0}s)", if passed { "PASS" } else { "FAIL" }, started.elapsed().as_secs_f64());
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::instructions;

    #[test]
    fn reads_the_count_from_a_cachegrind_log() {
        let log = "==16839== Cachegrind, a cache profiler\n==16839== \n==16839== I   refs:      12,774,982\n";
        assert_eq!(instructions(log), Some(12_774_982));
        assert_eq!(instructions("==1== nothing here\n"), None);
    }
}
