//! A stdio upstream: the server's process, started and supervised by the proxy. Messages are
//! lines on its stdin and stdout (its stderr goes to the proxy's). When it dies, the requests
//! it had been given are reported lost (`UpEvent::Exited`), it is restarted with backoff, and
//! the client's handshake and session settings are replayed to the new process before anything
//! else reaches it; messages sent meanwhile wait in the queue.

use std::ffi::OsString;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::lines::{Line, LineReader, message_text};
use super::message::{self, Kind};
use super::upstream::{Health, Replay, UpEvent};

/// The command that starts the server.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl ChildSpec {
    pub fn display(&self) -> String {
        std::iter::once(&self.program).chain(&self.args).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    }
}

/// Restart delays: 250 ms doubling to 30 s; a process that ran 30 s resets it.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long the replayed handshake may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping process gets between closing its input and being killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Messages waiting to be written (while the process is slow or restarting).
const QUEUE: usize = 256;
/// Bytes of queued messages gathered into one write to the process.
const MAX_BATCH: usize = 256 * 1024;

struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Self {
        let seed = u64::from(std::process::id()) ^ Instant::now().elapsed().as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15;
        Self { next: FIRST_BACKOFF, seed }
    }

    /// The delay before the next start, given how long the last process ran (±20 % jitter, so
    /// many proxies restarting one shared dependency do not retry in step).
    fn next(&mut self, ran: Duration) -> Duration {
        if ran >= STABLE_AFTER {
            self.next = FIRST_BACKOFF;
        }
        let base = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = 0.8 + 0.4 * (self.seed % 1_000) as f64 / 1_000.0;
        base.mul_f64(jitter)
    }
}

/// Responses the supervisor waits for itself (the replayed handshake), by id.
type Swallow = Arc<Mutex<std::collections::HashMap<String, oneshot::Sender<String>>>>;

pub struct ChildUpstream {
    tx: mpsc::Sender<(u64, String)>,
    written: Arc<AtomicU64>,
    pub health: Arc<Health>,
    stop: CancellationToken,
    done: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ChildUpstream {
    /// Start the process (at once) and its supervisor. `replay` is what a restarted process
    /// must hear first; `max_line` bounds one message.
    pub fn start(spec: ChildSpec, events: mpsc::Sender<UpEvent>, replay: Arc<Mutex<Replay>>, max_line: usize) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let health = Arc::new(Health::default());
        let stop = CancellationToken::new();
        let sup = Supervisor {
            spec,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            events,
            replay,
            health: health.clone(),
            written: written.clone(),
            stop: stop.clone(),
            max_line,
        };
        let done = tokio::spawn(sup.run());
        Self { tx, written, health, stop, done: Mutex::new(Some(done)) }
    }

    pub async fn send(&self, seq: u64, mut text: String) -> Result<(), String> {
        text.push('\n');
        self.tx.send((seq, text)).await.map_err(|_| "the upstream process supervisor has stopped".to_string())
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub async fn shutdown(&self) {
        self.stop.cancel();
        let handle = self.done.lock().take();
        if let Some(h) = handle {
            let _ = tokio::time::timeout(STOP_GRACE + Duration::from_secs(2), h).await;
        }
    }
}

struct Supervisor {
    spec: ChildSpec,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<(u64, String)>>>,
    events: mpsc::Sender<UpEvent>,
    replay: Arc<Mutex<Replay>>,
    health: Arc<Health>,
    written: Arc<AtomicU64>,
    stop: CancellationToken,
    max_line: usize,
}

fn spawn(spec: &ChildSpec) -> std::io::Result<Child> {
    Command::new(&spec.program)
        .args(&spec.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => "exited".into(),
    }
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = Backoff::new();
        let mut generation = 0u64;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            generation += 1;
            let started = Instant::now();
            let reason = match spawn(&self.spec) {
                Ok(child) => match self.serve(child, generation).await {
                    Some(reason) => reason,
                    None => return, // stopped on purpose
                },
                Err(e) => format!("cannot start `{}`: {e}", self.spec.display()),
            };
            self.health.set_down(&reason);
            let delay = backoff.next(started.elapsed());
            *self.health.next_attempt.lock() = Some(Instant::now() + delay);
            tracing::warn!("upstream `{}` {reason}; restarting in {:.2} s", self.spec.display(), delay.as_secs_f64());
            let _ = self.events.send(UpEvent::Exited { written: self.written.load(Ordering::Acquire), reason }).await;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// Run one process until it ends: `Some(why)` when it died, `None` when stopped on purpose.
    async fn serve(&self, mut child: Child, generation: u64) -> Option<String> {
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill().await;
            return Some("started without pipes".into());
        };
        let swallow: Swallow = Arc::default();
        let mut reader = tokio::spawn(read_lines(stdout, self.events.clone(), swallow.clone(), self.max_line));
        if generation > 1 {
            if let Err(e) = self.replay(&mut stdin, &swallow, generation).await {
                tracing::warn!("upstream `{}`: replaying the session failed: {e}", self.spec.display());
            }
            self.health.restarts.fetch_add(1, Ordering::Relaxed);
            let _ = self.events.send(UpEvent::Restarted).await;
        }
        self.health.set_up();
        let writer = tokio::spawn(write_loop(stdin, self.rx.clone(), self.written.clone()));
        // The reader's handle may be awaited once only: note whether it has ended here.
        let mut reader_done = false;
        let stopped = tokio::select! {
            _ = &mut reader => {
                reader_done = true;
                false
            }
            _ = child.wait() => false,
            _ = self.stop.cancelled() => true,
        };
        writer.abort();
        let _ = writer.await; // gives the queue back to the next process
        if stopped {
            // Closing stdin (the writer held it) asks an MCP server to exit; then a signal.
            if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            reader.abort();
            return None;
        }
        let reason = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            Ok(Ok(status)) => describe_exit(status),
            Ok(Err(e)) => format!("could not be waited for: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                "closed its output and was killed".into()
            }
        };
        // Everything the process wrote before it died is delivered before the exit is told.
        if !reader_done && tokio::time::timeout(Duration::from_secs(1), &mut reader).await.is_err() {
            reader.abort();
        }
        Some(reason)
    }

    /// Send the client's handshake and session settings to a new process and wait for each
    /// answer (which the client already had from the first process, so it is not forwarded).
    async fn replay(&self, stdin: &mut ChildStdin, swallow: &Swallow, generation: u64) -> Result<(), String> {
        let replay = self.replay.lock().clone();
        let mut requests = Vec::new();
        if let Some(init) = &replay.initialize {
            requests.push(("initialize", init.clone()));
        }
        let deadline = Instant::now() + REPLAY_TIMEOUT;
        let mut n = 0;
        for (what, text) in requests
            .into_iter()
            .chain(std::iter::once(("", String::new())))
            .chain(replay.log_level.iter().map(|t| ("logging/setLevel", t.clone())))
            .chain(replay.subscriptions.values().map(|t| ("resources/subscribe", t.clone())))
        {
            if what.is_empty() {
                // Between the handshake and the settings: the initialized notification.
                if let Some(note) = &replay.initialized {
                    write_line(stdin, note).await?;
                }
                continue;
            }
            n += 1;
            let id = format!("\"gemba-proxy-replay-{generation}-{n}\"");
            let m = message::peek(&text);
            let Some(line) = m.id.and_then(|old| message::splice(&text, old, &id)) else {
                continue;
            };
            let (tx, rx) = oneshot::channel();
            swallow.lock().insert(id.clone(), tx);
            write_line(stdin, &line).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx).await {
                Ok(Ok(answer)) => {
                    let a = message::peek(&answer);
                    if a.error.is_some() {
                        let (code, msg) = message::error_info(a.error);
                        tracing::warn!("upstream answered the replayed {what} with error {code}: {msg}");
                    }
                }
                _ => {
                    swallow.lock().remove(&id);
                    return Err(format!("no answer to the replayed {what} within {} s", REPLAY_TIMEOUT.as_secs()));
                }
            }
        }
        Ok(())
    }
}

