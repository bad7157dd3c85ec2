//! The room core: sans-IO state machines for one room.
//!
//! Nothing under `room` touches a socket, a clock or an async runtime. The driver
//! (`crate::rooms`) feeds it frames and the current time and carries its output to sockets.
//! That keeps every rule testable with virtual time and lets the same core run behind any
//! transport.

pub mod awareness;
pub mod board;
pub mod meeting;

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
    /// The room's link generation (0 at creation; raised when a leader renews the links).
    pub link_generation: u64,
}

/// Identifies one WebSocket connection to a room, unique within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}
