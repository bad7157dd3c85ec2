//! The Balint Room browser client: the board (a yrs document) and the room protocol, in one
//! [`RoomClient`](web::RoomClient) that the web page drives.
//!
//! # Layout
//! - [`session`]: the connection as a sans-IO state machine: `hello` first, the lobby,
//!   y-sync, state snapshots, commands, reconnecting with backoff and the resume token, and
//!   the end of the meeting (the board is wiped, nothing reconnects). Time and randomness are
//!   passed in, so it is unit-tested natively.
//! - [`board`]: the yrs document (`notes`, `observations`), local edits as minimal splices,
//!   observation cards, and selections anchored to text across remote edits.
//! - [`attendance`]: the attendance sheet a leader's session keeps from the states it sees.
//! - [`awareness`]: who is writing where: our cursor and everyone else's, as awareness
//!   states in the convention of the stock Yjs editor bindings.
//! - [`seal`]: sealed rooms: the room key from the link, sealing and opening entries with
//!   XChaCha20-Poly1305, and the bounded walk on what opens before yrs sees it.
//! - [`textdiff`]: the single splice between a textarea's old and new value, in UTF-16 units.
//! - [`backoff`]: the reconnect delays.
//! - `web` (wasm32 only): the wasm-bindgen glue: WebSocket, timers, textarea bindings, and the
//!   JavaScript API of `RoomClient`.
//!
//! The wire formats come from `balint-proto`, the same code the server speaks. Only `web`
//! touches the browser; everything else builds and is tested on the host
//! (`cargo test -p balint-client`).

pub mod attendance;
pub mod awareness;
pub mod backoff;
pub mod board;
pub mod seal;
pub mod session;
pub mod textdiff;

#[cfg(target_arch = "wasm32")]
pub mod web;
