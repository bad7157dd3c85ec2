//! The room protocol, spoken on text frames.
//!
//! Every message is a JSON object tagged by `"type"`. The server sends text frames only to a
//! connection that opened with [`ClientMessage::Hello`], so stock Yjs clients never see them.
//! `docs/PROTOCOL.md` documents each message with an example.
//!
//! State travels as **snapshots**: after every change the server sends the whole
//! [`RoomState`], with a `version` that grows by one per change. A room's state is small (at
//! most a few dozen members), so a snapshot costs little, and it makes every client's view
//! identical by construction: there is no event a client could miss or apply twice, and a
//! reconnecting client needs nothing but the latest snapshot. Things that happen rather than
//! change state (`time_up`, `ended`, `error`) are events.

use serde::{Deserialize, Serialize};

use crate::rules::{Reason, Refusal};

/// How often the server sends [`ServerMessage::Heartbeat`] to a connection that said `hello`
/// and has been sent nothing else meanwhile, in milliseconds.
pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;

/// A client that has heard nothing from the server for this long takes the connection for
/// stalled, shows "reconnecting" and opens a new one: three heartbeats were missed.
pub const SILENCE_LIMIT_MS: u64 = 3 * HEARTBEAT_INTERVAL_MS;

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest room title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// Why a display name or a title breaks the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// An empty name (after trimming).
    #[error("the name must not be empty")]
    Empty,
    /// Longer than the limit.
    #[error("too long")]
    TooLong,
    /// A control character (a line break, say).
    #[error("must not contain control characters")]
    Control,
}

/// Checks a display name, trimmed: 1 to [`MAX_NAME_CHARS`] characters, no control characters.
/// The server checks names given in clear with it, and clients check the names they open in a
/// sealed room with it too.
pub fn check_name(name: &str) -> Result<&str, TextError> {
    let name = name.trim();
    match name.chars().count() {
        0 => Err(TextError::Empty),
        n if n > MAX_NAME_CHARS => Err(TextError::TooLong),
        _ if name.chars().any(char::is_control) => Err(TextError::Control),
        _ => Ok(name),
    }
}

/// Checks a room title, trimmed: at most [`MAX_TITLE_CHARS`] characters, no control characters.
/// An empty title is no title (`None`).
pub fn check_title(title: &str) -> Result<Option<&str>, TextError> {
    let title = title.trim();
    if title.chars().count() > MAX_TITLE_CHARS {
        Err(TextError::TooLong)
    } else if title.chars().any(char::is_control) {
        Err(TextError::Control)
    } else {
        Ok((!title.is_empty()).then_some(title))
    }
}

/// A member's role in the room. The presenter is not a role but a pick: see
/// [`RoomState::presenter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Created the room or was promoted (a co-leader has the same powers); runs the meeting.
    Leader,
    /// Joined through the invite link.
    Member,
    /// May read the board, may not write or take the floor.
    Observer,
}

impl Role {
    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Member => "member",
            Role::Observer => "observer",
        }
    }
}

/// The session template of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// Gathering, presentation, questions, reflection, response, closing.
    #[default]
    Balint,
    /// One discussion phase, for groups that run without the Balint structure.
    Open,
}

/// A phase of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The leader asks who has a case and picks the presenter.
    Gathering,
    /// Only the presenter holds the floor.
    Presentation,
    /// Members ask factual questions; the presenter answers.
    Questions,
    /// The presenter is pushed back: listens, cannot speak, raise a hand or write.
    Reflection,
    /// The presenter returns and gets the floor first.
    Response,
    /// A short reflection on the session itself.
    Closing,
    /// The single phase of the open template.
    Discussion,
}

impl Phase {
    /// The phase's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Gathering => "gathering",
            Phase::Presentation => "presentation",
            Phase::Questions => "questions",
            Phase::Reflection => "reflection",
            Phase::Response => "response",
            Phase::Closing => "closing",
            Phase::Discussion => "discussion",
        }
    }
}

