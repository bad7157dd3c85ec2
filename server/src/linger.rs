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
//!
//! A connection upgraded to a WebSocket may instead be handed to its room's thread
//! (`room_threads.rs`): its [`Handoff`] is armed, and when hyper drops its side the socket
//! goes there, whole, rather than being drained. It lingers on its close there.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::limits;

/// A TCP listener whose connections linger on close (see the module's documentation).
pub struct LingeringListener {
    inner: TcpListener,
    /// Whether each connection gets a [`Handoff`].
    handoff: bool,
}

impl LingeringListener {
    /// Wraps a bound listener; with `handoff`, its connections can be handed to another
    /// runtime once upgraded.
    pub fn new(inner: TcpListener, handoff: bool) -> Self {
        LingeringListener { inner, handoff }
    }
}

/// The client's address and its connection's handoff: the connect info of every request.
#[derive(Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its connection's handoff, if its listener gives one.
    pub handoff: Option<Handoff>,
}

impl Peer {
    /// A peer at `addr` whose connection cannot be handed over.
    pub fn at(addr: SocketAddr) -> Self {
        Peer { addr, handoff: None }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LingeringListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, LingeringListener>) -> Self {
        Peer { addr: *stream.remote_addr(), handoff: stream.io().handoff().cloned() }
    }
}

impl axum::serve::Listener for LingeringListener {
    type Io = Lingering;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Frames are small and already coalesced per connection (fed in a batch,
                    // written together up to `WS_WRITE_BUFFER_BYTES`, flushed once): Nagle's
                    // algorithm would only hold them back.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    let handoff = self.handoff.then(Handoff::default);
                    return (Lingering { stream: Some(stream), handoff }, addr);
                }
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

/// One accepted connection; drained when dropped, or handed over if its [`Handoff`] is armed.
pub struct Lingering {
    stream: Option<TcpStream>,
    handoff: Option<Handoff>,
}

/// Where a connection's socket goes when its [`Lingering`] is dropped, once armed.
#[derive(Clone, Default)]
pub struct Handoff(Arc<Mutex<Option<oneshot::Sender<std::net::TcpStream>>>>);

impl Handoff {
    /// The socket will be sent on the returned receiver when its [`Lingering`] is dropped,
    /// taken off this runtime's I/O driver, rather than drained.
    pub fn arm(&self) -> oneshot::Receiver<std::net::TcpStream> {
        let (to, from) = oneshot::channel();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(to);
        from
    }

    fn take(&self) -> Option<oneshot::Sender<std::net::TcpStream>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Lingering {
    /// A connection that lingers on its close, on the current runtime, with no handoff.
    pub fn new(stream: TcpStream) -> Self {
        Lingering { stream: Some(stream), handoff: None }
    }

    /// Its handoff, if its listener gives one.
    pub fn handoff(&self) -> Option<&Handoff> {
        self.handoff.as_ref()
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
        if let Some(to) = self.handoff.as_ref().and_then(Handoff::take) {
            // Off this runtime's driver, whole; should the receiver be gone, the socket closes.
            if let Ok(stream) = stream.into_std() {
                let _ = to.send(stream);
            }
            return;
        }
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
