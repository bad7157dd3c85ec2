//! The room's stored formats: the record every node shares ([`Shared`], in the room store and
//! in `State` bus envelopes) and the settings a persistent room keeps with its board
//! ([`RoomSettings`], in the board store). Both are JSON, so an operator can read them with
//! `redis-cli` or `psql`; neither holds anything that is not already in the record.
//!
//! The domain types carry no serde: this module mirrors them in types of its own
//! (`RecordV1`, `SettingsV1` and their parts), converts both ways, and holds every migration.
//! It is a child module of `meeting` only so that it can read and build [`Shared`]'s private
//! fields without opening them to the rest of the crate; nothing in `meeting` depends on it.
//! The conversions destructure without `..`, so a field added to [`Shared`] does not compile
//! until it has a place here, and a migration if older records lack it.
//!
//! # Format versions
//!
//! Each stored object carries `"format"`. Objects written before the field existed have none,
//! and read as format 1. Format 1 is the layout below; fields added to it during its life
//! (before formats were numbered) read as their defaults when missing, one function each in
//! [`migrate`]. A format this build does not know is an error ([`RecordError::UnknownFormat`]),
//! never a guess. Nodes of older builds ignore fields they do not know, so a format 1 object
//! written here reads there too.
//!
//! The enums [`Role`], [`Template`] and [`Phase`] are written by their wire names, which the
//! room protocol fixes (`docs/PROTOCOL.md`, checked by a test); every struct is mirrored here.

use std::collections::BTreeMap;

use balint_proto::room::{Phase, PhaseState, Released, Role, Template};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Hand, Lapsed, Member, Removal, Removals, Shared, Turn};
use crate::room::{Controls, RoomSettings};

/// The format this build writes.
pub const FORMAT: u64 = 1;

/// Why stored bytes are not a record (or settings). Says nothing of their content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON, or a field is missing or of the wrong type.
    #[error("malformed stored object (line {line}, column {column})")]
    Malformed {
        /// Where the decoder stopped.
        line: usize,
        /// Where the decoder stopped.
        column: usize,
    },
    /// A format this build does not know, written by a newer one.
    #[error("stored object of unknown format {0}")]
    UnknownFormat(u64),
    /// Did not serialize (cannot happen with these types: string keys, derived serializers).
    #[error("record did not serialize")]
    Encode,
}

impl From<serde_json::Error> for RecordError {
    fn from(e: serde_json::Error) -> Self {
        // Only the position: serde's message may quote the input, which may be a name.
        RecordError::Malformed { line: e.line(), column: e.column() }
    }
}

/// Encodes `shared` as the room's record, in the current format.
pub fn encode(shared: &Shared) -> Result<Bytes, RecordError> {
    let record = RecordV1::from(shared);
    serde_json::to_vec(&record).map(Bytes::from).map_err(|_| RecordError::Encode)
}

/// Decodes a room's record of any known format.
pub fn decode(bytes: &[u8]) -> Result<Shared, RecordError> {
    let record: RecordV1 = parse(bytes)?;
    Ok(record.into())
}

/// Encodes the settings of the meeting `shared`, as a persistent room saves them with its board:
/// every setting a leader can change that must outlive a restart.
pub fn encode_settings(shared: &Shared) -> Result<Bytes, RecordError> {
    let settings = SettingsV1 {
        format: FORMAT,
        title: shared.title.clone(),
        ephemeral: shared.ephemeral,
        template: shared.template,
        lobby: shared.lobby,
        sealed: shared.sealed,
        link_generation: shared.link_generation,
        sealed_title: shared.sealed_title.clone(),
        speaking_limit_secs: shared.speaking_limit_secs,
        fair_order: shared.fair_order,
        phase_reset: shared.phase_reset,
        board_locked: shared.board_locked,
    };
    serde_json::to_vec(&settings).map(Bytes::from).map_err(|_| RecordError::Encode)
}

/// Decodes a persistent room's stored settings of any known format.
pub fn decode_settings(bytes: &[u8]) -> Result<RoomSettings, RecordError> {
    let SettingsV1 {
        format: _,
        title,
        ephemeral,
        template,
        lobby,
        sealed,
        link_generation,
        sealed_title,
        speaking_limit_secs,
        fair_order,
        phase_reset,
        board_locked,
    } = parse(bytes)?;
    let controls = Controls { speaking_limit_secs, fair_order, phase_reset, board_locked };
    Ok(RoomSettings { title, ephemeral, template, lobby, sealed, link_generation, sealed_title, controls })
}

