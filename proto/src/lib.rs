//! The Balint Room wire protocol, sans-IO.
//!
//! # Layout
//! - [`sync`]: the y-sync codec spoken on binary WebSocket frames. It wraps yrs's own
//!   `sync` message types and adds what a server needs on untrusted input: strict framing
//!   (several messages per frame, truncation detected), refusal of unknown message types, and
//!   encoders that produce shareable [`bytes::Bytes`].
//! - [`room`]: the room protocol spoken on text frames: JSON messages tagged by `"type"`,
//!   shared by the server and the browser client.
//! - [`rules`]: the rules of a meeting, written once: who may write or take the floor and why
//!   not, what a leader may do, the templates with their phases and durations, and the reason
//!   of every refusal. The server enforces them; the wasm client and the web UI ask them.
//! - [`sealed`]: the sealed frames of a sealed room (entries the server forwards and logs
//!   without reading them) and the associated data their contents are sealed with.
//! - [`board`]: the board as a leader exports it (Markdown), the same for the server's
//!   export of a plain room and the browser's export of a sealed one.
//! - [`close`]: the WebSocket close codes the server uses, so that clients can tell a
//!   malformed frame from a slow connection from an ended meeting.
//!
//! Nothing in this crate performs I/O or reads a clock. It builds for `wasm32-unknown-unknown`.

pub mod board;
pub mod close;
pub mod room;
pub mod rules;
pub mod sealed;
pub mod sync;
