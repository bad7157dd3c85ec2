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

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
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
}

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
}

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
    let relay =
        Rc::new(Relay { rooms: RefCell::new(HashMap::new()), next_id: Cell::new(1), queue: args.queue.max(1), config });
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
