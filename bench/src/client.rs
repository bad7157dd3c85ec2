//! One simulated member: a real WebSocket client with its own yrs document, speaking y-sync
//! (and `hello` for Balint Room), or, in a sealed room, sealed frames (`docs/PROTOCOL.md` §13):
//! every edit sealed with the room key as a kind-1 entry, every forwarded entry opened
//! (authenticated, decrypted and checked by proto's bounded walk) before yrs applies it.
//!
//! Every edit appends [`EDIT_LEN`] ASCII characters to `notes`, so edit number `k` of a member
//! ends at clock `(k + 1) * EDIT_LEN` of that member's client id. The sender writes the time of
//! each edit into [`Shared::sent`] just before sending it; a receiver, after applying a frame,
//! compares its document's state vector with what it had seen and counts every edit the frame
//! completed: one delivery each, with its latency. An edit can therefore be counted at most once
//! per receiver, and only once it is really applied (its causal predecessors included). A
//! sealed member counts the same way, after opening and applying an entry.
//!
//! Against Hocuspocus, a member speaks the same y-sync in Hocuspocus's framing (see
//! [`hocuspocus`]): every message it sends is prefixed with the document name, it sends an
//! authentication message (an empty token) before its sync step 1, and of what it receives it
//! reads the sync messages (the same edits, applied and counted the same way) and skips the
//! rest (authentication answers, sync status acknowledgements, awareness).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use balint_client::seal::{self, RoomKey, Sequence};
use balint_proto::room::ServerMessage;
use balint_proto::sealed::{self, Frame as SealedFrame, Kind as SealedKind};
use balint_proto::sync::{self, Message as YMessage, SyncMessage};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, Text, Transact, Update};

/// Characters appended by one edit.
pub const EDIT_LEN: u32 = 8;

/// What every member of a run shares: the send times of every edit, and counters.
pub struct Shared {
    /// The run's clock origin.
    pub epoch: Instant,
    /// Per member (index = client id - 1): the send time of each edit, in µs since `epoch`.
    pub sent: Vec<Mutex<Vec<u64>>>,
    /// Deliveries counted so far.
    pub delivered: AtomicU64,
    /// Edits sent so far.
    pub edits: AtomicU64,
    /// What went wrong (closes, refusals), for the report.
    pub problems: Mutex<Vec<String>>,
}

impl Shared {
    /// State for `members` members.
    pub fn new(members: usize) -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            sent: (0..members).map(|_| Mutex::new(Vec::new())).collect(),
            delivered: AtomicU64::new(0),
            edits: AtomicU64::new(0),
            problems: Mutex::new(Vec::new()),
        })
    }

    /// µs since the epoch.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Records a problem (kept to the first 20).
    pub fn problem(&self, what: String) {
        let mut problems = self.problems.lock().expect("problems lock");
        if problems.len() < 20 {
            problems.push(what);
        }
    }
}

/// A sealed room as its members know it: its id (bound into every entry's associated data) and
/// the room key, drawn by the generator. The key never goes to the server.
#[derive(Debug, Clone)]
pub struct SealedRoom {
    /// The room id, as in the URL.
    pub room: String,
    /// The room key.
    pub key: RoomKey,
}

/// A sealed member's sealing state.
struct Sealer {
    room: SealedRoom,
    /// This session's sequence numbers.
    seq: Sequence,
    /// The member id the server assigned in `welcome`: the sender every entry is sealed with.
    member_id: Option<String>,
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
/// The receiving half of a member's socket.
pub type Stream = SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>;

/// A member, minus the receiving half of its socket (kept apart so that a `select!` can wait
/// on the socket while the member is borrowed by another branch).
pub struct Member {
    sink: Sink,
    /// Its document.
    pub doc: Doc,
    shared: Arc<Shared>,
    client_id: u64,
    seen: HashMap<u64, u32>,
    /// Latencies of the deliveries this member counted, in µs.
    pub latencies: Vec<u32>,
    /// Sync step 2 frames received.
    pub step2s: u32,
    /// Edits sent.
    pub sent: u32,
    /// `error` messages received from Balint Room.
    pub errors: u32,
    /// In a sealed room: the key, the sequence numbers and the member id.
    sealer: Option<Sealer>,
    /// Sealed log frames (`0x42`) received.
    pub logs: u32,
    /// Hocuspocus's prefix (the document name as a `varString`), when the server is Hocuspocus.
    address: Option<Vec<u8>>,
}

/// Client socket settings: small read buffers (there may be 10,000 of us), no size limit on
/// what the server sends (a late joiner gets the whole board at once).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(512 << 20))
        .max_frame_size(Some(512 << 20))
}

