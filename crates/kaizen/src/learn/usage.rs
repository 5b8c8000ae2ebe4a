//! Usage patterns: sessions (a client's session split at idle gaps), the tool sequences in them,
//! the most common workflows (n-grams of 2 to 4 calls, each counted once per session), sessions
//! that end right after an error (abandonment), per-key heat, and what agents do after a
//! response that ran into a cap.

use serde::Serialize;

use super::ids::{FastMap, FastSet};

/// One call as the session tracker sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub tool: u16,
    pub ok: bool,
    /// The error signature's index when the call failed (and had one).
    pub sig: Option<u32>,
    pub truncated: bool,
}

/// What happened between calls of one session, for the analyses that care (error follow-ups).
#[derive(Debug, Clone, Copy)]
pub(crate) enum SessionEvent {
    /// `next` came right after `prev` in the same session.
    Next { prev: Call, next: Call },
    /// The session ended with `last` (no further call within the idle gap).
    End { last: Call },
}

/// Distinct n-grams remembered per session (for counting each once per session).
const MAX_GRAMS_PER_SESSION: usize = 512;
/// Distinct n-grams counted overall; new ones beyond are ignored.
const MAX_GRAMS: usize = 200_000;
/// Open sessions tracked at once; beyond, the least recently active are closed early.
const MAX_OPEN_SESSIONS: usize = 200_000;
/// Tool ids above this share one n-gram slot (15 bits per call in a packed n-gram).
const GRAM_TOOL_MAX: u16 = 0x7fff;

/// The n-grams a session has already counted: a short list (most sessions are short), turned
/// into a hash set when it grows.
#[derive(Debug)]
enum Seen {
    Few(Vec<u64>),
    Many(FastSet<u64>),
}

impl Seen {
    fn len(&self) -> usize {
        match self {
            Seen::Few(v) => v.len(),
            Seen::Many(s) => s.len(),
        }
    }

    /// Whether `g` is new (and now remembered).
    fn insert(&mut self, g: u64) -> bool {
        match self {
            Seen::Few(v) => {
                if v.contains(&g) {
                    return false;
                }
                if v.len() < 32 {
                    v.push(g);
                } else {
                    let mut s: FastSet<u64> = v.drain(..).collect();
                    s.insert(g);
                    *self = Seen::Many(s);
                }
                true
            }
            Seen::Many(s) => s.insert(g),
        }
    }
}

#[derive(Debug)]
struct Open {
    last_at: i64,
    last: Call,
    /// The previous calls' tools, most recent last.
    recent: [u16; 3],
    n_recent: usize,
    calls: u32,
    had_error: bool,
    grams: Seen,
}

#[derive(Debug, Default, Clone, Copy)]
struct TruncAcc {
    truncated: u64,
    next_same_tool: u64,
    next_other_tool: u64,
    next_error: u64,
    ended: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct KeyAcc {
    calls: u64,
    response_bytes: u64,
    hits: u64,
    misses: u64,
    errors: u64,
    max_bytes: u64,
    last_ms: i64,
}

/// The accumulator. Feed rows in time order, then `finish`.
#[derive(Debug)]
pub(crate) struct Usage {
    gap_ms: i64,
    open: FastMap<u64, Open>,
    sessions: u64,
    open_at_end: u64,
    lengths: Vec<u32>,
    grams: FastMap<u64, u64>,
    abandoned: u64,
    abandoned_by_tool: FastMap<u16, u64>,
    sessions_with_errors: u64,
    calls_per_tool: Vec<u64>,
    trunc: FastMap<u16, TruncAcc>,
    keys: Vec<KeyAcc>,
    rows_since_sweep: u32,
    last_at: i64,
}

fn pack(tools: &[u16]) -> u64 {
    let mut g = (tools.len() as u64) << 60;
    for (i, t) in tools.iter().enumerate() {
        g |= u64::from((*t).min(GRAM_TOOL_MAX)) << (45 - 15 * i);
    }
    g
}

fn unpack(g: u64) -> Vec<u16> {
    let n = (g >> 60) as usize;
    (0..n).map(|i| ((g >> (45 - 15 * i)) & 0x7fff) as u16).collect()
}

impl Usage {
    /// Sessions are split where a client stays idle for `gap_ms` (an hour-long stdio process
    /// running several tasks is several sessions).
    pub fn new(gap_ms: i64) -> Self {
        Self {
            gap_ms: gap_ms.max(1),
            open: FastMap::default(),
            sessions: 0,
            open_at_end: 0,
            lengths: Vec::new(),
            grams: FastMap::default(),
            abandoned: 0,
            abandoned_by_tool: FastMap::default(),
            sessions_with_errors: 0,
            calls_per_tool: Vec::new(),
            trunc: FastMap::default(),
            keys: Vec::new(),
            rows_since_sweep: 0,
            last_at: i64::MIN,
        }
    }

