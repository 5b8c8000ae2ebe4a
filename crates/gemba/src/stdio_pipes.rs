//! stdin and stdout as the MCP stream of `gemba serve --stdio` (and of `gemba proxy`). When
//! they are pipes (how MCP clients start servers) they are read and written through the runtime's own event loop, so
//! a message costs a system call on a runtime thread; otherwise (a terminal, a file, a socket)
//! through tokio's blocking pool, where every read and every write is a hop to another thread
//! and back (two wake-ups each: with both gone, a `list_sheets` call at 2,000 calls/s costs
//! ~150 µs of CPU instead of ~185 µs; docs/traces.md#cost).

use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// What the transport reads requests from.
pub type McpReader = Pin<Box<dyn AsyncRead + Send>>;
/// What the transport writes answers to.
pub type McpWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// stdin as an async pipe when it is one, else tokio's stdin (read through the blocking pool).
pub fn mcp_reader() -> McpReader {
    #[cfg(unix)]
    if let Some(pipe) = stdin_pipe() {
        return Box::pin(pipe);
    }
    Box::pin(tokio::io::stdin())
}

/// The private stdout (see `backpressure::private_stdout`) as an async pipe when it is one,
/// else as a file written through the blocking pool.
#[cfg(unix)]
pub fn mcp_writer(out: tokio::fs::File) -> McpWriter {
    let file = match out.try_into_std() {
        Ok(file) => file,
        Err(out) => return Box::pin(out),
    };
    match pipe_sender(file) {
        Ok(pipe) => Box::pin(pipe),
        Err(file) => Box::pin(tokio::fs::File::from_std(file)),
    }
}

/// stdin as an async pipe, or `None` when it is not a pipe (or cannot be made non-blocking).
#[cfg(unix)]
pub fn stdin_pipe() -> Option<tokio::net::unix::pipe::Receiver> {
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::FileTypeExt;
    let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let file = std::fs::File::from(fd);
    if !file.metadata().ok()?.file_type().is_fifo() {
        return None;
    }
    match tokio::net::unix::pipe::Receiver::from_file(file) {
        Ok(pipe) => Some(pipe),
        Err(e) => {
            tracing::debug!("stdin as an async pipe: {e}; reading it through the blocking pool");
            None
        }
    }
}

/// `out` as an async pipe, or `out` back when it is not a pipe.
#[cfg(unix)]
pub fn pipe_sender(out: std::fs::File) -> Result<tokio::net::unix::pipe::Sender, std::fs::File> {
    use std::os::unix::fs::FileTypeExt;
    if !out.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
        return Err(out);
    }
    let Ok(dup) = out.try_clone() else { return Err(out) };
    match tokio::net::unix::pipe::Sender::from_file(dup) {
        Ok(pipe) => Ok(pipe),
        Err(e) => {
            tracing::debug!("stdout as an async pipe: {e}; writing it through the blocking pool");
            Err(out)
        }
    }
}
