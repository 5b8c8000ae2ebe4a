//! The admin listener, separate from MCP and available in stdio mode too: the dashboard at `/`,
//! `/metrics` (Prometheus text), `/metrics.json` (percentile summary), `/slo.json`, `/healthz`,
//! `/readyz`, and profiles on demand under `/debug/pprof/` (see `profiling`). With an admin token,
//! everything but `/healthz` and `/readyz` requires it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::wiring::Kaizen;

/// A readiness check beyond the state database: returns what is wrong, or `None`.
pub type ReadyCheck = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// The status of experiments an embedder runs itself (the proxy's A/B between upstreams), for
/// `/experiments.json` in place of `gemba serve`'s.
pub type ExperimentsStatus = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

pub struct Admin {
    pub registry: Registry,
    pub kaizen: Arc<Kaizen>,
    /// The served directory, when there is one (checked by /readyz).
    pub workspace: Option<PathBuf>,
    /// More readiness checks (a proxy's upstream, say).
    pub checks: Vec<ReadyCheck>,
    pub dashboard: Arc<crate::dashboard::Dashboard>,
    /// Required on every route but the health checks when set (`--admin-token`).
    pub token: Option<String>,
    /// `/experiments.json` from the embedder's own experiments, when it has them.
    pub experiments: Option<ExperimentsStatus>,
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the 0.0.4 text format.
async fn metrics(State(a): State<Arc<Admin>>, headers: axum::http::HeaderMap) -> Response {
    let wants_om = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if wants_om {
        let body = kaizen::exposition::encode_text(&a.registry);
        let family = a.kaizen.recorder.naming().metric("tool_duration_seconds");
        let body = crate::traces::with_exemplars(body, &family, &a.kaizen.recorder.naming().op_label);
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
    } else {
        let body = kaizen::exposition::encode_text_004(&a.registry);
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
    }
}

async fn metrics_json(State(a): State<Arc<Admin>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], kaizen::exposition::summary(&a.kaizen.recorder).to_string())
        .into_response()
}

async fn slo_json(State(a): State<Arc<Admin>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::slo::status_json(&a.kaizen.sli).to_string()).into_response()
}

/// `/incidents.json[?since=1d]`: incidents open now or closed within the span (default 7 days).
async fn incidents_json(State(a): State<Arc<Admin>>, uri: axum::http::Uri) -> Response {
    let json = |code, body: serde_json::Value| (code, [(header::CONTENT_TYPE, "application/json")], body.to_string());
    let since = uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since=")));
    let span = match since.map(crate::stats::parse_duration) {
        None => crate::incidents::DEFAULT_SINCE,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": format!("since: {e}")})).into_response();
        }
    };
    let body = match &a.kaizen.incidents {
        Some(i) => i.json(crate::incidents::now_ms().saturating_sub(span.as_millis() as u64)),
        None => crate::incidents::disabled_json(),
    };
    json(StatusCode::OK, body).into_response()
}

async fn experiments_json(State(a): State<Arc<Admin>>) -> Response {
    let body = match (&a.experiments, &a.kaizen.experiments) {
        (Some(own), _) => own(),
        (None, Some(x)) => x.status_json(),
        (None, None) => crate::experiments::none_json(),
    };
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the workspace can be read and the state database can take a write.
async fn readyz(State(a): State<Arc<Admin>>) -> Response {
    let a2 = a.clone();
    let problems = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        if let Some(ws) = &a2.workspace
            && let Err(e) = std::fs::read_dir(ws)
        {
            problems.push(format!("workspace {} is not readable: {e}", ws.display()));
        }
        problems.extend(a2.checks.iter().filter_map(|c| c()));
        match &a2.kaizen.store {
            Some(s) => {
                if let Err(e) = s.check_writable() {
                    problems.push(format!("state database {} is not writable: {e}", s.path.display()));
                }
            }
            None => problems.push("the state database could not be opened (see the startup log)".into()),
        }
        problems
    })
    .await
    .unwrap_or_else(|e| vec![format!("readiness check failed: {e}")]);
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string()).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", problems.join("; "))).into_response()
    }
}

pub fn router(admin: Arc<Admin>) -> Router {
    let token = admin.token.clone();
    let dashboard = crate::dashboard::router(admin.dashboard.clone());
    let routes = Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics.json", get(metrics_json))
        .route("/slo.json", get(slo_json))
        .route("/incidents.json", get(incidents_json))
        .route("/experiments.json", get(experiments_json))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(admin)
        .merge(dashboard)
        .merge(crate::profiling::router());
    crate::dashboard::auth::guard(routes, token)
}

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for the admin endpoint"))
}

/// Bind `addr` and serve the admin endpoints on a task of their own.
pub async fn spawn(addr: SocketAddr, admin: Admin) -> Result<()> {
    let listener = bind(addr).await?;
    let admin = Arc::new(admin);
    tokio::spawn(async move {
        if let Err(e) = serve(listener, admin).await {
            tracing::error!("{e:#}");
        }
    });
    Ok(())
}

pub async fn serve(listener: tokio::net::TcpListener, admin: Arc<Admin>) -> Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(
        "admin endpoint on http://{local} (/metrics, /metrics.json, /slo.json, /incidents.json, /healthz, /readyz)"
    );
    eprintln!("gemba: admin on http://{local}");
    eprintln!("gemba: dashboard on http://{local}/ (open it in a browser)");
    let dashboard_streams = admin.dashboard.shutdown.clone();
    let bounds = crate::listen::Bounds::new(crate::listen::ADMIN_MAX_CONNECTIONS);
    crate::listen::serve(listener, router(admin), bounds, "the admin listener", async move {
        crate::shutdown_signal().await;
        dashboard_streams.cancel();
    })
    .await
    .context("admin HTTP server failed")
}
