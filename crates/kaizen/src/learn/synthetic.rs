//! A seeded generator of realistic request logs, for tests and benchmarks: agents running
//! sessions of typical workflows over a set of keys (workbooks) with Zipf popularity, one
//! dominant planted mistake (a misspelled sheet name, which agents mostly recover from), a few
//! rarer errors of every category, responses cut at caps, lognormal latencies, and an embedded
//! byte-bounded LRU cache with partial loading (a workbook grows as its sheets are loaded) that
//! decides each request's hit or miss and the key's size — the semantics of Gemba's own cache.
//!
//! The traffic depends only on the seed, never on the cache, so the same seed replayed at another
//! capacity gives the hit rate that capacity really has: the check a what-if must pass.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::Path;

use super::LearnError;
use crate::store::Row;

/// splitmix64: tiny, fast, good enough for simulation (and no dependency).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// A standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.f64().max(1e-300);
        let v = self.f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Lognormal with the given median and log-space sigma.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }
}

/// A latency change planted from a time on, for trend tests.
#[derive(Debug, Clone)]
pub struct LatencyShift {
    pub tool: String,
    pub from_ms: i64,
    pub factor: f64,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub seed: u64,
    /// Requests to write.
    pub rows: u64,
    /// First request time (Unix ms); the traffic fills about 90 % of `span_ms` after it.
    pub start_ms: i64,
    pub span_ms: i64,
    /// Clients working at the same time.
    pub agents: usize,
    /// Distinct keys (workbooks) besides the unreadable one.
    pub workbooks: usize,
    /// Capacity of the simulated cache, bytes.
    pub cache_capacity_bytes: u64,
    /// Share of reading sessions whose first read names a sheet that does not exist.
    pub dominant_error_share: f64,
    pub latency_shift: Option<LatencyShift>,
    /// Also write SLI minutes (`<tool>-latency`, `<tool>-availability`).
    pub slo_minutes: bool,
}

impl SyntheticSpec {
    /// A day of traffic ending at `until_ms`, with a 64 MiB cache (too small for the working set).
    pub fn day(seed: u64, rows: u64, until_ms: i64) -> Self {
        Self {
            seed,
            rows,
            start_ms: until_ms - super::time::DAY_MS,
            span_ms: super::time::DAY_MS,
            agents: 12,
            workbooks: 40,
            cache_capacity_bytes: 64 << 20,
            dominant_error_share: 0.3,
            latency_shift: None,
            slo_minutes: true,
        }
    }
}

impl SyntheticSpec {
    /// The benchmark's day: `rows` requests from 64 agents over 200 workbooks (about 1.6 GB of
    /// working set) with a 64 MiB cache.
    pub fn bench(seed: u64, rows: u64, until_ms: i64) -> Self {
        Self { workbooks: 200, agents: 64, ..Self::day(seed, rows, until_ms) }
    }
}

/// What was generated.
#[derive(Debug, Clone)]
pub struct SyntheticSummary {
    pub rows: u64,
    pub sessions: u64,
    pub errors: u64,
    /// Hits over requests with a cache outcome in the simulated cache.
    pub measured_hit_rate: f64,
    /// Every workbook fully loaded.
    pub working_set_bytes: u64,
    /// The planted mistake: its tool, category, normalized signature and count.
    pub dominant_tool: String,
    pub dominant_category: super::signature::Category,
    pub dominant_signature: String,
    pub dominant_count: u64,
    /// Time of the last request.
    pub last_ms: i64,
}

const SHEET_NAMES: [&str; 8] = ["Summary", "Data", "Inputs", "Calc", "Q1", "Q2", "Q3", "Notes"];
const MISSPELLED: [&str; 6] = ["Sumary", "summary ", "Dta", "Inputz", "Calcs", "Note"];
const BOOK_NAMES: [&str; 10] =
    ["sales", "budget", "inventory", "payroll", "forecast", "ledger", "survey", "orders", "costs", "metrics"];
const BROKEN: &str = "scan-0bad";
const META_BYTES: u64 = 64 << 10;

struct Book {
    id: String,
    sheets: Vec<u64>,
}

/// Which sheets a call needs loaded.
#[derive(Debug, Clone, Copy)]
enum Need {
    None,
    Meta,
    Sheet(usize),
    All,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// The planted mistake.
    Misspelled,
    BadLimit,
    Broken,
}

