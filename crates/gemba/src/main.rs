//! The `gemba` binary: CLI, transports and wiring. The spreadsheet domain lives in the `sheets`
//! crate and measurement in `kaizen`; this crate adapts them to MCP.

mod admin;
mod backpressure;
mod bench;
mod catalog;
mod config;
mod dashboards;
mod http;
mod loadtest;
mod measure;
mod schema;
mod server;
mod slo;
mod stats;
mod surface;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use rmcp::ServiceExt;
use tracing_subscriber::EnvFilter;

use config::{Cli, Command, ServeConfig};
use server::GembaServer;

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn build_server(
    cfg: &ServeConfig,
    timeouts: slo::Timeouts,
    recorder: Option<Arc<kaizen::Recorder>>,
    sli: Option<Arc<kaizen::sli::SliEngine>>,
) -> Result<GembaServer> {
    let limits =
        sheets::Limits { max_file_bytes: cfg.max_file_bytes, max_cells_per_sheet: cfg.max_cells, ..Default::default() };
    let engine = sheets::Engine::new(
        &cfg.workspace,
        sheets::EngineConfig {
            cache_bytes: cfg.cache_bytes,
            limits,
            caps: sheets::Caps::default(),
            forks: cfg.forks.clone(),
        },
    )?;
    let admission = server::Admission {
        max_inflight: cfg.max_inflight,
        queue_wait: Duration::from_millis(cfg.queue_wait_ms),
        max_queued: cfg.max_queued,
    };
    Ok(GembaServer::new(engine, timeouts, recorder, sli, admission))
}

/// What the operational alerts look at, read from the recorder, the cache and /proc.
fn signals(server: &GembaServer, recorder: &kaizen::Recorder) -> kaizen::operational::Signals {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut requests, mut server_errors) = (0, 0);
    for (_, s) in recorder.ops() {
        requests += s.total_requests();
        server_errors += s.requests[kaizen::Outcome::Internal as usize].load(Relaxed)
            + s.requests[kaizen::Outcome::Timeout as usize].load(Relaxed);
    }
    let cache = &server.engine().cache.stats;
    let lo = &server.engine().forks.stats.libreoffice;
    let p = kaizen::process::process_stats();
    kaizen::operational::Signals {
        requests,
        server_errors,
        cache_hits: cache.hits.load(Relaxed),
        cache_misses: cache.misses.load(Relaxed),
        rss_bytes: p.resident_memory_bytes,
        memory_limit_bytes: p.memory_limit_bytes,
        retries: lo.retries.load(Relaxed),
        breaker_open: lo.breaker_state.load(Relaxed) == 1,
        longest_recalc_seconds: lo.longest_running_seconds(),
    }
}

/// Every 10 s: evaluate the SLO and operational alerts, deliver transitions, save SLI minutes.
fn spawn_evaluator(
    server: GembaServer,
    recorder: Arc<kaizen::Recorder>,
    sli: Arc<kaizen::sli::SliEngine>,
    store: Option<Arc<kaizen::store::Store>>,
    webhook: Option<kaizen::alerts::Webhook>,
) {
    let ops = kaizen::operational::Operational::new(sli.config().operational.clone(), slo::RUNBOOK_URL);
    let spawned = std::thread::Builder::new().name("gemba-alerts".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(10));
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let mut events = sli.evaluate(now);
            events.extend(ops.evaluate(now, signals(&server, &recorder)));
            kaizen::alerts::deliver(&events, webhook.as_ref());
            kaizen::sli::save(&sli, store.as_deref());
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the alert evaluator: {e}");
    }
}

