//! One task per WebSocket connection.
//!
//! The task `select!`s over its outlet, the node's keepalive clock and the socket; the clock
//! also tells of a shutdown, so the loop waits on no shutdown token of its own. While the task
//! waits, its room writes the frames it sends straight to the socket (`outlet.rs`), and the
//! task is not woken for them; frames that had to wait for it (it was busy, the kernel did not
//! take everything) are already encoded and shared ([`bytes::Bytes`]), fed in a batch and
//! flushed once. A connection that falls more than the outlet's bound behind, or whose socket
//! blocks a write for too long, is closed with [`close::TOO_SLOW`]: it is never sent a board
//! with a hole in it, and it resyncs when it reconnects.
//!
//! **Stalls.** A laptop that sleeps or Wi-Fi that stops forwarding leaves a TCP connection
//! open and silent. The keepalive pings a connection that has sent nothing for a third of the
//! stall timeout and sends `heartbeat` to a room-protocol client that has been sent nothing
//! for most of the heartbeat interval, so that the client, too, can tell a quiet room from a
//! dead network. A connection that has answered nothing, not even a pong, for `stall_timeout`
//! is dropped as lost: its member shows as reconnecting and keeps their place for the grace
//! period. The keepalive runs on the node's keepalive clock, at the beats at which one of
//! these can be due, and sleeps through the others.
//!
//! **Rates.** Each connection has a rate on messages and on bytes (token buckets). A client
//! past it is read more slowly: the message that broke the rate waits, and the socket is not
//! read until it may be handled, so TCP pushes back on the sender. Nothing it sent is lost.
//! Only a client that keeps the pressure on for `flood_timeout` is closed with
//! [`close::RATE_LIMITED`] (reconnect later).
//!
//! The handler is generic over the socket (`Sink` + `Stream` of axum messages), so it can be
//! driven in tests without a network.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use balint_proto::close;
use balint_proto::room::{ClientMessage, ErrorCode, Role, ServerMessage, HEARTBEAT_INTERVAL_MS};
use balint_proto::rules::{Reason, Refusal};
use balint_proto::sync::FrameError;
use futures_util::future::OptionFuture;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::keepalive::Beat;
use crate::limits;
use crate::metrics::Metrics;
use crate::outlet::{Outlet, Waiting};
use crate::room::ConnId;
use crate::rooms::Room;

/// Who is on the other end, as established before the upgrade.
#[derive(Debug, Clone)]
pub struct Participant {
    /// The role the link grants.
    pub role: Role,
    /// The link generation of the link (see `Grant::generation`).
    pub link_generation: u64,
    /// The display name from the query string. Never logged.
    pub name: String,
    /// Whether the client opened with `sealed=1`: it holds a room key and speaks sealed
    /// frames. It must match the room's mode.
    pub sealed: bool,
}

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Largest frame accepted from the client.
    pub max_frame_bytes: usize,
    /// How long a socket write may block.
    pub write_timeout: Duration,
    /// Messages per second a client may send, sustained.
    pub messages_per_sec: u32,
    /// Bytes per second a client may send, sustained.
    pub bytes_per_sec: u32,
    /// A connection that has sent nothing, not even a pong, for this long is dropped as lost.
    pub stall_timeout: Duration,
    /// A connection slowed down for its rate without a pause for this long is closed.
    pub flood_timeout: Duration,
}

impl ConnectionLimits {
    /// The defaults of [`limits`].
    pub fn defaults() -> Self {
        ConnectionLimits {
            max_frame_bytes: limits::MAX_FRAME_BYTES,
            write_timeout: limits::SOCKET_WRITE_TIMEOUT,
            messages_per_sec: limits::MESSAGES_PER_SEC,
            bytes_per_sec: limits::BYTES_PER_SEC,
            stall_timeout: limits::STALL_TIMEOUT,
            flood_timeout: limits::FLOOD_TIMEOUT,
        }
    }
}

/// What a transport failure was, told by its kind rather than its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// A frame or message over the size limit.
    TooLarge,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// A frame that breaks the WebSocket protocol.
    Protocol,
    /// The connection is gone (reset, closed without a close frame, I/O error).
    Lost,
}

/// A transport error that can say what kind of failure it is.
pub trait TransportError: std::fmt::Display {
    /// The kind of failure.
    fn failure(&self) -> TransportFailure;
}

impl TransportError for axum::Error {
    fn failure(&self) -> TransportFailure {
        use std::error::Error as _;
        use tungstenite::Error as Ws;
        match self.source().and_then(|inner| inner.downcast_ref::<Ws>()) {
            Some(Ws::Capacity(_)) => TransportFailure::TooLarge,
            Some(Ws::Utf8(_)) => TransportFailure::InvalidUtf8,
            Some(Ws::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                TransportFailure::Lost
            }
            Some(Ws::Protocol(_) | Ws::AttackAttempt) => TransportFailure::Protocol,
            _ => TransportFailure::Lost,
        }
    }
}

impl TransportError for std::io::Error {
    fn failure(&self) -> TransportFailure {
        TransportFailure::Lost
    }
}

/// The close frame that ends the connection.
fn closing(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame { code, reason: Utf8Bytes::from_static(reason) }
}