/// A message from a client.
///
/// Variants without fields are written as empty struct variants, so that `deny_unknown_fields`
/// refuses extra fields on them too (serde ignores extras on internally tagged unit variants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Opens the room protocol on this connection. `resume` continues an earlier membership
    /// (another tab, or a reconnect within the grace period).
    Hello {
        /// The resume token from an earlier `welcome`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    /// Puts the sender's hand up, at the end of the queue.
    RaiseHand {},
    /// Lowers a hand: the sender's own, or (leaders only) `member`'s.
    LowerHand {
        /// Whose hand; the sender's when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<String>,
    },
    /// Leader: lowers every hand.
    LowerAllHands {},
    /// The floor holder gives the floor back.
    YieldFloor {},
    /// Leader: gives the floor to `member`.
    GrantFloor {
        /// Who gets the floor.
        member: String,
        /// The state version the leader was looking at. When given, the command is refused
        /// with `conflict` if the floor changed after it: two leaders clicking at the same
        /// moment give the floor once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<u64>,
    },
    /// Leader: gives the floor to the head of the queue.
    NextSpeaker {
        /// As for `grant_floor`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<u64>,
    },
    /// Leader: takes the floor back from its holder.
    RevokeFloor {},
    /// Leader: sets or clears the speaking-time limit of a turn.
    SetSpeakingLimit {
        /// Seconds per turn; `null` clears the limit.
        seconds: Option<u32>,
    },
    /// Leader: turns fair order on or off.
    SetFairOrder {
        /// Whether those who have not spoken in this phase go first.
        enabled: bool,
    },
    /// Leader: turns the phase reset on or off. While it is on (the default), moving to a
    /// different phase lowers every hand and ends the current turn, the presenter's too.
    SetPhaseReset {
        /// Whether a phase change starts with no hands up and the floor free.
        enabled: bool,
    },
    /// Leader: moves to a phase of the room's template.
    SetPhase {
        /// The phase.
        phase: Phase,
        /// Overrides the suggested duration.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_secs: Option<u32>,
    },
    /// Leader: picks the presenter of the current case, or clears the pick.
    PickPresenter {
        /// The presenter; `null` clears.
        member: Option<String>,
    },
    /// Leader: changes a member's role (promote to co-leader, demote, make observer).
    SetRole {
        /// Whose role.
        member: String,
        /// The new role.
        role: Role,
    },
    /// Leader: turns the lobby on or off. Turning it off admits everyone waiting.
    SetLobby {
        /// Whether newcomers wait for admission.
        enabled: bool,
    },
    /// Leader: admits someone waiting in the lobby.
    Admit {
        /// Who.
        member: String,
    },
    /// Leader: admits everyone waiting in the lobby at once. Refused with `nobody_waiting`
    /// when the lobby is empty.
    AdmitAll {},
    /// Leader: turns away someone waiting in the lobby.
    Decline {
        /// Who.
        member: String,
    },
    /// Leader: makes the board read-only for everyone but the leaders, or writable again.
    LockBoard {
        /// Whether the board is locked.
        locked: bool,
    },
    /// Leader: removes a member; their resume token stops working.
    Kick {
        /// Who.
        member: String,
    },
    /// Leader: ends the meeting for everyone. The UI asks for confirmation first.
    EndMeeting {},
    /// Marks the sender as away (or back).
    SetAway {
        /// Whether the sender is away.
        away: bool,
    },
    /// Sealed rooms: the sender's display name, sealed (`docs/PROTOCOL.md` §13). Also from
    /// someone waiting in the lobby, so that the leaders can tell who waits.
    SetSealedName {
        /// The sealed value (see [`crate::sealed::decode_value`]).
        sealed_name: String,
    },
}

/// A member's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Connected.
    Here,
    /// Dropped; keeps identity, role, queue place and floor for the grace period.
    Reconnecting,
    /// Connected but marked away.
    Away,
    /// The presenter during reflection: listening, pushed back.
    OutsideCircle,
}

/// One member as everyone sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Stable member id.
    pub id: String,
    /// Display name; empty in a sealed room, whose names travel sealed.
    pub name: String,
    /// Sealed rooms: the display name, sealed by the member, once they sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_name: Option<String>,
    /// Role.
    pub role: Role,
    /// Presence.
    pub status: Status,
    /// When the member first arrived in this meeting (Unix milliseconds); a reconnect within
    /// the grace period keeps it. 0 when unknown (a member who arrived before servers kept
    /// it, in a room whose start was not recorded either).
    #[serde(default)]
    pub joined_at_ms: u64,
}

/// One raised hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Whose hand.
    pub member: String,
    /// When it was raised (Unix milliseconds).
    pub raised_at_ms: u64,
    /// Set when fair order moved this hand away from its place by time raised, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<QueueMove>,
}

/// Why fair order moved a hand away from its place by time raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueMove {
    /// Put before hands raised earlier: this member has not spoken in this phase yet, and they
    /// have.
    Ahead,
    /// Put after hands raised later: this member has spoken in this phase already, and they
    /// have not.
    Behind,
}

/// Who holds the floor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    /// The speaker.
    pub member: String,
    /// When the turn started (Unix milliseconds); clients render the speaking timer from it.
    pub since_ms: u64,
    /// The turn's limit, if any.
    pub limit_secs: Option<u32>,
}

