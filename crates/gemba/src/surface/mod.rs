//! The MCP surface clients expect besides tools: prompts, completion, logging, progress,
//! workbook resources and their subscriptions, each through the mechanism of the protocol era
//! the client speaks (legacy: `logging/setLevel` and `resources/subscribe` per session;
//! 2026-07-28: the log level in each request's `_meta`, and `subscriptions/listen`).
//!
//! The pieces are plain functions and small state types; `server.rs` calls them from its
//! `ServerHandler` methods.

pub mod completion;
pub mod logging;
pub mod progress;
pub mod prompts;
pub mod resources;
pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kaizen::exposition::{Kind, Sample};
use parking_lot::Mutex;
use rmcp::RoleServer;
use rmcp::model::{ServerCapabilities, SubscriptionFilter};
use rmcp::service::RequestContext;
use serde_json::{Value, json};
use sheets::workspace::FileIdentity;
use sheets::{Engine, SheetsError};

/// Process-wide state of the surface: the subscription watcher and the counters.
#[derive(Default)]
pub struct Shared {
    pub watcher: Arc<watch::Watcher>,
    pub log: logging::LogCounters,
    pub progress: Arc<progress::ProgressCounters>,
}

impl Shared {
    /// The surface's figures for `/metrics` (the embedder adds them to its sample provider).
    pub fn samples(&self, out: &mut Vec<Sample>) {
        let c = |n: &str, h: &str, v: u64| Sample::new(n, h, Kind::Counter, v as f64);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let msg = "Log messages (notifications/message) by outcome: sent, dropped over the rate limit, filtered below the client's level.";
        out.push(c("gemba_log_messages", msg, load(&self.log.sent)).label("outcome", "sent"));
        out.push(c("gemba_log_messages", msg, load(&self.log.dropped)).label("outcome", "dropped"));
        out.push(c("gemba_log_messages", msg, load(&self.log.filtered)).label("outcome", "filtered"));
        out.push(c(
            "gemba_progress_notifications",
            "Progress notifications sent for calls that asked for them.",
            load(&self.progress.sent),
        ));
        out.push(Sample::new(
            "gemba_resource_subscriptions",
            "Resource subscriptions held (legacy resources/subscribe and subscriptions/listen).",
            Kind::Gauge,
            self.watcher.count() as f64,
        ));
        let w = &self.watcher.counters;
        let upd = "notifications/resources/updated by outcome (failed: the subscriber was gone and is dropped).";
        out.push(c("gemba_resource_updates", upd, load(&w.updates_sent)).label("outcome", "sent"));
        out.push(c("gemba_resource_updates", upd, load(&w.updates_failed)).label("outcome", "failed"));
    }
}

static OWNER_SEQ: AtomicU64 = AtomicU64::new(1);

