//! Focused tests of [`RoomMachine`] on one node, in virtual time: each drives jobs by hand and
//! answers their store requests as a test store would, or fails them on purpose.

use std::time::Duration;

use balint_proto::room::{ErrorCode, Role, ServerMessage, Template};
use balint_proto::rules::Reason;
use balint_proto::sync;
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, StateVector, Text, Transact, Update};

use super::sim::node;
use super::*;
use crate::backend::Versioned;
use crate::room::meeting::props::START_MS;

const SECOND: u64 = 1_000;

fn room(ephemeral: bool) -> RoomMachine {
    let settings = RoomSettings {
        title: None,
        ephemeral,
        template: Template::Balint,
        lobby: false,
        sealed: false,
        link_generation: 0,
        sealed_title: None,
        controls: Default::default(),
    };
    let node = node("solo", false, 7);
    let meeting = node.options.new_meeting(&settings, START_MS);
    RoomMachine::new("room", meeting, node)
}

/// Drives `job` to its end, answering every request with `answer`, and returns the requests
/// made and the outcome.
fn drive(m: &mut RoomMachine, mut job: Job, now: u64, mut answer: impl FnMut(&Io) -> Answer) -> (Vec<Io>, Outcome) {
    let mut asked = Vec::new();
    let mut last = None;
    loop {
        match m.advance(&mut job, last.take(), now) {
            Step::Io(io) => {
                last = Some(answer(&io));
                asked.push(io);
            }
            Step::Done(outcome) => return (asked, outcome),
        }
    }
}

/// A store that takes every write.
fn fine(io: &Io) -> Answer {
    match io {
        Io::CompareAndSet { .. } | Io::Restore { .. } => Answer::Written(Ok(true)),
        Io::Load => Answer::Loaded(Ok(None)),
        Io::IsEnded => Answer::Ended(Ok(false)),
        Io::ReadPresence { .. } => Answer::Live(Ok(Vec::new())),
        Io::Heartbeat { .. } | Io::RemovePresence { .. } | Io::Save(_) => Answer::Finished(Ok(())),
    }
}

fn saves(asked: &[Io]) -> usize {
    asked.iter().filter(|io| matches!(io, Io::Save(_))).count()
}

fn effects(m: &mut RoomMachine) -> Vec<Effect> {
    std::iter::from_fn(|| m.poll_effect()).collect()
}

/// The messages sent to `conn`, decoded.
fn messages_to(effects: &[Effect], conn: ConnId) -> Vec<ServerMessage> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { audience, frame: Frame::Text(text), .. } if audience.contains(conn) => {
                serde_json::from_str(text).ok()
            }
            _ => None,
        })
        .collect()
}

/// A client's edit of the notes, as an update frame.
fn edit(text: &str) -> Bytes {
    let doc = yrs::Doc::new();
    let notes = doc.get_or_insert_text("notes");
    notes.insert(&mut doc.transact_mut(), 0, text);
    let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
    sync::encode_update(&update)
}

fn down() -> BackendError {
    BackendError::Io(std::io::Error::other("the store is away"))
}

/// A member with a connection that said hello.
fn join(m: &mut RoomMachine, conn: u64, now: u64) -> ConnId {
    let conn = ConnId(conn);
    assert!(m.connect(conn, Role::Member, 0, format!("member {}", conn.0)));
    let hello = balint_proto::room::ClientMessage::Hello { resume: None };
    let (_, outcome) = drive(m, Job::command(conn, hello, now), now, fine);
    assert!(outcome.committed);
    conn
}

