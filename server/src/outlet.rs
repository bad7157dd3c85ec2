//! A connection's outlet: the one ordered way out to its client, shared by the connection's
//! task and its room.
//!
//! It holds the connection's write buffer (whole frames, in order, that the kernel has not
//! taken yet: see `Wire` in `upgrade.rs`) and the frames its room sent that wait for the task.
//! When the room sends frames to a connection whose task is idle (waiting for something to
//! happen) and whose write buffer is empty, it writes them to the socket itself, from the
//! step that produced them, in one vectored write ([`Outlet::deliver`]): a delivery is a
//! write, and the connection's task is not woken at all. Otherwise the frames wait in the
//! outlet's queue, in order, and the task is woken to write them: while it handles what its
//! client sent (its replies go first, as they always did), while it writes, when the kernel
//! did not take everything (the rest is kept in the write buffer, and the task writes it
//! within the write timeout), for a close frame, and for a long message, which goes in
//! fragments.
//!
//! Every write, the room's and the task's, happens under the outlet's lock and leaves whole
//! frames behind it: nothing ever cuts into a frame, and the order in which the room sent
//! frames is the order in which the client gets them. A connection that falls more than the
//! queue's bound (`--outbound-queue`) behind is closed as too slow.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::ws::Message;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::linger::Lingering;
use crate::metrics::Metrics;
use crate::room::ConnId;
use crate::rooms::Outbound;
use crate::upgrade::FRAGMENT_BYTES;

/// See the module's documentation.
pub struct Outlet {
    conn: ConnId,
    state: Mutex<State>,
    /// The connection's task, woken when something waits for it.
    task: AtomicWaker,
}

/// The bytes on their way to the kernel: whole frames, the first perhaps partly written.
#[derive(Default)]
pub(crate) struct WriteBuffer {
    pub(crate) out: Vec<u8>,
    /// How much of `out` the kernel has taken.
    pub(crate) written: usize,
}

impl WriteBuffer {
    /// Bytes queued and not yet taken by the kernel.
    pub(crate) fn queued(&self) -> usize {
        self.out.len() - self.written
    }
}

pub(crate) struct State {
    pub(crate) buffer: WriteBuffer,
    /// Frames the room sent that wait for the task.
    queue: VecDeque<Arc<Outbound>>,
    /// More than the queue's bound waited: the connection is closed as too slow.
    lagged: bool,
    /// The task waits for something to happen: the room may write to the socket itself.
    idle: bool,
    /// The connection is closing: nothing more is written for the room.
    closed: bool,
    /// The socket, for the room's writes; none when the room cannot write to it itself.
    stream: Option<Arc<TcpStream>>,
    /// When the room last wrote a frame to the socket itself.
    last_sent: Option<Instant>,
}

/// What the task takes from its outlet.
pub enum Waiting {
    /// The next frame the room sent.
    Frame(Arc<Outbound>),
    /// The connection fell too far behind.
    Lagged,
    /// Nothing.
    Empty,
}

/// The frames of one step that a connection wants, at most this many in one vectored write.
const DIRECT_FRAMES: usize = 8;

impl Outlet {
    /// The outlet of connection `conn`, whose room writes to `stream` itself when it may.
    pub fn new(conn: ConnId, stream: Option<Arc<TcpStream>>) -> Arc<Self> {
        Arc::new(Outlet {
            conn,
            state: Mutex::new(State {
                buffer: WriteBuffer::default(),
                queue: VecDeque::new(),
                lagged: false,
                idle: false,
                closed: false,
                stream,
                last_sent: None,
            }),
            task: AtomicWaker::new(),
        })
    }

    /// An outlet whose room never writes itself: everything goes through the task.
    pub fn detached(conn: ConnId) -> Arc<Self> {
        Outlet::new(conn, None)
    }

    /// The connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under this lock leaves the state whole (a frame is queued or it is not).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the connection wants `outbound`: it is in its audience and did not cause it.
    fn wants(&self, outbound: &Outbound) -> bool {
        outbound.origin != Some(self.conn) && outbound.audience.contains(self.conn)
    }

