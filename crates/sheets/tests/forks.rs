//! Forks through the domain layer, on the bundled example model: edit, read back through the
//! fork id, recalculate in process, diff, verify, checkpoint, preview, save faithfully, and
//! come back after a restart.

use std::io::Read;
use std::path::{Path, PathBuf};

use sheets::forks::ForkConfig;
use sheets::tools::editing::{EditBatchParams, Mode, TransformBatchParams, edit_batch, transform_batch};
use sheets::tools::forks::*;
use sheets::tools::reading::{RangeValuesParams, range_values};
use sheets::tools::verify::*;
use sheets::{Budget, Engine, EngineConfig};

fn workspace(name: &str) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("gemba-forks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let ws = root.join("ws");
    std::fs::create_dir_all(ws.join("out")).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workspace");
    std::fs::copy(examples.join("model.xlsx"), ws.join("model.xlsx")).unwrap();
    (ws, root.join("state"))
}

fn engine(ws: &Path, state: &Path, allow_overwrite: bool) -> Engine {
    let forks = ForkConfig { dir: state.to_path_buf(), allow_overwrite, ..Default::default() };
    Engine::new(ws, EngineConfig { forks, ..Default::default() }).unwrap()
}

fn model_id(e: &Engine) -> String {
    e.workspace.list().iter().find(|x| x.rel_path == "model.xlsx").unwrap().id.clone()
}

fn cell(e: &Engine, id: &str, sheet: &str, range: &str) -> String {
    let out = range_values(
        e,
        serde_json::from_value::<RangeValuesParams>(serde_json::json!({
            "workbook_id": id, "sheet_name": sheet, "ranges": [range], "format": "values"
        }))
        .unwrap(),
        &Budget::unlimited(),
    )
    .unwrap();
    let v = serde_json::to_value(out).unwrap();
    v["ranges"][0]["values"][0][0].to_string()
}

fn edits(fork: &str, sheet: &str, list: &[&str], mode: Mode) -> EditBatchParams {
    serde_json::from_value(serde_json::json!({
        "fork_id": fork, "sheet_name": sheet, "edits": list,
        "mode": if mode == Mode::Preview { "preview" } else { "apply" }
    }))
    .unwrap()
}

