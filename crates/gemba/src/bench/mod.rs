//! `gemba bench`: generate the standard workloads, drive a real `gemba serve --stdio` child
//! through the rmcp client, and report per tool the cold (first) and warm (median) latency,
//! the server's RSS, and calamine's own read time of the same sheet measured in the same run.

mod forks;
mod gate;
mod http;
mod loads;
mod profile;
mod proxy;
mod traces;
pub mod workloads;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Which set: "example" (the bundled workspace) or "bench".
    #[arg(long, default_value = "example")]
    pub set: String,
    /// Directory to write into.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn write_workloads(args: WorkloadArgs) -> Result<()> {
    match args.set.as_str() {
        "example" => workloads::write_example(&args.out),
        "bench" => workloads::write_bench(&args.out),
        other => bail!("unknown workload set '{other}'; use example or bench"),
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Where the generated workloads go (created if missing, reused if present).
    #[arg(long, default_value = "target/gemba-bench")]
    pub dir: PathBuf,
    /// Warm repetitions per case (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub warm: usize,
    /// Fresh server starts used for the cold-read figure (median reported).
    #[arg(long, default_value_t = 3)]
    pub cold_runs: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Which part to run: reads, loads (the cold path of 100k- and 500k-row sheets), kaizen,
    /// forks, report, proxy, traces (OTLP export on vs off), profile (the cost of a CPU
    /// profile), http (the HTTP throughput bar: open loop at 5,000/s and closed loop, both
    /// lifecycles), or all.
    #[arg(long, default_value = "all")]
    pub only: String,
    /// Regression gate: instructions per call, counted under valgrind, compared with this
    /// baseline (fails when a figure is more than 10 % worse, twice).
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// With --baseline: write this run's figures as the new baseline instead of comparing.
    #[arg(long, requires = "baseline")]
    pub update_baseline: bool,
    /// With --baseline: only this gate figure (repeatable; all when absent).
    #[arg(long, requires = "baseline", value_name = "NAME")]
    pub figure: Vec<String>,
    /// Measure this gemba binary as the server instead of this one (e.g. a previous build, to
    /// compare before and after in one run on the same machine state).
    #[arg(long, value_name = "FILE")]
    pub server: Option<PathBuf>,
    /// With --only proxy: an A/A control. The "proxied" side is a second direct server, so
    /// the figures show how much two processes of one build differ with no proxy at all.
    #[arg(long, conflicts_with = "bare_relay")]
    pub control: bool,
    /// With --only proxy: two `cat` processes, one each way, in the proxy's place, so the
    /// figures show the least any relay process costs on this machine.
    #[arg(long)]
    pub bare_relay: bool,
    /// With --only proxy: one more argument for `gemba proxy` (repeatable), e.g.
    /// `--proxy-arg=--no-kaizen` to see what its measurement costs.
    #[arg(long = "proxy-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub proxy_args: Vec<String>,
    /// With --only proxy: fresh pairs of processes (direct, proxied) measured and pooled.
    #[arg(long, default_value_t = proxy::PAIRS, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub pairs: u16,
    /// With --only proxy and an upstream command: the tool to call.
    #[arg(long, value_name = "NAME")]
    pub tool: Option<String>,
    /// With --tool: its arguments, as a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}", requires = "tool")]
    pub arguments: String,
    /// With --only proxy: measure the proxy in front of this MCP server (a stdio command,
    /// after `--`) instead of `gemba serve` on the bench workloads; needs --tool.
    #[arg(last = true, value_name = "UPSTREAM")]
    pub upstream: Vec<String>,
}

/// The binary started as the server (`--server`, or this one).
static SERVER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn server_exe() -> Result<PathBuf> {
    match SERVER.get() {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().context("cannot find the gemba binary"),
    }
}

type Client = RunningService<RoleClient, ()>;

async fn start(dir: &Path) -> Result<(Client, u32)> {
    start_with(dir, &[]).await
}

/// Start `gemba serve --stdio` on `dir` with extra flags; its request log goes to a temp dir.
async fn start_with(dir: &Path, extra: &[&str]) -> Result<(Client, u32)> {
    let mut argv = serve_argv(dir)?;
    argv.extend(extra.iter().map(OsString::from));
    connect(&argv, "gemba serve").await
}

/// A state directory of its own for one process the bench starts (`kind` names it): two
/// processes measured side by side must not share (and contend for) one request log.
fn fresh_state_dir(kind: &str) -> PathBuf {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("gemba-bench-{kind}-{}-{n}", std::process::id()))
}

