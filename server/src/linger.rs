//! A listener whose connections close gracefully: lingering close.
//!
//! When a server drops a TCP connection while the client is still sending (a client in the
//! middle of a 3 MiB frame that the server refused after its header), the kernel answers the
//! unread bytes with a reset, and a reset makes the client discard what it had not read yet:
//! the close frame with 1009 that explains the refusal arrives as 1006 instead. Web servers
//! avoid this with a "lingering close", and so does this listener: when a connection is
//! dropped, its socket is handed to a small task that shuts the sending side (FIN, after
//! everything written), then reads and discards what the client still sends until the client
//! closes too, or [`limits::DRAIN_ON_CLOSE`] passes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::limits;

/// A TCP listener whose connections linger on close (see the module's documentation).
pub struct LingeringListener {
    inner: TcpListener,
}

impl LingeringListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener) -> Self {
        LingeringListener { inner }
    }
}

impl axum::serve::Listener for LingeringListener {
    type Io = Lingering;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => return (Lingering { stream: Some(stream) }, addr),
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin, as
                    // axum's own TCP listener does.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// One accepted connection; drained when dropped.
pub struct Lingering {
    stream: Option<TcpStream>,
}

impl Lingering {
    /// Sets `TCP_NODELAY` on the socket.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.stream.as_ref().map_or(Ok(()), |s| s.set_nodelay(nodelay))
    }

    fn stream(&mut self) -> &mut TcpStream {
        self.stream.as_mut().expect("the stream is only taken on drop")
    }
}

impl AsyncRead for Lingering {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_shutdown(cx)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else { return };
        // Outside a runtime (the process is going), the socket simply closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(stream));
        }
    }
}

/// Sends FIN after what was written, then reads and discards until the client closes.
async fn drain(mut stream: TcpStream) {
    let _ = tokio::time::timeout(limits::DRAIN_ON_CLOSE, async {
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
