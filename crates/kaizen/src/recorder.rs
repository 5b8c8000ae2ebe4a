//! The recorder: a closed set of operations, each with atomic counters and bucket histograms
//! updated on the hot path (no lock, no allocation), plus an event queue to an aggregator
//! thread that keeps the HDR percentile windows and feeds the request log.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::TrySendError;

use crate::queue::{Receiver, Sender, bounded};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::buckets::Buckets;
use crate::naming::Naming;
use crate::outcome::Outcome;
use crate::store::Row;
use crate::windows::OpWindows;

/// An operation's index in the recorder (a tool, or a protocol method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(pub u16);

/// Most stages in a value-stream map.
pub const MAX_STAGES: usize = 8;

#[derive(Debug)]
pub struct OpStats {
    pub requests: [AtomicU64; Outcome::COUNT],
    pub in_flight: AtomicI64,
    /// Duration by (outcome, protocol version, transport).
    duration: Vec<Buckets>,
    protocols: usize,
    transports: usize,
    pub queue: Buckets,
    pub request_bytes: AtomicU64,
    pub response_bytes: AtomicU64,
    pub rows: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Nanoseconds spent in each stage, summed.
    pub stage_nanos: [AtomicU64; MAX_STAGES],
}

impl OpStats {
    fn new(protocols: usize, transports: usize) -> Self {
        Self {
            protocols,
            transports,
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            in_flight: AtomicI64::new(0),
            duration: (0..Outcome::COUNT * protocols * transports).map(|_| Buckets::default()).collect(),
            queue: Buckets::default(),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            stage_nanos: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl OpStats {
    fn slot(&self, outcome: usize, proto: usize, transport: usize) -> usize {
        let proto = proto.min(self.protocols - 1);
        let transport = transport.min(self.transports - 1);
        (outcome * self.protocols + proto) * self.transports + transport
    }

    /// The duration histogram of one (outcome, protocol, transport) combination (indices into
    /// the naming's label sets; out-of-range indices count as the last label).
    pub fn duration(&self, outcome: Outcome, proto: usize, transport: usize) -> &Buckets {
        &self.duration[self.slot(outcome as usize, proto, transport)]
    }

    pub fn total_requests(&self) -> u64 {
        self.requests.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }
}

/// What is known when a request completes.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub outcome: Option<Outcome>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub rows: u64,
    pub cache_hit: Option<bool>,
    pub session: u64,
    pub args_hash: u64,
    /// Index into the naming's protocols (`Naming::protocol_index`).
    pub protocol: usize,
    /// Index into the naming's transports.
    pub transport: usize,
    pub queue: Duration,
    /// Stage durations (index into the recorder's stage names).
    pub stages: [u64; MAX_STAGES],
    /// Error category (`user`, `data`, `transient` or `system`) and the embedder's message, for
    /// the request log (cut to 500 characters there; signatures are derived at analysis time).
    pub error: Option<(String, String)>,
    /// The resource the request touched (for Gemba, a workbook id), for cache and heat analysis.
    pub key: Option<String>,
    /// That resource's size in the embedder's cache once the request was served (0 if unknown).
    pub key_bytes: u64,
    /// The response ran into a cap and was cut.
    pub truncated: bool,
    /// The arguments as JSON (cut to 300 characters in the log), kept only for failed requests.
    pub args_excerpt: Option<String>,
}

/// One finished request, as the aggregator hands it to observers (off the hot path).
#[derive(Debug, Clone)]
pub struct Finished {
    /// The operation's index (`OpId.0`).
    pub op: u16,
    pub micros: u64,
    pub at: SystemTime,
    pub completion: Completion,
}

impl Finished {
    pub fn outcome(&self) -> Outcome {
        self.completion.outcome.unwrap_or(Outcome::Internal)
    }

    pub fn at_secs(&self) -> u64 {
        unix_secs(self.at)
    }
}

/// Something that learns from finished requests: SLIs, anomaly detection, experiments. Called
/// on the aggregator thread with each batch (every ~20 ms), never on the request's path.
pub trait Observer: Send + Sync {
    fn observe(&self, batch: &[Finished]);
}

/// An operation the recorder knows, with the attributes exporters need.
#[derive(Debug, Clone)]
pub struct OpSpec {
    pub name: String,
    /// The protocol method (OpenTelemetry `mcp.method.name`).
    pub method: String,
    /// The tool, for tool calls (OpenTelemetry `gen_ai.tool.name`).
    pub target: Option<String>,
}

/// Extra samples an embedding program adds to every export (cache, business figures...).
pub type Provider = Box<dyn Fn(&mut Vec<crate::exposition::Sample>) + Send + Sync>;

pub struct Recorder {
    naming: Naming,
    specs: Vec<OpSpec>,
    names: Vec<String>,
    pub(crate) extra: OnceLock<Provider>,
    /// Labels every series of this recorder carries (e.g. which upstream a proxy measured).
    const_labels: OnceLock<Vec<(String, String)>>,
    observers: parking_lot::RwLock<Vec<Arc<dyn Observer>>>,
    sessions: Vec<Buckets>,
    /// Named histograms of other durations (e.g. loads), in `EDGES_SECONDS` buckets.
    histograms: Vec<(String, String, Buckets)>,
    stage_names: Vec<String>,
    ops: Vec<OpStats>,
    tx: Sender<Finished>,
    pub dropped_events: AtomicU64,
    pub dropped_log_rows: AtomicU64,
    windows: Arc<Mutex<Vec<OpWindows>>>,
    log: Arc<OnceLock<Sender<Row>>>,
    rx: Arc<Mutex<Receiver<Finished>>>,
    started: Instant,
    enabled: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("ops", &self.names.len()).finish()
    }
}

/// Capacity of the queue between the hot path and the aggregator.
const EVENT_QUEUE: usize = 16_384;
/// How often the aggregator drains the queue (16,384 slots absorb over 800,000 events/s; the
/// queue is allocated up front, so its size is resident memory).
const AGGREGATE_EVERY: Duration = Duration::from_millis(20);

impl Recorder {
    /// A recorder for a closed set of operation names and stage names. `enabled: false` makes
    /// every call a no-op (for measuring the cost of measurement).
    pub fn new(naming: Naming, specs: Vec<OpSpec>, stage_names: Vec<String>, enabled: bool) -> Arc<Self> {
        Self::with_histograms(naming, specs, stage_names, Vec::new(), enabled)
    }