    /// Count a call of `session` at `at_ms`; `key` is the touched key's index, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        session: &[u8],
        at_ms: i64,
        call: Call,
        key: Option<(u32, &KeyTouch)>,
        sink: &mut impl FnMut(SessionEvent),
    ) {
        self.last_at = self.last_at.max(at_ms);
        let t = call.tool as usize;
        if self.calls_per_tool.len() <= t {
            self.calls_per_tool.resize(t + 1, 0);
        }
        self.calls_per_tool[t] += 1;
        if let Some((k, touch)) = key {
            let k = k as usize;
            if self.keys.len() <= k {
                self.keys.resize(k + 1, KeyAcc::default());
            }
            let a = &mut self.keys[k];
            a.calls += 1;
            a.response_bytes += touch.response_bytes;
            a.errors += u64::from(!call.ok);
            match touch.cache_hit {
                Some(true) => a.hits += 1,
                Some(false) => a.misses += 1,
                None => {}
            }
            a.max_bytes = a.max_bytes.max(touch.key_bytes);
            a.last_ms = a.last_ms.max(at_ms);
        }

        let id = super::ids::fnv64(session);
        let gap = self.gap_ms;
        let expired = self.open.get(&id).is_some_and(|o| at_ms - o.last_at > gap);
        if expired && let Some(o) = self.open.remove(&id) {
            self.close(o, sink);
        }
        if self.open.len() >= MAX_OPEN_SESSIONS && !self.open.contains_key(&id) {
            self.sweep(at_ms, true, sink);
        }
        let mut fresh = false;
        let o = self.open.entry(id).or_insert_with(|| {
            fresh = true;
            Open {
                last_at: at_ms,
                last: call,
                recent: [0; 3],
                n_recent: 0,
                calls: 0,
                had_error: false,
                grams: Seen::Few(Vec::new()),
            }
        });
        if !fresh {
            let prev = o.last;
            sink(SessionEvent::Next { prev, next: call });
            if prev.truncated {
                let a = self.trunc.entry(prev.tool).or_default();
                if !call.ok {
                    a.next_error += 1;
                } else if call.tool == prev.tool {
                    a.next_same_tool += 1;
                } else {
                    a.next_other_tool += 1;
                }
            }
        }
        if call.truncated {
            self.trunc.entry(call.tool).or_default().truncated += 1;
        }
        // n-grams ending with this call, once per session each.
        let mut seq = [0u16; 4];
        let n = o.n_recent;
        seq[..n].copy_from_slice(&o.recent[3 - n..]);
        seq[n] = call.tool;
        for len in 2..=(n + 1) {
            let g = pack(&seq[n + 1 - len..=n]);
            if o.grams.len() < MAX_GRAMS_PER_SESSION && o.grams.insert(g) {
                if let Some(c) = self.grams.get_mut(&g) {
                    *c += 1;
                } else if self.grams.len() < MAX_GRAMS {
                    self.grams.insert(g, 1);
                }
            }
        }
        o.recent.rotate_left(1);
        o.recent[2] = call.tool;
        o.n_recent = (o.n_recent + 1).min(3);
        o.calls += 1;
        o.had_error |= !call.ok;
        o.last = call;
        o.last_at = at_ms;

        self.rows_since_sweep += 1;
        if self.rows_since_sweep >= 65_536 {
            self.rows_since_sweep = 0;
            self.sweep(at_ms, false, sink);
        }
    }

