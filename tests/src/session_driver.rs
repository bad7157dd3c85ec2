//! A native driver for the web client's [`Session`], with real sockets and real time.
//!
//! The browser glue (`client-wasm/src/web.rs`) drives the same sans-IO session with a browser
//! WebSocket and `setTimeout`; [`SessionDriver`] does it with tokio-tungstenite and tokio's
//! timers, so that an end-to-end test can put the client's own connection logic (silence
//! detection, backoff, resume, sync of edits made meanwhile) between a real server and a real
//! network failure. Like `web.rs`, it only performs what the session asks ([`Io`]) and feeds
//! back what happened; every decision stays in the session.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use balint_client::session::{Event, Io, Session};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// What a socket (or probe) of one generation reported.
enum Report {
    Opened,
    Text(String),
    Binary(Vec<u8>),
    Closed(u16),
    Probed(Option<u16>),
}

/// A [`Session`] connected to a room by a background task.
pub struct SessionDriver {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Inner {
    session: Mutex<Session>,
    /// Every event the session reported, in order.
    events: Mutex<Vec<Event>>,
    /// Wakes the task after the test acted on the session.
    wake: Notify,
}

impl SessionDriver {
    /// Starts a session for the room socket at `ws_url` (`ws://host/ws/{room}?token=T&name=N`).
    pub fn start(ws_url: &str) -> Self {
        Self::start_session(ws_url, Session::new(None))
    }

    /// Starts `session` (a sealed room's, say) for the room socket at `ws_url`.
    pub fn start_session(ws_url: &str, session: Session) -> Self {
        let inner =
            Arc::new(Inner { session: Mutex::new(session), events: Mutex::new(Vec::new()), wake: Notify::new() });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(inner.clone(), ws_url.to_owned(), cancel.clone()));
        SessionDriver { inner, cancel, task: Some(task) }
    }