/// How often a connection's keepalive may run: a quarter of the heartbeat interval, so that a
/// room-protocol client is sent a heartbeat within the interval (every three beats, 3.75 s,
/// when nothing else is sent), and a stall is found within a beat or two of the stall timeout.
/// A connection is woken only on the beats at which something may be due (see
/// `keepalive.rs`). The node's [`KeepaliveClock`](crate::keepalive::KeepaliveClock) keeps it.
pub const KEEPALIVE_BEAT: Duration = Duration::from_millis(HEARTBEAT_INTERVAL_MS / 4);

/// How long a connection may be quiet before it is pinged: a third of the stall timeout
/// (8.3 s at the default 25 s), so that a live connection answers at least twice within every
/// stall timeout, and an idle one costs a ping every few beats rather than every beat (each
/// ping is a write, a pong to read and a wake-up: most of an idle node's CPU). Never less than
/// a beat.
fn ping_after(beat: Duration, stall_timeout: Duration) -> Duration {
    (stall_timeout / 3).max(beat * 9 / 10)
}

/// How long after the last frame sent a room-protocol client is sent `heartbeat`: a beat
/// before the heartbeat interval runs out, so that it hears from the server within the
/// interval although the keepalive only looks once a beat.
fn heartbeat_after(beat: Duration) -> Duration {
    Duration::from_millis(HEARTBEAT_INTERVAL_MS).saturating_sub(beat)
}

/// The beats that pass before `until` has (the first beat at or after it), at least one.
fn beats_until(until: Duration, beat: Duration) -> u64 {
    let beat = beat.as_nanos().max(1);
    u64::try_from(until.as_nanos().div_ceil(beat)).unwrap_or(u64::MAX).max(1)
}

/// The `heartbeat` message, encoded once for every connection.
const HEARTBEAT: &str = r#"{"type":"heartbeat"}"#;

/// Serves one WebSocket connection until either side ends it.
// Not an `async fn`: see the comment in the body.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
pub fn serve<S, E>(
    mut socket: S,
    room: Arc<Room>,
    outlet: Arc<Outlet>,
    participant: Participant,
    clock: impl Fn() -> u64,
    limits: ConnectionLimits,
    metrics: Metrics,
    mut beat: Beat,
) -> impl Future<Output = ()>
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
    E: TransportError,
{
    // An async block rather than an async fn: an async fn moves its arguments into locals,
    // and its future keeps room for both, the socket twice. Here the block owns them once.
    async move {
        let conn = outlet.conn();
        let role = participant.role;
        if participant.sealed != room.is_sealed() {
            // A stock Yjs client cannot read a sealed room, nor a sealed client a plain one; a
            // 44xx close keeps a stock client from retrying.
            metrics.refused("sealed_mismatch");
            let reason = if room.is_sealed() {
                "this room is sealed: open it with a client that holds its key"
            } else {
                "this room is not sealed"
            };
            let _ =
                write(&mut socket, Message::Close(Some(closing(close::SEALED_MISMATCH, reason))), limits.write_timeout)
                    .await;
            return;
        }
        let subscription =
            room.connect(participant.role, participant.link_generation, participant.name, outlet.clone());
        let Some(_subscription) = subscription else {
            let frame = closing(close::MEETING_ENDED, "this meeting has ended");
            let _ = write(&mut socket, Message::Close(Some(frame)), limits.write_timeout).await;
            return;
        };
        metrics.connection(1);
        info!(room = room.id(), conn = %conn, role = role.as_str(), "connected");
        let mut session = Session::new(conn, &limits, metrics.clone());

        // The task lives as long as the connection, idle or not, and its future is as large as
        // the largest state it can be in: what is rarely taken (a paused reading, handling a
        // client's frame, the close) is boxed, so that an idle connection does not carry it.
        // A client that has said hello gets heartbeats: a beat that was resting longer (a
        // stock client's, until its next ping) comes at once.
        let mut heartbeats = false;
        let close = loop {
            if session.said_hello != heartbeats {
                heartbeats = session.said_hello;
                beat.wake_at_next();
            }
            if beat.stopping() {
                // Frames already received are applied before the goodbye (see `finish`).
                break Some(closing(close::SERVICE_RESTART, "server restarting"));
            }
            let paused_until = session.paused_until;
            // The timer exists only while reading is paused.
            let pause: OptionFuture<_> = paused_until.map(|until| Box::pin(tokio::time::sleep_until(until))).into();
            tokio::select! {
                // The outlet before the socket, so that a client sending fast cannot starve its
                // own frames into a false "too slow". A shutdown comes as a beat (checked above,
                // before every turn), so that the loop waits on no token of its own. While the
                // outlet is pending, the task is idle and the room writes to the socket itself;
                // every other branch first makes the task busy, so that what the room sends
                // meanwhile waits behind what the task writes.
                biased;
                () = std::future::poll_fn(|cx| outlet.poll_waiting(cx)) => {
                    if let Some(frame) = session.forward(&mut socket, &outlet, &limits).await {
                        break Some(frame);
                    }
                }
                () = beat.tick() => {
                    outlet.busy();
                    if beat.stopping() {
                        continue;
                    }
                    match session.keepalive(&mut socket, &outlet, beat.period(), &limits).await {
                        Ok(rest) => beat.rest(rest),
                        Err(frame) => break Some(frame),
                    }
                }
                _ = pause, if paused_until.is_some() => {
                    outlet.busy();
                    match Box::pin(session.resume(&mut socket, &room, &clock, &limits)).await {
                        Next::Continue => {}
                        Next::Close(frame) => break Some(frame),
                        Next::Gone => break None,
                    }
                }
                incoming = socket.next(), if paused_until.is_none() => {
                    outlet.busy();
                    match Box::pin(session.receive(&mut socket, &room, incoming, &clock, &limits)).await {
                        Next::Continue => {}
                        Next::Close(frame) => break Some(frame),
                        Next::Gone => break None,
                    }
                }
            }
        };

        // The room writes nothing more: the close frame is the last one.
        outlet.close();
        Box::pin(finish(socket, session, &room, conn, close, &clock, &limits)).await;
        metrics.connection(-1);
    }
}

