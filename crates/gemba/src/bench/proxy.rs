//! `gemba bench --only proxy`: what `gemba proxy` costs. The same upstream is driven direct and
//! through `gemba proxy` (measurement on) in one run: per-call latency (alternating calls, so
//! drift falls on both) and throughput (eight callers for a fixed time, rounds alternating
//! direct/proxied and which goes first, every side's calls over its time), with the CPU time
//! and context switches per call of the client, the servers and the proxy (from /proc, so
//! where its cost goes can be followed across changes). Fresh pairs of processes are measured
//! in turn and pooled: two processes of one build differ by up to ±6 % in throughput.
//!
//! The upstream is `gemba serve --stdio` on the bench workloads (a near-free call, shown, and a
//! typical read, judged), or any stdio MCP server named after `--` with the one call to make
//! (`--tool`, `--arguments`). In the proxy's place can stand a second direct server
//! (`--control`: the noise floor) or two `cat` processes (`--bare-relay`: the least any relay
//! process costs in front of that server on this machine).
//! Bars: ≤ 100 µs per call at p50 and ≤ 5 % of the judged call's throughput.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

use super::{Client, call, id_of, median, ms};

/// Callers at once for the throughput figure.
const CALLERS: usize = 8;
/// Length of one throughput round.
const ROUND: Duration = Duration::from_secs(2);
/// Throughput rounds per side and pair of processes: for the near-free call (shown, not
/// judged) and for the typical read (judged). A named upstream's one call gets the latter.
const ROUNDS: [usize; 2] = [2, 4];
/// Fresh pairs of processes (a direct server, a proxied one) measured in turn, by default.
/// Two processes of one build differ by up to ±6 % in throughput, steadily for their lifetime
/// (`--control`), so one pair judges the proxy by the luck of the draw; eight pooled narrow
/// that to about ±2 %.
pub const PAIRS: u16 = 8;

/// The server measured direct and behind the proxy.
pub enum Upstream {
    /// `gemba serve --stdio` on the bench workloads (`list_sheets` and `read_table`).
    Gemba,
    /// Any stdio MCP server the user names, and the one call to measure it with.
    Command { argv: Vec<String>, tool: String, arguments: Value },
}

impl Upstream {
    pub fn from_args(args: &super::BenchArgs) -> Result<Self> {
        if args.upstream.is_empty() {
            if args.tool.is_some() {
                bail!("--tool names a tool of an upstream command; put the command after `--`");
            }
            return Ok(Self::Gemba);
        }
        if args.only != "proxy" {
            bail!("an upstream command after `--` is measured only by --only proxy");
        }
        let Some(tool) = args.tool.clone() else {
            bail!(
                "which tool of `{}` should the bench call? Name it with --tool (and --arguments JSON)",
                args.upstream.join(" ")
            );
        };
        let arguments: Value = serde_json::from_str(&args.arguments)
            .with_context(|| format!("--arguments is not JSON: {}", args.arguments))?;
        if !arguments.is_object() {
            bail!("--arguments must be a JSON object, like '{{\"message\": \"hi\"}}'");
        }
        Ok(Self::Command { argv: args.upstream.clone(), tool, arguments })
    }

    /// The command line of one fresh server.
    fn argv(&self, dir: &Path) -> Result<Vec<OsString>> {
        match self {
            Self::Gemba => super::serve_argv(dir),
            Self::Command { argv, .. } => Ok(argv.iter().map(OsString::from).collect()),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Gemba => "gemba serve".into(),
            Self::Command { argv, .. } => argv.join(" "),
        }
    }
}

/// What stands between the client and the second server.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Middle {
    /// `gemba proxy`, measuring (what is judged).
    Proxy,
    /// Nothing: a second direct server, an A/A control (the noise floor).
    Control,
    /// Two `cat` processes, one each way: the least any relay process costs.
    BareRelay,
}

impl Middle {
    fn side(self) -> &'static str {
        match self {
            Self::Proxy => "through gemba proxy",
            Self::Control => "a second direct server (control)",
            Self::BareRelay => "through two cat processes (bare relay)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Control => "second server",
            Self::BareRelay => "relay",
        }
    }
}

/// How the bench runs.
pub struct Setup {
    pub middle: Middle,
    /// More arguments for `gemba proxy`.
    pub proxy_args: Vec<String>,
    pub pairs: usize,
    pub warm: usize,
}

impl Setup {
    pub fn from_args(args: &super::BenchArgs) -> Self {
        let middle = if args.control {
            Middle::Control
        } else if args.bare_relay {
            Middle::BareRelay
        } else {
            Middle::Proxy
        };
        Self { middle, proxy_args: args.proxy_args.clone(), pairs: usize::from(args.pairs), warm: args.warm }
    }
}