    /// Acts on the session (an edit, a command) and lets the driver perform what it asks.
    pub fn act<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        let result = f(&mut self.inner.session.lock().expect("session"));
        self.inner.wake.notify_one();
        result
    }

    /// Reads the session.
    pub fn read<T>(&self, f: impl FnOnce(&Session) -> T) -> T {
        f(&self.inner.session.lock().expect("session"))
    }

    /// Every event reported so far.
    pub fn events(&self) -> Vec<Event> {
        let mut session = self.inner.session.lock().expect("session");
        let mut events = self.inner.events.lock().expect("events");
        events.extend(std::iter::from_fn(|| session.poll_event()));
        events.clone()
    }

    /// Waits until `condition` holds of the session and its events, failing after `within`.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        mut condition: impl FnMut(&Session, &[Event]) -> bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            {
                // Events are taken here too, so that they always match the session's state:
                // the driver may not have drained what the last input reported yet.
                let mut session = self.inner.session.lock().expect("session");
                let mut events = self.inner.events.lock().expect("events");
                events.extend(std::iter::from_fn(|| session.poll_event()));
                if condition(&session, &events) {
                    return Ok(started.elapsed());
                }
            }
            if started.elapsed() > within {
                bail!("{what}: not true within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the driver and closes its socket.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SessionDriver {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A spread for the reconnect delays; any value in `[0, 1)` is valid.
struct Spread(u64);

impl Spread {
    fn next(&mut self) -> f64 {
        // xorshift64: the spread only needs to vary, not to be unpredictable.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn run(inner: Arc<Inner>, ws_url: String, cancel: CancellationToken) {
    let base = Instant::now();
    // Session time starts at 1 s, so that no deadline is ever 0.
    let now_ms = move || base.elapsed().as_millis() as u64 + 1_000;
    let at = move |ms: u64| base + Duration::from_millis(ms.saturating_sub(1_000));
    let mut spread = Spread(0x9E37_79B9_7F4A_7C15);
    let probe_url = ws_url.replacen("ws://", "http://", 1);

    let (reports_tx, mut reports) = mpsc::unbounded_channel::<(u64, Report)>();
    // The current socket: its generation, and where its outgoing frames go.
    let mut generation = 0u64;
    let mut outgoing: Option<mpsc::UnboundedSender<WsMessage>> = None;
    let mut socket_cancel = cancel.child_token();

    inner.session.lock().expect("session").start(now_ms());
    loop {
        // Perform what the session asks, and record what it reports.
        loop {
            let ios: Vec<Io> = {
                // Events are recorded under the session's lock (session, then events, as
                // everywhere), so that they are recorded in the order the session reported them.
                let mut session = inner.session.lock().expect("session");
                let ios: Vec<Io> = std::iter::from_fn(|| session.poll_io()).collect();
                let mut events = inner.events.lock().expect("events");
                events.extend(std::iter::from_fn(|| session.poll_event()));
                ios
            };
            if ios.is_empty() {
                break;
            }
            for io in ios {
                match io {
                    Io::Connect | Io::Close => {
                        // Forget the old socket: nothing more of it is reported.
                        socket_cancel.cancel();
                        socket_cancel = cancel.child_token();
                        generation += 1;
                        outgoing = None;
                        if io == Io::Connect {
                            let (tx, rx) = mpsc::unbounded_channel();
                            outgoing = Some(tx);
                            tokio::spawn(socket(
                                ws_url.clone(),
                                generation,
                                rx,
                                reports_tx.clone(),
                                socket_cancel.clone(),
                            ));
                        }
                    }
                    Io::Probe => {
                        let (url, tx, generation) = (probe_url.clone(), reports_tx.clone(), generation);
                        let probe_cancel = socket_cancel.clone();
                        tokio::spawn(async move {
                            let status = tokio::select! {
                                () = probe_cancel.cancelled() => return,
                                response = reqwest::get(&url) => response.ok().map(|r| r.status().as_u16()),
                            };
                            let _ = tx.send((generation, Report::Probed(status)));
                        });
                    }
                    Io::SendText(text) => {
                        if let Some(tx) = &outgoing {
                            let _ = tx.send(WsMessage::Text(text.into()));
                        }
                    }
                    Io::SendBinary(bytes) => {
                        if let Some(tx) = &outgoing {
                            let _ = tx.send(WsMessage::Binary(bytes.into()));
                        }
                    }
                }
            }
        }

        let deadline = inner.session.lock().expect("session").poll_timeout();
        let timer = async {
            match deadline {
                Some(ms) => tokio::time::sleep_until(at(ms)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = inner.wake.notified() => {}
            () = timer => {
                let now = now_ms();
                inner.session.lock().expect("session").handle_timeout(now, spread.next());
            }
            Some((from, report)) = reports.recv() => {
                if from != generation {
                    continue;
                }
                let now = now_ms();
                let mut session = inner.session.lock().expect("session");
                match report {
                    Report::Opened => session.handle_open(now),
                    Report::Text(text) => session.handle_text(&text, now),
                    Report::Binary(frame) => {
                        session.handle_binary(&frame, now);
                    }
                    Report::Closed(code) => session.handle_close(code, spread.next(), now),
                    Report::Probed(status) => session.handle_probe(status, spread.next(), now),
                }
            }
        }
    }
}

/// One WebSocket: connects, reports what arrives, sends what the driver queues.
async fn socket(
    url: String,
    generation: u64,
    mut outgoing: mpsc::UnboundedReceiver<WsMessage>,
    reports: mpsc::UnboundedSender<(u64, Report)>,
    cancel: CancellationToken,
) {
    let report = |r: Report| {
        let _ = reports.send((generation, r));
    };
    let connected = tokio::select! {
        () = cancel.cancelled() => return,
        connected = tokio_tungstenite::connect_async(url) => connected,
    };
    let Ok((ws, _)) = connected else {
        report(Report::Closed(1006));
        return;
    };
    report(Report::Opened);
    let (mut write, mut read) = ws.split();
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                // Like a browser dropping a socket: a close frame if it goes out, no waiting.
                let _ = tokio::time::timeout(Duration::from_millis(200), write.send(WsMessage::Close(None))).await;
                return;
            }
            Some(message) = outgoing.recv() => {
                if write.send(message).await.is_err() {
                    report(Report::Closed(1006));
                    return;
                }
            }
            incoming = read.next() => match incoming {
                Some(Ok(WsMessage::Text(text))) => report(Report::Text(text.to_string())),
                Some(Ok(WsMessage::Binary(bytes))) => report(Report::Binary(bytes.to_vec())),
                Some(Ok(WsMessage::Close(frame))) => {
                    report(Report::Closed(frame.map(|f| u16::from(f.code)).unwrap_or(1005)));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    report(Report::Closed(1006));
                    return;
                }
            },
        }
    }
}