/// Wire measurement: cache hooks, extra samples, the request log, StatsD, the admin listener.
async fn start_kaizen(
    cfg: &ServeConfig,
    server: &GembaServer,
    recorder: &Arc<kaizen::Recorder>,
    sli: &Arc<kaizen::sli::SliEngine>,
    webhook: Option<kaizen::alerts::Webhook>,
) -> Result<Option<Arc<kaizen::store::Store>>> {
    let r = recorder.clone();
    let _ =
        server.engine().cache.stats.load_observer.set(Box::new(move |d| r.observe(measure::CACHE_LOAD_HISTOGRAM, d)));
    let store = match kaizen::store::Store::open(&cfg.state_dir, cfg.retention.clone()) {
        Ok(s) => {
            recorder.attach_log(s.sender());
            Some(Arc::new(s))
        }
        Err(e) => {
            tracing::warn!("request log disabled: {e}");
            None
        }
    };
    // SLIs: restore the period's minutes, count every request from now on, evaluate every 10 s.
    if let Some(st) = &store {
        let period_min = u64::from(sli.config().period_days) * 1440;
        let now_min = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() / 60;
        match kaizen::store::load_slo_minutes(&st.path, now_min.saturating_sub(period_min)) {
            Ok(rows) => sli.restore(rows),
            Err(e) => tracing::warn!("cannot restore SLO minutes: {e}"),
        }
    }
    if recorder.enabled() {
        recorder.attach_sli(sli.clone());
        spawn_evaluator(server.clone(), recorder.clone(), sli.clone(), store.clone(), webhook);
    }
    let sli_for_samples = sli.clone();
    let s = server.clone();
    let state_dir = cfg.state_dir.clone();
    let disk = Arc::new(parking_lot::Mutex::new((std::time::Instant::now(), 0u64, false)));
    recorder.set_provider(Box::new(move |out| {
        measure::engine_samples(s.engine(), out);
        // surface: log messages, progress notifications, resource subscriptions.
        s.surface_samples(out);
        let (refused, adm, free) = s.admission_figures();
        out.push(kaizen::exposition::Sample::new(
            "gemba_requests_refused",
            "Tool calls refused at once because every slot stayed busy (admission control).",
            kaizen::exposition::Kind::Counter,
            refused as f64,
        ));
        out.push(kaizen::exposition::Sample::new(
            "gemba_inflight_limit",
            "Tool calls that may run at once (--max-inflight).",
            kaizen::exposition::Kind::Gauge,
            adm.max_inflight as f64,
        ));
        out.push(kaizen::exposition::Sample::new(
            "gemba_inflight_slots_free",
            "Tool-call slots free now.",
            kaizen::exposition::Kind::Gauge,
            free as f64,
        ));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        sli_for_samples.samples(now, out);
        // The state directory's size, re-measured at most every 10 s.
        let mut d = disk.lock();
        if !d.2 || d.0.elapsed() > Duration::from_secs(10) {
            *d = (std::time::Instant::now(), kaizen::process::dir_bytes(&state_dir), true);
        }
        out.push(kaizen::exposition::Sample::new(
            "gemba_state_dir_bytes",
            "Disk used by the state directory (request log, forks, checkpoints).",
            kaizen::exposition::Kind::Gauge,
            d.1 as f64,
        ));
    }));
    if let Some(addr) = cfg.statsd {
        kaizen::statsd::spawn(recorder.clone(), addr, Duration::from_secs(10))
            .with_context(|| format!("cannot push StatsD to {addr}"))?;
    }
    if let Some(addr) = cfg.admin {
        let listener = admin::bind(addr).await?;
        let a = Arc::new(admin::Admin {
            registry: kaizen::exposition::registry(recorder.clone()),
            recorder: recorder.clone(),
            store: store.clone(),
            workspace: cfg.workspace.clone(),
            sli: Some(sli.clone()),
        });
        tokio::spawn(async move {
            if let Err(e) = admin::serve(listener, a).await {
                tracing::error!("{e:#}");
            }
        });
    }
    Ok(store)
}

async fn serve(cfg: ServeConfig) -> Result<()> {
    let slo_cfg = slo::load(cfg.slo_file.as_ref())?;
    let timeouts = slo::Timeouts::from(&slo_cfg, cfg.timeout_ms, cfg.load_timeout_ms);
    let webhook = match &cfg.alert_webhook {
        Some(url) => Some(kaizen::alerts::Webhook::parse(url).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let recorder = measure::new_recorder(cfg.kaizen);
    let sli = Arc::new(kaizen::sli::SliEngine::new(slo_cfg, recorder.names(), slo::RUNBOOK_URL));
    let server = build_server(&cfg, timeouts, Some(recorder.clone()), Some(sli.clone()))?;
    let store = start_kaizen(&cfg, &server, &recorder, &sli, webhook.clone()).await?;
    let result = if cfg.http.is_some() {
        http::serve(measure::Measured::new(server, recorder.clone(), 1), &cfg).await
    } else {
        serve_stdio(measure::Measured::new(server, recorder.clone(), 0), &cfg).await
    };
    // Nothing measured is lost at shutdown: drain the queue, save the SLI minutes, let the log catch up.
    recorder.flush();
    if recorder.enabled() {
        kaizen::sli::tick(&sli, store.as_deref(), webhook.as_ref());
    }
    if let Some(s) = store {
        s.flush(Duration::from_secs(3));
    }
    result
}

async fn serve_stdio(server: measure::Measured<GembaServer>, cfg: &ServeConfig) -> Result<()> {
    tracing::info!("gemba serving MCP on stdio (workspace {})", cfg.workspace.display());
    // A client that stops reading its answers pauses the reading of its requests.
    let (stdin, stdout) = rmcp::transport::stdio();
    let transport = backpressure::pair(stdin, stdout, backpressure::MAX_OWED);
    let running = server.serve(transport).await.context("MCP stdio session failed to start")?;
    tokio::select! {
        r = running.waiting() => { r.context("MCP stdio session ended with an error")?; }
        _ = shutdown_signal() => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    // Logs go to stderr: in stdio mode stdout belongs to MCP.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("GEMBA_LOG").unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn")))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gemba: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args.resolve()?).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Workloads(args) => bench::write_workloads(args),
            Command::Stats(args) => stats::run(args),
            Command::Slo(args) => slo::run(args),
            Command::Loadtest(args) => loadtest::run(*args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gemba: {e:#}");
            ExitCode::FAILURE
        }
    }
}
