//! `balint-lean-relay`: the lean floor to measure Balint Room against.
//!
//! The least a y-sync relay can do on tokio: `tokio-tungstenite` straight on the accepted
//! `TcpStream` (no axum, no hyper after the handshake), one thread (tokio's current-thread
//! runtime and a `LocalSet`, so rooms are plain `Rc<RefCell<…>>` and nothing is atomic but the
//! reference counts of `Bytes`), each connection one task that owns its whole socket (no split,
//! no lock between a reader and a writer half). No CRDT, no auth, no presence, no limits beyond a
//! queue bound per connection.
//!
//! Behaviour, as `balint-relay`'s: a binary frame that starts with a sync step 1 is answered
//! with an empty sync step 2; every binary frame is forwarded once to each other socket of its
//! room, its bytes shared (`Bytes` clones into each recipient's queue); a recipient feeds
//! everything queued for it and flushes once. Text frames are ignored. `TCP_NODELAY` is set on
//! every accepted socket. Rooms are `ws://ADDR/{room}` (any path names a room).
//!
//! With `--apply-updates`, the relay also keeps a yrs document for each room and applies every
//! update and sync step 2 to it before forwarding (a frame whose update yrs cannot decode or
//! apply is dropped): the least a server that keeps each room's board does per edit, with no
//! check beyond yrs's own. It still answers a sync step 1 with an empty step 2.
//!
//! With `--redis-url`, two or more of these make the lean floor for nodes on Redis: every
//! binary frame from a member (but a sync step 1) is also published on the room's channel,
//! behind the node's random 8-byte id, and every message on a room channel from another node
//! is forwarded to the room's members here, as a member's frame is. One RESP3 connection per
//! node carries the publishes (whatever is queued, as one pipeline) and, as pushes, the
//! messages of one pattern subscription to every room channel; it runs on the relay's thread.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use redis::AsyncConnectionConfig;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Parser)]
#[command(about = "A lean y-sync relay on one thread: the lean floor for balint-bench")]
struct Args {
    /// Address to listen on; port 0 picks a free one (printed on standard output).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Set TCP_NODELAY on every accepted socket.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    nodelay: bool,
    /// Read buffer of each socket. The default is `balint-room`'s (8 KiB), so that both pay
    /// tungstenite's read path alike.
    #[arg(long, default_value_t = 8 * 1024)]
    read_buffer_bytes: usize,
    /// Frames a connection may fall behind before it is dropped.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    /// A Redis to relay through, to and from the other relays on it.
    #[arg(long)]
    redis_url: Option<String>,
    /// Apply every update to a yrs document of its room before forwarding it.
    #[arg(long)]
    apply_updates: bool,
}

/// The prefix of the rooms' channels on Redis.
const CHANNEL_PREFIX: &str = "lean-relay:";

/// An empty sync step 2: message sync (0), step 2 (1), the empty update `[0, 0]`.
const EMPTY_STEP2: [u8; 5] = [0, 1, 2, 0, 0];

/// What the other members of a room see of a connection: its queue and how to wake it.
struct Peer {
    id: u64,
    queue: RefCell<VecDeque<Bytes>>,
    /// Set when the queue overflowed: the connection ends.
    lagged: Cell<bool>,
    ready: Notify,
}

struct Relay {
    rooms: RefCell<HashMap<String, Vec<Rc<Peer>>>>,
    next_id: Cell<u64>,
    queue: usize,
    config: WebSocketConfig,
    /// With Redis: what to publish, and the publisher's wake-up.
    outbox: Option<(RefCell<Outbox>, Notify)>,
    /// With `--apply-updates`: each room's document.
    boards: Option<RefCell<HashMap<String, yrs::Doc>>>,
}

/// Frames to publish, each with its room.
type Outbox = Vec<(String, Bytes)>;

/// The peer id of frames that came from another node.
const FROM_BUS: u64 = 0;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer_bytes.max(1024))
        // Large enough for a late joiner's whole board in one frame.
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20));
    let relay = Rc::new(Relay {
        rooms: RefCell::new(HashMap::new()),
        next_id: Cell::new(1),
        queue: args.queue.max(1),
        config,
        outbox: args.redis_url.as_ref().map(|_| (RefCell::new(Vec::new()), Notify::new())),
        boards: args.apply_updates.then(|| RefCell::new(HashMap::new())),
    });
    if let Some(url) = &args.redis_url {
        start_bus(url, relay.clone()).await?;
    }
    let listener = TcpListener::bind(args.bind).await?;
    println!("balint-lean-relay is running on http://{}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                if args.nodelay {
                    let _ = tcp.set_nodelay(true);
                }
                tokio::task::spawn_local(connection(tcp, relay.clone()));
            }
            // Out of descriptors, say: wait a little rather than spin.
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

