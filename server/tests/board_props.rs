//! Property tests for the board: a connection that may not write never changes it, and
//! several clients editing at once, whose updates reach the server and each other late, in any
//! order and interleaving, all end with the server's content.

use balint_proto::sync::{self, Message, SyncMessage};
use balint_server::room::board::{Board, Relay};
use balint_server::room::ConnId;
use proptest::prelude::*;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{
    Array, ArrayRef, Doc, GetString, Map, MapPrelim, OffsetKind, Options, ReadTxn, StateVector, Text, TextRef,
    Transact, Update,
};

/// One Yjs client of the board, counting text in UTF-16 code units as Yjs does.
struct Client {
    doc: Doc,
    notes: TextRef,
    observations: ArrayRef,
}

impl Client {
    fn new(client_id: u64) -> Self {
        let mut options = Options::with_client_id(yrs::block::ClientID::new(client_id));
        options.offset_kind = OffsetKind::Utf16;
        let doc = Doc::with_options(options);
        let notes = doc.get_or_insert_text("notes");
        let observations = doc.get_or_insert_array("observations");
        Client { doc, notes, observations }
    }

    /// Makes one edit and returns the update it produced, if any.
    fn edit(&self, edit: &Edit) -> Option<Vec<u8>> {
        let mut txn = self.doc.transact_mut();
        let len = self.notes.len(&txn);
        let cards = self.observations.len(&txn);
        match edit {
            Edit::Insert(at, text) => self.notes.insert(&mut txn, (*at % (len as usize + 1)) as u32, text),
            Edit::Delete(at, n) if len > 0 => {
                let at = (*at % len as usize) as u32;
                self.notes.remove_range(&mut txn, at, (*n).min(len - at));
            }
            Edit::AddCard(body) => {
                let card = self.observations.push_back(&mut txn, MapPrelim::default());
                card.insert(&mut txn, "body", body.as_str());
                card.insert(&mut txn, "phase", "reflection");
            }
            Edit::ChangeCard(at, body) if cards > 0 => {
                if let Some(yrs::Out::YMap(card)) = self.observations.get(&txn, (*at % cards as usize) as u32) {
                    card.insert(&mut txn, "body", body.as_str());
                }
            }
            Edit::RemoveCard(at) if cards > 0 => self.observations.remove(&mut txn, (*at % cards as usize) as u32),
            _ => return None,
        }
        // What this transaction changed, deletions included, as Yjs sends it.
        Some(txn.encode_update_v1())
    }

    fn apply(&self, update: &[u8]) {
        self.doc.transact_mut().apply_update(Update::decode_v1(update).expect("a valid update")).expect("applies");
    }

    /// Applies every update of a frame the server sent.
    fn receive(&self, frame: &[u8]) {
        for message in sync::decode_frame(frame).expect("the server sends valid frames") {
            if let Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) = message {
                self.apply(&update);
            }
        }
    }

    fn content(&self) -> (String, yrs::Any) {
        content(&self.doc)
    }
}

