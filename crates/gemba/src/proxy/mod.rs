//! `gemba proxy`: Kaizen for any MCP server. The proxy sits between an MCP client (stdio, or
//! streamable HTTP) and an MCP server (a command it starts and supervises, or a streamable HTTP
//! endpoint), forwards every message unchanged in both directions, and measures every request
//! with the same recorder, request log, SLOs and alerts as `gemba serve`, labelled by upstream.
//! With a second upstream, the experiment engine decides per session which one serves
//! (`ab`), rolling B back automatically when its guards break.
//!
//! - `message`: reading just enough of a JSON-RPC message; `sse`: event streams
//! - `child`: the supervised server process; `http_up`: an HTTP upstream; `upstream`: both
//! - `link`: one upstream connection and the requests in flight on it (routing, measurement)
//! - `stdio`, `http_down`: the client side; `ops`: what is measured; `probe`: learning the tools
//! - `ab`: choosing between upstreams

pub mod ab;
pub mod child;
pub mod http_down;
pub mod http_up;
pub(crate) mod lines;
pub mod link;
pub mod message;
pub mod ops;
pub mod probe;
pub mod sse;
pub mod stdio;
pub mod upstream;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use kaizen::Recorder;
use kaizen::experiment::{Assignment, Engine};
use kaizen::exposition::{Kind, Sample};
use parking_lot::Mutex;
use tokio::sync::{OnceCell, mpsc};