// The handshake callback's error type is tungstenite's (an HTTP response), not ours to shrink.
#[allow(clippy::result_large_err)]
async fn connection(tcp: TcpStream, relay: Rc<Relay>) {
    let mut room = String::new();
    let callback = |request: &Request, response: Response| {
        room = request.uri().path().to_owned();
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(relay.config)).await else {
        return;
    };
    let id = relay.next_id.get();
    relay.next_id.set(id + 1);
    let me = Rc::new(Peer { id, queue: RefCell::new(VecDeque::new()), lagged: Cell::new(false), ready: Notify::new() });
    relay.rooms.borrow_mut().entry(room.clone()).or_default().push(me.clone());
    serve(ws, &room, &me, &relay).await;
    let mut rooms = relay.rooms.borrow_mut();
    if let Some(members) = rooms.get_mut(&room) {
        members.retain(|p| p.id != id);
        if members.is_empty() {
            rooms.remove(&room);
            if let Some(boards) = &relay.boards {
                boards.borrow_mut().remove(&room);
            }
        }
    }
}

async fn serve(mut ws: WebSocketStream<TcpStream>, room: &str, me: &Peer, relay: &Relay) {
    loop {
        tokio::select! {
            incoming = ws.next() => {
                let Some(Ok(message)) = incoming else { return };
                match message {
                    Message::Binary(frame) => {
                        if frame.starts_with(&[0, 0])
                            && ws.send(Message::Binary(Bytes::from_static(&EMPTY_STEP2))).await.is_err()
                        {
                            return;
                        }
                        if !applied(relay, room, &frame) {
                            continue;
                        }
                        if !frame.starts_with(&[0, 0]) {
                            if let Some((outbox, wake)) = &relay.outbox {
                                outbox.borrow_mut().push((room.to_owned(), frame.clone()));
                                wake.notify_one();
                            }
                        }
                        fan_out(relay, room, me.id, frame);
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
            () = me.ready.notified() => {
                if me.lagged.get() {
                    return;
                }
                loop {
                    // The borrow ends before the await.
                    let next = me.queue.borrow_mut().pop_front();
                    let Some(frame) = next else { break };
                    if ws.feed(Message::Binary(frame)).await.is_err() {
                        return;
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// With `--apply-updates`, applies the update of a sync step 2 or update frame to its room's
/// document; `false` when yrs could not decode or apply it. Any other frame passes.
fn applied(relay: &Relay, room: &str, frame: &[u8]) -> bool {
    use yrs::encoding::read::{Cursor, Read};
    use yrs::updates::decoder::Decode;
    use yrs::Transact;
    let Some(boards) = &relay.boards else { return true };
    if !(frame.starts_with(&[0, 1]) || frame.starts_with(&[0, 2])) {
        return true;
    }
    let mut cursor = Cursor::new(&frame[2..]);
    let Ok(payload) = cursor.read_buf() else { return false };
    let Ok(update) = yrs::Update::decode_v1(payload) else { return false };
    let mut boards = boards.borrow_mut();
    let doc = boards.entry(room.to_owned()).or_default();
    let mut txn = doc.transact_mut();
    txn.apply_update(update).is_ok()
}

/// Queues `frame` (a reference, not a copy) for every other member of `room` and wakes them.
fn fan_out(relay: &Relay, room: &str, from: u64, frame: Bytes) {
    let rooms = relay.rooms.borrow();
    let Some(members) = rooms.get(room) else { return };
    for peer in members.iter().filter(|p| p.id != from) {
        let mut queue = peer.queue.borrow_mut();
        if queue.len() >= relay.queue {
            peer.lagged.set(true);
        } else {
            queue.push_back(frame.clone());
        }
        drop(queue);
        peer.ready.notify_one();
    }
}

/// Connects to Redis, subscribes to every room channel, and starts the two tasks of the bus:
/// one forwards other nodes' messages to the rooms here, one publishes what is queued.
async fn start_bus(url: &str, relay: Rc<Relay>) -> anyhow::Result<()> {
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let (pushes, mut pushed) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
    let config = AsyncConnectionConfig::new().set_push_sender(pushes);
    // Opened on this thread: the connection's task runs here too.
    let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
    connection.psubscribe(format!("{CHANNEL_PREFIX}*")).await?;
    let node: [u8; 8] = rand::random();

    let incoming = relay.clone();
    tokio::task::spawn_local(async move {
        while let Some(push) = pushed.recv().await {
            // A pattern message: the pattern, the channel, the payload.
            let (PushKind::PMessage, [_, Value::BulkString(channel), Value::BulkString(payload)]) =
                (push.kind, push.data.as_slice())
            else {
                continue;
            };
            if payload.len() < node.len() || payload.starts_with(&node) {
                continue;
            }
            let Some(room) = std::str::from_utf8(channel).ok().and_then(|c| c.strip_prefix(CHANNEL_PREFIX)) else {
                continue;
            };
            fan_out(&incoming, room, FROM_BUS, Bytes::copy_from_slice(&payload[node.len()..]));
        }
    });

    tokio::task::spawn_local(async move {
        let Some((outbox, wake)) = &relay.outbox else { return };
        loop {
            wake.notified().await;
            let queued = std::mem::take(&mut *outbox.borrow_mut());
            if queued.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (room, frame) in queued {
                let mut payload = Vec::with_capacity(node.len() + frame.len());
                payload.extend_from_slice(&node);
                payload.extend_from_slice(&frame);
                pipe.publish(format!("{CHANNEL_PREFIX}{room}"), payload).ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut connection).await {
                eprintln!("publish: {e}");
            }
        }
    });
    Ok(())
}
