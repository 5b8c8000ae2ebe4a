//! Backpressure for the stdio transport. MCP over stdio is one JSON message per line; when a
//! client stops reading its answers, stdout blocks and answers would pile up in memory while
//! stdin keeps delivering new requests. This pair of wrappers counts lines in (requests) and
//! lines out (answers), and stops reading stdin while more than a bound of answers are owed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most messages read but not yet answered before stdin is paused.
pub const MAX_OWED: i64 = 256;

#[derive(Default)]
struct Shared {
    /// Lines read minus lines written (notifications make it drift up a little; harmless).
    owed: AtomicI64,
    reader: Mutex<Option<Waker>>,
}

pub struct Reader<R> {
    inner: R,
    shared: Arc<Shared>,
    limit: i64,
}

pub struct Writer<W> {
    inner: W,
    shared: Arc<Shared>,
    limit: i64,
}

/// Wrap a transport's read and write halves so reading pauses while `limit` answers are owed.
pub fn pair<R, W>(reader: R, writer: W, limit: i64) -> (Reader<R>, Writer<W>) {
    let shared = Arc::new(Shared::default());
    (Reader { inner: reader, shared: shared.clone(), limit }, Writer { inner: writer, shared, limit })
}

fn lines(b: &[u8]) -> i64 {
    b.iter().filter(|&&c| c == b'\n').count() as i64
}

impl<R: AsyncRead + Unpin> AsyncRead for Reader<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.shared.owed.load(Ordering::Acquire) >= this.limit {
            *this.shared.reader.lock() = Some(cx.waker().clone());
            // Answers may have gone out since the check: look again before sleeping.
            if this.shared.owed.load(Ordering::Acquire) >= this.limit {
                return Poll::Pending;
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let n = lines(&buf.filled()[before..]);
            this.shared.owed.fetch_add(n, Ordering::AcqRel);
        }
        r
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Writer<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            let out = lines(&buf[..*n]);
            if out > 0 {
                let now = this.shared.owed.fetch_sub(out, Ordering::AcqRel) - out;
                if now < 0 {
                    // Messages the server sent on its own (notifications): never owe less than 0.
                    this.shared.owed.fetch_max(0, Ordering::AcqRel);
                }
                if now < this.limit
                    && let Some(w) = this.shared.reader.lock().take()
                {
                    w.wake();
                }
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reading_pauses_while_answers_are_owed() {
        let input: &[u8] = b"1\n2\n3\n4\n";
        let (mut r, mut w) = pair(input, Vec::new(), 2);
        let mut buf = [0u8; 4];
        // The first read takes two lines: the bound is reached.
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"1\n2\n");
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut buf)).await;
        assert!(blocked.is_err(), "no more reading while two answers are owed");
        // One answer goes out: reading resumes.
        w.write_all(b"{\"id\":1}\n").await.unwrap();
        let n = tokio::time::timeout(std::time::Duration::from_millis(200), r.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
    }
}
