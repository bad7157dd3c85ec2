//! The Redis backend, for several nodes sharing one deployment.
//!
//! Each room this node serves gets its own [`ConnectionManager`], which carries the room's
//! commands and, over RESP3 pushes, its pub/sub messages; a node-wide one only answers pings.
//! A connection's buffers hold the bytes that went through it, so a room's content must not
//! ride a connection that outlives the room: when the room is released its connection is
//! dropped, and its buffers are freed (and wiped, see `crate::wipe`). Each connection
//! reconnects by itself with backoff after Redis restarts and resubscribes its channel.
//!
//! With Redis Sentinel, the primary is whatever the Sentinels name: the node asks them at
//! start and then twice a second. A connection manager only ever reconnects to the address
//! it was opened on, so when the Sentinels name another primary (a failover) the node opens
//! every connection again on the new one and resubscribes each room's channel there;
//! [`RoomStore::primary_epoch`] then changes, and the rooms write their state again (the old
//! primary may have lost its last writes) and catch up with the other nodes.
//!
//! Writes of a room's record go through one Lua script that compares the version, writes and
//! publishes the announcement atomically, so two nodes acting at the same moment cannot both
//! win.
//!
//! Keys (all under [`super::room_prefix`], each with a TTL as a safety net):
//! - `balint:room:{id}:record`, a hash `{version, record}`: the room's settings and meeting
//!   state (names and the title are in the value, never in a key). Written by the node that
//!   handles a command, by compare-and-set.
//! - `balint:room:{id}:presence`, a sorted set of `member@node` scored by expiry (Unix ms):
//!   refreshed by each node's heartbeat for the members it serves.
//! - `balint:room:{id}:ended`, the tombstone of an ended room: `1`, expiring.
//! - `balint:room:{id}:board`, a hash `{settings, snapshot}`: a persistent room's settings and
//!   its whole board, compacted (one merged Yjs update, replaced at every save). Never written
//!   for an ephemeral room. Kept only as long as Redis keeps its data: a board store for
//!   persistent rooms only on a Redis with persistence turned on (see README.md).
//! - `balint:room:{id}:deleted`, the tombstone of a deleted persistent room: `1`.
//!
//! Channel: `balint:room:{id}:bus`: board updates, state announcements and catch-up messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncCommands, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value};

use crate::fanout;
use crate::room_threads::RoomThreads;

use super::{
    room_channel, room_prefix, BackendError, BackendResult, BoardStore, Bus, BusMessage, Presence, RoomStore,
    StoredBoard, Versioned,
};

/// Compare-and-set of a room record, publishing the announcement on success.
const CAS_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], 'version')
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'record', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
";

/// Creation of a room record, if absent and not ended.
const CREATE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'version', '1', 'record', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Restoring a room record when the stored one is missing or older, and the room not ended.
const RESTORE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'record', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// What receives the bus messages of a node's rooms (see [`RedisBackend::deliver_to`]).
type Deliver = Arc<dyn Fn(BusMessage) + Send + Sync>;

/// How many times a connection tries again to reach a server that is away, before a command
/// waiting for it fails (the room answers `unavailable`, and the next command tries again).
/// With one server: six times, about 5 s, long enough for a restart. With Sentinel, once:
/// a primary that is away is being replaced, and a command should not wait on it once the
/// connections have moved to the new one.
const RETRIES: usize = 6;
const SENTINEL_RETRIES: usize = 1;

/// How many rooms subscribe on a new primary at once.
const RESUBSCRIBE_AT_ONCE: usize = 64;

/// How often the Sentinels are asked which server is the primary while something is
/// unsettled: the last question found no primary (a failover under way), rooms are not yet
/// subscribed on a new primary, or no Sentinel can be heard announcing a failover.
const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// How often they are asked otherwise: a failover is announced (`+switch-master`) and the
/// question asked at once; this is the safety net under the announcements.
const SENTINEL_CHECK: Duration = Duration::from_secs(5);

/// The longest one question to the Sentinels may take.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);

