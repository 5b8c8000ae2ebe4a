//! The bound on one message `gemba serve --stdio` reads, and what a client is told when a
//! message cannot be read. rmcp's transport drops a line longer than its bound, and a line that
//! is not JSON, with a log line only, so a client that sent one waited for its answer forever.
//! Here, stdin passes through as it is read (no copy) while each line is within `limit`; a
//! longer one is cut at the limit and made unreadable (rmcp ignores input that is not JSON), the
//! rest of it is dropped as it arrives (its two ends kept, to tell what it was), and in its place
//! comes a stand-in request under the original id, which the server answers with an error naming
//! the size and the limit (`measure::Measured::on_custom_request`), measured as a failed call of
//! the same tool. A line of up to `CHECKED_LINE` bytes that is not JSON is passed on (rmcp skips
//! it) and followed by a stand-in the same way, answered with a parse error (-32700) that says
//! where the JSON broke. Only a line that shows a request's `method` and `id` is answered: rmcp
//! and the other SDKs answer no unparsable input, so that a peer echoing answers back as more
//! bad input cannot start an error storm (rust-sdk#938), and an answer, echoed, shows no method.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use serde::Deserialize;
use tokio::io::{AsyncRead, ReadBuf};

use crate::proxy::lines::Skipped;
use crate::proxy::link::size;
use crate::proxy::message::{Glimpse, Kind};

/// The stand-in request's method: it carries what is known of a message too long to read.
pub const TOO_LONG_METHOD: &str = "gemba/messageTooLong";
/// The stand-in request's method for a message that is not JSON.
pub const NOT_JSON_METHOD: &str = "gemba/messageNotJson";

/// The longest message read from stdin, in bytes (without its newline): rmcp's own bound, which
/// is also the largest event its HTTP client accepts. rmcp is given a little more, so the cut
/// line (the limit and one byte) reaches it whole.
pub const MAX_LINE: usize = rmcp::transport::async_rw::DEFAULT_MAX_LINE_LENGTH - 16;

/// Bytes kept of a line's start while it is read (to tell whom it was from if it runs long).
const HEAD: usize = 1024;

/// Lines up to this long are checked to be JSON (a line read in one piece is checked where it
/// lies; one split between reads is copied, up to this size, to be checked whole).
const CHECKED_LINE: usize = 64 * 1024;

/// What the stand-in request says (its `params`).
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct Unread {
    /// Bytes of the message, its newline included.
    pub bytes: usize,
    /// The bound it passed (a message too long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Where its JSON broke (a message that is not JSON), in serde_json's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_json: Option<String>,
    /// The method and tool the message named, when its start showed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The request's own `_meta` (a 2026-era request's protocol version is in it).
    #[serde(default, rename = "_meta", skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<serde_json::value::RawValue>>,
}

impl Unread {
    /// The error the client gets.
    pub fn message(&self) -> String {
        match (&self.not_json, self.limit) {
            (Some(error), _) => format!(
                "this request is not JSON ({error}); gemba serve read none of it. Send each JSON-RPC message as one line of UTF-8 JSON"
            ),
            (None, limit) => format!(
                "this request is {}, more than gemba serve reads from stdio ({}); send less (edit in smaller parts), or use the HTTP transport with a larger --max-body-bytes",
                size(self.bytes),
                size(limit.unwrap_or(MAX_LINE))
            ),
        }
    }

    /// Where the call is measured: its tool, else its method.
    pub fn operation(&self) -> &str {
        self.tool.as_deref().or(self.method.as_deref()).unwrap_or("unknown")
    }
}

/// stdin with a bound on each line (see the module's documentation).
pub struct BoundedLines<R> {
    inner: R,
    limit: usize,
    /// Bytes of the current line handed on so far.
    line: usize,
    /// The line so far, while it is at most `CHECKED_LINE` long (its first `CHECKED_LINE`
    /// bytes after that): to check it is JSON, and to tell whom it was from if it runs long.
    kept: Vec<u8>,
    /// The rest of a line cut at the limit, being dropped.
    dropping: Option<Skipped>,
    /// Bytes read past a cut, not yet looked at (from `unread_at`).
    unread: Vec<u8>,
    unread_at: usize,
    /// Bytes owed to the reader before any more input (from `out_at`): a cut line's end, a
    /// stand-in request.
    out: Vec<u8>,
    out_at: usize,
}

