//! `gemba bench --only profile`: the cost of a CPU profile at 100 Hz. One server, the read mix
//! from four concurrent callers over stdio, in windows of a fixed length, alternately with and
//! without a `/debug/pprof/profile` running on its admin listener; the medians of the two
//! throughputs are compared (≤ 5 % lower while profiling).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

use super::{Client, free_port, http_get, id_of, median, start_with};

/// One measured window.
const WINDOW: Duration = Duration::from_secs(2);
/// Concurrent callers.
const CALLERS: usize = 4;
/// Windows of each kind.
const ROUNDS: usize = 6;

/// The read mix of examples/loadtest/gemba-reads.toml, as (tool, arguments, weight).
fn read_mix(id: &str) -> Vec<(&'static str, Value)> {
    let table = json!({"workbook_id": id, "sheet_name": "Sales", "limit": 100});
    let mut mix = vec![("read_table", table); 6];
    mix.extend(vec![("list_sheets", json!({"workbook_id": id})); 2]);
    mix.push(("find_value", json!({"workbook_id": id, "query": "North", "limit": 10})));
    mix.push(("list_workbooks", json!({})));
    mix
}

/// Calls per second the callers complete in one window.
async fn window(client: &Client, mix: &Arc<Vec<(&'static str, Value)>>) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let (peer, mix, stop, done) = (client.peer().clone(), mix.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let (tool, args) = &mix[i % mix.len()];
                let p = CallToolRequestParams::new(*tool).with_arguments(args.as_object().cloned().unwrap_or_default());
                match peer.call_tool(p).await {
                    Ok(r) if r.is_error != Some(true) => done.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => anyhow::bail!("{tool} returned an error: {:?}", r.content),
                    Err(e) => anyhow::bail!("{tool} failed: {e}"),
                };
                i += 1;
            }
            Ok(())
        }));
    }
    let t = std::time::Instant::now();
    tokio::time::sleep(WINDOW).await;
    let n = done.load(Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.context("a caller panicked")??;
    }
    Ok(n as f64 / secs)
}

pub async fn profile_overhead(dir: &Path, report: &mut serde_json::Map<String, Value>) -> Result<Vec<(String, bool)>> {
    let admin = format!("127.0.0.1:{}", free_port()?);
    let (client, _) = start_with(dir, &["--admin", &admin]).await?;
    let id = id_of(&client, "sales_100k.xlsx").await?;
    let mix = Arc::new(read_mix(&id));
    window(&client, &mix).await?; // warm-up: the sheet loaded, caches filled
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let profile_path = format!("/debug/pprof/profile?seconds={}&hz=100", WINDOW.as_secs() + 1);
    for round in 0..ROUNDS * 2 {
        // Alternate which kind goes first in each pair so drift falls on both.
        let profiled = (round % 2 == 0) == (round / 2 % 2 == 0);
        if profiled {
            let admin = admin.clone();
            let path = profile_path.clone();
            let fetch = tokio::spawn(async move { http_get(&admin, &path).await });
            tokio::time::sleep(Duration::from_millis(200)).await;
            on.push(window(&client, &mix).await?);
            let (_, bytes) = fetch.await.context("the profile fetch panicked")??;
            anyhow::ensure!(bytes > 200, "the profile answer was only {bytes} bytes");
        } else {
            off.push(window(&client, &mix).await?);
        }
    }
    client.cancel().await.ok();
    let (m_on, m_off) = (median(on), median(off));
    let ratio = m_on / m_off;
    outln!(
        "read mix, {CALLERS} callers over stdio, {ROUNDS} alternating {}-s windows each: {m_off:.0} calls/s without a \
         profile, {m_on:.0} calls/s with a CPU profile at 100 Hz; ratio {ratio:.3} ({:+.1} %)",
        WINDOW.as_secs(),
        (ratio - 1.0) * 100.0
    );
    report.insert("profile_off_calls_per_s".into(), json!(m_off));
    report.insert("profile_on_calls_per_s".into(), json!(m_on));
    report.insert("profile_throughput_ratio".into(), json!(ratio));
    Ok(vec![("CPU profile at 100 Hz costs <= 5 % throughput".into(), ratio >= 0.95)])
}
