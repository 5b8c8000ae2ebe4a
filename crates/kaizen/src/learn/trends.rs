//! Trends: per tool per day, calls, error rate and exact p50/p95 from the log, each compared with
//! the day before, and each tool's whole period with the previous period. A change is flagged
//! only when it is both statistically clear and large enough to matter, so noise raises no
//! alarm: error rates by a two-proportion z-test, latency by Mann–Whitney (the middle) and a
//! tail-exceedance test (the p95), each at `ALPHA` with a minimum volume and a minimum effect.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ids::FastMap;

use super::significance::{mann_whitney, quantile, tail_exceedance, two_proportions};
use super::time::date;

/// Significance level of every test (strict: a report makes hundreds of comparisons).
pub const ALPHA: f64 = 0.001;
/// Fewest calls on each side for a comparison to be made.
pub const MIN_CALLS: u64 = 50;
/// Smallest error-rate change that is flagged: absolute (points) and relative.
pub const MIN_ERROR_RATE_DELTA: f64 = 0.01;
pub const MIN_ERROR_RATE_RATIO: f64 = 1.25;
/// Smallest latency change that is flagged: relative, and absolute in microseconds.
pub const MIN_LATENCY_CHANGE: f64 = 0.10;
pub const MIN_LATENCY_DELTA_US: f64 = 100.0;

#[derive(Debug, Default)]
struct Cell {
    calls: u64,
    errors: u64,
    durations: Vec<u32>,
}

/// Per (tool, day) calls, errors and durations. Feed rows, then `finish`.
#[derive(Debug, Default)]
pub(crate) struct TrendAcc {
    cells: FastMap<(u16, i64), Cell>,
}

impl TrendAcc {
    pub fn observe(&mut self, tool: u16, at_ms: i64, duration_us: i64, ok: bool) {
        let c = self.cells.entry((tool, super::time::day_of(at_ms))).or_default();
        c.calls += 1;
        c.errors += u64::from(!ok);
        c.durations.push(duration_us.clamp(0, i64::from(u32::MAX)) as u32);
    }

    fn sorted(mut self) -> BTreeMap<(u16, i64), Cell> {
        for c in self.cells.values_mut() {
            c.durations.sort_unstable();
        }
        self.cells.into_iter().collect()
    }
}

/// How a figure moved against the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Worse,
    Better,
    /// One figure got worse and another better.
    Mixed,
    None,
}

/// A comparison with the previous day or period.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// What it is compared with: a day (`YYYY-MM-DD`) or "previous period".
    pub against: String,
    pub prev_calls: u64,
    pub prev_error_rate: f64,
    pub prev_p50_ms: f64,
    pub prev_p95_ms: f64,
    /// p-values (absent when either side has fewer than `MIN_CALLS` calls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail_p: Option<f64>,
    pub error_rate_significant: bool,
    pub latency_significant: bool,
    /// Either of the above.
    pub significant: bool,
    pub direction: Direction,
}

/// One tool on one day.
#[derive(Debug, Clone, Serialize)]
pub struct TrendRow {
    pub tool: String,
    pub day: String,
    pub calls: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// Against the day before (absent when the tool had no calls that day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
}

/// One tool over the whole period, against the previous period.
#[derive(Debug, Clone, Serialize)]
pub struct ToolChange {
    pub tool: String,
    pub calls: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
}

fn ms(us: u32) -> f64 {
    (f64::from(us) / 1000.0 * 1000.0).round() / 1000.0
}

