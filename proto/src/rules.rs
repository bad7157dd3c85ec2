//! The rules of a meeting, written once: who may write and why not, who may raise a hand or
//! hold the floor, what a leader may do to whom, the session templates with their phases and
//! suggested durations, and the reason of every refusal.
//!
//! Pure functions of small values ([`Seat`], [`Stage`]), with no state of their own. The server
//! enforces them (`server/src/room/meeting.rs`), the wasm client asks them to keep its editor
//! and controls honest (`client-wasm/src/session.rs`), and the web UI gets their answers from
//! the wasm client: no permission or template logic lives in JavaScript.
//!
//! Every refusal is a [`Refusal`]: the wire's [`ErrorCode`] (a coarse, stable class) and a
//! [`Reason`] (the specific, stable why). Both travel in the `error` message; the UI turns the
//! reason into a sentence of its catalogue, and [`Reason::message`] is the English sentence the
//! server puts in `message` for API users.

use serde::{Deserialize, Serialize};

use crate::room::{ErrorCode, Phase, QueueMove, Role, Status, Template};

/// Why something was refused: one stable code per distinct refusal. The wire name is the
/// snake_case of the variant (`presenter_in_reflection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The text frame was not a message of the room protocol.
    BadMessage,
    /// A board change from a connection that is not a member of the room (yet).
    NotJoined,
    /// The sender waits in the lobby; or the member named waits there.
    InLobby,
    /// Observers read along: they do not write, raise a hand or take the floor.
    Observer,
    /// An observer was picked as the presenter.
    ObserverCannotPresent,
    /// The presenter listens from outside the circle during reflection: no writing, no hand,
    /// no floor.
    PresenterInReflection,
    /// A leader locked the board: only leaders write.
    BoardLocked,
    /// The board reached its size limit.
    BoardFull,
    /// A leader command from someone who is not a leader.
    NotLeader,
    /// During the presentation only the presenter holds the floor.
    OnlyPresenterDuringPresentation,
    /// The member given the floor is reconnecting.
    Reconnecting,
    /// `next_speaker` found no raised hand that may take the floor now.
    QueueEmpty,
    /// `yield_floor` from someone who does not hold the floor.
    NotFloorHolder,
    /// `revoke_floor` while nobody holds the floor.
    FloorFree,
    /// `grant_floor` or `next_speaker` with an `if_version` older than the floor's last change.
    FloorChanged,
    /// A leader tried to change their own role.
    OwnRole,
    /// A leader tried to remove themselves.
    RemoveSelf,
    /// The member named is not in the room.
    UnknownMember,
    /// Nobody by the id named waits in the lobby.
    NotWaiting,
    /// `admit_all` while nobody waits in the lobby.
    NobodyWaiting,
    /// The phase is not part of the room's template.
    PhaseNotInTemplate,
    /// A phase duration outside one second to 24 hours.
    PhaseDuration,
    /// A speaking limit of zero seconds.
    SpeakingLimit,
    /// The room's shared state could not be written just now.
    Unavailable,
    /// The connection sends faster than allowed.
    RateLimited,
    /// `set_sealed_name` in a room that is not sealed: its names travel in clear.
    NotSealed,
    /// `set_sealed_name` with a value that is not a sealed value: base64url of a sequence
    /// number, a nonce and a ciphertext, at most [`crate::sealed::MAX_VALUE_CHARS`] characters.
    BadSealedValue,
}

