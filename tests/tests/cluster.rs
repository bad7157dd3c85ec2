//! Several nodes sharing one Redis: real `balint-room` processes, a `redis-server` of the
//! test's own, real WebSocket clients.

use std::time::Duration;

use balint_client::seal::RoomKey;
use balint_e2e::process::{NodeProcess, RedisProcess};
use balint_e2e::sealed_client::SealedClient;
use balint_e2e::{eventually, YClient};
use balint_proto::room::{ErrorCode, RoomState, Status};
use serde_json::{json, Value};

const SECRET: &str = "a shared secret for every node of the test cluster";

struct Cluster {
    redis: RedisProcess,
    a: NodeProcess,
    b: NodeProcess,
    _dirs: Vec<tempfile::TempDir>,
}

fn node(redis: &RedisProcess, dirs: &mut Vec<tempfile::TempDir>) -> NodeProcess {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    dirs.push(dir);
    NodeProcess::start(&[
        "--redis-url",
        &redis.url(),
        "--secret",
        SECRET,
        "--data-dir",
        &data,
        "--reconnect-grace-secs",
        "60",
    ])
    .unwrap()
}

fn cluster() -> Cluster {
    let redis = RedisProcess::start().unwrap();
    let mut dirs = Vec::new();
    let a = node(&redis, &mut dirs);
    let b = node(&redis, &mut dirs);
    Cluster { redis, a, b, _dirs: dirs }
}

async fn create_room(node: &NodeProcess) -> Value {
    let response =
        reqwest::Client::new().post(format!("{}/api/rooms", node.base())).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

fn field<'a>(room: &'a Value, name: &str) -> &'a str {
    room[name].as_str().unwrap()
}

