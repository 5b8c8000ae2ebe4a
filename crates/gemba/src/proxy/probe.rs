//! Learning an upstream's tools at start: a short session of the proxy's own (a separate
//! process, or a separate HTTP session) that lists the tools and ends. The names become the
//! recorder's operations; the input schemas' `x-mcp-header` annotations are what the 2026-era
//! HTTP headers of a `tools/call` are made from.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::child::ChildSpec;
use super::http_up::{HttpTarget, post_once};
use super::lines::{Line, LineReader};

/// Most pages of `tools/list` followed.
const MAX_PAGES: usize = 20;

/// A tool as the proxy needs it.
#[derive(Debug, Clone, Default)]
pub struct ToolInfo {
    pub name: String,
    /// `(argument path, header name)` for arguments promoted to `Mcp-Param-*` headers.
    pub header_params: super::http_up::HeaderParams,
}

fn init_request(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "gemba-proxy-probe", "version": env!("CARGO_PKG_VERSION")}
    }})
}

fn list_request(id: u64, cursor: Option<&str>, modern: bool) -> Value {
    let mut params = json!({});
    if let Some(c) = cursor {
        params["cursor"] = json!(c);
    }
    if modern {
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "gemba-proxy-probe", "version": env!("CARGO_PKG_VERSION")},
            "io.modelcontextprotocol/clientCapabilities": {}
        });
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params})
}

/// Tools from one `tools/list` result, and its next cursor.
fn parse_page(result: &Value, out: &mut Vec<ToolInfo>) -> Option<String> {
    for t in result["tools"].as_array().into_iter().flatten() {
        if let Some(name) = t["name"].as_str() {
            let mut header_params = Vec::new();
            collect_headers(&t["inputSchema"], &mut Vec::new(), &mut header_params);
            out.push(ToolInfo { name: name.to_string(), header_params });
        }
    }
    result["nextCursor"].as_str().filter(|c| !c.is_empty()).map(str::to_string)
}

/// `x-mcp-header` annotations along `properties` chains.
fn collect_headers(schema: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return };
    for (name, sub) in props {
        path.push(name.clone());
        if let Some(h) = sub.get("x-mcp-header").and_then(Value::as_str).filter(|h| !h.is_empty()) {
            out.push((path.clone(), h.to_string()));
        }
        if path.len() < 8 {
            collect_headers(sub, path, out);
        }
        path.pop();
    }
}

/// A small line-based session with a process: send requests, read their answers (answering
/// any request of the server's with "not supported" so it does not wait on the probe).
struct ProbeSession {
    stdin: tokio::process::ChildStdin,
    stdout: LineReader<tokio::process::ChildStdout>,
}

impl ProbeSession {
    async fn call(&mut self, req: Value) -> Result<Value> {
        let id = req["id"].clone();
        let mut line = req.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.context("cannot write to the upstream")?;
        loop {
            let buf = match self.stdout.next().await? {
                Line::Eof => bail!("the upstream closed its output (did it exit?)"),
                Line::TooLong(_) => continue,
                Line::Message(m) => m,
            };
            let Ok(v) = serde_json::from_slice::<Value>(&buf) else { continue };
            if v.get("method").is_some() {
                if let Some(rid) = v.get("id") {
                    let answer = json!({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "not supported by the gemba proxy's probe"}});
                    let mut l = answer.to_string();
                    l.push('\n');
                    let _ = self.stdin.write_all(l.as_bytes()).await;
                }
                continue;
            }
            if v.get("id") == Some(&id) {
                return Ok(v);
            }
        }
    }

    async fn notify(&mut self, method: &str) -> Result<()> {
        let mut line = json!({"jsonrpc": "2.0", "method": method}).to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.context("cannot write to the upstream")
    }
}

/// List a stdio upstream's tools with a process of its own.
pub async fn child_tools(spec: &ChildSpec, timeout: Duration) -> Result<Vec<ToolInfo>> {
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the upstream `{}`", spec.display()))?;
    let (Some(stdin), Some(stdout), Some(mut stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        bail!("the upstream started without pipes");
    };
    // Keep the end of its stderr for the error message.
    let tail = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&chunk[..n]);
            if all.len() > 8192 {
                all.drain(..all.len() - 4096);
            }
        }
        String::from_utf8_lossy(&all).trim().to_string()
    });
    let mut s = ProbeSession { stdin, stdout: LineReader::new(stdout, 64 << 20) };
    let listing = tokio::time::timeout(timeout, async {
        let init = s.call(init_request(1)).await?;
        let modern = init.get("error").is_some();
        if !modern {
            s.notify("notifications/initialized").await?;
        }
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0..MAX_PAGES {
            let r = s.call(list_request(2 + page as u64, cursor.as_deref(), modern)).await?;
            if let Some(e) = r.get("error") {
                bail!("tools/list failed: {e}");
            }
            cursor = parse_page(&r["result"], &mut tools);
            if cursor.is_none() {
                break;
            }
        }
        Ok::<_, anyhow::Error>(tools)
    })
    .await;
    drop(s);
    if tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
    let err_tail = tokio::time::timeout(Duration::from_secs(1), tail).await.ok().and_then(|r| r.ok());
    let with_stderr = |e: anyhow::Error| match err_tail.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => e.context(format!(
            "its stderr ended with: {}",
            t.chars().rev().take(600).collect::<Vec<_>>().into_iter().rev().collect::<String>()
        )),
        None => e,
    };
    match listing {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(with_stderr(e)),
        Err(_) => Err(with_stderr(anyhow::anyhow!("no tools/list answer within {} s", timeout.as_secs()))),
    }
}

/// List an HTTP upstream's tools with a session of its own.
pub async fn http_tools(target: &HttpTarget, timeout: Duration) -> Result<Vec<ToolInfo>> {
    tokio::time::timeout(timeout, async {
        let (init, session) = post_once(target, &init_request(1), None, None).await?;
        let modern = init.get("error").is_some();
        let version = if modern {
            "2026-07-28".to_string()
        } else {
            init["result"]["protocolVersion"].as_str().unwrap_or("2025-11-25").to_string()
        };
        if !modern {
            let _ = post_once(
                target,
                &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                session.as_deref(),
                Some(&version),
            )
            .await;
        }
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0..MAX_PAGES {
            let (r, _) = post_once(
                target,
                &list_request(2 + page as u64, cursor.as_deref(), modern),
                session.as_deref(),
                Some(&version),
            )
            .await?;
            if let Some(e) = r.get("error") {
                bail!("tools/list failed: {e}");
            }
            cursor = parse_page(&r["result"], &mut tools);
            if cursor.is_none() {
                break;
            }
        }
        if let Some(sid) = &session {
            target.delete_session(sid).await;
        }
        Ok(tools)
    })
    .await
    .map_err(|_| anyhow::anyhow!("no tools/list answer within {} s", timeout.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_header_annotations() {
        let page = json!({"tools": [
            {"name": "echo", "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}}},
            {"name": "weather", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "where": {"type": "object", "properties": {"city": {"type": "string", "x-mcp-header": "City"}}}
            }}}
        ], "nextCursor": "p2"});
        let mut out = Vec::new();
        assert_eq!(parse_page(&page, &mut out).as_deref(), Some("p2"));
        assert_eq!(out.len(), 2);
        assert!(out[0].header_params.is_empty());
        let mut h = out[1].header_params.clone();
        h.sort();
        assert_eq!(
            h,
            vec![
                (vec!["region".to_string()], "Region".to_string()),
                (vec!["where".into(), "city".into()], "City".into())
            ]
        );
        assert_eq!(parse_page(&json!({"tools": []}), &mut out), None);
    }
}