/// Ends a connection: applies or drops what the client already sent, closes the socket with
/// `close` (`None`: the client is gone) and leaves the room.
async fn finish<S, E>(
    mut socket: S,
    mut session: Session,
    room: &Room,
    conn: ConnId,
    close: Option<CloseFrame>,
    clock: &impl Fn() -> u64,
    limits: &ConnectionLimits,
) where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
{
    match close {
        Some(frame) if frame.code == LOST || frame.code == close::UNRESPONSIVE => {
            // The client is gone or stalled, but what it sent before is the room's: apply every
            // frame already received.
            let what = if frame.code == LOST { "connection lost" } else { "connection stalled" };
            info!(room = room.id(), conn = %conn, "{what}");
            apply_received(&mut socket, &mut session, room, clock, limits).await;
            if frame.code == close::UNRESPONSIVE {
                // Should the network come back, the client learns why; no lingering for an answer.
                let _ = write(&mut socket, Message::Close(Some(frame)), limits::CLOSE_LINGER).await;
            }
        }
        Some(frame) => {
            info!(room = room.id(), conn = %conn, code = frame.code, reason = frame.reason.as_str(), "closing");
            // Unless the client is closed for what it sent (a bad frame, a flood), what it
            // sent before it saw the close is still the room's: it is applied. Otherwise it is
            // read and dropped.
            let keep = matches!(frame.code, close::SERVICE_RESTART | close::TOO_SLOW | close::NORMAL);
            if keep {
                apply_received(&mut socket, &mut session, room, clock, limits).await;
            }
            if write(&mut socket, Message::Close(Some(frame)), limits.write_timeout).await.is_ok() {
                // Wait briefly for the client's own close frame, so that ours is not lost to a
                // reset connection. (The listener also drains what the client still sends
                // after the socket is dropped: see `linger.rs`.)
                let _ = tokio::time::timeout(limits::CLOSE_LINGER, async {
                    while let Some(Ok(message)) = socket.next().await {
                        match message {
                            Message::Close(_) => break,
                            message @ (Message::Binary(_) | Message::Text(_)) if keep => {
                                let _ = session.handle(&mut socket, room, message, clock, limits).await;
                            }
                            _ => {}
                        }
                    }
                })
                .await;
            }
        }
        None => info!(room = room.id(), conn = %conn, "disconnected"),
    }
    room.leave(conn).await;
}

/// Applies the frames that have already arrived from the client, without waiting for more,
/// until one of them ends the connection. A message held back by the rate goes first.
async fn apply_received<S, E>(
    socket: &mut S,
    session: &mut Session,
    room: &Room,
    clock: &impl Fn() -> u64,
    limits: &ConnectionLimits,
) where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
{
    let held = session.held.take();
    session.paused_until = None;
    let mut next = held.or_else(|| match socket.next().now_or_never() {
        Some(Some(Ok(message))) => Some(message),
        _ => None,
    });
    while let Some(message) = next {
        match session.handle(socket, room, message, clock, limits).await {
            // Replies cannot reach a client that is gone; its updates still count.
            None => {}
            Some(frame) if frame.code == LOST || frame.code == close::TOO_SLOW => {}
            Some(_) => break,
        }
        next = match socket.next().now_or_never() {
            Some(Some(Ok(message))) => Some(message),
            _ => None,
        };
    }
}

/// What the connection does after a frame from the client.
enum Next {
    /// Carry on.
    Continue,
    /// Close with this frame.
    Close(CloseFrame),
    /// The client is gone without a close frame.
    Gone,
}

impl From<Option<CloseFrame>> for Next {
    fn from(frame: Option<CloseFrame>) -> Self {
        frame.map_or(Next::Continue, Next::Close)
    }
}

/// Whether a message may be handled now, by the connection's rates.
enum Rate {
    /// Within the rates.
    Within,
    /// Over a rate: handle it after this long.
    Wait(Duration),
}

struct Session {
    conn: ConnId,
    /// Whether the client opened the room protocol.
    said_hello: bool,
    metrics: Metrics,
    messages: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
    /// The message that broke the rate, waiting to be handled; the socket is not read
    /// meanwhile.
    held: Option<Message>,
    /// When `held` may be handled.
    paused_until: Option<Instant>,
    /// Since when the client has been slowed down without a pause of its own.
    throttled_since: Option<Instant>,
    /// When the client last sent anything (a frame, a pong).
    last_received: Instant,
    /// When a frame (not a ping) was last written to the client.
    last_sent: Instant,
}

