//! What each fuzz target checks on one input, kept apart from libFuzzer so that the same
//! checks replay saved inputs as ordinary tests: `server/tests/fuzz_regressions.rs` includes
//! this file and runs every input under `fuzz/regressions/` and `fuzz/seeds/` through it.
//!
//! A check panics when a property breaks; any other panic on the way is a finding too. The
//! checks only use the crates' public API, as the server's driver does.

use std::borrow::Cow;
use std::sync::OnceLock;

use balint_proto::room::{ClientMessage, Phase, Role, RoomState, ServerMessage, Template};
use balint_proto::sync::{self, Message, SyncMessage};
use balint_server::room::board::Board;
use balint_server::room::meeting::{Meeting, MeetingSettings, Output};
use balint_server::room::ConnId;
use balint_server::token::{Grant, Signer, TokenError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use yrs::{Array, Doc, GetString, Map, ReadTxn, StateVector, Text, Transact};

/// The phases `to_markdown` is asked to group by.
const PHASES: &[&str] = &["gathering", "presentation", "questions", "reflection", "response", "closing"];

/// A board with a little of everything a real one holds: notes with a deletion, and an
/// observation card. Fuzzed updates integrate against it, not only against an empty document.
fn seed_board_state() -> &'static [u8] {
    static STATE: OnceLock<Vec<u8>> = OnceLock::new();
    STATE.get_or_init(|| {
        let doc = Doc::with_client_id(7);
        let notes = doc.get_or_insert_text("notes");
        let observations = doc.get_or_insert_array("observations");
        {
            let mut txn = doc.transact_mut();
            notes.push(&mut txn, "The doctor felt stuck.");
            notes.remove_range(&mut txn, 4, 7);
            let card = observations.push_back(&mut txn, yrs::MapPrelim::default());
            card.insert(&mut txn, "body", "anger in the room");
            card.insert(&mut txn, "phase", "reflection");
            card.insert(&mut txn, "created_ms", 1_700_000_000_000.0);
        }
        let state = doc.transact().encode_state_as_update_v1(&StateVector::default());
        state
    })
}

fn seeded_board() -> Board {
    let mut board = Board::new();
    board.load(seed_board_state()).expect("the seed board loads");
    board
}

/// Everything a reader can see of a board.
fn content(board: &Board) -> (String, String) {
    let notes = board.doc().get_or_insert_text("notes");
    let text = notes.get_string(&board.doc().transact());
    (text, board.to_markdown(Some("fuzz"), PHASES))
}

/// A binary frame from a client: y-sync decoding, then the board, read-only and writable.
pub fn sync_frame(data: &[u8]) {
    let decoded = sync::decode_frame(data);
    if let Ok(messages) = &decoded {
        // What was decoded encodes back into a frame that decodes to the same messages.
        let again = sync::decode_frame(&sync::encode_all(messages)).expect("a re-encoded frame decodes");
        assert_eq!(&again, messages, "re-encoding changed the messages");
        // An update said to re-encode as it is (so spared the round trip) does.
        for message in messages {
            if let Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) = message {
                if sync::re_encodes_as_is(update) {
                    use yrs::updates::{decoder::Decode, encoder::Encode};
                    let again = yrs::Update::decode_v1(update).expect("a decoded update decodes").encode_v1();
                    assert_eq!(&again, update, "an update said to re-encode as it is did not");
                }
            }
        }
    }

    // A connection that may not write never changes the board, whatever it sends.
    let mut board = seeded_board();
    let before = board.encode_state();
    let read_only = board.handle_frame(ConnId(2), data, false, 1_000);
    assert_eq!(read_only.is_ok(), decoded.is_ok(), "read-only handling disagrees with decoding");
    if let Ok(effects) = &read_only {
        assert!(!effects.relay.iter().any(|r| matches!(r, balint_server::room::board::Relay::Update(_))));
    }
    assert_eq!(board.encode_state(), before, "a read-only frame changed the board");

    // A writer's frame: a frame that does not decode changes nothing.
    let written = board.handle_frame(ConnId(1), data, true, 2_000);
    if decoded.is_err() {
        assert!(written.is_err(), "a frame that does not decode was accepted");
        assert_eq!(board.encode_state(), before, "a refused frame changed the board");
    }
    board_still_works(&board);

    // The same updates arriving from another node, on a fresh board.
    if let Ok(messages) = decoded {
        let mut remote = seeded_board();
        for message in messages {
            match message {
                Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                    let _ = remote.apply_remote(&update);
                }
                Message::Awareness(update) => {
                    use yrs::updates::encoder::Encode;
                    let _ = remote.apply_remote_awareness(&update.encode_v1(), 3_000);
                }
                _ => {}
            }
        }
        board_still_works(&remote);
    }
}

