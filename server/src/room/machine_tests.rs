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
    // Nothing of the greeting also went out to the room's connections: it would arrive twice.
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

// When a room is due: `RoomMachine::next_due` for each kind of timer, and ticking at that
// time does the thing.

/// The awareness timeout of the ticks in these tests.
const AWARENESS_MS: u64 = 30_000;

fn tick_at(m: &mut RoomMachine, now: u64) -> Vec<Io> {
    drive(m, Job::tick(Duration::from_millis(AWARENESS_MS)), now, fine).0
}

fn due(m: &mut RoomMachine, now: u64) -> Option<u64> {
    m.next_due(now, AWARENESS_MS)
}

/// A connection of `role` that said hello at `now`.
fn join_at(m: &mut RoomMachine, conn: u64, role: Role, now: u64) -> ConnId {
    let conn = ConnId(conn);
    assert!(m.connect(conn, role, 0, format!("guest {}", conn.0)));
    let hello = balint_proto::room::ClientMessage::Hello { resume: None };
    let (_, outcome) = drive(m, Job::command(conn, hello, now), now, fine);
    assert!(outcome.committed);
    conn
}

fn command_at(m: &mut RoomMachine, conn: ConnId, message: balint_proto::room::ClientMessage, now: u64) {
    let (_, outcome) = drive(m, Job::command(conn, message, now), now, fine);
    assert!(outcome.committed);
}

fn leave_at(m: &mut RoomMachine, conn: ConnId, now: u64) {
    drive(m, Job::leave(conn), now, fine);
}

/// This node's copy of another node's machine for the same room: the same record, no
/// connections.
fn other_node(m: &RoomMachine, name: &str, clustered: bool) -> RoomMachine {
    let shared = decode_record(&encode_record(m.meeting().shared()).unwrap()).unwrap();
    let meeting = Meeting::from_shared(shared, m.meeting().version());
    RoomMachine::new("room", meeting, node(name, clustered, 11))
}

fn clustered_room() -> RoomMachine {
    let settings = RoomSettings { ephemeral: true, ..RoomSettings::default() };
    let node = node("a", true, 7);
    let meeting = node.options.new_meeting(&settings, START_MS);
    RoomMachine::new("room", meeting, node)
}

#[test]
fn a_room_set_up_ahead_has_nothing_due_but_a_persistent_ones_unloading() {
    let mut m = room(true);
    assert_eq!(due(&mut m, START_MS), None, "an ephemeral room nobody joined waits for nothing");
    let (asked, _) = drive(&mut m, Job::tick(Duration::from_millis(AWARENESS_MS)), START_MS + SECOND, fine);
    assert!(asked.iter().all(|io| !matches!(io, Io::CompareAndSet { .. })), "ticking it anyway changes nothing");
    assert_eq!(due(&mut m, START_MS + 2 * SECOND), None);

    let mut m = room(false);
    m.settings_saved(settings_json(m.meeting().shared()));
    let idle = START_MS + limits::IDLE_UNLOAD.as_millis() as u64;
    assert_eq!(due(&mut m, START_MS), Some(idle), "only its unloading");
    assert_eq!(saves(&tick_at(&mut m, START_MS + SECOND)), 0, "a tick finds nothing to save");
    assert_eq!(due(&mut m, START_MS + 2 * SECOND), Some(idle));
    assert!(!m.is_idle(idle - 1));
    assert!(m.is_idle(idle));
}

#[test]
fn an_ephemeral_meeting_is_due_at_its_start_and_at_its_maximum_length() {
    let mut m = room(true);
    let _ann = join_at(&mut m, 1, Role::Member, START_MS);
    assert_eq!(due(&mut m, START_MS), Some(START_MS), "its start is recorded at once");
    tick_at(&mut m, START_MS);
    let end = START_MS + super::sim::options().max_length.as_millis() as u64;
    assert_eq!(due(&mut m, START_MS + 10), Some(end), "nothing else is due while everyone is here");
    tick_at(&mut m, end - SECOND);
    assert!(!m.is_ended());
    assert_eq!(due(&mut m, end - SECOND), Some(end));
    tick_at(&mut m, end);
    assert!(m.is_ended(), "the meeting ends at its maximum length");
    assert_eq!(due(&mut m, end + 10), Some(end + 10), "an ended room is due at once, to be retired");
}

