//! A TCP proxy on the loopback interface that can stall, for tests of real-network failures.
//!
//! [`StallProxy`] forwards each connection it accepts to the server. [`StallProxy::stall`]
//! makes every connection stop forwarding in both directions *without closing* either side,
//! the way a laptop that sleeps or Wi-Fi that stops forwarding leaves a TCP connection: both
//! ends still think it is open, and nothing arrives. Connections accepted while stalled are
//! held the same way. [`StallProxy::heal`] lets *new* connections through again, like a network
//! that comes back: the connections that stalled stay dead, as they would behind a NAT whose
//! mapping expired, and only a client that notices and reconnects gets through.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A stallable proxy in front of one server address.
pub struct StallProxy {
    /// The address clients connect to instead of the server's.
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

struct Shared {
    /// Whether a connection accepted now is held instead of forwarded.
    stalled: bool,
    /// One switch per forwarded connection; `true` freezes it for good.
    switches: Vec<watch::Sender<bool>>,
}

impl StallProxy {
    /// Starts a proxy on `127.0.0.1:0` in front of `upstream` (a loopback address).
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(upstream.ip().is_loopback(), "the proxy only forwards to loopback");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared { stalled: false, switches: Vec::new() }));
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (accept_shared, accept_cancel, accept_tasks) = (shared.clone(), cancel.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let client = tokio::select! {
                    () = accept_cancel.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                };
                let (stalled, switch) = {
                    let mut shared = accept_shared.lock().expect("proxy state");
                    let (switch, frozen) = watch::channel(false);
                    shared.switches.push(switch);
                    (shared.stalled, frozen)
                };
                let cancel = accept_cancel.clone();
                accept_tasks.spawn(async move {
                    if stalled {
                        // Accepted, and then nothing: held open until the test ends.
                        cancel.cancelled().await;
                        drop(client);
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        forward(client_read, server_write, switch.clone(), cancel.clone()),
                        forward(server_read, client_write, switch, cancel),
                    );
                });
            }
        });
        Ok(StallProxy { addr, shared, cancel, tasks })
    }

    /// Stops forwarding on every connection, in both directions, without closing any; new
    /// connections are accepted and held too.
    pub fn stall(&self) {
        let mut shared = self.shared.lock().expect("proxy state");
        shared.stalled = true;
        for switch in &shared.switches {
            let _ = switch.send(true);
        }
    }

    /// Forwards new connections again. The connections that stalled stay stalled.
    pub fn heal(&self) {
        self.shared.lock().expect("proxy state").stalled = false;
    }

    /// Closes every connection and stops the proxy.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Copies bytes from `from` to `to` until either side closes, or until the switch freezes the
/// connection: then neither reads nor writes again, and holds both sockets open until `cancel`.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            () = cancel.cancelled() => return,
            _ = frozen.wait_for(|frozen| *frozen) => break,
            read = from.read(&mut buffer) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if *frozen.borrow() {
            // Read just as the stall began: these bytes never arrive.
            break;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
    // Stalled: keep both halves open and silent.
    cancel.cancelled().await;
    drop((from, to));
}
