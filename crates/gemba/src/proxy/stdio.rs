//! The client side over stdio: one session, lines in on stdin, lines out on a private handle to
//! stdout (fd 1 itself is pointed at stderr so nothing else in the process can write to the
//! client). A thread each way, so a message costs no hop through the blocking pool.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use super::Proxy;
use super::link::ClientCtx;

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

pub async fn serve(proxy: Arc<Proxy>) -> Result<()> {
    let out = client_out().context("cannot set up the MCP stream on stdout")?;
    let (out_tx, out_rx) = mpsc::channel::<String>(OUT_QUEUE);
    let writer = std::thread::Builder::new().name("proxy-stdout".into()).spawn(move || write_out(out, out_rx))?;
    let (in_tx, mut in_rx) = mpsc::channel::<String>(64);
    let max = proxy.cfg.max_message_bytes;
    std::thread::Builder::new().name("proxy-stdin".into()).spawn(move || read_in(in_tx, max))?;

    let session = proxy.new_session_id();
    let (link, assignment) = proxy.session_link(session, Some(out_tx.clone()), 0).await?;
    tracing::info!("gemba proxy: MCP on stdio, upstream {}", link.upstream_name);
    let ctx = ClientCtx { reply: out_tx.clone(), stream: 0, session, assignment, forwarded: None, protocol: None };
    // Made once: a signal future made per message would register its handlers every time.
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            line = in_rx.recv() => match line {
                Some(line) => link.on_client_message(line, &ctx).await,
                None => break,
            },
            _ = &mut shutdown => break,
        }
    }
    proxy.close_link(&link).await;
    drop(ctx);
    drop(out_tx);
    drop(link);
    // The writer ends when every sender is gone (answers still queued are written first).
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
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

fn read_in(tx: mpsc::Sender<String>, max: usize) {
    let stdin = std::io::stdin();
    let mut r = stdin.lock();
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        buf.clear();
        match read_line_bounded(&mut r, &mut buf, max) {
            Ok(None) => return,
            Ok(Some(false)) => {
                tracing::warn!("a client message longer than {max} bytes was skipped (raise --max-message-mb)");
                continue;
            }
            Ok(Some(true)) => {}
            Err(e) => {
                tracing::warn!("cannot read stdin: {e}");
                return;
            }
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        if tx.blocking_send(line).is_err() {
            return;
        }
    }
}

/// One line of at most `max` bytes: `None` at end of input, `Some(false)` when it was longer
/// (and skipped), `Some(true)` otherwise.
fn read_line_bounded(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<bool>> {
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && !too_long { None } else { Some(!too_long) });
        }
        let (take, done) = match chunk.iter().position(|c| *c == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if too_long || buf.len() + take > max {
            too_long = true;
            buf.clear();
        } else {
            buf.extend_from_slice(&chunk[..take]);
        }
        r.consume(take);
        if done {
            return Ok(Some(!too_long));
        }
    }
}
