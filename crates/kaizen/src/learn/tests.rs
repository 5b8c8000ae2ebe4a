//! End-to-end tests of the report over synthetic request logs.

use std::path::PathBuf;

use rusqlite::Connection;

use super::cache::{MIB, Policy};
use super::signature::Category;
use super::synthetic::{LatencyShift, SyntheticSpec, generate, measured_hit_rate};
use super::*;

/// A fixed "now": 2025-03-05T00:00:00Z.
const UNTIL: i64 = 1_741_132_800_000;

struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kaizen-learn-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir.join("gemba.db"))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Some(d) = self.0.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn day_opts(capacity: Option<u64>) -> ReportOptions {
    ReportOptions { period: Period::Day, until_ms: UNTIL, capacity_bytes: capacity, ..Default::default() }
}

#[test]
fn the_planted_error_is_the_top_signature_with_its_category() {
    let db = TempDb::new("planted");
    let spec = SyntheticSpec::day(1, 20_000, UNTIL);
    let s = generate(&db.0, &spec).unwrap();
    let r = build(&db.0, &day_opts(Some(spec.cache_capacity_bytes))).unwrap();
    assert_eq!(r.requests, s.rows);
    let top = &r.errors.top[0];
    assert_eq!(top.signature, s.dominant_signature);
    assert_eq!(top.signature, "no sheet '?' in workbook <id>");
    assert_eq!((top.category, top.tool.as_str()), (Category::User, "read_table"));
    assert_eq!(top.count, s.dominant_count);
    assert_eq!(r.errors.total, s.errors);
    assert!(top.share > 0.5, "the planted error dominates: {}", top.share);
    assert!(r.errors.pareto_80 <= 2, "{}", r.errors.pareto_80);
    // Agents mostly recover (list_sheets, then the right read); some give up.
    assert_eq!(top.follow_up.next[0].tool, "list_sheets");
    assert!(top.follow_up.recovered > 0.6 && top.follow_up.abandoned > 0, "{:?}", top.follow_up);
    assert!(top.keys > 5 && top.example.args.as_deref().is_some_and(|a| a.contains("sheet_name")));
    // The other planted errors are there under their own categories.
    let cat = |sig: &str| r.errors.top.iter().find(|t| t.signature.starts_with(sig)).map(|t| t.category);
    assert_eq!(cat("workbook <id> could not be read"), Some(Category::Data));
    assert_eq!(cat("the server is at capacity"), Some(Category::Transient));
    assert_eq!(cat("invalid `limit`"), Some(Category::User));
    // The backlog leads with it.
    let item = r.backlog.iter().find(|b| b.id == top.id).expect("a backlog item for the top error");
    assert!(item.evidence.iter().any(|e| e.link == "/errors/top/0"));
    assert_eq!(r.backlog.iter().filter(|b| b.kind == backlog::Kind::Error).map(|b| &b.id).next(), Some(&top.id));
    // Workflows: the exploring one is found.
    assert!(
        r.usage
            .workflows
            .iter()
            .any(|w| w.sequence.starts_with(&["list_workbooks".to_string(), "describe_workbook".to_string()]))
    );
    assert!(r.usage.abandoned > 0 && r.usage.abandoned_after.iter().any(|t| t.tool == "read_table"));
    assert!(r.usage.truncation.iter().any(|t| t.tool == "read_table" && t.next_same_tool > 0.5));
}

#[test]
fn calls_their_clients_cancelled_are_no_errors() {
    let db = TempDb::new("cancelled");
    let spec = SyntheticSpec::day(3, 5_000, UNTIL);
    let s = generate(&db.0, &spec).unwrap();
    let conn = Connection::open(&db.0).unwrap();
    let n = conn
        .execute(
            "UPDATE requests SET outcome = 'cancelled', error_class = 'timeout', error_message = 'the call was cancelled' \
             WHERE rowid IN (SELECT rowid FROM requests WHERE outcome = 'ok' LIMIT 400)",
            [],
        )
        .unwrap();
    assert_eq!(n, 400);
    drop(conn);
    let r = build(&db.0, &day_opts(None)).unwrap();
    assert_eq!(r.requests, s.rows);
    assert_eq!(r.errors.total, s.errors);
    assert!(r.errors.top.iter().all(|t| !t.signature.contains("cancelled")), "{:?}", r.errors.top);
}

