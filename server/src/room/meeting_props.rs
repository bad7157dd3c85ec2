//! Property tests for [`Meeting`]: random sequences of connections, hellos, binary first
//! frames, disconnects, time passing and every room-protocol command, from random senders with
//! random targets.
//!
//! - On one node, after every step: the queue never holds a member twice; every hand in it
//!   and the floor belong to admitted speakers (not observers, not the presenter pushed back
//!   during reflection); an observer can never write; every connection that said hello was last
//!   sent the state as it is.
//!
//! Several nodes are the simulation's (`machine_sim.rs`): it drives real room machines and
//! reuses the strategies and invariants of this file.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use balint_proto::room::ClientMessage as C;

pub(crate) const START_MS: u64 = 1_700_000_000_000;
const GRACE_MS: u64 = 20_000;
/// Few, so that a full room is reached too.
const MAX_MEMBERS: usize = 8;
/// Placeholder targets `#0`..`#5` name the members in the order of their ids; `#k` past the
/// last wraps around.
pub(crate) const TARGETS: usize = 6;

fn settings(template: Template, lobby: bool, ephemeral: bool) -> MeetingSettings {
    MeetingSettings {
        title: Some("props".into()),
        template,
        ephemeral,
        lobby,
        reconnect_grace_ms: GRACE_MS,
        empty_grace_ms: 3 * GRACE_MS,
        max_length_ms: 40 * GRACE_MS,
        max_members: MAX_MEMBERS,
        sealed: false,
        link_generation: 0,
        sealed_title: None,
        controls: Default::default(),
    }
}

// ---- strategies ----

pub(crate) fn role() -> impl Strategy<Value = Role> {
    prop_oneof![2 => Just(Role::Leader), 3 => Just(Role::Member), 1 => Just(Role::Observer)]
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![6 => (0..TARGETS).prop_map(|k| format!("#{k}")), 1 => Just("nobody".to_owned())]
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        1 => Just(Phase::Gathering),
        3 => Just(Phase::Presentation),
        1 => Just(Phase::Questions),
        4 => Just(Phase::Reflection),
        1 => Just(Phase::Response),
        1 => Just(Phase::Closing),
        1 => Just(Phase::Discussion),
    ]
}

fn seconds() -> impl Strategy<Value = Option<u32>> {
    proptest::option::of(prop_oneof![Just(0u32), 1u32..40, Just(24 * 3600 + 1)])
}

fn if_version() -> impl Strategy<Value = Option<u64>> {
    proptest::option::of(0u64..40)
}

/// Every command of the room protocol.
fn message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        1 => proptest::option::of(target()).prop_map(|resume| C::Hello { resume }),
        4 => Just(C::RaiseHand {}),
        1 => proptest::option::of(target()).prop_map(|member| C::LowerHand { member }),
        1 => Just(C::LowerAllHands {}),
        2 => Just(C::YieldFloor {}),
        3 => (target(), if_version()).prop_map(|(member, if_version)| C::GrantFloor { member, if_version }),
        3 => if_version().prop_map(|if_version| C::NextSpeaker { if_version }),
        1 => Just(C::RevokeFloor {}),
        1 => seconds().prop_map(|seconds| C::SetSpeakingLimit { seconds }),
        1 => any::<bool>().prop_map(|enabled| C::SetFairOrder { enabled }),
        4 => (phase(), seconds()).prop_map(|(phase, duration_secs)| C::SetPhase { phase, duration_secs }),
        4 => prop_oneof![4 => target().prop_map(Some), 1 => Just(None)].prop_map(|member| C::PickPresenter { member }),
        2 => (target(), role()).prop_map(|(member, role)| C::SetRole { member, role }),
        1 => any::<bool>().prop_map(|enabled| C::SetLobby { enabled }),
        2 => target().prop_map(|member| C::Admit { member }),
        1 => target().prop_map(|member| C::Decline { member }),
        1 => any::<bool>().prop_map(|locked| C::LockBoard { locked }),
        1 => target().prop_map(|member| C::Kick { member }),
        1 => any::<bool>().prop_map(|away| C::SetAway { away }),
    ]
}

/// A command now and then ends the meeting; not so often that most sequences end early.
pub(crate) fn message_or_end() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![300 => message(), 1 => Just(C::EndMeeting {})]
}

fn advance() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..3_000, 2 => 3_000u64..45_000, 1 => Just(GRACE_MS)]
}

