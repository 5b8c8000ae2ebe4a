//! Sampling: parent-based with a trace-id ratio for new traces (OpenTelemetry's
//! `parentbased_traceidratio`): a caller's decision is followed, so a trace is whole or absent;
//! a new trace is kept when its id's low 8 bytes fall under `ratio × 2⁶⁴`, so every process
//! with the same ratio decides the same way for the same trace.

use super::context::{Parent, TraceId};

/// Parent-based ratio sampler.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    threshold: u64,
    always: bool,
}

impl Sampler {
    /// `ratio` is clamped to 0..=1 (NaN samples nothing).
    pub fn new(ratio: f64) -> Self {
        let r = if ratio.is_nan() { 0.0 } else { ratio.clamp(0.0, 1.0) };
        Sampler { threshold: (r * u64::MAX as f64) as u64, always: r >= 1.0 }
    }

    /// Whether a span of `trace` (under `parent`, if any) is recorded and exported.
    pub fn sampled(&self, trace: TraceId, parent: Option<&Parent>) -> bool {
        match parent {
            Some(p) => p.sampled,
            None => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace.0[8..]);
                self.always || u64::from_be_bytes(low) < self.threshold
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::context::SpanId;

    #[test]
    fn follows_the_parent_and_samples_new_traces_at_the_ratio() {
        let s = Sampler::new(0.25);
        let n = 20_000;
        let kept = (0..n).filter(|_| s.sampled(TraceId::random(), None)).count();
        // Binomial(20000, 0.25): sd ≈ 61; ±6 sd.
        assert!((4_634..=5_366).contains(&kept), "{kept}");
        let parent = |sampled| Parent {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            sampled,
            trace_state: String::new(),
        };
        assert!(Sampler::new(0.0).sampled(TraceId::random(), Some(&parent(true))));
        assert!(!Sampler::new(1.0).sampled(TraceId::random(), Some(&parent(false))));
        assert!((0..100).all(|_| Sampler::new(1.0).sampled(TraceId::random(), None)));
        assert!((0..100).all(|_| !Sampler::new(0.0).sampled(TraceId::random(), None)));
    }
}
