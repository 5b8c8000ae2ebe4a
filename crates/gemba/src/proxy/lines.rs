//! Newline-delimited messages read from a pipe (the client's stdin, an upstream's stdout),
//! with as little copying as the framing allows. Reads go straight into the reader's buffer;
//! a message that fills it (the usual case for a large answer, which arrives alone) is handed
//! over as that buffer, trimmed to size in place, and reading goes on into a new one. Only
//! small messages, or ones sharing a read with a larger neighbour, are copied out. Every
//! message keeps a spare byte of capacity, so the newline the writer adds back costs no
//! reallocation.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Room made for each read.
const READ_SIZE: usize = 64 * 1024;

pub(crate) enum Line {
    /// One message, without its newline.
    Message(Vec<u8>),
    /// A message longer than allowed was skipped; what is kept of it says whom it was for.
    TooLong(Skipped),
    /// The input ended.
    Eof,
}

/// What is kept of a message too long to pass: its size and its two ends, enough to tell what
/// it was (a request, an answer) and its id, so the side waiting for it can be told.
#[derive(Debug, Default)]
pub(crate) struct Skipped {
    /// Bytes of it, newline included.
    pub bytes: usize,
    /// Its first bytes (up to `KEPT_HEAD`).
    pub head: Vec<u8>,
    /// Its last bytes before the newline (up to `KEPT_TAIL`).
    pub tail: Vec<u8>,
}

/// Bytes kept of each end of a skipped message.
const KEPT_HEAD: usize = 1024;
const KEPT_TAIL: usize = 1024;

impl Skipped {
    /// Note `part` (the next bytes of the message, in order).
    pub(crate) fn add(&mut self, part: &[u8]) {
        self.bytes += part.len();
        if self.head.len() < KEPT_HEAD {
            let n = (KEPT_HEAD - self.head.len()).min(part.len());
            self.head.extend_from_slice(&part[..n]);
        }
        let keep = part.len().min(KEPT_TAIL);
        self.tail.extend_from_slice(&part[part.len() - keep..]);
        if self.tail.len() > KEPT_TAIL {
            self.tail.drain(..self.tail.len() - KEPT_TAIL);
        }
    }

    /// What its ends show of the message.
    pub fn glimpse(&self) -> super::message::Glimpse {
        super::message::glimpse(&String::from_utf8_lossy(&self.head), &String::from_utf8_lossy(&self.tail))
    }

    /// The last part of the message (`line`, its newline not included) and the newline's byte.
    fn finish(mut self, line: &[u8], newline: usize) -> Self {
        self.add(line);
        self.bytes += newline;
        self
    }
}

pub(crate) struct LineReader<R> {
    src: R,
    buf: Vec<u8>,
    /// The first byte not handed out yet.
    start: usize,
    /// Bytes after `start` already searched for a newline (so none is searched twice).
    searched: usize,
    /// What was dropped so far of a message longer than `max` (`None` when not in one).
    skipping: Option<Skipped>,
    max: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader of messages of at most `max` bytes each (longer ones are skipped, and told).
    pub(crate) fn new(src: R, max: usize) -> Self {
        Self { src, buf: Vec::with_capacity(READ_SIZE), start: 0, searched: 0, skipping: None, max, eof: false }
    }

