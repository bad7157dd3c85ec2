//! Real networks: stalled connections, keepalives, oversized frames, and the HTTP edge
//! (tokens before rooms, socket caps, JSON objects only, security headers).

use std::time::{Duration, Instant};

use balint_e2e::process::RedisProcess;
use balint_e2e::{TestServer, YClient};
use balint_proto::close;
use balint_proto::room::{ServerMessage, Status};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Reads `client`'s socket (answering pings) until `for_how_long` has passed.
async fn keep_reading(client: &mut YClient, for_how_long: Duration) {
    // Reading stops when the time is up; a close or an error before that fails the test.
    if let Ok(ended) = tokio::time::timeout(for_how_long, client.wait_until_within(for_how_long * 2, |_| false)).await {
        panic!("the connection ended while it was read: {ended:?}");
    }
}

#[tokio::test]
async fn an_idle_room_protocol_client_hears_heartbeats_and_a_stock_client_gets_no_text() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut member = YClient::join(&server.ws_url(&room.id, &room.invite_token, "m")).await.unwrap();
    let mut stock = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "s")).await.unwrap();
    let heartbeats = |c: &YClient| c.texts.iter().filter(|m| matches!(m, ServerMessage::Heartbeat {})).count();
    let start = Instant::now();
    // Two heartbeats in a quiet room, the first within the heartbeat interval (5 s).
    member.wait_until(|c| heartbeats(c) >= 1).await.unwrap();
    assert!(start.elapsed() <= Duration::from_millis(5_500), "first heartbeat after {:?}", start.elapsed());
    member.wait_until(|c| heartbeats(c) >= 2).await.unwrap();
    keep_reading(&mut stock, Duration::from_secs(3)).await;
    assert!(stock.texts.is_empty(), "a stock client never gets a text frame: {:?}", stock.texts);
    assert!(stock.closed.is_none() && member.closed.is_none());
}

#[tokio::test]
async fn a_stalled_member_shows_as_reconnecting_and_a_quiet_one_stays() {
    let server = TestServer::start_with(|c| c.stall_timeout_secs = 10).await;
    let room = server.create_room(json!({})).await;
    let mut leader = YClient::join(&server.ws_url(&room.id, &room.leader_token, "lead")).await.unwrap();
    let mut quiet = YClient::join(&server.ws_url(&room.id, &room.invite_token, "quiet")).await.unwrap();
    // The stalled member's socket is never read again: it answers no ping, like a laptop that
    // went to sleep with its connection open.
    let stalled = YClient::join(&server.ws_url(&room.id, &room.invite_token, "stalled")).await.unwrap();
    let stalled_id = stalled.member_id().unwrap().to_owned();
    let quiet_id = quiet.member_id().unwrap().to_owned();
    let start = Instant::now();
    let status =
        |state: &balint_proto::room::RoomState, id: &str| state.members.iter().find(|m| m.id == id).map(|m| m.status);
    let seen = async {
        let seen = leader.wait_until_within(Duration::from_secs(30), |c| {
            c.latest_state().is_some_and(|s| status(s, &stalled_id) == Some(Status::Reconnecting))
        });
        seen.await.map(|()| start.elapsed())
    };
    let (found, _) = tokio::join!(seen, keep_reading(&mut quiet, Duration::from_secs(20)));
    let found = found.unwrap();
    // Found after the stall timeout, within two keepalive beats (1.25 s each) of it.
    assert!(found >= Duration::from_secs(10), "not before the stall timeout: {found:?}");
    assert!(found < Duration::from_millis(13_500), "found after {found:?}");
    let state = leader.latest_state().unwrap().clone();
    assert_eq!(status(&state, &quiet_id), Some(Status::Here), "a quiet member that answers pings stays");
    keep_reading(&mut quiet, Duration::from_secs(1)).await;
    let state = leader.latest_state().unwrap().clone();
    assert_eq!(status(&state, &quiet_id), Some(Status::Here));
    drop(stalled);
}