#[test]
fn a_persistent_board_is_saved_after_a_quiet_spell_and_a_failed_save_is_tried_again() {
    let mut m = room(false);
    m.settings_saved(settings_json(m.meeting().shared()));
    let conn = join(&mut m, 1, START_MS);
    let tick = || Job::tick(Duration::from_secs(30));

    let (_, outcome) = drive(&mut m, Job::binary(conn, edit("a case")), START_MS, fine);
    assert_eq!(outcome.binary.unwrap().unwrap().refused, None);
    // Still typing, in effect: nothing is due for the debounce (2 s).
    let (asked, _) = drive(&mut m, tick(), START_MS + SECOND, fine);
    assert_eq!(saves(&asked), 0, "saved before the board was quiet");
    // Quiet for 2 s: saved, but the store fails.
    let failing = |io: &Io| match io {
        Io::Save(_) => Answer::Finished(Err(down())),
        other => fine(other),
    };
    let (asked, _) = drive(&mut m, tick(), START_MS + 2 * SECOND, failing);
    assert_eq!(saves(&asked), 1);
    assert!(effects(&mut m).iter().any(|e| matches!(e, Effect::BackendFailed)), "the failure is counted");
    assert!(!m.is_idle(START_MS + 3 * SECOND), "unsaved changes keep the room in memory");
    // The next tick tries again, and once it is saved nothing more is due.
    let (asked, _) = drive(&mut m, tick(), START_MS + 3 * SECOND, fine);
    assert_eq!(saves(&asked), 1, "a failed save is tried again at the next tick");
    let (asked, _) = drive(&mut m, tick(), START_MS + 4 * SECOND, fine);
    assert_eq!(saves(&asked), 0);
}

#[test]
fn a_board_changed_without_a_pause_is_saved_within_the_longest_delay() {
    let mut m = room(false);
    m.settings_saved(settings_json(m.meeting().shared()));
    let conn = join(&mut m, 1, START_MS);
    let mut saved_at = None;
    for second in 0..12 {
        let now = START_MS + second * SECOND;
        drive(&mut m, Job::binary(conn, edit(&format!("line {second}. "))), now, fine);
        let (asked, _) = drive(&mut m, Job::tick(Duration::from_secs(30)), now, fine);
        if saves(&asked) > 0 {
            saved_at = Some(second);
            break;
        }
    }
    assert_eq!(saved_at, Some(10), "a board edited every second is saved 10 s after its first change");
}

#[test]
fn an_ephemeral_board_is_never_saved_and_never_unloaded() {
    let mut m = room(true);
    let conn = join(&mut m, 1, START_MS);
    drive(&mut m, Job::binary(conn, edit("nothing of this outlives the meeting")), START_MS, fine);
    let (asked, _) = drive(&mut m, Job::save_now(), START_MS + 60 * SECOND, fine);
    assert_eq!(saves(&asked), 0);
    drive(&mut m, Job::leave(conn), START_MS + 61 * SECOND, fine);
    let later = START_MS + 61 * SECOND + limits::IDLE_UNLOAD.as_millis() as u64 * 2;
    assert!(!m.is_idle(START_MS + 62 * SECOND));
    assert!(!m.is_idle(later));
}

#[test]
fn a_persistent_room_nobody_uses_is_idle_after_the_unload_delay() {
    let mut m = room(false);
    m.settings_saved(settings_json(m.meeting().shared()));
    let conn = join(&mut m, 1, START_MS);
    assert!(!m.is_idle(START_MS), "someone is connected");
    drive(&mut m, Job::leave(conn), START_MS, fine);
    let start = START_MS + SECOND;
    assert!(!m.is_idle(start), "idle only from now");
    let delay = limits::IDLE_UNLOAD.as_millis() as u64;
    assert!(!m.is_idle(start + delay - 1));
    assert!(m.is_idle(start + delay));
}

