//! Command line, environment (`GEMBA_*`) and optional TOML config file, merged in that order
//! of precedence into one `ServeConfig`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// The workbook cache bound when none is configured, in MiB.
pub const DEFAULT_CACHE_MB: usize = 512;

#[derive(Debug, Parser)]
#[command(name = "gemba", version, about = "A measured MCP server for spreadsheets")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP over stdio (default) or streamable HTTP.
    Serve(Box<ServeArgs>),
    /// Generate the benchmark workloads and measure the read tools against them.
    Bench(crate::bench::BenchArgs),
    /// Write the example or benchmark workbooks into a directory.
    Workloads(crate::bench::WorkloadArgs),
    /// Per-tool count, error rate and percentiles from the request log.
    Stats(crate::stats::StatsArgs),
    /// SLO configuration and the Prometheus rules generated from it.
    Slo(crate::slo::SloArgs),
    /// Load any MCP server (HTTP on loopback, or stdio) with a scenario and report latency.
    Loadtest(Box<crate::loadtest::LoadtestArgs>),
    /// What the request log teaches over a day, week or month: errors, workflows, cache what-if,
    /// trends, SLO compliance and a ranked improvement backlog (md, html or json).
    Report(crate::report::ReportArgs),
    /// Incidents (grouped anomalies and SLO alerts, with ranked causes) from the state database.
    Incidents(crate::incidents::cli::IncidentsArgs),
    /// Experiments: saved status, the report of decisions, checking a file, the knobs.
    Experiment(crate::experiments::cli::ExperimentArgs),
    /// Kaizen for any MCP server: sit between a client and an upstream server, forward every
    /// message unchanged, measure every call (`gemba proxy -- CMD ARGS`, or `--upstream URL`).
    Proxy(Box<crate::proxy::ProxyArgs>),
    /// A CPU profile, flame graph or heap view of a running gemba, from its admin listener.
    Profile(crate::profiling::cli::ProfileArgs),
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Serve over stdio (the default when --http is not given).
    #[arg(long)]
    pub stdio: bool,
    /// Serve streamable HTTP on this address; MCP is at /mcp.
    #[arg(long, env = "GEMBA_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// The directory of workbooks to serve.
    #[arg(long, env = "GEMBA_WORKSPACE", value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// A TOML file with any of these settings (flags and GEMBA_* variables win).
    #[arg(long, env = "GEMBA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on HTTP.
    #[arg(long, env = "GEMBA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Extra Host values accepted on HTTP (loopback names are always accepted).
    #[arg(long = "allowed-host", env = "GEMBA_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Extra browser origins accepted on HTTP (loopback origins are always accepted).
    #[arg(long = "allowed-origin", env = "GEMBA_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Largest HTTP request body, in bytes.
    #[arg(long, env = "GEMBA_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most HTTP connections open at once; more wait until one closes [default: 1024].
    #[arg(long, env = "GEMBA_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Workbook cache bound, in MiB.
    #[arg(long, env = "GEMBA_CACHE_MB")]
    pub cache_mb: Option<usize>,
    /// Time budget of one tool call, in milliseconds.
    #[arg(long, env = "GEMBA_TIMEOUT_MS")]
    pub timeout_ms: Option<u64>,
    /// Largest workbook file accepted, in MiB.
    #[arg(long, env = "GEMBA_MAX_FILE_MB")]
    pub max_file_mb: Option<u64>,
    /// Most non-empty cells loaded from one sheet.
    #[arg(long, env = "GEMBA_MAX_CELLS")]
    pub max_cells: Option<usize>,
    /// Admin listener (the dashboard at /, /metrics, /metrics.json, /healthz, /readyz), e.g.
    /// 127.0.0.1:9464.
    #[arg(long, env = "GEMBA_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Token the admin listener requires (dashboard, its stream, metrics; not /healthz, /readyz);
    /// required when --admin is not a loopback address.
    #[arg(long, env = "GEMBA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// State directory (request log); default `<workspace>/.gemba`.
    #[arg(long, env = "GEMBA_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Push StatsD metrics over UDP to this address every 10 s.
    #[arg(long, env = "GEMBA_STATSD", value_name = "ADDR")]
    pub statsd: Option<SocketAddr>,
    /// Turn measurement off (only to measure what measurement costs).
    #[arg(long, env = "GEMBA_NO_KAIZEN")]
    pub no_kaizen: bool,
    /// SLO file (TOML); default: the seed's four tiers. Tier timeouts become the tools' timeouts.
    #[arg(long, env = "GEMBA_SLO", value_name = "FILE")]
    pub slo: Option<PathBuf>,
    /// Send alert transitions to this Alertmanager-style webhook (http://host:port/path).
    #[arg(long, env = "GEMBA_ALERT_WEBHOOK", value_name = "URL")]
    pub alert_webhook: Option<String>,
    /// Time a workbook load may take, in milliseconds (separate from the tools' own timeouts).
    #[arg(long, env = "GEMBA_LOAD_TIMEOUT_MS")]
    pub load_timeout_ms: Option<u64>,
    /// Request-log retention in days.
    #[arg(long, env = "GEMBA_LOG_RETENTION_DAYS")]
    pub log_retention_days: Option<u64>,
    /// Most rows the request log keeps.
    #[arg(long, env = "GEMBA_LOG_MAX_ROWS")]
    pub log_max_rows: Option<u64>,
    /// Let save_fork write over the original file (refused if it changed since the fork).
    #[arg(long, env = "GEMBA_ALLOW_OVERWRITE")]
    pub allow_overwrite: bool,
    /// Default recalculation backend: in_process or libreoffice.
    #[arg(long, env = "GEMBA_RECALC_BACKEND", value_name = "BACKEND")]
    pub recalc_backend: Option<String>,
    /// The LibreOffice program for the libreoffice backend (default: soffice on PATH).
    #[arg(long, env = "GEMBA_LIBREOFFICE", value_name = "PATH")]
    pub libreoffice: Option<PathBuf>,
    /// A LibreOffice recalculation running longer is killed, in milliseconds.
    #[arg(long, env = "GEMBA_RECALC_TIMEOUT_MS")]
    pub recalc_timeout_ms: Option<u64>,
    /// Most LibreOffice processes at once.
    #[arg(long, env = "GEMBA_RECALC_CONCURRENCY")]
    pub recalc_concurrency: Option<usize>,
    /// Most forks open at once.
    #[arg(long, env = "GEMBA_MAX_FORKS")]
    pub max_forks: Option<usize>,
    /// Forks older than this many days are removed at start.
    #[arg(long, env = "GEMBA_FORK_MAX_AGE_DAYS")]
    pub fork_max_age_days: Option<u64>,
    /// Tool calls that may run at once (default 4 per CPU core, at least 4); more wait
    /// --queue-wait-ms for a slot, then are refused.
    #[arg(long, env = "GEMBA_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// How long a call waits for a free slot before it is refused, in milliseconds.
    #[arg(long, env = "GEMBA_QUEUE_WAIT_MS")]
    pub queue_wait_ms: Option<u64>,
    /// Calls that may wait for a slot (default 4 x --max-inflight); past it a call is refused
    /// at once, so a flood gets quick refusals instead of a growing queue.
    #[arg(long, env = "GEMBA_MAX_QUEUED")]
    pub max_queued: Option<usize>,
    /// Anomaly detection settings and cause rules (TOML: `[detect]`, `[[cause]]`); see
    /// `gemba incidents --show-config` for the defaults.
    #[arg(long, env = "GEMBA_DETECT", value_name = "FILE")]
    pub detect: Option<PathBuf>,
    /// Experiments to run (TOML: flags, A/B tests, canaries, bandits over Gemba's knobs; see
    /// docs/experiments.md and `gemba experiment knobs`), checked at start.
    #[arg(long, env = "GEMBA_EXPERIMENTS", value_name = "FILE")]
    pub experiments: Option<PathBuf>,
    /// Export traces (OTLP/HTTP protobuf) to this receiver, e.g. http://127.0.0.1:4318 (off by
    /// default; OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT work too).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0..1 (default 1, or OTEL_TRACES_SAMPLER_ARG); a caller's
    /// sampled flag is always followed.
    #[arg(long, value_name = "RATIO")]
    pub trace_sample: Option<f64>,
}

