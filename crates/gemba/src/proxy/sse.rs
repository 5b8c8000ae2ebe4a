//! Server-sent events, both ways: a bounded reader for upstream response streams (an event
//! larger than the bound is dropped as it arrives instead of growing memory, and told, so
//! whoever waits for it hears why) and the writer's framing for the proxy's own streams.

use super::lines::Skipped;
use super::message::{self, Glimpse};

/// One event as read (only the fields MCP uses).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Event {
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// Incremental parser: feed bytes, take whole events. Each byte is searched once, however many
/// chunks an event arrives in; an event longer than the bound is dropped as it arrives (only
/// its ends are kept, to tell whom it was for) and reading goes on after it.
#[derive(Debug)]
pub struct Reader {
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already searched for a blank line.
    searched: usize,
    /// What was dropped so far of an event longer than `max_event` (`None` when not in one).
    skipping: Option<Skipped>,
    max_event: usize,
}

/// What a feed completed: an event, or one too long to pass.
#[derive(Debug)]
pub enum Item {
    Event(Event),
    TooLong(TooLong),
}

/// An event longer than the bound, dropped: its size and its two ends.
#[derive(Debug)]
pub struct TooLong(Skipped);

impl TooLong {
    /// Bytes of the event, blank line included.
    pub fn bytes(&self) -> usize {
        self.0.bytes
    }

    /// What the ends of its `data` show of the message (kind, id, method).
    pub fn glimpse(&self) -> Glimpse {
        let head = String::from_utf8_lossy(&self.0.head);
        // The first `data:` field: at the start, or after a newline.
        let at = if head.starts_with("data:") { Some(0) } else { head.find("\ndata:").map(|i| i + 1) };
        let data = at.map_or("", |at| {
            let value = &head[at + "data:".len()..];
            value.strip_prefix(' ').unwrap_or(value)
        });
        let tail = String::from_utf8_lossy(&self.0.tail);
        let tail = tail.rsplit_once("\ndata:").map_or(&*tail, |(_, t)| t.strip_prefix(' ').unwrap_or(t));
        message::glimpse(data, tail.trim_end())
    }
}

/// The longest blank line after an event (`\r\n\r\n`), less one: a search that stopped short
/// of the end resumes this many bytes back, in case a blank line was cut in two.
const SEPARATOR_REACH: usize = 3;

impl Reader {
    pub fn new(max_event: usize) -> Self {
        Self { buf: Vec::new(), searched: 0, skipping: None, max_event }
    }

    /// Add bytes; returns the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Item> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let from = start + self.searched.saturating_sub(SEPARATOR_REACH);
            let Some((end, sep)) = find_blank_line(&self.buf[from..]).map(|(e, s)| (from + e, s)) else {
                self.searched = self.buf.len() - start;
                break;
            };
            if self.skipping.is_some() || end - start > self.max_event {
                let mut skipped = self.skipping.take().unwrap_or_default();
                skipped.add(&self.buf[start..end]);
                skipped.bytes += sep;
                out.push(Item::TooLong(TooLong(skipped)));
            } else if let Some(e) = parse_block(&self.buf[start..end]) {
                out.push(Item::Event(e));
            }
            start = end + sep;
            self.searched = 0;
        }
        self.buf.drain(..start);
        if self.skipping.is_some() || self.buf.len() > self.max_event {
            // Too long already: drop what is buffered of it but the bytes a blank line cut in
            // two may need, and go on dropping to its end.
            let keep = self.buf.len().min(SEPARATOR_REACH);
            let drop = self.buf.len() - keep;
            self.skipping.get_or_insert_default().add(&self.buf[..drop]);
            self.buf.drain(..drop);
            self.searched = self.buf.len();
        }
        out
    }

    /// What is left at the end of the stream, as a last event if it is one (the rest of an event
    /// too long to pass is not one).
    pub fn finish(&mut self) -> Option<Event> {
        let block = std::mem::take(&mut self.buf);
        self.searched = 0;
        if self.skipping.take().is_some() {
            return None;
        }
        parse_block(&block)
    }
}

/// The end of the first event block and the length of the blank line after it.
fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i, 2));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        } else if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            if b.get(i + 2) == Some(&b'\r') && b.get(i + 3) == Some(&b'\n') {
                return Some((i, 4));
            }
            if b.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        }
        i += 1;
    }
    None
}

fn parse_block(block: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(block);
    let mut e = Event::default();
    let mut has_data = false;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if has_data {
                    e.data.push('\n');
                }
                e.data.push_str(value);
                has_data = true;
            }
            "id" => e.id = Some(value.to_string()),
            "retry" => e.retry = value.trim().parse().ok(),
            _ => {}
        }
    }
    (has_data || e.id.is_some() || e.retry.is_some()).then_some(e)
}

