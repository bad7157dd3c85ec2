//! A client of sealed rooms for end-to-end tests: a raw WebSocket, the room key and a yrs
//! document, sealing with the web client's own `seal` module.

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context};
use balint_client::seal::{self, RoomKey, Sequence};
use balint_proto::room::{ErrorCode, RoomState, ServerMessage};
use balint_proto::rules::Reason;
use balint_proto::sealed::{self, Entry, Frame, Kind};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

use crate::DEADLINE;

/// A client of sealed rooms: a raw WebSocket, the room key and a yrs document.
pub struct SealedClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    room: String,
    key: RoomKey,
    seq: Sequence,
    doc: Doc,
    pub member_id: String,
    /// Every sealed frame received, decoded.
    pub frames: Vec<Frame>,
    /// Every room-protocol message received.
    pub texts: Vec<ServerMessage>,
    /// The `(sender, seq)` of every update in the document: sent or applied.
    pub applied: Vec<(String, u64)>,
}

impl SealedClient {
    /// Connects to the server at `addr` with `sealed=1` (and no name), says hello and waits
    /// for `welcome`.
    pub async fn join(addr: SocketAddr, room: &str, token: &str, key: &RoomKey) -> anyhow::Result<Self> {
        let url = format!("ws://{addr}/ws/{room}?token={token}&sealed=1");
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        let mut client = SealedClient {
            socket,
            room: room.to_owned(),
            key: key.clone(),
            seq: Sequence::new()?,
            doc: Doc::new(),
            member_id: String::new(),
            frames: Vec::new(),
            texts: Vec::new(),
            applied: Vec::new(),
        };
        client.socket.send(WsMessage::Text(r#"{"type":"hello"}"#.into())).await?;
        client
            .wait(|c| c.texts.iter().any(|m| matches!(m, ServerMessage::Welcome { .. })))
            .await
            .context("no welcome")?;
        client.member_id = client
            .texts
            .iter()
            .find_map(|m| match m {
                ServerMessage::Welcome { member_id, .. } => Some(member_id.clone()),
                _ => None,
            })
            .expect("waited for it");
        Ok(client)
    }

    /// Types `text` at the start of the notes, seals the change and sends it.
    pub async fn write(&mut self, text: &str) -> anyhow::Result<Vec<u8>> {
        let notes = self.doc.get_or_insert_text("notes");
        self.change(|doc| notes.insert(&mut doc.transact_mut(), 0, text)).await
    }

    /// Deletes `len` characters of the notes from `index`, seals the change and sends it.
    pub async fn delete(&mut self, index: u32, len: u32) -> anyhow::Result<Vec<u8>> {
        let notes = self.doc.get_or_insert_text("notes");
        self.change(|doc| notes.remove_range(&mut doc.transact_mut(), index, len)).await
    }

    pub async fn change(&mut self, edit: impl FnOnce(&Doc)) -> anyhow::Result<Vec<u8>> {
        let before = self.doc.transact().state_vector();
        edit(&self.doc);
        let update = self.doc.transact().encode_diff_v1(&before);
        let seq = self.seq.next_seq()?;
        let sealed = seal::seal(&self.key, &self.room, &self.member_id, seq, Kind::Update, &update)?;
        let frame = sealed::encode_client_entry(&sealed);
        self.socket.send(WsMessage::Binary(frame.clone())).await?;
        self.applied.push((self.member_id.clone(), seq));
        Ok(frame.to_vec())
    }

    /// Seals the whole board as a snapshot of everything applied so far, and uploads it.
    pub async fn compact(&mut self) -> anyhow::Result<Vec<u8>> {
        let state = self.doc.transact().encode_state_as_update_v1(&StateVector::default());
        let seq = self.seq.next_seq()?;
        let sealed = seal::seal(&self.key, &self.room, &self.member_id, seq, Kind::Snapshot, &state)?;
        let upload = sealed::SnapshotUpload { covers: std::mem::take(&mut self.applied), sealed };
        self.applied.push((self.member_id.clone(), seq));
        self.socket.send(WsMessage::Binary(sealed::encode_snapshot(&upload))).await?;
        Ok(state)
    }

    pub fn notes(&self) -> String {
        self.doc.get_or_insert_text("notes").get_string(&self.doc.transact())
    }

    /// Adds an observation card `{id, author, phase, body, created_ms}`, as the web client
    /// builds one, seals the change and sends it.
    pub async fn add_card(&mut self, author: &str, phase: &str, body: &str) -> anyhow::Result<Vec<u8>> {
        self.change(|doc| crate::process::push_card(doc, author, phase, body)).await
    }

    /// The bodies of the observation cards in this client's board.
    pub fn card_bodies(&self) -> Vec<String> {
        use yrs::{Array, Map, Out};
        let observations = self.doc.get_or_insert_array("observations");
        let txn = self.doc.transact();
        observations
            .iter(&txn)
            .filter_map(|card| match card {
                Out::YMap(card) => match card.get(&txn, "body") {
                    Some(Out::YText(body)) => Some(body.get_string(&txn)),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Opens an entry and applies it: only what authenticates and passes the bounded walk
    /// reaches yrs.
    pub fn apply(&mut self, entry: &Entry) -> anyhow::Result<()> {
        let update = seal::open_update(&self.key, &self.room, entry)?;
        self.doc.transact_mut().apply_update(Update::decode_v1(&update)?)?;
        self.applied.push((entry.sender.clone(), entry.sealed.seq));
        Ok(())
    }

    /// Reads frames until `condition` holds, applying every entry it receives.
    pub async fn wait(&mut self, condition: impl Fn(&Self) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !condition(self) {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| anyhow!("deadline passed"))?
                .ok_or_else(|| anyhow!("connection closed"))??;
            match message {
                WsMessage::Binary(bytes) => {
                    let frame = sealed::decode(&bytes).context("the server sent a bad sealed frame")?;
                    let entries = match &frame {
                        Frame::Entry(entry) => vec![entry.clone()],
                        Frame::Log(entries) => entries.clone(),
                        other => bail!("the server sent a client's frame type: {other:?}"),
                    };
                    for entry in entries.iter().filter(|e| matches!(e.sealed.kind, Kind::Update | Kind::Snapshot)) {
                        self.apply(entry)?;
                    }
                    self.frames.push(frame);
                }
                WsMessage::Text(text) => self.texts.push(serde_json::from_str(text.as_str())?),
                WsMessage::Close(frame) => bail!("closed: {frame:?}"),
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads frames until the server closes the connection, and returns the close code.
    pub async fn wait_closed(&mut self) -> anyhow::Result<u16> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| anyhow!("deadline passed"))?
                .ok_or_else(|| anyhow!("connection closed without a close frame"))??;
            if let WsMessage::Close(frame) = message {
                return Ok(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
            }
        }
    }

    pub fn logs(&self) -> Vec<&Vec<Entry>> {
        self.frames.iter().filter_map(|f| if let Frame::Log(entries) = f { Some(entries) } else { None }).collect()
    }

    pub fn refusals(&self) -> Vec<(ErrorCode, Option<Reason>)> {
        self.texts
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Error { code, reason, .. } => Some((*code, *reason)),
                _ => None,
            })
            .collect()
    }

    pub async fn command(&mut self, message: serde_json::Value) -> anyhow::Result<()> {
        self.socket.send(WsMessage::Text(message.to_string().into())).await?;
        Ok(())
    }

    /// Sends our display name, sealed with our member id and a fresh sequence number.
    pub async fn set_name(&mut self, name: &str) -> anyhow::Result<()> {
        let seq = self.seq.next_seq()?;
        let sealed_name = seal::seal_text(&self.key, &self.room, &self.member_id, seq, Kind::Name, name)?;
        self.command(serde_json::json!({"type": "set_sealed_name", "sealed_name": sealed_name})).await
    }

    /// The latest room state received.
    pub fn state(&self) -> Option<&RoomState> {
        self.texts.iter().rev().find_map(|m| match m {
            ServerMessage::Welcome { state, .. } | ServerMessage::State { state } => Some(state),
            _ => None,
        })
    }

    /// The members' names in the latest state, opened with the key: `None` for a name not sent
    /// yet or that does not open.
    pub fn names(&self) -> Vec<Option<String>> {
        let Some(state) = self.state() else { return Vec::new() };
        state
            .members
            .iter()
            .map(|m| m.sealed_name.as_deref().and_then(|v| seal::open_name(&self.key, &self.room, &m.id, v).ok()))
            .collect()
    }

    /// The title in the latest state, opened with the key.
    pub fn title(&self) -> Option<String> {
        let value = self.state()?.sealed_title.clone()?;
        seal::open_title(&self.key, &self.room, &value).ok().flatten()
    }
}

/// Seals `title` for the room `room` under `key`, as the creating browser does.
pub fn seal_title(key: &RoomKey, room: &str, title: &str) -> String {
    seal::seal_text(key, room, "", 0, Kind::Title, title).expect("sealing works")
}