/// After any input, the board still answers a newcomer, sweeps, and its whole state loads into
/// a fresh board with the same content.
fn board_still_works(board: &Board) {
    let _ = board.greeting();
    let state = board.encode_state();
    let mut copy = Board::new();
    copy.load(&state).expect("a board's own state loads");
    assert_eq!(content(&copy), content(board), "a board's state does not reproduce its content");
    let mut probe = Board::new();
    probe.load(&state).expect("a board's own state loads");
    let step1 = sync::encode_step1(&StateVector::default());
    probe.handle_frame(ConnId(9), &step1, false, 0).expect("a sync step 1 is answered");
    let _ = probe.sweep(u64::MAX, 1);
    let _ = probe.leave(ConnId(9));
}

/// The people of a fuzzed meeting, by the placeholder a message names them with.
struct People {
    meeting: Meeting,
    /// `(placeholder, connection, member id, resume token)`.
    known: Vec<(&'static str, ConnId, String, String)>,
    /// A connection that never said hello.
    silent: ConnId,
    now: u64,
}

const START_MS: u64 = 1_700_000_000_000;

impl People {
    /// A Balint meeting with a lobby: a leader, an admitted member and observer, someone
    /// waiting, and a connection that has not said hello.
    fn new() -> Self {
        let settings = MeetingSettings {
            title: Some("fuzz".into()),
            template: Template::Balint,
            ephemeral: true,
            lobby: true,
            reconnect_grace_ms: 30_000,
            empty_grace_ms: 60_000,
            max_length_ms: 3_600_000,
            max_members: 50,
            sealed: false,
            link_generation: 0,
            sealed_title: None,
            controls: Default::default(),
        };
        let mut people =
            People { meeting: Meeting::new(settings, START_MS), known: Vec::new(), silent: ConnId(100), now: START_MS };
        for (n, (placeholder, role)) in
            [("L", Role::Leader), ("M", Role::Member), ("O", Role::Observer), ("W", Role::Member)]
                .into_iter()
                .enumerate()
        {
            let conn = ConnId(n as u64 + 1);
            people.meeting.connect(conn, role, format!("person {n}"));
            let out = people.meeting.handle(conn, ClientMessage::Hello { resume: None }, START_MS);
            let (id, token) = introduced(&out, conn).expect("hello is answered");
            if placeholder == "M" || placeholder == "O" {
                let out = people.meeting.handle(ConnId(1), ClientMessage::Admit { member: id.clone() }, START_MS);
                assert!(!out.iter().any(is_error), "the leader admits");
            }
            people.known.push((placeholder, conn, id, token));
        }
        people.meeting.connect(people.silent, Role::Member, "silent".into());
        people
    }

    /// Replaces placeholders (`L`, `M`, `O`, `W`) by the real member ids and resume tokens.
    fn retarget(&self, message: ClientMessage) -> ClientMessage {
        let id = |s: String| self.known.iter().find(|k| k.0 == s).map_or(s, |k| k.2.clone());
        let token = |s: String| self.known.iter().find(|k| k.0 == s).map_or(s, |k| k.3.clone());
        use ClientMessage as C;
        match message {
            C::Hello { resume } => C::Hello { resume: resume.map(token) },
            C::LowerHand { member } => C::LowerHand { member: member.map(id) },
            C::GrantFloor { member, if_version } => C::GrantFloor { member: id(member), if_version },
            C::PickPresenter { member } => C::PickPresenter { member: member.map(id) },
            C::SetRole { member, role } => C::SetRole { member: id(member), role },
            C::Admit { member } => C::Admit { member: id(member) },
            C::Decline { member } => C::Decline { member: id(member) },
            C::Kick { member } => C::Kick { member: id(member) },
            other => other,
        }
    }

