//! Server configuration: one struct, from flags or environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::limits;

/// Balint Room server.
#[derive(Debug, Clone, Parser)]
#[command(name = "balint-room", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "BALINT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Directory for the generated signing secret (and, for persistent rooms, their boards).
    #[arg(long, env = "BALINT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Secret that signs room links, at least 32 characters. Every node of a deployment needs
    /// the same one. When unset, one is generated and kept in the data directory.
    #[arg(long, env = "BALINT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Secrets that signed links before a rotation, comma-separated, each at least 32
    /// characters. Links signed with them are still accepted; new links are signed with
    /// `--secret` only. Drop them once leaders have issued fresh links.
    #[arg(long, env = "BALINT_PREVIOUS_SECRETS", value_delimiter = ',', hide_env_values = true)]
    pub previous_secrets: Vec<String>,

    /// Redis URL (for example `redis://127.0.0.1:6379`). When set, presence, room state and
    /// board fan-out go through Redis, so several nodes can serve one deployment. When unset,
    /// everything stays in this process. It may carry a password: it is never logged.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Confidential>,

    /// For TLS to Redis (a `rediss://` `--redis-url`, or `--redis-tls` with Sentinel): a PEM
    /// file of the certificate authority that signed the servers' certificates, trusted
    /// instead of the system's authorities.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// For TLS to Redis: a PEM certificate this node shows the servers, with its key in
    /// `--redis-key-file`, for servers that ask their clients for one (`tls-auth-clients`).
    #[arg(long, env = "REDIS_CERT_FILE", requires = "redis_key_file")]
    pub redis_cert_file: Option<PathBuf>,

    /// The key of `--redis-cert-file` (PEM). Never logged.
    #[arg(long, env = "REDIS_KEY_FILE", requires = "redis_cert_file")]
    pub redis_key_file: Option<PathBuf>,

    /// Redis Sentinels to find the Redis primary through, instead of `--redis-url`:
    /// comma-separated `host:port` addresses (for example `10.0.0.1:26379,10.0.0.2:26379`).
    /// Needs `--redis-sentinel-master`. Every connection to Redis, and every reconnection,
    /// goes to the primary the Sentinels name, so nodes follow a failover.
    #[arg(
        long,
        env = "REDIS_SENTINELS",
        value_delimiter = ',',
        conflicts_with = "redis_url",
        requires = "redis_sentinel_master"
    )]
    pub redis_sentinels: Vec<String>,

    /// The name the Sentinels monitor the Redis primary under (`sentinel monitor NAME ...`).
    #[arg(long, env = "REDIS_SENTINEL_MASTER", requires = "redis_sentinels")]
    pub redis_sentinel_master: Option<String>,

    /// With Sentinel: speak TLS to the Sentinels and to the servers they name (their
    /// `tls-port`), checked against the system's authorities or `--redis-ca-file`. With
    /// `--redis-url`, TLS is its `rediss://` scheme.
    #[arg(long, env = "REDIS_TLS", requires = "redis_sentinels")]
    pub redis_tls: bool,

    /// Password of the Redis primary and replicas found through Sentinel (`requirepass`).
    /// Never logged.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true, requires = "redis_sentinels")]
    pub redis_password: Option<Confidential>,

    /// Password of the Sentinels themselves (`requirepass` in their configuration), when they
    /// have one. Never logged.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true, requires = "redis_sentinels")]
    pub redis_sentinel_password: Option<Confidential>,

    /// Where persistent rooms keep their settings and boards: `files` (the data directory; one
    /// node), `postgres` (`--postgres-url`; several nodes) or `redis` (only on a Redis that
    /// keeps its data on disk). When unset: `postgres` if `--postgres-url` is set, else `redis`
    /// if `--redis-url` is set, else `files`. Ephemeral rooms never reach it.
    #[arg(long, env = "BALINT_BOARD_STORE")]
    pub board_store: Option<BoardStoreKind>,

    /// PostgreSQL URL for the board store (`postgresql://user:password@host:port/database`).
    /// It carries a password: it is never logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub postgres_url: Option<Confidential>,

    /// Milliseconds one call to PostgreSQL (connecting included) may take before it fails.
    #[arg(long, env = "BALINT_POSTGRES_TIMEOUT_MS", default_value_t = limits::POSTGRES_TIMEOUT.as_millis() as u64)]
    pub postgres_timeout_ms: u64,

    /// Most connections this node holds open to PostgreSQL.
    #[arg(long, env = "BALINT_POSTGRES_POOL_SIZE", default_value_t = limits::POSTGRES_POOL_SIZE)]
    pub postgres_pool_size: usize,

    /// Base URL of the links handed out (for example `https://rooms.example.org`). When unset,
    /// links are built from the request's Host header.
    #[arg(long, env = "BALINT_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Directory of the web UI (HTML, CSS, JS and the built wasm client).
    #[arg(long, env = "BALINT_WEB_DIR", default_value = "web")]
    pub web_dir: PathBuf,

    /// Largest WebSocket frame a client may send, in bytes.
    #[arg(long, env = "BALINT_MAX_FRAME_BYTES", default_value_t = limits::MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,

    /// Largest board a room may have, in bytes; an edit past it is refused with `board_full`.
    #[arg(long, env = "BALINT_MAX_BOARD_BYTES", default_value_t = limits::MAX_BOARD_BYTES)]
    pub max_board_bytes: usize,

    /// Most members (including those waiting in the lobby) a room holds.
    #[arg(long, env = "BALINT_MAX_MEMBERS", default_value_t = limits::MAX_MEMBERS)]
    pub max_members: usize,

    /// Most rooms this node serves at once.
    #[arg(long, env = "BALINT_MAX_ROOMS", default_value_t = limits::MAX_ROOMS)]
    pub max_rooms: usize,

    /// Rooms one client address may create per minute.
    #[arg(long, env = "BALINT_ROOMS_PER_IP_PER_MINUTE", default_value_t = limits::ROOMS_PER_IP_PER_MINUTE)]
    pub rooms_per_ip_per_minute: u32,

    /// Take the client address from `X-Forwarded-For` (set this only behind a reverse proxy
    /// that sets the header).
    #[arg(long, env = "BALINT_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,

    /// Largest HTTP request body, in bytes.
    #[arg(long, env = "BALINT_MAX_BODY_BYTES", default_value_t = limits::MAX_HTTP_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Messages per second one connection may send, sustained (bursts of four seconds' worth).
    #[arg(long, env = "BALINT_MESSAGES_PER_SEC", default_value_t = limits::MESSAGES_PER_SEC)]
    pub messages_per_sec: u32,

    /// Bytes per second one connection may send, sustained (bursts of four seconds' worth).
    #[arg(long, env = "BALINT_BYTES_PER_SEC", default_value_t = limits::BYTES_PER_SEC)]
    pub bytes_per_sec: u32,

    /// Milliseconds a write to a client's socket may block before the client counts as too slow.
    #[arg(long, env = "BALINT_WRITE_TIMEOUT_MS", default_value_t = limits::SOCKET_WRITE_TIMEOUT_MS)]
    pub write_timeout_ms: u64,

    /// Origins allowed to open WebSockets from a browser, comma-separated (for example
    /// `https://rooms.example.org`). When empty, only pages served by this host (or by
    /// `--public-url`) may. Clients that send no `Origin` (not browsers) are not affected.
    #[arg(long, env = "BALINT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Seconds a connection may answer nothing, not even a ping, before it is taken for
    /// stalled and dropped as lost (its member shows as reconnecting).
    #[arg(long, env = "BALINT_STALL_TIMEOUT_SECS", default_value_t = limits::STALL_TIMEOUT.as_secs())]
    pub stall_timeout_secs: u64,

    /// Seconds a connection may keep pushing past its rate, while it is read more slowly,
    /// before it is closed with 4529.
    #[arg(long, env = "BALINT_FLOOD_TIMEOUT_SECS", default_value_t = limits::FLOOD_TIMEOUT.as_secs())]
    pub flood_timeout_secs: u64,

    /// Sockets this node serves at once; past it, new ones are refused with 503.
    #[arg(long, env = "BALINT_MAX_CONNECTIONS", default_value_t = limits::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Sockets one client address may hold on this node at once; past it, 503.
    #[arg(long, env = "BALINT_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = limits::MAX_CONNECTIONS_PER_ADDRESS)]
    pub max_connections_per_address: usize,

    /// Threads that run rooms' connections, all of a room's on one, each with its own socket
    /// I/O (`room_threads.rs`), and, with Redis, its Redis connection and bus publisher; by
    /// default one per core. 0 runs connections on the main runtime's workers, as any other
    /// task.
    #[arg(long, env = "BALINT_ROOM_THREADS")]
    pub room_threads: Option<usize>,

    /// Frames a connection may fall behind before it is closed as too slow.
    #[arg(long, env = "BALINT_OUTBOUND_QUEUE", default_value_t = limits::OUTBOUND_QUEUE_FRAMES)]
    pub outbound_queue: usize,

    /// Seconds after which an awareness state that was not renewed is removed.
    #[arg(long, env = "BALINT_AWARENESS_TIMEOUT_SECS", default_value_t = limits::AWARENESS_TIMEOUT.as_secs())]
    pub awareness_timeout_secs: u64,

    /// Seconds a dropped member keeps their identity, role, queue place and floor.
    #[arg(long, env = "BALINT_RECONNECT_GRACE_SECS", default_value_t = limits::RECONNECT_GRACE.as_secs())]
    pub reconnect_grace_secs: u64,

    /// Seconds an ephemeral meeting may stay empty before it ends and its content is wiped.
    #[arg(long, env = "BALINT_EMPTY_GRACE_SECS", default_value_t = limits::EMPTY_ROOM_GRACE.as_secs())]
    pub empty_grace_secs: u64,

    /// The longest an ephemeral meeting may last, in seconds from its first member.
    #[arg(long, env = "BALINT_MAX_MEETING_SECS", default_value_t = limits::MAX_MEETING_LENGTH.as_secs())]
    pub max_meeting_secs: u64,

    /// Seconds a persistent room stays in memory with nobody connected (saved first).
    #[arg(long, env = "BALINT_IDLE_UNLOAD_SECS", default_value_t = limits::IDLE_UNLOAD.as_secs())]
    pub idle_unload_secs: u64,

    /// Seconds a room link stays valid.
    #[arg(long, env = "BALINT_TOKEN_TTL_SECS", default_value_t = limits::TOKEN_TTL.as_secs())]
    pub token_ttl_secs: u64,

    /// Log format: `text` or `json`.
    #[arg(long, env = "BALINT_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// A value that carries a password, such as a connection string: its `Debug` form hides it, so