/// A plain byte-bounded LRU over (key, bytes, logged hit) accesses, written the obvious way (a
/// scan for the least recently used entry) with the embedder's semantics: an entry's size is the
/// largest logged since it was loaded; a resident entry that grows is a miss when it was logged
/// as one; after each access, least recently used entries other than the one in use are evicted
/// until the total fits.
fn reference_lru(accesses: &[(String, u64, bool)], capacity: u64) -> u64 {
    let mut entries: Vec<(String, u64, u64)> = Vec::new(); // key, size, last use
    let mut hits = 0;
    for (tick, (k, b, logged_hit)) in accesses.iter().enumerate() {
        match entries.iter_mut().find(|e| &e.0 == k) {
            Some(e) => {
                let grew = *b > e.1;
                e.1 = e.1.max(*b);
                if !grew || *logged_hit {
                    hits += 1;
                }
                e.2 = tick as u64;
            }
            None => entries.push((k.clone(), *b, tick as u64)),
        }
        while entries.iter().map(|e| e.1).sum::<u64>() > capacity {
            let victim = entries.iter().enumerate().filter(|(_, e)| &e.0 != k).min_by_key(|(_, e)| e.2).map(|(i, _)| i);
            match victim {
                Some(i) => {
                    entries.remove(i);
                }
                None => break,
            }
        }
    }
    hits
}

#[test]
fn the_cache_what_if_predicts_what_the_cache_then_measures() {
    for (seed, mib, workbooks) in [(7, 64, 40), (8, 32, 60), (9, 128, 120)] {
        what_if_on(seed, mib, workbooks);
    }
}

fn what_if_on(seed: u64, mib: u64, workbooks: usize) {
    let db = TempDb::new(&format!("cache-{seed}"));
    let spec = SyntheticSpec { cache_capacity_bytes: mib * MIB, workbooks, ..SyntheticSpec::day(seed, 20_000, UNTIL) };
    let s = generate(&db.0, &spec).unwrap();
    let r = build(&db.0, &day_opts(Some(spec.cache_capacity_bytes))).unwrap();
    let c = &r.cache;
    assert!((c.measured_hit_rate.unwrap() - s.measured_hit_rate).abs() < 1e-12);

    // The model equals an independent simulator run over the logged accesses.
    let conn = Connection::open(&db.0).unwrap();
    let accesses: Vec<(String, u64, bool)> = conn
        .prepare("SELECT key, key_bytes, cache_hit FROM requests WHERE key IS NOT NULL AND cache_hit IS NOT NULL ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, bool>(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(accesses.len() as u64, c.replayed);
    for w in c.whatif.iter().filter(|w| w.policy == Policy::Lru) {
        let reference = reference_lru(&accesses, (w.capacity_mb * MIB as f64) as u64) as f64 / accesses.len() as f64;
        assert!(
            (w.predicted_hit_rate - reference).abs() < 1e-12,
            "at {} MiB: {} vs {reference}",
            w.capacity_mb,
            w.predicted_hit_rate
        );
    }

    // At today's capacity the model is within 5 points of what was measured.
    let err = c.model_error_points.unwrap();
    assert!(err.abs() <= 5.0, "model error {err} points");

    // The recommendation: larger than today's (the cache is too small), and the same traffic
    // replayed at that capacity measures within 5 points of the prediction.
    let rec = c.recommendation.as_ref().unwrap();
    assert!(rec.capacity_mb > mib as f64 && rec.capacity_mb < c.working_set_mb, "{rec:?} of {}", c.working_set_mb);
    assert!(rec.predicted_hit_rate >= 0.95 * c.achievable_hit_rate - 1e-9);
    let at_rec =
        measured_hit_rate(&SyntheticSpec { cache_capacity_bytes: (rec.capacity_mb as u64) * MIB, ..spec.clone() })
            .unwrap();
    println!(
        "measured {:.4} at {mib} MiB, model {:.4}; recommended {} MiB: predicted {:.4}, measured {at_rec:.4}",
        s.measured_hit_rate,
        c.model_hit_rate.unwrap_or(0.0),
        rec.capacity_mb,
        rec.predicted_hit_rate
    );
    assert!(
        (at_rec - rec.predicted_hit_rate).abs() <= 0.05,
        "predicted {} at {} MiB, measured {at_rec}",
        rec.predicted_hit_rate,
        rec.capacity_mb
    );
    assert!(at_rec > s.measured_hit_rate + 0.05, "the larger cache helps: {at_rec} vs {}", s.measured_hit_rate);
    assert!(r.backlog.iter().any(|b| b.kind == backlog::Kind::Cache && b.title.contains("Raise the cache")));
    // Other policies are modelled at the capacities that matter.
    assert!(c.whatif.iter().any(|w| w.policy == Policy::Gdsf && w.capacity_mb == rec.capacity_mb));
}

#[test]
fn backlog_ids_are_stable_across_builds_and_data() {
    let (a, b) = (TempDb::new("stable-a"), TempDb::new("stable-b"));
    generate(&a.0, &SyntheticSpec::day(3, 8_000, UNTIL)).unwrap();
    generate(&b.0, &SyntheticSpec::day(4, 8_000, UNTIL)).unwrap();
    let opts = day_opts(Some(64 * MIB));
    let r1 = build(&a.0, &opts).unwrap();
    let r2 = build(&a.0, &opts).unwrap();
    let ids = |r: &Report| r.backlog.iter().map(|b| b.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&r1), ids(&r2));
    assert_eq!(r1.to_json(), r2.to_json());
    // Other traffic with the same causes: the same ids for them.
    let r3 = build(&b.0, &opts).unwrap();
    assert_eq!(r1.errors.top[0].id, r3.errors.top[0].id);
    let cache_id = |r: &Report| r.backlog.iter().find(|b| b.kind == backlog::Kind::Cache).map(|b| b.id.clone());
    assert!(cache_id(&r1).is_some());
    assert_eq!(cache_id(&r1), cache_id(&r3));
    // Efforts can be overridden by id or by kind, and the score follows.
    let mut o = opts.clone();
    o.effort_overrides.insert(r1.errors.top[0].id.clone(), 10.0);
    o.effort_overrides.insert("cache".into(), 2.0);
    let r4 = build(&a.0, &o).unwrap();
    let item = |r: &Report, id: &str| r.backlog.iter().find(|b| b.id == id).cloned().unwrap();
    let (before, after) = (item(&r1, &r1.errors.top[0].id), item(&r4, &r1.errors.top[0].id));
    assert_eq!(after.effort, 10.0);
    assert!((after.score - before.score * before.effort / 10.0).abs() < 0.2);
    assert_eq!(r4.backlog.iter().find(|b| b.kind == backlog::Kind::Cache).unwrap().effort, 2.0);
}

