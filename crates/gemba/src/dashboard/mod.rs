//! The dashboard: a live web view of Kaizen served by the admin listener at `/`.
//!
//! - The page, its script and its style are bundled into the binary (`assets/`, no CDN).
//! - Live updates: one producer task computes a snapshot every 2 s, only while someone
//!   watches, from the same in-process figures `/metrics.json` and `/slo.json` read, and
//!   publishes it on a `watch` channel: every viewer gets the latest (slow ones skip), memory
//!   per viewer is one shared snapshot, and at most `MAX_VIEWERS` streams are open (then 503).
//! - 5 min / 1 h / 24 h views of the request log (`history`), computed off the async runtime,
//!   one query at a time, cached for a few seconds so many viewers cost one query.
//! - Learning (cache what-if, top error signatures, backlog) from `kaizen::learn` over the
//!   last day, computed at most every 5 minutes.
//! - The admin token guards all of it when set (`auth`).

pub mod auth;
mod history;
mod live;
pub mod minutes;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::wiring::{Kaizen, now_secs};

/// How often the live snapshot is computed while someone watches.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Most dashboard streams open at once.
pub const MAX_VIEWERS: usize = 64;
/// How long the learning view is served before it is computed again.
const LEARN_TTL: Duration = Duration::from_secs(300);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The dashboard's state, shared by its routes, its producer and the minute sampler.
pub struct Dashboard {
    kaizen: Arc<Kaizen>,
    live: Mutex<live::Live>,
    tx: watch::Sender<Option<Arc<str>>>,
    viewers: AtomicUsize,
    running: AtomicBool,
    minutes: Arc<minutes::Minutes>,
    /// Computed views (history per range, learning) and when they were computed.
    views: Mutex<HashMap<&'static str, (Instant, Arc<str>)>>,
    /// One log query at a time, whatever the number of viewers.
    query_lock: tokio::sync::Mutex<()>,
    /// Cancelled at shutdown: open streams end so the listener can stop.
    pub shutdown: CancellationToken,
}

/// Ends a viewer's count when its stream is dropped.
struct ViewerGuard(Arc<Dashboard>);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Dashboard {
    pub fn new(kaizen: Arc<Kaizen>) -> Arc<Self> {
        let (tx, _) = watch::channel(None);
        Arc::new(Self {
            kaizen,
            live: Mutex::new(live::Live::default()),
            tx,
            viewers: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            minutes: Arc::new(minutes::Minutes::default()),
            views: Mutex::new(HashMap::new()),
            query_lock: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
        })
    }

    /// The evaluator part that samples resources once a minute (push it in `wiring::start`).
    pub fn sampler(&self) -> minutes::Sampler {
        minutes::Sampler { kaizen: self.kaizen.clone(), minutes: self.minutes.clone(), last_minute: 0 }
    }

    fn gather(&self) -> live::Gathered {
        let r = &self.kaizen.recorder;
        let queue_seconds: BTreeMap<String, f64> =
            r.ops().map(|(name, s)| (name.to_string(), s.queue.sum_seconds())).collect();
        live::Gathered {
            at_ms: now_ms(),
            metrics: kaizen::exposition::summary(r),
            slo: crate::slo::status_json(&self.kaizen.sli),
            queue_seconds,
        }
    }

    /// Compute a snapshot now (blocking: reads /proc and may measure the state directory).
    fn compute(&self) -> Arc<str> {
        let g = self.gather();
        let snap = self.live.lock().update(&g, env!("CARGO_PKG_VERSION"), INTERVAL.as_millis() as u64);
        Arc::from(snap.to_string())
    }

    /// The points of the last five minutes, as the `series` event sends them.
    fn series(&self) -> String {
        let live = self.live.lock();
        json!({ "points": live.points(now_ms()) }).to_string()
    }

    /// Start the producer unless it runs.
    fn ensure_producer(self: &Arc<Self>) {
        if !self.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().produce());
        }
    }

    /// One snapshot per interval while anyone watches; stops when the last viewer leaves.
    async fn produce(self: Arc<Self>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            if self.viewers.load(Ordering::Acquire) == 0 {
                self.running.store(false, Ordering::Release);
                // A viewer that came in meanwhile saw `running` still set: keep going for it.
                if self.viewers.load(Ordering::Acquire) > 0 && !self.running.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.compute()).await {
                Ok(frame) => {
                    self.tx.send_replace(Some(frame));
                }
                Err(e) => tracing::warn!("dashboard snapshot failed: {e}"),
            }
        }
        self.running.store(false, Ordering::Release);
    }

    /// A view computed by `f` on a blocking thread, cached for `ttl`, one computation at a time.
    async fn cached_view(
        self: &Arc<Self>,
        key: &'static str,
        ttl: Duration,
        f: impl FnOnce(&Kaizen) -> Value + Send + 'static,
    ) -> Arc<str> {
        let fresh = |views: &HashMap<&'static str, (Instant, Arc<str>)>| {
            views.get(key).filter(|(at, _)| at.elapsed() < ttl).map(|(_, v)| v.clone())
        };
        if let Some(v) = fresh(&self.views.lock()) {
            return v;
        }
        let _one = self.query_lock.lock().await;
        if let Some(v) = fresh(&self.views.lock()) {
            return v;
        }
        let k = self.kaizen.clone();
        let v: Arc<str> = match tokio::task::spawn_blocking(move || f(&k)).await {
            Ok(v) => Arc::from(v.to_string()),
            Err(e) => Arc::from(json!({"error": format!("the view could not be computed: {e}")}).to_string()),
        };
        self.views.lock().insert(key, (Instant::now(), v.clone()));
        v
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

