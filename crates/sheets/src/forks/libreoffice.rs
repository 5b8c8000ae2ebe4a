//! LibreOffice headless as a recalculation backend: the fork is written to a temporary xlsx,
//! LibreOffice opens it with "always recalculate" and writes it back, and the values are read
//! from the result. Guarded the way any flaky dependency should be: a concurrency limit, a
//! timeout that kills the whole process group, retries with exponential backoff and jitter for
//! transient failures, and a circuit breaker (closed / open / half-open) so that when
//! LibreOffice is broken, callers fail fast instead of queueing behind timeouts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::recalc::RecalcStats;
use crate::error::{Result, SheetsError};
use crate::limits::Budget;
use crate::phase::{Phase, PhaseKind};

#[derive(Debug, Clone)]
pub struct LibreOfficeConfig {
    /// The `soffice` program (looked up on PATH when not absolute).
    pub program: PathBuf,
    /// A run taking longer is killed.
    pub timeout: Duration,
    /// Most LibreOffice processes at once.
    pub concurrency: usize,
    /// Extra attempts after a transient failure (a crash, no output).
    pub retries: u32,
    /// First backoff; doubles each retry, with up to 50 % jitter.
    pub backoff: Duration,
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one trial run is let through.
    pub cooldown: Duration,
    /// Where profiles and job files go.
    pub work_dir: PathBuf,
}