    /// Close sessions idle for longer than the gap (or, when `force`, the oldest tenth).
    fn sweep(&mut self, now: i64, force: bool, sink: &mut impl FnMut(SessionEvent)) {
        let mut cutoff = now - self.gap_ms;
        if force {
            let mut ats: Vec<i64> = self.open.values().map(|o| o.last_at).collect();
            let tenth = ats.len() / 10;
            if tenth < ats.len() {
                ats.select_nth_unstable(tenth);
                cutoff = cutoff.max(ats[tenth]);
            }
        }
        let ids: Vec<u64> = self.open.iter().filter(|(_, o)| o.last_at <= cutoff).map(|(k, _)| *k).collect();
        for id in ids {
            if let Some(o) = self.open.remove(&id) {
                self.close(o, sink);
            }
        }
    }

    fn close(&mut self, o: Open, sink: &mut impl FnMut(SessionEvent)) {
        self.sessions += 1;
        self.lengths.push(o.calls);
        self.sessions_with_errors += u64::from(o.had_error);
        if !o.last.ok {
            self.abandoned += 1;
            *self.abandoned_by_tool.entry(o.last.tool).or_default() += 1;
        }
        if o.last.truncated {
            self.trunc.entry(o.last.tool).or_default().ended += 1;
        }
        sink(SessionEvent::End { last: o.last });
    }

    /// Close what is left: sessions idle for longer than the gap at `until_ms` have ended;
    /// the others are still open (counted, but not as abandoned).
    pub fn finish(
        mut self,
        until_ms: i64,
        tools: &[String],
        keys: &[String],
        top_n: usize,
        sink: &mut impl FnMut(SessionEvent),
    ) -> UsageSection {
        let open: Vec<Open> = self.open.drain().map(|(_, o)| o).collect();
        for o in open {
            if until_ms - o.last_at > self.gap_ms {
                self.close(o, sink);
            } else {
                self.sessions += 1;
                self.open_at_end += 1;
                self.lengths.push(o.calls);
                self.sessions_with_errors += u64::from(o.had_error);
            }
        }
        let name = |t: u16| tools.get(t as usize).cloned().unwrap_or_else(|| "other".into());
        let sessions = self.sessions;
        let share = |n: u64| if sessions == 0 { 0.0 } else { n as f64 / sessions as f64 };
        self.lengths.sort_unstable();
        let q = |p: f64| {
            if self.lengths.is_empty() {
                0
            } else {
                self.lengths[((p * self.lengths.len() as f64).ceil() as usize).clamp(1, self.lengths.len()) - 1]
            }
        };
        let calls: u64 = self.lengths.iter().map(|&l| u64::from(l)).sum();

        let workflows = workflows(&self.grams, sessions, top_n)
            .into_iter()
            .map(|(g, n)| Workflow {
                sequence: unpack(g).into_iter().map(name).collect(),
                sessions: n,
                share: share(n),
            })
            .collect();

        let mut abandoned_after: Vec<ToolCount> =
            self.abandoned_by_tool.iter().map(|(t, n)| ToolCount { tool: name(*t), count: *n }).collect();
        abandoned_after.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.tool.cmp(&b.tool)));
        abandoned_after.truncate(top_n);

        let mut truncation: Vec<TruncationLine> = self
            .trunc
            .iter()
            .filter(|(_, a)| a.truncated > 0)
            .map(|(t, a)| {
                let calls = self.calls_per_tool.get(*t as usize).copied().unwrap_or(0);
                let followed = a.next_same_tool + a.next_other_tool + a.next_error;
                let of = |n: u64| if followed == 0 { 0.0 } else { n as f64 / followed as f64 };
                TruncationLine {
                    tool: name(*t),
                    truncated: a.truncated,
                    share_of_calls: if calls == 0 { 0.0 } else { a.truncated as f64 / calls as f64 },
                    next_same_tool: of(a.next_same_tool),
                    next_other_tool: of(a.next_other_tool),
                    next_error: of(a.next_error),
                    ended: a.ended,
                }
            })
            .collect();
        truncation.sort_by(|a, b| b.truncated.cmp(&a.truncated).then_with(|| a.tool.cmp(&b.tool)));

        let heat = |(i, a): (usize, &KeyAcc)| KeyHeat {
            key: keys.get(i).cloned().unwrap_or_default(),
            calls: a.calls,
            bytes_served: a.response_bytes,
            hit_rate: if a.hits + a.misses == 0 { None } else { Some(a.hits as f64 / (a.hits + a.misses) as f64) },
            errors: a.errors,
            cached_bytes: a.max_bytes,
            last_seen: super::time::iso(a.last_ms),
        };
        let mut by_calls: Vec<(usize, &KeyAcc)> = self.keys.iter().enumerate().filter(|(_, a)| a.calls > 0).collect();
        by_calls.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then_with(|| a.0.cmp(&b.0)));
        let hot: Vec<KeyHeat> = by_calls.iter().take(top_n).copied().map(heat).collect();
        let cold: Vec<KeyHeat> = by_calls
            .iter()
            .rev()
            .take(top_n.min(by_calls.len().saturating_sub(hot.len())))
            .copied()
            .map(heat)
            .collect();

        UsageSection {
            sessions,
            open_sessions: self.open_at_end,
            calls,
            calls_per_session_p50: q(0.5),
            calls_per_session_p90: q(0.9),
            sessions_with_errors: self.sessions_with_errors,
            workflows,
            abandoned: self.abandoned,
            abandoned_share: share(self.abandoned),
            abandoned_after,
            truncation,
            keys: by_calls.len() as u64,
            hot_keys: hot,
            cold_keys: cold,
        }
    }
}

