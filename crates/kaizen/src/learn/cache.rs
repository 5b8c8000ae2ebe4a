//! Cache what-if: the logged accesses (key, its size, time order) replayed through cache models
//! at other capacities and policies, to predict the hit rate each would have had.
//!
//! The models follow the embedder's cache: byte-bounded, an entry's size grows as more of it is
//! loaded, and after each load the least valuable entries are evicted until the total fits,
//! never the one just used. A request that grows a resident entry loaded something: it counts as
//! a miss when the embedder logged it as one (Gemba counts a sheet loaded into a cached workbook
//! as a miss on the read tools, as a hit where a listing loads every sheet), so the replay keeps
//! the embedder's own accounting and models only what depends on capacity: residency.
//! An entry that is reloaded starts at the size logged with that access; a resident one keeps
//! the largest size seen since it was loaded. A replay step is O(1) for LRU (an intrusive list)
//! and O(log n) for the priority policies (GDSF, LFU), so each capacity costs one pass over the
//! trace; the recommendation bisects on whole MiB.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::Serialize;

/// One MiB, the unit capacities are configured in.
pub const MIB: u64 = 1 << 20;

/// An eviction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Least recently used (what Gemba's cache does).
    Lru,
    /// Greedy-Dual-Size-Frequency: keeps small, often used entries (priority = L + frequency / size).
    Gdsf,
    /// Least frequently used, counting every use so far (perfect LFU), oldest first among equals.
    Lfu,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::Gdsf => "gdsf",
            Policy::Lfu => "lfu",
        }
    }
}

/// The top bit of a logged size: the request was logged as a miss.
const MISS: u64 = 1 << 63;
/// Largest size taken for one key (1 TiB): sums over a million keys cannot overflow.
const MAX_KEY_BYTES: u64 = 1 << 40;
/// Most accesses replayed (12 bytes each): a log larger than this is replayed up to it.
const MAX_TRACE: usize = 8_000_000;

/// The logged accesses, compactly: one (key index, bytes with the `MISS` bit) per request that
/// touched the cache.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    keys: Vec<u32>,
    bytes: Vec<u64>,
    nkeys: usize,
    /// Requests with a cache outcome (hit or miss), keyed or not.
    pub measured_total: u64,
    pub measured_hits: u64,
    /// Keyed requests with a cache outcome, and their hits (the replayed population).
    pub keyed_hits: u64,
}

