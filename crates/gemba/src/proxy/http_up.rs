//! A streamable HTTP upstream: each client message is POSTed as it was written (with the
//! upstream's own session id and the user's token), answers are read from the JSON body or the
//! SSE stream of that POST, and a GET stream carries what belongs to no request. A session the
//! upstream forgets (404) is opened again by replaying the client's handshake.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::message::{self, Kind};
use super::sse;
use super::upstream::{Forwarded, Health, Replay, UpEvent};

/// Largest message read from an upstream response.
const MAX_EVENT: usize = 64 << 20;
/// Most POSTs in flight to one upstream session.
const MAX_POSTS: usize = 128;
/// Largest error body quoted in a message.
const MAX_QUOTED: usize = 300;

/// `(argument path, header name)` for each argument of a tool promoted to an `Mcp-Param-*` header.
pub type HeaderParams = Vec<(Vec<String>, String)>;

/// Where and how to reach an HTTP upstream.
pub struct HttpTarget {
    pub url: String,
    /// Never printed: `Debug` shows only whether there is one.
    token: Option<String>,
    /// Where the user gives the token (flag / environment variable), for error messages.
    token_source: &'static str,
    client: reqwest::Client,
    /// Per tool: arguments promoted to `Mcp-Param-*` headers (2026-07-28).
    pub header_params: Mutex<HashMap<String, HeaderParams>>,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Where `--upstream`'s token is given.
pub const TOKEN_SOURCE_A: &str = "--upstream-token or GEMBA_UPSTREAM_TOKEN";
/// Where `--upstream-b`'s token is given.
pub const TOKEN_SOURCE_B: &str = "--upstream-b-token or GEMBA_UPSTREAM_B_TOKEN";

impl HttpTarget {
    /// The `--upstream` target (its token from [`TOKEN_SOURCE_A`]).
    pub fn new(url: &str, token: Option<String>) -> Result<Self> {
        Self::with_token_source(url, token, TOKEN_SOURCE_A)
    }