impl Reason {
    /// Every reason, in the order of the documentation's table.
    pub const ALL: &'static [Reason] = &[
        Reason::BadMessage,
        Reason::NotJoined,
        Reason::InLobby,
        Reason::Observer,
        Reason::ObserverCannotPresent,
        Reason::PresenterInReflection,
        Reason::BoardLocked,
        Reason::BoardFull,
        Reason::NotLeader,
        Reason::OnlyPresenterDuringPresentation,
        Reason::Reconnecting,
        Reason::QueueEmpty,
        Reason::NotFloorHolder,
        Reason::FloorFree,
        Reason::FloorChanged,
        Reason::OwnRole,
        Reason::RemoveSelf,
        Reason::UnknownMember,
        Reason::NotWaiting,
        Reason::NobodyWaiting,
        Reason::PhaseNotInTemplate,
        Reason::PhaseDuration,
        Reason::SpeakingLimit,
        Reason::Unavailable,
        Reason::RateLimited,
        Reason::NotSealed,
        Reason::BadSealedValue,
    ];

    /// The reason's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadMessage => "bad_message",
            Reason::NotJoined => "not_joined",
            Reason::InLobby => "in_lobby",
            Reason::Observer => "observer",
            Reason::ObserverCannotPresent => "observer_cannot_present",
            Reason::PresenterInReflection => "presenter_in_reflection",
            Reason::BoardLocked => "board_locked",
            Reason::BoardFull => "board_full",
            Reason::NotLeader => "not_leader",
            Reason::OnlyPresenterDuringPresentation => "only_presenter_during_presentation",
            Reason::Reconnecting => "reconnecting",
            Reason::QueueEmpty => "queue_empty",
            Reason::NotFloorHolder => "not_floor_holder",
            Reason::FloorFree => "floor_free",
            Reason::FloorChanged => "floor_changed",
            Reason::OwnRole => "own_role",
            Reason::RemoveSelf => "remove_self",
            Reason::UnknownMember => "unknown_member",
            Reason::NotWaiting => "not_waiting",
            Reason::NobodyWaiting => "nobody_waiting",
            Reason::PhaseNotInTemplate => "phase_not_in_template",
            Reason::PhaseDuration => "phase_duration",
            Reason::SpeakingLimit => "speaking_limit",
            Reason::Unavailable => "unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::NotSealed => "not_sealed",
            Reason::BadSealedValue => "bad_sealed_value",
        }
    }

    /// The English sentence the server sends in `message`, for API users. It never quotes
    /// board content or names. User interfaces show a sentence of their own catalogue instead.
    pub fn message(self) -> &'static str {
        match self {
            Reason::BadMessage => "not a message of the room protocol",
            Reason::NotJoined => "join the room before writing",
            Reason::InLobby => "wait for a leader to admit you",
            Reason::Observer => "observers read along: they do not write, raise a hand or take the floor",
            Reason::ObserverCannotPresent => "an observer cannot present a case",
            Reason::PresenterInReflection => {
                "the presenter listens during reflection: no writing, no hand, no floor until the response"
            }
            Reason::BoardLocked => "a leader has locked the board",
            Reason::BoardFull => "the board has reached its size limit; the edit was not applied",
            Reason::NotLeader => "only a leader can do that",
            Reason::OnlyPresenterDuringPresentation => "during the presentation only the presenter holds the floor",
            Reason::Reconnecting => "that member is reconnecting",
            Reason::QueueEmpty => "no raised hand can take the floor now",
            Reason::NotFloorHolder => "you do not hold the floor",
            Reason::FloorFree => "nobody holds the floor",
            Reason::FloorChanged => "the floor changed since you looked; nothing was done",
            Reason::OwnRole => "a leader cannot change their own role",
            Reason::RemoveSelf => "a leader cannot remove themselves",
            Reason::UnknownMember => "no such member in the room",
            Reason::NotWaiting => "nobody by that id waits in the lobby",
            Reason::NobodyWaiting => "nobody waits in the lobby",
            Reason::PhaseNotInTemplate => "that phase is not part of this room's template",
            Reason::PhaseDuration => "a phase lasts between one second and 24 hours",
            Reason::SpeakingLimit => "a speaking limit must be at least one second",
            Reason::Unavailable => "the room is briefly unavailable; try again in a moment",
            Reason::RateLimited => "you are sending very fast; the room reads your changes more slowly",
            Reason::NotSealed => "this room is not sealed: its names travel in clear",
            Reason::BadSealedValue => "not a sealed value: base64url of a sequence number, a nonce and a ciphertext",
        }
    }
}

/// A refusal: the wire's error class and the specific reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The stable, coarse class of the `error` message.
    pub code: ErrorCode,
    /// Why, specifically.
    pub reason: Reason,
}

impl Refusal {
    /// A refusal of class `code` for `reason`.
    pub const fn new(code: ErrorCode, reason: Reason) -> Self {
        Refusal { code, reason }
    }