#[test]
fn a_dropped_member_lapses_and_an_empty_meeting_ends_when_their_graces_run_out() {
    let options = super::sim::options();
    let (grace, empty) = (options.reconnect_grace.as_millis() as u64, options.empty_grace.as_millis() as u64);
    let mut m = room(true);
    let ann = join_at(&mut m, 1, Role::Member, START_MS);
    let ben = join_at(&mut m, 2, Role::Member, START_MS);
    tick_at(&mut m, START_MS);
    let ben_id = member_id(&m, ben);

    let left = START_MS + 5 * SECOND;
    leave_at(&mut m, ben, left);
    assert!(!m.meeting().shared().is_present(&ben_id), "shown reconnecting");
    assert_eq!(due(&mut m, left), Some(left + grace), "due when Ben's grace runs out");
    tick_at(&mut m, left + grace - 1);
    assert!(m.meeting().shared().member_ids().any(|id| id == ben_id), "still holding Ben's place");
    tick_at(&mut m, left + grace);
    assert!(m.meeting().shared().member_ids().all(|id| id != ben_id), "Ben's membership lapsed");

    // The last member leaves: the empty meeting's countdown starts, beside Ann's grace.
    let last = left + grace + 5 * SECOND;
    leave_at(&mut m, ann, last);
    assert_eq!(due(&mut m, last), Some(last + grace.min(empty)));
    tick_at(&mut m, last + grace);
    assert_eq!(due(&mut m, last + grace + 10), Some(last + empty), "then the empty grace");
    tick_at(&mut m, last + empty - 1);
    assert!(!m.is_ended());
    tick_at(&mut m, last + empty);
    assert!(m.is_ended(), "an ephemeral meeting left empty ends");
}

#[test]
fn a_turn_with_a_speaking_limit_is_due_when_the_limit_passes() {
    use balint_proto::room::ClientMessage as C;
    let mut m = room(true);
    let lena = join_at(&mut m, 1, Role::Leader, START_MS);
    let ann = join_at(&mut m, 2, Role::Member, START_MS);
    tick_at(&mut m, START_MS);
    let end = START_MS + super::sim::options().max_length.as_millis() as u64;
    let granted = START_MS + 10 * SECOND;
    command_at(&mut m, lena, C::SetSpeakingLimit { seconds: Some(60) }, granted);
    let member = member_id(&m, ann);
    command_at(&mut m, lena, C::GrantFloor { member, if_version: None }, granted);
    assert_eq!(due(&mut m, granted), Some(granted + 60 * SECOND));
    effects(&mut m);
    tick_at(&mut m, granted + 60 * SECOND - 1);
    let time_ups = |effects: &[Effect]| {
        messages_to(effects, lena).into_iter().filter(|m| matches!(m, ServerMessage::TimeUp { .. })).count()
    };
    assert_eq!(time_ups(&effects(&mut m)), 0, "not yet");
    tick_at(&mut m, granted + 60 * SECOND);
    assert_eq!(time_ups(&effects(&mut m)), 1, "time is up, told once");
    assert_eq!(due(&mut m, granted + 61 * SECOND), Some(end), "and the turn is due no more");
}