    /// The next message; the last one may lack its newline.
    pub(crate) async fn next(&mut self) -> std::io::Result<Line> {
        loop {
            let from = self.start + self.searched;
            if let Some(i) = memchr::memchr(b'\n', &self.buf[from..]) {
                let end = from + i;
                let begin = self.start;
                self.start = end + 1;
                self.searched = 0;
                if self.skipping.is_some() || end - begin > self.max {
                    let skipped = self.skipping.take().unwrap_or_default().finish(&self.buf[begin..end], 1);
                    self.compact_if_drained();
                    return Ok(Line::TooLong(skipped));
                }
                return Ok(Line::Message(self.take(begin, end)));
            }
            self.searched = self.buf.len() - self.start;
            if self.eof {
                let (begin, end) = (self.start, self.buf.len());
                self.start = end;
                self.searched = 0;
                if self.skipping.is_some() || end - begin > self.max {
                    let skipped = self.skipping.take().unwrap_or_default().finish(&self.buf[begin..end], 0);
                    self.compact_if_drained();
                    return Ok(Line::TooLong(skipped));
                }
                if begin == end {
                    return Ok(Line::Eof);
                }
                return Ok(Line::Message(self.take(begin, end)));
            }
            if self.skipping.is_some() || self.searched > self.max {
                // Too long already: drop what is buffered of it (keeping its ends) and go on
                // dropping to its end.
                self.skipping.get_or_insert_default().add(&self.buf[self.start..]);
                self.buf.clear();
                (self.start, self.searched) = (0, 0);
            } else if self.start > 0 {
                // The start of a message the next read completes: to the front.
                self.buf.drain(..self.start);
                self.start = 0;
            }
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
                self.buf.reserve(READ_SIZE);
            }
            if self.src.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }

    /// Bytes `begin..end` of the buffer (the message; `self.start` is already past it) as a
    /// buffer of their own with a spare byte. When the message starts the buffer, is at least
    /// a quarter of it and what follows it is no longer, the buffer itself is handed over
    /// (what follows, if anything, is copied into the new one); otherwise the message is copied.
    fn take(&mut self, begin: usize, end: usize) -> Vec<u8> {
        let len = end - begin;
        let rest = self.buf.len() - self.start;
        if begin == 0 && len >= self.buf.capacity() / 4 && rest <= len {
            let mut next = Vec::with_capacity(READ_SIZE.max(rest + READ_SIZE / 4));
            next.extend_from_slice(&self.buf[self.start..]);
            let mut message = std::mem::replace(&mut self.buf, next);
            self.start = 0;
            message.truncate(len);
            // Give the unused tail back (in place: a shrinking reallocation does not copy).
            if message.capacity() > 2 * (len + 1) {
                message.shrink_to(len + 1);
            }
            return message;
        }
        let mut message = Vec::with_capacity(len + 1);
        message.extend_from_slice(&self.buf[begin..end]);
        self.compact_if_drained();
        message
    }

    /// Everything handed out: start the buffer over.
    fn compact_if_drained(&mut self) {
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }
}

/// A line as a message: its line ending (and a `\r` before it) dropped, `None` when blank.
pub(crate) fn message_text(mut line: Vec<u8>) -> Option<String> {
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(into_text(line))
}

