//! The client side over streamable HTTP, handled at the message level so bodies reach the
//! upstream as the client wrote them. `POST /mcp` carries client messages (requests get an SSE
//! stream with their answers and whatever belongs to them; notifications and answers get
//! 202), `GET /mcp` opens a session's stream for messages that belong to no request, `DELETE
//! /mcp` ends a session. A legacy session (opened by `initialize`) has an upstream connection of
//! its own and an id the proxy issues (the upstream's own id, over HTTP, stays with the proxy);
//! a 2026-era request without a session goes to the link stateless requests share. Host and
//! Origin allowlists, a bearer token and a body limit guard the listener, as for `gemba serve`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kaizen::experiment::Assignment;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::Proxy;
use super::link::{ClientCtx, Link};
use super::message::{self, Kind};
use super::sse;
use super::upstream::Forwarded;

const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
const LOOPBACK_ORIGINS: [&str; 3] = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];
/// A comment on a quiet stream this often keeps intermediaries from closing it.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Messages waiting for one client stream.
const STREAM_QUEUE: usize = 256;

struct Session {
    link: Arc<Link>,
    number: u64,
    assignment: Option<Arc<Assignment>>,
    last_used: Mutex<Instant>,
}

struct HttpState {
    proxy: Arc<Proxy>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    hosts: Vec<String>,
    origins: Vec<String>,
    streams: AtomicU64,
}

fn json_error(status: StatusCode, code: i64, message: &str) -> Response {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":{code},"message":{}}}}}"#,
        message::json_string(message)
    );
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn host_allowed(headers: &HeaderMap, hosts: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return true };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn origin_allowed(headers: &HeaderMap, origins: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    origins.iter().any(|p| match p.strip_suffix(":*") {
        Some(base) => {
            origin.eq_ignore_ascii_case(base)
                || origin.to_ascii_lowercase().starts_with(&format!("{}:", base.to_ascii_lowercase()))
        }
        None => origin.eq_ignore_ascii_case(p),
    })
}

fn token_ok(headers: &HeaderMap, token: &str) -> bool {
    crate::bearer::carries(headers, token)
}

fn accepts(headers: &HeaderMap, what: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(what) || v.contains("*/*"))
}

/// The headers a 2026-era client sends for intermediaries, passed on to an HTTP upstream.
fn forwarded(headers: &HeaderMap) -> Forwarded {
    let headers = headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k.starts_with("mcp-") && k != "mcp-session-id"
        })
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), v.to_string())))
        .collect();
    Forwarded { headers }
}