/// The command line of a fresh `gemba serve --stdio` on `dir`, with a state directory of its own.
fn serve_argv(dir: &Path) -> Result<Vec<OsString>> {
    let state = fresh_state_dir("state");
    let mut argv: Vec<OsString> = vec![server_exe()?.into(), "serve".into(), "--stdio".into(), "--workspace".into()];
    argv.extend([dir.into(), "--state-dir".into(), state.into()]);
    Ok(argv)
}

/// Start `argv` (logging warnings only) and connect the rmcp client over its stdio; `what`
/// names it in errors.
async fn connect(argv: &[OsString], what: &str) -> Result<(Client, u32)> {
    let (program, args) = argv.split_first().context("an empty command line")?;
    let cmd = tokio::process::Command::new(program).configure(|c| {
        c.args(args).env("GEMBA_LOG", "warn");
    });
    let transport =
        TokioChildProcess::new(cmd).with_context(|| format!("cannot start {what} ({})", program.to_string_lossy()))?;
    let pid = transport.id().unwrap_or(0);
    let client = ().serve(transport).await.with_context(|| format!("MCP handshake with {what} failed"))?;
    Ok((client, pid))
}

async fn call(client: &Client, tool: &str, args: &Value) -> Result<(Duration, CallToolResult)> {
    let params =
        CallToolRequestParams::new(tool.to_string()).with_arguments(args.as_object().cloned().unwrap_or_default());
    let t = Instant::now();
    let r = client.call_tool(params).await.with_context(|| format!("{tool} failed"))?;
    let d = t.elapsed();
    if r.is_error == Some(true) {
        bail!("{tool} returned an error: {:?}", r.content);
    }
    Ok((d, r))
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn id_of(client: &Client, filter: &str) -> Result<String> {
    let (_, r) = call(client, "list_workbooks", &json!({"filter": filter})).await?;
    let sc = r.structured_content.context("list_workbooks gave no structured content")?;
    sc["workbooks"]
        .as_array()
        .and_then(|a| a.iter().find(|w| w["path"].as_str() == Some(filter)))
        .and_then(|w| w["workbook_id"].as_str())
        .map(str::to_string)
        .with_context(|| format!("workload {filter} not found"))
}

/// calamine alone: open the file and read the sheet's values, as a reference for cold loads.
fn calamine_read(path: &Path, sheet: &str) -> Result<Duration> {
    use calamine::Reader;
    let t = Instant::now();
    let mut wb: calamine::Xlsx<_> = calamine::open_workbook(path)?;
    let range = wb.worksheet_range(sheet)?;
    std::hint::black_box(range.get_size());
    Ok(t.elapsed())
}

/// Cold first reads of sales_100k (a fresh server each) and calamine's own read of the same
/// sheet, alternating so both see the same machine state; milliseconds.
async fn cold_reads(dir: &Path, sales: &Path, runs: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut cold, mut cal) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        cal.push(ms(calamine_read(sales, "Sales")?));
        let (client, _) = start(dir).await?;
        let id = id_of(&client, "sales_100k.xlsx").await?;
        let (d, _) = call(&client, "sheet_page", &json!({"workbook_id": id, "page_size": 50})).await?;
        cold.push(ms(d));
        client.cancel().await.ok();
    }
    Ok((cold, cal))
}

/// A fork of the model workload in a private copy of it (`dir/<scratch>`), so saves never
/// land beside the shared workloads: the client, the scratch directory and the fork id.
async fn model_fork(dir: &Path, scratch: &str) -> Result<(Client, PathBuf, String)> {
    let ws = dir.join(scratch);
    let _ = std::fs::remove_dir_all(&ws);
    std::fs::create_dir_all(ws.join("out"))?;
    std::fs::copy(dir.join("model.xlsx"), ws.join("model.xlsx")).context("model workload missing")?;
    let (client, _) = start(&ws).await?;
    let model = id_of(&client, "model.xlsx").await?;
    let (_, r) = call(&client, "create_fork", &json!({"workbook_id": model})).await?;
    let fork = r.structured_content.as_ref().and_then(|v| v["fork_id"].as_str()).context("no fork id")?.to_string();
    Ok((client, ws, fork))
}

struct Case {
    name: String,
    tool: &'static str,
    args: Value,
}

