//! Resource subscriptions: a subscriber hears `notifications/resources/updated` soon after a
//! workbook's file changes on disk. One poller thread stats the subscribed files every
//! [`POLL_EVERY`] (size, mtime, inode: `sheets::workspace::FileIdentity`), which is portable
//! and cheap for the bounded number of files it may watch. The thread starts with the first
//! subscription and sleeps while there is none.
//!
//! A subscription belongs to an owner: a legacy session (`resources/subscribe`, ended by
//! `resources/unsubscribe` or the session's end) or one `subscriptions/listen` request
//! (2026-07-28, ended with the request). Both are bounded per owner and in total.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use rmcp::RoleServer;
use rmcp::model::ResourceUpdatedNotificationParam;
use rmcp::service::{Peer, SubscriptionSink};
use sheets::workspace::FileIdentity;

/// How often subscribed files are checked.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// Most subscriptions one session (or one listen request) may hold.
pub const MAX_PER_OWNER: usize = 64;
/// Most subscriptions the server holds in all.
pub const MAX_TOTAL: usize = 1024;

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    #[error("this session already holds {MAX_PER_OWNER} subscriptions (the limit); unsubscribe from some first")]
    OwnerFull,
    #[error("the server holds {MAX_TOTAL} subscriptions (its limit); try again later or read the resource when needed")]
    ServerFull,
}

/// Where an update goes: sends `notifications/resources/updated` for a URI, `false` when the
/// subscriber is gone.
#[derive(Clone)]
pub struct Target(Arc<dyn Fn(String) -> Delivery + Send + Sync>);

/// One delivery in flight: `true` once delivered.
pub type Delivery = Pin<Box<dyn Future<Output = bool> + Send>>;

impl Target {
    /// A legacy session's peer (`resources/subscribe`).
    pub fn session(peer: Peer<RoleServer>) -> Self {
        Self(Arc::new(move |uri| {
            let peer = peer.clone();
            Box::pin(
                async move { peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri)).await.is_ok() },
            )
        }))
    }

    /// A `subscriptions/listen` stream (2026-07-28).
    pub fn listen(sink: SubscriptionSink) -> Self {
        Self(Arc::new(move |uri| {
            let sink = sink.clone();
            Box::pin(async move { sink.notify_resource_updated(uri).await.is_ok() })
        }))
    }

    /// Any other sender (tests).
    #[cfg(test)]
    pub fn from_fn(f: impl Fn(String) -> Delivery + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    async fn send(&self, uri: &str) -> bool {
        (self.0)(uri.to_string()).await
    }
}

struct Sub {
    owner: u64,
    uri: String,
    path: PathBuf,
    /// The file as last seen (`None`: it could not be read).
    seen: Option<FileIdentity>,
    target: Target,
}

/// Figures for the metrics.
#[derive(Debug, Default)]
pub struct WatchCounters {
    /// Update notifications delivered.
    pub updates_sent: AtomicU64,
    /// Updates that could not be delivered (the subscriber was gone; it is dropped).
    pub updates_failed: AtomicU64,
}

/// Every subscription of the process, and the poller that serves them.
#[derive(Default)]
pub struct Watcher {
    subs: Mutex<Vec<Sub>>,
    wake: Condvar,
    started: AtomicBool,
    pub counters: WatchCounters,
}

impl Watcher {
    /// Watch `path` for `owner`, telling `target` about changes to `uri`. Subscribing twice to
    /// one URI keeps one subscription (the newer target).
    pub fn subscribe(
        self: &Arc<Self>,
        owner: u64,
        uri: String,
        path: PathBuf,
        target: Target,
    ) -> Result<(), WatchError> {
        let seen = FileIdentity::of(&path).ok();
        {
            let mut subs = self.subs.lock();
            if let Some(s) = subs.iter_mut().find(|s| s.owner == owner && s.uri == uri) {
                s.target = target;
                s.path = path;
                s.seen = seen;
                return Ok(());
            }
            if subs.iter().filter(|s| s.owner == owner).count() >= MAX_PER_OWNER {
                return Err(WatchError::OwnerFull);
            }
            if subs.len() >= MAX_TOTAL {
                return Err(WatchError::ServerFull);
            }
            subs.push(Sub { owner, uri, path, seen, target });
        }
        self.wake.notify_all();
        self.ensure_poller();
        Ok(())
    }

    /// Stop one subscription; whether it existed.
    pub fn unsubscribe(&self, owner: u64, uri: &str) -> bool {
        let mut subs = self.subs.lock();
        let before = subs.len();
        subs.retain(|s| !(s.owner == owner && s.uri == uri));
        subs.len() < before
    }

    /// Stop every subscription of `owner` (its session or listen request ended).
    pub fn drop_owner(&self, owner: u64) {
        self.subs.lock().retain(|s| s.owner != owner);
    }

    /// Subscriptions held now.
    pub fn count(&self) -> usize {
        self.subs.lock().len()
    }

    /// Subscriptions `owner` holds now.
    #[cfg(test)]
    pub fn count_of(&self, owner: u64) -> usize {
        self.subs.lock().iter().filter(|s| s.owner == owner).count()
    }