/// A quiet connection is pinged when it has been quiet for a third of the stall timeout, not on
/// every keepalive beat (1.25 s): idle members cost a node little. Its pongs keep it in the room
/// past the stall timeout.
#[tokio::test]
async fn a_quiet_client_is_pinged_every_third_of_the_stall_timeout_and_stays() {
    let server = TestServer::start_with(|c| c.stall_timeout_secs = 12).await;
    let room = server.create_room(json!({})).await;
    let url = server.ws_url(&room.id, &room.invite_token, "quiet");
    // A bare WebSocket that sends nothing: it only answers pings (tungstenite does, as it reads).
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let start = Instant::now();
    let mut pings = Vec::new();
    let watched = Duration::from_secs(21);
    while let Ok(message) = tokio::time::timeout(watched.saturating_sub(start.elapsed()), socket.next()).await {
        match message {
            Some(Ok(Message::Ping(_))) => pings.push(start.elapsed()),
            Some(Ok(Message::Close(frame))) => panic!("closed after {:?}: {frame:?}", start.elapsed()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the connection failed after {:?}: {e}", start.elapsed()),
            None => panic!("the connection ended after {:?}", start.elapsed()),
        }
    }
    // Quiet for 4 s (12 / 3, less the keepalive's margin of a tenth of its 1.25 s beat) before
    // each ping: a ping about every 5 s, where a ping every beat would make sixteen.
    assert!((3..=5).contains(&pings.len()), "pings at {pings:?}");
    assert!(pings[0] >= Duration::from_millis(3_800), "the first ping came after {:?}", pings[0]);
    for pair in pings.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(3_800), "pings at {pings:?}");
    }
    // Not closed in 21 s, past the 12 s stall timeout (a close would have been read above): the
    // pongs counted. And it is still served: an edit from it reaches another member.
    let mut other = YClient::join(&url).await.unwrap();
    use yrs::{ReadTxn, Text, Transact};
    let doc = yrs::Doc::new();
    let notes = doc.get_or_insert_text("notes");
    notes.insert(&mut doc.transact_mut(), 0, "still here");
    let update = doc.transact().encode_state_as_update_v1(&yrs::StateVector::default());
    socket.send(Message::Binary(balint_proto::sync::encode_update(&update))).await.unwrap();
    other.wait_until(|c| c.notes() == "still here").await.unwrap();
}

/// A client that says `hello` late (a slow page), after the keepalive let its connection rest
/// as a stock client's until its next ping, still hears from the server within the heartbeat
/// interval from then on.
#[tokio::test]
async fn a_client_that_says_hello_late_hears_from_the_server_within_the_interval() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let url = server.ws_url(&room.id, &room.invite_token, "slow");
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    // Silent past the first keepalive beat (1.25 s), then the room protocol.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    socket.send(Message::text(r#"{"type":"hello"}"#)).await.unwrap();
    let start = Instant::now();
    let mut texts = Vec::new();
    let watched = Duration::from_secs(12);
    while let Ok(message) = tokio::time::timeout(watched.saturating_sub(start.elapsed()), socket.next()).await {
        match message {
            Some(Ok(Message::Text(text))) => texts.push((start.elapsed(), text.to_string())),
            Some(Ok(Message::Close(frame))) => panic!("closed after {:?}: {frame:?}", start.elapsed()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the connection failed after {:?}: {e}", start.elapsed()),
            None => panic!("the connection ended after {:?}", start.elapsed()),
        }
    }
    assert!(texts.first().is_some_and(|(_, t)| t.contains("welcome")), "{texts:?}");
    let heartbeats = texts.iter().filter(|(_, t)| t.contains("heartbeat")).count();
    assert!(heartbeats >= 2, "{texts:?}");
    // Never more than the heartbeat interval (5 s) without a frame, with a margin for timers.
    let times: Vec<Duration> = texts.iter().map(|(at, _)| *at).chain([watched]).collect();
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] <= Duration::from_millis(5_300), "server frames at {times:?}");
    }
}

