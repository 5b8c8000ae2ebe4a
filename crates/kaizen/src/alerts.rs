//! Alert delivery: every transition goes to the log, and optionally to an Alertmanager-style
//! webhook (the JSON Alertmanager itself sends to receivers), POSTed over plain HTTP.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::json;

use crate::event::AlertEvent;

/// An `http://host:port/path` webhook target, and the service name its messages carry.
#[derive(Debug, Clone)]
pub struct Webhook {
    host: String,
    port: u16,
    path: String,
    service: String,
}

impl Webhook {
    /// A webhook at `url` for alerts of `service` (the `service` label and receiver name).
    pub fn parse(url: &str, service: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("webhook '{url}' must start with http:// (put a TLS proxy in front for https)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("webhook '{url}': bad port '{p}'"))?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("webhook '{url}' has no host"));
        }
        Ok(Self {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            path: path.to_string(),
            service: service.to_string(),
        })
    }

    /// POST the events as one Alertmanager webhook message; errors are returned, never panics.
    pub fn send(&self, events: &[AlertEvent]) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        let body = payload(events, &self.service).to_string();
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("webhook host did not resolve")?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(3))).ok();
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.path,
            self.host,
            self.port,
            body.len(),
            body
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head).map_err(|e| e.to_string())?;
        let status = String::from_utf8_lossy(&head[..n]);
        if status.starts_with("HTTP/1.1 2") || status.starts_with("HTTP/1.0 2") {
            Ok(())
        } else {
            Err(format!("webhook answered: {}", status.lines().next().unwrap_or("")))
        }
    }
}

/// Deliver alert transitions: to the log always, to the webhook when there is one.
pub fn deliver(events: &[AlertEvent], webhook: Option<&Webhook>) {
    for e in events {
        let what = if e.slo.is_empty() { e.alert.clone() } else { format!("{} ({})", e.alert, e.slo) };
        if e.status == "firing" {
            tracing::warn!(severity = %e.severity, runbook = %e.runbook, "alert firing: {what}: {}", e.summary);
        } else {
            tracing::info!("alert resolved: {what}");
        }
    }
    if let Some(w) = webhook
        && let Err(err) = w.send(events)
    {
        tracing::warn!("alert webhook failed: {err}");
    }
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

fn labels(e: &AlertEvent, service: &str) -> serde_json::Value {
    let mut l = json!({"alertname": e.alert, "severity": e.severity, "service": service});
    if !e.slo.is_empty() {
        l["slo"] = json!(e.slo);
        l["tool"] = json!(e.tool);
    }
    l
}

/// The Alertmanager webhook message for these events of `service`.
pub fn payload(events: &[AlertEvent], service: &str) -> serde_json::Value {
    let firing = events.iter().any(|e| e.status == "firing");
    let alerts: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            json!({
                "status": e.status,
                "labels": labels(e, service),
                "annotations": {"summary": e.summary, "runbook_url": e.runbook},
                "startsAt": rfc3339(e.at_secs),
                "endsAt": if e.status == "resolved" { rfc3339(e.at_secs) } else { "0001-01-01T00:00:00Z".to_string() },
                "generatorURL": format!("{service}://alerts"),
            })
        })
        .collect();
    json!({
        "version": "4",
        "status": if firing { "firing" } else { "resolved" },
        "receiver": service,
        "groupLabels": {"service": service},
        "commonLabels": {"service": service},
        "alerts": alerts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_formats_times() {
        let w = Webhook::parse("http://127.0.0.1:9093/hook", "svc").unwrap();
        assert_eq!((w.host.as_str(), w.port, w.path.as_str()), ("127.0.0.1", 9093, "/hook"));
        assert!(Webhook::parse("https://x", "svc").is_err());
        assert!(Webhook::parse("http://:80/", "svc").is_err());
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn delivers_to_a_local_receiver() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alerts", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 8192];
            let n = c.read(&mut buf).unwrap();
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let ev = AlertEvent {
            alert: "SvcSLOBurnRatePage".into(),
            slo: "read_table-availability".into(),
            tool: "read_table".into(),
            severity: "page".into(),
            status: "firing".into(),
            at_secs: 1_700_000_000,
            summary: "s".into(),
            runbook: "docs/runbooks.md#slo-burn-rate".into(),
        };
        Webhook::parse(&url, "svc").unwrap().send(&[ev]).unwrap();
        let got = h.join().unwrap();
        assert!(got.starts_with("POST /alerts HTTP/1.1"));
        assert!(got.contains("\"alertname\":\"SvcSLOBurnRatePage\""));
        assert!(got.contains("\"service\":\"svc\""));
    }
}
