//! The shared board: one yrs document plus the awareness states of its editors.
//!
//! [`Board::handle_frame`] takes a binary frame from a connection and returns what to send
//! back to that connection and what to broadcast to the room, already encoded. The board never
//! decides who may write; the caller passes that in, so the meeting rules stay in one place.

use std::panic::{catch_unwind, AssertUnwindSafe};

use balint_proto::sync::{self, AwarenessUpdate, FrameError, Message, SyncMessage};
use bytes::Bytes;
use yrs::block::{ClientID, ID};
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encoder;
use yrs::{Any, Doc, ReadTxn, StateVector, Transact, Update};

use super::awareness::AwarenessRegistry;
use super::ConnId;

/// A change to pass on to the other nodes of a deployment: the bare payload, not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// A board update (Yjs v1).
    Update(Bytes),
    /// An awareness update (y-sync encoding).
    Awareness(Bytes),
}

/// An awareness change: the frame for local connections and the payload for other nodes.
#[derive(Debug, Clone)]
pub struct AwarenessChange {
    /// The encoded awareness frame.
    pub frame: Bytes,
    /// The awareness update alone.
    pub payload: Bytes,
}

/// The connection id under which states announced on other nodes are kept.
pub const REMOTE: ConnId = ConnId(0);

/// Frames produced by handling one incoming frame.
#[derive(Debug, Default)]
pub struct Effects {
    /// Frames for the sending connection only, in order.
    pub reply: Vec<Bytes>,
    /// Frames for every other connection of the room, each encoded once.
    pub broadcast: Vec<Bytes>,
    /// Changes for the other nodes.
    pub relay: Vec<Relay>,
    /// The frame carried a board change from a connection that may not write; the change was
    /// neither applied nor relayed.
    pub write_refused: bool,
    /// The frame carried a board change that would have taken the board past its size limit;
    /// the change was neither applied nor relayed.
    pub board_full: bool,
}

/// The board of one room.
pub struct Board {
    doc: Doc,
    awareness: AwarenessRegistry,
    /// The most the board may grow to, in bytes of applied updates.
    max_bytes: usize,
    /// Bytes of updates applied so far: an upper bound of the encoded board, cheap to keep.
    applied_bytes: usize,
    /// The updates received while the document held some back for a missing dependency, as
    /// they arrived; cleared once nothing is held back.
    held_back: Vec<Bytes>,
    /// The whole board as a sync step 2 frame, and when a newcomer last got it (ms): newcomers
    /// (who hold nothing of the board) share one encoding, each getting a reference to the
    /// same bytes. yrs copies every block of text while it encodes the board (several ms per
    /// MiB); handing out the frame copies nothing.
    whole: Option<(Bytes, u64)>,
    /// The update frames applied since `whole` was encoded, in order, as they were broadcast:
    /// newcomers get them after `whole`. Only updates that inserted and deleted nothing join
    /// them (see [`Self::note_change`]), so nothing a newcomer gets is absent from the board.
    since_whole: Vec<Bytes>,
    /// The bytes of `since_whole`.
    since_whole_bytes: usize,
    /// Bytes of updates that changed the board since the last whole-board encoding, and the
    /// length of that encoding: the size to reserve for the next one.
    size_hint: (usize, usize),
}

/// How long the whole-board frame is kept with nobody asking for it.
const WHOLE_BOARD_KEPT_MS: u64 = 60_000;

/// The most update frames kept after the whole-board frame: a newcomer gets each as its own
/// message. Past this, or past a quarter of the whole frame's bytes, the next newcomer gets a
/// fresh encoding.
const MAX_FRAMES_SINCE_WHOLE: usize = 64;

/// What applying one update did to the integrated document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    /// Something was inserted or deleted.
    changed: bool,
    /// Something was deleted.
    deleted: bool,
}

impl Default for Board {
    fn default() -> Self {
        Self::new()
    }
}

impl Board {
    /// An empty board.
    pub fn new() -> Self {
        // The server's own client id never writes; skip_gc stays off so deleted content is
        // collected as Yjs does.
        Self::with_limit(usize::MAX)
    }

    /// An empty board that refuses to grow past `max_bytes` of applied updates.
    pub fn with_limit(max_bytes: usize) -> Self {
        Board {
            doc: Doc::new(),
            awareness: AwarenessRegistry::default(),
            max_bytes,
            applied_bytes: 0,
            held_back: Vec::new(),
            whole: None,
            since_whole: Vec::new(),
            since_whole_bytes: 0,
            size_hint: (0, 0),
        }
    }

    /// The frames a newly joined connection gets first: the server's sync step 1, then the
    /// awareness states of everyone present. One message per frame, as stock y-websocket
    /// clients read only the first message of a frame.
    pub fn greeting(&self) -> Vec<Bytes> {
        let mut frames = vec![sync::encode_step1(&self.doc.transact().state_vector())];
        if let Some(states) = self.awareness.snapshot() {
            frames.push(sync::encode_awareness(&states));
        }
        frames
    }