fn rate(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// Compare `cur` with `prev`.
fn compare(against: String, prev: &Cell, cur: &Cell) -> Change {
    let enough = prev.calls >= MIN_CALLS && cur.calls >= MIN_CALLS;
    let (pr, cr) = (rate(prev.errors, prev.calls), rate(cur.errors, cur.calls));
    let (p50a, p50b) = (quantile(&prev.durations, 0.5), quantile(&cur.durations, 0.5));
    let (p95a, p95b) = (quantile(&prev.durations, 0.95), quantile(&cur.durations, 0.95));
    let (mut error_rate_p, mut latency_p, mut tail_p) = (None, None, None);
    // The sign (+1 worse, -1 better) of each change that is flagged.
    let mut signs: Vec<i8> = Vec::new();
    let sign = |z: f64| if z > 0.0 { 1i8 } else { -1 };
    let (mut err_sig, mut lat_sig) = (false, false);
    if enough {
        let (z, p) = two_proportions(cur.errors, cur.calls, prev.errors, prev.calls);
        error_rate_p = Some(p);
        let ratio = if pr.min(cr) == 0.0 { f64::INFINITY } else { pr.max(cr) / pr.min(cr) };
        if p < ALPHA && (cr - pr).abs() >= MIN_ERROR_RATE_DELTA && ratio >= MIN_ERROR_RATE_RATIO {
            err_sig = true;
            signs.push(sign(z));
        }
        let big = |a: u32, b: u32| {
            let d = (f64::from(b) - f64::from(a)).abs();
            d >= MIN_LATENCY_DELTA_US && d >= MIN_LATENCY_CHANGE * f64::from(a.max(1))
        };
        let (zm, pm) = mann_whitney(&cur.durations, &prev.durations);
        let (zt, pt) = tail_exceedance(&prev.durations, &cur.durations, 0.95);
        latency_p = Some(pm);
        tail_p = Some(pt);
        // The test and the percentile must agree on the direction.
        if pm < ALPHA && big(p50a, p50b) && (zm > 0.0) == (p50b > p50a) {
            lat_sig = true;
            signs.push(sign(zm));
        }
        if pt < ALPHA && big(p95a, p95b) && (zt > 0.0) == (p95b > p95a) {
            lat_sig = true;
            signs.push(sign(zt));
        }
    }
    let direction = if signs.is_empty() {
        Direction::None
    } else if signs.iter().all(|s| *s > 0) {
        Direction::Worse
    } else if signs.iter().all(|s| *s < 0) {
        Direction::Better
    } else {
        Direction::Mixed
    };
    Change {
        against,
        prev_calls: prev.calls,
        prev_error_rate: pr,
        prev_p50_ms: ms(p50a),
        prev_p95_ms: ms(p95a),
        error_rate_p,
        latency_p,
        tail_p,
        error_rate_significant: err_sig,
        latency_significant: lat_sig,
        significant: err_sig || lat_sig,
        direction,
    }
}

/// Rows per tool per day of `cur`, each against the day before (from `cur` or `prev`), and per
/// tool the whole period against `prev`.
pub(crate) fn finish(cur: TrendAcc, prev: TrendAcc, tools: &[String]) -> (Vec<TrendRow>, Vec<ToolChange>) {
    let cur = cur.sorted();
    let prev = prev.sorted();
    let name = |t: u16| tools.get(t as usize).cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for (&(tool, day), c) in &cur {
        let before = cur.get(&(tool, day - 1)).or_else(|| prev.get(&(tool, day - 1)));
        rows.push(TrendRow {
            tool: name(tool),
            day: date(day),
            calls: c.calls,
            errors: c.errors,
            error_rate: rate(c.errors, c.calls),
            p50_ms: ms(quantile(&c.durations, 0.5)),
            p95_ms: ms(quantile(&c.durations, 0.95)),
            change: before.map(|b| compare(date(day - 1), b, c)),
        });
    }
    rows.sort_by(|a, b| a.tool.cmp(&b.tool).then_with(|| a.day.cmp(&b.day)));

    let whole = |m: BTreeMap<(u16, i64), Cell>| {
        let mut out: BTreeMap<u16, Cell> = BTreeMap::new();
        for ((tool, _), c) in m {
            let w = out.entry(tool).or_default();
            w.calls += c.calls;
            w.errors += c.errors;
            w.durations.extend_from_slice(&c.durations);
        }
        for w in out.values_mut() {
            w.durations.sort_unstable();
        }
        out
    };
    let mut prev_whole = whole(prev);
    let cur_whole = whole(cur);
    let mut changes: Vec<ToolChange> = cur_whole
        .iter()
        .map(|(&tool, c)| ToolChange {
            tool: name(tool),
            calls: c.calls,
            error_rate: rate(c.errors, c.calls),
            p50_ms: ms(quantile(&c.durations, 0.5)),
            p95_ms: ms(quantile(&c.durations, 0.95)),
            change: prev_whole.remove(&tool).map(|p| compare("previous period".into(), &p, c)),
        })
        .collect();
    changes.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.tool.cmp(&b.tool)));
    (rows, changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::synthetic::Rng;

    fn cell(rng: &mut Rng, n: usize, median_us: f64, error_rate: f64) -> Cell {
        let mut durations: Vec<u32> = (0..n).map(|_| rng.lognormal(median_us, 0.6) as u32).collect();
        durations.sort_unstable();
        let errors = (0..n).filter(|_| rng.chance(error_rate)).count() as u64;
        Cell { calls: n as u64, errors, durations }
    }

    /// A seeded simulation of the false-positive rate: 1,000 comparisons of days drawn from the
    /// same distribution (volumes from 50 to 5,000 calls) flag at most a handful, while real
    /// changes of the sizes that matter are flagged.
    #[test]
    fn flags_real_changes_and_rarely_noise() {
        let mut rng = Rng::new(42);
        let mut false_alarms = 0;
        for i in 0..1000 {
            let n = [50, 200, 1000, 5000][i % 4];
            let (a, b) = (cell(&mut rng, n, 8000.0, 0.02), cell(&mut rng, n, 8000.0, 0.02));
            false_alarms += usize::from(compare("d".into(), &a, &b).significant);
        }
        println!("false alarms: {false_alarms} of 1000");
        assert!(false_alarms <= 3, "{false_alarms} false alarms in 1000 comparisons");

        let mut missed = 0;
        for _ in 0..100 {
            let prev = cell(&mut rng, 2000, 8000.0, 0.02);
            let slower = cell(&mut rng, 2000, 8000.0 * 1.3, 0.02);
            let c = compare("d".into(), &prev, &slower);
            missed += usize::from(!(c.latency_significant && c.direction == Direction::Worse));
            let failing = cell(&mut rng, 2000, 8000.0, 0.06);
            let c = compare("d".into(), &prev, &failing);
            missed += usize::from(!(c.error_rate_significant && c.direction == Direction::Worse));
        }
        println!("missed: {missed} of 200");
        assert!(missed <= 2, "{missed} of 200 real changes missed");

        // Too few calls: no verdict either way.
        let (a, b) = (cell(&mut rng, 20, 8000.0, 0.0), cell(&mut rng, 20, 80_000.0, 0.5));
        let c = compare("d".into(), &a, &b);
        assert!(!c.significant && c.latency_p.is_none());
    }
}
