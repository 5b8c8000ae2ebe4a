//! `gemba bench --only traces`: what exporting traces costs. Two servers on the bench
//! workloads, one with `--otlp-endpoint` (every call sampled) sending to a fast local OTLP sink
//! in this process (it reads each POST and answers 200), one without; throughput of eight
//! callers for a fixed time, in alternating rounds, of a near-free call (thousands a second,
//! where the exporter's share is largest) and of a typical read. Bar: ≤ 5 % throughput lost.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::proxy::throughput;
use super::{call, id_of, median, start_with};

/// Rounds per side.
const ROUNDS: usize = 5;

/// A loopback OTLP/HTTP sink: accepts POSTs, counts them and their bytes, answers 200.
fn sink() -> Result<(u16, Arc<AtomicU64>, Arc<AtomicU64>)> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind the OTLP sink")?;
    let port = l.local_addr()?.port();
    let (posts, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (p, b) = (posts.clone(), bytes.clone());
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut req = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            loop {
                let n = c.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&req[..i]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if req.len() >= i + 4 + len {
                        b.fetch_add(len as u64, Ordering::Relaxed);
                        break;
                    }
                }
            }
            p.fetch_add(1, Ordering::Relaxed);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    Ok((port, posts, bytes))
}

pub async fn traces_overhead(dir: &Path, report: &mut serde_json::Map<String, Value>) -> Result<Vec<(String, bool)>> {
    let (port, posts, bytes) = sink()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let (off, _) = start_with(dir, &[]).await?;
    let (on, _) = start_with(dir, &["--otlp-endpoint", &endpoint, "--trace-sample", "1"]).await?;
    let id = id_of(&off, "sales_100k.xlsx").await?;
    let cheap = json!({"workbook_id": id});
    let read = json!({"workbook_id": id, "sheet_name": "Sales", "limit": 100});
    let mut figures = Vec::new();
    let mut loss_cheap = f64::NAN;
    for (name, args) in [("list_sheets", &cheap), ("read_table", &read)] {
        for c in [&off, &on] {
            for _ in 0..20 {
                call(c, name, args).await?;
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..ROUNDS {
            if i % 2 == 0 {
                a.push(throughput(&off, name, args).await.0);
                b.push(throughput(&on, name, args).await.0);
            } else {
                b.push(throughput(&on, name, args).await.0);
                a.push(throughput(&off, name, args).await.0);
            }
        }
        let (ra, rb) = (median(a), median(b));
        let loss = 1.0 - rb / ra;
        if name == "list_sheets" {
            loss_cheap = loss;
        }
        outln!(
            "{name} throughput, 8 callers, {ROUNDS} alternating rounds: traces off {ra:.0}/s, on (sample 1, OTLP to a local sink) {rb:.0}/s; {:.1} % lower",
            loss * 100.0
        );
        figures.push(json!({"tool": name, "off_per_s": ra, "on_per_s": rb, "throughput_loss": loss}));
    }
    // The last batch is at most one flush interval away.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let (np, nb) = (posts.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    outln!("OTLP sink received {np} POSTs, {:.1} MB of spans", nb as f64 / 1e6);
    report.insert("traces".into(), json!({"throughput": figures, "sink_posts": np, "sink_bytes": nb}));
    off.cancel().await.ok();
    on.cancel().await.ok();
    Ok(vec![
        ("exporting traces (sample 1) costs <= 5 % of list_sheets throughput".to_string(), loss_cheap <= 0.05),
        ("the OTLP sink received spans".to_string(), np > 0),
    ])
}
