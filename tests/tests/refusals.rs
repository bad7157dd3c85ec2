//! What the server refuses: bad links before the upgrade, bad frames after it.

use balint_e2e::handshake_status;
use balint_e2e::{TestServer, YClient};
use balint_proto::close;
use balint_proto::room::Role;
use balint_server::token::Signer;
use serde_json::json;

async fn status(server: &TestServer, path: &str) -> u16 {
    reqwest::get(format!("{}{path}", server.base())).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn bad_links_are_refused_before_the_upgrade() {
    const SECRET: &str = "the secret of this test's server, long enough";
    let server = TestServer::start_with(|c| c.secret = Some(SECRET.to_owned())).await;
    let room = server.create_room(json!({})).await;
    let other = server.create_room(json!({})).await;
    let ws = |token: &str| server.ws_url(&room.id, token, "ada");

    // No token, a forged token, a token of another room.
    assert_eq!(handshake_status(&format!("ws://{}/ws/{}?name=ada", server.addr, room.id)).await, 401);
    let forged = Signer::new(b"not the server's secret, but long enough").issue(
        &room.id,
        Role::Leader,
        balint_server::unix_now() + 3600,
    );
    assert_eq!(handshake_status(&ws(&forged)).await, 401);
    assert_eq!(handshake_status(&ws(&other.invite_token)).await, 401);
    assert_eq!(handshake_status(&ws("v1.garbage.garbage")).await, 401);
    // An unknown room: with a link of another room, the link is refused first (no store is
    // asked about a request without a valid link); a malformed room id is unknown at once; a
    // valid link of a room this server no longer knows says that it is gone.
    assert_eq!(handshake_status(&server.ws_url("nosuchroom", &room.invite_token, "ada")).await, 401);
    assert_eq!(handshake_status(&server.ws_url("no-such-room", &room.invite_token, "ada")).await, 404);
    let lost = Signer::new(SECRET.as_bytes()).issue("nosuchroom", Role::Member, balint_server::unix_now() + 3600);
    assert_eq!(handshake_status(&server.ws_url("nosuchroom", &lost, "ada")).await, 410);
    // The leader's presence view of such a room gives the same answer.
    let lost_leader =
        Signer::new(SECRET.as_bytes()).issue("nosuchroom", Role::Leader, balint_server::unix_now() + 3600);
    let presence = reqwest::Client::new()
        .get(format!("{}/api/rooms/nosuchroom/presence", server.base()))
        .bearer_auth(&lost_leader)
        .send()
        .await
        .unwrap();
    assert_eq!(presence.status(), 410);
    // The right token upgrades.
    assert_eq!(handshake_status(&ws(&room.invite_token)).await, 101);
    // Plain HTTP gets the same answers.
    assert_eq!(status(&server, &format!("/ws/{}?token={}", room.id, forged)).await, 401);
}

#[tokio::test]
async fn an_expired_link_is_refused() {
    let server = TestServer::start_with(|c| c.token_ttl_secs = 1).await;
    let room = server.create_room(json!({})).await;
    let url = server.ws_url(&room.id, &room.invite_token, "ada");
    // Expiry has one-second resolution: wait for the clock to pass it.
    balint_e2e::eventually(|| async { handshake_status(&url).await == 401 }).await.unwrap();
}

#[tokio::test]
async fn room_creation_validates_its_body() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let post = |body: &'static str| {
        client.post(format!("{}/api/rooms", server.base())).header("content-type", "application/json").body(body).send()
    };
    let created = post(r#"{"title":"Tuesday group","template":"open","lobby":true}"#).await.unwrap();
    assert_eq!(created.status(), 201);
    let json: serde_json::Value = created.json().await.unwrap();
    for field in ["room", "leader_token", "invite_token", "leader_url", "invite_url"] {
        assert!(json[field].is_string(), "{field} present");
    }
    assert!(json["invite_url"].as_str().unwrap().contains("/r/"));
    assert!(json["invite_url"].as_str().unwrap().contains("#t="), "the token travels in the fragment");
    assert_eq!(json["ephemeral"], true, "ephemeral by default");

    for bad in [r#"{"template":"circus"}"#, r#"{"colour":"red"}"#, r#"{"title":5}"#, "not json"] {
        let response = post(bad).await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_json");
    }
}

