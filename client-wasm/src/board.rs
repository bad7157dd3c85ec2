//! The client's copy of the board: a yrs document with the shared running `notes` (a Y.Text)
//! and the `observations` (a Y.Array of Y.Map cards `{id, author, phase, body: Y.Text,
//! created_ms}`).
//!
//! Every local edit returns the Yjs v1 update to send; remote updates are applied here. Text
//! offsets are UTF-16 code units, as in the browser, so a textarea's selection maps onto the
//! board without conversion. [`Board::capture`] and [`Board::resolve`] keep a caret anchored to
//! the characters around it while remote edits land: the caret follows the text it was in,
//! not a number that someone else's typing has made stale.

use balint_proto::room::Template;
use serde::Serialize;
use yrs::branch::BranchPtr;
use yrs::types::text::TextPrelim;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayRef, Assoc, Doc, GetString, IndexScope, IndexedSequence, Map, MapPrelim, MapRef, Number,
    OffsetKind, Options, Out, ReadTxn, StateVector, StickyIndex, Text, TextRef, Transact, Update,
};

use crate::textdiff;

/// Which text of the board an editor shows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TextKey {
    /// The shared running notes.
    Notes,
    /// The body of the observation card with this id.
    Card(String),
}

/// One observation card, as the UI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Card {
    /// Unique id, chosen by the author's client.
    pub id: String,
    /// The author's display name.
    pub author: String,
    /// The phase the card was written in (a phase's wire name).
    pub phase: String,
    /// The card's text.
    pub body: String,
    /// When it was created (Unix milliseconds).
    pub created_ms: u64,
}

/// What a card is created with.
#[derive(Debug, Clone)]
pub struct NewCard<'a> {
    /// Unique id.
    pub id: &'a str,
    /// The author's display name.
    pub author: &'a str,
    /// The current phase's wire name.
    pub phase: &'a str,
    /// The first text of the card.
    pub body: &'a str,
    /// Creation time (Unix milliseconds).
    pub created_ms: u64,
}

/// A board update could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoardError {
    /// The bytes were not a Yjs v1 update.
    #[error("malformed board update")]
    Malformed,
    /// The update decoded but yrs refused to integrate it.
    #[error("board update could not be applied")]
    Refused,
    /// No card has this id.
    #[error("no such card")]
    UnknownCard,
}

/// A selection anchored to the text around it.
#[derive(Debug, Clone)]
pub struct Anchored {
    key: TextKey,
    start: Option<StickyIndex>,
    end: Option<StickyIndex>,
    fallback: (u32, u32),
}

/// The board document.
pub struct Board {
    doc: Doc,
}

impl Default for Board {
    fn default() -> Self {
        Self::new()
    }
}

impl Board {
    /// An empty board with a fresh random client id.
    pub fn new() -> Self {
        Board { doc: Doc::with_options(Options { offset_kind: OffsetKind::Utf16, ..Options::default() }) }
    }

    /// Throws the whole document away, history included, and starts an empty one. CRDTs keep
    /// deleted text, so clearing the visible text would not be enough.
    pub fn wipe(&mut self) {
        *self = Board::new();
    }

    /// Whether the document holds nothing at all, not even deleted history.
    pub fn is_empty(&self) -> bool {
        self.doc.transact().state_vector() == StateVector::default()
    }

    fn notes_ref(&self) -> TextRef {
        self.doc.get_or_insert_text("notes")
    }

    fn observations_ref(&self) -> ArrayRef {
        self.doc.get_or_insert_array("observations")
    }

    /// The running notes.
    pub fn notes(&self) -> String {
        let notes = self.notes_ref();
        let txn = self.doc.transact();
        notes.get_string(&txn)
    }

    /// The text an editor shows, if it still exists.
    pub fn text(&self, key: &TextKey) -> Option<String> {
        let text = self.text_ref(key)?;
        let txn = self.doc.transact();
        Some(text.get_string(&txn))
    }

    fn text_ref(&self, key: &TextKey) -> Option<TextRef> {
        match key {
            TextKey::Notes => Some(self.notes_ref()),
            TextKey::Card(id) => {
                let card = self.card_ref(id)?;
                let txn = self.doc.transact();
                match card.get(&txn, "body") {
                    Some(Out::YText(text)) => Some(text),
                    _ => None,
                }
            }
        }
    }