/// What a node needs for TLS to Redis (a `rediss://` URL, or `--redis-tls` with Sentinel)
/// beyond the system's trusted roots, as PEM. `Debug` shows which parts are set, never their
/// bytes.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// The certificate authority that signed Redis's certificate, trusted instead of the
    /// system's.
    pub ca: Option<Vec<u8>>,
    /// The certificate and key this node shows Redis, for a Redis that asks its clients for
    /// one (`tls-auth-clients yes`).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls").field("ca", &self.ca.is_some()).field("client", &self.client.is_some()).finish()
    }
}

impl RedisTls {
    /// Whether neither an authority nor a client certificate is given.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    /// A client for `info`, with these certificates when there are any (a TLS address
    /// without them checks the server against the system's roots).
    fn open(&self, info: redis::ConnectionInfo) -> redis::RedisResult<redis::Client> {
        if self.is_empty() {
            redis::Client::open(info)
        } else {
            redis::Client::build_with_tls(info, self.certificates())
        }
    }

    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .clone()
                .map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key }),
            root_cert: self.ca.clone(),
        }
    }
}

/// Where the nodes find Redis through Sentinel. `Debug` never shows the passwords.
#[derive(Clone, Default)]
pub struct SentinelSettings {
    /// The Sentinels' addresses, `host:port`.
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary under.
    pub master: String,
    /// The primary's (and replicas') password, if any.
    pub password: Option<String>,
    /// The Sentinels' own password, if any.
    pub sentinel_password: Option<String>,
    /// TLS to the Sentinels and to the servers they name, checked as with a `rediss://` URL.
    pub tls: Option<RedisTls>,
}

impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl SentinelSettings {
    /// The Sentinel client of the crate, asking for the primary with RESP3 connections.
    fn client(&self) -> BackendResult<SentinelClient> {
        let addresses = self.addresses()?;
        if self.master.trim().is_empty() {
            return Err(BackendError::Config("the Sentinel master name is empty".to_owned()));
        }
        let mut builder = SentinelClientBuilder::new(addresses, self.master.trim(), SentinelServerType::Master)?
            .set_client_to_redis_protocol(ProtocolVersion::RESP3);
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if let Some(tls) = &self.tls {
            builder = builder
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            if !tls.is_empty() {
                builder = builder
                    .set_client_to_sentinel_certificates(tls.certificates())
                    .set_client_to_redis_certificates(tls.certificates());
            }
        }
        Ok(builder.build()?)
    }

    /// A subscription to the failover announcements (`+switch-master`) of the `index`-th
    /// Sentinel (counted round the list), or `None` when it cannot be had now.
    async fn watch(&self, index: usize) -> Option<std::pin::Pin<Box<redis::aio::PubSubStream>>> {
        let addresses = self.addresses().ok()?;
        let address = addresses.get(index % addresses.len())?.clone();
        let mut info = address.into_connection_info().ok()?;
        if let Some(password) = &self.sentinel_password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = self.tls.clone().unwrap_or_default().open(info).ok()?;
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(Box::pin(pubsub.into_on_message()))
        };
        tokio::time::timeout(SENTINEL_TIMEOUT, subscribe).await.ok()?.ok()
    }

    /// The Sentinels' addresses, TLS ones with `--redis-tls`.
    fn addresses(&self) -> BackendResult<Vec<ConnectionAddr>> {
        let mut addresses = Vec::with_capacity(self.sentinels.len());
        for sentinel in &self.sentinels {
            let (host, port) = sentinel
                .trim()
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse::<u16>().ok()?)))
                .filter(|(host, _)| !host.is_empty())
                .ok_or_else(|| {
                    BackendError::Config(format!("a Sentinel address is host:port, not {:?}", sentinel.trim()))
                })?;
            addresses.push(match self.tls {
                Some(_) => ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: false, tls_params: None },
                None => ConnectionAddr::Tcp(host.to_owned(), port),
            });
        }
        if addresses.is_empty() {
            return Err(BackendError::Config("no Sentinel address given".to_owned()));
        }
        Ok(addresses)
    }
}

/// The connections of one room.
struct RoomConnection {
    connection: ConnectionManager,
    /// Whether the room's channel was subscribed: it is again on a new primary.
    subscribed: bool,
}

