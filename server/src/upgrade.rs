//! The WebSocket upgrade of a room connection, and the socket it gives.
//!
//! The handshake is checked and answered here (RFC 6455 §4.2) rather than by axum's
//! `WebSocketUpgrade`, so that the upgraded connection's TCP socket can be moved to its room's
//! thread (`room_threads.rs`): axum's WebSocket keeps its socket inside hyper's upgraded
//! connection, on the runtime that accepted it. The transport is the same tungstenite, and
//! [`Socket`] speaks axum's message types, so the connection's code is the same on both.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::runtime::Handle;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{self as ts, Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;

use crate::gate::Gate;
use crate::linger::Handoff;
use crate::outlet::{Outlet, SharedStream, WriteBuffer};
use crate::room::ConnId;

/// The GUID of RFC 6455 §1.3, appended to the client's key for the accept key.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// At most this much of what the client sent after its handshake is read on the accepting
/// runtime before its socket moves (a conforming client sends nothing before the answer);
/// the rest stays in the socket.
const MAX_PREFIX_BYTES: usize = 64 * 1024;

/// A valid WebSocket upgrade request: its key and the connection's upgrade.
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// The request is not a WebSocket upgrade that this server takes (RFC 6455 §4.2.1: a GET
/// with `Connection: upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a key).
#[derive(Debug)]
pub struct NotAnUpgrade;

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        (StatusCode::UPGRADE_REQUIRED, [(header::UPGRADE, "websocket"), (header::SEC_WEBSOCKET_VERSION, "13")])
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        let valid = parts.method == Method::GET
            && has_token(headers, header::CONNECTION, "upgrade")
            && has_token(headers, header::UPGRADE, "websocket")
            && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13");
        let key = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| valid).cloned().ok_or(NotAnUpgrade)?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(NotAnUpgrade)?;
        Ok(WsUpgrade { key, on_upgrade })
    }
}

/// Whether header `name` lists `token` (comma-separated, case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Accept` value for a client's key (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    HeaderValue::from_str(&accept).expect("base64 is a valid header value")
}

/// Where and how an upgraded connection is served.
pub struct Serving {
    /// The connection.
    pub conn: ConnId,
    /// The transport's settings.
    pub config: WebSocketConfig,
    /// The thread of the connection's room, if the node has room threads.
    pub thread: Option<Handle>,
    /// The connection's handoff, if its listener gives one.
    pub handoff: Option<Handoff>,
    /// Tracks the connection's task.
    pub tracker: TaskTracker,
}

impl WsUpgrade {
    /// Answers the handshake (101), and once the connection is upgraded, runs `serve` on its
    /// socket, in a task of its own: on its room's thread when `serving` gives one, with the
    /// socket moved there, else on this runtime.
    pub fn serve<F, Fut>(self, serving: Serving, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let WsUpgrade { key, on_upgrade } = self;
        tokio::spawn(async move {
            // The client may be gone before the upgrade completes: then nothing is served.
            let Ok(upgraded) = on_upgrade.await else { return };
            let Serving { conn, config, thread, handoff, tracker } = serving;
            match (thread, handoff) {
                (Some(thread), Some(handoff)) => {
                    let mut upgraded = TokioIo::new(upgraded);
                    let prefix = take_buffered(&mut upgraded);
                    let socket = handoff.arm();
                    // Hyper's side lets go of the socket here: it comes off this runtime's driver.
                    drop(upgraded);
                    let Some(Ok(socket)) = socket.now_or_never() else {
                        tracing::debug!("the upgraded socket could not be handed over");
                        return;
                    };
                    thread.spawn(tracker.track_future(async move {
                        // Registered with the room thread's own I/O driver.
                        let Ok(tcp) = tokio::net::TcpStream::from_std(socket) else { return };
                        // Its room writes to it too, when the connection's task is idle.
                        let (shared, stream) = SharedStream::new(tcp);
                        let io = Wire::new(Io::Moved(shared), Outlet::new(conn, Some(stream)));
                        let ws = WebSocketStream::from_partially_read(io, prefix, Role::Server, Some(config)).await;
                        serve(Socket::new(ws)).await;
                    }));
                }
                _ => {
                    // Inside hyper, the socket is written by the connection's task alone.
                    let io = Wire::new(Io::Upgraded(TokioIo::new(upgraded)), Outlet::detached(conn));
                    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    tracker.spawn(serve(Socket::new(ws)));
                }
            }
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, accept_key(key.as_bytes())),
            ],
        )
            .into_response()
    }
}

