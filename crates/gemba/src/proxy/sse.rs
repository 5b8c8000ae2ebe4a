//! Server-sent events, both ways: a bounded reader for upstream response streams (an event
//! larger than the bound ends the stream with an error instead of growing memory) and the
//! writer's framing for the proxy's own streams.

/// One event as read (only the fields MCP uses).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Event {
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// Incremental parser: feed bytes, take whole events.
#[derive(Debug)]
pub struct Reader {
    buf: Vec<u8>,
    max_event: usize,
}

#[derive(Debug, PartialEq)]
pub enum ReadError {
    TooLarge(usize),
}

impl Reader {
    pub fn new(max_event: usize) -> Self {
        Self { buf: Vec::new(), max_event }
    }

    /// Add bytes; returns the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, ReadError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((end, sep)) = find_blank_line(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end + sep).collect();
            if let Some(e) = parse_block(&block[..end]) {
                out.push(e);
            }
        }
        if self.buf.len() > self.max_event {
            return Err(ReadError::TooLarge(self.buf.len()));
        }
        Ok(out)
    }

    /// What is left at the end of the stream, as a last event if it is one.
    pub fn finish(&mut self) -> Option<Event> {
        let block = std::mem::take(&mut self.buf);
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

    #[test]
    fn events_across_chunks_and_line_endings() {
        let mut r = Reader::new(1_000);
        assert_eq!(
            r.feed(b"id: 1\nretry: 500\ndata: \n\n").unwrap(),
            vec![Event { data: String::new(), id: Some("1".into()), retry: Some(500) }]
        );
        assert!(r.feed(b"data: {\"a\":").unwrap().is_empty());
        let e = r.feed(b"1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\n").unwrap();
        assert_eq!(e.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), vec!["{\"a\":1}", "x\ny"]);
        assert!(r.feed(b"data: tail").unwrap().is_empty());
        assert_eq!(r.finish().map(|e| e.data), Some("tail".into()));
    }

    #[test]
    fn an_event_larger_than_the_bound_is_an_error() {
        let mut r = Reader::new(16);
        assert_eq!(r.feed(&[b'x'; 40]), Err(ReadError::TooLarge(40)));
    }

    #[test]
    fn frames_read_back() {
        let f = frame("{\"jsonrpc\":\"2.0\"}", Some("7"));
        assert_eq!(f, "id: 7\ndata: {\"jsonrpc\":\"2.0\"}\n\n");
        let mut r = Reader::new(100);
        assert_eq!(r.feed(f.as_bytes()).unwrap()[0].data, "{\"jsonrpc\":\"2.0\"}");
    }
}