impl Session {
    fn new(conn: ConnId, limits: &ConnectionLimits, metrics: Metrics) -> Self {
        let per_sec = |n: u32| NonZeroU32::new(n.max(1)).expect("at least one");
        let quota = |rate: u32| {
            Quota::per_second(per_sec(rate)).allow_burst(per_sec(rate.saturating_mul(limits::RATE_BURST_SECONDS)))
        };
        let now = Instant::now();
        Session {
            conn,
            said_hello: false,
            metrics,
            messages: RateLimiter::direct(quota(limits.messages_per_sec)),
            bytes: RateLimiter::direct(quota(limits.bytes_per_sec)),
            held: None,
            paused_until: None,
            throttled_since: None,
            last_received: now,
            last_sent: now,
        }
    }

    fn too_slow(&self, reason: &'static str) -> CloseFrame {
        self.metrics.slow_client_closed();
        closing(close::TOO_SLOW, reason)
    }

    /// The connection's beat: drop a stalled connection, ping a quiet one, and tell a
    /// room-protocol client that the server is still there. Then returns how many beats the
    /// connection may rest before something can be due again.
    async fn keepalive<S, E>(
        &mut self,
        socket: &mut S,
        outlet: &Outlet,
        beat: Duration,
        limits: &ConnectionLimits,
    ) -> Result<u64, CloseFrame>
    where
        S: Sink<Message, Error = E> + Unpin,
    {
        // While the connection is slowed down, the server is the one not reading.
        if self.paused_until.is_none() && self.last_received.elapsed() >= limits.stall_timeout {
            self.metrics.refused("unresponsive");
            return Err(closing(close::UNRESPONSIVE, "no answer to pings"));
        }
        // A margin for the clock's own jitter: what is due a little after this beat is done
        // now rather than a beat late.
        let margin = beat / 10;
        let ping = ping_after(beat, limits.stall_timeout);
        let mut pinged = false;
        if self.last_received.elapsed() + margin >= ping {
            // A browser's page never sees a ping, so it does not count as sent for `heartbeat`.
            if let Err(e) = write(socket, Message::Ping(bytes::Bytes::new()), limits.write_timeout).await {
                return Err(e.ending(self));
            }
            pinged = true;
        }
        let heartbeat = heartbeat_after(beat);
        // The room's own writes count as sent, as the task's do.
        if let Some(direct) = outlet.last_sent().map(Instant::from_std) {
            self.last_sent = self.last_sent.max(direct);
        }
        if self.said_hello && self.last_sent.elapsed() + margin >= heartbeat {
            let message = Message::Text(Utf8Bytes::from_static(HEARTBEAT));
            if let Err(e) = write(socket, message, limits.write_timeout).await {
                return Err(e.ending(self));
            }
            self.metrics.sent(HEARTBEAT.len());
            self.last_sent = Instant::now();
        }
        if self.paused_until.is_some() {
            return Ok(1);
        }
        // What comes due first: the stall check, the next ping (counted from now after a
        // ping: its answer makes the connection quiet again), the next heartbeat.
        let received = self.last_received.elapsed();
        let mut until = limits.stall_timeout.saturating_sub(received);
        until = until.min(if pinged { ping } else { ping.saturating_sub(received) }.saturating_sub(margin));
        if self.said_hello {
            until = until.min(heartbeat.saturating_sub(self.last_sent.elapsed()).saturating_sub(margin));
        }
        Ok(beats_until(until, beat))
    }