#[test]
fn a_stock_clients_first_frame_gets_the_greeting_before_the_answer() {
    let mut m = room(true);
    let conn = ConnId(1);
    assert!(m.connect(conn, Role::Member, 0, "stock".into()));
    let step1 = sync::encode_step1(&StateVector::default());
    let (asked, outcome) = drive(&mut m, Job::binary(conn, step1), START_MS, fine);
    // The new member is in presence before the record that names them is written.
    assert!(matches!(asked.first(), Some(Io::Heartbeat { .. })), "asked: {asked:?}");
    assert!(matches!(asked.get(1), Some(Io::CompareAndSet { version: 1, .. })), "asked: {asked:?}");
    let reply = outcome.binary.unwrap().unwrap().reply;
    let decoded: Vec<_> = reply.iter().flat_map(|frame| sync::decode_frame(frame).unwrap()).collect();
    assert!(
        matches!(decoded.first(), Some(yrs::sync::Message::Sync(yrs::sync::SyncMessage::SyncStep1(_)))),
        "the server's sync step 1 comes first: {decoded:?}"
    );
    assert!(
        decoded.iter().any(|m| matches!(m, yrs::sync::Message::Sync(yrs::sync::SyncMessage::SyncStep2(_)))),
        "the answer to the client's step 1 follows: {decoded:?}"
    );
    // Nothing of the greeting also went out on the feed: it would arrive twice.
    assert!(effects(&mut m).iter().all(|e| !matches!(e, Effect::Send { frame: Frame::Binary(_), .. })));
}

#[test]
fn a_store_that_does_not_answer_is_told_to_the_member_who_asked() {
    let mut m = room(true);
    let conn = join(&mut m, 1, START_MS);
    effects(&mut m);
    let down = |io: &Io| match io {
        Io::CompareAndSet { .. } => Answer::Written(Err(down())),
        other => fine(other),
    };
    let raise = balint_proto::room::ClientMessage::RaiseHand {};
    let (_, outcome) = drive(&mut m, Job::command(conn, raise, START_MS), START_MS, down);
    assert!(!outcome.committed);
    let told = messages_to(&effects(&mut m), conn);
    assert!(
        told.iter().any(|msg| matches!(
            msg,
            ServerMessage::Error { code: ErrorCode::Unavailable, reason: Some(Reason::Unavailable), .. }
        )),
        "told: {told:?}"
    );
    assert!(m.meeting().state(false).queue.is_empty(), "nothing changed");
}

#[test]
fn a_write_conflict_reloads_the_record_and_plans_again_on_it() {
    let mut m = room(true);
    let conn = join(&mut m, 1, START_MS);
    // Another node wrote version 3 meanwhile: its record, made from this node's.
    let theirs = encode_record(m.meeting().shared()).unwrap();
    let mut conflicts = 0;
    let answer = |io: &Io| match io {
        Io::CompareAndSet { version: 2, .. } => {
            conflicts += 1;
            Answer::Written(Ok(false))
        }
        Io::Load => Answer::Loaded(Ok(Some(Versioned { version: 3, record: theirs.clone() }))),
        other => fine(other),
    };
    let raise = balint_proto::room::ClientMessage::RaiseHand {};
    let (asked, outcome) = drive(&mut m, Job::command(conn, raise, START_MS), START_MS, answer);
    assert_eq!(conflicts, 1);
    assert!(matches!(asked.last(), Some(Io::CompareAndSet { version: 3, .. })), "planned again on version 3");
    assert!(outcome.committed);
    assert_eq!(m.meeting().version(), 4);
    assert_eq!(m.meeting().state(false).queue.len(), 1, "the hand is up");
}

#[test]
fn the_board_is_wiped_when_the_meeting_ends() {
    let mut m = room(true);
    let conn = join(&mut m, 1, START_MS);
    drive(&mut m, Job::binary(conn, edit("a patient's story")), START_MS, fine);
    let notes = |m: &RoomMachine| {
        let state = m.board().encode_state();
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("notes");
        doc.transact_mut().apply_update(Update::decode_v1(&state).unwrap()).unwrap();
        let txn = doc.transact();
        text.get_string(&txn)
    };
    assert_eq!(notes(&m), "a patient's story");
    drive(&mut m, Job::end("ended_by_leader"), START_MS, fine);
    assert!(m.is_ended());
    assert_eq!(notes(&m), "");
    let sent = effects(&mut m);
    assert!(sent.iter().any(|e| matches!(e, Effect::Send { frame: Frame::Close { code: 4410, .. }, .. })));
    // Nothing more happens in an ended room.
    let (asked, _) = drive(&mut m, Job::tick(Duration::from_secs(30)), START_MS + SECOND, fine);
    assert!(asked.is_empty(), "asked: {asked:?}");
}