#[derive(Debug, Clone)]
enum Step {
    /// A new connection with a link of this role; `true` says hello, `false` sends a binary
    /// frame first, as a stock Yjs client does.
    Connect(Role, bool),
    /// A new connection resuming the membership of target `#k`.
    Resume(Role, usize),
    /// A room-protocol message from one of the open connections.
    Send(Index, ClientMessage),
    /// A room-protocol message from one of the open connections of a leader, if any (most
    /// commands are theirs).
    Lead(Index, ClientMessage),
    /// A first binary frame from one of the open connections.
    Binary(Index),
    /// One of the open connections closes.
    Disconnect(Index),
    /// Time passes and the timers run.
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (role(), prop_oneof![4 => Just(true), 1 => Just(false)]).prop_map(|(r, hello)| Step::Connect(r, hello)),
        1 => (role(), 0..TARGETS).prop_map(|(r, k)| Step::Resume(r, k)),
        8 => (any::<Index>(), message_or_end()).prop_map(|(i, m)| Step::Send(i, m)),
        8 => (any::<Index>(), message_or_end()).prop_map(|(i, m)| Step::Lead(i, m)),
        1 => any::<Index>().prop_map(Step::Binary),
        2 => any::<Index>().prop_map(Step::Disconnect),
        3 => advance().prop_map(Step::Advance),
    ]
}

pub(crate) fn setup() -> impl Strategy<Value = (Template, bool, bool)> {
    (prop_oneof![3 => Just(Template::Balint), 1 => Just(Template::Open)], any::<bool>(), any::<bool>())
}

// ---- the invariants ----

/// What must hold of a meeting at every moment.
pub(crate) fn assert_invariants(meeting: &Meeting) {
    let s = &meeting.shared;
    let speaker = |id: &str, what: &str| {
        let member = s.members.get(id).unwrap_or_else(|| panic!("{what} is not a member"));
        assert!(member.admitted, "{what} waits in the lobby");
        assert_ne!(member.role, Role::Observer, "{what} is an observer");
    };
    let mut queued = BTreeSet::new();
    for hand in &s.queue {
        assert!(queued.insert(hand.member.as_str()), "a member is queued twice");
        speaker(&hand.member, "a queued member");
        assert!(!s.is_pushed_back(&hand.member), "the presenter is queued during reflection");
    }
    if let Some(turn) = &s.floor {
        speaker(&turn.member, "the floor holder");
        assert!(!s.is_pushed_back(&turn.member), "the presenter holds the floor during reflection");
    }
    if let Some(presenter) = &s.presenter {
        speaker(presenter, "the presenter");
    }
    assert!(s.members.len() <= s.max_members, "more members than the room holds");
    assert!(s.removed.iter().all(|(id, _)| !s.members.contains_key(id)), "a removed member is still a member");
    if s.ended.is_some() {
        assert!(s.members.is_empty() && s.queue.is_empty() && s.floor.is_none() && s.presenter.is_none());
        assert!(s.title.is_none(), "an ended meeting keeps its title");
    }
    for (&conn, connection) in &meeting.connections {
        let member = connection.member.as_deref().and_then(|id| s.members.get(id));
        match member {
            Some(m) if m.admitted && m.role != Role::Observer => {}
            // Observers, people in the lobby, removed members and unbound connections.
            _ => assert!(meeting.can_write(conn).is_err(), "{conn} may write but should not"),
        }
        if member.is_some_and(|m| m.role == Role::Observer) {
            assert!(meeting.can_write(conn).is_err(), "an observer may write");
        }
        if !meeting.can_read(conn) {
            assert!(meeting.can_write(conn).is_err(), "{conn} may write without seeing the board");
        }
    }
}

/// What a node's connections were last told, kept the way a client keeps it.
#[derive(Default)]
struct Views(BTreeMap<ConnId, RoomState>);

impl Views {
    fn record(&mut self, outputs: &[Output], conns: impl Iterator<Item = ConnId> + Clone) {
        for output in outputs {
            let Output::Send(audience, message) = output else { continue };
            let state = match message {
                ServerMessage::Welcome { state, .. } | ServerMessage::State { state } => state,
                _ => continue,
            };
            for conn in conns.clone().filter(|&c| audience.contains(c)) {
                self.0.insert(conn, state.clone());
            }
        }
    }

    /// Every connection that said hello and is in the room was last sent the current state.
    fn assert_current(&self, meeting: &Meeting) {
        if meeting.shared.ended.is_some() {
            return;
        }
        for (&conn, connection) in &meeting.connections {
            let Some(member) = connection.member.as_deref().and_then(|id| meeting.shared.members.get(id)) else {
                continue;
            };
            if !connection.hello || !member.admitted {
                continue;
            }
            let seen = self.0.get(&conn).unwrap_or_else(|| panic!("{conn} was never sent the state"));
            assert_eq!(seen, &meeting.state(member.role == Role::Leader), "{conn} was not sent the latest state");
        }
    }
}