#[derive(Debug, Clone, Copy)]
struct Step {
    tool: &'static str,
    book: Option<usize>,
    need: Need,
    fault: Fault,
    /// Chance the response is cut at a cap.
    truncates: f64,
}

fn step(tool: &'static str, book: Option<usize>, need: Need) -> Step {
    Step { tool, book, need, fault: Fault::None, truncates: 0.0 }
}

/// The tools' median latency (ms) and the SLO latency threshold (ms).
fn profile(tool: &str) -> (f64, f64) {
    match tool {
        "list_workbooks" => (2.0, 50.0),
        "describe_workbook" => (3.0, 100.0),
        "list_sheets" => (4.0, 20.0),
        "sheet_overview" => (15.0, 500.0),
        "read_table" => (8.0, 200.0),
        "find_value" => (25.0, 200.0),
        "range_values" => (5.0, 200.0),
        "workbook_summary" => (40.0, 1000.0),
        "table_profile" => (30.0, 1000.0),
        "create_fork" => (10.0, 500.0),
        "edit_batch" => (6.0, 500.0),
        "recalculate" => (120.0, 5000.0),
        "get_changeset" => (5.0, 500.0),
        "save_fork" => (30.0, 1000.0),
        _ => (10.0, 500.0),
    }
}

/// The embedder's cache: byte-bounded LRU over workbooks, each holding its metadata and the
/// sheets loaded so far; evicts least recently used workbooks (never the one in use) after any
/// load until the total fits.
struct SheetCache {
    capacity: u64,
    entries: HashMap<usize, (u64, u64, u64)>, // book -> (loaded sheet mask, bytes, last use)
    tick: u64,
    total: u64,
}

impl SheetCache {
    fn access(&mut self, book: usize, b: &Book, need: Need) -> (bool, u64) {
        self.tick += 1;
        let want: u64 = match need {
            Need::None | Need::Meta => 0,
            Need::Sheet(s) => 1 << s,
            Need::All => (1u64 << b.sheets.len()) - 1,
        };
        let bytes_of = |mask: u64| {
            META_BYTES + b.sheets.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, s)| *s).sum::<u64>()
        };
        let (hit, bytes) = match self.entries.get_mut(&book) {
            Some(e) => {
                e.2 = self.tick;
                if e.0 & want == want {
                    (true, e.1)
                } else {
                    e.0 |= want;
                    let nb = bytes_of(e.0);
                    self.total += nb - e.1;
                    e.1 = nb;
                    // As in Gemba: a read that loads a sheet is a miss; a listing that loads
                    // every sheet of a cached workbook is logged as a hit.
                    (matches!(need, Need::All), nb)
                }
            }
            None => {
                let nb = bytes_of(want);
                self.entries.insert(book, (want, nb, self.tick));
                self.total += nb;
                (false, nb)
            }
        };
        while self.total > self.capacity {
            let victim = self.entries.iter().filter(|(k, _)| **k != book).min_by_key(|(_, e)| e.2).map(|(k, _)| *k);
            match victim {
                Some(v) => {
                    if let Some(e) = self.entries.remove(&v) {
                        self.total -= e.1;
                    }
                }
                None => break,
            }
        }
        (hit, bytes)
    }
}

struct Agent {
    plan: VecDeque<Step>,
    session: String,
}