/// A sealed ephemeral room (with a lobby when `lobby`), whose board holds `max_board_bytes`.
fn sealed_room(lobby: bool, max_board_bytes: usize) -> RoomMachine {
    let settings = RoomSettings {
        title: None,
        ephemeral: true,
        template: Template::Balint,
        lobby,
        sealed: true,
        link_generation: 0,
        sealed_title: None,
        controls: Default::default(),
    };
    let mut node = node("solo", false, 7);
    node.options.max_board_bytes = max_board_bytes;
    let meeting = node.options.new_meeting(&settings, START_MS);
    RoomMachine::new("room", meeting, node)
}

/// A connection of `role` that said hello.
fn join_as(m: &mut RoomMachine, conn: u64, role: Role) -> ConnId {
    let conn = ConnId(conn);
    assert!(m.connect(conn, role, 0, "Guest".into()));
    let hello = balint_proto::room::ClientMessage::Hello { resume: None };
    let (_, outcome) = drive(m, Job::command(conn, hello, START_MS), START_MS, fine);
    assert!(outcome.committed);
    conn
}

fn command(m: &mut RoomMachine, conn: ConnId, message: balint_proto::room::ClientMessage) {
    let (_, outcome) = drive(m, Job::command(conn, message, START_MS), START_MS, fine);
    assert!(outcome.committed);
}

/// An entry from a client: random-looking bytes the server cannot read.
fn client_entry(seq: u64, kind: Kind, len: usize) -> Bytes {
    let sealed = sealed_frame::Sealed { seq, kind, nonce: [3; 24], ciphertext: vec![0xC5; len].into() };
    sealed_frame::encode_client_entry(&sealed)
}

fn send_binary(m: &mut RoomMachine, conn: ConnId, frame: Bytes) -> Result<BinaryOutcome, FrameError> {
    let (_, outcome) = drive(m, Job::binary(conn, frame), START_MS, fine);
    outcome.binary.expect("a binary outcome")
}

/// The sealed frames sent to `conn` (not its own echo), decoded.
fn sealed_frames_to(effects: &[Effect], conn: ConnId) -> Vec<sealed_frame::Frame> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { origin, audience, frame: Frame::Binary(bytes) }
                if audience.contains(conn) && *origin != Some(conn) =>
            {
                Some(sealed_frame::decode(bytes).expect("the server sends well-formed sealed frames"))
            }
            _ => None,
        })
        .collect()
}

fn member_id(m: &RoomMachine, conn: ConnId) -> String {
    m.meeting().member_of(conn).expect("a member").to_owned()
}

#[test]
fn a_sealed_entry_is_forwarded_stamped_with_its_sender_and_logged_for_newcomers() {
    let mut m = sealed_room(false, 1 << 20);
    let leader = join_as(&mut m, 1, Role::Leader);
    let member = join_as(&mut m, 2, Role::Member);
    effects(&mut m);

    let outcome = send_binary(&mut m, member, client_entry(1 << 32 | 1, Kind::Update, 40)).unwrap();
    assert_eq!(outcome, BinaryOutcome::default());
    let sent = effects(&mut m);
    let expected = Entry {
        sender: member_id(&m, member),
        sealed: sealed_frame::Sealed {
            seq: 1 << 32 | 1,
            kind: Kind::Update,
            nonce: [3; 24],
            ciphertext: vec![0xC5; 40].into(),
        },
    };
    assert_eq!(sealed_frames_to(&sent, leader), vec![sealed_frame::Frame::Entry(expected.clone())]);
    assert!(sealed_frames_to(&sent, member).is_empty(), "no echo to the sender");
    assert_eq!(m.board().doc().transact().state_vector(), StateVector::default(), "a sealed room has no yrs content");

    // A resend of the same (sender, seq) is neither logged again nor forwarded.
    send_binary(&mut m, member, client_entry(1 << 32 | 1, Kind::Update, 40)).unwrap();
    assert!(sealed_frames_to(&effects(&mut m), leader).is_empty());

    // Awareness is forwarded to readers, observers included, and never logged.
    let observer = join_as(&mut m, 3, Role::Observer);
    let greeting = sealed_frames_to(&effects(&mut m), observer);
    assert_eq!(greeting, vec![sealed_frame::Frame::Log(vec![expected.clone()])], "a newcomer gets the log");
    send_binary(&mut m, observer, client_entry(7, Kind::Awareness, 16)).unwrap();
    let sent = effects(&mut m);
    assert_eq!(sealed_frames_to(&sent, leader).len(), 1);
    assert_eq!(sealed_frames_to(&sent, member).len(), 1);
    assert_eq!(m.sealed_log().unwrap().entries(), std::slice::from_ref(&expected));

    // The log goes with the meeting.
    drive(&mut m, Job::end("ended"), START_MS, fine);
    assert!(m.sealed_log().unwrap().entries().is_empty());
}

