//! WebSocket close codes.
//!
//! Standard codes are used where one fits (RFC 6455 §7.4.1); the 4xxx range carries
//! Balint Room's own reasons. Every code is stable: clients decide whether to reconnect on it.

/// The server is restarting or shutting down; reconnect, possibly to another node.
pub const SERVICE_RESTART: u16 = 1012;
/// A frame exceeded the configured size limit.
pub const FRAME_TOO_LARGE: u16 = 1009;
/// The text frame was not valid UTF-8 or not a valid room-protocol message.
pub const INVALID_TEXT: u16 = 1007;
/// A binary frame held a malformed or truncated y-sync message.
pub const MALFORMED_SYNC: u16 = 4400;
/// A binary frame held a y-sync message type this server does not know.
pub const UNKNOWN_MESSAGE_TYPE: u16 = 4401;
/// The member was removed from the room by a leader; the resume token no longer works.
pub const KICKED: u16 = 4403;
/// The connection could not keep up with the room's traffic. Reconnect and resync.
pub const TOO_SLOW: u16 = 4408;
/// The meeting has ended; the room will not come back.
pub const MEETING_ENDED: u16 = 4410;
/// The room already has as many members as it may hold.
pub const ROOM_FULL: u16 = 4409;
/// The board reached its size limit; a stock client (no `hello`) cannot be told otherwise.
pub const BOARD_FULL: u16 = 4413;
/// The connection kept exceeding its message or byte rate after being warned.
pub const RATE_LIMITED: u16 = 4429;

/// Whether a client should reconnect after the server closed with `code`.
pub fn should_reconnect(code: u16) -> bool {
    !matches!(code, KICKED | MEETING_ENDED)
}