fn zip_parts(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
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
fn edit_recalculate_diff_save_and_restart() {
    let (ws, state) = workspace("lifecycle");
    let original_bytes = std::fs::read(ws.join("model.xlsx")).unwrap();
    let b = Budget::unlimited();
    let e = engine(&ws, &state, false);
    let id = model_id(&e);
    let before_total = cell(&e, &id, "Summary", "B1");

    let created = create_fork(&e, CreateForkParams { workbook_id: id.clone(), label: Some("t".into()) }, &b).unwrap();
    let fork = created.fork_id.clone();
    assert!(fork.starts_with("fork-"));
    assert_eq!(created.sheets, ["Inputs", "Calc", "Summary"]);

    // Base from 1000 to 2000: an edit, visible through the fork id, not in the original.
    let out = edit_batch(&e, edits(&fork, "Inputs", &["B3=2000", "D1==B3*2"], Mode::Apply), &b).unwrap();
    assert_eq!((out.cells, out.formulas, out.needs_recalc), (2, 1, true));
    assert_eq!(cell(&e, &fork, "Inputs", "B3"), "2000");
    assert_eq!(cell(&e, &id, "Inputs", "B3"), "1000");
    assert_eq!(cell(&e, &fork, "Summary", "B1"), before_total, "not recalculated yet");

    // Recalculate in process: every dependent moves, and the new formula has a value.
    let r = recalculate(&e, RecalculateParams { fork_id: fork.clone(), backend: None }, &b).unwrap();
    assert_eq!(r.report.backend, "in_process");
    assert!(r.report.formulas > 50, "{:?}", r.report);
    let total: f64 = cell(&e, &fork, "Summary", "B1").parse().unwrap();
    let was: f64 = before_total.parse().unwrap();
    assert!((total / was - 2.0).abs() < 1e-9, "profit doubles with the base: {was} -> {total}");
    assert_eq!(cell(&e, &fork, "Inputs", "D1"), "4000");

    let cs = get_changeset(
        &e,
        ChangesetParams { fork_id: fork.clone(), sheet_name: None, kinds: None, limit: None, offset: None },
        &b,
    )
    .unwrap();
    assert_eq!(cs.summary.value_edited, 1);
    assert_eq!(cs.summary.formula_edited, 1);
    assert!(cs.summary.recalculated > 40, "{:?}", cs.summary);
    assert!(!cs.needs_recalc);
    let v = verify_workbook(&e, VerifyParams { fork_id: fork.clone(), targets: Some(vec!["Summary!B1".into()]) }, &b)
        .unwrap();
    assert!(v.targets[0].changed);
    assert!(v.new_errors.is_empty(), "{:?}", v.new_errors);

    // Saving over the original is refused without --allow-overwrite; a new path works.
    let err = save_fork(
        &e,
        SaveForkParams { fork_id: fork.clone(), target_path: "model.xlsx".into(), recalculate: None },
        &b,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--allow-overwrite"), "{err}");
    let saved = save_fork(
        &e,
        SaveForkParams { fork_id: fork.clone(), target_path: "out/model-v2.xlsx".into(), recalculate: None },
        &b,
    )
    .unwrap();
    assert!(saved.values_recalculated);
    assert_eq!(std::fs::read(ws.join("model.xlsx")).unwrap(), original_bytes, "original untouched");

    // The saved file: new values for calamine, and every part the edit did not touch identical.
    let saved_id = saved.workbook_id.clone().unwrap();
    assert_eq!(cell(&e, &saved_id, "Inputs", "B3"), "2000");
    assert_eq!(cell(&e, &saved_id, "Summary", "B1"), cell(&e, &fork, "Summary", "B1"));
    let a = zip_parts(&ws.join("model.xlsx"));
    let bparts = zip_parts(&ws.join("out/model-v2.xlsx"));
    for (name, data) in &a {
        if saved.parts_rewritten.contains(name) || saved.parts_dropped.contains(name) {
            continue;
        }
        assert_eq!(bparts.get(name), Some(data), "{name} changed although no edit touched it");
    }
    assert!(
        saved
            .parts_rewritten
            .iter()
            .all(|p| p.contains("worksheets/") || p.contains("rels") || p.contains("Content_Types"))
    );

    // Checkpoint, edit, restore.
    let cp = checkpoint_fork(&e, CheckpointForkParams { fork_id: fork.clone(), name: Some("base 2000".into()) }, &b)
        .unwrap();
    edit_batch(&e, edits(&fork, "Inputs", &["B3=5"], Mode::Apply), &b).unwrap();
    assert_eq!(cell(&e, &fork, "Inputs", "B3"), "5");
    let restored = restore_checkpoint(
        &e,
        RestoreCheckpointParams { fork_id: fork.clone(), checkpoint_id: cp.checkpoint_id.clone() },
        &b,
    )
    .unwrap();
    assert_eq!(restored.cells_edited, 2);
    assert_eq!(cell(&e, &fork, "Inputs", "B3"), "2000");

    // Preview stages without changing; apply makes it real.
    let p = edit_batch(&e, edits(&fork, "Inputs", &["B1=0.5"], Mode::Preview), &b).unwrap();
    assert_eq!(p.preview[0].before, serde_json::json!(0.07));
    assert_eq!(p.preview[0].after, serde_json::json!(0.5));
    assert_eq!(cell(&e, &fork, "Inputs", "B1"), "0.07");
    let staged = p.change_id.unwrap();
    drop(e);

    // Restart: the fork, its edits, checkpoint and staged change come back.
    let e = engine(&ws, &state, false);
    let listed = list_forks(&e, ListForksParams {}, &b).unwrap();
    assert_eq!(listed.forks.len(), 1);
    assert_eq!(listed.forks[0].cells_edited, 2);
    assert_eq!(listed.forks[0].staged, std::slice::from_ref(&staged));
    assert_eq!(cell(&e, &fork, "Inputs", "B3"), "2000");
    apply_staged_change(&e, StagedChangeParams { fork_id: fork.clone(), change_id: staged }, &b).unwrap();
    assert_eq!(cell(&e, &fork, "Inputs", "B1"), "0.5");
    let cps = list_checkpoints(&e, ForkParams { fork_id: fork.clone() }, &b).unwrap();
    assert_eq!(cps.checkpoints.len(), 1);
    discard_fork(&e, ForkParams { fork_id: fork.clone() }, &b).unwrap();
    let err = edit_batch(&e, edits(&fork, "Inputs", &["B1=1"], Mode::Apply), &b).unwrap_err().to_string();
    assert!(err.contains("no fork"), "{err}");
}

#[test]
fn transforms_fill_relative_formulas_and_replace_text() {
    let (ws, state) = workspace("transform");
    let b = Budget::unlimited();
    let e = engine(&ws, &state, true);
    let fork = create_fork(&e, CreateForkParams { workbook_id: model_id(&e), label: None }, &b).unwrap().fork_id;
    let ops: TransformBatchParams = serde_json::from_value(serde_json::json!({
        "fork_id": fork, "sheet_name": "Inputs",
        "ops": [
            {"op": "write", "start": "F1", "rows": [[1, 2], [3, "=F1+G1"]]},
            {"op": "fill", "range": "H1:H2", "formula": "=F1*10"},
            {"op": "replace", "find": "rate", "replace": "Interest"},
            {"op": "clear", "range": "A3:B3"}
        ]
    }))
    .unwrap();
    let out = transform_batch(&e, ops, &b).unwrap();
    assert_eq!(out.cells, 4 + 2 + 1 + 2);
    recalculate(&e, RecalculateParams { fork_id: fork.clone(), backend: None }, &b).unwrap();
    assert_eq!(cell(&e, &fork, "Inputs", "G2"), "3");
    assert_eq!(cell(&e, &fork, "Inputs", "H2"), "30", "the filled formula moved down a row");
    assert_eq!(cell(&e, &fork, "Inputs", "A1"), "\"Interest\"");
    assert_eq!(cell(&e, &fork, "Inputs", "B3"), "null");
    // Copy and move read the fork as it was before the batch; formulas move with them.
    let ops: TransformBatchParams = serde_json::from_value(serde_json::json!({
        "fork_id": fork, "sheet_name": "Inputs",
        "ops": [{"op": "copy", "range": "F1:G2", "to": "F5"}, {"op": "move", "range": "H1:H2", "to": "J1"}]
    }))
    .unwrap();
    transform_batch(&e, ops, &b).unwrap();
    recalculate(&e, RecalculateParams { fork_id: fork.clone(), backend: None }, &b).unwrap();
    assert_eq!(cell(&e, &fork, "Inputs", "G6"), "3");
    assert_eq!(cell(&e, &fork, "Inputs", "J2"), "30");
    assert_eq!(cell(&e, &fork, "Inputs", "H2"), "null", "moved away");
    // With --allow-overwrite the original can be replaced, unless it changed on disk.
    let saved = save_fork(
        &e,
        SaveForkParams { fork_id: fork.clone(), target_path: "model.xlsx".into(), recalculate: None },
        &b,
    )
    .unwrap();
    assert!(saved.bytes > 1000);
    std::fs::write(ws.join("model.xlsx"), b"changed by someone else").unwrap();
    let err = save_fork(&e, SaveForkParams { fork_id: fork, target_path: "model.xlsx".into(), recalculate: None }, &b)
        .unwrap_err()
        .to_string();
    assert!(err.contains("changed on disk"), "{err}");
}

#[test]
fn bad_edits_are_refused_clearly() {
    let (ws, state) = workspace("bad");
    let b = Budget::unlimited();
    let e = engine(&ws, &state, false);
    let fork = create_fork(&e, CreateForkParams { workbook_id: model_id(&e), label: None }, &b).unwrap().fork_id;
    for (edit, want) in
        [("B3", "no '='"), ("B3==SUM(A1:A2", "open"), ("Nope!B3=1", "no sheet 'Nope'"), ("3B=1", "cell address")]
    {
        let err = edit_batch(&e, edits(&fork, "Inputs", &[edit], Mode::Apply), &b).unwrap_err().to_string();
        assert!(err.contains(want), "{edit}: {err}");
    }
    let err =
        save_fork(&e, SaveForkParams { fork_id: fork.clone(), target_path: "../x.xlsx".into(), recalculate: None }, &b)
            .unwrap_err()
            .to_string();
    assert!(err.contains("relative"), "{err}");
    let err = save_fork(&e, SaveForkParams { fork_id: fork, target_path: "out/x.xlsm".into(), recalculate: None }, &b)
        .unwrap_err()
        .to_string();
    assert!(err.contains(".xlsx"), "{err}");
}

#[test]
fn libreoffice_backend_recalculates_the_fork() {
    let (ws, state) = workspace("libreoffice");
    let b = Budget::unlimited();
    let e = engine(&ws, &state, false);
    let id = model_id(&e);
    let was: f64 = cell(&e, &id, "Summary", "B1").parse().unwrap();
    let fork = create_fork(&e, CreateForkParams { workbook_id: id, label: None }, &b).unwrap().fork_id;
    edit_batch(&e, edits(&fork, "Inputs", &["B3=3000", "D1==B3/3"], Mode::Apply), &b).unwrap();
    let r = recalculate(
        &e,
        RecalculateParams { fork_id: fork.clone(), backend: Some(sheets::forks::recalc::Backend::Libreoffice) },
        &b,
    )
    .unwrap();
    assert_eq!(r.report.backend, "libreoffice");
    let total: f64 = cell(&e, &fork, "Summary", "B1").parse().unwrap();
    assert!((total / was - 3.0).abs() < 1e-9, "{was} -> {total}");
    assert_eq!(cell(&e, &fork, "Inputs", "D1"), "1000");
}

#[test]
fn style_batch_adds_formats_and_saves_them() {
    use sheets::tools::editing::{StyleBatchParams, style_batch};
    let (ws, state) = workspace("styles");
    let b = Budget::unlimited();
    let e = engine(&ws, &state, false);
    let fork = create_fork(&e, CreateForkParams { workbook_id: model_id(&e), label: None }, &b).unwrap().fork_id;
    let p: StyleBatchParams = serde_json::from_value(serde_json::json!({
        "fork_id": fork, "sheet_name": "Inputs",
        "ops": [
            {"range": "A1:B2", "font": {"bold": true}, "fill": "FFFF00"},
            {"range": "B1", "number_format": "0.0%", "alignment": {"horizontal": "center"}}
        ]
    }))
    .unwrap();
    assert_eq!(style_batch(&e, p, &b).unwrap().cells, 5);
    let bad: StyleBatchParams = serde_json::from_value(serde_json::json!({
        "fork_id": fork, "ops": [{"range": "A1", "fill": "yellow"}], "sheet_name": "Inputs"
    }))
    .unwrap();
    assert!(style_batch(&e, bad, &b).unwrap_err().to_string().contains("RGB hex"));
    let saved = save_fork(
        &e,
        SaveForkParams { fork_id: fork.clone(), target_path: "out/styled.xlsx".into(), recalculate: None },
        &b,
    )
    .unwrap();
    assert!(saved.parts_rewritten.iter().any(|p| p.ends_with("styles.xml")), "{:?}", saved.parts_rewritten);
    let parts = zip_parts(&ws.join("out/styled.xlsx"));
    let styles = String::from_utf8(parts["xl/styles.xml"].clone()).unwrap();
    assert!(styles.contains("<b/>") && styles.contains("FFFFFF00") && styles.contains("formatCode=\"0.0%\""));
    let xfs = styles.split("<cellXfs").nth(1).unwrap().matches("<xf ").count();
    let sheets: String = parts
        .iter()
        .filter(|(n, _)| n.starts_with("xl/worksheets/"))
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    // B1 has both changes: the last cell format added; A1 the one before it.
    assert!(sheets.contains(&format!("r=\"B1\" s=\"{}\"", xfs - 1)), "{xfs}");
    assert!(sheets.contains(&format!("r=\"A1\" t=\"s\" s=\"{}\"", xfs - 2)), "{xfs}");
    // The values are untouched.
    let id = saved.workbook_id.unwrap();
    assert_eq!(cell(&e, &id, "Inputs", "B1"), "0.07");
}

#[test]
fn a_change_staged_before_rows_moved_is_refused_not_applied_to_other_cells() {
    use sheets::tools::restructure::{StructureBatchParams, structure_batch};
    let (ws, state) = workspace("staged-layout");
    let e = engine(&ws, &state, false);
    let b = Budget::unlimited();
    let fork = create_fork(&e, CreateForkParams { workbook_id: model_id(&e), label: None }, &b).unwrap().fork_id;
    let b1 = cell(&e, &fork, "Inputs", "B1");
    let b3 = cell(&e, &fork, "Inputs", "B3");
    let staged = edit_batch(&e, edits(&fork, "Inputs", &["B3=999"], Mode::Preview), &b).unwrap().change_id.unwrap();
    let kept = edit_batch(&e, edits(&fork, "Inputs", &["B1=0.5"], Mode::Preview), &b).unwrap().change_id.unwrap();
    let insert: StructureBatchParams = serde_json::from_value(serde_json::json!({
        "fork_id": fork, "ops": [{"op": "insert_rows", "sheet_name": "Inputs", "at": 2, "count": 3}]
    }))
    .unwrap();
    structure_batch(&e, insert, &b).unwrap();
    // B3's old value is now in B6, and the refused change wrote nowhere.
    let err = apply_staged_change(&e, StagedChangeParams { fork_id: fork.clone(), change_id: staged.clone() }, &b)
        .unwrap_err()
        .to_string();
    assert!(err.contains("staged before rows") && err.contains("preview the change again"), "{err}");
    assert_eq!(cell(&e, &fork, "Inputs", "B6"), b3);
    assert_eq!(cell(&e, &fork, "Inputs", "B1"), b1);
    // Still staged: it can be discarded, and so can the other one.
    discard_staged_change(&e, StagedChangeParams { fork_id: fork.clone(), change_id: staged }, &b).unwrap();
    let err = apply_staged_change(&e, StagedChangeParams { fork_id: fork.clone(), change_id: kept.clone() }, &b)
        .unwrap_err()
        .to_string();
    assert!(err.contains("staged before rows"), "{err}");
    // Staged after the move: applies where it says.
    let fresh = edit_batch(&e, edits(&fork, "Inputs", &["B6=999"], Mode::Preview), &b).unwrap().change_id.unwrap();
    apply_staged_change(&e, StagedChangeParams { fork_id: fork.clone(), change_id: fresh }, &b).unwrap();
    assert_eq!(cell(&e, &fork, "Inputs", "B6"), "999");
}

#[test]
fn a_save_into_the_forks_own_directory_or_with_a_control_character_is_refused() {
    let (ws, _) = workspace("save-into-state");
    // The default layout: the state directory inside the workspace.
    let state = ws.join(".gemba");
    let e = engine(&ws, &state, false);
    let b = Budget::unlimited();
    let fork = create_fork(&e, CreateForkParams { workbook_id: model_id(&e), label: None }, &b).unwrap().fork_id;
    let save = |target: &str| {
        save_fork(&e, SaveForkParams { fork_id: fork.clone(), target_path: target.into(), recalculate: None }, &b)
    };
    let err = save(&format!(".gemba/{fork}/new.xlsx")).unwrap_err().to_string();
    assert!(err.contains("where Gemba keeps its forks") && err.contains("out/"), "{err}");
    let err = save("out/a\u{0}b.xlsx").unwrap_err().to_string();
    assert!(err.contains("control character U+0000"), "{err}");
    assert_eq!(save("out/fine.xlsx").unwrap().path, "out/fine.xlsx");
}