/// What a keyed request told about its key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyTouch {
    pub response_bytes: u64,
    pub cache_hit: Option<bool>,
    pub key_bytes: u64,
}

/// The most common n-grams by sessions, longest first among equals, leaving out an n-gram when
/// a longer one that contains it occurs in at least 90 % of its sessions (it says the same).
fn workflows(grams: &FastMap<u64, u64>, sessions: u64, top_n: usize) -> Vec<(u64, u64)> {
    let min = (sessions / 200).max(2);
    let mut cands: Vec<(u64, u64)> = grams.iter().filter(|(_, n)| **n >= min).map(|(g, n)| (*g, *n)).collect();
    let mut best_extension: FastMap<u64, u64> = FastMap::default();
    for (g, n) in &cands {
        let seq = unpack(*g);
        if seq.len() > 2 {
            for part in [&seq[..seq.len() - 1], &seq[1..]] {
                let e = best_extension.entry(pack(part)).or_default();
                *e = (*e).max(*n);
            }
        }
    }
    cands.retain(|(g, n)| best_extension.get(g).is_none_or(|e| (*e as f64) < 0.9 * *n as f64));
    cands.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| (b.0 >> 60).cmp(&(a.0 >> 60))).then_with(|| a.0.cmp(&b.0)));
    cands.truncate(top_n);
    cands
}

/// A tool and how many times something happened with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCount {
    pub tool: String,
    pub count: u64,
}

/// A common sequence of calls.
#[derive(Debug, Clone, Serialize)]
pub struct Workflow {
    pub sequence: Vec<String>,
    /// Sessions in which it occurs (each counted once).
    pub sessions: u64,
    /// `sessions` over all sessions.
    pub share: f64,
}

/// Responses of one tool that ran into a cap, and what came next.
#[derive(Debug, Clone, Serialize)]
pub struct TruncationLine {
    pub tool: String,
    pub truncated: u64,
    pub share_of_calls: f64,
    /// Shares of the follow-ups: the same tool again (paging on), another tool, a failed call.
    pub next_same_tool: f64,
    pub next_other_tool: f64,
    pub next_error: f64,
    /// Sessions that ended on a truncated response.
    pub ended: u64,
}

