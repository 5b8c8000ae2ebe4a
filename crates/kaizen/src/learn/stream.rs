//! The value stream per tool: where the time of its calls went (queue and named stages).

use serde::Serialize;

#[derive(Debug, Default, Clone)]
struct ToolAcc {
    calls: u64,
    total_us: i64,
    queue_us: i64,
    /// Summed microseconds per stage index.
    stages: Vec<i64>,
}

/// Most distinct stage names (an embedder has a handful; the rest are ignored).
const MAX_STAGES: usize = 32;

/// Feed rows, then `finish`.
#[derive(Debug, Default)]
pub(crate) struct StreamAcc {
    tools: Vec<ToolAcc>,
    /// Stage names as logged; few, so a linear search beats hashing.
    stages: Vec<Vec<u8>>,
}

fn stage_id(stages: &mut Vec<Vec<u8>>, name: &[u8]) -> Option<usize> {
    if let Some(i) = stages.iter().position(|s| s.as_slice() == name) {
        return Some(i);
    }
    if stages.len() >= MAX_STAGES {
        return None;
    }
    stages.push(name.to_vec());
    Some(stages.len() - 1)
}

/// The `"name": integer` pairs of a flat JSON object, without allocating; `None` when the text
/// is not such an object (then the caller falls back to a full parser).
fn flat_pairs(b: &[u8], mut f: impl FnMut(&[u8], i64)) -> Option<()> {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        skip_ws(&mut i);
        match b.get(i) {
            Some(b'}') => return Some(()),
            Some(b'"') => {}
            _ => return None,
        }
        let start = i + 1;
        let end = start + b[start..].iter().position(|c| *c == b'"')?;
        if b[start..end].contains(&b'\\') {
            return None;
        }
        let name = &b[start..end];
        i = end + 1;
        skip_ws(&mut i);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        skip_ws(&mut i);
        let num_start = i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let v: i64 = std::str::from_utf8(&b[num_start..i]).ok()?.parse().ok()?;
        f(name, v);
        skip_ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Some(()),
            _ => return None,
        }
    }
}

impl StreamAcc {
    pub fn observe(&mut self, tool: u16, duration_us: i64, queue_us: i64, stages_json: Option<&[u8]>) {
        let t = tool as usize;
        if self.tools.len() <= t {
            self.tools.resize(t + 1, ToolAcc::default());
        }
        let acc = &mut self.tools[t];
        acc.calls += 1;
        acc.total_us += duration_us.max(0);
        acc.queue_us += queue_us.max(0);
        let Some(js) = stages_json else { return };
        let stages = &mut self.stages;
        let mut add = |name: &[u8], v: i64| {
            if let Some(i) = stage_id(stages, name) {
                if acc.stages.len() <= i {
                    acc.stages.resize(i + 1, 0);
                }
                acc.stages[i] += v.max(0);
            }
        };
        if flat_pairs(js, &mut add).is_none()
            && let Ok(obj) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(js)
        {
            for (k, v) in obj {
                add(k.as_bytes(), v.as_i64().unwrap_or(0));
            }
        }
    }

    /// Lines per tool, the most total time first.
    pub fn finish(self, tools: &[String]) -> Vec<StageLine> {
        let all: i64 = self.tools.iter().map(|t| t.total_us).sum::<i64>().max(1);
        let names: Vec<String> = self.stages.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
        let mut out: Vec<StageLine> = self
            .tools
            .iter()
            .enumerate()
            .filter(|(_, a)| a.calls > 0)
            .map(|(i, a)| {
                let total = a.total_us.max(1) as f64;
                let mut stages: Vec<StageShare> = a
                    .stages
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| **v > 0)
                    .map(|(s, v)| StageShare {
                        stage: names.get(s).cloned().unwrap_or_default(),
                        share: round3(*v as f64 / total),
                        total_ms: round3(*v as f64 / 1000.0),
                    })
                    .collect();
                stages.sort_by(|x, y| y.share.total_cmp(&x.share).then_with(|| x.stage.cmp(&y.stage)));
                StageLine {
                    tool: tools.get(i).cloned().unwrap_or_default(),
                    calls: a.calls,
                    total_ms: round3(a.total_us as f64 / 1000.0),
                    mean_ms: round3(a.total_us as f64 / 1000.0 / a.calls as f64),
                    share_of_all_time: round3(a.total_us as f64 / all as f64),
                    queue_share: round3(a.queue_us as f64 / total),
                    stages,
                }
            })
            .collect();
        out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then_with(|| a.tool.cmp(&b.tool)));
        out
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One stage's share of a tool's time.
#[derive(Debug, Clone, Serialize)]
pub struct StageShare {
    pub stage: String,
    pub share: f64,
    pub total_ms: f64,
}

/// Where one tool's time went.
#[derive(Debug, Clone, Serialize)]
pub struct StageLine {
    pub tool: String,
    pub calls: u64,
    pub total_ms: f64,
    pub mean_ms: f64,
    /// This tool's share of the time of all calls.
    pub share_of_all_time: f64,
    /// Share of its time spent waiting for a slot.
    pub queue_share: f64,
    pub stages: Vec<StageShare>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stage_maps_fast_and_slow() {
        let mut s = StreamAcc::default();
        s.observe(0, 1000, 100, Some(br#"{"load":500,"extract":250}"#));
        s.observe(0, 1000, 100, Some(br#"{ "load" : 500 , "extract": 250 }"#));
        s.observe(0, 1000, 100, Some(br#"{"lo\"ad":1}"#)); // escaped: the full parser
        s.observe(0, 1000, 100, Some(b"not json"));
        let l = &s.finish(&["t".to_string()])[0];
        assert_eq!(l.calls, 4);
        assert_eq!(l.stages[0].stage, "load");
        assert_eq!(l.stages[0].share, 0.25);
        assert_eq!(l.stages[1].share, 0.125);
        assert_eq!(l.queue_share, 0.1);
    }
}