#[test]
fn trends_flag_a_real_change_and_not_noise() {
    let db = TempDb::new("trends");
    // Two days; on the second, read_table gets 1.6x slower.
    let mut spec = SyntheticSpec::day(5, 30_000, UNTIL);
    spec.start_ms = UNTIL - 2 * time::DAY_MS;
    spec.span_ms = 2 * time::DAY_MS;
    spec.latency_shift = Some(LatencyShift { tool: "read_table".into(), from_ms: UNTIL - time::DAY_MS, factor: 1.6 });
    generate(&db.0, &spec).unwrap();
    let r = build(&db.0, &day_opts(None)).unwrap();
    let rt = r.tool_changes.iter().find(|t| t.tool == "read_table").unwrap();
    let c = rt.change.as_ref().unwrap();
    assert!(c.latency_significant && c.direction == trends::Direction::Worse, "{c:?}");
    assert!(rt.p50_ms > c.prev_p50_ms * 1.3);
    for t in r.tool_changes.iter().filter(|t| t.tool != "read_table") {
        assert!(!t.change.as_ref().is_some_and(|c| c.significant), "noise flagged: {t:?}");
    }
    assert!(r.backlog.iter().any(|b| b.kind == backlog::Kind::Regression && b.title.starts_with("read_table")));

    // The same traffic without the change: nothing is flagged, per period or per day.
    let quiet = TempDb::new("trends-quiet");
    spec.latency_shift = None;
    generate(&quiet.0, &spec).unwrap();
    let r = build(&quiet.0, &day_opts(None)).unwrap();
    assert!(r.tool_changes.iter().all(|t| !t.change.as_ref().is_some_and(|c| c.significant)));
    assert!(r.trends.iter().all(|t| !t.change.as_ref().is_some_and(|c| c.significant)));
    assert!(r.trends.iter().any(|t| t.change.is_some()), "the days were compared");
}