    fn senders(&self) -> Vec<ConnId> {
        // The leader goes last, so that an end or a kick does not hide what the others do.
        let mut senders: Vec<ConnId> = self.known.iter().rev().map(|k| k.1).collect();
        senders.insert(1, self.silent);
        senders
    }
}

fn is_error(output: &Output) -> bool {
    matches!(output, Output::Send(_, ServerMessage::Error { .. }))
}

/// The member id and resume token of a `welcome` or `waiting` sent to `conn`.
fn introduced(out: &[Output], conn: ConnId) -> Option<(String, String)> {
    out.iter().find_map(|o| match o {
        Output::Send(
            to,
            ServerMessage::Welcome { member_id, resume_token, .. } | ServerMessage::Waiting { member_id, resume_token },
        ) if to.contains(conn) => Some((member_id.clone(), resume_token.clone())),
        _ => None,
    })
}

/// Text frames of the room protocol: one message per line, each sent by every kind of sender
/// in turn, with the clock moving on between lines.
pub fn room_message(data: &[u8]) {
    let text = match std::str::from_utf8(data) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(data),
    };
    // The whole input as one frame, as a connection would send it.
    if let Ok(message) = ClientMessage::from_json(&text) {
        round_trips(&message);
    }
    let mut people = People::new();
    for line in text.lines() {
        let Ok(message) = ClientMessage::from_json(line) else { continue };
        round_trips(&message);
        let message = people.retarget(message);
        for sender in people.senders() {
            people.meeting.handle(sender, message.clone(), people.now);
            meeting_holds(&people.meeting);
        }
        people.now += 61_000;
        people.meeting.tick(people.now);
        meeting_holds(&people.meeting);
    }
}

fn round_trips(message: &ClientMessage) {
    let json = serde_json::to_string(message).expect("a client message serializes");
    let again = ClientMessage::from_json(&json).expect("a serialized client message parses");
    assert_eq!(&again, message, "a client message does not survive a round trip");
}

/// The meeting's invariants, as a leader sees the state, and the board permissions of every
/// connection.
fn meeting_holds(meeting: &Meeting) {
    let state = meeting.state(true);
    state_holds(&state);
    for conn in (1..=4).map(ConnId).chain([ConnId(100)]) {
        let Some(member) = meeting.member_of(conn) else {
            assert!(meeting.can_write(conn).is_err(), "an unbound connection may write");
            continue;
        };
        match state.members.iter().find(|m| m.id == member) {
            Some(view) if view.role == Role::Observer => {
                assert!(meeting.can_write(conn).is_err(), "an observer may write")
            }
            Some(_) => {}
            None => assert!(meeting.can_write(conn).is_err(), "someone not admitted may write"),
        }
    }
}

/// Invariants visible in a room state.
pub fn state_holds(state: &RoomState) {
    let role = |id: &str| state.members.iter().find(|m| m.id == id).map(|m| m.role);
    for (n, hand) in state.queue.iter().enumerate() {
        assert!(!state.queue[..n].iter().any(|h| h.member == hand.member), "a member is queued twice");
        assert!(
            matches!(role(&hand.member), Some(Role::Leader | Role::Member)),
            "a queued hand is not an admitted speaker"
        );
    }
    if let Some(floor) = &state.floor {
        assert!(
            matches!(role(&floor.member), Some(Role::Leader | Role::Member)),
            "the floor holder is not an admitted speaker"
        );
        let pushed_back =
            state.phase.name == Phase::Reflection && state.presenter.as_deref() == Some(floor.member.as_str());
        assert!(!pushed_back, "the presenter holds the floor during reflection");
    }
    if let Some(presenter) = &state.presenter {
        assert!(
            matches!(role(presenter), Some(Role::Leader | Role::Member)),
            "the presenter is not an admitted speaker"
        );
    }
}

/// The secret of the fuzzed signer.
const SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef-0123456789";