    fn card_ref(&self, id: &str) -> Option<MapRef> {
        let observations = self.observations_ref();
        let txn = self.doc.transact();
        let found = observations.iter(&txn).find_map(|item| match item {
            Out::YMap(card) if matches!(card.get(&txn, "id"), Some(Out::Any(Any::String(s))) if &*s == id) => {
                Some(card)
            }
            _ => None,
        });
        found
    }

    /// Replaces the text of `key` with `value` by the smallest edit (see [`textdiff`]), and
    /// returns the update to send, or `None` when nothing changed. `caret` is the editor's
    /// caret after the user's edit, which settles where an ambiguous edit happened.
    pub fn set_text(&mut self, key: &TextKey, value: &str, caret: Option<u32>) -> Result<Option<Vec<u8>>, BoardError> {
        let text = self.text_ref(key).ok_or(BoardError::UnknownCard)?;
        let current = {
            let txn = self.doc.transact();
            text.get_string(&txn)
        };
        let Some(splice) = textdiff::diff(&current, value, caret) else {
            return Ok(None);
        };
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            if splice.delete > 0 {
                text.remove_range(&mut txn, splice.index, splice.delete);
            }
            if !splice.insert.is_empty() {
                text.insert(&mut txn, splice.index, &splice.insert);
            }
        }
        Ok(Some(self.update_since(&before)))
    }

    /// Adds an observation card at the end and returns the update to send.
    pub fn add_card(&mut self, card: NewCard<'_>) -> Vec<u8> {
        let observations = self.observations_ref();
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            let prelim: MapPrelim = MapPrelim::from([
                ("id", yrs::In::from(Any::from(card.id))),
                ("author", yrs::In::from(Any::from(card.author))),
                ("phase", yrs::In::from(Any::from(card.phase))),
                ("body", yrs::In::from(TextPrelim::new(card.body))),
                // A float is a JavaScript number on the Yjs side (an integer would be a bigint).
                ("created_ms", yrs::In::from(Any::Number(Number::Float(card.created_ms as f64)))),
            ]);
            observations.push_back(&mut txn, prelim);
        }
        self.update_since(&before)
    }

    /// Every observation card, in board order. Entries that are not well-formed cards (a
    /// foreign client may write anything) are skipped.
    pub fn cards(&self) -> Vec<Card> {
        let observations = self.observations_ref();
        let txn = self.doc.transact();
        let string = |card: &MapRef, key: &str| match card.get(&txn, key) {
            Some(Out::Any(Any::String(s))) => Some(s.to_string()),
            _ => None,
        };
        observations
            .iter(&txn)
            .filter_map(|item| {
                let Out::YMap(card) = item else { return None };
                let body = match card.get(&txn, "body") {
                    Some(Out::YText(text)) => text.get_string(&txn),
                    Some(Out::Any(Any::String(s))) => s.to_string(),
                    _ => String::new(),
                };
                let created_ms = match card.get(&txn, "created_ms") {
                    Some(Out::Any(Any::Number(n))) => n.as_i64().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    _ => 0,
                };
                Some(Card {
                    id: string(&card, "id")?,
                    author: string(&card, "author").unwrap_or_default(),
                    phase: string(&card, "phase").unwrap_or_default(),
                    body,
                    created_ms,
                })
            })
            .collect()
    }

    /// The board as Markdown, as a leader exports it: the notes, then the cards grouped by the
    /// phases of `template` ([`balint_proto::board::export_markdown`], the server's own export).
    pub fn to_markdown(&self, title: Option<&str>, template: Template) -> String {
        balint_proto::board::export_markdown(&self.doc, title, template)
    }

    /// The state vector, for a sync step 1.
    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    /// What the document has seen: its state vector and its delete set. Two copies with equal
    /// summaries hold the same board.
    pub fn summary(&self) -> yrs::Snapshot {
        self.doc.transact().snapshot()
    }

    /// What a peer with `state_vector` lacks, for a sync step 2.
    pub fn update_since(&self, state_vector: &StateVector) -> Vec<u8> {
        self.doc.transact().encode_state_as_update_v1(state_vector)
    }

    /// Whether the document holds updates back because something they build on has not
    /// arrived (or was lost to yrs's bookkeeping of such updates): a sync with the server
    /// fills the gap.
    pub fn is_waiting(&self) -> bool {
        self.doc.transact().has_missing_updates()
    }

    /// Applies a remote update.
    pub fn apply_update(&mut self, update: &[u8]) -> Result<(), BoardError> {
        let update = Update::decode_v1(update).map_err(|_| BoardError::Malformed)?;
        self.doc.transact_mut().apply_update(update).map_err(|_| BoardError::Refused)
    }

    /// Anchors the selection `start..end` of `key`'s editor to the characters around it.
    pub fn capture(&self, key: &TextKey, start: u32, end: u32) -> Anchored {
        let anchor = |index: u32| {
            let text = self.text_ref(key)?;
            let txn = self.doc.transact();
            // Anchored to the character before the caret: text that someone inserts right at
            // the caret goes after it, so the caret does not jump while its owner types.
            text.sticky_index(&txn, index, Assoc::Before)
        };
        Anchored { key: key.clone(), start: anchor(start), end: anchor(end), fallback: (start, end) }
    }

    /// This copy's Yjs client id, which its awareness state is published under.
    pub fn client_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    /// A relative position at `index` of `key`'s text, for another client to resolve: tied to
    /// the character after it, as Yjs does by default. `None` when the text does not exist or
    /// the index lies past its end.
    pub fn sticky(&self, key: &TextKey, index: u32) -> Option<StickyIndex> {
        let text = self.text_ref(key)?;
        let txn = self.doc.transact();
        text.sticky_index(&txn, index, Assoc::After).or_else(|| {
            // yrs has no item after the end to tie to; Yjs then names the text itself, which
            // resolves to its end, and so do we.
            let branch: &yrs::branch::Branch = text.as_ref();
            (index == text.len(&txn)).then(|| StickyIndex::new(IndexScope::from_branch(branch.into()), Assoc::After))
        })
    }

    /// Where a relative position from another client lies in `key`'s text now, in UTF-16
    /// units; `None` when it does not lie in that text (or not in this copy yet).
    pub fn resolve_sticky(&self, key: &TextKey, sticky: &StickyIndex) -> Option<u32> {
        let text = self.text_ref(key)?;
        let txn = self.doc.transact();
        let offset = sticky.get_offset(&txn)?;
        let branch: &yrs::branch::Branch = text.as_ref();
        (offset.branch == BranchPtr::from(branch)).then_some(offset.index)
    }

    /// Where an anchored selection is now.
    pub fn resolve(&self, anchored: &Anchored) -> (u32, u32) {
        let len = self.text(&anchored.key).map(|t| t.encode_utf16().count() as u32).unwrap_or(0);
        let txn = self.doc.transact();
        let place = |sticky: &Option<StickyIndex>, fallback: u32| {
            sticky.as_ref().and_then(|s| s.get_offset(&txn)).map(|o| o.index).unwrap_or(fallback).min(len)
        };
        let start = place(&anchored.start, anchored.fallback.0);
        let end = place(&anchored.end, anchored.fallback.1);
        (start, end.max(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends everything `from` has that `to` lacks.
    fn sync(from: &Board, to: &mut Board) {
        let update = from.update_since(&to.state_vector());
        to.apply_update(&update).unwrap();
    }

    fn card<'a>(id: &'a str, body: &'a str) -> NewCard<'a> {
        NewCard { id, author: "Ann", phase: "questions", body, created_ms: 1_767_261_600_000 }
    }

    #[test]
    fn local_edits_produce_updates_that_converge() {
        let mut a = Board::new();
        let mut b = Board::new();
        let update = a.set_text(&TextKey::Notes, "hello", Some(5)).unwrap().unwrap();
        b.apply_update(&update).unwrap();
        assert_eq!(b.notes(), "hello");
        // Both edit at once; each applies the other's update.
        let from_a = a.set_text(&TextKey::Notes, "hello world", Some(11)).unwrap().unwrap();
        let from_b = b.set_text(&TextKey::Notes, "Oh, hello", Some(4)).unwrap().unwrap();
        a.apply_update(&from_b).unwrap();
        b.apply_update(&from_a).unwrap();
        assert_eq!(a.notes(), "Oh, hello world");
        assert_eq!(a.notes(), b.notes());
        assert_eq!(a.set_text(&TextKey::Notes, "Oh, hello world", None).unwrap(), None);
    }

    #[test]
    fn the_caret_stays_with_its_text_when_remote_edits_land() {
        let mut mine = Board::new();
        let mut theirs = Board::new();
        mine.set_text(&TextKey::Notes, "abc def", None).unwrap();
        sync(&mine, &mut theirs);
        // My caret sits between "abc" and " def"; I have "def" selected elsewhere.
        let caret = mine.capture(&TextKey::Notes, 3, 3);
        let selection = mine.capture(&TextKey::Notes, 4, 7);
        // Someone types before it, and someone deletes after it.
        let u1 = theirs.set_text(&TextKey::Notes, "XYZ abc def", Some(4)).unwrap().unwrap();
        mine.apply_update(&u1).unwrap();
        assert_eq!(mine.resolve(&caret), (7, 7));
        assert_eq!(mine.resolve(&selection), (8, 11));
        // Text inserted right at my caret goes after it: my caret does not move.
        sync(&mine, &mut theirs);
        let u2 = theirs.set_text(&TextKey::Notes, "XYZ abc!! def", Some(9)).unwrap().unwrap();
        mine.apply_update(&u2).unwrap();
        assert_eq!(mine.notes(), "XYZ abc!! def");
        assert_eq!(mine.resolve(&caret), (7, 7));
        // The text around the caret is deleted: the caret lands where it was.
        sync(&mine, &mut theirs);
        let u3 = theirs.set_text(&TextKey::Notes, "XYZ def", Some(4)).unwrap().unwrap();
        mine.apply_update(&u3).unwrap();
        assert_eq!(mine.resolve(&caret), (4, 4));
    }

    #[test]
    fn a_caret_at_the_start_and_in_an_empty_text_are_stable() {
        let mut mine = Board::new();
        let mut theirs = Board::new();
        let empty = mine.capture(&TextKey::Notes, 0, 0);
        let u = theirs.set_text(&TextKey::Notes, "first", Some(5)).unwrap().unwrap();
        mine.apply_update(&u).unwrap();
        assert_eq!(mine.resolve(&empty), (0, 0));
        let start = mine.capture(&TextKey::Notes, 0, 0);
        let u = theirs.set_text(&TextKey::Notes, "firstly", Some(7)).unwrap().unwrap();
        mine.apply_update(&u).unwrap();
        assert_eq!(mine.resolve(&start), (0, 0));
    }

    #[test]
    fn utf16_offsets_match_the_browser() {
        let mut board = Board::new();
        board.set_text(&TextKey::Notes, "é😀", None).unwrap();
        // In a textarea the caret after the emoji is at 3.
        board.set_text(&TextKey::Notes, "é😀!", Some(4)).unwrap();
        assert_eq!(board.notes(), "é😀!");
        let caret = board.capture(&TextKey::Notes, 3, 3);
        assert_eq!(board.resolve(&caret), (3, 3));
    }

    #[test]
    fn cards_are_added_listed_and_edited_on_every_copy() {
        let mut a = Board::new();
        let mut b = Board::new();
        b.apply_update(&a.add_card(card("c1", "He seems tired"))).unwrap();
        b.apply_update(&a.add_card(card("c2", "She felt unheard"))).unwrap();
        let cards = b.cards();
        assert_eq!(cards.len(), 2);
        assert_eq!(cards[0].id, "c1");
        assert_eq!(cards[0].author, "Ann");
        assert_eq!(cards[0].phase, "questions");
        assert_eq!(cards[0].created_ms, 1_767_261_600_000);
        assert_eq!(cards[1].body, "She felt unheard");
        let key = TextKey::Card("c1".into());
        let update = b.set_text(&key, "He seems very tired", Some(13)).unwrap().unwrap();
        a.apply_update(&update).unwrap();
        assert_eq!(a.text(&key).as_deref(), Some("He seems very tired"));
        assert_eq!(a.set_text(&TextKey::Card("nope".into()), "x", None), Err(BoardError::UnknownCard));
    }

    #[test]
    fn wiping_drops_content_and_history() {
        let mut board = Board::new();
        board.set_text(&TextKey::Notes, "confidential", None).unwrap();
        board.set_text(&TextKey::Notes, "", None).unwrap();
        board.add_card(card("c1", "secret"));
        assert!(!board.is_empty());
        board.wipe();
        assert!(board.is_empty());
        assert_eq!(board.notes(), "");
        assert!(board.cards().is_empty());
        assert_eq!(board.update_since(&StateVector::default()), Board::new().update_since(&StateVector::default()));
    }

    #[test]
    fn garbage_is_refused() {
        let mut board = Board::new();
        assert_eq!(board.apply_update(&[0xff, 0xff, 0x01]), Err(BoardError::Malformed));
    }
}