impl Default for LibreOfficeConfig {
    fn default() -> Self {
        Self {
            program: PathBuf::from("soffice"),
            timeout: Duration::from_secs(60),
            concurrency: 1,
            retries: 2,
            backoff: Duration::from_millis(200),
            failure_threshold: 3,
            cooldown: Duration::from_secs(30),
            work_dir: std::env::temp_dir().join("gemba-libreoffice"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

struct Breaker {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
    trial_running: bool,
}

enum RunError {
    /// Worth another try (the process crashed or produced nothing).
    Transient(String),
    Timeout,
    /// The caller withdrew (a client cancel, a discarded fork): not the backend's failure.
    Cancelled,
    /// Not worth retrying (the program is missing).
    Permanent(String),
    /// LibreOffice ran and said it cannot load this file: the file's problem, not the
    /// backend's (not retried, and no failure for the breaker).
    Rejected(String),
}

pub struct LibreOffice {
    cfg: LibreOfficeConfig,
    busy: Mutex<Vec<bool>>,
    freed: Condvar,
    breaker: Mutex<Breaker>,
    pub stats: Arc<RecalcStats>,
    jobs: AtomicU64,
}

fn failed(reason: impl Into<String>) -> SheetsError {
    SheetsError::Internal(format!("LibreOffice recalculation failed: {}", reason.into()))
}

impl LibreOffice {
    pub fn new(cfg: LibreOfficeConfig, stats: Arc<RecalcStats>) -> Self {
        let n = cfg.concurrency.max(1);
        Self {
            cfg,
            busy: Mutex::new(vec![false; n]),
            freed: Condvar::new(),
            breaker: Mutex::new(Breaker {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
                trial_running: false,
            }),
            stats,
            jobs: AtomicU64::new(0),
        }
    }

    /// The program this backend runs.
    pub fn program(&self) -> &Path {
        &self.cfg.program
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.lock().state
    }

    fn set_state(&self, b: &mut Breaker, s: BreakerState) {
        if b.state != s {
            tracing::warn!(from = ?b.state, to = ?s, "LibreOffice circuit breaker");
            b.state = s;
            self.stats.breaker_state.store(s as u8, Ordering::Relaxed);
            self.stats.breaker_transitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Let a call through, or refuse it at once while the breaker is open.
    fn admit(&self, id: &str) -> Result<bool> {
        let mut b = self.breaker.lock();
        match b.state {
            BreakerState::Closed => Ok(false),
            BreakerState::Open => {
                let since = b.opened_at.map(|t| t.elapsed()).unwrap_or_default();
                if since >= self.cfg.cooldown {
                    self.set_state(&mut b, BreakerState::HalfOpen);
                    b.trial_running = true;
                    Ok(true)
                } else {
                    self.stats.count(&self.stats.rejected_open);
                    Err(SheetsError::Unsupported {
                        workbook_id: id.to_string(),
                        reason: format!(
                            "LibreOffice recalculation is paused after {} failures in a row (circuit open); it is tried again in {} s — use backend=\"in_process\" meanwhile",
                            b.failures,
                            (self.cfg.cooldown - since).as_secs().max(1)
                        ),
                    })
                }
            }
            BreakerState::HalfOpen if b.trial_running => {
                self.stats.count(&self.stats.rejected_open);
                Err(SheetsError::Unsupported {
                    workbook_id: id.to_string(),
                    reason: "LibreOffice is being tried again after failures (circuit half-open); call again in a few seconds or use backend=\"in_process\"".into(),
                })
            }
            BreakerState::HalfOpen => {
                b.trial_running = true;
                Ok(true)
            }
        }
    }

    fn record(&self, ok: bool) {
        let mut b = self.breaker.lock();
        b.trial_running = false;
        if ok {
            b.failures = 0;
            b.opened_at = None;
            self.set_state(&mut b, BreakerState::Closed);
        } else {
            b.failures += 1;
            if b.state == BreakerState::HalfOpen || b.failures >= self.cfg.failure_threshold {
                b.opened_at = Some(Instant::now());
                self.set_state(&mut b, BreakerState::Open);
            }
        }
    }

    /// Recalculate an xlsx image (of the workbook or fork `id`, for errors); returns the
    /// recalculated file's bytes.
    pub fn recalculate(&self, id: &str, input: &[u8], budget: &Budget) -> Result<Vec<u8>> {
        self.admit(id)?;
        let slot = match self.acquire(budget) {
            Ok(s) => s,
            Err(e) => {
                // Not LibreOffice's fault: leave the breaker as it was.
                self.breaker.lock().trial_running = false;
                return Err(e);
            }
        };
        let _release = SlotGuard { lo: self, slot };
        let _running = self.stats.running();
        self.stats.count(&self.stats.runs);
        let mut attempt = 0u32;
        let outcome = loop {
            if let Err(e) = budget.check() {
                break Err(e);
            }
            match self.run_once(slot, input, budget) {
                Ok(bytes) => break Ok(bytes),
                Err(RunError::Cancelled) => break Err(SheetsError::Cancelled),
                Err(RunError::Timeout) => {
                    self.stats.count(&self.stats.timeouts);
                    break Err(failed(format!(
                        "LibreOffice did not finish within {} ms and was killed",
                        self.deadline_for(budget).as_millis()
                    )));
                }
                Err(RunError::Permanent(m)) => break Err(failed(m)),
                Err(RunError::Rejected(m)) => {
                    break Err(SheetsError::Unsupported { workbook_id: id.to_string(), reason: m });
                }
                Err(RunError::Transient(m)) if attempt < self.cfg.retries => {
                    attempt += 1;
                    self.stats.count(&self.stats.retries);
                    let wait = backoff(self.cfg.backoff, attempt);
                    tracing::info!(attempt, ?wait, "LibreOffice failed ({m}); retrying");
                    if budget.remaining().is_some_and(|r| r <= wait) {
                        break Err(failed(format!("{m} (no time left to retry)")));
                    }
                    std::thread::sleep(wait);
                }
                Err(RunError::Transient(m)) => break Err(failed(format!("{m} (after {} attempts)", attempt + 1))),
            }
        };
        match &outcome {
            // A file LibreOffice ran on and refused shows the backend working.
            Ok(_) | Err(SheetsError::Unsupported { .. }) => self.record(true),
            Err(SheetsError::Timeout { .. } | SheetsError::Cancelled) => self.breaker.lock().trial_running = false,
            Err(_) => {
                self.stats.count(&self.stats.failures);
                self.record(false);
            }
        }
        outcome
    }

    fn acquire(&self, budget: &Budget) -> Result<usize> {
        let mut busy = self.busy.lock();
        loop {
            if let Some(i) = busy.iter().position(|b| !b) {
                busy[i] = true;
                return Ok(i);
            }
            let wait = budget.remaining().unwrap_or(Duration::from_secs(3600)).min(Duration::from_millis(250));
            if budget.remaining().is_some_and(|r| r.is_zero()) {
                return Err(SheetsError::Internal(format!(
                    "all {} LibreOffice slots stayed busy for the whole call; try again shortly",
                    busy.len()
                )));
            }
            self.freed.wait_for(&mut busy, wait);
            budget.check()?;
        }
    }

    fn deadline_for(&self, budget: &Budget) -> Duration {
        budget.remaining().map_or(self.cfg.timeout, |r| r.min(self.cfg.timeout))
    }

    fn run_once(&self, slot: usize, input: &[u8], budget: &Budget) -> std::result::Result<Vec<u8>, RunError> {
        let n = self.jobs.fetch_add(1, Ordering::Relaxed);
        let job = self.cfg.work_dir.join(format!("job-{}-{n}", std::process::id()));
        let _cleanup = DirGuard(job.clone());
        let out_dir = job.join("out");
        let io = |e: std::io::Error| RunError::Permanent(format!("cannot prepare its files in {}: {e}", job.display()));
        std::fs::create_dir_all(&out_dir).map_err(io)?;
        let src = job.join("fork.xlsx");
        std::fs::write(&src, input).map_err(io)?;
        let profile = self.profile(slot).map_err(io)?;
        let log = std::fs::File::create(job.join("log.txt")).map_err(io)?;
        let log2 = log.try_clone().map_err(io)?;
        let mut cmd = Command::new(&self.cfg.program);
        cmd.arg("--headless")
            .arg("--invisible")
            .arg("--norestore")
            .arg("--nologo")
            .arg("--nodefault")
            .arg("--nolockcheck")
            .arg(format!("-env:UserInstallation=file://{}", profile.display()))
            .arg("--convert-to")
            .arg("xlsx:Calc MS Excel 2007 XML")
            .arg("--outdir")
            .arg(&out_dir)
            .arg(&src)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        // The run, told to the embedder as a phase with its exit status.
        let started = Instant::now();
        let phase = |exit_code: Option<i32>, error: Option<&'static str>| {
            let mut p = Phase::ended(PhaseKind::LibreOffice, started);
            p.backend = Some("libreoffice");
            p.exit_code = exit_code;
            p.error = error;
            budget.stages().record_phase(p);
        };
        let mut child = spawn_retrying_busy(&mut cmd).map_err(|e| {
            phase(None, Some("spawn_failed"));
            RunError::Permanent(format!(
                "cannot start '{}': {e}; install LibreOffice (libreoffice-calc-nogui) or pass --libreoffice PATH",
                self.cfg.program.display()
            ))
        })?;
        let deadline = Instant::now() + self.deadline_for(budget);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if budget.is_cancelled() => {
                    kill_group(&mut child);
                    phase(None, Some("cancelled"));
                    return Err(RunError::Cancelled);
                }
                Ok(None) if Instant::now() >= deadline || budget.check().is_err() => {
                    kill_group(&mut child);
                    phase(None, Some("timeout"));
                    return Err(RunError::Timeout);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    kill_group(&mut child);
                    phase(None, Some("lost_process"));
                    return Err(RunError::Transient(format!("lost track of the process: {e}")));
                }
            }
        };
        // LibreOffice may leave helpers behind in its group; make sure none outlive the job.
        kill_group(&mut child);
        let out = out_dir.join("fork.xlsx");
        let tail = || {
            let text = std::fs::read_to_string(job.join("log.txt")).unwrap_or_default();
            let t = text.trim();
            let start = t.len().saturating_sub(300);
            let start = (start..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(t.len());
            t[start..].to_string()
        };
        if !status.success() {
            phase(status.code(), Some(if status.code().is_some() { "exit_status" } else { "killed_by_signal" }));
            return Err(RunError::Transient(format!("LibreOffice exited with {status}: {}", tail())));
        }
        let read = std::fs::read(&out);
        phase(status.code(), read.is_err().then_some("no_output"));
        read.map_err(|_| {
            let said = tail();
            if said.contains("could not be loaded") {
                RunError::Rejected(format!(
                    "LibreOffice cannot open this workbook ({}); recalculate with backend=\"in_process\"",
                    said.lines().last().unwrap_or("").trim()
                ))
            } else {
                RunError::Transient(format!("LibreOffice wrote no output file: {said}"))
            }
        })
    }

    /// A profile per slot (LibreOffice locks its profile), set to recalculate on load.
    fn profile(&self, slot: usize) -> std::io::Result<PathBuf> {
        let dir = self.cfg.work_dir.join(format!("profile-{slot}"));
        let user = dir.join("user");
        let reg = user.join("registrymodifications.xcu");
        if !reg.exists() {
            std::fs::create_dir_all(&user)?;
            std::fs::write(&reg, RECALC_ALWAYS)?;
        }
        Ok(dir)
    }
}

/// Always recalculate xlsx and ods files on load (the default is "never").
const RECALC_ALWAYS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Calc/Formula/Load"><prop oor:name="OOXMLRecalcMode" oor:op="fuse"><value>0</value></prop></item>
<item oor:path="/org.openoffice.Office.Calc/Formula/Load"><prop oor:name="ODFRecalcMode" oor:op="fuse"><value>0</value></prop></item>
</oor:items>
"#;

fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    // Jitter from the clock's low bits: enough to keep retries from marching in step.
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let jitter = exp.mul_f64(f64::from(nanos % 1000) / 2000.0);
    exp + jitter
}

fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        let pid = child.id() as i32;
        // SAFETY: kill(2) with a negative pid signals the process group the child leads.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct SlotGuard<'a> {
    lo: &'a LibreOffice,
    slot: usize,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.lo.busy.lock()[self.slot] = false;
        self.lo.freed.notify_one();
    }
}

struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Spawns, retrying briefly while the program's file is "busy" (ETXTBSY): on Linux a
/// program just written, or being replaced by a package upgrade, cannot be executed while
/// any process (even another thread's child between fork and exec) holds it open for writing.
fn spawn_retrying_busy(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    const ETXTBSY: i32 = 26;
    let mut attempt = 0u64;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempt < 8 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(5 * attempt));
            }
            other => return other,
        }
    }
}