/// A room link, as a string, with the room and the clock it is checked against: three lines,
/// `token`, `room` and `now` (Unix seconds); missing parts take defaults.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let token = lines.next().unwrap_or_default();
    let room = lines.next().unwrap_or("room");
    let now: u64 = lines.next().and_then(|n| n.trim().parse().ok()).unwrap_or(1_800_000_000);
    let signer = Signer::new(SECRET);

    let any = signer.verify_any_room(token, now);
    let for_room = signer.verify(token, room, now);
    match &any {
        Ok(grant) if grant.room == room => assert_eq!(for_room.as_ref(), Ok(grant)),
        Ok(_) => assert_eq!(for_room, Err(TokenError::WrongRoom)),
        Err(e) => assert_eq!(for_room, Err(*e)),
    }
    if let Ok(grant) = &any {
        assert!(now < grant.expires_at, "an expired token was accepted");
    }
    // Another secret accepts nothing this one signed.
    assert!(Signer::new(b"another secret, also long enough!!").verify_any_room(token, now).is_err());

    // Someone holding the secret signs the raw input as a payload: the payload parser sees
    // arbitrary bytes, which a MAC check otherwise keeps from it.
    let payload = data;
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
    mac.update(payload);
    let forged =
        format!("v1.{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    match signer.verify_any_room(&forged, now) {
        Ok(Grant { expires_at, generation, .. }) => assert!(now < expires_at && generation == 0),
        Err(e) => assert!(matches!(e, TokenError::Malformed | TokenError::Expired), "{e:?}"),
    }
    // The same in the current format, which names its key and signs the token's text.
    let signed = format!("v2.{}.{}", signer.key_id(), URL_SAFE_NO_PAD.encode(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
    mac.update(signed.as_bytes());
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    match signer.verify_any_room(&forged, now) {
        Ok(Grant { expires_at, .. }) => assert!(now < expires_at),
        Err(e) => assert!(matches!(e, TokenError::Malformed | TokenError::Expired), "{e:?}"),
    }

    // Whatever room a token is issued for (room ids never hold the field separator), it
    // verifies for that room until it expires.
    if !room.contains('|') {
        if let Some(expires_at) = now.checked_add(1) {
            for role in [Role::Leader, Role::Member, Role::Observer] {
                let generation = u64::from(data.first().copied().unwrap_or_default());
                let issued = signer.issue_at(room, role, expires_at, generation);
                let grant = signer.verify(&issued, room, now).expect("an issued token verifies");
                assert_eq!(grant, Grant { room: room.to_owned(), role, expires_at, generation });
                assert_eq!(signer.verify(&issued, room, expires_at), Err(TokenError::Expired));
            }
        }
    }
}

/// A binary frame of a sealed room: decoding never panics, and whatever decodes encodes back
/// to exactly the same bytes (one frame has one encoding), and decodes again to itself.
pub fn sealed_frame(data: &[u8]) {
    use balint_proto::sealed::{self, Frame};
    let Ok(frame) = sealed::decode(data) else { return };
    let encoded = match &frame {
        Frame::ClientEntry(entry) => sealed::encode_client_entry(entry),
        Frame::Entry(entry) => sealed::encode_entry(entry),
        Frame::Log(entries) => sealed::encode_log(entries),
        Frame::Snapshot(upload) => sealed::encode_snapshot(upload),
    };
    assert_eq!(&encoded[..], data, "a sealed frame has one encoding");
    assert_eq!(sealed::decode(&encoded).as_ref(), Ok(&frame));
}

/// Inputs that start the fuzzers somewhere useful; `fuzz/seeds/` holds their bytes, and the
/// regression test checks that each still passes.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "sync_frame" => {
            let doc = Doc::with_client_id(42);
            let notes = doc.get_or_insert_text("notes");
            let observations = doc.get_or_insert_array("observations");
            let empty = doc.transact().state_vector();
            notes.insert(&mut doc.transact_mut(), 0, "Sie hat mich angerufen");
            let first = doc.transact().encode_state_as_update_v1(&empty);
            let after_first = doc.transact().state_vector();
            {
                let mut txn = doc.transact_mut();
                notes.remove_range(&mut txn, 3, 4);
                let card = observations.insert(&mut txn, 0, yrs::MapPrelim::default());
                card.insert(&mut txn, "body", "Wut");
                card.insert(&mut txn, "author", "A");
            }
            let second = doc.transact().encode_state_as_update_v1(&after_first);
            let all = doc.transact().encode_state_as_update_v1(&StateVector::default());
            let awareness = sync::AwarenessUpdate {
                clients: [(
                    yrs::block::ClientID::new(42),
                    sync::AwarenessUpdateEntry { clock: 1, json: r#"{"user":{"name":"A"}}"#.into() },
                )]
                .into_iter()
                .collect(),
            };
            vec![
                ("update".into(), sync::encode_update(&first).to_vec()),
                ("update-delete-card".into(), sync::encode_update(&second).to_vec()),
                ("step2".into(), sync::encode_step2(&all).to_vec()),
                ("step1".into(), sync::encode_step1(&after_first).to_vec()),
                ("awareness".into(), sync::encode_awareness(&awareness).to_vec()),
                (
                    "several".into(),
                    sync::encode_all(&[
                        Message::Sync(SyncMessage::SyncStep1(StateVector::default())),
                        Message::Sync(SyncMessage::Update(second.clone())),
                        Message::Awareness(awareness.clone()),
                        Message::AwarenessQuery,
                        Message::Auth(Some("denied".into())),
                    ])
                    .to_vec(),
                ),
            ]
        }
        "room_message" => [
            ("hello", r#"{"type":"hello","resume":"M"}"#),
            (
                "session",
                concat!(
                    r#"{"type":"raise_hand"}"#,
                    "\n",
                    r#"{"type":"pick_presenter","member":"M"}"#,
                    "\n",
                    r#"{"type":"set_phase","phase":"presentation","duration_secs":60}"#,
                    "\n",
                    r#"{"type":"set_speaking_limit","seconds":30}"#,
                    "\n",
                    r#"{"type":"set_phase","phase":"reflection"}"#,
                    "\n",
                    r#"{"type":"next_speaker","if_version":3}"#,
                    "\n",
                    r#"{"type":"grant_floor","member":"M"}"#,
                    "\n",
                    r#"{"type":"set_fair_order","enabled":true}"#,
                    "\n",
                    r#"{"type":"yield_floor"}"#,
                ),
            ),
            (
                "leader",
                concat!(
                    r#"{"type":"admit","member":"W"}"#,
                    "\n",
                    r#"{"type":"set_role","member":"M","role":"observer"}"#,
                    "\n",
                    r#"{"type":"lower_hand","member":"L"}"#,
                    "\n",
                    r#"{"type":"lower_all_hands"}"#,
                    "\n",
                    r#"{"type":"revoke_floor"}"#,
                    "\n",
                    r#"{"type":"set_lobby","enabled":false}"#,
                    "\n",
                    r#"{"type":"lock_board","locked":true}"#,
                    "\n",
                    r#"{"type":"decline","member":"W"}"#,
                    "\n",
                    r#"{"type":"kick","member":"O"}"#,
                    "\n",
                    r#"{"type":"set_away","away":true}"#,
                    "\n",
                    r#"{"type":"end_meeting"}"#,
                ),
            ),
        ]
        .into_iter()
        .map(|(name, text)| (name.to_owned(), text.as_bytes().to_vec()))
        .collect(),
        "token" => {
            let signer = Signer::new(SECRET);
            vec![
                (
                    "valid".into(),
                    format!("{}\nroom\n1800000000", signer.issue("room", Role::Member, 1_900_000_000)).into_bytes(),
                ),
                (
                    "other-room".into(),
                    format!("{}\nroom\n1800000000", signer.issue("moor", Role::Leader, 1_900_000_000)).into_bytes(),
                ),
                ("payload".into(), b"room|observer|1900000000".to_vec()),
                ("payload-with-generation".into(), b"room|observer|1900000000|3".to_vec()),
                (
                    // A link of the first format (no key id, no generation), still accepted.
                    "valid-v1".into(),
                    b"v1.cm9vbXxtZW1iZXJ8MTkwMDAwMDAwMA.RBPPvM3WhLHLA5pjQLd4JG2mYcKBK641ebUvwHbPc1Y\nroom\n1800000000"
                        .to_vec(),
                ),
            ]
        }
        "sealed_frame" => {
            use balint_proto::sealed::{self, Entry, Kind, Sealed, SnapshotUpload};
            let sealed = |seq, kind| Sealed { seq, kind, nonce: [9; 24], ciphertext: vec![0x5A; 20].into() };
            let entry = |sender: &str, seq| Entry { sender: sender.into(), sealed: sealed(seq, Kind::Update) };
            vec![
                ("client-entry".into(), sealed::encode_client_entry(&sealed(1 << 32 | 1, Kind::Update)).to_vec()),
                ("entry".into(), sealed::encode_entry(&entry("aB3dE5gH9jK1", 7)).to_vec()),
                ("log".into(), sealed::encode_log(&[entry("a", 1), entry("b", 2)]).to_vec()),
                (
                    "snapshot".into(),
                    sealed::encode_snapshot(&SnapshotUpload {
                        covers: vec![("a".into(), 1), ("b".into(), 2)],
                        sealed: sealed(3, Kind::Snapshot),
                    })
                    .to_vec(),
                ),
            ]
        }
        _ => Vec::new(),
    }
}
