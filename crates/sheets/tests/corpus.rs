//! Every file of ../shared/corpus through the domain layer directly: each either loads (all
//! sheets, a first page) or fails with a clear, typed error — never a panic, never a hang.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sheets::tools::discovery::{ListWorkbooksParams, list_workbooks};
use sheets::tools::reading::{SheetPageParams, sheet_page};
use sheets::{Budget, Engine, EngineConfig};

/// The shared corpus (`../shared/corpus/files`, or `GEMBA_CORPUS=DIR`). A missing corpus fails
/// the test rather than letting it pass untested; leave it out on purpose with
/// `cargo test -- --skip corpus_` (scripts/test.sh does when `GEMBA_CORPUS=none`).
fn corpus() -> PathBuf {
    let p = match std::env::var("GEMBA_CORPUS") {
        Ok(d) if !d.is_empty() && d != "none" => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/files"),
    };
    assert!(
        p.is_dir() && p.join("../MANIFEST.tsv").is_file(),
        "the shared corpus (with ../MANIFEST.tsv) is not at {}: put it there, set GEMBA_CORPUS=DIR, or run `cargo test -- --skip corpus_`",
        p.display()
    );
    p
}

#[test]
fn corpus_files_load_or_fail_clearly() {
    let dir = corpus();
    let engine = std::sync::Arc::new(Engine::new(&dir, EngineConfig::default()).unwrap());
    let list = list_workbooks(
        &engine,
        ListWorkbooksParams { filter: None, limit: Some(500), offset: None },
        &Budget::unlimited(),
    )
    .unwrap();
    assert!(list.workbooks.len() >= 150, "{}", list.workbooks.len());
    let manifest = std::fs::read_to_string(dir.join("../MANIFEST.tsv")).expect("the corpus manifest reads");
    let (mut ok, mut failed) = (0, Vec::new());
    for w in &list.workbooks {
        let (tx, rx) = mpsc::channel();
        let e = engine.clone();
        let id = w.workbook_id.clone();
        let t = Instant::now();
        std::thread::spawn(move || {
            let budget = Budget::with_timeout(Duration::from_secs(20));
            let r = (|| {
                let wb = e.workbook(&id, &budget)?;
                let mut pages = 0;
                for i in 0..wb.sheets.len() {
                    wb.sheet_at(i, &budget)?;
                }
                if !wb.sheets.is_empty() {
                    sheet_page(
                        &e,
                        SheetPageParams {
                            workbook_id: id.clone(),
                            sheet_name: Some(wb.sheets[0].name.clone()),
                            start_row: None,
                            page_size: Some(20),
                            columns: None,
                            format: None,
                        },
                        &budget,
                    )?;
                    pages += 1;
                }
                Ok::<_, sheets::SheetsError>(pages)
            })();
            let _ = tx.send(r);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(msg.len() > 20 && !msg.contains("panicked"), "{}: {msg}", w.path);
                let row: Vec<&str> = manifest
                    .lines()
                    .find(|l| l.starts_with(&format!("{}\t", w.path)))
                    .map(|l| l.split('\t').collect())
                    .unwrap_or_default();
                // "sound": the manifest calls it ok and the reference calamine read it.
                let sound = row.get(6) == Some(&"ok") && row.get(10).is_some_and(|r| r.contains("calamine=ok"));
                let status = if sound { "sound" } else { row.get(6).copied().unwrap_or("?") };
                failed.push(format!("{} [{status}]: {msg}", w.path));
            }
            Err(_) => panic!("{} hung for 30 s", w.path),
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{} took {:?}", w.path, t.elapsed());
    }
    eprintln!("corpus: {ok} loaded, {} refused with an error:", failed.len());
    for f in &failed {
        eprintln!("  {f}");
    }
    // Files the manifest calls sound (and the reference calamine read) must load.
    // Known reader bug: calamine 0.38 panics opening this BIFF8 file (an older calamine read it);
    // Gemba answers with a clear error instead of crashing, which is what this test demands.
    const KNOWN_READER_BUGS: [&str; 1] = ["gh-poi__59858.xls"];
    let sound_failures: Vec<&String> = failed
        .iter()
        .filter(|f| f.contains("[sound]") && !KNOWN_READER_BUGS.iter().any(|k| f.starts_with(k)))
        .collect();
    assert!(sound_failures.is_empty(), "sound files refused: {sound_failures:#?}");
    assert!(ok >= 140, "only {ok} files loaded");
}
