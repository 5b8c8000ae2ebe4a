//! `gemba bench --only proxy`: what `gemba proxy` costs. The same upstream (`gemba serve
//! --stdio` on the bench workloads) is driven direct and through `gemba proxy` (measurement
//! on) in one run: per-call latency (alternating calls, so drift falls on both) and throughput
//! (eight callers for a fixed time, rounds alternating direct/proxied and which goes first, the
//! median of each side) of a near-free call and of a typical read, with the CPU time the proxy
//! process spends per call (from /proc, so where its cost goes can be followed across
//! changes). Bars: ≤ 100 µs per call at p50 and ≤ 5 % of the typical read's throughput.

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
const ROUNDS: usize = 5;

/// `gemba proxy -- gemba serve --stdio --workspace dir`, with its request log in a temp dir.
async fn start_proxied(dir: &Path) -> Result<(Client, u32)> {
    let exe = std::env::current_exe().context("cannot find the gemba binary")?;
    let base = std::env::temp_dir().join(format!("gemba-bench-proxy-{}", std::process::id()));
    let cmd = tokio::process::Command::new(&exe).configure(|c| {
        c.arg("proxy").arg("--state-dir").arg(base.join("proxy")).arg("--name").arg("bench").arg("--");
        c.arg(&exe).arg("serve").arg("--stdio").arg("--workspace").arg(dir).arg("--state-dir").arg(base.join("up"));
        c.env("GEMBA_LOG", "warn");
    });
    let transport = TokioChildProcess::new(cmd).context("cannot start gemba proxy")?;
    let pid = transport.id().unwrap_or(0);
    let client = ().serve(transport).await.context("MCP handshake through gemba proxy failed")?;
    Ok((client, pid))
}

/// CPU time (user + system) a process has used so far, in seconds (Linux; `None` elsewhere).
fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after its `)`).
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Calls per second completed by `CALLERS` callers in `ROUND`, and the calls.
pub(super) async fn throughput(client: &Client, tool: &str, args: &Value) -> (f64, u64) {
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
    (n as f64 / secs, n)
}

pub async fn proxy_overhead(
    dir: &Path,
    warm: usize,
    report: &mut serde_json::Map<String, Value>,
) -> Result<Vec<(String, bool)>> {
    let (direct, direct_pid) = start_with(dir, &[]).await?;
    let (proxied, proxy_pid) = start_proxied(dir).await?;
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
        // CPU seconds and calls: the direct server's, and the proxy process's own.
        let (mut server_cpu, mut server_calls, mut proxy_cpu, mut proxy_calls) = (0.0, 0u64, 0.0, 0u64);
        for round in 0..ROUNDS {
            for side in [round % 2, 1 - round % 2] {
                let (client, pid) = if side == 0 { (&direct, direct_pid) } else { (&proxied, proxy_pid) };
                let before = cpu_secs(pid);
                let (rate, n) = throughput(client, name, args).await;
                let used = before.zip(cpu_secs(pid)).map_or(0.0, |(b, a)| a - b);
                if side == 0 {
                    td.push(rate);
                    (server_cpu, server_calls) = (server_cpu + used, server_calls + n);
                } else {
                    tp.push(rate);
                    (proxy_cpu, proxy_calls) = (proxy_cpu + used, proxy_calls + n);
                }
            }
        }
        let (rd, rp) = (median(td), median(tp));
        let loss = 1.0 - rp / rd;
        let per_call = |cpu: f64, n: u64| if n == 0 { f64::NAN } else { cpu * 1e6 / n as f64 };
        let (server_us, proxy_us) = (per_call(server_cpu, server_calls), per_call(proxy_cpu, proxy_calls));
        outln!(
            "{name} throughput, {CALLERS} callers, {ROUNDS} alternating rounds of {:.0} s: direct {rd:.0}/s, through gemba proxy {rp:.0}/s; {:.1} % lower (CPU per call: server {server_us:.1} µs, proxy {proxy_us:.1} µs)",
            ROUND.as_secs_f64(),
            loss * 100.0
        );
        figures.push(json!({"tool": name, "direct_per_s": rd, "proxied_per_s": rp, "throughput_loss": loss,
                           "server_cpu_us_per_call": server_us, "proxy_cpu_us_per_call": proxy_us}));
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
