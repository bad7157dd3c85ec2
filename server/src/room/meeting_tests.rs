//! Scenario tests for [`Meeting`]: every rule of presence, roles, the queue and the floor, the
//! phases, the lobby, the board lock, kicking and ending, played out on a virtual clock.

use super::*;

use balint_proto::room::ClientMessage as C;
use balint_proto::rules::Reason;

/// The reconnect grace of every simulated meeting.
const GRACE_MS: u64 = 120_000;
/// The most members a simulated room holds.
const MAX_MEMBERS: usize = 50;
/// How long a simulated ephemeral meeting may stay empty.
const EMPTY_GRACE_MS: u64 = 600_000;
/// The longest a simulated ephemeral meeting may last.
const MAX_LENGTH_MS: u64 = 6 * 3600 * 1000;
/// The virtual clock starts here (a plausible Unix time in milliseconds).
const START_MS: u64 = 1_700_000_000_000;

/// Someone in the simulated room: one connection and the member it speaks for.
#[derive(Debug, Clone)]
struct Person {
    conn: ConnId,
    id: String,
}

/// A meeting, a virtual clock and a log of everything the meeting asked its driver to do.
struct Sim {
    meeting: Meeting,
    now: u64,
    log: Vec<Output>,
    next_conn: u64,
}

impl Sim {
    fn balint() -> Self {
        Self::with(Template::Balint, false)
    }

    fn open() -> Self {
        Self::with(Template::Open, false)
    }

    fn with_lobby() -> Self {
        Self::with(Template::Balint, true)
    }

    fn sealed_with_lobby() -> Self {
        let mut sim = Self::with(Template::Balint, true);
        let mut shared = sim.meeting.shared().clone();
        shared.sealed = true;
        shared.title = None;
        sim.meeting = Meeting::from_shared(shared, 1);
        sim
    }

    fn with(template: Template, lobby: bool) -> Self {
        let settings = MeetingSettings {
            title: Some("Tuesday group".into()),
            template,
            ephemeral: true,
            lobby,
            reconnect_grace_ms: GRACE_MS,
            empty_grace_ms: EMPTY_GRACE_MS,
            max_length_ms: MAX_LENGTH_MS,
            max_members: MAX_MEMBERS,
            sealed: false,
            link_generation: 0,
            sealed_title: None,
            controls: Default::default(),
        };
        Sim { meeting: Meeting::new(settings, START_MS), now: START_MS, log: Vec::new(), next_conn: 0 }
    }

    fn record(&mut self, out: Vec<Output>) -> Vec<Output> {
        self.log.extend(out.iter().cloned());
        out
    }

    /// Registers a new connection opened with a link of `role` and the query-string `name`.
    fn connect(&mut self, role: Role, name: &str) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.meeting.connect(conn, role, name.to_owned());
        conn
    }

    /// `hello` on a connection, optionally resuming.
    fn hello(&mut self, conn: ConnId, resume: Option<&str>) -> Vec<Output> {
        self.send(conn, C::Hello { resume: resume.map(str::to_owned) })
    }

    /// A first binary frame from a stock y-sync client (no room protocol).
    fn binary_frame(&mut self, conn: ConnId) -> Vec<Output> {
        let out = self.meeting.bind(conn, false, None, self.now);
        self.record(out)
    }

    /// Connects and says hello; returns the person (admitted or waiting in the lobby).
    fn join(&mut self, role: Role, name: &str) -> Person {
        let conn = self.connect(role, name);
        let out = self.hello(conn, None);
        let id = introduced_id(&out, conn).expect("hello is answered with welcome or waiting");
        Person { conn, id }
    }

    /// Opens another tab (or reconnects) with `token`; returns the new connection's person.
    fn resume(&mut self, role: Role, name: &str, token: &str) -> Person {
        let conn = self.connect(role, name);
        let out = self.hello(conn, Some(token));
        let id = introduced_id(&out, conn).expect("hello is answered with welcome or waiting");
        Person { conn, id }
    }

    fn send(&mut self, conn: ConnId, message: ClientMessage) -> Vec<Output> {
        let out = self.meeting.handle(conn, message, self.now);
        self.record(out)
    }

    /// Moves the clock on by `ms` and lets the meeting's timers run.
    fn advance(&mut self, ms: u64) -> Vec<Output> {
        self.now += ms;
        let out = self.meeting.tick(self.now);
        self.record(out)
    }

    /// The connection closes (a dropped network, a closed tab).
    fn drop_conn(&mut self, conn: ConnId) -> Vec<Output> {
        let out = self.meeting.disconnect(conn, self.now);
        self.record(out)
    }

    /// The latest room state `conn` was sent, in a `welcome` or a `state`.
    fn view(&self, conn: ConnId) -> RoomState {
        self.log
            .iter()
            .rev()
            .find_map(|o| match o {
                Output::Send(audience, ServerMessage::State { state } | ServerMessage::Welcome { state, .. })
                    if audience.contains(conn) =>
                {
                    Some(state.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{conn} was never sent a room state"))
    }

    /// The resume token `conn` was given in `welcome` or `waiting`.
    fn token(&self, conn: ConnId) -> String {
        self.log
            .iter()
            .find_map(|o| match o {
                Output::Send(audience, ServerMessage::Welcome { resume_token, .. })
                | Output::Send(audience, ServerMessage::Waiting { resume_token, .. })
                    if audience.contains(conn) =>
                {
                    Some(resume_token.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{conn} was never given a resume token"))
    }

    /// Sends `message` from `conn`, expects exactly one `error{code}` for `conn` and no change at
    /// all to the room state (its version included).
    fn assert_refused(&mut self, conn: ConnId, message: ClientMessage, (code, reason): (ErrorCode, Reason)) {
        let before = self.meeting.state(true);
        let out = self.send(conn, message.clone());
        match out.as_slice() {
            [Output::Send(audience, ServerMessage::Error { code: got, reason: got_reason, message: text })] => {
                assert_eq!(*got, code, "{message:?} was refused with the wrong code");
                assert_eq!(*got_reason, Some(reason), "{message:?} was refused for the wrong reason");
                assert_eq!(text, reason.message(), "the message is the reason's sentence");
                assert_eq!(*audience, Audience::one(conn), "the error of {message:?} goes to its sender only");
            }
            other => panic!("{message:?} should produce one error {code:?}, got {other:?}"),
        }
        assert_eq!(self.meeting.state(true), before, "{message:?} was refused but changed the state");
    }

    /// Sends `message` from `conn` and expects it to be accepted (no error for the sender).
    fn ok(&mut self, conn: ConnId, message: ClientMessage) -> Vec<Output> {
        let out = self.send(conn, message.clone());
        assert_eq!(error_for(&out, conn), None, "{message:?} was refused: {out:?}");
        out
    }
}

/// The member id in the `welcome` or `waiting` sent to `conn`.
fn introduced_id(out: &[Output], conn: ConnId) -> Option<String> {
    out.iter().find_map(|o| match o {
        Output::Send(audience, ServerMessage::Welcome { member_id, .. })
        | Output::Send(audience, ServerMessage::Waiting { member_id, .. })
            if audience.contains(conn) =>
        {
            Some(member_id.clone())
        }
        _ => None,
    })
}

/// The error code sent to `conn`, if any.
fn error_for(out: &[Output], conn: ConnId) -> Option<ErrorCode> {
    out.iter().find_map(|o| match o {
        Output::Send(audience, ServerMessage::Error { code, .. }) if audience.contains(conn) => Some(*code),
        _ => None,
    })
}

/// Every message sent to `conn`.
fn messages_to(out: &[Output], conn: ConnId) -> Vec<&ServerMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(audience, message) if audience.contains(conn) => Some(message),
            _ => None,
        })
        .collect()
}

/// Whether `conn` is closed with the kicked code.
fn closed_as_kicked(out: &[Output], conn: ConnId) -> bool {
    out.contains(&Output::Close { conn, code: close::REMOVED, reason: "removed by a leader" })
        || out.contains(&Output::Close { conn, code: close::REMOVED, reason: "declined by a leader" })
}

fn state_count(out: &[Output]) -> usize {
    out.iter().filter(|o| matches!(o, Output::Send(_, ServerMessage::State { .. }))).count()
}

fn time_ups(out: &[Output]) -> Vec<(&Audience, &str, u32)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(audience, ServerMessage::TimeUp { member, limit_secs }) => {
                Some((audience, member.as_str(), *limit_secs))
            }
            _ => None,
        })
        .collect()
}

/// The member ids in the queue, in order.
fn queue(state: &RoomState) -> Vec<&str> {
    state.queue.iter().map(|e| e.member.as_str()).collect()
}

/// 1-based position of `person` in the queue.
fn position(state: &RoomState, person: &Person) -> Option<usize> {
    state.queue.iter().position(|e| e.member == person.id).map(|i| i + 1)
}

fn floor_holder(state: &RoomState) -> Option<&str> {
    state.floor.as_ref().map(|f| f.member.as_str())
}

fn member<'a>(state: &'a RoomState, person: &Person) -> Option<&'a MemberView> {
    state.members.iter().find(|m| m.id == person.id)
}

fn status(state: &RoomState, person: &Person) -> Status {
    member(state, person).unwrap_or_else(|| panic!("{} is not listed", person.id)).status
}

fn grant(person: &Person) -> ClientMessage {
    C::GrantFloor { member: person.id.clone(), if_version: None }
}

fn set_phase(phase: Phase) -> ClientMessage {
    C::SetPhase { phase, duration_secs: None }
}

// ---------------------------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------------------------

#[test]
fn a_connection_becomes_a_member_when_it_says_hello() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let before = sim.meeting.state(true);
    let conn = sim.connect(Role::Member, "Ann");
    assert!(!sim.meeting.is_bound(conn));
    assert!(!sim.meeting.can_read(conn));
    assert_eq!(sim.meeting.state(true), before, "connecting alone changes nothing");

    let out = sim.hello(conn, None);

    let ann = Person { conn, id: introduced_id(&out, conn).unwrap() };
    match messages_to(&out, conn).as_slice() {
        [ServerMessage::Welcome { member_id, role, resume_token, state, .. }, ..] => {
            assert_eq!(member_id, &ann.id);
            assert_eq!(*role, Role::Member);
            assert!(!resume_token.is_empty());
            assert_eq!(member(state, &ann).unwrap().name, "Ann");
        }
        other => panic!("expected welcome first, got {other:?}"),
    }
    assert_eq!(sim.view(conn).version, sim.view(lena.conn).version, "Ann ends on the room's latest state");
    assert_eq!(sim.view(conn).members, sim.view(lena.conn).members);
    assert!(out.contains(&Output::Greet { conn, full: false }));
    let greetings = out.iter().filter(|o| matches!(o, Output::Greet { conn: c, .. } if *c == conn)).count();
    assert_eq!(greetings, 1, "one board sync, not the whole board pushed on top of it: {out:?}");
    let welcomes = messages_to(&out, conn).iter().filter(|m| matches!(m, ServerMessage::Welcome { .. })).count();
    assert_eq!(welcomes, 1, "one welcome");
    assert!(sim.meeting.is_bound(conn) && sim.meeting.said_hello(conn) && sim.meeting.can_read(conn));
    let seen_by_leader = sim.view(lena.conn);
    let listed = member(&seen_by_leader, &ann).expect("the leader sees the newcomer");
    assert_eq!((listed.name.as_str(), listed.role, listed.status), ("Ann", Role::Member, Status::Here));
}

