//! The embedded backend: everything in this process's memory. The default, and enough for one
//! node. Its bus has no other node to reach, so publishing is a no-op.
//!
//! Records expire as Redis's keys do: each write sets its time to live, and an expired record
//! is gone (a room set up ahead and never opened goes when its links lapse; a room nobody
//! wrote to for a day, as in Redis). Expired records are dropped when looked at, and all at
//! once at most every [`SWEEP_EVERY`] when a room is created, so a node that runs for months
//! does not keep every room ever set up.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{self, BoxFuture, FutureExt};

use super::{BackendResult, Bus, Presence, RoomStore, Versioned};

/// At most how often creating a room sweeps every expired record away.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Room records, presence and tombstones in memory.
pub struct Embedded {
    records: Mutex<Records>,
    presence: Mutex<HashMap<String, HashMap<String, u64>>>,
    tombstones: Mutex<HashMap<String, Instant>>,
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded {
            records: Mutex::new(Records { held: HashMap::new(), next_sweep: Instant::now() + SWEEP_EVERY }),
            presence: Mutex::default(),
            tombstones: Mutex::default(),
        }
    }
}

/// The records, each with the moment it expires.
struct Records {
    held: HashMap<String, (Versioned, Instant)>,
    next_sweep: Instant,
}

impl Records {
    /// The room's record unless it expired (then it is dropped).
    fn live(&mut self, room: &str, now: Instant) -> Option<&mut Versioned> {
        if self.held.get(room).is_some_and(|(_, expires)| *expires <= now) {
            self.held.remove(room);
        }
        self.held.get_mut(room).map(|(record, _)| record)
    }

    fn put(&mut self, room: &str, record: Versioned, ttl: Duration, now: Instant) {
        self.held.insert(room.to_owned(), (record, now + ttl));
    }

    /// Drops every expired record, at most once every [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if now >= self.next_sweep {
            self.held.retain(|_, (_, expires)| *expires > now);
            self.next_sweep = now + SWEEP_EVERY;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, BackendResult<T>> {
    future::ready(Ok(value)).boxed()
}

impl Embedded {
    fn is_tombstoned(&self, room: &str, now: Instant) -> bool {
        lock(&self.tombstones).get(room).is_some_and(|expiry| *expiry > now)
    }
}

impl RoomStore for Embedded {
    fn create(&self, room: &str, record: Bytes, ttl: Duration) -> BoxFuture<'_, BackendResult<bool>> {
        let now = Instant::now();
        let ended = self.is_tombstoned(room, now);
        let mut records = lock(&self.records);
        records.sweep(now);
        let created = !ended && records.live(room, now).is_none();
        if created {
            records.put(room, Versioned { version: 1, record }, ttl, now);
        }
        ready(created)
    }

    fn restore(&self, room: &str, version: u64, record: Bytes, ttl: Duration) -> BoxFuture<'_, BackendResult<bool>> {
        let now = Instant::now();
        let ended = self.is_tombstoned(room, now);
        let mut records = lock(&self.records);
        let stale = records.live(room, now).is_none_or(|current| current.version < version);
        let written = !ended && stale;
        if written {
            records.put(room, Versioned { version, record }, ttl, now);
        }
        ready(written)
    }

    fn load(&self, room: &str) -> BoxFuture<'_, BackendResult<Option<Versioned>>> {
        ready(lock(&self.records).live(room, Instant::now()).cloned())
    }

    fn compare_and_set(
        &self,
        room: &str,
        expected: u64,
        record: Bytes,
        _announce: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BackendResult<bool>> {
        let now = Instant::now();
        let mut records = lock(&self.records);
        let written = records.live(room, now).is_some_and(|current| current.version == expected);
        if written {
            records.put(room, Versioned { version: expected + 1, record }, ttl, now);
        }
        ready(written)
    }

    fn end(&self, room: &str, tombstone_ttl: Duration) -> BoxFuture<'_, BackendResult<()>> {
        lock(&self.records).held.remove(room);
        lock(&self.presence).remove(room);
        let mut tombstones = lock(&self.tombstones);
        tombstones.retain(|_, expiry| *expiry > Instant::now());
        tombstones.insert(room.to_owned(), Instant::now() + tombstone_ttl);
        ready(())
    }

    fn is_ended(&self, room: &str) -> BoxFuture<'_, BackendResult<bool>> {
        ready(self.is_tombstoned(room, Instant::now()))
    }

    fn ping(&self) -> BoxFuture<'_, BackendResult<()>> {
        ready(())
    }

    fn held_in_memory(&self) -> Option<usize> {
        let now = Instant::now();
        let records = lock(&self.records);
        Some(records.held.values().filter(|(_, expires)| *expires > now).count())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_records_are_not_counted_and_a_creation_sweeps_them_away() {
        let store = Embedded::default();
        for i in 0..100 {
            store.create(&format!("r{i}"), Bytes::from_static(b"x"), Duration::from_millis(20)).await.unwrap();
        }
        store.create("kept", Bytes::from_static(b"x"), Duration::from_secs(60)).await.unwrap();
        assert_eq!(store.held_in_memory(), Some(101));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(store.held_in_memory(), Some(1), "expired records do not count");
        // A creation before the sweep is due leaves them (they are dropped when looked at) ...
        store.create("second", Bytes::from_static(b"x"), Duration::from_secs(60)).await.unwrap();
        assert_eq!(lock(&store.records).held.len(), 102);
        assert!(store.load("r0").await.unwrap().is_none());
        assert_eq!(lock(&store.records).held.len(), 101);
        // ... and the first one after it drops every expired record at once.
        lock(&store.records).next_sweep = Instant::now();
        store.create("third", Bytes::from_static(b"x"), Duration::from_secs(60)).await.unwrap();
        assert_eq!(lock(&store.records).held.len(), 3);
        assert!(lock(&store.records).next_sweep > Instant::now() + SWEEP_EVERY / 2, "not again before a minute");
    }
}
