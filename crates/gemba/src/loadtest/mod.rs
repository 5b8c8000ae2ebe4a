//! `gemba loadtest`: load for any MCP server, over streamable HTTP (loopback only) or stdio.
//!
//! Open loop by default: calls are due at a fixed arrival rate and each one's latency is
//! measured from the moment it was due, so a slow server cannot hide its queueing (no
//! coordinated omission). `--closed` runs N workers back to back instead. `--step` raises the
//! rate step by step until p99 or the error rate breaks its bound, and reports the capacity.

pub mod scenario;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient};
use serde_json::{Value, json};

use scenario::{Scenario, at_path, render};

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// MCP endpoint over streamable HTTP, on loopback (e.g. http://127.0.0.1:8079/mcp).
    #[arg(long)]
    pub url: Option<String>,
    /// Scenario file (TOML): setup calls and a weighted mix of tool calls.
    #[arg(long)]
    pub scenario: PathBuf,
    /// Arrival rate of the open loop (or the first step), e.g. 200/s.
    #[arg(long, default_value = "100/s")]
    pub rate: String,
    /// How long to run (each step, in step mode), e.g. 30s or 2m.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Most calls outstanding at once (open loop) or workers (closed loop).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Closed loop: each worker sends its next call when the last one returns.
    #[arg(long)]
    pub closed: bool,
    /// Stop after this many calls, whatever the duration.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_requests: u64,
    /// A call not answered within this is counted as a timeout.
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    /// Step mode: add this rate each step (e.g. 200/s) until p99 or errors break their bound.
    #[arg(long)]
    pub step: Option<String>,
    /// Step mode: the p99 bound in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    pub max_p99_ms: f64,
    /// Step mode: the error-rate bound (0.01 = 1 %).
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,
    /// Step mode: most steps.
    #[arg(long, default_value_t = 30)]
    pub max_steps: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// How the client starts: `initialize` (the legacy handshake and a session, SSE answers)
    /// or `discover` (the 2026-07-28 era: no session, each request stands alone).
    #[arg(long, default_value = "initialize", value_parser = ["initialize", "discover"])]
    pub lifecycle: String,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// The command that starts a stdio MCP server, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

type Client = RunningService<RoleClient, ()>;

/// Longest run accepted, so a mistyped duration cannot run for hours.
const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_RATE: f64 = 100_000.0;

fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().with_context(|| format!("'{s}' is not a duration; write 30s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("'{s}' is not a duration; write 30s, 500ms or 2m"),
    };
    if secs.is_nan() || secs <= 0.0 {
        bail!("duration '{s}' must be positive");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_rate(s: &str) -> Result<f64> {
    let t = s.trim().trim_end_matches("/s");
    let r: f64 = t.parse().with_context(|| format!("'{s}' is not a rate; write 200/s"))?;
    if r.is_nan() || r <= 0.0 || r > MAX_RATE {
        bail!("rate '{s}' must be above 0 and at most {MAX_RATE}/s");
    }
    Ok(r)
}

/// Only loopback HTTP targets: load never leaves the machine.
fn check_loopback(url: &str) -> Result<()> {
    let rest = url.strip_prefix("http://").with_context(|| format!("'{url}' must be an http:// URL on loopback"))?;
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("'{url}' is not on loopback; gemba loadtest only targets 127.0.0.1, ::1 or localhost");
    }
    Ok(())
}

/// The HTTP client of the load: connections kept alive and reused. rmcp's default client opens
/// a new TCP connection for every call (it turns pooling off), which made the generator's own
/// connect/close cost — and the server's accept — most of what a run measured.
fn pooled_http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")
}

fn lifecycle(name: &str) -> ClientLifecycleMode {
    match name {
        "discover" => ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] },
        _ => ClientLifecycleMode::Initialize,
    }
}

async fn connect(args: &LoadtestArgs) -> Result<(Client, String)> {
    match (&args.url, args.command.split_first()) {
        (Some(_), Some(_)) => bail!("give either --url or a command after --, not both"),
        (Some(url), None) => {
            check_loopback(url)?;
            let transport = StreamableHttpClientTransport::with_client(
                pooled_http_client()?,
                StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .max_concurrent_requests(args.concurrency.clamp(1, 10_000)),
            );
            let client = ().serve_with_lifecycle(transport, lifecycle(&args.lifecycle)).await;
            let client = client.with_context(|| format!("MCP handshake with {url} failed"))?;
            Ok((client, url.clone()))
        }
        (None, Some((program, rest))) => {
            let cmd = tokio::process::Command::new(program).configure(|c| {
                c.args(rest);
                c.stderr(std::process::Stdio::null());
            });
            let transport = TokioChildProcess::new(cmd).with_context(|| format!("cannot start '{program}'"))?;
            let client = ().serve_with_lifecycle(transport, lifecycle(&args.lifecycle)).await;
            let client = client.with_context(|| format!("MCP handshake with '{program}' failed"))?;
            Ok((client, format!("stdio: {}", args.command.join(" "))))
        }
        (None, None) => {
            bail!("no target: pass --url http://127.0.0.1:PORT/mcp, or -- <command that starts a stdio server>")
        }
    }
}