/// Start `argv` with `middle` in front of it (direct when `None`).
async fn start(argv: Vec<OsString>, middle: Option<Middle>, proxy_args: &[String]) -> Result<(Client, u32)> {
    let (front, what): (Vec<OsString>, &str) = match middle {
        None | Some(Middle::Control) => (Vec::new(), "the upstream"),
        Some(Middle::Proxy) => {
            let state = super::fresh_state_dir("proxy");
            let exe = std::env::current_exe().context("cannot find the gemba binary")?;
            let mut front: Vec<OsString> = vec![exe.into(), "proxy".into()];
            front.extend(proxy_args.iter().map(OsString::from));
            front.extend(["--state-dir".into(), state.into()]);
            if !proxy_args.iter().any(|a| a == "--name" || a.starts_with("--name=")) {
                front.extend(["--name".into(), "bench".into()]);
            }
            front.push("--".into());
            (front, "gemba proxy")
        }
        Some(Middle::BareRelay) => {
            (["sh", "-c", "cat | \"$@\" | cat", "sh"].map(OsString::from).to_vec(), "sh -c 'cat | upstream | cat'")
        }
    };
    super::connect(&[front, argv].concat(), what).await
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

/// Pin every thread of `pid` to the CPUs `cpus` (threads it starts later inherit it from the
/// thread that starts them). False if any thread could not be pinned.
#[cfg(target_os = "linux")]
fn pin(pid: u32, cpus: &[usize]) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cpus {
        // SAFETY: `c` is below the number of CPUs, well within the set's size.
        unsafe { libc::CPU_SET(*c, &mut set) };
    }
    let mut ok = true;
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else { continue };
        // SAFETY: `set` is a valid cpu_set_t and its size is passed with it.
        ok &= unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } == 0;
    }
    ok
}

#[cfg(not(target_os = "linux"))]
fn pin(_: u32, _: &[usize]) -> bool {
    false
}

/// The child processes of a process (the proxy's upstream server).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// A process's command name (`/proc/<pid>/comm`).
fn command_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_string())
}

/// CPU seconds of several processes together (`None` if any cannot be read).
fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| cpu_secs(*p)).sum()
}