/// Parses a stored object of format 1, or says which format it is instead.
fn parse<'de, T: Deserialize<'de> + Formatted>(bytes: &'de [u8]) -> Result<T, RecordError> {
    /// Just the format, to name it when the object is not of a known layout.
    #[derive(Deserialize)]
    struct Peek {
        #[serde(default = "migrate::format")]
        format: u64,
    }
    match serde_json::from_slice::<T>(bytes) {
        Ok(object) if object.format() == FORMAT => Ok(object),
        Ok(object) => Err(RecordError::UnknownFormat(object.format())),
        Err(e) => match serde_json::from_slice::<Peek>(bytes) {
            Ok(Peek { format }) if format != FORMAT => Err(RecordError::UnknownFormat(format)),
            _ => Err(e.into()),
        },
    }
}

/// A stored object that names its format.
trait Formatted {
    fn format(&self) -> u64;
}

/// Defaults for what older objects lack. Each is a migration: what an object written before
/// the field existed means by its absence.
mod migrate {
    /// Objects written before formats were numbered are format 1.
    pub fn format() -> u64 {
        1
    }

    /// Records written before rooms had a member limit hold the default limit.
    pub fn max_members() -> usize {
        crate::limits::MAX_MEMBERS
    }

    /// Records written before the phase reset existed read as on, its default: a leader who
    /// wants hands to carry over from one phase to the next turns it off.
    pub fn phase_reset() -> bool {
        true
    }

    /// Records and settings written before sealed rooms existed are of plain rooms.
    pub fn sealed() -> bool {
        false
    }

    /// A member recorded before arrival times were kept arrived, as far as anyone can tell,
    /// when the meeting started; in a room whose start was not recorded either (persistent
    /// rooms do not record it), at 0, which the protocol defines as "unknown".
    pub fn joined_at_ms(joined_at_ms: Option<u64>, started_at_ms: Option<u64>) -> u64 {
        joined_at_ms.or(started_at_ms).unwrap_or(0)
    }

    // Records and settings written before link generations, revoked resume tokens and lapsed
    // memberships existed read as generation 0, nothing revoked and nothing lapsed: each
    // field's `Default`, named at the field by `#[serde(default)]`.
}

/// The room's record, format 1.
#[derive(Serialize, Deserialize)]
struct RecordV1 {
    #[serde(default = "migrate::format")]
    format: u64,
    title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_title: Option<String>,
    template: Template,
    ephemeral: bool,
    lobby: bool,
    #[serde(default = "migrate::sealed")]
    sealed: bool,
    reconnect_grace_ms: u64,
    empty_grace_ms: u64,
    max_length_ms: u64,
    #[serde(default = "migrate::max_members")]
    max_members: usize,
    started_at_ms: Option<u64>,
    empty_since_ms: Option<u64>,
    members: BTreeMap<String, MemberV1>,
    queue: Vec<HandV1>,
    floor: Option<TurnV1>,
    phase: PhaseV1,
    presenter: Option<String>,
    speaking_limit_secs: Option<u32>,
    fair_order: bool,
    #[serde(default = "migrate::phase_reset")]
    phase_reset: bool,
    board_locked: bool,
    next_seq: u64,
    removed: RemovalsV1,
    ended: Option<String>,
    floor_version: u64,
    #[serde(default)]
    link_generation: u64,
    #[serde(default)]
    revoked: Vec<String>,
    #[serde(default)]
    lapsed: Vec<LapsedV1>,
}

impl Formatted for RecordV1 {
    fn format(&self) -> u64 {
        self.format
    }
}

#[derive(Serialize, Deserialize)]
struct MemberV1 {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_name: Option<String>,
    role: Role,
    resume_token: String,
    arrival: u64,
    /// Absent from records written before it; see [`migrate::joined_at_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    joined_at_ms: Option<u64>,
    dropped_at_ms: Option<u64>,
    away: bool,
    admitted: bool,
    turns: u32,
    speaking_ms: u64,
    spoke_in_phase: bool,
}

#[derive(Serialize, Deserialize)]
struct HandV1 {
    member: String,
    raised_at_ms: u64,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct TurnV1 {
    member: String,
    since_ms: u64,
    limit_secs: Option<u32>,
    time_up_sent: bool,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct PhaseV1 {
    name: Phase,
    started_at_ms: u64,
    duration_secs: u32,
}

/// The removals, a JSON object from member id to removal written oldest first, as the
/// bound drops the oldest. Read in the object's order; an object written by an earlier build
/// (a sorted map) reads in its key order, which only makes the bound drop other removals first.
struct RemovalsV1(Vec<(String, RemovalV1)>);

impl Serialize for RemovalsV1 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(id, removal)| (id, removal)))
    }
}

