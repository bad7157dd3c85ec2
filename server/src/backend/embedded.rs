//! The embedded backend: everything in this process's memory. The default, and enough for one
//! node. Its bus has no other node to reach, so publishing is a no-op.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{self, BoxFuture, FutureExt};

use super::{BackendResult, Bus, Presence, RoomStore, Versioned};

/// Room records, presence and tombstones in memory.
#[derive(Default)]
pub struct Embedded {
    records: Mutex<HashMap<String, Versioned>>,
    presence: Mutex<HashMap<String, HashMap<String, u64>>>,
    tombstones: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, BackendResult<T>> {
    future::ready(Ok(value)).boxed()
}

impl RoomStore for Embedded {
    fn create(&self, room: &str, record: Bytes, _ttl: Duration) -> BoxFuture<'_, BackendResult<bool>> {
        let ended = lock(&self.tombstones).get(room).is_some_and(|expiry| *expiry > Instant::now());
        let mut records = lock(&self.records);
        let created = !ended && !records.contains_key(room);
        if created {
            records.insert(room.to_owned(), Versioned { version: 1, record });
        }
        ready(created)
    }

    fn restore(&self, room: &str, version: u64, record: Bytes, _ttl: Duration) -> BoxFuture<'_, BackendResult<bool>> {
        let ended = lock(&self.tombstones).get(room).is_some_and(|expiry| *expiry > Instant::now());
        let mut records = lock(&self.records);
        let stale = records.get(room).is_none_or(|current| current.version < version);
        let written = !ended && stale;
        if written {
            records.insert(room.to_owned(), Versioned { version, record });
        }
        ready(written)
    }

    fn load(&self, room: &str) -> BoxFuture<'_, BackendResult<Option<Versioned>>> {
        ready(lock(&self.records).get(room).cloned())
    }

    fn compare_and_set(
        &self,
        room: &str,
        expected: u64,
        record: Bytes,
        _announce: Bytes,
        _ttl: Duration,
    ) -> BoxFuture<'_, BackendResult<bool>> {
        let mut records = lock(&self.records);
        let written = match records.get_mut(room) {
            Some(current) if current.version == expected => {
                *current = Versioned { version: expected + 1, record };
                true
            }
            _ => false,
        };
        ready(written)
    }

    fn end(&self, room: &str, tombstone_ttl: Duration) -> BoxFuture<'_, BackendResult<()>> {
        lock(&self.records).remove(room);
        lock(&self.presence).remove(room);
        let mut tombstones = lock(&self.tombstones);
        tombstones.retain(|_, expiry| *expiry > Instant::now());
        tombstones.insert(room.to_owned(), Instant::now() + tombstone_ttl);
        ready(())
    }

    fn is_ended(&self, room: &str) -> BoxFuture<'_, BackendResult<bool>> {
        ready(lock(&self.tombstones).get(room).is_some_and(|expiry| *expiry > Instant::now()))
    }

    fn ping(&self) -> BoxFuture<'_, BackendResult<()>> {
        ready(())
    }
}

impl Presence for Embedded {
    fn heartbeat(
        &self,
        room: &str,
        entries: &[String],
        now_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'_, BackendResult<()>> {
        let mut presence = lock(&self.presence);
        let room = presence.entry(room.to_owned()).or_default();
        for entry in entries {
            room.insert(entry.clone(), now_ms + ttl.as_millis() as u64);
        }
        ready(())
    }

    fn remove(&self, room: &str, entry: &str) -> BoxFuture<'_, BackendResult<()>> {
        let mut presence = lock(&self.presence);
        if let Some(entries) = presence.get_mut(room) {
            entries.remove(entry);
            if entries.is_empty() {
                presence.remove(room);
            }
        }
        ready(())
    }

    fn live(&self, room: &str, now_ms: u64) -> BoxFuture<'_, BackendResult<Vec<String>>> {
        let mut live: Vec<String> = lock(&self.presence)
            .get(room)
            .map(|entries| entries.iter().filter(|(_, &exp)| exp > now_ms).map(|(e, _)| e.clone()).collect())
            .unwrap_or_default();
        live.sort();
        ready(live)
    }
}

impl Bus for Embedded {
    fn publish(&self, _room: &str, _payload: Bytes) -> BoxFuture<'_, BackendResult<()>> {
        ready(())
    }

    fn subscribe(&self, _room: &str) -> BoxFuture<'_, BackendResult<()>> {
        ready(())
    }

    fn unsubscribe(&self, _room: &str) -> BoxFuture<'_, BackendResult<()>> {
        ready(())
    }

    fn reaches_other_nodes(&self) -> bool {
        false
    }
}
