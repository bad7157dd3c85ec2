//! Every timeout, interval and limit of the server, in one place.
//!
//! `Config` takes its defaults from here, so an operator can override each one.

use std::time::Duration;

/// Largest WebSocket frame a client may send.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Frames a connection may fall behind (waiting in its outlet) before it is closed as too slow.
pub const OUTBOUND_QUEUE_FRAMES: usize = 1024;
/// How long one write to a socket may block before the client counts as too slow.
pub const SOCKET_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Queued frames written to a socket before one flush, when the writer is behind.
pub const WRITE_BATCH_FRAMES: usize = 64;
/// An awareness state not renewed within this long is removed (y-protocols renews every 15 s).
pub const AWARENESS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a dropped member keeps their identity, role, queue place and floor.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(120);
/// How often rooms are checked for timers (awareness sweep and later meeting timers).
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a leader or invite link stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest HTTP request body the API accepts.
pub const MAX_HTTP_BODY_BYTES: usize = 16 * 1024;
/// How long one write to a socket may block, in milliseconds (see [`SOCKET_WRITE_TIMEOUT`]).
pub const SOCKET_WRITE_TIMEOUT_MS: u64 = 10_000;
/// Longest room title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// How long an ended room keeps answering 410 in this process.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a graceful shutdown waits for connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often a node refreshes the presence entries of the members it serves.
pub const PRESENCE_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a presence entry lives without a refresh: a dead node's members show as
/// reconnecting this long after its last heartbeat.
pub const PRESENCE_TTL: Duration = Duration::from_secs(15);
/// Compare-and-set attempts for one change before giving up.
pub const CAS_ATTEMPTS: usize = 16;
/// Safety-net expiry of a room's record in the backend once anyone has joined, refreshed by
/// every write. Before that, the record lives as long as the room's links.
pub const RECORD_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long an ephemeral meeting may stay empty before it ends and its content is wiped.
pub const EMPTY_ROOM_GRACE: Duration = Duration::from_secs(10 * 60);
/// The longest an ephemeral meeting may last, from its first member.
pub const MAX_MEETING_LENGTH: Duration = Duration::from_secs(6 * 3600);
/// How long one call to PostgreSQL (connecting included) may take before it counts as failed.
pub const POSTGRES_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections a node holds open to PostgreSQL.
pub const POSTGRES_POOL_SIZE: usize = 8;
/// How long `/readyz` waits for the backend before answering not ready.
pub const READINESS_TIMEOUT: Duration = Duration::from_millis(500);
/// A persistent board is saved this long after its last change...
pub const SAVE_DEBOUNCE: Duration = Duration::from_secs(2);
/// ...and at most this long after its first unsaved change.
pub const SAVE_MAX_DELAY: Duration = Duration::from_secs(10);
/// The most a board may grow to, in bytes of applied updates.
pub const MAX_BOARD_BYTES: usize = 16 * 1024 * 1024;
/// The most members (including those waiting in the lobby) a room holds.
pub const MAX_MEMBERS: usize = 50;
/// The most rooms one node serves at once.
pub const MAX_ROOMS: usize = 10_000;
/// Rooms one client address may create per minute.
pub const ROOMS_PER_IP_PER_MINUTE: u32 = 10;
/// Messages per second a connection may send, sustained.
pub const MESSAGES_PER_SEC: u32 = 100;
/// Bytes per second a connection may send, sustained.
pub const BYTES_PER_SEC: u32 = 1024 * 1024;
/// A connection may send this many seconds' worth of its rate at once.
pub const RATE_BURST_SECONDS: u32 = 4;
/// A connection slowed down for its rate, and still pushing whenever it is read again, for
/// this long is closed with 4529 (reconnect later). A burst is only slowed.
pub const FLOOD_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that has sent nothing, not even an answer to a ping, for this long is taken
/// for stalled (a laptop asleep, Wi-Fi that stopped forwarding) and dropped as lost. A
/// connection quiet for a third of this is pinged; the check runs at the first keepalive beat
/// (1.25 s) after this has passed, so a stall is found, and shown to the others as
/// "reconnecting", within this and 2.5 s.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(25);
/// The shortest stall timeout accepted: eight keepalive beats, so that a quiet, healthy
/// connection is always pinged (and answers) at least twice before it could be taken for
/// stalled.
pub const MIN_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Sockets one node serves at once; past it, upgrades are refused with 503.
pub const MAX_CONNECTIONS: usize = 20_000;
/// Sockets one client address may hold at once on one node; past it, 503. A group behind one
/// hospital's NAT, with a few tabs each, stays well below it.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 200;
/// How long a closed TCP connection is drained of what the client still sends, so that the
/// last frames written to it (a close code, an error response) are not lost to a reset.
pub const DRAIN_ON_CLOSE: Duration = Duration::from_secs(3);
/// How long a closing connection waits for the client's close frame.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// A persistent room with nobody connected to a node for this long leaves that node's memory
/// (its board is saved first; the next connection loads it again).
pub const IDLE_UNLOAD: Duration = Duration::from_secs(60);
/// Read buffer of each WebSocket: resident per connection (the transport zero-fills it and
/// keeps it for the socket's life), so small. Larger frames still arrive, over several reads;
/// in the benchmarks 2 KiB cost no measurable CPU against 8 KiB, nor 1 KiB against 2 (edits,
/// and the late joiner's 16 MiB board written in 64 KiB updates), for 1 KiB less per idle
/// connection (BENCHMARKS.md, step 12).
pub const WS_READ_BUFFER_BYTES: usize = 1024;
/// The transport's write buffer, which holds only control frames (pings, pongs, the close)
/// until they go into the connection's own write buffer (`upgrade::Wire`, where data frames
/// are queued): it keeps the capacity of the most it ever held for the socket's life, so small.
pub const WS_WRITE_BUFFER_BYTES: usize = 512;

/// Revoked resume tokens (of members a leader removed) a room's record remembers, as
/// digests; the oldest go first. A bound on the record's size, not a setting.
pub const MAX_REVOKED_RESUMES: usize = 256;
/// Removals by a leader a room's record remembers (so that every node closes the removed
/// member's connections); the oldest go first. A bound on the record's size, not a setting.
pub const MAX_REMOVALS: usize = 256;
/// Lapsed memberships a room's record remembers, so that a member who returns after the grace
/// period is told what was released; the oldest go first. A bound, not a setting.
pub const MAX_LAPSED_MEMBERSHIPS: usize = 64;

/// Envelopes a room may have waiting for the bus (Redis) before it stops queueing and
/// resyncs instead. Internal tuning, not a setting.
pub const BUS_QUEUE_MESSAGES: usize = 4096;
/// The most envelopes one bus message carries.
pub const BUS_BATCH_MESSAGES: usize = 256;
/// A bus message takes no more envelopes once it holds this many bytes.
pub const BUS_BATCH_BYTES: usize = 64 * 1024;
