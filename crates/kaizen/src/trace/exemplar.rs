//! Exemplars: per operation and histogram bucket, the trace id of the latest sampled call that
//! fell in it, written onto the bucket lines of an OpenMetrics exposition so a latency spike
//! links to a trace (`…_bucket{tool="x",le="0.5"} 7 # {trace_id="…"} 0.31 1767225600.123`).
//! prometheus-client 0.25 builds exemplars only inside its own metric types, so the lines are
//! annotated after encoding; the 0.0.4 text format has no exemplars and is left alone.

use std::fmt::Write as _;

use parking_lot::Mutex;

use super::context::TraceId;

/// One exemplar: the trace, the observed value (seconds) and when (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    pub trace_id: TraceId,
    pub value: f64,
    pub unix_seconds: f64,
}

/// The latest exemplar per (operation, bucket) of one histogram with fixed `edges`.
#[derive(Debug)]
pub struct Exemplars {
    edges: Vec<f64>,
    /// `ops × (edges + 1)` slots, the last of each row for `+Inf`.
    slots: Vec<Mutex<Option<Exemplar>>>,
}

impl Exemplars {
    pub fn new(ops: usize, edges: &[f64]) -> Self {
        Exemplars { edges: edges.to_vec(), slots: (0..ops * (edges.len() + 1)).map(|_| Mutex::new(None)).collect() }
    }

    fn bucket(&self, seconds: f64) -> usize {
        self.edges.iter().position(|e| seconds <= *e).unwrap_or(self.edges.len())
    }

    /// Keeps `trace` as the exemplar of the bucket `seconds` falls in (skipped if a scrape or
    /// another call holds that slot this instant: an exemplar is a sample, never a wait).
    pub fn record(&self, op: usize, seconds: f64, trace: TraceId, unix_seconds: f64) {
        let i = op * (self.edges.len() + 1) + self.bucket(seconds);
        if let Some(slot) = self.slots.get(i)
            && let Some(mut g) = slot.try_lock()
        {
            *g = Some(Exemplar { trace_id: trace, value: seconds, unix_seconds });
        }
    }

    /// The exemplar of operation `op` in the bucket whose upper bound is `le`.
    pub fn get(&self, op: usize, le: f64) -> Option<Exemplar> {
        let b = if le.is_infinite() { self.edges.len() } else { self.edges.iter().position(|e| *e == le)? };
        *self.slots.get(op * (self.edges.len() + 1) + b)?.lock()
    }
}

/// Appends exemplars to the bucket lines of `family` in an OpenMetrics text. `op_of` maps the
/// value of the line's `op_label` to the operation index `exemplars` was recorded with. Lines
/// that already carry an exemplar, or have no exemplar to add, are copied unchanged.
pub fn annotate(
    text: &str,
    family: &str,
    op_label: &str,
    exemplars: &Exemplars,
    op_of: impl Fn(&str) -> Option<usize>,
) -> String {
    let prefix = format!("{family}_bucket{{");
    let op_key = format!("{op_label}=\"");
    let mut out = String::with_capacity(text.len() + 1024);
    for line in text.lines() {
        out.push_str(line);
        if let Some(rest) = line.strip_prefix(&prefix)
            && !line.contains(" # ")
            && let Some(e) = exemplar_for(rest, &op_key, exemplars, &op_of)
        {
            let _ = write!(out, " # {{trace_id=\"{}\"}} {} {:.3}", e.trace_id, e.value, e.unix_seconds);
        }
        out.push('\n');
    }
    out
}

fn exemplar_for(
    labels: &str,
    op_key: &str,
    exemplars: &Exemplars,
    op_of: &impl Fn(&str) -> Option<usize>,
) -> Option<Exemplar> {
    let label = |key: &str| -> Option<&str> {
        let start = labels.find(key)? + key.len();
        let end = labels[start..].find('"')? + start;
        Some(&labels[start..end])
    };
    let op = op_of(label(op_key)?)?;
    let le = match label("le=\"")? {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    exemplars.get(op, le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_lines_of_the_family_get_the_latest_trace() {
        let ex = Exemplars::new(2, &[0.1, 1.0]);
        let t1 = TraceId([1; 16]);
        let t2 = TraceId([2; 16]);
        ex.record(1, 0.05, t1, 100.0);
        ex.record(1, 0.07, t2, 101.5);
        ex.record(0, 7.0, t1, 102.0);
        let text = "# TYPE d histogram\n\
            d_bucket{tool=\"a\",le=\"0.1\"} 0\n\
            d_bucket{tool=\"a\",le=\"+Inf\"} 1\n\
            d_bucket{tool=\"b\",le=\"0.1\"} 2\n\
            d_bucket{tool=\"b\",le=\"1.0\"} 2\n\
            other_bucket{tool=\"b\",le=\"0.1\"} 2\n\
            d_count{tool=\"b\"} 2\n# EOF\n";
        let op = |n: &str| ["a", "b"].iter().position(|x| *x == n);
        let out = annotate(text, "d", "tool", &ex, op);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "d_bucket{tool=\"a\",le=\"0.1\"} 0");
        assert_eq!(lines[2], format!("d_bucket{{tool=\"a\",le=\"+Inf\"}} 1 # {{trace_id=\"{t1}\"}} 7 102.000"));
        assert_eq!(lines[3], format!("d_bucket{{tool=\"b\",le=\"0.1\"}} 2 # {{trace_id=\"{t2}\"}} 0.07 101.500"));
        assert_eq!(lines[4], "d_bucket{tool=\"b\",le=\"1.0\"} 2");
        assert_eq!(lines[5], "other_bucket{tool=\"b\",le=\"0.1\"} 2");
        assert_eq!(out.lines().count(), text.lines().count());
    }
}
