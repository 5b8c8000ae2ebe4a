//! Recalculation runs without holding its fork: a run's values are committed only onto the
//! fork it started from, a later run takes the edits made meanwhile, and reads see the last
//! committed values until then.

use std::path::{Path, PathBuf};

use sheets::forks::ForkConfig;
use sheets::forks::recalc::Backend;
use sheets::tools::editing::{EditBatchParams, edit_batch};
use sheets::tools::forks::{CreateForkParams, ListForksParams, create_fork, list_forks};
use sheets::tools::reading::{RangeValuesParams, range_values};
use sheets::{Budget, Engine, EngineConfig};

fn workspace(name: &str) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("gemba-recalc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let ws = root.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workspace");
    std::fs::copy(examples.join("model.xlsx"), ws.join("model.xlsx")).unwrap();
    (ws, root.join("state"))
}

fn number(e: &Engine, id: &str, sheet: &str, cell: &str) -> f64 {
    let p: RangeValuesParams = serde_json::from_value(serde_json::json!({
        "workbook_id": id, "sheet_name": sheet, "ranges": [cell], "format": "values"
    }))
    .unwrap();
    let v = serde_json::to_value(range_values(e, p, &Budget::unlimited()).unwrap()).unwrap();
    v["ranges"][0]["values"][0][0].as_f64().unwrap()
}

fn edit(e: &Engine, fork: &str, cell: &str) {
    let p: EditBatchParams =
        serde_json::from_value(serde_json::json!({"fork_id": fork, "sheet_name": "Inputs", "edits": [cell]})).unwrap();
    edit_batch(e, p, &Budget::unlimited()).unwrap();
}

#[test]
fn a_run_is_committed_only_onto_the_fork_it_started_from() {
    let (ws, state) = workspace("commit");
    let b = Budget::unlimited();
    let forks = ForkConfig { dir: state, ..Default::default() };
    let e = Engine::new(&ws, EngineConfig { forks, ..Default::default() }).unwrap();
    let id = e.workspace.list().iter().find(|x| x.rel_path == "model.xlsx").unwrap().id.clone();
    let original = number(&e, &id, "Summary", "B1");
    let fork = create_fork(&e, CreateForkParams { workbook_id: id, label: None }, &b).unwrap().fork_id;
    let handle = e.forks.get(&fork).unwrap();

    // A run taken out of the fork, and an edit made while it is out.
    edit(&e, &fork, "B3=2000");
    let job = handle.lock().begin_recalc(true).unwrap();
    edit(&e, &fork, "B3=3000");
    let done = job.run(Backend::InProcess, &e.forks.libreoffice, &e.limits, &b).unwrap();
    assert!(handle.lock().finish_recalc(done).is_none(), "a run from before the edit is not committed");
    assert!(handle.lock().is_stale());
    assert_eq!(number(&e, &fork, "Summary", "B1"), original, "reads keep the last committed values");
    let listed = list_forks(&e, ListForksParams {}, &b).unwrap();
    assert!(listed.forks[0].needs_recalc && !listed.forks[0].recalculating);

    // The store's recalculation takes both edits (the engine's model is reused: it is fed
    // only the edit it has not seen).
    let r = e.forks.recalculate(&handle, Backend::InProcess, &e.limits, &b).unwrap();
    assert_eq!(r.backend, "in_process");
    assert!(r.load_ms == 0.0, "the model kept from the uncommitted run is reused: {r:?}");
    let total = number(&e, &fork, "Summary", "B1");
    assert!((total / original - 3.0).abs() < 1e-9, "{original} -> {total}");
    assert!(!handle.lock().is_stale());
    let listed = list_forks(&e, ListForksParams {}, &b).unwrap();
    assert!(!listed.forks[0].needs_recalc);

    // An undone edit (a restored checkpoint) makes a run from before it stale as well.
    let job = handle.lock().begin_recalc(true).unwrap();
    handle.lock().truncate(1, 0).unwrap();
    let done = job.run(Backend::InProcess, &e.forks.libreoffice, &e.limits, &b).unwrap();
    assert!(handle.lock().finish_recalc(done).is_none());
    e.forks.recalculate(&handle, Backend::InProcess, &e.limits, &b).unwrap();
    let total = number(&e, &fork, "Summary", "B1");
    assert!((total / original - 2.0).abs() < 1e-9, "{original} -> {total}");
}

/// A workbook in the 1904 date system: A1 holds 2024-03-01 (1904 serial 43890) as a date,
/// A3:A4 two holidays, row 1 date formulas, and `extra` formulas in row 2 from A2 on.
fn book_1904(path: &Path, extra: &[&str]) {
    use rust_xlsxwriter::{Format, Workbook};
    let mut wb = Workbook::new();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let ws = wb.add_worksheet();
    ws.set_name("Dates").unwrap();
    ws.write_number_with_format(0, 0, 43890.0, &date).unwrap();
    ws.write_number_with_format(2, 0, 43893.0, &date).unwrap();
    ws.write_number_with_format(3, 0, 43894.0, &date).unwrap();
    ws.write_formula(0, 1, "=YEAR(A1)").unwrap();
    ws.write_formula_with_format(0, 2, "=DATE(2020,1,1)", &date).unwrap();
    ws.write_formula_with_format(0, 3, "=EDATE(A1,1)", &date).unwrap();
    ws.write_formula(0, 4, "=A1+30").unwrap();
    for (i, f) in extra.iter().enumerate() {
        ws.write_formula(1, i as u16, *f).unwrap();
    }
    let bytes = wb.save_to_buffer().unwrap();
    // rust_xlsxwriter writes the 1900 system: switch the workbook to 1904.
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut data).unwrap();
        if name == "xl/workbook.xml" {
            let xml = String::from_utf8(data).unwrap().replacen("<workbookPr ", "<workbookPr date1904=\"1\" ", 1);
            assert!(xml.contains("date1904"), "{xml}");
            data = xml.into_bytes();
        }
        out.start_file(name.as_str(), zip::write::SimpleFileOptions::default()).unwrap();
        std::io::Write::write_all(&mut out, &data).unwrap();
    }
    std::fs::write(path, out.finish().unwrap().into_inner()).unwrap();
}