    /// Hands the connection what it wants of `frames` (one step's, in order): written to the
    /// socket at once when the task is idle and nothing is ahead of them, else queued for the
    /// task, at most `bound` frames.
    pub fn deliver(&self, frames: &[Arc<Outbound>], bound: usize, metrics: &Metrics) {
        let mut wanted = frames.iter().filter(|f| self.wants(f)).peekable();
        if wanted.peek().is_none() {
            return;
        }
        let mut state = self.lock();
        if state.closed {
            return;
        }
        if state.idle && state.stream.is_some() && state.queue.is_empty() && state.buffer.queued() == 0 {
            let mut direct = [None; DIRECT_FRAMES];
            let mut count = 0;
            let fits = wanted.clone().all(|frame| match (direct.get_mut(count), Whole::of(frame)) {
                (Some(slot), Some(whole)) => {
                    *slot = Some(whole);
                    count += 1;
                    true
                }
                _ => false,
            });
            if fits {
                let woken = write_now(&mut state, &direct[..count], metrics);
                drop(state);
                if woken {
                    self.task.wake();
                }
                return;
            }
        }
        for frame in wanted {
            if state.queue.len() >= bound {
                state.lagged = true;
                break;
            }
            state.queue.push_back(frame.clone());
        }
        state.idle = false;
        drop(state);
        self.task.wake();
    }

    /// Ready when something waits for the task: frames, bytes the kernel did not take, or a
    /// lag. Otherwise the task is idle until woken, and the room may write itself.
    pub fn poll_waiting(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.task.register(cx.waker());
        let mut state = self.lock();
        if state.lagged || !state.queue.is_empty() || state.buffer.queued() > 0 {
            state.idle = false;
            Poll::Ready(())
        } else {
            state.idle = !state.closed;
            Poll::Pending
        }
    }

    /// The task is busy (it handles its client's frame, writes, keeps the connection alive):
    /// what the room sends waits for it, behind what it writes.
    pub fn busy(&self) {
        self.lock().idle = false;
    }

    /// The next frame for the task.
    pub fn next(&self) -> Waiting {
        let mut state = self.lock();
        if state.lagged {
            return Waiting::Lagged;
        }
        match state.queue.pop_front() {
            Some(frame) => Waiting::Frame(frame),
            None => Waiting::Empty,
        }
    }

    /// When the room last wrote a frame to the socket itself.
    pub fn last_sent(&self) -> Option<Instant> {
        self.lock().last_sent
    }

    /// The connection closes: the room writes nothing more, and what waits is dropped.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.idle = false;
        state.queue = VecDeque::new();
        state.stream = None;
    }

    /// The socket is going: the room lets go of it.
    pub(crate) fn detach(&self) {
        let mut state = self.lock();
        state.stream = None;
        state.idle = false;
    }
}

/// A frame the room may write itself: one whole data frame, at most a fragment long.
#[derive(Clone, Copy)]
struct Whole<'a> {
    frame: &'a Outbound,
    kind: Data,
    payload: &'a [u8],
}

impl<'a> Whole<'a> {
    fn of(frame: &'a Outbound) -> Option<Self> {
        let (kind, payload) = match &frame.message {
            Message::Binary(data) => (Data::Binary, &data[..]),
            Message::Text(text) => (Data::Text, text.as_bytes()),
            _ => return None,
        };
        (payload.len() <= FRAGMENT_BYTES).then_some(Whole { frame, kind, payload })
    }
}

/// The longest header of a frame the room writes itself: a 16-bit length.
const HEADER_BYTES: usize = 4;
const _: () = assert!(FRAGMENT_BYTES <= u16::MAX as usize);