    /// Handles one binary frame from `conn`. `can_write` says whether this connection may
    /// change the board. A malformed frame is refused whole, before any state changes.
    pub fn handle_frame(
        &mut self,
        conn: ConnId,
        frame: &[u8],
        can_write: bool,
        now_ms: u64,
    ) -> Result<Effects, FrameError> {
        let mut effects = Effects::default();
        // An edit: one update, decoded once.
        if let Some(single) = sync::decode_single_update(frame) {
            let single = single?;
            self.take_update(&mut effects, single.payload, single.update, can_write)?;
            return Ok(effects);
        }
        let messages = sync::decode_frame(frame)?;
        for message in messages {
            match message {
                Message::Sync(SyncMessage::SyncStep1(remote)) => {
                    if self.holds_none_of(&remote) {
                        effects.reply.extend(self.newcomer_frames(now_ms));
                    } else {
                        effects.reply.push(sync::encode_step2(&self.diff(&remote)));
                        for held in &self.held_back {
                            effects.reply.push(sync::encode_update(held));
                        }
                    }
                }
                Message::Sync(SyncMessage::SyncStep2(payload) | SyncMessage::Update(payload)) => {
                    // `decode_frame` checked it.
                    let update = Update::decode_v1(&payload).map_err(|_| FrameError::Malformed)?;
                    self.take_update(&mut effects, &payload, update, can_write)?;
                }
                Message::Awareness(update) => {
                    if let Some(changed) = self.awareness.apply(conn, update, now_ms) {
                        let change = awareness_change(&changed);
                        // Echoed to its sender too, as the reference y-websocket server does:
                        // a stock client alone in a room then hears from the server every time
                        // it renews its awareness (15 s), and never takes the quiet for a dead
                        // connection (y-websocket reconnects after 30 s without a message).
                        effects.reply.push(change.frame.clone());
                        effects.broadcast.push(change.frame);
                        effects.relay.push(Relay::Awareness(change.payload));
                    }
                }
                Message::AwarenessQuery => {
                    if let Some(states) = self.awareness.snapshot() {
                        effects.reply.push(sync::encode_awareness(&states));
                    }
                }
                // Clients have nothing to authenticate over y-sync: the token is checked before
                // the upgrade. An auth message from a client is ignored, as y-websocket does.
                Message::Auth(_) => {}
                Message::Custom(tag, _) => return Err(FrameError::UnknownType(tag.into())),
            }
        }
        Ok(effects)
    }

    /// Applies a sync step 2 or update from a connection, `payload` decoded as `update`, if it
    /// may write and the board has room for it.
    fn take_update(
        &mut self,
        effects: &mut Effects,
        payload: &[u8],
        update: Update,
        can_write: bool,
    ) -> Result<(), FrameError> {
        if !can_write {
            // A reader answers the server's step 1 with a step 2 that carries nothing the
            // board lacks; only a real change is a refusal to report.
            if self.is_news(&update) {
                effects.write_refused = true;
            }
            return Ok(());
        }
        if self.applied_bytes.saturating_add(payload.len()) > self.max_bytes {
            effects.board_full = true;
            return Ok(());
        }
        if let Some(frame) = self.apply_update(payload, update)? {
            effects.relay.push(Relay::Update(payload_of(&frame)));
            effects.broadcast.push(frame);
        }
        Ok(())
    }

    /// Removes the awareness states `conn` announced. Returns the removal to broadcast.
    pub fn leave(&mut self, conn: ConnId) -> Option<AwarenessChange> {
        self.awareness.remove_connection(conn).map(|u| awareness_change(&u))
    }

    /// What a peer that holds nothing of the board gets, in order: the whole board as a sync
    /// step 2 frame, the update frames applied since it was encoded, and the updates held
    /// back for a missing dependency. The step 2 frame is encoded once and shared by every
    /// newcomer until something deletes from the board (or the updates since grow past
    /// [`MAX_FRAMES_SINCE_WHOLE`] or a quarter of it), and let go of a minute after the last
    /// newcomer ([`Self::sweep`]).
    ///
    /// A client takes its first sync step 2 to mean that it holds the board (y-websocket's
    /// `synced`). When updates follow the shared frame, the frame therefore goes as an update
    /// message (a copy with its kind changed: a memory copy, not an encoding), and an empty
    /// step 2 after those updates ends the sync.
    pub fn newcomer_frames(&mut self, now_ms: u64) -> Vec<Bytes> {
        let whole = self.whole_board(now_ms);
        let held = self.held_back.iter().map(|held| sync::encode_update(held));
        if self.since_whole.is_empty() {
            return std::iter::once(whole).chain(held).collect();
        }
        let mut as_update = whole.to_vec();
        as_update[1] = SYNC_UPDATE as u8;
        let synced = sync::encode_step2(&EMPTY_UPDATE);
        std::iter::once(Bytes::from(as_update))
            .chain(self.since_whole.iter().cloned())
            .chain(std::iter::once(synced))
            .chain(held)
            .collect()
    }

    /// The same as [`Self::newcomer_frames`] for another node: the bare updates, no frames.
    pub fn newcomer_updates(&mut self, now_ms: u64) -> Vec<Bytes> {
        let whole = payload_of(&self.whole_board(now_ms));
        let since = self.since_whole.iter().map(payload_of);
        std::iter::once(whole).chain(since).chain(self.held_back.iter().cloned()).collect()
    }

    /// Whether a peer at `remote` holds nothing of the board: for every client the board
    /// knows, `remote` has no clock. Its diff is then the whole board (clients the board does
    /// not know change nothing in a diff).
    pub fn holds_none_of(&self, remote: &StateVector) -> bool {
        if remote.is_empty() {
            return true;
        }
        let known = self.doc.transact().state_vector();
        remote.iter().all(|(client, &clock)| clock == 0 || known.get(client) == 0)
    }

