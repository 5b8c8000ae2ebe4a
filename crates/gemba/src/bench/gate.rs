//! The performance regression gate: `gemba bench --baseline bench/baseline.json`.
//!
//! A quick run measures a few figures, each divided by a reference measured in the same run on
//! the same machine (calamine's own read of the same sheet, a fixed CPU loop, a whole-file
//! rewrite), so a slower or busier machine moves both sides. Each figure is the low end (10th
//! percentile) of many samples, since interference only adds time; a figure that looks more
//! than the threshold worse than the baseline is measured again, and only one that is worse
//! every time fails the gate: noise comes and goes, a regression stays.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{call, cold_reads, id_of, model_fork, ms, start};

/// The 10th percentile: interference on a shared machine only ever adds time, so the low end
/// of many samples is what the code itself costs.
fn low(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 10).copied().unwrap_or(f64::NAN)
}

/// A figure is a regression when it is this much worse than the baseline, every time.
const THRESHOLD: f64 = 0.10;
/// Measurements of a figure that looks worse before the gate believes it.
const ATTEMPTS: usize = 3;

/// A fixed amount of CPU work (hashing 8 MiB), best of 5: the unit the latency figures are
/// expressed in, so they travel between machines of different speed.
fn cpu_reference_ms() -> f64 {
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in &data {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            std::hint::black_box(h);
            ms(t.elapsed())
        })
        .fold(f64::INFINITY, f64::min)
}

/// The figures of one quick run: name → value (lower is better).
async fn measure(dir: &Path, only: Option<&str>) -> Result<Vec<(String, f64)>> {
    let want = |n: &str| only.is_none_or(|o| o == n);
    let mut out = Vec::new();
    let sales = dir.join("sales_100k.xlsx");
    if want("cold_read_vs_calamine") {
        let (cold, cal) = cold_reads(dir, &sales, 3).await?;
        out.push(("cold_read_vs_calamine".into(), low(cold) / low(cal)));
    }
    let (client, _) = start(dir).await?;
    let sales_id = id_of(&client, "sales_100k.xlsx").await?;
    let warm = |tool: &'static str, args: Value, n: usize| {
        let client = &client;
        async move {
            call(client, tool, &args).await?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(ms(call(client, tool, &args).await?.0));
            }
            anyhow::Ok(low(v) / cpu_reference_ms())
        }
    };
    if want("read_table_100_per_cpu") {
        let args = json!({"workbook_id": sales_id, "sheet_name": "Sales", "limit": 100});
        out.push(("read_table_100_per_cpu".into(), warm("read_table", args, 100).await?));
    }
    if want("find_value_per_cpu") {
        let args = json!({"workbook_id": sales_id, "sheet_name": "Sales", "query": "no such value anywhere"});
        out.push(("find_value_per_cpu".into(), warm("find_value", args, 30).await?));
    }
    if want("list_workbooks_per_cpu") {
        out.push(("list_workbooks_per_cpu".into(), warm("list_workbooks", json!({}), 100).await?));
    }
    client.cancel().await.ok();
    if only.is_none_or(|o| o.starts_with("fork")) {
        out.extend(fork_figures(dir, only).await?);
    }
    Ok(out)
}

async fn fork_figures(dir: &Path, only: Option<&str>) -> Result<Vec<(String, f64)>> {
    let want = |n: &str| only.is_none_or(|o| o == n);
    let (client, ws, fork) = model_fork(dir, "gate-scratch").await?;
    let mut out = Vec::new();
    let mut edit = Vec::new();
    let mut eval = Vec::new();
    for round in 0..40 {
        let edits: Vec<String> = (2..102).map(|r| format!("A{r}={}", r + round)).collect();
        edit.push(ms(call(&client, "edit_batch", &json!({"fork_id": fork, "sheet_name": "Calc", "edits": edits}))
            .await?
            .0));
        let (_, r) = call(&client, "recalculate", &json!({"fork_id": fork})).await?;
        if round > 0 {
            eval.push(r.structured_content.as_ref().and_then(|v| v["evaluate_ms"].as_f64()).unwrap_or(f64::NAN));
        }
    }
    let cpu = cpu_reference_ms();
    if want("fork_edit_100_per_cpu") {
        out.push(("fork_edit_100_per_cpu".into(), low(edit) / cpu));
    }
    if want("fork_recalc_per_cpu") {
        out.push(("fork_recalc_per_cpu".into(), low(eval) / cpu));
    }
    if want("fork_save_vs_rewrite") {
        let original = std::fs::read(ws.join("model.xlsx"))?;
        let (mut save, mut full) = (Vec::new(), Vec::new());
        for round in 0..12 {
            let target = format!("out/m{round}.xlsx");
            save.push(ms(call(&client, "save_fork", &json!({"fork_id": fork, "target_path": target})).await?.0));
            full.push(super::forks::full_rewrite(&original, &ws.join(format!("out/full{round}.xlsx")))?);
        }
        out.push(("fork_save_vs_rewrite".into(), low(save) / low(full)));
    }
    client.cancel().await.ok();
    let _ = std::fs::remove_dir_all(&ws);
    Ok(out)
}

/// Run the gate against `baseline`; with `update`, write the figures as the new baseline.
/// Returns whether the gate passed.
pub async fn gate(dir: &Path, baseline: &Path, update: bool) -> Result<bool> {
    let figures = measure(dir, None).await?;
    if update {
        let map: serde_json::Map<String, Value> = figures.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let doc = json!({
            "about": "gemba bench --baseline: figures divided by references measured in the same run (lower is better); regenerate with --update-baseline",
            "threshold": THRESHOLD,
            "figures": map,
        });
        std::fs::write(baseline, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("cannot write {}", baseline.display()))?;
        for (k, v) in &figures {
            println!("{k:28} {v:10.4}");
        }
        println!("baseline written to {}", baseline.display());
        return Ok(true);
    }
    let text = std::fs::read_to_string(baseline).with_context(|| {
        format!("cannot read the baseline {}; create it with --update-baseline", baseline.display())
    })?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", baseline.display()))?;
    let threshold = doc["threshold"].as_f64().unwrap_or(THRESHOLD);
    let mut passed = true;
    println!("{:28} {:>10} {:>10} {:>8}  verdict", "figure", "baseline", "now", "change");
    for (name, first) in figures {
        let Some(base) = doc["figures"][&name].as_f64() else {
            println!("{name:28} {:>10} {first:10.4} {:>8}  new (not in the baseline)", "-", "-");
            continue;
        };
        // A figure that looks worse is measured again: it fails only if it is worse every time.
        let mut best = first;
        let mut attempts = 1;
        while best > base * (1.0 + threshold) && attempts < ATTEMPTS {
            let again = measure(dir, Some(&name)).await?;
            if let Some((_, v)) = again.into_iter().find(|(n, _)| *n == name) {
                best = best.min(v);
            }
            attempts += 1;
        }
        let change = best / base - 1.0;
        let ok = best <= base * (1.0 + threshold);
        passed &= ok;
        println!(
            "{name:28} {base:10.4} {best:10.4} {:>+7.1}%  {}",
            change * 100.0,
            if ok { "ok".to_string() } else { format!("REGRESSION ({attempts} measurements)") }
        );
    }
    println!("{}", if passed { "PASS performance gate" } else { "FAIL performance gate" });
    Ok(passed)
}