/// One message as an SSE event (a JSON message has no raw newlines worth keeping, but any are
/// split over `data:` lines as the format requires).
pub fn frame(data: &str, id: Option<&str>) -> String {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::message::Kind;

    fn events(items: Vec<Item>) -> Vec<Event> {
        items
            .into_iter()
            .map(|i| match i {
                Item::Event(e) => e,
                Item::TooLong(t) => panic!("unexpected too-long event of {} bytes", t.bytes()),
            })
            .collect()
    }

    #[test]
    fn events_across_chunks_and_line_endings() {
        let mut r = Reader::new(1_000);
        assert_eq!(
            events(r.feed(b"id: 1\nretry: 500\ndata: \n\n")),
            vec![Event { data: String::new(), id: Some("1".into()), retry: Some(500) }]
        );
        assert!(r.feed(b"data: {\"a\":").is_empty());
        let e = events(r.feed(b"1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\n"));
        assert_eq!(e.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), vec!["{\"a\":1}", "x\ny"]);
        assert!(r.feed(b"data: tail").is_empty());
        assert_eq!(r.finish().map(|e| e.data), Some("tail".into()));
    }

    #[test]
    fn a_blank_line_cut_between_chunks_is_found() {
        for sep in ["\n\n", "\r\n\r\n", "\n\r\n", "\r\n\n"] {
            let text = format!("data: one{sep}data: two{sep}");
            // Every way of cutting the stream in three.
            for i in 0..text.len() {
                for j in i..text.len() {
                    let mut r = Reader::new(1_000);
                    let mut got = events(r.feed(&text.as_bytes()[..i]));
                    got.extend(events(r.feed(&text.as_bytes()[i..j])));
                    got.extend(events(r.feed(&text.as_bytes()[j..])));
                    let data: Vec<_> = got.iter().map(|e| e.data.as_str()).collect();
                    assert_eq!(data, ["one", "two"], "{sep:?} cut at {i} and {j}");
                }
            }
        }
    }

    #[test]
    fn an_event_larger_than_the_bound_is_dropped_and_told_and_reading_goes_on() {
        let big = format!(
            "event: message\nid: 9\ndata: {{\"jsonrpc\":\"2.0\",\"id\":42,\"result\":{{\"text\":\"{}\"}}}}\n\n",
            "x".repeat(5_000)
        );
        let stream = format!("data: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{}}}}\n\n{big}data: after\n\n");
        for chunk in [7, 100, 4_096, stream.len()] {
            let mut r = Reader::new(1_000);
            let mut items = Vec::new();
            for c in stream.as_bytes().chunks(chunk) {
                items.extend(r.feed(c));
                assert!(r.buf.len() <= 1_000 + chunk, "the reader holds {} bytes", r.buf.len());
            }
            assert_eq!(items.len(), 3, "chunks of {chunk}");
            let Item::TooLong(t) = &items[1] else { panic!("the long event was passed") };
            assert_eq!(t.bytes(), big.len(), "chunks of {chunk}");
            let g = t.glimpse();
            assert_eq!((g.kind, g.id.as_deref()), (Some(Kind::Response), Some("42")), "chunks of {chunk}");
            let Item::Event(e) = &items[2] else { panic!("the event after it was lost") };
            assert_eq!(e.data, "after");
        }
    }

    #[test]
    fn a_stream_ending_inside_a_long_event_leaves_no_event() {
        let mut r = Reader::new(16);
        assert!(r.feed(&[b'x'; 40]).is_empty());
        assert_eq!(r.finish(), None);
    }

    #[test]
    fn the_tail_names_a_request_whose_id_comes_last() {
        let long = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"method\":\"sampling/createMessage\",\"params\":{{\"p\":\"{}\"}},\"id\":\"s-3\"}}\n\n",
            "y".repeat(3_000)
        );
        let mut r = Reader::new(100);
        let items = r.feed(long.as_bytes());
        let [Item::TooLong(t)] = &items[..] else { panic!("{items:?}") };
        let g = t.glimpse();
        assert_eq!(
            (g.kind, g.method.as_deref(), g.id.as_deref()),
            (Some(Kind::Request), Some("sampling/createMessage"), Some("\"s-3\""))
        );
    }

    #[test]
    fn frames_read_back() {
        let f = frame("{\"jsonrpc\":\"2.0\"}", Some("7"));
        assert_eq!(f, "id: 7\ndata: {\"jsonrpc\":\"2.0\"}\n\n");
        let mut r = Reader::new(100);
        assert_eq!(events(r.feed(f.as_bytes()))[0].data, "{\"jsonrpc\":\"2.0\"}");
    }

    /// Not a test: how long a large event takes to read in small chunks (it was quadratic).
    #[test]
    #[ignore]
    fn large_event_in_small_chunks() {
        let mut r = Reader::new(64 << 20);
        let mut ev = b"data: ".to_vec();
        ev.extend(std::iter::repeat_n(b'x', 8 << 20));
        ev.extend_from_slice(b"\n\n");
        let t = std::time::Instant::now();
        let n: usize = ev.chunks(16 * 1024).map(|c| r.feed(c).len()).sum();
        eprintln!("8 MiB in 16 KiB chunks: {n} events in {:?}", t.elapsed());
    }
}