/// What the backend and its Sentinel watcher share.
struct Shared {
    /// The primary: the one server of `--redis-url`, or the one the Sentinels named last.
    client: Mutex<redis::Client>,
    /// How many times the Sentinels named a new primary.
    epoch: AtomicU64,
    /// [`RETRIES`] or [`SENTINEL_RETRIES`].
    retries: usize,
    /// For pings only: no room's bytes go through it.
    node: Mutex<ConnectionManager>,
    /// One connection per room this node serves.
    rooms: Mutex<HashMap<String, RoomConnection>>,
    /// Where bus messages go, once set.
    deliver: Arc<OnceLock<Deliver>>,
    /// What this node's own bus messages begin with ([`fanout::sender_prefix`]).
    own: Bytes,
    /// Where each room's connection runs, once set ([`RedisBackend::run_rooms_on`]).
    threads: OnceLock<Arc<RoomThreads>>,
}

/// A node's connections to Redis.
pub struct RedisBackend {
    shared: Arc<Shared>,
    /// The task asking the Sentinels for the primary, if Sentinel is in use; stopped with the
    /// backend.
    watcher: Option<tokio::task::AbortHandle>,
    cas: Script,
    create: Script,
    restore: Script,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

impl RedisBackend {
    /// Connects to `url`, for node `node`. A `rediss://` URL speaks TLS, checking Redis's
    /// certificate against `tls.ca` or else the system's roots, and showing `tls.client` when
    /// given; a check cannot be turned off (`#insecure` is refused).
    pub async fn connect(url: &str, node: &str, tls: &RedisTls) -> BackendResult<Self> {
        let info = url.into_connection_info()?;
        let over_tls = match info.addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(BackendError::Config(
                    "a rediss:// URL may not turn the certificate check off (#insecure)".to_owned(),
                ))
            }
            ConnectionAddr::TcpTls { .. } => true,
            _ => false,
        };
        if !over_tls && !tls.is_empty() {
            return Err(BackendError::Config(
                "--redis-ca-file and --redis-cert-file are for a rediss:// URL (TLS)".to_owned(),
            ));
        }
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let client = tls.open(info)?;
        Self::open(client, node, RETRIES).await
    }

    /// Connects to the primary the Sentinels of `settings` name, for node `node`, and follows
    /// it from then on.
    pub async fn connect_via_sentinel(settings: &SentinelSettings, node: &str) -> BackendResult<Self> {
        let mut sentinel = settings.client()?;
        let client = tokio::time::timeout(SENTINEL_TIMEOUT, sentinel.async_get_client())
            .await
            .map_err(|_| BackendError::Config("no Sentinel answered in time".to_owned()))??;
        let mut backend = Self::open(client, node, SENTINEL_RETRIES).await?;
        let shared = Arc::downgrade(&backend.shared);
        let follow = follow_primary(sentinel, settings.clone(), shared);
        backend.watcher = Some(tokio::spawn(follow).abort_handle());
        Ok(backend)
    }

    async fn open(client: redis::Client, node: &str, retries: usize) -> BackendResult<Self> {
        let connection = client.get_connection_manager_with_config(connection_config(retries)).await?;
        Ok(RedisBackend {
            shared: Arc::new(Shared {
                client: Mutex::new(client),
                epoch: AtomicU64::new(0),
                retries,
                node: Mutex::new(connection),
                rooms: Mutex::default(),
                deliver: Arc::default(),
                own: fanout::sender_prefix(node),
                threads: OnceLock::new(),
            }),
            watcher: None,
            cas: Script::new(CAS_SCRIPT),
            create: Script::new(CREATE_SCRIPT),
            restore: Script::new(RESTORE_SCRIPT),
        })
    }

    /// Hands each bus message of the rooms this node subscribes to to `deliver`, as it is
    /// read: on the task of the room's connection, with no queue or task in between (each
    /// hop would wake a thread per message). This node's own messages, which Redis sends
    /// back to it, are dropped there, undecoded. Messages read before this is called are
    /// dropped (no room is subscribed then); a second call changes nothing.
    pub fn deliver_to(&self, deliver: impl Fn(BusMessage) + Send + Sync + 'static) {
        let _ = self.shared.deliver.set(Arc::new(deliver));
    }

    /// Opens each room's connection on the room's thread in `threads`, where its connections
    /// and its publisher task run: the task that reads the connection (and hands bus messages
    /// to the room) then runs there, and so does the one that writes it, so a published edit
    /// and a received one wake no other thread. Connections opened before this is called stay
    /// where they are; those opened again on a new primary after a failover run where they
    /// are first used (on the room's thread: `Shared::resubscribe`, or the room's own
    /// commands); a second call changes nothing.
    pub fn run_rooms_on(&self, threads: Arc<RoomThreads>) {
        let _ = self.shared.threads.set(threads);
    }

    /// The room's own connection, opened on first use.
    async fn room(&self, room: &str) -> BackendResult<ConnectionManager> {
        if let Some(open) = lock(&self.shared.rooms).get(room) {
            return Ok(open.connection.clone());
        }
        let thread = self.shared.threads.get().and_then(|threads| threads.for_room(room)).cloned();
        loop {
            let epoch = self.shared.epoch.load(Ordering::SeqCst);
            let client = lock(&self.shared.client).clone();
            let config = self.shared.room_config(room);
            let connection = match &thread {
                // redis-rs spawns the connection's task on the runtime that opens it.
                Some(thread) => thread
                    .spawn(async move { client.get_connection_manager_with_config(config).await })
                    .await
                    .map_err(|_| {
                        BackendError::Config("the room's thread has stopped (the node is stopping)".to_owned())
                    })??,
                None => client.get_connection_manager_with_config(config).await?,
            };
            let mut rooms = lock(&self.shared.rooms);
            if self.shared.epoch.load(Ordering::SeqCst) != epoch {
                // Opened on a primary the node has just left: again, on the new one.
                continue;
            }
            let open = rooms.entry(room.to_owned()).or_insert(RoomConnection { connection, subscribed: false });
            return Ok(open.connection.clone());
        }
    }
}

