//! `gemba bench --only report`: a seeded two-million-row request log (`learn::synthetic`), then
//! `gemba report` over it three times as a child process — wall time (median) and peak RSS (the
//! child's own high-water mark, from `wait4`) against the bars of ≤ 5 s and ≤ 200 MB.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kaizen::learn::synthetic::{SyntheticSpec, generate};
use serde_json::{Value, json};

/// Requests in the benchmark's log.
pub const ROWS: u64 = 2_000_000;
/// The log's day ends at 2026-01-01T00:00:00Z: a fixed day, so a generated log can be reused.
const UNTIL_MS: i64 = 1_767_225_600_000;
const UNTIL: &str = "2026-01-01T00:00:00Z";
const SEED: u64 = 12;
const RUNS: usize = 3;
const MAX_SECONDS: f64 = 5.0;
const MAX_RSS_BYTES: u64 = 200_000_000;

/// One `gemba report` run: wall time, CPU time (user + system) and peak RSS.
struct Measured {
    wall: Duration,
    cpu: Duration,
    peak_rss: Option<u64>,
}

/// The log, generated once per bench directory (a marker file names the rows and seed).
fn ensure_log(dir: &Path) -> Result<()> {
    let marker = dir.join("generated");
    let want = format!("rows={ROWS} seed={SEED} until_ms={UNTIL_MS}\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    eprintln!("generating a {ROWS}-row request log into {} ...", dir.display());
    let t = Instant::now();
    let s = generate(&dir.join(super::DB_FILE), &SyntheticSpec::bench(SEED, ROWS, UNTIL_MS))?;
    eprintln!(
        "generated {} rows ({} sessions, {} errors, simulated hit rate {:.1} %) in {:.1}s",
        s.rows,
        s.sessions,
        s.errors,
        s.measured_hit_rate * 100.0,
        t.elapsed().as_secs_f64()
    );
    std::fs::write(&marker, want).with_context(|| format!("cannot write {}", marker.display()))?;
    Ok(())
}

/// Wait for `child` and take its resource usage (Linux: `wait4`, so the figures are this
/// child's own, not the sum of every child so far).
#[cfg(target_os = "linux")]
fn wait_measured(child: std::process::Child, started: Instant) -> Result<Measured> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: plain out-parameters; `rusage` is a C struct for which all zero bytes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for (std's `Child` is dropped unwaited).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if r != pid {
        bail!("cannot wait for the report process: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("`gemba report` failed over the benchmark log (status {status}); run it by hand to see why");
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok(Measured {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        // ru_maxrss is in KiB on Linux.
        peak_rss: Some(usage.ru_maxrss as u64 * 1024),
    })
}

#[cfg(not(target_os = "linux"))]
fn wait_measured(mut child: std::process::Child, started: Instant) -> Result<Measured> {
    let st = child.wait()?;
    if !st.success() {
        bail!("`gemba report` failed over the benchmark log ({st}); run it by hand to see why");
    }
    Ok(Measured { wall: started.elapsed(), cpu: Duration::ZERO, peak_rss: None })
}

fn run_once(dir: &Path, out: &Path) -> Result<Measured> {
    let exe = std::env::current_exe().context("cannot find the gemba binary")?;
    let started = Instant::now();
    let child = Command::new(exe)
        .args(["report", "--period", "day", "--until", UNTIL, "--format", "json", "--state-dir"])
        .arg(dir)
        .arg("--out")
        .arg(out)
        .env("GEMBA_LOG", "warn")
        .env_remove("GEMBA_SLO")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start `gemba report`")?;
    wait_measured(child, started)
}

/// Generate (once) and measure; the bars' results, and the figures into `report`.
pub fn bench(bench_dir: &Path, report: &mut serde_json::Map<String, Value>) -> Result<Vec<(String, bool)>> {
    let dir = bench_dir.join("report-log");
    ensure_log(&dir)?;
    let out = dir.join("report.json");
    let mut runs = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let m = run_once(&dir, &out)?;
        outln!(
            "report over {ROWS} rows, run {}: {:.2} s wall, {:.2} s CPU, peak RSS {}",
            i + 1,
            m.wall.as_secs_f64(),
            m.cpu.as_secs_f64(),
            m.peak_rss.map_or("unknown".into(), |b| format!("{:.1} MB", b as f64 / 1e6))
        );
        runs.push(m);
    }
    let mut walls: Vec<f64> = runs.iter().map(|m| m.wall.as_secs_f64()).collect();
    walls.sort_by(f64::total_cmp);
    let median = walls[RUNS / 2];
    let peak = runs.iter().filter_map(|m| m.peak_rss).max();
    let cpu: Vec<f64> = runs.iter().map(|m| m.cpu.as_secs_f64()).collect();
    let text = std::fs::read_to_string(&out).with_context(|| format!("cannot read {}", out.display()))?;
    let r: Value = serde_json::from_str(&text).context("the benchmark report is not JSON")?;
    outln!(
        "report: {} requests; top error {:?} ({}); cache measured {:.1} %, recommended {} MiB at {:.1} %",
        r["requests"],
        r["errors"]["top"][0]["signature"].as_str().unwrap_or("-"),
        r["errors"]["top"][0]["category"].as_str().unwrap_or("-"),
        r["cache"]["measured_hit_rate"].as_f64().unwrap_or(f64::NAN) * 100.0,
        r["cache"]["recommendation"]["capacity_mb"],
        r["cache"]["recommendation"]["predicted_hit_rate"].as_f64().unwrap_or(f64::NAN) * 100.0,
    );
    outln!(
        "report over {ROWS} rows: median {median:.2} s wall (CPU {}), peak RSS {}",
        cpu.iter().map(|c| format!("{c:.2}")).collect::<Vec<_>>().join(" / "),
        peak.map_or("unknown".into(), |b| format!("{:.1} MB", b as f64 / 1e6))
    );
    report.insert(
        "report".into(),
        json!({
            "rows": ROWS,
            "wall_seconds": walls,
            "median_wall_seconds": median,
            "cpu_seconds": cpu,
            "peak_rss_bytes": peak,
        }),
    );
    Ok(vec![
        (format!("report over 2M rows <= {MAX_SECONDS} s (median wall)"), median <= MAX_SECONDS),
        ("report over 2M rows peak RSS <= 200 MB".into(), peak.is_some_and(|b| b <= MAX_RSS_BYTES)),
    ])
}