/// The current phase and its countdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseState {
    /// The phase.
    pub name: Phase,
    /// When it started (Unix milliseconds).
    pub started_at_ms: u64,
    /// Its planned duration; the countdown ends at `started_at_ms + duration_secs * 1000`.
    pub duration_secs: u32,
}

/// Someone waiting in the lobby (leaders only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Their member id, for `admit` and `decline`.
    pub id: String,
    /// Display name; empty in a sealed room.
    pub name: String,
    /// Sealed rooms: the display name, sealed, once they sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_name: Option<String>,
}

/// Participation of one member in the meeting (leaders only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participation {
    /// The member.
    pub member: String,
    /// Turns taken.
    pub turns: u32,
    /// Total speaking time of finished turns, in milliseconds. The current turn's time runs
    /// from `floor.since_ms`.
    pub speaking_ms: u64,
}

/// The whole room state, as sent in `welcome` and `state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomState {
    /// Grows by one with every change.
    pub version: u64,
    /// The room's title; none in a sealed room, whose title travels sealed.
    pub title: Option<String>,
    /// Sealed rooms: the title, sealed by a leader's client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_title: Option<String>,
    /// The template.
    pub template: Template,
    /// Whether the meeting leaves nothing behind.
    pub ephemeral: bool,
    /// Whether the board, the names and the title travel sealed (`docs/PROTOCOL.md` §13).
    #[serde(default)]
    pub sealed: bool,
    /// The current phase.
    pub phase: PhaseState,
    /// The presenter of the current case.
    pub presenter: Option<String>,
    /// Members present or reconnecting, in order of arrival.
    pub members: Vec<MemberView>,
    /// Raised hands in queue order, identical for everyone.
    pub queue: Vec<QueueEntry>,
    /// Who holds the floor.
    pub floor: Option<Floor>,
    /// The limit applied to each turn.
    pub speaking_limit_secs: Option<u32>,
    /// Whether those who have not spoken in this phase go first.
    pub fair_order: bool,
    /// Whether a phase change lowers every hand and frees the floor (on by default). A state
    /// without the field reads as on.
    #[serde(default = "default_phase_reset")]
    pub phase_reset: bool,
    /// Whether newcomers wait for admission.
    pub lobby: bool,
    /// Whether the board is read-only for non-leaders.
    pub board_locked: bool,
    /// Who waits in the lobby. Sent to leaders only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Vec<Waiting>>,
    /// Turns and speaking time per member. Sent to leaders only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participation: Option<Vec<Participation>>,
}

fn default_phase_reset() -> bool {
    true
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to `hello` once the member is in the room.
    Welcome {
        /// This member's id, stable across reconnects with the resume token.
        member_id: String,
        /// The member's role.
        role: Role,
        /// Secret that continues this membership from another tab or after a drop.
        resume_token: String,
        /// The whole room state.
        state: RoomState,
        /// Set when the `hello` carried the resume token of a membership that lapsed: the
        /// member came back after the reconnect grace period, joined as a new member, and this
        /// says what the old membership held and was released.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        released: Option<Released>,
    },
    /// The answer to `hello` while the lobby holds the member; `welcome` follows admission.
    Waiting {
        /// This member's id.
        member_id: String,
        /// Secret that keeps the place in the lobby across a reconnect.
        resume_token: String,
    },
    /// Sent to a connection that said `hello` when nothing else was sent to it for
    /// [`HEARTBEAT_INTERVAL_MS`], so that the client can tell a quiet room from a stalled
    /// network. It carries nothing.
    Heartbeat {},
    /// The room state changed.
    State {
        /// The new state.
        state: RoomState,
    },
    /// The floor holder passed the speaking-time limit. Nobody is cut off.
    TimeUp {
        /// The speaker.
        member: String,
        /// The limit that passed.
        limit_secs: u32,
    },
    /// The meeting has ended; a close with code 4410 follows.
    Ended {
        /// Why: `ended_by_leader`, `empty`, `max_length` or `deleted`.
        reason: String,
    },
    /// A refused command or frame. Nothing changed.
    Error {
        /// A stable, machine-readable reason.
        code: ErrorCode,
        /// A human-readable explanation. Never quotes board content or names.
        message: String,
        /// The specific reason, one of [`Reason`]'s stable codes. Absent from servers older
        /// than it; a client that does not know it ignores it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
    },
}