#[test]
fn a_command_before_hello_closes_the_connection_as_invalid_text() {
    // Text frames go only to connections that said hello, so the answer is a close, not an
    // `error` message.
    let mut sim = Sim::balint();
    let conn = sim.connect(Role::Member, "Ann");
    let before = sim.meeting.state(true);
    let out = sim.send(conn, C::RaiseHand {});
    assert_eq!(
        out,
        vec![Output::Close { conn, code: balint_proto::close::INVALID_TEXT, reason: "expected a hello message" }]
    );
    assert_eq!(sim.meeting.state(true), before);
}

#[test]
fn a_stock_yjs_client_becomes_a_member_on_its_first_binary_frame_under_its_query_string_name() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let dora = sim.connect(Role::Member, "Dora");

    let out = sim.binary_frame(dora);

    assert!(out.contains(&Output::Greet { conn: dora, full: false }), "the board sync starts");
    let greetings = out.iter().filter(|o| matches!(o, Output::Greet { conn, .. } if *conn == dora)).count();
    assert_eq!(greetings, 1, "the board goes once: {out:?}");
    assert!(messages_to(&out, dora).is_empty(), "a stock client gets no text frame");
    assert!(messages_to(&out, dora).is_empty(), "a stock client never gets text frames");
    assert!(sim.meeting.is_bound(dora) && !sim.meeting.said_hello(dora) && sim.meeting.can_read(dora));
    let members = sim.view(lena.conn).members;
    assert_eq!(members.len(), 2);
    assert_eq!(members[1].name, "Dora");
    assert_eq!(members[1].role, Role::Member);
    assert_eq!(Some(members[1].id.as_str()), sim.meeting.member_of(dora));
}

#[test]
fn two_tabs_with_the_same_resume_token_count_as_one_member() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let token = sim.token(ann.conn);

    let second_tab = sim.resume(Role::Member, "Ann", &token);

    assert_eq!(second_tab.id, ann.id, "the second tab speaks for the same member");
    assert!(sim.log.contains(&Output::Greet { conn: second_tab.conn, full: false }));
    assert_eq!(sim.view(lena.conn).members.len(), 2, "Lena and Ann, once");

    // Closing one tab is not a drop: nothing changes.
    let out = sim.drop_conn(ann.conn);
    assert!(out.is_empty(), "closing one of two tabs publishes nothing: {out:?}");
    assert_eq!(status(&sim.meeting.state(true), &ann), Status::Here);

    sim.drop_conn(second_tab.conn);
    assert_eq!(status(&sim.view(lena.conn), &ann), Status::Reconnecting);
}

#[test]
fn a_member_who_drops_shows_reconnecting_and_keeps_role_queue_position_and_floor_for_the_grace_period() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    let cleo = sim.join(Role::Member, "Cleo");
    sim.ok(lena.conn, C::SetRole { member: cleo.id.clone(), role: Role::Leader });
    sim.ok(lena.conn, grant(&ann));
    sim.ok(ben.conn, C::RaiseHand {});
    sim.advance(1_000);
    sim.ok(cleo.conn, C::RaiseHand {});

    sim.drop_conn(ann.conn);
    sim.drop_conn(cleo.conn);
    sim.advance(GRACE_MS - 1);

    let view = sim.view(lena.conn);
    assert_eq!(status(&view, &ann), Status::Reconnecting);
    assert_eq!(status(&view, &cleo), Status::Reconnecting);
    assert_eq!(floor_holder(&view), Some(ann.id.as_str()), "Ann keeps the floor");
    assert_eq!(position(&view, &cleo), Some(2), "Cleo keeps her place");
    assert_eq!(member(&view, &cleo).unwrap().role, Role::Leader, "Cleo keeps her role");
    let state = sim.meeting.state(true);
    assert_eq!(state.members.len(), 4, "nobody is gone one millisecond before the grace ends");
}

#[test]
fn a_member_raises_a_hand_drops_reconnects_within_the_grace_period_and_still_holds_position_2() {
    let mut sim = Sim::balint();
    let _lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(ann.conn, C::RaiseHand {});
    sim.advance(2_000);
    sim.ok(ben.conn, C::RaiseHand {});
    assert_eq!(position(&sim.view(ben.conn), &ben), Some(2));
    let token = sim.token(ben.conn);

    sim.drop_conn(ben.conn);
    assert_eq!(status(&sim.view(ann.conn), &ben), Status::Reconnecting);
    sim.advance(GRACE_MS / 2);
    let ben_again = sim.resume(Role::Member, "Ben", &token);

    assert_eq!(ben_again.id, ben.id, "the same member resumes");
    let view = sim.view(ben_again.conn);
    assert_eq!(position(&view, &ben), Some(2));
    assert_eq!(status(&view, &ben), Status::Here);
    assert_eq!(status(&sim.view(ann.conn), &ben), Status::Here, "everyone sees Ben back");

    // The grace timer no longer runs for Ben.
    sim.advance(GRACE_MS);
    assert_eq!(position(&sim.meeting.state(false), &ben), Some(2));
}

#[test]
fn after_the_grace_period_a_dropped_member_is_gone_their_hand_lowered_and_the_floor_released() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    let token = sim.token(ann.conn);
    sim.ok(lena.conn, grant(&ann));
    sim.ok(ben.conn, C::RaiseHand {});
    sim.drop_conn(ann.conn);
    sim.drop_conn(ben.conn);

    assert_eq!(state_count(&sim.advance(GRACE_MS - 1)), 0, "still within the grace period");
    let out = sim.advance(1);

    assert!(state_count(&out) > 0, "the departure is published");
    let view = sim.view(lena.conn);
    assert_eq!(view.members.len(), 1, "only Lena is left");
    assert!(member(&view, &ann).is_none() && member(&view, &ben).is_none());
    assert!(view.queue.is_empty(), "Ben's hand is lowered");
    assert_eq!(view.floor, None, "Ann's floor is released");

    // The membership is over: the old token makes a new member, told what was released.
    let someone = sim.resume(Role::Member, "Ann", &token);
    assert_ne!(someone.id, ann.id);
    let released = messages_to(&sim.log, someone.conn).into_iter().find_map(|m| match m {
        ServerMessage::Welcome { released, .. } => released.clone(),
        _ => None,
    });
    let grace_secs = Some(u32::try_from(GRACE_MS / 1000).unwrap());
    assert_eq!(released, Some(Released { floor: true, grace_secs, ..Released::default() }));
}

#[test]
fn an_unknown_resume_token_makes_a_new_member() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");

    let ann = sim.resume(Role::Member, "Ann", "no-such-token");

    assert_ne!(ann.id, lena.id);
    let view = sim.view(lena.conn);
    assert_eq!(view.members.len(), 2);
    assert_eq!(member(&view, &ann).unwrap().name, "Ann");
    assert_ne!(sim.token(ann.conn), "no-such-token", "a fresh token is issued");
}

#[test]
fn set_away_shows_away_and_coming_back_shows_here() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");

    sim.ok(ann.conn, C::SetAway { away: true });
    assert_eq!(status(&sim.view(lena.conn), &ann), Status::Away);
    assert_eq!(status(&sim.view(ann.conn), &ann), Status::Away);

    sim.ok(ann.conn, C::SetAway { away: false });
    assert_eq!(status(&sim.view(lena.conn), &ann), Status::Here);
}

// ---------------------------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------------------------

#[test]
fn a_leader_promotes_a_member_to_co_leader_who_can_then_use_leader_commands() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.assert_refused(ann.conn, grant(&ben), (ErrorCode::Forbidden, Reason::NotLeader));

    sim.ok(lena.conn, C::SetRole { member: ann.id.clone(), role: Role::Leader });

    let view = sim.view(ann.conn);
    assert_eq!(member(&view, &ann).unwrap().role, Role::Leader);
    assert!(view.participation.is_some(), "a co-leader gets the leaders' view");
    sim.ok(ann.conn, grant(&ben));
    assert_eq!(floor_holder(&sim.view(lena.conn)), Some(ben.id.as_str()));
    sim.ok(ann.conn, C::LockBoard { locked: true });
    assert!(sim.view(ben.conn).board_locked);
}

#[test]
fn a_leader_demotes_a_co_leader_who_then_loses_leader_commands() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    sim.ok(lena.conn, C::SetRole { member: ann.id.clone(), role: Role::Leader });

    sim.ok(lena.conn, C::SetRole { member: ann.id.clone(), role: Role::Member });

    let view = sim.view(ann.conn);
    assert_eq!(member(&view, &ann).unwrap().role, Role::Member);
    assert_eq!(view.participation, None, "Ann is back to the members' view");
    sim.assert_refused(ann.conn, grant(&ann), (ErrorCode::Forbidden, Reason::NotLeader));
}

#[test]
fn a_leader_cannot_change_their_own_role() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let _ann = sim.join(Role::Member, "Ann");

    sim.assert_refused(
        lena.conn,
        C::SetRole { member: lena.id.clone(), role: Role::Member },
        (ErrorCode::Forbidden, Reason::OwnRole),
    );

    assert_eq!(member(&sim.view(lena.conn), &lena).unwrap().role, Role::Leader);
}

#[test]
fn a_member_sending_grant_floor_gets_forbidden_and_nothing_changes() {
    let mut sim = Sim::balint();
    let _lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let version = sim.meeting.state(false).version;

    let out = sim.send(ann.conn, grant(&ann));

    assert_eq!(error_for(&out, ann.conn), Some(ErrorCode::Forbidden));
    assert_eq!(state_count(&out), 0, "no state is published");
    assert_eq!(sim.meeting.state(false).version, version);
    assert_eq!(sim.meeting.state(false).floor, None);
}

