//! Timers are woken when they are due, never polled: a node whose rooms have nothing due
//! wakes none of them, whatever their number.

use std::time::Duration;

use balint_e2e::{eventually, TestServer, YClient};
use serde_json::json;

/// `balint_room_wakes_total`: rooms woken for a due timer, so far.
async fn wakes(server: &TestServer) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.base())).await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with("balint_room_wakes_total ")).expect("the wakes metric");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_idle_node_wakes_no_room_with_nothing_due() {
    let server = TestServer::start_with(|c| {
        c.rooms_per_ip_per_minute = 10_000;
        c.reconnect_grace_secs = 1;
        c.empty_grace_secs = 2;
    })
    .await;
    // Rooms set up ahead that nobody has joined (held by no node), and rooms with a member in
    // each who does nothing (a meeting's only timer then is its maximum length, hours away).
    for _ in 0..200 {
        server.create_room(json!({})).await;
    }
    let mut members = Vec::new();
    for _ in 0..20 {
        let room = server.create_room(json!({})).await;
        members.push(YClient::join(&server.ws_url(&room.id, &room.invite_token, "ada")).await.unwrap());
    }
    // Each meeting is woken once, to record its start.
    eventually(|| async { wakes(&server).await >= 20 }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(wakes(&server).await, 20, "a room with nothing due was woken");

    // A member leaves: her room is woken when her grace runs out (1 s), then when the empty
    // meeting's runs out (2 s), which ends it; and no other room is woken meanwhile.
    members.pop().unwrap().close().await;
    // The ended room is retired (and the rooms set up ahead are held by nobody).
    let metrics = || async { reqwest::get(format!("{}/metrics", server.base())).await.unwrap().text().await.unwrap() };
    eventually(|| async { metrics().await.contains("balint_rooms 19") }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(wakes(&server).await, 22, "woken only for the grace and the end");
}