/// Sends one binary frame of `size` bytes and returns the close code the client received.
async fn close_code_for_a_frame_of(server: &TestServer, url: &str, size: usize) -> Option<u16> {
    let _ = server;
    let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await.unwrap();
    // A valid y-sync update header (message 0, update 2) followed by its length and filler: the
    // size alone is at fault.
    let mut frame = vec![0u8; size];
    frame[0] = 0;
    frame[1] = 2;
    let _ = socket.send(Message::Binary(frame.into())).await;
    let read = async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(Some(frame))) => return Some(u16::from(frame.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.unwrap()
}

#[tokio::test]
async fn every_oversized_frame_gets_1009_whatever_its_size() {
    let server = TestServer::start_with(|c| c.bytes_per_sec = 64 << 20).await;
    let room = server.create_room(json!({})).await;
    let url = server.ws_url(&room.id, &room.invite_token, "big");
    for size in [(1 << 20) + 1, 3 << 20, 16 << 20] {
        assert_eq!(close_code_for_a_frame_of(&server, &url, size).await, Some(close::FRAME_TOO_LARGE), "{size} bytes");
    }
    // The room carries on.
    let mut a = YClient::join(&url).await.unwrap();
    let mut b = YClient::connect(&url).await.unwrap();
    a.type_text("still here").await.unwrap();
    b.wait_until(|c| c.notes() == "still here").await.unwrap();
}

#[tokio::test]
async fn a_request_body_must_be_a_json_object() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for body in [r#"["t",false,"open",true]"#, "true", "\"title\"", "12", "null"] {
        let response = client
            .post(format!("{}/api/rooms", server.base()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["error"], "bad_json", "{body}");
    }
}

#[tokio::test]
async fn a_link_is_checked_before_any_store_is_asked() {
    let mut redis = RedisProcess::start().unwrap();
    let url = redis.url();
    let secret = "a secret that both nodes share, long enough".to_owned();
    let creator = TestServer::start_with(|c| {
        c.redis_url = Some(url.clone().into());
        c.secret = Some(secret.clone());
    })
    .await;
    let server = TestServer::start_with(|c| {
        c.redis_url = Some(url.into());
        c.secret = Some(secret);
    })
    .await;
    // Created on the other node: this one has to ask Redis about it.
    let room = creator.create_room(json!({})).await;
    // With Redis gone, a request with a valid link needs the store and cannot be served...
    redis.stop();
    let valid = server.ws_url(&room.id, &room.invite_token, "m");
    assert_eq!(balint_e2e::handshake_status(&valid).await, 503);
    // ...while one without a valid link is refused at once, without asking it: for a room that
    // exists, for one that does not, and with a link of another room.
    let other = server.ws_url("r0123456789abcdef0123456789abcdef", &room.invite_token, "m");
    let forged = server.ws_url(&room.id, "v1.Zm9v.YmFy", "m");
    let missing = format!("{}/ws/{}?name=m", server.base().replace("http", "ws"), room.id);
    for url in [forged, missing, other] {
        let status = tokio::time::timeout(Duration::from_secs(2), balint_e2e::handshake_status(&url)).await.unwrap();
        assert_eq!(status, 401, "{url}");
    }
}

#[tokio::test]
async fn sockets_are_capped_per_client_address() {
    let server = TestServer::start_with(|c| c.max_connections_per_address = 2).await;
    let room = server.create_room(json!({})).await;
    let url = server.ws_url(&room.id, &room.invite_token, "m");
    let first = YClient::connect(&url).await.unwrap();
    let _second = YClient::connect(&url).await.unwrap();
    assert_eq!(balint_e2e::handshake_status(&url).await, 503);
    let metrics = reqwest::get(format!("{}/metrics", server.base())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reason=\"address_connections\""), "{metrics}");
    // A closed socket gives its place back.
    first.close().await;
    balint_e2e::eventually(|| async { balint_e2e::handshake_status(&url).await == 101 }).await.unwrap();
}

#[tokio::test]
async fn sockets_are_capped_per_node() {
    let server = TestServer::start_with(|c| c.max_connections = 1).await;
    let room = server.create_room(json!({})).await;
    let url = server.ws_url(&room.id, &room.invite_token, "m");
    let _only = YClient::connect(&url).await.unwrap();
    let response = reqwest::get(url.replace("ws://", "http://")).await.unwrap();
    // A plain GET is refused for the cap before it is refused for not being an upgrade.
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "server_busy");
    let metrics = reqwest::get(format!("{}/metrics", server.base())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reason=\"node_connections\""), "{metrics}");
}

#[tokio::test]
async fn every_page_asset_and_answer_carries_the_security_headers() {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
    let server = TestServer::start_with(|c| c.web_dir = web).await;
    let room = server.create_room(json!({})).await;
    let client = reqwest::Client::new();
    let paths = ["/".to_owned(), format!("/r/{}", room.id), "/assets/style.css".to_owned(), "/healthz".to_owned()];
    for path in &paths {
        let response = client.get(format!("{}{path}", server.base())).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self' 'wasm-unsafe-eval'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} in {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
    // Pages are never stored; assets are asked about again each time.
    for path in &paths[..2] {
        let response = client.get(format!("{}{path}", server.base())).send().await.unwrap();
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
    }
    let asset = client.get(format!("{}/assets/style.css", server.base())).send().await.unwrap();
    assert_eq!(asset.headers()["cache-control"], "no-cache");
}
