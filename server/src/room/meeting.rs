//! The meeting: presence, roles, the lobby, the hand queue and the floor, and the phases of a
//! Balint session. A sans-IO state machine: connections, commands and the current time come
//! in; messages for audiences of connections come out.
//!
//! The state is in two parts:
//! - [`Shared`] is what every node of a deployment agrees on: members, roles, the queue, the
//!   floor, the phase, the lobby, the lock, the timers. It is the room's record in the backend,
//!   written by compare-and-set on a version.
//! - [`Meeting`] adds what only this node knows: its connections and which member each speaks
//!   for.
//!
//! A change is *planned* on a copy of the shared part ([`Meeting::plan_command`] and friends),
//! written by the driver (compare-and-set, retried on conflict) and then *installed*
//! ([`Meeting::install`]). Installing compares the old and the new shared state and derives
//! what this node's connections must be told: the new snapshot, an admission, a removal, a
//! `time_up`, the end. Because those effects are derived from the state and not carried as
//! events, a node that skips versions (after a conflict, or a lost bus message) still does the
//! right thing.
//!
//! Every permission is checked here, never only in a UI. A refused command produces one
//! `error` for its sender and changes nothing.
//!
//! Controls that stick are decided here too:
//! - the room's *link generation*: a leader who renews the links raises it, and a newcomer
//!   whose invite or observer link is of an older generation is closed with
//!   [`close::LINK_RENEWED`] when it would become a member. Members present, and members who
//!   resume within the grace period, carry on. Leader links are never refused for their
//!   generation: renewing is for shutting out a removed member, and a leaked leader link calls
//!   for a new secret instead (SECURITY.md);
//! - the resume tokens of members a leader removed or declined are *revoked*: a `hello` that
//!   carries one is closed with [`close::REMOVED`];
//! - *lapsed* memberships (the grace period ran out) are remembered by resume token, so a
//!   member who comes back later is told in `welcome` what the old membership released.
//!
//! Resume tokens are kept for those two lists only as salted SHA-256 digests, and each list
//! is bounded ([`limits::MAX_REVOKED_RESUMES`], [`limits::MAX_LAPSED_MEMBERSHIPS`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use balint_proto::close;
use balint_proto::room::{
    ClientMessage, ErrorCode, Floor, MemberView, Participation, Phase, PhaseState, QueueEntry, QueueMove, Released,
    Role, RoomState, ServerMessage, Status, Template, Waiting,
};
use balint_proto::rules::{self, Candidate, RaisedHand, Reason, Refusal, Seat, Stage};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::{ConnId, Ids, RandomIds};

/// How many told turns a node remembers, so that a record of another lineage after a Redis
/// restart, which may show an earlier turn again, does not have it told twice.
const TOLD_TIME_UPS: usize = 16;
use crate::limits;

/// A set of connections that a message is for. Sorted, so membership is a binary search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience(Arc<[ConnId]>);

impl Audience {
    /// The connections in `conns`.
    pub fn of(mut conns: Vec<ConnId>) -> Self {
        conns.sort_unstable();
        conns.dedup();
        Audience(conns.into())
    }

    /// One connection.
    pub fn one(conn: ConnId) -> Self {
        Audience(Arc::new([conn]))
    }

    /// Whether `conn` is in the audience.
    pub fn contains(&self, conn: ConnId) -> bool {
        self.0.binary_search(&conn).is_ok()
    }

    /// Whether nobody is in the audience.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the meeting asks its driver to do.
// Outputs live for one call and are consumed at once; boxing the large variant would cost an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a room-protocol message to these connections.
    Send(Audience, ServerMessage),
    /// Start the board sync of a connection that may now see the board. `full` asks for the
    /// whole board to be pushed as well, for a client that was held in the lobby and whose own
    /// sync step 1 went unanswered.
    Greet {
        /// The connection.
        conn: ConnId,
        /// Push the whole board too.
        full: bool,
    },
    /// Close a connection with a code and a reason.
    Close {
        /// The connection.
        conn: ConnId,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
    /// The meeting is over: every connection gets `ended` and a close with 4410.
    End {
        /// `ended_by_leader`, `empty`, `max_length` or `deleted`.
        reason: String,
    },
}

/// How a meeting is set up.
#[derive(Debug, Clone)]
pub struct MeetingSettings {
    /// The room's title.
    pub title: Option<String>,
    /// Sealed rooms: the sealed title.
    pub sealed_title: Option<String>,
    /// The leaders' controls a persistent room kept.
    pub controls: super::Controls,
    /// The session template.
    pub template: Template,
    /// Whether the meeting leaves nothing behind.
    pub ephemeral: bool,
    /// Whether newcomers wait for a leader.
    pub lobby: bool,
    /// Whether the board is sealed: opaque entries the server forwards and logs, never reads.
    pub sealed: bool,
    /// How long a dropped member keeps their place, in milliseconds.
    pub reconnect_grace_ms: u64,
    /// How long an ephemeral meeting may stay empty before it ends, in milliseconds.
    pub empty_grace_ms: u64,
    /// The longest an ephemeral meeting may last from its first member, in milliseconds.
    pub max_length_ms: u64,
    /// The most members (including those in the lobby) the room holds.
    pub max_members: usize,
    /// The room's link generation (0 for a new room; a persistent room keeps its own).
    pub link_generation: u64,
}

/// A new title for a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TitleChange {
    /// A plain room's title, checked already (`None` clears it).
    Clear(Option<String>),
    /// A sealed room's sealed title (`None` clears it).
    Sealed(Option<String>),
}

/// Why a title was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TitleError {
    /// A title in clear for a sealed room.
    #[error("this room is sealed: its title travels sealed, as sealed_title")]
    SealedRoom,
    /// A sealed title for a plain room.
    #[error("this room is not sealed: give its title as title")]
    PlainRoom,
    /// Not a sealed value.
    #[error("sealed_title is not a sealed value: base64url of a sequence number, a nonce and a ciphertext")]
    NotSealedValue,
}

/// Why a member was removed by a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Kicked from the room.
    Kicked,
    /// Turned away from the lobby.
    Declined,
}

/// The members a leader removed, oldest first, at most [`limits::MAX_REMOVALS`]: every node
/// closes their connections when it installs the record that removed them, and a removal old
/// enough to fall off has long been seen by every node (their resume tokens stay refused by
/// the revoked list). Bounded, so that a room whose leader turns away newcomer after newcomer
/// does not grow its record with each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removals(Vec<(String, Removal)>);

impl Removals {
    /// Why `member` was removed, if they were.
    pub fn get(&self, member: &str) -> Option<Removal> {
        self.0.iter().find(|(id, _)| id == member).map(|(_, removal)| *removal)
    }

    /// Records that `member` was removed, as the newest removal.
    pub fn insert(&mut self, member: String, removal: Removal) {
        self.0.retain(|(id, _)| *id != member);
        self.0.push((member, removal));
        let excess = self.0.len().saturating_sub(limits::MAX_REMOVALS);
        self.0.drain(..excess);
    }

