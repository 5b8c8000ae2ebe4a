//! The `gemba` binary: CLI, transports and wiring. The spreadsheet domain lives in the `sheets`
//! crate and measurement in `kaizen`; this crate adapts them to MCP.

// Command output macros (outln!, out!) come first so every module can use them.
#[macro_use]
mod output;
mod admin;
mod admission;
mod backpressure;
mod bearer;
mod bench;
mod catalog;
mod config;
mod dashboard;
mod dashboards;
mod experiments;
mod faults;
mod http;
mod incidents;
mod inline;
mod listen;
mod loadtest;
mod measure;
mod operational;
mod profiling;
mod proxy;
mod report;
mod schema;
mod server;
mod slo;
mod stats;
mod stdio_limit;
mod stdio_pipes;
mod surface;
mod traces;
mod wiring;
mod yaml;

use std::process::ExitCode;
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

fn build_server(cfg: &ServeConfig, timeouts: slo::Timeouts) -> Result<GembaServer> {
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
    Ok(GembaServer::new(engine, timeouts, admission))
}

async fn serve(cfg: ServeConfig) -> Result<()> {
    let slo_file = slo::load(cfg.slo_file.as_ref())?;
    let timeouts = slo::Timeouts::from(&slo_file.slo, cfg.timeout_ms, cfg.load_timeout_ms);
    let recorder = measure::new_recorder(cfg.kaizen);
    if let Some(t) = cfg.traces.clone() {
        traces::install(t, recorder.names().to_vec())?;
    }
    let server = build_server(&cfg, timeouts)?;
    let (kaizen, evaluator) = wiring::start(&cfg, &server, &recorder, slo_file).await?;
    let result = if cfg.http.is_some() {
        http::serve(measure::Measured::new(server, recorder.clone(), 1), &cfg).await
    } else {
        serve_stdio(measure::Measured::new(server, recorder.clone(), 0), &cfg).await
    };
    // Nothing measured is lost at shutdown: drain the queue, evaluate once more and save, let
    // the log catch up.
    recorder.flush();
    traces::flush(Duration::from_secs(2));
    if let Some(e) = evaluator {
        e.shutdown();
    }
    if let Some(s) = &kaizen.store {
        s.flush(Duration::from_secs(3));
    }
    result
}

async fn serve_stdio(server: measure::Measured<GembaServer>, cfg: &ServeConfig) -> Result<()> {
    tracing::info!("gemba serving MCP on stdio (workspace {})", cfg.workspace.display());
    let mcp_out = mcp_stream().context("cannot set up the MCP stream on stdout")?;
    // A request longer than the bound is answered with an error rather than dropped unanswered.
    let requests = stdio_limit::BoundedLines::new(stdio_pipes::mcp_reader(), stdio_limit::MAX_LINE);
    let transport = rmcp::transport::async_rw::AsyncRwTransport::new_server(requests, mcp_out)
        .with_max_line_length(stdio_limit::MAX_LINE + 16);
    // A client that stops reading its answers pauses the reading of its requests.
    let transport = backpressure::Backpressured::new(transport, backpressure::MAX_OWED);
    let running = server.serve(transport).await.context("MCP stdio session failed to start")?;
    tokio::select! {
        r = running.waiting() => { r.context("MCP stdio session ended with an error")?; }
        _ = shutdown_signal() => {}
    }
    Ok(())
}

/// The MCP stream: a private handle on stdout, with fd 1 itself pointed at stderr so nothing
/// else in the process can write to the client.
#[cfg(unix)]
fn mcp_stream() -> std::io::Result<stdio_pipes::McpWriter> {
    backpressure::private_stdout().map(stdio_pipes::mcp_writer)
}

#[cfg(not(unix))]
fn mcp_stream() -> std::io::Result<stdio_pipes::McpWriter> {
    Ok(Box::pin(tokio::io::stdout()))
}

/// `gemba proxy` runs its tasks on one thread: every message crosses several of them, and on one
/// thread a hop is a queue push rather than a wake-up of another core (docs/proxy.md#overhead).
fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        Command::Proxy(_) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
}

fn main() -> ExitCode {
    // Logs go to stderr: in stdio mode stdout belongs to MCP.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("GEMBA_LOG").unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn")))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    let runtime = match runtime_for(&cli.command) {
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
            Command::Report(args) => report::run(args),
            Command::Incidents(args) => incidents::cli::run(args),
            Command::Experiment(args) => experiments::cli::run(args),
            Command::Proxy(args) => proxy::run(*args).await,
            Command::Profile(args) => profiling::cli::run(args).await,
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