    /// The English sentence of the `error` message.
    pub fn message(self) -> &'static str {
        self.reason.message()
    }

    /// A refused board change: always `read_only` on the wire.
    const fn read_only(reason: Reason) -> Self {
        Refusal::new(ErrorCode::ReadOnly, reason)
    }
}

/// What the rules need to know of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    /// The member's role.
    pub role: Role,
    /// False while the member waits in the lobby.
    pub admitted: bool,
    /// Whether the member is the presenter of the current case.
    pub presenter: bool,
    /// Whether the member is connected somewhere (not reconnecting).
    pub connected: bool,
}

/// What the rules need to know of the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// The current phase.
    pub phase: Phase,
    /// Whether a leader locked the board.
    pub board_locked: bool,
}

/// Whether `seat` is pushed back: the presenter during reflection, outside the circle.
pub fn pushed_back(seat: &Seat, stage: &Stage) -> bool {
    seat.presenter && stage.phase == Phase::Reflection
}

/// Whether a member (`None`: a connection that is no member yet) may change the board now.
pub fn may_write(seat: Option<&Seat>, stage: &Stage) -> Result<(), Refusal> {
    let Some(seat) = seat else { return Err(Refusal::read_only(Reason::NotJoined)) };
    if !seat.admitted {
        Err(Refusal::read_only(Reason::InLobby))
    } else if seat.role == Role::Observer {
        Err(Refusal::read_only(Reason::Observer))
    } else if pushed_back(seat, stage) {
        Err(Refusal::read_only(Reason::PresenterInReflection))
    } else if stage.board_locked && seat.role != Role::Leader {
        Err(Refusal::read_only(Reason::BoardLocked))
    } else {
        Ok(())
    }
}

/// Whether a member may put their hand up now.
pub fn may_raise_hand(seat: &Seat, stage: &Stage) -> Result<(), Refusal> {
    if seat.role == Role::Observer {
        Err(Refusal::new(ErrorCode::Forbidden, Reason::Observer))
    } else if pushed_back(seat, stage) {
        Err(Refusal::new(ErrorCode::NotEligible, Reason::PresenterInReflection))
    } else {
        Ok(())
    }
}

/// Whether a member may hold the floor in this phase (whether or not they are connected).
pub fn may_hold_floor(seat: &Seat, stage: &Stage) -> Result<(), Refusal> {
    let not_eligible = |reason| Err(Refusal::new(ErrorCode::NotEligible, reason));
    if seat.role == Role::Observer {
        not_eligible(Reason::Observer)
    } else if !seat.admitted {
        not_eligible(Reason::InLobby)
    } else if pushed_back(seat, stage) {
        not_eligible(Reason::PresenterInReflection)
    } else if stage.phase == Phase::Presentation && !seat.presenter {
        not_eligible(Reason::OnlyPresenterDuringPresentation)
    } else {
        Ok(())
    }
}

/// Whether a member may be given the floor now: they may hold it, and they are connected.
pub fn may_take_floor(seat: &Seat, stage: &Stage) -> Result<(), Refusal> {
    may_hold_floor(seat, stage)?;
    if seat.connected {
        Ok(())
    } else {
        Err(Refusal::new(ErrorCode::NotEligible, Reason::Reconnecting))
    }
}

/// Whether a member may send leader commands.
pub fn may_lead(seat: &Seat) -> Result<(), Refusal> {
    if seat.role == Role::Leader {
        Ok(())
    } else {
        Err(Refusal::new(ErrorCode::Forbidden, Reason::NotLeader))
    }
}

/// Whether a member may be picked as the presenter.
pub fn may_present(seat: &Seat) -> Result<(), Refusal> {
    if seat.role == Role::Observer {
        Err(Refusal::new(ErrorCode::NotEligible, Reason::ObserverCannotPresent))
    } else {
        Ok(())
    }
}

/// Whether a leader may change the role of a member (`self_target`: their own).
pub fn may_change_role(self_target: bool) -> Result<(), Refusal> {
    if self_target {
        Err(Refusal::new(ErrorCode::Forbidden, Reason::OwnRole))
    } else {
        Ok(())
    }
}