#[test]
fn a_persistent_board_is_due_for_saving_after_a_quiet_spell_and_at_the_longest_delay() {
    let mut m = room(false);
    m.settings_saved(settings_json(m.meeting().shared()));
    let ann = join_at(&mut m, 1, Role::Member, START_MS);
    tick_at(&mut m, START_MS);
    assert_eq!(due(&mut m, START_MS + SECOND), None, "nothing to save, someone connected: nothing due");

    let debounce = limits::SAVE_DEBOUNCE.as_millis() as u64;
    let first = START_MS + 5 * SECOND;
    drive(&mut m, Job::binary(ann, edit("a")), first, fine);
    assert_eq!(due(&mut m, first), Some(first + debounce));
    drive(&mut m, Job::binary(ann, edit("b")), first + SECOND, fine);
    assert_eq!(due(&mut m, first + SECOND), Some(first + SECOND + debounce), "a new change pushes it back");
    // Changes without a pause: due at the longest delay after the first unsaved one.
    let longest = first + limits::SAVE_MAX_DELAY.as_millis() as u64;
    for at in (first + 2 * SECOND..longest).step_by(1_000) {
        drive(&mut m, Job::binary(ann, edit("c")), at, fine);
    }
    assert_eq!(due(&mut m, longest - 1), Some(longest));
    // The save fails: it stays due, a tick later.
    let failing = |io: &Io| match io {
        Io::Save(_) => Answer::Finished(Err(down())),
        other => fine(other),
    };
    let (asked, _) = drive(&mut m, Job::tick(Duration::from_millis(AWARENESS_MS)), longest, failing);
    assert_eq!(saves(&asked), 1);
    assert_eq!(due(&mut m, longest + 10), Some(longest + SECOND), "tried again at the next tick");
    assert_eq!(saves(&tick_at(&mut m, longest + SECOND)), 1);
    assert_eq!(due(&mut m, longest + SECOND + 10), None, "saved: nothing due");

    // A changed setting is saved at once.
    let lena = join_at(&mut m, 2, Role::Leader, longest + 2 * SECOND);
    let changed = longest + 3 * SECOND;
    command_at(&mut m, lena, balint_proto::room::ClientMessage::SetFairOrder { enabled: true }, changed);
    assert_eq!(due(&mut m, changed), Some(changed));
    assert_eq!(saves(&tick_at(&mut m, changed)), 1);
    assert_eq!(due(&mut m, changed + 10), None);

    // Everyone leaves: their places are kept for the grace period, then the room is due to
    // leave memory after the unload delay.
    leave_at(&mut m, ann, changed + 10);
    leave_at(&mut m, lena, changed + 20);
    let grace = super::sim::options().reconnect_grace.as_millis() as u64;
    assert_eq!(due(&mut m, changed + 20), Some(changed + 10 + grace));
    tick_at(&mut m, changed + 20 + grace);
    assert_eq!(m.meeting().shared().member_ids().count(), 0, "both lapsed");
    let unload = changed + 20 + limits::IDLE_UNLOAD.as_millis() as u64;
    assert_eq!(due(&mut m, changed + 21 + grace), Some(unload));
    assert!(!m.is_idle(unload - 1));
    assert!(m.is_idle(unload));
}

#[test]
fn awareness_and_the_whole_board_frame_are_due_when_they_time_out() {
    use balint_proto::sync::{AwarenessUpdate, AwarenessUpdateEntry};
    let mut m = room(true);
    let ann = join_at(&mut m, 1, Role::Member, START_MS);
    tick_at(&mut m, START_MS);
    let end = START_MS + super::sim::options().max_length.as_millis() as u64;
    let seen = START_MS + 2 * SECOND;
    let state = AwarenessUpdateEntry { clock: 1, json: "{\"user\":\"ann\"}".into() };
    let update = AwarenessUpdate { clients: HashMap::from([(yrs::block::ClientID::new(7), state)]) };
    drive(&mut m, Job::binary(ann, sync::encode_awareness(&update)), seen, fine);
    assert_eq!(due(&mut m, seen), Some(seen + AWARENESS_MS));
    // A newcomer's empty step 1 is answered from the whole-board frame, kept a minute.
    let ben = join_at(&mut m, 2, Role::Member, seen + SECOND);
    let asked = seen + 5 * SECOND;
    drive(&mut m, Job::binary(ben, sync::encode_step1(&StateVector::default())), asked, fine);
    assert_eq!(due(&mut m, asked), Some(seen + AWARENESS_MS));
    effects(&mut m);

    tick_at(&mut m, seen + AWARENESS_MS);
    let removal = effects(&mut m).iter().any(|e| {
        matches!(e, Effect::Send { audience, frame: Frame::Binary(frame), .. }
            if audience.contains(ben) && matches!(sync::decode_frame(frame).as_deref(), Ok([sync::Message::Awareness(_)])))
    });
    assert!(removal, "the stale state is removed for everyone");
    // Its removal is forgotten at the next tick, then the whole-board frame goes.
    assert_eq!(due(&mut m, seen + AWARENESS_MS + 10), Some(seen + AWARENESS_MS + SECOND));
    tick_at(&mut m, seen + AWARENESS_MS + SECOND);
    assert_eq!(due(&mut m, seen + AWARENESS_MS + 2 * SECOND), Some(asked + 60_000));
    tick_at(&mut m, asked + 60_000);
    assert_eq!(due(&mut m, asked + 61_000), Some(end), "nothing of the board is due any more");
}