    /// The whole board as a sync step 2 frame, encoded once until something deletes from the
    /// board (then updates since are kept beside it, see [`Self::newcomer_frames`]).
    fn whole_board(&mut self, now_ms: u64) -> Bytes {
        if let Some((frame, used_ms)) = &mut self.whole {
            *used_ms = now_ms;
            return frame.clone();
        }
        // Room for the board as large as it was plus what was applied since (at first, all
        // that was applied: exact for a board nobody deleted from), so the buffer is written
        // once, never regrown (each regrowth copies it, and wipes the old one).
        let (since, last) = self.size_hint;
        let mut encoder = FrameEncoder::with_capacity(last.saturating_add(since).min(self.applied_bytes));
        self.doc.transact().encode_diff(&StateVector::default(), &mut encoder);
        let frame = encoder.into_frame(SYNC_STEP2);
        self.size_hint = (0, frame.len());
        self.forget_whole();
        self.whole = Some((frame.clone(), now_ms));
        frame
    }

    /// Lets go of the whole-board frame and the updates since.
    fn forget_whole(&mut self) {
        self.whole = None;
        self.since_whole = Vec::new();
        self.since_whole_bytes = 0;
    }

    /// Sweeps awareness states not renewed within `timeout_ms`, and lets go of a whole-board
    /// frame nobody asked for lately.
    pub fn sweep(&mut self, now_ms: u64, timeout_ms: u64) -> Option<AwarenessChange> {
        if self.whole.as_ref().is_some_and(|(_, used)| now_ms.saturating_sub(*used) >= WHOLE_BOARD_KEPT_MS) {
            self.forget_whole();
        }
        self.awareness.sweep(now_ms, timeout_ms).map(|u| awareness_change(&u))
    }

    /// When [`Board::sweep`] next has something to do with `timeout_ms` (Unix ms): an
    /// awareness state to remove or forget, or the whole-board frame to let go of.
    pub fn next_sweep(&self, timeout_ms: u64) -> Option<u64> {
        let whole = self.whole.as_ref().map(|(_, used)| used.saturating_add(WHOLE_BOARD_KEPT_MS));
        match (whole, self.awareness.next_expiry(timeout_ms)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes held for newcomers: the whole-board frame and the update frames since.
    pub fn newcomer_cache_bytes(&self) -> usize {
        self.whole.as_ref().map_or(0, |(frame, _)| frame.len()) + self.since_whole_bytes
    }

    /// Applies a board update that another node applied already. Returns the frame to
    /// broadcast here, `None` when the update brought nothing new (see [`Self::apply_update`]).
    pub fn apply_remote(&mut self, payload: &[u8]) -> Result<Option<Bytes>, FrameError> {
        let update = Update::decode_v1(payload).map_err(|_| FrameError::Malformed)?;
        self.apply_update(payload, update)
    }

    /// Applies an awareness update relayed by another node. Returns the frame to broadcast
    /// here, if it changed anything.
    pub fn apply_remote_awareness(&mut self, payload: &[u8], now_ms: u64) -> Option<Bytes> {
        let update = AwarenessUpdate::decode_v1(payload).ok()?;
        self.awareness.apply(REMOTE, update, now_ms).map(|u| sync::encode_awareness(&u))
    }

    /// The whole board as one Yjs v1 update.
    pub fn encode_state(&self) -> Vec<u8> {
        self.diff(&StateVector::default())
    }

    /// Loads a stored board into this (empty) one.
    pub fn load(&mut self, update: &[u8]) -> Result<(), FrameError> {
        self.forget_whole();
        let decoded = Update::decode_v1(update).map_err(|_| FrameError::Malformed)?;
        self.apply(update, decoded).map(|_| ())
    }

    /// The board as Markdown: the notes, then the observation cards grouped by phase in the
    /// order of `phases`, oldest first ([`balint_proto::board::to_markdown`], which the web
    /// client runs too for a sealed room's export).
    pub fn to_markdown(&self, title: Option<&str>, phases: &[&str]) -> String {
        balint_proto::board::to_markdown(&self.doc, title, phases)
    }

    /// The document, for reading.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// What a peer at `remote` lacks of the integrated board, as one update. Updates held
    /// back for a missing dependency are not in it (see [`Self::pending`]): yrs 0.28.1 encodes
    /// them under wrong clocks when it folds them into one update with the rest.
    pub fn diff(&self, remote: &StateVector) -> Vec<u8> {
        self.doc.transact().encode_diff_v1(remote)
    }

    /// The updates held back for a missing dependency, as they arrived (yrs 0.28.1 re-encodes
    /// its own copy of them under wrong clocks). A peer gets them beside the diff, and holds
    /// them back in turn until the gap is filled; what it had already, it ignores.
    pub fn pending(&self) -> &[Bytes] {
        &self.held_back
    }

    /// Whether `update` holds anything the board lacks: a block past its state, or a deletion
    /// it has not made.
    fn is_news(&self, update: &Update) -> bool {
        if update.is_empty() {
            return false;
        }
        let txn = self.doc.transact();
        let known = txn.state_vector();
        let inserted = update.insertions(true);
        if inserted.iter().any(|(client, ranges)| ranges.into_iter().any(|r| r.end > known.get(client))) {
            return true;
        }
        !update.delete_set().is_empty() && !update.delete_set().diff(&txn.snapshot().delete_set).is_empty()
    }

    /// Applies `payload` and returns its update frame to broadcast, or `None` when it brought
    /// nothing: nothing inserted or deleted, and nothing held back (a peer's step 2 that
    /// carries only what the board has, such as a newcomer's empty answer). Every peer has
    /// such an update already; it is neither broadcast nor relayed.
    fn apply_update(&mut self, payload: &[u8], update: Update) -> Result<Option<Bytes>, FrameError> {
        let held_before = !self.held_back.is_empty();
        let change = self.apply(payload, update)?;
        // An update held back (it waits for a missing dependency) changes nothing yet, and is
        // news all the same.
        if !change.changed && self.held_back.is_empty() {
            return Ok(None);
        }
        let frame = sync::encode_update(payload);
        self.note_change(&frame, change, held_before);
        Ok(Some(frame))
    }

    /// Keeps the whole-board frame valid after an applied update: an update that only
    /// inserted, with nothing held back before or after, is kept beside it (the frame and
    /// these updates then make up the board exactly); anything else that changed the board
    /// lets go of it. A deletion always does: the whole-board frame holds the deleted content,
    /// and a newcomer must never receive what the board no longer has (text someone erased).
    fn note_change(&mut self, frame: &Bytes, change: Change, held_before: bool) {
        if !change.changed {
            return;
        }
        let Some((whole, _)) = &self.whole else { return };
        let fits = self.since_whole.len() < MAX_FRAMES_SINCE_WHOLE
            && self.since_whole_bytes.saturating_add(frame.len()) <= whole.len() / 4;
        if !change.deleted && !held_before && self.held_back.is_empty() && fits {
            self.since_whole.push(frame.clone());
            self.since_whole_bytes += frame.len();
        } else {
            self.forget_whole();
        }
    }

    /// Applies `update` (decoded from `payload`) in one transaction.
    fn apply(&mut self, payload: &[u8], update: Update) -> Result<Change, FrameError> {
        // yrs validates structure while decoding; integration of a hostile update is guarded as
        // well, so no input can take the server down.
        let doc = &self.doc;
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            txn.apply_update(update).map(|()| {
                let change = Change { changed: txn.has_changes(), deleted: !txn.delete_set().is_empty() };
                (change, txn.has_missing_updates())
            })
        }));
        let (change, missing) = match applied {
            Ok(Ok(applied)) => applied,
            _ => {
                // The document may have changed halfway.
                self.forget_whole();
                return Err(FrameError::Malformed);
            }
        };
        self.applied_bytes = self.applied_bytes.saturating_add(payload.len());
        if change.changed {
            self.size_hint.0 = self.size_hint.0.saturating_add(payload.len());
        }
        if missing {
            self.held_back.push(Bytes::copy_from_slice(payload));
        } else {
            self.held_back.clear();
        }
        Ok(change)
    }
}