impl<'de> Deserialize<'de> for RemovalsV1 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> serde::de::Visitor<'de> for InOrder {
            type Value = RemovalsV1;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of removals")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RemovalsV1, A::Error> {
                let mut removals = Vec::new();
                while let Some(entry) = map.next_entry::<String, RemovalV1>()? {
                    removals.push(entry);
                }
                Ok(RemovalsV1(removals))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RemovalV1 {
    Kicked,
    Declined,
}

#[derive(Serialize, Deserialize)]
struct LapsedV1 {
    token: String,
    released: ReleasedV1,
}

#[derive(Serialize, Deserialize)]
struct ReleasedV1 {
    hand: bool,
    floor: bool,
    presenter: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
}

/// A persistent room's stored settings, format 1.
#[derive(Serialize, Deserialize)]
struct SettingsV1 {
    #[serde(default = "migrate::format")]
    format: u64,
    title: Option<String>,
    ephemeral: bool,
    template: Template,
    lobby: bool,
    #[serde(default = "migrate::sealed")]
    sealed: bool,
    #[serde(default)]
    link_generation: u64,
    /// Sealed rooms' sealed title; absent from a plain room's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_title: Option<String>,
    /// The leaders' controls; absent from settings written before they were kept, which
    /// read as a new room's.
    #[serde(default)]
    speaking_limit_secs: Option<u32>,
    #[serde(default)]
    fair_order: bool,
    #[serde(default = "migrate::phase_reset")]
    phase_reset: bool,
    #[serde(default)]
    board_locked: bool,
}

impl Formatted for SettingsV1 {
    fn format(&self) -> u64 {
        self.format
    }
}

impl From<&Shared> for RecordV1 {
    fn from(shared: &Shared) -> Self {
        let Shared {
            title,
            sealed_title,
            template,
            ephemeral,
            lobby,
            sealed,
            reconnect_grace_ms,
            empty_grace_ms,
            max_length_ms,
            max_members,
            started_at_ms,
            empty_since_ms,
            members,
            queue,
            floor,
            phase,
            presenter,
            speaking_limit_secs,
            fair_order,
            phase_reset,
            board_locked,
            next_seq,
            removed,
            ended,
            floor_version,
            link_generation,
            revoked,
            lapsed,
        } = shared;
        RecordV1 {
            format: FORMAT,
            title: title.clone(),
            sealed_title: sealed_title.clone(),
            template: *template,
            ephemeral: *ephemeral,
            lobby: *lobby,
            sealed: *sealed,
            reconnect_grace_ms: *reconnect_grace_ms,
            empty_grace_ms: *empty_grace_ms,
            max_length_ms: *max_length_ms,
            max_members: *max_members,
            started_at_ms: *started_at_ms,
            empty_since_ms: *empty_since_ms,
            members: members.iter().map(|(id, m)| (id.clone(), MemberV1::from(m))).collect(),
            queue: queue.iter().map(HandV1::from).collect(),
            floor: floor.as_ref().map(TurnV1::from),
            phase: PhaseV1::from(phase),
            presenter: presenter.clone(),
            speaking_limit_secs: *speaking_limit_secs,
            fair_order: *fair_order,
            phase_reset: *phase_reset,
            board_locked: *board_locked,
            next_seq: *next_seq,
            removed: RemovalsV1(removed.iter().map(|(id, r)| (id.to_owned(), RemovalV1::from(r))).collect()),
            ended: ended.clone(),
            floor_version: *floor_version,
            link_generation: *link_generation,
            revoked: revoked.clone(),
            lapsed: lapsed.iter().map(LapsedV1::from).collect(),
        }
    }
}

