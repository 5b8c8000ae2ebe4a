//! A loaded workbook lets go of its file image: sheets loaded later read their parts from the
//! file, checked to be the file that was loaded; a file changed since is refused with a typed
//! error and loaded again by the next call.

use std::path::Path;

use rust_xlsxwriter::Workbook;
use sheets::value::Value;
use sheets::{Budget, Engine, EngineConfig, SheetsError};

/// Two sheets of `rows` rows (text and numbers), and an Excel table on the first.
fn write_book(path: &Path, rows: u32, label: &str) {
    let mut wb = Workbook::new();
    for name in ["First", "Second"] {
        let ws = wb.add_worksheet();
        ws.set_name(name).unwrap();
        ws.write_string(0, 0, "Name").unwrap();
        ws.write_string(0, 1, "Value").unwrap();
        for r in 1..=rows {
            ws.write_string(r, 0, format!("{label}-{name}-{r}")).unwrap();
            ws.write_number(r, 1, f64::from(r) * 1.5).unwrap();
        }
        if name == "First" {
            let table = rust_xlsxwriter::Table::new();
            ws.add_table(0, 0, rows, 1, &table).unwrap();
        }
    }
    wb.save(path).unwrap();
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gemba-image-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn id_of(engine: &Engine, path: &str) -> String {
    engine.workspace.list().iter().find(|e| e.rel_path == path).unwrap().id.clone()
}

fn text_at(s: &sheets::sheet::Sheet, row: u32, col: u32) -> String {
    s.text(&s.get(row, col)).to_string()
}

#[test]
fn the_image_is_let_go_after_a_load_and_later_sheets_read_their_parts_from_the_file() {
    let dir = tempdir("release");
    write_book(&dir.join("two.xlsx"), 3_000, "v1");
    let engine = Engine::new(&dir, EngineConfig::default()).unwrap();
    let id = id_of(&engine, "two.xlsx");
    let budget = Budget::unlimited();
    let wb = engine.workbook(&id, &budget).unwrap();
    assert!(wb.file_image_in_memory(), "held from the open until the first load");
    let first = engine.sheet(&wb, Some("First"), &budget).unwrap();
    assert!(!wb.file_image_in_memory(), "let go once the first sheet is in memory");
    assert_eq!(text_at(&first, 3_000, 0), "v1-First-3000");
    // The second sheet comes from its part, read from the file.
    let second = engine.sheet(&wb, Some("Second"), &budget).unwrap();
    assert_eq!(text_at(&second, 2_999, 0), "v1-Second-2999");
    assert_eq!(second.get(10, 1), Value::Number(15.0));
    assert!(!wb.file_image_in_memory());
    // All sheets in memory: the readers are gone too, and only the sheets count in the cache.
    assert!(wb.bytes() < first.heap_bytes() + second.heap_bytes() + 8192, "{}", wb.bytes());
    // Tables and the whole image (for forks) are read again on demand, and the same.
    let tables = wb.tables().unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].sheet, "First");
    let image = wb.file_bytes().unwrap();
    assert_eq!(&image[..], &std::fs::read(dir.join("two.xlsx")).unwrap()[..]);
}

#[test]
fn a_file_changed_since_the_load_is_refused_and_the_next_call_loads_it_again() {
    let dir = tempdir("changed");
    let path = dir.join("two.xlsx");
    write_book(&path, 2_000, "v1");
    let engine = Engine::new(&dir, EngineConfig::default()).unwrap();
    let id = id_of(&engine, "two.xlsx");
    let budget = Budget::unlimited();
    let wb = engine.workbook(&id, &budget).unwrap();
    engine.sheet(&wb, Some("First"), &budget).unwrap();
    // Another program saves a new version (different size) over the file.
    write_book(&path, 2_500, "v2");
    let e = engine.sheet(&wb, Some("Second"), &budget).unwrap_err();
    assert!(matches!(e, SheetsError::ChangedOnDisk { .. }), "{e}");
    assert!(e.to_string().contains("changed on disk since it was loaded"), "{e}");
    assert!(matches!(wb.file_bytes(), Err(SheetsError::ChangedOnDisk { .. })));
    assert!(wb.changed_on_disk());
    // The next call gets the new version.
    let wb2 = engine.workbook(&id, &budget).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&wb, &wb2));
    let second = engine.sheet(&wb2, Some("Second"), &budget).unwrap();
    assert_eq!(text_at(&second, 2_500, 0), "v2-Second-2500");
}

/// The parts of an xlsx file, inflated.
fn zip_parts(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            (f.name().unwrap().to_string(), buf)
        })
        .collect()
}

#[test]
fn a_fork_saves_from_the_bytes_it_was_made_from_after_the_original_changes() {
    use sheets::forks::ForkConfig;
    use sheets::tools::forks::{CreateForkParams, SaveForkParams, create_fork, save_fork};
    let dir = tempdir("fork");
    let (ws, state) = (dir.join("ws"), dir.join("state"));
    std::fs::create_dir_all(ws.join("out")).unwrap();
    let path = ws.join("two.xlsx");
    write_book(&path, 1_500, "v1");
    let loaded = ws.join("out").join("loaded-copy.xlsx");
    std::fs::copy(&path, &loaded).unwrap();
    let forks = ForkConfig { dir: state, ..Default::default() };
    let engine = Engine::new(&ws, EngineConfig { forks, ..Default::default() }).unwrap();
    let id = id_of(&engine, "two.xlsx");
    let b = Budget::unlimited();
    let fork = create_fork(&engine, CreateForkParams { workbook_id: id, label: None }, &b).unwrap().fork_id;
    let wb = engine.workbook(&fork, &b).unwrap();
    engine.sheet(&wb, Some("First"), &b).unwrap();
    assert!(!wb.file_image_in_memory());
    // Someone saves another version over the original: the fork keeps its own.
    write_book(&path, 900, "v2");
    let saved = save_fork(
        &engine,
        SaveForkParams { fork_id: fork, target_path: "out/saved.xlsx".into(), recalculate: Some(false) },
        &b,
    )
    .unwrap();
    assert!(saved.bytes > 0);
    // No edits: every part is the loaded version's (workbook-level parts may be rewritten).
    let (want, got) = (zip_parts(&loaded), zip_parts(&ws.join("out").join("saved.xlsx")));
    for part in ["xl/worksheets/sheet1.xml", "xl/worksheets/sheet2.xml", "xl/sharedStrings.xml"] {
        assert!(want[part] == got[part], "{part} differs from the version the fork was made from");
    }
}