/// Whether a leader may remove a member (`self_target`: themselves).
pub fn may_remove(self_target: bool) -> Result<(), Refusal> {
    if self_target {
        Err(Refusal::new(ErrorCode::Forbidden, Reason::RemoveSelf))
    } else {
        Ok(())
    }
}

/// What the queue order needs to know of one raised hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaisedHand {
    /// When it was raised (Unix milliseconds).
    pub raised_at_ms: u64,
    /// Breaks ties between hands raised in the same millisecond (the server's sequence).
    pub seq: u64,
    /// Whether its member has held the floor in the current phase.
    pub spoke_in_phase: bool,
}

/// One place of the ordered queue: which hand (an index into the hands given) and whether
/// fair order moved it away from its place by time raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The index of the hand in the slice given to [`order_queue`].
    pub hand: usize,
    /// Why fair order moved it, when it did.
    pub moved: Option<QueueMove>,
}

/// The queue in the order everyone sees: by time raised; with `fair_order` on, the hands of
/// members who have not spoken in this phase before those of members who have, each group by
/// time raised. A hand is [`QueueMove::Ahead`] when it comes before a hand raised earlier,
/// [`QueueMove::Behind`] when it comes after a hand raised later.
pub fn order_queue(hands: &[RaisedHand], fair_order: bool) -> Vec<Place> {
    let spoke = |h: &RaisedHand| fair_order && h.spoke_in_phase;
    let mut order: Vec<usize> = (0..hands.len()).collect();
    order.sort_by_key(|&i| (spoke(&hands[i]), hands[i].raised_at_ms, hands[i].seq));
    let raised = |i: usize| (hands[i].raised_at_ms, hands[i].seq);
    order
        .iter()
        .enumerate()
        .map(|(place, &hand)| {
            let ahead = order[place + 1..].iter().any(|&later| raised(later) < raised(hand));
            let behind = order[..place].iter().any(|&earlier| raised(earlier) > raised(hand));
            let moved = match (ahead, behind) {
                (true, _) => Some(QueueMove::Ahead),
                (false, true) => Some(QueueMove::Behind),
                (false, false) => None,
            };
            Place { hand, moved }
        })
        .collect()
}

/// One raised hand as [`next_speaker`] weighs it, in queue order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Whose hand.
    pub member: &'a str,
    /// Their seat.
    pub seat: Seat,
    /// Their presence, as the room state shows it.
    pub status: Status,
}

/// A hand that `next_speaker` passes over. It stays where it is in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Whose hand.
    pub member: String,
    /// Their presence (`reconnecting`, say).
    pub status: Status,
    /// Why they cannot take the floor now.
    pub reason: Reason,
}

/// Who `next_speaker` gives the floor to, and whom it passes over on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextSpeaker {
    /// The first hand in queue order that may take the floor now.
    pub member: String,
    /// The hands before it that may not (a member reconnecting, or anyone but the presenter
    /// during the presentation). They keep their place: the next `next_speaker` weighs them
    /// again.
    pub skipped: Vec<Skipped>,
}

/// The member `next_speaker` gives the floor to: the first hand of the queue (in order) that
/// may take the floor now ([`may_take_floor`]), with the hands it passes over. `None` when no
/// hand may. Members who marked themselves away are not passed over: away is their own word,
/// shown in the queue, and the leader decides.
pub fn next_speaker<'a>(queue: impl IntoIterator<Item = Candidate<'a>>, stage: &Stage) -> Option<NextSpeaker> {
    let mut skipped = Vec::new();
    for candidate in queue {
        match may_take_floor(&candidate.seat, stage) {
            Ok(()) => return Some(NextSpeaker { member: candidate.member.to_owned(), skipped }),
            Err(refusal) => skipped.push(Skipped {
                member: candidate.member.to_owned(),
                status: candidate.status,
                reason: refusal.reason,
            }),
        }
    }
    None
}

/// The longest a phase may be set to last, in seconds: 24 hours.
pub const MAX_PHASE_SECS: u32 = 24 * 3600;

