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
