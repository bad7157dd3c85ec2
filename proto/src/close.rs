//! WebSocket close codes, and whether a client should reconnect after each.
//!
//! The codes follow the convention of today's stock Yjs client (`y-websocket` 3.x):
//!
//! - **4400–4499: do not reconnect.** The server made a deliberate decision that reconnecting
//!   cannot fix: the meeting ended, the member was removed, the input was malformed.
//! - **4500–4599: reconnect later.** A transient condition of the server or the connection:
//!   too slow, rate limited, the room full, no answer.
//! - **1000–1015** as RFC 6455 §7.4.1 says; a stock client reconnects after them.
//!
//! [`CLOSE_CODES`] is the one table of every code the server sends. The server closes with
//! these constants, the wasm client decides with [`reconnect_after`], and `README.md` and
//! `docs/PROTOCOL.md` list the same table (a test compares them).

/// What a client should do after the server closed its connection with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Reconnect now (with the usual backoff).
    Now,
    /// Reconnect, but back off first: the server or the connection needs a moment.
    Later,
    /// Do not reconnect: it cannot help.
    Never,
}

impl Reconnect {
    /// The policy's name in the documentation tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Reconnect::Now => "yes",
            Reconnect::Later => "later",
            Reconnect::Never => "no",
        }
    }
}

/// The client closed normally (the server echoes its close).
pub const NORMAL: u16 = 1000;
/// The text frame was not valid UTF-8, or not a valid room-protocol message before `hello`.
pub const INVALID_TEXT: u16 = 1007;
/// The client broke the WebSocket protocol (for example an unmasked or malformed frame).
pub const PROTOCOL_ERROR: u16 = 1002;
/// A frame exceeded the configured size limit.
pub const FRAME_TOO_LARGE: u16 = 1009;
/// The server is restarting or shutting down; reconnect, possibly to another node.
pub const SERVICE_RESTART: u16 = 1012;
/// A binary frame held a malformed or truncated y-sync message.
pub const MALFORMED_SYNC: u16 = 4400;
/// A binary frame held a y-sync message type this server does not know.
pub const UNKNOWN_MESSAGE_TYPE: u16 = 4401;
/// A stock Yjs client (no `sealed=1`) in a sealed room, or a sealed client in a plain room:
/// the client cannot read this room's board, and reconnecting will not change that.
pub const SEALED_MISMATCH: u16 = 4406;
/// The member was removed by a leader, turned away from the lobby, or came back with a resume
/// token that a leader revoked.
pub const REMOVED: u16 = 4403;
/// The meeting has ended; the room will not come back.
pub const MEETING_ENDED: u16 = 4410;
/// The link was replaced by a newer one: a leader renewed the room's links, and newcomers
/// need the new link. Members already in the room are not affected.
pub const LINK_RENEWED: u16 = 4412;
/// The board reached its size limit; a stock client (no `hello`) cannot be told otherwise, and
/// would only send the refused edit again if it reconnected.
pub const BOARD_FULL: u16 = 4413;
/// The connection answered nothing (not even a ping) for too long: a stalled network.
pub const UNRESPONSIVE: u16 = 4504;
/// The connection could not keep up with the room's traffic. Nothing was dropped: reconnect
/// and resync.
pub const TOO_SLOW: u16 = 4508;
/// The room already has as many members as it may hold.
pub const ROOM_FULL: u16 = 4509;
/// The connection kept sending faster than its rate for too long, although it was slowed.
pub const RATE_LIMITED: u16 = 4529;

/// One close code of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode {
    /// The code.
    pub code: u16,
    /// Its constant's name in this module.
    pub name: &'static str,
    /// What it means.
    pub meaning: &'static str,
}