/// An SSE response from a client stream's receiver; `on_drop` runs if the client leaves before
/// the stream is complete.
fn sse_response(
    rx: mpsc::Receiver<String>,
    on_early_drop: Box<dyn FnOnce() + Send>,
    session_id: Option<&str>,
) -> Response {
    struct Guard(Option<Box<dyn FnOnce() + Send>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    let guard = Guard(Some(on_early_drop));
    let stream = futures_util::stream::unfold((rx, guard), |(mut rx, mut guard)| async move {
        match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Some(msg)) => Some((Ok::<_, Infallible>(Bytes::from(sse::frame(&msg, None))), (rx, guard))),
            Ok(None) => {
                let _ = guard.0.take(); // complete: nothing to undo
                None
            }
            Err(_) => Some((Ok(Bytes::from_static(b": keepalive\n\n")), (rx, guard))),
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(id) = session_id.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert("mcp-session-id", id);
    }
    r
}

async fn handle(State(st): State<Arc<HttpState>>, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if !host_allowed(&headers, &st.hosts) {
        return (StatusCode::FORBIDDEN, "Forbidden: the Host header is not allowed (use --allowed-host)\n")
            .into_response();
    }
    if !origin_allowed(&headers, &st.origins) {
        return (StatusCode::FORBIDDEN, "Forbidden: the Origin header is not allowed (use --allowed-origin)\n")
            .into_response();
    }
    if let Some(t) = &st.proxy.cfg.token
        && !token_ok(&headers, t)
    {
        let mut r = (
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send `Authorization: Bearer <token>` (the proxy's --token)\n",
        )
            .into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gemba-proxy\""));
        return r;
    }
    let session_id = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    match method {
        Method::POST => post(st, headers, session_id, body).await,
        Method::GET => get(st, headers, session_id).await,
        Method::DELETE => delete(st, session_id).await,
        _ => {
            let mut r = (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n").into_response();
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            r
        }
    }
}

fn session_of(st: &HttpState, id: &str) -> Option<Arc<Session>> {
    let s = st.sessions.lock().get(id).cloned();
    if let Some(s) = &s {
        *s.last_used.lock() = Instant::now();
    }
    s
}

async fn post(st: Arc<HttpState>, headers: HeaderMap, session_id: Option<String>, body: Bytes) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            -32000,
            "Unsupported Media Type: Content-Type must be application/json",
        );
    }
    if !(accepts(&headers, "application/json") && accepts(&headers, "text/event-stream")) {
        return json_error(
            StatusCode::NOT_ACCEPTABLE,
            -32000,
            "Not Acceptable: Client must accept both application/json and text/event-stream",
        );
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return json_error(StatusCode::BAD_REQUEST, -32700, "Parse error: the body is not UTF-8");
    };
    let text = message::one_line(text).into_owned();
    // What the body holds: requests (their client ids), the method of a lone message.
    let (requests, lone_method, valid) = match message::batch(&text) {
        Some(items) => {
            let ids: Vec<String> = items
                .iter()
                .filter_map(|i| {
                    let m = message::peek(i.get());
                    (m.kind == Kind::Request).then(|| m.id_text().map(str::to_string)).flatten()
                })
                .collect();
            (ids, None, !items.is_empty())
        }
        None => {
            let m = message::peek(&text);
            let ids = if m.kind == Kind::Request {
                m.id_text().map(|i| vec![i.to_string()]).unwrap_or_default()
            } else {
                Vec::new()
            };
            (ids, Some(m.method().to_string()), m.kind != Kind::Invalid)
        }
    };
    if !valid {
        return json_error(StatusCode::BAD_REQUEST, -32700, "Parse error: the body is not a JSON-RPC message");
    }
    let protocol = headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok()).map(str::to_string);
    let transport = 1;
    // Which link, and whose session.
    let (link, session_no, assignment, new_session) = match &session_id {
        Some(id) => match session_of(&st, id) {
            Some(s) => (s.link.clone(), s.number, s.assignment.clone(), None),
            None => return json_error(StatusCode::NOT_FOUND, -32001, "Session not found"),
        },
        None if lone_method.as_deref() == Some("initialize") => {
            if st.sessions.lock().len() >= st.proxy.cfg.max_sessions {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    -32000,
                    &format!("too many sessions ({}); close one or raise --max-sessions", st.proxy.cfg.max_sessions),
                );
            }
            let number = st.proxy.new_session_id();
            let (link, assignment) = match st.proxy.session_link(number, None, transport).await {
                Ok(x) => x,
                Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, -32603, &format!("{e:#}")),
            };
            let id = format!("{:016x}{:016x}", number, st.proxy.new_session_id());
            let s = Arc::new(Session {
                link: link.clone(),
                number,
                assignment: assignment.clone(),
                last_used: Mutex::new(Instant::now()),
            });
            st.sessions.lock().insert(id.clone(), s);
            (link, number, assignment, Some(id))
        }
        None => {
            let modern = protocol.as_deref().is_some_and(|v| v >= "2026-07-28")
                || lone_method.as_deref() == Some("server/discover")
                || message::meta_protocol_version(message::peek(&text).params)
                    .is_some_and(|v| v.as_str() >= "2026-07-28");
            if !modern {
                return json_error(StatusCode::BAD_REQUEST, -32000, "Bad Request: Mcp-Session-Id header is required");
            }
            let number = st.proxy.new_session_id();
            let (which, assignment) = st.proxy.choose_request(&format!("{number:016x}"));
            (st.proxy.shared_link(which, transport).await, number, assignment, None)
        }
    };
    let fwd = forwarded(&headers);
    if requests.is_empty() {
        let (tx, _rx) = mpsc::channel(1);
        let ctx = ClientCtx { reply: tx, stream: 0, session: session_no, assignment, forwarded: Some(fwd), protocol };
        link.on_client_message(text, &ctx).await;
        return StatusCode::ACCEPTED.into_response();
    }
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let stream = st.streams.fetch_add(1, Ordering::Relaxed) + 1;
    let ctx = ClientCtx { reply: tx, stream, session: session_no, assignment, forwarded: Some(fwd), protocol };
    link.on_client_message(text, &ctx).await;
    drop(ctx);
    let weak = Arc::downgrade(&link);
    let on_early_drop: Box<dyn FnOnce() + Send> = Box::new(move || {
        if let Some(l) = weak.upgrade() {
            tokio::spawn(async move { l.abandon(stream).await });
        }
    });
    sse_response(rx, on_early_drop, new_session.as_deref())
}

async fn get(st: Arc<HttpState>, headers: HeaderMap, session_id: Option<String>) -> Response {
    if !accepts(&headers, "text/event-stream") {
        return json_error(StatusCode::NOT_ACCEPTABLE, -32000, "Not Acceptable: Client must accept text/event-stream");
    }
    let Some(id) = session_id else {
        return json_error(StatusCode::BAD_REQUEST, -32000, "Bad Request: Mcp-Session-Id header is required");
    };
    let Some(s) = session_of(&st, &id) else {
        return json_error(StatusCode::NOT_FOUND, -32001, "Session not found");
    };
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let stream = st.streams.fetch_add(1, Ordering::Relaxed) + 1;
    if !s.link.open_listener(tx, stream).await {
        return json_error(StatusCode::CONFLICT, -32000, "Conflict: Only one SSE stream is allowed per session");
    }
    let weak = Arc::downgrade(&s.link);
    let on_drop: Box<dyn FnOnce() + Send> = Box::new(move || {
        if let Some(l) = weak.upgrade() {
            l.close_listener(stream);
        }
    });
    sse_response(rx, on_drop, None)
}

