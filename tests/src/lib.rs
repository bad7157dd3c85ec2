//! Harness for end-to-end tests: a real `balint-room` server on `127.0.0.1:0` and real
//! WebSocket clients whose board is a yrs document.
//!
//! Every wait is on a condition with a deadline, never a bare sleep.
//!
//! - [`process`]: real `balint-room` processes and a private `redis-server`, for cluster tests;
//! - [`proxy`]: a loopback TCP proxy that can stall its connections without closing them;
//! - [`sealed_client`]: a client of sealed rooms, sealing with the web client's own code;
//! - [`session_driver`]: the web client's own sans-IO session, driven natively with real
//!   sockets and real time.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use balint_proto::room::{ErrorCode, Released, Role, RoomState, ServerMessage};
use balint_proto::sync::{self, Message, SyncMessage};
use balint_server::{Config, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, Text, TextRef, Transact, Update};

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A server running in this process on an ephemeral loopback port.
pub struct TestServer {
    /// The bound address.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data_dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after letting the test adjust its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests(data_dir.path().to_path_buf());
        adjust(&mut config);
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr().expect("address");
        let shutdown = server.shutdown_token();
        let handle = tokio::spawn(server.run());
        TestServer { addr, shutdown, handle: Some(handle), _data_dir: data_dir }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a room with `body` and returns the JSON answer.
    pub async fn create_room(&self, body: Value) -> Room {
        let response = reqwest::Client::new()
            .post(format!("{}/api/rooms", self.base()))
            .json(&body)
            .send()
            .await
            .expect("create room");
        assert_eq!(response.status(), 201, "room creation");
        let json: Value = response.json().await.expect("json");
        Room {
            id: json["room"].as_str().expect("room").to_owned(),
            leader_token: json["leader_token"].as_str().expect("leader token").to_owned(),
            invite_token: json["invite_token"].as_str().expect("invite token").to_owned(),
            observer_token: json["observer_token"].as_str().expect("observer token").to_owned(),
            json,
        }
    }