/// Replaces placeholder targets by member ids, and resume placeholders by resume tokens, as
/// seen in `shared`.
pub(crate) fn resolve(message: ClientMessage, shared: &Shared) -> ClientMessage {
    let pick = |placeholder: &str| -> Option<(&String, &Member)> {
        let k: usize = placeholder.strip_prefix('#')?.parse().ok()?;
        let n = shared.members.len();
        (n > 0).then(|| shared.members.iter().nth(k % n).expect("k % n < n"))
    };
    let id = |s: String| pick(&s).map_or(s, |(id, _)| id.clone());
    let token = |s: String| pick(&s).map_or(s, |(_, m)| m.resume_token.clone());
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

// ---- one node ----

/// One node driving its meeting as `rooms.rs` does with no other writer.
struct Node {
    meeting: Meeting,
    now: u64,
    next_conn: u64,
    views: Views,
}

impl Node {
    fn new(template: Template, lobby: bool, ephemeral: bool) -> Self {
        Node {
            meeting: Meeting::new(settings(template, lobby, ephemeral), START_MS),
            now: START_MS,
            next_conn: 0,
            views: Views::default(),
        }
    }

    fn open(&self) -> Vec<ConnId> {
        self.meeting.connections.keys().copied().collect()
    }

    /// Carries out what the meeting asked for: closes lead to disconnects, the end closes
    /// everyone.
    fn drive(&mut self, outputs: Vec<Output>) {
        let mut pending = outputs;
        while !pending.is_empty() {
            let open = self.open();
            self.views.record(&pending, open.iter().copied());
            let mut next = Vec::new();
            for output in pending {
                match output {
                    Output::Close { conn, .. } if self.meeting.is_connected(conn) => {
                        next.extend(self.meeting.disconnect(conn, self.now));
                    }
                    Output::End { .. } => {
                        for conn in self.open() {
                            self.meeting.forget(conn);
                        }
                    }
                    _ => {}
                }
            }
            pending = next;
        }
    }

    fn run(&mut self, step: Step) {
        if self.meeting.shared().is_ended() {
            // The driver takes no connection and no command for an ended meeting.
            return;
        }
        let lead = matches!(step, Step::Lead(..));
        let out = match step {
            Step::Connect(role, hello) => {
                let conn = self.connect(role);
                if hello {
                    self.meeting.handle(conn, C::Hello { resume: None }, self.now)
                } else {
                    self.meeting.bind(conn, false, None, self.now)
                }
            }
            Step::Resume(role, k) => {
                let conn = self.connect(role);
                let hello = resolve(C::Hello { resume: Some(format!("#{k}")) }, &self.meeting.shared);
                self.meeting.handle(conn, hello, self.now)
            }
            Step::Send(i, message) | Step::Lead(i, message) => {
                let conns = if lead { leaders(&self.meeting) } else { self.open() };
                let Some(conn) = pick(&conns, i) else { return };
                let message = resolve(message, &self.meeting.shared);
                self.meeting.handle(conn, message, self.now)
            }
            Step::Binary(i) => {
                let Some(conn) = pick(&self.open(), i) else { return };
                self.meeting.bind(conn, false, None, self.now)
            }
            Step::Disconnect(i) => {
                let Some(conn) = pick(&self.open(), i) else { return };
                self.meeting.disconnect(conn, self.now)
            }
            Step::Advance(ms) => {
                self.now += ms;
                self.meeting.tick(self.now)
            }
        };
        self.drive(out);
    }

    fn connect(&mut self, role: Role) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.meeting.connect(conn, role, format!("person {}", self.next_conn));
        conn
    }
}

/// The connections of `meeting` that speak for a leader.
fn leaders(meeting: &Meeting) -> Vec<ConnId> {
    let is_leader = |id: &String| meeting.shared.members.get(id).is_some_and(|m| m.role == Role::Leader);
    meeting
        .connections
        .iter()
        .filter(|(_, c)| c.member.as_ref().is_some_and(is_leader))
        .map(|(&conn, _)| conn)
        .collect()
}

fn pick(conns: &[ConnId], i: Index) -> Option<ConnId> {
    (!conns.is_empty()).then(|| conns[i.index(conns.len())])
}

proptest! {
    // Failures are reported with their minimal input; none is saved next to the source.
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn one_node_keeps_its_invariants(
        (template, lobby, ephemeral) in setup(),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let mut node = Node::new(template, lobby, ephemeral);
        for step in steps {
            node.run(step);
            assert_invariants(&node.meeting);
            node.views.assert_current(&node.meeting);
        }
        let record = record::encode(node.meeting.shared()).unwrap();
        prop_assert_eq!(&record::decode(&record).unwrap(), node.meeting.shared());
    }
}