#[test]
fn a_member_gets_forbidden_for_every_leader_only_command_and_nothing_changes() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(lena.conn, C::Admit { member: ann.id.clone() });
    sim.ok(lena.conn, C::Admit { member: ben.id.clone() });
    let wanda = sim.join(Role::Member, "Wanda");
    sim.ok(ben.conn, C::RaiseHand {});
    sim.ok(lena.conn, grant(&ann));

    let leader_only = [
        grant(&ben),
        C::NextSpeaker { if_version: None },
        C::RevokeFloor {},
        C::LowerHand { member: Some(ben.id.clone()) },
        C::LowerAllHands {},
        C::SetSpeakingLimit { seconds: Some(60) },
        C::SetFairOrder { enabled: true },
        C::SetPhaseReset { enabled: false },
        set_phase(Phase::Presentation),
        C::PickPresenter { member: Some(ben.id.clone()) },
        C::SetRole { member: ben.id.clone(), role: Role::Leader },
        C::SetRole { member: ann.id.clone(), role: Role::Leader },
        C::SetLobby { enabled: false },
        C::Admit { member: wanda.id.clone() },
        C::AdmitAll {},
        C::Decline { member: wanda.id.clone() },
        C::LockBoard { locked: true },
        C::Kick { member: ben.id.clone() },
        C::EndMeeting {},
    ];
    for command in leader_only {
        sim.assert_refused(ann.conn, command, (ErrorCode::Forbidden, Reason::NotLeader));
    }

    // Everything is as it was: Ann holds the floor, Ben's hand is up, Wanda still waits.
    let view = sim.meeting.state(true);
    assert_eq!(floor_holder(&view), Some(ann.id.as_str()));
    assert_eq!(queue(&view), [ben.id.as_str()]);
    assert_eq!(view.waiting.unwrap()[0].id, wanda.id);
    assert!(sim.meeting.is_connected(ben.conn));
    assert!(!sim.log.iter().any(|o| matches!(o, Output::End { .. } | Output::Close { .. })));
}

#[test]
fn observers_cannot_raise_a_hand() {
    let mut sim = Sim::balint();
    let _lena = sim.join(Role::Leader, "Lena");
    let otto = sim.join(Role::Observer, "Otto");

    sim.assert_refused(otto.conn, C::RaiseHand {}, (ErrorCode::Forbidden, Reason::Observer));
}

#[test]
fn observers_cannot_be_granted_the_floor() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let otto = sim.join(Role::Observer, "Otto");

    sim.assert_refused(lena.conn, grant(&otto), (ErrorCode::NotEligible, Reason::Observer));
}

#[test]
fn observers_may_read_but_not_write_the_board() {
    let mut sim = Sim::balint();
    let _lena = sim.join(Role::Leader, "Lena");
    let otto = sim.join(Role::Observer, "Otto");
    let ann = sim.join(Role::Member, "Ann");

    assert!(sim.meeting.can_read(otto.conn));
    assert_eq!(sim.meeting.can_write(otto.conn).map_err(|r| r.reason), Err(Reason::Observer));
    assert!(sim.meeting.can_write(ann.conn).is_ok());
}

#[test]
fn a_member_made_observer_loses_their_hand_and_the_floor() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(lena.conn, grant(&ann));
    sim.ok(ben.conn, C::RaiseHand {});

    sim.ok(lena.conn, C::SetRole { member: ann.id.clone(), role: Role::Observer });
    sim.ok(lena.conn, C::SetRole { member: ben.id.clone(), role: Role::Observer });

    let view = sim.view(ann.conn);
    assert_eq!(view.floor, None);
    assert!(view.queue.is_empty());
    assert_eq!(sim.meeting.can_write(ann.conn).map_err(|r| r.reason), Err(Reason::Observer));
}

// ---------------------------------------------------------------------------------------------
// Queue and floor
// ---------------------------------------------------------------------------------------------

#[test]
fn a_member_is_in_the_queue_once_and_raising_again_changes_nothing() {
    let mut sim = Sim::balint();
    let _lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(ann.conn, C::RaiseHand {});
    sim.advance(1_000);
    sim.ok(ben.conn, C::RaiseHand {});
    let version = sim.meeting.state(false).version;

    sim.advance(1_000);
    let out = sim.ok(ann.conn, C::RaiseHand {});

    assert_eq!(state_count(&out), 0);
    assert_eq!(sim.meeting.state(false).version, version);
    let view = sim.view(ann.conn);
    assert_eq!(queue(&view), [ann.id.as_str(), ben.id.as_str()], "Ann keeps her first place, once");
    assert_eq!(view.queue[0].raised_at_ms, START_MS);
}

#[test]
fn the_queue_is_ordered_by_raise_time_never_by_name_and_is_identical_for_every_connection() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    let zoe = sim.join(Role::Member, "Zoe");

    sim.ok(zoe.conn, C::RaiseHand {});
    sim.advance(500);
    sim.ok(ann.conn, C::RaiseHand {});
    sim.ok(ben.conn, C::RaiseHand {}); // the same millisecond as Ann: arrival of the hand decides

    let expected = [zoe.id.as_str(), ann.id.as_str(), ben.id.as_str()];
    let leader_view = sim.view(lena.conn);
    assert_eq!(queue(&leader_view), expected);
    for person in [&ann, &ben, &zoe] {
        let view = sim.view(person.conn);
        assert_eq!(view.queue, leader_view.queue, "everyone sees the same queue");
        assert_eq!(view.version, leader_view.version);
    }
    assert_eq!(leader_view.queue[0].raised_at_ms, START_MS);
    assert_eq!(leader_view.queue[1].raised_at_ms, START_MS + 500);
    assert_eq!(position(&sim.view(ben.conn), &ben), Some(3), "Ben sees his own position");
}

#[test]
fn next_speaker_grants_the_head_of_the_queue_and_lowers_that_hand() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(ann.conn, C::RaiseHand {});
    sim.advance(1_000);
    sim.ok(ben.conn, C::RaiseHand {});

    sim.ok(lena.conn, C::NextSpeaker { if_version: None });

    let view = sim.view(ben.conn);
    let floor = view.floor.as_ref().expect("someone speaks");
    assert_eq!(floor.member, ann.id);
    assert_eq!(floor.since_ms, sim.now);
    assert_eq!(queue(&view), [ben.id.as_str()], "Ann's hand is lowered, Ben moves up");

    sim.ok(lena.conn, C::NextSpeaker { if_version: None });
    let view = sim.view(ann.conn);
    assert_eq!(floor_holder(&view), Some(ben.id.as_str()), "the next speaker replaces the current one");
    assert!(view.queue.is_empty());
}

#[test]
fn next_speaker_with_an_empty_queue_gets_queue_empty() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let _ann = sim.join(Role::Member, "Ann");

    sim.assert_refused(lena.conn, C::NextSpeaker { if_version: None }, (ErrorCode::QueueEmpty, Reason::QueueEmpty));
}

#[test]
fn a_leader_can_grant_the_floor_to_anyone_and_granting_lowers_their_hand() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    let cleo = sim.join(Role::Member, "Cleo");

    sim.ok(lena.conn, grant(&cleo));
    assert_eq!(floor_holder(&sim.view(cleo.conn)), Some(cleo.id.as_str()), "no raised hand needed");

    sim.ok(ann.conn, C::RaiseHand {});
    sim.advance(1_000);
    sim.ok(ben.conn, C::RaiseHand {});
    sim.ok(lena.conn, grant(&ben));

    let view = sim.view(ann.conn);
    assert_eq!(floor_holder(&view), Some(ben.id.as_str()), "the second in the queue may be picked");
    assert_eq!(queue(&view), [ann.id.as_str()], "Ben's hand is lowered");

    sim.ok(lena.conn, grant(&lena));
    assert_eq!(floor_holder(&sim.view(ann.conn)), Some(lena.id.as_str()), "a leader may speak too");
    sim.assert_refused(
        lena.conn,
        C::GrantFloor { member: "nobody".into(), if_version: None },
        (ErrorCode::UnknownMember, Reason::UnknownMember),
    );
}

#[test]
fn a_leader_revokes_the_floor_and_revoking_a_free_floor_is_a_conflict() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    sim.ok(lena.conn, grant(&ann));

    sim.ok(lena.conn, C::RevokeFloor {});

    assert_eq!(sim.view(ann.conn).floor, None);
    sim.assert_refused(lena.conn, C::RevokeFloor {}, (ErrorCode::Conflict, Reason::FloorFree));
}

#[test]
fn the_floor_holder_can_yield() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    sim.ok(lena.conn, grant(&ann));

    sim.ok(ann.conn, C::YieldFloor {});

    assert_eq!(sim.view(lena.conn).floor, None);
}

#[test]
fn yielding_a_floor_one_does_not_hold_gets_conflict() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");

    sim.assert_refused(ann.conn, C::YieldFloor {}, (ErrorCode::Conflict, Reason::NotFloorHolder));
    sim.ok(lena.conn, grant(&ben));
    sim.assert_refused(ann.conn, C::YieldFloor {}, (ErrorCode::Conflict, Reason::NotFloorHolder));
    assert_eq!(floor_holder(&sim.meeting.state(false)), Some(ben.id.as_str()));
}

#[test]
fn a_member_lowers_their_own_hand_and_a_leader_lowers_one_hand_or_all_hands() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    let cleo = sim.join(Role::Member, "Cleo");
    for person in [&ann, &ben, &cleo] {
        sim.ok(person.conn, C::RaiseHand {});
        sim.advance(100);
    }

    sim.ok(ann.conn, C::LowerHand { member: None });
    assert_eq!(queue(&sim.view(lena.conn)), [ben.id.as_str(), cleo.id.as_str()]);

    sim.ok(lena.conn, C::LowerHand { member: Some(cleo.id.clone()) });
    assert_eq!(queue(&sim.view(ann.conn)), [ben.id.as_str()]);

    sim.ok(ann.conn, C::RaiseHand {});
    sim.ok(lena.conn, C::LowerAllHands {});
    assert!(sim.view(ben.conn).queue.is_empty());
}

#[test]
fn when_the_speaking_limit_passes_the_room_gets_exactly_one_time_up_and_the_speaker_keeps_the_floor() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(lena.conn, C::SetSpeakingLimit { seconds: Some(60) });
    sim.ok(lena.conn, grant(&ann));
    let view = sim.view(ben.conn);
    assert_eq!(view.speaking_limit_secs, Some(60));
    assert_eq!(view.floor.unwrap().limit_secs, Some(60), "the turn carries the limit");
    let before = sim.meeting.state(false);

    assert!(time_ups(&sim.advance(59_999)).is_empty(), "not yet");
    let out = sim.advance(1);
    let events = time_ups(&out);
    assert_eq!(events.len(), 1);
    let (audience, speaker, limit) = events[0];
    assert_eq!((speaker, limit), (ann.id.as_str(), 60));
    for person in [&lena, &ann, &ben] {
        assert!(audience.contains(person.conn), "the whole room is told");
    }

    assert!(time_ups(&sim.advance(1_000)).is_empty(), "told once");
    assert!(time_ups(&sim.advance(60_000)).is_empty(), "still once");
    assert_eq!(time_ups(&sim.log).len(), 1);
    // The cluster records that the event went out (so it fires once across nodes), which
    // bumps the version; nothing a member sees changes.
    let after = sim.meeting.state(false);
    assert_eq!(RoomState { version: before.version, ..after }, before, "nothing visible changes");
    assert_eq!(floor_holder(&sim.meeting.state(false)), Some(ann.id.as_str()), "Ann is not cut off");
}

