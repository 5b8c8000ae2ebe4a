//! The client side over stdio: one session, lines in on stdin, lines out on a private handle to
//! stdout (fd 1 itself is pointed at stderr so nothing else in the process can write to the
//! client). When both are pipes (how MCP clients start servers) they are read and written on
//! the runtime's own thread, so a message costs no wake-up of another thread; otherwise (a
//! terminal, a file, a socket) a thread each way, so a message costs no hop through the
//! blocking pool.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::Proxy;
use super::lines::{Line, LineReader, Skipped, message_text};
use super::link::ClientCtx;
#[cfg(unix)]
use crate::stdio_pipes::{pipe_sender, stdin_pipe};

/// Messages waiting for stdout; when full, the upstream's output waits (and so the upstream).
const OUT_QUEUE: usize = 1_024;

/// The private handle on stdout, used from a plain thread.
#[cfg(unix)]
fn client_out() -> std::io::Result<std::fs::File> {
    crate::backpressure::private_stdout()?.try_into_std().map_err(|_| std::io::Error::other("stdout handle busy"))
}

#[cfg(not(unix))]
fn client_out() -> std::io::Result<std::fs::File> {
    Err(std::io::Error::other("gemba proxy over stdio needs a Unix system"))
}

/// Where client messages come from: stdin as an async pipe, or a thread reading it.
enum Input {
    #[cfg(unix)]
    Pipe(LineReader<tokio::net::unix::pipe::Receiver>),
    Thread(mpsc::Receiver<Incoming>),
}

/// What the client sent: a message, or one too long to pass (what is kept of it).
enum Incoming {
    Message(String),
    TooLong(Skipped),
}

impl Input {
    fn open(max: usize) -> Result<Self> {
        #[cfg(unix)]
        if let Some(pipe) = stdin_pipe() {
            return Ok(Self::Pipe(LineReader::new(pipe, max)));
        }
        let (in_tx, in_rx) = mpsc::channel::<Incoming>(64);
        std::thread::Builder::new().name("proxy-stdin".into()).spawn(move || read_in(in_tx, max))?;
        Ok(Self::Thread(in_rx))
    }

    /// The next message (`None` at the end of input).
    async fn next(&mut self) -> Option<Incoming> {
        match self {
            #[cfg(unix)]
            Self::Pipe(lines) => loop {
                match lines.next().await {
                    Ok(Line::Eof) => return None,
                    Ok(Line::TooLong(skipped)) => return Some(Incoming::TooLong(skipped)),
                    Ok(Line::Message(line)) => {
                        if let Some(line) = message_text(line) {
                            return Some(Incoming::Message(line));
                        }
                    }
                    Err(e) => {
                        tracing::warn!("cannot read stdin: {e}");
                        return None;
                    }
                }
            },
            Self::Thread(rx) => rx.recv().await,
        }
    }
}