/// Every close code the server sends, in numeric order.
pub const CLOSE_CODES: &[CloseCode] = &[
    CloseCode { code: NORMAL, name: "NORMAL", meaning: "the client closed; the server answers its close" },
    CloseCode { code: PROTOCOL_ERROR, name: "PROTOCOL_ERROR", meaning: "a frame that breaks the WebSocket protocol" },
    CloseCode {
        code: INVALID_TEXT,
        name: "INVALID_TEXT",
        meaning: "a text frame that is not UTF-8, or not a `hello` or another room message before `hello`",
    },
    CloseCode {
        code: FRAME_TOO_LARGE,
        name: "FRAME_TOO_LARGE",
        meaning: "a frame over the size limit (1 MiB by default)",
    },
    CloseCode {
        code: SERVICE_RESTART,
        name: "SERVICE_RESTART",
        meaning: "the server is restarting or shutting down; another node may take the connection",
    },
    CloseCode {
        code: MALFORMED_SYNC,
        name: "MALFORMED_SYNC",
        meaning: "a binary frame held a malformed or truncated y-sync or sealed message",
    },
    CloseCode {
        code: UNKNOWN_MESSAGE_TYPE,
        name: "UNKNOWN_MESSAGE_TYPE",
        meaning: "a binary frame held a message type this room does not speak",
    },
    CloseCode {
        code: REMOVED,
        name: "REMOVED",
        meaning: "removed by a leader, turned away from the lobby, or a revoked resume token",
    },
    CloseCode {
        code: SEALED_MISMATCH,
        name: "SEALED_MISMATCH",
        meaning: "a stock Yjs client (no `sealed=1`) in a sealed room, or a sealed client in a plain one",
    },
    CloseCode {
        code: MEETING_ENDED,
        name: "MEETING_ENDED",
        meaning: "the meeting has ended; the room will not come back",
    },
    CloseCode {
        code: LINK_RENEWED,
        name: "LINK_RENEWED",
        meaning: "a leader renewed this link; newcomers need the new one",
    },
    CloseCode {
        code: BOARD_FULL,
        name: "BOARD_FULL",
        meaning: "the board reached its size limit (clients that did not say `hello`)",
    },
    CloseCode {
        code: UNRESPONSIVE,
        name: "UNRESPONSIVE",
        meaning: "the connection answered nothing, not even a ping, for too long",
    },
    CloseCode {
        code: TOO_SLOW,
        name: "TOO_SLOW",
        meaning: "the connection could not keep up; nothing was dropped, it resyncs on reconnect",
    },
    CloseCode { code: ROOM_FULL, name: "ROOM_FULL", meaning: "the room holds as many members as it may" },
    CloseCode {
        code: RATE_LIMITED,
        name: "RATE_LIMITED",
        meaning: "the connection kept sending past its rate for too long, although it was slowed",
    },
];

/// What a client should do after a close with `code`, by the convention of the stock clients:
/// 4400–4499 never, 4500–4599 later, anything else now.
pub fn reconnect_after(code: u16) -> Reconnect {
    match code {
        4400..=4499 => Reconnect::Never,
        4500..=4599 => Reconnect::Later,
        _ => Reconnect::Now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_ordered_and_each_code_is_in_its_range() {
        assert!(CLOSE_CODES.windows(2).all(|w| w[0].code < w[1].code));
        for code in
            [REMOVED, SEALED_MISMATCH, MEETING_ENDED, LINK_RENEWED, BOARD_FULL, MALFORMED_SYNC, UNKNOWN_MESSAGE_TYPE]
        {
            assert_eq!(reconnect_after(code), Reconnect::Never, "{code}");
        }
        for code in [UNRESPONSIVE, TOO_SLOW, ROOM_FULL, RATE_LIMITED] {
            assert_eq!(reconnect_after(code), Reconnect::Later, "{code}");
        }
        for code in [NORMAL, PROTOCOL_ERROR, INVALID_TEXT, FRAME_TOO_LARGE, SERVICE_RESTART, 1006] {
            assert_eq!(reconnect_after(code), Reconnect::Now, "{code}");
        }
    }
}