#[test]
fn a_new_turn_gets_its_own_time_up() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(lena.conn, C::SetSpeakingLimit { seconds: Some(30) });
    sim.ok(lena.conn, grant(&ann));
    sim.advance(30_000);

    sim.ok(lena.conn, grant(&ben));
    assert!(time_ups(&sim.advance(29_000)).is_empty());
    let events = sim.advance(1_000);

    assert_eq!(time_ups(&events).len(), 1);
    assert_eq!(time_ups(&events)[0].1, ben.id);
}

#[test]
fn clearing_the_speaking_limit_means_nobody_is_told_time_is_up() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    sim.ok(lena.conn, C::SetSpeakingLimit { seconds: Some(60) });
    sim.ok(lena.conn, grant(&ann));
    sim.advance(30_000);

    sim.ok(lena.conn, C::SetSpeakingLimit { seconds: None });

    let view = sim.view(ann.conn);
    assert_eq!(view.speaking_limit_secs, None);
    assert_eq!(view.floor.unwrap().limit_secs, None, "the running turn loses its limit too");
    assert!(time_ups(&sim.advance(120_000)).is_empty());
    sim.ok(lena.conn, grant(&lena));
    assert!(time_ups(&sim.advance(120_000)).is_empty(), "later turns have no limit either");
    assert_eq!(time_ups(&sim.log).len(), 0);
}

#[test]
fn fair_order_puts_those_who_have_not_spoken_in_this_phase_first() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    let cleo = sim.join(Role::Member, "Cleo");
    sim.ok(lena.conn, grant(&ann));
    sim.ok(ann.conn, C::YieldFloor {});
    for person in [&ann, &ben, &cleo] {
        sim.ok(person.conn, C::RaiseHand {});
        sim.advance(1_000);
    }
    assert_eq!(queue(&sim.view(lena.conn)), [ann.id.as_str(), ben.id.as_str(), cleo.id.as_str()]);

    sim.ok(lena.conn, C::SetFairOrder { enabled: true });

    let fair = [ben.id.as_str(), cleo.id.as_str(), ann.id.as_str()];
    assert!(sim.view(ann.conn).fair_order);
    assert_eq!(queue(&sim.view(lena.conn)), fair, "Ann has spoken, so she goes last");
    assert_eq!(queue(&sim.view(ann.conn)), fair, "identical for members");
    sim.ok(lena.conn, C::NextSpeaker { if_version: None });
    assert_eq!(floor_holder(&sim.view(ann.conn)), Some(ben.id.as_str()), "next follows the fair order");

    sim.ok(lena.conn, C::SetFairOrder { enabled: false });
    assert_eq!(queue(&sim.view(ann.conn)), [ann.id.as_str(), cleo.id.as_str()]);
}

#[test]
fn a_phase_change_resets_who_has_spoken_for_fair_order() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    // Hands carry over from phase to phase here, so the new phase's order shows.
    sim.ok(lena.conn, C::SetPhaseReset { enabled: false });
    sim.ok(lena.conn, C::SetFairOrder { enabled: true });
    sim.ok(lena.conn, grant(&ann));
    sim.ok(lena.conn, C::RevokeFloor {});
    sim.ok(ann.conn, C::RaiseHand {});
    sim.advance(1_000);
    sim.ok(ben.conn, C::RaiseHand {});
    assert_eq!(queue(&sim.view(ben.conn)), [ben.id.as_str(), ann.id.as_str()]);

    sim.ok(lena.conn, set_phase(Phase::Questions));

    assert_eq!(queue(&sim.view(ben.conn)), [ann.id.as_str(), ben.id.as_str()], "a new phase, a clean slate");
}

#[test]
fn leaders_see_turns_and_speaking_time_and_members_do_not() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(lena.conn, grant(&ann));
    sim.advance(30_000);
    sim.ok(lena.conn, grant(&ben));
    sim.advance(10_000);
    sim.ok(lena.conn, grant(&ann));
    sim.advance(5_000);
    sim.ok(ann.conn, C::YieldFloor {});

    let leader_view = sim.view(lena.conn);
    let participation = leader_view.participation.expect("leaders see participation");
    let of = |p: &Person| participation.iter().find(|x| x.member == p.id).cloned().unwrap();
    assert_eq!((of(&ann).turns, of(&ann).speaking_ms), (2, 35_000));
    assert_eq!((of(&ben).turns, of(&ben).speaking_ms), (1, 10_000));
    assert_eq!((of(&lena).turns, of(&lena).speaking_ms), (0, 0));
    assert_eq!(participation.len(), 3, "every admitted member is listed");

    let member_view = sim.view(ann.conn);
    assert_eq!(member_view.participation, None);
    assert_eq!(member_view.waiting, None);
    assert_eq!(member_view.version, leader_view.version);
}

// ---------------------------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------------------------

#[test]
fn a_balint_room_moves_through_its_six_phases_in_any_order_and_refuses_discussion() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let view = sim.view(lena.conn);
    assert_eq!(view.template, Template::Balint);
    assert_eq!(view.phase.name, Phase::Gathering, "a balint room starts gathering");

    for phase in
        [Phase::Closing, Phase::Presentation, Phase::Questions, Phase::Reflection, Phase::Response, Phase::Gathering]
    {
        sim.ok(lena.conn, set_phase(phase));
        assert_eq!(sim.view(lena.conn).phase.name, phase);
    }

    sim.assert_refused(lena.conn, set_phase(Phase::Discussion), (ErrorCode::InvalidPhase, Reason::PhaseNotInTemplate));
}

#[test]
fn an_open_room_has_only_the_discussion_phase() {
    let mut sim = Sim::open();
    let lena = sim.join(Role::Leader, "Lena");
    let view = sim.view(lena.conn);
    assert_eq!(view.template, Template::Open);
    assert_eq!(view.phase.name, Phase::Discussion);
    assert_eq!(view.phase.duration_secs, Phase::Discussion.suggested_secs());

    for phase in
        [Phase::Gathering, Phase::Presentation, Phase::Questions, Phase::Reflection, Phase::Response, Phase::Closing]
    {
        sim.assert_refused(lena.conn, set_phase(phase), (ErrorCode::InvalidPhase, Reason::PhaseNotInTemplate));
    }
    sim.ok(lena.conn, set_phase(Phase::Discussion));
}

#[test]
fn a_phase_carries_its_start_time_and_its_suggested_or_overridden_duration() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    assert_eq!(
        sim.view(ann.conn).phase,
        PhaseState { name: Phase::Gathering, started_at_ms: START_MS, duration_secs: 5 * 60 }
    );

    sim.advance(7 * 60_000);
    sim.ok(lena.conn, set_phase(Phase::Questions));
    assert_eq!(
        sim.view(ann.conn).phase,
        PhaseState { name: Phase::Questions, started_at_ms: START_MS + 7 * 60_000, duration_secs: 10 * 60 }
    );

    sim.advance(60_000);
    sim.ok(lena.conn, C::SetPhase { phase: Phase::Reflection, duration_secs: Some(40 * 60) });
    assert_eq!(
        sim.view(ann.conn).phase,
        PhaseState { name: Phase::Reflection, started_at_ms: START_MS + 8 * 60_000, duration_secs: 40 * 60 }
    );
    sim.assert_refused(
        lena.conn,
        C::SetPhase { phase: Phase::Closing, duration_secs: Some(0) },
        (ErrorCode::BadMessage, Reason::PhaseDuration),
    );
}

/// A balint room with Lena leading, Pia picked as presenter, and Ann and Ben in the group.
fn balint_with_presenter() -> (Sim, Person, Person, Person, Person) {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let pia = sim.join(Role::Member, "Pia");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(lena.conn, C::PickPresenter { member: Some(pia.id.clone()) });
    assert_eq!(sim.view(ann.conn).presenter.as_deref(), Some(pia.id.as_str()));
    (sim, lena, pia, ann, ben)
}

#[test]
fn in_reflection_the_presenter_is_outside_the_circle_with_hand_lowered_and_floor_lost() {
    let (mut sim, lena, pia, ann, _ben) = balint_with_presenter();
    // Without the phase reset, which would lower every hand: only Pia's goes.
    sim.ok(lena.conn, C::SetPhaseReset { enabled: false });
    sim.ok(lena.conn, set_phase(Phase::Questions));
    sim.ok(lena.conn, grant(&pia));
    sim.ok(pia.conn, C::RaiseHand {});
    sim.ok(ann.conn, C::RaiseHand {});
    assert_eq!(queue(&sim.view(ann.conn)), [pia.id.as_str(), ann.id.as_str()]);

    sim.ok(lena.conn, set_phase(Phase::Reflection));

    let view = sim.view(ann.conn);
    assert_eq!(status(&view, &pia), Status::OutsideCircle);
    assert_eq!(view.floor, None, "Pia loses the floor");
    assert_eq!(queue(&view), [ann.id.as_str()], "Pia's hand is lowered");
    assert_eq!(view.presenter.as_deref(), Some(pia.id.as_str()), "she is still the presenter");
    assert!(member(&view, &pia).is_some(), "she stays in the room");
}

#[test]
fn the_presenter_cannot_take_the_floor_during_reflection() {
    let (mut sim, lena, pia, ann, _ben) = balint_with_presenter();
    sim.ok(lena.conn, set_phase(Phase::Reflection));

    sim.assert_refused(lena.conn, grant(&pia), (ErrorCode::NotEligible, Reason::PresenterInReflection));

    sim.ok(lena.conn, grant(&ann));
    assert_eq!(floor_holder(&sim.view(pia.conn)), Some(ann.id.as_str()), "the group speaks");
}

#[test]
fn the_presenter_cannot_raise_a_hand_during_reflection() {
    let (mut sim, lena, pia, _ann, _ben) = balint_with_presenter();
    sim.ok(lena.conn, set_phase(Phase::Reflection));

    sim.assert_refused(pia.conn, C::RaiseHand {}, (ErrorCode::NotEligible, Reason::PresenterInReflection));
}

