//! `balint-relay`: the floor to measure Balint Room against.
//!
//! The same stack as the server (tokio, axum WebSockets, one `tokio::sync::broadcast` feed per
//! room carrying shared `Bytes`), and nothing else: no CRDT, no auth, no presence, no limits
//! beyond the feed's capacity. A binary frame that starts with a sync step 1 is answered with an
//! empty sync step 2; every binary frame is forwarded to the other sockets of its room. Text
//! frames are ignored. Rooms are `ws://ADDR/{room}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

#[derive(Parser)]
#[command(about = "A bare y-sync relay: the floor for balint-bench")]
struct Args {
    /// Address to listen on; port 0 picks a free one (printed on standard output).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Set TCP_NODELAY on every accepted socket (as the `ws` library under y-websocket does),
    /// so that small frames are not held back by Nagle's algorithm. `--nodelay false` keeps the
    /// kernel's default, as `balint-room` does today.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    nodelay: bool,
    /// Read buffer of each socket. The default is axum's (128 KiB), as `balint-room` uses;
    /// tungstenite zero-fills the whole buffer on every read, so it is resident per connection.
    #[arg(long, default_value_t = 128 * 1024)]
    read_buffer_bytes: usize,
    /// Frames a connection may fall behind before it is dropped.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
}

/// A frame on a room's feed, with the connection it came from (not sent back to it).
type Frame = (u64, Bytes);

struct Relay {
    read_buffer_bytes: usize,
    rooms: Mutex<HashMap<String, (broadcast::Sender<Frame>, usize)>>,
    next_conn: AtomicU64,
    queue: usize,
}

/// An empty sync step 2: message sync (0), step 2 (1), the empty update `[0, 0]`.
const EMPTY_STEP2: [u8; 5] = [0, 1, 2, 0, 0];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let relay = Arc::new(Relay {
        read_buffer_bytes: args.read_buffer_bytes.max(1024),
        rooms: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        queue: args.queue.max(1),
    });
    let app = Router::new().route("/{room}", get(upgrade)).with_state(relay);
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    println!("balint-relay is running on http://{}", listener.local_addr()?);
    let nodelay = args.nodelay;
    let listener = listener.tap_io(move |tcp| {
        if nodelay {
            let _ = tcp.set_nodelay(true);
        }
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn upgrade(ws: WebSocketUpgrade, Path(room): Path<String>, State(relay): State<Arc<Relay>>) -> Response {
    // Large enough for a late joiner's whole board in one frame.
    ws.read_buffer_size(relay.read_buffer_bytes)
        .max_message_size(256 << 20)
        .max_frame_size(256 << 20)
        .on_upgrade(move |socket| serve(socket, room, relay))
}

async fn serve(socket: WebSocket, room: String, relay: Arc<Relay>) {
    let id = relay.next_conn.fetch_add(1, Ordering::Relaxed);
    let (feed_tx, mut feed) = {
        let mut rooms = relay.rooms.lock().expect("rooms lock");
        let entry = rooms.entry(room.clone()).or_insert_with(|| (broadcast::channel(relay.queue).0, 0));
        entry.1 += 1;
        (entry.0.clone(), entry.0.subscribe())
    };
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let Some(Ok(message)) = incoming else { break };
                match message {
                    Message::Binary(frame) => {
                        if frame.starts_with(&[0, 0]) && sink.send(Message::Binary(Bytes::from_static(&EMPTY_STEP2))).await.is_err() {
                            break;
                        }
                        let _ = feed_tx.send((id, frame));
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            frame = feed.recv() => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => break,
                };
                if !forward(&mut sink, &mut feed, id, frame).await {
                    break;
                }
            }
        }
    }
    let mut rooms = relay.rooms.lock().expect("rooms lock");
    if let Some(entry) = rooms.get_mut(&room) {
        entry.1 -= 1;
        if entry.1 == 0 {
            rooms.remove(&room);
        }
    }
}

/// Feeds `first` and whatever else is already queued, then flushes once.
async fn forward<S>(sink: &mut S, feed: &mut broadcast::Receiver<Frame>, id: u64, first: Frame) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut next = Some(first);
    while let Some((from, frame)) = next.take() {
        if from != id && sink.feed(Message::Binary(frame)).await.is_err() {
            return false;
        }
        next = match feed.try_recv() {
            Ok(frame) => Some(frame),
            Err(TryRecvError::Empty) => None,
            Err(_) => return false,
        };
    }
    sink.flush().await.is_ok()
}