/// Plan one session from the traffic stream.
fn plan_session(rng: &mut Rng, books: &[Book], cdf: &[f64], dominant: f64) -> VecDeque<Step> {
    let pick = |rng: &mut Rng| {
        let u = rng.f64();
        cdf.partition_point(|c| *c < u).min(books.len() - 1)
    };
    let mut p = VecDeque::new();
    let b = pick(rng);
    let nsheets = books[b].sheets.len();
    let sheet = rng.below(nsheets);
    let u = rng.f64();
    // The planted mistake: a read naming a sheet that does not exist; mostly recovered from.
    let mistake = |rng: &mut Rng, p: &mut VecDeque<Step>| -> bool {
        if !rng.chance(dominant) {
            return false;
        }
        p.push_back(Step { fault: Fault::Misspelled, ..step("read_table", Some(b), Need::Meta) });
        let r = rng.f64();
        if r < 0.15 {
            return true; // gives up: the session ends here
        }
        if r < 0.85 {
            p.push_back(step("list_sheets", Some(b), Need::All));
        }
        false
    };
    if u < 0.35 {
        p.push_back(step("list_workbooks", None, Need::None));
        p.push_back(step("describe_workbook", Some(b), Need::Meta));
        if mistake(rng, &mut p) {
            return p;
        }
        p.push_back(step("list_sheets", Some(b), Need::All));
        p.push_back(step("sheet_overview", Some(b), Need::Sheet(sheet)));
        let pages = 1 + usize::from(rng.chance(0.4)) + usize::from(rng.chance(0.2));
        for i in 0..pages {
            let last = i + 1 == pages;
            p.push_back(Step {
                truncates: if last { 0.1 } else { 1.0 },
                ..step("read_table", Some(b), Need::Sheet(sheet))
            });
        }
    } else if u < 0.60 {
        p.push_back(step("list_workbooks", None, Need::None));
        if rng.chance(0.04) {
            p.push_back(Step { fault: Fault::Broken, ..step("find_value", None, Need::Meta) });
            return p;
        }
        p.push_back(step("find_value", Some(b), Need::Sheet(sheet)));
        for _ in 0..1 + rng.below(2) {
            p.push_back(step("range_values", Some(b), Need::Sheet(sheet)));
        }
    } else if u < 0.80 {
        if mistake(rng, &mut p) {
            return p;
        }
        for _ in 0..2 + rng.below(3) {
            let s = rng.below(nsheets);
            let fault = if rng.chance(0.03) { Fault::BadLimit } else { Fault::None };
            p.push_back(Step { fault, truncates: 0.15, ..step("read_table", Some(b), Need::Sheet(s)) });
        }
    } else if u < 0.95 {
        p.push_back(step("describe_workbook", Some(b), Need::Meta));
        p.push_back(step("create_fork", Some(b), Need::Meta));
        for _ in 0..1 + rng.below(3) {
            p.push_back(step("edit_batch", Some(b), Need::None));
        }
        p.push_back(step("recalculate", Some(b), Need::None));
        p.push_back(step("get_changeset", Some(b), Need::None));
        p.push_back(step("save_fork", Some(b), Need::None));
    } else {
        p.push_back(step("workbook_summary", Some(b), Need::All));
        p.push_back(step("table_profile", Some(b), Need::Sheet(sheet)));
    }
    p
}

fn hex16(rng: &mut Rng) -> String {
    format!("{:016x}", rng.next_u64())
}

/// SLI counts: (slo, minute, good, total).
type SloMinutes = Vec<(String, i64, u64, u64)>;