async fn delete(st: Arc<HttpState>, session_id: Option<String>) -> Response {
    let Some(id) = session_id else {
        return json_error(StatusCode::BAD_REQUEST, -32000, "Bad Request: Mcp-Session-Id header is required");
    };
    let s = st.sessions.lock().remove(&id);
    match s {
        Some(s) => {
            st.proxy.close_link(&s.link).await;
            StatusCode::OK.into_response()
        }
        None => json_error(StatusCode::NOT_FOUND, -32001, "Session not found"),
    }
}

/// Close sessions unused for `idle` (nothing in flight).
async fn reap_idle(st: Arc<HttpState>) {
    let idle = st.proxy.cfg.session_idle;
    loop {
        tokio::time::sleep(Duration::from_secs(30).min(idle)).await;
        let stale: Vec<Arc<Session>> = {
            let mut sessions = st.sessions.lock();
            let ids: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| s.last_used.lock().elapsed() > idle && s.link.in_flight() == 0)
                .map(|(k, _)| k.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        for s in stale {
            tracing::info!("closing an HTTP session idle for more than {} s", idle.as_secs());
            st.proxy.close_link(&s.link).await;
        }
    }
}

pub fn router(proxy: Arc<Proxy>) -> Router {
    let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|s| s.to_string()).collect();
    hosts.extend(proxy.cfg.allowed_hosts.iter().cloned());
    let mut origins: Vec<String> = LOOPBACK_ORIGINS.iter().map(|s| s.to_string()).collect();
    origins.extend(proxy.cfg.allowed_origins.iter().cloned());
    let limit = proxy.cfg.max_body_bytes;
    let st =
        Arc::new(HttpState { proxy, sessions: Mutex::new(HashMap::new()), hosts, origins, streams: AtomicU64::new(0) });
    tokio::spawn(reap_idle(st.clone()));
    Router::new()
        .route("/mcp", axum::routing::any(handle))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(move |r: axum::response::Response| {
            crate::http::too_large_says_why(r, "gemba proxy", limit)
        }))
        .with_state(st)
}

pub async fn serve(proxy: Arc<Proxy>) -> Result<()> {
    let addr = proxy.cfg.http.context("no HTTP address")?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let names: Vec<&str> = proxy.upstreams.iter().map(|d| d.label.as_str()).collect();
    tracing::info!("gemba proxy listening on http://{local}/mcp (upstream {})", names.join(", "));
    eprintln!("gemba: listening on http://{local}/mcp");
    let bounds = crate::listen::Bounds::new(proxy.cfg.max_connections);
    crate::listen::serve(listener, router(proxy), bounds, "the proxy's MCP over HTTP", crate::shutdown_signal())
        .await
        .context("HTTP server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn host_and_origin_allowlists() {
        let hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|s| s.to_string()).collect();
        let origins: Vec<String> = LOOPBACK_ORIGINS.iter().map(|s| s.to_string()).collect();
        assert!(host_allowed(&h(&[("host", "127.0.0.1:8080")]), &hosts));
        assert!(host_allowed(&h(&[("host", "[::1]:8080")]), &hosts));
        assert!(host_allowed(&h(&[("host", "LOCALHOST")]), &hosts));
        assert!(!host_allowed(&h(&[("host", "evil.example.com")]), &hosts));
        assert!(!host_allowed(&h(&[("host", "evil.example.com:80")]), &hosts));
        assert!(origin_allowed(&h(&[("origin", "http://localhost:3000")]), &origins));
        assert!(origin_allowed(&h(&[("origin", "http://127.0.0.1")]), &origins));
        assert!(!origin_allowed(&h(&[("origin", "http://evil.example.com")]), &origins));
        assert!(!origin_allowed(&h(&[("origin", "http://localhost.evil.com:80")]), &origins));
        assert!(origin_allowed(&HeaderMap::new(), &origins));
    }

    #[test]
    fn tokens_and_forwarded_headers() {
        assert!(token_ok(&h(&[("authorization", "Bearer s3cret")]), "s3cret"));
        assert!(!token_ok(&h(&[("authorization", "Bearer s3creT")]), "s3cret"));
        assert!(!token_ok(&HeaderMap::new(), "s3cret"));
        let f = forwarded(&h(&[("mcp-session-id", "x"), ("mcp-method", "tools/call"), ("accept", "*/*")]));
        assert_eq!(f.headers, vec![("mcp-method".to_string(), "tools/call".to_string())]);
    }
}
