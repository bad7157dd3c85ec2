//! Balint Room server.
//!
//! # Layout
//! - [`config`]: the one `Config` struct, from flags or environment.
//! - [`limits`]: every timeout, interval and limit, named, as `Config`'s defaults.
//! - [`token`]: HMAC-signed room links.
//! - [`room`]: the sans-IO room core (board, awareness, the meeting); no tokio, no sockets,
//!   no clock.
//! - [`rooms`]: the registry of rooms and the thin driver around each core: plan, write by
//!   compare-and-set, install; fan-out to other nodes.
//! - [`backend`]: where shared state lives: embedded in memory, or Redis; and where
//!   persistent boards live: files, PostgreSQL or Redis.
//! - [`fanout`]: the messages nodes exchange on a room's bus channel.
//! - [`outlet`]: a connection's one ordered way out, which its room writes to itself while the
//!   connection's task is idle.
//! - [`connection`]: the task that serves one WebSocket.
//! - [`keepalive`]: the node's one clock for every connection's keepalive.
//! - [`sockets`]: the caps on open sockets, per node and per client address.
//! - [`http`]: the routes; [`app`] assembles them into a `Router`.
//! - [`error`]: `AppError`, the one error type answered to clients.
//! - [`linger`]: the listener whose connections drain on close, so a last close frame
//!   reaches a client that was still sending.
//! - [`wipe`]: the allocator that zeroes freed memory, so ended meetings leave nothing behind.
//!
//! `main.rs` only parses the configuration, sets up logging and calls [`Server::bind`].

pub mod backend;
pub mod config;
pub mod connection;
pub mod error;
pub mod fanout;
pub mod gate;
pub mod http;
pub mod keepalive;
pub mod limits;
pub mod linger;
pub mod metrics;
pub mod outlet;
pub mod room;
pub mod room_threads;
pub mod rooms;
pub mod sockets;
pub mod token;
pub mod upgrade;
pub mod wipe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use backend::files::FileStore;
use backend::postgres::PostgresStore;
use backend::redis::{RedisBackend, SentinelSettings};
use config::BoardStoreKind;
pub use config::Config;
use metrics::Metrics;
use rooms::{Cluster, RoomOptions, Rooms};
use token::Signer;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// Every room of this node.
    pub rooms: Rooms,
    /// Signs and verifies room links.
    pub signer: Signer,
    /// Cancelled when the server shuts down; connections close with 1012.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Operational metrics.
    pub metrics: Metrics,
    /// Open sockets, against the caps per node and per client address.
    pub sockets: sockets::SocketCaps,
    /// Room creation per client address.
    pub creation_limit: Arc<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>,
    /// The clock of every connection's keepalive.
    pub keepalive: keepalive::KeepaliveClock,
    /// The threads rooms' connections run on (`--room-threads`).
    pub room_threads: Arc<room_threads::RoomThreads>,
}