    /// The removals, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Removal)> {
        self.0.iter().map(|(id, removal)| (id.as_str(), *removal))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

impl FromIterator<(String, Removal)> for Removals {
    /// Removals from oldest to newest; a member named twice counts at the later place.
    fn from_iter<I: IntoIterator<Item = (String, Removal)>>(removals: I) -> Self {
        let mut out = Removals::default();
        for (member, removal) in removals {
            out.insert(member, removal);
        }
        out
    }
}

impl Removal {
    fn reason(self) -> &'static str {
        match self {
            Removal::Kicked => "removed by a leader",
            Removal::Declined => "declined by a leader",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// The display name; empty in a sealed room.
    name: String,
    /// Sealed rooms: the display name, sealed by the member (opaque here).
    sealed_name: Option<String>,
    role: Role,
    resume_token: String,
    /// Order of arrival, for the member list.
    arrival: u64,
    /// When the member first arrived in this meeting (Unix milliseconds), for attendance.
    joined_at_ms: u64,
    /// When the member was last seen connected nowhere, while reconnecting.
    dropped_at_ms: Option<u64>,
    away: bool,
    /// False while the member waits in the lobby.
    admitted: bool,
    turns: u32,
    speaking_ms: u64,
    /// Whether the member had the floor in the current phase, for fair order.
    spoke_in_phase: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hand {
    member: String,
    raised_at_ms: u64,
    /// Breaks ties between hands raised in the same millisecond.
    seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Turn {
    member: String,
    since_ms: u64,
    limit_secs: Option<u32>,
    time_up_sent: bool,
    /// Distinguishes two turns of the same member that start in the same millisecond.
    seq: u64,
}

/// A membership whose grace period ran out, remembered by the digest of its resume token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lapsed {
    /// [`resume_digest`] of the membership's resume token.
    token: String,
    /// What it held; `role` is the role it had, compared with the new link's at return.
    released: Released,
}

/// The part of a meeting every node shares, stored as the room's record ([`record`] has its
/// stored format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    title: Option<String>,
    /// Sealed rooms: the title, sealed by a leader's client (opaque here).
    sealed_title: Option<String>,
    template: Template,
    ephemeral: bool,
    lobby: bool,
    /// Whether the board is sealed (end-to-end encrypted): fixed at creation.
    sealed: bool,
    reconnect_grace_ms: u64,
    empty_grace_ms: u64,
    max_length_ms: u64,
    max_members: usize,
    /// When the first member arrived: the meeting's start.
    started_at_ms: Option<u64>,
    /// Since when nobody has been connected, once the meeting started.
    empty_since_ms: Option<u64>,
    members: BTreeMap<String, Member>,
    queue: Vec<Hand>,
    floor: Option<Turn>,
    phase: PhaseState,
    presenter: Option<String>,
    speaking_limit_secs: Option<u32>,
    fair_order: bool,
    /// Whether a phase change lowers every hand and frees the floor.
    phase_reset: bool,
    board_locked: bool,
    next_seq: u64,
    /// Members a leader removed, so every node closes their connections.
    removed: Removals,
    /// Set once the meeting has ended, with the reason.
    ended: Option<String>,
    /// The version at which the floor last changed, for `if_version` on floor commands.
    floor_version: u64,
    /// Raised by a leader who renews the links; invite and observer links of older
    /// generations no longer let newcomers in.
    link_generation: u64,
    /// Digests of the resume tokens of members a leader removed or declined, oldest first, at
    /// most [`limits::MAX_REVOKED_RESUMES`].
    revoked: Vec<String>,
    /// Memberships whose grace period ran out, oldest first, at most
    /// [`limits::MAX_LAPSED_MEMBERSHIPS`].
    lapsed: Vec<Lapsed>,
}

/// The earliest of several due times (Unix ms).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Earliest(Option<u64>);

impl Earliest {
    /// Takes `at` into account.
    pub fn at(&mut self, at: u64) {
        self.0 = Some(self.0.map_or(at, |due| due.min(at)));
    }

    /// Takes `at`, if any, into account.
    pub fn maybe(&mut self, at: Option<u64>) {
        if let Some(at) = at {
            self.at(at);
        }
    }

    /// The earliest, if any.
    pub fn get(self) -> Option<u64> {
        self.0
    }
}

/// What a meeting's timers need, from its shared state and this node's connections
/// ([`Meeting::due`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MeetingDue {
    /// When the shared state's own timers are next due ([`Shared::next_timer`]).
    pub timer: Option<u64>,
    /// Whether this node has connections bound to members (their presence is announced).
    pub local_members: bool,
    /// Whether a member is shown present without a connection here: connected on another
    /// node, or gone without the record knowing yet.
    pub present_elsewhere: bool,
    /// Whether a member with a connection here is shown dropped: the record must say they
    /// are back.
    pub local_shown_away: bool,
}

/// A connection newly bound to a member, recorded when its plan is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    conn: ConnId,
    member: String,
    hello: bool,
    /// What the connection's lapsed membership released, when it came back too late.
    released: Option<Released>,
}

impl Binding {
    /// The member the connection speaks for.
    pub fn member(&self) -> &str {
        &self.member
    }
}

/// A change to make: the next shared state to write, and what only this node must do once it
/// is written.
#[derive(Debug, Default)]
pub struct Plan {
    /// The next shared state, when the change alters it.
    pub next: Option<Shared>,
    /// A connection to bind to a member once `next` is installed.
    pub binding: Option<Binding>,
    /// Outputs for this node that do not depend on the write (refusals, `welcome` for an
    /// already bound connection).
    pub immediate: Vec<Output>,
}

impl Plan {
    fn refused(conn: ConnId, refusal: Refusal) -> Self {
        Plan { immediate: vec![refuse(conn, refusal)], ..Plan::default() }
    }
}

#[derive(Debug)]
struct Connection {
    /// The role the link grants a newcomer arriving on this connection.
    link_role: Role,
    /// The link generation of the link the connection was opened with.
    link_generation: u64,
    /// What the membership this connection tried to resume released, once it is known to
    /// have lapsed; told in `welcome`.
    released: Option<Released>,
    /// The name from the query string, used when this connection creates a member.
    name: String,
    /// The member this connection speaks for, once it sent its first message.
    member: Option<String>,
    /// Whether the client opened the room protocol.
    hello: bool,
}

/// One node's view of a meeting: the shared state plus this node's connections.
#[derive(Debug)]
pub struct Meeting {
    shared: Shared,
    version: u64,
    connections: BTreeMap<ConnId, Connection>,
    /// Where new member ids and resume tokens come from.
    ids: Arc<dyn Ids>,
    /// The last turns (seq, member, start, limit) whose `time_up` this node told, at most
    /// [`TOLD_TIME_UPS`].
    told_time_up: std::collections::VecDeque<(u64, String, u64, Option<u32>)>,
    /// Counts every change of the shared state or of the connections, so that what is
    /// derived from them ([`Meeting::due`]) can be kept until they change.
    changes: u64,
}

