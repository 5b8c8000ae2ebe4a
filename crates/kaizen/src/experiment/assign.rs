//! Assignment: a stable hash of (experiment, unit) picks a variant, so one session (or key) sees
//! one variant for the life of a share split. The `Assignment` a call carries answers knob
//! look-ups (`assignment.knob("cache_capacity")`) with the variant's setting or the default.

use std::sync::Arc;

use super::knob::KnobValue;
use super::plan::Plan;

/// FNV-1a, 64-bit: stable across builds and platforms (unlike `std`'s randomized SipHash keys).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64's finalizer: spreads FNV's weak low bits over the whole word.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A unit's position in [0, 1) for one experiment.
pub fn position(salt: u64, unit_hash: u64) -> f64 {
    (mix64(unit_hash ^ salt) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The variant at `u` given shares, walking them in order (the canary puts its treatment
/// first, so units already in the canary stay in it as its share grows).
pub fn pick_by_share(u: f64, order: &[usize], shares: &[f64]) -> usize {
    let mut acc = 0.0;
    for &i in order {
        acc += shares.get(i).copied().unwrap_or(0.0);
        if u < acc {
            return i;
        }
    }
    // Rounding left a sliver past the last share: the last variant with a share takes it.
    order.iter().rev().copied().find(|&i| shares.get(i).copied().unwrap_or(0.0) > 0.0).unwrap_or(0)
}

/// One experiment's pick for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub experiment: u16,
    pub variant: u16,
    /// False when the unit was not randomized (allow/deny list, experiment not running, no key
    /// for a key-unit experiment): such calls are not counted in the statistics.
    pub counted: bool,
}

/// What one call was assigned: the variants of all experiments and the knob values that follow.
/// Cheap to create and to query; carry it with the call and pass it back to `Engine::record`.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub(crate) plan: Arc<Plan>,
    pub(crate) picks: Vec<Pick>,
}

impl Assignment {
    /// The effective value of a knob for this call: the assigned variant's setting, else the
    /// knob's default. None only for a knob the embedder never declared.
    pub fn knob(&self, name: &str) -> Option<&KnobValue> {
        let k = *self.plan.knob_index.get(name)?;
        for p in &self.picks {
            if let Some(v) =
                self.plan.experiments.get(p.experiment as usize).and_then(|e| e.variants.get(p.variant as usize))
                && let Some((_, value)) = v.settings.iter().find(|(i, _)| *i == k)
            {
                return Some(value);
            }
        }
        self.plan.knobs.get(k).map(|s| &s.default)
    }

    /// A bool knob (false when undeclared or not a bool).
    pub fn flag(&self, name: &str) -> bool {
        self.knob(name).and_then(KnobValue::as_bool).unwrap_or(false)
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        self.knob(name).and_then(KnobValue::as_i64)
    }
    pub fn float(&self, name: &str) -> Option<f64> {
        self.knob(name).and_then(KnobValue::as_f64)
    }
    pub fn string(&self, name: &str) -> Option<&str> {
        self.knob(name).and_then(KnobValue::as_str)
    }

    /// The variant name this call got in an experiment (None: not in it).
    pub fn variant(&self, experiment: &str) -> Option<&str> {
        self.labels().find(|(e, _)| *e == experiment).map(|(_, v)| v)
    }

    /// (experiment, variant) pairs, e.g. for request-log columns or metric labels.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.picks.iter().filter_map(|p| {
            let e = self.plan.experiments.get(p.experiment as usize)?;
            let v = e.variants.get(p.variant as usize)?;
            Some((e.name.as_str(), v.name.as_str()))
        })
    }

    pub fn picks(&self) -> &[Pick] {
        &self.picks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_spread() {
        // FNV-1a test vectors (Fowler/Noll/Vo): "" → cbf29ce484222325, "a" → af63dc4c8601ec8c.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let u = position(fnv1a64(b"exp"), fnv1a64(b"session-1"));
        assert_eq!(u, position(fnv1a64(b"exp"), fnv1a64(b"session-1")));
        assert!((0.0..1.0).contains(&u));
        assert_eq!(pick_by_share(0.3, &[1, 0], &[0.75, 0.25]), 0);
        assert_eq!(pick_by_share(0.2, &[1, 0], &[0.75, 0.25]), 1);
        assert_eq!(pick_by_share(0.999_999_999, &[0, 1], &[0.5, 0.499_999]), 1);
    }
}
