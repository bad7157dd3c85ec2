//! The board over y-sync, with real WebSocket clients on a real server.

use balint_e2e::{TestServer, YClient};
use serde_json::json;
use yrs::{Doc, Text, Transact};

async fn room_and_url(server: &TestServer) -> (balint_e2e::Room, impl Fn(&str) -> String + '_) {
    let room = server.create_room(json!({})).await;
    let id = room.id.clone();
    let token = room.invite_token.clone();
    (room, move |name: &str| server.ws_url(&id, &token, name))
}

#[tokio::test]
async fn a_late_joiner_receives_the_board() {
    let server = TestServer::start().await;
    let (_room, url) = room_and_url(&server).await;
    let mut early = YClient::connect(&url("ada")).await.unwrap();
    early.type_text("first observation").await.unwrap();
    // The server has the edit once a second client sees it.
    let mut witness = YClient::connect(&url("ben")).await.unwrap();
    witness.wait_until(|c| c.notes() == "first observation").await.unwrap();

    let late = YClient::connect(&url("cy")).await.unwrap();
    assert_eq!(late.notes(), "first observation");
}

#[tokio::test]
async fn live_updates_flow_both_ways() {
    let server = TestServer::start().await;
    let (_room, url) = room_and_url(&server).await;
    let mut a = YClient::connect(&url("ada")).await.unwrap();
    let mut b = YClient::connect(&url("ben")).await.unwrap();
    a.type_text("from a. ").await.unwrap();
    b.wait_until(|c| c.notes() == "from a. ").await.unwrap();
    b.type_text("from b.").await.unwrap();
    a.wait_until(|c| c.notes() == "from a. from b.").await.unwrap();
}

#[tokio::test]
async fn four_clients_editing_concurrently_converge() {
    let server = TestServer::start().await;
    let (_room, url) = room_and_url(&server).await;
    let mut clients = Vec::new();
    for name in ["a", "b", "c", "d"] {
        clients.push(YClient::connect(&url(name)).await.unwrap());
    }
    // Every client types before reading anything: the edits are truly concurrent.
    for round in 0..5 {
        for (i, client) in clients.iter_mut().enumerate() {
            client.type_text(&format!("[{i}:{round}]")).await.unwrap();
        }
    }
    let expected_len = 4 * 5 * "[0:0]".len();
    for client in clients.iter_mut() {
        client.wait_until(|c| c.notes().len() == expected_len).await.unwrap();
    }
    let first = clients[0].notes();
    for client in &clients {
        assert_eq!(client.notes(), first, "every client holds the same board");
    }
    for i in 0..4 {
        for round in 0..5 {
            assert!(first.contains(&format!("[{i}:{round}]")));
        }
    }
}

#[tokio::test]
async fn offline_edits_merge_on_reconnect() {
    let server = TestServer::start().await;
    let (_room, url) = room_and_url(&server).await;
    let mut stay = YClient::connect(&url("stay")).await.unwrap();
    let mut leave = YClient::connect(&url("leave")).await.unwrap();
    stay.type_text("shared. ").await.unwrap();
    leave.wait_until(|c| c.notes() == "shared. ").await.unwrap();

    // The second client loses its connection and keeps editing its own copy.
    let offline_doc: Doc = leave.doc.clone();
    leave.drop_connection();
    {
        let notes = offline_doc.get_or_insert_text("notes");
        let mut txn = offline_doc.transact_mut();
        notes.insert(&mut txn, 0, "offline. ");
    }
    stay.type_text("online.").await.unwrap();

    let mut back = YClient::connect_with_doc(&url("leave"), offline_doc).await.unwrap();
    back.wait_until(|c| c.notes().contains("online.")).await.unwrap();
    stay.wait_until(|c| c.notes().contains("offline. ")).await.unwrap();
    assert_eq!(back.notes(), stay.notes());
    assert_eq!(stay.notes(), "offline. shared. online.");
}

#[tokio::test]
async fn a_one_mebibyte_board_reaches_a_late_joiner() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 4 * 1024 * 1024).await;
    let (_room, url) = room_and_url(&server).await;
    let mut writer = YClient::connect(&url("writer")).await.unwrap();
    let chunk = "abcdefghijklmnopqrstuvwxyz012345".repeat(1024); // 32 KiB
    for _ in 0..32 {
        writer.type_text(&chunk).await.unwrap();
    }
    let mut witness = YClient::connect(&url("witness")).await.unwrap();
    witness.wait_until(|c| c.notes().len() == 1024 * 1024).await.unwrap();

    let late = YClient::connect(&url("late")).await.unwrap();
    assert_eq!(late.notes().len(), 1024 * 1024);
    assert_eq!(late.notes(), writer.notes());
}

#[tokio::test]
async fn awareness_disappears_when_a_peer_disconnects() {
    let server = TestServer::start().await;
    let (_room, url) = room_and_url(&server).await;
    let mut watcher = YClient::connect(&url("watcher")).await.unwrap();
    let mut peer = YClient::connect(&url("peer")).await.unwrap();
    let peer_id = peer.doc.client_id().get();
    peer.set_awareness(1, r##"{"user":{"color":"#30bced"}}"##).await.unwrap();
    watcher.wait_until(|c| c.awareness.contains_key(&peer_id)).await.unwrap();

    // A newcomer gets the states of those present.
    let newcomer = YClient::connect(&url("newcomer")).await.unwrap();
    let mut newcomer = newcomer;
    newcomer.wait_until(|c| c.awareness.contains_key(&peer_id)).await.unwrap();

    peer.drop_connection();
    watcher.wait_until(|c| !c.awareness.contains_key(&peer_id)).await.unwrap();
}

#[tokio::test]
async fn awareness_not_renewed_is_swept() {
    let server = TestServer::start_with(|c| c.awareness_timeout_secs = 1).await;
    let (_room, url) = room_and_url(&server).await;
    let mut watcher = YClient::connect(&url("watcher")).await.unwrap();
    let mut quiet = YClient::connect(&url("quiet")).await.unwrap();
    let quiet_id = quiet.doc.client_id().get();
    quiet.set_awareness(1, r#"{"user":{}}"#).await.unwrap();
    watcher.wait_until(|c| c.awareness.contains_key(&quiet_id)).await.unwrap();
    // The connection stays open but never renews its state: the server sweeps it.
    watcher.wait_until(|c| !c.awareness.contains_key(&quiet_id)).await.unwrap();
    quiet.close().await;
}

#[tokio::test]
async fn what_a_member_sent_before_vanishing_is_kept() {
    let server = TestServer::start().await;
    let (_room, url) = room_and_url(&server).await;
    let mut witness = YClient::connect(&url("lena")).await.unwrap();
    for round in 0..10 {
        // The member's connection drops without a close right after it typed, while the
        // room has frames on their way to it (the witness's edit).
        let mut member = YClient::connect(&url("ada")).await.unwrap();
        member.type_text(&format!("<m{round}>")).await.unwrap();
        member.drop_connection();
        witness.type_text(&format!("<w{round}>")).await.unwrap();
        let expected = format!("<m{round}>");
        witness.wait_until(|c| c.notes().contains(&expected)).await.unwrap();
    }
}
