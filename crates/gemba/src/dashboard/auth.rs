//! The admin token: when `--admin-token` is set, every admin route but `/healthz` and `/readyz`
//! requires it. A script or Prometheus sends `Authorization: Bearer <token>`; a browser signs in
//! once (the form at `/`, or `/?token=…` from a link) and gets an HttpOnly, SameSite=Strict
//! cookie, so no page embeds the token and the dashboard's stream (EventSource sends cookies)
//! works without it in any URL.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The cookie a signed-in browser sends.
pub const COOKIE: &str = "gemba_admin";
/// Where the sign-in form posts.
pub const LOGIN_PATH: &str = "/login";
/// Largest sign-in form body read.
const MAX_FORM_BYTES: usize = 4096;

/// An exposed admin listener needs a token: refuse a non-loopback `--admin` without one.
pub fn check_exposure(admin: Option<SocketAddr>, token: Option<&str>) -> anyhow::Result<()> {
    match admin {
        Some(addr) if !addr.ip().is_loopback() && token.is_none() => anyhow::bail!(
            "the admin listener {addr} is not a loopback address, and it serves the dashboard and metrics: \
             pass --admin-token TOKEN (or set GEMBA_ADMIN_TOKEN) so they require it, or listen on 127.0.0.1"
        ),
        _ => Ok(()),
    }
}

fn bearer(req: &Request) -> Option<&str> {
    crate::bearer::token(req.headers())
}

fn cookie(req: &Request) -> Option<&str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The value of `name` in a URL-encoded query or form body, decoded.
pub fn form_value(text: &str, name: &str) -> Option<String> {
    text.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn signed_in_cookie(token: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/")).ok()
}

/// A redirect to the dashboard that signs the browser in.
fn sign_in(token: &str) -> Response {
    let mut r = (StatusCode::SEE_OTHER, "signed in\n").into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Some(c) = signed_in_cookie(token) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

const LOGIN_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Gemba — sign in</title><link rel="icon" href="data:,">
<style>body{font:16px system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#1b1b1b}
label,input,button{display:block;font:inherit;margin:.5rem 0}input{width:100%;padding:.5rem;box-sizing:border-box}
button{padding:.5rem 1rem}p.err{color:#8a1c00}</style></head>
<body><h1>Gemba dashboard</h1>
<p>This admin listener requires its token (the server's <code>--admin-token</code> or <code>GEMBA_ADMIN_TOKEN</code>).</p>
__ERROR__
<form method="post" action="/login"><label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button type="submit">Sign in</button></form></body></html>
"#;

fn login_page(error: bool) -> Response {
    let body = LOGIN_PAGE.replace(
        "__ERROR__",
        if error { "<p class=\"err\" role=\"alert\">That token is not the admin token.</p>" } else { "" },
    );
    let mut r = (StatusCode::UNAUTHORIZED, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gemba-admin\""));
    r
}

fn unauthorized() -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "the admin listener requires its token: send `Authorization: Bearer <token>` (the server's --admin-token), \
         or sign in at / in a browser\n",
    )
        .into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gemba-admin\""));
    r
}

/// Routes open without the token: health checks, for probes that hold no secret.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// The admin routes with the sign-in route, and, when a token is set, the check in front of all
/// but the health checks (routes added to `routes` before this call are all guarded).
pub fn guard(routes: axum::Router, token: Option<String>) -> axum::Router {
    match token {
        Some(t) => {
            let token: Arc<str> = Arc::from(t.as_str());
            routes
                .route(LOGIN_PATH, axum::routing::post(to_dashboard))
                .layer(axum::middleware::from_fn(move |req, next| require(token.clone(), req, next)))
        }
        None => routes.route(LOGIN_PATH, axum::routing::get(login_without_token)),
    }
}

/// The middleware: let through requests that carry the token (header or cookie), sign browsers
/// in, and answer everything else 401 (the page at `/` with a sign-in form).
pub async fn require(token: Arc<str>, req: Request, next: Next) -> Response {
    let ok = |t: &str| crate::bearer::matches(&token, t);
    let path = req.uri().path();
    if OPEN_PATHS.contains(&path) {
        return next.run(req).await;
    }
    if path == LOGIN_PATH && req.method() == Method::POST {
        let body = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES).await.unwrap_or_default();
        let given = form_value(&String::from_utf8_lossy(&body), "token").unwrap_or_default();
        return if ok(given.trim()) { sign_in(&token) } else { login_page(true) };
    }
    if bearer(&req).is_some_and(ok) || cookie(&req).is_some_and(ok) {
        return next.run(req).await;
    }
    if path == "/" {
        if let Some(given) = req.uri().query().and_then(|q| form_value(q, "token")) {
            return if ok(given.trim()) { sign_in(&token) } else { login_page(true) };
        }
        return login_page(false);
    }
    unauthorized()
}

/// The sign-in route's own handler (the middleware answers the form before it): back to the page.
pub async fn to_dashboard() -> Response {
    let mut r = (StatusCode::SEE_OTHER, "\n").into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
    r
}

/// Without a token configured the sign-in route only says so.
pub async fn login_without_token() -> Response {
    let mut r = Response::new(Body::from("this admin listener needs no token: open /\n"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_admin_needs_a_token() {
        let any: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let err = check_exposure(Some(any), None).unwrap_err().to_string();
        assert!(err.contains("--admin-token"), "{err}");
        assert!(check_exposure(Some(any), Some("t")).is_ok());
        assert!(check_exposure(Some(lo), None).is_ok());
        assert!(check_exposure(Some("[::1]:1".parse().unwrap()), None).is_ok());
        assert!(check_exposure(None, None).is_ok());
    }

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(form_value("a=1&token=s%2Fe+cr%3Dt", "token").as_deref(), Some("s/e cr=t"));
        assert_eq!(form_value("token=abc%", "token").as_deref(), Some("abc%"));
        assert_eq!(form_value("token=%zz", "token").as_deref(), Some("%zz"));
        assert_eq!(form_value("x=1", "token"), None);
    }
}
