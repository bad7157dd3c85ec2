//! The Redis backend, for several nodes sharing one deployment.
//!
//! Each room this node serves gets its own [`ConnectionManager`], which carries the room's
//! commands and, over RESP3 pushes, its pub/sub messages; a node-wide one only answers pings.
//! A connection's buffers hold the bytes that went through it, so a room's content must not
//! ride a connection that outlives the room: when the room is released its connection is
//! dropped, and its buffers are freed (and wiped, see `crate::wipe`). Each connection
//! reconnects by itself with backoff after Redis restarts and resubscribes its channel.
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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value};

use crate::fanout;

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

/// A node's connections to Redis.
pub struct RedisBackend {
    client: redis::Client,
    /// For pings only: no room's bytes go through it.
    node: ConnectionManager,
    /// One connection per room this node serves.
    rooms: Mutex<HashMap<String, ConnectionManager>>,
    /// Where bus messages go, once set.
    deliver: Arc<OnceLock<Deliver>>,
    /// What this node's own bus messages begin with ([`fanout::sender_prefix`]).
    own: Bytes,
    cas: Script,
    create: Script,
    restore: Script,
}

impl RedisBackend {
    /// Connects to `url`, for node `node`.
    pub async fn connect(url: &str, node: &str) -> BackendResult<Self> {
        let info = url.into_connection_info()?;
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let connection = client.get_connection_manager_with_config(connection_config()).await?;
        Ok(RedisBackend {
            client,
            node: connection,
            rooms: Mutex::default(),
            deliver: Arc::default(),
            own: fanout::sender_prefix(node),
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
        let _ = self.deliver.set(Arc::new(deliver));
    }

    /// The room's own connection, opened on first use.
    async fn room(&self, room: &str) -> BackendResult<ConnectionManager> {
        if let Some(connection) = lock(&self.rooms).get(room) {
            return Ok(connection.clone());
        }
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
        let config = connection_config().set_push_sender(deliver).set_automatic_resubscription();
        let connection = self.client.get_connection_manager_with_config(config).await?;
        Ok(lock(&self.rooms).entry(room.to_owned()).or_insert(connection).clone())
    }
}

fn connection_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
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
        let mut connection = self.node.clone();
        async move {
            redis::cmd("PING").query_async::<()>(&mut connection).await?;
            Ok(())
        }
        .boxed()
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
        let connection = lock(&self.rooms).get(&room).cloned();
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
            let mut connection = self.room(&room).await?;
            connection.subscribe(channel).await?;
            Ok(())
        }
        .boxed()
    }

    fn unsubscribe(&self, room: &str) -> BoxFuture<'_, BackendResult<()>> {
        // Dropping the room's connection ends its subscription and frees its buffers.
        let connection = lock(&self.rooms).remove(room);
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
