//! The leak test: a whole ephemeral meeting on two nodes with Redis, with a unique marker in
//! the notes, an observation card, a display name and the title. After the end, the marker is
//! nowhere: not in a log line, not in Redis, not on disk, not in either server's memory. The
//! same probe finds it in memory before the end, which proves the probe works.

use balint_e2e::process::{memory_contains, NodeProcess, RedisProcess};
use balint_e2e::{eventually, YClient};
use balint_proto::close;
use serde_json::{json, Value};

const SECRET: &str = "a shared secret for every node of the leak test";

fn node(redis: &RedisProcess, data: &std::path::Path) -> NodeProcess {
    NodeProcess::start(&["--redis-url", &redis.url(), "--secret", SECRET, "--data-dir", data.to_str().unwrap()])
        .unwrap()
}

/// Every key and value in Redis, as raw bytes.
fn redis_dump(redis: &RedisProcess) -> Vec<u8> {
    let port = redis.port.to_string();
    let keys = std::process::Command::new("redis-cli").args(["-p", &port, "--scan"]).output().unwrap();
    let mut dump = keys.stdout.clone();
    for key in String::from_utf8_lossy(&keys.stdout).lines() {
        let value =
            std::process::Command::new("redis-cli").args(["-p", &port, "--no-raw", "DUMP", key]).output().unwrap();
        dump.extend_from_slice(&value.stdout);
        let hash = std::process::Command::new("redis-cli").args(["-p", &port, "HGETALL", key]).output().unwrap();
        dump.extend_from_slice(&hash.stdout);
        let members =
            std::process::Command::new("redis-cli").args(["-p", &port, "ZRANGE", key, "0", "-1"]).output().unwrap();
        dump.extend_from_slice(&members.stdout);
    }
    dump
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            files_contain(&path, needle)
        } else {
            std::fs::read(&path).is_ok_and(|bytes| memchr::memmem::find(&bytes, needle).is_some())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_ephemeral_meeting_leaves_nothing_anywhere() {
    let marker = format!("LeakMarker{}", std::process::id() * 7919 + 12345);
    let redis = RedisProcess::start().unwrap();
    let data_a = tempfile::tempdir().unwrap();
    let data_b = tempfile::tempdir().unwrap();
    let a = node(&redis, data_a.path());
    let b = node(&redis, data_b.path());

    let created: Value = reqwest::Client::new()
        .post(format!("{}/api/rooms", a.base()))
        .json(&json!({"title": format!("Case of {marker}")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["room"].as_str().unwrap();
    let leader_token = created["leader_token"].as_str().unwrap();
    let invite_token = created["invite_token"].as_str().unwrap();

    let mut lead = YClient::join(&a.ws_url(id, leader_token, &format!("Dr{marker}"))).await.unwrap();
    let mut member = YClient::join(&b.ws_url(id, invite_token, "ben")).await.unwrap();
    member.type_text(&format!("The patient said {marker} twice. ")).await.unwrap();
    lead.add_card("lena", "reflection", &format!("I felt {marker} too")).await.unwrap();
    lead.wait_until(|c| c.notes().contains(&marker)).await.unwrap();
    member
        .wait_until(|c| {
            yrs::Array::len(&c.doc.get_or_insert_array("observations"), &yrs::Transact::transact(&c.doc)) == 1
        })
        .await
        .unwrap();

    // The probe works: before the end, both servers hold the marker in memory.
    assert!(memory_contains(a.pid(), marker.as_bytes()).unwrap(), "node A holds the marker before the end");
    assert!(memory_contains(b.pid(), marker.as_bytes()).unwrap(), "node B holds the marker before the end");

    lead.command(json!({"type": "end_meeting"})).await.unwrap();
    assert_eq!(lead.wait_closed().await.unwrap().code, close::MEETING_ENDED);
    assert_eq!(member.wait_closed().await.unwrap().code, close::MEETING_ENDED);
    drop(lead);
    drop(member);

    // Only the tombstone is left in Redis.
    let port = redis.port.to_string();
    eventually(|| async {
        let keys = std::process::Command::new("redis-cli").args(["-p", &port, "--scan"]).output().unwrap();
        let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
        keys.lines().all(|k| k.ends_with(":ended"))
    })
    .await
    .unwrap();
    let dump = redis_dump(&redis);
    assert!(memchr::memmem::find(&dump, marker.as_bytes()).is_none(), "the marker is in Redis");

    // Nothing on disk.
    for dir in [data_a.path(), data_b.path()] {
        assert!(!files_contain(dir, marker.as_bytes()), "the marker is in a file under {dir:?}");
    }

    // Nothing in either server's memory, once the room is retired (within a tick).
    for node in [&a, &b] {
        let pid = node.pid();
        let needle = marker.as_bytes();
        let gone = eventually(|| async move { !memory_contains(pid, needle).unwrap() }).await;
        if gone.is_err() {
            let matches = balint_e2e::process::memory_matches(pid, marker.as_bytes()).unwrap();
            panic!("the marker is still in the memory of node {pid}:\n{}", matches.join("\n"));
        }
    }

    // Nothing in any log line.
    for node in [&a, &b] {
        let logs = node.logs.lock().unwrap();
        assert!(!logs.is_empty(), "the node logged");
        assert!(logs.iter().all(|line| !line.contains(&marker)), "the marker is in a log line");
    }
}