async fn index() -> Response {
    let mut r = asset("text/html; charset=utf-8", INDEX_HTML);
    let h = r.headers_mut();
    // Everything the page loads comes from this listener; nothing may frame it.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn json_response(body: Arc<str>) -> Response {
    let mut r = body.to_string().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The live stream: a `series` event with the last five minutes, then a `snapshot` event per
/// interval.
async fn stream(State(d): State<Arc<Dashboard>>) -> Response {
    let n = d.viewers.fetch_add(1, Ordering::AcqRel);
    let guard = ViewerGuard(d.clone());
    if n >= MAX_VIEWERS {
        drop(guard);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many dashboard viewers ({MAX_VIEWERS} streams open); close another dashboard tab and retry\n"),
        )
            .into_response();
    }
    d.ensure_producer();
    let mut rx = d.tx.subscribe();
    if rx.borrow().is_some() {
        rx.mark_changed();
    }
    let first = Some(d.series());
    let cancel = d.shutdown.clone();
    let events =
        futures_util::stream::unfold((rx, guard, first, cancel), |(mut rx, guard, first, cancel)| async move {
            if let Some(series) = first {
                let e = Event::default().event("series").data(series);
                return Some((Ok::<_, Infallible>(e), (rx, guard, None, cancel)));
            }
            tokio::select! {
                changed = rx.changed() => changed.ok()?,
                _ = cancel.cancelled() => return None,
            }
            let frame = rx.borrow_and_update().clone()?;
            let e = Event::default().event("snapshot").data(&*frame);
            Some((Ok(e), (rx, guard, None, cancel)))
        });
    let mut r = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One snapshot now (for scripts; the page uses the stream).
async fn snapshot(State(d): State<Arc<Dashboard>>) -> Response {
    let fresh = d.tx.borrow().clone().filter(|_| d.running.load(Ordering::Acquire));
    let body = match fresh {
        Some(f) => f,
        None => {
            let me = d.clone();
            match tokio::task::spawn_blocking(move || me.compute()).await {
                Ok(f) => f,
                Err(e) => {
                    return (StatusCode::INTERNAL_SERVER_ERROR, format!("snapshot failed: {e}\n")).into_response();
                }
            }
        }
    };
    json_response(body)
}

/// The request log's view of a range, with the minute samples of what the log does not hold.
async fn history(State(d): State<Arc<Dashboard>>, uri: axum::http::Uri) -> Response {
    let asked = uri.query().and_then(|q| auth::form_value(q, "range")).unwrap_or_else(|| "1h".into());
    let range = match history::Range::parse(&asked) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let minutes = d.minutes.clone();
    let view = d
        .cached_view(range.as_str(), range.ttl(), move |k| {
            let until = now_ms() as i64;
            let mut v = match k.db_path() {
                Some(db) => history::query(&db, range, until, &history::Limits::default())
                    .unwrap_or_else(|e| json!({"range": range.as_str(), "error": e.to_string()})),
                None => json!({"range": range.as_str(), "error": "the request log is off (see the startup log)"}),
            };
            v["minutes"] = minutes.since((until - range.span_ms()).max(0) as u64);
            v
        })
        .await;
    json_response(view)
}

/// What the learning engine says about the last day: the cache what-if, top error signatures,
/// the improvement backlog.
async fn learn(State(d): State<Arc<Dashboard>>) -> Response {
    let view = d.cached_view("learn", LEARN_TTL, learn_view).await;
    json_response(view)
}

fn learn_view(k: &Kaizen) -> Value {
    let Some(db) = k.db_path() else {
        return json!({"available": false, "reason": "the request log is off"});
    };
    let opts = kaizen::learn::ReportOptions {
        period: kaizen::learn::Period::Day,
        until_ms: (now_secs() * 1000) as i64,
        capacity_bytes: Some(k.cache_bytes as u64),
        top_n: 8,
        ..Default::default()
    };
    match kaizen::learn::build(&db, &opts) {
        Ok(r) => {
            let c = &r.cache;
            json!({
                "available": true,
                "from_ms": r.from_ms,
                "until_ms": r.until_ms,
                "requests": r.requests,
                "cache": {
                    "measured_hit_rate": c.measured_hit_rate,
                    "capacity_mb": c.capacity_mb,
                    "model_hit_rate": c.model_hit_rate,
                    "working_set_mb": c.working_set_mb,
                    "achievable_hit_rate": c.achievable_hit_rate,
                    "whatif": c.whatif,
                    "recommendation": c.recommendation,
                },
                "errors": {
                    "total": r.errors.total,
                    "by_category": r.errors.by_category,
                    "top": r.errors.top.iter().map(|s| json!({
                        "signature": s.signature, "category": s.category, "tool": s.tool,
                        "count": s.count, "share": s.share, "last_seen": s.last_seen,
                    })).collect::<Vec<_>>(),
                },
                "backlog": r.backlog.iter().take(5).map(|b| json!({
                    "title": b.title, "suggestion": b.suggestion, "score": b.score,
                })).collect::<Vec<_>>(),
            })
        }
        Err(e) => json!({"available": false, "reason": e.to_string()}),
    }
}

/// The dashboard's routes (the page, its assets, the stream and the views).
pub fn router(d: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/style.css", get(style_css))
        .route("/dashboard/stream", get(stream))
        .route("/dashboard/snapshot.json", get(snapshot))
        .route("/dashboard/history.json", get(history))
        .route("/dashboard/learn.json", get(learn))
        .with_state(d)
}
