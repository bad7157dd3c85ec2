//! The bad-input suite, against a real server: each case checks the refusal, and that the
//! room still works for everyone else.

use std::time::{Duration, Instant};

use balint_e2e::{eventually, TestServer, YClient};
use balint_proto::close;
use balint_proto::room::ErrorCode;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

/// Two members of `room` who check, by editing, that the room still works.
struct Witnesses {
    a: YClient,
    b: YClient,
    round: usize,
}

impl Witnesses {
    async fn join(server: &TestServer, room: &balint_e2e::Room) -> Self {
        let a = YClient::join(&server.ws_url(&room.id, &room.invite_token, "wa")).await.unwrap();
        let b = YClient::join(&server.ws_url(&room.id, &room.invite_token, "wb")).await.unwrap();
        Witnesses { a, b, round: 0 }
    }

    /// A edits, B sees it, and the other way round.
    async fn room_still_works(&mut self) {
        self.round += 1;
        let mark = format!("[ok {}]", self.round);
        self.a.type_text(&mark).await.unwrap();
        self.b.wait_until(|c| c.notes().contains(&mark)).await.unwrap();
        let back = format!("[back {}]", self.round);
        self.b.type_text(&back).await.unwrap();
        self.a.wait_until(|c| c.notes().contains(&back)).await.unwrap();
    }
}

async fn metrics(server: &TestServer) -> String {
    reqwest::get(format!("{}/metrics", server.base())).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn an_update_that_would_overfill_the_board_is_refused_and_the_board_stays_intact() {
    let server = TestServer::start_with(|c| c.max_board_bytes = 64 * 1024).await;
    let room = server.create_room(json!({})).await;
    let mut w = Witnesses::join(&server, &room).await;
    w.room_still_works().await;
    let mut big = YClient::join(&server.ws_url(&room.id, &room.invite_token, "big")).await.unwrap();
    big.type_text(&"x".repeat(100 * 1024)).await.unwrap();
    big.wait_until(|c| c.errors().contains(&ErrorCode::BoardFull)).await.unwrap();
    w.room_still_works().await;
    assert!(!w.a.notes().contains("xxxx"), "the refused edit was not relayed");
    let late = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "late")).await.unwrap();
    assert_eq!(late.notes(), w.a.notes(), "the board is intact");
    assert!(metrics(&server).await.contains("reason=\"board_full\""));
}

#[tokio::test]
async fn a_burst_is_slowed_not_punished_and_arrives_whole() {
    let server = TestServer::start_with(|c| {
        c.messages_per_sec = 50;
        c.flood_timeout_secs = 30;
    })
    .await;
    let room = server.create_room(json!({})).await;
    let mut w = Witnesses::join(&server, &room).await;
    let mut burst = YClient::join(&server.ws_url(&room.id, &room.invite_token, "burst")).await.unwrap();
    // 400 updates in one go: twice the burst allowance (4 s of 50 per second), so the server
    // must slow this client down for about 4 s.
    let start = Instant::now();
    for i in 0..400 {
        burst.type_text(&format!("{i:03},")).await.unwrap();
    }
    let expected = burst.notes();
    // A late joiner gets all of it once the server has read it all.
    let late_url = server.ws_url(&room.id, &room.invite_token, "late");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let late = YClient::connect(&late_url).await.unwrap();
        if late.notes() == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the burst never arrived whole: {} of {}",
            late.notes().len(),
            expected.len()
        );
        late.close().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The bursting client was never closed: its next edit still goes through.
    burst.type_text("end").await.unwrap();
    w.a.wait_until(|c| c.notes().ends_with("end")).await.unwrap();
    burst.wait_until(|c| c.errors().contains(&ErrorCode::RateLimited)).await.unwrap();
    assert!(burst.closed.is_none());
    assert!(start.elapsed() >= Duration::from_secs(3), "slowed down: {:?}", start.elapsed());
    w.room_still_works().await;
}

#[tokio::test]
async fn a_client_that_keeps_flooding_is_slowed_warned_then_closed_and_the_others_do_not_notice() {
    let server = TestServer::start_with(|c| {
        c.messages_per_sec = 20;
        c.bytes_per_sec = 64 * 1024;
        c.flood_timeout_secs = 2;
    })
    .await;
    let room = server.create_room(json!({})).await;
    let mut w = Witnesses::join(&server, &room).await;
    let mut flood = YClient::join(&server.ws_url(&room.id, &room.invite_token, "flood")).await.unwrap();
    // Far more than the server reads in the flood timeout: the client is still pushing every
    // time the server is ready to read again, so after 2 s of that it is closed with 4529.
    let mut sent = 0;
    while flood.closed.is_none() && sent < 2_000 {
        if flood.send_text(r#"{"type":"set_away","away":false}"#).await.is_err() {
            break;
        }
        sent += 1;
    }
    let closed = flood.wait_closed().await.unwrap();
    assert!(flood.errors().contains(&ErrorCode::RateLimited), "warned first");
    assert_eq!(closed.code, close::RATE_LIMITED);
    // The others' edits still reach each other promptly.
    let start = Instant::now();
    w.room_still_works().await;
    assert!(start.elapsed() < Duration::from_secs(2), "others are not slowed: {:?}", start.elapsed());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_memory_stays_bounded() {
    let server = TestServer::start_with(|c| {
        c.outbound_queue = 16;
        c.write_timeout_ms = 300;
        c.max_frame_bytes = 4 * 1024 * 1024;
        c.bytes_per_sec = 64 * 1024 * 1024;
    })
    .await;
    let room = server.create_room(json!({})).await;
    let mut w = Witnesses::join(&server, &room).await;
    // The slow client joins, then never reads again.
    let slow = YClient::join(&server.ws_url(&room.id, &room.invite_token, "slow")).await.unwrap();
    // Enough traffic to fill its socket buffers and its queue, while the others keep up.
    let chunk = "y".repeat(256 * 1024);
    for i in 1..=48 {
        w.a.type_text(&chunk).await.unwrap();
        w.b.wait_until(|c| c.notes().len() >= i * chunk.len()).await.unwrap();
    }
    eventually(|| async { metrics(&server).await.contains("balint_slow_client_closes_total 1") }).await.unwrap();
    w.room_still_works().await;
    drop(slow);
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_only_its_sender() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut w = Witnesses::join(&server, &room).await;
    let url = server.ws_url(&room.id, &room.invite_token, "bad");
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
    let frame = Frame::from_payload(header, vec![b'{', 0xff, 0xfe, b'}'].into());
    socket.send(Message::Frame(frame)).await.unwrap();
    let mut code = None;
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Close(Some(frame)) = message {
            code = Some(u16::from(frame.code));
            break;
        }
    }
    assert_eq!(code, Some(close::INVALID_TEXT));
    w.room_still_works().await;
}