#[tokio::test]
async fn a_malformed_frame_closes_only_its_sender() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let url = |name: &str| server.ws_url(&room.id, &room.invite_token, name);
    let mut a = YClient::connect(&url("a")).await.unwrap();
    let mut b = YClient::connect(&url("b")).await.unwrap();

    let cases: Vec<(Vec<u8>, u16)> = vec![
        // A sync update whose length prefix runs past the end of the frame.
        (vec![0, 2, 100, 1, 2, 3], close::MALFORMED_SYNC),
        // A sync message of an unknown kind.
        (vec![0, 9, 0], close::MALFORMED_SYNC),
        // An update payload that is not a Yjs update.
        (vec![0, 2, 4, 0xff, 0xff, 0xff, 0xff], close::MALFORMED_SYNC),
        // An unknown message type.
        (vec![42, 0], close::UNKNOWN_MESSAGE_TYPE),
        // An empty frame.
        (vec![], close::MALFORMED_SYNC),
    ];
    for (frame, code) in cases {
        let mut bad = YClient::connect(&url("bad")).await.unwrap();
        bad.send_binary(frame.clone()).await.unwrap();
        let closed = bad.wait_closed().await.unwrap();
        assert_eq!(closed.code, code, "frame {frame:?} closed with {closed:?}");
        assert!(!closed.reason.is_empty());
    }

    // The others were not disturbed and keep editing.
    a.type_text("still here").await.unwrap();
    b.wait_until(|c| c.notes() == "still here").await.unwrap();
    b.type_text("!").await.unwrap();
    a.wait_until(|c| c.notes() == "still here!").await.unwrap();
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_its_sender_with_1009() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 64 * 1024).await;
    let room = server.create_room(json!({})).await;
    let url = |name: &str| server.ws_url(&room.id, &room.invite_token, name);
    let mut a = YClient::connect(&url("a")).await.unwrap();
    let mut b = YClient::connect(&url("b")).await.unwrap();

    let mut big = YClient::connect(&url("big")).await.unwrap();
    big.send_binary(vec![0; 64 * 1024 + 1]).await.unwrap();
    let closed = big.wait_closed().await.unwrap();
    assert_eq!(closed.code, close::FRAME_TOO_LARGE);

    // Far over the limit: refused by the transport, still with a close frame or a dropped
    // connection, and the room carries on.
    let mut huge = YClient::connect(&url("huge")).await.unwrap();
    let _ = huge.send_binary(vec![0; 1024 * 1024]).await;
    let closed = huge.wait_closed().await.unwrap();
    assert!(closed.code == close::FRAME_TOO_LARGE || closed.code == 1006, "{closed:?}");

    a.type_text("unaffected").await.unwrap();
    b.wait_until(|c| c.notes() == "unaffected").await.unwrap();
}

#[tokio::test]
async fn text_frames_are_answered_only_after_hello() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut client = YClient::connect(&server.ws_url(&room.id, &room.leader_token, "lead")).await.unwrap();
    client.send_text(r#"{"type":"hello"}"#).await.unwrap();
    client.wait_until(|c| !c.texts.is_empty()).await.unwrap();
    match &client.texts[0] {
        balint_proto::room::ServerMessage::Welcome { role, member_id, .. } => {
            assert_eq!(*role, Role::Leader);
            assert!(!member_id.is_empty());
        }
        other => panic!("expected welcome, got {other:?}"),
    }

    // Without hello, a text frame is a protocol error for that connection only.
    let mut stock = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "m")).await.unwrap();
    stock.send_text("{}").await.unwrap();
    assert_eq!(stock.wait_closed().await.unwrap().code, close::INVALID_TEXT);
}

#[tokio::test]
async fn a_graceful_shutdown_closes_sockets_with_1012() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut client = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "m")).await.unwrap();
    let stopping = tokio::spawn(server.stop());
    assert_eq!(client.wait_closed().await.unwrap().code, close::SERVICE_RESTART);
    stopping.await.unwrap();
}

#[tokio::test]
async fn healthz_answers() {
    let server = TestServer::start().await;
    assert_eq!(status(&server, "/healthz").await, 200);
}
