//! The `gemba` binary: CLI, transports and wiring. The spreadsheet domain lives in the `sheets`
//! crate and measurement in `kaizen`; this crate adapts them to MCP.

mod bench;
mod catalog;
mod config;
mod http;
mod schema;
mod server;

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
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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

fn build_server(cfg: &ServeConfig) -> Result<GembaServer> {
    let limits = sheets::Limits {
        max_file_bytes: cfg.max_file_bytes,
        max_cells_per_sheet: cfg.max_cells,
        ..Default::default()
    };
    let engine = sheets::Engine::new(
        &cfg.workspace,
        sheets::EngineConfig {
            cache_bytes: cfg.cache_bytes,
            limits,
            caps: sheets::Caps::default(),
        },
    )?;
    Ok(GembaServer::new(
        engine,
        Duration::from_millis(cfg.timeout_ms),
    ))
}

async fn serve(cfg: ServeConfig) -> Result<()> {
    let server = build_server(&cfg)?;
    if cfg.http.is_some() {
        return http::serve(server, &cfg).await;
    }
    tracing::info!(
        "gemba serving MCP on stdio (workspace {})",
        cfg.workspace.display()
    );
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .context("MCP stdio session failed to start")?;
    tokio::select! {
        r = running.waiting() => { r.context("MCP stdio session ended with an error")?; }
        _ = shutdown_signal() => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    // Logs go to stderr: in stdio mode stdout belongs to MCP.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("GEMBA_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