/// The same settings as a config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http: Option<SocketAddr>,
    pub workspace: Option<PathBuf>,
    pub token: Option<String>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: Option<usize>,
    pub max_connections: Option<u32>,
    pub cache_mb: Option<usize>,
    pub timeout_ms: Option<u64>,
    pub max_file_mb: Option<u64>,
    pub max_cells: Option<usize>,
    pub admin: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub statsd: Option<SocketAddr>,
    pub log_retention_days: Option<u64>,
    pub log_max_rows: Option<u64>,
    pub slo: Option<PathBuf>,
    pub alert_webhook: Option<String>,
    pub load_timeout_ms: Option<u64>,
    #[serde(default)]
    pub allow_overwrite: bool,
    pub recalc_backend: Option<String>,
    pub libreoffice: Option<PathBuf>,
    pub recalc_timeout_ms: Option<u64>,
    pub recalc_concurrency: Option<usize>,
    pub max_forks: Option<usize>,
    pub fork_max_age_days: Option<u64>,
    pub max_inflight: Option<usize>,
    pub queue_wait_ms: Option<u64>,
    pub max_queued: Option<usize>,
    pub detect: Option<PathBuf>,
    pub experiments: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub http: Option<SocketAddr>,
    pub workspace: PathBuf,
    pub token: Option<String>,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub cache_bytes: usize,
    /// One timeout for every tool, overriding the SLO tiers' (from --timeout-ms).
    pub timeout_ms: Option<u64>,
    pub load_timeout_ms: u64,
    pub slo_file: Option<PathBuf>,
    pub alert_webhook: Option<String>,
    pub max_file_bytes: u64,
    pub max_cells: usize,
    pub admin: Option<SocketAddr>,
    /// What the admin listener requires when set (see `dashboard::auth`).
    pub admin_token: Option<String>,
    pub state_dir: PathBuf,
    pub statsd: Option<SocketAddr>,
    pub kaizen: bool,
    pub retention: kaizen::store::Retention,
    pub forks: sheets::forks::ForkConfig,
    pub max_inflight: usize,
    pub queue_wait_ms: u64,
    pub max_queued: usize,
    /// Anomaly detection overrides (`--detect FILE`).
    pub detect_file: Option<PathBuf>,
    /// The experiments file, when experiments run.
    pub experiments: Option<PathBuf>,
    /// OTLP trace export, when on (`--otlp-endpoint` or the `OTEL_*` variables).
    pub traces: Option<crate::traces::TraceSettings>,
}

