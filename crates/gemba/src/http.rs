//! Streamable HTTP: rmcp's service at /mcp behind a bearer-token check, with Host/Origin
//! allowlists (DNS-rebinding protection, loopback by default) and a request body limit.

use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::measure::Measured;
use crate::server::GembaServer;

const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
const LOOPBACK_ORIGINS: [&str; 3] = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];

async fn require_token(token: Arc<str>, req: Request, next: Next) -> Response {
    if crate::bearer::carries(req.headers(), &token) {
        return next.run(req).await;
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token: send `Authorization: Bearer <token>` (the server's --token / GEMBA_TOKEN)\n",
    )
        .into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gemba\""));
    r
}

/// A 413 says which limit, and how to get past it (the transport's own text names neither);
/// `who` is the program (`gemba serve`, `gemba proxy`).
pub async fn too_large_says_why(r: Response, who: &'static str, max: usize) -> Response {
    if r.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return r;
    }
    let why = format!(
        "the request body is over {max} bytes, the most {who} reads in one request (--max-body-bytes); send less, or start it with a larger --max-body-bytes\n"
    );
    (StatusCode::PAYLOAD_TOO_LARGE, why).into_response()
}

/// What rmcp's transport answers a body it cannot read as a JSON-RPC message with: 415 and this
/// text before serde's error (as if the media type were wrong, which has a text of its own).
const UNREADABLE_BODY: &str = "fail to deserialize request body ";

/// A body that is not JSON, or JSON that is no JSON-RPC message, gets what the JSON-RPC and MCP
/// specifications say: 400, with a JSON-RPC error (-32700, or -32600) that says what was wrong,
/// where rmcp answers 415 with plain text.
pub async fn unreadable_body_says_why(r: Response) -> Response {
    if r.status() != StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return r;
    }
    let (parts, body) = r.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (parts.status, "the request body cannot be read\n").into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let Some(error) = text.strip_prefix(UNREADABLE_BODY) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let shape = [
        "missing field",
        "unknown variant",
        "invalid type",
        "invalid value",
        "unknown field",
        "did not match",
        "JSON-RPC message",
    ];
    let (code, message) = if shape.iter().any(|s| error.contains(s)) {
        (
            -32600,
            format!(
                "Invalid Request: the body is JSON but no JSON-RPC message ({error}); send one object with \"jsonrpc\": \"2.0\", a \"method\" and, for a request, an \"id\""
            ),
        )
    } else {
        (-32700, format!("Parse error: the body is not JSON ({error}); send one JSON-RPC message as UTF-8 JSON"))
    };
    let body = serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

pub fn router(server: Measured<GembaServer>, cfg: &ServeConfig, ct: CancellationToken) -> Router {
    let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|s| s.to_string()).collect();
    hosts.extend(cfg.allowed_hosts.iter().cloned());
    let mut origins: Vec<String> = LOOPBACK_ORIGINS.iter().map(|s| s.to_string()).collect();
    origins.extend(cfg.allowed_origins.iter().cloned());
    let http_cfg = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .with_max_request_body_bytes(cfg.max_body_bytes)
        // A request that runs statelessly (the 2026-07-28 era) and answers with nothing but its
        // result gets it as one JSON body instead of an event stream; progress or log messages
        // before the result still switch the answer to a stream.
        .with_json_response(true)
        .with_cancellation_token(ct);
    let service = StreamableHttpService::new(
        move || Ok(server.new_session()),
        Arc::new(LocalSessionManager::default()),
        http_cfg,
    );
    let max = cfg.max_body_bytes;
    let mut app = Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::map_response(move |r: Response| too_large_says_why(r, "gemba serve", max)))
        .layer(middleware::map_response(unreadable_body_says_why));
    if let Some(t) = &cfg.token {
        let token: Arc<str> = Arc::from(t.as_str());
        app = app.layer(middleware::from_fn(move |req, next| require_token(token.clone(), req, next)));
    }
    app
}

pub async fn serve(server: Measured<GembaServer>, cfg: &ServeConfig) -> Result<()> {
    let addr = cfg.http.context("no HTTP address")?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let ct = CancellationToken::new();
    let app = router(server, cfg, ct.clone());
    tracing::info!("gemba listening on http://{local}/mcp (workspace {})", cfg.workspace.display());
    // A line on stderr that scripts can wait for, with the real port (for --http 127.0.0.1:0).
    eprintln!("gemba: listening on http://{local}/mcp");
    let bounds = crate::listen::Bounds::new(cfg.max_connections);
    crate::listen::serve(listener, app, bounds, "MCP over HTTP", async move {
        crate::shutdown_signal().await;
        ct.cancel();
    })
    .await
    .context("HTTP server failed")
}