#[test]
fn with_one_node_presence_is_never_polled_and_disagreements_are_due_at_once() {
    let mut m = room(true);
    let ann = join_at(&mut m, 1, Role::Member, START_MS);
    tick_at(&mut m, START_MS);
    let end = START_MS + super::sim::options().max_length.as_millis() as u64;
    assert_eq!(due(&mut m, START_MS + 10 * SECOND), Some(end), "no heartbeat, no presence reading");
    // The same room opened from its record where Ann shows present, but with no connection
    // here: she is marked reconnecting at once.
    let mut copy = other_node(&m, "solo", false);
    let ann_id = member_id(&m, ann);
    assert_eq!(due(&mut copy, START_MS + 20 * SECOND), Some(START_MS + 20 * SECOND));
    tick_at(&mut copy, START_MS + 20 * SECOND);
    assert!(!copy.meeting().shared().is_present(&ann_id));
    let grace = super::sim::options().reconnect_grace.as_millis() as u64;
    assert_eq!(due(&mut copy, START_MS + 21 * SECOND), Some(START_MS + 20 * SECOND + grace));
}

#[test]
fn with_other_nodes_presence_is_read_once_an_entry_lifetime_while_someone_is_elsewhere() {
    let heartbeat = limits::PRESENCE_HEARTBEAT.as_millis() as u64;
    let lifetime = limits::PRESENCE_TTL.as_millis() as u64;
    let tick = || Job::tick(Duration::from_millis(AWARENESS_MS));
    let reads = |asked: &[Io]| asked.iter().filter(|io| matches!(io, Io::ReadPresence { .. })).count();
    let heartbeats = |asked: &[Io]| asked.iter().filter(|io| matches!(io, Io::Heartbeat { .. })).count();

    let mut a = clustered_room();
    assert_eq!(due(&mut a, START_MS), None, "nobody anywhere: nothing to announce or read");
    let ann = join_at(&mut a, 1, Role::Member, START_MS);
    let asked = tick_at(&mut a, START_MS);
    assert!(asked.iter().any(|io| matches!(io, Io::Heartbeat { entries, .. } if !entries.is_empty())));
    assert_eq!(reads(&asked), 0, "everyone is here: nothing to read");
    assert_eq!(due(&mut a, START_MS + 10), Some(START_MS + heartbeat), "Ann's entry is renewed every heartbeat");
    let ann_id = member_id(&a, ann);

    // Ben joins on node b: node a reads presence at once, to find his entry.
    let mut b = other_node(&a, "b", true);
    let ben = join_at(&mut b, 7, Role::Member, START_MS + SECOND);
    let record = encode_record(b.meeting().shared()).unwrap();
    a.on_bus("b", Envelope::State { version: b.meeting().version(), record }, START_MS + SECOND);
    assert_eq!(due(&mut a, START_MS + SECOND), Some(START_MS + SECOND));
    let ben_id = member_id(&b, ben);
    let both = |io: &Io| match io {
        Io::ReadPresence { .. } => Answer::Live(Ok(vec![format!("{ann_id}@a"), format!("{ben_id}@b")])),
        other => fine(other),
    };
    let (asked, _) = drive(&mut a, tick(), START_MS + SECOND, both);
    assert_eq!(reads(&asked), 1);
    assert!(a.meeting().shared().is_present(&ben_id));

    // Then only when that reading is an entry's lifetime old, to see whether b renewed his
    // entry: Ann's heartbeats meanwhile read nothing.
    let mut seen = START_MS + SECOND;
    for round in 0..2 {
        let mut now = due(&mut a, seen + 10).unwrap();
        while now < seen + lifetime {
            let (asked, _) = drive(&mut a, tick(), now, both);
            assert_eq!((reads(&asked), heartbeats(&asked)), (0, 1), "round {round}: a heartbeat at {now}, no reading");
            assert!(a.meeting().shared().is_present(&ben_id));
            now = due(&mut a, now + 10).unwrap();
        }
        assert_eq!(now, seen + lifetime, "round {round}: read when the last reading is a lifetime old");
        let (asked, _) = drive(&mut a, tick(), now, both);
        assert_eq!(reads(&asked), 1);
        assert!(a.meeting().shared().is_present(&ben_id), "round {round}: b renewed Ben's entry");
        seen = now;
    }

    // Node b dies just after: its entries lapse. The next reading, a lifetime after the last
    // one that saw Ben, finds his entry gone, and he is shown reconnecting.
    let ann_only = |io: &Io| match io {
        Io::ReadPresence { .. } => Answer::Live(Ok(vec![format!("{ann_id}@a")])),
        other => fine(other),
    };
    let mut now = due(&mut a, seen + 10).unwrap();
    while now < seen + lifetime {
        let (asked, _) = drive(&mut a, tick(), now, ann_only);
        assert_eq!(reads(&asked), 0);
        assert!(a.meeting().shared().is_present(&ben_id), "Ben's entry may still live at {now}");
        now = due(&mut a, now + 10).unwrap();
    }
    let (asked, _) = drive(&mut a, tick(), now, ann_only);
    assert_eq!(reads(&asked), 1);
    assert!(!a.meeting().shared().is_present(&ben_id), "shown reconnecting when the reading misses him");
    let grace = super::sim::options().reconnect_grace.as_millis() as u64;
    let ben_lapses = now + grace;
    // Ann's heartbeats have gone every 5 s from the start.
    let next_heartbeat = START_MS + (now - START_MS).div_ceil(heartbeat) * heartbeat;
    assert_eq!(due(&mut a, now + 10), Some(next_heartbeat), "nobody elsewhere: nothing more to read");

    // Ann leaves too: nobody is here or elsewhere, nothing is announced or read.
    leave_at(&mut a, ann, now + SECOND);
    assert_eq!(due(&mut a, now + SECOND), Some(ben_lapses), "no heartbeat without members here");
}

