//! Persistent rooms: the board survives restarts on every board store (files, Redis,
//! PostgreSQL), a leader exports it, and a delete leaves nothing but a tombstone.

use balint_client::seal::RoomKey;
use balint_e2e::handshake_status;
use balint_e2e::process::{fresh_postgres_schema, postgres_board, NodeProcess, RedisProcess};
use balint_e2e::sealed_client::SealedClient;
use balint_e2e::{eventually, YClient};
use balint_proto::close;
use balint_proto::room::Template;
use serde_json::{json, Value};

const SECRET: &str = "a secret shared across restarts of the test node";

/// The board store a test runs on.
#[derive(Clone, Copy)]
enum Store<'a> {
    /// One node, boards as files.
    Files,
    /// Redis holds everything (records and boards).
    Redis(&'a RedisProcess),
    /// Redis holds records; PostgreSQL (the URL, with the test's schema) holds boards.
    Postgres(&'a RedisProcess, &'a str),
}

fn start(data: &std::path::Path, store: Store<'_>) -> NodeProcess {
    let data = data.to_str().unwrap().to_owned();
    let mut args = vec!["--secret".to_owned(), SECRET.to_owned(), "--data-dir".to_owned(), data];
    match store {
        Store::Files => {}
        Store::Redis(redis) => args.extend(["--redis-url".to_owned(), redis.url()]),
        Store::Postgres(redis, url) => {
            args.extend(["--redis-url".to_owned(), redis.url(), "--postgres-url".to_owned(), url.to_owned()])
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProcess::start(&args).unwrap()
}

async fn create(node: &NodeProcess) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/api/rooms", node.base()))
        .json(&json!({"title": "Thursday log", "ephemeral": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn export(node: &NodeProcess, room: &Value, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/api/rooms/{}/export.md", node.base(), room["room"].as_str().unwrap()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Writes in a room, restarts the node (gracefully or with SIGKILL after the save window),
/// and checks the board, the export and the delete.
async fn survives_restarts(store: Store<'_>) {
    let data = tempfile::tempdir().unwrap();
    let mut node = start(data.path(), store);
    let room = create(&node).await;
    let id = room["room"].as_str().unwrap().to_owned();
    let leader = room["leader_token"].as_str().unwrap().to_owned();
    let invite = room["invite_token"].as_str().unwrap().to_owned();

    // A graceful restart loses nothing, even what was written just before it.
    let mut writer = YClient::join(&node.ws_url(&id, &invite, "ada")).await.unwrap();
    writer.type_text("first session. ").await.unwrap();
    writer.add_card("ada", "reflection", "a feeling of being rushed").await.unwrap();
    let mut witness = YClient::join(&node.ws_url(&id, &leader, "lena")).await.unwrap();
    witness.wait_until(|c| c.notes().contains("first session")).await.unwrap();
    drop(writer);
    drop(witness);
    let status_code = node.terminate().unwrap();
    assert!(status_code.success(), "graceful stop: {status_code:?}");
    let mut node = start(data.path(), store);
    let reader = YClient::join(&node.ws_url(&id, &invite, "ben")).await.unwrap();
    assert_eq!(reader.notes(), "first session. ");
    assert_eq!(reader.card_count(), 1, "the card written just before the restart");

    // After a SIGKILL, at most the save window is lost: what was saved is there.
    let mut writer = reader;
    writer.type_text("second session. ").await.unwrap();
    saved(data.path(), store, &id, &[b"second session"]).await;
    drop(writer);
    node.kill();
    let node = start(data.path(), store);
    let reader = YClient::join(&node.ws_url(&id, &invite, "cy")).await.unwrap();
    assert_eq!(reader.notes(), "first session. second session. ");
    drop(reader);

    // The export holds the notes and the cards, grouped by phase; members may not export.
    let response = export(&node, &room, &leader).await;
    assert_eq!(response.status(), 200);
    let markdown = response.text().await.unwrap();
    assert!(markdown.contains("# Thursday log"), "{markdown}");
    assert!(markdown.contains("first session. second session."), "{markdown}");
    assert!(markdown.contains("### Reflection"), "{markdown}");
    assert!(markdown.contains("- **ada**: a feeling of being rushed"), "{markdown}");
    assert_eq!(export(&node, &room, &invite).await.status(), 403);

    // Deleted for good: nothing stored, and the room answers 410.
    let deleted = reqwest::Client::new()
        .delete(format!("{}/api/rooms/{id}", node.base()))
        .bearer_auth(&leader)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(handshake_status(&node.ws_url(&id, &invite, "dan")).await, 410);
    match store {
        Store::Files => {
            assert!(!data.path().join("rooms").join(format!("{id}.board")).exists());
            // The tombstone the file store keeps: an empty file named by the id.
            assert_eq!(std::fs::read(data.path().join("rooms").join(format!("{id}.deleted"))).unwrap(), b"");
        }
        Store::Redis(redis) | Store::Postgres(redis, _) => {
            let port = redis.port.to_string();
            let keys = std::process::Command::new("redis-cli").args(["-p", &port, "--scan"]).output().unwrap();
            let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
            // Only tombstones: the meeting's, and the Redis board store's own (the id only).
            assert!(
                keys.lines().filter(|k| k.contains(&id)).all(|k| k.ends_with(":ended") || k.ends_with(":deleted")),
                "{keys}"
            );
        }
    }
    if let Store::Postgres(_, url) = store {
        assert!(postgres_board(url, &id).await.unwrap().is_none(), "the board row is deleted");
    }
    drop(node);
    let node = start(data.path(), store);
    assert_eq!(handshake_status(&node.ws_url(&id, &invite, "eve")).await, 410, "still gone after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_survives_restarts_on_the_file_store() {
    survives_restarts(Store::Files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_survives_restarts_on_the_redis_store() {
    let redis = RedisProcess::start().unwrap();
    survives_restarts(Store::Redis(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_survives_restarts_on_the_postgres_store() {
    let redis = RedisProcess::start().unwrap();
    let url = fresh_postgres_schema().await.unwrap();
    survives_restarts(Store::Postgres(&redis, &url)).await;
}

/// What a persistent room saved: its settings and its board, as stored.
async fn stored(data: &std::path::Path, store: Store<'_>, id: &str) -> Vec<u8> {
    match store {
        Store::Files => std::fs::read(data.join("rooms").join(format!("{id}.board"))).unwrap_or_default(),
        Store::Postgres(_, url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            let row = client.query_opt("SELECT settings || board FROM balint_boards WHERE room = $1", &[&id]).await;
            row.unwrap().map(|row| row.get(0)).unwrap_or_default()
        }
        Store::Redis(redis) => {
            let port = redis.port.to_string();
            let key = format!("balint:room:{id}:board");
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port, "HMGET", &key, "settings", "snapshot"])
                .output();
            out.unwrap().stdout
        }
    }
}

/// Waits until what the room saved holds every one of `needles`.
async fn saved(data: &std::path::Path, store: Store<'_>, id: &str, needles: &[&[u8]]) {
    eventually(|| async {
        let bytes = stored(data, store, id).await;
        needles.iter().all(|n| memchr::memmem::find(&bytes, n).is_some())
    })
    .await
    .unwrap();
}

/// Restarts the node. With Redis, the room's record is deleted first (as when its safety-net
/// expiry passed), so that the meeting starts again from the settings saved with the board.
fn restart(node: &mut NodeProcess, data: &std::path::Path, store: Store<'_>, id: &str) -> NodeProcess {
    node.kill();
    if let Store::Redis(redis) | Store::Postgres(redis, _) = store {
        let key = format!("balint:room:{id}:record");
        let port = redis.port.to_string();
        let deleted = std::process::Command::new("redis-cli").args(["-p", &port, "DEL", &key]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&deleted.stdout).trim(), "1", "the record existed");
    }
    start(data, store)
}

/// A persistent room keeps the lobby, the title, the template, its link generation and the
/// leaders' controls across restarts, whether they changed with the board or on their own.
async fn settings_survive_restarts(store: Store<'_>) {
    let data = tempfile::tempdir().unwrap();
    let mut node = start(data.path(), store);
    let body = json!({"title": "Thursday log", "ephemeral": false, "template": "open", "lobby": true});
    let response = reqwest::Client::new().post(format!("{}/api/rooms", node.base())).json(&body).send().await.unwrap();
    let room: Value = response.json().await.unwrap();
    let id = room["room"].as_str().unwrap().to_owned();
    let leader = room["leader_token"].as_str().unwrap().to_owned();
    let old_invite = room["invite_token"].as_str().unwrap().to_owned();

    // The board changes (which saves the settings with it) and the links are renewed.
    let mut lea = YClient::join(&node.ws_url(&id, &leader, "Lea")).await.unwrap();
    lea.type_text("kept with its settings").await.unwrap();
    let links: Value = reqwest::Client::new()
        .post(format!("{}/api/rooms/{id}/links", node.base()))
        .bearer_auth(&leader)
        .json(&json!({"renew": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(links["generation"], 1);
    let new_invite = links["invite_token"].as_str().unwrap().to_owned();
    // The leaders' controls and a new title.
    for command in [
        json!({"type": "set_speaking_limit", "seconds": 120}),
        json!({"type": "set_fair_order", "enabled": true}),
        json!({"type": "set_phase_reset", "enabled": false}),
        json!({"type": "lock_board", "locked": true}),
    ] {
        lea.command(command).await.unwrap();
    }
    lea.wait_state(|s| s.board_locked && s.fair_order && !s.phase_reset && s.speaking_limit_secs == Some(120))
        .await
        .unwrap();
    let renamed = reqwest::Client::new()
        .put(format!("{}/api/rooms/{id}/title", node.base()))
        .bearer_auth(&leader)
        .json(&json!({"title": "Thursday log, second year"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 204);
    saved(
        data.path(),
        store,
        &id,
        &[
            br#""link_generation":1"#,
            br#""lobby":true"#,
            b"kept with its settings",
            br#""speaking_limit_secs":120"#,
            br#""board_locked":true"#,
            b"second year",
        ],
    )
    .await;
    drop(lea);

    let mut node = restart(&mut node, data.path(), store, &id);
    let mut lea = YClient::join(&node.ws_url(&id, &leader, "Lea")).await.unwrap();
    let state = lea.latest_state().unwrap().clone();
    assert!(state.lobby, "the lobby is still on");
    assert_eq!(state.title.as_deref(), Some("Thursday log, second year"));
    assert_eq!(
        (state.speaking_limit_secs, state.fair_order, state.phase_reset, state.board_locked),
        (Some(120), true, false, true),
        "the leaders' controls are kept"
    );
    assert_eq!(state.template, Template::Open);
    assert!(!state.ephemeral);
    assert_eq!(lea.notes(), "kept with its settings");
    // The renewal held: the old invite link lets no newcomer in, the new one waits in the lobby.
    let mut old = YClient::hello_only(&node.ws_url(&id, &old_invite, "Eve"), None).await.unwrap();
    assert_eq!(old.wait_closed().await.unwrap().code, close::LINK_RENEWED);
    let ann = YClient::join(&node.ws_url(&id, &new_invite, "Ann")).await.unwrap();
    assert!(!ann.is_admitted(), "the lobby holds her");
    drop(ann);

    // A setting changed on its own, without the board, is saved too.
    lea.command(json!({"type": "set_lobby", "enabled": false})).await.unwrap();
    lea.wait_state(|s| !s.lobby).await.unwrap();
    saved(data.path(), store, &id, &[br#""lobby":false"#]).await;
    drop(lea);
    let node = restart(&mut node, data.path(), store, &id);
    let ben = YClient::join(&node.ws_url(&id, &new_invite, "Ben")).await.unwrap();
    assert!(ben.is_admitted(), "the lobby stayed off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_keeps_every_setting_on_the_file_store() {
    settings_survive_restarts(Store::Files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_keeps_every_setting_on_the_redis_store() {
    let redis = RedisProcess::start().unwrap();
    settings_survive_restarts(Store::Redis(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_keeps_every_setting_on_the_postgres_store() {
    let redis = RedisProcess::start().unwrap();
    let url = fresh_postgres_schema().await.unwrap();
    settings_survive_restarts(Store::Postgres(&redis, &url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_that_fails_to_load_is_reported_and_kept() {
    let data = tempfile::tempdir().unwrap();
    let node = start(data.path(), Store::Files);
    let room = create(&node).await;
    let id = room["room"].as_str().unwrap().to_owned();
    let invite = room["invite_token"].as_str().unwrap().to_owned();
    drop(node);
    let path = data.path().join("rooms").join(format!("{id}.board"));
    std::fs::write(&path, b"damaged on disk").unwrap();

    let node = start(data.path(), Store::Files);
    assert_eq!(handshake_status(&node.ws_url(&id, &invite, "ada")).await, 503, "the room reports the error");
    let answer = reqwest::get(format!("{}/ws/{id}?token={invite}", node.base())).await.unwrap();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "board_unreadable");
    assert_eq!(std::fs::read(&path).unwrap(), b"damaged on disk", "the stored copy is never replaced");
}

#[tokio::test]
async fn an_ephemeral_room_refuses_export() {
    let server = balint_e2e::TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let response = reqwest::Client::new()
        .get(format!("{}/api/rooms/{}/export.md", server.base(), room.id))
        .bearer_auth(&room.leader_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "ephemeral");
}

/// A persistent sealed room: its log (entries and snapshots, opaque) is saved in the board
/// store and read back after restarts, never in clear; the server refuses to export what it
/// cannot read; a delete leaves nothing.
async fn a_sealed_log_survives_restarts(store: Store<'_>) {
    const CLEAR: &str = "Frau K. rief um drei Uhr an. ";
    let data = tempfile::tempdir().unwrap();
    let mut node = start(data.path(), store);
    let response = reqwest::Client::new()
        .post(format!("{}/api/rooms", node.base()))
        .json(&json!({"sealed": true, "ephemeral": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let room: Value = response.json().await.unwrap();
    assert_eq!((room["sealed"].as_bool(), room["ephemeral"].as_bool()), (Some(true), Some(false)));
    let id = room["room"].as_str().unwrap().to_owned();
    let leader = room["leader_token"].as_str().unwrap().to_owned();
    let invite = room["invite_token"].as_str().unwrap().to_owned();
    let key = RoomKey::generate().unwrap();
    // Its title, sealed, is kept too.
    let titled = reqwest::Client::new()
        .put(format!("{}/api/rooms/{id}/title", node.base()))
        .bearer_auth(&leader)
        .json(&json!({"sealed_title": balint_e2e::sealed_client::seal_title(&key, &id, "Fall K.")}))
        .send()
        .await
        .unwrap();
    assert_eq!(titled.status(), 204);

    // A snapshot and an entry after it; a graceful restart keeps both.
    let mut ada = SealedClient::join(node.addr, &id, &leader, &key).await.unwrap();
    ada.write(CLEAR).await.unwrap();
    ada.write("erste Sitzung. ").await.unwrap();
    ada.compact().await.unwrap();
    ada.write("danach. ").await.unwrap();
    let mut ben = SealedClient::join(node.addr, &id, &invite, &key).await.unwrap();
    ben.wait(|c| c.notes().contains("danach. ")).await.unwrap();
    let expected = ada.notes();
    drop((ada, ben));
    assert!(node.terminate().unwrap().success());
    let mut node = start(data.path(), store);
    let mut cleo = SealedClient::join(node.addr, &id, &invite, &key).await.unwrap();
    cleo.wait(|c| !c.logs().is_empty()).await.unwrap();
    assert_eq!(cleo.logs()[0].len(), 2, "the snapshot and the entry after it");
    assert_eq!(cleo.notes(), expected);

    // After a SIGKILL, what was saved is there: the entry's ciphertext is in the store.
    let sent = cleo.write("zweite Sitzung. ").await.unwrap();
    let ciphertext = &sent[1 + 8 + 1 + 24 + 4..];
    saved(data.path(), store, &id, &[ciphertext]).await;
    let expected = cleo.notes();
    drop(cleo);
    let node = restart(&mut node, data.path(), store, &id);
    let mut dora = SealedClient::join(node.addr, &id, &invite, &key).await.unwrap();
    dora.wait(|c| c.notes() == expected).await.unwrap();
    assert_eq!(dora.title().as_deref(), Some("Fall K."), "the sealed title is kept");
    let bytes = stored(data.path(), store, &id).await;
    assert!(memchr::memmem::find(&bytes, CLEAR.as_bytes()).is_none(), "the store holds no clear text");
    assert!(memchr::memmem::find(&bytes, b"Fall K.").is_none(), "nor the title");
    drop(dora);

    // The server cannot read the board, so it does not export it.
    let response = export(&node, &room, &leader).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "sealed");

    let deleted = reqwest::Client::new()
        .delete(format!("{}/api/rooms/{id}", node.base()))
        .bearer_auth(&leader)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(handshake_status(&node.ws_url(&id, &invite, "eve")).await, 410);
    let bytes = stored(data.path(), store, &id).await;
    assert!(memchr::memmem::find(&bytes, ciphertext).is_none(), "nothing of the board is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_sealed_room_survives_restarts_on_the_file_store() {
    a_sealed_log_survives_restarts(Store::Files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_sealed_room_survives_restarts_on_the_redis_store() {
    let redis = RedisProcess::start().unwrap();
    a_sealed_log_survives_restarts(Store::Redis(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_sealed_room_survives_restarts_on_the_postgres_store() {
    let redis = RedisProcess::start().unwrap();
    let url = fresh_postgres_schema().await.unwrap();
    a_sealed_log_survives_restarts(Store::Postgres(&redis, &url)).await;
}

/// A crash in the middle of a save leaves its temporary file, a copy of the board: the next
/// start removes it, and leaves the boards and tombstones alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_removes_the_temporary_files_a_crash_left_mid_save() {
    let data = tempfile::tempdir().unwrap();
    let rooms = data.path().join("rooms");
    std::fs::create_dir_all(&rooms).unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for name in ["abcdefgh.board", "abcdefgh.board.x1Y2z3.tmp", "ijklmnop.deleted"] {
        std::fs::write(rooms.join(name), b"BRB1").unwrap();
        std::fs::File::options().write(true).open(rooms.join(name)).unwrap().set_modified(an_hour_ago).unwrap();
    }
    let node = start(data.path(), Store::Files);
    let mut names: Vec<String> =
        std::fs::read_dir(&rooms).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["abcdefgh.board", "ijklmnop.deleted"]);
    // The node says how many it removed (its log is read on another thread: wait for it).
    let said = |node: &NodeProcess| {
        let logs = node.logs.lock().unwrap();
        logs.iter().any(|line| line.contains("removed temporary files") && line.contains("removed=1"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !said(&node) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(said(&node), "the node says what it removed");
}
