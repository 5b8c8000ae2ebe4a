//! The streaming xlsx reader against calamine, cell by cell, over every xlsx/xlsm file of the
//! shared corpus: values (bit for bit for numbers), types, formulas, merged ranges and used
//! ranges must agree wherever the streaming reader gives an answer; where it hands a sheet
//! back to calamine, that is counted and shown, never compared away. Leave it out with
//! `cargo test -- --skip corpus_`.

use std::path::PathBuf;
use std::sync::Arc;

use sheets::load::{self, Book};
use sheets::sheet::Sheet;
use sheets::xlsx_reader::{NoProgress, XlsxBook};
use sheets::{Budget, Limits};

fn corpus() -> PathBuf {
    let p = match std::env::var("GEMBA_CORPUS") {
        Ok(d) if !d.is_empty() && d != "none" => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/files"),
    };
    assert!(
        p.is_dir(),
        "the shared corpus is not at {}: set GEMBA_CORPUS=DIR, or run `cargo test -- --skip corpus_`",
        p.display()
    );
    p
}

/// A formula without its references and names: what a shift of its references leaves alone.
fn skeleton(f: &str) -> String {
    f.chars().filter(|c| !(c.is_ascii_alphanumeric() || *c == '$')).collect()
}

/// The first difference between two loads of a sheet, if any.
fn difference(a: &Sheet, b: &Sheet, anchor_differences: &mut usize) -> Option<String> {
    if a.cell_count() != b.cell_count() {
        return Some(format!("{} cells vs {}", a.cell_count(), b.cell_count()));
    }
    for (x, y) in a.cells().iter().zip(b.cells().iter()) {
        if (x.row, x.col) != (y.row, y.col) {
            return Some(format!("cell at ({}, {}) vs ({}, {})", x.row, x.col, y.row, y.col));
        }
        let same = x.value.type_name() == y.value.type_name()
            && match (x.value.as_number(), y.value.as_number()) {
                (Some(p), Some(q)) => p.to_bits() == q.to_bits(),
                _ => a.text(&x.value) == b.text(&y.value),
            };
        if !same {
            return Some(format!("({}, {}): {:?} vs {:?}", x.row, x.col, a.text(&x.value), b.text(&y.value)));
        }
    }
    let fa: Vec<_> = a.formulas().iter().map(|f| (f.at, f.text.clone())).collect();
    let fb: Vec<_> = b.formulas().iter().map(|f| (f.at, f.text.clone())).collect();
    if fa.len() != fb.len() {
        return Some(format!("{} formulas vs {}", fa.len(), fb.len()));
    }
    for (x, y) in fa.iter().zip(&fb) {
        if x == y {
            continue;
        }
        // calamine expands a shared formula's members from the range's top-left, not from the
        // master cell; where those differ, the formulas differ in their references only, and
        // the streaming reader's are the right ones (see xlsx_reader's tests).
        if x.0 == y.0 && skeleton(&x.1) == skeleton(&y.1) {
            *anchor_differences += 1;
            continue;
        }
        return Some(format!("formulas differ: {x:?} vs {y:?}"));
    }
    if a.merged != b.merged {
        return Some(format!("merged ranges {:?} vs {:?}", a.merged, b.merged));
    }
    if a.used != b.used {
        return Some(format!("used range {:?} vs {:?}", a.used, b.used));
    }
    None
}

#[test]
fn corpus_streaming_reader_agrees_with_calamine() {
    let dir = corpus();
    let limits = Limits::default();
    let budget = Budget::unlimited();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "xlsx" | "xlsm"))
        })
        .collect();
    files.sort();
    let (mut compared, mut cells, mut handed_back, mut no_package) = (0usize, 0usize, Vec::new(), Vec::new());
    let mut differences = Vec::new();
    let mut anchor_differences = 0usize;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Ok(bytes) = std::fs::read(path) else { continue };
        // Files calamine cannot open are the corpus test's business, not this one's.
        let Ok(mut opened) = load::open(&name, bytes, &limits) else { continue };
        if !matches!(opened.book, Book::Xlsx(_)) {
            continue;
        }
        let names: Vec<String> = opened.sheets.iter().map(|s| s.name.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let fast = match XlsxBook::open(opened.bytes.clone(), &refs, opened.date1904) {
            Ok(f) => f,
            Err(b) => {
                no_package.push(format!("{name}: {}", b.0));
                continue;
            }
        };
        for (i, meta) in opened.sheets.clone().iter().enumerate() {
            if meta.kind != "worksheet" {
                continue;
            }
            let bytes = Arc::clone(&opened.bytes);
            let reference =
                load::load_sheet(&name, &mut opened.book, &bytes, &meta.name, opened.date1904, &limits, &budget);
            let streamed = load::load_sheet_fast(&name, &fast, i, &meta.name, &limits, &budget, &NoProgress);
            match (streamed, reference) {
                (Ok(None), _) => handed_back.push(format!("{name} / {}", meta.name)),
                (Ok(Some(a)), Ok(b)) => {
                    compared += 1;
                    cells += a.cell_count();
                    if let Some(d) = difference(&a, &b, &mut anchor_differences) {
                        differences.push(format!("{name} / {}: {d}", meta.name));
                    }
                }
                (Ok(Some(a)), Err(e)) => differences.push(format!(
                    "{name} / {}: streamed {} cells, calamine failed: {e}",
                    meta.name,
                    a.cell_count()
                )),
                (Err(e), Ok(b)) => differences.push(format!(
                    "{name} / {}: streaming failed ({e}), calamine read {} cells",
                    meta.name,
                    b.cell_count()
                )),
                (Err(_), Err(_)) => {}
            }
        }
    }
    eprintln!(
        "streaming reader: {compared} sheets ({cells} cells) agree with calamine; {} handed back; {} packages left to calamine; {anchor_differences} shared-formula members calamine shifts from the range's top-left instead of its master",
        handed_back.len(),
        no_package.len()
    );
    for h in handed_back.iter().chain(&no_package) {
        eprintln!("  calamine: {h}");
    }
    assert!(differences.is_empty(), "differences: {differences:#?}");
    assert!(compared >= 100, "only {compared} sheets compared");
}