/// A message's bytes as text. The check that they are UTF-8 is most of what a large answer
/// costs the proxy in user space, so it is done with SIMD (several times std's speed); bytes
/// that are not UTF-8 are passed on lossily, as before.
fn into_text(bytes: Vec<u8>) -> String {
    if simdutf8::basic::from_utf8(&bytes).is_ok() {
        // SAFETY: `bytes` was checked to be UTF-8 just above.
        unsafe { String::from_utf8_unchecked(bytes) }
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(input: &[u8], max: usize) -> Vec<String> {
        // A reader that returns at most 7 bytes per read, so messages span reads.
        let (mut w, r) = tokio::io::duplex(7);
        let data = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            w.write_all(&data).await.unwrap();
        });
        let mut lines = LineReader::new(r, max);
        let mut out = Vec::new();
        loop {
            match lines.next().await.unwrap() {
                Line::Eof => break,
                Line::TooLong(s) => out.push(format!("too long {}", s.bytes)),
                Line::Message(m) => {
                    assert!(m.capacity() > m.len(), "room for the newline");
                    out.push(String::from_utf8(m).unwrap());
                }
            }
        }
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn messages_are_split_at_newlines_and_bounded() {
        let input = format!("short\n{}\nnext\n\nlast-without-newline", "x".repeat(100));
        assert_eq!(all(input.as_bytes(), 20).await, vec!["short", "too long 101", "next", "", "last-without-newline"]);
    }

    #[tokio::test]
    async fn a_message_of_exactly_the_limit_passes_and_one_more_byte_does_not() {
        let input = format!("{}\n{}\nend\n", "a".repeat(20), "b".repeat(21));
        assert_eq!(all(input.as_bytes(), 20).await, vec!["a".repeat(20), "too long 22".into(), "end".into()]);
        let tail = format!("ok\n{}", "c".repeat(30));
        assert_eq!(all(tail.as_bytes(), 20).await, vec!["ok", "too long 30"]);
    }

    #[tokio::test]
    async fn large_messages_back_to_back_arrive_whole_and_in_order() {
        // Sizes around the read size and its quarter, so every path of `take` is taken.
        let sizes = [10, READ_SIZE / 4, READ_SIZE - 1, READ_SIZE, 3 * READ_SIZE + 5, 1, READ_SIZE / 4 - 1, 70_000];
        let mut input = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            input.extend(std::iter::repeat_n(b'a' + i as u8, *n));
            input.push(b'\n');
        }
        let got = all(&input, 1 << 20).await;
        assert_eq!(got.len(), sizes.len());
        for (i, (m, n)) in got.iter().zip(sizes).enumerate() {
            assert_eq!(m.len(), n, "message {i}");
            assert!(m.bytes().all(|b| b == b'a' + i as u8), "message {i} is its own bytes");
        }
    }

    #[tokio::test]
    async fn a_skipped_message_keeps_its_ends_across_reads() {
        let body = "y".repeat(5_000);
        let long = format!(r#"{{"jsonrpc":"2.0","id":41,"result":{{"text":"{body}"}},"z":1}}"#);
        let input = format!("{long}\nnext\n{long}");
        // A reader of 7 bytes per read: the message is dropped piece by piece.
        let (mut w, r) = tokio::io::duplex(7);
        let data = input.into_bytes();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            w.write_all(&data).await.unwrap();
        });
        let mut lines = LineReader::new(r, 100);
        for newline in [1, 0] {
            let Line::TooLong(s) = lines.next().await.unwrap() else { panic!("skipped") };
            assert_eq!(s.bytes, long.len() + newline);
            assert_eq!(s.head, long.as_bytes()[..KEPT_HEAD]);
            assert_eq!(s.tail, long.as_bytes()[long.len() - KEPT_TAIL..]);
            let g = s.glimpse();
            assert_eq!((g.kind, g.id.as_deref()), (Some(super::super::message::Kind::Response), Some("41")));
            if newline == 1 {
                assert!(matches!(lines.next().await.unwrap(), Line::Message(m) if m == b"next"));
            }
        }
        // Held whole in one read: the same ends.
        let mut lines = LineReader::new(long.as_bytes(), 100);
        let Line::TooLong(s) = lines.next().await.unwrap() else { panic!("skipped") };
        assert_eq!(
            (s.bytes, &s.head[..], &s.tail[..]),
            (long.len(), &long.as_bytes()[..KEPT_HEAD], &long.as_bytes()[long.len() - KEPT_TAIL..])
        );
    }

    #[test]
    fn text_is_checked_and_invalid_bytes_replaced() {
        assert_eq!(into_text("héllo {\"a\":1}".as_bytes().to_vec()), "héllo {\"a\":1}");
        assert_eq!(into_text(b"ab\xffcd".to_vec()), "ab\u{fffd}cd");
        let long = "ü".repeat(5_000) + "x";
        assert_eq!(into_text(long.as_bytes().to_vec()), long);
        assert_eq!(message_text(b"{\"a\":1}\r\n".to_vec()).as_deref(), Some("{\"a\":1}"));
        assert_eq!(message_text(b" \t\r\n".to_vec()), None);
    }

    #[tokio::test]
    async fn one_read_holding_several_messages_and_a_partial_one() {
        let big = "y".repeat(40_000);
        let input = format!("{big}\nsmall\n{big}\npart");
        let mut lines = LineReader::new(input.as_bytes(), 1 << 20);
        let mut got = Vec::new();
        while let Line::Message(m) = lines.next().await.unwrap() {
            got.push(String::from_utf8(m).unwrap());
        }
        assert_eq!(got, vec![big.clone(), "small".into(), big, "part".into()]);
    }
}
