//! One suite for every backend: the embedded one and Redis; and for every board store: files,
//! Redis and PostgreSQL.
//!
//! The Redis runs use the server at `BALINT_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`,
//! which `scripts/test.sh` starts when none is running); the PostgreSQL runs the one at
//! `BALINT_TEST_POSTGRES_URL` (default `postgresql://postgres@127.0.0.1:5432/test`, which
//! `scripts/test.sh` starts when none answers), each test in a schema of its own so that tests
//! run in parallel. They fail, never skip, when it is unreachable.

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

/// The PostgreSQL server the tests use (a role that may create schemas).
pub fn test_postgres_url() -> String {
    std::env::var("BALINT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh, empty schema on the test PostgreSQL, and a URL whose connections use it.
pub async fn fresh_postgres_schema() -> String {
    let (client, connection) = tokio_postgres::connect(&test_postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is needed for this test (scripts/test.sh starts one): {e}"));
    tokio::spawn(connection);
    let schema = unique_room();
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("create a test schema");
    let separator = if test_postgres_url().contains('?') { '&' } else { '?' };
    format!("{}{separator}options=-c%20search_path%3D{schema}", test_postgres_url())
}

async fn postgres_store() -> super::postgres::PostgresStore {
    super::postgres::PostgresStore::connect(&fresh_postgres_schema().await, 4, Duration::from_secs(5))
        .await
        .expect("PostgreSQL board store")
}

fn unique_room() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!("t{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 14).to_ascii_lowercase())
}

const TTL: Duration = Duration::from_secs(60);

async fn backends() -> Vec<(&'static str, Arc<dyn RoomStore>, Arc<dyn Presence>)> {
    let embedded = Arc::new(Embedded::default());
    let redis = RedisBackend::connect(&test_redis_url(), "suite", &Default::default()).await.unwrap_or_else(|e| {
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
async fn a_record_expires_after_its_time_to_live_unless_written_again() {
    let ttl = Duration::from_millis(1_000);
    for (name, store, _) in backends().await {
        let kept = unique_room();
        let left = unique_room();
        let started = tokio::time::Instant::now();
        store.create(&kept, Bytes::from_static(b"v1"), ttl).await.unwrap();
        store.create(&left, Bytes::from_static(b"v1"), ttl).await.unwrap();
        // Each write sets the time to live again.
        tokio::time::sleep_until(started + ttl / 2).await;
        assert!(store.compare_and_set(&kept, 1, Bytes::from_static(b"v2"), Bytes::new(), ttl).await.unwrap(), "{name}");
        tokio::time::sleep_until(started + ttl * 6 / 5).await;
        assert!(store.load(&left).await.unwrap().is_none(), "{name}: a record nobody wrote to is gone");
        assert_eq!(store.load(&kept).await.unwrap().map(|v| v.version), Some(2), "{name}: the written one stays");
        tokio::time::sleep_until(started + ttl * 2).await;
        assert!(store.load(&kept).await.unwrap().is_none(), "{name}: and goes a time to live after its write");
        // An expired room is no room: its id may be set up again (it is not ended).
        assert!(store.create(&left, Bytes::from_static(b"new"), ttl).await.unwrap(), "{name}");
        assert!(!store.is_ended(&left).await.unwrap(), "{name}");
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
    let redis = RedisBackend::connect(&test_redis_url(), "suite", &Default::default())
        .await
        .expect("Redis for the board store suite");
    vec![
        ("files", Arc::new(super::files::FileStore::new(dir))),
        ("redis", Arc::new(redis)),
        ("postgres", Arc::new(postgres_store().await)),
    ]
}

#[tokio::test]
async fn a_deleted_room_keeps_a_tombstone_and_a_late_save_does_not_bring_it_back() {
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in board_stores(dir.path()).await {
        let room = unique_room();
        let board = super::StoredBoard { settings: Bytes::from_static(b"{}"), board: Bytes::from_static(b"one") };
        store.save(&room, board.clone()).await.unwrap();
        assert!(!store.is_deleted(&room).await.unwrap(), "{name}");
        store.delete(&room).await.unwrap();
        assert!(store.is_deleted(&room).await.unwrap(), "{name}: the tombstone is kept");
        // Another node saves the room it still held: nothing comes back.
        store.save(&room, board).await.unwrap();
        assert!(store.load(&room).await.unwrap().is_none(), "{name}: a deleted room stays deleted");
        assert!(!store.is_deleted(&unique_room()).await.unwrap(), "{name}: other rooms are not deleted");
    }
}

#[tokio::test]
async fn postgres_migrations_apply_once_when_nodes_start_together() {
    let url = fresh_postgres_schema().await;
    let timeout = Duration::from_secs(5);
    let (a, b) = tokio::join!(
        super::postgres::PostgresStore::connect(&url, 2, timeout),
        super::postgres::PostgresStore::connect(&url, 2, timeout),
    );
    let (a, b) = (a.expect("first node"), b.expect("second node"));
    let board = super::StoredBoard { settings: Bytes::from_static(b"{}"), board: Bytes::from_static(b"x") };
    let room = unique_room();
    super::BoardStore::save(&a, &room, board.clone()).await.unwrap();
    assert_eq!(super::BoardStore::load(&b, &room).await.unwrap(), Some(board), "both nodes share the tables");
    // A third start finds everything applied.
    super::postgres::PostgresStore::connect(&url, 1, timeout).await.expect("a restart");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let applied: i64 = client.query_one("SELECT count(*) FROM balint_migrations", &[]).await.unwrap().get(0);
    assert_eq!(applied, 1, "each migration is recorded once");
}

#[tokio::test]
async fn a_postgres_failure_never_names_the_connection_string() {
    // Nothing listens on port 1; the URL carries a password.
    let url = "postgresql://balint:s3cret-password@127.0.0.1:1/boards";
    let error = super::postgres::PostgresStore::connect(url, 1, Duration::from_secs(2)).await.err().expect("no server");
    let text = error.to_string();
    assert!(text.contains("cannot reach PostgreSQL"), "says what failed: {text}");
    assert!(!text.contains("s3cret") && !text.contains("127.0.0.1:1"), "never where: {text}");
    let error = super::postgres::PostgresStore::connect("postgresql://balint:s3cret@[bad", 1, Duration::from_secs(2))
        .await
        .err()
        .expect("a bad URL");
    assert!(!error.to_string().contains("s3cret"), "{error}");
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

#[tokio::test]
async fn a_postgres_url_that_requires_tls_is_refused_rather_than_sent_in_the_clear() {
    let separator = if test_postgres_url().contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}sslmode=require", test_postgres_url());
    let refused = super::postgres::PostgresStore::connect(&url, 1, Duration::from_secs(2)).await;
    assert!(refused.is_err(), "the server has no TLS: it must not connect in the clear");
}
