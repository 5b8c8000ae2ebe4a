//! Batch tools refuse a batch whose ops add up to more than one call may write, before
//! building any of it: ops each under the limit must not add up past it (300 fills of 100,000
//! cells once built 30 million cell writes, 2.8 GB, before the refusal).

use std::path::{Path, PathBuf};
use std::time::Instant;

use sheets::forks::ForkConfig;
use sheets::tools::editing::{
    EditBatchParams, StyleBatchParams, TransformBatchParams, edit_batch, style_batch, transform_batch,
};
use sheets::tools::forks::*;
use sheets::tools::restructure::{StructureBatchParams, structure_batch};
use sheets::{Budget, Engine, EngineConfig};

fn workspace(name: &str) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("gemba-limits-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let ws = root.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workspace");
    std::fs::copy(examples.join("model.xlsx"), ws.join("model.xlsx")).unwrap();
    (ws, root.join("state"))
}

fn engine_with(ws: &Path, state: &Path, max_batch: usize) -> Engine {
    let forks = ForkConfig { dir: state.to_path_buf(), max_batch, ..Default::default() };
    Engine::new(ws, EngineConfig { forks, ..Default::default() }).unwrap()
}

fn new_fork(e: &Engine) -> String {
    let id = e.workspace.list().iter().find(|x| x.rel_path == "model.xlsx").unwrap().id.clone();
    create_fork(e, CreateForkParams { workbook_id: id, label: None }, &Budget::unlimited()).unwrap().fork_id
}

fn cells_edited(e: &Engine, fork: &str) -> usize {
    let l = list_forks(e, ListForksParams {}, &Budget::unlimited()).unwrap();
    l.forks.iter().find(|f| f.fork_id == fork).unwrap().cells_edited
}

fn transform(e: &Engine, fork: &str, ops: serde_json::Value) -> Result<usize, String> {
    let p: TransformBatchParams =
        serde_json::from_value(serde_json::json!({"fork_id": fork, "sheet_name": "Inputs", "ops": ops})).unwrap();
    transform_batch(e, p, &Budget::unlimited()).map(|o| o.cells).map_err(|e| e.to_string())
}

#[test]
fn a_batch_is_bounded_as_a_whole_before_anything_is_built() {
    let (ws, state) = workspace("bounds");
    let e = engine_with(&ws, &state, 1000);
    let fork = new_fork(&e);
    let fills: Vec<_> = (0..300).map(|i| serde_json::json!({"op": "fill", "range": "A1:J100", "value": i})).collect();
    let t = Instant::now();
    let err = transform(&e, &fork, serde_json::Value::Array(fills)).unwrap_err();
    assert!(t.elapsed().as_secs() < 5);
    assert!(
        err.contains("300000 cells") && err.contains("limit is 1000") && err.contains("split") && err.contains("op #1"),
        "{err}"
    );
    // Each op kind counts: a move writes its source (cleared) and its target.
    let err = transform(&e, &fork, serde_json::json!([{"op": "move", "range": "A1:J60", "to": "M1"}])).unwrap_err();
    assert!(err.contains("1200 cells"), "{err}");
    let err = transform(&e, &fork, serde_json::json!([{"op": "write", "start": "A1", "rows": vec![vec![1; 40]; 26]}]))
        .unwrap_err();
    assert!(err.contains("1040 cells"), "{err}");
    // Clear and replace count the cells there are to change, not the area: a whole-sheet clear
    // of a small sheet is fine.
    assert!(transform(&e, &fork, serde_json::json!([{"op": "replace", "find": "zzz", "replace": "y"}])).is_ok());
    assert!(transform(&e, &fork, serde_json::json!([{"op": "clear", "range": "A1:Z5000"}])).unwrap() < 1000);
    // Up to the limit goes through.
    let ok = transform(
        &e,
        &fork,
        serde_json::json!([{"op": "fill", "range": "H1:H500", "value": 1},
                                                      {"op": "fill", "range": "I1:I500", "value": 2}]),
    );
    assert_eq!(ok, Ok(1000));

    let b = Budget::unlimited();
    let too_long: Vec<String> = (1..=1001).map(|i| format!("K{i}=1")).collect();
    let p: EditBatchParams =
        serde_json::from_value(serde_json::json!({"fork_id": fork, "sheet_name": "Inputs", "edits": too_long}))
            .unwrap();
    let err = edit_batch(&e, p, &b).unwrap_err().to_string();
    assert!(err.contains("1001 cells") && err.contains("split"), "{err}");

    let styles: Vec<_> =
        (0..3).map(|_| serde_json::json!({"range": "A1:J40", "font": {"bold": true}})).collect::<Vec<_>>();
    let p: StyleBatchParams =
        serde_json::from_value(serde_json::json!({"fork_id": fork, "sheet_name": "Inputs", "ops": styles})).unwrap();
    let err = style_batch(&e, p, &b).unwrap_err().to_string();
    assert!(err.contains("1200 cells") && err.contains("split"), "{err}");

    let copies: Vec<_> = (0..3)
        .map(|i| serde_json::json!({"op": "copy_range", "sheet_name": "Inputs", "range": "A1:B200", "to": format!("M{}", 1 + 200 * i)}))
        .collect();
    let p: StructureBatchParams = serde_json::from_value(serde_json::json!({"fork_id": fork, "ops": copies})).unwrap();
    let before = cells_edited(&e, &fork);
    let err = structure_batch(&e, p, &b).unwrap_err().to_string();
    assert!(err.contains("1200 cells") && err.contains("split"), "{err}");
    assert_eq!(cells_edited(&e, &fork), before, "nothing of a refused batch is applied");
}
