//! Persistent rooms: the board survives restarts on both stores, a leader exports it, and a
//! delete leaves nothing.

use balint_e2e::handshake_status;
use balint_e2e::process::{NodeProcess, RedisProcess};
use balint_e2e::{eventually, YClient};
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
