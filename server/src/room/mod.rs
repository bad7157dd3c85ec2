//! The room core: sans-IO state machines for one room.
//!
//! Nothing under `room` touches a socket, a clock or an async runtime. The driver
//! (`crate::rooms`) feeds it frames and the current time and carries its output to sockets.
//! That keeps every rule testable with virtual time and lets the same core run behind any
//! transport.

pub mod awareness;
pub mod board;
pub mod meeting;

/// Identifies one WebSocket connection to a room, unique within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}
