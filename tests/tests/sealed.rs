//! Sealed rooms end to end: clients that seal their board with the web client's own `seal`
//! module exchange entries through a real server, which forwards and logs them without being
//! able to read them, still refuses them by role and phase, and turns stock Yjs clients away.

use balint_client::seal::{self, RoomKey};
use balint_e2e::sealed_client::{seal_title, SealedClient};
use balint_e2e::{TestServer, YClient, DEADLINE};
use balint_proto::room::{ErrorCode, ServerMessage};
use balint_proto::rules::Reason;
use balint_proto::sealed::{Entry, Frame, Kind};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A marker no server-side byte may hold in clear.
const MARKER: &str = "SEALED-MARKER-7f3a Frau K. rief um drei Uhr an";

async fn sealed_room(server: &TestServer) -> balint_e2e::Room {
    let room = server.create_room(json!({"sealed": true})).await;
    assert_eq!(room.json["sealed"], true);
    room
}

/// Sets the sealed title of `room` with its leader link, as the creating browser does.
async fn set_sealed_title(
    server: &TestServer,
    room: &balint_e2e::Room,
    key: &RoomKey,
    title: &str,
) -> reqwest::StatusCode {
    reqwest::Client::new()
        .put(format!("http://{}/api/rooms/{}/title", server.addr, room.id))
        .bearer_auth(&room.leader_token)
        .json(&json!({"sealed_title": seal_title(key, &room.id, title)}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn names_and_the_title_travel_sealed_and_open_only_with_the_key() {
    let server = TestServer::start().await;
    // A title in clear is refused for a sealed room, and the answer does not echo it.
    let answer = reqwest::Client::new()
        .post(format!("http://{}/api/rooms", server.addr))
        .json(&json!({"sealed": true, "title": MARKER}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(!answer.text().await.unwrap().contains(MARKER));

    let room = sealed_room(&server).await;
    let key = RoomKey::generate().unwrap();
    assert_eq!(set_sealed_title(&server, &room, &key, &format!("Fall {MARKER}")).await, 204);

    // A name in the URL of a sealed client is refused before the upgrade.
    let named = format!("ws://{}/ws/{}?token={}&sealed=1&name=Ann", server.addr, room.id, room.invite_token);
    let refused = tokio_tungstenite::connect_async(named).await.unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 400),
        other => panic!("expected 400, got {other}"),
    }

    let mut lena = SealedClient::join(server.addr, &room.id, &room.leader_token, &key).await.unwrap();
    let mut ben = SealedClient::join(server.addr, &room.id, &room.invite_token, &key).await.unwrap();
    lena.set_name(&format!("Dr. {MARKER}")).await.unwrap();
    ben.set_name("Ben Müller").await.unwrap();
    let expected = vec![Some(format!("Dr. {MARKER}")), Some("Ben Müller".to_owned())];
    for client in [&mut lena, &mut ben] {
        client.wait(|c| c.names() == expected).await.unwrap();
        assert_eq!(client.title(), Some(format!("Fall {MARKER}")));
        let state = client.state().unwrap();
        assert!(state.sealed);
        assert_eq!(state.title, None);
        assert!(state.members.iter().all(|m| m.name.is_empty()), "no name in clear");
    }
    // What the server sent holds neither the names nor the title in clear.
    let sent = serde_json::to_string(&ben.texts).unwrap();
    assert!(!sent.contains(MARKER) && !sent.contains("Müller"));

    // Without the key, nothing opens.
    let stranger = RoomKey::generate().unwrap();
    let state = ben.state().unwrap().clone();
    for member in &state.members {
        let value = member.sealed_name.as_deref().unwrap();
        assert!(seal::open_name(&stranger, &room.id, &member.id, value).is_err());
        // Nor under another member's id: the server cannot move a name to someone else.
        let other = state.members.iter().find(|m| m.id != member.id).unwrap();
        assert!(seal::open_name(&key, &room.id, &other.id, value).is_err());
    }

    // A value that is no sealed value is refused, and the name stays.
    ben.command(json!({"type": "set_sealed_name", "sealed_name": "Ben in clear"})).await.unwrap();
    ben.wait(|c| !c.refusals().is_empty()).await.unwrap();
    assert_eq!(ben.refusals(), [(ErrorCode::BadMessage, Some(Reason::BadSealedValue))]);
    assert_eq!(ben.names(), expected);
}

#[tokio::test]
async fn members_exchange_sealed_entries_that_the_server_forwards_and_logs_without_reading() {
    let server = TestServer::start().await;
    let room = sealed_room(&server).await;
    let key = RoomKey::generate().unwrap();
    let mut leader = SealedClient::join(server.addr, &room.id, &room.leader_token, &key).await.unwrap();
    let mut member = SealedClient::join(server.addr, &room.id, &room.invite_token, &key).await.unwrap();
    member.wait(|c| !c.logs().is_empty()).await.unwrap();
    assert_eq!(member.logs(), [&Vec::<Entry>::new()], "an empty room's log");

    let sent = leader.write(MARKER).await.unwrap();
    assert!(!sent.windows(10).any(|w| MARKER.as_bytes().windows(10).any(|m| m == w)), "the frame is sealed");
    member.wait(|c| c.notes() == MARKER).await.unwrap();
    let forwarded = member.frames.iter().find_map(|f| if let Frame::Entry(e) = f { Some(e.clone()) } else { None });
    assert_eq!(forwarded.unwrap().sender, leader.member_id, "stamped with the sender's identity");

    member.write("Notiz: ").await.unwrap();
    let both = format!("Notiz: {MARKER}");
    leader.wait(|c| c.notes().contains("Notiz: ")).await.unwrap();

    // A newcomer gets the whole log in one frame, and reads it with the key.
    let mut observer = SealedClient::join(server.addr, &room.id, &room.observer_token, &key).await.unwrap();
    observer.wait(|c| !c.logs().is_empty()).await.unwrap();
    assert_eq!(observer.logs()[0].len(), 2);
    assert_eq!(leader.notes(), both);
    assert_eq!(observer.notes(), both);

    // Without the key, the log opens to nothing.
    let stranger = RoomKey::generate().unwrap();
    for entry in observer.logs()[0] {
        assert_eq!(seal::open_update(&stranger, &room.id, entry), Err(seal::SealError::Forged));
    }
}

#[tokio::test]
async fn a_presenter_entry_is_refused_in_reflection_and_never_reaches_the_log() {
    let server = TestServer::start().await;
    let room = sealed_room(&server).await;
    let key = RoomKey::generate().unwrap();
    let mut leader = SealedClient::join(server.addr, &room.id, &room.leader_token, &key).await.unwrap();
    let mut presenter = SealedClient::join(server.addr, &room.id, &room.invite_token, &key).await.unwrap();
    let picked = presenter.member_id.clone();
    leader.command(json!({"type": "pick_presenter", "member": picked})).await.unwrap();
    leader.command(json!({"type": "set_phase", "phase": "reflection"})).await.unwrap();
    presenter
        .wait(|c| {
            c.texts.iter().any(|m| match m {
                ServerMessage::State { state } => state.phase.name == balint_proto::room::Phase::Reflection,
                _ => false,
            })
        })
        .await
        .unwrap();

    presenter.write("not now").await.unwrap();
    presenter.wait(|c| !c.refusals().is_empty()).await.unwrap();
    assert_eq!(presenter.refusals(), [(ErrorCode::ReadOnly, Some(Reason::PresenterInReflection))]);

    // The leader still writes; a newcomer's log holds the leader's entry only.
    leader.write("Gruppe: ").await.unwrap();
    presenter.wait(|c| c.notes().contains("Gruppe: ")).await.unwrap();
    let mut late = SealedClient::join(server.addr, &room.id, &room.invite_token, &key).await.unwrap();
    late.wait(|c| !c.logs().is_empty()).await.unwrap();
    assert_eq!(late.logs()[0].len(), 1);
    assert_eq!(late.logs()[0][0].sender, leader.member_id);
    assert_eq!(late.notes(), "Gruppe: ");
}

#[tokio::test]
async fn stock_yjs_clients_are_turned_away_from_a_sealed_room_and_sealed_clients_from_a_plain_one() {
    let server = TestServer::start().await;
    let room = sealed_room(&server).await;
    let url = server.ws_url(&room.id, &room.invite_token, "Ann");
    let mut stock = YClient::connect_pending(&url).await.unwrap();
    let closed = stock.wait_closed().await.unwrap();
    assert_eq!(closed.code, balint_proto::close::SEALED_MISMATCH);
    assert!(closed.reason.contains("sealed"), "{}", closed.reason);

    let plain = server.create_room(json!({})).await;
    assert_eq!(plain.json["sealed"], false);
    let url = format!("ws://{}/ws/{}?token={}&sealed=1", server.addr, plain.id, plain.invite_token);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, socket.next()).await.unwrap().unwrap().unwrap();
    let WsMessage::Close(Some(frame)) = first else { panic!("not closed: {first:?}") };
    assert_eq!(u16::from(frame.code), balint_proto::close::SEALED_MISMATCH);
    assert_eq!(frame.reason.as_str(), "this room is not sealed");
}

/// The client's sequence numbers and the server's stamping agree with what the document says
/// a receiver checks: an entry replayed under another sender does not open.
#[tokio::test]
async fn an_entry_moved_to_another_sender_does_not_open() {
    let server = TestServer::start().await;
    let room = sealed_room(&server).await;
    let key = RoomKey::generate().unwrap();
    let mut leader = SealedClient::join(server.addr, &room.id, &room.leader_token, &key).await.unwrap();
    let mut member = SealedClient::join(server.addr, &room.id, &room.invite_token, &key).await.unwrap();
    leader.write("signed").await.unwrap();
    member.wait(|c| c.notes() == "signed").await.unwrap();
    let Some(Frame::Entry(entry)) = member.frames.iter().find(|f| matches!(f, Frame::Entry(_))).cloned() else {
        panic!("no entry")
    };
    let moved = Entry { sender: member.member_id.clone(), ..entry };
    assert_eq!(seal::open_update(&key, &room.id, &moved), Err(seal::SealError::Forged));
}

#[tokio::test]
async fn a_snapshot_replaces_the_log_for_newcomers_and_leaves_out_what_was_deleted() {
    let server = TestServer::start().await;
    let room = sealed_room(&server).await;
    let key = RoomKey::generate().unwrap();
    let mut leader = SealedClient::join(server.addr, &room.id, &room.leader_token, &key).await.unwrap();
    let mut member = SealedClient::join(server.addr, &room.id, &room.invite_token, &key).await.unwrap();
    leader.write(MARKER).await.unwrap();
    member.wait(|c| c.notes() == MARKER).await.unwrap();
    member.write("Bleibt. ").await.unwrap();
    leader.wait(|c| c.notes().starts_with("Bleibt. ")).await.unwrap();
    // The group erases the marker.
    leader.delete(8, MARKER.chars().count() as u32).await.unwrap();
    member.wait(|c| c.notes() == "Bleibt. ").await.unwrap();

    let mut before = SealedClient::join(server.addr, &room.id, &room.observer_token, &key).await.unwrap();
    before.wait(|c| !c.logs().is_empty()).await.unwrap();
    assert_eq!(before.logs()[0].len(), 3, "the log before compaction");
    let history = seal::open_update(&key, &room.id, &before.logs()[0][0]).unwrap();
    assert!(contains(&history, MARKER.as_bytes()), "the log keeps the erased text until compaction");

    let snapshot = member.compact().await.unwrap();
    assert!(!contains(&snapshot, MARKER.as_bytes()), "a snapshot holds no deleted text");
    // The server handles a socket's frames in order: once the member's next entry reaches the
    // leader, the snapshot before it was handled.
    member.write("Neu: ").await.unwrap();
    leader.wait(|c| c.notes().starts_with("Neu: ")).await.unwrap();

    let mut late = SealedClient::join(server.addr, &room.id, &room.invite_token, &key).await.unwrap();
    late.wait(|c| !c.logs().is_empty()).await.unwrap();
    let log = late.logs()[0].clone();
    let kinds: Vec<(String, Kind)> = log.iter().map(|e| (e.sender.clone(), e.sealed.kind)).collect();
    assert_eq!(kinds, [(member.member_id.clone(), Kind::Snapshot), (member.member_id.clone(), Kind::Update)]);
    assert_eq!(late.notes(), "Neu: Bleibt. ");
    for entry in &log {
        let opened = seal::open_update(&key, &room.id, entry).unwrap();
        assert!(!contains(&opened, MARKER.as_bytes()), "a newcomer cannot read what the group erased");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