/// A raw HTTP/1.0 GET on loopback, returning the time to the full body.
async fn http_get(addr: &str, path: &str) -> Result<(Duration, usize)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    Ok((t.elapsed(), body.len()))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The cost of measurement: the same warm call against a server with Kaizen on and one with it
/// off, alternating, in one run; then /metrics scraped while 8 callers keep the server busy.
async fn kaizen_overhead(
    dir: &Path,
    warm: usize,
    report: &mut serde_json::Map<String, Value>,
) -> Result<Vec<(String, bool)>> {
    // In-process: the recorder's own cost per request (start + finish).
    let r = crate::measure::new_recorder(true);
    let op = r.op("read_table").context("no read_table op")?;
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        r.start(op).finish(kaizen::Completion { outcome: Some(kaizen::Outcome::Ok), ..Default::default() });
    }
    let per_call_ns = t.elapsed().as_nanos() as f64 / n as f64;
    outln!("recorder cost in process: {per_call_ns:.0} ns per request (start + finish, {n} requests)");
    report.insert("recorder_ns_per_request".into(), json!(per_call_ns));

    let port = free_port()?;
    let admin = format!("127.0.0.1:{port}");
    let (on, _) = start_with(dir, &["--admin", &admin]).await?;
    let (off, _) = start_with(dir, &["--no-kaizen"]).await?;
    let id = id_of(&on, "sales_100k.xlsx").await?;
    let args = json!({"workbook_id": id, "sheet_name": "Sales", "limit": 100});
    for c in [&on, &off] {
        for _ in 0..5 {
            call(c, "read_table", &args).await?;
        }
    }
    let rounds = (warm * 10).max(200);
    let (mut a, mut b) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for i in 0..rounds {
        // Alternate which goes first so drift and cache effects fall on both.
        if i % 2 == 0 {
            a.push(ms(call(&on, "read_table", &args).await?.0));
            b.push(ms(call(&off, "read_table", &args).await?.0));
        } else {
            b.push(ms(call(&off, "read_table", &args).await?.0));
            a.push(ms(call(&on, "read_table", &args).await?.0));
        }
    }
    let (ma, mb) = (median(a), median(b));
    let extra_us = (ma - mb) * 1000.0;
    let ratio = ma / mb;
    outln!(
        "warm read_table 100 rows over stdio, {rounds} alternating calls each: kaizen on {ma:.3} ms, off {mb:.3} ms; ratio {ratio:.3}, {extra_us:+.1} µs per call"
    );
    report.insert("kaizen_on_ms".into(), json!(ma));
    report.insert("kaizen_off_ms".into(), json!(mb));
    off.cancel().await.ok();

    // Scrape while 8 callers keep the server busy.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let peer = on.peer().clone();
        let args = args.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let p = CallToolRequestParams::new("read_table")
                    .with_arguments(args.as_object().cloned().unwrap_or_default());
                if peer.call_tool(p).await.is_err() {
                    break;
                }
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut scrapes = Vec::new();
    let mut size = 0;
    for _ in 0..40 {
        let (d, len) = http_get(&admin, "/metrics").await?;
        scrapes.push(ms(d));
        size = len;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap_or(0);
    }
    on.cancel().await.ok();
    let max_scrape = scrapes.iter().cloned().fold(0.0, f64::max);
    let med_scrape = median(scrapes);
    outln!(
        "/metrics while 8 callers ran ({calls} calls): scrape p50 {med_scrape:.2} ms, max {max_scrape:.2} ms, {size} bytes"
    );
    report.insert("scrape_p50_ms".into(), json!(med_scrape));
    report.insert("scrape_max_ms".into(), json!(max_scrape));
    Ok(vec![
        ("Kaizen overhead <= 2 % or <= 2 µs per call".into(), ratio <= 1.02 || extra_us <= 2.0),
        ("scrape /metrics under 8 callers <= 10 ms (max)".into(), max_scrape <= 10.0),
    ])
}