fn engine_with(ws: &Path, state: PathBuf, libreoffice: Option<&str>) -> Engine {
    let mut forks = ForkConfig { dir: state, ..Default::default() };
    if let Some(p) = libreoffice {
        forks.libreoffice.program = p.into();
    }
    Engine::new(ws, EngineConfig { forks, ..Default::default() }).unwrap()
}

fn row(e: &Engine, id: &str, range: &str) -> Vec<serde_json::Value> {
    let p: RangeValuesParams = serde_json::from_value(serde_json::json!({
        "workbook_id": id, "sheet_name": "Dates", "ranges": [range], "format": "values"
    }))
    .unwrap();
    let v = serde_json::to_value(range_values(e, p, &Budget::unlimited()).unwrap()).unwrap();
    v["ranges"][0]["values"][0].as_array().unwrap().clone()
}

#[test]
fn a_1904_workbook_recalculates_in_process_in_its_own_date_system() {
    let (ws, state) = workspace("d1904");
    book_1904(&ws.join("mac.xlsx"), &["=WEEKDAY(A1)", "=DATEDIF(A1,E1,\"d\")"]);
    let e = engine_with(&ws, state, None);
    let id = e.workspace.list().iter().find(|x| x.rel_path == "mac.xlsx").unwrap().id.clone();
    let b = Budget::unlimited();
    let fork = create_fork(&e, CreateForkParams { workbook_id: id, label: None }, &b).unwrap().fork_id;
    let handle = e.forks.get(&fork).unwrap();
    let r = e.forks.recalculate(&handle, Backend::InProcess, &e.limits, &b).unwrap();
    assert_eq!((r.backend.as_str(), r.fallback_reason.as_deref(), r.issue_count), ("in_process", None, 0), "{r:?}");
    // Dates read as ISO dates; E1 (A1+30, no date format) is the 1904 serial the file stores.
    assert_eq!(
        row(&e, &fork, "A1:E1"),
        serde_json::json!(["2024-03-01", 2024, "2020-01-01", "2024-04-01", 43920]).as_array().unwrap().clone()
    );
    assert_eq!(row(&e, &fork, "A2:B2"), vec![serde_json::json!(6), serde_json::json!(30)]);
    // What a save writes: 1904 serials.
    let (bytes, _) = handle.lock().render(true, &b).unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut xml = String::new();
    std::io::Read::read_to_string(&mut z.by_name("xl/worksheets/sheet1.xml").unwrap(), &mut xml).unwrap();
    assert!(xml.contains("<f>DATE(2020,1,1)</f><v>42369</v>"), "{xml}");
    assert!(xml.contains("<f>EDATE(A1,1)</f><v>43921</v>"), "{xml}");
}

#[test]
fn a_workbook_the_engine_refuses_goes_to_libreoffice_when_it_is_installed() {
    let (ws, state) = workspace("fallback");
    book_1904(&ws.join("mac.xlsx"), &["=NETWORKDAYS(A1,E1,A3:A4)"]);
    let b = Budget::unlimited();
    // Without LibreOffice: the refusal says why and what to do.
    let missing = engine_with(&ws, state.join("a"), Some("/nonexistent/soffice"));
    let id = missing.workspace.list()[0].id.clone();
    let fork = create_fork(&missing, CreateForkParams { workbook_id: id.clone(), label: None }, &b).unwrap().fork_id;
    let handle = missing.forks.get(&fork).unwrap();
    let err = missing.forks.recalculate(&handle, Backend::InProcess, &missing.limits, &b).unwrap_err().to_string();
    assert!(err.contains("NETWORKDAYS with a list of holidays") && err.contains("libreoffice"), "{err}");
    if !sheets::forks::libreoffice::available(Path::new("soffice")) {
        // Under GEMBA_STRICT=1 (scripts/test.sh, CI) a missing install fails instead of skipping.
        assert!(
            std::env::var("GEMBA_STRICT").as_deref() != Ok("1"),
            "LibreOffice (soffice) is not installed, and GEMBA_STRICT=1 forbids skipping the fallback"
        );
        eprintln!("LibreOffice (soffice) is not installed: the fallback itself is not tried");
        return;
    }
    let e = engine_with(&ws, state.join("b"), None);
    let fork = create_fork(&e, CreateForkParams { workbook_id: id, label: None }, &b).unwrap().fork_id;
    let handle = e.forks.get(&fork).unwrap();
    let r = e.forks.recalculate(&handle, Backend::InProcess, &e.limits, &b).unwrap();
    assert_eq!(r.backend, "libreoffice");
    assert!(r.fallback_reason.as_deref().is_some_and(|w| w.contains("holidays")), "{r:?}");
    assert_eq!(e.forks.stats.recalc_fallbacks.load(std::sync::atomic::Ordering::Relaxed), 1);
    // March 2024 from the 1st to the 31st: 21 working days, less the two holidays (4th, 5th).
    assert_eq!(row(&e, &fork, "A2:A2"), vec![serde_json::json!(19)]);
    assert_eq!(
        row(&e, &fork, "B1:D1"),
        serde_json::json!([2024, "2020-01-01", "2024-04-01"]).as_array().unwrap().clone()
    );
}