#[test]
fn the_presenter_cannot_write_on_the_board_during_reflection() {
    let (mut sim, lena, pia, ann, _ben) = balint_with_presenter();
    assert!(sim.meeting.can_write(pia.conn).is_ok());

    sim.ok(lena.conn, set_phase(Phase::Reflection));
    assert_eq!(sim.meeting.can_write(pia.conn).map_err(|r| r.reason), Err(Reason::PresenterInReflection));
    assert!(sim.meeting.can_read(pia.conn), "she still sees the board");
    assert!(sim.meeting.can_write(ann.conn).is_ok());

    sim.ok(lena.conn, set_phase(Phase::Response));
    assert!(sim.meeting.can_write(pia.conn).is_ok());
}

#[test]
fn picking_the_presenter_during_reflection_pushes_them_back_at_once() {
    let (mut sim, lena, _pia, ann, _ben) = balint_with_presenter();
    sim.ok(lena.conn, set_phase(Phase::Reflection));
    sim.ok(lena.conn, grant(&ann));

    sim.ok(lena.conn, C::PickPresenter { member: Some(ann.id.clone()) });

    let view = sim.view(ann.conn);
    assert_eq!(status(&view, &ann), Status::OutsideCircle);
    assert_eq!(view.floor, None);
}

#[test]
fn entering_presentation_gives_the_presenter_the_floor_and_nobody_else_can_be_granted_it() {
    let (mut sim, lena, pia, ann, ben) = balint_with_presenter();
    sim.ok(lena.conn, grant(&ann));
    sim.ok(ben.conn, C::RaiseHand {});

    sim.ok(lena.conn, set_phase(Phase::Presentation));

    let view = sim.view(ann.conn);
    let floor = view.floor.expect("the presenter speaks");
    assert_eq!(floor.member, pia.id, "Ann's turn ends, Pia's begins");
    assert_eq!(floor.since_ms, sim.now);
    sim.assert_refused(lena.conn, grant(&ann), (ErrorCode::NotEligible, Reason::OnlyPresenterDuringPresentation));
    sim.assert_refused(lena.conn, grant(&lena), (ErrorCode::NotEligible, Reason::OnlyPresenterDuringPresentation));
    sim.assert_refused(lena.conn, C::NextSpeaker { if_version: None }, (ErrorCode::QueueEmpty, Reason::QueueEmpty));
    sim.ok(lena.conn, grant(&pia));
    assert_eq!(floor_holder(&sim.view(ann.conn)), Some(pia.id.as_str()));
}

#[test]
fn entering_response_gives_the_presenter_the_floor_first() {
    let (mut sim, lena, pia, ann, _ben) = balint_with_presenter();
    sim.ok(lena.conn, set_phase(Phase::Reflection));
    sim.ok(lena.conn, grant(&ann));

    sim.ok(lena.conn, set_phase(Phase::Response));

    let view = sim.view(ann.conn);
    assert_eq!(floor_holder(&view), Some(pia.id.as_str()));
    assert_eq!(status(&view, &pia), Status::Here, "Pia is back in the circle");
}

// ---------------------------------------------------------------------------------------------
// Lobby
// ---------------------------------------------------------------------------------------------

#[test]
fn with_the_lobby_on_a_newcomer_waits_receives_nothing_of_the_board_and_only_leaders_see_them() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let conn = sim.connect(Role::Member, "Nina");

    let out = sim.hello(conn, None);

    let nina = Person { conn, id: introduced_id(&out, conn).unwrap() };
    match messages_to(&out, conn).as_slice() {
        [ServerMessage::Waiting { member_id, resume_token }] => {
            assert_eq!(member_id, &nina.id);
            assert!(!resume_token.is_empty());
        }
        other => panic!("expected only `waiting`, got {other:?}"),
    }
    assert!(!out.iter().any(|o| matches!(o, Output::Greet { .. })), "no board sync");
    assert!(!sim.meeting.can_read(nina.conn));
    assert_eq!(sim.meeting.can_write(nina.conn).map_err(|r| r.reason), Err(Reason::InLobby));
    assert!(!sim.meeting.board_audience().contains(nina.conn));

    let leader_view = sim.view(lena.conn);
    assert!(leader_view.lobby);
    assert_eq!(
        leader_view.waiting,
        Some(vec![Waiting { id: nina.id.clone(), name: "Nina".into(), sealed_name: None }])
    );
    assert!(member(&leader_view, &nina).is_none(), "waiting is not being in the room");
    assert!(!sim.meeting.state(false).members.iter().any(|m| m.id == nina.id));
}

#[test]
fn a_stock_yjs_client_waits_in_the_lobby_too() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let dora = sim.connect(Role::Member, "Dora");

    let out = sim.binary_frame(dora);

    assert!(!out.iter().any(|o| matches!(o, Output::Greet { .. })));
    assert!(!sim.meeting.can_read(dora));
    let waiting = sim.view(lena.conn).waiting.unwrap();
    assert_eq!(waiting[0].name, "Dora");

    let out = sim.ok(lena.conn, C::Admit { member: waiting[0].id.clone() });
    assert!(out.contains(&Output::Greet { conn: dora, full: true }));
    assert!(messages_to(&out, dora).is_empty(), "still no text frames for a stock client");
}

#[test]
fn leaders_skip_the_lobby() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let out = sim.log.clone();

    assert!(matches!(messages_to(&out, lena.conn).as_slice(), [ServerMessage::Welcome { .. }, ..]));
    assert!(out.contains(&Output::Greet { conn: lena.conn, full: false }));
    assert!(sim.meeting.can_read(lena.conn));
    let kim = sim.join(Role::Leader, "Kim");
    assert!(member(&sim.view(lena.conn), &kim).is_some());
}

#[test]
fn admitting_a_waiting_member_sends_welcome_and_the_whole_board() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let nina = sim.join(Role::Member, "Nina");

    let out = sim.ok(lena.conn, C::Admit { member: nina.id.clone() });

    match messages_to(&out, nina.conn).as_slice() {
        [ServerMessage::Welcome { member_id, role, .. }, ..] => {
            assert_eq!(member_id, &nina.id);
            assert_eq!(*role, Role::Member);
        }
        other => panic!("expected welcome first, got {other:?}"),
    }
    assert!(out.contains(&Output::Greet { conn: nina.conn, full: true }));
    assert!(sim.meeting.can_read(nina.conn));
    let leader_view = sim.view(lena.conn);
    assert!(member(&leader_view, &nina).is_some());
    assert_eq!(leader_view.waiting, Some(vec![]));
    sim.ok(nina.conn, C::RaiseHand {});
    sim.assert_refused(lena.conn, C::Admit { member: nina.id.clone() }, (ErrorCode::UnknownMember, Reason::NotWaiting));
}

#[test]
fn declining_a_waiting_member_closes_their_connection_as_kicked() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let nina = sim.join(Role::Member, "Nina");
    let token = sim.token(nina.conn);

    let out = sim.ok(lena.conn, C::Decline { member: nina.id.clone() });

    assert!(closed_as_kicked(&out, nina.conn), "Nina is closed as kicked: {out:?}");
    assert!(messages_to(&out, nina.conn).is_empty(), "no state for the declined");
    assert!(!sim.meeting.is_connected(nina.conn));
    assert_eq!(sim.view(lena.conn).waiting, Some(vec![]));
    let again = sim.connect(Role::Member, "Nina");
    let out = sim.hello(again, Some(&token));
    assert!(closed_as_kicked(&out, again), "the declined token is revoked: {out:?}");
}

#[test]
fn turning_the_lobby_off_admits_everyone_waiting() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let nina = sim.join(Role::Member, "Nina");
    let omar = sim.join(Role::Member, "Omar");

    let out = sim.ok(lena.conn, C::SetLobby { enabled: false });

    for person in [&nina, &omar] {
        let first = messages_to(&out, person.conn).first().copied();
        assert!(matches!(first, Some(ServerMessage::Welcome { member_id, .. }) if *member_id == person.id));
        assert!(out.contains(&Output::Greet { conn: person.conn, full: true }));
        assert!(sim.meeting.can_read(person.conn));
    }
    let view = sim.view(lena.conn);
    assert!(!view.lobby);
    assert_eq!(view.waiting, Some(vec![]));
    assert_eq!(view.members.len(), 3);
    let paul = sim.join(Role::Member, "Paul");
    assert!(member(&sim.view(lena.conn), &paul).is_some(), "newcomers walk straight in");
}

#[test]
fn commands_from_a_waiting_member_get_not_in_room() {
    let mut sim = Sim::with_lobby();
    let _lena = sim.join(Role::Leader, "Lena");
    let nina = sim.join(Role::Member, "Nina");

    for command in [C::RaiseHand {}, C::SetAway { away: true }, C::YieldFloor {}, C::EndMeeting {}] {
        sim.assert_refused(nina.conn, command, (ErrorCode::NotInRoom, Reason::InLobby));
    }
}