impl Shared {
    /// The configuration of a room's connection: its pushes go to [`Shared::deliver`].
    fn room_config(&self, room: &str) -> ConnectionManagerConfig {
        let (target, own) = (self.deliver.clone(), self.own.clone());
        let name = room.to_owned();
        let deliver = move |push: PushInfo| {
            let message = if push.kind == PushKind::Disconnection {
                // An empty payload tells the room that messages may have been missed.
                Some(BusMessage { room: name.clone(), payload: Bytes::new() })
            } else {
                bus_message(push).filter(|message| !message.payload.starts_with(&own))
            };
            if let (Some(message), Some(deliver)) = (message, target.get()) {
                deliver(message);
            }
            Ok::<(), redis::aio::SendError>(())
        };
        connection_config(self.retries).set_push_sender(deliver).set_automatic_resubscription()
    }

    /// Moves every connection to the primary of `client`: the node's, and each room's, whose
    /// channel is subscribed there again, and raises the epoch. The old connections are
    /// dropped (their buffers freed). What the rooms may have missed meanwhile, on the bus or
    /// in the old primary's last writes, the rebuild that the new epoch starts takes care of
    /// (`Rooms::check_health`: records, presence and ends written again, a mutual catch-up).
    async fn switch_to(&self, client: redis::Client) -> BackendResult<Vec<(String, ConnectionManager)>> {
        let node = ConnectionManager::new_lazy_with_config(client.clone(), connection_config(self.retries))?;
        *lock(&self.client) = client.clone();
        *lock(&self.node) = node;
        let mut resubscribe = Vec::new();
        {
            // Under the lock, so that a room subscribing meanwhile is either moved with its
            // subscription or subscribes on the new connection.
            let mut rooms = lock(&self.rooms);
            let threads = self.threads.get();
            for (room, open) in rooms.iter_mut() {
                // Made in the room thread's runtime, as the room's first connection was: redis-rs
                // spawns a connection's tasks on the runtime current where it is made and used.
                let _on_its_thread = threads.and_then(|threads| threads.for_room(room)).map(|thread| thread.enter());
                open.connection = ConnectionManager::new_lazy_with_config(client.clone(), self.room_config(room))?;
                if open.subscribed {
                    resubscribe.push((room.clone(), open.connection.clone()));
                }
            }
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        Ok(resubscribe)
    }

    /// Subscribes each room's channel on its connection, a few at a time; returns those that
    /// failed, to be tried again, but only rooms still open on this connection's primary.
    /// The connections are new and lazy: each is first used, and so opened, on its room's
    /// thread, where redis-rs then runs its task (as `RedisBackend::room` does), not on the
    /// runtime that follows the Sentinels.
    async fn resubscribe(
        &self,
        rooms: Vec<(String, ConnectionManager)>,
        epoch: u64,
    ) -> Vec<(String, ConnectionManager)> {
        use futures_util::stream::{self, StreamExt};
        let threads = self.threads.get().cloned();
        let failed: Vec<_> = stream::iter(rooms)
            .map(|(room, connection)| {
                let thread = threads.as_ref().and_then(|threads| threads.for_room(&room)).cloned();
                async move {
                    let channel = room_channel(&room);
                    let mut subscriber = connection.clone();
                    let subscribed = match thread {
                        Some(thread) => thread
                            .spawn(async move { subscriber.subscribe(channel).await.is_ok() })
                            .await
                            .unwrap_or(false),
                        None => subscriber.subscribe(channel).await.is_ok(),
                    };
                    (!subscribed).then_some((room, connection))
                }
            })
            .buffer_unordered(RESUBSCRIBE_AT_ONCE)
            .filter_map(|failed| async move { failed })
            .collect()
            .await;
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return Vec::new();
        }
        let rooms = lock(&self.rooms);
        failed.into_iter().filter(|(room, _)| rooms.contains_key(room)).collect()
    }
}