    /// A target whose token the user gives at `token_source` (named in 401 errors).
    pub fn with_token_source(url: &str, token: Option<String>, token_source: &'static str) -> Result<Self> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("--upstream {url} is not a URL"))?;
        match parsed.scheme() {
            "http" => {}
            "https" => bail!(
                "--upstream {url}: this build has no TLS; reach the server over http:// (e.g. through a local TLS-terminating tunnel)"
            ),
            s => bail!("--upstream {url}: scheme {s} is not supported; use http://"),
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        let token = token.filter(|t| !t.trim().is_empty());
        Ok(Self { url: url.to_string(), token, token_source, client, header_params: Mutex::new(HashMap::new()) })
    }

    /// What to tell a client when the upstream refused the proxy (HTTP 401/403): the status,
    /// the upstream's words, and where the token is given.
    pub fn refused(&self, status: reqwest::StatusCode, body: &str) -> String {
        let what = match (status, &self.token) {
            (reqwest::StatusCode::FORBIDDEN, Some(_)) => {
                format!("its token does not allow this; give a token that does with {}", self.token_source)
            }
            (_, None) => format!("gemba proxy sent no token; give the upstream's token with {}", self.token_source),
            (_, Some(_)) => format!("it refused the token gemba proxy sent; check {}", self.token_source),
        };
        let body = quote(&self.redact(body));
        let said = if body.is_empty() { String::new() } else { format!(" ({body})") };
        format!("the upstream MCP server at {} answered HTTP {status}{said}: {what}", self.url)
    }

    /// `s` with the token replaced: an upstream that echoes the token in an error body must not
    /// have it quoted to clients or logs.
    pub fn redact(&self, s: &str) -> String {
        match &self.token {
            Some(t) if s.contains(t.as_str()) => s.replace(t.as_str(), "[token]"),
            _ => s.to_string(),
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        session: Option<&str>,
        version: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut b = self.client.request(method, &self.url).header("Accept", "application/json, text/event-stream");
        if let Some(t) = &self.token {
            b = b.bearer_auth(t);
        }
        if let Some(s) = session {
            b = b.header("Mcp-Session-Id", s);
        }
        if let Some(v) = version {
            b = b.header("MCP-Protocol-Version", v);
        }
        b
    }

    pub async fn delete_session(&self, session: &str) {
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            self.request(reqwest::Method::DELETE, Some(session), None).send(),
        )
        .await;
    }

    /// The 2026-07-28 routing headers for a request the client did not send over HTTP itself.
    fn standard_headers(&self, text: &str) -> Vec<(String, String)> {
        let m = message::peek(text);
        let mut out = vec![("Mcp-Method".to_string(), m.method().to_string())];
        #[derive(serde::Deserialize)]
        struct P {
            name: Option<String>,
            uri: Option<String>,
            #[serde(rename = "taskId")]
            task_id: Option<String>,
            arguments: Option<Value>,
        }
        let Some(p) = m.params.and_then(|p| serde_json::from_str::<P>(p).ok()) else { return out };
        let name = match m.method() {
            "tools/call" | "prompts/get" => p.name.clone(),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => p.uri.clone(),
            "tasks/get" | "tasks/update" | "tasks/cancel" => p.task_id.clone(),
            _ => None,
        };
        if let Some(n) = name {
            out.push(("Mcp-Name".into(), header_value(&n)));
        }
        if m.method() == "tools/call"
            && let (Some(tool), Some(args)) = (&p.name, &p.arguments)
            && let Some(params) = self.header_params.lock().get(tool)
        {
            for (path, header) in params {
                let v = path.iter().try_fold(args, |v, k| v.get(k));
                let s = match v {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Bool(b)) => Some(b.to_string()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                if let Some(s) = s {
                    out.push((format!("Mcp-Param-{header}"), header_value(&s)));
                }
            }
        }
        out
    }
}

/// A header value as SEP-2243 writes it: as is when it is plain visible ASCII, else
/// `=?base64?…?=`.
fn header_value(v: &str) -> String {
    let needs_encoding = v.starts_with([' ', '\t'])
        || v.ends_with([' ', '\t'])
        || !v.chars().all(|c| (' '..='~').contains(&c))
        || (v.starts_with("=?base64?") && v.ends_with("?="));
    if v.is_empty() || !needs_encoding { v.to_string() } else { format!("=?base64?{}?=", base64(v.as_bytes())) }
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request outside any link (the probe): its answer and the session id the upstream gave.
pub async fn post_once(
    target: &HttpTarget,
    req: &Value,
    session: Option<&str>,
    version: Option<&str>,
) -> Result<(Value, Option<String>)> {
    let body = req.to_string();
    let mut b = target.request(reqwest::Method::POST, session, version).header("Content-Type", "application/json");
    if version.is_some_and(|v| v >= "2026-07-28") || req.get("params").and_then(|p| p.get("_meta")).is_some() {
        for (k, v) in target.standard_headers(&body) {
            b = b.header(k, v);
        }
    }
    let mut resp = b.body(body).send().await.with_context(|| format!("cannot reach {}", target.url))?;
    let sid = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let status = resp.status();
    if is_refusal(status) {
        let text = resp.text().await.unwrap_or_default();
        bail!("{}", target.refused(status, &text));
    }
    if req.get("id").is_none() {
        return Ok((Value::Null, sid));
    }
    let is_sse = content_type(&resp).starts_with("text/event-stream");
    if !is_sse {
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} answered HTTP {status}: {}", target.url, quote(&text)))?;
        return Ok((v, sid));
    }
    let mut reader = sse::Reader::new(MAX_EVENT);
    while let Some(chunk) = resp.chunk().await? {
        for item in reader.feed(&chunk) {
            let sse::Item::Event(e) = item else { bail!("an event from {} is too large", target.url) };
            if let Ok(v) = serde_json::from_str::<Value>(&e.data)
                && v.get("id") == req.get("id")
                && v.get("method").is_none()
            {
                return Ok((v, sid));
            }
        }
    }
    bail!("{} closed the stream without answering", target.url)
}

/// Tries in a row to resume a response stream that bring nothing new, before its requests fail.
const MAX_RESUMES: u32 = 3;
/// The wait before resuming a stream when the server named none (`retry`), and the longest.
const DEFAULT_RETRY_MS: u64 = 1_000;
const MAX_RETRY_MS: u64 = 30_000;

/// What a response stream has shown so far.
#[derive(Default)]
struct StreamState {
    /// Events read (too long ones included).
    items: usize,
    /// Its requests answered.
    answered: usize,
    /// Why the rest were not: an event too long that named no request.
    too_long: Option<String>,
    /// The last event id seen (where to resume), and the wait the server asked for.
    last_id: Option<String>,
    retry_ms: Option<u64>,
    /// The stream was primed (an event with an id and no data): the server can resume it.
    primed: bool,
}

impl StreamState {
    fn note(&mut self, e: &sse::Event) {
        if let Some(id) = &e.id {
            self.last_id = Some(id.clone());
            self.primed |= e.data.trim().is_empty();
        }
        if let Some(r) = e.retry {
            self.retry_ms = Some(r);
        }
    }
}

/// A response's body as text, read chunk by chunk and given up (`None`) once it passes `max`
/// bytes, so a body of any size costs at most `max` of memory. A body cut short by the
/// connection is what arrived.
async fn read_bounded(resp: &mut reqwest::Response, max: usize) -> Option<String> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("upstream body broke: {e}");
                break;
            }
        }
    }
    Some(String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// The upstream refused the proxy itself (its token), not the request.
fn is_refusal(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase()
}

fn quote(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > MAX_QUOTED {
        format!("{}…", s.chars().take(MAX_QUOTED).collect::<String>())
    } else {
        s.to_string()
    }
}

struct Shared {
    target: Arc<HttpTarget>,
    health: Arc<Health>,
    events: mpsc::Sender<UpEvent>,
    replay: Arc<Mutex<Replay>>,
    /// The upstream's session id (legacy era).
    session: Mutex<Option<String>>,
    /// The negotiated protocol version.
    version: Mutex<Option<String>>,
    /// In-flight request POSTs by upstream id (2026: a cancel aborts the POST).
    posts: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// The longest message passed on (`--max-message-mb`): an event or a JSON body.
    max_message: usize,
    stop: CancellationToken,
    get_started: Mutex<bool>,
    reopening: tokio::sync::Mutex<()>,
}

pub struct HttpUpstream {
    shared: Arc<Shared>,
    pub health: Arc<Health>,
}

impl HttpUpstream {
    pub fn new(
        target: Arc<HttpTarget>,
        events: mpsc::Sender<UpEvent>,
        replay: Arc<Mutex<Replay>>,
        max_message: usize,
    ) -> Self {
        let health = Arc::new(Health::default());
        health.set_up();
        let shared = Arc::new(Shared {
            target,
            health: health.clone(),
            events,
            replay,
            session: Mutex::new(None),
            version: Mutex::new(None),
            posts: Mutex::new(HashMap::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_POSTS)),
            max_message,
            stop: CancellationToken::new(),
            get_started: Mutex::new(false),
            reopening: tokio::sync::Mutex::new(()),
        });
        Self { shared, health }
    }

    pub async fn send(&self, text: String, forwarded: Option<Forwarded>) -> Result<(), String> {
        let s = &self.shared;
        let m = message::peek(&text);
        let modern = s.version.lock().as_deref().is_some_and(|v| v >= "2026-07-28")
            || message::meta_protocol_version(m.params).is_some_and(|v| v.as_str() >= "2026-07-28");
        if modern && m.method() == "notifications/cancelled" {
            // The 2026 wire cancels by closing the request's stream.
            if let Some(id) = message::cancelled_id(m.params)
                && let Some(h) = s.posts.lock().remove(id)
            {
                h.abort();
            }
            return Ok(());
        }
        let kind = m.kind;
        let id = m.id_text().map(str::to_string);
        let initialize = m.method() == "initialize";
        let initialized = m.method() == "notifications/initialized";
        let ids = request_ids(&text);
        drop(m);
        let permit = s.slots.clone().acquire_owned().await.ok();
        let shared = self.shared.clone();
        let task = async move {
            let _permit = permit;
            shared.post(text, forwarded, ids, initialize, modern).await;
            if initialized {
                shared.start_get_stream();
            }
        };
        if kind == Kind::Request && !initialize {
            let handle = tokio::spawn(task);
            if let Some(id) = id {
                s.posts.lock().insert(id, handle.abort_handle());
            }
        } else {
            // Notifications, answers and the handshake keep their order.
            task.await;
        }
        Ok(())
    }

    pub async fn shutdown(&self) {
        let s = &self.shared;
        s.stop.cancel();
        for (_, h) in s.posts.lock().drain() {
            h.abort();
        }
        let sid = s.session.lock().take();
        if let Some(sid) = sid {
            s.target.delete_session(&sid).await;
        }
    }
}