/// Context switches (voluntary and not) of every thread of a process so far: each is a sleep
/// and a wake-up, the kernel's share of what a message costs (Linux; `None` elsewhere).
fn switches(pid: u32) -> Option<u64> {
    let mut n = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                n += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(n)
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

/// What one side (direct or proxied) did over a set of rounds.
#[derive(Default, Clone, Copy)]
struct Side {
    calls: u64,
    secs: f64,
    /// CPU seconds of the measured process (the direct server; the proxy process itself).
    cpu: f64,
    /// CPU seconds of the bench process (the client's side of the calls).
    client_cpu: f64,
    /// CPU seconds of the measured process's children (the proxy's upstream server) and their
    /// context switches.
    child_cpu: f64,
    child_switches: u64,
    switches: u64,
}

impl Side {
    fn add(&mut self, o: Side) {
        self.calls += o.calls;
        self.secs += o.secs;
        self.cpu += o.cpu;
        self.client_cpu += o.client_cpu;
        self.child_cpu += o.child_cpu;
        self.child_switches += o.child_switches;
        self.switches += o.switches;
    }

    fn rate(&self) -> f64 {
        if self.secs > 0.0 { self.calls as f64 / self.secs } else { f64::NAN }
    }

    fn per_call(&self, x: f64) -> f64 {
        if self.calls == 0 { f64::NAN } else { x / self.calls as f64 }
    }
}

/// `n` rounds per side of `tool`, alternating sides and which goes first.
async fn rounds(sides: [(&Client, u32); 2], tool: &str, args: &Value, n: usize) -> [Side; 2] {
    let mut out = [Side::default(); 2];
    for round in 0..n {
        for i in [round % 2, 1 - round % 2] {
            let (client, pid) = sides[i];
            let (me, kids) = (std::process::id(), children(pid));
            let child_switches = || kids.iter().filter_map(|k| switches(*k)).sum::<u64>();
            let (cpu0, own0, sw0) = (cpu_secs(pid), cpu_secs(me), switches(pid));
            let (kids0, kids_sw0) = (cpu_of(&kids), child_switches());
            // The round's own window (callers stopped, calls counted), not the wait for the
            // calls still in flight at its end.
            let (rate, n) = throughput(client, tool, args).await;
            let secs = if rate > 0.0 { n as f64 / rate } else { 0.0 };
            let cpu = cpu0.zip(cpu_secs(pid)).map_or(0.0, |(b, a)| a - b);
            let client_cpu = own0.zip(cpu_secs(me)).map_or(0.0, |(b, a)| a - b);
            let child_cpu = kids0.zip(cpu_of(&kids)).map_or(0.0, |(b, a)| a - b);
            let switched = sw0.zip(switches(pid)).map_or(0, |(b, a)| a.saturating_sub(b));
            let child_switches = child_switches().saturating_sub(kids_sw0);
            out[i].add(Side { calls: n, secs, cpu, client_cpu, child_cpu, child_switches, switches: switched });
        }
    }
    out
}

pub async fn proxy_overhead(
    dir: &Path,
    upstream: &Upstream,
    setup: &Setup,
    report: &mut serde_json::Map<String, Value>,
) -> Result<Vec<(String, bool)>> {
    let (middle, pairs) = (setup.middle, setup.pairs);
    let latency_calls = (setup.warm * 25).max(500).div_ceil(pairs);
    let (mut d, mut p) = (Vec::new(), Vec::new());
    // Per call measured: its name and rounds, both sides summed over every pair, and each
    // pair's loss. The last is judged.
    let mut names: Vec<(String, usize)> = Vec::new();
    let mut totals: Vec<[Side; 2]> = Vec::new();
    let mut pair_losses: Vec<Vec<f64>> = Vec::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut pinned, mut pinned_losses) = ([Side::default(); 2], Vec::new());
    for pair in 0..pairs {
        // Fresh processes for every pair, started in turn first and second.
        let start_direct = async || start(upstream.argv(dir)?, None, &[]).await;
        let start_other = async || start(upstream.argv(dir)?, Some(middle), &setup.proxy_args).await;
        let ((direct, direct_pid), (proxied, proxy_pid)) = if pair % 2 == 0 {
            let d = start_direct().await?;
            (d, start_other().await?)
        } else {
            let p = start_other().await?;
            (start_direct().await?, p)
        };
        // What is called, with the rounds each gets: for gemba, a cheap call (the workbook's
        // sheets, cached after the first), so the proxy's share shows at its largest, then a
        // typical read (100 rows of a table); for a named upstream, its one call.
        let calls: Vec<(String, Value, usize)> = match upstream {
            Upstream::Gemba => {
                let id = id_of(&direct, "sales_100k.xlsx").await?;
                vec![
                    ("list_sheets".into(), json!({"workbook_id": id}), ROUNDS[0]),
                    ("read_table".into(), json!({"workbook_id": id, "sheet_name": "Sales", "limit": 100}), ROUNDS[1]),
                ]
            }
            Upstream::Command { tool, arguments, .. } => vec![(tool.clone(), arguments.clone(), ROUNDS[1])],
        };
        if names.is_empty() {
            names = calls.iter().map(|c| (c.0.clone(), c.2)).collect();
            totals = vec![[Side::default(); 2]; calls.len()];
            pair_losses = vec![Vec::new(); calls.len()];
        }
        for c in [&direct, &proxied] {
            for (tool, args, _) in &calls {
                for _ in 0..20 {
                    call(c, tool, args).await?;
                }
            }
        }
        let (tool, args, _) = &calls[0];
        for i in 0..latency_calls {
            if i % 2 == 0 {
                d.push(ms(call(&direct, tool, args).await?.0));
                p.push(ms(call(&proxied, tool, args).await?.0));
            } else {
                p.push(ms(call(&proxied, tool, args).await?.0));
                d.push(ms(call(&direct, tool, args).await?.0));
            }
        }
        for (k, (tool, args, n)) in calls.iter().enumerate() {
            let [sd, sp] = rounds([(&direct, direct_pid), (&proxied, proxy_pid)], tool, args, *n).await;
            pair_losses[k].push(1.0 - sp.rate() / sd.rate());
            totals[k][0].add(sd);
            totals[k][1].add(sp);
        }
        // The servers on one core, the client and the proxy on another: what the proxy costs
        // a server whose core it does not share (shown, not judged).
        let me = std::process::id();
        let (servers, others) = match middle {
            Middle::Proxy => ([vec![direct_pid], children(proxy_pid)].concat(), vec![me, proxy_pid]),
            Middle::Control => (vec![direct_pid, proxy_pid], vec![me]),
            // `sh`'s children: the two `cat`s go with the client, the server with the servers.
            Middle::BareRelay => {
                let (cats, behind): (Vec<u32>, Vec<u32>) =
                    children(proxy_pid).into_iter().partition(|p| command_name(*p).as_deref() == Some("cat"));
                ([vec![direct_pid], behind].concat(), [vec![me], cats].concat())
            }
        };
        let (tool, args, _) = &calls[calls.len() - 1];
        if cpus >= 2 && servers.iter().all(|s| pin(*s, &[1])) && others.iter().all(|p| pin(*p, &[0])) {
            let [sd, sp] = rounds([(&direct, direct_pid), (&proxied, proxy_pid)], tool, args, 2).await;
            pinned_losses.push(1.0 - sp.rate() / sd.rate());
            pinned[0].add(sd);
            pinned[1].add(sp);
        }
        pin(me, &(0..cpus).collect::<Vec<_>>());
        direct.cancel().await.ok();
        proxied.cancel().await.ok();
    }
    let side = middle.side();
    let calls = d.len();
    let (md, mp) = (median(d), median(p));
    let extra_us = (mp - md) * 1000.0;
    let upstream_name = upstream.name();
    let flags = if setup.proxy_args.is_empty() {
        String::new()
    } else {
        format!("; gemba proxy {}", setup.proxy_args.join(" "))
    };
    outln!("upstream: {upstream_name}{flags}");
    outln!(
        "{} over stdio, {calls} alternating calls each ({pairs} pairs of processes): direct p50 {md:.3} ms, {side} {mp:.3} ms; {extra_us:+.1} µs per call",
        names[0].0
    );
    let mut figures = Vec::new();
    for (k, (name, rounds)) in names.iter().enumerate() {
        let [sd, sp] = totals[k];
        let (rd, rp) = (sd.rate(), sp.rate());
        let loss = 1.0 - rp / rd;
        let (server_us, proxy_us) = (sd.per_call(sd.cpu * 1e6), sp.per_call(sp.cpu * 1e6));
        let client_us = sd.per_call(sd.client_cpu * 1e6);
        let (upstream_us, upstream_sw) = (sp.per_call(sp.child_cpu * 1e6), sp.per_call(sp.child_switches as f64));
        let (server_sw, proxy_sw) = (sd.per_call(sd.switches as f64), sp.per_call(sp.switches as f64));
        let per_pair = pair_losses[k].iter().map(|l| format!("{:.1}", l * 100.0)).collect::<Vec<_>>().join(", ");
        outln!(
            "{name} throughput, {CALLERS} callers, {pairs} fresh pairs x {rounds} alternating rounds of {:.0} s per side: direct {rd:.0}/s, {side} {rp:.0}/s; {:.1} % lower (per pair: {per_pair} %) (CPU per call: client {client_us:.1} µs, server {server_us:.1} µs, {} {proxy_us:.1} µs, server behind it {upstream_us:.1} µs; context switches per call: {server_sw:.2}, {proxy_sw:.2}, {upstream_sw:.2})",
            ROUND.as_secs_f64(),
            loss * 100.0,
            middle.short(),
        );
        figures.push(json!({"tool": name, "direct_per_s": rd, "proxied_per_s": rp, "throughput_loss": loss,
                           "pair_losses": pair_losses[k], "client_cpu_us_per_call": client_us, "server_cpu_us_per_call": server_us,
                           "proxy_cpu_us_per_call": proxy_us, "upstream_cpu_us_per_call": upstream_us,
                           "upstream_switches_per_call": upstream_sw, "server_switches_per_call": server_sw,
                           "proxy_switches_per_call": proxy_sw}));
    }
    let judged = &names[names.len() - 1].0;
    let pinned_loss = 1.0 - pinned[1].rate() / pinned[0].rate();
    if !pinned_losses.is_empty() {
        let per_pair = pinned_losses.iter().map(|l| format!("{:.1}", l * 100.0)).collect::<Vec<_>>().join(", ");
        outln!(
            "{judged} throughput with the servers on core 1 and client and {} on core 0 (not judged), {} pairs x 2 rounds per side: direct {:.0}/s, {side} {:.0}/s; {:.1} % lower (per pair: {per_pair} %)",
            middle.short(),
            pinned_losses.len(),
            pinned[0].rate(),
            pinned[1].rate(),
            pinned_loss * 100.0
        );
    }
    let loss = figures.last().and_then(|f| f["throughput_loss"].as_f64()).unwrap_or(f64::NAN);
    let middle_name = match middle {
        Middle::Proxy => "proxy",
        Middle::Control => "control",
        Middle::BareRelay => "bare_relay",
    };
    report.insert(
        "proxy".into(),
        json!({"upstream": upstream_name, "middle": middle_name, "proxy_args": setup.proxy_args, "tool": names[0].0, "control": middle == Middle::Control,
               "direct_p50_ms": md, "proxied_p50_ms": mp, "overhead_us": extra_us,
               "calls": calls, "pairs": pairs, "throughput": figures,
               "server_on_own_core": {"tool": judged, "direct_per_s": pinned[0].rate(), "proxied_per_s": pinned[1].rate(),
                                      "throughput_loss": pinned_loss, "pair_losses": pinned_losses}}),
    );
    Ok(vec![
        ("gemba proxy adds <= 100 µs per call at p50".to_string(), extra_us <= 100.0),
        (format!("gemba proxy costs <= 5 % of {judged} throughput"), loss <= 0.05),
    ])
}
