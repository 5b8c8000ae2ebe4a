//! Kaizen beside the server: the request log, SLIs, alert evaluation and delivery, extra samples,
//! StatsD and the admin listener, started once per process. Everything Kaizen does
//! periodically runs on one evaluator thread as `Periodic` parts; everything it shows reads the
//! one `Kaizen` handle.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kaizen::event::AlertEvent;
use kaizen::exposition::{Kind, Sample};

use crate::config::ServeConfig;
use crate::server::GembaServer;
use crate::{admin, dashboard, measure, operational, slo};

/// How often the evaluator wakes; each part decides whether it is due.
const EVALUATE_EVERY: Duration = Duration::from_secs(5);

/// The measurement and improvement side of one server process.
#[allow(dead_code)] // state_dir, cache_bytes and db_path serve the reports, wired next
pub struct Kaizen {
    pub recorder: Arc<kaizen::Recorder>,
    pub sli: Arc<kaizen::sli::SliEngine>,
    pub store: Option<Arc<kaizen::store::Store>>,
    pub webhook: Option<kaizen::alerts::Webhook>,
    pub slo: slo::SloFile,
    pub state_dir: PathBuf,
    /// The workbook cache's byte bound (what the cache what-if compares against).
    pub cache_bytes: usize,
    /// Anomalies and incidents (none when measurement is off).
    pub incidents: Option<Arc<crate::incidents::Incidents>>,
    /// The experiments running (`--experiments FILE`), if any.
    pub experiments: Option<Arc<crate::experiments::Experiments>>,
}

#[allow(dead_code)]
impl Kaizen {
    /// The request log's database, when there is one.
    pub fn db_path(&self) -> Option<PathBuf> {
        self.store.as_ref().map(|s| s.path.clone())
    }