async fn reads(
    dir: &Path,
    args: &BenchArgs,
    report: &mut serde_json::Map<String, Value>,
) -> Result<Vec<(String, bool)>> {
    let sales = dir.join("sales_100k.xlsx");

    let (cold, cal) = cold_reads(dir, &sales, args.cold_runs).await?;
    let (cold_ms, cal_ms) = (median(cold), median(cal));
    outln!(
        "cold first read of sales_100k (sheet_page, fresh server): {cold_ms:.1} ms; calamine alone: {cal_ms:.1} ms; ratio {:.2}",
        cold_ms / cal_ms
    );
    report.insert("cold_read_sales_100k_ms".into(), json!(cold_ms));
    report.insert("calamine_read_sales_100k_ms".into(), json!(cal_ms));
    report.insert("cold_ratio".into(), json!(cold_ms / cal_ms));

    let (client, pid) = start(dir).await?;
    let sales_id = id_of(&client, "sales_100k.xlsx").await?;
    let wide_id = id_of(&client, "wide.xlsx").await?;
    let model_id = id_of(&client, "model.xlsx").await?;
    let small_id = id_of(&client, "small.xlsx").await?;
    let case = |name: &str, tool: &'static str, args: Value| Case { name: name.to_string(), tool, args };
    let sales_cases = vec![
        case("describe_workbook sales_100k", "describe_workbook", json!({"workbook_id": sales_id})),
        case("list_sheets sales_100k", "list_sheets", json!({"workbook_id": sales_id})),
        case("sheet_overview sales_100k", "sheet_overview", json!({"workbook_id": sales_id, "sheet_name": "Sales"})),
        case(
            "read_table sales_100k 100 rows",
            "read_table",
            json!({"workbook_id": sales_id, "sheet_name": "Sales", "limit": 100}),
        ),
        case(
            "read_table sales_100k offset 50000",
            "read_table",
            json!({"workbook_id": sales_id, "sheet_name": "Sales", "limit": 100, "offset": 50000}),
        ),
        case(
            "read_table sales_100k filtered",
            "read_table",
            json!({"workbook_id": sales_id, "sheet_name": "Sales", "limit": 100, "filters": [{"column": "Region", "value": "North"}, {"column": "Units", "op": "gt", "value": 400}]}),
        ),
        case(
            "range_values sales_100k A1:L100",
            "range_values",
            json!({"workbook_id": sales_id, "sheet_name": "Sales", "ranges": ["A1:L100"]}),
        ),
        case(
            "sheet_page sales_100k",
            "sheet_page",
            json!({"workbook_id": sales_id, "sheet_name": "Sales", "start_row": 5000}),
        ),
        case(
            "inspect_cells sales_100k",
            "inspect_cells",
            json!({"workbook_id": sales_id, "sheet_name": "Sales", "cells": ["A2:L2", "I100002"]}),
        ),
        case("find_value sales_100k (full scan)", "find_value", json!({"workbook_id": sales_id, "query": "Total"})),
        case(
            "find_value sales_100k label",
            "find_value",
            json!({"workbook_id": sales_id, "query": "Total", "mode": "label"}),
        ),
        case(
            "sheet_statistics sales_100k",
            "sheet_statistics",
            json!({"workbook_id": sales_id, "sheet_name": "Sales"}),
        ),
        case("table_profile sales_100k", "table_profile", json!({"workbook_id": sales_id, "sheet_name": "Sales"})),
    ];
    let other_cases = vec![
        case("list_workbooks (44 books)", "list_workbooks", json!({})),
        case("read_table small", "read_table", json!({"workbook_id": small_id})),
        case("sheet_page wide", "sheet_page", json!({"workbook_id": wide_id, "page_size": 50})),
        case("read_table wide", "read_table", json!({"workbook_id": wide_id, "limit": 40})),
        case("sheet_formula_map model", "sheet_formula_map", json!({"workbook_id": model_id, "sheet_name": "Calc"})),
        case(
            "formula_trace model precedents",
            "formula_trace",
            json!({"workbook_id": model_id, "sheet_name": "Summary", "cell": "B1", "depth": 2}),
        ),
        case(
            "formula_trace model dependents",
            "formula_trace",
            json!({"workbook_id": model_id, "sheet_name": "Inputs", "cell": "B2", "direction": "dependents", "depth": 1}),
        ),
        case("scan_volatiles model", "scan_volatiles", json!({"workbook_id": model_id})),
        case("find_formula model", "find_formula", json!({"workbook_id": model_id, "query": "Growth"})),
    ];
    let mut rows = Vec::new();
    let mut rss_sales = 0;
    for (group, cases) in [("sales", sales_cases), ("other", other_cases)] {
        for c in cases {
            let (first, r) = call(&client, c.tool, &c.args).await?;
            let bytes = r.structured_content.as_ref().map(|v| v.to_string().len()).unwrap_or(0);
            let mut warm = Vec::with_capacity(args.warm);
            for _ in 0..args.warm {
                warm.push(ms(call(&client, c.tool, &c.args).await?.0));
            }
            let w = median(warm.clone());
            let p_max = warm.iter().cloned().fold(0.0, f64::max);
            outln!(
                "{:<40} cold {:>9.3} ms   warm p50 {:>8.3} ms   max {:>8.3} ms   {:>7} bytes",
                c.name,
                ms(first),
                w,
                p_max,
                bytes
            );
            rows.push(json!({"case": c.name, "tool": c.tool, "cold_ms": ms(first), "warm_p50_ms": w, "warm_max_ms": p_max, "response_bytes": bytes}));
        }
        if group == "sales" {
            rss_sales = rss_bytes(pid).unwrap_or(0);
            outln!("server RSS with sales_100k cached: {:.1} MB", rss_sales as f64 / 1e6);
        }
    }
    let rss_end = rss_bytes(pid).unwrap_or(0);
    outln!("server RSS at the end (all workloads cached): {:.1} MB", rss_end as f64 / 1e6);
    client.cancel().await.ok();
    report.insert("cases".into(), Value::Array(rows.clone()));
    report.insert("rss_sales_100k_bytes".into(), json!(rss_sales));
    report.insert("rss_end_bytes".into(), json!(rss_end));

    let warm_of = |name: &str| {
        rows.iter().find(|r| r["case"] == name).and_then(|r| r["warm_p50_ms"].as_f64()).unwrap_or(f64::NAN)
    };
    Ok(vec![
        ("warm read_table 100 rows sales_100k p50 <= 1 ms", warm_of("read_table sales_100k 100 rows") <= 1.0),
        ("cold first read <= 1.2 x calamine", cold_ms / cal_ms <= 1.2),
        ("warm find_value sales_100k <= 50 ms", warm_of("find_value sales_100k (full scan)") <= 50.0),
        ("warm list_workbooks over many <= 2 ms", warm_of("list_workbooks (44 books)") <= 2.0),
        ("RSS with sales_100k cached <= 150 MB", rss_sales > 0 && rss_sales <= 150_000_000),
    ]
    .into_iter()
    .map(|(n, ok)| (n.to_string(), ok))
    .collect())
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let dir = &args.dir;
    let upstream = proxy::Upstream::from_args(&args)?;
    if let Some(server) = &args.server {
        let server = server.canonicalize().with_context(|| format!("no server binary at {}", server.display()))?;
        let _ = SERVER.set(server);
    }
    if let Some(baseline) = &args.baseline {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let opts =
            gate::GateOptions { baseline: baseline.clone(), update: args.update_baseline, only: args.figure.clone() };
        if !gate::gate(&dir.canonicalize()?, &opts).await? {
            bail!("a figure regressed by more than 10 % against {}", baseline.display());
        }
        return Ok(());
    }
    // The report benchmark needs no workbooks, only a request log.
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Nor does the HTTP one (it writes the example workspace it needs).
    let needs_workloads = !matches!(args.only.as_str(), "report" | "http")
        && (args.only != "proxy" || matches!(upstream, proxy::Upstream::Gemba));
    if needs_workloads && !dir.join("many").join("book_39.xlsx").exists() {
        eprintln!("generating workloads into {} ...", dir.display());
        let t = Instant::now();
        workloads::write_bench(dir)?;
        eprintln!("generated in {:.1}s", t.elapsed().as_secs_f64());
    }
    let dir = dir.canonicalize()?;
    let mut report = serde_json::Map::new();
    let mut bars: Vec<(String, bool)> = Vec::new();
    if args.only == "all" || args.only == "reads" {
        bars.extend(reads(&dir, &args, &mut report).await?);
    }
    if args.only == "all" || args.only == "loads" {
        bars.extend(loads::loads(&dir, args.cold_runs, &mut report).await?);
    }
    if args.only == "all" || args.only == "kaizen" {
        bars.extend(kaizen_overhead(&dir, args.warm, &mut report).await?);
    }
    if args.only == "all" || args.only == "forks" {
        bars.extend(forks::forks(&dir, args.warm, &mut report).await?);
    }
    if args.only == "all" || args.only == "report" {
        bars.extend(crate::report::bench::bench(&dir, &mut report)?);
    }
    if args.only == "all" || args.only == "proxy" {
        bars.extend(proxy::proxy_overhead(&dir, &upstream, &proxy::Setup::from_args(&args), &mut report).await?);
    }
    if args.only == "all" || args.only == "traces" {
        bars.extend(traces::traces_overhead(&dir, &mut report).await?);
    }
    if args.only == "all" || args.only == "http" {
        bars.extend(http::http_throughput(&dir, &mut report)?);
    }
    if args.only == "all" || args.only == "profile" {
        bars.extend(profile::profile_overhead(&dir, &mut report).await?);
    }
    outln!();
    for (name, ok) in &bars {
        outln!("{} {name}", if *ok { "PASS" } else { "FAIL" });
    }
    report.insert("bars".into(), json!(bars.iter().map(|(n, ok)| json!({"bar": n, "pass": ok})).collect::<Vec<_>>()));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&Value::Object(report))?)?;
    }
    Ok(())
}