/// The notes and the observation cards, as everyone should see them.
fn content(doc: &Doc) -> (String, yrs::Any) {
    let txn = doc.transact();
    let notes = txn.get_text("notes").map(|t| t.get_string(&txn)).unwrap_or_default();
    // A document that never saw a card has no `observations` yet: the same as none.
    let cards =
        txn.get_array("observations").map_or_else(|| yrs::Any::from(Vec::<yrs::Any>::new()), |a| a.to_json(&txn));
    (notes, cards)
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, u32),
    AddCard(String),
    ChangeCard(usize, String),
    RemoveCard(usize),
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(vec!['a', 'b', 'c', ' ', '\n', 'é', 'ß', '—']), 1..6)
        .prop_map(String::from_iter)
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (any::<usize>(), text()).prop_map(|(at, t)| Edit::Insert(at, t)),
        3 => (any::<usize>(), 1u32..5).prop_map(|(at, n)| Edit::Delete(at, n)),
        1 => text().prop_map(Edit::AddCard),
        1 => (any::<usize>(), text()).prop_map(|(at, t)| Edit::ChangeCard(at, t)),
        1 => any::<usize>().prop_map(Edit::RemoveCard),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever valid edits an observer (or anyone who may not write) sends, as updates, sync
    /// step 2 or with other messages in one frame, the board stays byte for byte as it was and
    /// nothing is relayed or broadcast as a board change.
    #[test]
    fn a_connection_that_may_not_write_never_changes_the_board(
        seed in proptest::collection::vec(edit(), 0..10),
        edits in proptest::collection::vec((edit(), 0u8..3), 1..30),
    ) {
        let mut board = Board::new();
        let writer = Client::new(1);
        for edit in &seed {
            if let Some(update) = writer.edit(edit) {
                board.handle_frame(ConnId(1), &sync::encode_update(&update), true, 0).unwrap();
            }
        }
        let before = board.encode_state();
        let observer = Client::new(2);
        observer.apply(&before);
        for (edit, framing) in &edits {
            let Some(update) = observer.edit(edit) else { continue };
            let frame = match framing {
                0 => sync::encode_update(&update),
                1 => sync::encode_step2(&update),
                _ => sync::encode_all(&[
                    Message::Sync(SyncMessage::SyncStep1(StateVector::default())),
                    Message::Sync(SyncMessage::Update(update.clone())),
                    Message::AwarenessQuery,
                ]),
            };
            let effects = board.handle_frame(ConnId(2), &frame, false, 0).unwrap();
            prop_assert!(effects.write_refused);
            prop_assert!(!effects.relay.iter().any(|r| matches!(r, Relay::Update(_))));
            prop_assert!(effects.broadcast.is_empty());
            prop_assert_eq!(board.encode_state(), before.clone());
        }
    }

    /// Several clients edit at once. Each client's updates reach the server in order (one
    /// socket), but the clients' streams interleave at random, the server's broadcasts reach
    /// each client in any order, and now and then a client resyncs with a sync step 1. Once
    /// everything has arrived, every client shows what the server holds.
    #[test]
    fn clients_converge_with_the_server_under_any_interleaving(
        clients in 2usize..5,
        steps in proptest::collection::vec((0usize..4, 0u8..10, edit(), any::<usize>()), 1..80),
        flush in proptest::collection::vec(any::<usize>(), 0..200),
    ) {
        converge(clients, &steps, &flush, Delivery::InOrderWithResyncs)?;
    }

    /// The same with each client's updates reaching the server in any order (as through
    /// several nodes around a catch-up): every client still ends with what the server holds,
    /// once those holding updates back have synced.
    #[test]
    fn clients_converge_with_the_server_under_any_order_of_delivery(
        clients in 2usize..5,
        steps in proptest::collection::vec((0usize..4, 0u8..10, edit(), any::<usize>()), 1..80),
        flush in proptest::collection::vec(any::<usize>(), 0..200),
    ) {
        converge(clients, &steps, &flush, Delivery::AnyOrder)?;
    }
}

type ConvergenceStep = (usize, u8, Edit, usize);

/// How a client's own updates reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// In the order they were made (one WebSocket), and clients resync now and then.
    InOrderWithResyncs,
    /// In any order (as through several nodes), and clients resync now and then.
    AnyOrder,
}

/// Plays one convergence scenario: `steps` are `(client, action, edit, pick)`, `flush` picks
/// the order in which what is still on its way arrives.
fn converge(
    clients: usize,
    steps: &[ConvergenceStep],
    flush: &[usize],
    delivery: Delivery,
) -> Result<(), TestCaseError> {
    let mut board = Board::new();
    let peers: Vec<Client> = (0..clients).map(|i| Client::new(i as u64 + 1)).collect();
    // Updates a client made that the server has not received, and frames the server sent
    // that a client has not received.
    let mut outbox: Vec<Vec<Vec<u8>>> = vec![Vec::new(); clients];
    let mut inbox: Vec<Vec<Vec<u8>>> = vec![Vec::new(); clients];

    fn upload(board: &mut Board, inbox: &mut [Vec<Vec<u8>>], from: usize, update: &[u8]) {
        let effects = board.handle_frame(ConnId(from as u64 + 1), &sync::encode_update(update), true, 0).unwrap();
        for frame in effects.broadcast {
            for (to, queue) in inbox.iter_mut().enumerate() {
                if to != from {
                    queue.push(frame.to_vec());
                }
            }
        }
    }

    for (who, action, edit, at) in steps {
        let who = who % clients;
        match *action {
            // Edit locally.
            0..=4 => {
                if let Some(update) = peers[who].edit(edit) {
                    outbox[who].push(update);
                }
            }
            // One pending update reaches the server.
            5 | 6 if !outbox[who].is_empty() => {
                let k = if delivery == Delivery::AnyOrder { at % outbox[who].len() } else { 0 };
                let update = outbox[who].remove(k);
                upload(&mut board, &mut inbox, who, &update);
            }
            // One pending broadcast reaches the client.
            7 | 8 if !inbox[who].is_empty() => {
                let k = at % inbox[who].len();
                let frame = inbox[who].remove(k);
                peers[who].receive(&frame);
            }
            // The client resyncs: its sync step 1, the server's step 2.
            9 => {
                let step1 = sync::encode_step1(&peers[who].doc.transact().state_vector());
                let effects = board.handle_frame(ConnId(who as u64 + 1), &step1, true, 0).unwrap();
                for frame in effects.reply {
                    peers[who].receive(&frame);
                }
            }
            _ => {}
        }
    }
    // Everything still on its way arrives, in a random order.
    let mut flush = flush.iter();
    let mut next = |len: usize| flush.next().map_or(0, |i| i % len);
    for (who, pending) in outbox.iter_mut().enumerate() {
        while !pending.is_empty() {
            let k = if delivery == Delivery::AnyOrder { next(pending.len()) } else { 0 };
            let update = pending.remove(k);
            upload(&mut board, &mut inbox, who, &update);
        }
    }
    for who in 0..clients {
        while !inbox[who].is_empty() {
            let k = next(inbox[who].len());
            let frame = inbox[who].remove(k);
            peers[who].receive(&frame);
        }
    }
    let server = content(board.doc());
    // A client still holding updates back syncs with the server, as balint-client does: with
    // updates arriving out of order, yrs 0.28.1 can keep some back for good even though
    // everything they build on has arrived.
    for (who, peer) in peers.iter().enumerate() {
        if peer.doc.transact().has_missing_updates() {
            let step1 = sync::encode_step1(&peer.doc.transact().state_vector());
            for frame in board.handle_frame(ConnId(who as u64 + 1), &step1, true, 0).unwrap().reply {
                peer.receive(&frame);
            }
        }
    }
    for (who, peer) in peers.iter().enumerate() {
        prop_assert_eq!(peer.content(), server.clone(), "client {} differs from the server", who);
        prop_assert_eq!(peer.doc.transact().state_vector(), board.doc().transact().state_vector());
    }
    Ok(())
}