    /// The WebSocket URL of `room` for `token` and `name`.
    pub fn ws_url(&self, room: &str, token: &str, name: &str) -> String {
        format!("ws://{}/ws/{room}?token={token}&name={name}", self.addr)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server run");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A created room.
#[derive(Debug, Clone)]
pub struct Room {
    /// The room id.
    pub id: String,
    /// The leader's token.
    pub leader_token: String,
    /// The members' token.
    pub invite_token: String,
    /// The observers' token.
    pub observer_token: String,
    /// The whole answer.
    pub json: Value,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code.
    pub code: u16,
    /// The close reason.
    pub reason: String,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A y-sync client with its own yrs document, like a browser tab running Yjs.
pub struct YClient {
    /// The client's copy of the board.
    pub doc: Doc,
    socket: Socket,
    /// Awareness states seen, by client id.
    pub awareness: HashMap<u64, String>,
    /// Room-protocol messages received, in order.
    pub texts: Vec<ServerMessage>,
    /// Set once the server closed the connection.
    pub closed: Option<Closed>,
    /// Binary (y-sync) frames received, of any kind.
    pub binary_frames: usize,
    synced: bool,
}

impl YClient {
    /// Connects and completes the initial sync (the server's step 2 has been applied).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with_doc(url, Doc::new()).await
    }

    /// Connects with an existing document, as a client that edited offline would.
    pub async fn connect_with_doc(url: &str, doc: Doc) -> anyhow::Result<Self> {
        let mut client = Self::open(url, doc).await?;
        client.send_step1().await?;
        client.wait_until(|c| c.synced).await?;
        Ok(client)
    }

    /// Connects as a stock Yjs client and sends its sync step 1 without waiting for an answer,
    /// for a client that the lobby will hold.
    pub async fn connect_pending(url: &str) -> anyhow::Result<Self> {
        let mut client = Self::open(url, Doc::new()).await?;
        client.send_step1().await?;
        Ok(client)
    }

    async fn open(url: &str, doc: Doc) -> anyhow::Result<Self> {
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(YClient {
            doc,
            socket,
            awareness: HashMap::new(),
            texts: Vec::new(),
            closed: None,
            binary_frames: 0,
            synced: false,
        })
    }

    async fn send_step1(&mut self) -> anyhow::Result<()> {
        let step1 = sync::encode_step1(&self.doc.transact().state_vector());
        self.send_binary(step1.to_vec()).await
    }

    /// Joins as a room-protocol client: `{"type":"hello"}` is the first frame, before any
    /// binary one. Waits for `welcome` and the initial board sync; or, when the lobby holds
    /// the member, for `waiting` only (the sync step 1 is sent but stays unanswered until a
    /// leader admits the member).
    pub async fn join(url: &str) -> anyhow::Result<Self> {
        Self::join_resuming(url, None).await
    }

    /// [`Self::join`], continuing the membership of `resume` (a token from `welcome` or
    /// `waiting`).
    pub async fn join_resuming(url: &str, resume: Option<&str>) -> anyhow::Result<Self> {
        let mut client = Self::open(url, Doc::new()).await?;
        client.hello(resume).await?;
        client.wait_until(|c| c.member_id().is_some()).await?;
        client.send_step1().await?;
        if client.is_admitted() {
            client.wait_until(|c| c.synced).await?;
        }
        Ok(client)
    }

    /// Opens a connection and sends `hello` (with a resume token if given), without waiting
    /// for an answer: for a client the server may refuse.
    pub async fn hello_only(url: &str, resume: Option<&str>) -> anyhow::Result<Self> {
        let mut client = Self::open(url, Doc::new()).await?;
        client.hello(resume).await?;
        Ok(client)
    }

    /// What the latest `welcome` said a lapsed membership released, if it said so.
    pub fn released(&self) -> Option<&Released> {
        self.texts.iter().rev().find_map(|m| match m {
            ServerMessage::Welcome { released, .. } => Some(released.as_ref()),
            _ => None,
        })?
    }

    /// Sends `hello`, with a resume token if given.
    pub async fn hello(&mut self, resume: Option<&str>) -> anyhow::Result<()> {
        let hello = match resume {
            Some(token) => serde_json::json!({"type": "hello", "resume": token}),
            None => serde_json::json!({"type": "hello"}),
        };
        self.command(hello).await
    }

    /// Sends a room-protocol message as a text frame.
    pub async fn command(&mut self, json: Value) -> anyhow::Result<()> {
        self.send_text(&json.to_string()).await
    }

    /// Sends a command that the server must refuse, and returns the refusal's code.
    pub async fn refused(&mut self, json: Value) -> anyhow::Result<ErrorCode> {
        let before = self.errors().len();
        self.command(json).await?;
        self.wait_until(|c| c.errors().len() > before).await?;
        Ok(self.errors()[before])
    }

    /// Whether the initial board sync has completed (the server's step 2 was applied).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The latest `welcome` or `waiting`: member id, resume token, and the role when welcomed.
    fn introduction(&self) -> Option<(&str, &str, Option<Role>)> {
        self.texts.iter().rev().find_map(|m| match m {
            ServerMessage::Welcome { member_id, resume_token, role, .. } => {
                Some((member_id.as_str(), resume_token.as_str(), Some(*role)))
            }
            ServerMessage::Waiting { member_id, resume_token } => {
                Some((member_id.as_str(), resume_token.as_str(), None))
            }
            _ => None,
        })
    }

    /// This member's id, from `welcome` or `waiting`.
    pub fn member_id(&self) -> Option<&str> {
        self.introduction().map(|(id, _, _)| id)
    }

    /// This member's resume token, from `welcome` or `waiting`.
    pub fn resume_token(&self) -> Option<&str> {
        self.introduction().map(|(_, token, _)| token)
    }

    /// This member's role, once welcomed.
    pub fn role(&self) -> Option<Role> {
        self.introduction().and_then(|(_, _, role)| role)
    }

    /// Whether the latest introduction is a `welcome` (not `waiting`).
    pub fn is_admitted(&self) -> bool {
        self.role().is_some()
    }

    /// The room state of highest version seen in `welcome` and `state` messages.
    pub fn latest_state(&self) -> Option<&RoomState> {
        self.states().max_by_key(|s| s.version)
    }

    /// Every room state received, in order of arrival.
    pub fn states(&self) -> impl Iterator<Item = &RoomState> {
        self.texts.iter().filter_map(|m| match m {
            ServerMessage::Welcome { state, .. } | ServerMessage::State { state } => Some(state),
            _ => None,
        })
    }

    /// Waits until the latest room state satisfies `condition`, and returns it.
    pub async fn wait_state(&mut self, condition: impl Fn(&RoomState) -> bool) -> anyhow::Result<RoomState> {
        self.wait_until(|c| c.latest_state().is_some_and(&condition)).await?;
        Ok(self.latest_state().cloned().expect("checked above"))
    }

    /// Waits until this client has seen the room state of `version` or a later one, and
    /// returns the latest.
    pub async fn wait_version(&mut self, version: u64) -> anyhow::Result<RoomState> {
        self.wait_state(|s| s.version >= version).await
    }

    /// The codes of the `error` messages received, in order.
    pub fn errors(&self) -> Vec<ErrorCode> {
        self.texts
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Error { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }

    /// The `notes` text of this client's board.
    pub fn notes(&self) -> String {
        let text = self.notes_ref();
        let value = text.get_string(&self.doc.transact());
        value
    }

    /// The length of the notes, without copying them.
    pub fn notes_len(&self) -> u32 {
        self.notes_ref().len(&self.doc.transact())
    }

    fn notes_ref(&self) -> TextRef {
        self.doc.get_or_insert_text("notes")
    }

    /// Appends `text` to the notes and sends the update.
    pub async fn type_text(&mut self, text: &str) -> anyhow::Result<()> {
        let end = self.notes_len();
        self.insert_text(end, text).await
    }

    /// Inserts `text` into the notes at `index` and sends the update.
    pub async fn insert_text(&mut self, index: u32, text: &str) -> anyhow::Result<()> {
        let notes = self.notes_ref();
        let before = self.doc.transact().state_vector();
        notes.insert(&mut self.doc.transact_mut(), index, text);
        let update = self.doc.transact().encode_state_as_update_v1(&before);
        self.send_binary(sync::encode_update(&update).to_vec()).await
    }

    /// Sends an awareness state for this client's id.
    pub async fn set_awareness(&mut self, clock: u32, json: &str) -> anyhow::Result<()> {
        let update = sync::AwarenessUpdate {
            clients: HashMap::from([(self.doc.client_id(), sync::AwarenessUpdateEntry { clock, json: json.into() })]),
        };
        self.send_binary(sync::encode_awareness(&update).to_vec()).await
    }

    /// Sends raw bytes as a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.socket.send(WsMessage::Binary(bytes.into())).await?;
        Ok(())
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.socket.send(WsMessage::Text(text.into())).await?;
        Ok(())
    }

    /// Reads frames until `condition` holds, failing after [`DEADLINE`].
    pub async fn wait_until(&mut self, condition: impl FnMut(&Self) -> bool) -> anyhow::Result<()> {
        self.wait_until_within(DEADLINE, condition).await
    }

    /// Reads frames until `condition` holds, failing after `limit`.
    pub async fn wait_until_within(
        &mut self,
        limit: Duration,
        mut condition: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while !condition(self) {
            if self.closed.is_some() {
                bail!("connection closed before the condition held: {:?}", self.closed);
            }
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| anyhow!("deadline passed waiting for a condition"))?;
            match next {
                Some(Ok(message)) => self.receive(message).await?,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => {
                    self.closed.get_or_insert(Closed { code: 1006, reason: "no close frame".into() });
                }
            }
        }
        Ok(())
    }

    /// Waits until the server closes the connection and returns the close frame.
    pub async fn wait_closed(&mut self) -> anyhow::Result<Closed> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.closed.is_none() {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| anyhow!("deadline passed waiting for a close"))?;
            match next {
                Some(Ok(message)) => self.receive(message).await?,
                Some(Err(tungstenite::Error::ConnectionClosed)) | None => {
                    self.closed.get_or_insert(Closed { code: 1006, reason: "no close frame".into() });
                }
                Some(Err(e)) => {
                    self.closed.get_or_insert(Closed { code: 1006, reason: e.to_string() });
                }
            }
        }
        Ok(self.closed.clone().expect("set above"))
    }

    /// Closes the connection from the client side.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    /// Drops the TCP connection without a close handshake, like a lost network.
    pub fn drop_connection(self) {
        drop(self.socket);
    }

    async fn receive(&mut self, message: WsMessage) -> anyhow::Result<()> {
        match message {
            WsMessage::Binary(frame) => {
                self.binary_frames += 1;
                for message in sync::decode_frame(&frame).context("server sent a bad frame")? {
                    self.apply(message).await?;
                }
            }
            WsMessage::Text(text) => {
                let parsed: ServerMessage = serde_json::from_str(text.as_str())
                    .with_context(|| "server sent an unknown text message".to_string())?;
                self.texts.push(parsed);
            }
            WsMessage::Close(frame) => {
                let (code, reason) =
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                self.closed = Some(Closed { code, reason });
            }
            _ => {}
        }
        Ok(())
    }

    async fn apply(&mut self, message: Message) -> anyhow::Result<()> {
        match message {
            Message::Sync(SyncMessage::SyncStep1(remote)) => {
                let update = self.doc.transact().encode_state_as_update_v1(&remote);
                self.send_binary(sync::encode_step2(&update).to_vec()).await?;
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => {
                self.doc.transact_mut().apply_update(Update::decode_v1(&update)?)?;
                self.synced = true;
            }
            Message::Sync(SyncMessage::Update(update)) => {
                self.doc.transact_mut().apply_update(Update::decode_v1(&update)?)?;
            }
            Message::Awareness(update) => {
                for (id, entry) in update.clients {
                    if entry.json.as_ref() == "null" {
                        self.awareness.remove(&id.get());
                    } else {
                        self.awareness.insert(id.get(), entry.json.to_string());
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether `code` is the close code a client saw.
pub fn close_code(code: CloseCode) -> u16 {
    u16::from(code)
}

/// The status of a real WebSocket handshake, as a browser would see it: 101 when it upgrades,
/// else the HTTP status of the refusal.
pub async fn handshake_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected handshake failure: {e}"),
    }
}

/// Runs `f` repeatedly until it returns true, failing after [`DEADLINE`].
pub async fn eventually<F, Fut>(mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !f().await {
        if tokio::time::Instant::now() > deadline {
            bail!("condition not met before the deadline");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
pub mod process;
pub mod proxy;
pub mod sealed_client;
pub mod session_driver;
pub mod stock;