#[test]
fn a_waiting_member_who_reconnects_keeps_their_place_in_the_lobby() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let nina = sim.join(Role::Member, "Nina");
    let token = sim.token(nina.conn);
    sim.drop_conn(nina.conn);

    let again = sim.resume(Role::Member, "Nina", &token);

    assert_eq!(again.id, nina.id);
    assert!(matches!(messages_to(&sim.log, again.conn).as_slice(), [ServerMessage::Waiting { .. }]));
    assert_eq!(sim.view(lena.conn).waiting.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Board lock
// ---------------------------------------------------------------------------------------------

#[test]
fn a_locked_board_refuses_members_writes_but_not_leaders() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let kim = sim.join(Role::Member, "Kim");
    let ann = sim.join(Role::Member, "Ann");
    sim.ok(lena.conn, C::SetRole { member: kim.id.clone(), role: Role::Leader });

    sim.ok(lena.conn, C::LockBoard { locked: true });

    assert!(sim.view(ann.conn).board_locked);
    assert_eq!(sim.meeting.can_write(ann.conn).map_err(|r| r.reason), Err(Reason::BoardLocked));
    assert!(sim.meeting.can_read(ann.conn));
    assert!(sim.meeting.can_write(lena.conn).is_ok());
    assert!(sim.meeting.can_write(kim.conn).is_ok(), "co-leaders write too");

    sim.ok(lena.conn, C::LockBoard { locked: false });
    assert!(!sim.view(ann.conn).board_locked);
    assert!(sim.meeting.can_write(ann.conn).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Kick and end
// ---------------------------------------------------------------------------------------------

#[test]
fn a_kicked_member_is_closed_on_every_tab_and_their_resume_token_no_longer_resumes() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let token = sim.token(ann.conn);
    let second_tab = sim.resume(Role::Member, "Ann", &token);
    sim.ok(ann.conn, C::RaiseHand {});

    let out = sim.ok(lena.conn, C::Kick { member: ann.id.clone() });

    for conn in [ann.conn, second_tab.conn] {
        assert!(closed_as_kicked(&out, conn), "{conn} is closed as kicked: {out:?}");
        assert!(!sim.meeting.is_connected(conn));
        assert!(messages_to(&out, conn).is_empty());
    }
    let view = sim.view(lena.conn);
    assert!(member(&view, &ann).is_none());
    assert!(view.queue.is_empty(), "her hand goes with her");

    // Her resume token is revoked: reopening the link with it is refused, not a new member.
    let again = sim.connect(Role::Member, "Ann");
    let out = sim.hello(again, Some(&token));
    assert!(closed_as_kicked(&out, again), "a revoked resume token is closed with 4403: {out:?}");
    assert!(introduced_id(&out, again).is_none());
    assert_eq!(sim.meeting.state(true).members.len(), 1, "nobody joined");
    sim.assert_refused(lena.conn, C::Kick { member: lena.id.clone() }, (ErrorCode::Forbidden, Reason::RemoveSelf));
}

#[test]
fn a_declined_newcomers_resume_token_is_revoked_too() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let token = sim.token(ann.conn);
    sim.ok(lena.conn, C::Decline { member: ann.id.clone() });

    let again = sim.connect(Role::Member, "Ann");
    let out = sim.hello(again, Some(&token));
    assert!(closed_as_kicked(&out, again), "{out:?}");
    assert!(sim.meeting.state(true).waiting.unwrap().is_empty(), "nobody waits in the lobby");
    // Without the token (a private window), the link still works: renewing it is what
    // shuts a removed person out.
    let fresh = sim.join(Role::Member, "Ann");
    assert_ne!(fresh.id, ann.id);
}

#[test]
fn the_revoked_list_keeps_only_digests_and_stays_bounded() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let mut tokens = Vec::new();
    for i in 0..limits::MAX_REVOKED_RESUMES + 3 {
        let ann = sim.join(Role::Member, &format!("Ann {i}"));
        tokens.push(sim.token(ann.conn));
        sim.ok(lena.conn, C::Kick { member: ann.id.clone() });
    }
    let shared = sim.meeting.shared();
    assert_eq!(shared.revoked.len(), limits::MAX_REVOKED_RESUMES);
    let record = String::from_utf8(record::encode(shared).unwrap().to_vec()).unwrap();
    assert!(tokens.iter().all(|t| !record.contains(t.as_str())), "no resume token is stored in clear");
    // The newest revocations hold; the oldest fell off the list.
    let newest = sim.connect(Role::Member, "Ann");
    let out = sim.hello(newest, Some(tokens.last().unwrap()));
    assert!(closed_as_kicked(&out, newest));
    let oldest = sim.resume(Role::Member, "Ann", &tokens[0]);
    assert!(sim.meeting.shared().members.contains_key(&oldest.id));
}

#[test]
fn the_removed_list_stays_bounded_and_keeps_the_newest() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let mut removed = Vec::new();
    for i in 0..limits::MAX_REMOVALS + 3 {
        let ann = sim.join(Role::Member, &format!("Ann {i}"));
        sim.ok(lena.conn, C::Kick { member: ann.id.clone() });
        removed.push(ann.id);
    }
    let size = record::encode(sim.meeting.shared()).unwrap().len();
    let shared = sim.meeting.shared();
    assert_eq!(shared.removed.len(), limits::MAX_REMOVALS);
    let kept: Vec<&str> = shared.removed.iter().map(|(id, _)| id).collect();
    assert_eq!(kept, removed[3..].iter().map(String::as_str).collect::<Vec<_>>(), "the newest, oldest first");
    // More removals no longer grow the record.
    for i in 0..10 {
        let ben = sim.join(Role::Member, &format!("Ben {i}"));
        sim.ok(lena.conn, C::Kick { member: ben.id });
    }
    assert!(record::encode(sim.meeting.shared()).unwrap().len() <= size + 64, "the record stays the same size");
}

// ---------------------------------------------------------------------------------------------
// Link generations
// ---------------------------------------------------------------------------------------------

/// Renews the room's links as the driver does on `POST /api/rooms/{room}/links {"renew":true}`.
fn renew_links(sim: &mut Sim) -> u64 {
    let plan = sim.meeting.plan_renew_links();
    let out = sim.meeting.apply_locally(plan);
    sim.record(out);
    sim.meeting.shared().link_generation()
}

/// Connects with a link of `role` and `generation`.
fn connect_with_link(sim: &mut Sim, role: Role, generation: u64, name: &str) -> ConnId {
    sim.next_conn += 1;
    let conn = ConnId(sim.next_conn);
    sim.meeting.connect_link(conn, role, generation, name.to_owned());
    conn
}

fn closed_as_renewed(out: &[Output], conn: ConnId) -> bool {
    out.iter().any(|o| matches!(o, Output::Close { conn: c, code: close::LINK_RENEWED, .. } if *c == conn))
}

#[test]
fn renewed_links_refuse_older_invite_and_observer_links_to_newcomers_only() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ann_token = sim.token(ann.conn);
    let obi = sim.join(Role::Observer, "Obi");
    assert_eq!(renew_links(&mut sim), 1);

    // Members present carry on, and a member who drops and resumes within the grace period
    // comes back with the old link.
    sim.ok(ann.conn, C::RaiseHand {});
    sim.ok(obi.conn, C::SetAway { away: true });
    sim.drop_conn(ann.conn);
    sim.advance(GRACE_MS / 2);
    let back = connect_with_link(&mut sim, Role::Member, 0, "Ann");
    let out = sim.hello(back, Some(&ann_token));
    assert_eq!(introduced_id(&out, back), Some(ann.id.clone()), "resumed with the old link: {out:?}");
    assert_eq!(position(&sim.view(lena.conn), &ann), Some(1), "her hand is still up");

    // Newcomers with the old invite or observer link are refused, with hello or without.
    for role in [Role::Member, Role::Observer] {
        let conn = connect_with_link(&mut sim, role, 0, "Eve");
        let out = sim.hello(conn, None);
        assert!(closed_as_renewed(&out, conn), "{role:?}: {out:?}");
        assert!(introduced_id(&out, conn).is_none());
        let stock = connect_with_link(&mut sim, role, 0, "Eve");
        let out = sim.binary_frame(stock);
        assert!(closed_as_renewed(&out, stock), "a stock client at its first frame: {out:?}");
        // An unknown (or lapsed) resume token does not make an old link a resume.
        let guess = connect_with_link(&mut sim, role, 0, "Eve");
        let out = sim.hello(guess, Some("made-up-token"));
        assert!(closed_as_renewed(&out, guess), "{out:?}");
    }
    assert_eq!(sim.meeting.state(true).members.len(), 3, "nobody joined on an old link");

    // The renewed links let newcomers in; the leader link of any generation too.
    let ben = connect_with_link(&mut sim, Role::Member, 1, "Ben");
    assert!(introduced_id(&sim.hello(ben, None), ben).is_some());
    let co = connect_with_link(&mut sim, Role::Leader, 0, "Cora");
    assert!(introduced_id(&sim.hello(co, None), co).is_some(), "leader links are never refused for their generation");
    assert_eq!(sim.meeting.state(true).members.len(), 5);
}

#[test]
fn a_second_renewal_refuses_the_first_renewals_links() {
    let mut sim = Sim::balint();
    let _lena = sim.join(Role::Leader, "Lena");
    renew_links(&mut sim);
    assert_eq!(renew_links(&mut sim), 2);
    let first = connect_with_link(&mut sim, Role::Member, 1, "Ann");
    assert!(closed_as_renewed(&sim.hello(first, None), first));
    let second = connect_with_link(&mut sim, Role::Member, 2, "Ann");
    assert!(introduced_id(&sim.hello(second, None), second).is_some());
}

#[test]
fn the_link_generation_is_part_of_the_shared_record() {
    let mut sim = Sim::balint();
    renew_links(&mut sim);
    let record = record::encode(sim.meeting.shared()).unwrap();
    let other_node = Meeting::from_shared(record::decode(&record).unwrap(), sim.meeting.version());
    assert_eq!(other_node.shared().link_generation(), 1);
    // A record written before generations existed reads as generation 0.
    let mut old: serde_json::Value = serde_json::from_slice(&record).unwrap();
    for field in ["link_generation", "revoked", "lapsed"] {
        old.as_object_mut().unwrap().remove(field);
    }
    let old = record::decode(&serde_json::to_vec(&old).unwrap()).unwrap();
    assert_eq!(old.link_generation(), 0);
}

// ---------------------------------------------------------------------------------------------
// Returning after the grace period
// ---------------------------------------------------------------------------------------------

/// The `released` of the `welcome` sent to `conn`.
fn released_in_welcome(out: &[Output], conn: ConnId) -> Option<Option<Released>> {
    out.iter().find_map(|o| match o {
        Output::Send(audience, ServerMessage::Welcome { released, .. }) if audience.contains(conn) => {
            Some(released.clone())
        }
        _ => None,
    })
}

#[test]
fn a_member_back_after_the_grace_period_is_told_what_was_released() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    let (ann_token, ben_token) = (sim.token(ann.conn), sim.token(ben.conn));
    sim.ok(lena.conn, C::PickPresenter { member: Some(ann.id.clone()) });
    sim.ok(lena.conn, grant(&ann));
    sim.ok(lena.conn, C::SetRole { member: ben.id.clone(), role: Role::Leader });
    sim.ok(ben.conn, C::RaiseHand {});
    sim.drop_conn(ann.conn);
    sim.drop_conn(ben.conn);
    sim.advance(GRACE_MS);

    let ann_back = sim.connect(Role::Member, "Ann");
    let out = sim.hello(ann_back, Some(&ann_token));
    let released = released_in_welcome(&out, ann_back).expect("a welcome");
    let grace_secs = Some(u32::try_from(GRACE_MS / 1000).unwrap());
    assert_eq!(released, Some(Released { hand: false, floor: true, presenter: true, role: None, grace_secs }));
    assert_ne!(introduced_id(&out, ann_back), Some(ann.id.clone()), "a new membership");

    let ben_back = sim.connect(Role::Member, "Ben");
    let out = sim.hello(ben_back, Some(&ben_token));
    let released = released_in_welcome(&out, ben_back).expect("a welcome");
    assert_eq!(
        released,
        Some(Released { hand: true, floor: false, presenter: false, role: Some(Role::Leader), grace_secs }),
        "the co-leader role is told, since the member link gives another"
    );
    assert_eq!(sim.view(ben_back).members.iter().find(|m| m.name == "Ben").unwrap().role, Role::Member);
}