/// What `scan` made of some input: its first `pass` bytes go on as they are, and everything
/// up to `used` was dealt with (the bytes between were dropped).
struct Step {
    pass: usize,
    used: usize,
}

impl<R> BoundedLines<R> {
    pub fn new(inner: R, limit: usize) -> Self {
        Self {
            inner,
            limit,
            line: 0,
            kept: Vec::new(),
            dropping: None,
            unread: Vec::new(),
            unread_at: 0,
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// Look at the next input. Stops early when something is owed to the reader first.
    fn scan(&mut self, data: &[u8]) -> Step {
        if let Some(skipped) = &mut self.dropping {
            let Some(i) = memchr::memchr(b'\n', data) else {
                skipped.add(data);
                return Step { pass: 0, used: data.len() };
            };
            skipped.add(&data[..i]);
            skipped.bytes += 1;
            if let Some(skipped) = self.dropping.take() {
                self.out = stand_in(&skipped, self.limit);
            }
            return Step { pass: 0, used: i + 1 };
        }
        let mut at = 0;
        loop {
            let rest = &data[at..];
            match memchr::memchr(b'\n', rest) {
                Some(i) if self.line + i <= self.limit => {
                    let not_json = self.check_line(&rest[..i]);
                    (self.line, at) = (0, at + i + 1);
                    self.kept.clear();
                    if let Some(stand_in) = not_json {
                        // The line goes on (rmcp skips it), then its stand-in.
                        self.out = stand_in;
                        return Step { pass: at, used: at };
                    }
                    if at == data.len() {
                        return Step { pass: at, used: at };
                    }
                }
                None if self.line + rest.len() <= self.limit => {
                    self.note(rest);
                    return Step { pass: data.len(), used: data.len() };
                }
                _ => {
                    // The line runs past the limit here: it goes on up to the limit, then ends
                    // unreadable, and the rest of it is dropped.
                    let pass = self.limit - self.line;
                    self.note(&rest[..pass]);
                    let mut head = std::mem::take(&mut self.kept);
                    head.truncate(HEAD);
                    self.dropping = Some(Skipped { bytes: self.line, head, tail: Vec::new() });
                    self.line = 0;
                    self.out = b"#\n".to_vec();
                    return Step { pass: at + pass, used: at + pass };
                }
            }
        }
    }

    /// `part` of the current line goes on: counted, and kept while the line is short.
    fn note(&mut self, part: &[u8]) {
        self.line += part.len();
        if self.kept.len() < CHECKED_LINE {
            let n = (CHECKED_LINE - self.kept.len()).min(part.len());
            self.kept.extend_from_slice(&part[..n]);
        }
    }

    /// The current line ends with `last`: a stand-in request when it is not JSON and was a
    /// request (`None` otherwise, and for lines too long to check).
    fn check_line(&mut self, last: &[u8]) -> Option<Vec<u8>> {
        let line = if self.line == 0 && last.len() <= CHECKED_LINE {
            last
        } else if self.line + last.len() <= CHECKED_LINE {
            self.kept.extend_from_slice(last);
            &self.kept
        } else {
            return None;
        };
        // rmcp reads a line after a UTF-8 byte order mark, and skips blank ones.
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let error = serde_json::from_slice::<serde::de::IgnoredAny>(line).err()?;
        not_json_stand_in(line, &error)
    }
}

/// The line that follows one that is not JSON: a stand-in request under its id, when it was a
/// request whose id can be read (anything else is only logged).
fn not_json_stand_in(line: &[u8], error: &serde_json::Error) -> Option<Vec<u8>> {
    let mut ends = Skipped::default();
    ends.add(line);
    ends.bytes += 1; // its newline
    let g = ends.glimpse();
    let answered = matches!((&g.kind, &g.id), (Some(Kind::Request), Some(_)));
    tracing::warn!(
        "a client message of {} bytes is not JSON ({error}): {}",
        ends.bytes,
        match &g.id {
            Some(id) if answered => format!("request {id} is answered with a parse error"),
            _ => "no request id can be read from it, so nothing is answered".into(),
        }
    );
    let not_json = Some(error.to_string());
    stand_in_for(
        g,
        Unread { bytes: ends.bytes, limit: None, not_json, method: None, tool: None, meta: None },
        NOT_JSON_METHOD,
    )
}

/// The line that replaces a dropped one: a stand-in request under its id, when it was a
/// request (anything else is only logged: no one waits for an answer to it).
fn stand_in(skipped: &Skipped, limit: usize) -> Vec<u8> {
    let g = skipped.glimpse();
    tracing::warn!(
        "a client message of {} bytes (more than {limit}) was not read: {}",
        skipped.bytes,
        match (&g.kind, &g.id) {
            (Some(Kind::Request), Some(id)) => format!("request {id} is answered with an error"),
            _ => "it was not a request, so nothing is answered".into(),
        }
    );
    let unread =
        Unread { bytes: skipped.bytes, limit: Some(limit), not_json: None, method: None, tool: None, meta: None };
    stand_in_for(g, unread, TOO_LONG_METHOD).unwrap_or_default()
}

/// A stand-in request (`method`, with `unread` and what the glimpse read of the message as its
/// params) under the message's id, when it was a request.
fn stand_in_for(g: Glimpse, unread: Unread, method: &str) -> Option<Vec<u8>> {
    let (Some(Kind::Request), Some(id)) = (g.kind, g.id) else { return None };
    let meta = g.meta.and_then(|m| serde_json::value::RawValue::from_string(m).ok());
    let params = Unread { method: g.method, tool: g.tool, meta, ..unread };
    let params = serde_json::to_string(&params).ok()?;
    Some(format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{method}\",\"params\":{params}}}\n").into_bytes())
}

impl<R: AsyncRead + Unpin> AsyncRead for BoundedLines<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = (this.out.len() - this.out_at).min(buf.remaining());
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.unread_at < this.unread.len() {
                // Input read past a cut: looked at from here, copied out.
                let unread = std::mem::take(&mut this.unread);
                let view = &unread[this.unread_at..];
                let view = &view[..view.len().min(buf.remaining())];
                let step = this.scan(view);
                buf.put_slice(&view[..step.pass]);
                this.unread_at += step.used;
                this.unread = unread;
                if this.unread_at == this.unread.len() {
                    this.unread.clear();
                    this.unread_at = 0;
                }
                if step.pass > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // Straight from stdin into the reader's buffer.
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let end = buf.filled().len();
            if end == start {
                return Poll::Ready(Ok(()));
            }
            let step = this.scan(&buf.filled()[start..end]);
            if start + step.used < end {
                this.unread.extend_from_slice(&buf.filled()[start + step.used..end]);
            }
            buf.set_filled(start + step.pass);
            if step.pass > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    async fn read_all(input: &[u8], limit: usize, chunk: usize, read_size: usize) -> String {
        let (mut w, r) = tokio::io::duplex(chunk);
        let data = input.to_vec();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            w.write_all(&data).await.unwrap();
        });
        let mut reader = BoundedLines::new(r, limit);
        let mut out = Vec::new();
        let mut piece = vec![0u8; read_size];
        loop {
            let n = reader.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&piece[..n]);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn lines_within_the_bound_pass_unchanged_and_a_longer_request_is_replaced() {
        let long = format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"fork_edit","arguments":{{"v":"{}"}}}}}}"#,
            "z".repeat(500)
        );
        let input = format!("{{\"a\":1}}\n{long}\n{{\"b\":2}}\n{}\nlast", "n".repeat(100));
        for (chunk, read_size) in [(7, 3), (64, 1000), (4096, 4096), (3, 64)] {
            let got = read_all(input.as_bytes(), 120, chunk, read_size).await;
            let lines: Vec<&str> = got.split('\n').collect();
            assert_eq!(lines[0], "{\"a\":1}");
            assert_eq!(lines[1], format!("{}#", &long[..120]), "cut at the bound, made unreadable");
            let stand_in: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
            assert_eq!(stand_in["id"], 7);
            assert_eq!(stand_in["method"], TOO_LONG_METHOD);
            let p: Unread = serde_json::from_value(stand_in["params"].clone()).unwrap();
            assert_eq!((p.bytes, p.limit, p.tool.as_deref()), (long.len() + 1, Some(120), Some("fork_edit")));
            assert_eq!(lines[3], "{\"b\":2}", "the next message whole (chunk {chunk}, reads of {read_size})");
            assert_eq!(lines[4], "n".repeat(100));
            assert_eq!(lines[5], "last");
            assert_eq!(lines.len(), 6);
        }
    }

    #[tokio::test]
    async fn a_long_line_that_is_no_request_is_dropped_without_a_stand_in() {
        let input =
            format!("{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/x\",\"params\":\"{}\"}}\nok\n", "q".repeat(300));
        let got = read_all(input.as_bytes(), 50, 16, 16).await;
        assert_eq!(got, format!("{}#\nok\n", &input[..50]));
        // The id written last (as the TypeScript SDK writes it) is read from the line's end.
        let late = format!(
            "{{\"method\":\"tools/call\",\"params\":{{\"name\":\"t\",\"x\":\"{}\"}},\"jsonrpc\":\"2.0\",\"id\":\"r9\"}}\n",
            "w".repeat(2_000)
        );
        let got = read_all(late.as_bytes(), 100, 128, 4096).await;
        let stand_in: serde_json::Value = serde_json::from_str(got.lines().nth(1).unwrap()).unwrap();
        assert_eq!((stand_in["id"].as_str(), stand_in["params"]["tool"].as_str()), (Some("r9"), Some("t")));
    }

    #[tokio::test]
    async fn a_request_that_is_not_json_is_followed_by_a_stand_in() {
        let broken = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"read_table","arguments":{"range":"A1:B2"}}"#;
        let not_a_request = r#"{"jsonrpc":"2.0","method":"notifications/initialized""#;
        let input = format!("{{\"a\":1}}\n{broken}\n\n  \n{not_a_request}\n[1, 2]\n\u{feff}{{\"b\":2}}\r\n");
        for (chunk, read_size) in [(5, 3), (64, 1000), (4096, 4096), (3, 64)] {
            let got = read_all(input.as_bytes(), 1_000, chunk, read_size).await;
            let lines: Vec<&str> = got.split('\n').collect();
            assert_eq!(lines[..2], ["{\"a\":1}", broken], "(chunk {chunk}, reads of {read_size})");
            let stand_in: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
            assert_eq!((stand_in["id"].as_i64(), stand_in["method"].as_str()), (Some(3), Some(NOT_JSON_METHOD)));
            let p: Unread = serde_json::from_value(stand_in["params"].clone()).unwrap();
            assert_eq!((p.bytes, p.limit, p.tool.as_deref()), (broken.len() + 1, None, Some("read_table")));
            let said = p.message();
            assert!(said.contains("EOF while parsing an object") && said.contains("one line of UTF-8 JSON"), "{said}");
            // Blank lines, a notification that is not JSON (no one waits), JSON that is no
            // object and JSON after a byte order mark (which rmcp reads) pass as they are, with
            // no stand-in.
            assert_eq!(
                lines[3..],
                ["", "  ", not_a_request, "[1, 2]", "\u{feff}{\"b\":2}\r", ""],
                "(chunk {chunk}, reads of {read_size})"
            );
        }
    }

    #[tokio::test]
    async fn a_line_longer_than_the_check_is_passed_unchecked() {
        let long =
            format!("{{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"x\",\"params\":\"{}\"", "p".repeat(CHECKED_LINE));
        let input = format!("{long}\nok\n");
        let got = read_all(input.as_bytes(), 4 * CHECKED_LINE, 4096, 4096).await;
        assert_eq!(got, input);
    }
}