#[tokio::test]
async fn unknown_fields_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut w = Witnesses::join(&server, &room).await;
    let code = w.a.refused(json!({"type": "raise_hand", "priority": "first"})).await.unwrap();
    assert_eq!(code, ErrorCode::BadMessage);
    assert!(w.a.latest_state().unwrap().queue.is_empty());
    w.room_still_works().await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/rooms", server.base()))
        .json(&json!({"title": "x", "owner": "me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_page_from_another_origin_cannot_open_a_room() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut w = Witnesses::join(&server, &room).await;
    let url = server.ws_url(&room.id, &room.invite_token, "x");
    let status = |origin: String| {
        let url = url.clone();
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = url.into_client_request().unwrap();
            request.headers_mut().insert("origin", origin.parse().unwrap());
            match tokio_tungstenite::connect_async(request).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(status("http://elsewhere.example".to_owned()).await, 403);
    assert_eq!(status(format!("http://{}", server.addr)).await, 101, "the server's own pages may");
    w.room_still_works().await;
}

#[tokio::test]
async fn room_creation_is_limited_per_address() {
    let server = TestServer::start_with(|c| c.rooms_per_ip_per_minute = 3).await;
    for _ in 0..3 {
        server.create_room(json!({})).await;
    }
    let response =
        reqwest::Client::new().post(format!("{}/api/rooms", server.base())).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 429);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "too_many_rooms_created");
}

#[tokio::test]
async fn rooms_set_up_ahead_count_against_the_nodes_room_limit() {
    // A single node keeps the records of rooms set up ahead in its memory until their links
    // lapse: they count, or anyone could fill it with rooms nobody opens.
    let server = TestServer::start_with(|c| c.max_rooms = 3).await;
    let rooms: Vec<_> = futures_util::future::join_all((0..3).map(|_| server.create_room(json!({})))).await;
    let response =
        reqwest::Client::new().post(format!("{}/api/rooms", server.base())).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "too_many_rooms");
    // The rooms set up are unharmed, and one that ends gives its place back.
    let room = &rooms[0];
    let ended = reqwest::Client::new()
        .delete(format!("{}/api/rooms/{}", server.base(), room.id))
        .bearer_auth(&room.leader_token)
        .send()
        .await
        .unwrap();
    assert!(ended.status().is_success(), "{}", ended.status());
    server.create_room(json!({})).await;
}

#[tokio::test]
async fn a_full_room_turns_newcomers_away() {
    let server = TestServer::start_with(|c| c.max_members = 3).await;
    let room = server.create_room(json!({})).await;
    let mut w = Witnesses::join(&server, &room).await;
    let _third = YClient::join(&server.ws_url(&room.id, &room.invite_token, "c")).await.unwrap();
    let mut fourth = YClient::connect_pending(&server.ws_url(&room.id, &room.invite_token, "d")).await.unwrap();
    assert_eq!(fourth.wait_closed().await.unwrap().code, close::ROOM_FULL);
    w.room_still_works().await;
}

#[tokio::test]
async fn leader_commands_from_a_member_are_refused_and_the_room_carries_on() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut w = Witnesses::join(&server, &room).await;
    let commands = [
        json!({"type": "next_speaker"}),
        json!({"type": "lower_all_hands"}),
        json!({"type": "set_phase", "phase": "reflection"}),
        json!({"type": "lock_board", "locked": true}),
        json!({"type": "end_meeting"}),
    ];
    for command in commands {
        assert_eq!(w.a.refused(command.clone()).await.unwrap(), ErrorCode::Forbidden, "{command}");
    }
    w.room_still_works().await;
    assert!(metrics(&server).await.contains("balint_connections 2"));
}

#[tokio::test]
async fn a_room_whose_last_client_left_frees_its_memory_and_loses_nothing() {
    let server = TestServer::start_with(|c| c.idle_unload_secs = 1).await;
    let room = server.create_room(json!({"ephemeral": false})).await;
    let url = server.ws_url(&room.id, &room.invite_token, "ada");
    let mut ada = YClient::join(&url).await.unwrap();
    ada.type_text("kept across an unload").await.unwrap();
    let mut witness = YClient::join(&url).await.unwrap();
    witness.wait_until(|c| c.notes() == "kept across an unload").await.unwrap();
    ada.close().await;
    witness.close().await;
    // Saved, then unloaded: the node holds no room.
    eventually(|| async { metrics(&server).await.contains("balint_rooms 0") }).await.unwrap();
    let back = YClient::join(&url).await.unwrap();
    assert_eq!(back.notes(), "kept across an unload");
}