/// Run the traffic, handing each request to `emit`; returns the summary and the SLI minutes.
fn simulate(
    spec: &SyntheticSpec,
    mut emit: impl FnMut(Row) -> Result<(), LearnError>,
) -> Result<(SyntheticSummary, SloMinutes), LearnError> {
    let mut setup = Rng::new(spec.seed);
    let books: Vec<Book> = (0..spec.workbooks.max(1))
        .map(|i| {
            let n = 2 + setup.below(5);
            Book {
                id: format!("{}-{:04x}", BOOK_NAMES[i % BOOK_NAMES.len()], setup.next_u64() & 0xffff),
                sheets: (0..n)
                    .map(|_| setup.lognormal(1.5 * 1048576.0, 0.8).clamp(20_000.0, 40.0 * 1048576.0) as u64)
                    .collect(),
            }
        })
        .collect();
    let working_set_bytes = books.iter().map(|b| META_BYTES + b.sheets.iter().sum::<u64>()).sum();
    // Zipf(0.9) popularity, shuffled so popularity is not the creation order.
    let mut weights: Vec<f64> = (1..=books.len()).map(|r| 1.0 / (r as f64).powf(0.9)).collect();
    for i in (1..weights.len()).rev() {
        weights.swap(i, setup.below(i + 1));
    }
    let sum: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let cdf: Vec<f64> = weights
        .iter()
        .map(|w| {
            acc += w / sum;
            acc
        })
        .collect();

    let mut traffic = Rng::new(spec.seed.wrapping_mul(31).wrapping_add(7));
    let mut lat = Rng::new(spec.seed.wrapping_mul(131).wrapping_add(11));
    let mut cache = SheetCache { capacity: spec.cache_capacity_bytes, entries: HashMap::new(), tick: 0, total: 0 };
    let agents_n = spec.agents.max(1);
    // Mean gap between one agent's calls, so the traffic fills about 90 % of the span.
    let gap = 0.9 * spec.span_ms as f64 * agents_n as f64 / spec.rows.max(1) as f64 / 1.3;
    let mut agents: Vec<Agent> =
        (0..agents_n).map(|_| Agent { plan: VecDeque::new(), session: String::new() }).collect();
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> =
        (0..agents_n).map(|a| Reverse((spec.start_ms + traffic.exp(gap) as i64, a))).collect();
    let mut summary = SyntheticSummary {
        rows: 0,
        sessions: 0,
        errors: 0,
        measured_hit_rate: 0.0,
        working_set_bytes,
        dominant_tool: "read_table".into(),
        dominant_category: super::signature::Category::User,
        dominant_signature: String::new(),
        dominant_count: 0,
        last_ms: spec.start_ms,
    };
    let (mut hits, mut lookups) = (0u64, 0u64);
    let mut slo: HashMap<(String, i64), (u64, u64)> = HashMap::new();
    while summary.rows < spec.rows {
        let Some(Reverse((t, a))) = heap.pop() else { break };
        let agent = &mut agents[a];
        if agent.plan.is_empty() {
            agent.plan = plan_session(&mut traffic, &books, &cdf, spec.dominant_error_share);
            agent.session = hex16(&mut traffic);
            summary.sessions += 1;
        }
        let Some(st) = agent.plan.pop_front() else { continue };
        // Everything drawn from `traffic` here is drawn whatever the cache does.
        let rejected = traffic.chance(0.003);
        let timeout = st.tool == "find_value" && traffic.chance(0.01);
        let internal = traffic.chance(0.0005);
        let truncated_draw = traffic.chance(st.truncates);
        let misspelling = MISSPELLED[traffic.below(MISSPELLED.len())];
        let args_hash = hex16(&mut traffic);
        let think = traffic.exp(gap);
        let idle = if agent.plan.is_empty() { traffic.exp(gap) } else { 0.0 };
        heap.push(Reverse((t + (think + idle).max(1.0) as i64, a)));

        let (median, threshold_ms) = profile(st.tool);
        let mut work_ms = lat.lognormal(median, 0.6);
        let queue_ms = lat.exp(0.2);
        let resp_draw = lat.lognormal(3000.0, 1.0);
        if let Some(sh) = &spec.latency_shift
            && sh.tool == st.tool
            && t >= sh.from_ms
        {
            work_ms *= sh.factor;
        }
        let book = st.book.map(|i| &books[i]);
        let key: Option<String> = match st.fault {
            Fault::Broken => Some(BROKEN.to_string()),
            _ => book.map(|b| b.id.clone()),
        };
        let (mut outcome, mut class, mut message): (&'static str, Option<&str>, Option<String>) = ("ok", None, None);
        let mut cache_hit = None;
        let mut key_bytes = 0u64;
        let mut load_ms = 0.0;
        let mut truncated = false;
        if rejected {
            outcome = "rejected";
            class = Some("transient");
            message = Some(format!(
                "the server is at capacity ({} calls running, {} waiting); retry after a short pause",
                8,
                4 + (t % 13)
            ));
            work_ms = 0.05;
        } else if st.fault == Fault::Broken {
            outcome = "tool_error";
            class = Some("data");
            message = Some(format!("workbook {BROKEN} could not be read: file is not a zip archive"));
        } else {
            if let (Some(bi), Some(b)) = (st.book, book)
                && !matches!(st.need, Need::None)
            {
                let (hit, bytes) = cache.access(bi, b, st.need);
                cache_hit = Some(hit);
                key_bytes = bytes;
                if !hit {
                    load_ms = bytes as f64 / 1048576.0 * 4.0;
                }
            } else if let Some(bi) = st.book {
                key_bytes = cache.entries.get(&bi).map(|e| e.1).unwrap_or(0);
            }
            if let (Fault::Misspelled, Some(b)) = (st.fault, book) {
                outcome = "tool_error";
                class = Some("user");
                let names: Vec<&str> = SHEET_NAMES.iter().take(b.sheets.len()).copied().collect();
                message =
                    Some(format!("no sheet '{misspelling}' in workbook {}; sheets are: {}", b.id, names.join(", ")));
            } else if st.fault == Fault::BadLimit {
                outcome = "tool_error";
                class = Some("user");
                message = Some(format!("invalid `limit`: must be at most 10000, got {}", 20_000 + (t % 7) * 5000));
            } else if timeout {
                outcome = "timeout";
                class = Some("transient");
                message = Some("the call took longer than its 5000ms budget and was stopped; narrow it (a sheet_name, a range, a smaller limit) and call again".into());
                work_ms = 5000.0;
            } else if internal {
                outcome = "internal";
                class = Some("system");
                message = Some(format!("internal error: sheet index {} out of range", t % 9));
            } else {
                truncated = truncated_draw;
            }
        }
        let duration_us = ((work_ms + load_ms + queue_ms) * 1000.0).max(1.0) as i64;
        let ok = outcome == "ok";
        if !ok {
            summary.errors += 1;
        }
        if st.fault == Fault::Misspelled && outcome == "tool_error" {
            summary.dominant_count += 1;
            if summary.dominant_signature.is_empty()
                && let Some(m) = &message
            {
                summary.dominant_signature = super::signature::normalize(m, key.as_deref());
            }
        }
        if let Some(h) = cache_hit {
            lookups += 1;
            hits += u64::from(h);
        }
        if spec.slo_minutes {
            let minute = t.div_euclid(60_000);
            let lat_e = slo.entry((format!("{}-latency", st.tool), minute)).or_default();
            lat_e.0 += u64::from(duration_us as f64 <= threshold_ms * 1000.0);
            lat_e.1 += 1;
            let av = slo.entry((format!("{}-availability", st.tool), minute)).or_default();
            av.0 += u64::from(!matches!(outcome, "timeout" | "internal"));
            av.1 += 1;
        }
        let args_excerpt = (!ok).then(|| {
            format!(
                "{{\"workbook_id\":\"{}\",\"sheet_name\":\"{}\",\"limit\":200}}",
                key.as_deref().unwrap_or(""),
                if st.fault == Fault::Misspelled { misspelling } else { "Data" }
            )
        });
        let row = Row {
            at_ms: t,
            session: agent.session.clone(),
            tool: st.tool.to_string(),
            args_hash,
            duration_us,
            outcome,
            error_class: class.map(str::to_string),
            error_message: message,
            cache_hit,
            request_bytes: 120,
            response_bytes: if ok { (if truncated { resp_draw * 4.0 } else { resp_draw }) as i64 } else { 300 },
            rows: if ok { 20 } else { 0 },
            queue_us: (queue_ms * 1000.0) as i64,
            stages_us: if ok {
                vec![
                    ("load".into(), (load_ms * 1000.0) as i64),
                    ("extract".into(), (work_ms * 700.0) as i64),
                    ("render".into(), (work_ms * 300.0) as i64),
                ]
            } else {
                Vec::new()
            },
            key,
            key_bytes: key_bytes as i64,
            truncated,
            args_excerpt,
        };
        emit(row)?;
        summary.rows += 1;
        summary.last_ms = summary.last_ms.max(t);
    }
    summary.measured_hit_rate = if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 };
    Ok((summary, slo.into_iter().map(|((n, m), (g, t))| (n, m, g, t)).collect()))
}

