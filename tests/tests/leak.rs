//! The leak tests: whole ephemeral meetings on two nodes sharing one Redis, with a unique
//! marker in the notes, an observation card, display names and the title.
//!
//! - A plain meeting: after the end, the marker is nowhere: not in a log line, not in Redis,
//!   not on disk, not in either server's memory. The same probe finds it in memory before the
//!   end, which proves the probe works.
//! - A sealed meeting: the marker is in 0 places on the server side while the meeting runs and
//!   after it ends: either node's memory, their log lines, every Redis key and value, Redis's
//!   own memory, the nodes' data directories. Every member opens it (a positive control), and a
//!   plain meeting running on the same nodes at the same time has its own marker found in both
//!   nodes' memory, Redis's memory and Redis's values by the same probes, so that the 0 means
//!   something.

use std::collections::BTreeMap;
use std::path::Path;

use balint_client::seal::RoomKey;
use balint_e2e::process::{memory_contains, memory_matches, NodeProcess, RedisProcess};
use balint_e2e::sealed_client::{seal_title, SealedClient};
use balint_e2e::{eventually, YClient};
use balint_proto::close;
use serde_json::{json, Value};

const SECRET: &str = "a shared secret for every node of the leak test";

fn node(redis: &RedisProcess, data: &std::path::Path) -> NodeProcess {
    NodeProcess::start(&["--redis-url", &redis.url(), "--secret", SECRET, "--data-dir", data.to_str().unwrap()])
        .unwrap()
}

/// Every key and value in Redis, as raw bytes: the keys, each key's serialized value
/// (`DUMP`) and its contents read by type, uncompressed.
fn redis_dump(redis: &RedisProcess) -> Vec<u8> {
    let port = redis.port.to_string();
    let cli =
        |args: &[&str]| std::process::Command::new("redis-cli").args(["-p", &port]).args(args).output().unwrap().stdout;
    let keys = cli(&["--scan"]);
    let mut dump = keys.clone();
    for key in String::from_utf8_lossy(&keys).lines() {
        dump.extend_from_slice(&cli(&["--no-raw", "DUMP", key]));
        let kind = String::from_utf8_lossy(&cli(&["TYPE", key])).trim().to_owned();
        let contents = match kind.as_str() {
            "string" => cli(&["GET", key]),
            "hash" => cli(&["HGETALL", key]),
            "zset" => cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
            "set" => cli(&["SMEMBERS", key]),
            "list" => cli(&["LRANGE", key, "0", "-1"]),
            "stream" => cli(&["XRANGE", key, "-", "+"]),
            "none" => Vec::new(),
            other => panic!("a Redis key of type {other}: the dump does not read it"),
        };
        dump.extend_from_slice(&contents);
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

/// A marker no one could type by chance: `prefix` and 32 random letters and digits.
fn unique_marker(prefix: &str) -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 32))
}

/// Every place on the server side that holds `needle`, with what is found there: each node's
/// memory, each node's log lines and data directory, Redis's keys and values, Redis's own
/// memory.
fn server_places_holding(
    needle: &str,
    nodes: &[(&str, &NodeProcess, &Path)],
    redis: &RedisProcess,
) -> BTreeMap<String, Vec<String>> {
    let mut places = BTreeMap::new();
    let mut note = |place: String, found: Vec<String>| {
        if !found.is_empty() {
            places.insert(place, found);
        }
    };
    for (name, node, data) in nodes {
        note(format!("memory of node {name}"), memory_matches(node.pid(), needle.as_bytes()).unwrap());
        let logs = node.logs.lock().unwrap();
        assert!(!logs.is_empty(), "node {name} logged");
        note(format!("log of node {name}"), logs.iter().filter(|line| line.contains(needle)).cloned().collect());
        let on_disk = files_contain(data, needle.as_bytes());
        note(format!("files of node {name}"), if on_disk { vec![format!("under {data:?}")] } else { Vec::new() });
    }
    let dump = redis_dump(redis);
    let in_redis = memchr::memmem::find_iter(&dump, needle.as_bytes())
        .map(|at| {
            String::from_utf8_lossy(&dump[at.saturating_sub(64)..(at + needle.len() + 64).min(dump.len())]).into_owned()
        })
        .collect();
    note("Redis keys and values".to_owned(), in_redis);
    note("memory of Redis".to_owned(), memory_matches(redis.pid().expect("Redis runs"), needle.as_bytes()).unwrap());
    places
}