impl Trace {
    /// Count a request's cache outcome, and add it to the replay when it names a key.
    pub fn observe(&mut self, cache_hit: Option<bool>, key: Option<u32>, key_bytes: u64) {
        let Some(hit) = cache_hit else { return };
        self.measured_total += 1;
        self.measured_hits += u64::from(hit);
        if let Some(k) = key
            && self.keys.len() < MAX_TRACE
        {
            self.keys.push(k);
            self.bytes.push(key_bytes.min(MAX_KEY_BYTES) | if hit { 0 } else { MISS });
            self.nkeys = self.nkeys.max(k as usize + 1);
            self.keyed_hits += u64::from(hit);
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The sum of every key's largest size: the capacity beyond which nothing is ever evicted.
    pub fn working_set(&self) -> u64 {
        let mut max = vec![0u64; self.nkeys];
        for (k, b) in self.keys.iter().zip(&self.bytes) {
            let m = &mut max[*k as usize];
            *m = (*m).max(*b & !MISS);
        }
        max.iter().sum()
    }

    /// The hit rate with unbounded capacity: only first loads and growths logged as misses miss.
    pub fn achievable(&self) -> f64 {
        let mut max: Vec<Option<u64>> = vec![None; self.nkeys];
        let mut hits = 0u64;
        for (k, raw) in self.keys.iter().zip(&self.bytes) {
            let (b, logged_miss) = (raw & !MISS, raw & MISS != 0);
            let m = &mut max[*k as usize];
            match m {
                Some(s) if b <= *s || !logged_miss => hits += 1,
                _ => {}
            }
            *m = Some(m.unwrap_or(0).max(b));
        }
        ratio(hits, self.len() as u64)
    }

    /// Hits when replayed through `policy` at `capacity` bytes.
    pub fn replay(&self, policy: Policy, capacity: u64) -> u64 {
        match policy {
            Policy::Lru => self.replay_lru(capacity),
            Policy::Gdsf | Policy::Lfu => self.replay_priority(policy, capacity),
        }
    }

    fn replay_lru(&self, capacity: u64) -> u64 {
        const NIL: u32 = u32::MAX;
        let n = self.nkeys;
        let mut size = vec![0u64; n];
        let mut resident = vec![false; n];
        let mut prev = vec![NIL; n];
        let mut next = vec![NIL; n];
        let (mut head, mut tail) = (NIL, NIL);
        let mut total = 0u64;
        let mut hits = 0u64;
        macro_rules! unlink {
            ($k:expr) => {{
                let k = $k as usize;
                let (p, nx) = (prev[k], next[k]);
                if p == NIL {
                    head = nx
                } else {
                    next[p as usize] = nx
                }
                if nx == NIL { tail = p } else { prev[nx as usize] = p }
            }};
        }
        for (&k, &raw) in self.keys.iter().zip(&self.bytes) {
            let (b, logged_miss) = (raw & !MISS, raw & MISS != 0);
            let ku = k as usize;
            if resident[ku] {
                let grew = b > size[ku];
                if grew {
                    total += b - size[ku];
                    size[ku] = b;
                }
                if !(grew && logged_miss) {
                    hits += 1;
                }
                unlink!(k);
            } else {
                resident[ku] = true;
                size[ku] = b;
                total += b;
            }
            // To the front.
            prev[ku] = NIL;
            next[ku] = head;
            if head != NIL {
                prev[head as usize] = k;
            }
            head = k;
            if tail == NIL {
                tail = k;
            }
            while total > capacity && tail != k && tail != NIL {
                let v = tail;
                unlink!(v);
                resident[v as usize] = false;
                total -= size[v as usize];
            }
        }
        hits
    }

    fn replay_priority(&self, policy: Policy, capacity: u64) -> u64 {
        let n = self.nkeys;
        let mut size = vec![0u64; n];
        let mut resident = vec![false; n];
        let mut freq = vec![0u64; n];
        let mut version = vec![0u32; n];
        let mut heap: BinaryHeap<Reverse<(Prio, u64, u32, u32)>> = BinaryHeap::new();
        let mut live = 0usize;
        let mut inflation = 0.0f64;
        let mut total = 0u64;
        let mut hits = 0u64;
        for (seq, (&k, &raw)) in self.keys.iter().zip(&self.bytes).enumerate() {
            let (b, logged_miss) = (raw & !MISS, raw & MISS != 0);
            let ku = k as usize;
            if resident[ku] {
                let grew = b > size[ku];
                if grew {
                    total += b - size[ku];
                    size[ku] = b;
                }
                if !(grew && logged_miss) {
                    hits += 1;
                }
                freq[ku] += 1;
            } else {
                resident[ku] = true;
                live += 1;
                size[ku] = b;
                total += b;
                // GDSF counts uses since the entry was loaded; LFU counts every use so far.
                freq[ku] = if policy == Policy::Lfu { freq[ku] + 1 } else { 1 };
            }
            let p = match policy {
                Policy::Gdsf => inflation + freq[ku] as f64 / size[ku].max(1) as f64,
                _ => freq[ku] as f64,
            };
            version[ku] = version[ku].wrapping_add(1);
            heap.push(Reverse((Prio(p), seq as u64, k, version[ku])));
            let mut kept = None;
            while total > capacity {
                let Some(Reverse((Prio(p), s, v, ver))) = heap.pop() else { break };
                if !resident[v as usize] || version[v as usize] != ver {
                    continue;
                }
                if v == k {
                    kept = Some(Reverse((Prio(p), s, v, ver)));
                    continue;
                }
                resident[v as usize] = false;
                live -= 1;
                total -= size[v as usize];
                if policy == Policy::Gdsf {
                    // The entry in use is never evicted, so a lower priority can come out later.
                    inflation = inflation.max(p);
                }
            }
            if let Some(e) = kept {
                heap.push(e);
            }
            // Drop stale entries now and then, so the heap stays proportional to the cache.
            if heap.len() > 4 * live + 1024 {
                let entries: Vec<_> = heap
                    .drain()
                    .filter(|Reverse((_, _, v, ver))| resident[*v as usize] && version[*v as usize] == *ver)
                    .collect();
                heap = BinaryHeap::from(entries);
            }
        }
        hits
    }
}

/// An f64 priority with a total order.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Prio(f64);
impl Eq for Prio {}
impl PartialOrd for Prio {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Prio {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// One point of the what-if.
#[derive(Debug, Clone, Serialize)]
pub struct WhatIf {
    pub policy: Policy,
    pub capacity_mb: f64,
    pub predicted_hit_rate: f64,
}

/// The capacity to configure.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub policy: Policy,
    /// Whole MiB (the unit the capacity is configured in).
    pub capacity_mb: f64,
    pub predicted_hit_rate: f64,
    /// Why this capacity: the share of the achievable hit rate it reaches.
    pub reason: String,
}

/// The cache section of a report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheSection {
    /// Hits over requests with a cache outcome, as measured (None without any).
    pub measured_hit_rate: Option<f64>,
    /// Requests with a cache outcome.
    pub measured_requests: u64,
    /// Of those, the ones that named a key and were replayed (the first 8 million).
    pub replayed: u64,
    /// The measured hit rate of the replayed requests.
    pub replayed_measured_hit_rate: Option<f64>,
    pub keys: u64,
    /// Every key at its largest size: beyond this capacity nothing is ever evicted.
    pub working_set_mb: f64,
    /// The capacity in force (from the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_mb: Option<f64>,
    /// The LRU model's prediction at the capacity in force, to compare with the measured rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_hit_rate: Option<f64>,
    /// `model_hit_rate - replayed_measured_hit_rate`, in percentage points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_error_points: Option<f64>,
    /// The hit rate with unbounded capacity (only first loads and growths miss).
    pub achievable_hit_rate: f64,
    pub whatif: Vec<WhatIf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<Recommendation>,
}

/// Share of the achievable hit rate the recommended capacity must reach.
pub const TARGET_SHARE: f64 = 0.95;

fn mb(bytes: u64) -> f64 {
    (bytes as f64 / MIB as f64 * 100.0).round() / 100.0
}

/// Capacities for the what-if curve: a log-spaced sweep up to the working set, today's capacity
/// and its halves and doubles, all in whole MiB (at least 1).
fn grid(capacity: Option<u64>, working_set: u64) -> Vec<u64> {
    let ws_mib = working_set.div_ceil(MIB).max(1);
    let mut v: Vec<u64> = Vec::new();
    let steps = 10;
    for i in 0..=steps {
        let f = i as f64 / steps as f64;
        v.push(((ws_mib as f64 * 1.1).powf(f)).round().max(1.0) as u64);
    }
    if let Some(c) = capacity {
        let c_mib = (c / MIB).max(1);
        for m in [1, 2, 4] {
            v.push(c_mib / m);
            v.push(c_mib * m);
        }
    }
    v.retain(|c| *c >= 1 && *c <= ws_mib.saturating_mul(2).max(2));
    v.sort_unstable();
    v.dedup();
    v
}

/// `f` over `items` on up to four threads (the replays are independent and CPU-bound).
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    if threads == 1 || items.len() < 2 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> =
            items.chunks(chunk).map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<R>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// The what-if section. `capacity` is the capacity in force when the log was recorded.
pub(crate) fn analyse(trace: &Trace, capacity: Option<u64>) -> CacheSection {
    let n = trace.len() as u64;
    let mut s = CacheSection {
        measured_hit_rate: (trace.measured_total > 0).then(|| ratio(trace.measured_hits, trace.measured_total)),
        measured_requests: trace.measured_total,
        replayed: n,
        replayed_measured_hit_rate: (n > 0).then(|| ratio(trace.keyed_hits, n)),
        keys: trace.nkeys as u64,
        capacity_mb: capacity.map(mb),
        ..Default::default()
    };
    if n == 0 {
        return s;
    }
    let ws = trace.working_set();
    s.working_set_mb = mb(ws);
    s.achievable_hit_rate = trace.achievable();
    let rate = |policy, bytes| ratio(trace.replay(policy, bytes), n);

    // LRU over the grid (whole MiB), and at today's capacity exactly as configured.
    let mut lru: Vec<(u64, f64)> = {
        let caps = grid(capacity, ws);
        caps.iter().copied().zip(par_map(&caps, |c| rate(Policy::Lru, c * MIB))).collect()
    };
    if let Some(c) = capacity {
        let on_grid = lru.iter().find(|(g, _)| g * MIB == c).map(|(_, r)| *r);
        let m = on_grid.unwrap_or_else(|| rate(Policy::Lru, c));
        s.model_hit_rate = Some(m);
        s.model_error_points = s.replayed_measured_hit_rate.map(|r| ((m - r) * 1000.0).round() / 10.0);
    }

    // The smallest whole-MiB capacity whose LRU hit rate reaches the target share of the
    // achievable: bracketed by the grid, then narrowed with as many probes per round as threads.
    let target = TARGET_SHARE * s.achievable_hit_rate;
    let ws_mib = ws.div_ceil(MIB).max(1);
    let above = lru.iter().find(|(_, r)| *r >= target).copied();
    let (mut hi, mut hi_rate) = match above {
        Some(p) => p,
        None => (ws_mib, rate(Policy::Lru, ws_mib * MIB)),
    };
    let mut lo = lru.iter().filter(|(c, _)| *c < hi).map(|(c, _)| *c).max().unwrap_or(0);
    let probes = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    while hi - lo > 1 {
        let step = ((hi - lo) as f64 / (probes + 1) as f64).max(1.0);
        let mut points: Vec<u64> =
            (1..=probes).map(|i| lo + (step * i as f64).round() as u64).filter(|p| *p > lo && *p < hi).collect();
        points.dedup();
        if points.is_empty() {
            break;
        }
        let rates = par_map(&points, |c| rate(Policy::Lru, c * MIB));
        match points.iter().zip(&rates).find(|(_, r)| **r >= target) {
            Some((p, r)) => {
                hi = *p;
                hi_rate = *r;
                lo = points.iter().filter(|q| **q < *p).max().copied().unwrap_or(lo);
            }
            None => lo = *points.last().unwrap_or(&lo),
        }
    }
    s.recommendation = Some(Recommendation {
        policy: Policy::Lru,
        capacity_mb: hi as f64,
        predicted_hit_rate: hi_rate,
        reason: format!(
            "the smallest capacity (whole MiB) whose LRU hit rate reaches {:.0} % of the achievable {:.1} %",
            TARGET_SHARE * 100.0,
            s.achievable_hit_rate * 100.0
        ),
    });
    lru.push((hi, hi_rate));
    lru.sort_by_key(|(c, _)| *c);
    lru.dedup_by_key(|(c, _)| *c);
    s.whatif = lru
        .iter()
        .map(|(c, r)| WhatIf { policy: Policy::Lru, capacity_mb: *c as f64, predicted_hit_rate: *r })
        .collect();

    // The priority policies where they matter: today's capacity and the recommendation.
    let mut few: Vec<(Policy, u64)> = Vec::new();
    for policy in [Policy::Gdsf, Policy::Lfu] {
        few.push((policy, hi * MIB));
        if let Some(c) = capacity.filter(|c| *c != hi * MIB) {
            few.push((policy, c));
        }
    }
    let rates = par_map(&few, |(p, c)| rate(*p, *c));
    for ((policy, c), r) in few.into_iter().zip(rates) {
        s.whatif.push(WhatIf { policy, capacity_mb: mb(c), predicted_hit_rate: r });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(accesses: &[(u32, u64)]) -> Trace {
        let mut t = Trace::default();
        for &(k, b) in accesses {
            t.observe(Some(false), Some(k), b);
        }
        t
    }

    #[test]
    fn lru_follows_the_embedders_semantics() {
        // a=6, b=6 with capacity 10: each load evicts the other.
        let t = trace(&[(0, 6), (1, 6), (0, 6), (1, 6)]);
        assert_eq!(t.replay(Policy::Lru, 10), 0);
        assert_eq!(t.replay(Policy::Lru, 12), 2);
        // One entry larger than the cache stays while it is the one in use.
        let t = trace(&[(0, 20), (0, 20), (1, 1), (0, 20)]);
        assert_eq!(t.replay(Policy::Lru, 10), 1);
        // Growth of a resident entry logged as a miss is a miss; later accesses at that size hit.
        let t = trace(&[(0, 5), (0, 8), (0, 8), (0, 3)]);
        assert_eq!(t.replay(Policy::Lru, 100), 2);
        assert_eq!(t.achievable(), 0.5);
        assert_eq!(t.working_set(), 8);
        // Logged as a hit (the embedder does not count that load as a miss): a hit while resident.
        let mut t = Trace::default();
        for (hit, b) in [(false, 5), (true, 8), (true, 8)] {
            t.observe(Some(hit), Some(0), b);
        }
        t.observe(Some(false), Some(1), 95);
        t.observe(Some(true), Some(0), 8);
        assert_eq!(t.replay(Policy::Lru, 200), 3);
        // ...but not once capacity evicted it.
        assert_eq!(t.replay(Policy::Lru, 100), 2);
    }

    #[test]
    fn frequency_policies_keep_a_hot_set_through_a_scan() {
        // Three small hot keys interleaved with a cyclic scan over ten bigger keys: under LRU
        // each hot key is pushed out before its turn comes again; GDSF and LFU keep them.
        let mut a = Vec::new();
        for i in 0..300u32 {
            a.push((1 + i % 3, 10));
            a.push((10 + i % 10, 20));
        }
        let t = trace(&a);
        let (lru, gdsf, lfu) = (t.replay(Policy::Lru, 70), t.replay(Policy::Gdsf, 70), t.replay(Policy::Lfu, 70));
        assert_eq!(lru, 0);
        assert!(gdsf > 250 && lfu > 250, "gdsf {gdsf} lfu {lfu}");
        // With room for everything, every policy hits all but the first loads.
        for p in [Policy::Lru, Policy::Gdsf, Policy::Lfu] {
            assert_eq!(t.replay(p, 1000), 600 - 13);
        }
    }
}