/// Where client messages go: a task writing stdout as an async pipe, or a thread writing it.
enum Output {
    Task(tokio::task::JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

impl Output {
    fn start(out: std::fs::File, rx: mpsc::Receiver<String>) -> Result<Self> {
        #[cfg(unix)]
        let out = match pipe_sender(out) {
            Ok(pipe) => return Ok(Self::Task(tokio::spawn(write_out_async(pipe, rx)))),
            Err(file) => file,
        };
        Ok(Self::Thread(std::thread::Builder::new().name("proxy-stdout".into()).spawn(move || write_out(out, rx))?))
    }

    /// Wait until what is queued is written (the writer ends when every sender is gone).
    async fn finish(self) {
        match self {
            Self::Task(t) => {
                let _ = t.await;
            }
            Self::Thread(t) => {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
    }
}

pub async fn serve(proxy: Arc<Proxy>) -> Result<()> {
    let out = client_out().context("cannot set up the MCP stream on stdout")?;
    let (out_tx, out_rx) = mpsc::channel::<String>(OUT_QUEUE);
    let writer = Output::start(out, out_rx)?;
    let max = proxy.cfg.max_message_bytes;
    let mut input = Input::open(max)?;

    let session = proxy.new_session_id();
    let (link, assignment) = proxy.session_link(session, Some(out_tx.clone()), 0).await?;
    tracing::info!("gemba proxy: MCP on stdio, upstream {}", link.upstream_name);
    let ctx = ClientCtx { reply: out_tx.clone(), stream: 0, session, assignment, forwarded: None, protocol: None };
    // Made once: a signal future made per message would register its handlers every time.
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            line = input.next() => match line {
                Some(Incoming::Message(line)) => link.on_client_message(line, &ctx).await,
                Some(Incoming::TooLong(skipped)) => {
                    link.on_client_too_long(skipped.glimpse(), skipped.bytes, max, &ctx).await;
                }
                None => break,
            },
            _ = &mut shutdown => break,
        }
    }
    proxy.close_link(&link).await;
    drop(ctx);
    drop(out_tx);
    drop(link);
    writer.finish().await;
    Ok(())
}

/// Write what is queued: a message alone straight from its own buffer (the newline goes in the
/// spare byte the reader left), several in one vectored write.
#[cfg(unix)]
async fn write_out_async(mut out: tokio::net::unix::pipe::Sender, mut rx: mpsc::Receiver<String>) {
    let mut queued: Vec<String> = Vec::new();
    while let Some(first) = rx.recv().await {
        queued.push(first);
        let mut bytes = queued[0].len();
        while bytes < MAX_WRITE
            && let Ok(next) = rx.try_recv()
        {
            bytes += next.len() + 1;
            queued.push(next);
        }
        for m in &mut queued {
            m.push('\n');
        }
        if write_all_vectored(&mut out, &queued).await.is_err() {
            return;
        }
        queued.clear();
    }
}

/// Bytes gathered into one write to stdout.
#[cfg(unix)]
const MAX_WRITE: usize = 256 * 1024;

/// Write every message, in order, in as few system calls as the pipe allows.
#[cfg(unix)]
async fn write_all_vectored(out: &mut tokio::net::unix::pipe::Sender, messages: &[String]) -> std::io::Result<()> {
    if let [one] = messages {
        return out.write_all(one.as_bytes()).await;
    }
    let mut slices: Vec<std::io::IoSlice> = messages.iter().map(|m| std::io::IoSlice::new(m.as_bytes())).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = out.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

fn write_out(out: std::fs::File, mut rx: mpsc::Receiver<String>) {
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Some(first) = rx.blocking_recv() {
        let mut m = Some(first);
        // Write what is queued, then flush once.
        while let Some(msg) = m {
            if w.write_all(msg.as_bytes()).and_then(|_| w.write_all(b"\n")).is_err() {
                return;
            }
            m = rx.try_recv().ok();
        }
        if w.flush().is_err() {
            return;
        }
    }
}

fn read_in(tx: mpsc::Sender<Incoming>, max: usize) {
    let stdin = std::io::stdin();
    let mut r = stdin.lock();
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        buf.clear();
        let incoming = match read_line_bounded(&mut r, &mut buf, max) {
            Ok(None) => return,
            Ok(Some(Some(skipped))) => Incoming::TooLong(skipped),
            Ok(Some(None)) => match message_text(std::mem::take(&mut buf)) {
                Some(line) => Incoming::Message(line),
                None => continue,
            },
            Err(e) => {
                tracing::warn!("cannot read stdin: {e}");
                return;
            }
        };
        if tx.blocking_send(incoming).is_err() {
            return;
        }
    }
}

/// One line of at most `max` bytes into `buf`: `None` at end of input, `Some(Some(skipped))`
/// when it was longer (and skipped, its ends kept), `Some(None)` otherwise.
fn read_line_bounded(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<Option<Skipped>>> {
    let mut skipped: Option<Skipped> = None;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && skipped.is_none() { None } else { Some(skipped) });
        }
        let (take, done) = match chunk.iter().position(|c| *c == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if skipped.is_none() && buf.len() + take > max {
            // Too long: what was gathered of it so far is kept as its head.
            let mut s = Skipped::default();
            s.add(buf);
            buf.clear();
            skipped = Some(s);
        }
        match &mut skipped {
            Some(s) => s.add(&chunk[..take]),
            None => buf.extend_from_slice(&chunk[..take]),
        }
        r.consume(take);
        if done {
            return Ok(Some(skipped));
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn a_line_too_long_from_a_blocking_reader_is_skipped_with_its_ends_kept() {
        let long = format!(
            r#"{{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{{"name":"echo","arguments":{{"s":"{}"}}}}}}"#,
            "q".repeat(3_000)
        );
        let input = format!("short\n{long}\nafter");
        // A buffer of 64 bytes, so the long line spans many fills.
        let mut r = std::io::BufReader::with_capacity(64, input.as_bytes());
        let mut buf = Vec::new();
        assert!(matches!(read_line_bounded(&mut r, &mut buf, 100).unwrap(), Some(None)));
        assert_eq!(buf, b"short\n");
        buf.clear();
        let Some(Some(skipped)) = read_line_bounded(&mut r, &mut buf, 100).unwrap() else { panic!("skipped") };
        assert_eq!(skipped.bytes, long.len() + 1);
        let g = skipped.glimpse();
        assert_eq!(
            (g.id.as_deref(), g.method.as_deref(), g.tool.as_deref()),
            (Some(r#""a""#), Some("tools/call"), Some("echo"))
        );
        assert!(buf.is_empty());
        assert!(matches!(read_line_bounded(&mut r, &mut buf, 100).unwrap(), Some(None)));
        assert_eq!(buf, b"after");
        buf.clear();
        assert!(read_line_bounded(&mut r, &mut buf, 100).unwrap().is_none());
    }

    #[tokio::test]
    async fn many_queued_messages_go_out_whole_and_in_order() {
        // More messages than one writev may carry (IOV_MAX is 1,024 on Linux), and one large.
        let mut messages: Vec<String> = (0..3_000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        messages.push(format!("{}\n", "z".repeat(300_000)));
        let (mut tx, mut rx) = tokio::net::unix::pipe::pipe().unwrap();
        let reader = tokio::spawn(async move {
            let mut got = String::new();
            rx.read_to_string(&mut got).await.unwrap();
            got
        });
        write_all_vectored(&mut tx, &messages).await.unwrap();
        drop(tx);
        assert_eq!(reader.await.unwrap(), messages.concat());
    }
}
