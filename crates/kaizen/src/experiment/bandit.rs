//! The bandit: Thompson sampling turned into traffic shares. Each arm's reward has a posterior
//! (Beta for binary rewards such as a cache hit or a success, Normal for continuous ones such as
//! −ln latency); the probability that each arm is best, less its cost, is estimated by drawing
//! from the posteriors. After a warm-up at equal shares, the leading arm gets the traffic and the
//! others share at most `max_explore` of it, each keeping at least `min_share` so it keeps
//! learning. Units are placed by a stable hash against these shares, so a session keeps its arm
//! while the shares stand still.

use super::accum::VariantStats;
use super::plan::{BanditPlan, ExperimentPlan, Metric};
use crate::stats::random::Rng;

/// Draws per allocation (the P(best) estimates are within ~1 % of the truth).
const DRAWS: usize = 4000;

/// The bandit's decision: shares per arm, the leading arm, and P(best) per arm.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub shares: Vec<f64>,
    pub leader: Option<usize>,
    pub prob_best: Vec<f64>,
}

enum Posterior {
    Beta(f64, f64),
    Normal(f64, f64),
}

fn posterior(plan: &ExperimentPlan, reward: &Metric, s: &VariantStats) -> (Posterior, u64) {
    match reward {
        Metric::CacheHitRatio => {
            (Posterior::Beta(1.0 + s.cache_hits as f64, 1.0 + (s.cache_lookups - s.cache_hits) as f64), s.cache_lookups)
        }
        Metric::Latency => {
            let m = &s.log_latency;
            let sd = m.sd().filter(|x| *x > 0.0).unwrap_or(1.0);
            (Posterior::Normal(-m.mean, sd / (m.n.max(1) as f64).sqrt()), m.n)
        }
        Metric::Custom(i) => {
            let (name, cfg) = &plan.custom[*i];
            let m = s.custom.get(name).copied().unwrap_or_default();
            let sign = if cfg.better == super::config::Better::Higher { 1.0 } else { -1.0 };
            let sd = m.sd().filter(|x| *x > 0.0).unwrap_or(1.0);
            (Posterior::Normal(sign * m.mean, sd / (m.n.max(1) as f64).sqrt()), m.n)
        }
        // "success": 1 − error.
        _ => (Posterior::Beta(1.0 + (s.samples - s.errors) as f64, 1.0 + s.errors as f64), s.samples),
    }
}

/// Reward samples an arm has (what the warm-up counts).
pub fn arm_samples(plan: &ExperimentPlan, b: &BanditPlan, s: &VariantStats) -> u64 {
    posterior(plan, &b.reward, s).1
}

/// Posterior mean reward less cost, per arm (for the report).
pub fn mean_rewards(plan: &ExperimentPlan, b: &BanditPlan, stats: &[VariantStats]) -> Vec<f64> {
    stats
        .iter()
        .zip(&b.cost)
        .map(|(s, c)| match posterior(plan, &b.reward, s).0 {
            Posterior::Beta(a, bb) => a / (a + bb) - c,
            Posterior::Normal(m, _) => m - c,
        })
        .collect()
}

/// Allocates shares from the arms' statistics.
pub fn allocate(plan: &ExperimentPlan, b: &BanditPlan, stats: &[VariantStats], rng: &mut Rng) -> Allocation {
    let k = stats.len();
    let equal = vec![1.0 / k as f64; k];
    if k == 0 {
        return Allocation { shares: vec![], leader: None, prob_best: vec![] };
    }
    let posts: Vec<(Posterior, u64)> = stats.iter().map(|s| posterior(plan, &b.reward, s)).collect();
    let mut wins = vec![0u64; k];
    for _ in 0..DRAWS {
        let mut best = (f64::NEG_INFINITY, 0);
        for (i, (p, _)) in posts.iter().enumerate() {
            let x = match p {
                Posterior::Beta(a, bb) => rng.beta(*a, *bb),
                Posterior::Normal(m, sd) => m + sd * rng.normal(),
            } - b.cost.get(i).copied().unwrap_or(0.0);
            if x > best.0 {
                best = (x, i);
            }
        }
        wins[best.1] += 1;
    }
    let prob_best: Vec<f64> = wins.iter().map(|w| *w as f64 / DRAWS as f64).collect();
    if posts.iter().any(|(_, n)| *n < b.warmup) || k == 1 {
        return Allocation { shares: equal, leader: None, prob_best };
    }
    let leader = prob_best.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    let others = (k - 1) as f64;
    let floor = b.min_share;
    let raw_others: f64 = prob_best.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, p)| p).sum();
    let total_others = raw_others.min(b.max_explore).max(floor * others);
    let spare = total_others - floor * others;
    let mut shares = vec![0.0; k];
    for (i, s) in shares.iter_mut().enumerate() {
        if i == leader {
            continue;
        }
        let w = if raw_others > 0.0 { prob_best[i] / raw_others } else { 1.0 / others };
        *s = floor + spare * w;
    }
    shares[leader] = 1.0 - total_others;
    Allocation { shares, leader: Some(leader), prob_best }
}