impl Member {
    /// Connects to `url` as client id `client_id` (≥ 1), says `hello` if asked, and sends sync
    /// step 1; in a sealed room (`sealed`), says `hello` and waits for the server's log instead.
    pub async fn connect(
        url: &str,
        hello: bool,
        sealed: Option<SealedRoom>,
        address: Option<&str>,
        client_id: u64,
        shared: Arc<Shared>,
    ) -> anyhow::Result<(Member, Stream)> {
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config()), true)
            .await
            .with_context(|| format!("connecting member {client_id}"))?;
        let (mut sink, stream) = socket.split();
        if hello || sealed.is_some() {
            sink.send(Message::text(r#"{"type":"hello"}"#)).await?;
        }
        let doc = Doc::with_client_id(client_id);
        doc.get_or_insert_text("notes");
        let address = address.map(hocuspocus::prefix);
        if let Some(prefix) = &address {
            // Hocuspocus opens a document only once it is authenticated; its provider sends
            // the token (empty here: the server has no auth hook) before its sync step 1.
            sink.send(Message::Binary(hocuspocus::authenticate(prefix))).await?;
        }
        let sealer = match sealed {
            Some(room) => Some(Sealer { room, seq: Sequence::new()?, member_id: None }),
            None => {
                let step1 = sync::encode_step1(&doc.transact().state_vector());
                sink.send(Message::Binary(hocuspocus::wrap(address.as_deref(), step1))).await?;
                None
            }
        };
        let member = Member {
            sink,
            doc,
            shared,
            client_id,
            seen: HashMap::new(),
            latencies: Vec::new(),
            step2s: 0,
            sent: 0,
            errors: 0,
            sealer,
            logs: 0,
            address,
        };
        Ok((member, stream))
    }

    /// Handles one frame from the server. `Ok(false)` when the socket closed.
    pub async fn handle(
        &mut self,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> anyhow::Result<bool> {
        let message = match frame {
            None => return Ok(false),
            Some(Err(e)) => bail!("member {}: socket error: {e}", self.client_id),
            Some(Ok(m)) => m,
        };
        match message {
            Message::Binary(frame) => self.handle_binary(&frame).await?,
            Message::Text(text) if text.as_str().contains(r#""type":"error""#) => {
                self.errors += 1;
                self.shared.problem(format!("member {}: {}", self.client_id, text.as_str()));
            }
            Message::Text(text) if text.as_str().contains(r#""type":"welcome""#) => {
                if let Some(sealer) = self.sealer.as_mut().filter(|s| s.member_id.is_none()) {
                    match serde_json::from_str(text.as_str()) {
                        Ok(ServerMessage::Welcome { member_id, .. }) => sealer.member_id = Some(member_id),
                        _ => bail!("member {}: a welcome that does not read", self.client_id),
                    }
                }
            }
            Message::Close(close) => {
                if let Some(close) = close {
                    self.shared.problem(format!("member {} closed: {} {}", self.client_id, close.code, close.reason));
                }
                return Ok(false);
            }
            _ => {}
        }
        Ok(true)
    }

    async fn handle_binary(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        if self.sealer.is_some() {
            return self.handle_sealed(frame);
        }
        let unwrapped;
        let frame = match &self.address {
            None => frame,
            Some(_) => match hocuspocus::unwrap(frame).with_context(|| format!("member {}", self.client_id))? {
                Some(inner) => {
                    unwrapped = inner;
                    &unwrapped[..]
                }
                None => return Ok(()),
            },
        };
        let messages = sync::decode_frame(frame).with_context(|| format!("member {}: bad frame", self.client_id))?;
        let mut applied = false;
        for message in messages {
            match message {
                YMessage::Sync(SyncMessage::SyncStep1(sv)) => {
                    let update = self.doc.transact().encode_state_as_update_v1(&sv);
                    let step2 = hocuspocus::wrap(self.address.as_deref(), sync::encode_step2(&update));
                    self.sink.send(Message::Binary(step2)).await?;
                }
                YMessage::Sync(SyncMessage::SyncStep2(payload)) => {
                    self.step2s += 1;
                    self.apply(&payload)?;
                    applied = true;
                }
                YMessage::Sync(SyncMessage::Update(payload)) => {
                    self.apply(&payload)?;
                    applied = true;
                }
                _ => {}
            }
        }
        if applied {
            self.count_deliveries();
        }
        Ok(())
    }

    /// A sealed frame: every board entry in it is opened and applied, then deliveries counted
    /// as for a plain frame.
    fn handle_sealed(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        let Some(sealer) = &self.sealer else { return Ok(()) };
        let entries =
            match sealed::decode(frame).with_context(|| format!("member {}: bad sealed frame", self.client_id))? {
                SealedFrame::Entry(entry) => vec![entry],
                SealedFrame::Log(entries) => {
                    self.logs += 1;
                    entries
                }
                other => bail!("member {}: the server sent a client's frame: {other:?}", self.client_id),
            };
        let mut applied = false;
        for entry in entries.iter().filter(|e| matches!(e.sealed.kind, SealedKind::Update | SealedKind::Snapshot)) {
            let update = seal::open_update(&sealer.room.key, &sealer.room.room, entry)
                .with_context(|| format!("member {}: an entry of {} did not open", self.client_id, entry.sender))?;
            let update = Update::decode_v1(&update)?;
            self.doc.transact_mut().apply_update(update)?;
            applied = true;
        }
        if applied {
            self.count_deliveries();
        }
        Ok(())
    }

    /// Whether the member is in sync with the room: it got the answer to its sync step 1, or,
    /// in a sealed room, its member id and the log.
    pub fn synced(&self) -> bool {
        match &self.sealer {
            Some(sealer) => sealer.member_id.is_some() && self.logs > 0,
            None => self.step2s > 0,
        }
    }

    fn apply(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let update = Update::decode_v1(payload)?;
        self.doc.transact_mut().apply_update(update)?;
        Ok(())
    }

    /// Counts every edit of another member that the document now holds and had not before.
    fn count_deliveries(&mut self) {
        let now = self.shared.now_us();
        let sv = self.doc.transact().state_vector();
        for (client, &clock) in sv.iter() {
            let client = client.get();
            if client == self.client_id {
                continue;
            }
            let seen = self.seen.entry(client).or_insert(0);
            if clock <= *seen {
                continue;
            }
            let (from, to) = (*seen / EDIT_LEN, clock / EDIT_LEN);
            *seen = clock;
            let Some(log) = self.shared.sent.get((client as usize).wrapping_sub(1)) else { continue };
            let log = log.lock().expect("sent lock");
            let mut counted = 0;
            for seq in from..to {
                if let Some(&at) = log.get(seq as usize) {
                    self.latencies.push(now.saturating_sub(at).min(u32::MAX as u64) as u32);
                    counted += 1;
                }
            }
            drop(log);
            self.shared.delivered.fetch_add(counted, Ordering::Relaxed);
        }
    }

    /// Appends one edit to `notes` and sends it.
    pub async fn edit(&mut self) -> anyhow::Result<()> {
        let seq = self.sent;
        let text = self.doc.get_or_insert_text("notes");
        let update = {
            let mut txn = self.doc.transact_mut();
            let end = text.len(&txn);
            // EDIT_LEN ASCII characters: the member and its edit number.
            let typed = format!("{:03x}{:04x} ", self.client_id % 0x1000, seq % 0x10000);
            debug_assert_eq!(typed.len() as u32, EDIT_LEN);
            text.insert(&mut txn, end, &typed);
            txn.encode_update_v1()
        };
        let frame = match &mut self.sealer {
            Some(sealer) => {
                let sender = sealer.member_id.as_deref().context("no welcome yet: no member id to seal with")?;
                let seq = sealer.seq.next_seq()?;
                let sealed = seal::seal(&sealer.room.key, &sealer.room.room, sender, seq, SealedKind::Update, &update)?;
                sealed::encode_client_entry(&sealed)
            }
            None => hocuspocus::wrap(self.address.as_deref(), sync::encode_update(&update)),
        };
        self.shared.sent[(self.client_id - 1) as usize].lock().expect("sent lock").push(self.shared.now_us());
        self.sink.send(Message::Binary(frame)).await?;
        self.sent += 1;
        self.shared.edits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Appends `chunk` characters to `notes` in one update and sends it (plain rooms only).
    pub async fn upload_chunk(&mut self, chunk: usize) -> anyhow::Result<()> {
        ensure!(self.sealer.is_none(), "the late-joiner scenario has no sealed variant");
        let text = self.doc.get_or_insert_text("notes");
        let update = {
            let mut txn = self.doc.transact_mut();
            let end = text.len(&txn);
            let line: String =
                (0..chunk).map(|i| if i % 64 == 63 { '\n' } else { (b'a' + (i % 26) as u8) as char }).collect();
            text.insert(&mut txn, end, &line);
            txn.encode_update_v1()
        };
        self.sink
            .send(Message::Binary(hocuspocus::wrap(self.address.as_deref(), sync::encode_update(&update))))
            .await?;
        Ok(())
    }

    /// Sends a sync step 1, as a client does to ask for what it lacks (plain rooms only).
    pub async fn send_step1(&mut self) -> anyhow::Result<()> {
        ensure!(self.sealer.is_none(), "a sealed room speaks no y-sync");
        let step1 = sync::encode_step1(&self.doc.transact().state_vector());
        self.sink.send(Message::Binary(hocuspocus::wrap(self.address.as_deref(), step1))).await?;
        Ok(())
    }

    /// The length of `notes`.
    pub fn notes_len(&self) -> u32 {
        let text = self.doc.get_or_insert_text("notes");
        let txn = self.doc.transact();
        text.len(&txn)
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
    }
}

/// Connects and waits for the first sync step 2 (the server's answer to our step 1), or, in a
/// sealed room, for `welcome` and the log.
pub async fn join(
    url: &str,
    hello: bool,
    sealed: Option<SealedRoom>,
    address: Option<&str>,
    client_id: u64,
    shared: Arc<Shared>,
    timeout: Duration,
) -> anyhow::Result<(Member, Stream)> {
    let (mut member, mut stream) = Member::connect(url, hello, sealed, address, client_id, shared).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    while !member.synced() {
        let frame = tokio::time::timeout_at(deadline, stream.next()).await.context("not in sync in time")?;
        if !member.handle(frame).await? {
            bail!("member {client_id}: closed before sync");
        }
    }
    Ok((member, stream))
}

/// Hocuspocus's framing, as its provider (`@hocuspocus/provider`) writes and reads it: every
/// message is `varString(document name)`, `varUint(message type)`, then the type's payload. Type
/// 0 (sync) carries exactly what a y-websocket frame carries after its own type byte, so a
/// y-websocket sync frame becomes a Hocuspocus one by putting the name in front.
pub mod hocuspocus {
    use anyhow::{bail, Context};
    use bytes::{Bytes, BytesMut};

    /// Message types (`MessageType` in `@hocuspocus/server`'s `types.ts`).
    const SYNC: u64 = 0;
    const AUTH: u64 = 2;
    const SYNC_REPLY: u64 = 4;
    const CLOSE: u64 = 7;
    /// Authentication sub-types (`AuthMessageType` in `@hocuspocus/common`).
    const AUTH_TOKEN: u8 = 0;
    const AUTH_PERMISSION_DENIED: u64 = 1;

    fn write_var_uint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    fn read_var_uint(buf: &[u8], pos: &mut usize) -> anyhow::Result<u64> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *buf.get(*pos).context("a Hocuspocus message ends inside a number")?;
            *pos += 1;
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(n);
            }
        }
        bail!("a Hocuspocus message holds a number of more than 64 bits")
    }

    fn read_var_string<'a>(buf: &'a [u8], pos: &mut usize) -> anyhow::Result<&'a [u8]> {
        let len = read_var_uint(buf, pos)? as usize;
        let end =
            pos.checked_add(len).filter(|&e| e <= buf.len()).context("a Hocuspocus string runs past its message")?;
        let s = &buf[*pos..end];
        *pos = end;
        Ok(s)
    }

    /// The prefix of every message about document `name`.
    pub fn prefix(name: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(name.len() + 2);
        write_var_uint(&mut out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        out
    }

    /// The authentication message with an empty token.
    pub fn authenticate(prefix: &[u8]) -> Bytes {
        let mut out = prefix.to_vec();
        out.extend_from_slice(&[AUTH as u8, AUTH_TOKEN, 0]);
        Bytes::from(out)
    }

    /// A y-websocket frame as it goes to Hocuspocus (unchanged when `prefix` is `None`).
    pub fn wrap(prefix: Option<&[u8]>, frame: Bytes) -> Bytes {
        match prefix {
            None => frame,
            Some(prefix) => {
                let mut out = BytesMut::with_capacity(prefix.len() + frame.len());
                out.extend_from_slice(prefix);
                out.extend_from_slice(&frame);
                out.freeze()
            }
        }
    }

    /// A Hocuspocus message as a y-websocket sync frame, or `None` for a message that is not
    /// about the document's content (an authentication answer, a sync status
    /// acknowledgement, awareness). A refusal or a close is an error.
    pub fn unwrap(message: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let mut pos = 0;
        read_var_string(message, &mut pos)?;
        let type_at = pos;
        match read_var_uint(message, &mut pos)? {
            SYNC => Ok(Some(message[type_at..].to_vec())),
            SYNC_REPLY => {
                let mut frame = vec![SYNC as u8];
                frame.extend_from_slice(&message[pos..]);
                Ok(Some(frame))
            }
            AUTH => {
                if read_var_uint(message, &mut pos)? == AUTH_PERMISSION_DENIED {
                    let reason = read_var_string(message, &mut pos).unwrap_or_default();
                    bail!("Hocuspocus refused: {}", String::from_utf8_lossy(reason));
                }
                Ok(None)
            }
            CLOSE => {
                let reason = read_var_string(message, &mut pos).unwrap_or_default();
                bail!("Hocuspocus closed the document: {}", String::from_utf8_lossy(reason));
            }
            _ => Ok(None),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_sync_frame_goes_out_prefixed_and_comes_back_unchanged() {
            let prefix = prefix("room-7");
            assert_eq!(&prefix[..], b"\x06room-7");
            let frame = Bytes::from_static(&[0, 2, 3, 1, 2, 3]);
            let wrapped = wrap(Some(&prefix), frame.clone());
            assert_eq!(&wrapped[..7], &prefix[..]);
            assert_eq!(unwrap(&wrapped).unwrap().as_deref(), Some(&frame[..]));
        }

        #[test]
        fn a_sync_reply_reads_as_sync_and_the_rest_is_skipped() {
            let mut reply = prefix("d");
            reply.extend_from_slice(&[SYNC_REPLY as u8, 1, 2, 0, 0]);
            assert_eq!(unwrap(&reply).unwrap(), Some(vec![0, 1, 2, 0, 0]));
            let mut status = prefix("d");
            status.extend_from_slice(&[8, 1]);
            assert_eq!(unwrap(&status).unwrap(), None);
            let mut authenticated = prefix("d");
            authenticated.extend_from_slice(&[AUTH as u8, 2, 10]);
            authenticated.extend_from_slice(b"read-write");
            assert_eq!(unwrap(&authenticated).unwrap(), None);
        }

        #[test]
        fn a_refusal_or_a_truncated_message_is_an_error() {
            let mut denied = prefix("d");
            denied.extend_from_slice(&[AUTH as u8, 1, 2]);
            denied.extend_from_slice(b"no");
            assert!(unwrap(&denied).unwrap_err().to_string().contains("refused: no"));
            assert!(unwrap(&[5, b'a']).is_err());
            assert!(unwrap(&[0x80]).is_err());
        }
    }
}