/// Found by the convergence property with out-of-order updates and resyncs together: once the
/// board holds updates back (they arrived before what they build on), yrs 0.28.1's
/// `encode_state_as_update_v1` carries one of them under the wrong clock, and a client that
/// already had it shows it twice. `Board` answers a sync step 1 with the integrated diff
/// (`encode_diff_v1`) and the held-back updates beside it, which this test holds to.
#[test]
fn a_sync_step_2_from_a_board_with_held_back_updates_does_not_duplicate_content() {
    let author = Client::new(1);
    let insert = |author: &Client| author.edit(&Edit::Insert(0, "a".into())).unwrap();
    // Clocks 0, 1, 2, then a card (3 and 4), then 5.
    let updates = [
        insert(&author),
        insert(&author),
        insert(&author),
        author.edit(&Edit::AddCard("x".into())).unwrap(),
        insert(&author),
    ];
    let mut board = Board::new();
    // Clocks 1, 3 and 5 arrive first: none can be integrated without clock 0.
    for k in [1, 3, 4] {
        board.handle_frame(ConnId(1), &sync::encode_update(&updates[k]), true, 0).unwrap();
    }
    // The author resyncs (as after a reconnect): it lacks nothing, so nothing may change.
    let before = author.content();
    let step1 = sync::encode_step1(&author.doc.transact().state_vector());
    for frame in board.handle_frame(ConnId(1), &step1, true, 0).unwrap().reply {
        author.receive(&frame);
    }
    assert_eq!(author.content(), before, "the server's step 2 changed what its author already had");
}

/// Found while checking what a writer can put on the board: a card holding maps nested 20,000
/// deep fits in one 160 KB update and is applied, but `Board::to_markdown` (the export of a
/// persistent room) walks it by recursion (`to_json`) and overflows a 2 MiB stack (a tokio
/// worker's), which aborted the whole process. `to_markdown` reads only the cards' top-level
/// fields.
#[test]
fn a_deeply_nested_card_exports_without_overflowing_the_stack() {
    let doc = Doc::with_client_id(5);
    let cards = doc.get_or_insert_array("observations");
    {
        let mut txn = doc.transact_mut();
        let mut map = cards.push_back(&mut txn, MapPrelim::default());
        map.insert(&mut txn, "body", "deep");
        for _ in 0..20_000 {
            map = map.insert(&mut txn, "x", MapPrelim::default());
        }
    }
    let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
    let mut board = Board::new();
    board.handle_frame(ConnId(1), &sync::encode_update(&update), true, 0).unwrap();
    let export = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || board.to_markdown(None, &["reflection"]))
        .unwrap()
        .join()
        .unwrap();
    assert!(export.contains("deep"));
}
