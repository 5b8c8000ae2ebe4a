//! The batching exporter: finished spans go through a bounded queue (one `try_send` per call,
//! never blocking the caller) to a thread of its own that batches them and POSTs each batch as
//! OTLP/HTTP protobuf. A receiver that is down or slow costs counted drops and nothing else:
//! connect, write and read have timeouts, and after a failure exports pause with exponential
//! back-off (the spans arriving meanwhile are dropped and counted, so the queue never stays full).
//! Plain `http://` only (a collector beside the process); no TLS is linked in.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::otlp::{Resource, encode_spans_into, frame_request_into};
use super::span::Span;

/// Why a trace export cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "OTLP endpoint '{0}' is not supported: give http://host:port[/path] (no TLS; put a collector beside Gemba)"
    )]
    Endpoint(String),
    #[error("OTLP header '{0}' is not name=value (OTEL_EXPORTER_OTLP_HEADERS is a comma-separated list of name=value)")]
    Header(String),
    #[error("cannot start the trace exporter thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Where batches go: host, port and path of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/path]` (port 80 by default, path `/v1/traces` when empty).
    pub fn parse(url: &str) -> Result<Endpoint, TraceError> {
        let bad = || TraceError::Endpoint(url.to_string());
        let rest = url.trim().strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(port) => (h, port),
                Err(_) if authority.starts_with('[') && authority.ends_with(']') => (authority, 80),
                Err(_) => return Err(bad()),
            },
            _ => (authority, 80),
        };
        let path = if path.is_empty() || path == "/" { "/v1/traces" } else { path };
        if host.is_empty() || path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(bad());
        }
        Ok(Endpoint { host: host.to_string(), port, path: path.to_string() })
    }
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`: `name=value,name2=value2` (values percent-decoded).
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, TraceError> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| TraceError::Header(item.into()))?;
        let (k, v) = (k.trim(), percent_decode(v.trim()));
        let clean = |x: &str| !x.is_empty() && !x.bytes().any(|b| b == b'\r' || b == b'\n');
        if !clean(k) || !clean(&v) || k.contains(' ') {
            return Err(TraceError::Header(item.into()));
        }
        out.push((k.to_string(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The exporter's settings.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub endpoint: Endpoint,
    /// Extra request headers (authentication, say).
    pub headers: Vec<(String, String)>,
    pub resource: Resource,
    /// Most spans waiting for the exporter thread; a call whose spans do not fit is dropped
    /// (`queue_full`).
    pub queue_capacity: usize,
    /// Most spans in one POST.
    pub max_batch_spans: usize,
    /// A batch is sent at least this often while spans arrive.
    pub flush_interval: Duration,
    /// Connect, write and read timeout of one POST.
    pub timeout: Duration,
    /// Longest pause after failed exports (the pause doubles from 1 s up to this).
    pub max_backoff: Duration,
}

impl ExportConfig {
    pub fn new(endpoint: Endpoint, resource: Resource) -> Self {
        ExportConfig {
            endpoint,
            headers: Vec::new(),
            resource,
            queue_capacity: 16_384,
            max_batch_spans: 2048,
            flush_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What the exporter has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the receiver accepted (a 2xx answer).
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans dropped because their export failed or came during the back-off after a failure.
    pub dropped_export_failed: AtomicU64,
    /// POSTs that failed (connection, timeout, or a non-2xx status).
    pub failed_exports: AtomicU64,
}

/// The drop reasons `ExportStats` counts, with their counts.
impl ExportStats {
    pub fn dropped(&self) -> [(&'static str, u64); 2] {
        [
            ("queue_full", self.dropped_queue_full.load(Ordering::Relaxed)),
            ("export_failed", self.dropped_export_failed.load(Ordering::Relaxed)),
        ]
    }
}

/// What callers leave for the exporter thread: spans waiting, flush requests, and whether the
/// exporter is closing. Callers append under a short lock; the thread swaps the vector out.
#[derive(Debug, Default)]
struct Pending {
    /// The queued calls' spans, already encoded by the threads that made them.
    encoded: Vec<u8>,
    /// Per queued call: where its spans end in `encoded`, and how many there are.
    calls: Vec<(usize, usize)>,
    /// Spans queued (the queue's bound counts spans).
    spans: usize,
    flushes: Vec<SyncSender<()>>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Rung only when a batch is full, a flush is asked or the exporter closes: a call that
    /// adds spans does not wake the thread, which otherwise wakes once per flush interval.
    wake: Condvar,
}

/// The handle callers submit finished spans to. Dropping it flushes what is queued (bounded by
/// one export's timeout) and ends the thread.
#[derive(Debug)]
pub struct Exporter {
    shared: Arc<Shared>,
    stats: Arc<ExportStats>,
    queue_capacity: usize,
    max_batch_spans: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporter {
    /// Starts the exporter thread.
    pub fn start(cfg: ExportConfig) -> Result<Exporter, TraceError> {
        let shared = Arc::new(Shared::default());
        let stats = Arc::new(ExportStats::default());
        let (queue_capacity, max_batch_spans) = (cfg.queue_capacity.max(1), cfg.max_batch_spans.max(1));
        let (sh, st) = (shared.clone(), stats.clone());
        let thread = std::thread::Builder::new().name("kaizen-otlp".into()).spawn(move || run(cfg, &sh, &st))?;
        Ok(Exporter { shared, stats, queue_capacity, max_batch_spans, thread: Some(thread) })
    }

    /// Queues one call's spans; never blocks on the exporter (a full queue drops them, counted).
    /// The spans are encoded here, on the caller's thread, and dropped here: memory allocated by
    /// one thread and freed by another is the slow path of the C allocator, and it cost the
    /// calls more than the encoding does.
    pub fn submit(&self, spans: Vec<Span>) {
        thread_local! {
            static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        if spans.is_empty() {
            return;
        }
        let n = spans.len();
        ENCODED.with_borrow_mut(|buf| {
            buf.clear();
            encode_spans_into(&spans, buf);
            let mut p = self.shared.pending.lock();
            if p.closed || p.spans + n > self.queue_capacity {
                drop(p);
                self.stats.dropped_queue_full.fetch_add(n as u64, Ordering::Relaxed);
                return;
            }
            let before = p.spans;
            p.encoded.extend_from_slice(buf);
            let end = p.encoded.len();
            p.calls.push((end, n));
            p.spans += n;
            let full = before < self.max_batch_spans && p.spans >= self.max_batch_spans;
            drop(p);
            if full {
                self.shared.wake.notify_one();
            }
            // A burst's buffer is not kept.
            buf.shrink_to(64 * 1024);
        });
    }

    /// Exports everything queued so far, waiting at most `timeout` (at shutdown, say).
    pub fn flush(&self, timeout: Duration) {
        let (ack, done) = sync_channel(1);
        {
            let mut p = self.shared.pending.lock();
            if p.closed {
                return;
            }
            p.flushes.push(ack);
        }
        self.shared.wake.notify_one();
        let _ = done.recv_timeout(timeout);
    }

    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shared.pending.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(cfg: ExportConfig, shared: &Shared, stats: &ExportStats) {
    // The buffers are reused: the batch swapped out of the queue and the encoded body.
    let mut encoded: Vec<u8> = Vec::new();
    let mut calls: Vec<(usize, usize)> = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut backoff = Duration::ZERO;
    let mut paused_until: Option<Instant> = None;
    let max_batch = cfg.max_batch_spans.max(1);
    let mut deadline = Instant::now() + cfg.flush_interval;
    loop {
        let (flushes, closed) = {
            let mut p = shared.pending.lock();
            while p.spans < max_batch && p.flushes.is_empty() && !p.closed {
                if shared.wake.wait_until(&mut p, deadline).timed_out() {
                    break;
                }
            }
            std::mem::swap(&mut encoded, &mut p.encoded);
            std::mem::swap(&mut calls, &mut p.calls);
            p.spans = 0;
            (std::mem::take(&mut p.flushes), p.closed)
        };
        if Instant::now() >= deadline {
            deadline = Instant::now() + cfg.flush_interval;
        }
        for (from, to, n) in chunks(&calls, max_batch) {
            let n = n as u64;
            if paused_until.is_some_and(|t| Instant::now() < t) {
                stats.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            body.clear();
            frame_request_into(&cfg.resource, &encoded[from..to], &mut body);
            match post(&cfg, &body) {
                Ok(()) => {
                    stats.exported.fetch_add(n, Ordering::Relaxed);
                    backoff = Duration::ZERO;
                    paused_until = None;
                }
                Err(e) => {
                    stats.failed_exports.fetch_add(1, Ordering::Relaxed);
                    stats.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), cfg.max_backoff.max(Duration::from_secs(1)));
                    paused_until = Some(Instant::now() + backoff);
                    tracing::debug!("trace export to {}:{} failed: {e}", cfg.endpoint.host, cfg.endpoint.port);
                }
            }
        }
        encoded.clear();
        calls.clear();
        // Keep the reused buffers bounded (a burst may have grown them).
        encoded.shrink_to(1 << 22);
        calls.shrink_to(cfg.queue_capacity.min(4 * max_batch));
        body.shrink_to(1 << 22);
        for ack in flushes {
            let _ = ack.try_send(());
        }
        if closed {
            return;
        }
    }
}

/// The queued calls split into POSTs of at most `max_spans` spans each (a call with more goes
/// alone): (start, end) in the encoded bytes and the spans between them.
fn chunks(calls: &[(usize, usize)], max_spans: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let (mut start, mut end, mut n) = (0, 0, 0);
    for &(call_end, call_spans) in calls {
        if n > 0 && n + call_spans > max_spans {
            out.push((start, end, n));
            (start, n) = (end, 0);
        }
        end = call_end;
        n += call_spans;
    }
    if n > 0 {
        out.push((start, end, n));
    }
    out
}

/// Most bytes of a response read (the status line is all that matters).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One POST with `Connection: close`; Ok on a 2xx status.
fn post(cfg: &ExportConfig, body: &[u8]) -> std::io::Result<()> {
    let ep = &cfg.endpoint;
    let host = ep.host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, ep.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, cfg.timeout)?;
    s.set_write_timeout(Some(cfg.timeout))?;
    s.set_read_timeout(Some(cfg.timeout))?;
    s.set_nodelay(true)?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n",
        ep.path,
        ep.host,
        ep.port,
        body.len()
    );
    for (k, v) in &cfg.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let started = Instant::now();
    let mut resp = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    // The status line is enough; stop reading at the end of the headers.
    while !resp.windows(4).any(|w| w == b"\r\n\r\n") && resp.len() < MAX_RESPONSE_BYTES {
        if started.elapsed() > cfg.timeout {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "response too slow"));
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        resp.extend_from_slice(&buf[..n]);
    }
    let status = std::str::from_utf8(&resp)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("receiver answered status {status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_split_between_calls_and_hold_at_most_the_batch() {
        // Calls of 3, 4, 2 and 9 spans ending at these byte offsets.
        let calls = [(30, 3), (70, 4), (90, 2), (180, 9)];
        assert_eq!(chunks(&calls, 7), vec![(0, 70, 7), (70, 90, 2), (90, 180, 9)]);
        assert_eq!(chunks(&calls, 100), vec![(0, 180, 18)]);
        assert_eq!(chunks(&[], 5), vec![]);
    }
    use crate::trace::context::TraceId;
    use std::net::TcpListener;

    fn spans(n: usize) -> Vec<Span> {
        let t = TraceId::random();
        (0..n).map(|i| Span::new(t, None, format!("s{i}"), 1, 2)).collect()
    }

    /// Reads one HTTP request (until its Content-Length body is in), answers 200, returns it.
    fn read_request_and_answer(c: &mut std::net::TcpStream) -> Vec<u8> {
        let mut req = Vec::new();
        let mut buf = [0u8; 65536];
        c.set_read_timeout(Some(Duration::from_secs(10))).ok();
        loop {
            let n = c.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).into_owned();
            if let Some(i) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if req.len() >= i + 4 + len {
                    break;
                }
            }
        }
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").ok();
        req
    }

    fn cfg(port: u16) -> ExportConfig {
        let mut c = ExportConfig::new(
            Endpoint { host: "127.0.0.1".into(), port, path: "/v1/traces".into() },
            Resource::default(),
        );
        c.flush_interval = Duration::from_millis(20);
        c.timeout = Duration::from_millis(500);
        c
    }

    #[test]
    fn endpoints_and_headers_parse_or_say_why_not() {
        let e = Endpoint::parse("http://localhost:4318").expect("valid");
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("localhost", 4318, "/v1/traces"));
        let e = Endpoint::parse("http://[::1]:9/custom/v1/traces").expect("valid");
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("[::1]", 9, "/custom/v1/traces"));
        assert_eq!(Endpoint::parse("http://collector").expect("valid").port, 80);
        for bad in ["https://x:4318", "localhost:4318", "http://:4318", "http://x:port", "http://u@x:1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let h = parse_headers("api-key=a%20b, x-tenant=t1").expect("valid");
        assert_eq!(h, vec![("api-key".into(), "a b".into()), ("x-tenant".into(), "t1".into())]);
        assert!(parse_headers("novalue").is_err());
    }

    #[test]
    fn batches_reach_a_receiver_that_answers() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let got = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            read_request_and_answer(&mut c)
        });
        let ex = Exporter::start(cfg(port)).expect("start");
        ex.submit(spans(3));
        let req = got.join().expect("receiver");
        let text = String::from_utf8_lossy(&req);
        assert!(text.starts_with("POST /v1/traces HTTP/1.1"));
        assert!(text.contains("Content-Type: application/x-protobuf"));
        // The flush is answered after the batch before it was posted.
        ex.flush(Duration::from_secs(10));
        assert_eq!(ex.stats().exported.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_receiver_that_is_down_costs_counted_drops() {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let ex = Exporter::start(cfg(port)).expect("start");
        for _ in 0..50 {
            ex.submit(spans(2));
        }
        drop_and_wait(ex, |s| {
            let [(_, full), (_, failed)] = s.dropped();
            assert_eq!(full + failed, 100);
            assert_eq!(s.exported.load(Ordering::Relaxed), 0);
            assert!(s.failed_exports.load(Ordering::Relaxed) >= 1);
        });
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        // A receiver that accepts and never answers: the thread sits in its read timeout.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let _hold = std::thread::spawn(move || {
            let conns: Vec<_> = l.incoming().take(2).collect();
            std::thread::sleep(Duration::from_secs(2));
            drop(conns);
        });
        let mut c = cfg(port);
        c.queue_capacity = 4;
        c.max_batch_spans = 1;
        let ex = Exporter::start(c).expect("start");
        for _ in 0..200 {
            ex.submit(spans(1));
        }
        assert!(ex.stats().dropped_queue_full.load(Ordering::Relaxed) >= 100);
        drop_and_wait(ex, |s| {
            let [(_, full), (_, failed)] = s.dropped();
            assert_eq!(full + failed + s.exported.load(Ordering::Relaxed), 200);
        });
    }

    #[test]
    fn calls_are_batched_not_posted_one_by_one() {
        // A receiver that counts POSTs (one per connection) and answers 200.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let posts = Arc::new(AtomicU64::new(0));
        let p = posts.clone();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                p.fetch_add(1, Ordering::Relaxed);
                read_request_and_answer(&mut c);
            }
        });
        let mut c = cfg(port);
        c.flush_interval = Duration::from_secs(60);
        c.max_batch_spans = 100;
        let ex = Exporter::start(c).expect("start");
        // 50 calls of 4 spans: full batches go out as they fill, the rest at the flush.
        for _ in 0..50 {
            ex.submit(spans(4));
        }
        ex.flush(Duration::from_secs(10));
        assert_eq!(ex.stats().exported.load(Ordering::Relaxed), 200);
        let n = posts.load(Ordering::Relaxed);
        assert!((2..=4).contains(&n), "{n} POSTs for 50 calls");
    }

    fn drop_and_wait(ex: Exporter, check: impl FnOnce(&ExportStats)) {
        let stats = ex.stats.clone();
        drop(ex);
        check(&stats);
    }
}