impl AppState {
    /// State for `config`: loads or generates the signing secret, connects the backend
    /// (Redis when configured, else the embedded one) and the board store of persistent rooms
    /// (files, PostgreSQL, with its migrations applied, or Redis). Bus messages for this node's rooms are
    /// delivered to them as each room's Redis connection reads them, until shutdown.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.stall_timeout_secs >= limits::MIN_STALL_TIMEOUT.as_secs(),
            "the stall timeout must be at least {} s",
            limits::MIN_STALL_TIMEOUT.as_secs()
        );
        let signer = Signer::from_config(config.secret.as_deref(), &config.previous_secrets, &config.data_dir)?;
        let options = RoomOptions {
            outbound_queue: config.outbound_queue,
            reconnect_grace: config.reconnect_grace(),
            empty_grace: Duration::from_secs(config.empty_grace_secs),
            max_length: Duration::from_secs(config.max_meeting_secs),
            max_members: config.max_members,
            max_board_bytes: config.max_board_bytes,
            max_rooms: config.max_rooms,
            idle_unload: Duration::from_secs(config.idle_unload_secs),
            link_ttl: config.token_ttl(),
        };
        let metrics = Metrics::new();
        let per_minute = std::num::NonZeroU32::new(config.rooms_per_ip_per_minute.max(1)).expect("at least one");
        let creation_limit = Arc::new(governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute)));
        let node: Arc<str> = rooms::random_node_id().into();
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let board_kind = config.board_store_kind();
        let redis = match (&config.redis_url, &config.redis_sentinel_master) {
            (Some(_), Some(_)) => anyhow::bail!("give either --redis-url or the Sentinel flags, not both"),
            (Some(url), None) => {
                // The URL may carry a password: the error says what failed, never where.
                let tls = redis_tls(&config)?;
                let redis = RedisBackend::connect(url.expose(), &node, &tls)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot reach Redis: {e}"))?;
                Some(Arc::new(redis))
            }
            (None, Some(master)) => {
                let tls = redis_tls(&config)?;
                if !config.redis_tls && !tls.is_empty() {
                    anyhow::bail!("with Sentinel, --redis-ca-file and --redis-cert-file go with --redis-tls");
                }
                let settings = SentinelSettings {
                    sentinels: config.redis_sentinels.clone(),
                    master: master.clone(),
                    password: config.redis_password.as_ref().map(|p| p.expose().to_owned()),
                    sentinel_password: config.redis_sentinel_password.as_ref().map(|p| p.expose().to_owned()),
                    tls: config.redis_tls.then_some(tls),
                };
                let redis = RedisBackend::connect_via_sentinel(&settings, &node)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot reach the Redis primary through Sentinel: {e}"))?;
                Some(Arc::new(redis))
            }
            (None, None) if !config.redis_sentinels.is_empty() => {
                anyhow::bail!("--redis-sentinels needs --redis-sentinel-master")
            }
            (None, None) if config.redis_ca_file.is_some() || config.redis_cert_file.is_some() => {
                anyhow::bail!(
                    "--redis-ca-file and --redis-cert-file are for TLS to Redis: give --redis-url or --redis-sentinels"
                )
            }
            (None, None) => None,
        };
        let boards: Arc<dyn backend::BoardStore> = match board_kind {
            BoardStoreKind::Files => {
                let store = FileStore::new(&config.data_dir);
                // A crash mid-save leaves a temporary copy of a board: gone at the next start.
                match store.remove_leftovers(LEFTOVER_AGE) {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "removed temporary files of saves a crash interrupted"),
                    Err(e) => tracing::warn!(error = %e, "could not look for temporary files of interrupted saves"),
                }
                Arc::new(store)
            }
            BoardStoreKind::Postgres => {
                let url = config.postgres_url.as_ref().map(config::Confidential::expose).ok_or_else(|| {
                    anyhow::anyhow!("the postgres board store needs --postgres-url (or DATABASE_URL)")
                })?;
                let timeout = Duration::from_millis(config.postgres_timeout_ms.max(1));
                let store = PostgresStore::connect(url, config.postgres_pool_size, timeout)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot use PostgreSQL as the board store: {e}"))?;
                Arc::new(store)
            }
            BoardStoreKind::Redis => {
                let redis = redis.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("the redis board store needs --redis-url (or REDIS_URL) or --redis-sentinels")
                })?;
                tracing::warn!(
                    "persistent boards are kept in Redis: it must keep its data on disk, or a Redis restart \
                     loses them; PostgreSQL (--board-store postgres) keeps them apart from the ephemeral Redis"
                );
                redis.clone()
            }
        };
        let room_threads = Arc::new(room_threads::RoomThreads::start(config.room_threads())?);
        let rooms = match redis {
            None => Rooms::new(Cluster::embedded(boards, metrics.clone(), node, options)),
            Some(redis) => {
                redis.run_rooms_on(room_threads.clone());
                let rooms = Rooms::new(Cluster {
                    store: redis.clone(),
                    presence: redis.clone(),
                    bus: redis.clone(),
                    boards,
                    metrics: metrics.clone(),
                    node,
                    options,
                    threads: room_threads.clone(),
                });
                let dispatch = rooms.clone();
                let stop = shutdown.clone();
                redis.deliver_to(move |message| {
                    if !stop.is_cancelled() {
                        dispatch.dispatch(&message.room, message.payload);
                    }
                });
                rooms
            }
        };
        tracing::info!(
            node = rooms.node(),
            redis = config.uses_redis(),
            sentinel = !config.redis_sentinels.is_empty(),
            board_store = board_kind.name(),
            "node started"
        );
        let sockets = sockets::SocketCaps::new(config.max_connections, config.max_connections_per_address);
        let keepalive = keepalive::KeepaliveClock::start(connection::KEEPALIVE_BEAT, shutdown.clone());
        Ok(AppState {
            room_threads,
            rooms,
            config: Arc::new(config),
            signer,
            shutdown,
            tracker,
            metrics,
            sockets,
            creation_limit,
            keepalive,
        })
    }
}