/// A fresh owner id for a session or a listen request.
pub fn new_owner() -> u64 {
    OWNER_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// One session's surface state: its log level and rate, the forks it was warned about. Its
/// subscriptions end when it is dropped (the session ended).
pub struct Session {
    pub id: u64,
    pub log: logging::SessionLog,
    watcher: Arc<watch::Watcher>,
    /// Fork id → the source file identity last warned about (bounded).
    warned: Mutex<HashMap<String, Option<FileIdentity>>>,
}

/// Most forks one session remembers having warned about.
const MAX_WARNED: usize = 256;

impl Session {
    pub fn new(shared: &Shared) -> Self {
        Self {
            id: new_owner(),
            log: logging::SessionLog::default(),
            watcher: shared.watcher.clone(),
            warned: Mutex::default(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.watcher.drop_owner(self.id);
    }
}

/// Whether a request belongs to the legacy era (an `initialize` session).
pub fn is_legacy(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.protocol_version().is_none_or(|v| v.has_initialize())
}

/// What the server declares: only what works.
#[allow(deprecated)] // logging is deprecated by SEP-2577 but still part of both eras
pub fn capabilities() -> ServerCapabilities {
    ServerCapabilities::builder()
        .enable_logging()
        .enable_completions()
        .enable_prompts()
        .enable_resources()
        .enable_resources_subscribe()
        .enable_tools()
        .build()
}

/// The fork ids a tool call names (`fork_id`, or a fork id passed as `workbook_id`).
pub fn forks_named(args: &Value) -> Vec<String> {
    ["fork_id", "workbook_id"]
        .iter()
        .filter_map(|k| args.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|id| sheets::forks::ForkStore::is_fork_id(id))
        .map(String::from)
        .collect()
}

/// If `fork_id`'s source file changed on disk since the fork was made (and this session was
/// not told about this version yet), the warning to send. Never waits for a busy fork.
pub fn fork_source_changed(engine: &Engine, session: &Session, fork_id: &str) -> Option<Value> {
    let handle = engine.forks.get(fork_id).ok()?;
    let (rel, path) = {
        // The summary is kept beside the fork's lock: reading it never waits for a busy fork.
        let f = handle.summary();
        let path = engine.workspace.root().join(&f.source_path);
        let unchanged =
            FileIdentity::of(&path).is_ok_and(|now| sheets::forks::persist::SourceIdentity::from(&now) == f.source);
        if unchanged {
            return None;
        }
        (f.source_path.clone(), path)
    };
    let now = FileIdentity::of(&path).ok();
    let mut warned = session.warned.lock();
    if warned.get(fork_id) == Some(&now) {
        return None;
    }
    if warned.len() >= MAX_WARNED {
        warned.clear();
    }
    warned.insert(fork_id.to_string(), now.clone());
    let what = if now.is_some() { "changed on disk" } else { "is gone" };
    Some(json!({
        "message": format!(
            "{rel} {what} since fork {fork_id} was made; the fork still shows the version it was made from — \
             create_fork again to work on the new version, and save_fork to a new path"
        ),
        "fork_id": fork_id,
        "path": rel,
    }))
}

/// Every workbook and fork that may complete a `workbook_id` (reads the workspace listing).
pub fn candidates(engine: &Engine) -> Vec<completion::Candidate> {
    let mut out: Vec<completion::Candidate> = engine
        .workspace
        .list()
        .iter()
        .map(|e| completion::Candidate { id: e.id.clone(), path: e.rel_path.clone() })
        .collect();
    for id in engine.forks.ids() {
        let path = engine.forks.get(&id).ok().map(|h| h.summary().source_path.clone()).unwrap_or_default();
        out.push(completion::Candidate { id, path });
    }
    out
}

/// The workspace path a workbook or fork id stands for (a fork's: its original's).
pub fn path_of(engine: &Engine, id: &str) -> Result<String, SheetsError> {
    if sheets::forks::ForkStore::is_fork_id(id) {
        let handle = engine.forks.get(id)?;
        let f = handle.lock();
        return Ok(f.meta.source_path.clone());
    }
    Ok(engine.workspace.resolve(id)?.rel_path)
}

/// Why a URI cannot be subscribed to.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Uri(#[from] resources::UriError),
    #[error("{0} changes with every request and cannot be subscribed to; read it when you need it (resources/read)")]
    Live(String),
    #[error(
        "'{0}' is a fork: forks change only through your own calls, so there is nothing to watch; subscribe to its workbook instead"
    )]
    Fork(String),
    #[error(transparent)]
    Workbook(#[from] SheetsError),
    #[error(transparent)]
    Full(#[from] watch::WatchError),
}

/// The file a subscription to `uri` watches.
pub fn watched_file(engine: &Engine, uri: &str) -> Result<std::path::PathBuf, SubscribeError> {
    if uri.starts_with("kaizen://") {
        return Err(SubscribeError::Live(uri.to_string()));
    }
    let target = resources::parse(uri)?;
    let id = target.workbook_id();
    if sheets::forks::ForkStore::is_fork_id(id) {
        return Err(SubscribeError::Fork(id.to_string()));
    }
    Ok(engine.workspace.resolve(id)?.abs_path)
}

/// The part of a `subscriptions/listen` filter Gemba honours: resource URIs of workspace
/// workbooks (at most [`watch::MAX_PER_OWNER`], looked at among the first twice that many, so a
/// huge request cannot make it rescan the workspace without end); list-change notifications
/// are not offered.
pub fn accepted_filter(engine: &Engine, requested: &SubscriptionFilter) -> SubscriptionFilter {
    let uris: Vec<String> = requested
        .resource_subscriptions
        .iter()
        .flatten()
        .take(2 * watch::MAX_PER_OWNER)
        .filter(|u| watched_file(engine, u).is_ok())
        .take(watch::MAX_PER_OWNER)
        .cloned()
        .collect();
    if uris.is_empty() {
        SubscriptionFilter::new()
    } else {
        SubscriptionFilter::builder().resource_subscriptions(uris).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_named_in_arguments() {
        let args = json!({"fork_id": "fork-1a2b3c4d", "workbook_id": "sales-3f2a"});
        assert_eq!(forks_named(&args), ["fork-1a2b3c4d"]);
        assert_eq!(forks_named(&json!({"workbook_id": " fork-00000000 "})), ["fork-00000000"]);
        assert!(forks_named(&json!({"workbook_id": "sales-3f2a"})).is_empty());
    }

    #[test]
    fn capabilities_declare_the_surface() {
        let c = serde_json::to_value(capabilities()).unwrap();
        for k in ["logging", "completions", "prompts", "resources", "tools"] {
            assert!(c.get(k).is_some(), "{k} missing from {c}");
        }
        assert_eq!(c["resources"]["subscribe"], true);
        // Nothing is declared that Gemba does not send.
        assert!(c["resources"].get("listChanged").is_none());
        assert!(c["prompts"].get("listChanged").is_none());
    }
}