    /// Takes what the socket yielded.
    async fn receive<S, E>(
        &mut self,
        socket: &mut S,
        room: &Room,
        incoming: Option<Result<Message, E>>,
        clock: &impl Fn() -> u64,
        limits: &ConnectionLimits,
    ) -> Next
    where
        S: Sink<Message, Error = E> + Unpin,
        E: TransportError,
    {
        let message = match incoming {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // Transport errors name the failure and sizes, never the frame's bytes.
                let failure = e.failure();
                debug!(room = room.id(), conn = %self.conn, error = %e, ?failure, "socket error");
                return match failure {
                    TransportFailure::TooLarge => {
                        self.metrics.refused("frame_too_large");
                        Next::Close(closing(close::FRAME_TOO_LARGE, "frame too large"))
                    }
                    TransportFailure::InvalidUtf8 => {
                        self.metrics.refused("invalid_utf8");
                        Next::Close(closing(close::INVALID_TEXT, "text frame is not valid UTF-8"))
                    }
                    TransportFailure::Protocol => {
                        self.metrics.refused("protocol_error");
                        Next::Close(closing(close::PROTOCOL_ERROR, "WebSocket protocol error"))
                    }
                    TransportFailure::Lost => Next::Close(connection_lost()),
                };
            }
            None => return Next::Gone,
        };
        self.last_received = Instant::now();
        let size = payload_len(&message);
        self.metrics.received(size);
        if size > limits.max_frame_bytes {
            self.metrics.refused("frame_too_large");
            return Next::Close(closing(close::FRAME_TOO_LARGE, "frame too large"));
        }
        if !matches!(message, Message::Binary(_) | Message::Text(_)) {
            return self.handle(socket, room, message, clock, limits).await.into();
        }
        self.admit(socket, room, message, clock, limits).await
    }

    /// Handles a message now if the rates allow it, or holds it back and pauses reading.
    async fn admit<S, E>(
        &mut self,
        socket: &mut S,
        room: &Room,
        message: Message,
        clock: &impl Fn() -> u64,
        limits: &ConnectionLimits,
    ) -> Next
    where
        S: Sink<Message, Error = E> + Unpin,
    {
        let size = payload_len(&message);
        match self.rate(size) {
            Rate::Within => self.handle(socket, room, message, clock, limits).await.into(),
            Rate::Wait(wait) => {
                let now = Instant::now();
                self.held = Some(message);
                self.paused_until = Some(now + wait);
                match self.throttled_since {
                    None => {
                        self.throttled_since = Some(now);
                        self.metrics.refused("rate_limited");
                        debug!(room = room.id(), conn = %self.conn, "slowed down for its rate");
                        let refusal = Refusal::new(ErrorCode::RateLimited, Reason::RateLimited);
                        self.send_error(socket, refusal, limits).await.into()
                    }
                    Some(since) if now.duration_since(since) >= limits.flood_timeout => {
                        self.metrics.refused("flood");
                        Next::Close(closing(close::RATE_LIMITED, "kept sending past the rate limit"))
                    }
                    Some(_) => Next::Continue,
                }
            }
        }
    }

    /// The pause for the rate is over: handle the held message, then see whether the client
    /// is still pushing (another message is already there) or has eased off.
    async fn resume<S, E>(
        &mut self,
        socket: &mut S,
        room: &Room,
        clock: &impl Fn() -> u64,
        limits: &ConnectionLimits,
    ) -> Next
    where
        S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
        E: TransportError,
    {
        self.paused_until = None;
        // Time spent paused is the server's doing, not the client's silence.
        self.last_received = Instant::now();
        if let Some(message) = self.held.take() {
            match self.admit(socket, room, message, clock, limits).await {
                Next::Continue if self.paused_until.is_none() => {}
                other => return other,
            }
        }
        match socket.next().now_or_never() {
            Some(incoming) => self.receive(socket, room, incoming, clock, limits).await,
            None => {
                self.throttled_since = None;
                Next::Continue
            }
        }
    }

    /// Counts a message against the rates; when over one, says how long it must wait.
    fn rate(&mut self, bytes: usize) -> Rate {
        let now = self.messages.clock().now();
        let mut wait = Duration::ZERO;
        if let Err(not_until) = self.messages.check() {
            wait = wait.max(not_until.wait_time_from(now));
        }
        let size = NonZeroU32::new(u32::try_from(bytes.max(1)).unwrap_or(u32::MAX)).expect("at least one");
        // A message larger than the whole burst can never fit; the message count still paces it.
        if let Ok(Err(not_until)) = self.bytes.check_n(size) {
            wait = wait.max(not_until.wait_time_from(now));
        }
        if wait.is_zero() {
            Rate::Within
        } else {
            Rate::Wait(wait)
        }
    }

    async fn handle<S, E>(
        &mut self,
        socket: &mut S,
        room: &Room,
        message: Message,
        clock: &impl Fn() -> u64,
        limits: &ConnectionLimits,
    ) -> Option<CloseFrame>
    where
        S: Sink<Message, Error = E> + Unpin,
    {
        match message {
            Message::Binary(frame) => match room.handle_binary(self.conn, frame).await {
                Ok(outcome) => {
                    for frame in outcome.reply {
                        let len = frame.len();
                        if let Err(e) = write(socket, Message::Binary(frame), limits.write_timeout).await {
                            return Some(e.ending(self));
                        }
                        self.last_sent = Instant::now();
                        self.metrics.sent(len);
                    }
                    if let Some(refusal) = outcome.refused {
                        debug!(room = room.id(), conn = %self.conn, reason = refusal.reason.as_str(), "board write refused");
                        self.metrics.refused("read_only");
                        return self.send_error(socket, refusal, limits).await;
                    }
                    if outcome.board_full {
                        info!(room = room.id(), conn = %self.conn, "board full: update refused");
                        self.metrics.refused("board_full");
                        if !self.said_hello {
                            return Some(closing(close::BOARD_FULL, "the board is full"));
                        }
                        let refusal = Refusal::new(ErrorCode::BoardFull, Reason::BoardFull);
                        return self.send_error(socket, refusal, limits).await;
                    }
                    None
                }
                Err(e) => {
                    info!(room = room.id(), conn = %self.conn, error = %e, "refused binary frame");
                    self.metrics.refused("malformed_frame");
                    Some(match e {
                        FrameError::UnknownType(_) => {
                            closing(close::UNKNOWN_MESSAGE_TYPE, "unknown y-sync message type")
                        }
                        FrameError::Truncated => closing(close::MALFORMED_SYNC, "truncated y-sync message"),
                        FrameError::Empty | FrameError::Malformed => {
                            closing(close::MALFORMED_SYNC, "malformed y-sync message")
                        }
                    })
                }
            },
            Message::Text(text) => match ClientMessage::from_json(text.as_str()) {
                Ok(message) => {
                    if matches!(message, ClientMessage::Hello { .. }) {
                        self.said_hello = true;
                    }
                    room.handle_text(self.conn, message, clock()).await;
                    None
                }
                Err(_) if self.said_hello => {
                    info!(room = room.id(), conn = %self.conn, "refused text frame");
                    self.metrics.refused("bad_message");
                    let refusal = Refusal::new(ErrorCode::BadMessage, Reason::BadMessage);
                    self.send_error(socket, refusal, limits).await
                }
                Err(_) => {
                    info!(room = room.id(), conn = %self.conn, "refused text frame before hello");
                    self.metrics.refused("bad_message");
                    Some(closing(close::INVALID_TEXT, "expected a hello message"))
                }
            },
            // Pings are answered by the transport; pongs need nothing.
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => Some(closing(close::NORMAL, "bye")),
        }
    }

    /// Writes what waits in the outlet for this connection (a batch at most), then flushes
    /// once: the room's bytes that the kernel did not take go out too.
    async fn forward<S, E>(&mut self, socket: &mut S, outlet: &Outlet, limits: &ConnectionLimits) -> Option<CloseFrame>
    where
        S: Sink<Message, Error = E> + Unpin,
    {
        let mut batched = 0;
        let mut bytes = 0;
        // One reading of the clock for the batch: its frames go out within microseconds.
        let now = Instant::now();
        while batched < limits::WRITE_BATCH_FRAMES {
            let outbound = match outlet.next() {
                Waiting::Frame(outbound) => outbound,
                Waiting::Empty => break,
                // What was fed goes out before the close frame: it is counted as sent.
                Waiting::Lagged => {
                    self.metrics.sent_batch(batched as u64, bytes as u64);
                    return Some(self.too_slow("client too slow, resync"));
                }
            };
            if let Message::Close(frame) = &outbound.message {
                // The room closes this connection (kicked, declined, meeting ended).
                self.metrics.sent_batch(batched as u64, bytes as u64);
                let _ = flush_within(socket, limits.write_timeout).await;
                return Some(frame.clone().unwrap_or_else(|| closing(close::NORMAL, "closed")));
            }
            let len = payload_len(&outbound.message);
            // A clone of the shared frame is a reference count.
            if let Err(e) = feed_within(socket, outbound.message.clone(), limits.write_timeout).await {
                return Some(e.ending(self));
            }
            self.metrics.fanned_out(now.into_std().saturating_duration_since(outbound.published));
            batched += 1;
            bytes += len;
        }
        if batched > 0 {
            self.metrics.sent_batch(batched as u64, bytes as u64);
        }
        if let Err(e) = flush_within(socket, limits.write_timeout).await {
            return Some(e.ending(self));
        }
        if batched > 0 {
            self.last_sent = now;
        }
        None
    }

    async fn send_error<S, E>(
        &mut self,
        socket: &mut S,
        refusal: Refusal,
        limits: &ConnectionLimits,
    ) -> Option<CloseFrame>
    where
        S: Sink<Message, Error = E> + Unpin,
    {
        if !self.said_hello {
            return None;
        }
        let text = ServerMessage::refused(refusal).to_json();
        let len = text.len();
        match write(socket, Message::Text(text.into()), limits.write_timeout).await {
            Ok(()) => {
                self.last_sent = Instant::now();
                self.metrics.sent(len);
                None
            }
            Err(e) => Some(e.ending(self)),
        }
    }
}