/// What the client already sent after its handshake (hyper may have read it with the
/// request, or it is waiting in the socket), without waiting for more.
fn take_buffered(io: &mut TokioIo<Upgraded>) -> Vec<u8> {
    let mut prefix = Vec::new();
    let mut chunk = [0u8; 2048];
    while prefix.len() < MAX_PREFIX_BYTES {
        match io.read(&mut chunk).now_or_never() {
            Some(Ok(n)) if n > 0 => prefix.extend_from_slice(&chunk[..n]),
            // Nothing more now, the end, or an error the socket will give again where it goes.
            _ => break,
        }
    }
    prefix
}

/// A connection's byte stream: still inside hyper's upgrade, or moved to its room's thread.
pub enum Io {
    /// On the runtime that accepted it.
    Upgraded(TokioIo<Upgraded>),
    /// On its room's thread, shared with its outlet, lingering on close as it did on the
    /// listener.
    Moved(SharedStream),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
            Io::Moved(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
            Io::Moved(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Upgraded(io) => Pin::new(io).poll_flush(cx),
            Io::Moved(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
            Io::Moved(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// Binary messages longer than this go out in frames of this size (RFC 6455 §5.4), queued one
/// at a time as the write buffer drains.
pub const FRAGMENT_BYTES: usize = 16 * 1024;

/// A sender waits (`Socket::poll_ready`) while more than this is queued for the kernel.
const WRITE_HIGH_WATER: usize = FRAGMENT_BYTES;

/// A write buffer keeps its capacity between bursts up to this much; a larger one is let go
/// of once it is empty, so that an idle connection holds little.
const WRITE_KEPT_CAPACITY: usize = 4 * 1024;

/// A connection's byte stream with its write buffer in front of it.
///
/// Every frame goes through this one ordered buffer whole, whoever encoded it: the data frames
/// that [`Socket`] frames itself, the control frames of the transport (pings, the pongs it
/// answers while reading, the close), and the frames its room writes itself when the task is
/// idle (`outlet.rs`). The buffer is the connection's [`Outlet`]'s, and every write happens
/// under its lock. The transport's writes are taken whole (into the buffer when the kernel
/// does not take them at once), so its own buffer never holds part of a frame that a frame
/// queued here could cut in two.
pub struct Wire<T = Io> {
    io: T,
    outlet: Arc<Outlet>,
}

impl<T: AsyncWrite + Unpin> Wire<T> {
    fn new(io: T, outlet: Arc<Outlet>) -> Self {
        Wire { io, outlet }
    }

    /// Bytes queued and not yet taken by the kernel.
    fn queued(&self) -> usize {
        self.outlet.lock().buffer.queued()
    }

    /// Queues one whole data frame (a server's frames are not masked).
    fn push_frame(&mut self, kind: Data, is_final: bool, payload: &[u8]) {
        let header = ts::frame::FrameHeader { is_final, opcode: OpCode::Data(kind), ..Default::default() };
        let mut state = self.outlet.lock();
        let out = &mut state.buffer.out;
        out.reserve(header.len(payload.len() as u64) + payload.len());
        // Formatting into a vector cannot fail.
        let _ = header.format(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    /// Writes what is queued, until the kernel takes no more.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.outlet.lock();
        drain(&mut self.io, &mut state.buffer, cx)
    }
}

/// Writes what `buffer` holds to `io`, until the kernel takes no more.
fn drain<T: AsyncWrite + Unpin>(io: &mut T, buffer: &mut WriteBuffer, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    while buffer.written < buffer.out.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &buffer.out[buffer.written..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        buffer.written += n;
    }
    buffer.out.clear();
    buffer.written = 0;
    if buffer.out.capacity() > WRITE_KEPT_CAPACITY {
        buffer.out = Vec::new();
    }
    Poll::Ready(Ok(()))
}

impl<T> Drop for Wire<T> {
    fn drop(&mut self) {
        // The room lets go of the socket before it goes (and lingers on its close).
        self.outlet.detach();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Wire<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

/// The transport's side: its writes are taken whole or not at all.
impl<T: AsyncWrite + Unpin> AsyncWrite for Wire<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let wire = self.get_mut();
        let mut state = wire.outlet.lock();
        let buffer = &mut state.buffer;
        if buffer.queued() > 0 && drain(&mut wire.io, buffer, cx)?.is_pending() {
            // Behind what is queued; past the high water the transport keeps its frame and
            // tries again (a pong it answers while the client does not read, say).
            if buffer.queued() > WRITE_HIGH_WATER {
                return Poll::Pending;
            }
            buffer.out.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        let n = match Pin::new(&mut wire.io).poll_write(cx, buf)? {
            Poll::Ready(n) => n,
            Poll::Pending => 0,
        };
        if n < buf.len() {
            buffer.out.extend_from_slice(&buf[n..]);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let wire = self.get_mut();
        ready!(wire.poll_drain(cx))?;
        Pin::new(&mut wire.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let wire = self.get_mut();
        ready!(wire.poll_drain(cx))?;
        Pin::new(&mut wire.io).poll_shutdown(cx)
    }
}

/// A WebSocket that sends and receives axum's message types.
///
/// Reading, and the control frames (pings, pongs, the close), are tungstenite's. Data frames
/// are framed here, straight into the connection's write buffer ([`Wire`]), and written at the
/// flush that ends a batch: a delivery is a header, a copy of a few dozen bytes and, once a
/// batch, one write, without the transport's layers around each frame.
///
/// A long binary message (a newcomer's whole board) is sent in fragments of
/// [`FRAGMENT_BYTES`], each queued as the buffer drains: a connection that once received a
/// 16 MiB board keeps a buffer of a few KiB, not 16 MiB, and nothing large is moved. Every
/// client reassembles them.
pub struct Socket {
    inner: WebSocketStream<Wire>,
    /// Reading is polled again only once the socket woke the task (or after a frame, as more
    /// may be buffered): a connection's task is woken by its outlet too, and a read that
    /// finds nothing still goes through the codec and the reactor (see `gate.rs`).
    read: Gate,
    /// What is left of a long binary message, sent as continuation frames before anything
    /// else: the socket is ready for the next message only once it is all queued.
    rest: Option<Bytes>,
    /// A control frame was handed to the transport, which holds it until its next flush: it
    /// is flushed into the write buffer before any data frame is queued behind it.
    transport_holds: bool,
    /// A close frame was sent or received: no data frame may follow (RFC 6455 §5.5.1).
    closed: bool,
}

impl Socket {
    fn new(inner: WebSocketStream<Wire>) -> Self {
        Socket { inner, read: Gate::new(), rest: None, transport_holds: false, closed: false }
    }

    fn wire(&mut self) -> &mut Wire {
        self.inner.get_mut()
    }

    /// The connection's outlet: its room hands it frames there.
    pub fn outlet(&self) -> Arc<Outlet> {
        self.inner.get_ref().outlet.clone()
    }

    /// Waits until the write buffer is at most at its high water.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        let wire = self.wire();
        if wire.queued() > WRITE_HIGH_WATER && wire.poll_drain(cx).map_err(axum::Error::new)?.is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// Flushes the control frames the transport holds into the write buffer, in their order.
    fn poll_transport(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        if self.transport_holds {
            ready!(self.inner.poll_flush_unpin(cx)).map_err(axum::Error::new)?;
            self.transport_holds = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Queues the rest of a long message, a fragment each time the buffer has room.
    fn poll_fragments(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        while let Some(rest) = self.rest.take() {
            if self.poll_room(cx)?.is_pending() {
                self.rest = Some(rest);
                return Poll::Pending;
            }
            let last = rest.len() <= FRAGMENT_BYTES;
            let (frame, rest) =
                if last { (rest, None) } else { (rest.slice(..FRAGMENT_BYTES), Some(rest.slice(FRAGMENT_BYTES..))) };
            self.rest = rest;
            self.wire().push_frame(Data::Continue, last, &frame);
        }
        Poll::Ready(Ok(()))
    }
}

impl Stream for Socket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Socket { inner, read, closed, .. } = self.get_mut();
        loop {
            match ready!(read.poll(cx, |cx| inner.poll_next_unpin(cx))) {
                Some(Ok(message)) => {
                    if let Some(message) = from_transport(message) {
                        // The transport answers a close with its own: nothing may follow it,
                        // from the room either.
                        if matches!(message, Message::Close(_)) {
                            *closed = true;
                            inner.get_ref().outlet.close();
                        }
                        return Poll::Ready(Some(Ok(message)));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(axum::Error::new(e)))),
                None => return Poll::Ready(None),
            }
        }
    }
}

impl Sink<Message> for Socket {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.poll_transport(cx))?;
        ready!(self.poll_fragments(cx))?;
        self.poll_room(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        match item {
            Message::Binary(_) | Message::Text(_) if self.closed => {
                Err(axum::Error::new(WsError::Protocol(ProtocolError::SendAfterClosing)))
            }
            Message::Binary(data) if data.len() > FRAGMENT_BYTES => {
                // The first fragment now; the rest as the buffer drains (`poll_ready`).
                self.wire().push_frame(Data::Binary, false, &data[..FRAGMENT_BYTES]);
                self.rest = Some(data.slice(FRAGMENT_BYTES..));
                Ok(())
            }
            Message::Binary(data) => {
                self.wire().push_frame(Data::Binary, true, &data);
                Ok(())
            }
            Message::Text(text) => {
                self.wire().push_frame(Data::Text, true, text.as_bytes());
                Ok(())
            }
            control => {
                if matches!(control, Message::Close(_)) {
                    // Nothing may follow a close frame, from the room either.
                    self.closed = true;
                    self.wire().outlet.close();
                }
                self.transport_holds = true;
                self.inner.start_send_unpin(to_transport(control)).map_err(axum::Error::new)
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.poll_transport(cx))?;
        ready!(self.poll_fragments(cx))?;
        Pin::new(self.wire()).poll_flush(cx).map_err(axum::Error::new)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A close frame may not cut a message in two.
        ready!(self.poll_fragments(cx))?;
        self.closed = true;
        self.wire().outlet.close();
        self.inner.poll_close_unpin(cx).map_err(axum::Error::new)
    }
}

/// Text the transport has checked, as axum's type (a check again, never a copy).
fn text_from_transport(text: ts::frame::Utf8Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(Bytes::from(text)).unwrap_or_default()
}

/// Text axum has checked, as the transport's type (a check again, never a copy).
fn text_to_transport(text: Utf8Bytes) -> ts::frame::Utf8Bytes {
    ts::frame::Utf8Bytes::try_from(Bytes::from(text)).unwrap_or_default()
}

fn from_transport(message: ts::Message) -> Option<Message> {
    Some(match message {
        ts::Message::Text(text) => Message::Text(text_from_transport(text)),
        ts::Message::Binary(data) => Message::Binary(data),
        ts::Message::Ping(data) => Message::Ping(data),
        ts::Message::Pong(data) => Message::Pong(data),
        ts::Message::Close(frame) => {
            Message::Close(frame.map(|f| CloseFrame { code: f.code.into(), reason: text_from_transport(f.reason) }))
        }
        // Raw frames are only given when asked for; none are here.
        ts::Message::Frame(_) => return None,
    })
}

fn to_transport(message: Message) -> ts::Message {
    match message {
        Message::Text(text) => ts::Message::Text(text_to_transport(text)),
        Message::Binary(data) => ts::Message::Binary(data),
        Message::Ping(data) => ts::Message::Ping(data),
        Message::Pong(data) => ts::Message::Pong(data),
        Message::Close(frame) => ts::Message::Close(
            frame.map(|f| ts::CloseFrame { code: f.code.into(), reason: text_to_transport(f.reason) }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outlet::Waiting;

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // The example of RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn messages_cross_both_ways_unchanged() {
        let messages = [
            Message::Text("{\"type\":\"hello\"} ünïcødé".into()),
            Message::Binary(Bytes::from_static(&[0, 1, 2, 255])),
            Message::Ping(Bytes::from_static(b"p")),
            Message::Pong(Bytes::new()),
            Message::Close(Some(CloseFrame { code: 4508, reason: "too slow".into() })),
            Message::Close(None),
        ];
        for message in messages {
            let back = from_transport(to_transport(message.clone()));
            assert_eq!(back, Some(message));
        }
    }

    /// A server-side [`Socket`] on a loopback connection, and the client's raw end.
    async fn socket_pair() -> (Socket, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (shared, stream) = SharedStream::new(server);
        let io = Wire::new(Io::Moved(shared), Outlet::new(ConnId(1), Some(stream)));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(WebSocketConfig::default())).await;
        (Socket::new(ws), client)
    }

    #[tokio::test]
    async fn a_long_binary_message_goes_out_in_fragments_and_nothing_cuts_in() {
        let (mut socket, mut client) = socket_pair().await;
        let board: Bytes = (0..FRAGMENT_BYTES * 5 / 2).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        let sending = async {
            socket.send(Message::Binary(board.clone())).await.unwrap();
            socket.send(Message::Text("after".into())).await.unwrap();
        };
        // Frames as they are on the wire (a server's are unmasked): opcode, fin, payload.
        let reading = async {
            let mut wire = Vec::new();
            let mut frames = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let mut cursor = std::io::Cursor::new(&wire[..]);
                if let Ok(Some((header, len))) = ts::frame::FrameHeader::parse(&mut cursor) {
                    let start = cursor.position() as usize;
                    if wire.len() >= start + len as usize {
                        frames.push((header.opcode, header.is_final, wire[start..start + len as usize].to_vec()));
                        wire.drain(..start + len as usize);
                        if frames
                            .last()
                            .is_some_and(|f| f.0 == ts::frame::coding::OpCode::Data(ts::frame::coding::Data::Text))
                        {
                            return frames;
                        }
                        continue;
                    }
                }
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection closed early");
                wire.extend_from_slice(&chunk[..n]);
            }
        };
        let ((), frames) = tokio::join!(sending, reading);
        use ts::frame::coding::{Data, OpCode};
        let kinds: Vec<(OpCode, bool, usize)> = frames.iter().map(|(op, fin, p)| (*op, *fin, p.len())).collect();
        assert_eq!(
            kinds,
            [
                (OpCode::Data(Data::Binary), false, FRAGMENT_BYTES),
                (OpCode::Data(Data::Continue), false, FRAGMENT_BYTES),
                (OpCode::Data(Data::Continue), true, FRAGMENT_BYTES / 2),
                (OpCode::Data(Data::Text), true, 5),
            ]
        );
        let whole: Vec<u8> = frames[..3].iter().flat_map(|(_, _, p)| p.clone()).collect();
        assert_eq!(whole, board, "the fragments are the message, in order");
    }

    #[tokio::test]
    async fn a_client_reads_a_fragmented_message_whole() {
        let (mut socket, client) = socket_pair().await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let board: Bytes = (0..FRAGMENT_BYTES * 3 + 1).map(|i| (i % 13) as u8).collect::<Vec<_>>().into();
        let short = Bytes::from_static(b"short");
        let sending = async {
            socket.send(Message::Binary(board.clone())).await.unwrap();
            socket.send(Message::Binary(short.clone())).await.unwrap();
        };
        let reading = async {
            let first = client.next().await.unwrap().unwrap();
            let second = client.next().await.unwrap().unwrap();
            (first, second)
        };
        let ((), (first, second)) = tokio::join!(sending, reading);
        assert_eq!(first, ts::Message::Binary(board));
        assert_eq!(second, ts::Message::Binary(short));
    }

    #[tokio::test]
    async fn pongs_and_data_never_cut_into_each_other_while_the_client_does_not_read() {
        let (mut socket, client) = socket_pair().await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        // Enough to fill the kernel's buffers on both sides, so that frames wait in the
        // server's write buffer, some of them half written, while pongs join them.
        let messages: Vec<Bytes> =
            (0..1000u32).map(|i| Bytes::from(vec![(i % 251) as u8; 8 * 1024 + i as usize])).collect();
        let sending = async {
            for message in &messages {
                // The client's pings, read as they come: each is answered with a pong.
                while let Some(Some(Ok(_))) = socket.next().now_or_never() {}
                socket.send(Message::Binary(message.clone())).await.unwrap();
            }
            socket.send(Message::Close(None)).await.unwrap();
        };
        let reading = async {
            for _ in 0..20 {
                client.send(ts::Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let (mut data, mut pongs) = (Vec::new(), 0);
            while let Some(message) = client.next().await {
                match message.expect("every frame the client reads is well formed") {
                    ts::Message::Binary(b) => data.push(b),
                    ts::Message::Pong(p) => {
                        assert_eq!(p, "are you there");
                        pongs += 1;
                    }
                    ts::Message::Close(_) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            (data, pongs)
        };
        let ((), (data, pongs)) = tokio::join!(sending, reading);
        assert_eq!(data, messages, "every message, whole and in order");
        assert!(pongs > 0, "the pings were answered");
    }

    #[tokio::test]
    async fn no_data_frame_follows_a_close() {
        let (mut socket, client) = socket_pair().await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        socket.send(Message::Binary(Bytes::from_static(b"before"))).await.unwrap();
        socket.send(Message::Close(Some(CloseFrame { code: 4400, reason: "bye".into() }))).await.unwrap();
        assert!(socket.send(Message::Binary(Bytes::from_static(b"after"))).await.is_err());
        assert!(socket.send(Message::Text("after".into())).await.is_err());
        assert_eq!(client.next().await.unwrap().unwrap(), ts::Message::Binary(Bytes::from_static(b"before")));
        assert!(matches!(client.next().await.unwrap().unwrap(), ts::Message::Close(Some(f)) if f.reason == "bye"));
    }

    /// A socket whose kernel takes at most `per_write` bytes a write, and every other write
    /// nothing (it would block).
    struct Trickle {
        taken: Vec<u8>,
        per_write: usize,
        blocked: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.blocked = !self.blocked;
            if self.blocked {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.per_write);
            self.taken.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The frames in `wire`, as (opcode, fin, payload); panics on a malformed one.
    fn frames_of(mut wire: &[u8]) -> Vec<(OpCode, bool, Vec<u8>)> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let mut cursor = std::io::Cursor::new(wire);
            let (header, len) = ts::frame::FrameHeader::parse(&mut cursor).unwrap().expect("a whole header");
            assert!(header.mask.is_none(), "a server's frames are not masked");
            let start = cursor.position() as usize;
            let end = start + len as usize;
            assert!(end <= wire.len(), "a whole payload");
            frames.push((header.opcode, header.is_final, wire[start..end].to_vec()));
            wire = &wire[end..];
        }
        frames
    }

    /// A frame for connection 1, as its room sends it.
    fn from_room(payload: Vec<u8>) -> Arc<crate::rooms::Outbound> {
        Arc::new(crate::rooms::Outbound {
            origin: None,
            audience: crate::room::meeting::Audience::one(ConnId(1)),
            message: Message::Binary(payload.into()),
            published: std::time::Instant::now(),
        })
    }

    /// Polls the outlet as the connection's task does when it waits: ready when something
    /// waits for the task, else the task is idle.
    fn waits_for_task(outlet: &Outlet) -> bool {
        let waker = futures_util::task::noop_waker();
        outlet.poll_waiting(&mut Context::from_waker(&waker)).is_ready()
    }

    /// The room writes to an idle connection's socket itself, and the task's frames, the
    /// room's frames that waited for it and the rest of a write the kernel did not take whole
    /// all reach the client whole and in the order they were sent, even while the client stops
    /// reading for a while.
    #[tokio::test]
    async fn the_rooms_writes_and_the_tasks_reach_the_client_whole_and_in_order() {
        let (mut socket, mut client) = socket_pair().await;
        let outlet = socket.outlet();
        let metrics = crate::metrics::Metrics::new();
        // Every payload, in the order the client must get them.
        let mut sent = Vec::new();
        let payload = |tag: u8, len: usize, sent: &mut Vec<Vec<u8>>| {
            let p: Vec<u8> = std::iter::once(tag).chain((0..len - 1).map(|i| (i % 251) as u8)).collect();
            sent.push(p.clone());
            p
        };

        // Idle: written at once, with no task involved.
        assert!(!waits_for_task(&outlet));
        outlet.deliver(&[from_room(payload(1, 10, &mut sent)), from_room(payload(2, 300, &mut sent))], 64, &metrics);
        assert!(!waits_for_task(&outlet), "the kernel took it all: nothing for the task");

        // Busy: the task writes its own frame; the room's waits behind it.
        outlet.busy();
        let rooms = payload(3, 20, &mut Vec::new());
        outlet.deliver(&[from_room(rooms.clone())], 64, &metrics);
        socket.send(Message::Binary(payload(4, 40, &mut sent).into())).await.unwrap();
        sent.push(rooms);
        assert!(waits_for_task(&outlet));
        let Waiting::Frame(waiting) = outlet.next() else { panic!("the room's frame waits") };
        socket.send(waiting.message.clone()).await.unwrap();

        // The client stops reading: the room's writes fill the kernel's buffers, the rest is
        // kept for the task, and what the room sends next waits behind it.
        assert!(!waits_for_task(&outlet));
        let mut rounds = 0;
        while socket.wire().queued() == 0 {
            outlet.deliver(&[from_room(payload(5, FRAGMENT_BYTES, &mut sent))], 1 << 20, &metrics);
            rounds += 1;
            assert!(rounds < 10_000, "the kernel never pushed back");
        }
        // The client reads what the kernel holds, so that the socket is writable again;
        // before the task got to what is left, the room's next frame goes behind it, not
        // into the room just made.
        let mut wire = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let quiet = std::time::Duration::from_millis(50);
        while let Ok(n) = tokio::time::timeout(quiet, client.read(&mut chunk)).await {
            wire.extend_from_slice(&chunk[..n.unwrap()]);
        }
        outlet.deliver(&[from_room(payload(6, 7, &mut sent))], 1 << 20, &metrics);
        assert!(waits_for_task(&outlet));
        let writing = async {
            outlet.busy();
            socket.flush().await.unwrap();
            while let Waiting::Frame(frame) = outlet.next() {
                socket.send(frame.message.clone()).await.unwrap();
            }
        };
        let expected = sent.len();
        let reading = async {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection closed early");
                wire.extend_from_slice(&chunk[..n]);
                // Whole frames only, and every header parses where the last frame ended.
                let mut cursor = &wire[..];
                let mut frames = 0;
                while let Ok(Some((header, len))) = ts::frame::FrameHeader::parse(&mut std::io::Cursor::new(cursor)) {
                    let start = header.len(len);
                    if cursor.len() < start + len as usize {
                        break;
                    }
                    frames += 1;
                    cursor = &cursor[start + len as usize..];
                }
                if frames == expected && cursor.is_empty() {
                    return frames_of(&wire);
                }
            }
        };
        // A frame cut into or put out of order leaves the client waiting for bytes that never
        // come: that fails here rather than hangs.
        let ((), frames) =
            tokio::time::timeout(std::time::Duration::from_secs(10), async { tokio::join!(writing, reading) })
                .await
                .expect("the client got whole frames, all of them");
        let payloads: Vec<Vec<u8>> = frames
            .into_iter()
            .map(|(op, fin, p)| {
                assert_eq!((op, fin), (OpCode::Data(Data::Binary), true));
                p
            })
            .collect();
        assert_eq!(payloads.len(), sent.len());
        assert!(payloads == sent, "every frame whole, in the order it was sent");
        assert!(rounds > 1);
    }

    #[tokio::test]
    async fn a_transport_write_goes_behind_a_half_written_frame_never_into_it() {
        let mut wire =
            Wire::new(Trickle { taken: Vec::new(), per_write: 7, blocked: false }, Outlet::detached(ConnId(1)));
        let first = vec![1u8; 100];
        let second = vec![2u8; 300];
        wire.push_frame(Data::Binary, true, &first);
        wire.push_frame(Data::Binary, true, &second);
        // Part of the first frame goes out, then the transport writes a pong (whole frames).
        let pong = {
            let header = ts::frame::FrameHeader {
                opcode: OpCode::Control(ts::frame::coding::Control::Pong),
                ..Default::default()
            };
            let mut pong = Vec::new();
            header.format(1, &mut pong).unwrap();
            pong.push(b'p');
            pong
        };
        std::future::poll_fn(|cx| {
            let _ = wire.poll_drain(cx);
            let _ = wire.poll_drain(cx);
            Poll::Ready(())
        })
        .await;
        assert!(wire.io.taken.len() < first.len(), "the first frame is half written");
        let accepted = std::future::poll_fn(|cx| Pin::new(&mut wire).poll_write(cx, &pong)).await.unwrap();
        assert_eq!(accepted, pong.len(), "the transport's write is taken whole");
        wire.push_frame(Data::Text, true, b"third");
        std::future::poll_fn(|cx| Pin::new(&mut wire).poll_flush(cx)).await.unwrap();
        assert_eq!(wire.queued(), 0);
        let frames = frames_of(&wire.io.taken);
        assert_eq!(
            frames,
            [
                (OpCode::Data(Data::Binary), true, first),
                (OpCode::Data(Data::Binary), true, second),
                (OpCode::Control(ts::frame::coding::Control::Pong), true, b"p".to_vec()),
                (OpCode::Data(Data::Text), true, b"third".to_vec()),
            ]
        );
    }

    #[test]
    fn headers_list_tokens() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, header::UPGRADE, "websocket"));
    }
}