fn load_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

impl ServeArgs {
    pub fn resolve(self) -> Result<ServeConfig> {
        let file = match &self.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        if self.stdio && self.http.is_some() {
            bail!("choose one transport: --stdio or --http ADDR");
        }
        let workspace = self.workspace.or(file.workspace).context(
            "no workspace: pass --workspace DIR (or set GEMBA_WORKSPACE, or `workspace` in the config file)",
        )?;
        // Checked before anything is written under it (the state directory would create it):
        // a mistyped path must not start a server with an empty workspace.
        match std::fs::metadata(&workspace) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "workspace '{}' is not a directory; pass the directory that holds the workbooks",
                workspace.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "workspace '{}' does not exist; pass an existing directory of workbooks with --workspace (Gemba does not create it)",
                workspace.display()
            ),
            Err(e) => bail!("workspace '{}' cannot be opened ({e})", workspace.display()),
        }
        let mut allowed_hosts = file.allowed_hosts;
        allowed_hosts.extend(self.allowed_hosts);
        let mut allowed_origins = file.allowed_origins;
        allowed_origins.extend(self.allowed_origins);
        let defaults = sheets::Limits::default();
        let state_dir = self.state_dir.or(file.state_dir).unwrap_or_else(|| workspace.join(".gemba"));
        let forks = {
            use sheets::forks::{ForkConfig, recalc::Backend};
            let d = ForkConfig::default();
            let backend = match self.recalc_backend.or(file.recalc_backend).as_deref().map(str::trim) {
                None | Some("in_process") => Backend::InProcess,
                Some("libreoffice") => Backend::Libreoffice,
                Some(other) => bail!("recalc backend '{other}' is not known; use in_process or libreoffice"),
            };
            let mut lo = d.libreoffice.clone();
            if let Some(p) = self.libreoffice.or(file.libreoffice) {
                lo.program = p;
            }
            if let Some(ms) = self.recalc_timeout_ms.or(file.recalc_timeout_ms) {
                lo.timeout = std::time::Duration::from_millis(ms.max(1));
            }
            if let Some(n) = self.recalc_concurrency.or(file.recalc_concurrency) {
                lo.concurrency = n.max(1);
            }
            lo.work_dir = state_dir.join("forks").join(".libreoffice");
            ForkConfig {
                dir: state_dir.join("forks"),
                max_forks: self.max_forks.or(file.max_forks).unwrap_or(d.max_forks),
                max_age: self
                    .fork_max_age_days
                    .or(file.fork_max_age_days)
                    .map(|days| std::time::Duration::from_secs(days * 86_400))
                    .unwrap_or(d.max_age),
                allow_overwrite: self.allow_overwrite || file.allow_overwrite,
                default_backend: backend,
                libreoffice: lo,
                // Tests only: hold a save between writing and renaming, to kill the server there.
                save_pause: crate::faults::save_pause(),
                append_pause: crate::faults::append_pause(),
                ..d
            }
        };
        // Tool calls are mostly CPU work: a few per core keep the cores busy, and leave the
        // async runtime the CPU it needs to answer (or refuse) everything else at once.
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let max_inflight = self.max_inflight.or(file.max_inflight).unwrap_or((4 * cores).max(4)).max(1);
        let cfg = ServeConfig {
            http: if self.stdio { None } else { self.http.or(file.http) },
            workspace: workspace.clone(),
            token: self.token.or(file.token).filter(|t| !t.is_empty()),
            allowed_hosts,
            allowed_origins,
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes).unwrap_or(4 * 1024 * 1024),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .map_or(crate::listen::DEFAULT_MAX_CONNECTIONS, |n| n.max(1) as usize),
            cache_bytes: self.cache_mb.or(file.cache_mb).unwrap_or(DEFAULT_CACHE_MB) * 1024 * 1024,
            timeout_ms: self.timeout_ms.or(file.timeout_ms),
            load_timeout_ms: self.load_timeout_ms.or(file.load_timeout_ms).unwrap_or(60_000),
            slo_file: self.slo.or(file.slo),
            alert_webhook: self.alert_webhook.or(file.alert_webhook).filter(|u| !u.is_empty()),
            max_file_bytes: self
                .max_file_mb
                .or(file.max_file_mb)
                .map(|m| m * 1024 * 1024)
                .unwrap_or(defaults.max_file_bytes),
            max_cells: self.max_cells.or(file.max_cells).unwrap_or(defaults.max_cells_per_sheet),
            admin: self.admin.or(file.admin),
            admin_token: self.admin_token.or(file.admin_token).filter(|t| !t.trim().is_empty()),
            state_dir,
            statsd: self.statsd.or(file.statsd),
            kaizen: !self.no_kaizen,
            retention: kaizen::store::Retention {
                max_age: std::time::Duration::from_secs(
                    self.log_retention_days.or(file.log_retention_days).unwrap_or(30) * 86_400,
                ),
                max_rows: self.log_max_rows.or(file.log_max_rows).unwrap_or(2_000_000),
            },
            forks,
            max_inflight,
            queue_wait_ms: self.queue_wait_ms.or(file.queue_wait_ms).unwrap_or(250),
            max_queued: self.max_queued.or(file.max_queued).unwrap_or(4 * max_inflight),
            detect_file: self.detect.or(file.detect),
            experiments: self.experiments.or(file.experiments),
            traces: crate::traces::TraceSettings::resolve(self.otlp_endpoint.as_deref(), self.trace_sample, |k| {
                std::env::var(k).ok()
            })?,
        };
        if cfg.experiments.is_some() && !cfg.kaizen {
            bail!("experiments are judged by measurement: drop --no-kaizen (GEMBA_NO_KAIZEN) or --experiments");
        }
        if cfg.timeout_ms == Some(0) || cfg.load_timeout_ms == 0 {
            bail!("timeout_ms must be at least 1");
        }
        crate::dashboard::auth::check_exposure(cfg.admin, cfg.admin_token.as_deref())?;
        Ok(cfg)
    }
}