#[test]
fn a_member_who_left_another_node_is_not_brought_back_by_an_entry_seen_before() {
    let mut a = clustered_room();
    let ann = join_at(&mut a, 1, Role::Member, START_MS);
    tick_at(&mut a, START_MS);
    let ann_id = member_id(&a, ann);
    let mut b = other_node(&a, "b", true);
    let ben = join_at(&mut b, 7, Role::Member, START_MS + SECOND);
    let ben_id = member_id(&b, ben);
    let record = encode_record(b.meeting().shared()).unwrap();
    a.on_bus("b", Envelope::State { version: b.meeting().version(), record }, START_MS + SECOND);
    let both = |io: &Io| match io {
        Io::ReadPresence { .. } => Answer::Live(Ok(vec![format!("{ann_id}@a"), format!("{ben_id}@b")])),
        other => fine(other),
    };
    drive(&mut a, Job::tick(Duration::from_millis(AWARENESS_MS)), START_MS + SECOND, both);
    assert!(a.meeting().shared().is_present(&ben_id));

    // Ben closes his page on b, which removes his entry and writes him reconnecting.
    let ann_here = |io: &Io| match io {
        Io::ReadPresence { .. } => Answer::Live(Ok(vec![format!("{ann_id}@a")])),
        other => fine(other),
    };
    drive(&mut b, Job::leave(ben), START_MS + 2 * SECOND, ann_here);
    assert!(!b.meeting().shared().is_present(&ben_id));
    let record = encode_record(b.meeting().shared()).unwrap();
    a.on_bus("b", Envelope::State { version: b.meeting().version(), record }, START_MS + 2 * SECOND);
    assert!(!a.meeting().shared().is_present(&ben_id));

    // Node a's ticks within the lifetime of the entry it saw, with a reading or without one,
    // keep him reconnecting: only a current entry may say he is back.
    let lifetime = limits::PRESENCE_TTL.as_millis() as u64;
    let mut now = START_MS + 3 * SECOND;
    while now <= START_MS + SECOND + lifetime {
        let (asked, _) = drive(&mut a, Job::tick(Duration::from_millis(AWARENESS_MS)), now, ann_here);
        assert!(!a.meeting().shared().is_present(&ben_id), "Ben shown back at {now}");
        assert!(!asked.iter().any(|io| matches!(io, Io::CompareAndSet { .. })), "a write at {now}");
        now += SECOND;
    }
}

