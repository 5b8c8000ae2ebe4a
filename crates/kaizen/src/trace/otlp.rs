//! OTLP/HTTP protobuf encoding of an `ExportTraceServiceRequest`, by hand: the handful of
//! messages a trace export needs (resource, scope, span, key-value, status) written with a
//! small protobuf writer, so no protobuf runtime or generated code is pulled in. Field numbers
//! are those of `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`.

use super::span::{Span, Value};

/// What every exported batch says about its source: `service.name`, `service.version`,
/// `service.instance.id` and any other resource attributes, and the instrumentation scope.
#[derive(Debug, Clone, Default)]
pub struct Resource {
    pub attributes: Vec<(String, Value)>,
    pub scope_name: String,
    pub scope_version: String,
}

/// A protobuf writer over a byte vector.
struct Pb<'a>(&'a mut Vec<u8>);

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

impl Pb<'_> {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }
    fn fixed64(&mut self, field: u32, v: u64) {
        self.key(field, FIXED64);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A nested message, written in place: one byte is kept for its length and patched after
    /// the body (moved right in the rare case the length needs more bytes), so nesting
    /// allocates nothing.
    fn message(&mut self, field: u32, body: impl FnOnce(&mut Pb)) {
        self.key(field, LEN);
        let at = self.0.len();
        self.0.push(0);
        body(&mut Pb(self.0));
        let mut len = self.0.len() - at - 1;
        if len < 0x80 {
            self.0[at] = len as u8;
            return;
        }
        let mut prefix = [0u8; 10];
        let mut n = 0;
        while len >= 0x80 {
            prefix[n] = (len as u8) | 0x80;
            len >>= 7;
            n += 1;
        }
        prefix[n] = len as u8;
        self.0.splice(at..at + 1, prefix[..=n].iter().copied());
    }
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string 1, bool 2, int 3, double 4 }`.
fn key_value(pb: &mut Pb, field: u32, key: &str, value: &Value) {
    pb.message(field, |kv| {
        kv.string(1, key);
        kv.message(2, |v| match value {
            Value::Str(s) => v.bytes(1, s.as_bytes()),
            Value::Static(s) => v.bytes(1, s.as_bytes()),
            Value::Hex64(n) => {
                let mut b = [0u8; 16];
                for (i, d) in b.iter_mut().enumerate() {
                    *d = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
                }
                v.bytes(1, &b);
            }
            Value::Decimal(n) => {
                let mut b = [0u8; 20];
                let mut at = b.len();
                let mut u = n.unsigned_abs();
                loop {
                    at -= 1;
                    b[at] = b'0' + (u % 10) as u8;
                    u /= 10;
                    if u == 0 {
                        break;
                    }
                }
                if *n < 0 {
                    v.key(1, LEN);
                    v.varint((b.len() - at + 1) as u64);
                    v.0.push(b'-');
                    v.0.extend_from_slice(&b[at..]);
                } else {
                    v.bytes(1, &b[at..]);
                }
            }
            Value::Bool(b) => {
                v.key(2, VARINT);
                v.varint(u64::from(*b));
            }
            Value::Int(i) => {
                v.key(3, VARINT);
                v.varint(*i as u64);
            }
            Value::F64(f) => v.fixed64(4, f.to_bits()),
        });
    });
}

fn span(pb: &mut Pb, s: &Span) {
    pb.message(2, |m| {
        m.bytes(1, &s.trace_id.0);
        m.bytes(2, &s.span_id.0);
        m.string(3, &s.trace_state);
        if let Some(p) = s.parent {
            m.bytes(4, &p.0);
        }
        m.string(5, &s.name);
        m.uint(6, s.kind as u64);
        m.fixed64(7, s.start_nanos);
        m.fixed64(8, s.end_nanos);
        for (k, v) in &s.attributes {
            key_value(m, 9, k, v);
        }
        if s.status as u64 != 0 || !s.status_message.is_empty() {
            m.message(15, |st| {
                st.string(2, &s.status_message);
                st.uint(3, s.status as u64);
            });
        }
    });
}

/// The body of a `POST /v1/traces` (`application/x-protobuf`) carrying `spans`.
pub fn encode_request(resource: &Resource, spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + spans.len() * 256);
    encode_request_into(resource, spans, &mut out);
    out
}

/// Appends `spans` as encoded `Span` messages (the `spans` field of a `ScopeSpans`), to be
/// framed later by [`frame_request_into`]: callers encode their own spans, so the exporter
/// thread never touches (nor frees) memory another thread allocated.
pub fn encode_spans_into(spans: &[Span], out: &mut Vec<u8>) {
    let mut pb = Pb(out);
    for s in spans {
        span(&mut pb, s);
    }
}

/// An `ExportTraceServiceRequest` around spans already encoded by [`encode_spans_into`].
pub fn frame_request_into(resource: &Resource, encoded_spans: &[u8], out: &mut Vec<u8>) {
    let mut pb = Pb(out);
    pb.message(1, |rs| {
        rs.message(1, |r| {
            for (k, v) in &resource.attributes {
                key_value(r, 1, k, v);
            }
        });
        rs.message(2, |ss| {
            ss.message(1, |sc| {
                sc.string(1, &resource.scope_name);
                sc.string(2, &resource.scope_version);
            });
            ss.0.extend_from_slice(encoded_spans);
        });
    });
}

/// An `ExportTraceServiceRequest` of `spans` (resource, scope, spans) appended to `out`.
pub fn encode_request_into(resource: &Resource, spans: &[Span], out: &mut Vec<u8>) {
    let mut encoded = Vec::with_capacity(spans.len() * 256);
    encode_spans_into(spans, &mut encoded);
    frame_request_into(resource, &encoded, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::context::{SpanId, TraceId};
    use crate::trace::span::{SpanKind, StatusCode};

    #[test]
    fn varints_and_nesting_follow_the_wire_format() {
        let mut v = Vec::new();
        Pb(&mut v).varint(300);
        assert_eq!(v, [0xac, 0x02]);
        let mut v = Vec::new();
        Pb(&mut v).message(1, |m| m.string(1, "ab"));
        assert_eq!(v, [0x0a, 4, 0x0a, 2, b'a', b'b']);
        // A body of 200 bytes: its length takes two bytes, the body moved right after them.
        let mut v = Vec::new();
        Pb(&mut v).message(3, |m| m.0.extend_from_slice(&[7u8; 200]));
        assert_eq!(&v[..3], &[0x1a, 0xc8, 0x01]);
        assert_eq!(v.len(), 203);
        assert!(v[3..].iter().all(|b| *b == 7));
        // Ids written out at encoding time: hex and decimal strings.
        let string_of = |value: Value| {
            let mut v = Vec::new();
            key_value(&mut Pb(&mut v), 1, "k", &value);
            // KeyValue tag+len, key "k" (3 bytes), AnyValue tag+len, string tag+len: 9 bytes.
            String::from_utf8(v[9..].to_vec()).expect("utf8")
        };
        assert_eq!(string_of(Value::Hex64(0x00f0_67aa_0ba9_02b7)), "00f067aa0ba902b7");
        assert_eq!(string_of(Value::Decimal(0)), "0");
        assert_eq!(string_of(Value::Decimal(1234567)), "1234567");
        assert_eq!(string_of(Value::Decimal(-42)), "-42");
        assert_eq!(string_of(Value::Decimal(i64::MIN)), "-9223372036854775808");
        assert_eq!(string_of(Value::Static("tcp")), "tcp");
        // A negative int64 is ten bytes, as protobuf writes it.
        let mut v = Vec::new();
        key_value(&mut Pb(&mut v), 1, "k", &Value::Int(-1));
        assert_eq!(v.len(), 2 + 3 + 2 + 1 + 10);
    }

    #[test]
    fn a_span_carries_its_ids_times_kind_and_status() {
        let mut s = Span::new(TraceId([7; 16]), Some(SpanId([9; 8])), "tools/call read_table", 1, 2);
        s.kind = SpanKind::Server;
        s.status = StatusCode::Error;
        s.attr("error.type", "tool_error");
        let res = Resource { attributes: vec![("service.name".into(), "svc".into())], ..Default::default() };
        let body = encode_request(&res, &[s]);
        let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(find(&[0x0a, 16, 7, 7, 7]), "trace id field 1");
        assert!(find(&[0x22, 8, 9, 9, 9]), "parent span id field 4");
        assert!(find(&[0x30, 2]), "kind SERVER field 6");
        assert!(find(&[0x39, 1, 0, 0, 0, 0, 0, 0, 0]), "start fixed64 field 7");
        assert!(find(&[0x7a, 2, 0x18, 2]), "status ERROR");
        assert!(find(b"tool_error") && find(b"service.name"));
    }
}
