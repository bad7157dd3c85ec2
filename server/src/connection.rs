//! One task per WebSocket connection.
//!
//! The task `select!`s over three sources: frames from the client, the room's feed and the
//! shutdown token. Frames from the feed are already encoded and shared ([`bytes::Bytes`]); when
//! the writer is behind, queued frames are fed in a batch and flushed once. A connection that
//! falls more than the feed's capacity behind, or whose socket blocks a write for too long, is
//! closed with [`close::TOO_SLOW`]: it is never sent a board with a hole in it, and it resyncs
//! when it reconnects.
//!
//! Each connection has a rate limit on messages and on bytes (token buckets). A client over
//! it is warned with `error{rate_limited}`; its messages are still handled, so nothing it sent
//! is lost, but if it keeps going it is closed with [`close::RATE_LIMITED`].
//!
//! The handler is generic over the socket (`Sink` + `Stream` of axum messages), so it can be
//! driven in tests without a network.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use balint_proto::close;
use balint_proto::room::{ClientMessage, ErrorCode, Role, ServerMessage};
use balint_proto::sync::FrameError;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::limits;
use crate::metrics::Metrics;
use crate::room::ConnId;
use crate::rooms::{Outbound, Room};

/// Who is on the other end, as established before the upgrade.
#[derive(Debug, Clone)]
pub struct Participant {
    /// The role the link grants.
    pub role: Role,
    /// The link generation of the link (see `Grant::generation`).
    pub link_generation: u64,
    /// The display name from the query string. Never logged.
    pub name: String,
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
}

/// The close frame that ends the connection.
fn closing(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame { code, reason: Utf8Bytes::from_static(reason) }
}