#[test]
fn released_is_told_once_and_only_to_a_lapsed_membership() {
    let mut sim = Sim::balint();
    let _lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let token = sim.token(ann.conn);
    // Resuming within the grace period releases nothing.
    sim.drop_conn(ann.conn);
    let back = sim.connect(Role::Member, "Ann");
    let out = sim.hello(back, Some(&token));
    assert_eq!(released_in_welcome(&out, back), Some(None));
    // A membership that lapsed holding nothing is still told it lapsed.
    sim.drop_conn(back);
    sim.advance(GRACE_MS);
    let late = sim.connect(Role::Member, "Ann");
    let out = sim.hello(late, Some(&token));
    let grace_secs = Some(u32::try_from(GRACE_MS / 1000).unwrap());
    assert_eq!(released_in_welcome(&out, late), Some(Some(Released { grace_secs, ..Released::default() })));
    // The same old token again: nothing more to tell.
    let again = sim.connect(Role::Member, "Ann");
    let out = sim.hello(again, Some(&token));
    assert_eq!(released_in_welcome(&out, again), Some(None));
    // A brand-new member is told nothing.
    let newcomer = sim.connect(Role::Member, "Ben");
    assert_eq!(released_in_welcome(&sim.hello(newcomer, None), newcomer), Some(None));
}

#[test]
fn released_waits_for_admission_when_the_lobby_holds_the_returning_member() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    sim.ok(lena.conn, C::Admit { member: ann.id.clone() });
    let token = sim.token(ann.conn);
    sim.ok(ann.conn, C::RaiseHand {});
    sim.drop_conn(ann.conn);
    sim.advance(GRACE_MS);

    let back = sim.connect(Role::Member, "Ann");
    let waiting = sim.hello(back, Some(&token));
    let id = introduced_id(&waiting, back).unwrap();
    assert_eq!(released_in_welcome(&waiting, back), None, "no welcome while in the lobby");
    let out = sim.ok(lena.conn, C::Admit { member: id });
    let grace_secs = Some(u32::try_from(GRACE_MS / 1000).unwrap());
    assert_eq!(released_in_welcome(&out, back), Some(Some(Released { hand: true, grace_secs, ..Released::default() })));
}

#[test]
fn lapsed_memberships_are_bounded_and_forgotten_when_the_meeting_ends() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    // In rounds, as the room holds at most MAX_MEMBERS at once.
    let mut lapsed = 0;
    while lapsed < limits::MAX_LAPSED_MEMBERSHIPS + 2 {
        for i in 0..(MAX_MEMBERS - 1).min(limits::MAX_LAPSED_MEMBERSHIPS + 2 - lapsed) {
            let ann = sim.join(Role::Member, &format!("Ann {i}"));
            sim.drop_conn(ann.conn);
            lapsed += 1;
        }
        sim.advance(GRACE_MS);
    }
    assert_eq!(sim.meeting.shared().lapsed.len(), limits::MAX_LAPSED_MEMBERSHIPS);
    let ann = sim.join(Role::Member, "Ann");
    sim.ok(lena.conn, C::Kick { member: ann.id.clone() });
    sim.send(lena.conn, C::EndMeeting {});
    let shared = sim.meeting.shared();
    assert!(shared.lapsed.is_empty() && shared.revoked.is_empty(), "nothing of the people outlives the meeting");
}

#[test]
fn a_leader_ending_the_meeting_ends_it_for_everyone() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let _ann = sim.join(Role::Member, "Ann");

    let out = sim.send(lena.conn, C::EndMeeting {});

    assert_eq!(out, vec![Output::End { reason: "ended_by_leader".to_owned() }]);
}

#[test]
fn two_leaders_clicking_next_on_the_same_view_give_the_floor_once() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let omar = sim.join(Role::Member, "Omar");
    sim.ok(lena.conn, C::SetRole { member: omar.id.clone(), role: Role::Leader });
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(ann.conn, C::RaiseHand {});
    sim.ok(ben.conn, C::RaiseHand {});
    let seen = sim.view(lena.conn).version;
    assert_eq!(sim.view(omar.conn).version, seen, "both leaders look at the same state");

    sim.ok(lena.conn, C::NextSpeaker { if_version: Some(seen) });
    sim.assert_refused(
        omar.conn,
        C::NextSpeaker { if_version: Some(seen) },
        (ErrorCode::Conflict, Reason::FloorChanged),
    );

    let view = sim.view(ann.conn);
    assert_eq!(floor_holder(&view), Some(ann.id.as_str()));
    assert_eq!(queue(&view), [ben.id.as_str()], "Ben keeps his place: the floor was given once");
    // A click on the fresh view works.
    let fresh = sim.view(omar.conn).version;
    sim.ok(omar.conn, C::NextSpeaker { if_version: Some(fresh) });
    assert_eq!(floor_holder(&sim.view(ann.conn)), Some(ben.id.as_str()));
}

#[test]
fn an_ephemeral_meeting_ends_when_it_stays_empty_past_the_grace_period() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    sim.advance(1_000);
    sim.drop_conn(lena.conn);
    // Lena is reconnecting, then gone; the room is empty from her drop on.
    let out = sim.advance(EMPTY_GRACE_MS - 2_000);
    assert!(!out.iter().any(|o| matches!(o, Output::End { .. })), "not yet");
    let ann = sim.join(Role::Member, "Ann");
    // Someone came back: the count starts over.
    sim.drop_conn(ann.conn);
    let out = sim.advance(EMPTY_GRACE_MS - 1_000);
    assert!(!out.iter().any(|o| matches!(o, Output::End { .. })));
    let out = sim.advance(2_000);
    assert!(sim.meeting.shared().is_ended());
    assert!(out.is_empty() || !out.iter().any(|o| matches!(o, Output::Send(..))), "nobody is left to tell");
    assert!(sim.meeting.state(true).members.is_empty(), "names are dropped at the end");
}

#[test]
fn an_ephemeral_meeting_ends_at_its_maximum_length() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    sim.advance(1_000);
    sim.advance(MAX_LENGTH_MS - 2_000);
    assert!(!sim.meeting.shared().is_ended());
    let out = sim.advance(2_000);
    assert!(out.contains(&Output::End { reason: "max_length".to_owned() }), "{out:?}");
    assert!(sim.meeting.state(true).members.is_empty());
    assert_eq!(sim.meeting.state(true).title, None, "the title goes too");
    let _ = lena;
}

#[test]
fn ending_drops_names_resume_tokens_and_the_queue() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    sim.ok(ann.conn, C::RaiseHand {});
    let out = sim.send(lena.conn, C::EndMeeting {});
    assert!(out.contains(&Output::End { reason: "ended_by_leader".to_owned() }));
    let record = String::from_utf8(record::encode(sim.meeting.shared()).unwrap().to_vec()).unwrap();
    for secret in ["Lena", "Ann", "Tuesday group", ann.id.as_str()] {
        assert!(!record.contains(secret), "{secret} is still in the ended record: {record}");
    }
}

#[test]
fn a_full_room_turns_newcomers_away_but_lets_members_resume() {
    let mut sim = Sim::balint();
    let mut people = Vec::new();
    for i in 0..MAX_MEMBERS {
        people.push(sim.join(if i == 0 { Role::Leader } else { Role::Member }, &format!("p{i}")));
    }
    let late = sim.connect(Role::Member, "late");
    let out = sim.send(late, C::Hello { resume: None });
    assert_eq!(
        out,
        vec![Output::Close { conn: late, code: balint_proto::close::ROOM_FULL, reason: "the room is full" }]
    );
    assert_eq!(sim.meeting.state(true).members.len(), MAX_MEMBERS);
    // A member who drops and comes back with their resume token is not a newcomer.
    let token = sim.token(people[1].conn);
    sim.drop_conn(people[1].conn);
    let back = sim.connect(Role::Member, "p1");
    let out = sim.send(back, C::Hello { resume: Some(token) });
    assert!(out.iter().any(|o| matches!(o, Output::Send(_, ServerMessage::Welcome { .. }))), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// The room beside the call: phases leave no debris, the lobby empties at once, the queue and
// the next speaker explain themselves, and members carry their arrival time.

#[test]
fn a_phase_change_lowers_every_hand_and_frees_the_floor_by_default() {
    let (mut sim, lena, pia, ann, ben) = balint_with_presenter();
    assert!(sim.view(ann.conn).phase_reset, "on by default");
    sim.ok(lena.conn, set_phase(Phase::Presentation));
    assert_eq!(floor_holder(&sim.view(ann.conn)), Some(pia.id.as_str()));
    sim.ok(ann.conn, C::RaiseHand {});
    sim.ok(ben.conn, C::RaiseHand {});

    sim.ok(lena.conn, set_phase(Phase::Questions));

    let view = sim.view(ann.conn);
    assert!(view.queue.is_empty(), "the hands of the presentation are down");
    assert_eq!(view.floor, None, "the presenter's turn ended with the phase");
    let spoken = sim.view(lena.conn).participation.unwrap();
    assert_eq!(spoken.iter().find(|p| p.member == pia.id).unwrap().turns, 1);

    // Setting the same phase again (a new countdown) is no phase change: the hands stay.
    sim.ok(ann.conn, C::RaiseHand {});
    sim.ok(lena.conn, grant(&ben));
    sim.ok(lena.conn, C::SetPhase { phase: Phase::Questions, duration_secs: Some(300) });
    let view = sim.view(ann.conn);
    assert_eq!(queue(&view), [ann.id.as_str()]);
    assert_eq!(floor_holder(&view), Some(ben.id.as_str()));

    // In the response the presenter gets the floor first, on a turn of their own.
    sim.ok(lena.conn, set_phase(Phase::Response));
    let view = sim.view(ann.conn);
    assert!(view.queue.is_empty());
    assert_eq!(floor_holder(&view), Some(pia.id.as_str()));
}

#[test]
fn with_the_phase_reset_off_hands_and_the_floor_carry_over() {
    let (mut sim, lena, _pia, ann, ben) = balint_with_presenter();
    sim.assert_refused(ann.conn, C::SetPhaseReset { enabled: false }, (ErrorCode::Forbidden, Reason::NotLeader));

    sim.ok(lena.conn, C::SetPhaseReset { enabled: false });

    assert!(!sim.view(ann.conn).phase_reset, "everyone sees the setting");
    sim.ok(ann.conn, C::RaiseHand {});
    sim.ok(lena.conn, grant(&ben));
    sim.ok(lena.conn, set_phase(Phase::Closing));
    let view = sim.view(ann.conn);
    assert_eq!(queue(&view), [ann.id.as_str()]);
    assert_eq!(floor_holder(&view), Some(ben.id.as_str()));
    let before = sim.meeting.version();
    sim.ok(lena.conn, C::SetPhaseReset { enabled: false });
    assert_eq!(sim.meeting.version(), before, "setting it to what it is changes nothing");
}

#[test]
fn admit_all_lets_everyone_waiting_in_at_once() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    let nina = sim.join(Role::Member, "Nina");
    let omar = sim.join(Role::Observer, "Omar");
    sim.assert_refused(nina.conn, C::AdmitAll {}, (ErrorCode::NotInRoom, Reason::InLobby));

    let out = sim.ok(lena.conn, C::AdmitAll {});

    for person in [&nina, &omar] {
        let first = messages_to(&out, person.conn).first().copied();
        assert!(matches!(first, Some(ServerMessage::Welcome { member_id, .. }) if *member_id == person.id));
        assert!(out.contains(&Output::Greet { conn: person.conn, full: true }));
        assert!(sim.meeting.can_read(person.conn));
    }
    assert_eq!(state_count(&out), 2, "one snapshot for leaders and one for the rest, not one per admission");
    let view = sim.view(lena.conn);
    assert!(view.lobby, "the lobby stays on for those who come later");
    assert_eq!(view.waiting, Some(vec![]));
    assert_eq!(member(&view, &omar).unwrap().role, Role::Observer, "each keeps the role of their link");
    let paul = sim.join(Role::Member, "Paul");
    assert!(member(&sim.view(lena.conn), &paul).is_none(), "a newcomer waits again");
    sim.ok(lena.conn, C::Admit { member: paul.id.clone() });

    sim.assert_refused(lena.conn, C::AdmitAll {}, (ErrorCode::Conflict, Reason::NobodyWaiting));
}

#[test]
fn the_queue_says_which_hands_fair_order_moved() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    sim.ok(lena.conn, grant(&ann));
    sim.ok(lena.conn, C::RevokeFloor {});
    sim.ok(ann.conn, C::RaiseHand {});
    sim.advance(1_000);
    sim.ok(ben.conn, C::RaiseHand {});
    let view = sim.view(ben.conn);
    assert!(view.queue.iter().all(|e| e.moved.is_none()), "by time raised, nobody is moved");

    sim.ok(lena.conn, C::SetFairOrder { enabled: true });

    let view = sim.view(ben.conn);
    let moved: Vec<(&str, Option<QueueMove>)> = view.queue.iter().map(|e| (e.member.as_str(), e.moved)).collect();
    assert_eq!(moved, [(ben.id.as_str(), Some(QueueMove::Ahead)), (ann.id.as_str(), Some(QueueMove::Behind))]);
    assert_eq!(view.queue, sim.view(lena.conn).queue, "identical for everyone");
    let json = serde_json::to_value(&view.queue).unwrap();
    assert_eq!(json[0]["moved"], "ahead");
    assert_eq!(json[1]["moved"], "behind");
    assert_eq!(json[1]["raised_at_ms"], START_MS);
}

