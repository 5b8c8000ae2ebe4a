//! Runs one child process of this binary with a timeout and a memory limit.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::child::PHASE_MARKER;

/// Limits applied to every child.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// Address-space limit (RLIMIT_AS) in MiB; 0 means none.
    pub memory_mb: u64,
}

/// How a child ended.
#[derive(Debug)]
pub enum ChildEnd {
    /// The child printed a JSON line (its last line on stdout).
    Finished { json: String },
    /// Killed after `Limits::timeout`; `phase` is the last marker it printed.
    TimedOut { phase: Option<String> },
    /// Exited without a JSON line (abort, signal, stack overflow, out of memory).
    Crashed { status: String, phase: Option<String>, stderr_tail: String },
}

/// Runs `this-binary ARGS... FILE` and waits for it, at most `limits.timeout`. The child
/// leads a process group of its own, so that the processes it starts (LibreOffice) are
/// killed with it on timeout.
pub fn run_child<S: AsRef<OsStr>>(args: &[S], file: &Path, limits: Limits) -> Result<ChildEnd> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let mut command = Command::new(exe);
    command.args(args).arg(file).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.process_group(0);
    apply_memory_limit(&mut command, limits.memory_mb);
    let mut child = command.spawn().context("spawning child")?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_with_timeout(&mut child, limits.timeout)?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(classify(status, &stdout, &stderr))
}

fn classify(status: Option<ExitStatus>, stdout: &str, stderr: &str) -> ChildEnd {
    let phase = last_phase(stderr);
    let Some(status) = status else {
        return ChildEnd::TimedOut { phase };
    };
    match stdout.lines().rev().find(|line| line.starts_with('{')) {
        Some(json) if status.success() => ChildEnd::Finished { json: json.to_string() },
        _ => ChildEnd::Crashed { status: describe(status), phase, stderr_tail: tail(stderr, 600) },
    }
}

/// Polls the child until it exits; kills its process group (and returns `None`) after
/// `timeout`.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            kill_group(child);
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the child's process group: the child and whatever it started. The child leads
/// the group and is not reaped yet, so the group id cannot name anything else.
fn kill_group(child: &mut Child) {
    let killed = libc::pid_t::try_from(child.id())
        // SAFETY: kill has no memory-safety preconditions.
        .is_ok_and(|pid| unsafe { libc::kill(-pid, libc::SIGKILL) } == 0);
    if !killed {
        let _ = child.kill();
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn apply_memory_limit(command: &mut Command, memory_mb: u64) {
    if memory_mb == 0 {
        return;
    }
    let bytes = memory_mb.saturating_mul(1 << 20);
    // SAFETY: setrlimit is async-signal-safe and touches only the forked child.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn last_phase(stderr: &str) -> Option<String> {
    stderr.lines().rev().find_map(|line| line.strip_prefix(PHASE_MARKER)).map(str::to_string)
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "unknown exit".to_string(),
    }
}

fn tail(text: &str, max_chars: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(max_chars)..].iter().collect()
}