/// Asks the Sentinels for the primary when one of them announces a failover
/// (`+switch-master`, heard on a subscription kept to one Sentinel at a time), every
/// [`SENTINEL_CHECK`] in any case, and every [`SENTINEL_POLL`] while something is unsettled;
/// moves the backend's connections when they name another primary, until the backend is
/// dropped. Each question opens connections anew (the crate's Sentinel client): asked twice a
/// second always, that was most of an idle node's CPU with TLS.
async fn follow_primary(mut sentinel: SentinelClient, settings: SentinelSettings, shared: Weak<Shared>) {
    // Rooms whose channel could not be subscribed on the new primary yet.
    let mut pending = Vec::new();
    let mut watch = None;
    let mut next_sentinel = 0;
    // Whether the last question found no primary: a failover may be under way.
    let mut unsettled = false;
    loop {
        if watch.is_none() {
            watch = settings.watch(next_sentinel).await;
            next_sentinel += 1;
        }
        let wait = if unsettled || !pending.is_empty() || watch.is_none() { SENTINEL_POLL } else { SENTINEL_CHECK };
        match &mut watch {
            Some(announcements) => tokio::select! {
                announcement = announcements.next() => {
                    if announcement.is_none() {
                        // The Sentinel went away: another one is watched from the next turn.
                        watch = None;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            },
            None => tokio::time::sleep(wait).await,
        }
        if !pending.is_empty() {
            let Some(shared) = shared.upgrade() else { return };
            let epoch = shared.epoch.load(Ordering::SeqCst);
            pending = shared.resubscribe(std::mem::take(&mut pending), epoch).await;
        }
        // While the Sentinels have not yet promoted a replica, the crate finds no primary
        // (the old one is down, or no longer answers as primary): the connections stay.
        let Ok(Ok(client)) = tokio::time::timeout(SENTINEL_TIMEOUT, sentinel.async_get_client()).await else {
            unsettled = true;
            continue;
        };
        unsettled = false;
        let Some(shared) = shared.upgrade() else { return };
        let current = lock(&shared.client).get_connection_info().addr().clone();
        if client.get_connection_info().addr() == &current {
            continue;
        }
        // Addresses only: the password is in the client's settings, never logged.
        tracing::warn!("Sentinel names a new Redis primary; moving every connection to it");
        match shared.switch_to(client).await {
            Ok(rooms) => {
                let epoch = shared.epoch.load(Ordering::SeqCst);
                pending = shared.resubscribe(rooms, epoch).await;
                if !pending.is_empty() {
                    tracing::warn!(
                        rooms = pending.len(),
                        "rooms not subscribed on the new Redis primary yet; trying again"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not move to the new Redis primary"),
        }
    }
}

/// How a connection reconnects: with backoff, `retries` times per attempt.
fn connection_config(retries: usize) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(retries)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(2))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Turns a pushed pub/sub message into a bus message, ignoring other pushes.
fn bus_message(push: PushInfo) -> Option<BusMessage> {
    if push.kind != PushKind::Message {
        return None;
    }
    let mut data = push.data.into_iter();
    let channel = match data.next()? {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok()?,
        _ => return None,
    };
    let payload = match data.next()? {
        Value::BulkString(bytes) => Bytes::from(bytes),
        _ => return None,
    };
    let room = channel.strip_prefix("balint:room:")?.strip_suffix(":bus")?.to_owned();
    Some(BusMessage { room, payload })
}

fn record_key(room: &str) -> String {
    format!("{}record", room_prefix(room))
}

fn presence_key(room: &str) -> String {
    format!("{}presence", room_prefix(room))
}

fn board_key(room: &str) -> String {
    format!("{}board", room_prefix(room))
}

/// How long a persistent room's board stays in Redis without a save.
const BOARD_TTL_MS: u64 = 400 * 24 * 3600 * 1000;

fn deleted_key(room: &str) -> String {
    format!("{}deleted", room_prefix(room))
}

fn tombstone_key(room: &str) -> String {
    format!("{}ended", room_prefix(room))
}

impl RoomStore for RedisBackend {
    fn create(&self, room: &str, record: Bytes, ttl: Duration) -> BoxFuture<'_, BackendResult<bool>> {
        let keys = (record_key(room), tombstone_key(room));
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            let created: i64 = self
                .create
                .key(keys.0)
                .key(keys.1)
                .arg(record.as_ref())
                .arg(ttl.as_millis() as u64)
                .invoke_async(&mut connection)
                .await?;
            Ok(created == 1)
        }
        .boxed()
    }

    fn restore(&self, room: &str, version: u64, record: Bytes, ttl: Duration) -> BoxFuture<'_, BackendResult<bool>> {
        let keys = (record_key(room), tombstone_key(room));
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            let written: i64 = self
                .restore
                .key(keys.0)
                .key(keys.1)
                .arg(version.to_string())
                .arg(record.as_ref())
                .arg(ttl.as_millis() as u64)
                .invoke_async(&mut connection)
                .await?;
            Ok(written == 1)
        }
        .boxed()
    }

    fn load(&self, room: &str) -> BoxFuture<'_, BackendResult<Option<Versioned>>> {
        let key = record_key(room);
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            let (version, record): (Option<u64>, Option<Vec<u8>>) =
                redis::cmd("HMGET").arg(&key).arg("version").arg("record").query_async(&mut connection).await?;
            match (version, record) {
                (Some(version), Some(record)) => Ok(Some(Versioned { version, record: Bytes::from(record) })),
                (None, None) => Ok(None),
                _ => Err(BackendError::Corrupt),
            }
        }
        .boxed()
    }

    fn compare_and_set(
        &self,
        room: &str,
        expected: u64,
        record: Bytes,
        announce: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BackendResult<bool>> {
        let key = record_key(room);
        let channel = room_channel(room);
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            let written: i64 = self
                .cas
                .key(key)
                .arg(expected.to_string())
                .arg((expected + 1).to_string())
                .arg(record.as_ref())
                .arg(ttl.as_millis() as u64)
                .arg(channel)
                .arg(announce.as_ref())
                .invoke_async(&mut connection)
                .await?;
            Ok(written == 1)
        }
        .boxed()
    }

    fn end(&self, room: &str, tombstone_ttl: Duration) -> BoxFuture<'_, BackendResult<()>> {
        let keys = [record_key(room), presence_key(room)];
        let tombstone = tombstone_key(room);
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            redis::pipe()
                .atomic()
                .del(&keys)
                .ignore()
                .pset_ex(&tombstone, 1, tombstone_ttl.as_millis() as u64)
                .ignore()
                .query_async::<()>(&mut connection)
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn is_ended(&self, room: &str) -> BoxFuture<'_, BackendResult<bool>> {
        let key = tombstone_key(room);
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            Ok(connection.exists(key).await?)
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, BackendResult<()>> {
        let mut connection = lock(&self.shared.node).clone();
        async move {
            redis::cmd("PING").query_async::<()>(&mut connection).await?;
            Ok(())
        }
        .boxed()
    }

    fn primary_epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::SeqCst)
    }
}