#[test]
fn a_possible_loss_on_the_bus_is_due_at_once_and_a_tick_later_nothing_is() {
    let mut a = clustered_room();
    assert_eq!(due(&mut a, START_MS), None);
    a.mark_resync();
    assert_eq!(due(&mut a, START_MS), Some(START_MS));
    let asked = tick_at(&mut a, START_MS);
    assert!(asked.iter().any(|io| matches!(io, Io::Load)), "the record is read again");
    assert!(effects(&mut a).iter().any(|e| matches!(e, Effect::Publish(Envelope::SyncRequest { mutual: true, .. }))));
    assert_eq!(due(&mut a, START_MS + 10), None);
}

#[test]
fn ticks_stay_a_tick_interval_apart_and_an_ended_room_is_due_at_once() {
    let mut m = room(false);
    m.settings_saved(settings_json(m.meeting().shared()));
    let ann = join_at(&mut m, 1, Role::Member, START_MS);
    drive(&mut m, Job::binary(ann, edit("a")), START_MS, fine);
    // The save is due, and fails: it is due again at once, but waits for the tick interval.
    let quiet = START_MS + limits::SAVE_DEBOUNCE.as_millis() as u64;
    assert_eq!(due(&mut m, START_MS), Some(quiet));
    let failing = |io: &Io| match io {
        Io::Save(_) => Answer::Finished(Err(down())),
        other => fine(other),
    };
    let (asked, _) = drive(&mut m, Job::tick(Duration::from_millis(AWARENESS_MS)), quiet, failing);
    assert_eq!(saves(&asked), 1);
    assert_eq!(due(&mut m, quiet + 300), Some(quiet + SECOND));
    // An end is due at once, whatever the spacing.
    drive(&mut m, Job::end("ended_by_leader"), quiet + 500, fine);
    assert!(m.is_ended());
    assert_eq!(due(&mut m, quiet + 600), Some(quiet + 600), "an ended room is retired at once");
}