/// that logging the configuration cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Confidential(String);

impl Confidential {
    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Confidential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Confidential(..)")
    }
}

impl From<String> for Confidential {
    fn from(value: String) -> Self {
        Confidential(value)
    }
}

impl std::str::FromStr for Confidential {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Confidential(value.to_owned()))
    }
}

/// Where persistent rooms' boards are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BoardStoreKind {
    /// One file per room in the data directory (a single node).
    Files,
    /// PostgreSQL at `--postgres-url`.
    Postgres,
    /// Redis at `--redis-url`, which must then keep its data on disk.
    Redis,
}

impl BoardStoreKind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BoardStoreKind::Files => "files",
            BoardStoreKind::Postgres => "postgres",
            BoardStoreKind::Redis => "redis",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The defaults, as if no flag or variable were given, with `data_dir` set. For tests.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let mut config = Config::parse_from(["balint-room"]);
        config.data_dir = data_dir;
        config.bind = "127.0.0.1:0".parse().expect("valid address");
        config
    }

    /// The board store in use: the one asked for, or the default for the other settings.
    pub fn board_store_kind(&self) -> BoardStoreKind {
        match (self.board_store, &self.postgres_url, self.uses_redis()) {
            (Some(kind), _, _) => kind,
            (None, Some(_), _) => BoardStoreKind::Postgres,
            (None, None, true) => BoardStoreKind::Redis,
            (None, None, false) => BoardStoreKind::Files,
        }
    }

    /// Whether rooms go through Redis: at `--redis-url`, or found through Sentinel.
    pub fn uses_redis(&self) -> bool {
        self.redis_url.is_some() || !self.redis_sentinels.is_empty()
    }

    /// [`Self::awareness_timeout_secs`] as a duration.
    pub fn awareness_timeout(&self) -> Duration {
        Duration::from_secs(self.awareness_timeout_secs)
    }

    /// [`Self::reconnect_grace_secs`] as a duration.
    pub fn reconnect_grace(&self) -> Duration {
        Duration::from_secs(self.reconnect_grace_secs)
    }

    /// How many room threads to start: `--room-threads`, by default one per core.
    pub fn room_threads(&self) -> usize {
        self.room_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// [`Self::token_ttl_secs`] as a duration.
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_threads_are_one_per_core_unless_asked_with_or_without_redis() {
        // Set field by field, so that the environment (REDIS_URL, BALINT_ROOM_THREADS) does
        // not decide.
        let mut config = Config::parse_from(["balint-room"]);
        config.redis_url = None;
        config.redis_sentinels.clear();
        config.room_threads = None;
        assert_eq!(config.room_threads(), std::thread::available_parallelism().unwrap().get());
        config.room_threads = Some(0);
        assert_eq!(config.room_threads(), 0);
        config.room_threads = None;
        config.redis_url = Some(Confidential::from("redis://127.0.0.1:6379".to_owned()));
        assert_eq!(config.room_threads(), std::thread::available_parallelism().unwrap().get());
        config.room_threads = Some(3);
        assert_eq!(config.room_threads(), 3);
    }

    #[test]
    fn the_postgres_url_never_shows_in_the_configurations_debug_form() {
        let config = Config::parse_from(["balint-room", "--postgres-url", "postgresql://balint:hunter2@db/balint"]);
        assert_eq!(
            config.postgres_url.as_ref().map(Confidential::expose),
            Some("postgresql://balint:hunter2@db/balint")
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.board_store_kind(), BoardStoreKind::Postgres);
    }

    #[test]
    fn sentinel_flags_need_the_master_name_and_exclude_a_redis_url() {
        let ok = Config::try_parse_from([
            "balint-room",
            "--redis-sentinels",
            "10.0.0.1:26379,10.0.0.2:26379",
            "--redis-sentinel-master",
            "balint",
            "--redis-password",
            "hunter2",
        ])
        .unwrap();
        assert_eq!(ok.redis_sentinels, ["10.0.0.1:26379", "10.0.0.2:26379"]);
        assert!(ok.uses_redis());
        assert_eq!(ok.board_store_kind(), BoardStoreKind::Redis);
        assert!(!format!("{ok:?}").contains("hunter2"));

        let refused = |args: &[&str]| {
            let error = Config::try_parse_from(args).expect_err("refused");
            error.to_string()
        };
        let without_name = refused(&["balint-room", "--redis-sentinels", "10.0.0.1:26379"]);
        assert!(without_name.contains("--redis-sentinel-master"), "{without_name}");
        let both = refused(&[
            "balint-room",
            "--redis-url",
            "redis://:hunter2@10.0.0.1",
            "--redis-sentinels",
            "10.0.0.1:26379",
            "--redis-sentinel-master",
            "balint",
        ]);
        assert!(both.contains("cannot be used with"), "{both}");
        assert!(!both.contains("hunter2"), "{both}");
        let name_alone = refused(&["balint-room", "--redis-sentinel-master", "balint"]);
        assert!(name_alone.contains("--redis-sentinels"), "{name_alone}");
    }

    #[test]
    fn tls_files_go_with_a_redis_url_and_a_certificate_with_its_key() {
        let refused = |args: &[&str]| Config::try_parse_from(args).expect_err("refused").to_string();
        let tls_without_sentinels = refused(&["balint-room", "--redis-tls"]);
        assert!(tls_without_sentinels.contains("--redis-sentinels"), "{tls_without_sentinels}");
        let url = ["balint-room", "--redis-url", "rediss://10.0.0.1:6380"];
        let without_key = refused(&[&url[..], &["--redis-cert-file", "node.pem"]].concat());
        assert!(without_key.contains("--redis-key-file"), "{without_key}");
        let ok = Config::try_parse_from(
            [&url[..], &["--redis-ca-file", "ca.pem", "--redis-cert-file", "n.pem", "--redis-key-file", "k.pem"]]
                .concat(),
        )
        .unwrap();
        assert_eq!(ok.redis_key_file.as_deref(), Some(std::path::Path::new("k.pem")));
    }
}
