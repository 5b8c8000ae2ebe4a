//! A link: one upstream connection and the client side it serves — one client session (stdio,
//! or a legacy HTTP session), or, `shared`, any number of stateless 2026-era requests. The
//! link forwards every message as the peer wrote it; what it reads on the way is only what
//! routing and measurement need. Each request is timed from the moment the proxy reads it to
//! the moment it reads the answer, and classified the way Gemba classifies its own calls.
//!
//! A shared link gives each request an id of its own upstream (clients choose ids
//! independently, so two could collide) and puts the client's id back in the answer; the same
//! for progress tokens and subscription ids. Nothing else in a message is changed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kaizen::experiment::{Assignment, Engine, Observation};
use kaizen::{Completion, OpId, Outcome, Recorder, Timer};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::message::{self, Glimpse, Kind, Msg, codes};
use super::ops::{self, Ops};
use super::upstream::{Forwarded, MAX_REPLAYED_SUBSCRIPTIONS, Replay, UpEvent, Upstream};
use crate::measure::{error_class, log_message};

/// Where messages for a client go (stdout, or an HTTP response stream).
pub type Sink = mpsc::Sender<String>;

/// Messages for a client kept while it has no stream open (HTTP), oldest dropped first.
const MAX_PARKED: usize = 256;
/// Ids the proxy answered itself whose late answers from the upstream are dropped.
const MAX_ANSWERED: usize = 4_096;
/// Longest argument text kept for the request log of a failed call.
const MAX_ARGS: usize = 1_000;

/// A shared link's rewrite of a request: the id the upstream sees and, when the request asked
/// for progress, (the client's progress token, the upstream's), all as JSON text.
type Rewritten = (String, Option<(String, String)>);

/// About the client side of one request.
#[derive(Clone)]
pub struct ClientCtx {
    /// Where this request's answer (and the messages that belong to it) go.
    pub reply: Sink,
    /// That stream's number (HTTP response streams; 0 for stdio).
    pub stream: u64,
    /// The session, for the request log and experiments.
    pub session: u64,
    /// The experiment assignment the request was served under (A/B between upstreams).
    pub assignment: Option<Arc<Assignment>>,
    /// Headers an HTTP upstream must see.
    pub forwarded: Option<Forwarded>,
    /// The protocol version the transport told (HTTP header), when the message does not.
    pub protocol: Option<String>,
}

struct Pending {
    timer: Timer,
    op: OpId,
    client_id: String,
    reply: Sink,
    stream: u64,
    session: u64,
    protocol: usize,
    seq: u64,
    request_bytes: u64,
    args_hash: u64,
    args: Option<String>,
    /// Shared links: (the client's token, the upstream's) as JSON text.
    token: Option<(String, String)>,
    assignment: Option<Arc<Assignment>>,
    initialize: bool,
    /// A 2026-era request: a client that goes away cancels it.
    modern: bool,
}

#[derive(Default)]
struct State {
    /// By the id the upstream sees.
    pending: HashMap<String, Pending>,
    /// Upstream progress token → upstream request id.
    tokens: HashMap<String, String>,
    /// The client's stream for messages that belong to no request (stdout; an HTTP GET
    /// stream), with its number.
    listener: Option<(Sink, u64)>,
    parked: VecDeque<String>,
    answered: HashSet<String>,
    answered_order: VecDeque<String>,
    protocol: Option<usize>,
    next_id: u64,
    closed: bool,
}

impl State {
    /// The request `id` (an upstream id) is answered: out of the table, with the progress
    /// tokens that pointed at it.
    fn take_pending(&mut self, id: &str) -> Option<Pending> {
        let p = self.pending.remove(id)?;
        match &p.token {
            Some((_, up_tok)) => {
                self.tokens.remove(up_tok);
            }
            None => self.tokens.retain(|_, v| v != id),
        }
        Some(p)
    }

    fn remember_answered(&mut self, id: String) {
        if self.answered.insert(id.clone()) {
            self.answered_order.push_back(id);
            while self.answered_order.len() > MAX_ANSWERED {
                if let Some(old) = self.answered_order.pop_front() {
                    self.answered.remove(&old);
                }
            }
        }
    }
}

/// Counters the proxy exports besides the recorder's.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Messages from the upstream no client could be found for (shared links).
    pub unroutable: AtomicU64,
    /// Messages for a client dropped because it had no stream open for too long.
    pub parked_dropped: AtomicU64,
}