/// The y-sync message kind of a sync step 2.
const SYNC_STEP2: u32 = 1;

/// The y-sync message kind of an update. A frame's kind is its second byte: the message
/// type (sync, 0) and the kind are each one byte long.
const SYNC_UPDATE: u32 = 2;

/// An empty Yjs v1 update: no blocks, no deletions.
const EMPTY_UPDATE: [u8; 2] = [0, 0];

/// Room kept before an encoded update for its frame header: the message type, the sync kind
/// and the update's length, each a variable-length integer.
const HEADER_ROOM: usize = 1 + 1 + 10;

/// A Yjs v1 encoder that writes an update straight into a y-sync frame: the buffer starts
/// with room for the header, written in front of the update once its length is known, so the
/// update is never copied into a frame. Its output is that of yrs's `EncoderV1` (lib0 v1:
/// every number a variable-length integer), which a test compares byte for byte.
struct FrameEncoder {
    buf: Vec<u8>,
}

impl FrameEncoder {
    fn with_capacity(update_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_ROOM.saturating_add(update_bytes));
        buf.resize(HEADER_ROOM, 0);
        FrameEncoder { buf }
    }

    /// The frame: the header, right before the update.
    fn into_frame(self, kind: u32) -> Bytes {
        let len = self.buf.len() - HEADER_ROOM;
        let mut header = Vec::with_capacity(HEADER_ROOM);
        header.write_var(sync::MSG_SYNC);
        header.write_var(kind);
        header.write_var(len);
        let start = HEADER_ROOM - header.len();
        let mut buf = self.buf;
        buf[start..HEADER_ROOM].copy_from_slice(&header);
        Bytes::from(buf).slice(start..)
    }
}

impl Write for FrameEncoder {
    fn write_all(&mut self, buf: &[u8]) {
        self.buf.extend_from_slice(buf);
    }

    fn write_u8(&mut self, value: u8) {
        self.buf.push(value);
    }
}

impl Encoder for FrameEncoder {
    fn to_vec(self) -> Vec<u8> {
        self.buf[HEADER_ROOM..].to_vec()
    }

    fn reset_ds_cur_val(&mut self) {}

    fn write_ds_clock(&mut self, clock: u32) {
        self.write_var(clock);
    }

    fn write_ds_len(&mut self, len: u32) {
        self.write_var(len);
    }

    fn write_left_id(&mut self, id: &ID) {
        self.write_var(id.client.get());
        self.write_var(id.clock);
    }

    fn write_right_id(&mut self, id: &ID) {
        self.write_var(id.client.get());
        self.write_var(id.clock);
    }

    fn write_client(&mut self, client: ClientID) {
        self.write_var(client.get());
    }

    fn write_info(&mut self, info: u8) {
        self.write_u8(info);
    }

    fn write_parent_info(&mut self, is_y_key: bool) {
        self.write_var(u32::from(is_y_key));
    }

    fn write_type_ref(&mut self, info: u8) {
        self.write_u8(info);
    }

    fn write_len(&mut self, len: u32) {
        self.write_var(len);
    }

    fn write_any(&mut self, any: &Any) {
        any.encode(self);
    }

    fn write_json(&mut self, any: &Any) {
        let mut json = String::new();
        any.to_json(&mut json);
        self.write_string(&json);
    }

    fn write_key(&mut self, key: &str) {
        self.write_string(key);
    }
}

