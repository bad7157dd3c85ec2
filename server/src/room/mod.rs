//! The room core: sans-IO state machines for one room.
//!
//! Nothing under `room` touches a socket, a clock or an async runtime. The driver
//! (`crate::rooms`) feeds it frames and the current time and carries its output to sockets.
//! That keeps every rule testable with virtual time and lets the same core run behind any
//! transport.

pub mod awareness;
pub mod board;
pub mod machine;
pub mod meeting;
pub mod sealed;

pub use meeting::record;

use balint_proto::room::Template;

/// What a room is created with; a persistent room keeps it with its board ([`record`] has the
/// stored format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSettings {
    /// Shown to members; never logged.
    pub title: Option<String>,
    /// Whether nothing of the meeting outlives it.
    pub ephemeral: bool,
    /// The session template.
    pub template: Template,
    /// Whether newcomers wait for a leader to admit them.
    pub lobby: bool,
    /// Whether the board is sealed: end-to-end encrypted, with a key the server never sees.
    pub sealed: bool,
    /// The room's link generation (0 at creation; raised when a leader renews the links).
    pub link_generation: u64,
    /// Sealed rooms: the title, sealed by a leader's client (opaque to the server).
    pub sealed_title: Option<String>,
    /// The leaders' controls of the meeting, as a persistent room keeps them.
    pub controls: Controls,
}

impl Default for RoomSettings {
    fn default() -> Self {
        RoomSettings {
            title: None,
            ephemeral: true,
            template: Template::default(),
            lobby: false,
            sealed: false,
            link_generation: 0,
            sealed_title: None,
            controls: Controls::default(),
        }
    }
}

/// The settings leaders change during a meeting that a persistent room keeps from one meeting
/// to the next, beside the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controls {
    /// The limit of each turn, in seconds.
    pub speaking_limit_secs: Option<u32>,
    /// Whether those who have not spoken in this phase go first.
    pub fair_order: bool,
    /// Whether a phase change lowers every hand and frees the floor.
    pub phase_reset: bool,
    /// Whether the board is read-only for everyone but the leaders.
    pub board_locked: bool,
}

impl Default for Controls {
    /// A new room's: no limit, no fair order, the phase reset on, the board open.
    fn default() -> Self {
        Controls { speaking_limit_secs: None, fair_order: false, phase_reset: true, board_locked: false }
    }
}

/// Identifies one WebSocket connection to a room, unique within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Where new member ids and resume tokens come from: random in a server, seeded in a
/// simulation, so that a run can be replayed.
pub trait Ids: Send + Sync + std::fmt::Debug {
    /// A new member id (12 characters, `[A-Za-z0-9]`).
    fn member_id(&self) -> String;
    /// A new resume token (32 characters, `[A-Za-z0-9]`). It lets a member back in: it must
    /// be unguessable outside a simulation.
    fn resume_token(&self) -> String;
}

/// Ids from the thread's cryptographically secure generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomIds;

impl Ids for RandomIds {
    fn member_id(&self) -> String {
        random_string(12)
    }

    fn resume_token(&self) -> String {
        random_string(32)
    }
}

fn random_string(len: usize) -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), len)
}