/// The router, without a listener, so tests can drive it in memory.
pub fn app(state: AppState) -> Router {
    let web = state.config.web_dir.clone();
    // The room page is one file for every room; the token stays in the URL fragment, which
    // never reaches the server.
    let room_page = ServeFile::new(web.join("room.html"));
    // Assets may be kept by the browser, but asked about again each time, so that a new
    // version of the client is picked up at once. Everything else is never stored.
    let assets = tower::ServiceBuilder::new()
        .layer(header_layer(header::CACHE_CONTROL, "no-cache"))
        .service(ServeDir::new(web.join("assets")));
    Router::new()
        .route_service("/", ServeFile::new(web.join("index.html")))
        .route_service("/r/{room}", room_page)
        .nest_service("/assets", assets)
        .route("/api/rooms", post(http::create_room))
        .route("/ws/{room}", get(http::join_room))
        .route("/api/rooms/{room}/presence", get(http::presence))
        .route("/api/rooms/{room}/export.md", get(http::export))
        .route("/api/rooms/{room}/links", post(http::issue_links))
        .route("/api/rooms/{room}/title", axum::routing::put(http::set_title))
        .route("/api/rooms/{room}", axum::routing::delete(http::delete_room))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Every page, asset and API answer: the CSP, no MIME sniffing, no framing (also for
        // browsers without `frame-ancestors`), no Referer (links keep their token in the
        // fragment, but the room's path would leave), and nothing stored unless a route says
        // otherwise.
        .layer(header_layer(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::X_FRAME_OPTIONS, "DENY"))
        .layer(header_layer(header::REFERRER_POLICY, "no-referrer"))
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(
            // Log the method and path only: query strings carry tokens and names.
            TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                tracing::info_span!("http", method = %request.method(), path = %request.uri().path())
            }),
        )
        .with_state(state)
}

/// How old a board store's temporary file must be for the start to take it for a crash's
/// leftover rather than a save in progress.
const LEFTOVER_AGE: Duration = Duration::from_secs(60);

/// The Content-Security-Policy of every response: this origin only, WebAssembly allowed to
/// compile, no inline script or style, never framed, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// A layer that sets `name` to `value` on every response.
fn header_layer(name: header::HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    state: AppState,
}

impl Server {
    /// Binds `config.bind` and prepares the state.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.bind).await?;
        let state = AppState::new(config).await?;
        Ok(Server { listener, state })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The token that shuts this server down when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then closes every connection with 1012
    /// and waits for them, at most [`limits::SHUTDOWN_GRACE`].
    pub async fn run(self) -> anyhow::Result<()> {
        let Server { listener, state } = self;
        let rooms = state.rooms.clone();
        let shutdown = state.shutdown.clone();
        let tracker = state.tracker.clone();
        // The room threads run the connections, which close with 1012 after `serve` returns
        // (it does not wait for upgraded connections): they stop only once those are done.
        let room_threads = state.room_threads.clone();
        let awareness_timeout = state.config.awareness_timeout();
        let timers = tokio::spawn({
            let rooms = rooms.clone();
            async move { rooms.run_timers(awareness_timeout).await }
        });
        let health = tokio::spawn({
            let rooms = rooms.clone();
            async move { rooms.watch_backend().await }
        });
        // With room threads, each connection can be handed to its room's thread once upgraded.
        let handoff = !state.room_threads.is_empty();
        let listener = linger::LingeringListener::new(listener, handoff);
        axum::serve(listener, app(state).into_make_service_with_connect_info::<linger::Peer>())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await?;
        timers.abort();
        health.abort();
        tracker.close();
        if tokio::time::timeout(limits::SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace period");
        }
        // Every persistent board is saved before the process goes.
        rooms.save_all().await;
        drop(room_threads);
        Ok(())
    }
}

/// Seconds since the Unix epoch, for token expiry.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Milliseconds since the Unix epoch, the clock of the room cores.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

/// The PEM files of `--redis-ca-file`, `--redis-cert-file` and `--redis-key-file`. A file that
/// cannot be read stops the start, named by its flag and path (never its content).
fn redis_tls(config: &Config) -> anyhow::Result<backend::redis::RedisTls> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {flag} {}: {e}", path.display()))
    };
    let ca = config.redis_ca_file.as_deref().map(|path| read("--redis-ca-file", path)).transpose()?;
    let client = match (&config.redis_cert_file, &config.redis_key_file) {
        (Some(cert), Some(key)) => Some((read("--redis-cert-file", cert)?, read("--redis-key-file", key)?)),
        (None, None) => None,
        _ => anyhow::bail!("--redis-cert-file and --redis-key-file go together"),
    };
    Ok(backend::redis::RedisTls { ca, client })
}