    /// Stat every subscribed file once; the subscriptions whose file changed since last seen.
    fn poll_once(&self) -> Vec<(u64, String, Target)> {
        // Stat outside the lock: a slow disk must not block subscribe/unsubscribe.
        let mut paths: Vec<PathBuf> = self.subs.lock().iter().map(|s| s.path.clone()).collect();
        paths.sort();
        paths.dedup();
        let now: Vec<(PathBuf, Option<FileIdentity>)> =
            paths.into_iter().map(|p| (p.clone(), FileIdentity::of(&p).ok())).collect();
        let mut changed = Vec::new();
        for s in self.subs.lock().iter_mut() {
            let Ok(i) = now.binary_search_by(|(p, _)| p.cmp(&s.path)) else { continue };
            let current = &now[i].1;
            if *current != s.seen {
                s.seen = current.clone();
                changed.push((s.owner, s.uri.clone(), s.target.clone()));
            }
        }
        changed
    }

    fn ensure_poller(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            tracing::warn!("resource subscriptions need the async runtime; no poller started");
            return;
        };
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("gemba-watch".into()).spawn(move || poll(weak, runtime));
        if let Err(e) = spawned {
            self.started.store(false, Ordering::Release);
            tracing::error!("cannot start the resource watcher: {e}");
        }
    }
}

/// The poller: while the watcher lives, check the files and send the updates.
fn poll(weak: Weak<Watcher>, runtime: tokio::runtime::Handle) {
    loop {
        let Some(w) = weak.upgrade() else { return };
        {
            let mut subs = w.subs.lock();
            if subs.is_empty() {
                // Sleep until a subscription arrives (re-checking now and then that the
                // watcher itself still exists).
                w.wake.wait_for(&mut subs, Duration::from_secs(5));
                continue;
            }
        }
        drop(w);
        std::thread::sleep(POLL_EVERY);
        let Some(w) = weak.upgrade() else { return };
        for (owner, uri, target) in w.poll_once() {
            let weak = weak.clone();
            runtime.spawn(async move {
                let delivered = target.send(&uri).await;
                if let Some(w) = weak.upgrade() {
                    if delivered {
                        w.counters.updates_sent.fetch_add(1, Ordering::Relaxed);
                    } else {
                        w.counters.updates_failed.fetch_add(1, Ordering::Relaxed);
                        w.unsubscribe(owner, &uri);
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(log: Arc<Mutex<Vec<String>>>, alive: bool) -> Target {
        Target::from_fn(move |uri| {
            let log = log.clone();
            Box::pin(async move {
                log.lock().push(uri);
                alive
            })
        })
    }

    fn quiet() -> Target {
        recorder(Arc::default(), true)
    }

    #[tokio::test]
    async fn polling_sees_changes_and_bounds_hold() {
        let dir = std::env::temp_dir().join(format!("gemba-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.xlsx");
        std::fs::write(&file, b"one").unwrap();
        let w = Arc::new(Watcher::default());
        w.subscribe(1, "gemba://workbooks/a".into(), file.clone(), quiet()).unwrap();
        // Subscribing again keeps one subscription.
        w.subscribe(1, "gemba://workbooks/a".into(), file.clone(), quiet()).unwrap();
        w.subscribe(2, "gemba://workbooks/a".into(), file.clone(), quiet()).unwrap();
        assert_eq!(w.count(), 2);
        assert!(w.poll_once().is_empty(), "nothing changed yet");
        std::fs::write(&file, b"two, longer").unwrap();
        let changed: Vec<u64> = w.poll_once().into_iter().map(|(o, _, _)| o).collect();
        assert_eq!(changed, vec![1, 2]);
        assert!(w.poll_once().is_empty(), "a change is reported once");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(w.poll_once().len(), 2, "a removed file is a change too");
        assert!(w.unsubscribe(1, "gemba://workbooks/a"));
        assert!(!w.unsubscribe(1, "gemba://workbooks/a"));
        w.drop_owner(2);
        assert_eq!(w.count(), 0);
        for i in 0..MAX_PER_OWNER {
            w.subscribe(7, format!("gemba://workbooks/{i}"), file.clone(), quiet()).unwrap();
        }
        assert_eq!(w.subscribe(7, "gemba://workbooks/x".into(), file.clone(), quiet()), Err(WatchError::OwnerFull));
        assert_eq!(w.count_of(7), MAX_PER_OWNER);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_poller_delivers_and_drops_the_gone() {
        let dir = std::env::temp_dir().join(format!("gemba-watch2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("b.xlsx");
        std::fs::write(&file, b"one").unwrap();
        let w = Arc::new(Watcher::default());
        let (heard, gone) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        w.subscribe(1, "gemba://workbooks/b".into(), file.clone(), recorder(heard.clone(), true)).unwrap();
        w.subscribe(2, "gemba://workbooks/b".into(), file.clone(), recorder(gone.clone(), false)).unwrap();
        std::fs::write(&file, b"two, longer").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (heard.lock().is_empty() || w.count() > 1) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(*heard.lock(), vec!["gemba://workbooks/b".to_string()]);
        assert_eq!(*gone.lock(), vec!["gemba://workbooks/b".to_string()]);
        assert_eq!(w.count(), 1, "a subscriber that is gone is dropped");
        assert_eq!(w.counters.updates_sent.load(Ordering::Relaxed), 1);
        assert_eq!(w.counters.updates_failed.load(Ordering::Relaxed), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