#[test]
fn sealed_entries_are_refused_by_role_and_state_without_reading_them() {
    use balint_proto::room::{ClientMessage, Phase};
    let mut m = sealed_room(true, 1 << 20);
    let leader = join_as(&mut m, 1, Role::Leader);
    let presenter = join_as(&mut m, 2, Role::Member);
    let observer = join_as(&mut m, 3, Role::Observer);
    let waiting = join_as(&mut m, 4, Role::Member);
    for conn in [presenter, observer] {
        let member = member_id(&m, conn);
        command(&mut m, leader, ClientMessage::Admit { member });
    }
    let admitted = effects(&mut m);
    assert_eq!(sealed_frames_to(&admitted, presenter), vec![sealed_frame::Frame::Log(vec![])], "admitted: the log");
    assert!(sealed_frames_to(&admitted, waiting).is_empty(), "nothing of the board reaches the lobby");
    let refused = |m: &mut RoomMachine, conn, seq| {
        let outcome = send_binary(m, conn, client_entry(seq, Kind::Update, 32)).unwrap();
        let leader_got = sealed_frames_to(&effects(m), leader);
        assert!(leader_got.is_empty(), "a refused entry is not forwarded");
        outcome.refused.map(|r| r.reason)
    };

    assert_eq!(refused(&mut m, observer, 1), Some(Reason::Observer));
    // In the lobby: dropped without a word, and nothing goes to the waiting connection either.
    assert_eq!(refused(&mut m, waiting, 1), None);
    assert!(m.sealed_log().unwrap().entries().is_empty());

    let picked = member_id(&m, presenter);
    command(&mut m, leader, ClientMessage::PickPresenter { member: Some(picked) });
    command(&mut m, leader, ClientMessage::SetPhase { phase: Phase::Reflection, duration_secs: None });
    effects(&mut m);
    assert_eq!(refused(&mut m, presenter, 1), Some(Reason::PresenterInReflection));
    // The presenter still reads along: others' entries reach them, and their awareness goes out.
    send_binary(&mut m, leader, client_entry(1, Kind::Update, 32)).unwrap();
    assert_eq!(sealed_frames_to(&effects(&mut m), presenter).len(), 1);
    assert!(sealed_frames_to(&effects(&mut m), waiting).is_empty());

    command(&mut m, leader, ClientMessage::SetPhase { phase: Phase::Response, duration_secs: None });
    command(&mut m, leader, ClientMessage::LockBoard { locked: true });
    effects(&mut m);
    assert_eq!(refused(&mut m, presenter, 2), Some(Reason::BoardLocked));
    send_binary(&mut m, leader, client_entry(2, Kind::Update, 32)).unwrap();
    assert_eq!(m.sealed_log().unwrap().entries().len(), 2, "leaders write on a locked board");
}