pub struct Link {
    pub upstream_name: String,
    ops: Arc<Ops>,
    recorder: Arc<Recorder>,
    pub upstream: Upstream,
    replay: Arc<Mutex<Replay>>,
    state: Mutex<State>,
    /// Keeps message numbering and queue order the same.
    send_order: tokio::sync::Mutex<()>,
    seq: AtomicU64,
    shared: bool,
    transport: usize,
    engine: Option<Arc<Engine>>,
    counters: Arc<LinkCounters>,
    started: Instant,
}

/// How a link is set up.
pub struct LinkSetup {
    pub upstream_name: String,
    pub ops: Arc<Ops>,
    pub recorder: Arc<Recorder>,
    pub shared: bool,
    /// Index into the naming's transports (the client side: pipe or tcp).
    pub transport: usize,
    pub engine: Option<Arc<Engine>>,
    pub counters: Arc<LinkCounters>,
    /// Where messages that belong to no request go from the start (stdout), if anywhere.
    pub listener: Option<Sink>,
}

impl Link {
    /// A link over `upstream` (already started with `replay` and feeding `events`); spawns the
    /// task that handles the upstream's events.
    pub fn start(
        setup: LinkSetup,
        upstream: Upstream,
        replay: Arc<Mutex<Replay>>,
        mut events: mpsc::Receiver<UpEvent>,
    ) -> Arc<Self> {
        let link = Arc::new(Self {
            upstream_name: setup.upstream_name,
            ops: setup.ops,
            recorder: setup.recorder,
            upstream,
            replay,
            state: Mutex::new(State { listener: setup.listener.map(|s| (s, 0)), ..Default::default() }),
            send_order: tokio::sync::Mutex::new(()),
            seq: AtomicU64::new(0),
            shared: setup.shared,
            transport: setup.transport,
            engine: setup.engine,
            counters: setup.counters,
            started: Instant::now(),
        });
        let weak = Arc::downgrade(&link);
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let Some(link) = weak.upgrade() else { return };
                link.on_upstream(ev).await;
            }
        });
        link
    }

    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Requests waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// The client opened its stream (number `stream`) for messages that belong to no request;
    /// what waited for it is sent now. False when one is open already.
    pub async fn open_listener(&self, sink: Sink, stream: u64) -> bool {
        let parked: Vec<String> = {
            let mut st = self.state.lock();
            if st.listener.as_ref().is_some_and(|(s, _)| !s.is_closed()) {
                return false;
            }
            st.listener = Some((sink.clone(), stream));
            st.parked.drain(..).collect()
        };
        for m in parked {
            let _ = sink.send(m).await;
        }
        true
    }

    /// The client closed its listening stream `stream`.
    pub fn close_listener(&self, stream: u64) {
        let mut st = self.state.lock();
        if st.listener.as_ref().is_some_and(|(_, n)| *n == stream) {
            st.listener = None;
        }
    }

    /// A message from the client: note what measurement and replay need, then forward it.
    pub async fn on_client_message(&self, text: String, ctx: &ClientCtx) {
        if let Some(items) = message::batch(&text) {
            if self.shared {
                // Shared links serve the 2026 era, which has no batches: forward one by one.
                let parts: Vec<String> = items.iter().map(|i| i.get().to_string()).collect();
                for p in parts {
                    Box::pin(self.on_client_message(p, ctx)).await;
                }
                return;
            }
            let _order = self.send_order.lock().await;
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let mut flush = Vec::new();
            for item in &items {
                let m = message::peek(item.get());
                if m.kind == Kind::Request {
                    flush.extend(self.register(&m, item.get(), seq, ctx, None));
                } else {
                    self.note_client_message(&m, item.get());
                }
            }
            self.flush_parked(flush, &ctx.reply).await;
            self.forward(seq, text, ctx).await;
            return;
        }
        let m = message::peek(&text);
        match m.kind {
            Kind::Request => {
                let _order = self.send_order.lock().await;
                let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
                let (out, rewritten) = if self.shared { self.rewrite_request(&m, &text) } else { (None, None) };
                let flush = self.register(&m, &text, seq, ctx, rewritten);
                self.flush_parked(flush, &ctx.reply).await;
                let out = out.unwrap_or(text);
                self.forward(seq, out, ctx).await;
            }
            _ => {
                self.note_client_message(&m, &text);
                if self.shared && (m.kind != Kind::Notification || m.method() == "notifications/cancelled") {
                    // Answers to server requests have no client to come from on a shared link.
                    // Nor does a cancellation: upstream ids there are the proxy's, so a client
                    // naming one could cancel another client's request; a 2026-era client
                    // cancels by closing its stream, which `abandon` turns into the upstream's
                    // cancellation.
                    return;
                }
                let _order = self.send_order.lock().await;
                let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
                self.forward(seq, text, ctx).await;
            }
        }
    }

    async fn forward(&self, seq: u64, text: String, ctx: &ClientCtx) {
        if let Err(e) = self.upstream.send(seq, text, ctx.forwarded.clone()).await {
            tracing::warn!("cannot forward to upstream {}: {e}", self.upstream_name);
        }
    }

    async fn flush_parked(&self, parked: Vec<String>, sink: &Sink) {
        for m in parked {
            let _ = sink.send(m).await;
        }
    }

    /// Shared links: the request with an id (and progress token) of the link's own.
    fn rewrite_request(&self, m: &Msg, text: &str) -> (Option<String>, Option<Rewritten>) {
        let n = {
            let mut st = self.state.lock();
            st.next_id += 1;
            st.next_id
        };
        let up_id = format!("\"gp-{n}\"");
        let token = message::progress_token(m.params);
        // Replace the later span first so the earlier one's offsets still hold.
        let mut out = text.to_string();
        let mut token_pair = None;
        if let (Some(id), Some(tok)) = (m.id, token) {
            let up_tok = format!("\"gpt-{n}\"");
            let id_first = id.as_ptr() < tok.as_ptr();
            let step = |s: &str, first: &str, second: &str, a: &str, b: &str| -> Option<String> {
                let after = message::splice(s, second, b)?;
                // `first` lies before `second`, so its offset is unchanged in `after`.
                let start = first.as_ptr() as usize - s.as_ptr() as usize;
                let mut o = String::with_capacity(after.len());
                o.push_str(&after[..start]);
                o.push_str(a);
                o.push_str(&after[start + first.len()..]);
                Some(o)
            };
            let spliced =
                if id_first { step(text, id, tok, &up_id, &up_tok) } else { step(text, tok, id, &up_tok, &up_id) };
            if let Some(s) = spliced {
                out = s;
                token_pair = Some((tok.to_string(), up_tok));
            }
        } else if let Some(id) = m.id
            && let Some(s) = message::splice(text, id, &up_id)
        {
            out = s;
        }
        (Some(out), Some((up_id, token_pair)))
    }

    /// Start timing a request; returns messages parked for the client (sent first).
    fn register(&self, m: &Msg, text: &str, seq: u64, ctx: &ClientCtx, rewritten: Option<Rewritten>) -> Vec<String> {
        let Some(client_id) = m.id_text() else { return Vec::new() };
        let method = m.method();
        let parts = message::request_parts(method, m.params);
        let tool = parts.tool.as_deref();
        let op = self.ops.of(method, tool);
        let timer = self.recorder.start(op);
        let args_text = parts.arguments.unwrap_or("");
        let args_hash = tool.map_or(0, |n| fnv(n.as_bytes()) ^ fnv(args_text.as_bytes()));
        // Kept as sent (capped) and made fit for the log only if the call fails.
        let args = tool.map(|_| {
            let end = args_text.char_indices().nth(MAX_ARGS).map_or(args_text.len(), |(i, _)| i);
            args_text[..end].to_string()
        });
        let version = parts
            .protocol_version
            .map(std::borrow::Cow::into_owned)
            .or_else(|| if method == "initialize" { message::protocol_version(m.params) } else { None })
            .or_else(|| ctx.protocol.clone());
        let naming = self.recorder.naming();
        let modern = version.as_deref().is_some_and(|v| v >= "2026-07-28");
        let (up_id, token) = match rewritten {
            Some((id, tok)) => (id, tok),
            None => (client_id.to_string(), None),
        };
        let mut st = self.state.lock();
        let protocol = match &version {
            Some(v) => naming.protocol_index(v),
            None => st.protocol.unwrap_or(naming.other_protocol()),
        };
        if method == "initialize" {
            self.replay.lock().initialize = Some(text.to_string());
        } else if method == "logging/setLevel" {
            self.replay.lock().log_level = Some(text.to_string());
        } else if (method == "resources/subscribe" || method == "resources/unsubscribe")
            && let Some(uri) = uri_of(m.params)
        {
            let mut r = self.replay.lock();
            if method == "resources/unsubscribe" {
                r.subscriptions.remove(&uri);
            } else if r.subscriptions.len() < MAX_REPLAYED_SUBSCRIPTIONS {
                r.subscriptions.insert(uri, text.to_string());
            }
        }
        if let Some((_, up_tok)) = &token {
            st.tokens.insert(up_tok.clone(), up_id.clone());
        } else if let Some(tok) = parts.progress_token {
            st.tokens.insert(tok.to_string(), up_id.clone());
        }
        let p = Pending {
            timer,
            op,
            client_id: client_id.to_string(),
            reply: ctx.reply.clone(),
            stream: ctx.stream,
            session: ctx.session,
            protocol,
            seq,
            request_bytes: text.len() as u64,
            args_hash,
            args,
            token,
            assignment: ctx.assignment.clone(),
            initialize: method == "initialize",
            modern,
        };
        if let Some(old) = st.pending.insert(up_id, p) {
            // The client reused an id still waiting: the old request is withdrawn.
            drop(old);
        }
        if st.parked.is_empty() { Vec::new() } else { st.parked.drain(..).collect() }
    }

    /// Client notifications and answers: cancellations end the timing, the handshake's
    /// notification is kept for replay.
    fn note_client_message(&self, m: &Msg, text: &str) {
        if m.kind != Kind::Notification {
            return;
        }
        match m.method() {
            "notifications/initialized" => self.replay.lock().initialized = Some(text.to_string()),
            "notifications/cancelled" if !self.shared => {
                if let Some(id) = message::cancelled_id(m.params) {
                    let p = self.state.lock().pending.remove(id);
                    if let Some(p) = p {
                        self.finish(p, Outcome::Cancelled, None, 0);
                    }
                }
            }
            _ => {}
        }
    }

    /// The client went away from these requests (an HTTP response stream closed early): in the
    /// 2026 era that cancels them, so the upstream is told; before it, their answers still
    /// come (to the client's other stream, if it has one).
    pub async fn abandon(&self, stream: u64) {
        let mut cancels = Vec::new();
        {
            let mut st = self.state.lock();
            let ids: Vec<String> =
                st.pending.iter().filter(|(_, p)| p.modern && p.stream == stream).map(|(k, _)| k.clone()).collect();
            for id in ids {
                if let Some(p) = st.pending.remove(&id) {
                    st.remember_answered(id.clone());
                    cancels.push((id, p));
                }
            }
        }
        for (id, p) in cancels {
            self.finish(p, Outcome::Cancelled, None, 0);
            let note = format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{id},"reason":"the client closed its response stream"}}}}"#
            );
            self.answer_upstream(note).await;
        }
    }

    async fn on_upstream(&self, ev: UpEvent) {
        match ev {
            UpEvent::Message { text, via } => self.on_upstream_message(text, via).await,
            UpEvent::Failed { ids, reason } => {
                let failed: Vec<(String, Pending)> = {
                    let mut st = self.state.lock();
                    ids.iter().filter_map(|id| st.pending.remove(id).map(|p| (id.clone(), p))).collect()
                };
                for (_, p) in failed {
                    self.fail(p, &reason).await;
                }
            }
            UpEvent::Exited { written, reason } => {
                let lost: Vec<Pending> = {
                    let mut st = self.state.lock();
                    let ids: Vec<String> =
                        st.pending.iter().filter(|(_, p)| p.seq <= written).map(|(k, _)| k.clone()).collect();
                    ids.iter().filter_map(|id| st.pending.remove(id)).collect()
                };
                let why = format!(
                    "the upstream MCP server ({}) {reason} while this request was in progress; gemba proxy is restarting it, retry the request",
                    self.upstream_name
                );
                for p in lost {
                    self.fail(p, &why).await;
                }
            }
            UpEvent::TooLong { glimpse, bytes, limit } => self.on_upstream_too_long(glimpse, bytes, limit).await,
            UpEvent::Restarted => {
                tracing::info!("upstream {} is serving again", self.upstream_name);
            }
        }
    }

    /// The upstream wrote a message too long to pass. An answer fails the request it answers,
    /// at once (the client would otherwise wait for it forever); a request of the server's is
    /// answered with an error for the same reason.
    async fn on_upstream_too_long(&self, g: Glimpse, bytes: usize, limit: usize) {
        self.upstream.health().dropped_messages.fetch_add(1, Ordering::Relaxed);
        let Some(id) = g.id else { return };
        match g.kind {
            Some(Kind::Response) => {
                let p = self.state.lock().take_pending(&id);
                if let Some(p) = p {
                    let why = format!(
                        "the upstream MCP server ({}) answered with {}, more than gemba proxy passes ({}); ask for less (a smaller page or range) or start the proxy with a larger --max-message-mb",
                        self.upstream_name,
                        size(bytes),
                        size(limit)
                    );
                    self.fail(p, &why).await;
                }
            }
            Some(Kind::Request) => {
                let why = format!(
                    "gemba proxy: this request was {}, more than the proxy passes to its client ({}; --max-message-mb)",
                    size(bytes),
                    size(limit)
                );
                self.answer_upstream(message::error_response(&id, codes::INTERNAL_ERROR, &why)).await;
            }
            _ => {}
        }
    }

    /// The client wrote a message too long to pass (`bytes`, over `limit`). A request is
    /// answered at once with an error that says so, and measured as refused for its arguments;
    /// an answer to a request of the server's is replaced by an error, so the server does not
    /// wait for it.
    pub async fn on_client_too_long(&self, g: Glimpse, bytes: usize, limit: usize, ctx: &ClientCtx) {
        let Some(id) = g.id else {
            tracing::warn!("a client message of {} (over {}) was not passed on", size(bytes), size(limit));
            return;
        };
        match g.kind {
            Some(Kind::Request) => {
                let op = self.ops.of(g.method.as_deref().unwrap_or(""), g.tool.as_deref());
                let why = format!(
                    "gemba proxy: this request is {}, more than it passes to the upstream MCP server ({}); send less, or start the proxy with a larger --max-message-mb",
                    size(bytes),
                    size(limit)
                );
                let protocol = self.state.lock().protocol.unwrap_or(self.recorder.naming().other_protocol());
                let outcome = Outcome::InvalidParams;
                self.recorder.start(op).finish(Completion {
                    outcome: Some(outcome),
                    request_bytes: bytes as u64,
                    session: ctx.session,
                    protocol,
                    transport: self.transport,
                    error: Some((error_class(outcome).to_string(), log_message(&why))),
                    ..Default::default()
                });
                let _ = ctx.reply.send(message::error_response(&id, codes::INVALID_REQUEST, &why)).await;
            }
            Some(Kind::Response) => {
                let why = format!(
                    "gemba proxy: the client's answer was {}, more than the proxy passes ({}; --max-message-mb)",
                    size(bytes),
                    size(limit)
                );
                self.answer_upstream(message::error_response(&id, codes::INTERNAL_ERROR, &why)).await;
            }
            _ => {}
        }
    }

    /// Send a message of the proxy's own to the upstream, in turn with the client's (numbered
    /// like theirs).
    async fn answer_upstream(&self, text: String) {
        let _order = self.send_order.lock().await;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.upstream.send(seq, text, None).await;
    }

    /// Answer a request with an error of the proxy's own (the upstream could not).
    async fn fail(&self, p: Pending, reason: &str) {
        self.upstream.health().failed_requests.fetch_add(1, Ordering::Relaxed);
        let reply = p.reply.clone();
        let answer = message::error_response(&p.client_id, codes::INTERNAL_ERROR, reason);
        let len = answer.len() as u64;
        self.finish(p, Outcome::Internal, Some(("system".into(), log_message(reason))), len);
        let _ = reply.send(answer).await;
    }

    /// Requests that have waited longer than `hold` for an upstream that is down (and were
    /// never given to it) are answered with an error; if the upstream comes back and answers
    /// after all, that late answer is dropped.
    pub async fn expire_held(&self, hold: Duration) {
        let health = self.upstream.health();
        let Some(down) = health.down_for() else { return };
        if down < hold {
            return;
        }
        let written = self.upstream.written();
        let held: Vec<Pending> = {
            let mut st = self.state.lock();
            let ids: Vec<String> =
                st.pending.iter().filter(|(_, p)| p.seq > written && !p.initialize).map(|(k, _)| k.clone()).collect();
            let mut out = Vec::new();
            for id in ids {
                if let Some(p) = st.pending.remove(&id) {
                    st.remember_answered(id);
                    out.push(p);
                }
            }
            out
        };
        if held.is_empty() {
            return;
        }
        let why = format!(
            "the upstream MCP server ({}) has been down for {:.0} s ({}); retry later",
            self.upstream_name,
            down.as_secs_f64(),
            health.describe()
        );
        for p in held {
            self.fail(p, &why).await;
        }
    }

    async fn on_upstream_message(&self, text: String, via: Option<String>) {
        if let Some(items) = message::batch(&text) {
            // A batch of answers (2025-03-26): each one measured, the batch delivered whole.
            let mut target = None;
            for item in &items {
                let m = message::peek(item.get());
                if m.kind == Kind::Response
                    && let Some(id) = m.id_text()
                {
                    let p = self.state.lock().pending.remove(id);
                    if let Some(p) = p {
                        target.get_or_insert_with(|| p.reply.clone());
                        self.measure_answer(p, &m, item.get().len() as u64);
                    }
                }
            }
            match target {
                Some(sink) => self.deliver(&sink, text).await,
                None => self.to_client(text, None).await,
            }
            return;
        }
        let m = message::peek(&text);
        match m.kind {
            Kind::Response => {
                let Some(id) = m.id_text() else {
                    self.to_client(text, via.as_deref()).await;
                    return;
                };
                let (p, answered) = {
                    let mut st = self.state.lock();
                    let p = st.take_pending(id);
                    let answered = p.is_none() && st.answered.remove(id);
                    (p, answered)
                };
                match p {
                    Some(p) => {
                        let spliced =
                            if self.shared { m.id.and_then(|i| message::splice(&text, i, &p.client_id)) } else { None };
                        if p.initialize
                            && let Some(v) = message::protocol_version(message::peek_all(&text).result)
                        {
                            self.state.lock().protocol = Some(self.recorder.naming().protocol_index(&v));
                        }
                        let sink = p.reply.clone();
                        self.measure_answer(p, &m, text.len() as u64);
                        // The upstream's text itself goes on (no copy) unless an id was put back.
                        self.deliver(&sink, spliced.unwrap_or(text)).await;
                    }
                    None if answered => {} // the proxy answered it already
                    None => self.to_client(text, via.as_deref()).await,
                }
            }
            Kind::Notification => {
                // Progress belongs to the request that asked for it; a subscription's events to
                // its listen request.
                let (owner, rewrite): (Option<String>, Option<(&str, String)>) =
                    if m.method() == "notifications/progress" {
                        match message::progress_notification_token(m.params) {
                            Some(tok) => {
                                let st = self.state.lock();
                                let owner = st.tokens.get(tok).cloned();
                                let back = owner
                                    .as_ref()
                                    .and_then(|o| st.pending.get(o))
                                    .and_then(|p| p.token.as_ref())
                                    .map(|(client_tok, _)| (tok, client_tok.clone()));
                                (owner, back)
                            }
                            None => (None, None),
                        }
                    } else if let Some(sub) = message::subscription_id(m.params) {
                        let st = self.state.lock();
                        let owner = st.pending.contains_key(sub).then(|| sub.to_string());
                        let back = owner
                            .as_ref()
                            .and_then(|o| st.pending.get(o))
                            .filter(|_| self.shared)
                            .map(|p| (sub, p.client_id.clone()));
                        (owner, back)
                    } else {
                        (via.clone(), None)
                    };
                let out = match rewrite {
                    Some((part, client)) if self.shared => message::splice(&text, part, &client),
                    _ => None,
                };
                let text = out.unwrap_or(text);
                self.to_client(text, owner.as_deref()).await;
            }
            Kind::Request => {
                if self.shared {
                    // A server request on a shared link can only go to a client if one request
                    // is waiting; otherwise the server is told no one can answer.
                    let only = {
                        let st = self.state.lock();
                        if st.pending.len() == 1 { st.pending.values().next().map(|p| p.reply.clone()) } else { None }
                    };
                    match only {
                        Some(sink) => self.deliver(&sink, text).await,
                        None => {
                            if let Some(id) = m.id_text() {
                                let answer = message::error_response(
                                    id,
                                    codes::INVALID_REQUEST,
                                    "gemba proxy: no client can answer this request (stateless clients share this upstream)",
                                );
                                self.answer_upstream(answer).await;
                            }
                            self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else {
                    self.to_client(text, via.as_deref()).await;
                }
            }
            Kind::Invalid => {
                if self.shared {
                    self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                    self.upstream.health().dropped_messages.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Not JSON-RPC, but the client would have seen it from the server directly.
                    self.to_client(text, None).await;
                }
            }
        }
    }

    /// Deliver a message that answers no request: to the stream of the request it belongs to
    /// (`related`, an upstream id), else the client's listening stream, else the stream of the
    /// most recent request still open, else keep it until the client opens a stream.
    async fn to_client(&self, text: String, related: Option<&str>) {
        let sink = {
            let mut st = self.state.lock();
            let related = related.and_then(|id| st.pending.get(id)).map(|p| p.reply.clone());
            let sink = related.or_else(|| st.listener.as_ref().map(|(s, _)| s.clone())).or_else(|| {
                if self.shared && st.pending.len() != 1 {
                    None
                } else {
                    st.pending.values().max_by_key(|p| p.seq).map(|p| p.reply.clone())
                }
            });
            if sink.is_none() {
                if self.shared {
                    self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if st.parked.len() >= MAX_PARKED {
                    st.parked.pop_front();
                    self.counters.parked_dropped.fetch_add(1, Ordering::Relaxed);
                }
                st.parked.push_back(text);
                return;
            }
            sink
        };
        if let Some(s) = sink {
            self.deliver(&s, text).await;
        }
    }

    /// Send to a client stream; if that stream is gone, to the listening stream.
    async fn deliver(&self, sink: &Sink, text: String) {
        if let Err(mpsc::error::SendError(text)) = sink.send(text).await {
            let listener = self.state.lock().listener.clone();
            if let Some((l, n)) = listener
                && !l.same_channel(sink)
                && l.send(text).await.is_err()
            {
                self.close_listener(n);
            }
        }
    }

    /// Classify an answer and record it.
    fn measure_answer(&self, p: Pending, m: &Msg, bytes: u64) {
        let is_tool = self.ops.specs.get(p.op.0 as usize).is_some_and(|s| s.method == "tools/call");
        let (outcome, error) = if m.error.is_some() {
            let (code, msg) = message::error_info(m.error);
            let o = ops::error_outcome(code);
            (o, Some((error_class(o).to_string(), log_message(&format!("{msg} ({code})")))))
        } else if is_tool && message::is_tool_error(m.result) {
            let text = message::first_text(m.result).unwrap_or_default();
            (Outcome::ToolError, Some((error_class(Outcome::ToolError).to_string(), log_message(&text))))
        } else {
            (Outcome::Ok, None)
        };
        self.finish(p, outcome, error, bytes);
    }

    fn finish(&self, p: Pending, outcome: Outcome, error: Option<(String, String)>, response_bytes: u64) {
        let c = Completion {
            outcome: Some(outcome),
            request_bytes: p.request_bytes,
            response_bytes,
            session: p.session,
            args_hash: p.args_hash,
            protocol: p.protocol,
            transport: self.transport,
            args_excerpt: if outcome == Outcome::Ok { None } else { p.args.as_deref().map(log_message) },
            error,
            ..Default::default()
        };
        let elapsed = p.timer.finish(c);
        if let (Some(engine), Some(a)) = (&self.engine, &p.assignment)
            && outcome.is_judged()
        {
            engine.record(
                a,
                &Observation {
                    operation: self.ops.name(p.op),
                    latency_micros: elapsed.as_micros() as u64,
                    is_error: outcome != Outcome::Ok,
                    is_server_error: outcome.is_server_error(),
                    cache_hit: None,
                    response_bytes,
                },
            );
        }
    }

    /// The client is gone: record the session, withdraw what it left waiting, stop the upstream.
    pub async fn close(&self) {
        let (pending, protocol) = {
            let mut st = self.state.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            st.listener = None;
            let p: Vec<Pending> = st.pending.drain().map(|(_, p)| p).collect();
            (p, st.protocol)
        };
        for p in pending {
            self.finish(p, Outcome::Cancelled, None, 0);
        }
        if !self.shared {
            let protocol = protocol.unwrap_or(self.recorder.naming().other_protocol());
            self.recorder.record_session(self.started.elapsed(), protocol, self.transport);
        }
        self.upstream.shutdown().await;
    }
}

fn uri_of(params: Option<&str>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct P {
        uri: String,
    }
    serde_json::from_str::<P>(params?).ok().map(|p| p.uri)
}

/// A message size for people: "1.4 MiB", "900 KiB".
pub fn size(bytes: usize) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 { format!("{mib:.1} MiB") } else { format!("{} KiB", bytes.div_ceil(1024)) }
}

pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