/// The duration a phase of `template` is set to: `duration_secs` when given, else the phase's
/// suggested duration. Refused when the phase is not part of the template or the duration is
/// outside one second to [`MAX_PHASE_SECS`].
pub fn phase_duration(template: Template, phase: Phase, duration_secs: Option<u32>) -> Result<u32, Refusal> {
    if !template.phases().contains(&phase) {
        return Err(Refusal::new(ErrorCode::InvalidPhase, Reason::PhaseNotInTemplate));
    }
    let duration = duration_secs.unwrap_or_else(|| phase.suggested_secs());
    if !(1..=MAX_PHASE_SECS).contains(&duration) {
        return Err(Refusal::new(ErrorCode::BadMessage, Reason::PhaseDuration));
    }
    Ok(duration)
}

/// Whether a speaking limit may be set (`None` clears it).
pub fn check_speaking_limit(seconds: Option<u32>) -> Result<(), Refusal> {
    if seconds == Some(0) {
        Err(Refusal::new(ErrorCode::BadMessage, Reason::SpeakingLimit))
    } else {
        Ok(())
    }
}

impl Template {
    /// The phases of the template, in their usual order.
    pub fn phases(self) -> &'static [Phase] {
        match self {
            Template::Balint => &[
                Phase::Gathering,
                Phase::Presentation,
                Phase::Questions,
                Phase::Reflection,
                Phase::Response,
                Phase::Closing,
            ],
            Template::Open => &[Phase::Discussion],
        }
    }
}

impl Phase {
    /// The suggested duration, in seconds.
    pub fn suggested_secs(self) -> u32 {
        match self {
            Phase::Gathering => 5 * 60,
            Phase::Presentation => 10 * 60,
            Phase::Questions => 10 * 60,
            Phase::Reflection => 35 * 60,
            Phase::Response => 10 * 60,
            Phase::Closing => 10 * 60,
            Phase::Discussion => 90 * 60,
        }
    }
}

/// One phase of a template, as the UI lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhasePlan {
    /// The phase.
    pub phase: Phase,
    /// Its suggested duration, in seconds.
    pub suggested_secs: u32,
}

/// The phases of `template` with their suggested durations, in order.
pub fn template_plan(template: Template) -> Vec<PhasePlan> {
    template.phases().iter().map(|&phase| PhasePlan { phase, suggested_secs: phase.suggested_secs() }).collect()
}

/// Whether an action is allowed, and if not, why; what the UI needs to enable a control or say
/// why it is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// Why not, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

impl From<Result<(), Refusal>> for Verdict {
    fn from(result: Result<(), Refusal>) -> Self {
        match result {
            Ok(()) => Verdict { allowed: true, reason: None },
            Err(refusal) => Verdict { allowed: false, reason: Some(refusal.reason) },
        }
    }
}

/// What a member may do now themselves: the controls of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OwnActions {
    /// Write on the board.
    pub write: Verdict,
    /// Raise a hand (lowering one's own raised hand is always allowed).
    pub raise_hand: Verdict,
    /// Whether the hand control is shown at all: observers have none.
    pub hand_shown: bool,
    /// Give the floor back: only its holder.
    pub yield_floor: bool,
    /// Send leader commands (the leader panel).
    pub lead: bool,
}

/// What `seat` may do now, `holds_floor` telling whether they hold the floor.
pub fn own_actions(seat: &Seat, stage: &Stage, holds_floor: bool) -> OwnActions {
    OwnActions {
        write: may_write(Some(seat), stage).into(),
        raise_hand: may_raise_hand(seat, stage).into(),
        hand_shown: seat.role != Role::Observer,
        yield_floor: holds_floor,
        lead: may_lead(seat).is_ok(),
    }
}

/// Which leader actions apply to one member: the entries of that member's menu. All false
/// for a leader's menu of someone else when the viewer is not a leader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemberActions {
    /// Give them the floor (not to an observer, nor to the holder).
    pub grant_floor: bool,
    /// Pick them as the presenter.
    pub make_presenter: bool,
    /// Clear the pick of them as the presenter.
    pub clear_presenter: bool,
    /// Make them a co-leader.
    pub make_leader: bool,
    /// Make them a member.
    pub make_member: bool,
    /// Make them an observer.
    pub make_observer: bool,
    /// Lower their raised hand.
    pub lower_hand: bool,
    /// Remove them from the meeting.
    pub kick: bool,
}