/// What a lapsed membership held when the reconnect grace period ran out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The hand was raised, and was lowered.
    pub hand: bool,
    /// The member held the floor, and the turn ended.
    pub floor: bool,
    /// The member was the presenter, and the pick was cleared.
    pub presenter: bool,
    /// The member's role had been changed by a leader (for example to co-leader); the new
    /// membership has the role of the link instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The room's reconnect grace period in seconds: how long it kept the place before it was
    /// released. Absent from servers older than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<u32>,
}

/// Stable error codes carried by [`ServerMessage::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame was not a message of this protocol.
    BadMessage,
    /// The sender's role does not allow this command.
    Forbidden,
    /// A command came while the sender waits in the lobby. (Before `hello`, a command closes
    /// the connection with 1007 instead: no text frame goes to a connection without hello.)
    NotInRoom,
    /// The member named in the command is not in the room (or not in the lobby).
    UnknownMember,
    /// The phase is not part of this room's template.
    InvalidPhase,
    /// `next_speaker` with no eligible raised hand.
    QueueEmpty,
    /// The member cannot take the floor or raise a hand now (for example the presenter during
    /// reflection, or anyone but the presenter during presentation).
    NotEligible,
    /// The sender may not write on the board now (observer, locked board, or presenter during
    /// reflection). The edit was neither applied nor relayed.
    ReadOnly,
    /// The command is valid but would change nothing the sender might expect (for example
    /// yielding a floor one does not hold).
    Conflict,
    /// The room's shared state could not be written just now (the backend is unreachable).
    /// Nothing changed; the client may retry.
    Unavailable,
    /// The board reached its size limit. The edit was neither applied nor relayed; the board
    /// is intact.
    BoardFull,
    /// The connection sends faster than allowed. Its messages are still handled for now; if
    /// it keeps going, it is closed with 4429.
    RateLimited,
}

impl ServerMessage {
    /// The `error` message of a refusal.
    pub fn refused(refusal: Refusal) -> Self {
        ServerMessage::Error { code: refusal.code, message: refusal.message().to_owned(), reason: Some(refusal.reason) }
    }

    /// Encodes the message as the JSON text of a frame.
    pub fn to_json(&self) -> String {
        // Serializing these plain types cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

impl ClientMessage {
    /// Parses a text frame.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_titles_follow_one_set_of_rules() {
        assert_eq!(check_name("  Ann  "), Ok("Ann"));
        assert_eq!(check_name("   "), Err(TextError::Empty));
        assert_eq!(check_name(&"é".repeat(MAX_NAME_CHARS)), Ok(&*"é".repeat(MAX_NAME_CHARS)));
        assert_eq!(check_name(&"é".repeat(MAX_NAME_CHARS + 1)), Err(TextError::TooLong));
        assert_eq!(check_name("Ann\nBen"), Err(TextError::Control));
        assert_eq!(check_title(" Case "), Ok(Some("Case")));
        assert_eq!(check_title(""), Ok(None));
        assert_eq!(check_title(&"x".repeat(MAX_TITLE_CHARS + 1)), Err(TextError::TooLong));
        assert_eq!(check_title("a\u{7}b"), Err(TextError::Control));
    }

    #[test]
    fn a_sealed_name_is_a_command_of_its_own() {
        assert_eq!(
            ClientMessage::from_json(r#"{"type":"set_sealed_name","sealed_name":"AAAA"}"#).unwrap(),
            ClientMessage::SetSealedName { sealed_name: "AAAA".into() }
        );
        assert!(ClientMessage::from_json(r#"{"type":"set_sealed_name","name":"Ann"}"#).is_err());
    }

    #[test]
    fn commands_parse_from_their_documented_form() {
        assert_eq!(
            ClientMessage::from_json(r#"{"type":"grant_floor","member":"m1"}"#).unwrap(),
            ClientMessage::GrantFloor { member: "m1".into(), if_version: None }
        );
        assert_eq!(ClientMessage::from_json(r#"{"type":"raise_hand"}"#).unwrap(), ClientMessage::RaiseHand {});
        assert_eq!(
            ClientMessage::from_json(r#"{"type":"set_speaking_limit","seconds":null}"#).unwrap(),
            ClientMessage::SetSpeakingLimit { seconds: None }
        );
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        assert!(ClientMessage::from_json(r#"{"type":"raise_hand","extra":1}"#).is_err());
        assert!(ClientMessage::from_json(r#"{"type":"grant_floor","member":"m","x":1}"#).is_err());
        assert!(ClientMessage::from_json(r#"{"type":"fly"}"#).is_err());
        assert!(ClientMessage::from_json(r#"{"member":"m"}"#).is_err());
    }
}