#[test]
fn renders_json_markdown_and_html_with_every_section() {
    let db = TempDb::new("render");
    generate(&db.0, &SyntheticSpec::day(9, 6_000, UNTIL)).unwrap();
    // A row whose texts need escaping.
    {
        let mut conn = crate::store::open_rw(&db.0).unwrap();
        let row = crate::store::Row {
            at_ms: UNTIL - 1000,
            session: "s<1>".into(),
            tool: "read_table".into(),
            args_hash: "h".into(),
            duration_us: 1000,
            outcome: "internal",
            error_class: Some("system".into()),
            error_message: Some("boom <script>alert(1)</script> & \"quotes\"".into()),
            cache_hit: None,
            request_bytes: 1,
            response_bytes: 1,
            rows: 0,
            queue_us: 0,
            stages_us: Vec::new(),
            key: Some("<b>".into()),
            key_bytes: 0,
            truncated: false,
            args_excerpt: Some("{\"x\":\"</td>\"}".into()),
        };
        crate::store::write_batch(&mut conn, &[row]).unwrap();
    }
    let mut opts = day_opts(Some(64 * MIB));
    opts.slo_objectives = vec![("read_table-latency".into(), 0.999), ("read_table-availability".into(), 0.99)];
    opts.top_n = 50;
    let r = build(&db.0, &opts).unwrap();

    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    for k in ["period", "from", "until", "requests", "slo", "errors", "usage", "cache", "trends", "backlog"] {
        assert!(v.get(k).is_some(), "JSON lacks {k}");
    }
    assert_eq!(v["period"], "day");
    for k in ["slo", "sli", "objective", "budget_remaining"] {
        assert!(v["slo"][0].get(k).is_some(), "slo lacks {k}");
    }
    for k in ["signature", "category", "tool", "count", "share", "first_seen", "last_seen", "example"] {
        assert!(v["errors"]["top"][0].get(k).is_some(), "errors.top lacks {k}");
    }
    assert!(v["errors"]["total"].is_u64());
    for k in ["sessions", "workflows", "abandoned"] {
        assert!(v["usage"].get(k).is_some(), "usage lacks {k}");
    }
    for k in ["sequence", "sessions", "share"] {
        assert!(v["usage"]["workflows"][0].get(k).is_some(), "workflows lack {k}");
    }
    for k in ["measured_hit_rate", "whatif", "recommendation"] {
        assert!(v["cache"].get(k).is_some(), "cache lacks {k}");
    }
    for k in ["policy", "capacity_mb", "predicted_hit_rate"] {
        assert!(v["cache"]["whatif"][0].get(k).is_some() && v["cache"]["recommendation"].get(k).is_some());
    }
    for k in ["tool", "day", "calls", "error_rate", "p95_ms"] {
        assert!(v["trends"][0].get(k).is_some(), "trends lack {k}");
    }
    for k in ["id", "title", "evidence", "impact", "confidence", "effort", "score"] {
        assert!(v["backlog"][0].get(k).is_some(), "backlog lacks {k}");
    }
    // The latency SLO of the 200 ms threshold with 0.999 is burning (the synthetic misses cost).
    assert!(r.slo.iter().any(|l| l.slo == "read_table-latency" && l.objective == Some(0.999)));

    let md = r.to_markdown();
    for h in [
        "# Kaizen report",
        "## Improvement backlog",
        "## SLO compliance",
        "## Errors",
        "## Usage",
        "## Cache what-if",
        "## Trends",
        "## Value stream",
    ] {
        assert!(md.contains(h), "markdown lacks {h}");
    }
    assert!(md.contains("no sheet '?' in workbook <id>"));

    let html = r.to_html();
    for id in ["/backlog", "/slo", "/trends", "/errors", "/usage", "/cache", "/value_stream", "/runs"] {
        assert!(html.contains(&format!("<section id=\"{id}\">")), "html lacks section {id}");
    }
    assert!(html.matches("<svg").count() >= 4, "charts: SLO, latency, errors, cache");
    assert!(!html.contains("<script"), "no scripts, and texts are escaped");
    assert!(html.contains("boom &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;"));
    assert!(!html.contains("</td>\"}"));
    assert!(!html.contains("http://") || html.matches("http://").all(|_| true));
    assert!(!html.contains("src=") && !html.contains("<link"), "self-contained");
    assert!(!html.contains("NaN") && !html.contains("inf"));
    // Every backlog link points at an element of the page.
    for b in &r.backlog {
        for e in &b.evidence {
            let target = e.link.split('/').take(4).collect::<Vec<_>>().join("/");
            assert!(html.contains(&format!("id=\"{}", target)), "no anchor for {}", e.link);
        }
    }
}

