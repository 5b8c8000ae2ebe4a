//! Cold-path figures of `gemba bench`: a big sheet's first page and full load through a fresh
//! server, its memory (resident after the load, peak during it, bytes of model per cell), and
//! the same run's references — the time to inflate the sheet's XML and calamine's own read —
//! so the figures can be read as ratios on a busy machine.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{calamine_read, call, id_of, median, ms, rss_bytes, start_with};

/// The sheet part of the single-sheet sales workloads.
const SALES_PART: &str = "xl/worksheets/sheet1.xml";

/// One workload measured: its file, its data rows, and the bars that apply to it.
struct Big {
    file: &'static str,
    rows: u32,
    /// Full load from the first call, in ms.
    load_bar_ms: f64,
    /// Resident memory of the server with the sheet loaded.
    rss_bar_bytes: u64,
}

const BIGS: [Big; 2] = [
    Big { file: "sales_100k.xlsx", rows: 100_000, load_bar_ms: 350.0, rss_bar_bytes: 45_000_000 },
    Big { file: "sales_500k.xlsx", rows: 500_000, load_bar_ms: 1_800.0, rss_bar_bytes: 100_000_000 },
];

/// Make sure the 500k-row workload exists (it is large: generated on first use only).
pub fn ensure_500k(dir: &Path) -> Result<()> {
    let path = dir.join("sales_500k.xlsx");
    if !path.exists() {
        eprintln!("generating {} ...", path.display());
        let t = Instant::now();
        super::workloads::write_sales_book(&path, 500_000, 5)?;
        eprintln!("generated in {:.1}s", t.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Inflate one part of a zip file into nothing: the floor any reader of that part pays.
fn inflate(path: &Path, part: &str) -> Result<Duration> {
    let bytes = std::fs::read(path)?;
    let t = Instant::now();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..]))?;
    let mut f = zip.by_name(part)?;
    let mut buf = vec![0u8; 1 << 18];
    let mut n = 0usize;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k;
    }
    std::hint::black_box(n);
    Ok(t.elapsed())
}