/// The bytes a data frame carries; control frames count as none.
fn payload_len(message: &Message) -> usize {
    match message {
        Message::Binary(b) => b.len(),
        Message::Text(t) => t.len(),
        _ => 0,
    }
}

/// Why a write did not go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteError {
    /// The socket blocked for longer than the write timeout: the client does not read.
    Blocked,
    /// The transport failed: the client is gone.
    Gone,
}

impl WriteError {
    /// The frame that ends the connection after this failure.
    fn ending(self, session: &Session) -> CloseFrame {
        match self {
            WriteError::Blocked => session.too_slow("client too slow"),
            WriteError::Gone => connection_lost(),
        }
    }
}

async fn write<S, E>(socket: &mut S, message: Message, timeout: Duration) -> Result<(), WriteError>
where
    S: Sink<Message, Error = E> + Unpin,
{
    written(tokio::time::timeout(timeout, socket.send(message)).await)
}

/// Queues `message` on the socket, waiting at most `timeout` for room in its write buffer.
/// Most of the time there is room at once, and no timer is made.
async fn feed_within<S, E>(socket: &mut S, message: Message, timeout: Duration) -> Result<(), WriteError>
where
    S: Sink<Message, Error = E> + Unpin,
{
    match std::future::poll_fn(|cx| Poll::Ready(socket.poll_ready_unpin(cx))).await {
        Poll::Ready(Ok(())) => socket.start_send_unpin(message).map_err(|_| WriteError::Gone),
        Poll::Ready(Err(_)) => Err(WriteError::Gone),
        Poll::Pending => written(tokio::time::timeout(timeout, socket.feed(message)).await),
    }
}

/// Flushes the socket, waiting at most `timeout`. Most of the time the kernel takes
/// everything at once, and no timer is made.
async fn flush_within<S, E>(socket: &mut S, timeout: Duration) -> Result<(), WriteError>
where
    S: Sink<Message, Error = E> + Unpin,
{
    match std::future::poll_fn(|cx| Poll::Ready(socket.poll_flush_unpin(cx))).await {
        Poll::Ready(Ok(())) => Ok(()),
        Poll::Ready(Err(_)) => Err(WriteError::Gone),
        Poll::Pending => written(tokio::time::timeout(timeout, socket.flush()).await),
    }
}

/// Whether a feed or flush finished in time, and if not, why.
fn written<E>(result: Result<Result<(), E>, tokio::time::error::Elapsed>) -> Result<(), WriteError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteError::Gone),
        Err(_) => Err(WriteError::Blocked),
    }
}

/// Stands for "the transport failed": 1006 is reserved for exactly this and never goes on
/// the wire, so no close frame is written for it.
const LOST: u16 = 1006;

