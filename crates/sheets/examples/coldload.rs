//! Cold-load timings of one sheet, in process: the inflate floor of its XML, calamine's own
//! read, and Gemba's load (first page and full sheet). `cargo run --release -p sheets --example
//! coldload -- FILE.xlsx SHEET [RUNS]`. Medians of RUNS (default 5), alternating.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use calamine::Reader;
use sheets::{Budget, Engine, EngineConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn inflate(path: &Path, part: &str) -> Duration {
    let bytes = std::fs::read(path).unwrap();
    let t = Instant::now();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
    let mut f = zip.by_name(part).unwrap();
    let mut buf = vec![0u8; 1 << 18];
    let mut n = 0usize;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    std::hint::black_box(n);
    t.elapsed()
}

fn calamine_read(path: &Path, sheet: &str) -> Duration {
    let t = Instant::now();
    let mut wb: calamine::Xlsx<_> = calamine::open_workbook(path).unwrap();
    let r = wb.worksheet_range(sheet).unwrap();
    std::hint::black_box(r.get_size());
    t.elapsed()
}

fn gemba_load(path: &Path, sheet: &str) -> (Duration, Duration, usize, usize) {
    let dir = path.parent().unwrap();
    let t = Instant::now();
    let engine = Engine::new(dir, EngineConfig::default()).unwrap();
    let id = engine.workspace.list().iter().find(|e| e.abs_path == path).unwrap().id.clone();
    let budget = Budget::unlimited();
    let wb = engine.workbook(&id, &budget).unwrap();
    let opened = t.elapsed();
    let s = engine.sheet(&wb, Some(sheet), &budget).unwrap();
    let full = t.elapsed();
    (opened, full, s.cell_count(), s.heap_bytes())
}

/// (resident, peak resident) of this process in MB.
fn memory() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |k: &str| {
        s.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).unwrap_or(0)
    };
    (kb("VmRSS:") / 1024, kb("VmHWM:") / 1024)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = std::fs::canonicalize(&args[1]).unwrap();
    let sheet = &args[2];
    let part = args.get(4).cloned().unwrap_or_else(|| "xl/worksheets/sheet1.xml".into());
    let runs: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(5);
    // One load only (for valgrind): "gemba" or "inflate" or "calamine" as the 5th argument.
    match args.get(5).map(String::as_str) {
        Some("gemba") => {
            let before = memory();
            let (_, f, cells, bytes) = gemba_load(&path, sheet);
            println!("gemba full {:.1} ms, {cells} cells, {bytes} bytes", f.as_secs_f64() * 1e3);
            println!("memory (RSS, peak) before {before:?} after {:?}", memory());
            return;
        }
        Some("inflate") => {
            println!("inflate {:.1} ms", inflate(&path, &part).as_secs_f64() * 1e3);
            return;
        }
        Some("calamine") => {
            println!("calamine {:.1} ms", calamine_read(&path, sheet).as_secs_f64() * 1e3);
            return;
        }
        _ => {}
    }
    let (mut inf, mut cal, mut open, mut full) = (vec![], vec![], vec![], vec![]);
    let mut last = (0, 0);
    for _ in 0..runs {
        inf.push(inflate(&path, &part).as_secs_f64() * 1e3);
        cal.push(calamine_read(&path, sheet).as_secs_f64() * 1e3);
        let (o, f, cells, bytes) = gemba_load(&path, sheet);
        open.push(o.as_secs_f64() * 1e3);
        full.push(f.as_secs_f64() * 1e3);
        last = (cells, bytes);
    }
    let (i, c, f) = (median(inf), median(cal), median(full));
    println!(
        "inflate {i:.1} ms | calamine {c:.1} ms | gemba open {:.1} ms, full {f:.1} ms ({:.2}x inflate) | {} cells, {} bytes, {:.1} B/cell",
        median(open),
        f / i,
        last.0,
        last.1,
        last.1 as f64 / last.0 as f64
    );
}
