//! Persistent rooms: the board survives restarts on both stores, a leader exports it, and a
//! delete leaves nothing.

use balint_e2e::handshake_status;
use balint_e2e::process::{NodeProcess, RedisProcess};
use balint_e2e::{eventually, YClient};
use balint_proto::close;
use balint_proto::room::Template;
use serde_json::{json, Value};

const SECRET: &str = "a secret shared across restarts of the test node";

fn start(data: &std::path::Path, redis: Option<&RedisProcess>) -> NodeProcess {
    let data = data.to_str().unwrap().to_owned();
    let mut args = vec!["--secret".to_owned(), SECRET.to_owned(), "--data-dir".to_owned(), data];
    if let Some(redis) = redis {
        args.extend(["--redis-url".to_owned(), redis.url()]);
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
async fn survives_restarts(redis: Option<&RedisProcess>, files_hold_board: bool) {
    let data = tempfile::tempdir().unwrap();
    let mut node = start(data.path(), redis);
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
    let mut node = start(data.path(), redis);
    let reader = YClient::join(&node.ws_url(&id, &invite, "ben")).await.unwrap();
    assert_eq!(reader.notes(), "first session. ");
    assert_eq!(reader.card_count(), 1, "the card written just before the restart");

    // After a SIGKILL, at most the save window is lost: what was saved is there.
    let mut writer = reader;
    writer.type_text("second session. ").await.unwrap();
    if files_hold_board {
        let path = data.path().join("rooms").join(format!("{id}.board"));
        eventually(|| {
            let path = path.clone();
            async move { std::fs::read(&path).is_ok_and(|b| memchr::memmem::find(&b, b"second session").is_some()) }
        })
        .await
        .unwrap();
    } else {
        let url = redis.unwrap().url();
        let port = url.rsplit(':').next().unwrap().to_owned();
        let key = format!("balint:room:{id}:board");
        eventually(|| {
            let (port, key) = (port.clone(), key.clone());
            async move {
                let out = std::process::Command::new("redis-cli")
                    .args(["-p", &port, "HGET", &key, "snapshot"])
                    .output()
                    .unwrap();
                memchr::memmem::find(&out.stdout, b"second session").is_some()
            }
        })
        .await
        .unwrap();
    }
    drop(writer);
    node.kill();
    let node = start(data.path(), redis);
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
    if files_hold_board {
        assert!(!data.path().join("rooms").join(format!("{id}.board")).exists());
    } else {
        let port = redis.unwrap().url().rsplit(':').next().unwrap().to_owned();
        let keys = std::process::Command::new("redis-cli").args(["-p", &port, "--scan"]).output().unwrap();
        let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
        assert!(keys.lines().filter(|k| k.contains(&id)).all(|k| k.ends_with(":ended")), "{keys}");
    }
    drop(node);
    let node = start(data.path(), redis);
    assert_eq!(handshake_status(&node.ws_url(&id, &invite, "eve")).await, 410, "still gone after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_survives_restarts_on_the_file_store() {
    survives_restarts(None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_survives_restarts_on_the_redis_store() {
    let redis = RedisProcess::start().unwrap();
    survives_restarts(Some(&redis), false).await;
}

/// What a persistent room saved: its settings and its board, as stored.
fn stored(data: &std::path::Path, redis: Option<&RedisProcess>, id: &str) -> Vec<u8> {
    match redis {
        None => std::fs::read(data.join("rooms").join(format!("{id}.board"))).unwrap_or_default(),
        Some(redis) => {
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
async fn saved(data: &std::path::Path, redis: Option<&RedisProcess>, id: &str, needles: &[&[u8]]) {
    eventually(|| async {
        let bytes = stored(data, redis, id);
        needles.iter().all(|n| memchr::memmem::find(&bytes, n).is_some())
    })
    .await
    .unwrap();
}

/// Restarts the node. With Redis, the room's record is deleted first (as when its safety-net
/// expiry passed), so that the meeting starts again from the settings saved with the board.
fn restart(node: &mut NodeProcess, data: &std::path::Path, redis: Option<&RedisProcess>, id: &str) -> NodeProcess {
    node.kill();
    if let Some(redis) = redis {
        let key = format!("balint:room:{id}:record");
        let port = redis.port.to_string();
        let deleted = std::process::Command::new("redis-cli").args(["-p", &port, "DEL", &key]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&deleted.stdout).trim(), "1", "the record existed");
    }
    start(data, redis)
}

/// A persistent room keeps the lobby, the title, the template and its link generation across
/// restarts, whether they changed with the board or on their own.
async fn settings_survive_restarts(redis: Option<&RedisProcess>) {
    let data = tempfile::tempdir().unwrap();
    let mut node = start(data.path(), redis);
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
    saved(data.path(), redis, &id, &[br#""link_generation":1"#, br#""lobby":true"#, b"kept with its settings"]).await;
    drop(lea);

    let mut node = restart(&mut node, data.path(), redis, &id);
    let mut lea = YClient::join(&node.ws_url(&id, &leader, "Lea")).await.unwrap();
    let state = lea.latest_state().unwrap().clone();
    assert!(state.lobby, "the lobby is still on");
    assert_eq!(state.title.as_deref(), Some("Thursday log"));
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
    saved(data.path(), redis, &id, &[br#""lobby":false"#]).await;
    drop(lea);
    let node = restart(&mut node, data.path(), redis, &id);
    let ben = YClient::join(&node.ws_url(&id, &new_invite, "Ben")).await.unwrap();
    assert!(ben.is_admitted(), "the lobby stayed off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_keeps_every_setting_on_the_file_store() {
    settings_survive_restarts(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_keeps_every_setting_on_the_redis_store() {
    let redis = RedisProcess::start().unwrap();
    settings_survive_restarts(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_that_fails_to_load_is_reported_and_kept() {
    let data = tempfile::tempdir().unwrap();
    let node = start(data.path(), None);
    let room = create(&node).await;
    let id = room["room"].as_str().unwrap().to_owned();
    let invite = room["invite_token"].as_str().unwrap().to_owned();
    drop(node);
    let path = data.path().join("rooms").join(format!("{id}.board"));
    std::fs::write(&path, b"damaged on disk").unwrap();

    let node = start(data.path(), None);
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