impl From<RecordV1> for Shared {
    fn from(record: RecordV1) -> Self {
        let RecordV1 {
            format: _,
            title,
            sealed_title,
            template,
            ephemeral,
            lobby,
            sealed,
            reconnect_grace_ms,
            empty_grace_ms,
            max_length_ms,
            max_members,
            started_at_ms,
            empty_since_ms,
            members,
            queue,
            floor,
            phase,
            presenter,
            speaking_limit_secs,
            fair_order,
            phase_reset,
            board_locked,
            next_seq,
            removed,
            ended,
            floor_version,
            link_generation,
            revoked,
            lapsed,
        } = record;
        Shared {
            title,
            sealed_title,
            template,
            ephemeral,
            lobby,
            sealed,
            reconnect_grace_ms,
            empty_grace_ms,
            max_length_ms,
            max_members,
            started_at_ms,
            empty_since_ms,
            members: members.into_iter().map(|(id, m)| (id, m.into_member(started_at_ms))).collect(),
            queue: queue.into_iter().map(Into::into).collect(),
            floor: floor.map(Into::into),
            phase: phase.into(),
            presenter,
            speaking_limit_secs,
            fair_order,
            phase_reset,
            board_locked,
            next_seq,
            removed: removed.0.into_iter().map(|(id, r)| (id, r.into())).collect::<Removals>(),
            ended,
            floor_version,
            link_generation,
            revoked,
            lapsed: lapsed.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<&Member> for MemberV1 {
    fn from(member: &Member) -> Self {
        let Member {
            name,
            sealed_name,
            role,
            resume_token,
            arrival,
            joined_at_ms,
            dropped_at_ms,
            away,
            admitted,
            turns,
            speaking_ms,
            spoke_in_phase,
        } = member;
        MemberV1 {
            name: name.clone(),
            sealed_name: sealed_name.clone(),
            role: *role,
            resume_token: resume_token.clone(),
            arrival: *arrival,
            joined_at_ms: Some(*joined_at_ms),
            dropped_at_ms: *dropped_at_ms,
            away: *away,
            admitted: *admitted,
            turns: *turns,
            speaking_ms: *speaking_ms,
            spoke_in_phase: *spoke_in_phase,
        }
    }
}

impl MemberV1 {
    /// The member, in a meeting that started at `started_at_ms` (for records written before
    /// arrival times were kept).
    fn into_member(self, started_at_ms: Option<u64>) -> Member {
        let MemberV1 {
            name,
            sealed_name,
            role,
            resume_token,
            arrival,
            joined_at_ms,
            dropped_at_ms,
            away,
            admitted,
            turns,
            speaking_ms,
            spoke_in_phase,
        } = self;
        Member {
            name,
            sealed_name,
            role,
            resume_token,
            arrival,
            joined_at_ms: migrate::joined_at_ms(joined_at_ms, started_at_ms),
            dropped_at_ms,
            away,
            admitted,
            turns,
            speaking_ms,
            spoke_in_phase,
        }
    }
}

impl From<&Hand> for HandV1 {
    fn from(hand: &Hand) -> Self {
        let Hand { member, raised_at_ms, seq } = hand;
        HandV1 { member: member.clone(), raised_at_ms: *raised_at_ms, seq: *seq }
    }
}

impl From<HandV1> for Hand {
    fn from(hand: HandV1) -> Self {
        let HandV1 { member, raised_at_ms, seq } = hand;
        Hand { member, raised_at_ms, seq }
    }
}

impl From<&Turn> for TurnV1 {
    fn from(turn: &Turn) -> Self {
        let Turn { member, since_ms, limit_secs, time_up_sent, seq } = turn;
        TurnV1 {
            member: member.clone(),
            since_ms: *since_ms,
            limit_secs: *limit_secs,
            time_up_sent: *time_up_sent,
            seq: *seq,
        }
    }
}

impl From<TurnV1> for Turn {
    fn from(turn: TurnV1) -> Self {
        let TurnV1 { member, since_ms, limit_secs, time_up_sent, seq } = turn;
        Turn { member, since_ms, limit_secs, time_up_sent, seq }
    }
}

impl From<&PhaseState> for PhaseV1 {
    fn from(phase: &PhaseState) -> Self {
        let PhaseState { name, started_at_ms, duration_secs } = *phase;
        PhaseV1 { name, started_at_ms, duration_secs }
    }
}

impl From<PhaseV1> for PhaseState {
    fn from(phase: PhaseV1) -> Self {
        let PhaseV1 { name, started_at_ms, duration_secs } = phase;
        PhaseState { name, started_at_ms, duration_secs }
    }
}

impl From<Removal> for RemovalV1 {
    fn from(removal: Removal) -> Self {
        match removal {
            Removal::Kicked => RemovalV1::Kicked,
            Removal::Declined => RemovalV1::Declined,
        }
    }
}

impl From<RemovalV1> for Removal {
    fn from(removal: RemovalV1) -> Self {
        match removal {
            RemovalV1::Kicked => Removal::Kicked,
            RemovalV1::Declined => Removal::Declined,
        }
    }
}

impl From<&Lapsed> for LapsedV1 {
    fn from(lapsed: &Lapsed) -> Self {
        let Lapsed { token, released } = lapsed;
        // The grace period is the room's, told when the membership is taken back.
        let Released { hand, floor, presenter, role, grace_secs: _ } = *released;
        LapsedV1 { token: token.clone(), released: ReleasedV1 { hand, floor, presenter, role } }
    }
}

impl From<LapsedV1> for Lapsed {
    fn from(lapsed: LapsedV1) -> Self {
        let LapsedV1 { token, released: ReleasedV1 { hand, floor, presenter, role } } = lapsed;
        Lapsed { token, released: Released { hand, floor, presenter, role, grace_secs: None } }
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
