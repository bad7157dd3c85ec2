//! Redis with Sentinel: a meeting on two nodes lives through a failover of the Redis primary.
//! Real processes: a primary and its replica, three `redis-sentinel`s, two `balint-room`
//! nodes that know only the Sentinels, and real WebSocket clients.

use std::time::{Duration, Instant};

use balint_e2e::process::{create_room, redis_cli, NodeProcess, RedisProcess, SentinelProcess};
use balint_e2e::YClient;
use balint_proto::room::{ErrorCode, RoomState, Status};
use balint_server::limits::{PRESENCE_HEARTBEAT, PRESENCE_TTL};
use serde_json::{json, Value};

const SECRET: &str = "a shared secret for every node of the failover test";
const MASTER: &str = "balint";
/// The primary's and replica's password: the nodes must never log it.
const PASSWORD: &str = "redis-password-never-in-a-log";

struct Deployment {
    primary: RedisProcess,
    replica: RedisProcess,
    sentinels: Vec<SentinelProcess>,
    a: NodeProcess,
    b: NodeProcess,
    _dirs: Vec<tempfile::TempDir>,
}

/// Waits, blocking, until `condition` holds, for at most `limit`.
fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn deployment() -> Deployment {
    let auth = ["--requirepass", PASSWORD, "--masterauth", PASSWORD];
    let primary = RedisProcess::start_with(&auth).unwrap();
    let primary_port = primary.port.to_string();
    let replica_args: Vec<&str> = auth.iter().copied().chain(["--replicaof", "127.0.0.1", &primary_port]).collect();
    let replica = RedisProcess::start_with(&replica_args).unwrap();
    wait_for("the replica follows the primary", Duration::from_secs(20), || {
        redis_cli(replica.port, Some(PASSWORD), &["INFO", "replication"])
            .is_ok_and(|info| info.contains("master_link_status:up"))
    });
    let sentinels: Vec<SentinelProcess> =
        (0..3).map(|_| SentinelProcess::start(MASTER, primary.port, Some(PASSWORD)).unwrap()).collect();
    // Each Sentinel knows the replica and the two other Sentinels (they meet through the
    // primary every 2 s): only then can they agree on a failover.
    wait_for("the Sentinels know each other and the replica", Duration::from_secs(30), || {
        sentinels.iter().all(|sentinel| {
            let info = sentinel.master_info(MASTER);
            info.get("num-other-sentinels").map(String::as_str) == Some("2")
                && info.get("num-slaves").map(String::as_str) == Some("1")
        })
    });
    let addresses = sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect::<Vec<_>>().join(",");
    let mut dirs = Vec::new();
    let mut node = || {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap().to_owned();
        dirs.push(dir);
        NodeProcess::start(&[
            "--redis-sentinels",
            &addresses,
            "--redis-sentinel-master",
            MASTER,
            "--redis-password",
            PASSWORD,
            "--secret",
            SECRET,
            "--data-dir",
            &data,
            "--reconnect-grace-secs",
            "60",
        ])
        .unwrap()
    };
    let (a, b) = (node(), node());
    Deployment { primary, replica, sentinels, a, b, _dirs: dirs }
}