/// The facts about one target member that decide a leader's menu for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Their seat.
    pub seat: Seat,
    /// Whether the target is the viewer themselves.
    pub is_self: bool,
    /// Whether they hold the floor.
    pub holds_floor: bool,
    /// Whether their hand is up.
    pub hand_raised: bool,
}

/// The leader actions `viewer` may take on `target`.
pub fn member_actions(viewer: &Seat, target: &Target) -> MemberActions {
    if may_lead(viewer).is_err() {
        return MemberActions::default();
    }
    let seat = &target.seat;
    MemberActions {
        grant_floor: seat.role != Role::Observer && !target.holds_floor,
        make_presenter: may_present(seat).is_ok() && !seat.presenter,
        clear_presenter: seat.presenter,
        make_leader: may_change_role(target.is_self).is_ok() && seat.role != Role::Leader,
        make_member: may_change_role(target.is_self).is_ok() && seat.role != Role::Member,
        make_observer: may_change_role(target.is_self).is_ok() && seat.role != Role::Observer,
        lower_hand: target.hand_raised,
        kick: may_remove(target.is_self).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const MEMBER: Seat = Seat { role: Role::Member, admitted: true, presenter: false, connected: true };

    fn stage(phase: Phase) -> Stage {
        Stage { phase, board_locked: false }
    }

    fn reason<T>(result: Result<T, Refusal>) -> Option<Reason> {
        result.err().map(|r| r.reason)
    }

    #[test]
    fn who_may_write_and_why_not() {
        let questions = stage(Phase::Questions);
        assert_eq!(may_write(Some(&MEMBER), &questions), Ok(()));
        assert_eq!(reason(may_write(None, &questions)), Some(Reason::NotJoined));
        let waiting = Seat { admitted: false, ..MEMBER };
        assert_eq!(reason(may_write(Some(&waiting), &questions)), Some(Reason::InLobby));
        let observer = Seat { role: Role::Observer, ..MEMBER };
        assert_eq!(reason(may_write(Some(&observer), &questions)), Some(Reason::Observer));
        let presenter = Seat { presenter: true, ..MEMBER };
        assert_eq!(may_write(Some(&presenter), &questions), Ok(()));
        assert_eq!(reason(may_write(Some(&presenter), &stage(Phase::Reflection))), Some(Reason::PresenterInReflection));
        let locked = Stage { board_locked: true, ..questions };
        assert_eq!(reason(may_write(Some(&MEMBER), &locked)), Some(Reason::BoardLocked));
        let leader = Seat { role: Role::Leader, ..MEMBER };
        assert_eq!(may_write(Some(&leader), &locked), Ok(()), "leaders write on a locked board");
        // Every board refusal is `read_only` on the wire.
        assert_eq!(may_write(Some(&observer), &questions).unwrap_err().code, ErrorCode::ReadOnly);
    }

    #[test]
    fn hands_and_the_floor() {
        let observer = Seat { role: Role::Observer, ..MEMBER };
        let presenter = Seat { presenter: true, ..MEMBER };
        let reflection = stage(Phase::Reflection);
        let presentation = stage(Phase::Presentation);
        assert_eq!(may_raise_hand(&MEMBER, &reflection), Ok(()));
        assert_eq!(
            may_raise_hand(&observer, &reflection).unwrap_err(),
            Refusal::new(ErrorCode::Forbidden, Reason::Observer)
        );
        assert_eq!(reason(may_raise_hand(&presenter, &reflection)), Some(Reason::PresenterInReflection));

        assert_eq!(reason(may_hold_floor(&observer, &presentation)), Some(Reason::Observer));
        assert_eq!(reason(may_hold_floor(&Seat { admitted: false, ..MEMBER }, &reflection)), Some(Reason::InLobby));
        assert_eq!(reason(may_hold_floor(&presenter, &reflection)), Some(Reason::PresenterInReflection));
        assert_eq!(reason(may_hold_floor(&MEMBER, &presentation)), Some(Reason::OnlyPresenterDuringPresentation));
        assert_eq!(may_hold_floor(&presenter, &presentation), Ok(()));
        let away = Seat { connected: false, ..presenter };
        assert_eq!(may_hold_floor(&away, &presentation), Ok(()), "a dropped member keeps the floor");
        assert_eq!(reason(may_take_floor(&away, &presentation)), Some(Reason::Reconnecting));
        for refusal in [may_hold_floor(&observer, &presentation), may_take_floor(&away, &presentation)] {
            assert_eq!(refusal.unwrap_err().code, ErrorCode::NotEligible);
        }
    }

    #[test]
    fn leaders_and_their_commands() {
        assert_eq!(reason(may_lead(&MEMBER)), Some(Reason::NotLeader));
        assert_eq!(may_lead(&Seat { role: Role::Leader, ..MEMBER }), Ok(()));
        assert_eq!(reason(may_present(&Seat { role: Role::Observer, ..MEMBER })), Some(Reason::ObserverCannotPresent));
        assert_eq!(reason(may_change_role(true)), Some(Reason::OwnRole));
        assert_eq!(reason(may_remove(true)), Some(Reason::RemoveSelf));
        assert_eq!(may_change_role(false).and(may_remove(false)), Ok(()));
        assert_eq!(reason(check_speaking_limit(Some(0))), Some(Reason::SpeakingLimit));
        assert_eq!(check_speaking_limit(None).and(check_speaking_limit(Some(60))), Ok(()));
    }

    #[test]
    fn templates_phases_and_durations() {
        assert_eq!(phase_duration(Template::Balint, Phase::Reflection, None), Ok(35 * 60));
        assert_eq!(phase_duration(Template::Balint, Phase::Reflection, Some(90)), Ok(90));
        assert_eq!(reason(phase_duration(Template::Open, Phase::Reflection, None)), Some(Reason::PhaseNotInTemplate));
        assert_eq!(reason(phase_duration(Template::Balint, Phase::Discussion, None)), Some(Reason::PhaseNotInTemplate));
        assert_eq!(reason(phase_duration(Template::Open, Phase::Discussion, Some(0))), Some(Reason::PhaseDuration));
        assert_eq!(
            reason(phase_duration(Template::Open, Phase::Discussion, Some(MAX_PHASE_SECS + 1))),
            Some(Reason::PhaseDuration)
        );
        let plan = template_plan(Template::Balint);
        assert_eq!(plan.len(), 6);
        assert_eq!(plan[0], PhasePlan { phase: Phase::Gathering, suggested_secs: 300 });
        assert_eq!(
            serde_json::to_value(template_plan(Template::Open)).unwrap(),
            serde_json::json!([{"phase": "discussion", "suggested_secs": 5400}])
        );
    }

    #[test]
    fn the_action_matrix() {
        let reflection = stage(Phase::Reflection);
        let presenter = Seat { presenter: true, ..MEMBER };
        let own = own_actions(&presenter, &reflection, false);
        assert!(!own.write.allowed && !own.raise_hand.allowed && own.hand_shown && !own.lead && !own.yield_floor);
        assert_eq!(own.raise_hand.reason, Some(Reason::PresenterInReflection));
        assert_eq!(
            serde_json::to_value(own.write).unwrap(),
            serde_json::json!({"allowed": false, "reason": "presenter_in_reflection"})
        );
        let observer = own_actions(&Seat { role: Role::Observer, ..MEMBER }, &reflection, false);
        assert!(!observer.hand_shown);
        let leader = Seat { role: Role::Leader, ..MEMBER };
        assert!(own_actions(&leader, &reflection, true).lead);
        assert!(own_actions(&leader, &reflection, true).yield_floor);

        let target = Target { seat: MEMBER, is_self: false, holds_floor: false, hand_raised: true };
        assert_eq!(member_actions(&MEMBER, &target), MemberActions::default(), "a member has no leader menu");
        let menu = member_actions(&leader, &target);
        assert!(menu.grant_floor && menu.make_presenter && !menu.clear_presenter && menu.lower_hand && menu.kick);
        assert!(menu.make_leader && !menu.make_member && menu.make_observer);
        let own_menu = member_actions(&leader, &Target { seat: leader, is_self: true, ..target });
        assert!(!own_menu.kick && !own_menu.make_member && !own_menu.make_observer && !own_menu.make_leader);
        let observer_target = Target { seat: Seat { role: Role::Observer, ..MEMBER }, ..target };
        let menu = member_actions(&leader, &observer_target);
        assert!(!menu.grant_floor && !menu.make_presenter && menu.make_member);
    }

    fn hand(raised_at_ms: u64, spoke_in_phase: bool) -> RaisedHand {
        RaisedHand { raised_at_ms, seq: raised_at_ms, spoke_in_phase }
    }

    #[test]
    fn fair_order_says_which_hands_it_moved() {
        // Ann raised first but spoke already; Ben and Cy have not spoken.
        let hands = [hand(10, true), hand(20, false), hand(30, false)];
        let order = |fair| order_queue(&hands, fair).iter().map(|p| (p.hand, p.moved)).collect::<Vec<_>>();
        assert_eq!(order(false), [(0, None), (1, None), (2, None)], "by time raised, nothing moved");
        assert_eq!(
            order(true),
            [(1, Some(QueueMove::Ahead)), (2, Some(QueueMove::Ahead)), (0, Some(QueueMove::Behind))]
        );
        // Nobody moves when the hands that spoke were raised last anyway.
        let hands = [hand(10, false), hand(20, true), hand(30, true)];
        assert!(order_queue(&hands, true).iter().all(|p| p.moved.is_none()));
        // Ties in the same millisecond are broken by the sequence.
        let first = RaisedHand { raised_at_ms: 5, seq: 2, spoke_in_phase: false };
        let hands = [first, RaisedHand { seq: 1, ..first }];
        assert_eq!(order_queue(&hands, true)[0].hand, 1);
        assert_eq!(
            serde_json::to_value([QueueMove::Ahead, QueueMove::Behind]).unwrap(),
            serde_json::json!(["ahead", "behind"])
        );
    }

    #[test]
    fn next_speaker_passes_over_those_who_cannot_speak_and_says_so() {
        let away = Seat { connected: false, ..MEMBER };
        let questions = stage(Phase::Questions);
        let queue = [
            Candidate { member: "ann", seat: away, status: Status::Reconnecting },
            Candidate { member: "ben", seat: MEMBER, status: Status::Away },
            Candidate { member: "cy", seat: MEMBER, status: Status::Here },
        ];
        let next = next_speaker(queue, &questions).unwrap();
        assert_eq!(next.member, "ben", "an away member is not passed over");
        assert_eq!(
            next.skipped,
            [Skipped { member: "ann".into(), status: Status::Reconnecting, reason: Reason::Reconnecting }]
        );
        assert_eq!(
            serde_json::to_value(&next).unwrap(),
            serde_json::json!({"member": "ben", "skipped": [
                {"member": "ann", "status": "reconnecting", "reason": "reconnecting"}]})
        );
        // During the presentation only the presenter may speak.
        let presenter = Seat { presenter: true, ..MEMBER };
        let queue = [
            Candidate { member: "cy", seat: MEMBER, status: Status::Here },
            Candidate { member: "pat", seat: presenter, status: Status::Here },
        ];
        let next = next_speaker(queue, &stage(Phase::Presentation)).unwrap();
        assert_eq!(next.member, "pat");
        assert_eq!(next.skipped[0].reason, Reason::OnlyPresenterDuringPresentation);
        assert_eq!(next_speaker(queue[..1].iter().copied(), &stage(Phase::Presentation)), None);
        assert_eq!(next_speaker([], &questions), None);
    }

    #[test]
    fn reasons_have_distinct_stable_names_and_messages() {
        let mut names = HashSet::new();
        let mut messages = HashSet::new();
        for &reason in Reason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), serde_json::Value::from(reason.as_str()));
            assert!(names.insert(reason.as_str()), "{reason:?}");
            assert!(messages.insert(reason.message()), "{reason:?}");
        }
        // ALL is complete: a variant missing from it would have no name in the table above.
        let probe = serde_json::from_str::<Reason>("\"no_such_reason\"");
        assert!(probe.is_err());
        assert_eq!(Reason::ALL.len(), 27);
    }
}
