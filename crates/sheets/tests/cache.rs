//! The workbook cache against real files: one load for concurrent callers, invalidation when
//! the file changes, eviction by bytes, and limits refused with clear errors.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rust_xlsxwriter::Workbook;
use sheets::tools::reading::{ReadTableParams, read_table};
use sheets::{Budget, Engine, EngineConfig, Limits, SheetsError};

fn write_book(path: &Path, rows: u32, label: &str) {
    let mut wb = Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name("Data").unwrap();
    ws.write_string(0, 0, "Name").unwrap();
    ws.write_string(0, 1, "Value").unwrap();
    for r in 1..=rows {
        ws.write_string(r, 0, format!("{label}{r}")).unwrap();
        ws.write_number(r, 1, f64::from(r)).unwrap();
    }
    wb.save(path).unwrap();
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gemba-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn id_of(engine: &Engine, path: &str) -> String {
    engine.workspace.list().iter().find(|e| e.rel_path == path).unwrap().id.clone()
}

#[test]
fn concurrent_requests_share_one_load() {
    let dir = tempdir("single-flight");
    write_book(&dir.join("big.xlsx"), 50_000, "row");
    let engine = Arc::new(Engine::new(&dir, EngineConfig::default()).unwrap());
    let id = id_of(&engine, "big.xlsx");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (e, id) = (engine.clone(), id.clone());
            std::thread::spawn(move || e.workbook(&id, &Budget::unlimited()).map(|w| Arc::as_ptr(&w) as usize))
        })
        .collect();
    let ptrs: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    assert!(ptrs.windows(2).all(|w| w[0] == w[1]), "every caller got the same workbook");
    assert_eq!(engine.cache.stats.loads.load(Ordering::Relaxed), 1);
    assert_eq!(engine.cache.stats.hits.load(Ordering::Relaxed), 7);
}

#[test]
fn changed_files_are_reloaded_and_bytes_are_bounded() {
    let dir = tempdir("invalidate");
    for i in 0..4 {
        write_book(&dir.join(format!("b{i}.xlsx")), 20_000, "x");
    }
    let engine = Engine::new(&dir, EngineConfig { cache_bytes: 3 * 1024 * 1024, ..Default::default() }).unwrap();
    let budget = Budget::unlimited();
    let read = |id: &str| {
        read_table(
            &engine,
            ReadTableParams {
                workbook_id: id.into(),
                sheet_name: None,
                region_id: None,
                table: None,
                range: None,
                header_row: None,
                columns: None,
                filters: None,
                sample: None,
                limit: Some(1),
                offset: None,
                format: None,
                include_totals: None,
            },
            &budget,
        )
        .unwrap()
    };
    for i in 0..4 {
        let out = read(&id_of(&engine, &format!("b{i}.xlsx")));
        assert_eq!(out.total_rows, 20_000);
    }
    assert!(engine.cache.bytes() <= 3 * 1024 * 1024, "cache holds {} bytes", engine.cache.bytes());
    assert!(engine.cache.stats.evictions.load(Ordering::Relaxed) >= 1);

    let id = id_of(&engine, "b0.xlsx");
    assert!(read(&id).csv.unwrap().contains("x1,1"));
    std::thread::sleep(Duration::from_millis(20));
    write_book(&dir.join("b0.xlsx"), 10, "changed");
    let out = read(&id);
    assert_eq!(out.total_rows, 10);
    assert!(out.csv.unwrap().contains("changed1,1"));
}

#[test]
fn limits_are_refused_with_clear_errors() {
    let dir = tempdir("limits");
    write_book(&dir.join("rows.xlsx"), 5_000, "r");
    // A zip bomb: one highly compressible part far beyond the ratio limit.
    {
        use std::io::Write;
        let f = std::fs::File::create(dir.join("bomb.xlsx")).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default();
        z.start_file("[Content_Types].xml", opts).unwrap();
        z.write_all(b"<Types/>").unwrap();
        z.start_file("xl/worksheets/sheet1.xml", opts).unwrap();
        let zeros = vec![b' '; 1 << 20];
        for _ in 0..64 {
            z.write_all(&zeros).unwrap();
        }
        z.finish().unwrap();
    }
    let engine = Engine::new(
        &dir,
        EngineConfig { limits: Limits { max_cells_per_sheet: 1_000, ..Default::default() }, ..Default::default() },
    )
    .unwrap();
    let budget = Budget::unlimited();
    let wb = engine.workbook(&id_of(&engine, "rows.xlsx"), &budget).unwrap();
    let e = engine.sheet(&wb, Some("Data"), &budget).unwrap_err();
    assert!(matches!(e, SheetsError::LimitExceeded { .. }), "{e}");
    assert!(e.to_string().contains("limit 1000"), "{e}");
    let e = engine.workbook(&id_of(&engine, "bomb.xlsx"), &budget).unwrap_err();
    assert!(e.to_string().contains("zip bomb"), "{e}");
    // A budget that has run out stops a load.
    let engine = Engine::new(&dir, EngineConfig::default()).unwrap();
    let wb = engine.workbook(&id_of(&engine, "rows.xlsx"), &budget).unwrap();
    let e = engine.sheet(&wb, Some("Data"), &Budget::with_timeout(Duration::ZERO)).unwrap_err();
    assert!(matches!(e, SheetsError::Timeout { .. }), "{e}");
}

#[test]
fn a_call_that_bypasses_the_cache_reads_the_file_fresh_and_leaves_the_cache_alone() {
    let dir = tempdir("bypass");
    write_book(&dir.join("b.xlsx"), 2_000, "old");
    let engine = Engine::new(&dir, EngineConfig::default()).unwrap();
    let id = id_of(&engine, "b.xlsx");
    let cached = engine.workbook(&id, &Budget::unlimited()).unwrap();
    let fresh_budget = Budget::unlimited().with_cache_bypass(true);
    assert!(fresh_budget.bypasses_cache() && !Budget::unlimited().bypasses_cache());
    let fresh = engine.workbook(&id, &fresh_budget).unwrap();
    let again = engine.workbook(&id, &Budget::unlimited().with_cache_bypass(true)).unwrap();
    assert!(!Arc::ptr_eq(&cached, &fresh) && !Arc::ptr_eq(&fresh, &again), "every bypassing call opens the file");
    assert_eq!(engine.cache.stats.loads.load(Ordering::Relaxed), 3, "one cached load, two fresh ones");
    assert_eq!(engine.cache.stats.hits.load(Ordering::Relaxed), 0, "a bypass is no cache lookup");
    assert_eq!(engine.cache.entries(), 1, "fresh workbooks are not kept");
    assert_eq!(fresh_budget.stages().cache_hit(), Some(false), "the call is told it did not use the cache");
    // Its sheets load from the file it read, and the cached copy still answers normal calls.
    let sheet = engine.sheet(&fresh, Some("Data"), &fresh_budget).unwrap();
    assert!(sheet.cell_count() >= 4_000, "{}", sheet.cell_count());
    assert!(Arc::ptr_eq(&cached, &engine.workbook(&id, &Budget::unlimited()).unwrap()));
    assert_eq!(engine.cache.stats.hits.load(Ordering::Relaxed), 1);
}