#[test]
fn reads_logs_written_before_the_new_columns() {
    let db = TempDb::new("old");
    std::fs::create_dir_all(db.0.parent().unwrap()).unwrap();
    let conn = Connection::open(&db.0).unwrap();
    conn.execute_batch(
        "CREATE TABLE requests (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, session TEXT NOT NULL, tool TEXT NOT NULL,
            args_hash TEXT NOT NULL, duration_us INTEGER NOT NULL, outcome TEXT NOT NULL, error_class TEXT, error_message TEXT,
            cache_hit INTEGER, request_bytes INTEGER NOT NULL, response_bytes INTEGER NOT NULL, rows INTEGER NOT NULL);
         CREATE INDEX requests_at ON requests(at_ms);",
    )
    .unwrap();
    for i in 0..100i64 {
        let (outcome, class, msg) = if i % 4 == 0 {
            ("tool_error", Some("user"), Some("no sheet '?' in workbook sales-#f#a; sheets are: Summary, Data"))
        } else if i % 10 == 1 {
            ("tool_error", Some("user"), Some("workbook q-#a could not be read: not a zip archive"))
        } else {
            ("ok", None, None)
        };
        conn.execute(
            "INSERT INTO requests (at_ms, session, tool, args_hash, duration_us, outcome, error_class, error_message, cache_hit, request_bytes, response_bytes, rows)
             VALUES (?1, 's', 'read_table', 'h', 1000, ?2, ?3, ?4, 1, 1, 1, 1)",
            rusqlite::params![UNTIL - 10_000 + i, outcome, class, msg],
        )
        .unwrap();
    }
    drop(conn);
    let r = build(&db.0, &day_opts(None)).unwrap();
    assert_eq!(r.requests, 100);
    assert_eq!(r.errors.top[0].signature, "no sheet '?' in workbook <id>");
    assert_eq!(r.errors.top[0].count, 25);
    // Filed under `user` by the old version; the message says it is the file.
    assert_eq!(r.errors.top[1].category, Category::Data);
    assert_eq!(r.cache.replayed, 0);
    assert_eq!(r.cache.measured_hit_rate, Some(1.0));
    // Opening it as a store migrates it: the new columns are added.
    let store = crate::store::Store::open(db.0.parent().unwrap(), crate::store::Retention::default()).unwrap();
    drop(store);
    let conn = Connection::open(&db.0).unwrap();
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('requests')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for c in ["key", "key_bytes", "truncated", "args_excerpt", "queue_us", "stages_us"] {
        assert!(cols.iter().any(|x| x == c), "{c} not added");
    }
}

#[test]
fn runs_show_configuration_and_version_changes() {
    let db = TempDb::new("runs");
    let dir = db.0.parent().unwrap().to_path_buf();
    let store = crate::store::Store::open(&dir, crate::store::Retention::default()).unwrap();
    store.record_run("0.1.0", &serde_json::json!({"cache_mb": 512})).unwrap();
    store.record_run("0.2.0", &serde_json::json!({"cache_mb": 128})).unwrap();
    drop(store);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let runs = crate::store::load_runs(&db.0, 0).unwrap();
    assert_eq!(runs.len(), 2);
    let r = build(&db.0, &ReportOptions { period: Period::Day, until_ms: now + 1000, ..Default::default() }).unwrap();
    assert_eq!(r.runs.len(), 2);
    assert_eq!(r.runs[1].previous_version.as_deref(), Some("0.1.0"));
    assert_eq!(r.runs[1].config_changes, vec!["/cache_mb: 512 → 128"]);
    // The run before the period is the baseline, not a change in it.
    let later = crate::store::load_runs(&db.0, now + 1).unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].version, "0.2.0");
}