use self::child::{ChildSpec, ChildUpstream};
use self::http_up::{HttpTarget, HttpUpstream};
use self::link::{Link, LinkCounters, LinkSetup, Sink};
use self::ops::Ops;
use self::upstream::{Replay, Upstream};
use crate::wiring::{self, Kaizen, Periodic};

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Serve the client over stdio (the default when --http is not given).
    #[arg(long)]
    pub stdio: bool,
    /// Serve the client streamable HTTP on this address; MCP is at /mcp.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// The upstream MCP server over streamable HTTP (instead of a command after `--`).
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Bearer token for --upstream.
    #[arg(long, env = "GEMBA_UPSTREAM_TOKEN", hide_env_values = true)]
    pub upstream_token: Option<String>,
    /// The upstream's name in metrics (`upstream` label) and logs (default: from the command or URL).
    #[arg(long)]
    pub name: Option<String>,
    /// A second upstream (a URL, or a command line) for A/B and canary releases.
    #[arg(long, value_name = "URL|COMMAND")]
    pub upstream_b: Option<String>,
    /// Bearer token for --upstream-b (a URL).
    #[arg(long, env = "GEMBA_UPSTREAM_B_TOKEN", hide_env_values = true)]
    pub upstream_b_token: Option<String>,
    /// The second upstream's name in metrics.
    #[arg(long)]
    pub name_b: Option<String>,
    /// Experiments between the upstreams (TOML; the knob is `upstream` = a|b). Default with
    /// --upstream-b: a canary that rolls back when B's guards break.
    #[arg(long, value_name = "FILE")]
    pub experiments: Option<PathBuf>,
    /// Admin listener (/metrics, /metrics.json, /slo.json, /healthz, /readyz), e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Token the admin listener requires (dashboard, its stream, metrics; not /healthz, /readyz);
    /// required when --admin is not a loopback address.
    #[arg(long, env = "GEMBA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// State directory (request log, SLO minutes, experiment state).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// SLO file (TOML): tiers, tools by name, `[[pattern]] match = "read_*" tier = "data"`,
    /// `default_tier` (default: the seed's tiers, every tool in `data`).
    #[arg(long, value_name = "FILE")]
    pub slo: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` from HTTP clients.
    #[arg(long, env = "GEMBA_PROXY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Extra Host values accepted on HTTP (loopback names are always accepted).
    #[arg(long = "allowed-host", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Extra browser origins accepted on HTTP (loopback origins are always accepted).
    #[arg(long = "allowed-origin", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Largest HTTP request body, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most HTTP connections open at once; more wait until one closes.
    #[arg(long, default_value_t = crate::listen::DEFAULT_MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Largest message either way, in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_message_mb: usize,
    /// Most HTTP sessions at once (each has an upstream process of its own for a command).
    #[arg(long, default_value_t = 64)]
    pub max_sessions: usize,
    /// An HTTP session unused this long is closed, in seconds.
    #[arg(long, default_value_t = 1_800)]
    pub session_idle_secs: u64,
    /// How long a request waits for a restarting upstream before it is answered with an error,
    /// in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub hold_ms: u64,
    /// Push StatsD metrics over UDP to this address every 10 s.
    #[arg(long, value_name = "ADDR")]
    pub statsd: Option<SocketAddr>,
    /// Send alert transitions to this Alertmanager-style webhook.
    #[arg(long, value_name = "URL")]
    pub alert_webhook: Option<String>,
    /// Request-log retention in days.
    #[arg(long, default_value_t = 30)]
    pub log_retention_days: u64,
    /// Most rows the request log keeps.
    #[arg(long, default_value_t = 2_000_000)]
    pub log_max_rows: u64,
    /// Turn measurement off (only to measure what measurement costs).
    #[arg(long)]
    pub no_kaizen: bool,
    /// The upstream server's command and arguments.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// How to reach one upstream.
#[derive(Debug, Clone)]
pub enum UpstreamKind {
    Command(ChildSpec),
    Http(Arc<HttpTarget>),
}

/// The resolved settings.
pub struct ProxyConfig {
    pub http: Option<SocketAddr>,
    pub token: Option<String>,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub max_sessions: usize,
    pub session_idle: Duration,
    pub hold: Duration,
}

/// One upstream and what is measured of it.
pub struct UpstreamDef {
    pub label: String,
    pub kind: UpstreamKind,
    pub recorder: Arc<Recorder>,
    links: Mutex<Vec<Weak<Link>>>,
    /// Counters of links that are gone.
    retired: [AtomicU64; 5],
    /// Sessions (and stateless requests) the experiments gave this upstream.
    assigned: AtomicU64,
    shared: OnceCell<Arc<Link>>,
}

/// The counters `UpstreamDef::totals` sums, in its order.
fn health_counts(h: &upstream::Health) -> [u64; 5] {
    [&h.exits, &h.restarts, &h.failed_requests, &h.refusals, &h.dropped_messages].map(|c| c.load(Ordering::Relaxed))
}

impl UpstreamDef {
    fn live(&self) -> Vec<Arc<Link>> {
        let mut l = self.links.lock();
        let mut out = Vec::new();
        l.retain(|w| match w.upgrade() {
            Some(link) => {
                out.push(link);
                true
            }
            None => false,
        });
        out
    }

    /// (exits, restarts, requests answered by the proxy, refusals of its token), over every
    /// link there has been.
    fn totals(&self) -> [u64; 5] {
        let mut t: [u64; 5] = std::array::from_fn(|i| self.retired[i].load(Ordering::Relaxed));
        for link in self.live() {
            for (sum, n) in t.iter_mut().zip(health_counts(link.upstream.health())) {
                *sum += n;
            }
        }
        t
    }

    fn retire(&self, link: &Link) {
        for (sum, n) in self.retired.iter().zip(health_counts(link.upstream.health())) {
            sum.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Whether `e` says a command could not be run at all: no such program, or not allowed to run.
fn cannot_run(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| matches!(io.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied))
}

/// The running proxy: upstreams, operations, experiments.
pub struct Proxy {
    pub cfg: ProxyConfig,
    pub ops: Arc<Ops>,
    pub upstreams: Vec<UpstreamDef>,
    pub engine: Option<Arc<Engine>>,
    pub counters: Arc<LinkCounters>,
    sessions_seq: AtomicU64,
}

/// Words of a command line, with single and double quotes and backslash escapes.
pub fn split_command(s: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => cur.extend(chars.next()),
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                cur.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        bail!("unbalanced quote in `{s}`");
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// A readable name for an upstream: the script or program's file stem, or the URL's host:port.
pub fn default_name(kind: &UpstreamKind) -> String {
    const RUNNERS: [&str; 12] =
        ["node", "python", "python3", "uv", "uvx", "npx", "deno", "bun", "java", "ruby", "sh", "bash"];
    let stem = |s: &std::ffi::OsStr| {
        std::path::Path::new(s).file_stem().map(|x| x.to_string_lossy().to_string()).unwrap_or_default()
    };
    match kind {
        UpstreamKind::Http(t) => reqwest::Url::parse(&t.url)
            .ok()
            .and_then(|u| u.host_str().map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(80))))
            .unwrap_or_else(|| "http".into()),
        UpstreamKind::Command(c) => {
            let prog = stem(&c.program);
            if !RUNNERS.contains(&prog.as_str()) {
                return prog;
            }
            // The first argument that is not an option, skipping `-m`/`-c` style values.
            let mut args = c.args.iter();
            while let Some(a) = args.next() {
                let s = a.to_string_lossy();
                if (s == "-m" || s == "run" || s == "--from")
                    && let Some(next) = args.next()
                {
                    return stem(next);
                }
                if !s.starts_with('-') {
                    let st = stem(a);
                    // `dist/index.js` says little: take the package directory above it.
                    if st == "index" || st == "main" || st == "server" {
                        let p = std::path::Path::new(a);
                        let named = p.ancestors().skip(1).filter_map(|d| d.file_name()).find(|n| {
                            let n = n.to_string_lossy();
                            !["dist", "build", "src", "lib", "bin"].contains(&n.as_ref())
                        });
                        if let Some(n) = named {
                            return n.to_string_lossy().to_string();
                        }
                    }
                    return st;
                }
            }
            prog
        }
    }
}

/// `--upstream-b`: a URL (its token from `--upstream-b-token`) or a command line.
fn parse_upstream(text_or_url: &str, token: Option<String>) -> Result<UpstreamKind> {
    if text_or_url.starts_with("http://") || text_or_url.starts_with("https://") {
        let target = HttpTarget::with_token_source(text_or_url, token, http_up::TOKEN_SOURCE_B)?;
        return Ok(UpstreamKind::Http(Arc::new(target)));
    }
    let words = split_command(text_or_url)?;
    let Some((prog, args)) = words.split_first() else { bail!("--upstream-b is empty") };
    Ok(UpstreamKind::Command(ChildSpec { program: prog.into(), args: args.iter().map(OsString::from).collect() }))
}

/// The default SLO config for the proxy: the seed's tiers, every tool in the default tier
/// `data` (p95 500 ms, 99.9 % available) until the SLO file says otherwise.
fn proxy_slo_seed() -> kaizen::slo::SloConfig {
    let mut c = kaizen::slo::SloConfig::with_tiers(&[]);
    c.default_tier = Some("data".into());
    c
}

fn default_state_dir(name: &str) -> PathBuf {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/gemba-proxy").join(safe),
        None => PathBuf::from(".gemba-proxy").join(safe),
    }
}

/// How long the probe waits for an upstream's tool list.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: ProxyArgs) -> Result<()> {
    if args.stdio && args.http.is_some() {
        bail!("choose one client transport: --stdio or --http ADDR");
    }
    crate::dashboard::auth::check_exposure(args.admin, args.admin_token.as_deref())?;
    let a_kind = match (&args.upstream, args.command.split_first()) {
        (Some(_), Some(_)) => bail!("give the upstream either as --upstream URL or as a command after `--`, not both"),
        (Some(url), None) => UpstreamKind::Http(Arc::new(HttpTarget::new(url, args.upstream_token.clone())?)),
        (None, Some((prog, rest))) => UpstreamKind::Command(ChildSpec { program: prog.clone(), args: rest.to_vec() }),
        (None, None) => bail!(
            "no upstream: put the server's command after `--` (gemba proxy -- node server.js) or pass --upstream http://host:port/mcp"
        ),
    };
    let b_kind = args.upstream_b.as_deref().map(|b| parse_upstream(b, args.upstream_b_token.clone())).transpose()?;
    if args.experiments.is_some() && b_kind.is_none() {
        bail!("--experiments chooses between two upstreams: give the second with --upstream-b URL|COMMAND");
    }
    let a_label = args.name.clone().unwrap_or_else(|| default_name(&a_kind));
    let mut b_label = b_kind.as_ref().map(|k| args.name_b.clone().unwrap_or_else(|| default_name(k)));
    if b_label.as_deref() == Some(a_label.as_str()) {
        b_label = Some(format!("{a_label}-b"));
    }

    // Learn the tools (both upstreams', so A and B measure the same operations).
    let mut tools = Vec::new();
    for (label, kind) in std::iter::once((&a_label, &a_kind)).chain(b_label.iter().zip(b_kind.iter())) {
        let listed = match kind {
            UpstreamKind::Command(spec) => probe::child_tools(spec, PROBE_TIMEOUT).await,
            UpstreamKind::Http(t) => probe::http_tools(t, PROBE_TIMEOUT).await,
        };
        match listed {
            Ok(t) => {
                tracing::info!("upstream {label}: {} tools", t.len());
                if let UpstreamKind::Http(target) = kind {
                    let mut hp = target.header_params.lock();
                    for tool in &t {
                        if !tool.header_params.is_empty() {
                            hp.insert(tool.name.clone(), tool.header_params.clone());
                        }
                    }
                }
                tools.extend(t.into_iter().map(|t| t.name));
            }
            Err(e) if matches!(kind, UpstreamKind::Command(_)) && cannot_run(&e) => {
                // Not a server that died (that one is restarted): a command that cannot run at
                // all, which no restart will mend.
                bail!("{e:#}; check the upstream's command after `--` (gemba proxy [OPTIONS] -- COMMAND ARGS…)");
            }
            Err(e) => {
                eprintln!("gemba proxy: could not list the tools of upstream {label}: {e:#}");
                tracing::warn!("tool calls to {label} are measured as `tools/call` (tools unknown)");
            }
        }
    }
    // Share the header annotations between the HTTP targets.
    let ops = Arc::new(Ops::new(&tools));
    let enabled = !args.no_kaizen;
    let state_dir = args.state_dir.clone().unwrap_or_else(|| default_state_dir(&a_label));
    let mut defs = vec![UpstreamDef {
        label: a_label.clone(),
        kind: a_kind,
        recorder: ops.recorder(&a_label, enabled),
        links: Mutex::new(Vec::new()),
        retired: Default::default(),
        assigned: AtomicU64::new(0),
        shared: OnceCell::new(),
    }];
    if let (Some(kind), Some(label)) = (b_kind, b_label) {
        defs.push(UpstreamDef {
            recorder: ops.recorder(&label, enabled),
            label,
            kind,
            links: Mutex::new(Vec::new()),
            retired: Default::default(),
            assigned: AtomicU64::new(0),
            shared: OnceCell::new(),
        });
    }

    // Kaizen: SLOs resolved over the tools, the request log, SLIs, alerts, experiments.
    let mut slo_file = crate::slo::load_with(args.slo.as_ref(), proxy_slo_seed)?;
    slo_file.slo = slo_file.slo.resolve(&ops.tool_op_names());
    std::fs::create_dir_all(&state_dir).ok();
    let settings = wiring::Settings {
        state_dir: state_dir.clone(),
        retention: kaizen::store::Retention {
            max_age: Duration::from_secs(args.log_retention_days * 86_400),
            max_rows: args.log_max_rows,
        },
        alert_webhook: args.alert_webhook.clone().filter(|u| !u.is_empty()),
        cache_bytes: 0,
    };
    let kaizen = wiring::open(&settings, &defs[0].recorder, slo_file)?;
    for d in defs.iter().skip(1) {
        if let Some(s) = &kaizen.store {
            d.recorder.attach_log(s.sender());
        }
    }
    let engine =
        if defs.len() > 1 { Some(ab::engine(args.experiments.as_deref(), kaizen.db_path().as_deref())?) } else { None };
    let cfg = ProxyConfig {
        http: if args.stdio { None } else { args.http },
        token: args.token.clone().filter(|t| !t.is_empty()),
        allowed_hosts: args.allowed_hosts.clone(),
        allowed_origins: args.allowed_origins.clone(),
        max_body_bytes: args.max_body_bytes,
        max_connections: args.max_connections as usize,
        max_message_bytes: args.max_message_mb.max(1) << 20,
        max_sessions: args.max_sessions.max(1),
        session_idle: Duration::from_secs(args.session_idle_secs.max(1)),
        hold: Duration::from_millis(args.hold_ms),
    };
    let proxy = Arc::new(Proxy {
        cfg,
        ops,
        upstreams: defs,
        engine: engine.clone(),
        counters: Arc::new(LinkCounters::default()),
        sessions_seq: AtomicU64::new(1),
    });

    let evaluator = if enabled {
        for d in &proxy.upstreams {
            d.recorder.attach_observer(kaizen.sli.clone());
        }
        let mut parts: Vec<Box<dyn Periodic>> = vec![Box::new(SloAlerts { kaizen: kaizen.clone(), last: 0 })];
        if let Some(e) = &engine {
            let store = kaizen.db_path().and_then(|p| kaizen::experiment::persist::ExperimentStore::open(&p).ok());
            parts.push(Box::new(ab::Experiments { engine: e.clone(), kaizen: kaizen.clone(), store, last: 0 }));
        }
        Some(wiring::Evaluator::start(kaizen.clone(), parts))
    } else {
        None
    };
    set_samples(&proxy, &kaizen);
    if let Some(addr) = args.statsd {
        kaizen::statsd::spawn(proxy.upstreams[0].recorder.clone(), addr, Duration::from_secs(10))
            .with_context(|| format!("cannot push StatsD to {addr}"))?;
    }
    if let Some(addr) = args.admin {
        let p = proxy.clone();
        let a = crate::admin::Admin {
            registry: kaizen::exposition::registry_of(proxy.upstreams.iter().map(|d| d.recorder.clone()).collect()),
            kaizen: kaizen.clone(),
            workspace: None,
            checks: vec![Box::new(move || p.readiness())],
            dashboard: crate::dashboard::Dashboard::new(kaizen.clone()),
            token: args.admin_token.clone().filter(|t| !t.trim().is_empty()),
            experiments: proxy.engine.is_some().then(|| experiments_status(&proxy)),
        };
        crate::admin::spawn(addr, a).await?;
    }

    let result = if proxy.cfg.http.is_some() {
        http_down::serve(proxy.clone()).await
    } else {
        stdio::serve(proxy.clone()).await
    };

    for d in &proxy.upstreams {
        for l in d.live() {
            l.close().await;
        }
        if let Some(l) = d.shared.get() {
            l.close().await;
        }
        d.recorder.flush();
    }
    if let Some(e) = evaluator {
        e.shutdown();
    }
    if let Some(s) = &kaizen.store {
        s.flush(Duration::from_secs(3));
    }
    result
}

impl Proxy {
    pub fn new_session_id(&self) -> u64 {
        let n = self.sessions_seq.fetch_add(1, Ordering::Relaxed);
        link::fnv(&(n ^ (u64::from(std::process::id()) << 32) ^ now_nanos()).to_le_bytes())
    }

    /// A link of its own for a session: its upstream chosen by the experiments (A without).
    pub async fn session_link(
        &self,
        session: u64,
        listener: Option<Sink>,
        transport: usize,
    ) -> Result<(Arc<Link>, Option<Arc<Assignment>>)> {
        let (which, assignment) = self.choose_request(&format!("{session:016x}"));
        Ok((self.new_link(which, false, listener, transport), assignment))
    }

    /// The link stateless (2026-era) requests to upstream `which` share.
    pub async fn shared_link(&self, which: usize, transport: usize) -> Arc<Link> {
        let d = &self.upstreams[which];
        d.shared.get_or_init(|| async { self.new_link(which, true, None, transport) }).await.clone()
    }

    /// Which upstream a stateless request goes to, and its assignment.
    pub fn choose_request(&self, unit: &str) -> (usize, Option<Arc<Assignment>>) {
        let (which, assignment) = match &self.engine {
            Some(e) => {
                let (w, a) = ab::choose(e, unit);
                (w, Some(a))
            }
            None => (0, None),
        };
        self.upstreams[which].assigned.fetch_add(1, Ordering::Relaxed);
        (which, assignment)
    }

    fn new_link(&self, which: usize, shared: bool, listener: Option<Sink>, transport: usize) -> Arc<Link> {
        let d = &self.upstreams[which];
        let (tx, rx) = mpsc::channel(1_024);
        let replay = Arc::new(Mutex::new(Replay::default()));
        let upstream = match &d.kind {
            UpstreamKind::Command(spec) => {
                Upstream::Child(ChildUpstream::start(spec.clone(), tx, replay.clone(), self.cfg.max_message_bytes))
            }
            UpstreamKind::Http(t) => {
                Upstream::Http(HttpUpstream::new(t.clone(), tx, replay.clone(), self.cfg.max_message_bytes))
            }
        };
        let link = Link::start(
            LinkSetup {
                upstream_name: d.label.clone(),
                ops: self.ops.clone(),
                recorder: d.recorder.clone(),
                shared,
                transport,
                engine: self.engine.clone(),
                counters: self.counters.clone(),
                listener,
            },
            upstream,
            replay,
            rx,
        );
        d.links.lock().push(Arc::downgrade(&link));
        self.spawn_hold_reaper(link.clone());
        link
    }

    /// Close a session's link and keep its counters.
    pub async fn close_link(&self, link: &Arc<Link>) {
        link.close().await;
        for d in &self.upstreams {
            if Arc::ptr_eq(&d.recorder, link.recorder()) {
                d.retire(link);
                d.links.lock().retain(|w| w.upgrade().is_some_and(|l| !Arc::ptr_eq(&l, link)));
            }
        }
    }

    /// Every second: requests held too long for a restarting upstream get their error.
    pub fn spawn_hold_reaper(&self, link: Arc<Link>) -> tokio::task::JoinHandle<()> {
        let hold = self.cfg.hold;
        let weak = Arc::downgrade(&link);
        drop(link);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(l) = weak.upgrade() else { return };
                l.expire_held(hold).await;
            }
        })
    }

    /// Not ready while an upstream connection is down.
    fn readiness(&self) -> Option<String> {
        let mut problems = Vec::new();
        for d in &self.upstreams {
            for l in d.live() {
                let h = l.upstream.health();
                if !h.is_up() {
                    problems.push(format!("upstream {} is down ({})", d.label, h.describe()));
                    break;
                }
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// `/experiments.json` on the admin listener: the engine's status (states, shares, guard tests,
/// decisions such as a rollback) and, per arm, the upstream that serves it and how many sessions
/// it was given.
fn experiments_status(proxy: &Arc<Proxy>) -> crate::admin::ExperimentsStatus {
    let p = Arc::downgrade(proxy);
    Box::new(move || {
        let Some(p) = p.upgrade() else { return crate::experiments::none_json() };
        let Some(engine) = &p.engine else { return crate::experiments::none_json() };
        let arms: Vec<ab::Arm> = p
            .upstreams
            .iter()
            .map(|d| ab::Arm {
                upstream: d.label.clone(),
                sessions: d.assigned.load(Ordering::Relaxed),
                connections: d.live().len(),
            })
            .collect();
        ab::status_json(engine, &arms)
    })
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// SLO burn-rate alerts every 10 s; SLI minutes saved.
struct SloAlerts {
    kaizen: Arc<Kaizen>,
    last: u64,
}

impl Periodic for SloAlerts {
    fn tick(&mut self, now: u64) -> Vec<kaizen::event::AlertEvent> {
        if now < self.last + 10 {
            return Vec::new();
        }
        self.last = now;
        let events = self.kaizen.sli.evaluate(now);
        kaizen::sli::save(&self.kaizen.sli, self.kaizen.store.as_deref());
        events
    }

    fn shutdown(&mut self, now: u64) -> Vec<kaizen::event::AlertEvent> {
        let events = self.kaizen.sli.evaluate(now);
        kaizen::sli::save(&self.kaizen.sli, self.kaizen.store.as_deref());
        events
    }
}

/// The proxy's own figures on every export: upstream health, sessions, experiments, SLIs.
fn set_samples(proxy: &Arc<Proxy>, kaizen: &Arc<Kaizen>) {
    let p = Arc::downgrade(proxy);
    let k = kaizen.clone();
    proxy.upstreams[0].recorder.set_provider(Box::new(move |out| {
        let Some(p) = p.upgrade() else { return };
        for d in &p.upstreams {
            let live = d.live();
            let up = live.iter().filter(|l| l.upstream.health().is_up()).count();
            let [exits, restarts, failed, refusals, dropped] = d.totals();
            let l = |s: Sample| s.label("upstream", &d.label);
            out.push(l(Sample::new(
                "gemba_proxy_upstream_up",
                "1 when every connection to the upstream is serving (0 while one is down or restarting).",
                Kind::Gauge,
                if up == live.len() { 1.0 } else { 0.0 },
            )));
            out.push(l(Sample::new(
                "gemba_proxy_upstream_connections",
                "Upstream connections open (processes, or HTTP sessions).",
                Kind::Gauge,
                live.len() as f64,
            )));
            out.push(l(Sample::new(
                "gemba_proxy_upstream_exits",
                "Times an upstream process exited or an upstream session was lost.",
                Kind::Counter,
                exits as f64,
            )));
            out.push(l(Sample::new(
                "gemba_proxy_upstream_restarts",
                "Upstream processes restarted (or sessions reopened) with the client's session replayed.",
                Kind::Counter,
                restarts as f64,
            )));
            out.push(l(Sample::new(
                "gemba_proxy_failed_requests",
                "Requests the proxy answered with an error because the upstream could not (it died, was unreachable, or stayed down).",
                Kind::Counter,
                failed as f64,
            )));
            out.push(l(Sample::new(
                "gemba_proxy_upstream_unauthorized",
                "HTTP 401/403 answers from the upstream: it refused the proxy's token (or its lack of one).",
                Kind::Counter,
                refusals as f64,
            )));
            out.push(l(Sample::new(
                "gemba_proxy_upstream_dropped_messages",
                "Messages from the upstream not passed on: longer than --max-message-mb (the request they answered is failed at once), or not readable.",
                Kind::Counter,
                dropped as f64,
            )));
        }
        out.push(Sample::new(
            "gemba_proxy_unroutable_messages",
            "Upstream messages no client could be found for (stateless requests sharing an upstream).",
            Kind::Counter,
            p.counters.unroutable.load(Ordering::Relaxed) as f64,
        ));
        out.push(Sample::new(
            "gemba_proxy_parked_dropped",
            "Messages for a client dropped because it kept no stream open to receive them.",
            Kind::Counter,
            p.counters.parked_dropped.load(Ordering::Relaxed) as f64,
        ));
        if let Some(e) = &p.engine {
            out.extend(e.samples(k.recorder.naming()));
        }
        k.sli.samples(wiring::now_secs(), out);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell() {
        assert_eq!(split_command("node  dist/index.js stdio").unwrap(), vec!["node", "dist/index.js", "stdio"]);
        assert_eq!(
            split_command(r#"python -c "print('a b')" 'x y' z\ w"#).unwrap(),
            vec!["python", "-c", "print('a b')", "x y", "z w"]
        );
        assert_eq!(split_command(r#"a "" b"#).unwrap(), vec!["a", "", "b"]);
        assert!(split_command("a 'b").is_err());
    }

    #[test]
    fn names_from_commands_and_urls() {
        let cmd = |s: &str| {
            let w = split_command(s).unwrap();
            UpstreamKind::Command(ChildSpec {
                program: w[0].clone().into(),
                args: w[1..].iter().map(OsString::from).collect(),
            })
        };
        assert_eq!(
            default_name(&cmd("node .npm-tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js")),
            "server-everything"
        );
        assert_eq!(default_name(&cmd("python3 -u weather_server.py")), "weather_server");
        assert_eq!(default_name(&cmd("python -m my_server")), "my_server");
        assert_eq!(default_name(&cmd("/usr/local/bin/mcp-git --repo .")), "mcp-git");
        let http = UpstreamKind::Http(Arc::new(HttpTarget::new("http://10.0.0.5:8080/mcp", None).unwrap()));
        assert_eq!(default_name(&http), "10.0.0.5:8080");
    }
}