/// Whether a program can be found (absolute path, or on PATH).
pub fn available(program: &Path) -> bool {
    if program.is_absolute() {
        return program.exists();
    }
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-soffice");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn lo(dir: &Path, body: &str) -> LibreOffice {
        let cfg = LibreOfficeConfig {
            program: script(dir, body),
            timeout: Duration::from_millis(400),
            retries: 1,
            backoff: Duration::from_millis(10),
            failure_threshold: 2,
            cooldown: Duration::from_millis(300),
            work_dir: dir.join("work"),
            ..Default::default()
        };
        LibreOffice::new(cfg, Arc::new(RecalcStats::default()))
    }

    #[test]
    fn hung_process_is_killed_and_the_breaker_opens_then_recovers() {
        let dir = std::env::temp_dir().join(format!("gemba-lo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lo = lo(&dir, "sleep 30");
        let budget = Budget::unlimited();
        let t = Instant::now();
        let e = lo.recalculate("fork-1", b"x", &budget).unwrap_err().to_string();
        assert!(e.contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "killed at the timeout, took {:?}", t.elapsed());
        assert_eq!(lo.breaker_state(), BreakerState::Closed);
        lo.recalculate("fork-1", b"x", &budget).unwrap_err();
        assert_eq!(lo.breaker_state(), BreakerState::Open, "two failures open it");
        let t = Instant::now();
        let e = lo.recalculate("fork-1", b"x", &budget).unwrap_err().to_string();
        assert!(e.contains("circuit open") && e.contains("workbook fork-1 "), "{e}");
        assert!(t.elapsed() < Duration::from_millis(50), "fails fast while open");
        // LibreOffice "works" again: a script that copies its input to the output dir.
        script(
            &dir,
            r#"for a; do last="$a"; done; out=""; prev=""; for a; do [ "$prev" = "--outdir" ] && out="$a"; prev="$a"; done; cp "$last" "$out/""#,
        );
        std::thread::sleep(Duration::from_millis(350));
        let bytes = lo.recalculate("fork-1", b"payload", &budget).unwrap();
        assert_eq!(bytes, b"payload");
        assert_eq!(lo.breaker_state(), BreakerState::Closed, "a good trial closes it");
        assert!(lo.stats.breaker_transitions.load(Ordering::Relaxed) >= 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn crashes_are_retried_with_backoff() {
        let dir = std::env::temp_dir().join(format!("gemba-lo-crash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lo = lo(&dir, "exit 3");
        let e = lo.recalculate("fork-1", b"x", &Budget::unlimited()).unwrap_err().to_string();
        assert!(e.contains("after 2 attempts"), "{e}");
        assert_eq!(lo.stats.retries.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_libreoffice_cannot_load_is_refused_at_once_and_does_not_open_the_breaker() {
        let dir = std::env::temp_dir().join(format!("gemba-lo-reject-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // What soffice --convert-to does with a file it cannot read: says so, exits 0, writes nothing.
        let lo = lo(&dir, "echo 'Error: source file could not be loaded' >&2; exit 0");
        for _ in 0..3 {
            let e = lo.recalculate("fork-7", b"x", &Budget::unlimited()).unwrap_err().to_string();
            assert!(e.contains("workbook fork-7 ") && e.contains("cannot open this workbook"), "{e}");
            assert!(e.contains("could not be loaded") && e.contains("in_process"), "{e}");
        }
        assert_eq!(lo.breaker_state(), BreakerState::Closed, "the file's fault, not the backend's");
        assert_eq!(lo.stats.retries.load(Ordering::Relaxed), 0, "not retried");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
