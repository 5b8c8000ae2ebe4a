//! `gemba bench --only traces`: what exporting traces costs. Two servers on the bench
//! workloads, one with `--otlp-endpoint` (every call sampled) sending to a fast local OTLP sink
//! in this process (it reads each POST and answers 200), one without; throughput of eight
//! callers for a fixed time, in alternating rounds, of a near-free call (thousands a second,
//! where the exporter's share is largest) and of a typical read (the saturation figure).
//!
//! The bar's figure, at the fixed rate: 2,000 calls/s offered to the traced server in
//! alternating rounds whose calls carry a W3C `traceparent` in `_meta` (how MCP clients
//! propagate context) flagged sampled or not sampled. The server follows the caller's decision,
//! so one round's calls are all recorded and exported and the next round's are not, in the same
//! process. The capacity lost is the extra CPU per call over the CPU per call with export on
//! (what a saturated server gives up), over 60 one-second rounds in blocks ordered not
//! sampled, sampled, sampled, not sampled. Bar: ≤ 5 % lost at 2,000/s. Two processes are not
//! compared for this: two identical servers measured this way differ by up to ±10 % in CPU per
//! call (thread placement, memory layout), more than the bar.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::proxy::throughput;
use super::{Client, call, id_of, median, start_with};

/// Rounds per side.
const ROUNDS: usize = 5;
/// Blocks of four fixed-rate rounds per tool, ordered not sampled, sampled, sampled, not
/// sampled (so a steady drift of the machine's state weighs on both sides alike).
const FIXED_BLOCKS: usize = 15;
/// The fixed rate offered (calls per second), as the issue states the bar.
const RATE: u64 = 2000;
/// How long one fixed-rate round offers calls.
const FIXED_ROUND: Duration = Duration::from_secs(1);
/// Most calls in flight at the fixed rate (beyond, an offered call is counted as missed).
const MAX_IN_FLIGHT: usize = 256;

