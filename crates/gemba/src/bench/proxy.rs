//! `gemba bench --only proxy`: what `gemba proxy` costs. The same upstream (`gemba serve
//! --stdio` on the bench workloads) is driven direct and through `gemba proxy` (measurement
//! on) in one run: per-call latency (alternating calls, so drift falls on both) and throughput
//! (eight callers for a fixed time, alternating rounds) of a near-free call and of a typical
//! read. Bars: ≤ 100 µs per call at p50 and ≤ 5 % of the typical read's throughput.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use serde_json::{Value, json};

use super::{Client, call, id_of, median, ms, start_with};

/// Callers at once for the throughput figure.
const CALLERS: usize = 8;
/// Length of one throughput round.
const ROUND: Duration = Duration::from_secs(2);
/// Throughput rounds per side.
const ROUNDS: usize = 3;

/// `gemba proxy -- gemba serve --stdio --workspace dir`, with its request log in a temp dir.
async fn start_proxied(dir: &Path) -> Result<Client> {
    let exe = std::env::current_exe().context("cannot find the gemba binary")?;
    let base = std::env::temp_dir().join(format!("gemba-bench-proxy-{}", std::process::id()));
    let cmd = tokio::process::Command::new(&exe).configure(|c| {
        c.arg("proxy").arg("--state-dir").arg(base.join("proxy")).arg("--name").arg("bench").arg("--");
        c.arg(&exe).arg("serve").arg("--stdio").arg("--workspace").arg(dir).arg("--state-dir").arg(base.join("up"));
        c.env("GEMBA_LOG", "warn");
    });
    let transport = TokioChildProcess::new(cmd).context("cannot start gemba proxy")?;
    ().serve(transport).await.context("MCP handshake through gemba proxy failed")
}

/// Calls completed by `CALLERS` callers in `ROUND`.
pub(super) async fn throughput(client: &Client, tool: &str, args: &Value) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let peer = client.peer().clone();
        let (stop, done) = (stop.clone(), done.clone());
        let p =
            CallToolRequestParams::new(tool.to_string()).with_arguments(args.as_object().cloned().unwrap_or_default());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if peer.call_tool(p.clone()).await.is_err() {
                    break;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / secs
}

pub async fn proxy_overhead(
    dir: &Path,
    warm: usize,
    report: &mut serde_json::Map<String, Value>,
) -> Result<Vec<(String, bool)>> {
    let (direct, _) = start_with(dir, &[]).await?;
    let proxied = start_proxied(dir).await?;
    let id = id_of(&direct, "sales_100k.xlsx").await?;
    // A cheap call (the workbook's sheets, cached after the first), so the proxy's share shows.
    let tool = "list_sheets";
    let args = json!({"workbook_id": id});
    for c in [&direct, &proxied] {
        for _ in 0..20 {
            call(c, tool, &args).await?;
        }
    }
    let rounds = (warm * 25).max(500);
    let (mut d, mut p) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for i in 0..rounds {
        if i % 2 == 0 {
            d.push(ms(call(&direct, tool, &args).await?.0));
            p.push(ms(call(&proxied, tool, &args).await?.0));
        } else {
            p.push(ms(call(&proxied, tool, &args).await?.0));
            d.push(ms(call(&direct, tool, &args).await?.0));
        }
    }
    let (md, mp) = (median(d), median(p));
    let extra_us = (mp - md) * 1000.0;
    outln!(
        "{tool} over stdio, {rounds} alternating calls each: direct p50 {md:.3} ms, through gemba proxy {mp:.3} ms; {extra_us:+.1} µs per call"
    );
    // Throughput of a near-free call (the proxy's share at its largest: on a machine whose
    // cores the server already fills, every µs of the proxy's CPU is a call less) and of a
    // typical read (100 rows of a table), each with every core busy.
    let read_args = json!({"workbook_id": id, "sheet_name": "Sales", "limit": 100});
    let mut figures = Vec::new();
    for (name, args) in [(tool, &args), ("read_table", &read_args)] {
        for c in [&direct, &proxied] {
            call(c, name, args).await?;
        }
        let (mut td, mut tp) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            td.push(throughput(&direct, name, args).await);
            tp.push(throughput(&proxied, name, args).await);
        }
        let (rd, rp) = (median(td), median(tp));
        let loss = 1.0 - rp / rd;
        outln!(
            "{name} throughput, {CALLERS} callers, {ROUNDS} alternating rounds of {:.0} s: direct {rd:.0}/s, through gemba proxy {rp:.0}/s; {:.1} % lower",
            ROUND.as_secs_f64(),
            loss * 100.0
        );
        figures.push(json!({"tool": name, "direct_per_s": rd, "proxied_per_s": rp, "throughput_loss": loss}));
    }
    let loss = figures.last().and_then(|f| f["throughput_loss"].as_f64()).unwrap_or(f64::NAN);
    report.insert(
        "proxy".into(),
        json!({"tool": tool, "direct_p50_ms": md, "proxied_p50_ms": mp, "overhead_us": extra_us,
               "calls": rounds, "throughput": figures}),
    );
    direct.cancel().await.ok();
    proxied.cancel().await.ok();
    Ok(vec![
        ("gemba proxy adds <= 100 µs per call at p50".to_string(), extra_us <= 100.0),
        ("gemba proxy costs <= 5 % of read_table throughput".to_string(), loss <= 0.05),
    ])
}