/// Peak resident memory of a process so far.
fn hwm_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The model of a sheet, loaded in this process: (non-empty cells, bytes of the cells alone,
/// bytes of its unique strings and everything else).
fn model_bytes(dir: &Path, file: &str) -> Result<(usize, usize, usize)> {
    let engine = sheets::Engine::new(dir, sheets::EngineConfig::default())?;
    let path = dir.join(file);
    let id = engine
        .workspace
        .list()
        .iter()
        .find(|e| e.abs_path == path)
        .map(|e| e.id.clone())
        .with_context(|| format!("{file} not in the workspace"))?;
    let budget = sheets::Budget::unlimited();
    let wb = engine.workbook(&id, &budget)?;
    let s = engine.sheet(&wb, Some("Sales"), &budget)?;
    Ok((s.cell_count(), s.cell_bytes(), s.heap_bytes() - s.cell_bytes()))
}

/// One fresh server: the first page (100 rows) of `big`, then a read of its last rows (the
/// whole sheet), both timed from the first call; resident memory before, after, and at peak.
struct ColdRun {
    first_ms: f64,
    full_ms: f64,
    partial: bool,
    rss_before: u64,
    rss_after: u64,
    hwm: u64,
}

async fn cold_run(dir: &Path, big: &Big) -> Result<ColdRun> {
    // A previous build may take far longer than the default budgets.
    let (client, pid) = start_with(dir, &["--timeout-ms", "300000", "--load-timeout-ms", "300000"]).await?;
    let id = id_of(&client, big.file).await?;
    let rss_before = rss_bytes(pid).unwrap_or(0);
    let t = Instant::now();
    let (_, r) =
        call(&client, "sheet_page", &json!({"workbook_id": id, "sheet_name": "Sales", "page_size": 100})).await?;
    let first_ms = ms(t.elapsed());
    let partial = r.structured_content.as_ref().is_some_and(|v| v.get("partial").is_some_and(|p| p != &Value::Null));
    let last = big.rows + 2;
    let range = format!("A{}:L{last}", last - 9);
    call(&client, "range_values", &json!({"workbook_id": id, "sheet_name": "Sales", "ranges": [range]})).await?;
    let full_ms = ms(t.elapsed());
    let run = ColdRun {
        first_ms,
        full_ms,
        partial,
        rss_before,
        rss_after: rss_bytes(pid).unwrap_or(0),
        hwm: hwm_bytes(pid).unwrap_or(0),
    };
    client.cancel().await.ok();
    Ok(run)
}

/// The cold-path figures and their bars.
pub async fn loads(
    dir: &Path,
    runs: usize,
    report: &mut serde_json::Map<String, Value>,
) -> Result<Vec<(String, bool)>> {
    ensure_500k(dir)?;
    let mut bars = Vec::new();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    outln!(
        "cold path ({cores} cores; load average {})",
        load_avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    for big in &BIGS {
        let path = dir.join(big.file);
        let (mut inf, mut cal, mut first, mut full, mut rss, mut peak, mut idle) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut partial = false;
        // Alternate the references and the server so both see the same machine state.
        for _ in 0..runs.max(1) {
            inf.push(ms(inflate(&path, SALES_PART)?));
            cal.push(ms(calamine_read(&path, "Sales")?));
            let r = cold_run(dir, big).await?;
            first.push(r.first_ms);
            full.push(r.full_ms);
            rss.push(r.rss_after as f64);
            idle.push(r.rss_before as f64);
            // The transient peak of the load against what it leaves behind.
            let grown = r.rss_after.saturating_sub(r.rss_before).max(1) as f64;
            peak.push(r.hwm.saturating_sub(r.rss_before) as f64 / grown);
            partial |= r.partial;
        }
        let (inf, cal, first, full, rss, peak, idle) =
            (median(inf), median(cal), median(first), median(full), median(rss), median(peak), median(idle));
        let (cells, cell_bytes, other_bytes) = model_bytes(dir, big.file)?;
        let per_cell = cell_bytes as f64 / cells.max(1) as f64;
        let key = big.file.trim_end_matches(".xlsx");
        outln!(
            "{key}: first 100 rows cold {first:.1} ms{}; full load {full:.1} ms; inflate its XML {inf:.1} ms (full/inflate {:.2}); calamine alone {cal:.1} ms (full/calamine {:.2})",
            if partial { " (partial view)" } else { "" },
            full / inf,
            full / cal
        );
        outln!(
            "{key}: RSS with it loaded {:.1} MB (before the first call {:.1} MB); load peak {peak:.2}x what it leaves; model (this build) {cells} cells, {per_cell:.2} bytes per cell + {:.2} MB strings, formulas and the rest",
            rss / 1e6,
            idle / 1e6,
            other_bytes as f64 / 1e6
        );
        report.insert(
            format!("cold_{key}"),
            json!({
                "runs": runs.max(1), "first_page_ms": first, "full_load_ms": full, "inflate_ms": inf,
                "calamine_ms": cal, "full_over_inflate": full / inf, "full_over_calamine": full / cal,
                "rss_loaded_bytes": rss, "rss_before_bytes": idle, "peak_over_final": peak, "cells": cells,
                "cell_bytes": cell_bytes, "bytes_per_cell": per_cell, "other_bytes": other_bytes,
                "partial_first_page": partial,
            }),
        );
        let bar_ms = big.load_bar_ms;
        bars.push((
            format!("{key} full load <= {bar_ms:.0} ms (or <= 1.35 x inflating its XML)"),
            full <= bar_ms || full <= 1.35 * inf,
        ));
        bars.push((
            format!("{key} RSS with it loaded <= {:.0} MB", big.rss_bar_bytes as f64 / 1e6),
            rss as u64 <= big.rss_bar_bytes,
        ));
        bars.push((format!("{key} model <= 12 bytes per non-empty cell"), per_cell <= 12.0));
        bars.push((format!("{key} load peak <= 2 x its final size"), peak <= 2.0));
        if big.rows == 100_000 {
            bars.push(("sales_100k first 100 rows cold <= 100 ms".into(), first <= 100.0));
        }
    }
    Ok(bars)
}