#[test]
fn the_board_limit_applies_to_the_ciphertext_and_bad_frames_are_refused() {
    let mut m = sealed_room(false, 100);
    let member = join_as(&mut m, 1, Role::Member);
    assert!(!send_binary(&mut m, member, client_entry(1, Kind::Update, 60)).unwrap().board_full);
    assert!(send_binary(&mut m, member, client_entry(2, Kind::Update, 41)).unwrap().board_full);
    assert!(!send_binary(&mut m, member, client_entry(3, Kind::Update, 40)).unwrap().board_full);
    assert_eq!(m.sealed_log().unwrap().bytes(), 100);

    // y-sync in a sealed room, and the server's own frame types.
    assert_eq!(send_binary(&mut m, member, edit("clear text")), Err(FrameError::UnknownType(0)));
    let log = sealed_frame::encode_log(&[]);
    assert_eq!(send_binary(&mut m, member, log), Err(FrameError::UnknownType(0x42)));
    // Kinds that do not travel as entries, and a truncated entry.
    for kind in [Kind::Snapshot, Kind::Name, Kind::Title] {
        assert_eq!(send_binary(&mut m, member, client_entry(9, kind, 16)), Err(FrameError::Malformed));
    }
    let whole = client_entry(9, Kind::Update, 16);
    assert_eq!(send_binary(&mut m, member, whole.slice(..whole.len() - 1)), Err(FrameError::Truncated));
    assert_eq!(m.sealed_log().unwrap().entries().len(), 2);
}

#[test]
fn a_plain_room_refuses_sealed_frames() {
    let mut m = room(true);
    let member = join(&mut m, 1, START_MS);
    let frame = client_entry(1, Kind::Update, 16);
    assert_eq!(send_binary(&mut m, member, frame), Err(FrameError::UnknownType(0x40)));
}

#[test]
fn a_snapshot_replaces_the_entries_it_covers_for_newcomers_if_its_sender_may_write() {
    use balint_proto::room::{ClientMessage, Phase};
    let mut m = sealed_room(false, 1 << 20);
    let leader = join_as(&mut m, 1, Role::Leader);
    let member = join_as(&mut m, 2, Role::Member);
    let (leader_id, member_id) = (member_id(&m, leader), member_id(&m, member));
    send_binary(&mut m, member, client_entry(1, Kind::Update, 30)).unwrap();
    send_binary(&mut m, leader, client_entry(1, Kind::Update, 30)).unwrap();
    send_binary(&mut m, member, client_entry(2, Kind::Update, 30)).unwrap();
    effects(&mut m);
    let upload = |covers: Vec<(String, u64)>| {
        let sealed =
            sealed_frame::Sealed { seq: 3, kind: Kind::Snapshot, nonce: [6; 24], ciphertext: vec![7; 20].into() };
        sealed_frame::encode_snapshot(&sealed_frame::SnapshotUpload { covers, sealed })
    };
    let covers = vec![(member_id.clone(), 1), (leader_id.clone(), 1)];

    // The presenter in reflection may not compact any more than write.
    command(&mut m, leader, ClientMessage::PickPresenter { member: Some(member_id.clone()) });
    command(&mut m, leader, ClientMessage::SetPhase { phase: Phase::Reflection, duration_secs: None });
    let outcome = send_binary(&mut m, member, upload(covers.clone())).unwrap();
    assert_eq!(outcome.refused.map(|r| r.reason), Some(Reason::PresenterInReflection));
    assert_eq!(m.sealed_log().unwrap().entries().len(), 3);

    command(&mut m, leader, ClientMessage::SetPhase { phase: Phase::Response, duration_secs: None });
    effects(&mut m);
    assert_eq!(send_binary(&mut m, member, upload(covers)).unwrap(), BinaryOutcome::default());
    assert!(sealed_frames_to(&effects(&mut m), leader).is_empty(), "a snapshot is not forwarded");
    let ids: Vec<(String, u64, Kind)> =
        m.sealed_log().unwrap().entries().iter().map(|e| (e.sender.clone(), e.sealed.seq, e.sealed.kind)).collect();
    assert_eq!(ids, [(member_id.clone(), 3, Kind::Snapshot), (member_id, 2, Kind::Update)]);
    assert_eq!(m.sealed_log().unwrap().bytes(), 50);
}