/// How much one key was used.
#[derive(Debug, Clone, Serialize)]
pub struct KeyHeat {
    pub key: String,
    pub calls: u64,
    /// Response bytes of the calls on it.
    pub bytes_served: u64,
    /// Measured cache hit rate of its calls.
    pub hit_rate: Option<f64>,
    pub errors: u64,
    /// Largest size it had in the cache.
    pub cached_bytes: u64,
    pub last_seen: String,
}

/// The usage section of a report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageSection {
    pub sessions: u64,
    /// Sessions still active at the end of the period (never counted as abandoned).
    pub open_sessions: u64,
    pub calls: u64,
    pub calls_per_session_p50: u32,
    pub calls_per_session_p90: u32,
    pub sessions_with_errors: u64,
    pub workflows: Vec<Workflow>,
    /// Sessions that ended right after a failed call.
    pub abandoned: u64,
    pub abandoned_share: f64,
    /// The tools whose failure ended those sessions, with counts.
    pub abandoned_after: Vec<ToolCount>,
    pub truncation: Vec<TruncationLine>,
    /// Distinct keys used.
    pub keys: u64,
    pub hot_keys: Vec<KeyHeat>,
    /// The least used keys (among those used at all).
    pub cold_keys: Vec<KeyHeat>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(tool: u16, ok: bool) -> Call {
        Call { tool, ok, sig: None, truncated: false }
    }

    #[test]
    fn workflows_abandonment_and_gaps() {
        let tools: Vec<String> = ["list", "describe", "read", "bad"].iter().map(|s| s.to_string()).collect();
        let mut u = Usage::new(60_000);
        let mut ends = 0;
        let mut sink = |e: SessionEvent| {
            if let SessionEvent::End { .. } = e {
                ends += 1;
            }
        };
        // 10 sessions: list, describe, read, read (read twice: the 2-gram read,read once each).
        for s in 0..10 {
            let id = format!("s{s}");
            for (i, t) in [0, 1, 2, 2].into_iter().enumerate() {
                u.observe(id.as_bytes(), s * 1000 + i as i64, call(t, true), None, &mut sink);
            }
        }
        // One session that fails and stops; later the same client id starts a new session.
        u.observe(b"x", 20_000, call(0, true), None, &mut sink);
        u.observe(b"x", 20_001, call(3, false), None, &mut sink);
        u.observe(b"x", 200_000, call(0, true), None, &mut sink);
        // Failing just before the end of the period: still open, not abandoned.
        u.observe(b"y", 999_990, call(3, false), None, &mut sink);
        let s = u.finish(1_000_000, &tools, &[], 10, &mut sink);
        assert_eq!((s.sessions, s.open_sessions), (13, 1));
        assert_eq!(s.abandoned, 1);
        assert_eq!(s.abandoned_after, vec![ToolCount { tool: "bad".into(), count: 1 }]);
        assert_eq!(ends, 12);
        // The 4-gram covers its 2- and 3-grams, which occur in no other session.
        assert_eq!(s.workflows[0].sequence, ["list", "describe", "read", "read"]);
        assert_eq!(s.workflows[0].sessions, 10);
        assert!(s.workflows.iter().all(|w| w.sequence != ["list", "describe"]));
        assert_eq!(s.calls_per_session_p50, 4);
    }

    #[test]
    fn truncation_follow_ups() {
        let tools: Vec<String> = ["read", "other"].iter().map(|s| s.to_string()).collect();
        let mut u = Usage::new(60_000);
        let mut sink = |_e: SessionEvent| {};
        let t = Call { tool: 0, ok: true, sig: None, truncated: true };
        for s in 0..4 {
            let id = format!("s{s}");
            u.observe(id.as_bytes(), 0, t, None, &mut sink);
            let next = if s < 3 { call(0, true) } else { call(1, true) };
            u.observe(id.as_bytes(), 1, next, None, &mut sink);
        }
        u.observe(b"end", 5, t, None, &mut sink);
        let s = u.finish(10_000_000, &tools, &[], 10, &mut sink);
        let l = &s.truncation[0];
        assert_eq!((l.tool.as_str(), l.truncated, l.ended), ("read", 5, 1));
        assert_eq!((l.next_same_tool, l.next_other_tool), (0.75, 0.25));
    }
}
