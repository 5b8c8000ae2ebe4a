//! Serving an axum router on a TCP listener with the two bounds `axum::serve` leaves out: a
//! deadline for a request's headers, and a cap on open connections. Without them a client that
//! opens connections and sends nothing (or half a request line) keeps each one forever, and a
//! few thousand of them use up the process's file descriptors: the MCP endpoint and the admin
//! listener (its `/healthz` too) stop answering.
//!
//! - A connection gets [`HEADER_TIMEOUT`] to send each request's headers, counted from when
//!   the server starts waiting for them: from the accept, and again after each answer on a
//!   kept-alive connection (an idle kept-alive connection is closed after that time). A
//!   streaming answer (an SSE stream) is not a wait for headers and is not cut.
//! - At most `max_connections` are open at once. Past that, new connections wait in the
//!   kernel's accept queue until one closes (a warning says so, once per episode), so the file
//!   descriptors held stay bounded whatever clients do.
//!
//! Shutdown is graceful as with `axum::serve`: the listener closes, each connection finishes
//! the request it is serving, and the function returns when all have closed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// How long a connection may take to send a request's headers (hyper's default, which it
/// applies only when given a timer, and axum gives none).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin listener's cap: a few scrapers, probes and up to 64 dashboard viewers.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;

/// The MCP listeners' default cap (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// What bounds a listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Bounds {
    pub fn new(max_connections: usize) -> Self {
        Self { max_connections: max_connections.max(1), header_timeout: HEADER_TIMEOUT }
    }
}

/// Serve `app` on `listener` until `shutdown` completes, then finish gracefully (see the module
/// docs). `what` names the listener in logs.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(bounds.max_connections));
    let (close_tx, close_rx) = watch::channel(());
    let warned = AtomicBool::new(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{what}: {} connections are open (the limit); new connections wait until one closes",
                        bounds.max_connections
                    );
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        if permits.available_permits() > bounds.max_connections / 2 {
            warned.store(false, Ordering::Relaxed);
        }
        let (tcp, _remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory, or a connection reset before it was
                    // accepted: wait a little rather than spin, and go on.
                    tracing::debug!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // An answer is written in several small pieces (headers, event-stream frames, the last
        // chunk): with Nagle's algorithm on, a kept-alive connection can hold the last piece
        // until the client's delayed ACK (~40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
        }
        let service = TowerToHyperService::new(app.clone());
        let mut close = close_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(bounds.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::trace!("connection ended: {e}");
                    }
                    return;
                }
                _ = close.changed() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::trace!("connection ended: {e}");
            }
            drop(close);
        });
    }
    drop(listener);
    drop(close_rx);
    let _ = close_tx.send(());
    close_tx.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn started(bounds: Bounds) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, bounds, "test", async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_full_request_is_closed_at_the_header_deadline() {
        let bounds = Bounds { max_connections: 8, header_timeout: Duration::from_millis(300) };
        let (addr, _stop) = started(bounds).await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: 127.").await.unwrap();
        let t = std::time::Instant::now();
        let mut buf = Vec::new();
        // Closed by the server (end of stream, possibly with a 408 first), well within 5 s.
        tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await.unwrap().ok();
        tokio::time::timeout(Duration::from_secs(5), half.read_to_end(&mut buf)).await.unwrap().ok();
        assert!(t.elapsed() >= Duration::from_millis(250), "{:?}", t.elapsed());
        assert!(get(addr).await.ends_with("ok"));
    }

    #[tokio::test]
    async fn past_the_cap_a_connection_waits_for_one_to_close() {
        let bounds = Bounds { max_connections: 2, header_timeout: Duration::from_secs(30) };
        let (addr, _stop) = started(bounds).await;
        let a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Both places are held: a third request is not served...
        let third = tokio::spawn(get(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!third.is_finished());
        // ...until one of them closes.
        drop(a);
        let answer = tokio::time::timeout(Duration::from_secs(5), third).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    }

    #[tokio::test]
    async fn shutdown_lets_a_kept_alive_connection_go_and_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, Bounds::new(4), "test", async move {
            let _ = stopped.await;
        }));
        let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    }
}