async fn presence(node: &NodeProcess, room: &str, leader: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}/api/rooms/{room}/presence", node.base()))
        .bearer_auth(leader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Reads whatever each client was sent for `time`, as a browser would meanwhile (and answers
/// the server's pings).
async fn read_all(clients: &mut [YClient], time: Duration) {
    for client in clients.iter_mut() {
        let _ = client.wait_until_within(time, |_| false).await;
    }
}

/// Sends `command` until it is carried out (`done` holds of the state), retrying after each
/// `unavailable` answer as the protocol says; the time it took from `since`.
async fn until_carried_out(
    client: &mut YClient,
    command: Value,
    done: impl Fn(&RoomState) -> bool,
    since: Instant,
) -> Duration {
    loop {
        let before = client.errors().len();
        client.command(command.clone()).await.unwrap();
        client
            .wait_until_within(Duration::from_secs(15), |x| {
                x.errors().len() > before || x.latest_state().is_some_and(&done)
            })
            .await
            .unwrap_or_else(|e| panic!("no answer to {command}: {e}"));
        if client.latest_state().is_some_and(&done) {
            return since.elapsed();
        }
        assert_eq!(client.errors().last(), Some(&ErrorCode::Unavailable), "state: {:?}", client.latest_state());
        assert!(since.elapsed() < Duration::from_secs(30), "{command} never worked again after the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_meeting_loses_no_edit_and_commands_work_again() {
    let mut d = deployment();
    let (id, leader, invite) = create_room(&d.a, true).await;
    let names = ["lena", "ada", "ben", "cy"];
    let mut clients = vec![
        YClient::join(&d.a.ws_url(&id, &leader, "lena")).await.unwrap(),
        YClient::join(&d.a.ws_url(&id, &invite, "ada")).await.unwrap(),
        YClient::join(&d.b.ws_url(&id, &invite, "ben")).await.unwrap(),
        YClient::join(&d.b.ws_url(&id, &invite, "cy")).await.unwrap(),
    ];
    let ids: Vec<String> = clients.iter().map(|c| c.member_id().unwrap().to_owned()).collect();
    // Ben (on B) and Ada (on A) raise their hands, in that order.
    for i in [2, 1] {
        clients[i].command(json!({"type": "raise_hand"})).await.unwrap();
        let me = ids[i].clone();
        clients[i].wait_state(|s| s.queue.iter().any(|e| e.member == me)).await.unwrap();
    }
    let mut typed = Vec::new();
    for (client, name) in clients.iter_mut().zip(names) {
        let token = format!("before-{name} ");
        client.type_text(&token).await.unwrap();
        typed.push(token);
    }
    let everyone_here = |s: &RoomState| {
        s.members.len() == 4 && s.members.iter().all(|m| m.status == Status::Here) && s.queue.len() == 2
    };
    for client in clients.iter_mut() {
        client.wait_state(everyone_here).await.unwrap();
        client.wait_until(|x| typed.iter().all(|t| x.notes().contains(t.as_str()))).await.unwrap();
    }

    // The primary dies at once. The Sentinels notice within a second, agree, and promote the
    // replica; meanwhile every member keeps editing, on both nodes.
    let (replica_port, watcher) = (d.replica.port, d.sentinels[0].port);
    let killed = Instant::now();
    d.primary.stop();
    let promotion = tokio::task::spawn_blocking(move || loop {
        let out = redis_cli(watcher, None, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]).unwrap_or_default();
        if out.lines().nth(1).and_then(|port| port.trim().parse::<u16>().ok()) == Some(replica_port) {
            return Some(Instant::now());
        }
        if killed.elapsed() > Duration::from_secs(30) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    let mut round = 0;
    while !promotion.is_finished() {
        for (client, name) in clients.iter_mut().zip(names) {
            let token = format!("during-{name}-{round} ");
            client.type_text(&token).await.unwrap();
            typed.push(token);
        }
        read_all(&mut clients, Duration::from_millis(50)).await;
        round += 1;
    }
    let promoted = promotion.await.unwrap().expect("the Sentinels promote the replica within 30 s");
    assert!(d.sentinels.iter().all(|s| s.primary_port(MASTER).is_some()));
    let to_promotion = promoted - killed;

    // Meeting commands work again on both nodes: the leader on A gives the floor to the first
    // hand up (Ben), and Cy on B raises a hand.
    let ben = ids[2].clone();
    let floor = until_carried_out(
        &mut clients[0],
        json!({"type": "next_speaker"}),
        |s| s.floor.as_ref().is_some_and(|f| f.member == ben),
        promoted,
    )
    .await;
    let cy = ids[3].clone();
    let hand = until_carried_out(
        &mut clients[3],
        json!({"type": "raise_hand"}),
        |s| s.queue.iter().any(|e| e.member == cy),
        promoted,
    )
    .await;
    let recovered = floor.max(hand);
    println!(
        "failover: primary killed -> replica promoted by the Sentinels in {:.1} s; meeting commands work again \
         on both nodes {:.1} s after the promotion (node A {:.1} s, node B {:.1} s); {round} rounds of edits \
         typed meanwhile",
        to_promotion.as_secs_f64(),
        recovered.as_secs_f64(),
        floor.as_secs_f64(),
        hand.as_secs_f64()
    );
    assert!(recovered < Duration::from_secs(10), "commands work again within 10 s of the promotion: {recovered:?}");

    // Edits after the failover too; then every member holds every edit, and the same board.
    for (client, name) in clients.iter_mut().zip(names) {
        let token = format!("after-{name} ");
        client.type_text(&token).await.unwrap();
        typed.push(token);
    }
    for i in 0..clients.len() {
        let seen = clients[i].wait_until(|x| typed.iter().all(|t| x.notes().contains(t.as_str()))).await;
        let missing: Vec<&String> = typed.iter().filter(|t| !clients[i].notes().contains(t.as_str())).collect();
        assert!(seen.is_ok(), "{} lacks {missing:?}", names[i]);
    }
    let board = clients[0].notes();
    for client in clients.iter_mut() {
        client.wait_until(|x| x.notes() == board).await.unwrap();
    }

    // One record, as every member sees it and as the new primary holds it; presence the same
    // on both nodes and in Redis, with every member there.
    let key = |what: &str| format!("balint:room:{id}:{what}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let version = loop {
        read_all(&mut clients, Duration::from_millis(100)).await;
        let stored: Option<u64> = redis_cli(replica_port, Some(PASSWORD), &["HGET", &key("record"), "version"])
            .ok()
            .and_then(|v| v.parse().ok());
        let seen: Vec<u64> = clients.iter().map(|c| c.latest_state().unwrap().version).collect();
        if let Some(stored) = stored.filter(|stored| seen.iter().all(|v| v == stored)) {
            break stored;
        }
        assert!(Instant::now() < deadline, "record in Redis {stored:?}, seen by the members {seen:?}");
    };
    let state = clients[0].latest_state().unwrap().clone();
    assert_eq!(state.version, version);
    assert_eq!(state.floor.as_ref().map(|f| f.member.clone()), Some(ben));
    assert_eq!(state.queue.iter().map(|e| e.member.clone()).collect::<Vec<_>>(), [ids[1].clone(), cy]);
    assert!(state.members.len() == 4 && state.members.iter().all(|m| m.status == Status::Here), "{state:?}");
    // Redis may hold one entry more for a while after the failover (seen: one for a member id
    // the room does not have, on one node): it must be gone once an entry's lifetime and a
    // heartbeat have passed.
    let deadline = Instant::now() + Duration::from_secs(10) + PRESENCE_TTL + PRESENCE_HEARTBEAT;
    loop {
        let (pa, pb) = (presence(&d.a, &id, &leader).await, presence(&d.b, &id, &leader).await);
        let stored = redis_cli(replica_port, Some(PASSWORD), &["ZRANGE", &key("presence"), "0", "-1"]).unwrap();
        if pa["members"].as_array().map(Vec::len) == Some(4) && pa == pb && stored.lines().count() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "presence on A {pa}, on B {pb}, in Redis {stored:?}");
        read_all(&mut clients, Duration::from_millis(100)).await;
    }

    // No member was ever shown as reconnecting: every state any member received says so.
    for (client, name) in clients.iter().zip(names) {
        for state in client.states() {
            let away: Vec<_> = state.members.iter().filter(|m| m.status == Status::Reconnecting).collect();
            assert!(away.is_empty(), "{name} was shown {away:?} at version {}", state.version);
        }
    }
    // The password never reached a log line.
    for node in [&d.a, &d.b] {
        let logs = node.logs.lock().unwrap();
        assert!(logs.iter().any(|l| l.contains("new Redis primary")), "the node says it moved: {logs:?}");
        assert!(!logs.iter().any(|l| l.contains(PASSWORD)), "a log line holds the password");
    }
}

/// What `balint-room` says on standard error when it refuses to start with `args`.
fn refusal(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(balint_e2e::process::server_binary().unwrap())
        .args(["--bind", "127.0.0.1:0", "--secret", SECRET, "--data-dir"])
        .arg(data.path())
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sentinel_flags_without_a_master_name_or_with_a_redis_url_are_refused_at_start() {
    let refused = refusal(&["--redis-sentinels", "127.0.0.1:1"]);
    assert!(refused.contains("--redis-sentinel-master"), "{refused}");
    let url = format!("redis://:{PASSWORD}@127.0.0.1:1");
    let both = refusal(&["--redis-url", &url, "--redis-sentinels", "127.0.0.1:1", "--redis-sentinel-master", MASTER]);
    assert!(both.contains("cannot be used with"), "{both}");
    assert!(!both.contains(PASSWORD), "{both}");
    // No Sentinel answers: a clear error, and no password in it.
    let none =
        refusal(&["--redis-sentinels", "127.0.0.1:1", "--redis-sentinel-master", MASTER, "--redis-password", PASSWORD]);
    assert!(none.contains("through Sentinel"), "{none}");
    assert!(!none.contains(PASSWORD), "{none}");
}

/// A switchover, as for maintenance: the Sentinels are asked to fail over while the primary
/// is still up. It is demoted to a replica: a connection that reconnected to it would be
/// answered, but refused every write. And the replica missed the room's last writes, as it may
/// with asynchronous replication (here they are deleted on it before the switch): the nodes
/// write the room's record and presence again on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switchover_to_a_replica_that_missed_writes_the_nodes_write_the_room_again() {
    let d = deployment();
    let (id, leader, invite) = create_room(&d.a, true).await;
    let mut lead = YClient::join(&d.a.ws_url(&id, &leader, "lena")).await.unwrap();
    let mut ben = YClient::join(&d.b.ws_url(&id, &invite, "ben")).await.unwrap();
    let ben_id = ben.member_id().unwrap().to_owned();
    ben.command(json!({"type": "raise_hand"})).await.unwrap();
    let raised = lead.wait_state(|s| s.queue.iter().any(|e| e.member == ben_id)).await.unwrap();
    // Another meeting, on A, has ended.
    let (gone, gone_leader, gone_invite) = create_room(&d.a, true).await;
    let mut last = YClient::join(&d.a.ws_url(&gone, &gone_leader, "lou")).await.unwrap();
    last.command(json!({"type": "end_meeting"})).await.unwrap();
    assert_eq!(last.wait_closed().await.unwrap().code, balint_proto::close::MEETING_ENDED);
    let key = |what: &str| format!("balint:room:{id}:{what}");
    let ended = format!("balint:room:{gone}:ended");
    let on = |port: u16, args: &[&str]| redis_cli(port, Some(PASSWORD), args).unwrap();
    wait_for("the replica holds the record and the end", Duration::from_secs(10), || {
        on(d.replica.port, &["HGET", &key("record"), "version"]) == raised.version.to_string()
            && on(d.replica.port, &["EXISTS", &ended]) == "1"
    });
    on(d.replica.port, &["CONFIG", "SET", "replica-read-only", "no"]);
    on(d.replica.port, &["DEL", &key("record"), &key("presence"), &ended]);

    assert_eq!(redis_cli(d.sentinels[0].port, None, &["SENTINEL", "FAILOVER", MASTER]).unwrap(), "OK");
    let asked = Instant::now();
    let sentinel = &d.sentinels[0];
    wait_for("the replica is promoted", Duration::from_secs(30), || {
        sentinel.primary_port(MASTER) == Some(d.replica.port)
    });
    let promoted = Instant::now();

    lead.type_text("after the switchover, on A. ").await.unwrap();
    ben.type_text("after the switchover, on B. ").await.unwrap();
    let floor = until_carried_out(
        &mut lead,
        json!({"type": "next_speaker"}),
        |s| s.floor.as_ref().is_some_and(|f| f.member == ben_id),
        promoted,
    )
    .await;
    println!(
        "switchover: replica promoted {:.1} s after SENTINEL FAILOVER; the floor given on node A {:.1} s after the \
         promotion",
        (promoted - asked).as_secs_f64(),
        floor.as_secs_f64()
    );
    assert!(floor < Duration::from_secs(10), "commands work again within 10 s of the promotion: {floor:?}");
    for client in [&mut lead, &mut ben] {
        client.wait_until(|x| x.notes().contains("on A. ") && x.notes().contains("on B. ")).await.unwrap();
    }
    // The old primary is still up: the Sentinels make it a replica of the new one (within
    // 10 s, their period for asking a server that is not failing over), and the nodes stay
    // on the new primary.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !on(d.primary.port, &["ROLE"]).starts_with("slave") {
        assert!(Instant::now() < deadline, "the old primary never became a replica");
        let mut clients = [lead, ben];
        read_all(&mut clients, Duration::from_millis(100)).await;
        [lead, ben] = clients;
    }
    lead.type_text("once the old primary follows. ").await.unwrap();
    ben.wait_until(|x| x.notes().contains("once the old primary follows. ")).await.unwrap();

    // The record and presence the replica lacked are on the new primary again, as the
    // members see them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut clients = [lead, ben];
        read_all(&mut clients, Duration::from_millis(100)).await;
        [lead, ben] = clients;
        let stored = on(d.replica.port, &["HGET", &key("record"), "version"]);
        let present = on(d.replica.port, &["ZRANGE", &key("presence"), "0", "-1"]);
        let seen = (lead.latest_state().unwrap().version, ben.latest_state().unwrap().version);
        if stored == seen.0.to_string() && seen.0 == seen.1 && present.lines().count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "record {stored:?} / seen {seen:?} / presence {present:?}");
    }
    // The end the replica lacked is written again by node A, which ended the meeting: node B,
    // which never served it, refuses it as ended.
    wait_for("the end is on the new primary", Duration::from_secs(10), || {
        on(d.replica.port, &["EXISTS", &ended]) == "1"
    });
    let url = format!("{}/ws/{gone}?token={gone_invite}", d.b.base());
    assert_eq!(reqwest::get(url).await.unwrap().status(), 410);
    for (client, name) in [(&lead, "lena"), (&ben, "ben")] {
        for state in client.states() {
            let away: Vec<_> = state.members.iter().filter(|m| m.status == Status::Reconnecting).collect();
            assert!(away.is_empty(), "{name} was shown {away:?} at version {}", state.version);
        }
    }
}
