//! Where a room's shared state lives: behind small traits, with an embedded in-memory
//! implementation (one node, nothing to install) and a Redis one (several nodes), and a
//! durable board store for persistent rooms: files (one node), PostgreSQL (several nodes), or
//! Redis (only with persistence turned on).
//!
//! - [`RoomStore`]: the room's record (settings and meeting state) under a version, written
//!   only by compare-and-set. The rules stay in the Rust state machine; the store only refuses
//!   a write based on a stale version, and the writer retries on the fresh state.
//! - [`Presence`]: one entry per member and node, refreshed by heartbeat, expiring on its own
//!   when a node dies.
//! - [`Bus`]: fan-out between nodes on one channel per room: board updates, state
//!   announcements, catch-up requests. Board content crosses Redis only here, as pub/sub
//!   messages, never in a key or a stream.
//!
//! The same test suite (`suite.rs`) runs against every implementation.

pub mod embedded;
pub mod files;
pub mod postgres;
pub mod redis;

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

/// A failure of the backend. Carries no room content.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A stored record did not decode.
    #[error("stored room record is corrupt")]
    Corrupt,
    /// The room has no open bus subscription on this node (it was retired or unloaded).
    #[error("room is not open on this node")]
    NotOpen,
    /// The data directory could not be read or written.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    /// The backend's settings cannot be used (for example a Sentinel address that is not
    /// `host:port`). Says what is wrong, never a password.
    #[error("{0}")]
    Config(String),
    /// PostgreSQL could not be reached or refused a query. Says what failed, never the
    /// connection string.
    #[error("postgres: {0}")]
    Postgres(String),
}

/// Result of a backend call.
pub type BackendResult<T> = Result<T, BackendError>;

/// A room's record with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Grows by one with each successful write; 1 after creation.
    pub version: u64,
    /// The serialized record.
    pub record: Bytes,
}

/// The versioned store of room records.
pub trait RoomStore: Send + Sync + 'static {
    /// Stores a new room's first record (version 1). Returns false if the room exists.
    fn create(&self, room: &str, record: Bytes, ttl: Duration) -> BoxFuture<'_, BackendResult<bool>>;

    /// Puts back a room's record at `version` when the store has none or an older one, as
    /// after Redis lost its data. Returns whether it wrote. Refuses an ended room.
    fn restore(&self, room: &str, version: u64, record: Bytes, ttl: Duration) -> BoxFuture<'_, BackendResult<bool>>;

    /// The room's record, if the room exists.
    fn load(&self, room: &str) -> BoxFuture<'_, BackendResult<Option<Versioned>>>;

    /// Writes `record` as version `expected + 1` if the stored version is `expected`, and then
    /// publishes `announce` on the room's bus channel, atomically. Returns false on a version
    /// conflict (nothing written, nothing published).
    fn compare_and_set(
        &self,
        room: &str,
        expected: u64,
        record: Bytes,
        announce: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BackendResult<bool>>;

    /// Deletes every key of the room and leaves a tombstone that expires after `tombstone_ttl`.
    fn end(&self, room: &str, tombstone_ttl: Duration) -> BoxFuture<'_, BackendResult<()>>;

    /// Whether the room has a tombstone.
    fn is_ended(&self, room: &str) -> BoxFuture<'_, BackendResult<bool>>;

    /// Whether the backend answers.
    fn ping(&self) -> BoxFuture<'_, BackendResult<()>>;

    /// How many room records this store holds in this process's memory, if it holds them
    /// there (the embedded store; not Redis, whose memory is its own). A node counts them
    /// against `--max-rooms`, so that rooms set up ahead cannot fill it.
    fn held_in_memory(&self) -> Option<usize> {
        None
    }

    /// A number that changes each time the backend moves to another primary (a Redis
    /// Sentinel failover): what the old one had not handed to its replica may be lost, so the
    /// nodes write their rooms' state again. Always 0 for a backend with one server.
    fn primary_epoch(&self) -> u64 {
        0
    }
}

/// Presence entries: one per member and node.
pub trait Presence: Send + Sync + 'static {
    /// Creates or refreshes `entries` of `room`, valid until `now_ms + ttl`, in one call (one
    /// round trip for Redis, however many members a node holds in the room).
    fn heartbeat(&self, room: &str, entries: &[String], now_ms: u64, ttl: Duration)
        -> BoxFuture<'_, BackendResult<()>>;

    /// Removes `entry` of `room`.
    fn remove(&self, room: &str, entry: &str) -> BoxFuture<'_, BackendResult<()>>;

    /// The entries of `room` still valid at `now_ms`.
    fn live(&self, room: &str, now_ms: u64) -> BoxFuture<'_, BackendResult<Vec<String>>>;
}

/// A persistent room as stored: its settings and its board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBoard {
    /// The room's settings (JSON).
    pub settings: Bytes,
    /// The whole board as one Yjs v1 update.
    pub board: Bytes,
}

/// Where persistent rooms keep their boards. Ephemeral rooms never reach it.
pub trait BoardStore: Send + Sync + 'static {
    /// Replaces the stored copy of the room, atomically: a reader sees the old copy or the
    /// new one, never a mix.
    fn save(&self, room: &str, stored: StoredBoard) -> BoxFuture<'_, BackendResult<()>>;

    /// The stored copy, if there is one. A copy that cannot be read is an error, never `None`:
    /// the caller must not take it for an empty board.
    fn load(&self, room: &str) -> BoxFuture<'_, BackendResult<Option<StoredBoard>>>;

    /// Deletes the stored copy for good and leaves a tombstone (the id only): the room then
    /// stays deleted, and a later save of it does nothing.
    fn delete(&self, room: &str) -> BoxFuture<'_, BackendResult<()>>;

    /// Whether the room was deleted (its tombstone is kept).
    fn is_deleted(&self, room: &str) -> BoxFuture<'_, BackendResult<bool>>;
}

/// A message on a room's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The room.
    pub room: String,
    /// The payload, as published.
    pub payload: Bytes,
}

/// Fan-out between nodes.
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` on the room's channel.
    fn publish(&self, room: &str, payload: Bytes) -> BoxFuture<'_, BackendResult<()>>;

    /// Starts receiving the room's channel.
    fn subscribe(&self, room: &str) -> BoxFuture<'_, BackendResult<()>>;

    /// Stops receiving the room's channel and releases whatever this node held open for the
    /// room (with Redis, the room's own connection and its buffers).
    fn unsubscribe(&self, room: &str) -> BoxFuture<'_, BackendResult<()>>;

    /// Whether other nodes can hear what is published. The embedded bus, with one node, says
    /// no: a room then queues and encodes nothing for it.
    fn reaches_other_nodes(&self) -> bool {
        true
    }
}

/// The key prefix of everything a room has in Redis. Room ids are random and carry no
/// content; nothing else goes into a key.
pub fn room_prefix(room: &str) -> String {
    format!("balint:room:{room}:")
}

/// The pub/sub channel of a room.
pub fn room_channel(room: &str) -> String {
    format!("balint:room:{room}:bus")
}

#[cfg(test)]
pub(crate) mod suite;