/// The hit rate the simulated cache has for `spec`'s traffic (nothing is written).
pub fn measured_hit_rate(spec: &SyntheticSpec) -> Result<f64, LearnError> {
    let mut quiet = spec.clone();
    quiet.slo_minutes = false;
    Ok(simulate(&quiet, |_| Ok(()))?.0.measured_hit_rate)
}

/// Write `spec.rows` requests (and SLI minutes) into the request log at `path` (created if
/// missing, appended to otherwise), in batched transactions.
pub fn generate(path: &Path, spec: &SyntheticSpec) -> Result<SyntheticSummary, LearnError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| LearnError::Synthetic { path: path.to_path_buf(), source })?;
    }
    let mut conn = crate::store::open_rw(path)?;
    let mut batch: Vec<Row> = Vec::with_capacity(20_000);
    let (summary, minutes) = simulate(spec, |row| {
        batch.push(row);
        if batch.len() >= 20_000 {
            crate::store::write_batch(&mut conn, &batch)?;
            batch.clear();
        }
        Ok(())
    })?;
    crate::store::write_batch(&mut conn, &batch)?;
    if !minutes.is_empty() {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO slo_minutes (slo, minute, good, total) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (slo, minute) DO UPDATE SET good = good + excluded.good, total = total + excluded.total",
            )?;
            for (n, m, g, t) in minutes {
                stmt.execute(rusqlite::params![n, m, g as i64, t as i64])?;
            }
        }
        tx.commit()?;
    }
    Ok(summary)
}