/// One random life of a room on one node (alone, or `clustered` with nobody on the other
/// nodes), ticked only when due. Between due times, a tick now and then must be quiet: no
/// write, no save, no heartbeat, no frame and no message for anyone, no end and no
/// unloading. Whatever a tick would do that [`RoomMachine::next_due`] did not announce
/// breaks this.
fn a_life_ticked_only_when_due(seed: u64, clustered: bool, ephemeral: bool, lobby: bool) {
    use balint_proto::room::ClientMessage as C;
    use balint_proto::sync::{AwarenessUpdate, AwarenessUpdateEntry};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let settings = RoomSettings { ephemeral, lobby, ..RoomSettings::default() };
    let node = node("a", clustered, seed);
    let meeting = node.options.new_meeting(&settings, START_MS);
    let mut m = RoomMachine::new("room", meeting, node);
    if !ephemeral {
        m.settings_saved(settings_json(m.meeting().shared()));
    }
    let mut now = START_MS;
    let mut conns: Vec<ConnId> = Vec::new();
    let mut next_conn = 1;
    let mut ticks = (0, 0);
    for step in 0..400 {
        now += match rng.gen_range(0..10) {
            0..=6 => rng.gen_range(0..3_000),
            7 | 8 => rng.gen_range(0..25_000),
            _ => rng.gen_range(0..120_000),
        };
        let raw = m.earliest_due(now, AWARENESS_MS);
        if raw.is_some_and(|at| at <= now) {
            tick_at(&mut m, now);
            effects(&mut m);
            ticks.0 += 1;
        } else if rng.gen_bool(0.5) {
            let was_idle = !ephemeral && m.is_idle(now);
            let asked = tick_at(&mut m, now);
            // Reading presence changes nothing, nor does a heartbeat of nobody; with one node,
            // nobody reads what a heartbeat writes, and it is not kept due.
            let harmless = |io: &&Io| match io {
                Io::ReadPresence { .. } => true,
                Io::Heartbeat { entries, .. } => !clustered || entries.is_empty(),
                _ => false,
            };
            let unexpected: Vec<&Io> = asked.iter().filter(|io| !harmless(io)).collect();
            assert!(unexpected.is_empty(), "seed {seed} step {step}: a tick not due asked {unexpected:?}");
            let sent = effects(&mut m);
            assert!(sent.is_empty(), "seed {seed} step {step}: a tick not due sent {sent:?}");
            assert!(!m.is_ended(), "seed {seed} step {step}: a tick not due ended the meeting");
            assert!(!was_idle, "seed {seed} step {step}: the room went idle without being due");
            ticks.1 += 1;
        }
        if m.is_ended() {
            break;
        }
        // Something happens.
        let pick =
            |rng: &mut StdRng, conns: &[ConnId]| (!conns.is_empty()).then(|| conns[rng.gen_range(0..conns.len())]);
        match rng.gen_range(0..100) {
            0..=14 => {
                let role = [Role::Leader, Role::Member, Role::Member, Role::Observer][rng.gen_range(0..4)];
                let conn = ConnId(next_conn);
                next_conn += 1;
                if m.connect(conn, role, 0, "guest".into()) {
                    drive(&mut m, Job::command(conn, C::Hello { resume: None }, now), now, fine);
                    conns.push(conn);
                }
            }
            15..=24 => {
                if let Some(conn) = pick(&mut rng, &conns) {
                    conns.retain(|&c| c != conn);
                    drive(&mut m, Job::leave(conn), now, fine);
                }
            }
            25..=44 => {
                if let Some(conn) = pick(&mut rng, &conns) {
                    drive(&mut m, Job::binary(conn, edit(&format!("edit {step}"))), now, fine);
                }
            }
            45..=54 => {
                if let Some(conn) = pick(&mut rng, &conns) {
                    let json = if rng.gen_bool(0.2) { "null" } else { "{\"cursor\":1}" };
                    let state = AwarenessUpdateEntry { clock: step + 1, json: json.into() };
                    let id = yrs::block::ClientID::new(conn.0 * 10 + rng.gen_range(0..2));
                    let update = AwarenessUpdate { clients: HashMap::from([(id, state)]) };
                    drive(&mut m, Job::binary(conn, sync::encode_awareness(&update)), now, fine);
                }
            }
            55..=59 => {
                if let Some(conn) = pick(&mut rng, &conns) {
                    let step1 = sync::encode_step1(&StateVector::default());
                    drive(&mut m, Job::binary(conn, step1), now, fine);
                }
            }
            60..=94 => {
                let Some(conn) = pick(&mut rng, &conns) else { continue };
                let members: Vec<String> = m.meeting().shared().member_ids().map(str::to_owned).collect();
                let someone = members[rng.gen_range(0..members.len().max(1)).min(members.len().saturating_sub(1))..]
                    .first()
                    .cloned()
                    .unwrap_or_default();
                let message = match rng.gen_range(0..14) {
                    0 => C::SetSpeakingLimit { seconds: Some(rng.gen_range(1..8)) },
                    1 => C::SetSpeakingLimit { seconds: None },
                    2 | 3 => C::RaiseHand {},
                    4 => C::NextSpeaker { if_version: None },
                    5 | 6 => C::GrantFloor { member: someone, if_version: None },
                    7 => C::YieldFloor {},
                    8 => C::SetFairOrder { enabled: rng.gen_bool(0.5) },
                    9 => C::Admit { member: someone },
                    10 => C::SetLobby { enabled: rng.gen_bool(0.5) },
                    11 => C::SetAway { away: rng.gen_bool(0.5) },
                    12 => C::LockBoard { locked: rng.gen_bool(0.5) },
                    _ => {
                        if rng.gen_bool(0.1) {
                            C::EndMeeting {}
                        } else {
                            C::RevokeFloor {}
                        }
                    }
                };
                drive(&mut m, Job::command(conn, message, now), now, fine);
            }
            _ => {
                if clustered {
                    m.mark_resync();
                }
            }
        }
        effects(&mut m);
        if m.is_ended() {
            break;
        }
    }
    assert!(ticks.0 > 0 && ticks.1 > 0, "seed {seed}: ticks due {} and not due {}", ticks.0, ticks.1);
}

#[test]
fn ticking_a_room_when_nothing_is_due_does_nothing() {
    for seed in 0..48 {
        a_life_ticked_only_when_due(seed, seed % 2 == 1, seed % 4 < 2, seed % 8 < 4);
    }
}