impl Shared {
    /// The first state of a meeting that starts at `now_ms`.
    pub fn new(settings: MeetingSettings, now_ms: u64) -> Self {
        let first = settings.template.phases()[0];
        Shared {
            title: settings.title,
            sealed_title: settings.sealed_title,
            template: settings.template,
            ephemeral: settings.ephemeral,
            lobby: settings.lobby,
            sealed: settings.sealed,
            reconnect_grace_ms: settings.reconnect_grace_ms,
            empty_grace_ms: settings.empty_grace_ms,
            max_length_ms: settings.max_length_ms,
            max_members: settings.max_members,
            started_at_ms: None,
            empty_since_ms: None,
            members: BTreeMap::new(),
            queue: Vec::new(),
            floor: None,
            phase: PhaseState { name: first, started_at_ms: now_ms, duration_secs: first.suggested_secs() },
            presenter: None,
            speaking_limit_secs: settings.controls.speaking_limit_secs,
            fair_order: settings.controls.fair_order,
            phase_reset: settings.controls.phase_reset,
            board_locked: settings.controls.board_locked,
            next_seq: 0,
            removed: Removals::default(),
            ended: None,
            floor_version: 0,
            link_generation: settings.link_generation,
            revoked: Vec::new(),
            lapsed: Vec::new(),
        }
    }

    /// The room's link generation: links are issued with it, and invite and observer links of
    /// an older one no longer let newcomers in.
    pub fn link_generation(&self) -> u64 {
        self.link_generation
    }

    /// Whether newcomers wait in the lobby.
    pub fn lobby(&self) -> bool {
        self.lobby
    }

    /// Whether the meeting has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// Whether `member` is in the room and not dropped (here, away or outside the circle).
    pub fn is_present(&self, member: &str) -> bool {
        self.members.get(member).is_some_and(|m| m.dropped_at_ms.is_none())
    }

    /// Whether anyone has joined yet. Before that, the record holds only the settings.
    pub fn has_started(&self) -> bool {
        self.started_at_ms.is_some() || !self.members.is_empty()
    }