/// The ids of the requests in a message (one, or a batch's).
fn request_ids(text: &str) -> Vec<String> {
    match message::batch(text) {
        Some(items) => items
            .iter()
            .filter_map(|i| {
                let m = message::peek(i.get());
                (m.kind == Kind::Request).then(|| m.id_text().map(str::to_string)).flatten()
            })
            .collect(),
        None => {
            let m = message::peek(text);
            if m.kind == Kind::Request {
                m.id_text().map(|s| vec![s.to_string()]).unwrap_or_default()
            } else {
                Vec::new()
            }
        }
    }
}

impl Shared {
    async fn post(
        self: &Arc<Self>,
        text: String,
        forwarded: Option<Forwarded>,
        ids: Vec<String>,
        initialize: bool,
        modern: bool,
    ) {
        let session = self.session.lock().clone();
        let mut version = self.version.lock().clone();
        if version.is_none()
            && let Some(v) = message::meta_protocol_version(message::peek(&text).params)
        {
            version = Some(v);
        }
        let mut b = self
            .target
            .request(
                reqwest::Method::POST,
                if initialize { None } else { session.as_deref() },
                if initialize { None } else { version.as_deref() },
            )
            .header("Content-Type", "application/json");
        match &forwarded {
            Some(f) => {
                for (k, v) in &f.headers {
                    b = b.header(k, v);
                }
            }
            None if modern && !ids.is_empty() => {
                for (k, v) in self.target.standard_headers(&text) {
                    b = b.header(k, v);
                }
            }
            None => {}
        }
        let via = ids.first().cloned();
        let result = b.body(text.clone()).send().await;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.health.set_down(&format!("unreachable: {e}"));
                self.fail(ids, format!("the upstream MCP server at {} is unreachable: {e}", self.target.url)).await;
                return;
            }
        };
        if !self.health.is_up() {
            self.health.set_up();
        }
        let status = resp.status();
        if initialize
            && status.is_success()
            && let Some(sid) = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok())
        {
            *self.session.lock() = Some(sid.to_string());
        }
        if status == reqwest::StatusCode::ACCEPTED {
            return;
        }
        if is_refusal(status) {
            let body = resp.text().await.unwrap_or_default();
            self.posts_done(&ids);
            self.health.refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let why = self.target.refused(status, &body);
            tracing::warn!("{why}");
            if !ids.is_empty() {
                self.fail(ids, why).await;
            }
            return;
        }
        if status == reqwest::StatusCode::NOT_FOUND && session.is_some() && !initialize {
            self.posts_done(&ids);
            self.session_lost(ids).await;
            return;
        }
        let ct = content_type(&resp);
        if ct.starts_with("text/event-stream") {
            let mut stream = StreamState::default();
            self.read_stream(resp, &ids, &via, initialize, &mut stream).await;
            self.resume(&ids, &via, initialize, &mut stream).await;
            self.posts_done(&ids);
            if stream.answered < ids.len() {
                let why = stream.too_long.unwrap_or_else(|| {
                    "the upstream MCP server closed the response stream without answering; retry the request".into()
                });
                self.fail(ids, why).await;
            }
            return;
        }
        let body = match self.bounded_body(&mut resp).await {
            Ok(body) => body,
            Err(why) => {
                self.posts_done(&ids);
                self.health.dropped_messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!("{why}");
                self.fail(ids, why).await;
                return;
            }
        };
        self.posts_done(&ids);
        if ct.starts_with("application/json") && !body.trim().is_empty() {
            let m = message::peek(&body);
            if m.kind == Kind::Response && m.id.is_none() && ids.len() == 1 {
                // An error for a request the upstream could not read: give it the request's id.
                let fixed = body.replacen("\"id\":null", &format!("\"id\":{}", ids[0]), 1);
                self.deliver(fixed, via, initialize).await;
                return;
            }
            if m.kind != Kind::Invalid || message::batch(&body).is_some() {
                self.deliver(body, via, initialize).await;
                return;
            }
        }
        if !ids.is_empty() {
            self.fail(
                ids,
                format!("the upstream MCP server answered HTTP {status}: {}", quote(&self.target.redact(&body))),
            )
            .await;
        }
    }

    /// A JSON answer's body, read up to the bound (`Err` with the reason past it).
    async fn bounded_body(&self, resp: &mut reqwest::Response) -> Result<String, String> {
        read_bounded(resp, self.max_message).await.ok_or_else(|| self.too_long("a body"))
    }

    /// Why a request failed whose answer (`what`: an event, a body) ran past the bound.
    fn too_long(&self, what: &str) -> String {
        format!(
            "the upstream MCP server at {} answered with {what} of more than {} MiB, more than gemba proxy passes; ask for less (a smaller page or range) or start the proxy with a larger --max-message-mb",
            self.target.url,
            self.max_message >> 20
        )
    }

    /// Read a response stream of the requests `ids` until it ends or all are answered (the
    /// session's own stream, with no `ids`, until it ends).
    async fn read_stream(
        &self,
        mut resp: reqwest::Response,
        ids: &[String],
        via: &Option<String>,
        initialize: bool,
        state: &mut StreamState,
    ) {
        let mut reader = sse::Reader::new(self.max_message);
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("upstream stream broke: {e}");
                    break;
                }
            };
            for item in reader.feed(&chunk) {
                state.items += 1;
                match item {
                    sse::Item::Event(e) => {
                        state.note(&e);
                        state.answered += self.deliver(e.data, via.clone(), initialize).await;
                    }
                    sse::Item::TooLong(t) => {
                        let answers = self.event_too_long(t).await;
                        if answers.is_none() {
                            state.too_long = Some(self.too_long("an event"));
                        }
                        state.answered += answers.unwrap_or(0);
                    }
                }
            }
            if !ids.is_empty() && state.answered >= ids.len() {
                return;
            }
        }
        if let Some(e) = reader.finish() {
            state.items += 1;
            state.note(&e);
            state.answered += self.deliver(e.data, via.clone(), initialize).await;
        }
    }

    /// A response stream that ended before its answers, from a server that primed it (an event
    /// id with no data, which says it can resume the stream): resumed with a GET carrying
    /// `Last-Event-ID`, after the wait the server asked for (`retry`), as the streamable HTTP
    /// transport says a client should (such a server may close a stream on purpose during a
    /// long call, to be polled). Given up after `MAX_RESUMES` tries in a row that bring nothing
    /// new. A stream that was not primed is not resumed: a GET to a server that cannot resume
    /// it would open the session's own stream, which need never end.
    async fn resume(&self, ids: &[String], via: &Option<String>, initialize: bool, state: &mut StreamState) {
        let mut fruitless = 0;
        while state.primed && state.answered < ids.len() && state.too_long.is_none() && fruitless < MAX_RESUMES {
            let Some(last) = state.last_id.clone() else { return };
            let wait = Duration::from_millis(state.retry_ms.unwrap_or(DEFAULT_RETRY_MS).min(MAX_RETRY_MS));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return,
            }
            let session = self.session.lock().clone();
            let version = self.version.lock().clone();
            let req = self
                .target
                .request(reqwest::Method::GET, session.as_deref(), version.as_deref())
                .header("Last-Event-ID", last.as_str());
            match req.send().await {
                Ok(r) if r.status().is_success() && content_type(&r).starts_with("text/event-stream") => {
                    let before = state.answered;
                    self.read_stream(r, ids, via, initialize, state).await;
                    let progressed = state.answered > before || state.last_id.as_deref() != Some(last.as_str());
                    fruitless = if progressed { 0 } else { fruitless + 1 };
                }
                Ok(r) => {
                    tracing::debug!("the upstream did not resume its stream after event {last}: HTTP {}", r.status());
                    return;
                }
                Err(e) => {
                    tracing::debug!("the upstream's stream could not be resumed: {e}");
                    fruitless += 1;
                }
            }
        }
    }

    /// An event too long to pass was dropped: counted, and told to the link, which fails the
    /// request it answers or answers the upstream's request it was. Returns how many of this
    /// stream's requests it answered (`None` when its ends named no message).
    async fn event_too_long(&self, t: sse::TooLong) -> Option<usize> {
        let glimpse = t.glimpse();
        tracing::warn!(
            "the upstream MCP server at {} sent an event of {} bytes, over --max-message-mb; dropped (id {})",
            self.target.url,
            t.bytes(),
            glimpse.id.as_deref().unwrap_or("unknown")
        );
        let answers = match (glimpse.kind, &glimpse.id) {
            (Some(Kind::Response), Some(_)) => Some(1),
            (Some(_), _) => Some(0),
            (None, _) => None,
        };
        if glimpse.kind.is_none() {
            self.health.dropped_messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            // The link counts it as it is told.
            let _ = self.events.send(UpEvent::TooLong { glimpse, bytes: t.bytes(), limit: self.max_message }).await;
        }
        answers
    }

    fn posts_done(&self, ids: &[String]) {
        let mut p = self.posts.lock();
        for id in ids {
            p.remove(id);
        }
    }

    /// Hand a message on; returns 1 when it answered a request of this POST.
    async fn deliver(&self, data: String, via: Option<String>, initialize: bool) -> usize {
        if data.trim().is_empty() {
            return 0; // a priming event
        }
        let m = message::peek(&data);
        let answers = usize::from(m.kind == Kind::Response);
        if initialize
            && m.kind == Kind::Response
            && let Some(v) = message::protocol_version(message::peek_all(&data).result)
        {
            *self.version.lock() = Some(v);
        }
        if m.kind == Kind::Invalid && message::batch(&data).is_none() {
            self.health.dropped_messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return 0;
        }
        let answers = if m.kind == Kind::Invalid { message::batch(&data).map_or(0, |b| b.len()) } else { answers };
        drop(m);
        let _ = self.events.send(UpEvent::Message { text: data, via }).await;
        answers
    }

    async fn fail(&self, ids: Vec<String>, reason: String) {
        if !ids.is_empty() {
            let _ = self.events.send(UpEvent::Failed { ids, reason }).await;
        }
    }

    /// The upstream forgot the session: open a new one with the client's handshake, then tell
    /// the requests of this POST to retry.
    async fn session_lost(self: &Arc<Self>, ids: Vec<String>) {
        let _one = self.reopening.lock().await;
        self.health.set_down("forgot the session (HTTP 404)");
        let replay = self.replay.lock().clone();
        let mut ok = false;
        if let Some(init) = &replay.initialize
            && let Ok(v) = serde_json::from_str::<Value>(init)
        {
            let mut v = v;
            v["id"] = Value::String("gemba-proxy-reopen".into());
            match post_once(&self.target, &v, None, None).await {
                Ok((answer, sid)) if answer.get("result").is_some() => {
                    *self.session.lock() = sid;
                    let version = self.version.lock().clone();
                    if let Some(n) = &replay.initialized
                        && let Ok(nv) = serde_json::from_str::<Value>(n)
                    {
                        let session = self.session.lock().clone();
                        let _ = post_once(&self.target, &nv, session.as_deref(), version.as_deref()).await;
                    }
                    ok = true;
                }
                Ok((answer, _)) => tracing::warn!("reopening the upstream session failed: {answer}"),
                Err(e) => tracing::warn!("reopening the upstream session failed: {e:#}"),
            }
        }
        if ok {
            self.health.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.health.set_up();
            let _ = self.events.send(UpEvent::Restarted).await;
        }
        self.fail(
            ids,
            "the upstream MCP server forgot the session; gemba proxy opened a new one, retry the request".into(),
        )
        .await;
    }

    /// The stream for messages that belong to no request (legacy sessions), reopened while the
    /// session lives; a server without one (405) is left alone.
    fn start_get_stream(self: &Arc<Self>) {
        {
            let mut started = self.get_started.lock();
            if *started {
                return;
            }
            *started = true;
        }
        let s = self.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            // The last event id seen on this session's stream: a reconnection resumes after it.
            let mut last: Option<(String, String)> = None;
            loop {
                if s.stop.is_cancelled() {
                    return;
                }
                let session = s.session.lock().clone();
                let Some(session) = session else { return };
                let version = s.version.lock().clone();
                let mut req = s
                    .target
                    .request(reqwest::Method::GET, Some(&session), version.as_deref())
                    .header("Accept", "text/event-stream");
                // (event ids belong to their session: a new session starts afresh)
                let resuming = last.as_ref().filter(|(of, _)| *of == session).map(|(_, id)| id.clone());
                if let Some(id) = &resuming {
                    req = req.header("Last-Event-ID", id.as_str());
                }
                let resp = tokio::select! {
                    r = req.send() => r,
                    _ = s.stop.cancelled() => return,
                };
                match resp {
                    Ok(r) if r.status().is_success() => {
                        failures = 0;
                        let mut stream = StreamState { last_id: resuming.clone(), ..Default::default() };
                        tokio::select! {
                            _ = s.read_stream(r, &[], &None, false, &mut stream) => {}
                            _ = s.stop.cancelled() => return,
                        }
                        // A resumption that brought nothing may be one the server could not
                        // serve (rmcp answers it with an empty stream): the next starts afresh.
                        last = if stream.items > 0 { stream.last_id.map(|id| (session.clone(), id)) } else { None };
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => return,
                    Ok(_) | Err(_) => failures += 1,
                }
                let wait = Duration::from_millis(500 * u64::from(failures.min(20) + 1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = s.stop.cancelled() => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_and_base64() {
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi"), "aGk=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(header_value("echo"), "echo");
        assert_eq!(header_value("héllo"), format!("=?base64?{}?=", base64("héllo".as_bytes())));
        assert_eq!(header_value(" padded"), format!("=?base64?{}?=", base64(b" padded")));
    }

    #[test]
    fn standard_headers_from_a_request() {
        let t = HttpTarget::new("http://127.0.0.1:1/mcp", None).unwrap();
        t.header_params.lock().insert("weather".into(), vec![(vec!["region".into()], "Region".into())]);
        let h = t.standard_headers(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"weather","arguments":{"region":"eu-west"}}}"#);
        assert_eq!(
            h,
            vec![
                ("Mcp-Method".to_string(), "tools/call".to_string()),
                ("Mcp-Name".into(), "weather".into()),
                ("Mcp-Param-Region".into(), "eu-west".into())
            ]
        );
        assert!(HttpTarget::new("https://example.com/mcp", None).unwrap_err().to_string().contains("no TLS"));
    }

    #[test]
    fn ids_of_a_batch() {
        assert_eq!(
            request_ids(
                r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","id":"x","method":"b"}]"#
            ),
            vec!["1".to_string(), "\"x\"".to_string()]
        );
    }

    #[test]
    fn a_token_echoed_by_the_upstream_is_not_quoted() {
        let t = HttpTarget::new("http://127.0.0.1:1/mcp", Some("s3cret-abc".into())).unwrap();
        let said = t.refused(reqwest::StatusCode::UNAUTHORIZED, "bad token s3cret-abc for this server");
        assert!(!said.contains("s3cret-abc"), "{said}");
        assert!(said.contains("bad token [token] for this server"), "{said}");
        assert!(said.contains("HTTP 401"), "{said}");
    }

    #[tokio::test]
    async fn a_body_is_read_up_to_the_bound_and_no_further() {
        let response = |body: &str| reqwest::Response::from(axum::http::Response::new(body.to_string()));
        let json = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        assert_eq!(read_bounded(&mut response(json), json.len()).await.as_deref(), Some(json));
        assert_eq!(read_bounded(&mut response(json), json.len() - 1).await, None);
        assert_eq!(read_bounded(&mut response(""), 0).await.as_deref(), Some(""));
    }
}
