//! The upstream side of a link: a server process the proxy supervises (`child`) or a streamable
//! HTTP endpoint (`http_up`), behind one interface: send a message, receive `UpEvent`s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::child::ChildUpstream;
use super::http_up::HttpUpstream;
use super::message::Glimpse;

/// What happens upstream, in the order it happened.
#[derive(Debug)]
pub enum UpEvent {
    /// A message from the upstream. `via` is the (upstream) id of the request whose response
    /// stream carried it, when the transport says (streamable HTTP).
    Message { text: String, via: Option<String> },
    /// These requests (upstream ids) cannot be answered by the upstream: answer them with this.
    Failed { ids: Vec<String>, reason: String },
    /// A message longer than the proxy passes (`limit` bytes) was dropped: what its ends showed,
    /// so whoever waits for it can be told.
    TooLong { glimpse: Glimpse, bytes: usize, limit: usize },
    /// The upstream process exited: every message numbered up to `written` went with it.
    Exited { written: u64, reason: String },
    /// The upstream serves again (restarted, and the client's session replayed to it).
    Restarted,
}

/// What a client told the upstream that a new upstream process (or session) must hear again
/// before it can serve the same client: the handshake and the session-wide settings.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    /// The client's `initialize` request, as it sent it.
    pub initialize: Option<String>,
    /// Its `notifications/initialized`.
    pub initialized: Option<String>,
    /// The last `logging/setLevel` request.
    pub log_level: Option<String>,
    /// `resources/subscribe` requests by URI (unsubscribing removes them).
    pub subscriptions: BTreeMap<String, String>,
}

/// Most subscriptions kept for replay.
pub const MAX_REPLAYED_SUBSCRIPTIONS: usize = 1_000;

/// The health of one upstream, for readiness, metrics and error messages.
#[derive(Debug, Default)]
pub struct Health {
    pub up: AtomicBool,
    /// Times the upstream went down (process exits, lost sessions).
    pub exits: AtomicU64,
    pub restarts: AtomicU64,
    /// Requests answered by the proxy because the upstream could not.
    pub failed_requests: AtomicU64,
    /// Messages from the upstream that could not be read or routed.
    pub dropped_messages: AtomicU64,
    /// HTTP 401/403 answers: the upstream refused the proxy's token (or its lack of one).
    pub refusals: AtomicU64,
    pub last_exit: Mutex<Option<String>>,
    pub down_since: Mutex<Option<Instant>>,
    /// When the next restart attempt is due, while down.
    pub next_attempt: Mutex<Option<Instant>>,
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self) {
        self.up.store(true, Ordering::Relaxed);
        *self.down_since.lock() = None;
        *self.next_attempt.lock() = None;
    }

    pub fn set_down(&self, reason: &str) {
        self.up.store(false, Ordering::Relaxed);
        self.exits.fetch_add(1, Ordering::Relaxed);
        *self.last_exit.lock() = Some(reason.to_string());
        self.down_since.lock().get_or_insert_with(Instant::now);
    }

    /// How long the upstream has been down (None while up).
    pub fn down_for(&self) -> Option<Duration> {
        if self.is_up() { None } else { self.down_since.lock().map(|t| t.elapsed()) }
    }

    /// A sentence on the current state, for error messages.
    pub fn describe(&self) -> String {
        let last = self.last_exit.lock().clone().unwrap_or_else(|| "not started yet".into());
        match *self.next_attempt.lock() {
            Some(t) => format!(
                "{last}; next restart attempt in {:.1} s",
                t.saturating_duration_since(Instant::now()).as_secs_f64()
            ),
            None => last,
        }
    }
}

/// Headers a client sent that an HTTP upstream must see too (the protocol version and, from
/// 2026-07-28, the standard `Mcp-*` routing headers).
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    pub headers: Vec<(String, String)>,
}

/// One upstream connection.
pub enum Upstream {
    Child(ChildUpstream),
    Http(HttpUpstream),
}

impl Upstream {
    /// Queue a message; `seq` numbers it (see `UpEvent::Exited`). Waits while the queue is full.
    pub async fn send(&self, seq: u64, text: String, forwarded: Option<Forwarded>) -> Result<(), String> {
        match self {
            Upstream::Child(c) => c.send(seq, text).await,
            Upstream::Http(h) => h.send(text, forwarded).await,
        }
    }

    pub fn health(&self) -> &Arc<Health> {
        match self {
            Upstream::Child(c) => &c.health,
            Upstream::Http(h) => &h.health,
        }
    }

    /// Number of the last message written to the upstream process (HTTP: every message sent).
    pub fn written(&self) -> u64 {
        match self {
            Upstream::Child(c) => c.written(),
            Upstream::Http(_) => u64::MAX,
        }
    }

    /// Stop: close the process's input and give it a moment before killing it (HTTP: end the
    /// session).
    pub async fn shutdown(&self) {
        match self {
            Upstream::Child(c) => c.shutdown().await,
            Upstream::Http(h) => h.shutdown().await,
        }
    }
}
