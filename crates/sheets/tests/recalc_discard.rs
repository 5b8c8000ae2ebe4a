//! Discarding a fork abandons its running in-process recalculation: the call returns at once
//! with a clear error while the engine (which cannot be interrupted) is still evaluating on its
//! own thread. A test binary of its own, so no other test's engine runs meanwhile.

use std::time::{Duration, Instant};

use sheets::forks::ForkConfig;
use sheets::forks::engine::EngineSlot;
use sheets::tools::forks::{CreateForkParams, ForkParams, create_fork, discard_fork};
use sheets::tools::verify::{RecalculateParams, recalculate};
use sheets::{Budget, Engine, EngineConfig};

/// A workbook whose evaluation takes a while: running totals over a long column, so each
/// of the n formulas reads up to n cells.
fn heavy_workbook(path: &std::path::Path, n: u32) {
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    for r in 0..n {
        ws.write_number(r, 0, f64::from(r)).unwrap();
        ws.write_formula(r, 1, format!("=SUM(A$1:A{})", r + 1).as_str()).unwrap();
    }
    wb.save(path).unwrap();
}

#[test]
fn discard_abandons_a_running_in_process_recalculation() {
    let root = std::env::temp_dir().join(format!("gemba-recalc-discard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let ws = root.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    heavy_workbook(&ws.join("heavy.xlsx"), 5_000);
    let forks = ForkConfig { dir: root.join("state"), ..Default::default() };
    let e = Engine::new(&ws, EngineConfig { forks, ..Default::default() }).unwrap();
    let id = e.workspace.list()[0].id.clone();
    let b = Budget::unlimited();
    let fork = create_fork(&e, CreateForkParams { workbook_id: id, label: None }, &b).unwrap().fork_id;
    let handle = e.forks.get(&fork).unwrap();

    std::thread::scope(|s| {
        let call = s.spawn(|| {
            let r = recalculate(&e, RecalculateParams { fork_id: fork.clone(), backend: None }, &Budget::unlimited());
            (r.map(|o| o.report.backend), Instant::now())
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(handle.recalculating() && EngineSlot::running() > 0) {
            assert!(Instant::now() < deadline, "the recalculation never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let discarded_at = Instant::now();
        discard_fork(&e, ForkParams { fork_id: fork.clone() }, &b).unwrap();
        let discard_took = discarded_at.elapsed();
        let (result, returned_at) = call.join().unwrap();
        let engine_still_running = EngineSlot::running() > 0;
        let err = result.unwrap_err().to_string();
        assert!(err.contains("discarded"), "{err}");
        assert!(discard_took < Duration::from_secs(2), "discard took {discard_took:?}");
        // The call did not wait for the engine: it was still evaluating when the call returned.
        assert!(
            engine_still_running,
            "the call returned {:?} after the discard, when the engine had already finished",
            returned_at - discarded_at
        );
        // The abandoned evaluation ends on its own and gives its slot back.
        let deadline = Instant::now() + Duration::from_secs(300);
        while EngineSlot::running() > 0 {
            assert!(Instant::now() < deadline, "the abandoned evaluation never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(!root.join("state").join(&fork).exists(), "the discarded fork's directory is gone");
    let _ = std::fs::remove_dir_all(&root);
}