/// CPU time (user + system, all threads, exited ones included) a process has used, in seconds
/// (Linux `/proc`; `None` elsewhere).
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // utime and stime are fields 14 and 15; the command name (field 2) may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// One fixed-rate round: `RATE` calls/s of `tool` offered open-loop for `FIXED_ROUND`, each
/// call's `_meta.traceparent` flagged `sampled` or not; the calls completed, those missed (too
/// many in flight), the server's CPU seconds from the start to the last answer, and those of
/// its exporter thread. Rounds run
/// back to back: the export of a sampled round's last batch (at most one, ~0.3 ms of CPU
/// against ~300 ms per round) may be counted in the round after it.
async fn fixed_rate(
    client: &Client,
    pid: u32,
    tool: &str,
    args: &Value,
    sampled: bool,
) -> Result<(u64, u64, f64, f64)> {
    use rmcp::model::RequestParamsMeta;
    let before = process_cpu_secs(pid).context("cannot read the server's CPU time from /proc")?;
    let exporter = exporter_cpu_secs(pid);
    let gate = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let done = Arc::new(AtomicU64::new(0));
    let mut missed = 0u64;
    let p = rmcp::model::CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (start, mut offered) = (Instant::now(), 0u64);
    let total = RATE * FIXED_ROUND.as_millis() as u64 / 1000;
    let mut tasks = tokio::task::JoinSet::new();
    while offered < total {
        tick.tick().await;
        let due = (RATE as f64 * start.elapsed().as_secs_f64()) as u64;
        while offered < due.min(total) {
            offered += 1;
            let Ok(permit) = gate.clone().try_acquire_owned() else {
                missed += 1;
                continue;
            };
            let (peer, mut p, done) = (client.peer().clone(), p.clone(), done.clone());
            // A trace per call, as an agent's calls would each carry their own.
            p.set_traceparent(&format!(
                "00-{:016x}{offered:016x}-00f067aa0ba902b7-{}",
                pid,
                if sampled { "01" } else { "00" }
            ));
            tasks.spawn(async move {
                let _permit = permit;
                if peer.call_tool(p).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let after = process_cpu_secs(pid).context("cannot read the server's CPU time from /proc")?;
    let exporter = exporter_cpu_secs(pid) - exporter;
    Ok((done.load(Ordering::Relaxed), missed, after - before, exporter))
}

/// CPU seconds the server's exporter thread (`kaizen-otlp`) has used (its scheduler clock, to
/// the nanosecond), or 0 when it has none.
fn exporter_cpu_secs(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    for t in tasks {
        let dir = t.path();
        if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "kaizen-otlp") {
            let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
            return stat.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1e9;
        }
    }
    0.0
}

/// A loopback OTLP/HTTP sink: accepts POSTs, counts them and their bytes, answers 200.
fn sink() -> Result<(u16, Arc<AtomicU64>, Arc<AtomicU64>)> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind the OTLP sink")?;
    let port = l.local_addr()?.port();
    let (posts, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (p, b) = (posts.clone(), bytes.clone());
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut req = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            loop {
                let n = c.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&req[..i]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if req.len() >= i + 4 + len {
                        b.fetch_add(len as u64, Ordering::Relaxed);
                        break;
                    }
                }
            }
            p.fetch_add(1, Ordering::Relaxed);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    Ok((port, posts, bytes))
}

/// CPU seconds a thread of this process has used (`thread`: an id from `/proc/self/task`, or
/// `None` for the calling thread), from the kernel's per-thread clock.
fn thread_cpu_secs(thread: Option<&str>) -> Option<f64> {
    let path = match thread {
        Some(tid) => format!("/proc/self/task/{tid}/stat"),
        None => "/proc/thread-self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / 100.0)
}

/// Calls whose spans the in-process figure builds.
const SPAN_CALLS: usize = 100_000;

/// The tracing code's own cost per call, apart from any server: a tool call's spans in
/// Gemba's shape (the SERVER span with its MCP attributes, four stage children) built and
/// submitted `SPAN_CALLS` times on this thread, then exported to the sink by the exporter
/// thread. Returns CPU µs per call on the caller's side and on the exporter's.
fn span_cost(port: u16) -> Result<(f64, f64)> {
    use kaizen::trace::span::{Span, SpanKind, Value};
    use kaizen::trace::{Endpoint, ExportConfig, Exporter, Resource, SpanId, TraceId};
    let ep = Endpoint { host: "127.0.0.1".into(), port, path: "/v1/traces".into() };
    let res = Resource { attributes: vec![("service.name".into(), Value::Static("bench"))], ..Default::default() };
    let mut cfg = ExportConfig::new(ep, res);
    cfg.queue_capacity = 1 << 20;
    let exporter = Exporter::start(cfg)?;
    // The thread names itself once it runs: look for it for up to 2 s.
    let find = || {
        std::fs::read_dir("/proc/self/task").ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).find(
            |t| std::fs::read_to_string(format!("/proc/self/task/{t}/comm")).is_ok_and(|c| c.trim() == "kaizen-otlp"),
        )
    };
    let mut tid = find();
    for _ in 0..200 {
        if tid.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        tid = find();
    }
    let tid = tid.context("cannot find the exporter thread (kaizen-otlp) in /proc/self/task")?;
    let (caller0, exporter0) = (thread_cpu_secs(None), thread_cpu_secs(Some(&tid)));
    for i in 0..SPAN_CALLS {
        let (trace, id) = (TraceId::random(), SpanId::random());
        let mut root = Span::new(trace, Some(SpanId::random()), "tools/call list_sheets", 1, 2);
        root.span_id = id;
        root.kind = SpanKind::Server;
        root.attributes = Vec::with_capacity(8);
        root.attributes.extend([
            ("mcp.method.name", Value::Static("tools/call")),
            ("gen_ai.tool.name", Value::Static("list_sheets")),
            ("gen_ai.operation.name", Value::Static("execute_tool")),
            ("mcp.session.id", Value::Hex64(7)),
            ("jsonrpc.request.id", Value::Decimal(i as i64)),
            ("mcp.protocol.version", Value::Static("2025-06-18")),
            ("network.transport", Value::Static("pipe")),
        ]);
        let mut spans = Vec::with_capacity(8);
        spans.push(root);
        for stage in ["validate", "load", "extract", "serialize"] {
            spans.push(Span::new(trace, Some(id), stage, 1, 2));
        }
        exporter.submit(spans);
    }
    let caller = thread_cpu_secs(None).zip(caller0).map(|(b, a)| b - a);
    exporter.flush(Duration::from_secs(30));
    let spent = thread_cpu_secs(Some(&tid)).zip(exporter0).map(|(b, a)| b - a);
    let dropped: u64 = exporter.stats().dropped().iter().map(|(_, n)| n).sum();
    if dropped > 0 {
        anyhow::bail!("the in-process span figure dropped {dropped} spans; the sink did not keep up");
    }
    let per_call = |s: Option<f64>| s.map_or(f64::NAN, |s| s / SPAN_CALLS as f64 * 1e6);
    Ok((per_call(caller), per_call(spent)))
}

pub async fn traces_overhead(dir: &Path, report: &mut serde_json::Map<String, Value>) -> Result<Vec<(String, bool)>> {
    let (port, posts, bytes) = sink()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let (off, _) = start_with(dir, &[]).await?;
    let (on, on_pid) = start_with(dir, &["--otlp-endpoint", &endpoint, "--trace-sample", "1"]).await?;
    let id = id_of(&off, "sales_100k.xlsx").await?;
    let cheap = json!({"workbook_id": id});
    let read = json!({"workbook_id": id, "sheet_name": "Sales", "limit": 100});
    let (caller_us, exporter_us) = tokio::task::spawn_blocking(move || span_cost(port)).await??;
    outln!(
        "tracing code alone, {SPAN_CALLS} calls of 5 spans: {caller_us:.2} µs CPU per call building, encoding and queueing them, {exporter_us:.2} µs on the exporter thread (framing and POSTing)"
    );
    let mut figures = Vec::new();
    let mut loss_cheap = f64::NAN;
    let mut fixed = Vec::new();
    let mut fixed_bars = Vec::new();
    for (name, args) in [("list_sheets", &cheap), ("read_table", &read)] {
        for c in [&off, &on] {
            for _ in 0..20 {
                call(c, name, args).await?;
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..ROUNDS {
            if i % 2 == 0 {
                a.push(throughput(&off, name, args).await.0);
                b.push(throughput(&on, name, args).await.0);
            } else {
                b.push(throughput(&on, name, args).await.0);
                a.push(throughput(&off, name, args).await.0);
            }
        }
        let (ra, rb) = (median(a), median(b));
        let loss = 1.0 - rb / ra;
        if name == "list_sheets" {
            loss_cheap = loss;
        }
        outln!(
            "{name} throughput, 8 callers, {ROUNDS} alternating rounds: traces off {ra:.0}/s, on (sample 1, OTLP to a local sink) {rb:.0}/s; {:.1} % lower",
            loss * 100.0
        );
        figures.push(json!({"tool": name, "off_per_s": ra, "on_per_s": rb, "throughput_loss": loss}));
        // The figure: 2,000 calls/s offered to the traced server, its CPU per call in
        // rounds whose calls are exported and rounds whose calls are not, interleaved.
        let (mut cpu, mut calls, mut missed, mut exported_cpu) = ([0.0f64; 2], [0u64; 2], 0u64, [0.0f64; 2]);
        let mut blocks = Vec::new();
        for _ in 0..FIXED_BLOCKS {
            let (mut bcpu, mut bcalls) = ([0.0f64; 2], [0u64; 2]);
            for sampled in [false, true, true, false] {
                let (n, m, c, e) = fixed_rate(&on, on_pid, name, args, sampled).await?;
                missed += m;
                exported_cpu[usize::from(sampled)] += e;
                bcpu[usize::from(sampled)] += c;
                bcalls[usize::from(sampled)] += n;
            }
            let per = |c: [f64; 2], n: [u64; 2], i: usize| c[i] / n[i].max(1) as f64;
            blocks.push((per(bcpu, bcalls, 1) - per(bcpu, bcalls, 0)) / per(bcpu, bcalls, 1));
            for i in 0..2 {
                cpu[i] += bcpu[i];
                calls[i] += bcalls[i];
            }
        }
        let (ca, cb) = (cpu[0] / calls[0].max(1) as f64, cpu[1] / calls[1].max(1) as f64);
        let lost = (cb - ca) / cb;
        let exporter_us = (exported_cpu[1] / calls[1].max(1) as f64 - exported_cpu[0] / calls[0].max(1) as f64) * 1e6;
        let shown: Vec<String> = blocks.iter().map(|l| format!("{:+.1}", l * 100.0)).collect();
        outln!(
            "{name} at {RATE} calls/s offered, one traced server, {} interleaved {}s rounds (half of them exported): server CPU per call {:.1} µs not exported, {:.1} µs exported, of which {exporter_us:.1} µs on the exporter thread; capacity lost {:.1} % (per block of four rounds: {} %; median {:.1} %; {missed} calls missed)",
            FIXED_BLOCKS * 4,
            FIXED_ROUND.as_secs(),
            ca * 1e6,
            cb * 1e6,
            lost * 100.0,
            shown.join(", "),
            median(blocks.clone()) * 100.0
        );
        fixed.push(json!({"tool": name, "rate": RATE, "cpu_per_call_off_s": ca, "cpu_per_call_on_s": cb, "capacity_loss": lost, "exporter_thread_s": exporter_us / 1e6, "per_block": blocks, "missed": missed}));
        fixed_bars.push((
            format!("exporting traces (sample 1) at {RATE} calls/s costs <= 5 % of {name} capacity"),
            lost <= 0.05,
        ));
    }
    // The last batch is at most one flush interval away.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let (np, nb) = (posts.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    outln!("OTLP sink received {np} POSTs, {:.1} MB of spans", nb as f64 / 1e6);
    report.insert(
        "traces_span_cost_us".into(),
        json!({"caller_per_call": caller_us, "exporter_per_call": exporter_us, "calls": SPAN_CALLS}),
    );
    report.insert(
        "traces".into(),
        json!({"throughput": figures, "fixed_rate": fixed, "sink_posts": np, "sink_bytes": nb}),
    );
    off.cancel().await.ok();
    on.cancel().await.ok();
    outln!("saturation (8 callers, closed loop) list_sheets throughput lost: {:.1} %", loss_cheap * 100.0);
    fixed_bars.push(("the OTLP sink received spans".to_string(), np > 0));
    Ok(fixed_bars)
}
