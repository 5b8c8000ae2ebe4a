//! The workspace listing under an agent that guesses workbook ids: misses must not rescan a
//! large workspace again and again, and listing must keep answering while they come.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sheets::workspace::Workspace;

/// `n` small files (their content does not matter to a listing) in nested folders.
fn many_files(name: &str, n: usize) -> PathBuf {
    let root = std::env::temp_dir().join(format!("gemba-ws-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for i in 0..n {
        let dir = root.join(format!("d{}", i % 50)).join(format!("e{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("book-{i}.xlsx")), b"x").unwrap();
    }
    root
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn guessed_ids_do_not_rescan_the_workspace_or_stall_listing() {
    let root = many_files("guess", 5000);
    let ws = Arc::new(Workspace::open(&root).unwrap());
    assert_eq!(ws.list().len(), 5000);
    // What one scan costs on this machine now: the yardstick for "quick".
    let scans_before = ws.scan_count();
    std::thread::sleep(Duration::from_millis(1100));
    let t_scan = Instant::now();
    ws.list();
    let one_scan = t_scan.elapsed();
    assert_eq!(ws.scan_count(), scans_before + 1, "a stale listing is rescanned");

    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicU64::new(0));
    let guesser = {
        let (ws, stop, misses) = (ws.clone(), stop.clone(), misses.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let err = ws.resolve(&format!("guess-{i:04x}")).unwrap_err().to_string();
                assert!(err.contains("guess-"), "{err}");
                misses.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let scans_at_start = ws.scan_count();
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < Duration::from_secs(4) || misses.load(Ordering::Relaxed) < 40 {
        let t = Instant::now();
        assert_eq!(ws.list().len(), 5000);
        latencies.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(2));
        assert!(started.elapsed() < Duration::from_secs(120), "the guesser made no progress");
    }
    stop.store(true, Ordering::Relaxed);
    guesser.join().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let scans = ws.scan_count() - scans_at_start;
    let misses = misses.load(Ordering::Relaxed);
    let med = median(latencies.clone());
    // A listing that took half a scan or more waited for one.
    let stalls = latencies.iter().filter(|&&l| l >= one_scan / 2).count();
    println!(
        "{misses} misses and {} listings in {elapsed:.1} s: {scans} scans (one scan {:.1} ms); listing median {:.3} ms, max {:.1} ms, {stalls} waited for a scan",
        latencies.len(),
        one_scan.as_secs_f64() * 1e3,
        med.as_secs_f64() * 1e3,
        latencies.iter().max().unwrap().as_secs_f64() * 1e3,
    );
    // Listing refreshes once a second and misses rescan at most every two seconds.
    assert!((scans as f64) <= elapsed * 1.5 + 2.0, "{scans} scans in {elapsed:.1} s for {misses} misses");
    assert!(misses >= scans * 3, "misses must be far more than scans: {misses} misses, {scans} scans");
    // Listings answer from the current listing, not behind the guesser's scans: a listing waits
    // only for the once-a-second refresh it runs itself.
    assert!(med < one_scan / 4, "median listing {med:?} against one scan {one_scan:?}");
    assert!((stalls as f64) <= elapsed * 1.5 + 3.0, "{stalls} listings waited for a scan in {elapsed:.1} s");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_file_saved_just_now_is_found_by_its_path_at_once() {
    let root = many_files("fresh", 20);
    let ws = Workspace::open(&root).unwrap();
    assert_eq!(ws.list().len(), 20);
    // A miss on an unknown id has just rescanned; a new file must still be found by its path.
    assert!(ws.resolve("nothing-0000").is_err());
    std::fs::write(root.join("new.xlsx"), b"x").unwrap();
    let e = ws.resolve("new.xlsx").unwrap();
    assert_eq!(e.rel_path, "new.xlsx");
    // Found by its id right after, from the listing that scan made.
    assert_eq!(ws.resolve(&e.id).unwrap().rel_path, "new.xlsx");
    // A file the listing never shows (hidden) is not rescanned for again and again.
    std::fs::create_dir_all(root.join(".hidden")).unwrap();
    std::fs::write(root.join(".hidden/old.xlsx"), b"x").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    ws.resolve("nothing-0001").unwrap_err();
    let scans = ws.scan_count();
    for _ in 0..20 {
        ws.resolve(".hidden/old.xlsx").unwrap_err();
    }
    assert!(ws.scan_count() <= scans + 1, "{} scans for 20 misses", ws.scan_count() - scans);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn concurrent_misses_share_one_scan() {
    let root = many_files("share", 3000);
    let ws = Arc::new(Workspace::open(&root).unwrap());
    ws.list();
    std::thread::sleep(Duration::from_millis(2100));
    let before = ws.scan_count();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let ws = ws.clone();
            std::thread::spawn(move || ws.resolve(&format!("none-{i}")).is_err())
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
    // One scan for the stale listing and at most one for the misses (they share it), not eight.
    let scans = ws.scan_count() - before;
    assert!(scans <= 2, "{scans} scans for 8 concurrent misses");
    let _ = std::fs::remove_dir_all(&root);
}
