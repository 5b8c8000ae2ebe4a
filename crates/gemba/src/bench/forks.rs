//! Fork benchmarks on the `model` workload (~8,000 formulas) over stdio: `edit_batch` of 100
//! cells, full in-process recalculation, and `save_fork` against the time to write the same
//! file (its bytes written and fsynced; and a whole-file rewrite, every part recompressed).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde_json::{Value, json};

use super::{call, median, model_fork, ms};

fn number(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Write `bytes` to a new file and fsync it: the floor for any save.
fn plain_write(path: &Path, bytes: &[u8]) -> Result<f64> {
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(ms(t.elapsed()))
}

/// Rewrite a whole xlsx: every part decompressed and compressed again, written and fsynced —
/// what saving costs for a writer that does not patch.
pub(super) fn full_rewrite(src: &[u8], path: &Path) -> Result<f64> {
    let t = Instant::now();
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(src))?;
    let f = std::fs::File::create(path)?;
    let mut zout = zip::ZipWriter::new(std::io::BufWriter::new(f));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut buf = Vec::new();
    for i in 0..zin.len() {
        let mut part = zin.by_index(i)?;
        let name = part.name()?.to_string();
        buf.clear();
        part.read_to_end(&mut buf)?;
        zout.start_file(name, opts)?;
        zout.write_all(&buf)?;
    }
    let w = zout.finish()?;
    w.into_inner().map_err(|e| anyhow::anyhow!("flush failed: {e}"))?.sync_all()?;
    Ok(ms(t.elapsed()))
}

pub async fn forks(
    dir: &Path,
    warm: usize,
    report: &mut serde_json::Map<String, Value>,
) -> Result<Vec<(String, bool)>> {
    let (client, ws, fork) = model_fork(dir, "forks-scratch").await?;

    // edit_batch of 100 cells (Calc!A2:A101), a new value each round.
    let mut edit = Vec::new();
    for round in 0..warm.max(5) {
        let edits: Vec<String> = (2..102).map(|r| format!("A{r}={}", r + round)).collect();
        let (d, _) =
            call(&client, "edit_batch", &json!({"fork_id": fork, "sheet_name": "Calc", "edits": edits})).await?;
        edit.push(ms(d));
    }
    let edit_ms = median(edit);

    // Full recalculation in process: the first run loads the engine's model; then each round
    // changes one input and recalculates everything.
    let (first, r) = call(&client, "recalculate", &json!({"fork_id": fork})).await?;
    let first_report = r.structured_content.unwrap_or_default();
    let formulas = number(&first_report, "formulas");
    let (mut eval, mut call_ms) = (Vec::new(), Vec::new());
    for round in 0..warm.max(5) {
        let edits = [format!("B3={}", 1000 + round)];
        call(&client, "edit_batch", &json!({"fork_id": fork, "sheet_name": "Inputs", "edits": edits})).await?;
        let (d, r) = call(&client, "recalculate", &json!({"fork_id": fork})).await?;
        let rep = r.structured_content.unwrap_or_default();
        eval.push(number(&rep, "evaluate_ms"));
        call_ms.push(ms(d));
    }
    let (eval_ms, recalc_call_ms) = (median(eval), median(call_ms));

    // save_fork vs writing the same file.
    let (mut save, mut plain, mut full) = (Vec::new(), Vec::new(), Vec::new());
    let (mut build, mut write) = (Vec::new(), Vec::new());
    let original = std::fs::read(ws.join("model.xlsx"))?;
    for round in 0..warm.clamp(5, 15) {
        let target = format!("out/model-{round}.xlsx");
        let (d, r) = call(&client, "save_fork", &json!({"fork_id": fork, "target_path": target})).await?;
        save.push(ms(d));
        let out = r.structured_content.unwrap_or_default();
        build.push(number(&out, "build_ms"));
        write.push(number(&out, "write_ms"));
        let bytes = std::fs::read(ws.join(&target))?;
        plain.push(plain_write(&ws.join(format!("out/plain-{round}.bin")), &bytes)?);
        full.push(full_rewrite(&original, &ws.join(format!("out/full-{round}.xlsx")))?);
    }
    client.cancel().await.ok();
    let (save_ms, plain_ms, full_ms) = (median(save), median(plain), median(full));
    let (build_ms, write_ms) = (median(build), median(write));
    let _ = std::fs::remove_dir_all(&ws);

    outln!("\nforks on model.xlsx ({formulas} formulas)");
    outln!("  edit_batch 100 cells, p50:                 {edit_ms:8.2} ms");
    outln!(
        "  recalculate, first (engine load + eval):   {:8.1} ms (load {:.1} ms, evaluate {:.1} ms)",
        ms(first),
        number(&first_report, "load_ms"),
        number(&first_report, "evaluate_ms")
    );
    outln!("  recalculate in process, evaluate p50:      {eval_ms:8.2} ms (whole call {recalc_call_ms:.2} ms)");
    outln!(
        "  save_fork p50: {save_ms:.2} ms; writing the file: {plain_ms:.2} ms (bytes+fsync), {full_ms:.2} ms (whole-file rewrite); ratios {:.2} / {:.2}",
        save_ms / plain_ms,
        save_ms / full_ms
    );
    outln!("    (inside save_fork: building the file {build_ms:.2} ms, writing it {write_ms:.2} ms)");
    report.insert(
        "forks".into(),
        json!({
            "formulas": formulas,
            "edit_batch_100_p50_ms": edit_ms,
            "recalc_first_ms": ms(first),
            "recalc_engine_load_ms": number(&first_report, "load_ms"),
            "recalc_evaluate_p50_ms": eval_ms,
            "recalc_call_p50_ms": recalc_call_ms,
            "save_fork_p50_ms": save_ms,
            "save_build_p50_ms": build_ms,
            "save_write_p50_ms": write_ms,
            "write_bytes_fsync_p50_ms": plain_ms,
            "write_full_rewrite_p50_ms": full_ms,
        }),
    );
    Ok(vec![
        ("edit_batch of 100 cells <= 5 ms".to_string(), edit_ms <= 5.0),
        ("full recalculation in process <= 100 ms".to_string(), eval_ms <= 100.0),
        ("save_fork <= 2 x writing the file (whole-file rewrite)".to_string(), save_ms <= 2.0 * full_ms),
    ])
}