impl Presence for RedisBackend {
    fn heartbeat(
        &self,
        room: &str,
        entries: &[String],
        now_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'_, BackendResult<()>> {
        let key = presence_key(room);
        let expiry = now_ms + ttl.as_millis() as u64;
        let scored: Vec<(u64, String)> = entries.iter().map(|e| (expiry, e.clone())).collect();
        let room = room.to_owned();
        async move {
            if scored.is_empty() {
                return Ok(());
            }
            let mut connection = self.room(&room).await?;
            // One ZADD for every member this node holds in the room.
            redis::pipe()
                .zadd_multiple(&key, &scored)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now_ms)
                .ignore()
                // The key outlives its longest entry by a margin, then goes by itself.
                .pexpire(&key, (ttl.as_millis() as i64) * 4)
                .ignore()
                .query_async::<()>(&mut connection)
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn remove(&self, room: &str, entry: &str) -> BoxFuture<'_, BackendResult<()>> {
        let key = presence_key(room);
        let entry = entry.to_owned();
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            connection.zrem::<_, _, ()>(key, entry).await?;
            Ok(())
        }
        .boxed()
    }

    fn live(&self, room: &str, now_ms: u64) -> BoxFuture<'_, BackendResult<Vec<String>>> {
        let key = presence_key(room);
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            let mut live: Vec<String> = connection.zrangebyscore(key, format!("({now_ms}"), "+inf").await?;
            live.sort();
            Ok(live)
        }
        .boxed()
    }
}