    /// Whether the meeting leaves nothing behind.
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// Whether the room's board is sealed.
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// The room's title.
    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }

    /// Sealed rooms: the sealed title.
    pub fn sealed_title(&self) -> Option<&str> {
        self.sealed_title.as_deref()
    }

    /// The leaders' controls, as a persistent room keeps them.
    pub fn controls(&self) -> super::Controls {
        super::Controls {
            speaking_limit_secs: self.speaking_limit_secs,
            fair_order: self.fair_order,
            phase_reset: self.phase_reset,
            board_locked: self.board_locked,
        }
    }

    /// The session template.
    pub fn template(&self) -> Template {
        self.template
    }

    /// Ids of the members, for presence.
    pub fn member_ids(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// Ends the meeting; `false` if it had ended already. Everything the meeting knew of its
    /// people goes at once: names, roles, resume tokens, the queue, the title. What stays is
    /// the fact that it ended, and why.
    pub fn end(&mut self, reason: &str) -> bool {
        if self.ended.is_some() {
            return false;
        }
        self.ended = Some(reason.to_owned());
        self.title = None;
        self.sealed_title = None;
        self.members.clear();
        self.removed.clear();
        self.revoked.clear();
        self.lapsed.clear();
        self.queue.clear();
        self.floor = None;
        self.presenter = None;
        true
    }

    fn bump_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn add_member(&mut self, link_role: Role, name: &str, ids: &dyn Ids, now: u64) -> String {
        let id = ids.member_id();
        let member = Member {
            name: name.to_owned(),
            sealed_name: None,
            role: link_role,
            resume_token: ids.resume_token(),
            arrival: self.bump_seq(),
            joined_at_ms: now,
            dropped_at_ms: None,
            away: false,
            // Leaders hold the leader link and never wait.
            admitted: !self.lobby || link_role == Role::Leader,
            turns: 0,
            speaking_ms: 0,
            spoke_in_phase: false,
        };
        self.members.insert(id.clone(), member);
        id
    }

    fn member_by_resume(&self, token: &str) -> Option<String> {
        self.members.iter().find(|(_, m)| m.resume_token == token).map(|(id, _)| id.clone())
    }

    /// Revokes the resume token of `member_id`, whom a leader is removing.
    fn revoke(&mut self, member_id: &str) {
        let Some(member) = self.members.get(member_id) else { return };
        self.revoked.push(resume_digest(&member.resume_token));
        let excess = self.revoked.len().saturating_sub(limits::MAX_REVOKED_RESUMES);
        self.revoked.drain(..excess);
    }

    /// Remembers what the membership of `member_id`, whose grace period ran out, held.
    fn remember_lapsed(&mut self, member_id: &str) {
        let Some(member) = self.members.get(member_id) else { return };
        let released = Released {
            hand: self.queue.iter().any(|h| h.member == member_id),
            floor: self.floor.as_ref().is_some_and(|t| t.member == member_id),
            presenter: self.presenter.as_deref() == Some(member_id),
            role: Some(member.role),
            grace_secs: None,
        };
        self.lapsed.push(Lapsed { token: resume_digest(&member.resume_token), released });
        let excess = self.lapsed.len().saturating_sub(limits::MAX_LAPSED_MEMBERSHIPS);
        self.lapsed.drain(..excess);
    }

    /// Takes what a lapsed membership with resume token digest `digest` released, for a
    /// newcomer whose link gives `link_role`, with the room's grace period. The role is told
    /// only if it differs.
    fn take_lapsed(&mut self, digest: &str, link_role: Role) -> Option<Released> {
        let index = self.lapsed.iter().position(|l| l.token == digest)?;
        let mut released = self.lapsed.remove(index).released;
        if released.role == Some(link_role) {
            released.role = None;
        }
        released.grace_secs = Some(u32::try_from(self.reconnect_grace_ms / 1000).unwrap_or(u32::MAX));
        Some(released)
    }

    /// Applies a command of member `me`. `Ok(false)` means valid but nothing changed.
    fn command(&mut self, me: &str, message: ClientMessage, now: u64) -> Result<bool, Refusal> {
        use ClientMessage as C;
        match message {
            C::Hello { .. } => Ok(false),
            C::EndMeeting {} => {
                self.require_leader(me)?;
                Ok(self.end("ended_by_leader"))
            }
            C::RaiseHand {} => self.raise_hand(me, now),
            C::LowerHand { member: None } => Ok(self.lower_hand(me)),
            C::LowerHand { member: Some(target) } => {
                if target != me {
                    self.require_leader(me)?;
                }
                self.require_member(&target)?;
                Ok(self.lower_hand(&target))
            }
            C::LowerAllHands {} => {
                self.require_leader(me)?;
                let changed = !self.queue.is_empty();
                self.queue.clear();
                Ok(changed)
            }
            C::YieldFloor {} => {
                if self.floor.as_ref().is_some_and(|t| t.member == me) {
                    self.end_turn(now);
                    Ok(true)
                } else {
                    Err(Refusal::new(ErrorCode::Conflict, Reason::NotFloorHolder))
                }
            }
            C::GrantFloor { member, .. } => {
                self.require_leader(me)?;
                self.require_member(&member)?;
                self.grant(&member, now)?;
                Ok(true)
            }
            C::NextSpeaker { .. } => {
                self.require_leader(me)?;
                let queue = self.ordered_queue();
                let candidates = queue.iter().filter_map(|(hand, _)| {
                    let member = self.members.get(&hand.member)?;
                    let seat = self.seat(&hand.member)?;
                    Some(Candidate { member: &hand.member, seat, status: self.status(&hand.member, member) })
                });
                // Hands passed over (a member reconnecting) keep their place.
                let Some(next) = rules::next_speaker(candidates, &self.stage()) else {
                    return Err(Refusal::new(ErrorCode::QueueEmpty, Reason::QueueEmpty));
                };
                self.grant(&next.member, now)?;
                Ok(true)
            }
            C::RevokeFloor {} => {
                self.require_leader(me)?;
                if self.floor.is_none() {
                    return Err(Refusal::new(ErrorCode::Conflict, Reason::FloorFree));
                }
                self.end_turn(now);
                Ok(true)
            }
            C::SetSpeakingLimit { seconds } => {
                self.require_leader(me)?;
                rules::check_speaking_limit(seconds)?;
                let changed = self.speaking_limit_secs != seconds;
                self.speaking_limit_secs = seconds;
                if let Some(turn) = &mut self.floor {
                    if turn.limit_secs != seconds {
                        turn.limit_secs = seconds;
                        // A new limit gets its own `time_up`.
                        turn.time_up_sent = false;
                        return Ok(true);
                    }
                }
                Ok(changed)
            }
            C::SetFairOrder { enabled } => {
                self.require_leader(me)?;
                Ok(std::mem::replace(&mut self.fair_order, enabled) != enabled)
            }
            C::SetPhaseReset { enabled } => {
                self.require_leader(me)?;
                Ok(std::mem::replace(&mut self.phase_reset, enabled) != enabled)
            }
            C::SetPhase { phase, duration_secs } => {
                self.require_leader(me)?;
                self.set_phase(phase, duration_secs, now)?;
                Ok(true)
            }
            C::PickPresenter { member } => {
                self.require_leader(me)?;
                if let Some(target) = &member {
                    self.require_member(target)?;
                    rules::may_present(&self.seat(target).expect("checked"))?;
                }
                let changed = self.presenter != member;
                self.presenter = member;
                self.push_back_presenter(now);
                Ok(changed)
            }
            C::SetRole { member, role } => {
                self.require_leader(me)?;
                self.require_member(&member)?;
                rules::may_change_role(member == me)?;
                let target = self.members.get_mut(&member).expect("checked");
                if target.role == role {
                    return Ok(false);
                }
                target.role = role;
                if role == Role::Observer {
                    self.lower_hand(&member);
                    if self.floor.as_ref().is_some_and(|t| t.member == member) {
                        self.end_turn(now);
                    }
                    if self.presenter.as_deref() == Some(&member) {
                        self.presenter = None;
                    }
                }
                Ok(true)
            }
            C::SetLobby { enabled } => {
                self.require_leader(me)?;
                let mut changed = std::mem::replace(&mut self.lobby, enabled) != enabled;
                if !enabled {
                    for member in self.members.values_mut().filter(|m| !m.admitted) {
                        member.admitted = true;
                        changed = true;
                    }
                }
                Ok(changed)
            }
            C::Admit { member } => {
                self.require_leader(me)?;
                self.require_waiting(&member)?;
                self.members.get_mut(&member).expect("checked").admitted = true;
                Ok(true)
            }
            C::AdmitAll {} => {
                self.require_leader(me)?;
                // Everyone waiting already counts towards the member limit (a newcomer over it
                // is refused before reaching the lobby), so admitting them all never exceeds it.
                let mut waiting = self.members.values_mut().filter(|m| !m.admitted).peekable();
                if waiting.peek().is_none() {
                    return Err(Refusal::new(ErrorCode::Conflict, Reason::NobodyWaiting));
                }
                waiting.for_each(|m| m.admitted = true);
                Ok(true)
            }
            C::Decline { member } => {
                self.require_leader(me)?;
                self.require_waiting(&member)?;
                self.revoke(&member);
                self.remove_member(&member, now);
                self.removed.insert(member, Removal::Declined);
                Ok(true)
            }
            C::LockBoard { locked } => {
                self.require_leader(me)?;
                Ok(std::mem::replace(&mut self.board_locked, locked) != locked)
            }
            C::Kick { member } => {
                self.require_leader(me)?;
                self.require_member(&member)?;
                rules::may_remove(member == me)?;
                self.revoke(&member);
                self.remove_member(&member, now);
                self.removed.insert(member, Removal::Kicked);
                Ok(true)
            }
            C::SetAway { away } => {
                let member = self.members.get_mut(me).expect("sender is a member");
                Ok(std::mem::replace(&mut member.away, away) != away)
            }
            C::SetSealedName { sealed_name } => self.set_sealed_name(me, sealed_name),
        }
    }

    /// Sealed rooms: member `me` sends their display name, sealed. The server cannot open it;
    /// it checks only that it is a sealed value.
    fn set_sealed_name(&mut self, me: &str, sealed_name: String) -> Result<bool, Refusal> {
        if !self.sealed {
            return Err(Refusal::new(ErrorCode::BadMessage, Reason::NotSealed));
        }
        if balint_proto::sealed::decode_value(&sealed_name, balint_proto::sealed::Kind::Name).is_err() {
            return Err(Refusal::new(ErrorCode::BadMessage, Reason::BadSealedValue));
        }
        let member = self.members.get_mut(me).expect("sender is a member");
        Ok(member.sealed_name.replace(sealed_name.clone()).as_ref() != Some(&sealed_name))
    }

    /// Sets the title: in clear in a plain room, sealed in a sealed one (`None` clears it).
    /// `Ok(false)` when it is the title already.
    pub fn set_title(&mut self, title: TitleChange) -> Result<bool, TitleError> {
        match (self.sealed, title) {
            (false, TitleChange::Clear(title)) => Ok(std::mem::replace(&mut self.title, title.clone()) != title),
            (true, TitleChange::Sealed(sealed)) => {
                if let Some(value) = &sealed {
                    balint_proto::sealed::decode_value(value, balint_proto::sealed::Kind::Title)
                        .map_err(|_| TitleError::NotSealedValue)?;
                }
                Ok(std::mem::replace(&mut self.sealed_title, sealed.clone()) != sealed)
            }
            (true, TitleChange::Clear(_)) => Err(TitleError::SealedRoom),
            (false, TitleChange::Sealed(_)) => Err(TitleError::PlainRoom),
        }
    }

    fn raise_hand(&mut self, me: &str, now: u64) -> Result<bool, Refusal> {
        rules::may_raise_hand(&self.seat(me).expect("sender is a member"), &self.stage())?;
        if self.queue.iter().any(|h| h.member == me) {
            return Ok(false);
        }
        let seq = self.bump_seq();
        self.queue.push(Hand { member: me.to_owned(), raised_at_ms: now, seq });
        Ok(true)
    }

    fn lower_hand(&mut self, member: &str) -> bool {
        let before = self.queue.len();
        self.queue.retain(|h| h.member != member);
        before != self.queue.len()
    }

    fn grant(&mut self, member: &str, now: u64) -> Result<(), Refusal> {
        rules::may_take_floor(&self.seat(member).expect("checked"), &self.stage())?;
        self.end_turn(now);
        self.lower_hand(member);
        let seq = self.bump_seq();
        let m = self.members.get_mut(member).expect("checked");
        m.turns += 1;
        m.spoke_in_phase = true;
        self.floor = Some(Turn {
            member: member.to_owned(),
            since_ms: now,
            limit_secs: self.speaking_limit_secs,
            time_up_sent: false,
            seq,
        });
        Ok(())
    }

    /// What the rules need to know of a member, when they are one.
    fn seat(&self, member_id: &str) -> Option<Seat> {
        self.members.get(member_id).map(|m| Seat {
            role: m.role,
            admitted: m.admitted,
            presenter: self.presenter.as_deref() == Some(member_id),
            connected: m.dropped_at_ms.is_none(),
        })
    }

    /// What the rules need to know of the room.
    fn stage(&self) -> Stage {
        Stage { phase: self.phase.name, board_locked: self.board_locked }
    }

    fn end_turn(&mut self, now: u64) {
        if let Some(turn) = self.floor.take() {
            if let Some(member) = self.members.get_mut(&turn.member) {
                member.speaking_ms += now.saturating_sub(turn.since_ms);
            }
        }
    }

    fn set_phase(&mut self, phase: Phase, duration_secs: Option<u32>, now: u64) -> Result<(), Refusal> {
        let duration = rules::phase_duration(self.template, phase, duration_secs)?;
        if self.phase_reset && phase != self.phase.name {
            // A new phase starts clean: no hands from the last one, and the floor free.
            self.queue.clear();
            self.end_turn(now);
        }
        self.phase = PhaseState { name: phase, started_at_ms: now, duration_secs: duration };
        for member in self.members.values_mut() {
            member.spoke_in_phase = false;
        }
        match phase {
            Phase::Reflection => self.push_back_presenter(now),
            Phase::Presentation | Phase::Response => {
                // The presenter speaks first; anyone else's turn ends.
                if self.floor.as_ref().is_some_and(|t| Some(&t.member) != self.presenter.as_ref()) {
                    self.end_turn(now);
                }
                if let Some(presenter) = self.presenter.clone() {
                    if self.floor.is_none() {
                        // A reconnecting presenter leaves the floor free for a leader to grant.
                        let _ = self.grant(&presenter, now);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// During reflection the presenter leaves the queue and the floor.
    fn push_back_presenter(&mut self, now: u64) {
        let Some(presenter) = self.presenter.clone() else { return };
        if !self.is_pushed_back(&presenter) {
            return;
        }
        self.lower_hand(&presenter);
        if self.floor.as_ref().is_some_and(|t| t.member == presenter) {
            self.end_turn(now);
        }
    }

    fn is_pushed_back(&self, member: &str) -> bool {
        self.seat(member).is_some_and(|seat| rules::pushed_back(&seat, &self.stage()))
    }

    fn remove_member(&mut self, member_id: &str, now: u64) {
        self.lower_hand(member_id);
        if self.floor.as_ref().is_some_and(|t| t.member == member_id) {
            self.end_turn(now);
        }
        if self.presenter.as_deref() == Some(member_id) {
            self.presenter = None;
        }
        self.members.remove(member_id);
    }

    fn require_leader(&self, member_id: &str) -> Result<(), Refusal> {
        match self.seat(member_id) {
            Some(seat) => rules::may_lead(&seat),
            None => Err(Refusal::new(ErrorCode::Forbidden, Reason::NotLeader)),
        }
    }

    fn require_member(&self, member_id: &str) -> Result<(), Refusal> {
        match self.members.get(member_id) {
            Some(m) if m.admitted => Ok(()),
            _ => Err(Refusal::new(ErrorCode::UnknownMember, Reason::UnknownMember)),
        }
    }

    fn require_waiting(&self, member_id: &str) -> Result<(), Refusal> {
        match self.members.get(member_id) {
            Some(m) if !m.admitted => Ok(()),
            _ => Err(Refusal::new(ErrorCode::UnknownMember, Reason::NotWaiting)),
        }
    }

    /// The queue in the order everyone sees ([`rules::order_queue`]): by time raised, and with
    /// fair order on, those who have not spoken in this phase first; each hand with the reason
    /// fair order moved it, if it did.
    fn ordered_queue(&self) -> Vec<(&Hand, Option<QueueMove>)> {
        let hands: Vec<RaisedHand> = self
            .queue
            .iter()
            .map(|h| RaisedHand {
                raised_at_ms: h.raised_at_ms,
                seq: h.seq,
                spoke_in_phase: self.members.get(&h.member).is_some_and(|m| m.spoke_in_phase),
            })
            .collect();
        rules::order_queue(&hands, self.fair_order).into_iter().map(|p| (&self.queue[p.hand], p.moved)).collect()
    }

    /// Advances timers: the speaking limit, presence and the reconnect grace. `live` says
    /// whether a member is connected anywhere.
    fn tick(&mut self, now: u64, live: impl Fn(&str) -> bool) -> bool {
        let mut changed = false;
        if let Some(turn) = &mut self.floor {
            if let Some(limit) = turn.limit_secs {
                if !turn.time_up_sent && now.saturating_sub(turn.since_ms) >= u64::from(limit) * 1000 {
                    turn.time_up_sent = true;
                    changed = true;
                }
            }
        }
        for (id, member) in self.members.iter_mut() {
            match (live(id), member.dropped_at_ms) {
                (true, Some(_)) => {
                    member.dropped_at_ms = None;
                    changed = true;
                }
                (false, None) => {
                    member.dropped_at_ms = Some(now);
                    changed = true;
                }
                _ => {}
            }
        }
        let grace = self.reconnect_grace_ms;
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.dropped_at_ms.is_some_and(|t| now.saturating_sub(t) >= grace))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.remember_lapsed(id);
            self.remove_member(id, now);
            changed = true;
        }
        changed | self.tick_meeting_length(now)
    }

    /// Ends an ephemeral meeting that stayed empty past its grace period or reached its
    /// maximum length. Persistent rooms keep their board; they never end by themselves.
    fn tick_meeting_length(&mut self, now: u64) -> bool {
        if !self.ephemeral || self.ended.is_some() {
            return false;
        }
        let Some(started) = self.started_at_ms else {
            if self.members.is_empty() {
                return false;
            }
            self.started_at_ms = Some(now);
            return true;
        };
        if now.saturating_sub(started) >= self.max_length_ms {
            return self.end("max_length");
        }
        let anyone_here = self.members.values().any(|m| m.dropped_at_ms.is_none());
        match (anyone_here, self.empty_since_ms) {
            (true, Some(_)) => {
                self.empty_since_ms = None;
                true
            }
            (false, None) => {
                self.empty_since_ms = Some(now);
                true
            }
            (false, Some(since)) if now.saturating_sub(since) >= self.empty_grace_ms => self.end("empty"),
            _ => false,
        }
    }

    /// When [`Shared::tick`] next has something to do, from this state alone (Unix ms; a time
    /// in the past means at once): a speaking limit's `time_up`, a dropped member's grace
    /// running out, and for an ephemeral meeting its start to record, its maximum length, and
    /// its empty grace (to start, stop or run out). `None`: nothing, until the state changes.
    /// Whether members are connected is not this state's to know (see [`Meeting::due`]).
    pub fn next_timer(&self) -> Option<u64> {
        let mut due = Earliest::default();
        if let Some(turn) = &self.floor {
            if let (Some(limit), false) = (turn.limit_secs, turn.time_up_sent) {
                due.at(turn.since_ms.saturating_add(u64::from(limit) * 1000));
            }
        }
        for member in self.members.values() {
            if let Some(dropped) = member.dropped_at_ms {
                due.at(dropped.saturating_add(self.reconnect_grace_ms));
            }
        }
        if self.ephemeral && self.ended.is_none() {
            match self.started_at_ms {
                None if !self.members.is_empty() => due.at(0),
                None => {}
                Some(started) => {
                    due.at(started.saturating_add(self.max_length_ms));
                    let anyone_here = self.members.values().any(|m| m.dropped_at_ms.is_none());
                    match (anyone_here, self.empty_since_ms) {
                        (true, Some(_)) | (false, None) => due.at(0),
                        (false, Some(since)) => due.at(since.saturating_add(self.empty_grace_ms)),
                        (true, None) => {}
                    }
                }
            }
        }
        due.get()
    }

    /// The room state at `version`, as a leader (`for_leader`) or anyone else sees it.
    pub fn state(&self, version: u64, for_leader: bool) -> RoomState {
        let mut admitted: Vec<(&String, &Member)> = self.members.iter().filter(|(_, m)| m.admitted).collect();
        admitted.sort_by_key(|(_, m)| m.arrival);
        let members = admitted
            .iter()
            .map(|(id, m)| MemberView {
                id: (*id).clone(),
                name: m.name.clone(),
                sealed_name: m.sealed_name.clone(),
                role: m.role,
                status: self.status(id, m),
                joined_at_ms: m.joined_at_ms,
            })
            .collect();
        let waiting = for_leader.then(|| {
            let mut waiting: Vec<(&String, &Member)> = self.members.iter().filter(|(_, m)| !m.admitted).collect();
            waiting.sort_by_key(|(_, m)| m.arrival);
            waiting
                .into_iter()
                .map(|(id, m)| Waiting { id: id.clone(), name: m.name.clone(), sealed_name: m.sealed_name.clone() })
                .collect()
        });
        let participation = for_leader.then(|| {
            admitted
                .iter()
                .map(|(id, m)| Participation { member: (*id).clone(), turns: m.turns, speaking_ms: m.speaking_ms })
                .collect()
        });
        RoomState {
            version,
            title: self.title.clone(),
            sealed_title: self.sealed_title.clone(),
            template: self.template,
            ephemeral: self.ephemeral,
            sealed: self.sealed,
            phase: self.phase.clone(),
            presenter: self.presenter.clone(),
            members,
            queue: self
                .ordered_queue()
                .into_iter()
                .map(|(h, moved)| QueueEntry { member: h.member.clone(), raised_at_ms: h.raised_at_ms, moved })
                .collect(),
            floor: self.floor.as_ref().map(|t| Floor {
                member: t.member.clone(),
                since_ms: t.since_ms,
                limit_secs: t.limit_secs,
            }),
            speaking_limit_secs: self.speaking_limit_secs,
            fair_order: self.fair_order,
            phase_reset: self.phase_reset,
            lobby: self.lobby,
            board_locked: self.board_locked,
            waiting,
            participation,
        }
    }

    fn status(&self, id: &str, member: &Member) -> Status {
        if member.dropped_at_ms.is_some() {
            Status::Reconnecting
        } else if self.is_pushed_back(id) {
            Status::OutsideCircle
        } else if member.away {
            Status::Away
        } else {
            Status::Here
        }
    }

    /// Whether `member_id` may write on the board now, and if not, why.
    fn may_write(&self, member_id: Option<&str>) -> Result<(), Refusal> {
        rules::may_write(member_id.and_then(|id| self.seat(id)).as_ref(), &self.stage())
    }
}

impl Meeting {
    /// A meeting that starts in the template's first phase at `now_ms`.
    pub fn new(settings: MeetingSettings, now_ms: u64) -> Self {
        Self::from_shared(Shared::new(settings, now_ms), 1)
    }

    /// This node's view of a meeting whose shared state is `shared` at `version`.
    pub fn from_shared(shared: Shared, version: u64) -> Self {
        Meeting {
            shared,
            version,
            connections: BTreeMap::new(),
            ids: Arc::new(RandomIds),
            told_time_up: Default::default(),
            changes: 0,
        }
    }

    /// Draws new member ids and resume tokens from `ids` from now on.
    pub fn with_ids(mut self, ids: Arc<dyn Ids>) -> Self {
        self.ids = ids;
        self
    }

    /// The shared state.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The version of the installed shared state.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Registers a connection that passed the link check. It joins as a member with its first
    /// message: `hello` (possibly resuming) or, for a stock Yjs client, its first binary frame.
    /// The link is taken to be of the room's current generation.
    pub fn connect(&mut self, conn: ConnId, link_role: Role, name: String) {
        self.connect_link(conn, link_role, self.shared.link_generation, name);
    }

    /// Registers a connection opened with a link of `link_role` and `link_generation`.
    pub fn connect_link(&mut self, conn: ConnId, link_role: Role, link_generation: u64, name: String) {
        self.changes += 1;
        let connection = Connection { link_role, link_generation, released: None, name, member: None, hello: false };
        self.connections.insert(conn, connection);
    }

    /// Whether `conn` is registered and has not been removed.
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.connections.contains_key(&conn)
    }

    /// Whether `conn` speaks for a member already.
    pub fn is_bound(&self, conn: ConnId) -> bool {
        self.connections.get(&conn).is_some_and(|c| c.member.is_some())
    }

    /// Plans binding a connection to a member: the one `resume` names, or a new one. Called
    /// with the connection's first message, and again when a bound connection says `hello`.
    /// A new member's arrival is dated `now_ms`.
    pub fn plan_bind(&self, conn: ConnId, hello: bool, resume: Option<&str>, now_ms: u64) -> Plan {
        let Some(connection) = self.connections.get(&conn) else { return Plan::default() };
        if let Some(member) = &connection.member {
            if hello && !connection.hello {
                // Recorded at install time; nothing shared changes.
                let binding = Binding { conn, member: member.clone(), hello, released: None };
                return Plan { binding: Some(binding), ..Plan::default() };
            }
            return Plan::default();
        }
        let closed = |code, reason| Plan { immediate: vec![Output::Close { conn, code, reason }], ..Plan::default() };
        let digest = resume.map(resume_digest);
        if digest.as_ref().is_some_and(|d| self.shared.revoked.contains(d)) {
            return closed(close::REMOVED, "removed by a leader");
        }
        let resumed = resume.and_then(|token| self.shared.member_by_resume(token));
        if resumed.is_none() {
            // A newcomer: the link must be of the room's current generation, unless it is a
            // leader's. Whoever resumes a membership carries on with the link they came with.
            if connection.link_role != Role::Leader && connection.link_generation < self.shared.link_generation {
                return closed(close::LINK_RENEWED, "this link was renewed; ask a leader for the new one");
            }
            if self.shared.members.len() >= self.shared.max_members {
                return closed(close::ROOM_FULL, "the room is full");
            }
        }
        let mut next = self.shared.clone();
        let mut released = None;
        let member = match resumed {
            Some(id) => {
                next.members.get_mut(&id).expect("found above").dropped_at_ms = None;
                id
            }
            None => {
                released = digest.and_then(|d| next.take_lapsed(&d, connection.link_role));
                next.add_member(connection.link_role, &connection.name, &*self.ids, now_ms)
            }
        };
        // Someone is here: an empty meeting's countdown starts over.
        next.empty_since_ms = None;
        Plan { next: Some(next), binding: Some(Binding { conn, member, hello, released }), immediate: Vec::new() }
    }

    /// Plans a renewal of the room's links: the link generation goes up by one, and invite
    /// and observer links issued before no longer let newcomers in.
    pub fn plan_renew_links(&self) -> Plan {
        let mut next = self.shared.clone();
        next.link_generation += 1;
        Plan { next: Some(next), ..Plan::default() }
    }

    /// Plans a room-protocol message from `conn`.
    pub fn plan_command(&self, conn: ConnId, message: ClientMessage, now_ms: u64) -> Plan {
        if let ClientMessage::Hello { resume } = &message {
            return self.plan_bind(conn, true, resume.as_deref(), now_ms);
        }
        // Someone waiting in the lobby may send their sealed name, so that the leaders can
        // tell who waits; nothing else.
        let from_lobby = matches!(message, ClientMessage::SetSealedName { .. });
        let member_id = match self.connections.get(&conn) {
            Some(Connection { member: Some(id), hello: true, .. })
                if self.shared.members.get(id).is_some_and(|m| m.admitted || from_lobby) =>
            {
                id
            }
            // Text frames go only to connections that said hello: a command before it closes
            // the connection, as any other text frame would.
            Some(Connection { hello: false, .. }) => {
                let reason = "expected a hello message";
                return Plan {
                    immediate: vec![Output::Close { conn, code: close::INVALID_TEXT, reason }],
                    ..Plan::default()
                };
            }
            Some(_) => return Plan::refused(conn, Refusal::new(ErrorCode::NotInRoom, Reason::InLobby)),
            None => return Plan::default(),
        };
        if let ClientMessage::GrantFloor { if_version: Some(seen), .. }
        | ClientMessage::NextSpeaker { if_version: Some(seen) } = &message
        {
            if self.shared.floor_version > *seen {
                return Plan::refused(conn, Refusal::new(ErrorCode::Conflict, Reason::FloorChanged));
            }
        }
        let mut next = self.shared.clone();
        match next.command(member_id, message, now_ms) {
            Ok(true) => {
                if next.floor != self.shared.floor {
                    next.floor_version = self.version + 1;
                }
                Plan { next: Some(next), ..Plan::default() }
            }
            Ok(false) => Plan::default(),
            Err(refusal) => Plan::refused(conn, refusal),
        }
    }

    /// Plans a new title (a leader's `PUT .../title`).
    pub fn plan_set_title(&self, title: &TitleChange) -> Result<Plan, TitleError> {
        let mut next = self.shared.clone();
        Ok(if next.set_title(title.clone())? { Plan { next: Some(next), ..Plan::default() } } else { Plan::default() })
    }

    /// Plans the end of the meeting, for `reason` (`ended_by_leader`, `deleted`, ...).
    pub fn plan_end(&self, reason: &str) -> Plan {
        let mut next = self.shared.clone();
        if next.end(reason) {
            Plan { next: Some(next), ..Plan::default() }
        } else {
            Plan::default()
        }
    }

    /// Forgets a closed connection. Returns the member it spoke for if that member has no
    /// other connection on this node.
    pub fn forget(&mut self, conn: ConnId) -> Option<String> {
        self.changes += 1;
        let member = self.connections.remove(&conn)?.member?;
        (!self.has_connection(&member)).then_some(member)
    }

    /// Plans the timers up to `now_ms`. `elsewhere` says whether a member is connected on
    /// another node.
    pub fn plan_tick(&self, now_ms: u64, elsewhere: impl Fn(&str) -> bool) -> Plan {
        let mut next = self.shared.clone();
        if next.tick(now_ms, |id| self.has_connection(id) || elsewhere(id)) {
            Plan { next: Some(next), ..Plan::default() }
        } else {
            Plan::default()
        }
    }

    /// Installs a shared state written at `version` (by this node or another) and the binding
    /// it was planned with, and returns what this node's connections must be told.
    pub fn install(&mut self, version: u64, next: Option<Shared>, binding: Option<Binding>) -> Vec<Output> {
        self.changes += 1;
        let mut out = Vec::new();
        let old = match next {
            Some(next) if version > self.version => {
                self.version = version;
                Some(std::mem::replace(&mut self.shared, next))
            }
            _ => None,
        };
        // The connection bound by this write is introduced and greeted here, once; the
        // comparison of states below must not take its arrival for an admission.
        let mut bound = None;
        if let Some(Binding { conn, member, hello, released }) = binding {
            if let Some(connection) = self.connections.get_mut(&conn) {
                bound = Some(conn);
                let newly_bound = connection.member.is_none();
                connection.member = Some(member.clone());
                connection.hello |= hello;
                if released.is_some() {
                    connection.released = released;
                }
                if hello {
                    out.extend(self.introduction(conn, &member));
                }
                if newly_bound && self.shared.members.get(&member).is_some_and(|m| m.admitted) {
                    out.push(Output::Greet { conn, full: false });
                }
            }
        }
        if let Some(old) = old {
            out.extend(self.reconcile(&old, bound));
        }
        out
    }

    /// What this node's connections must be told about the change from `old` to the current
    /// shared state.
    fn reconcile(&mut self, old: &Shared, bound: Option<ConnId>) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some(reason) = &self.shared.ended {
            if old.ended.is_none() {
                out.push(Output::End { reason: reason.clone() });
            }
            return out;
        }
        // Removals by a leader close the member's connections here.
        let removed: Vec<(ConnId, Removal)> = self
            .connections
            .iter()
            .filter_map(|(&conn, c)| Some((conn, self.shared.removed.get(c.member.as_ref()?)?)))
            .collect();
        for (conn, removal) in removed {
            self.connections.remove(&conn);
            out.push(Output::Close { conn, code: close::REMOVED, reason: removal.reason() });
        }
        // Admissions let the member's connections in.
        let admitted: Vec<(ConnId, String)> = self
            .connections
            .iter()
            .filter(|(&conn, _)| Some(conn) != bound)
            .filter_map(|(&conn, c)| {
                let id = c.member.as_ref()?;
                let now_in = self.shared.members.get(id).is_some_and(|m| m.admitted);
                let was_in = old.members.get(id).is_some_and(|m| m.admitted);
                (now_in && !was_in).then(|| (conn, id.clone()))
            })
            .collect();
        for (conn, member) in admitted {
            out.extend(self.introduction(conn, &member));
            out.push(Output::Greet { conn, full: true });
        }
        // A speaking limit passed.
        if let Some(turn) = &self.shared.floor {
            let already = old
                .floor
                .as_ref()
                .is_some_and(|t| t.seq == turn.seq && t.time_up_sent && t.limit_secs == turn.limit_secs);
            // This node's own memory as well: after a Redis restart, a record of another
            // lineage may show this turn without the flag for a while, then with it again.
            let told = (turn.seq, turn.member.clone(), turn.since_ms, turn.limit_secs);
            let already = already || self.told_time_up.contains(&told);
            if let (Some(limit), true, false) = (turn.limit_secs, turn.time_up_sent, already) {
                let event = ServerMessage::TimeUp { member: turn.member.clone(), limit_secs: limit };
                out.push(Output::Send(self.audience(|_| true), event));
                if self.told_time_up.len() == TOLD_TIME_UPS {
                    self.told_time_up.pop_front();
                }
                self.told_time_up.push_back(told);
            }
        }
        out.extend(self.snapshots());
        out
    }

    /// `welcome` for an admitted member, `waiting` for one in the lobby, sent only to a
    /// connection that said hello.
    fn introduction(&self, conn: ConnId, member_id: &str) -> Option<Output> {
        let connection = self.connections.get(&conn).filter(|c| c.hello)?;
        let member = self.shared.members.get(member_id)?;
        let message = if member.admitted {
            ServerMessage::Welcome {
                member_id: member_id.to_owned(),
                role: member.role,
                resume_token: member.resume_token.clone(),
                state: self.shared.state(self.version, member.role == Role::Leader),
                released: connection.released.clone(),
            }
        } else {
            ServerMessage::Waiting { member_id: member_id.to_owned(), resume_token: member.resume_token.clone() }
        };
        Some(Output::Send(Audience::one(conn), message))
    }

    /// The current state, for leaders and for everyone else on this node.
    fn snapshots(&self) -> Vec<Output> {
        let mut out = Vec::with_capacity(2);
        let leaders = self.audience(|r| r == Role::Leader);
        if !leaders.is_empty() {
            let state = self.shared.state(self.version, true);
            out.push(Output::Send(leaders, ServerMessage::State { state }));
        }
        let others = self.audience(|r| r != Role::Leader);
        if !others.is_empty() {
            let state = self.shared.state(self.version, false);
            out.push(Output::Send(others, ServerMessage::State { state }));
        }
        out
    }

    /// Admitted connections that said hello and match `filter` on their member's role.
    fn audience(&self, filter: impl Fn(Role) -> bool) -> Audience {
        Audience::of(
            self.connections
                .iter()
                .filter(|(_, c)| c.hello)
                .filter_map(|(&id, c)| {
                    let member = self.shared.members.get(c.member.as_ref()?)?;
                    (member.admitted && filter(member.role)).then_some(id)
                })
                .collect(),
        )
    }

    /// Applies a plan at once, as a single node with no other writer does.
    fn apply_locally(&mut self, plan: Plan) -> Vec<Output> {
        let mut out = plan.immediate;
        let version = if plan.next.is_some() { self.version + 1 } else { self.version };
        out.extend(self.install(version, plan.next, plan.binding));
        out
    }

    /// Binds a connection and applies the change at once (one node, no concurrent writer).
    pub fn bind(&mut self, conn: ConnId, hello: bool, resume: Option<&str>, now_ms: u64) -> Vec<Output> {
        let plan = self.plan_bind(conn, hello, resume, now_ms);
        self.apply_locally(plan)
    }

    /// Handles a room-protocol message and applies the change at once.
    pub fn handle(&mut self, conn: ConnId, message: ClientMessage, now_ms: u64) -> Vec<Output> {
        let plan = self.plan_command(conn, message, now_ms);
        self.apply_locally(plan)
    }

    /// A connection closed; applies the change at once. The member keeps everything for the
    /// grace period once their last connection is gone.
    pub fn disconnect(&mut self, conn: ConnId, now_ms: u64) -> Vec<Output> {
        if self.forget(conn).is_none() {
            return Vec::new();
        }
        let plan = self.plan_tick(now_ms, |_| false);
        self.apply_locally(plan)
    }

    /// Advances timers to `now_ms` and applies the change at once.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Output> {
        let plan = self.plan_tick(now_ms, |_| false);
        self.apply_locally(plan)
    }

    /// Whether `conn` may change the board now, and if not, why.
    pub fn can_write(&self, conn: ConnId) -> Result<(), Refusal> {
        self.shared.may_write(self.connections.get(&conn).and_then(|c| c.member.as_deref()))
    }

    /// Whether `conn` may see the board.
    pub fn can_read(&self, conn: ConnId) -> bool {
        self.connections.get(&conn).is_some_and(|c| self.reads(c))
    }

    /// Whether the connection `c` may see the board.
    fn reads(&self, c: &Connection) -> bool {
        c.member.as_ref().is_some_and(|id| self.shared.members.get(id).is_some_and(|m| m.admitted))
    }

    /// Whether `conn` opened the room protocol.
    pub fn said_hello(&self, conn: ConnId) -> bool {
        self.connections.get(&conn).is_some_and(|c| c.hello)
    }

    /// Connections that may see the board.
    pub fn board_audience(&self) -> Audience {
        Audience::of(self.connections.iter().filter(|(_, c)| self.reads(c)).map(|(&id, _)| id).collect())
    }

    /// Every registered connection that opened the room protocol.
    pub fn everyone_with_hello(&self) -> Vec<ConnId> {
        self.connections.iter().filter(|(_, c)| c.hello).map(|(&id, _)| id).collect()
    }

    /// Every registered connection.
    pub fn everyone(&self) -> Audience {
        Audience::of(self.connections.keys().copied().collect())
    }

    /// Members with a connection on this node.
    pub fn local_members(&self) -> Vec<String> {
        let mut members: Vec<String> = self.connections.values().filter_map(|c| c.member.clone()).collect();
        members.sort();
        members.dedup();
        members
    }

    /// The room state as a leader (`for_leader`) or anyone else sees it.
    pub fn state(&self, for_leader: bool) -> RoomState {
        self.shared.state(self.version, for_leader)
    }

    /// The member id a connection speaks for.
    pub fn member_of(&self, conn: ConnId) -> Option<&str> {
        self.connections.get(&conn)?.member.as_deref()
    }

    /// Whether no connection of this node is registered.
    pub fn has_no_connections(&self) -> bool {
        self.connections.is_empty()
    }

    /// A count that moves with every change of the shared state or of the connections.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The members shown present with no connection on this node.
    pub fn present_without_connection(&self) -> impl Iterator<Item = &str> {
        self.shared
            .members
            .iter()
            .filter(|(_, member)| member.dropped_at_ms.is_none())
            .map(|(id, _)| id.as_str())
            .filter(|id| !self.has_connection(id))
    }

    /// Whether `member` has a connection on this node.
    fn has_connection(&self, member: &str) -> bool {
        self.connections.values().any(|c| c.member.as_deref() == Some(member))
    }

    /// What the meeting's timers need now: see [`MeetingDue`]. It changes only when
    /// [`Meeting::changes`] does.
    pub fn due(&self) -> MeetingDue {
        let mut due = MeetingDue { timer: self.shared.next_timer(), ..MeetingDue::default() };
        due.local_members = self.connections.values().any(|c| c.member.is_some());
        for (id, member) in &self.shared.members {
            match (member.dropped_at_ms.is_none(), self.has_connection(id)) {
                (true, false) => due.present_elsewhere = true,
                (false, true) => due.local_shown_away = true,
                _ => {}
            }
        }
        due
    }
}

fn refuse(conn: ConnId, refusal: Refusal) -> Output {
    Output::Send(Audience::one(conn), ServerMessage::refused(refusal))
}

/// The digest by which a resume token is remembered once its membership is gone: never the
/// token itself, so a copy of the record cannot resume anyone.
fn resume_digest(token: &str) -> String {
    let digest = Sha256::new().chain_update(b"balint-room resume token\0").chain_update(token).finalize();
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

#[path = "record.rs"]
pub mod record;

#[cfg(test)]
#[path = "meeting_props.rs"]
pub(crate) mod props;
#[cfg(test)]
#[path = "meeting_tests.rs"]
mod tests;