fn connection_lost() -> CloseFrame {
    closing(LOST, "connection lost")
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use balint_proto::sync;
    use yrs::{Doc, ReadTxn, StateVector, Text, Transact};

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::backend::files::FileStore;
    use crate::rooms::{Cluster, RoomOptions, RoomSettings, Rooms};

    /// A client that sent `incoming` and is gone: every write fails.
    struct Vanished {
        incoming: VecDeque<Message>,
    }

    impl Stream for Vanished {
        type Item = Result<Message, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.incoming.pop_front().map(Ok))
        }
    }

    impl Sink<Message> for Vanished {
        type Error = std::io::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), Self::Error> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
    }

    /// A client that reads everything: the socket keeps what is written to it.
    #[derive(Default)]
    struct Recording {
        sent: Vec<Message>,
    }

    impl Sink<Message> for Recording {
        type Error = std::io::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
            self.sent.push(message);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The value of counter `name` in `metrics`' exposition.
    fn counter(metrics: &Metrics, name: &str) -> u64 {
        let text = metrics.encode();
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{text}"));
        line[name.len() + 1..].parse().unwrap()
    }

    /// A frame for connection 1 alone.
    fn outbound(message: Message) -> Arc<crate::rooms::Outbound> {
        Arc::new(crate::rooms::Outbound {
            origin: None,
            audience: crate::room::meeting::Audience::of(vec![ConnId(1)]),
            message,
            published: std::time::Instant::now(),
        })
    }

    /// Connection 1's session with default limits, its metrics, and an outlet that only its
    /// task writes from.
    fn session_with_outlet() -> (Metrics, ConnectionLimits, Session, Arc<Outlet>) {
        let metrics = Metrics::new();
        let limits = ConnectionLimits::defaults();
        let session = Session::new(ConnId(1), &limits, metrics.clone());
        (metrics, limits, session, Outlet::detached(ConnId(1)))
    }

    /// Frames that waited in the outlet ahead of a close frame from the room (a meeting that
    /// ended, a member removed) go out before it, in order, and count as sent.
    #[tokio::test]
    async fn frames_queued_before_the_rooms_close_go_out_first_and_count_as_sent() {
        let (metrics, limits, mut session, outlet) = session_with_outlet();
        let close = Message::Close(Some(closing(close::MEETING_ENDED, "this meeting has ended")));
        let frames: Vec<_> = ["one", "two", "six"]
            .into_iter()
            .map(|text| outbound(Message::Text(Utf8Bytes::from_static(text))))
            .chain([outbound(close), outbound(Message::Text(Utf8Bytes::from_static("late")))])
            .collect();
        outlet.deliver(&frames, 64, &metrics);
        let mut socket = Recording::default();
        let ending = session.forward(&mut socket, &outlet, &limits).await;
        assert_eq!(ending.map(|c| c.code), Some(close::MEETING_ENDED));
        let texts: Vec<_> = socket.sent.iter().map(|m| m.to_text().unwrap().to_owned()).collect();
        assert_eq!(texts, ["one", "two", "six"]);
        assert_eq!(counter(&metrics, "balint_messages_out_total"), 3);
        assert_eq!(counter(&metrics, "balint_bytes_out_total"), 9);
    }

    /// A connection that falls more frames behind than its outlet holds is closed as too slow,
    /// and nothing past the bound is kept for it.
    #[tokio::test]
    async fn a_connection_past_the_outlets_bound_is_closed_as_too_slow() {
        let (metrics, limits, mut session, outlet) = session_with_outlet();
        let frames: Vec<_> = (0..5).map(|_| outbound(Message::Text(Utf8Bytes::from_static("x")))).collect();
        outlet.deliver(&frames[..4], 4, &metrics);
        let mut socket = Recording::default();
        assert_eq!(session.forward(&mut socket, &outlet, &limits).await, None, "within the bound");
        assert_eq!(socket.sent.len(), 4);
        outlet.deliver(&frames, 4, &metrics);
        let ending = session.forward(&mut socket, &outlet, &limits).await;
        assert_eq!(ending.map(|c| c.code), Some(close::TOO_SLOW));
        assert_eq!(socket.sent.len(), 4, "nothing more is written once behind");
        assert_eq!(counter(&metrics, "balint_slow_client_closes_total"), 1);
    }

    /// The settings of a plain ephemeral room.
    fn ephemeral_room() -> RoomSettings {
        RoomSettings {
            title: None,
            ephemeral: true,
            template: Default::default(),
            lobby: false,
            sealed: false,
            link_generation: 0,
            sealed_title: None,
            controls: Default::default(),
        }
    }

    fn rooms(data: &std::path::Path) -> Rooms {
        Rooms::new(Cluster::embedded(
            Arc::new(FileStore::new(data)),
            Metrics::new(),
            "test".into(),
            RoomOptions {
                outbound_queue: 64,
                reconnect_grace: Duration::from_secs(120),
                empty_grace: Duration::from_secs(600),
                max_length: Duration::from_secs(3600),
                max_members: 50,
                max_board_bytes: 1 << 20,
                max_rooms: 10,
                idle_unload: Duration::from_secs(60),
                link_ttl: Duration::from_secs(3600),
            },
        ))
    }

    #[test]
    fn transport_errors_are_told_apart_by_their_kind() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let kind = |e: tungstenite::Error| axum::Error::new(e).failure();
        let too_long = CapacityError::MessageTooLong { size: 3 << 20, max_size: 1 << 20 };
        assert_eq!(kind(tungstenite::Error::Capacity(too_long)), TransportFailure::TooLarge);
        assert_eq!(kind(tungstenite::Error::Utf8("bad".into())), TransportFailure::InvalidUtf8);
        assert_eq!(
            kind(tungstenite::Error::Protocol(ProtocolError::UnmaskedFrameFromClient)),
            TransportFailure::Protocol
        );
        let reset = tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(kind(reset), TransportFailure::Lost);
        assert_eq!(kind(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into()), TransportFailure::Lost);
    }

    #[test]
    fn a_quiet_connection_is_pinged_a_few_times_per_stall_timeout() {
        let beat = KEEPALIVE_BEAT;
        assert_eq!(ping_after(beat, limits::STALL_TIMEOUT), limits::STALL_TIMEOUT / 3);
        assert!(ping_after(beat, limits::STALL_TIMEOUT) >= beat * 3, "not every beat");
        // The shortest stall timeout allowed still leaves room for two pings in it.
        assert!(ping_after(beat, limits::MIN_STALL_TIMEOUT) * 2 < limits::MIN_STALL_TIMEOUT - beat);
        // Never more often than the keepalive runs.
        assert_eq!(ping_after(beat, Duration::from_secs(1)), beat * 9 / 10);
    }

    #[test]
    fn a_quiet_page_hears_a_heartbeat_within_the_interval() {
        let beat = KEEPALIVE_BEAT;
        let interval = Duration::from_millis(HEARTBEAT_INTERVAL_MS);
        // Right after a heartbeat the connection rests until the beat at which the next is
        // due (with the keepalive's margin of a tenth of a beat), which is within the interval.
        let rest = beats_until(heartbeat_after(beat) - beat / 10, beat);
        assert_eq!(rest, 3);
        assert!(beat * rest as u32 <= interval - beat / 10);
        // At worst the last frame went out just after a beat: the heartbeat follows a beat
        // after it was due.
        assert!(heartbeat_after(beat) + beat <= interval);
        assert_eq!(beats_until(Duration::ZERO, beat), 1, "at least one beat");
        assert_eq!(beats_until(beat * 2 + Duration::from_nanos(1), beat), 3);
    }

    #[test]
    fn the_heartbeat_is_the_protocols_own() {
        assert_eq!(HEARTBEAT, ServerMessage::Heartbeat {}.to_json());
    }

    /// A socket as large as axum's (368 bytes), that never yields.
    struct Large {
        _size: [u8; 368],
    }

    impl Stream for Large {
        type Item = Result<Message, std::io::Error>;
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Pending
        }
    }

    impl Sink<Message> for Large {
        type Error = std::io::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), Self::Error> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The task of a connection lives as long as the connection, and its future is as large as
    /// the largest state it can be in: what an idle connection does not need is boxed, and the
    /// socket and the other arguments are held once.
    #[tokio::test]
    async fn a_connections_task_is_small() {
        let data = tempfile::tempdir().unwrap();
        let rooms = rooms(data.path());
        let room = rooms.create(ephemeral_room()).await.unwrap();
        let socket = Large { _size: [0; 368] };
        let participant = Participant { role: Role::Member, link_generation: 0, name: "ada".to_owned(), sealed: false };
        let limits = ConnectionLimits::defaults();
        let beat = crate::keepalive::KeepaliveClock::start(KEEPALIVE_BEAT, CancellationToken::new()).beat(ConnId(1));
        let task = serve(
            socket,
            room,
            Outlet::detached(ConnId(1)),
            participant,
            crate::unix_now_ms,
            limits,
            Metrics::new(),
            beat,
        );
        // Beside the socket; 1,232 with the socket held twice, about 2,650 with every state
        // inline too.
        let size = std::mem::size_of_val(&task) - std::mem::size_of::<Large>();
        println!("a connection's task: {size} bytes and its socket");
        assert!(size <= 1024, "{size} bytes");
    }

    #[tokio::test]
    async fn what_a_vanished_client_sent_is_applied() {
        let data = tempfile::tempdir().unwrap();
        let rooms = rooms(data.path());
        let room = rooms.create(ephemeral_room()).await.unwrap();

        // The client's first frame asks for the board; the answer cannot be written, because
        // the client is gone. The edit it sent right after must still count.
        let doc = Doc::new();
        let notes = doc.get_or_insert_text("notes");
        notes.insert(&mut doc.transact_mut(), 0, "said before leaving");
        let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
        let socket = Vanished {
            incoming: VecDeque::from([
                Message::Binary(sync::encode_step1(&StateVector::default())),
                Message::Binary(sync::encode_update(&update)),
            ]),
        };
        let limits = ConnectionLimits { write_timeout: Duration::from_secs(1), ..ConnectionLimits::defaults() };
        let participant = Participant { role: Role::Member, link_generation: 0, name: "ada".to_owned(), sealed: false };
        let conn = rooms.next_conn_id();
        serve(
            socket,
            room.clone(),
            Outlet::detached(conn),
            participant,
            crate::unix_now_ms,
            limits,
            Metrics::new(),
            crate::keepalive::KeepaliveClock::start(KEEPALIVE_BEAT, CancellationToken::new()).beat(conn),
        )
        .await;

        let board = room.export_markdown();
        assert!(board.contains("said before leaving"), "{board}");
    }
}
