//! The shared board: one yrs document plus the awareness states of its editors.
//!
//! [`Board::handle_frame`] takes a binary frame from a connection and returns what to send
//! back to that connection and what to broadcast to the room, already encoded. The board never
//! decides who may write; the caller passes that in, so the meeting rules stay in one place.

use std::panic::{catch_unwind, AssertUnwindSafe};

use balint_proto::sync::{self, AwarenessUpdate, FrameError, Message, SyncMessage};
use bytes::Bytes;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

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
    /// The whole board as a sync step 2 frame, and when it was encoded (ms): newcomers (an
    /// empty state vector) in a row share one encoding until the board changes. yrs encodes a
    /// whole board at about 50 ns per character of text; a copy of the bytes is far cheaper.
    whole: Option<(Bytes, u64)>,
}

/// How long the whole-board frame is kept with nobody asking for it.
const WHOLE_BOARD_KEPT_MS: u64 = 60_000;

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
        let messages = sync::decode_frame(frame)?;
        let mut effects = Effects::default();
        for message in messages {
            match message {
                Message::Sync(SyncMessage::SyncStep1(remote)) => {
                    let step2 = if remote.is_empty() {
                        self.whole_board(now_ms)
                    } else {
                        sync::encode_step2(&self.diff(&remote))
                    };
                    effects.reply.push(step2);
                    for held in &self.held_back {
                        effects.reply.push(sync::encode_update(held));
                    }
                }
                Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                    if !can_write {
                        // A reader answers the server's step 1 with a step 2 that carries
                        // nothing the board lacks; only a real change is a refusal to report.
                        if self.is_news(&update) {
                            effects.write_refused = true;
                        }
                        continue;
                    }
                    if self.applied_bytes.saturating_add(update.len()) > self.max_bytes {
                        effects.board_full = true;
                        continue;
                    }
                    self.apply(&update)?;
                    effects.broadcast.push(sync::encode_update(&update));
                    effects.relay.push(Relay::Update(Bytes::from(update)));
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

    /// Removes the awareness states `conn` announced. Returns the removal to broadcast.
    pub fn leave(&mut self, conn: ConnId) -> Option<AwarenessChange> {
        self.awareness.remove_connection(conn).map(|u| awareness_change(&u))
    }

    /// The whole board as a sync step 2 frame, encoded once per change of the board.
    pub fn whole_board(&mut self, now_ms: u64) -> Bytes {
        match &mut self.whole {
            Some((frame, used_ms)) => {
                *used_ms = now_ms;
                frame.clone()
            }
            None => {
                let frame = sync::encode_step2(&self.encode_state());
                self.whole = Some((frame.clone(), now_ms));
                frame
            }
        }
    }

    /// Sweeps awareness states not renewed within `timeout_ms`, and lets go of a whole-board
    /// frame nobody asked for lately.
    pub fn sweep(&mut self, now_ms: u64, timeout_ms: u64) -> Option<AwarenessChange> {
        if self.whole.as_ref().is_some_and(|(_, used)| now_ms.saturating_sub(*used) >= WHOLE_BOARD_KEPT_MS) {
            self.whole = None;
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

    /// Applies a board update that another node applied already. Returns the frame to
    /// broadcast here.
    pub fn apply_remote(&mut self, update: &[u8]) -> Result<Bytes, FrameError> {
        self.apply(update)?;
        Ok(sync::encode_update(update))
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
        self.apply(update)
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

    /// Whether `payload` holds anything the board lacks: a block past its state, or a deletion
    /// it has not made. An update that does not decode counts as news (it is refused either way).
    fn is_news(&self, payload: &[u8]) -> bool {
        let Ok(update) = Update::decode_v1(payload) else { return true };
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

    fn apply(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        let update = Update::decode_v1(payload).map_err(|_| FrameError::Malformed)?;
        // Whatever happens next may change the document.
        self.whole = None;
        // yrs validates structure while decoding; integration of a hostile update is guarded as
        // well, so no input can take the server down.
        let doc = &self.doc;
        catch_unwind(AssertUnwindSafe(|| doc.transact_mut().apply_update(update)))
            .map_err(|_| FrameError::Malformed)?
            .map_err(|_| FrameError::Malformed)?;
        self.applied_bytes = self.applied_bytes.saturating_add(payload.len());
        if self.doc.transact().has_missing_updates() {
            self.held_back.push(Bytes::copy_from_slice(payload));
        } else {
            self.held_back.clear();
        }
        Ok(())
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