#[test]
fn next_speaker_passes_over_a_reconnecting_head_who_keeps_their_place() {
    let mut sim = Sim::balint();
    let lena = sim.join(Role::Leader, "Lena");
    let ann = sim.join(Role::Member, "Ann");
    let ben = sim.join(Role::Member, "Ben");
    let ann_token = sim.token(ann.conn);
    sim.ok(ann.conn, C::RaiseHand {});
    sim.advance(1_000);
    sim.ok(ben.conn, C::RaiseHand {});
    sim.drop_conn(ann.conn);
    assert_eq!(status(&sim.view(lena.conn), &ann), Status::Reconnecting);

    sim.ok(lena.conn, C::NextSpeaker { if_version: None });

    let view = sim.view(lena.conn);
    assert_eq!(floor_holder(&view), Some(ben.id.as_str()));
    assert_eq!(queue(&view), [ann.id.as_str()], "Ann keeps her place");
    // Nobody else may speak: the refusal says the queue has nobody who can.
    sim.assert_refused(lena.conn, C::NextSpeaker { if_version: None }, (ErrorCode::QueueEmpty, Reason::QueueEmpty));
    let back = sim.resume(Role::Member, "Ann", &ann_token);
    assert_eq!(back.id, ann.id);
    sim.ok(lena.conn, C::NextSpeaker { if_version: None });
    assert_eq!(floor_holder(&sim.view(lena.conn)), Some(ann.id.as_str()));
}

#[test]
fn members_carry_when_they_first_arrived() {
    let mut sim = Sim::with_lobby();
    let lena = sim.join(Role::Leader, "Lena");
    sim.advance(60_000);
    let ann = sim.join(Role::Member, "Ann");
    let token = sim.token(ann.conn);
    sim.advance(30_000);
    sim.ok(lena.conn, C::Admit { member: ann.id.clone() });
    sim.advance(5_000);
    let dora = sim.connect(Role::Member, "Dora");
    sim.binary_frame(dora);

    let view = sim.view(lena.conn);
    assert_eq!(member(&view, &lena).unwrap().joined_at_ms, START_MS);
    assert_eq!(member(&view, &ann).unwrap().joined_at_ms, START_MS + 60_000, "from the lobby on");
    sim.ok(lena.conn, C::AdmitAll {});
    let view = sim.view(lena.conn);
    let dora_view = view.members.iter().find(|m| m.name == "Dora").unwrap();
    assert_eq!(dora_view.joined_at_ms, START_MS + 95_000, "a stock client too");

    // A reconnect within the grace period is the same arrival.
    sim.drop_conn(ann.conn);
    sim.advance(10_000);
    let back = sim.resume(Role::Member, "Ann", &token);
    assert_eq!(member(&sim.view(back.conn), &ann).unwrap().joined_at_ms, START_MS + 60_000);
}

// ---------------------------------------------------------------------------------------------
// Sealed names and title
// ---------------------------------------------------------------------------------------------

/// A sealed value's text: base64url of a sequence number, a nonce and a ciphertext.
fn sealed_value(fill: u8) -> String {
    balint_proto::sealed::encode_value(&balint_proto::sealed::Sealed {
        seq: 1,
        kind: balint_proto::sealed::Kind::Name,
        nonce: [fill; balint_proto::sealed::NONCE_LEN],
        ciphertext: vec![fill; 20].into(),
    })
}

#[test]
fn in_a_sealed_room_names_travel_sealed_and_someone_in_the_lobby_may_send_theirs() {
    let mut sim = Sim::sealed_with_lobby();
    let lena = sim.join(Role::Leader, "");
    let conn = sim.connect(Role::Member, "");
    let out = sim.hello(conn, None);
    let nina = Person { conn, id: introduced_id(&out, conn).unwrap() };

    // From the lobby: the leaders see who waits, sealed; the server keeps it as it came.
    let nina_name = sealed_value(1);
    sim.ok(nina.conn, ClientMessage::SetSealedName { sealed_name: nina_name.clone() });
    let leader_view = sim.view(lena.conn);
    assert_eq!(
        leader_view.waiting,
        Some(vec![Waiting { id: nina.id.clone(), name: String::new(), sealed_name: Some(nina_name.clone()) }])
    );
    assert!(leader_view.sealed);
    // Nothing else from the lobby.
    sim.assert_refused(nina.conn, ClientMessage::RaiseHand {}, (ErrorCode::NotInRoom, Reason::InLobby));

    let lena_name = sealed_value(2);
    sim.ok(lena.conn, ClientMessage::SetSealedName { sealed_name: lena_name.clone() });
    sim.ok(lena.conn, ClientMessage::Admit { member: nina.id.clone() });
    let view = sim.view(nina.conn);
    let names: Vec<_> = view.members.iter().map(|m| (m.name.as_str(), m.sealed_name.as_deref())).collect();
    assert_eq!(names, [("", Some(lena_name.as_str())), ("", Some(nina_name.as_str()))]);

    // Not a sealed value: refused, and the name stays.
    for bad in ["Nina in clear".to_owned(), "QUJD".to_owned(), "A".repeat(balint_proto::sealed::MAX_VALUE_CHARS + 4)] {
        sim.assert_refused(
            nina.conn,
            ClientMessage::SetSealedName { sealed_name: bad },
            (ErrorCode::BadMessage, Reason::BadSealedValue),
        );
    }
    assert_eq!(member(&sim.view(nina.conn), &nina).unwrap().sealed_name.as_deref(), Some(nina_name.as_str()));
}

#[test]
fn a_plain_room_refuses_sealed_names() {
    let mut sim = Sim::balint();
    let ann = sim.join(Role::Member, "Ann");
    sim.assert_refused(
        ann.conn,
        ClientMessage::SetSealedName { sealed_name: sealed_value(3) },
        (ErrorCode::BadMessage, Reason::NotSealed),
    );
    assert!(!sim.view(ann.conn).sealed);
}

#[test]
fn a_sealed_title_is_set_only_sealed_and_goes_with_the_meeting() {
    let mut sim = Sim::sealed_with_lobby();
    let lena = sim.join(Role::Leader, "");
    let mut shared = sim.meeting.shared().clone();
    assert_eq!(shared.set_title(TitleChange::Clear(Some("Case".into()))), Err(TitleError::SealedRoom));
    assert_eq!(shared.set_title(TitleChange::Sealed(Some("Case".into()))), Err(TitleError::NotSealedValue));
    let title = sealed_value(4);
    assert_eq!(shared.set_title(TitleChange::Sealed(Some(title.clone()))), Ok(true));
    assert_eq!(shared.set_title(TitleChange::Sealed(Some(title.clone()))), Ok(false));
    let view = Meeting::from_shared(shared, 5).state(false);
    assert_eq!((view.title, view.sealed_title.as_deref()), (None, Some(title.as_str())));

    // A plain room takes no sealed title.
    let mut plain = Sim::balint().meeting.shared().clone();
    assert_eq!(plain.set_title(TitleChange::Sealed(Some(title))), Err(TitleError::PlainRoom));
    assert_eq!(plain.set_title(TitleChange::Clear(None)), Ok(true));

    // The end takes the sealed title and the sealed names with it.
    sim.ok(lena.conn, ClientMessage::SetSealedName { sealed_name: sealed_value(6) });
    let mut ended = sim.meeting.shared().clone();
    ended.set_title(TitleChange::Sealed(Some(sealed_value(4)))).unwrap();
    assert!(ended.end("ended_by_leader"));
    assert_eq!(ended.sealed_title(), None);
    let record = crate::room::record::encode(&ended).unwrap();
    let text = String::from_utf8(record.to_vec()).unwrap();
    assert!(!text.contains(&sealed_value(4)) && !text.contains(&sealed_value(6)), "{text}");
}