async fn presence(node: &NodeProcess, room: &Value) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}/api/rooms/{}/presence", node.base(), field(room, "room")))
        .bearer_auth(field(room, "leader_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// A room on node A with one member on each node: Ada on A, Ben on B.
async fn ada_on_a_ben_on_b(c: &Cluster) -> (String, String, YClient, YClient) {
    let room = create_room(&c.a).await;
    let id = field(&room, "room").to_owned();
    let invite = field(&room, "invite_token").to_owned();
    let on_a = YClient::join(&c.a.ws_url(&id, &invite, "ada")).await.unwrap();
    let on_b = YClient::join(&c.b.ws_url(&id, &invite, "ben")).await.unwrap();
    (id, invite, on_a, on_b)
}

fn queue(state: &RoomState) -> Vec<String> {
    state.queue.iter().map(|e| e.member.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_two_nodes_co_edit_and_converge() {
    let c = cluster();
    let room = create_room(&c.a).await;
    let id = field(&room, "room");
    let token = field(&room, "invite_token");
    let mut on_a = YClient::connect(&c.a.ws_url(id, token, "ada")).await.unwrap();
    on_a.type_text("written on A before B ever opened the room. ").await.unwrap();
    // Node B opens the room now and catches up from A.
    let mut on_b = YClient::connect(&c.b.ws_url(id, token, "ben")).await.unwrap();
    on_b.wait_until(|x| x.notes().contains("written on A")).await.unwrap();

    on_b.type_text("from B. ").await.unwrap();
    on_a.wait_until(|x| x.notes().contains("from B. ")).await.unwrap();
    for i in 0..10 {
        on_a.type_text(&format!("a{i} ")).await.unwrap();
        on_b.type_text(&format!("b{i} ")).await.unwrap();
    }
    on_a.wait_until(|x| x.notes().contains("b9 ")).await.unwrap();
    on_b.wait_until(|x| x.notes().contains("a9 ")).await.unwrap();
    on_a.wait_until(|x| x.notes().len() == on_b.notes().len()).await.unwrap();
    assert_eq!(on_a.notes(), on_b.notes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_floor_stay_consistent_with_leaders_acting_on_both_nodes() {
    let c = cluster();
    let room = create_room(&c.a).await;
    let id = field(&room, "room");
    let (leader, invite) = (field(&room, "leader_token"), field(&room, "invite_token"));
    let mut lead_a = YClient::join(&c.a.ws_url(id, leader, "lena")).await.unwrap();
    let mut lead_b = YClient::join(&c.b.ws_url(id, leader, "omar")).await.unwrap();
    let mut members = Vec::new();
    for (i, name) in ["zoe", "yan", "xia"].into_iter().enumerate() {
        let node = if i % 2 == 0 { &c.a } else { &c.b };
        members.push(YClient::join(&node.ws_url(id, invite, name)).await.unwrap());
    }
    for member in members.iter_mut() {
        member.command(json!({"type": "raise_hand"})).await.unwrap();
        let me = member.member_id().unwrap().to_owned();
        member.wait_state(|s| s.queue.iter().any(|e| e.member == me)).await.unwrap();
    }
    let expected: Vec<String> = members.iter().map(|m| m.member_id().unwrap().to_owned()).collect();
    let seen = lead_a.wait_state(|s| s.queue.len() == 3).await.unwrap();
    let seen_b = lead_b.wait_version(seen.version).await.unwrap();
    assert_eq!(queue(&seen), expected, "one queue, in the order hands went up");
    assert_eq!(queue(&seen_b), expected, "the same on the other node");

    // Both leaders click "next" on the same view, at the same moment.
    let next = json!({"type": "next_speaker", "if_version": seen.version});
    let (ra, rb) = tokio::join!(lead_a.command(next.clone()), lead_b.command(next));
    ra.unwrap();
    rb.unwrap();
    let final_a = lead_a.wait_state(|s| s.floor.is_some()).await.unwrap();
    let final_b = lead_b.wait_version(final_a.version).await.unwrap();
    assert_eq!(final_a.floor.as_ref().map(|f| f.member.clone()), Some(expected[0].clone()));
    assert_eq!(queue(&final_a), expected[1..], "the floor was given once");
    assert_eq!(final_a.floor, final_b.floor);
    assert_eq!(queue(&final_a), queue(&final_b));
    // Exactly one click was refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while lead_a.errors().len() + lead_b.errors().len() < 1 && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), lead_a.wait_until(|x| !x.errors().is_empty())).await;
        let _ = tokio::time::timeout(Duration::from_millis(100), lead_b.wait_until(|x| !x.errors().is_empty())).await;
    }
    let refusals: Vec<ErrorCode> = lead_a.errors().into_iter().chain(lead_b.errors()).collect();
    assert_eq!(refusals, [ErrorCode::Conflict]);

    // Every member on either node converges on the same state.
    for member in members.iter_mut() {
        let state = member.wait_version(final_a.version).await.unwrap();
        assert_eq!(queue(&state), queue(&final_a));
        assert_eq!(state.floor, final_a.floor);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_the_same_on_every_node() {
    let c = cluster();
    let room = create_room(&c.a).await;
    let id = field(&room, "room");
    let invite = field(&room, "invite_token");
    let mut one = YClient::join(&c.a.ws_url(id, invite, "one")).await.unwrap();
    let mut two = YClient::join(&c.b.ws_url(id, invite, "two")).await.unwrap();
    two.wait_state(|s| s.members.len() == 2).await.unwrap();
    one.wait_state(|s| s.members.len() == 2).await.unwrap();
    eventually(|| async {
        let (pa, pb) = (presence(&c.a, &room).await, presence(&c.b, &room).await);
        pa["members"].as_array().map(Vec::len) == Some(2) && pa == pb
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_closes_the_page_on_one_node_stays_reconnecting_on_the_other() {
    let c = cluster();
    let (_, _, mut on_a, on_b) = ada_on_a_ben_on_b(&c).await;
    let ben = on_b.member_id().unwrap().to_owned();
    let status = move |s: &RoomState| s.members.iter().find(|m| m.id == ben).map(|m| m.status);
    on_a.wait_state(|s| status(s) == Some(Status::Here)).await.unwrap();
    // Long enough for node A to read presence and see Ben's entry (at its next tick: ticks
    // are a second apart at least).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    on_b.close().await;
    on_a.wait_state(|s| status(s) == Some(Status::Reconnecting)).await.unwrap();
    // Node A read Ben's presence entry a moment ago; none of its ticks in the next seconds
    // (its own member's heartbeats among them) may show him here again.
    let back = on_a
        .wait_until_within(Duration::from_secs(8), |x| {
            x.latest_state().is_some_and(|s| status(s) == Some(Status::Here))
        })
        .await;
    let error = back.expect_err("Ben was shown here again after he closed his page");
    assert!(error.to_string().contains("deadline"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_node_is_killed_its_clients_move_to_another_and_nothing_is_lost() {
    let mut c = cluster();
    let (id, invite, mut on_a, mut on_b) = ada_on_a_ben_on_b(&c).await;
    on_a.type_text("before the crash. ").await.unwrap();
    on_a.command(json!({"type": "raise_hand"})).await.unwrap();
    let ada = on_a.member_id().unwrap().to_owned();
    on_b.wait_until(|x| x.notes().contains("before the crash")).await.unwrap();
    on_b.wait_state(|s| s.queue.iter().any(|e| e.member == ada)).await.unwrap();

    c.a.kill();
    // Ada's client keeps its document and reconnects to B with its resume token.
    let resume = on_a.resume_token().unwrap().to_owned();
    let offline = on_a.doc.clone();
    drop(on_a);
    {
        use yrs::{Text, Transact};
        let notes = offline.get_or_insert_text("notes");
        let mut txn = offline.transact_mut();
        let len = yrs::Text::len(&notes, &txn);
        notes.insert(&mut txn, len, "typed while reconnecting. ");
    }
    let url = c.b.ws_url(&id, &invite, "ada");
    let mut back = YClient::join_resuming_with_doc(&url, Some(&resume), offline).await.unwrap();
    assert_eq!(back.member_id(), Some(ada.as_str()), "the same member continues");
    let state = back.latest_state().unwrap().clone();
    assert_eq!(queue(&state), std::slice::from_ref(&ada), "the hand is still up");
    let seen = on_b.wait_until(|x| x.notes().contains("typed while reconnecting")).await;
    assert!(seen.is_ok(), "B: {:?} / back: {:?} / logs {:?}", on_b.notes(), back.notes(), c.b.logs.lock().unwrap());
    let expected = on_b.notes();
    back.wait_until(|x| x.notes() == expected).await.unwrap();
    assert!(back.notes().contains("before the crash. "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_meeting_loses_nothing() {
    let mut c = cluster();
    let room = create_room(&c.a).await;
    let id = field(&room, "room").to_owned();
    let (leader, invite) = (field(&room, "leader_token").to_owned(), field(&room, "invite_token").to_owned());
    let mut lead = YClient::join(&c.a.ws_url(&id, &leader, "lena")).await.unwrap();
    let mut on_b = YClient::join(&c.b.ws_url(&id, &invite, "ben")).await.unwrap();
    on_b.command(json!({"type": "raise_hand"})).await.unwrap();
    let ben = on_b.member_id().unwrap().to_owned();
    lead.wait_state(|s| s.queue.iter().any(|e| e.member == ben)).await.unwrap();

    c.redis.stop();
    let readyz = |node: &NodeProcess| {
        let url = format!("{}/readyz", node.base());
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    eventually(|| async { readyz(&c.a).await == 503 }).await.unwrap();
    // Both keep editing while Redis is away; each sees its own node's edits at once.
    lead.type_text("during the outage on A. ").await.unwrap();
    on_b.type_text("during the outage on B. ").await.unwrap();

    c.redis.restart().unwrap();
    let back = tokio::time::Instant::now();
    eventually(|| async { readyz(&c.a).await == 200 }).await.unwrap();
    eventually(|| async { readyz(&c.b).await == 200 }).await.unwrap();
    lead.wait_until(|x| x.notes().contains("during the outage on B")).await.unwrap();
    on_b.wait_until(|x| x.notes().contains("during the outage on A")).await.unwrap();
    // Presence and room state are rebuilt: everyone is here, the queue is intact.
    let here =
        |s: &RoomState| s.members.len() == 2 && s.members.iter().all(|m| m.status == balint_proto::room::Status::Here);
    lead.wait_state(|s| here(s) && s.queue.iter().any(|e| e.member == ben)).await.unwrap();
    assert!(back.elapsed() < Duration::from_secs(10), "recovered within 10 s: {:?}", back.elapsed());

    // Room state was rebuilt: the queue is intact and commands work on both nodes.
    // A command that meets a connection still reconnecting is answered `unavailable` and
    // changes nothing; the client retries, as the protocol says.
    let mut attempts = 0;
    loop {
        let before = lead.errors().len();
        lead.command(json!({"type": "next_speaker"})).await.unwrap();
        lead.wait_until(|x| x.errors().len() > before || x.latest_state().is_some_and(|s| s.floor.is_some()))
            .await
            .unwrap();
        if lead.latest_state().is_some_and(|s| s.floor.is_some()) {
            break;
        }
        assert_eq!(lead.errors().last(), Some(&ErrorCode::Unavailable), "state: {:?}", lead.latest_state());
        attempts += 1;
        assert!(attempts < 20, "commands never worked again after Redis came back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let state = on_b.wait_state(|s| s.floor.as_ref().is_some_and(|f| f.member == ben)).await.unwrap();
    assert!(state.queue.is_empty());
    let pa = presence(&c.a, &room).await;
    assert_eq!(pa["members"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaking_limit_fires_once_in_the_cluster() {
    let c = cluster();
    let room = create_room(&c.a).await;
    let id = field(&room, "room");
    let (leader, invite) = (field(&room, "leader_token"), field(&room, "invite_token"));
    let mut lead = YClient::join(&c.a.ws_url(id, leader, "lena")).await.unwrap();
    let mut speaker = YClient::join(&c.b.ws_url(id, invite, "sam")).await.unwrap();
    let mut listener = YClient::join(&c.a.ws_url(id, invite, "lou")).await.unwrap();
    let sam = speaker.member_id().unwrap().to_owned();
    lead.wait_state(|s| s.members.iter().any(|m| m.id == sam)).await.unwrap();
    lead.command(json!({"type": "set_speaking_limit", "seconds": 1})).await.unwrap();
    lead.command(json!({"type": "grant_floor", "member": sam})).await.unwrap();

    let time_ups = |client: &YClient| {
        client.texts.iter().filter(|m| matches!(m, balint_proto::room::ServerMessage::TimeUp { .. })).count()
    };
    for client in [&mut lead, &mut speaker, &mut listener] {
        client.wait_until(|x| time_ups(x) >= 1).await.unwrap();
    }
    // Both nodes ran their timers for another few seconds: still one event per client, and
    // the speaker still holds the floor.
    let later = lead.latest_state().unwrap().version;
    lead.command(json!({"type": "set_away", "away": true})).await.unwrap();
    lead.wait_version(later + 1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    lead.command(json!({"type": "set_away", "away": false})).await.unwrap();
    let state =
        lead.wait_state(|s| s.members.iter().all(|m| m.status != balint_proto::room::Status::Away)).await.unwrap();
    for client in [&mut speaker, &mut listener] {
        client.wait_version(state.version).await.unwrap();
    }
    for client in [&lead, &speaker, &listener] {
        assert_eq!(time_ups(client), 1, "one time_up per client");
    }
    assert_eq!(state.floor.map(|f| f.member), Some(sam), "the speaker is not cut off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_sends_1012_and_loses_nothing() {
    let mut c = cluster();
    let (id, invite, mut on_a, mut on_b) = ada_on_a_ben_on_b(&c).await;
    on_a.type_text("typed right before the restart. ").await.unwrap();

    let started = std::time::Instant::now();
    let status = c.a.terminate().unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "stopped within 10 s: {:?}", started.elapsed());
    assert_eq!(on_a.wait_closed().await.unwrap().code, balint_proto::close::SERVICE_RESTART);

    // Ada reconnects to the other node; nothing she typed is lost.
    let resume = on_a.resume_token().unwrap().to_owned();
    let doc = on_a.doc.clone();
    let back = YClient::join_resuming_with_doc(&c.b.ws_url(&id, &invite, "ada"), Some(&resume), doc).await.unwrap();
    on_b.wait_until(|x| x.notes().contains("typed right before the restart")).await.unwrap();
    assert!(back.notes().contains("typed right before the restart"));
}

/// Seconds until `key` expires in the cluster's Redis (`-2` once it is gone).
fn key_ttl(redis: &RedisProcess, key: &str) -> i64 {
    let out =
        std::process::Command::new("redis-cli").args(["-p", &redis.port.to_string(), "TTL", key]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_set_up_days_ahead_keeps_its_record_as_long_as_its_links() {
    const DAY: i64 = 24 * 3600;
    let c = cluster();
    let room = create_room(&c.a).await;
    let (id, invite) = (field(&room, "room"), field(&room, "invite_token"));
    let key = format!("balint:room:{id}:record");
    // Nobody has joined: the record (settings only) lives as long as the links, 30 days by
    // default, not the one-day safety net, so the meeting opens on any node next week.
    let before = key_ttl(&c.redis, &key);
    assert!(before > 29 * DAY && before <= 30 * DAY, "TTL before anyone joined: {before} s");
    // Once a member has joined, the record holds names: a day after the last change at most.
    let _ann = YClient::join(&c.b.ws_url(id, invite, "ann")).await.unwrap();
    let after = key_ttl(&c.redis, &key);
    assert!(after > 0 && after <= DAY, "TTL once the meeting started: {after} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_renewed_on_one_node_and_a_removal_hold_on_every_node() {
    let c = cluster();
    let room = create_room(&c.a).await;
    let (id, leader) = (field(&room, "room").to_owned(), field(&room, "leader_token").to_owned());
    let old_invite = field(&room, "invite_token").to_owned();
    let mut lea = YClient::join(&c.a.ws_url(&id, &leader, "lea")).await.unwrap();
    let mut ben = YClient::join(&c.b.ws_url(&id, &old_invite, "ben")).await.unwrap();
    let ben_id = ben.member_id().unwrap().to_owned();
    let ben_token = ben.resume_token().unwrap().to_owned();

    // Node A renews the links; node B refuses a newcomer with the old invite link.
    let links: Value = reqwest::Client::new()
        .post(format!("{}/api/rooms/{id}/links", c.a.base()))
        .bearer_auth(&leader)
        .json(&json!({"renew": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(links["generation"], 1);
    // No waiting for B to hear of it: joining writes the record by compare-and-set, so a
    // join planned on B's older copy conflicts and is planned again on the renewed record.
    let mut eve = YClient::hello_only(&c.b.ws_url(&id, &old_invite, "eve"), None).await.unwrap();
    assert_eq!(eve.wait_closed().await.unwrap().code, balint_proto::close::LINK_RENEWED);
    // Node B issues links of the same generation.
    let from_b: Value = reqwest::Client::new()
        .post(format!("{}/api/rooms/{id}/links", c.b.base()))
        .bearer_auth(&leader)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(from_b["generation"], 1);

    // Ben, on B, is removed by the leader on A; his resume token is refused on A.
    lea.command(json!({"type": "kick", "member": ben_id})).await.unwrap();
    assert_eq!(ben.wait_closed().await.unwrap().code, balint_proto::close::REMOVED);
    let mut again = YClient::hello_only(&c.a.ws_url(&id, &old_invite, "ben"), Some(&ben_token)).await.unwrap();
    assert_eq!(again.wait_closed().await.unwrap().code, balint_proto::close::REMOVED);
    let newcomer = YClient::join(&c.b.ws_url(&id, field(&links, "invite_token"), "cy")).await.unwrap();
    assert!(newcomer.is_admitted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_that_ended_stays_ended_on_every_node_after_redis_restarts_empty() {
    let mut c = cluster();
    let room = create_room(&c.a).await;
    let id = field(&room, "room").to_owned();
    let leader = field(&room, "leader_token").to_owned();
    let invite = field(&room, "invite_token").to_owned();
    let mut lead = YClient::join(&c.a.ws_url(&id, &leader, "lena")).await.unwrap();
    lead.command(json!({"type": "end_meeting"})).await.unwrap();
    let closed = lead.wait_closed().await.unwrap();
    assert_eq!(closed.code, balint_proto::close::MEETING_ENDED);
    let logged = |node: &NodeProcess, text: &'static str| {
        let logs = node.logs.clone();
        move || {
            let logs = logs.clone();
            async move { logs.lock().unwrap().iter().any(|line| line.contains(text)) }
        }
    };
    let answer = |node: &NodeProcess| {
        let url = format!("{}/ws/{id}?token={invite}", node.base());
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    eventually(logged(&c.a, "ended room retired")).await.expect("node A retires the ended room");
    assert_eq!(answer(&c.b).await, 410, "node B reads the end from Redis");

    // Redis restarts with nothing: node A, which ended the meeting, writes its end again, so
    // node B, which never served the room, still says the meeting has ended.
    let readyz = |node: &NodeProcess| {
        let url = format!("{}/readyz", node.base());
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    c.redis.stop();
    eventually(logged(&c.a, "backend unreachable")).await.expect("node A notices the outage");
    c.redis.restart().unwrap();
    eventually(|| async { readyz(&c.a).await == 200 }).await.unwrap();
    eventually(|| async { answer(&c.b).await == 410 }).await.expect("the end is written again after the restart");
}

async fn readyz(node: &NodeProcess) -> u16 {
    let url = format!("{}/readyz", node.base());
    reqwest::get(url).await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// A sealed room across two nodes: entries sealed with the web client's own code cross the
/// bus, a newcomer on B reads what was written on A, nothing is lost through a Redis restart
/// nor when node A is killed, and a snapshot taken on A replaces the log on B too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_room_spans_two_nodes_and_loses_nothing_through_a_redis_restart() {
    let mut c = cluster();
    let response = reqwest::Client::new()
        .post(format!("{}/api/rooms", c.a.base()))
        .json(&json!({"sealed": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "a sealed room is created on a node with Redis");
    let room: Value = response.json().await.unwrap();
    assert_eq!(room["sealed"], true);
    let id = field(&room, "room").to_owned();
    let (leader, invite, observer) =
        (field(&room, "leader_token"), field(&room, "invite_token"), field(&room, "observer_token"));
    let key = RoomKey::generate().unwrap();

    // Written on A before node B ever opened the room.
    let mut ada = SealedClient::join(c.a.addr, &id, leader, &key).await.unwrap();
    for line in ["drei ", "zwei ", "eins "] {
        ada.write(line).await.unwrap();
    }
    // B opens the room now: its first member reads A's entries.
    let mut ben = SealedClient::join(c.b.addr, &id, invite, &key).await.unwrap();
    ben.wait(|x| x.notes() == "eins zwei drei ").await.unwrap();
    ben.write("von B: ").await.unwrap();
    ada.wait(|x| x.notes() == "von B: eins zwei drei ").await.unwrap();
    // A newcomer on B gets the whole log in one frame.
    let mut cleo = SealedClient::join(c.b.addr, &id, observer, &key).await.unwrap();
    cleo.wait(|x| !x.logs().is_empty()).await.unwrap();
    assert_eq!(cleo.logs()[0].len(), 4, "the log on B holds the entries written on both nodes");
    assert_eq!(cleo.notes(), "von B: eins zwei drei ");

    // Redis goes away; both keep writing, each on its own node.
    c.redis.stop();
    eventually(|| async { readyz(&c.a).await == 503 }).await.unwrap();
    ada.write("A im Ausfall. ").await.unwrap();
    ben.write("B im Ausfall. ").await.unwrap();
    c.redis.restart().unwrap();
    eventually(|| async { readyz(&c.a).await == 200 && readyz(&c.b).await == 200 }).await.unwrap();
    ada.wait(|x| x.notes().contains("B im Ausfall. ")).await.unwrap();
    ben.wait(|x| x.notes().contains("A im Ausfall. ")).await.unwrap();
    cleo.wait(|x| x.notes().contains("A im Ausfall. ")).await.unwrap();
    assert_eq!(ada.notes(), ben.notes());

    // A snapshot on A replaces, on B too, the entries it covers: the next entry from A comes
    // after it on the bus, and a newcomer on B then gets the snapshot and that entry only.
    ada.compact().await.unwrap();
    ada.write("nach dem Schnappschuss. ").await.unwrap();
    ben.wait(|x| x.notes().contains("nach dem Schnappschuss. ")).await.unwrap();
    let expected = ada.notes();
    let mut dora = SealedClient::join(c.b.addr, &id, observer, &key).await.unwrap();
    dora.wait(|x| !x.logs().is_empty()).await.unwrap();
    assert_eq!(dora.logs()[0].len(), 2, "the snapshot and the entry after it");
    assert_eq!(dora.notes(), expected);

    // Node A dies: everything written there lives on in B's log.
    c.a.kill();
    let mut eve = SealedClient::join(c.b.addr, &id, invite, &key).await.unwrap();
    eve.wait(|x| x.notes() == expected).await.unwrap();
    assert_eq!(ben.notes(), expected);
}