/// Writes `frames` to the socket in one vectored write; what the kernel does not take stays in
/// the write buffer. Returns whether the task must be woken to write the rest.
fn write_now(state: &mut State, frames: &[Option<Whole<'_>>], metrics: &Metrics) -> bool {
    let State { buffer, stream, last_sent, .. } = state;
    let Some(stream) = stream.as_deref() else { return false };
    let mut headers = [[0u8; HEADER_BYTES]; DIRECT_FRAMES];
    let mut lens = [0; DIRECT_FRAMES];
    for ((whole, head), len) in frames.iter().flatten().zip(&mut headers).zip(&mut lens) {
        // A server's frames are not masked.
        let header = FrameHeader { is_final: true, opcode: OpCode::Data(whole.kind), ..Default::default() };
        let length = whole.payload.len() as u64;
        // The header fits (a payload of at most a fragment): formatting cannot fail.
        let _ = header.format(length, &mut &mut head[..]);
        *len = header.len(length);
    }
    let mut slices = [IoSlice::new(&[]); 2 * DIRECT_FRAMES];
    for (i, whole) in frames.iter().flatten().enumerate() {
        slices[2 * i] = IoSlice::new(&headers[i][..lens[i]]);
        slices[2 * i + 1] = IoSlice::new(whole.payload);
    }
    let slices = &slices[..2 * frames.len()];
    let total: usize = slices.iter().map(|s| s.len()).sum();
    // An error other than a full buffer is the task's to find: it writes what is left.
    let taken = stream.try_write_vectored(slices).unwrap_or(0);
    let now = Instant::now();
    let mut skip = taken;
    for slice in slices {
        let len = slice.len();
        if skip >= len {
            skip -= len;
            continue;
        }
        buffer.out.extend_from_slice(&slice[skip..]);
        skip = 0;
    }
    for whole in frames.iter().flatten() {
        metrics.fanned_out(now.saturating_duration_since(whole.frame.published));
    }
    let payloads = frames.iter().flatten().map(|whole| whole.payload.len() as u64).sum();
    metrics.sent_batch(frames.len() as u64, payloads);
    *last_sent = Some(now);
    taken < total
}

/// A socket on its room's thread, which its room may also write to ([`Outlet::deliver`]).
/// It lingers on its close when the last of them lets go.
pub struct SharedStream {
    stream: Option<Arc<TcpStream>>,
}

impl SharedStream {
    /// Shares `stream`: the clone it returns is for the outlet.
    pub fn new(stream: TcpStream) -> (Self, Arc<TcpStream>) {
        let stream = Arc::new(stream);
        (SharedStream { stream: Some(stream.clone()) }, stream)
    }

    fn stream(&self) -> &TcpStream {
        self.stream.as_deref().expect("the stream is only taken on drop")
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let stream = self.stream();
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let stream = self.stream();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The FIN is sent by the lingering close, when the socket is dropped.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for SharedStream {
    fn drop(&mut self) {
        // The outlet let go first (`Outlet::detach`, when the `Wire` goes): the socket is
        // this one's alone, and lingers on its close as every connection's does.
        if let Some(Ok(stream)) = self.stream.take().map(Arc::try_unwrap) {
            drop(Lingering::new(stream));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use axum::extract::ws::Utf8Bytes;

    use super::*;
    use crate::room::meeting::Audience;

    fn frame(origin: Option<ConnId>, audience: &[ConnId], text: &'static str) -> Arc<Outbound> {
        Arc::new(Outbound {
            origin,
            audience: Audience::of(audience.to_vec()),
            message: Message::Text(Utf8Bytes::from_static(text)),
            published: Instant::now(),
        })
    }

    fn texts(outlet: &Outlet) -> Vec<String> {
        let mut texts = Vec::new();
        while let Waiting::Frame(frame) = outlet.next() {
            texts.push(frame.message.to_text().unwrap().to_owned());
        }
        texts
    }

    /// A connection gets what is for it, not its own frames nor other connections'.
    #[test]
    fn a_connection_gets_only_what_is_for_it() {
        let me = ConnId(7);
        let outlet = Outlet::detached(me);
        let metrics = Metrics::new();
        let frames = [
            frame(None, &[me, ConnId(8)], "for both"),
            frame(Some(me), &[me, ConnId(8)], "its own echo"),
            frame(None, &[ConnId(8)], "for another"),
            frame(Some(ConnId(8)), &[me], "for it"),
        ];
        outlet.deliver(&frames, 64, &metrics);
        assert_eq!(texts(&outlet), ["for both", "for it"]);
    }

    /// While the task is busy, or once the connection closes, the room writes nothing itself;
    /// after a close it keeps nothing either.
    #[tokio::test]
    async fn the_room_writes_itself_only_to_an_idle_open_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let me = ConnId(1);
        let outlet = Outlet::new(me, Some(Arc::new(server)));
        let metrics = Metrics::new();
        let idle = || Outlet::poll_waiting(&outlet, &mut Context::from_waker(Waker::noop())).is_pending();

        // Not yet idle (the task has not waited): queued.
        outlet.deliver(&[frame(None, &[me], "one")], 64, &metrics);
        assert!(!idle(), "a frame waits for the task");
        assert_eq!(texts(&outlet), ["one"]);
        // Idle: written, nothing left for the task.
        assert!(idle());
        outlet.deliver(&[frame(None, &[me], "two")], 64, &metrics);
        assert!(idle());
        assert_eq!(texts(&outlet), Vec::<String>::new());
        // Busy: queued again.
        outlet.busy();
        outlet.deliver(&[frame(None, &[me], "three")], 64, &metrics);
        assert_eq!(texts(&outlet), ["three"]);
        // Closed: neither written nor kept.
        assert!(idle());
        outlet.close();
        outlet.deliver(&[frame(None, &[me], "four")], 64, &metrics);
        assert!(idle());
        assert_eq!(texts(&outlet), Vec::<String>::new());
        assert!(outlet.last_sent().is_some(), "the room's write counts as sent");

        // The client got the one frame the room wrote itself, whole.
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut chunk = [0u8; 256];
        while let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_millis(200), client.read(&mut chunk)).await
        {
            got.extend_from_slice(&chunk[..n]);
            if n == 0 {
                break;
            }
        }
        assert_eq!(got, [&[0x81, 3][..], b"two"].concat());
    }
}