    /// Deliver alert transitions: to the log, and to the webhook when there is one.
    pub fn deliver(&self, events: &[AlertEvent]) {
        kaizen::alerts::deliver(events, self.webhook.as_ref());
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A part of Kaizen the evaluator runs every few seconds.
pub trait Periodic: Send {
    /// Evaluate at `now` (unix seconds); return alert transitions to deliver.
    fn tick(&mut self, now: u64) -> Vec<AlertEvent>;
    /// Last work at shutdown (save state).
    fn shutdown(&mut self, _now: u64) -> Vec<AlertEvent> {
        Vec::new()
    }
}

/// SLO burn-rate alerts and the operational alerts, every 10 s; SLI minutes saved.
struct Alerting {
    server: GembaServer,
    kaizen: Arc<Kaizen>,
    operational: kaizen::operational::Operational,
    last: u64,
}

impl Periodic for Alerting {
    fn tick(&mut self, now: u64) -> Vec<AlertEvent> {
        if now < self.last + 10 {
            return Vec::new();
        }
        self.last = now;
        let k = &self.kaizen;
        let mut events = k.sli.evaluate(now);
        if let Some(i) = &k.incidents {
            i.forward_alerts(&events);
        }
        events.extend(self.operational.evaluate(now, operational::signals(&self.server, &k.recorder)));
        kaizen::sli::save(&k.sli, k.store.as_deref());
        events
    }

    fn shutdown(&mut self, now: u64) -> Vec<AlertEvent> {
        let events = self.kaizen.sli.evaluate(now);
        kaizen::sli::save(&self.kaizen.sli, self.kaizen.store.as_deref());
        events
    }
}

/// The evaluator thread and its parts.
pub struct Evaluator {
    parts: Arc<parking_lot::Mutex<Vec<Box<dyn Periodic>>>>,
    kaizen: Arc<Kaizen>,
}

impl Evaluator {
    /// Run `parts` every few seconds on a thread of their own, delivering what they return.
    pub fn start(kaizen: Arc<Kaizen>, parts: Vec<Box<dyn Periodic>>) -> Self {
        let parts = Arc::new(parking_lot::Mutex::new(parts));
        let (p, k) = (parts.clone(), kaizen.clone());
        let spawned = std::thread::Builder::new().name("gemba-kaizen".into()).spawn(move || {
            loop {
                std::thread::sleep(EVALUATE_EVERY);
                let now = now_secs();
                let mut events = Vec::new();
                for part in p.lock().iter_mut() {
                    events.extend(part.tick(now));
                }
                k.deliver(&events);
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the Kaizen evaluator: {e}");
        }
        Self { parts, kaizen }
    }

    /// At shutdown: every part's last evaluation, delivered.
    pub fn shutdown(&self) {
        let now = now_secs();
        let mut events = Vec::new();
        for part in self.parts.lock().iter_mut() {
            events.extend(part.shutdown(now));
        }
        self.kaizen.deliver(&events);
    }
}

/// Wire measurement: cache hooks, extra samples, the request log, SLIs and alerts, StatsD, the
/// admin listener.
pub async fn start(
    cfg: &ServeConfig,
    server: &GembaServer,
    recorder: &Arc<kaizen::Recorder>,
    slo_file: slo::SloFile,
) -> Result<(Arc<Kaizen>, Option<Evaluator>)> {
    // The previous run (version, settings), read before anything records this one.
    let previous_run = crate::incidents::runs::last_run(&crate::incidents::db_path(&cfg.state_dir));
    let r = recorder.clone();
    let _ =
        server.engine().cache.stats.load_observer.set(Box::new(move |d| r.observe(measure::CACHE_LOAD_HISTOGRAM, d)));
    let Opened { webhook, sli, store } = open_parts(&Settings::of(cfg), recorder, &slo_file)?;
    if let Some(s) = &store {
        // Reports compare configurations across starts and take the capacity in force here.
        crate::report::runs::record(s, cfg);
    }
    // Anomalies and incidents (a config_change event when this run differs from the previous).
    let db = store.as_ref().map(|s| s.path.clone());
    let detect = if recorder.enabled() {
        Some(crate::incidents::start(cfg, server, recorder, db.as_deref(), previous_run)?)
    } else {
        None
    };
    // Experiments: checked before anything is served, resumed from the state database.
    let (experiments, experiment_store) = match &cfg.experiments {
        Some(path) => {
            let (x, store) = crate::experiments::start(path, &cfg.state_dir)?;
            (Some(x), store)
        }
        None => (None, None),
    };
    let kaizen = Arc::new(Kaizen {
        recorder: recorder.clone(),
        sli,
        store,
        webhook,
        slo: slo_file,
        state_dir: cfg.state_dir.clone(),
        cache_bytes: cfg.cache_bytes,
        incidents: detect.as_ref().map(|d| d.incidents.clone()),
        experiments: experiments.clone(),
    });
    server.attach_kaizen(kaizen.clone());
    let dashboard = dashboard::Dashboard::new(kaizen.clone());
    let evaluator = if recorder.enabled() {
        recorder.attach_observer(kaizen.sli.clone());
        let alerting = Alerting {
            server: server.clone(),
            kaizen: kaizen.clone(),
            operational: kaizen::operational::Operational::new(
                operational::rules(&kaizen.slo.operational),
                slo::RUNBOOK_URL,
            ),
            last: 0,
        };
        let mut parts: Vec<Box<dyn Periodic>> = vec![Box::new(alerting), Box::new(dashboard.sampler())];
        if let Some(d) = detect {
            recorder.attach_observer(d.observer);
            parts.push(d.part);
        }
        if let Some(x) = experiments {
            parts.push(Box::new(crate::experiments::periodic::ExperimentPart::new(
                x,
                kaizen.sli.clone(),
                experiment_store,
            )));
        }
        Some(Evaluator::start(kaizen.clone(), parts))
    } else {
        None
    };
    set_samples(cfg, server, &kaizen);
    if let Some(addr) = cfg.statsd {
        kaizen::statsd::spawn(recorder.clone(), addr, Duration::from_secs(10))
            .with_context(|| format!("cannot push StatsD to {addr}"))?;
    }
    if let Some(addr) = cfg.admin {
        let a = admin::Admin {
            registry: kaizen::exposition::registry(recorder.clone()),
            kaizen: kaizen.clone(),
            workspace: Some(cfg.workspace.clone()),
            checks: Vec::new(),
            dashboard,
            token: cfg.admin_token.clone(),
            experiments: None,
        };
        admin::spawn(addr, a).await?;
    }
    Ok((kaizen, evaluator))
}

/// What the parts every Kaizen embedder shares need to know (`gemba serve`, `gemba proxy`).
pub struct Settings {
    pub state_dir: PathBuf,
    pub retention: kaizen::store::Retention,
    pub alert_webhook: Option<String>,
    /// The embedder's cache bound in bytes (0 when it has none).
    pub cache_bytes: usize,
}

impl Settings {
    fn of(cfg: &ServeConfig) -> Self {
        Self {
            state_dir: cfg.state_dir.clone(),
            retention: cfg.retention.clone(),
            alert_webhook: cfg.alert_webhook.clone(),
            cache_bytes: cfg.cache_bytes,
        }
    }
}

/// The shared parts: the alert webhook, the SLI engine over the recorder's operations, and the
/// request log in the state directory (attached to the recorder, SLO minutes of the period
/// restored). The caller attaches observers and starts the evaluator.
/// What every embedder of Kaizen opens the same way: the webhook, the SLI engine (its minutes
/// restored from the state database) and the request log.
struct Opened {
    webhook: Option<kaizen::alerts::Webhook>,
    sli: Arc<kaizen::sli::SliEngine>,
    store: Option<Arc<kaizen::store::Store>>,
}

fn open_parts(settings: &Settings, recorder: &Arc<kaizen::Recorder>, slo_file: &slo::SloFile) -> Result<Opened> {
    let webhook = match &settings.alert_webhook {
        Some(url) => Some(kaizen::alerts::Webhook::parse(url, &recorder.naming().service).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let sli = Arc::new(kaizen::sli::SliEngine::new(
        slo_file.slo.clone(),
        recorder.names(),
        slo::RUNBOOK_URL,
        recorder.naming(),
    ));
    let store = match kaizen::store::Store::open(&settings.state_dir, settings.retention.clone()) {
        Ok(s) => {
            recorder.attach_log(s.sender());
            Some(Arc::new(s))
        }
        Err(e) => {
            tracing::warn!("request log disabled: {e}");
            None
        }
    };
    // SLIs: restore the period's minutes, count every request from now on.
    if let Some(st) = &store {
        let period_min = u64::from(sli.config().period_days) * 1440;
        match kaizen::store::load_slo_minutes(&st.path, (now_secs() / 60).saturating_sub(period_min)) {
            Ok(rows) => sli.restore(rows),
            Err(e) => tracing::warn!("cannot restore SLO minutes: {e}"),
        }
    }
    Ok(Opened { webhook, sli, store })
}

/// Kaizen for an embedder without incidents or experiments of its own (the proxy).
pub fn open(settings: &Settings, recorder: &Arc<kaizen::Recorder>, slo_file: slo::SloFile) -> Result<Arc<Kaizen>> {
    let Opened { webhook, sli, store } = open_parts(settings, recorder, &slo_file)?;
    Ok(Arc::new(Kaizen {
        recorder: recorder.clone(),
        sli,
        store,
        webhook,
        slo: slo_file,
        state_dir: settings.state_dir.clone(),
        cache_bytes: settings.cache_bytes,
        incidents: None,
        experiments: None,
    }))
}

/// Samples from the engine, admission, SLIs and the state directory on every export.
fn set_samples(cfg: &ServeConfig, server: &GembaServer, kaizen: &Arc<Kaizen>) {
    let k = kaizen.clone();
    let s = server.clone();
    let state_dir = cfg.state_dir.clone();
    let disk = Arc::new(parking_lot::Mutex::new((std::time::Instant::now(), 0u64, false)));
    kaizen.recorder.set_provider(Box::new(move |out| {
        measure::engine_samples(s.engine(), out);
        crate::traces::samples(out);
        // surface: log messages, progress notifications, resource subscriptions.
        s.surface_samples(out);
        let (refused, adm, free) = s.admission_figures();
        out.push(Sample::new(
            "gemba_requests_refused",
            "Tool calls refused at once because every slot stayed busy (admission control).",
            Kind::Counter,
            refused as f64,
        ));
        out.push(Sample::new(
            "gemba_inflight_limit",
            "Tool calls that may run at once (--max-inflight).",
            Kind::Gauge,
            adm.max_inflight as f64,
        ));
        out.push(Sample::new("gemba_inflight_slots_free", "Tool-call slots free now.", Kind::Gauge, free as f64));
        out.push(Sample::new(
            "gemba_calls_queued",
            "Tool calls waiting for a slot now.",
            Kind::Gauge,
            s.queued_calls() as f64,
        ));
        let (inline, fallbacks) = s.inline_figures();
        out.push(Sample::new(
            "gemba_calls_inline",
            "Tool calls run inline on the runtime thread (warm reads of bounded size).",
            Kind::Counter,
            inline as f64,
        ));
        out.push(Sample::new(
            "gemba_calls_inline_fallbacks",
            "Tool calls tried inline that needed a load and ran on the blocking pool.",
            Kind::Counter,
            fallbacks as f64,
        ));
        k.sli.samples(now_secs(), out);
        if let Some(i) = &k.incidents {
            i.samples(out);
        }
        if let Some(x) = &k.experiments {
            out.extend(x.engine.samples(k.recorder.naming()));
        }
        // The state directory's size, re-measured at most every 10 s.
        let mut d = disk.lock();
        if !d.2 || d.0.elapsed() > Duration::from_secs(10) {
            *d = (std::time::Instant::now(), kaizen::process::dir_bytes(&state_dir), true);
        }
        out.push(Sample::new(
            "gemba_state_dir_bytes",
            "Disk used by the state directory (request log, forks, checkpoints).",
            Kind::Gauge,
            d.1 as f64,
        ));
    }));
}