async fn write_line(stdin: &mut ChildStdin, text: &str) -> Result<(), String> {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    stdin.write_all(line.as_bytes()).await.map_err(|e| format!("cannot write to the upstream: {e}"))
}

async fn write_loop(
    mut stdin: ChildStdin,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<(u64, String)>>>,
    written: Arc<AtomicU64>,
) {
    let mut rx = rx.lock().await;
    // Messages queued together go out in one write: with many callers, one syscall (and one
    // wake-up of the upstream) for several messages.
    let mut batch: Vec<u8> = Vec::new();
    while let Some((mut seq, line)) = rx.recv().await {
        let Ok((next_seq, next)) = rx.try_recv() else {
            // Counted as given to this process before the write: if it dies now, the message
            // died with it.
            written.store(seq, Ordering::Release);
            if stdin.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            continue;
        };
        batch.clear();
        batch.extend_from_slice(line.as_bytes());
        batch.extend_from_slice(next.as_bytes());
        seq = next_seq;
        while batch.len() < MAX_BATCH
            && let Ok((s, more)) = rx.try_recv()
        {
            batch.extend_from_slice(more.as_bytes());
            seq = s;
        }
        written.store(seq, Ordering::Release);
        if stdin.write_all(&batch).await.is_err() {
            return;
        }
        if batch.capacity() > MAX_BATCH * 4 {
            batch = Vec::new();
        }
    }
}

/// Read the process's stdout line by line (each line at most `max_line` bytes; longer ones are
/// skipped with a warning) and hand the messages on, except answers the supervisor awaits.
async fn read_lines(stdout: ChildStdout, events: mpsc::Sender<UpEvent>, swallow: Swallow, max_line: usize) {
    let mut lines = LineReader::new(stdout, max_line);
    loop {
        let line = match lines.next().await {
            Ok(Line::Eof) => return,
            Ok(Line::TooLong(skipped)) => {
                let glimpse = skipped.glimpse();
                tracing::warn!(
                    "upstream wrote a message of more than {max_line} bytes ({}, id {}); not passed on",
                    skipped.bytes,
                    glimpse.id.as_deref().unwrap_or("unknown")
                );
                let event = UpEvent::TooLong { glimpse, bytes: skipped.bytes, limit: max_line };
                if events.send(event).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Line::Message(line)) => line,
            Err(e) => {
                tracing::warn!("cannot read the upstream's output: {e}");
                return;
            }
        };
        let Some(text) = message_text(line) else { continue };
        if !swallow.lock().is_empty() {
            let m = message::peek(&text);
            if m.kind == Kind::Response
                && let Some(tx) = m.id_text().and_then(|id| swallow.lock().remove(id))
            {
                let _ = tx.send(text);
                continue;
            }
        }
        if events.send(UpEvent::Message { text, via: None }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_stable_run() {
        let mut b = Backoff::new();
        let quick = Duration::from_millis(10);
        let delays: Vec<f64> = (0..10).map(|_| b.next(quick).as_secs_f64()).collect();
        assert!((0.2..=0.3).contains(&delays[0]), "{delays:?}");
        assert!((0.4..=0.6).contains(&delays[1]), "{delays:?}");
        assert!(delays[9] <= 36.0 && delays[9] >= 24.0, "capped at 30 s ± 20 %: {delays:?}");
        assert!(b.next(STABLE_AFTER).as_secs_f64() <= 0.3, "reset after a stable run");
    }
}