/// The places where the plain meeting's marker must be while it runs: the probes see it.
const PLAIN_PLACES: [&str; 4] = ["Redis keys and values", "memory of Redis", "memory of node A", "memory of node B"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_meeting_leaves_nothing_anywhere_while_it_runs_and_after_it_ends() {
    // Neither marker ever travels in clear from this process, except the plain one in the
    // plain room (its title, a name in its URL, its notes).
    let marker = unique_marker("SealMark");
    let plain_marker = unique_marker("PlainMark");
    let redis = RedisProcess::start().unwrap();
    let data_a = tempfile::tempdir().unwrap();
    let data_b = tempfile::tempdir().unwrap();
    let a = node(&redis, data_a.path());
    let b = node(&redis, data_b.path());
    let nodes = [("A", &a, data_a.path()), ("B", &b, data_b.path())];
    let http = reqwest::Client::new();

    // The sealed meeting: a leader and a member on A, two members on B.
    let created: Value = http
        .post(format!("{}/api/rooms", a.base()))
        .json(&json!({"sealed": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["sealed"], true);
    let id = created["room"].as_str().unwrap().to_owned();
    let leader_token = created["leader_token"].as_str().unwrap();
    let invite_token = created["invite_token"].as_str().unwrap();
    let key = RoomKey::generate().unwrap();
    let title = format!("Case of {marker}");
    let status = http
        .put(format!("{}/api/rooms/{id}/title", a.base()))
        .bearer_auth(leader_token)
        .json(&json!({"sealed_title": seal_title(&key, &id, &title)}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);

    let mut lena = SealedClient::join(a.addr, &id, leader_token, &key).await.unwrap();
    let mut ann = SealedClient::join(a.addr, &id, invite_token, &key).await.unwrap();
    let mut ben = SealedClient::join(b.addr, &id, invite_token, &key).await.unwrap();
    let mut cleo = SealedClient::join(b.addr, &id, invite_token, &key).await.unwrap();
    let names = [format!("Dr {marker}"), format!("{marker} Ben")];
    lena.set_name(&names[0]).await.unwrap();
    ben.set_name(&names[1]).await.unwrap();
    ben.write(&format!("The patient said {marker} twice. ")).await.unwrap();
    ann.add_card("ann", "reflection", &format!("I felt {marker} too")).await.unwrap();

    // The plain meeting on the same nodes at the same time: a leader on A, a member on B.
    let plain: Value = http
        .post(format!("{}/api/rooms", a.base()))
        .json(&json!({"title": format!("Case of {plain_marker}")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let plain_id = plain["room"].as_str().unwrap();
    let plain_leader = plain["leader_token"].as_str().unwrap();
    let plain_invite = plain["invite_token"].as_str().unwrap();
    let mut plain_lead = YClient::join(&a.ws_url(plain_id, plain_leader, &format!("Dr{plain_marker}"))).await.unwrap();
    let mut plain_member = YClient::join(&b.ws_url(plain_id, plain_invite, "ben")).await.unwrap();
    plain_member.type_text(&format!("The patient said {plain_marker} twice. ")).await.unwrap();
    plain_lead.wait_until(|c| c.notes().contains(&plain_marker)).await.unwrap();

    // The positive control: every member's page opens the notes, the card, both names and the
    // title, across both nodes.
    for client in [&mut lena, &mut ann, &mut ben, &mut cleo] {
        client
            .wait(|c| {
                let opened = c.names();
                c.notes().contains(&marker)
                    && c.card_bodies().iter().any(|body| body.contains(&marker))
                    && names.iter().all(|name| opened.contains(&Some(name.clone())))
                    && c.title().as_deref() == Some(title.as_str())
            })
            .await
            .unwrap();
        let state = client.state().unwrap();
        assert!(state.sealed && state.title.is_none());
        assert!(state.members.iter().all(|m| !m.name.contains(&marker)), "a name in clear");
    }

    // While both meetings run: the probes find the plain marker, and not the sealed one.
    let plain_places = server_places_holding(&plain_marker, &nodes, &redis);
    assert_eq!(plain_places.keys().collect::<Vec<_>>(), PLAIN_PLACES, "the plain marker while it runs");
    let places = server_places_holding(&marker, &nodes, &redis);
    assert!(places.is_empty(), "the sealed marker is on the server side while the meeting runs: {places:#?}");

    // The end.
    lena.command(json!({"type": "end_meeting"})).await.unwrap();
    for client in [&mut lena, &mut ann, &mut ben, &mut cleo] {
        assert_eq!(client.wait_closed().await.unwrap(), close::MEETING_ENDED);
    }
    drop((lena, ann, ben, cleo));
    // Of the sealed room, only the tombstone is left in Redis.
    let port = redis.port.to_string();
    eventually(|| async {
        let keys = std::process::Command::new("redis-cli").args(["-p", &port, "--scan"]).output().unwrap();
        let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
        let sealed_keys: Vec<&str> = keys.lines().filter(|k| k.contains(id.as_str())).collect();
        sealed_keys.len() == 1 && sealed_keys[0].ends_with(":ended")
    })
    .await
    .unwrap();

    // After the end, with the plain meeting still running: the same again.
    let plain_places = server_places_holding(&plain_marker, &nodes, &redis);
    assert_eq!(plain_places.keys().collect::<Vec<_>>(), PLAIN_PLACES, "the plain marker after the sealed end");
    let places = server_places_holding(&marker, &nodes, &redis);
    assert!(places.is_empty(), "the sealed marker is on the server side after the meeting ended: {places:#?}");
    plain_lead.close().await;
    plain_member.close().await;
}
