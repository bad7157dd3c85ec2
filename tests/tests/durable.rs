//! Persistent rooms on the PostgreSQL board store, with real processes failing: Redis
//! restarts (keeping nothing, as in the Compose deployment) while a room is unloaded and
//! while it is in use, and PostgreSQL goes away while rooms are open.

use balint_e2e::handshake_status;
use balint_e2e::process::{
    create_room, fresh_postgres_schema, postgres_board, stored_in_postgres, unloaded, NodeProcess, PostgresProcess,
    RedisProcess,
};
use balint_e2e::YClient;
use serde_json::Value;

const SECRET: &str = "a secret shared across restarts of the test node";

fn start(args: &[&str]) -> NodeProcess {
    let mut all = vec!["--secret", SECRET, "--idle-unload-secs", "1", "--postgres-timeout-ms", "1000"];
    all.extend_from_slice(args);
    NodeProcess::start(&all).unwrap()
}

async fn error_code(node: &NodeProcess, room: &str, token: &str) -> (u16, String) {
    let answer = reqwest::get(format!("{}/ws/{room}?token={token}", node.base())).await.unwrap();
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_survives_redis_restarts_on_the_postgres_store() {
    let mut redis = RedisProcess::start().unwrap();
    let database = fresh_postgres_schema().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let node =
        start(&["--redis-url", &redis.url(), "--postgres-url", &database, "--data-dir", data.path().to_str().unwrap()]);
    let (id, leader, invite) = create_room(&node, false).await;

    // Written, saved, left: the room is unloaded, and Redis restarts empty.
    let mut writer = YClient::join(&node.ws_url(&id, &invite, "ada")).await.unwrap();
    writer.type_text("before the restart. ").await.unwrap();
    stored_in_postgres(&database, &id, b"before the restart").await;
    drop(writer);
    unloaded(&node, &id).await;
    redis.restart().unwrap();

    // The room is rebuilt from PostgreSQL on the next join, its board intact.
    let mut writer = YClient::join(&node.ws_url(&id, &invite, "ben")).await.unwrap();
    assert_eq!(writer.notes(), "before the restart. ");

    // Redis restarts again while the room is in use: nothing is lost, and newcomers join.
    redis.restart().unwrap();
    writer.type_text("during the restart. ").await.unwrap();
    stored_in_postgres(&database, &id, b"during the restart").await;
    let reader = YClient::join(&node.ws_url(&id, &leader, "cy")).await.unwrap();
    assert_eq!(reader.notes(), "before the restart. during the restart. ");
    drop(reader);
    drop(writer);

    // The node dies too, after the save: another node (a fresh process) serves the room
    // from PostgreSQL.
    let mut node = node;
    node.kill();
    let node = start(&["--redis-url", &redis.url(), "--postgres-url", &database]);
    let reader = YClient::join(&node.ws_url(&id, &invite, "dee")).await.unwrap();
    assert_eq!(reader.notes(), "before the restart. during the restart. ");
    drop(reader);

    // A deleted room stays deleted when Redis forgets its tombstone: PostgreSQL keeps one.
    let deleted = reqwest::Client::new()
        .delete(format!("{}/api/rooms/{id}", node.base()))
        .bearer_auth(&leader)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(postgres_board(&database, &id).await.unwrap().is_none(), "the board is deleted");
    redis.restart().unwrap();
    let node = start(&["--redis-url", &redis.url(), "--postgres-url", &database]);
    assert_eq!(error_code(&node, &id, &invite).await, (410, "ended".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postgres_persistent_rooms_say_so_keep_their_boards_and_ephemeral_rooms_carry_on() {
    let mut postgres = PostgresProcess::start().unwrap();
    // Trust authentication ignores the password; it is there to show it never reaches a log.
    let database = format!("postgresql://postgres:pw-never-logged@127.0.0.1:{}/postgres", postgres.port);
    let node = start(&["--board-store", "postgres", "--postgres-url", &database]);

    // A persistent room, saved and unloaded; another one in use; an ephemeral meeting.
    let (kept, _, kept_invite) = create_room(&node, false).await;
    let mut writer = YClient::join(&node.ws_url(&kept, &kept_invite, "ada")).await.unwrap();
    writer.type_text("the group's log. ").await.unwrap();
    stored_in_postgres(&database, &kept, b"the group's log").await;
    drop(writer);
    unloaded(&node, &kept).await;
    let (busy, _, busy_invite) = create_room(&node, false).await;
    let mut busy_writer = YClient::join(&node.ws_url(&busy, &busy_invite, "bo")).await.unwrap();
    busy_writer.type_text("saved once. ").await.unwrap();
    stored_in_postgres(&database, &busy, b"saved once").await;
    let (meeting, meeting_leader, meeting_invite) = create_room(&node, true).await;
    let mut member = YClient::join(&node.ws_url(&meeting, &meeting_invite, "mia")).await.unwrap();
    member.type_text("ephemeral notes. ").await.unwrap();

    postgres.stop();

    // The node stays ready for meetings (a load balancer keeps it), and says the store is away.
    let readyz = || async {
        let response = reqwest::get(format!("{}/readyz", node.base())).await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["ready"].as_bool(), body["store"]["ok"].as_bool()), (Some(true), Some(false)), "{body}");

    // The unloaded persistent room answers 503 board_unreadable, never "ended" or empty.
    assert_eq!(error_code(&node, &kept, &kept_invite).await, (503, "board_unreadable".to_owned()));
    assert_eq!(handshake_status(&node.ws_url(&kept, &kept_invite, "ada")).await, 503);
    // The room in use keeps working in memory; its saves wait for the store.
    busy_writer.type_text("written during the outage. ").await.unwrap();
    // The ephemeral meeting carries on untouched: edits, newcomers, and new meetings.
    member.type_text("more notes. ").await.unwrap();
    let leader = YClient::join(&node.ws_url(&meeting, &meeting_leader, "lena")).await.unwrap();
    assert_eq!(leader.notes(), "ephemeral notes. more notes. ");
    create_room(&node, true).await;

    postgres.restart().unwrap();
    balint_e2e::eventually(|| async { readyz().await.1["store"]["ok"].as_bool() == Some(true) }).await.unwrap();

    // Nothing was overwritten: the unloaded room opens with its board, and the room in use
    // saves what was written meanwhile.
    stored_in_postgres(&database, &busy, b"written during the outage").await;
    let reader = YClient::join(&node.ws_url(&kept, &kept_invite, "cy")).await.unwrap();
    assert_eq!(reader.notes(), "the group's log. ");
    stored_in_postgres(&database, &kept, b"the group's log").await;
    // Nothing of the ephemeral meetings ever reached PostgreSQL: only the persistent rooms.
    let (client, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = client.query("SELECT room FROM balint_boards UNION ALL SELECT room FROM balint_deleted_rooms", &[]);
    let mut rooms: Vec<String> = rows.await.unwrap().iter().map(|row| row.get(0)).collect();
    rooms.sort();
    let mut persistent = vec![kept.clone(), busy.clone()];
    persistent.sort();
    assert_eq!(rooms, persistent, "the board store holds the persistent rooms only");
    let logs = node.logs.lock().unwrap().join("\n");
    assert!(!logs.contains("pw-never-logged"), "the connection string never reaches a log line");
    assert!(logs.contains("board store did not answer"), "the outage is logged: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_lost_with_redis_is_not_reported_as_ended() {
    // Redis as the board store, without persistence (as it must not be run): when it
    // restarts, the room is lost. The answer says so honestly, not "this meeting has ended".
    let mut redis = RedisProcess::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let node = start(&["--redis-url", &redis.url(), "--data-dir", data.path().to_str().unwrap()]);
    let (id, _, invite) = create_room(&node, false).await;
    let writer = YClient::join(&node.ws_url(&id, &invite, "ada")).await.unwrap();
    drop(writer);
    unloaded(&node, &id).await;
    redis.restart().unwrap();
    assert_eq!(error_code(&node, &id, &invite).await, (404, "unknown_room".to_owned()));
}
