//! W3C Trace Context: trace and span ids, the `traceparent` header (version 00) parsed and
//! written, `tracestate` kept as given (bounded), and fresh random ids.

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// A 16-byte trace id (never all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id (never all zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Longest `tracestate` kept (the W3C limit is 32 members; 512 bytes is what it allows).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// The caller's span as a `traceparent` names it: the trace to join, the parent span, and
/// whether the caller sampled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    /// The caller's `tracestate`, passed on as is (empty when none or too long).
    pub trace_state: String,
}

impl Parent {
    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`), and a `tracestate` to keep
    /// beside it. `None` for anything malformed: the W3C rule is to start a new trace then.
    /// Versions above 00 are read by their first four fields, as the specification asks.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Parent> {
        let s = traceparent.trim();
        let mut parts = s.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") || !is_lower_hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && rest.is_some() {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let mut t = [0u8; 16];
        let mut p = [0u8; 8];
        decode_hex(trace, &mut t)?;
        decode_hex(span, &mut p)?;
        let mut f = [0u8; 1];
        decode_hex(flags, &mut f)?;
        if t == [0; 16] || p == [0; 8] {
            return None;
        }
        let trace_state = tracestate
            .map(str::trim)
            .filter(|ts| ts.len() <= MAX_TRACESTATE_BYTES && ts.is_ascii())
            .unwrap_or("")
            .to_string();
        Some(Parent { trace_id: TraceId(t), span_id: SpanId(p), sampled: f[0] & 1 == 1, trace_state })
    }
}

/// `traceparent` of a span (version 00).
pub fn traceparent(trace: TraceId, span: SpanId, sampled: bool) -> String {
    format!("00-{trace}-{span}-{:02x}", u8::from(sampled))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    if !is_lower_hex(s) || s.len() != out.len() * 2 {
        return None;
    }
    let b = s.as_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let v = |c: u8| if c.is_ascii_digit() { c - b'0' } else { c - b'a' + 10 };
        *o = v(b[2 * i]) << 4 | v(b[2 * i + 1]);
    }
    Some(())
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

/// A per-thread seed from the process's random hashing keys (random per process and thread).
fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish() | 1
}

/// SplitMix64: fast, well mixed, good enough for ids (not for secrets).
fn next_u64() -> u64 {
    RNG.with(|c| {
        let mut z = c.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        c.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

impl TraceId {
    /// A fresh random trace id.
    pub fn random() -> Self {
        loop {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&next_u64().to_be_bytes());
            b[8..].copy_from_slice(&next_u64().to_be_bytes());
            if b != [0; 16] {
                return TraceId(b);
            }
        }
    }
}

impl SpanId {
    /// A fresh random span id.
    pub fn random() -> Self {
        loop {
            let v = next_u64();
            if v != 0 {
                return SpanId(v.to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_the_w3c_example() {
        let p = Parent::parse(TP, Some("congo=t61rcWkgMzE")).expect("valid");
        assert!(p.sampled);
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(p.trace_state, "congo=t61rcWkgMzE");
        assert_eq!(traceparent(p.trace_id, p.span_id, true), TP);
        let unsampled = Parent::parse(&TP.replace("-01", "-00"), None).expect("valid");
        assert!(!unsampled.sampled);
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(Parent::parse(bad, None), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(Parent::parse(&format!("{}-later", TP.replacen("00", "01", 1)), None).is_some());
    }

    #[test]
    fn random_ids_differ_and_are_never_zero() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| TraceId::random()).collect();
        assert_eq!(ids.len(), 1000);
        assert!((0..1000).all(|_| SpanId::random().0 != [0; 8]));
    }
}