    /// As `new`, with extra named duration histograms `(name, help)` recorded by `observe`.
    pub fn with_histograms(
        naming: Naming,
        specs: Vec<OpSpec>,
        stage_names: Vec<String>,
        histograms: Vec<(String, String)>,
        enabled: bool,
    ) -> Arc<Self> {
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let (tx, rx) = bounded(EVENT_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let windows = Arc::new(Mutex::new((0..names.len()).map(|_| OpWindows::default()).collect()));
        let log: Arc<OnceLock<Sender<Row>>> = Arc::new(OnceLock::new());
        let (protocols, transports) = (naming.protocol_count(), naming.transport_count());
        let r = Arc::new(Self {
            ops: (0..names.len()).map(|_| OpStats::new(protocols, transports)).collect(),
            specs,
            names,
            extra: OnceLock::new(),
            const_labels: OnceLock::new(),
            observers: parking_lot::RwLock::new(Vec::new()),
            sessions: (0..protocols * transports).map(|_| Buckets::default()).collect(),
            naming,
            histograms: histograms.into_iter().map(|(n, h)| (n, h, Buckets::default())).collect(),
            stage_names: stage_names.into_iter().take(MAX_STAGES).collect(),
            tx,
            dropped_events: AtomicU64::new(0),
            dropped_log_rows: AtomicU64::new(0),
            windows: windows.clone(),
            log: log.clone(),
            rx: rx.clone(),
            started: Instant::now(),
            enabled,
        });
        let weak = Arc::downgrade(&r);
        std::thread::Builder::new()
            .name("kaizen-aggregator".into())
            .spawn(move || aggregate(rx, windows, log, weak))
            .ok();
        r
    }

    /// Send completed requests to a request log from now on.
    pub fn attach_log(&self, tx: Sender<Row>) {
        let _ = self.log.set(tx);
    }

    /// Feed finished requests to an observer (SLIs, detection, experiments) from now on.
    pub fn attach_observer(&self, observer: Arc<dyn Observer>) {
        self.observers.write().push(observer);
    }

    /// The names this recorder's exports carry.
    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    /// Labels added to every series this recorder exports (set once, before the first export;
    /// later calls are ignored). Several recorders with different labels can share one export
    /// (`exposition::registry_of`), e.g. one per upstream of a proxy.
    pub fn set_const_labels(&self, labels: Vec<(String, String)>) {
        let _ = self.const_labels.set(labels);
    }

    /// The labels set with `set_const_labels` (none by default).
    pub fn const_labels(&self) -> &[(String, String)] {
        self.const_labels.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Add samples from the embedding program to every export.
    pub fn set_provider(&self, p: Provider) {
        let _ = self.extra.set(p);
    }

    pub fn specs(&self) -> &[OpSpec] {
        &self.specs
    }

    /// Record a duration into the named histogram `name` (ignored when unknown).
    pub fn observe(&self, name: &str, d: Duration) {
        if let Some((_, _, b)) = self.histograms.iter().find(|(n, _, _)| n == name) {
            b.record(d.as_nanos() as u64);
        }
    }

    pub fn histograms(&self) -> &[(String, String, Buckets)] {
        &self.histograms
    }

    /// Record a finished session's length.
    pub fn record_session(&self, length: Duration, protocol: usize, transport: usize) {
        if self.enabled {
            self.sessions[self.session_slot(protocol, transport)].record(length.as_nanos() as u64);
        }
    }

    fn session_slot(&self, protocol: usize, transport: usize) -> usize {
        let (p, t) = (self.naming.protocol_count(), self.naming.transport_count());
        protocol.min(p - 1) * t + transport.min(t - 1)
    }

    pub fn sessions(&self, protocol: usize, transport: usize) -> &Buckets {
        &self.sessions[self.session_slot(protocol, transport)]
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn stage_names(&self) -> &[String] {
        &self.stage_names
    }

    pub fn op(&self, name: &str) -> Option<OpId> {
        self.names.iter().position(|n| n == name).map(|i| OpId(i as u16))
    }

    pub fn stats(&self, op: OpId) -> &OpStats {
        &self.ops[op.0 as usize]
    }

    pub fn ops(&self) -> impl Iterator<Item = (&str, &OpStats)> {
        self.names.iter().map(String::as_str).zip(&self.ops)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Start timing a request: counts it in flight until the guard finishes (or drops).
    #[inline]
    pub fn start(self: &Arc<Self>, op: OpId) -> Timer {
        if self.enabled {
            self.ops[op.0 as usize].in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Timer { recorder: self.clone(), op, started: Instant::now(), done: false }
    }

    #[inline]
    fn finish(&self, op: OpId, elapsed: Duration, c: Completion) {
        if !self.enabled {
            return;
        }
        let s = &self.ops[op.0 as usize];
        let outcome = c.outcome.unwrap_or(Outcome::Internal);
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        s.requests[outcome as usize].fetch_add(1, Ordering::Relaxed);
        let nanos = elapsed.as_nanos() as u64;
        s.duration(outcome, c.protocol, c.transport).record(nanos);
        if !c.queue.is_zero() {
            s.queue.record(c.queue.as_nanos() as u64);
        }
        s.request_bytes.fetch_add(c.request_bytes, Ordering::Relaxed);
        s.response_bytes.fetch_add(c.response_bytes, Ordering::Relaxed);
        s.rows.fetch_add(c.rows, Ordering::Relaxed);
        match c.cache_hit {
            Some(true) => s.cache_hits.fetch_add(1, Ordering::Relaxed),
            Some(false) => s.cache_misses.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        for (acc, v) in s.stage_nanos.iter().zip(c.stages) {
            if v > 0 {
                acc.fetch_add(v, Ordering::Relaxed);
            }
        }
        let event = Finished { op: op.0, micros: (nanos / 1000).max(1), at: SystemTime::now(), completion: c };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(event) {
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Process every queued event now (at shutdown, so nothing recorded is lost).
    pub fn flush(self: &Arc<Self>) {
        drain(&self.rx, &self.windows, &self.log, &Arc::downgrade(self));
    }

    /// Percentile summaries per op and window (1m, 5m, 1h), read off the hot path.
    pub fn window_summaries(&self) -> Vec<Vec<Option<crate::windows::WindowSummary>>> {
        let now = unix_secs(SystemTime::now());
        self.windows.lock().iter().map(|w| w.summaries(now)).collect()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A request being timed. Finish it with its completion; dropping it unfinished (a panic, a
/// cancelled future) records an `internal` outcome, so nothing escapes measurement.
pub struct Timer {
    recorder: Arc<Recorder>,
    op: OpId,
    started: Instant,
    done: bool,
}

impl Timer {
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn finish(mut self, c: Completion) -> Duration {
        self.done = true;
        let elapsed = self.started.elapsed();
        self.recorder.finish(self.op, elapsed, c);
        elapsed
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !self.done {
            // Unwinding through the request is the server's failure; a future dropped without a
            // panic is a request withdrawn (the client cancelled it or went away).
            let c = if std::thread::panicking() {
                Completion {
                    outcome: Some(Outcome::Internal),
                    error: Some(("system".into(), "request handler panicked".into())),
                    ..Default::default()
                }
            } else {
                Completion { outcome: Some(Outcome::Cancelled), ..Default::default() }
            };
            self.recorder.finish(self.op, self.started.elapsed(), c);
        }
    }
}

fn aggregate(
    rx: Arc<Mutex<Receiver<Finished>>>,
    windows: Arc<Mutex<Vec<OpWindows>>>,
    log: Arc<OnceLock<Sender<Row>>>,
    recorder: std::sync::Weak<Recorder>,
) {
    // Poll on a timer rather than blocking on the channel: a blocked receiver would make every
    // sender pay a wake-up system call on the hot path.
    loop {
        std::thread::sleep(AGGREGATE_EVERY);
        if recorder.strong_count() == 0 {
            return;
        }
        drain(&rx, &windows, &log, &recorder);
    }
}

/// Move queued events into the windows and the request log.
fn drain(
    rx: &Mutex<Receiver<Finished>>,
    windows: &Mutex<Vec<OpWindows>>,
    log: &OnceLock<Sender<Row>>,
    recorder: &std::sync::Weak<Recorder>,
) {
    let batch: Vec<Finished> = {
        let rx = rx.lock();
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    };
    if batch.is_empty() {
        return;
    }
    {
        let mut w = windows.lock();
        for e in &batch {
            if let Some(ow) = w.get_mut(e.op as usize) {
                ow.record(unix_secs(e.at), e.micros);
            }
        }
    }
    let Some(rec) = recorder.upgrade() else {
        return;
    };
    for o in rec.observers.read().iter() {
        o.observe(&batch);
    }
    let Some(tx) = log.get() else {
        return;
    };
    for e in batch {
        let c = e.completion;
        let outcome = c.outcome.unwrap_or(Outcome::Internal);
        let row = Row {
            at_ms: e.at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            session: format!("{:016x}", c.session),
            tool: rec.names.get(e.op as usize).cloned().unwrap_or_default(),
            args_hash: format!("{:016x}", c.args_hash),
            duration_us: e.micros as i64,
            outcome: outcome.as_str(),
            error_class: c.error.as_ref().map(|e| e.0.clone()),
            error_message: c.error.map(|e| crate::store::cap_chars(&e.1, crate::store::MAX_ERROR_MESSAGE).to_string()),
            cache_hit: c.cache_hit,
            request_bytes: c.request_bytes as i64,
            response_bytes: c.response_bytes as i64,
            rows: c.rows as i64,
            queue_us: c.queue.as_micros() as i64,
            stages_us: rec
                .stage_names
                .iter()
                .zip(c.stages)
                .filter(|(_, v)| *v > 0)
                .map(|(n, v)| (n.clone(), (v / 1000) as i64))
                .collect(),
            key: c.key,
            key_bytes: i64::try_from(c.key_bytes).unwrap_or(i64::MAX),
            truncated: c.truncated,
            args_excerpt: c
                .args_excerpt
                .filter(|_| outcome != Outcome::Ok)
                .map(|a| crate::store::cap_chars(&a, crate::store::MAX_ARGS_EXCERPT).to_string()),
        };
        if tx.try_send(row).is_err() {
            rec.dropped_log_rows.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_outcomes_in_flight_and_drops() {
        let spec = |n: &str| OpSpec { name: n.into(), method: "tools/call".into(), target: Some(n.into()) };
        let r = Recorder::new(Naming::plain("test"), vec![spec("read"), spec("list")], vec!["load".into()], true);
        let op = r.op("read").unwrap();
        let t = r.start(op);
        assert_eq!(r.stats(op).in_flight.load(Ordering::Relaxed), 1);
        t.finish(Completion { outcome: Some(Outcome::Ok), response_bytes: 100, rows: 5, ..Default::default() });
        {
            let _t = r.start(op); // dropped unfinished: the request was withdrawn
        }
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _t = r.start(op);
            panic!("a handler panics"); // dropped while unwinding: internal
        }));
        assert!(panicked.is_err());
        let s = r.stats(op);
        assert_eq!(s.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(s.requests[Outcome::Ok as usize].load(Ordering::Relaxed), 1);
        assert_eq!(s.requests[Outcome::Cancelled as usize].load(Ordering::Relaxed), 1);
        assert_eq!(s.requests[Outcome::Internal as usize].load(Ordering::Relaxed), 1);
        assert_eq!(s.rows.load(Ordering::Relaxed), 5);
        // The aggregator sees both within a moment.
        for _ in 0..100 {
            if r.window_summaries()[0][0].as_ref().is_some_and(|w| w.count == 3) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("aggregator did not record the events");
    }

    #[test]
    fn disabled_recorder_records_nothing() {
        let r = Recorder::new(
            Naming::plain("test"),
            vec![OpSpec { name: "read".into(), method: "tools/call".into(), target: None }],
            vec![],
            false,
        );
        r.start(OpId(0)).finish(Completion::default());
        assert_eq!(r.stats(OpId(0)).total_requests(), 0);
    }

    #[test]
    fn completions_reach_the_request_log_with_key_and_excerpt() {
        let spec = OpSpec { name: "read".into(), method: "tools/call".into(), target: Some("read".into()) };
        let r = Recorder::new(Naming::plain("test"), vec![spec], vec![], true);
        let (tx, rx) = bounded(16);
        r.attach_log(tx);
        let op = r.op("read").unwrap();
        r.start(op).finish(Completion {
            outcome: Some(Outcome::ToolError),
            error: Some(("user".into(), "x".repeat(800))),
            key: Some("sales-3f2a".into()),
            key_bytes: 123,
            truncated: true,
            args_excerpt: Some("a".repeat(400)),
            ..Default::default()
        });
        r.start(op).finish(Completion {
            outcome: Some(Outcome::Ok),
            args_excerpt: Some("{}".into()),
            ..Default::default()
        });
        r.flush();
        // The aggregator thread may have taken the events first: wait for both rows.
        let rows: Vec<Row> = (0..2).filter_map(|_| rx.recv_timeout(Duration::from_secs(5)).ok()).collect();
        assert_eq!(rows.len(), 2);
        let (failed, ok) = (&rows[0], &rows[1]);
        assert_eq!((failed.key.as_deref(), failed.key_bytes, failed.truncated), (Some("sales-3f2a"), 123, true));
        assert_eq!(failed.error_class.as_deref(), Some("user"));
        assert_eq!(failed.error_message.as_ref().map(String::len), Some(crate::store::MAX_ERROR_MESSAGE));
        assert_eq!(failed.args_excerpt.as_ref().map(String::len), Some(crate::store::MAX_ARGS_EXCERPT));
        assert_eq!(ok.args_excerpt, None);
    }
}