#[test]
fn bad_options_and_missing_logs_say_what_to_do() {
    let missing = std::env::temp_dir().join("kaizen-learn-none/gemba.db");
    let e = build(&missing, &ReportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("no request log") && e.contains("gemba.db"), "{e}");
    let db = TempDb::new("opts");
    generate(&db.0, &SyntheticSpec::day(2, 100, UNTIL)).unwrap();
    let e = build(&db.0, &ReportOptions { top_n: 0, ..day_opts(None) }).unwrap_err().to_string();
    assert!(e.contains("top_n") && e.contains("1 to 1000"), "{e}");
    let e = build(&db.0, &ReportOptions { slo_objectives: vec![("x".into(), 99.9)], ..day_opts(None) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("0.999"), "{e}");
    assert!("fortnight".parse::<Period>().unwrap_err().to_string().contains("day, week or month"));
    assert!("pdf".parse::<Format>().is_err());
    // An empty period is a report with nothing in it, not an error.
    let r = build(&db.0, &ReportOptions { until_ms: UNTIL - 10 * time::DAY_MS, ..day_opts(None) }).unwrap();
    assert_eq!((r.requests, r.errors.total, r.backlog.len()), (0, 0, 0));
    assert!(r.to_html().contains("Nothing stands out"));
}

/// CPU seconds (user + system, all threads) this process has used.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime, in clock ticks (100 per second on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

/// Reads a `/proc/self/status` field in kB.
fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// The 2-million-row figure: run with
/// `cargo test -p kaizen --release -- --ignored --nocapture report_over_two_million_rows`.
#[test]
#[ignore]
fn report_over_two_million_rows() {
    // KAIZEN_PERF_DB=<path> keeps the generated log there and reuses it on the next run.
    let keep = std::env::var_os("KAIZEN_PERF_DB").map(PathBuf::from);
    let tmp = TempDb::new("perf");
    let path = keep.clone().unwrap_or_else(|| tmp.0.clone());
    let rows: u64 = std::env::var("KAIZEN_PERF_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let t = std::time::Instant::now();
    let spec = SyntheticSpec::bench(11, rows, UNTIL);
    if keep.is_none() || !path.exists() {
        generate(&path, &spec).unwrap();
    }
    let gen_s = t.elapsed().as_secs_f64();
    // Reset the peak so the figure is the report's alone.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kb("VmHWM:").unwrap_or(0);
    let t = std::time::Instant::now();
    let cpu0 = cpu_seconds();
    let r = build(&path, &day_opts(Some(spec.cache_capacity_bytes))).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let peak = status_kb("VmHWM:").unwrap_or(0);
    let html = r.to_html();
    println!(
        "rows {} generated in {gen_s:.1}s; report in {secs:.2}s wall, {cpu:.2}s CPU, peak RSS {:.0} MB (before {:.0} MB); {} sessions, {} signatures, html {} KB",
        r.requests,
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
        r.usage.sessions,
        r.errors.signatures,
        html.len() / 1024
    );
    assert_eq!(r.requests, rows);
    // Loose: a busy machine stretches the wall time, so the bound is on CPU time (both threads).
    assert!(cpu <= 10.0 * if cfg!(debug_assertions) { 20.0 } else { 1.0 }, "report took {cpu:.2}s of CPU");
    assert!(peak <= 200 * 1024, "peak RSS {peak} kB");
}

/// Writes a sample report in every format to `$KAIZEN_SAMPLE_DIR` (for looking at them):
/// `KAIZEN_SAMPLE_DIR=/tmp/r cargo test -p kaizen -- --ignored sample_report`.
#[test]
#[ignore]
fn sample_report() {
    let Some(dir) = std::env::var_os("KAIZEN_SAMPLE_DIR").map(PathBuf::from) else { return };
    let db = TempDb::new("sample");
    let mut spec = SyntheticSpec::day(21, 40_000, UNTIL);
    spec.start_ms = UNTIL - 3 * time::DAY_MS;
    spec.span_ms = 3 * time::DAY_MS;
    spec.latency_shift = Some(LatencyShift { tool: "find_value".into(), from_ms: UNTIL - time::DAY_MS, factor: 2.0 });
    generate(&db.0, &spec).unwrap();
    let mut opts = day_opts(Some(spec.cache_capacity_bytes));
    opts.period = Period::Week;
    opts.slo_objectives = vec![
        ("read_table-latency".into(), 0.99),
        ("list_sheets-latency".into(), 0.95),
        ("find_value-availability".into(), 0.999),
    ];
    let r = build(&db.0, &opts).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.json"), r.to_json()).unwrap();
    std::fs::write(dir.join("report.md"), r.to_markdown()).unwrap();
    std::fs::write(dir.join("report.html"), r.to_html()).unwrap();
}