/// Serves one WebSocket connection until either side ends it.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S, E>(
    mut socket: S,
    room: Arc<Room>,
    conn: ConnId,
    participant: Participant,
    clock: impl Fn() -> u64,
    limits: ConnectionLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
) where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let role = participant.role;
    let Some(mut feed) = room.connect(conn, participant.role, participant.link_generation, participant.name) else {
        let frame = closing(close::MEETING_ENDED, "this meeting has ended");
        let _ = write(&mut socket, Message::Close(Some(frame)), limits.write_timeout).await;
        return;
    };
    metrics.connection(1);
    info!(room = room.id(), conn = %conn, role = role.as_str(), "connected");
    let mut session = Session::new(conn, &limits, metrics.clone());

    let close = loop {
        tokio::select! {
            // Shutdown first; then the feed before the socket, so that a client sending fast
            // cannot starve its own feed into a false "too slow".
            biased;
            () = shutdown.cancelled() => {
                // Frames already received are applied before the goodbye (below).
                break Some(closing(close::SERVICE_RESTART, "server restarting"));
            }
            outbound = feed.recv() => {
                let result = match outbound {
                    Ok(first) => session.forward(&mut socket, &mut feed, first, &limits).await,
                    Err(RecvError::Lagged(_)) => Some(session.too_slow("client too slow, resync")),
                    Err(RecvError::Closed) => Some(closing(close::MEETING_ENDED, "this meeting has ended")),
                };
                if let Some(frame) = result {
                    break Some(frame);
                }
            }
            incoming = socket.next() => match incoming {
                Some(Ok(message)) => {
                    if let Some(frame) = session.handle(&mut socket, &room, message, &clock, &limits).await {
                        break Some(frame);
                    }
                }
                Some(Err(e)) => {
                    // Transport errors name the failure and sizes, never the frame's bytes.
                    let detail = e.to_string();
                    debug!(room = room.id(), conn = %conn, error = %detail, "socket error");
                    // The transport refuses text that is not UTF-8 and frames far over the
                    // limit before the handler sees them; tell the two apart for the client.
                    break Some(if detail.contains("UTF-8") || detail.contains("utf-8") {
                        session.metrics.refused("invalid_utf8");
                        closing(close::INVALID_TEXT, "text frame is not valid UTF-8")
                    } else {
                        session.metrics.refused("frame_too_large");
                        closing(close::FRAME_TOO_LARGE, "frame too large or invalid")
                    });
                }
                None => break None,
            },
        }
    };

    match close {
        Some(frame) if frame.code == LOST => {
            // The client is gone, but what it sent before it went is the room's: apply every
            // frame already received.
            info!(room = room.id(), conn = %conn, "connection lost");
            apply_received(&mut socket, &mut session, &room, &clock, &limits).await;
        }
        Some(frame) => {
            info!(room = room.id(), conn = %conn, code = frame.code, reason = frame.reason.as_str(), "closing");
            // Unless the client is closed for what it sent (a bad frame, a flood), what it
            // sent before it saw the close is still the room's: it is applied. Otherwise it is
            // read and dropped.
            let keep = matches!(frame.code, close::SERVICE_RESTART | close::TOO_SLOW | 1000);
            if keep {
                apply_received(&mut socket, &mut session, &room, &clock, &limits).await;
            }
            if write(&mut socket, Message::Close(Some(frame)), limits.write_timeout).await.is_ok() {
                // Wait briefly for the client's own close frame, so that ours is not lost to a
                // reset connection.
                let _ = tokio::time::timeout(limits::CLOSE_LINGER, async {
                    while let Some(Ok(message)) = socket.next().await {
                        match message {
                            Message::Close(_) => break,
                            message @ (Message::Binary(_) | Message::Text(_)) if keep => {
                                let _ = session.handle(&mut socket, &room, message, &clock, &limits).await;
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
    room.leave(conn, clock()).await;
    metrics.connection(-1);
}

/// Applies the frames that have already arrived from the client, without waiting for more,
/// until one of them ends the connection.
async fn apply_received<S, E>(
    socket: &mut S,
    session: &mut Session,
    room: &Room,
    clock: &impl Fn() -> u64,
    limits: &ConnectionLimits,
) where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
{
    while let Some(Some(Ok(message))) = socket.next().now_or_never() {
        match session.handle(socket, room, message, clock, limits).await {
            // Replies cannot reach a client that is gone; its updates still count.
            None => {}
            Some(frame) if frame.code == LOST || frame.code == close::TOO_SLOW => {}
            Some(_) => break,
        }
    }
}

struct Session {
    conn: ConnId,
    /// Whether the client opened the room protocol.
    said_hello: bool,
    metrics: Metrics,
    messages: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
    /// Messages over the rate limit, less one for each message within it.
    strikes: u32,
}

impl Session {
    fn new(conn: ConnId, limits: &ConnectionLimits, metrics: Metrics) -> Self {
        let per_sec = |n: u32| NonZeroU32::new(n.max(1)).expect("at least one");
        let quota = |rate: u32| {
            Quota::per_second(per_sec(rate)).allow_burst(per_sec(rate.saturating_mul(limits::RATE_BURST_SECONDS)))
        };
        Session {
            conn,
            said_hello: false,
            metrics,
            messages: RateLimiter::direct(quota(limits.messages_per_sec)),
            bytes: RateLimiter::direct(quota(limits.bytes_per_sec)),
            strikes: 0,
        }
    }

    fn too_slow(&self, reason: &'static str) -> CloseFrame {
        self.metrics.slow_client_closed();
        closing(close::TOO_SLOW, reason)
    }

    /// Counts a message against the rate limits. Returns a close frame once the client has
    /// been over them for too long, and warns it (at most every few messages) before that.
    async fn rate<S, E>(&mut self, socket: &mut S, bytes: usize, limits: &ConnectionLimits) -> Option<CloseFrame>
    where
        S: Sink<Message, Error = E> + Unpin,
    {
        let size = NonZeroU32::new(u32::try_from(bytes.max(1)).unwrap_or(u32::MAX)).expect("at least one");
        let within = self.messages.check().is_ok() && matches!(self.bytes.check_n(size), Ok(Ok(())));
        if within {
            self.strikes = self.strikes.saturating_sub(1);
            return None;
        }
        self.strikes += 1;
        self.metrics.refused("rate_limited");
        if self.strikes > limits::RATE_LIMIT_STRIKES {
            return Some(closing(close::RATE_LIMITED, "rate limit exceeded"));
        }
        if self.strikes % limits::RATE_LIMIT_WARN_EVERY == 1 {
            return self
                .send_error(socket, ErrorCode::RateLimited, "you are sending too fast; slow down", limits)
                .await;
        }
        None
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
        let size = match &message {
            Message::Binary(b) => b.len(),
            Message::Text(t) => t.len(),
            _ => 0,
        };
        self.metrics.received(size);
        if size > limits.max_frame_bytes {
            self.metrics.refused("frame_too_large");
            return Some(closing(close::FRAME_TOO_LARGE, "frame too large"));
        }
        if matches!(message, Message::Binary(_) | Message::Text(_)) {
            if let Some(close) = self.rate(socket, size, limits).await {
                return Some(close);
            }
        }
        match message {
            Message::Binary(frame) => match room.handle_binary(self.conn, &frame, clock()).await {
                Ok(outcome) => {
                    for frame in outcome.reply {
                        let len = frame.len();
                        if let Err(e) = write(socket, Message::Binary(frame), limits.write_timeout).await {
                            return Some(e.ending(self));
                        }
                        self.metrics.sent(len, None);
                    }
                    if let Some(reason) = outcome.refused {
                        debug!(room = room.id(), conn = %self.conn, "board write refused");
                        self.metrics.refused("read_only");
                        return self.send_error(socket, ErrorCode::ReadOnly, reason, limits).await;
                    }
                    if outcome.board_full {
                        info!(room = room.id(), conn = %self.conn, "board full: update refused");
                        self.metrics.refused("board_full");
                        if !self.said_hello {
                            return Some(closing(close::BOARD_FULL, "the board is full"));
                        }
                        let message = "the board has reached its size limit; the edit was not applied";
                        return self.send_error(socket, ErrorCode::BoardFull, message, limits).await;
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
                    self.send_error(socket, ErrorCode::BadMessage, "not a message of the room protocol", limits).await
                }
                Err(_) => {
                    info!(room = room.id(), conn = %self.conn, "refused text frame before hello");
                    self.metrics.refused("bad_message");
                    Some(closing(close::INVALID_TEXT, "expected a hello message"))
                }
            },
            // Pings are answered by the transport; pongs need nothing.
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => Some(closing(1000, "bye")),
        }
    }

    /// Writes the frame that woke the task and whatever else is queued for this connection,
    /// then flushes once.
    async fn forward<S, E>(
        &self,
        socket: &mut S,
        feed: &mut Receiver<Outbound>,
        first: Outbound,
        limits: &ConnectionLimits,
    ) -> Option<CloseFrame>
    where
        S: Sink<Message, Error = E> + Unpin,
    {
        let mut next = Some(first);
        let mut batched = 0;
        while let Some(outbound) = next.take() {
            if self.wants(&outbound) {
                if let Message::Close(frame) = outbound.message {
                    // The room closes this connection (kicked, declined, meeting ended).
                    let _ = tokio::time::timeout(limits.write_timeout, socket.flush()).await;
                    return Some(frame.unwrap_or_else(|| closing(1000, "closed")));
                }
                let len = match &outbound.message {
                    Message::Binary(b) => b.len(),
                    Message::Text(t) => t.len(),
                    _ => 0,
                };
                let fed = tokio::time::timeout(limits.write_timeout, socket.feed(outbound.message)).await;
                if let Err(e) = written(fed) {
                    return Some(e.ending(self));
                }
                self.metrics.sent(len, Some(outbound.published.elapsed()));
                batched += 1;
            }
            if batched >= limits::WRITE_BATCH_FRAMES {
                break;
            }
            next = match feed.try_recv() {
                Ok(outbound) => Some(outbound),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Lagged(_)) => return Some(self.too_slow("client too slow, resync")),
                Err(TryRecvError::Closed) => return Some(closing(close::MEETING_ENDED, "this meeting has ended")),
            };
        }
        if batched > 0 {
            if let Err(e) = written(tokio::time::timeout(limits.write_timeout, socket.flush()).await) {
                return Some(e.ending(self));
            }
        }
        None
    }

    fn wants(&self, outbound: &Outbound) -> bool {
        outbound.origin != Some(self.conn) && outbound.audience.contains(self.conn)
    }

    async fn send_error<S, E>(
        &self,
        socket: &mut S,
        code: ErrorCode,
        message: &str,
        limits: &ConnectionLimits,
    ) -> Option<CloseFrame>
    where
        S: Sink<Message, Error = E> + Unpin,
    {
        if !self.said_hello {
            return None;
        }
        let text = ServerMessage::Error { code, message: message.to_owned() }.to_json();
        let len = text.len();
        match write(socket, Message::Text(text.into()), limits.write_timeout).await {
            Ok(()) => {
                self.metrics.sent(len, None);
                None
            }
            Err(e) => Some(e.ending(self)),
        }
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

    use super::*;
    use crate::backend::embedded::Embedded;
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

    fn rooms(data: &std::path::Path) -> Rooms {
        let embedded = Arc::new(Embedded::default());
        Rooms::new(Cluster {
            store: embedded.clone(),
            presence: embedded.clone(),
            bus: embedded,
            boards: Arc::new(FileStore::new(data)),
            metrics: Metrics::new(),
            node: "test".into(),
            options: RoomOptions {
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
        })
    }

    #[tokio::test]
    async fn what_a_vanished_client_sent_is_applied() {
        let data = tempfile::tempdir().unwrap();
        let rooms = rooms(data.path());
        let settings = RoomSettings {
            title: None,
            ephemeral: true,
            template: Default::default(),
            lobby: false,
            link_generation: 0,
        };
        let room = rooms.create(settings).await.unwrap();

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
        let limits = ConnectionLimits {
            max_frame_bytes: 1 << 20,
            write_timeout: Duration::from_secs(1),
            messages_per_sec: 100,
            bytes_per_sec: 1 << 20,
        };
        let participant = Participant { role: Role::Member, link_generation: 0, name: "ada".to_owned() };
        let conn = rooms.next_conn_id();
        serve(
            socket,
            room.clone(),
            conn,
            participant,
            crate::unix_now_ms,
            limits,
            Metrics::new(),
            CancellationToken::new(),
        )
        .await;

        let board = room.export_markdown();
        assert!(board.contains("said before leaving"), "{board}");
    }
}