impl Bus for RedisBackend {
    fn publish(&self, room: &str, payload: Bytes) -> BoxFuture<'_, BackendResult<()>> {
        let channel = room_channel(room);
        let room = room.to_owned();
        // Only on the connection the room's subscription opened: a message still queued when
        // the room was retired must not open a new connection for a room that is gone.
        let connection = lock(&self.shared.rooms).get(&room).map(|open| open.connection.clone());
        async move {
            let mut connection = connection.ok_or(BackendError::NotOpen)?;
            connection.publish::<_, _, ()>(channel, payload.as_ref()).await?;
            Ok(())
        }
        .boxed()
    }

    fn subscribe(&self, room: &str) -> BoxFuture<'_, BackendResult<()>> {
        let channel = room_channel(room);
        let room = room.to_owned();
        async move {
            self.room(&room).await?;
            // Marked and taken under one lock: a move to a new primary meanwhile either
            // subscribes the room there or hands this call the new connection.
            let mut connection = {
                let mut rooms = lock(&self.shared.rooms);
                let open = rooms.get_mut(&room).ok_or(BackendError::NotOpen)?;
                open.subscribed = true;
                open.connection.clone()
            };
            connection.subscribe(channel).await?;
            Ok(())
        }
        .boxed()
    }

    fn unsubscribe(&self, room: &str) -> BoxFuture<'_, BackendResult<()>> {
        // Dropping the room's connection ends its subscription and frees its buffers.
        let connection = lock(&self.shared.rooms).remove(room);
        drop(connection);
        async { Ok(()) }.boxed()
    }
}

