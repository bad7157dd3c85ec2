//! One suite for every backend: the embedded one and Redis.
//!
//! The Redis runs use the server at `BALINT_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`,
//! which `scripts/test.sh` starts when none is running). They fail, never skip, when it is
//! unreachable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::embedded::Embedded;
use super::redis::RedisBackend;
use super::{Presence, RoomStore};

/// The Redis server the tests use.
pub fn test_redis_url() -> String {
    std::env::var("BALINT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique_room() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!("t{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 14).to_ascii_lowercase())
}

const TTL: Duration = Duration::from_secs(60);

async fn backends() -> Vec<(&'static str, Arc<dyn RoomStore>, Arc<dyn Presence>)> {
    let embedded = Arc::new(Embedded::default());
    let (redis, _bus) = RedisBackend::connect(&test_redis_url()).await.unwrap_or_else(|e| {
        panic!("Redis at {} is needed for this test (scripts/test.sh starts one): {e}", test_redis_url())
    });
    let redis = Arc::new(redis);
    vec![("embedded", embedded.clone(), embedded), ("redis", redis.clone(), redis)]
}

#[tokio::test]
async fn a_record_is_created_once_and_loads_at_version_one() {
    for (name, store, _) in backends().await {
        let room = unique_room();
        assert!(store.create(&room, Bytes::from_static(b"first"), TTL).await.unwrap(), "{name}");
        assert!(!store.create(&room, Bytes::from_static(b"again"), TTL).await.unwrap(), "{name}");
        let loaded = store.load(&room).await.unwrap().unwrap();
        assert_eq!((loaded.version, &loaded.record[..]), (1, &b"first"[..]), "{name}");
        assert!(store.load(&unique_room()).await.unwrap().is_none(), "{name}");
    }
}

#[tokio::test]
async fn compare_and_set_lets_exactly_one_of_two_racing_writers_win() {
    for (name, store, _) in backends().await {
        let room = unique_room();
        store.create(&room, Bytes::from_static(b"v1"), TTL).await.unwrap();
        // Both writers read version 1 and race.
        let (a, b) = tokio::join!(
            store.compare_and_set(&room, 1, Bytes::from_static(b"a"), Bytes::new(), TTL),
            store.compare_and_set(&room, 1, Bytes::from_static(b"b"), Bytes::new(), TTL),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a ^ b, "{name}: exactly one write wins");
        let loaded = store.load(&room).await.unwrap().unwrap();
        assert_eq!(loaded.version, 2, "{name}");
        assert_eq!(&loaded.record[..], if a { b"a" } else { b"b" }, "{name}");
        // The loser retries on the fresh version and succeeds.
        assert!(store.compare_and_set(&room, 2, Bytes::from_static(b"c"), Bytes::new(), TTL).await.unwrap());
    }
}

#[tokio::test]
async fn an_ended_room_leaves_only_a_tombstone() {
    for (name, store, presence) in backends().await {
        let room = unique_room();
        store.create(&room, Bytes::from_static(b"x"), TTL).await.unwrap();
        presence.heartbeat(&room, &["m1@n1".to_owned()], 0, TTL).await.unwrap();
        assert!(!store.is_ended(&room).await.unwrap(), "{name}");
        store.end(&room, TTL).await.unwrap();
        assert!(store.is_ended(&room).await.unwrap(), "{name}");
        assert!(store.load(&room).await.unwrap().is_none(), "{name}");
        assert!(presence.live(&room, 0).await.unwrap().is_empty(), "{name}");
        // An ended room cannot be created again under the same id.
        assert!(!store.create(&room, Bytes::from_static(b"y"), TTL).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn presence_entries_expire_unless_refreshed() {
    for (name, _, presence) in backends().await {
        let room = unique_room();
        let ttl = Duration::from_secs(30);
        // One call refreshes several entries (a node's members of the room).
        presence.heartbeat(&room, &["a@n1".to_owned(), "b@n2".to_owned()], 1_000, ttl).await.unwrap();
        assert_eq!(presence.live(&room, 2_000).await.unwrap(), ["a@n1", "b@n2"], "{name}");
        // Only a refreshes: b's node died.
        presence.heartbeat(&room, &["a@n1".to_owned()], 25_000, ttl).await.unwrap();
        assert_eq!(presence.live(&room, 31_000).await.unwrap(), ["a@n1"], "{name}");
        presence.remove(&room, "a@n1").await.unwrap();
        assert!(presence.live(&room, 31_000).await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn restore_puts_back_a_lost_record_but_never_an_older_one() {
    for (name, store, _) in backends().await {
        let room = unique_room();
        // The store lost everything; a node puts back what it holds.
        assert!(store.restore(&room, 7, Bytes::from_static(b"seven"), TTL).await.unwrap(), "{name}");
        // Another node holds an older copy: refused.
        assert!(!store.restore(&room, 5, Bytes::from_static(b"five"), TTL).await.unwrap(), "{name}");
        let loaded = store.load(&room).await.unwrap().unwrap();
        assert_eq!((loaded.version, &loaded.record[..]), (7, &b"seven"[..]), "{name}");
        // Writes continue from the restored version.
        assert!(store.compare_and_set(&room, 7, Bytes::from_static(b"8"), Bytes::new(), TTL).await.unwrap());
        store.end(&room, TTL).await.unwrap();
        assert!(!store.restore(&room, 9, Bytes::from_static(b"x"), TTL).await.unwrap(), "{name}: ended stays ended");
    }
}

async fn board_stores(dir: &std::path::Path) -> Vec<(&'static str, Arc<dyn super::BoardStore>)> {
    let (redis, _bus) = RedisBackend::connect(&test_redis_url()).await.expect("Redis for the board store suite");
    vec![("files", Arc::new(super::files::FileStore::new(dir))), ("redis", Arc::new(redis))]
}

#[tokio::test]
async fn a_saved_board_loads_back_and_a_save_replaces_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in board_stores(dir.path()).await {
        let room = unique_room();
        assert!(store.load(&room).await.unwrap().is_none(), "{name}");
        let first = super::StoredBoard { settings: Bytes::from_static(b"{}"), board: Bytes::from_static(b"one") };
        store.save(&room, first).await.unwrap();
        let second =
            super::StoredBoard { settings: Bytes::from_static(b"{\"a\":1}"), board: Bytes::from_static(b"two") };
        store.save(&room, second.clone()).await.unwrap();
        assert_eq!(store.load(&room).await.unwrap(), Some(second), "{name}");
        store.delete(&room).await.unwrap();
        assert!(store.load(&room).await.unwrap().is_none(), "{name}: deleted for good");
    }
}

#[tokio::test]
async fn a_damaged_board_file_is_an_error_never_an_empty_board() {
    let dir = tempfile::tempdir().unwrap();
    let store = super::files::FileStore::new(dir.path());
    let room = unique_room();
    std::fs::create_dir_all(dir.path().join("rooms")).unwrap();
    let path = dir.path().join("rooms").join(format!("{room}.board"));
    std::fs::write(&path, b"not a board").unwrap();
    assert!(matches!(super::BoardStore::load(&store, &room).await, Err(super::BackendError::Corrupt)));
    assert_eq!(std::fs::read(&path).unwrap(), b"not a board", "the stored copy is kept as it was");
}