/// The update a y-sync step 2 or update frame carries, as a slice of the frame (no copy).
fn payload_of(frame: &Bytes) -> Bytes {
    let mut cursor = Cursor::new(frame);
    let header: Result<(u32, u32, usize), _> =
        (|| Ok::<_, yrs::encoding::read::Error>((cursor.read_var()?, cursor.read_var()?, cursor.read_var()?)))();
    match header {
        // Only frames encoded here come in.
        Ok((_, _, len)) if cursor.next + len == frame.len() => frame.slice(cursor.next..),
        _ => Bytes::new(),
    }
}

fn awareness_change(update: &AwarenessUpdate) -> AwarenessChange {
    use yrs::updates::encoder::Encode;
    AwarenessChange { frame: sync::encode_awareness(update), payload: Bytes::from(update.encode_v1()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Text};

    fn client_update(text: &str) -> Vec<u8> {
        let doc = Doc::new();
        let notes = doc.get_or_insert_text("notes");
        notes.push(&mut doc.transact_mut(), text);
        let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
        update
    }

    fn notes(board: &Board) -> String {
        let notes = board.doc().get_or_insert_text("notes");
        let text = notes.get_string(&board.doc().transact());
        text
    }

    #[test]
    fn an_update_is_applied_and_broadcast_once() {
        let mut board = Board::new();
        let frame = sync::encode_update(&client_update("hi"));
        let effects = board.handle_frame(ConnId(1), &frame, true, 0).unwrap();
        assert_eq!(effects.broadcast.len(), 1);
        assert!(effects.reply.is_empty());
        assert_eq!(notes(&board), "hi");
    }

    #[test]
    fn a_step1_is_answered_with_the_missing_part_of_the_board() {
        let mut board = Board::new();
        board.handle_frame(ConnId(1), &sync::encode_update(&client_update("hi")), true, 0).unwrap();
        let effects = board.handle_frame(ConnId(2), &sync::encode_step1(&StateVector::default()), true, 0).unwrap();
        let [reply] = &effects.reply[..] else { panic!("one reply expected") };
        let Message::Sync(SyncMessage::SyncStep2(update)) = &sync::decode_frame(reply).unwrap()[0] else {
            panic!("step 2 expected")
        };
        let joiner = Doc::new();
        let text = joiner.get_or_insert_text("notes");
        joiner.transact_mut().apply_update(Update::decode_v1(update).unwrap()).unwrap();
        assert_eq!(text.get_string(&joiner.transact()), "hi");
    }

    /// What a newcomer holds after applying the answer to an empty step 1.
    fn newcomer_notes(board: &mut Board, conn: u64) -> String {
        let effects = board.handle_frame(ConnId(conn), &sync::encode_step1(&StateVector::default()), true, 0).unwrap();
        let joiner = Doc::new();
        for frame in &effects.reply {
            for message in sync::decode_frame(frame).unwrap() {
                if let Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) = message {
                    joiner.transact_mut().apply_update(Update::decode_v1(&update).unwrap()).unwrap();
                }
            }
        }
        let text = joiner.get_or_insert_text("notes");
        let value = text.get_string(&joiner.transact());
        value
    }

    #[test]
    fn newcomers_in_a_row_get_the_current_board() {
        let mut board = Board::new();
        let first = client_update("first");
        board.handle_frame(ConnId(1), &sync::encode_update(&first), true, 0).unwrap();
        assert_eq!(newcomer_notes(&mut board, 2), "first");
        assert_eq!(newcomer_notes(&mut board, 3), "first");
        // A change after the first newcomers reaches the next one.
        let more = {
            let doc = Doc::new();
            let notes = doc.get_or_insert_text("notes");
            doc.transact_mut().apply_update(Update::decode_v1(&first).unwrap()).unwrap();
            let before = doc.transact().state_vector();
            notes.push(&mut doc.transact_mut(), " and more");
            let update = doc.transact().encode_state_as_update_v1(&before);
            update
        };
        board.handle_frame(ConnId(1), &sync::encode_update(&more), true, 0).unwrap();
        assert_eq!(newcomer_notes(&mut board, 4), "first and more");
        // Kept for a while, then let go; still right after.
        board.sweep(WHOLE_BOARD_KEPT_MS, u64::MAX);
        assert!(board.whole.is_none());
        assert_eq!(newcomer_notes(&mut board, 5), "first and more");
    }

    /// A member's own document, sending what it changed since its last update.
    struct Member {
        doc: Doc,
        sent: StateVector,
    }

    impl Member {
        fn new(client: u64) -> Self {
            Member { doc: Doc::with_client_id(client), sent: StateVector::default() }
        }

        /// Appends `text` to the notes; returns the update.
        fn append(&mut self, text: &str) -> Vec<u8> {
            let notes = self.doc.get_or_insert_text("notes");
            {
                let mut txn = self.doc.transact_mut();
                let end = notes.len(&txn);
                notes.insert(&mut txn, end, text);
            }
            self.update()
        }

        /// Removes `len` characters of the notes from `at`; returns the update.
        fn erase(&mut self, at: u32, len: u32) -> Vec<u8> {
            let notes = self.doc.get_or_insert_text("notes");
            notes.remove_range(&mut self.doc.transact_mut(), at, len);
            self.update()
        }

        fn update(&mut self) -> Vec<u8> {
            let txn = self.doc.transact();
            // Everything past what was sent, and the whole delete set, as a client sends it.
            let update = txn.encode_diff_v1(&self.sent);
            self.sent = txn.state_vector();
            update
        }

        /// Writes `update` (of this member) to the board.
        fn send(board: &mut Board, update: &[u8]) -> Effects {
            board.handle_frame(ConnId(1), &sync::encode_update(update), true, 0).unwrap()
        }
    }

    /// A newcomer's document after applying what the board answers to its empty step 1, and
    /// the frames it got.
    fn newcomer(board: &mut Board, now_ms: u64) -> (Doc, Vec<Bytes>) {
        let effects =
            board.handle_frame(ConnId(99), &sync::encode_step1(&StateVector::default()), true, now_ms).unwrap();
        let doc = Doc::new();
        apply_frames(&doc, &effects.reply);
        (doc, effects.reply)
    }

    /// Applies `frames` as a client that stops at its first sync step 2 would (y-websocket
    /// reports `synced` there).
    fn apply_until_synced(doc: &Doc, frames: &[Bytes]) {
        for frame in frames {
            for message in sync::decode_frame(frame).unwrap() {
                match message {
                    Message::Sync(SyncMessage::Update(update)) => {
                        doc.transact_mut().apply_update(Update::decode_v1(&update).unwrap()).unwrap();
                    }
                    Message::Sync(SyncMessage::SyncStep2(update)) => {
                        doc.transact_mut().apply_update(Update::decode_v1(&update).unwrap()).unwrap();
                        return;
                    }
                    _ => {}
                }
            }
        }
        panic!("no sync step 2 among {} frames", frames.len());
    }

    fn apply_frames(doc: &Doc, frames: &[Bytes]) {
        for frame in frames {
            for message in sync::decode_frame(frame).unwrap() {
                if let Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) = message {
                    doc.transact_mut().apply_update(Update::decode_v1(&update).unwrap()).unwrap();
                }
            }
        }
    }

    /// Whether `doc` holds exactly what the board holds: the same insertions, the same
    /// deletions, the same notes, nothing held back.
    fn holds_the_board(doc: &Doc, board: &Board) -> bool {
        let (ours, theirs) = (doc.transact(), board.doc().transact());
        let text = |txn: &yrs::Transaction<'_>| txn.get_text("notes").map(|t| t.get_string(txn));
        ours.state_vector() == theirs.state_vector()
            && ours.snapshot().delete_set == theirs.snapshot().delete_set
            && text(&ours) == text(&theirs)
            && !ours.has_missing_updates()
    }

    fn contains(frames: &[Bytes], needle: &str) -> bool {
        frames.iter().any(|f| f.windows(needle.len()).any(|w| w == needle.as_bytes()))
    }

    #[test]
    fn the_frame_encoder_writes_what_yrs_writes() {
        use std::collections::HashMap;
        use std::sync::Arc;
        use yrs::types::Attrs;
        use yrs::{Array, Map, MapPrelim, TextPrelim};
        let doc = Doc::with_client_id(7);
        let notes = doc.get_or_insert_text("notes");
        let cards = doc.get_or_insert_array("cards");
        let meta = doc.get_or_insert_map("meta");
        {
            let mut txn = doc.transact_mut();
            notes.push(&mut txn, "plain, and then: ünïcødé, 漢字, 🎉 emoji");
            let bold: Attrs = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
            notes.format(&mut txn, 0, 5, bold.clone());
            notes.insert_with_attributes(&mut txn, 3, "inserted", bold);
            notes.insert_embed(&mut txn, 2, Any::from("an embed"));
            cards.push_back(&mut txn, Any::from(1.5));
            cards.push_back(&mut txn, Any::from("a card"));
            cards.push_back(&mut txn, Any::Buffer(Arc::from(&[1u8, 2, 3][..])));
            cards.push_back(&mut txn, MapPrelim::from([("phase", Any::from("observe")), ("n", Any::from(-42))]));
            cards.push_back(&mut txn, TextPrelim::new("nested text"));
            meta.insert(&mut txn, "title", "a title");
            meta.insert(&mut txn, "count", Any::from(1_i64 << 40));
            meta.insert(&mut txn, "none", Any::Null);
            meta.insert(&mut txn, "list", Any::from(vec![Any::from(1), Any::from("two")]));
        }
        // Another client, deletions, an overwritten key and collected content.
        let other = Doc::with_client_id(8);
        other
            .transact_mut()
            .apply_update(Update::decode_v1(&doc.transact().encode_diff_v1(&StateVector::default())).unwrap())
            .unwrap();
        {
            let notes = other.get_or_insert_text("notes");
            let meta = other.get_or_insert_map("meta");
            let mut txn = other.transact_mut();
            notes.remove_range(&mut txn, 1, 6);
            notes.push(&mut txn, " and more");
            meta.insert(&mut txn, "title", "another title");
        }
        let mut board = Board::new();
        board.load(&other.transact().encode_diff_v1(&StateVector::default())).unwrap();
        let frame = board.whole_board(0);
        assert_eq!(frame, sync::encode_step2(&board.encode_state()));
        assert_eq!(payload_of(&frame), board.encode_state());
        // An empty board, and frames whose length takes several bytes to write.
        assert_eq!(Board::new().whole_board(0), sync::encode_step2(&Board::new().encode_state()));
        let mut big = Board::new();
        big.load(&client_update(&"x".repeat(200_000))).unwrap();
        assert_eq!(big.whole_board(0), sync::encode_step2(&big.encode_state()));
    }

    #[test]
    fn newcomers_share_one_encoding_and_each_holds_exactly_the_board() {
        let mut board = Board::new();
        let mut writer = Member::new(1);
        Member::send(&mut board, &writer.append("the group's notes"));
        let (first, frames) = newcomer(&mut board, 0);
        assert!(holds_the_board(&first, &board));
        // The newcomer answers the server's step 1 with what the board has already: no change,
        // nothing broadcast or relayed, and the encoding stays.
        let answer = first.transact().encode_diff_v1(&board.doc().transact().state_vector());
        let effects = board.handle_frame(ConnId(99), &sync::encode_step2(&answer), true, 0).unwrap();
        assert!(effects.broadcast.is_empty() && effects.relay.is_empty(), "nothing new, nothing sent");
        let (second, again) = newcomer(&mut board, 0);
        assert!(holds_the_board(&second, &board));
        assert_eq!(frames[0].as_ptr(), again[0].as_ptr(), "the second newcomer got the same bytes");
    }

    #[test]
    fn insertions_after_the_encoding_follow_it_to_newcomers() {
        let mut board = Board::new();
        let mut writer = Member::new(1);
        let mut other = Member::new(2);
        // Large enough for the updates below to stay within a quarter of it.
        Member::send(&mut board, &writer.append(&"start ".repeat(1000)));
        let (_, first) = newcomer(&mut board, 0);
        // Two members keep typing; the other one starts from the board.
        apply_frames(&other.doc, &first);
        other.sent = other.doc.transact().state_vector();
        let mut broadcast = Vec::new();
        for i in 0..10 {
            broadcast.extend(Member::send(&mut board, &writer.append(&format!(" w{i}"))).broadcast);
            broadcast.extend(Member::send(&mut board, &other.append(&format!(" o{i}"))).broadcast);
        }
        let (doc, frames) = newcomer(&mut board, 0);
        assert!(holds_the_board(&doc, &board));
        // The kept encoding goes as an update, then the updates since as they were broadcast,
        // then an empty step 2: a client that takes its first step 2 for "synced" (as
        // y-websocket does) holds the whole board by then.
        assert_eq!(frames[0][2..], first[0][2..], "the encoding was kept");
        assert_eq!(frames[0][..2], [0, 2], "sent as an update");
        assert_eq!(frames[1..=broadcast.len()], broadcast[..], "then the updates since, as they were broadcast");
        assert_eq!(frames.len(), broadcast.len() + 2);
        let synced = Doc::new();
        apply_until_synced(&synced, &frames);
        assert!(holds_the_board(&synced, &board), "synced before the board was whole");
        // Past the bound, a fresh encoding.
        for i in 0..MAX_FRAMES_SINCE_WHOLE {
            Member::send(&mut board, &writer.append(&format!(" {i}")));
        }
        let (doc, frames) = newcomer(&mut board, 0);
        assert!(holds_the_board(&doc, &board));
        assert_eq!(frames.len(), 1, "one fresh frame");
        assert_ne!(frames[0].as_ptr(), first[0].as_ptr());
    }

    #[test]
    fn erased_text_never_reaches_a_newcomer() {
        let mut board = Board::new();
        let mut writer = Member::new(1);
        Member::send(&mut board, &writer.append("kept SECRET-ONE"));
        let (_, frames) = newcomer(&mut board, 0);
        assert!(contains(&frames, "SECRET-ONE"));
        // Erased after the encoding: the next newcomer gets a new one.
        Member::send(&mut board, &writer.erase(4, 11));
        let (doc, frames) = newcomer(&mut board, 0);
        assert!(holds_the_board(&doc, &board));
        assert!(!contains(&frames, "SECRET-ONE"), "erased text reached a newcomer");
        // Typed after the encoding (kept beside it), then erased.
        Member::send(&mut board, &writer.append(" SECRET-TWO"));
        let (_, frames) = newcomer(&mut board, 0);
        assert!(contains(&frames, "SECRET-TWO"));
        Member::send(&mut board, &writer.erase(4, 11));
        let (doc, frames) = newcomer(&mut board, 0);
        assert!(holds_the_board(&doc, &board));
        assert!(!contains(&frames, "SECRET-TWO"), "erased text reached a newcomer");
        assert_eq!(notes(&board), "kept");
    }

    #[test]
    fn a_held_back_update_still_reaches_newcomers() {
        let mut board = Board::new();
        let mut writer = Member::new(1);
        // Large enough for the updates below to stay within a quarter of it.
        let first_text = "first ".repeat(1000);
        Member::send(&mut board, &writer.append(&first_text));
        let (_, first) = newcomer(&mut board, 0);
        // The writer's second update is lost on the way; its third arrives and waits for it.
        let lost = writer.append("second ");
        let third = writer.append("third");
        let effects = Member::send(&mut board, &third);
        assert_eq!(effects.broadcast.len(), 1, "a held-back update is news for the others");
        assert_eq!(board.pending().len(), 1);
        let (doc, frames) = newcomer(&mut board, 0);
        assert_eq!(frames[0].as_ptr(), first[0].as_ptr(), "nothing integrated yet: the encoding stays");
        assert!(doc.transact().has_missing_updates(), "the newcomer holds the third update back too");
        // The lost update arrives: the board and the newcomer (which gets it broadcast) agree.
        let effects = Member::send(&mut board, &lost);
        apply_frames(&doc, &effects.broadcast);
        assert!(holds_the_board(&doc, &board));
        assert_eq!(notes(&board), format!("{first_text}second third"));
        let (later, frames) = newcomer(&mut board, 0);
        assert!(holds_the_board(&later, &board));
        assert_ne!(frames[0].as_ptr(), first[0].as_ptr(), "the gap filled: a fresh encoding");
    }

    #[test]
    fn a_newcomer_with_edits_of_its_own_is_served_the_whole_board() {
        let mut board = Board::new();
        let mut writer = Member::new(1);
        Member::send(&mut board, &writer.append("board"));
        let (_, first) = newcomer(&mut board, 0);
        // Typed offline before its first sync: its state vector names only itself.
        let mut late = Member::new(3);
        late.append("offline");
        assert!(board.holds_none_of(&late.doc.transact().state_vector()));
        let step1 = sync::encode_step1(&late.doc.transact().state_vector());
        let effects = board.handle_frame(ConnId(3), &step1, true, 0).unwrap();
        assert_eq!(effects.reply[0].as_ptr(), first[0].as_ptr());
        apply_frames(&late.doc, &effects.reply);
        let answer = late.doc.transact().encode_diff_v1(&board.doc().transact().state_vector());
        board.handle_frame(ConnId(3), &sync::encode_step2(&answer), true, 0).unwrap();
        assert!(holds_the_board(&late.doc, &board));
        // A member that holds some of the board gets a diff.
        assert!(!board.holds_none_of(&writer.doc.transact().state_vector()));
    }

    #[test]
    fn the_encoding_is_let_go_of_when_nobody_asks() {
        let mut board = Board::new();
        let mut writer = Member::new(1);
        Member::send(&mut board, &writer.append(&"x".repeat(10_000)));
        assert_eq!(board.newcomer_cache_bytes(), 0, "nothing encoded before a newcomer asks");
        newcomer(&mut board, 1_000);
        Member::send(&mut board, &writer.append("more"));
        assert!(board.newcomer_cache_bytes() > 10_000);
        board.sweep(1_000 + WHOLE_BOARD_KEPT_MS - 1, u64::MAX);
        assert!(board.newcomer_cache_bytes() > 10_000, "kept for a while");
        board.sweep(1_000 + WHOLE_BOARD_KEPT_MS, u64::MAX);
        assert_eq!(board.newcomer_cache_bytes(), 0, "then let go of");
        let (doc, _) = newcomer(&mut board, 0);
        assert!(holds_the_board(&doc, &board));
    }

    #[test]
    fn a_read_only_connection_changes_nothing() {
        let mut board = Board::new();
        let frame = sync::encode_update(&client_update("not allowed"));
        let effects = board.handle_frame(ConnId(1), &frame, false, 0).unwrap();
        assert!(effects.write_refused);
        assert!(effects.broadcast.is_empty());
        assert_eq!(notes(&board), "");
    }

    #[test]
    fn a_reader_answering_the_servers_step1_is_not_refused() {
        // The board holds text with a deletion, so every diff carries a delete set.
        let writer = Doc::new();
        let text = writer.get_or_insert_text("notes");
        text.push(&mut writer.transact_mut(), "kept and dropped");
        text.remove_range(&mut writer.transact_mut(), 4, 12);
        let mut board = Board::new();
        let everything = writer.transact().encode_state_as_update_v1(&StateVector::default());
        board.handle_frame(ConnId(1), &sync::encode_update(&everything), true, 0).unwrap();

        // A reader who synced answers the server's step 1 with what it holds beyond the
        // server's state: nothing but the delete set the board already has.
        let reader = Doc::new();
        reader.transact_mut().apply_update(Update::decode_v1(&everything).unwrap()).unwrap();
        let answer = reader.transact().encode_diff_v1(&board.doc().transact().state_vector());
        let effects = board.handle_frame(ConnId(2), &sync::encode_step2(&answer), false, 0).unwrap();
        assert!(!effects.write_refused, "an answer without news is no refusal");
        // An empty update (a fresh reader's answer) is none either.
        let empty = Doc::new().transact().encode_state_as_update_v1(&StateVector::default());
        let effects = board.handle_frame(ConnId(2), &sync::encode_step2(&empty), false, 0).unwrap();
        assert!(!effects.write_refused);

        // A deletion the board has not made is news, and refused.
        let reader_text = reader.get_or_insert_text("notes");
        reader_text.remove_range(&mut reader.transact_mut(), 0, 1);
        let change = reader.transact().encode_diff_v1(&board.doc().transact().state_vector());
        let effects = board.handle_frame(ConnId(2), &sync::encode_step2(&change), false, 0).unwrap();
        assert!(effects.write_refused);
        assert_eq!(notes(&board), "kept");
    }

    #[test]
    fn awareness_is_echoed_to_its_sender_and_broadcast() {
        let mut board = Board::new();
        let mut update = AwarenessUpdate { clients: Default::default() };
        update.clients.insert(
            yrs::block::ClientID::new(7),
            yrs::sync::awareness::AwarenessUpdateEntry { clock: 1, json: r#"{"user":{}}"#.into() },
        );
        let frame = sync::encode_awareness(&update);
        let effects = board.handle_frame(ConnId(1), &frame, true, 0).unwrap();
        assert_eq!(effects.reply, vec![frame.clone()], "the sender hears its own awareness");
        assert_eq!(effects.broadcast, vec![frame]);
    }

    #[test]
    fn an_update_past_the_size_limit_is_refused_and_the_board_stays_intact() {
        let mut board = Board::with_limit(64);
        board.handle_frame(ConnId(1), &sync::encode_update(&client_update("small")), true, 0).unwrap();
        let before = board.encode_state();
        let big = client_update(&"x".repeat(200));
        let effects = board.handle_frame(ConnId(1), &sync::encode_update(&big), true, 0).unwrap();
        assert!(effects.board_full);
        assert!(effects.broadcast.is_empty() && effects.relay.is_empty(), "nothing relayed");
        assert_eq!(board.encode_state(), before);
        assert_eq!(notes(&board), "small");
    }

    #[test]
    fn a_bad_frame_leaves_the_board_as_it_was() {
        let mut board = Board::new();
        board.handle_frame(ConnId(1), &sync::encode_update(&client_update("kept")), true, 0).unwrap();
        // A good update followed by a truncated one: the whole frame is refused.
        let mut frame = sync::encode_update(&client_update("dropped")).to_vec();
        frame.extend_from_slice(&[0, 2, 50, 1]);
        assert!(board.handle_frame(ConnId(1), &frame, true, 0).is_err());
        assert_eq!(notes(&board), "kept");
    }
}
