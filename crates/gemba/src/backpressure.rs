//! The stdio transport, guarded two ways.
//!
//! - **Only MCP on the MCP stream.** At the start of stdio mode the process keeps a private
//!   duplicate of fd 1 for the transport and points fd 1 at stderr, so no library (IronCalc's
//!   `println!`, say), present or future, can put a line that is not JSON-RPC on the stream.
//! - **Backpressure.** When a client stops reading its answers, stdout blocks and answers would
//!   pile up in memory while stdin keeps delivering new requests. The wrapper counts what is owed
//!   by request id — a request is owed until its answer has been written, or until the client
//!   cancels it — and stops reading while `limit` answers are owed. Notifications (progress,
//!   cancelled, initialized, roots changed) are never answered, so they never count.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use rmcp::RoleServer;
use rmcp::model::{ClientNotification, JsonRpcMessage, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::sync::Notify;

/// Most requests read but not yet answered before stdin is paused.
pub const MAX_OWED: usize = 256;

/// Point fd 1 at stderr and return a private handle on what fd 1 was (the MCP stream).
/// After this, `println!` anywhere in the process writes to stderr.
#[cfg(unix)]
pub fn private_stdout() -> std::io::Result<tokio::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain descriptor calls; `dup` returns a fresh descriptor this function owns, and
    // `dup2` only redirects fd 1, which the standard library keeps using by number.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if unsafe { libc::dup2(2, 1) } < 0 {
        let e = std::io::Error::last_os_error();
        unsafe { libc::close(fd) };
        return Err(e);
    }
    // SAFETY: `fd` is a valid descriptor owned by nobody else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    Ok(tokio::fs::File::from_std(file))
}

/// What is owed to the client: request ids read and not yet answered or cancelled.
#[derive(Default)]
struct Owed {
    ids: Mutex<HashSet<RequestId>>,
    freed: Notify,
}

impl Owed {
    fn settle(&self, id: &RequestId) {
        if self.ids.lock().remove(id) {
            self.freed.notify_waiters();
        }
    }
}

/// A transport that stops receiving while `limit` requests are owed an answer.
pub struct Backpressured<T> {
    inner: T,
    owed: Arc<Owed>,
    limit: usize,
}

impl<T> Backpressured<T> {
    pub fn new(inner: T, limit: usize) -> Self {
        Self { inner, owed: Arc::new(Owed::default()), limit: limit.max(1) }
    }

    /// Requests owed an answer now.
    #[cfg(test)]
    fn owed(&self) -> usize {
        self.owed.ids.lock().len()
    }
}

impl<T: Transport<RoleServer>> Transport<RoleServer> for Backpressured<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let answered = match &item {
            JsonRpcMessage::Response(r) => Some(r.id.clone()),
            JsonRpcMessage::Error(e) => e.id.clone(),
            JsonRpcMessage::Request(_) | JsonRpcMessage::Notification(_) => None,
        };
        let write = self.inner.send(item);
        let owed = self.owed.clone();
        async move {
            // Owed until written: a client that stops reading keeps its answers owed.
            let r = write.await;
            if let Some(id) = answered {
                owed.settle(&id);
            }
            r
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        // Cancel-safe: the service polls this inside a select! and may drop it at any await.
        loop {
            let freed = self.owed.freed.notified();
            if self.owed.ids.lock().len() < self.limit {
                break;
            }
            freed.await;
        }
        let message = self.inner.receive().await?;
        match &message {
            JsonRpcMessage::Request(r) => {
                self.owed.ids.lock().insert(r.id.clone());
            }
            JsonRpcMessage::Notification(n) => {
                if let ClientNotification::CancelledNotification(c) = &n.notification
                    && let Some(id) = &c.params.request_id
                {
                    // A cancelled request gets no answer.
                    self.owed.settle(id);
                }
            }
            JsonRpcMessage::Response(_) | JsonRpcMessage::Error(_) => {}
        }
        Some(message)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rmcp::transport::async_rw::AsyncRwTransport;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    fn request(id: u32) -> String {
        format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}\n")
    }

    #[tokio::test]
    async fn notifications_never_count_and_answers_or_cancels_free_a_place() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (server_read, server_write) = tokio::io::split(server);
        let (client_read, mut client_write) = tokio::io::split(client);
        let mut t = Backpressured::new(AsyncRwTransport::<RoleServer, _, _>::new(server_read, server_write), 2);
        // 300 progress notifications: none is owed an answer, so reading never stops.
        for i in 0..300 {
            let n = format!(
                "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":\"t\",\"progress\":{i}}}}}\n"
            );
            client_write.write_all(n.as_bytes()).await.unwrap();
        }
        for _ in 0..300 {
            assert!(matches!(t.receive().await, Some(JsonRpcMessage::Notification(_))));
        }
        assert_eq!(t.owed(), 0);
        // Two requests fill the bound: nothing more is read.
        for id in 1..=2 {
            client_write.write_all(request(id).as_bytes()).await.unwrap();
        }
        assert!(matches!(t.receive().await, Some(JsonRpcMessage::Request(_))));
        assert!(matches!(t.receive().await, Some(JsonRpcMessage::Request(_))));
        client_write
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":1}}\n")
            .await
            .unwrap();
        client_write.write_all(request(3).as_bytes()).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(100), t.receive()).await.is_err());
        assert_eq!(t.owed(), 2);
        // The answer to request 2, once written, frees a place.
        let answer: TxJsonRpcMessage<RoleServer> =
            serde_json::from_str("{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}").unwrap();
        t.send(answer).await.unwrap();
        assert_eq!(t.owed(), 1);
        // The cancel of request 1 settles it: request 1 gets no answer.
        assert!(matches!(t.receive().await, Some(JsonRpcMessage::Notification(_))), "the cancel");
        assert_eq!(t.owed(), 0);
        assert!(matches!(t.receive().await, Some(JsonRpcMessage::Request(_))), "request 3");
        assert_eq!(t.owed(), 1);
        let mut lines = BufReader::new(client_read).lines();
        assert!(lines.next_line().await.unwrap().unwrap().contains("\"id\":2"));
    }
}