impl BoardStore for RedisBackend {
    fn save(&self, room: &str, stored: StoredBoard) -> BoxFuture<'_, BackendResult<()>> {
        let (key, deleted) = (board_key(room), deleted_key(room));
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            // Atomic, and never for a deleted room.
            Script::new(
                "if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
                 redis.call('HSET', KEYS[1], 'settings', ARGV[1], 'snapshot', ARGV[2])
                 redis.call('PEXPIRE', KEYS[1], ARGV[3])
                 return 1",
            )
            .key(&key)
            .key(&deleted)
            .arg(stored.settings.as_ref())
            .arg(stored.board.as_ref())
            .arg(BOARD_TTL_MS)
            .invoke_async::<i64>(&mut connection)
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn load(&self, room: &str) -> BoxFuture<'_, BackendResult<Option<StoredBoard>>> {
        let key = board_key(room);
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            let (settings, board): (Option<Vec<u8>>, Option<Vec<u8>>) =
                redis::cmd("HMGET").arg(&key).arg("settings").arg("snapshot").query_async(&mut connection).await?;
            match (settings, board) {
                (Some(settings), Some(board)) => {
                    Ok(Some(StoredBoard { settings: Bytes::from(settings), board: Bytes::from(board) }))
                }
                (None, None) => Ok(None),
                _ => Err(BackendError::Corrupt),
            }
        }
        .boxed()
    }

    fn delete(&self, room: &str) -> BoxFuture<'_, BackendResult<()>> {
        let (key, deleted) = (board_key(room), deleted_key(room));
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            redis::pipe()
                .atomic()
                .del(&key)
                .ignore()
                .pset_ex(&deleted, 1, BOARD_TTL_MS)
                .ignore()
                .query_async::<()>(&mut connection)
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn is_deleted(&self, room: &str) -> BoxFuture<'_, BackendResult<bool>> {
        let key = deleted_key(room);
        let room = room.to_owned();
        async move {
            let mut connection = self.room(&room).await?;
            Ok(connection.exists(key).await?)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(sentinels: &[&str], master: &str) -> SentinelSettings {
        SentinelSettings {
            sentinels: sentinels.iter().map(|s| (*s).to_owned()).collect(),
            master: master.to_owned(),
            password: Some("hunter2".to_owned()),
            sentinel_password: Some("swordfish".to_owned()),
            ..SentinelSettings::default()
        }
    }

    #[test]
    fn sentinel_settings_are_checked_and_never_show_their_passwords() {
        assert!(settings(&["10.0.0.1:26379", " [::1]:26380"], "balint").client().is_ok());
        for (sentinels, master) in
            [(&["10.0.0.1"][..], "balint"), (&["10.0.0.1:port"], "balint"), (&[":26379"], "balint"), (&[], "balint")]
                .into_iter()
                .chain([(&["10.0.0.1:26379"][..], " ")])
        {
            let refused = settings(sentinels, master).client().err().expect("refused");
            assert!(matches!(refused, BackendError::Config(_)), "{sentinels:?} {master:?}: {refused}");
        }
        let shown = format!("{:?}", settings(&["10.0.0.1:26379"], "balint"));
        assert!(shown.contains("10.0.0.1:26379") && !shown.contains("hunter2") && !shown.contains("swordfish"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn after_a_move_to_another_primary_the_rooms_connections_run_on_their_thread() {
        const ROOMS: usize = 20;
        let url = crate::backend::suite::test_redis_url();
        let backend = RedisBackend::connect(&url, "moving", &RedisTls::default()).await.expect("the test Redis");
        let threads = Arc::new(RoomThreads::start(1).unwrap());
        backend.run_rooms_on(threads.clone());
        let rooms: Vec<String> = (0..ROOMS).map(|i| format!("tmoving{i}{}", std::process::id())).collect();
        for room in &rooms {
            backend.subscribe(room).await.unwrap();
        }
        let thread = threads.for_room(&rooms[0]).unwrap().clone();
        let main = tokio::runtime::Handle::current();
        let (on_thread, on_main) = (thread.metrics().num_alive_tasks(), main.metrics().num_alive_tasks());
        assert!(on_thread >= ROOMS, "each room's connection runs on its thread: {on_thread} tasks there");

        // What the Sentinel watcher does when they name another primary (here the same server).
        let client = lock(&backend.shared.client).clone();
        let moved = backend.shared.switch_to(client).await.unwrap();
        assert_eq!(moved.len(), ROOMS);
        let epoch = backend.shared.epoch.load(Ordering::SeqCst);
        assert!(backend.shared.resubscribe(moved, epoch).await.is_empty(), "every room subscribed again");
        // The old connections' tasks end; the new ones run where the old ones did.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (now_thread, now_main) = (thread.metrics().num_alive_tasks(), main.metrics().num_alive_tasks());
            if now_thread >= ROOMS && now_main < on_main + ROOMS / 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "after the move: {now_thread} tasks on the room thread (were {on_thread}), {now_main} on the main \
                 runtime (were {on_main})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for room in &rooms {
            backend.unsubscribe(room).await.unwrap();
        }
    }
}