/// What happened to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Ok,
    ToolError,
    Refused,
    Protocol,
    Transport,
    Timeout,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::ToolError => "tool_error",
            Kind::Refused => "refused",
            Kind::Protocol => "protocol_error",
            Kind::Transport => "transport_error",
            Kind::Timeout => "timeout",
        }
    }
}

struct ToolStats {
    latency: Histogram<u64>,
    kinds: BTreeMap<Kind, u64>,
}

impl ToolStats {
    fn new() -> Self {
        // Microseconds, 1 µs to 10 min, 3 significant digits.
        let latency = Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("hdr"));
        Self { latency, kinds: BTreeMap::new() }
    }
}

#[derive(Default)]
struct Stats {
    tools: Mutex<HashMap<String, ToolStats>>,
    sent: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
}

impl Stats {
    fn record(&self, tool: &str, kind: Kind, latency: Duration) {
        let mut t = self.tools.lock();
        let s = t.entry(tool.to_string()).or_insert_with(ToolStats::new);
        let _ = s.latency.record((latency.as_micros() as u64).clamp(1, 600_000_000));
        *s.kinds.entry(kind).or_default() += 1;
        self.done.fetch_add(1, Ordering::Relaxed);
        if kind != Kind::Ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The weighted mix: call `i` of the run is `picks[i % picks.len()]`, spread evenly.
fn mix(s: &Scenario) -> Vec<usize> {
    let mut picks = Vec::new();
    for (i, c) in s.calls.iter().enumerate() {
        picks.extend(std::iter::repeat_n(i, c.weight as usize));
    }
    // Interleave so a heavy call is not sent in one block.
    let n = picks.len();
    let stride = (1..n.max(2)).rev().find(|k| gcd(*k, n) == 1).unwrap_or(1);
    (0..n).map(|i| picks[(i * stride) % n]).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

async fn send(client: &Client, tool: &str, args: &Value, timeout: Duration) -> (Kind, Option<Value>) {
    let params =
        CallToolRequestParams::new(tool.to_string()).with_arguments(args.as_object().cloned().unwrap_or_default());
    match tokio::time::timeout(timeout, client.call_tool(params)).await {
        Err(_) => (Kind::Timeout, None),
        Ok(Err(rmcp::ServiceError::McpError(_))) => (Kind::Protocol, None),
        Ok(Err(_)) => (Kind::Transport, None),
        Ok(Ok(r)) if r.is_error == Some(true) => {
            let text = r.content.first().and_then(|c| c.as_text()).map(|t| t.text.to_lowercase()).unwrap_or_default();
            let kind = if text.contains("capacity") || text.contains("busy") { Kind::Refused } else { Kind::ToolError };
            (kind, None)
        }
        Ok(Ok(r)) => (Kind::Ok, r.structured_content),
    }
}

/// Run the setup calls and collect their saved variables.
async fn setup(client: &Client, s: &Scenario, timeout: Duration) -> Result<BTreeMap<String, Value>> {
    let mut vars = BTreeMap::new();
    for (n, st) in s.setup.iter().enumerate() {
        let args = render(&st.args, &vars)?;
        let (kind, result) = send(client, &st.tool, &args, timeout).await;
        if kind != Kind::Ok {
            bail!("setup call #{} ({}) failed: {}", n + 1, st.tool, kind.as_str());
        }
        let result = result.unwrap_or(Value::Null);
        for (name, path) in &st.save {
            let v = at_path(&result, path)
                .with_context(|| format!("setup call #{} ({}) has nothing at '{path}'", n + 1, st.tool))?;
            vars.insert(name.clone(), v.clone());
        }
    }
    Ok(vars)
}

struct Prepared {
    calls: Vec<(String, Value)>,
    picks: Vec<usize>,
}

struct RunSpec {
    rate: Option<f64>,
    duration: Duration,
    concurrency: usize,
    max_requests: u64,
    timeout: Duration,
    progress: bool,
}

/// One run (open or closed loop); returns the stats and the wall time.
async fn run_once(client: Arc<Client>, prep: Arc<Prepared>, spec: &RunSpec) -> (Arc<Stats>, Duration) {
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let end = start + spec.duration;
    let progress = spec.progress.then(|| spawn_progress(stats.clone(), start, spec.duration));
    match spec.rate {
        Some(rate) => {
            let slots = Arc::new(tokio::sync::Semaphore::new(spec.concurrency.max(1)));
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut tasks = tokio::task::JoinSet::new();
            let mut i: u64 = 0;
            loop {
                let due = start + interval.mul_f64(i as f64);
                if due >= end || i >= spec.max_requests {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                // Waiting for a slot delays the send, not the clock: latency counts from `due`.
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (client, prep, stats) = (client.clone(), prep.clone(), stats.clone());
                let timeout = spec.timeout;
                stats.sent.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    let _permit = permit;
                    let (tool, args) = &prep.calls[prep.picks[(i as usize) % prep.picks.len()]];
                    let (kind, _) = send(&client, tool, args, timeout).await;
                    stats.record(tool, kind, due.elapsed());
                });
                i += 1;
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
        None => {
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..spec.concurrency.max(1) {
                let (client, prep, stats, next) = (client.clone(), prep.clone(), stats.clone(), next.clone());
                let (timeout, max) = (spec.timeout, spec.max_requests);
                tasks.spawn(async move {
                    while Instant::now() < end {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= max {
                            break;
                        }
                        let (tool, args) = &prep.calls[prep.picks[(i as usize) % prep.picks.len()]];
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        let t = Instant::now();
                        let (kind, _) = send(&client, tool, args, timeout).await;
                        stats.record(tool, kind, t.elapsed());
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    if let Some(p) = progress {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    (stats, start.elapsed())
}

fn spawn_progress(stats: Arc<Stats>, start: Instant, total: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let el = start.elapsed().min(total);
            let frac = el.as_secs_f64() / total.as_secs_f64();
            let bar: String = (0..30).map(|i| if (i as f64) < frac * 30.0 { '#' } else { '.' }).collect();
            let line = format!(
                "[{bar}] {:>5.1}s/{:.0}s  sent {}  done {}  errors {}",
                el.as_secs_f64(),
                total.as_secs_f64(),
                stats.sent.load(Ordering::Relaxed),
                stats.done.load(Ordering::Relaxed),
                stats.errors.load(Ordering::Relaxed)
            );
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        }
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Per-tool and total figures as JSON, and the table lines.
fn summarize(stats: &Stats, wall: Duration) -> (Value, Vec<String>) {
    let tools = stats.tools.lock();
    let mut total = ToolStats::new();
    let mut rows = Vec::new();
    let mut names: Vec<&String> = tools.keys().collect();
    names.sort();
    let mut lines = vec![format!(
        "{:<22} {:>8} {:>8} {:>22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "tool", "count", "ok", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "calls/s"
    )];
    let row = |name: &str, s: &ToolStats| {
        let count: u64 = s.kinds.values().sum();
        let ok = s.kinds.get(&Kind::Ok).copied().unwrap_or(0);
        let errors: BTreeMap<&str, u64> =
            s.kinds.iter().filter(|(k, _)| **k != Kind::Ok).map(|(k, v)| (k.as_str(), *v)).collect();
        let h = &s.latency;
        let j = json!({
            "count": count, "ok": ok, "errors": errors,
            "p50_ms": ms(h.value_at_quantile(0.5)), "p90_ms": ms(h.value_at_quantile(0.9)),
            "p99_ms": ms(h.value_at_quantile(0.99)), "p999_ms": ms(h.value_at_quantile(0.999)),
            "max_ms": ms(h.max()), "throughput": count as f64 / wall.as_secs_f64(),
        });
        let err_text = if errors.is_empty() {
            "-".to_string()
        } else {
            errors.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",")
        };
        let line = format!(
            "{:<22} {:>8} {:>8} {:>22} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.1}",
            name,
            count,
            ok,
            err_text,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            count as f64 / wall.as_secs_f64()
        );
        (j, line)
    };
    let mut per_tool = serde_json::Map::new();
    for n in names {
        let s = &tools[n];
        let (j, line) = row(n, s);
        per_tool.insert(n.clone(), j);
        lines.push(line);
        let _ = total.latency.add(&s.latency);
        for (k, v) in &s.kinds {
            *total.kinds.entry(*k).or_default() += v;
        }
        rows.push(n.clone());
    }
    let (tj, tline) = row("TOTAL", &total);
    lines.push(tline);
    (json!({"tools": per_tool, "total": tj, "wall_s": wall.as_secs_f64()}), lines)
}

pub async fn run(args: LoadtestArgs) -> Result<()> {
    let scenario = Scenario::load(&args.scenario)?;
    let duration = parse_duration(&args.duration)?;
    if duration > MAX_DURATION {
        bail!("duration {} is over the {} s bound of one run", args.duration, MAX_DURATION.as_secs());
    }
    let timeout = parse_duration(&args.timeout)?;
    let rate = parse_rate(&args.rate)?;
    let (client, target) = connect(&args).await?;
    let client = Arc::new(client);
    let vars = setup(&client, &scenario, timeout).await?;
    let calls: Vec<(String, Value)> =
        scenario.calls.iter().map(|c| Ok((c.tool.clone(), render(&c.args, &vars)?))).collect::<Result<_>>()?;
    let prep = Arc::new(Prepared { calls, picks: mix(&scenario) });
    let mut spec = RunSpec {
        rate: (!args.closed).then_some(rate),
        duration,
        concurrency: args.concurrency.clamp(1, 10_000),
        max_requests: args.max_requests,
        timeout,
        progress: !args.quiet,
    };
    let mode = if args.closed { "closed" } else { "open" };
    let mut report = json!({"target": target, "mode": mode, "concurrency": spec.concurrency});
    match &args.step {
        None => {
            let (stats, wall) = run_once(client.clone(), prep.clone(), &spec).await;
            let (j, lines) = summarize(&stats, wall);
            outln!(
                "{target}: {mode} loop{}, {:.1} s",
                spec.rate.map(|r| format!(" at {r}/s")).unwrap_or_default(),
                wall.as_secs_f64()
            );
            for l in lines {
                outln!("{l}");
            }
            report["result"] = j;
        }
        Some(step) => {
            if args.closed {
                bail!("--step raises an arrival rate: use it without --closed");
            }
            let step = parse_rate(step)?;
            let mut steps = Vec::new();
            let mut capacity: Option<Value> = None;
            let mut r = rate;
            outln!(
                "{target}: step mode from {rate}/s by {step}/s, bound p99 <= {} ms and errors <= {:.2} %",
                args.max_p99_ms,
                args.max_error_rate * 100.0
            );
            for _ in 0..args.max_steps {
                spec.rate = Some(r);
                let (stats, wall) = run_once(client.clone(), prep.clone(), &spec).await;
                let (j, _) = summarize(&stats, wall);
                let p99 = j["total"]["p99_ms"].as_f64().unwrap_or(f64::INFINITY);
                let count = j["total"]["count"].as_f64().unwrap_or(0.0);
                let ok = j["total"]["ok"].as_f64().unwrap_or(0.0);
                let err_rate = if count > 0.0 { 1.0 - ok / count } else { 1.0 };
                let passed = p99 <= args.max_p99_ms && err_rate <= args.max_error_rate;
                outln!(
                    "  {r:>8.0}/s  achieved {:>8.1}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {:>6.2} %  {}",
                    j["total"]["throughput"].as_f64().unwrap_or(0.0),
                    j["total"]["p50_ms"].as_f64().unwrap_or(0.0),
                    p99,
                    err_rate * 100.0,
                    if passed { "ok" } else { "BREAKS" }
                );
                steps.push(json!({"rate": r, "passed": passed, "result": j}));
                if !passed {
                    break;
                }
                capacity = Some(json!({"rate": r, "throughput": j["total"]["throughput"], "p99_ms": p99}));
                r += step;
                if r > MAX_RATE {
                    break;
                }
            }
            match &capacity {
                Some(c) => {
                    outln!("capacity: {} calls/s (p99 {:.2} ms)", c["rate"], c["p99_ms"].as_f64().unwrap_or(0.0))
                }
                None => outln!("capacity: below the first step ({rate}/s already breaks the bound)"),
            }
            report["steps"] = Value::Array(steps);
            report["capacity"] = capacity.unwrap_or(Value::Null);
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Ok(c) = Arc::try_unwrap(client) {
        c.cancel().await.ok();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_rate("200/s").unwrap(), 200.0);
        assert!(parse_rate("0/s").is_err());
        assert!(check_loopback("http://127.0.0.1:8079/mcp").is_ok());
        assert!(check_loopback("http://localhost/mcp").is_ok());
        assert!(check_loopback("http://[::1]:9/mcp").is_ok());
        assert!(check_loopback("http://example.com/mcp").is_err());
        assert!(check_loopback("http://10.0.0.1:80/mcp").is_err());
        assert!(check_loopback("https://127.0.0.1/mcp").is_err());
    }

    #[test]
    fn the_mix_follows_the_weights_evenly() {
        let s: Scenario =
            toml::from_str("[[call]]\ntool = \"a\"\nweight = 3\n[[call]]\ntool = \"b\"\nweight = 1\n").unwrap();
        let m = mix(&s);
        assert_eq!(m.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(m.iter().filter(|&&i| i == 1).count(), 1);
    }
}
